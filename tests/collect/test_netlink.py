"""The pyroute2 renderers, fed netlink messages as pyroute2 decodes them (no pyroute2 needed).

tests/kernel/test_kernel_live.py compares them with the real `ip -j` / `ipset save` output when
pyroute2 is installed.
"""

from __future__ import annotations

import socket
from typing import Any

from kptrace.collect import netlink
from kptrace.parsers.ip_route import parse_ip_route
from kptrace.parsers.ip_rule import parse_ip_rule


class Msg(dict):  # type: ignore[type-arg]
    """Just enough of pyroute2's nlmsg: fields as items, attributes through get_attr."""

    def __init__(self, attrs: dict[str, Any] | None = None, **fields: Any) -> None:
        super().__init__(fields)
        self["attrs"] = list((attrs or {}).items())

    def get_attr(self, name: str) -> Any:
        return next((v for k, v in self["attrs"] if k == name), None)

    def get_attrs(self, name: str) -> list[Any]:
        return [v for k, v in self["attrs"] if k == name]


LINKS = [Msg({"IFLA_IFNAME": "lo"}, index=1, flags=0x10049, ifi_type=772),
         Msg({"IFLA_IFNAME": "eth0", "IFLA_ADDRESS": "52:54:00:12:34:56", "IFLA_MTU": 1500,
              "IFLA_OPERSTATE": "UP"}, index=2, flags=0x11043, ifi_type=1),
         Msg({"IFLA_IFNAME": "cni0"}, index=3, flags=0x1003, ifi_type=1)]


def route(dst: str | None, dst_len: int, fam: int = socket.AF_INET, table: int = 254, rtype: int = 1,
          proto: int = 4, scope: int = 0, flags: int = 0, **attrs: Any) -> Msg:
    a = {"RTA_TABLE": table, **({"RTA_DST": dst} if dst else {}), **attrs}
    return Msg(a, family=fam, dst_len=dst_len, src_len=0, table=table, type=rtype, proto=proto, scope=scope,
               flags=flags)


def test_routes_render_like_ip_and_parse() -> None:
    msgs = [route(None, 0, RTA_GATEWAY="192.168.0.1", RTA_OIF=2, RTA_PRIORITY=100),
            route("10.244.1.0", 24, proto=2, scope=253, RTA_OIF=3, RTA_PREFSRC="10.244.1.1"),
            route("10.66.0.0", 16, rtype=6),
            route("192.168.0.2", 32, table=255, rtype=2, proto=2, scope=254, RTA_OIF=2, RTA_PREFSRC="192.168.0.2"),
            route("10.77.0.0", 16, table=100, proto=3, RTA_MULTIPATH=[
                Msg({"RTA_GATEWAY": "192.168.0.3"}, oif=2, hops=1, flags=0),
                Msg({"RTA_GATEWAY": "192.168.0.4"}, oif=2, hops=0, flags=4)])]
    got = netlink.routes_json(LINKS, msgs)
    assert got[0] == {"dst": "default", "gateway": "192.168.0.1", "dev": "eth0", "protocol": "static", "metric": 100,
                      "flags": []}
    assert got[1]["scope"] == "link" and got[1]["protocol"] == "kernel" and got[1]["prefsrc"] == "10.244.1.1"
    assert got[2]["type"] == "blackhole" and got[3]["table"] == "local" and got[3]["dst"] == "192.168.0.2"
    assert "protocol" not in got[4] and got[4]["table"] == "100"  # iproute2 leaves out `proto boot`
    import json

    routes = parse_ip_route(json.dumps(got), "ip-route.json")
    assert [str(r.dst) for r in routes] == ["0.0.0.0/0", "10.244.1.0/24", "10.66.0.0/16", "192.168.0.2/32",
                                            "10.77.0.0/16"]
    multi = routes[4]
    assert [(str(h.gateway), h.weight, h.onlink) for h in multi.nexthops] == [
        ("192.168.0.3", 2, False), ("192.168.0.4", 1, True)]


def test_rules_render_like_ip_and_parse() -> None:
    import json

    msgs = [Msg({"FRA_PRIORITY": 0, "FRA_TABLE": 255}, family=2, flags=0, action=1, table=255, src_len=0, dst_len=0),
            Msg({"FRA_PRIORITY": 100, "FRA_SRC": "10.1.0.0", "FRA_IIFNAME": "cni0", "FRA_TABLE": 254},
                family=2, flags=2, action=1, table=254, src_len=16, dst_len=0),
            Msg({"FRA_PRIORITY": 200, "FRA_FWMARK": 0x10, "FRA_FWMASK": 0xFF, "FRA_TABLE": 100}, family=2,
                flags=0, action=1, table=100, src_len=0, dst_len=0),
            Msg({"FRA_PRIORITY": 300, "FRA_DST": "10.5.0.0"}, family=2, flags=0, action=7, table=0, src_len=0,
                dst_len=16)]
    got = netlink.rules_json(msgs)
    assert got[1] == {"priority": 100, "not": None, "src": "10.1.0.0", "srclen": 16, "iif": "cni0", "table": "main"}
    assert got[2]["fwmark"] == "0x10" and got[2]["fwmask"] == "0xff"
    assert got[3]["action"] == "unreachable"
    rules = parse_ip_rule(json.dumps(got), "ip-rule.json")
    assert [(r.priority, r.action, r.table, r.invert) for r in rules] == [
        (0, "lookup", "local", False), (100, "lookup", "main", True), (200, "lookup", "100", False),
        (300, "unreachable", None, False)]


def test_neighbours_skip_noarp_like_ip() -> None:
    msgs = [Msg({"NDA_DST": "224.0.0.22", "NDA_LLADDR": "01:00:5e:00:00:16"}, family=2, ifindex=2, state=0x40,
                flags=0),
            Msg({"NDA_DST": "10.244.1.5", "NDA_LLADDR": "0a:58:0a:f4:01:05"}, family=2, ifindex=3, state=0x02,
                flags=0x80)]
    assert netlink.neighbours_json(LINKS, msgs) == [
        {"dst": "10.244.1.5", "dev": "cni0", "lladdr": "0a:58:0a:f4:01:05", "router": None, "state": ["REACHABLE"]}]


def test_ipvs_save() -> None:
    svc = {"af": 2, "protocol": 6, "addr": "10.96.0.1", "port": 443, "sched_name": "rr", "flags": {"flags": 0}}
    dests = [{"addr": "192.168.0.2", "port": 6443, "fwd_method": 0, "weight": 1}]
    persistent = {"af": 10, "protocol": 17, "addr": "fd00::10", "port": 53, "sched_name": "sh",
                  "flags": {"flags": 1}, "timeout": 10800}
    assert netlink.ipvs_save([(svc, dests), (persistent, []), ({"fwmark": 7, "sched_name": "wlc"}, [])]) == (
        "-A -t 10.96.0.1:443 -s rr\n-a -t 10.96.0.1:443 -r 192.168.0.2:6443 -m -w 1\n"
        "-A -u [fd00::10]:53 -s sh -p 10800\n-A -f 7 -s wlc\n")


def test_ipset_save() -> None:
    ip = lambda a: Msg({"IPSET_ATTR_IPADDR_IPV4": a})
    entry = Msg({"IPSET_ATTR_IP_FROM": ip("10.96.0.10"), "IPSET_ATTR_PORT_FROM": 53, "IPSET_ATTR_PROTO": 17})
    adt = Msg({"IPSET_ATTR_DATA": entry})
    msg = Msg({"IPSET_ATTR_SETNAME": "KUBE-CLUSTER-IP", "IPSET_ATTR_TYPENAME": "hash:ip,port",
               "IPSET_ATTR_FAMILY": 2, "IPSET_ATTR_DATA": Msg({"IPSET_ATTR_HASHSIZE": 1024,
                                                               "IPSET_ATTR_MAXELEM": 65536}),
               "IPSET_ATTR_ADT": adt})
    assert netlink.ipset_save([msg]) == ("create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 "
                                         "maxelem 65536\nadd KUBE-CLUSTER-IP 10.96.0.10,udp:53\n")


def test_without_pyroute2_nothing_is_claimed(monkeypatch: Any) -> None:
    monkeypatch.setattr(netlink, "_pyroute2", lambda: False)
    assert netlink.capture("ip-addr.json", "addr") is None
    assert netlink.ipvs_capture("ipvsadm-save.txt") is None and netlink.ipset_capture("ipset-save.txt") is None
