from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.routing import BridgePort, FdbEntry
from kptrace.parsers.bridge import (
    parse_brctl_show,
    parse_brctl_showmacs,
    parse_bridge_fdb,
    parse_bridge_link,
)
from tests.parsers.test_ip_route import fixture, junk_json, junk_text

# `port_no` of each cni0 port in the fixture's `ip -d link` (bridge_slave … port_no 0x1).
PORT_NAMES = {1: "veth44184a66", 2: "vethaa5fcf1f", 3: "veth3a7a0273"}


@pytest.fixture(scope="module")
def fdb() -> list[FdbEntry]:
    return parse_bridge_fdb(fixture("bridge-fdb.txt"), "bridge-fdb.txt")


def test_fdb_vxlan_destinations(fdb: list[FdbEntry]) -> None:
    assert len(fdb) == 48
    vxlan = {e.mac: e for e in fdb if e.dev == "flannel.1"}
    assert set(vxlan) == {"5a:f0:83:27:c4:9e", "e6:1c:a4:0f:7b:21"}
    e = vxlan["5a:f0:83:27:c4:9e"]
    assert e.dst == ip_address("192.168.56.12") and e.flags == ("self", "permanent") and e.master is None
    assert vxlan["e6:1c:a4:0f:7b:21"].dst == ip_address("192.168.56.10")
    assert str(e.source) == "bridge-fdb.txt:7"


def test_fdb_bridge_entries(fdb: list[FdbEntry]) -> None:
    on_cni0 = [e for e in fdb if e.master == "cni0"]
    assert len(on_cni0) == 7
    learned = [e for e in on_cni0 if e.flags == ()]
    assert {(e.mac, e.dev) for e in learned} == {
        ("da:ef:07:04:db:cc", "veth44184a66"), ("8e:3a:4b:12:52:7f", "vethaa5fcf1f"), ("06:6a:93:a1:64:b2", "veth3a7a0273")}
    own = [e for e in on_cni0 if e.dev == "cni0"]
    assert [(e.mac, e.flags) for e in own] == [("9e:41:c7:2d:80:1a", ("permanent",))]


def test_fdb_other_forms() -> None:
    zero, vlan, bare = parse_bridge_fdb(
        "00:00:00:00:00:00 dev vxlan0 dst 203.0.113.7 via eth0 port 4789 vni 100 self permanent\n"
        "02:42:AC:11:00:02 dev veth1 vlan 10 master br0 extern_learn static\n"
        "5a:f0:83:27:c4:9e dev vxlan0 self master sticky\n"
    )
    assert zero.dst == ip_address("203.0.113.7") and zero.flags == ("self", "permanent")
    assert vlan.vlan == 10 and vlan.master == "br0" and vlan.mac == "02:42:ac:11:00:02"
    assert vlan.flags == ("extern_learn", "static")
    assert bare.master is None and bare.flags == ("self", "master", "sticky")


def test_bridge_link_hairpin() -> None:
    ports = parse_bridge_link(fixture("bridge-link.txt"), "bridge-link.txt")
    assert [(p.name, p.master, p.state, p.hairpin) for p in ports] == [
        ("veth44184a66", "cni0", "forwarding", True), ("vethaa5fcf1f", "cni0", "forwarding", True),
        ("veth3a7a0273", "cni0", "forwarding", False)]
    assert str(ports[2].source) == "bridge-link.txt:5"
    plain = parse_bridge_link(fixture("bridge-link-plain.txt"))
    assert [p.hairpin for p in plain] == [None, None, None]  # not shown without -d


def test_bridge_link_skips_non_ports() -> None:
    text = "4: br0: <BROADCAST,MULTICAST,UP> mtu 1500 state forwarding priority 32 cost 100\n"
    assert parse_bridge_link(text) == []
    assert parse_bridge_link('[{"ifname":"br0","state":"forwarding"}]') == []


def test_brctl_show() -> None:
    ports = parse_brctl_show(fixture("brctl-show.txt"), "brctl-show.txt")
    assert [(p.name, p.master, p.state, p.hairpin) for p in ports] == [
        ("veth3a7a0273", "cni0", None, None), ("veth44184a66", "cni0", None, None), ("vethaa5fcf1f", "cni0", None, None)]
    assert [(p.source.line, p.source.col) for p in ports] == [(2, 29), (3, 8), (4, 8)]  # type: ignore[union-attr]
    empty = "bridge name\tbridge id\t\tSTP enabled\tinterfaces\ndocker0\t\t8000.02425b9e3ac1\tno\t\t\n"
    assert parse_brctl_show(empty) == []


def test_brctl_showmacs() -> None:
    text = fixture("brctl-showmacs-cni0.txt")
    bare = parse_brctl_showmacs(text)
    assert len(bare) == 6 and {e.dev for e in bare} == {"port 1", "port 2", "port 3"} and bare[0].master is None
    named = parse_brctl_showmacs(text, "brctl-showmacs.txt", bridge="cni0", port_names=PORT_NAMES)
    local = {(e.mac, e.dev) for e in named if e.flags == ("permanent",)}
    assert local == {("52:32:f1:e1:c7:ae", "veth44184a66"), ("3e:28:7b:66:6c:6e", "vethaa5fcf1f"),
                     ("5e:55:4b:b3:df:14", "veth3a7a0273")}
    assert all(e.master == "cni0" for e in named)


@pytest.mark.parametrize(
    ("parse", "text", "line", "col", "message"),
    [
        (parse_bridge_fdb, "dev eth0 self permanent\n", 1, 1, "expected a MAC address"),
        (parse_bridge_fdb, "00:11:22:33:44:55 self permanent\n", 1, 1, "no 'dev'"),
        (parse_bridge_fdb, "00:11:22:33:44:55 dev vx dst 10.0.0.300 self\n", 1, 30, "invalid address"),
        (parse_bridge_fdb, "00:11:22:33:44:55 dev vx vlan\n", 1, 26, "'vlan' needs a value"),
        (parse_bridge_fdb, '[{"mac":"00:11:22:33:44:55"}]', 1, 2, "needs 'mac' and 'ifname'"),
        (parse_bridge_link, "veth0: <UP> master br0\n", 1, 1, "expected 'N: name: <FLAGS>"),
        (parse_bridge_link, "    hairpin on\n", 1, 5, "continuation line before any port"),
        (parse_bridge_link, '[{"ifname":"v","master":"br0","hairpin":"on"}]', 1, 2, "'hairpin' should be true or false"),
        (parse_brctl_show, "br0 8000.0\n", 1, 1, "expected 'bridge-name"),
        (parse_brctl_show, "\t\t\tveth0\n", 1, 4, "interface line before any bridge"),
        (parse_brctl_showmacs, "  x\t00:11:22:33:44:55\tno\t\t0.00\n", 1, 3, "expected a number"),
        (parse_brctl_showmacs, "  1\t00:11:22:33:44\tno\t\t0.00\n", 1, 1, "expected 'port-no mac"),
    ],
)
def test_errors_are_located(parse, text: str, line: int, col: int, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParseError) as e:
        parse(text, "bridge.txt")
    assert (e.value.line, e.value.col) == (line, col) and message in e.value.message


VOCAB = ["00:11:22:33:44:55", "dev", "dst", "vlan", "master", "self", "permanent", "static", "port", "vni", "5:",
         "veth0@eth0:", "<UP>", "state", "forwarding", "hairpin", "on", "off", "bridge name", "port no", "yes", "no", "0.00"]
JSON_KEYS = ["mac", "ifname", "dst", "vlan", "flags", "master", "state", "hairpin", "ifindex", "link"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), junk_text(VOCAB), junk_json(JSON_KEYS)))
def test_junk_gives_fdb_or_parse_error(text: str) -> None:
    for parse in (parse_bridge_fdb, parse_brctl_showmacs):
        try:
            result = parse(text, "junk")
        except ParseError:
            continue
        assert isinstance(result, list) and all(isinstance(e, FdbEntry) for e in result)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), junk_text(VOCAB), junk_json(JSON_KEYS)))
def test_junk_gives_ports_or_parse_error(text: str) -> None:
    for parse in (parse_bridge_link, parse_brctl_show):
        try:
            result = parse(text, "junk")
        except ParseError:
            continue
        assert isinstance(result, list) and all(isinstance(p, BridgePort) for p in result)
