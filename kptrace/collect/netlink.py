"""pyroute2 stand-ins for `ip -j`, `bridge -j`, `ipvsadm -Sn` and `ipset save` when a tool is missing.

Each reader sends only netlink dump (GET) requests and renders what the kernel answers in the shape
the missing command prints, with the keys kptrace's parsers read, so the bundle file has its usual
name and parser. pyroute2 is optional: without it these return None and the part stays a WARN.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from kptrace.collect.capture import DENIED, FAILED, OK, Capture

AF_BRIDGE = 7
IFF_NAMES = (  # iproute2's print_link_flags order
    (0x8, "LOOPBACK"), (0x2, "BROADCAST"), (0x10, "POINTOPOINT"), (0x1000, "MULTICAST"), (0x80, "NOARP"),
    (0x200, "ALLMULTI"), (0x100, "PROMISC"), (0x20, "NOTRAILERS"), (0x4, "DEBUG"), (0x8000, "DYNAMIC"),
    (0x4000, "AUTOMEDIA"), (0x2000, "PORTSEL"), (0x400, "MASTER"), (0x800, "SLAVE"), (0x1, "UP"),
    (0x10000, "LOWER_UP"), (0x20000, "DORMANT"), (0x40000, "ECHO"),
)
LINK_TYPES = {1: "ether", 772: "loopback", 65534: "none", 776: "sit", 768: "ipip", 778: "gre", 823: "ip6gre"}
SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
ROUTE_TYPES = {0: "unspec", 1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
               7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat", 11: "xresolve"}
TABLES = {253: "default", 254: "main", 255: "local"}
PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra", 10: "mrt",
             11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp", 17: "mrouted",
             18: "keepalived", 42: "babel", 99: "openr", 186: "bgp", 187: "isis", 188: "ospf", 189: "rip",
             192: "eigrp"}
NUD = ((0x01, "INCOMPLETE"), (0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"), (0x10, "PROBE"),
       (0x20, "FAILED"), (0x40, "NOARP"), (0x80, "PERMANENT"))
RULE_ACTIONS = {2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
PORT_STATES = {0: "disabled", 1: "listening", 2: "learning", 3: "forwarding", 4: "blocking"}
NTF_SELF, NTF_MASTER, NTF_ROUTER = 0x02, 0x04, 0x80
FDB_FLAGS = ((NTF_SELF, "self"), (0x10, "extern_learn"), (0x20, "offload"), (0x40, "sticky"), (NTF_ROUTER, "router"))
RTNH_F = ((0x1, "dead"), (0x2, "pervasive"), (0x4, "onlink"), (0x10, "linkdown"))


def _attr(msg: Any, name: str, default: Any = None) -> Any:
    value = msg.get_attr(name)
    return default if value is None else value


def _names(links: list[Any]) -> dict[int, str]:
    return {int(m["index"]): str(_attr(m, "IFLA_IFNAME", "")) for m in links}


def _link_flags(flags: int) -> list[str]:
    out = ["NO-CARRIER"] if flags & 0x1 and not flags & 0x40 else []  # UP but not RUNNING
    return out + [n for bit, n in IFF_NAMES if flags & bit]


def _link_base(m: Any, names: dict[int, str]) -> dict[str, Any]:
    e: dict[str, Any] = {"ifindex": int(m["index"])}
    link, netnsid = _attr(m, "IFLA_LINK"), _attr(m, "IFLA_LINK_NETNSID")
    if link is not None and int(link) != int(m["index"]):
        if netnsid is None and int(link) in names:
            e["link"] = names[int(link)]
        else:
            e["link_index"] = int(link)
    e["ifname"] = _attr(m, "IFLA_IFNAME", "")
    e["flags"] = _link_flags(int(m["flags"]))
    e["mtu"] = _attr(m, "IFLA_MTU")
    master = _attr(m, "IFLA_MASTER")
    if master is not None:
        e["master"] = names.get(int(master), f"if{master}")
    e["operstate"] = _attr(m, "IFLA_OPERSTATE", "UNKNOWN")
    e["link_type"] = LINK_TYPES.get(int(m["ifi_type"]), str(m["ifi_type"]))
    if _attr(m, "IFLA_ADDRESS") is not None:
        e["address"] = _attr(m, "IFLA_ADDRESS")
    if netnsid is not None:
        e["link_netnsid"] = int(netnsid)
    return e


def links_json(links: list[Any]) -> list[dict[str, Any]]:
    """`ip -j -d link show`: the keys kptrace reads (kind, master, peer, VXLAN details, bridge port)."""
    names = _names(links)
    out = []
    for m in links:
        e = _link_base(m, names)
        info = _attr(m, "IFLA_LINKINFO")
        if info is not None:
            li: dict[str, Any] = {}
            kind = _attr(info, "IFLA_INFO_KIND")
            if kind:
                li["info_kind"] = kind
            data = _attr(info, "IFLA_INFO_DATA")
            if kind == "vxlan" and data is not None and not isinstance(data, (str, bytes)):
                vx: dict[str, Any] = {"id": _attr(data, "IFLA_VXLAN_ID")}
                for key, attr in (("local", "IFLA_VXLAN_LOCAL"), ("local6", "IFLA_VXLAN_LOCAL6")):
                    if _attr(data, attr) is not None:
                        vx[key] = _attr(data, attr)
                dev = _attr(data, "IFLA_VXLAN_LINK")
                if dev:
                    vx["link"] = names.get(int(dev), f"if{dev}")
                if _attr(data, "IFLA_VXLAN_PORT") is not None:
                    vx["port"] = _attr(data, "IFLA_VXLAN_PORT")
                li["info_data"] = vx
            slave_kind = _attr(info, "IFLA_INFO_SLAVE_KIND")
            if slave_kind:
                li["info_slave_kind"] = slave_kind
                sdata = _attr(info, "IFLA_INFO_SLAVE_DATA")
                if slave_kind == "bridge" and sdata is not None and not isinstance(sdata, (str, bytes)):
                    li["info_slave_data"] = _brport(sdata)
            e["linkinfo"] = li
        out.append(e)
    return out


def _brport(data: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    state = _attr(data, "IFLA_BRPORT_STATE")
    if state is not None:
        d["state"] = PORT_STATES.get(int(state), str(state))
    mode = _attr(data, "IFLA_BRPORT_MODE")
    if mode is not None:
        d["hairpin"] = bool(mode)
    return d


def bridge_ports_json(links: list[Any]) -> list[dict[str, Any]]:
    """`bridge -j -d link show`: bridge ports with state and hairpin."""
    names = _names(links)
    out = []
    for m in links:
        info = _attr(m, "IFLA_LINKINFO")
        if info is None or _attr(info, "IFLA_INFO_SLAVE_KIND") != "bridge" or _attr(m, "IFLA_MASTER") is None:
            continue
        base = _link_base(m, names)
        e: dict[str, Any] = {k: base[k] for k in ("ifindex", "link", "ifname", "flags", "mtu", "master") if k in base}
        sdata = _attr(info, "IFLA_INFO_SLAVE_DATA")
        if sdata is not None and not isinstance(sdata, (str, bytes)):
            e.update(_brport(sdata))
        out.append(e)
    return out


def addrs_json(links: list[Any], addrs: list[Any]) -> list[dict[str, Any]]:
    """`ip -j addr show`: each link with its addr_info."""
    names = _names(links)
    by_link: dict[int, list[dict[str, Any]]] = {}
    for a in addrs:
        fam = int(a["family"])
        if fam not in (socket.AF_INET, socket.AF_INET6):
            continue
        local = _attr(a, "IFA_LOCAL") or _attr(a, "IFA_ADDRESS")
        info: dict[str, Any] = {"family": "inet" if fam == socket.AF_INET else "inet6", "local": local,
                                "prefixlen": int(a["prefixlen"]), "scope": SCOPES.get(int(a["scope"]), str(a["scope"]))}
        if _attr(a, "IFA_LABEL"):
            info["label"] = _attr(a, "IFA_LABEL")
        by_link.setdefault(int(a["index"]), []).append(info)
    out = []
    for m in links:
        e = _link_base(m, names)
        e["addr_info"] = by_link.get(int(m["index"]), [])
        out.append(e)
    return out


def _addr_text(addr: str | None, plen: int, family: int) -> str:
    full = 32 if family == socket.AF_INET else 128
    if addr is None or (plen == 0 and addr in ("0.0.0.0", "::")):
        return "default"
    return addr if plen == full else f"{addr}/{plen}"


def routes_json(links: list[Any], routes: list[Any]) -> list[dict[str, Any]]:
    """`ip -j route show table all` (or `-6`)."""
    names = _names(links)
    out = []
    for r in routes:
        fam = int(r["family"])
        e: dict[str, Any] = {}
        rtype = int(r["type"])
        if rtype != 1:
            e["type"] = ROUTE_TYPES.get(rtype, str(rtype))
        e["dst"] = _addr_text(_attr(r, "RTA_DST"), int(r["dst_len"]), fam)
        if _attr(r, "RTA_SRC") is not None:
            e["src"] = _addr_text(_attr(r, "RTA_SRC"), int(r["src_len"]), fam)
        if _attr(r, "RTA_NH_ID") is not None:
            e["nhid"] = _attr(r, "RTA_NH_ID")
        if _attr(r, "RTA_GATEWAY") is not None:
            e["gateway"] = _attr(r, "RTA_GATEWAY")
        oif = _attr(r, "RTA_OIF")
        if oif is not None:
            e["dev"] = names.get(int(oif), f"if{oif}")
        table = int(_attr(r, "RTA_TABLE", r["table"]))
        if table != 254:
            e["table"] = TABLES.get(table, str(table))
        proto = int(r["proto"])
        if proto != 3:  # iproute2 leaves out `proto boot`
            e["protocol"] = PROTOCOLS.get(proto, str(proto))
        scope = int(r["scope"])
        if scope != 0:
            e["scope"] = SCOPES.get(scope, str(scope))
        if _attr(r, "RTA_PREFSRC") is not None:
            e["prefsrc"] = _attr(r, "RTA_PREFSRC")
        if _attr(r, "RTA_PRIORITY") is not None:
            e["metric"] = _attr(r, "RTA_PRIORITY")
        e["flags"] = [n for bit, n in RTNH_F if int(r["flags"]) & bit]
        metrics = _attr(r, "RTA_METRICS")
        mtu = _attr(metrics, "RTAX_MTU") if metrics is not None and not isinstance(metrics, (int, str)) else None
        if mtu:
            e["metrics"] = [{"mtu": mtu}]
        hops = _attr(r, "RTA_MULTIPATH")
        if hops:
            e["nexthops"] = [_nexthop(h, names) for h in hops]
        if fam == socket.AF_INET6 and _attr(r, "RTA_PREF") is not None:
            e["pref"] = {0: "medium", 1: "high", 3: "low"}.get(int(_attr(r, "RTA_PREF")), "medium")
        out.append(e)
    return out


def _nexthop(h: Any, names: dict[int, str]) -> dict[str, Any]:
    n: dict[str, Any] = {}
    if _attr(h, "RTA_GATEWAY") is not None:
        n["gateway"] = _attr(h, "RTA_GATEWAY")
    oif = h.get("oif") if isinstance(h, dict) else None
    if oif:
        n["dev"] = names.get(int(oif), f"if{oif}")
    n["weight"] = int(h.get("hops", 0)) + 1
    n["flags"] = [name for bit, name in RTNH_F if int(h.get("flags", 0)) & bit]
    return n


def rules_json(rules: list[Any]) -> list[dict[str, Any]]:
    """`ip -j rule show` (or `-6`)."""
    out = []
    for r in rules:
        e: dict[str, Any] = {"priority": _attr(r, "FRA_PRIORITY", 0)}
        if int(r["flags"]) & 0x2:  # FIB_RULE_INVERT
            e["not"] = None
        src = _attr(r, "FRA_SRC")
        e["src"] = src if src is not None else "all"
        if src is not None:
            e["srclen"] = int(r["src_len"])
        if _attr(r, "FRA_DST") is not None:
            e["dst"], e["dstlen"] = _attr(r, "FRA_DST"), int(r["dst_len"])
        for key, attr in (("iif", "FRA_IIFNAME"), ("oif", "FRA_OIFNAME")):
            if _attr(r, attr) is not None:
                e[key] = _attr(r, attr)
        mark, mask = _attr(r, "FRA_FWMARK"), _attr(r, "FRA_FWMASK")
        if mark is not None or mask is not None:
            e["fwmark"] = hex(int(mark or 0))
            if mask is not None and int(mask) != 0xFFFFFFFF:
                e["fwmask"] = hex(int(mask))
        action = int(r["action"])
        if action == 1:
            table = int(_attr(r, "FRA_TABLE", r["table"]))
            e["table"] = TABLES.get(table, str(table))
        elif action == 2:
            e["goto"] = _attr(r, "FRA_GOTO")
        else:
            e["action"] = RULE_ACTIONS.get(action, str(action))
        spl = _attr(r, "FRA_SUPPRESS_PREFIXLEN")
        if spl is not None and int(spl) not in (0xFFFFFFFF, -1):
            e["suppress_prefixlen"] = int(spl)
        out.append(e)
    return out


def _nud(state: int) -> list[str]:
    return [n for bit, n in NUD if state & bit]


def neighbours_json(links: list[Any], neigh: list[Any]) -> list[dict[str, Any]]:
    """`ip -j neigh show`: like ip, entries in state NOARP or NONE are left out."""
    names = _names(links)
    out = []
    for n in neigh:
        if int(n["family"]) not in (socket.AF_INET, socket.AF_INET6):
            continue
        state = int(n["state"])
        if state == 0 or state == 0x40:
            continue
        e: dict[str, Any] = {"dst": _attr(n, "NDA_DST"), "dev": names.get(int(n["ifindex"]), f"if{n['ifindex']}")}
        if _attr(n, "NDA_LLADDR") is not None:
            e["lladdr"] = _attr(n, "NDA_LLADDR")
        if int(n["flags"]) & NTF_ROUTER:
            e["router"] = None
        e["state"] = _nud(state)
        out.append(e)
    return out


def fdb_json(links: list[Any], neigh: list[Any]) -> list[dict[str, Any]]:
    """`bridge -j fdb show`."""
    names = _names(links)
    out = []
    for n in neigh:
        if int(n["family"]) != AF_BRIDGE:
            continue
        e: dict[str, Any] = {"mac": _attr(n, "NDA_LLADDR"), "ifname": names.get(int(n["ifindex"]), f"if{n['ifindex']}")}
        if _attr(n, "NDA_VLAN") is not None:
            e["vlan"] = _attr(n, "NDA_VLAN")
        if _attr(n, "NDA_DST") is not None:
            e["dst"] = _attr(n, "NDA_DST")
        flags = int(n["flags"])
        e["flags"] = [name for bit, name in FDB_FLAGS if flags & bit]
        master = _attr(n, "NDA_MASTER")
        if master is not None:
            e["master"] = names.get(int(master), f"if{master}")
        state = int(n["state"])
        e["state"] = "permanent" if state & 0x80 else "static" if state & 0x40 else "stale" if state & 0x04 else ""
        out.append(e)
    return out


def _dump(what: str) -> list[dict[str, Any]]:
    from pyroute2 import IPRoute  # type: ignore[import-not-found,import-untyped,unused-ignore]

    with IPRoute() as ipr:
        links = list(ipr.get_links())
        if what == "addr":
            return addrs_json(links, list(ipr.get_addr()))
        if what == "link":
            return links_json(links)
        if what == "brport":
            return bridge_ports_json(links)
        if what in ("route4", "route6"):
            fam = socket.AF_INET if what == "route4" else socket.AF_INET6
            return routes_json(links, list(ipr.get_routes(family=fam)))
        if what in ("rule4", "rule6"):
            return rules_json(list(ipr.get_rules(family=socket.AF_INET if what == "rule4" else socket.AF_INET6)))
        if what == "neigh":
            return neighbours_json(links, list(ipr.get_neighbours()))
        if what == "fdb":
            return fdb_json(links, list(ipr.get_neighbours(family=AF_BRIDGE)))
    raise ValueError(f"unknown netlink dump '{what}'")


def _pyroute2() -> bool:
    try:
        import pyroute2  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: not available
        return False
    return True


def _run(name: str, what: str, produce: Callable[[], str]) -> Capture:
    cap = Capture(name, ("pyroute2", what), "pyroute2")
    start = time.monotonic()
    try:
        cap.data = produce().encode()
        cap.status = OK
    except PermissionError as e:
        cap.status, cap.message = DENIED, f"pyroute2 {what}: {e}"
    except Exception as e:  # noqa: BLE001 - a netlink error is this part's WARN, not the run's end
        cap.status, cap.message = FAILED, f"pyroute2 {what}: {type(e).__name__}: {e}"
    cap.duration = time.monotonic() - start
    return cap


def capture(name: str, what: str) -> Capture | None:
    """The iproute2 JSON dump `what` read over netlink; None without pyroute2."""
    if not _pyroute2():
        return None
    return _run(name, what, lambda: json.dumps(_dump(what), separators=(",", ":")) + "\n")


# --- IPVS ----------------------------------------------------------------------------------------

IPVS_FWD = {0: "-m", 1: "-i", 2: "-i", 3: "-g"}  # masquerading, local (shown as tunnel by ipvsadm), tunnel, route


def _ipvs_host(addr: str, port: int | None, af: int) -> str:
    host = f"[{addr}]" if af == socket.AF_INET6 else addr
    return host if port is None else f"{host}:{port}"


def ipvs_save(services: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> str:
    """`ipvsadm -Sn` lines from (service, destinations) attribute dicts."""
    lines = []
    for svc, dests in services:
        af = int(svc.get("af", socket.AF_INET))
        if svc.get("fwmark"):
            key = f"-f {svc['fwmark']}"
        else:
            proto = {6: "-t", 17: "-u", 132: "--sctp-service"}.get(int(svc.get("protocol", 0)), "-t")
            key = f"{proto} {_ipvs_host(str(svc.get('addr')), int(svc.get('port', 0)), af)}"
        line = f"-A {key} -s {svc.get('sched_name', 'wlc')}"
        flags = svc.get("flags")
        flag_bits = int(flags.get("flags", 0)) if isinstance(flags, dict) else int(flags or 0)
        if flag_bits & 0x1:  # IP_VS_SVC_F_PERSISTENT
            line += f" -p {svc.get('timeout', 0)}"
        lines.append(line)
        for d in dests:
            fwd = IPVS_FWD.get(int(d.get("fwd_method", 0)) & 0x7, "-m")
            real = _ipvs_host(str(d.get("addr")), int(d.get("port", 0)), int(d.get("addr_family", af)))
            lines.append(f"-a {key} -r {real} {fwd} -w {d.get('weight', 1)}")
    return "".join(line + "\n" for line in lines)


def _nla_dict(msg: Any, nla: str, prefix: str) -> dict[str, Any]:
    inner = msg.get_attr(nla)
    if inner is None:
        return {}
    return {k[len(prefix):].lower(): v for k, v in inner["attrs"] if k.startswith(prefix)}


def _ipvs_dump() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    from pyroute2 import IPVS, IPVSService  # type: ignore[import-not-found,import-untyped,unused-ignore]

    out = []
    with IPVS() as ipvs:
        for s in ipvs.service("dump"):
            svc = _nla_dict(s, "IPVS_CMD_ATTR_SERVICE", "IPVS_SVC_ATTR_")
            dests = [_nla_dict(d, "IPVS_CMD_ATTR_DEST", "IPVS_DEST_ATTR_")
                     for d in ipvs.dest("dump", service=IPVSService.from_message(s))]
            out.append((svc, dests))
    return out


def ipvs_capture(name: str) -> Capture | None:
    """IPVS services and their real servers over generic netlink, as `ipvsadm -Sn` prints them."""
    if not _pyroute2():
        return None
    return _run(name, "IPVS dump", lambda: ipvs_save(_ipvs_dump()))


# --- ipset ---------------------------------------------------------------------------------------

IPSET_PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite"}


def _ipset_ip(v: Any) -> str | None:
    if v is None:
        return None
    for key in ("IPSET_ATTR_IPADDR_IPV4", "IPSET_ATTR_IPADDR_IPV6"):
        a = v.get_attr(key) if hasattr(v, "get_attr") else None
        if a is not None:
            return str(a)
    return None


def _first(msg: Any, *names: str) -> Any:
    """The first of several names one netlink attribute has (IPSET_ATTR_IP is IPSET_ATTR_IP_FROM)."""
    for n in names:
        v = msg.get_attr(n)
        if v is not None:
            return v
    return None


def ipset_member(typename: str, family: int, e: Any) -> str:
    """One `add` member in ipset's own notation: 10.96.0.1,tcp:443 or 10.244.0.0/16."""
    full = 32 if family == socket.AF_INET else 128
    parts = typename.split(":", 1)[-1].split(",")
    out = []
    ip_seen = 0
    for part in parts:
        if part in ("ip", "net"):
            ip_seen += 1
            ip = _ipset_ip(_first(e, "IPSET_ATTR_IP", "IPSET_ATTR_IP_FROM") if ip_seen == 1 else e.get_attr("IPSET_ATTR_IP2"))
            cidr = e.get_attr("IPSET_ATTR_CIDR" if ip_seen == 1 else "IPSET_ATTR_CIDR2")
            out.append(f"{ip}/{cidr}" if cidr is not None and int(cidr) != full else str(ip))
        elif part == "port":
            port, proto = _first(e, "IPSET_ATTR_PORT", "IPSET_ATTR_PORT_FROM"), e.get_attr("IPSET_ATTR_PROTO")
            if proto is None:
                out.append(str(port))
            else:
                out.append(f"{IPSET_PROTOS.get(int(proto), str(proto))}:{port}")
        elif part == "mark":
            out.append(hex(int(e.get_attr("IPSET_ATTR_MARK") or 0)))
        elif part == "mac":
            out.append(str(e.get_attr("IPSET_ATTR_ETHER")))
        elif part == "iface":
            out.append(str(e.get_attr("IPSET_ATTR_IFACE")))
        else:
            out.append(str(e.get_attr("IPSET_ATTR_NAME") or "?"))
    member = ",".join(out)
    timeout = e.get_attr("IPSET_ATTR_TIMEOUT")
    if timeout is not None:
        member += f" timeout {timeout}"
    comment = e.get_attr("IPSET_ATTR_COMMENT")
    if comment is not None:
        member += f' comment "{comment}"'
    return member


def ipset_save(messages: list[Any]) -> str:
    """`ipset save` lines: a `create` per set, then its members (a set may span several messages)."""
    created: list[str] = []
    lines: list[str] = []
    for m in messages:
        name = m.get_attr("IPSET_ATTR_SETNAME")
        typename = m.get_attr("IPSET_ATTR_TYPENAME") or "?"
        family = int(m.get_attr("IPSET_ATTR_FAMILY") or socket.AF_INET)
        if name not in created:
            created.append(name)
            data = m.get_attr("IPSET_ATTR_DATA")
            head = f"create {name} {typename}"
            if typename.startswith("hash:"):
                head += f" family {'inet' if family == socket.AF_INET else 'inet6'}"
            if data is not None:
                head += _ipset_options(typename, data)
            lines.append(head)
        adt = m.get_attr("IPSET_ATTR_ADT")
        for e in (adt.get_attrs("IPSET_ATTR_DATA") if adt is not None else []):
            lines.append(f"add {name} {ipset_member(typename, family, e)}")
    return "".join(line + "\n" for line in lines)


IPSET_CADT_FLAGS = ((1 << 3, "counters"), (1 << 4, "comment"), (1 << 5, "forceadd"), (1 << 6, "skbinfo"))


def _ipset_options(typename: str, data: Any) -> str:
    """The `create` options ipset save prints that describe the set (not its memory or references)."""
    out = ""
    if typename.startswith("bitmap:"):
        lo = _first(data, "IPSET_ATTR_IP", "IPSET_ATTR_IP_FROM")
        if lo is not None:
            out += f" range {_ipset_ip(lo)}-{_ipset_ip(data.get_attr('IPSET_ATTR_IP_TO'))}"
        elif data.get_attr("IPSET_ATTR_PORT_FROM") is not None:
            out += f" range {data.get_attr('IPSET_ATTR_PORT_FROM')}-{data.get_attr('IPSET_ATTR_PORT_TO')}"
    for key, word in (("IPSET_ATTR_HASHSIZE", "hashsize"), ("IPSET_ATTR_MAXELEM", "maxelem"),
                      ("IPSET_ATTR_TIMEOUT", "timeout"), ("IPSET_ATTR_SIZE", "size")):
        v = data.get_attr(key)
        if v is not None:
            out += f" {word} {v}"
    flags = int(data.get_attr("IPSET_ATTR_CADT_FLAGS") or 0)
    out += "".join(f" {word}" for bit, word in IPSET_CADT_FLAGS if flags & bit)
    return out


def _ipset_dump() -> str:
    from pyroute2.ipset import IPSet  # type: ignore[import-not-found,import-untyped,unused-ignore]

    with IPSet() as ips:
        return ipset_save(list(ips.list()))


def ipset_capture(name: str) -> Capture | None:
    """Every ipset with its members over netlink, as `ipset save` prints them."""
    if not _pyroute2():
        return None
    return _run(name, "ipset list", _ipset_dump)
