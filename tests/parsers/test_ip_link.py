from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.routing import Link, Vxlan
from kptrace.parsers.ip_link import parse_ip_link
from tests.parsers.test_ip_route import fixture, junk_json, junk_text


@pytest.fixture(scope="module")
def links() -> dict[str, Link]:
    return {link.name: link for link in parse_ip_link(fixture("ip-link.txt"), "ip-link.txt")}


def test_names_indices_and_kinds(links: dict[str, Link]) -> None:
    assert [(n, link.index, link.kind) for n, link in links.items()][:4] == [
        ("lo", 1, None), ("eth0", 2, "veth"), ("flannel.1", 3, "vxlan"), ("cni0", 4, "bridge")]
    assert len(links) == 11
    assert str(links["flannel.1"].source) == "ip-link.txt:6"


def test_flannel_vxlan(links: dict[str, Link]) -> None:
    f = links["flannel.1"]
    assert f.vxlan == Vxlan(vni=1, local=ip_address("192.168.56.11"), dev="eth0", dstport=8472)
    assert f.mtu == 1450 and f.mac == "42:9d:6e:b1:3a:05" and f.state == "UNKNOWN" and f.up


def test_bridge_ports_and_peers(links: dict[str, Link]) -> None:
    ports = [link for link in links.values() if link.master == "cni0"]
    assert [p.name for p in ports] == ["veth44184a66", "vethaa5fcf1f", "veth3a7a0273"]
    assert all(p.kind == "veth" and p.peer == "if2" and p.mtu == 1450 for p in ports)
    assert ports[0].netns == "kpt-fx-pod-a" and ports[0].netns_id is None  # named namespace: text shows the name
    eth0 = links["eth0"]
    assert eth0.peer == "if2" and eth0.netns_id == 0 and eth0.netns is None and eth0.mac == "08:00:27:8a:41:11"
    assert links["lo"].mac is None and links["lo"].flags == ("LOOPBACK", "UP", "LOWER_UP")


def test_down_links(links: dict[str, Link]) -> None:
    d0 = links["down0"]
    assert d0.peer == "down1" and d0.state == "LOWERLAYERDOWN" and "NO-CARRIER" in d0.flags and not d0.up
    assert not links["down2"].up and links["cni0"].up


def test_plain_ip_link_has_no_kind() -> None:
    plain = {link.name: link for link in parse_ip_link(fixture("ip-link-plain.txt"))}
    assert len(plain) == 11 and all(link.kind is None and link.vxlan is None for link in plain.values())
    assert plain["veth44184a66"].master == "cni0" and plain["eth0"].netns_id == 0


def test_json_cites_where_each_entry_starts() -> None:
    links = parse_ip_link(fixture("ip-link.pretty.json"), "ip-link.json")
    assert [(link.source.line, link.source.col) for link in links[:2]] == [(1, 3), (26, 7)]  # type: ignore[union-attr]
    assert links[2].vxlan is not None and links[2].vxlan.vni == 1


def test_other_forms() -> None:
    text = (
        "3: vx0: <BROADCAST,MULTICAST> mtu 1450 qdisc noop state DOWN mode DEFAULT group default qlen 1000\n"
        "    link/ether 3e:b0:10:96:7a:98 brd ff:ff:ff:ff:ff:ff promiscuity 0\n"
        "    vxlan external srcport 0 0 dstport 4789 nolearning\n"
        "    altname vxlan-ext\n"
        "4: wg0: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1420 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\n"
        "    link/none \n"
        "    RX:  bytes packets errors dropped  missed   mcast\n"
        "          1234      10      0       0       0       0\n"
    )
    vx, wg = parse_ip_link(text)
    assert vx.kind == "vxlan" and vx.vxlan is None  # no VNI shown: unknown, not defaulted
    assert wg.kind is None and wg.mac is None and wg.mtu == 1420  # `ip -s` lines are not a kind


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("eth0: <UP> mtu 1500\n", 1, 1, "expected 'N: name: <FLAGS>"),
        ("    link/ether 00:11:22:33:44:55\n", 1, 1, "continuation line before any link"),
        ("2: eth0: <UP> mtu big state UP\n", 1, 19, "expected a number"),
        ("3: vx: <UP> mtu 1450\n    vxlan id 1 local 1.2.3 dev eth0\n", 2, 22, "invalid address"),
        ("2: eth0: <UP> mtu\n", 1, 15, "'mtu' needs a value"),
        ('[{"ifindex":1}]', 1, 2, "has no 'ifname'"),
        ('[{"ifname":"x","linkinfo":[]}]', 1, 2, "'linkinfo' should be an object"),
    ],
)
def test_errors_are_located(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_ip_link(text, "link.txt")
    assert (e.value.line, e.value.col) == (line, col) and message in e.value.message


VOCAB = ["1:", "eth0:", "eth0@if2:", "<UP,LOWER_UP>", "<", ">", "mtu", "master", "state", "UP", "link/ether", "link-netnsid",
         "link-netns", "vxlan", "id", "local", "dev", "dstport", "veth", "bridge_slave", "altname"]
JSON_KEYS = ["ifindex", "ifname", "link", "link_index", "link_netnsid", "link_netns", "flags", "mtu", "master", "operstate",
             "link_type", "address", "linkinfo", "info_kind", "info_data", "id", "local", "port"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), junk_text(VOCAB), junk_json(JSON_KEYS)))
@example('[{"ifname":"v","linkinfo":{"info_kind":"vxlan","info_data":{"id":"x"}}}]')
@example('[{"ifname":"v","linkinfo":{"info_kind":["vxlan"]}}]')
def test_junk_gives_links_or_parse_error(text: str) -> None:
    try:
        result = parse_ip_link(text, "junk")
    except ParseError:
        return
    assert isinstance(result, list) and all(isinstance(link, Link) for link in result)
