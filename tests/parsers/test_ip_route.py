from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.routing import Route
from kptrace.parsers.ip_route import parse_ip_route

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "iproute2" / "flannel-node"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# ---------------------------------------------------------------------------------------------
# Junk strategies, shared by the other iproute2 parser tests.

ADDRESS_LIKE = ["10.0.0.1", "10.0.0.0/8", "default", "all", "fe80::1", "::/0", "999.1.1.1", "10.0.0.0/33", "0x4000/0x4000",
                "08:00:27:8a:41:11", "1", "-1", "0x", "eth0", "if2", "<UP>", "[", "]", "{", ":", "@"]


def junk_text(vocab: list[str]) -> st.SearchStrategy[str]:
    """Lines of known words, address-like words and random ones, with the separators dumps use."""
    word = st.one_of(st.sampled_from(vocab + ADDRESS_LIKE), st.text(max_size=10))
    sep = st.sampled_from([" ", "  ", "\t", "\n", "\n\t", "\n    ", "\r\n", ": ", "@"])
    return st.lists(st.tuples(word, sep), max_size=40).map(lambda parts: "".join(w + s for w, s in parts))


def junk_json(keys: list[str]) -> st.SearchStrategy[str]:
    """JSON lists whose objects use the real keys with values of any type."""
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=8), st.sampled_from(ADDRESS_LIKE))
    value = st.recursive(
        scalar, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(keys), inner, max_size=4)),
        max_leaves=8,
    )
    entry = st.dictionaries(st.sampled_from(keys), value, max_size=8)
    return st.tuples(st.lists(st.one_of(entry, value), max_size=4), st.sampled_from([None, 4])).map(
        lambda t: json.dumps(t[0], indent=t[1])
    )


def strip(items: list) -> list:  # type: ignore[type-arg]
    return [replace(x, source=None) for x in items]


# ---------------------------------------------------------------------------------------------
# The fixture: a flannel node (tests/lab_tools/make_iproute2_fixtures.py)


@pytest.fixture(scope="module")
def routes() -> list[Route]:
    return parse_ip_route(fixture("ip-route.txt"), "ip-route.txt")


def find(routes: list[Route], dst: str, table: str = "main", type: str = "unicast") -> Route:
    hits = [r for r in routes if r.dst == ip_network(dst) and r.table == table and r.type == type]
    assert len(hits) == 1, hits
    return hits[0]


def test_counts_by_table_and_family(routes: list[Route]) -> None:
    assert len(routes) == 65
    v4 = [r for r in routes if r.dst.version == 4]
    assert len(v4) == 26
    assert sum(r.table == "100" for r in v4) == 6
    assert sum(r.table == "main" for r in v4) == 9
    assert sum(r.table == "local" for r in v4) == 11
    assert sum(r.table == "100" for r in routes if r.dst.version == 6) == 2


def test_flannel_vxlan_route(routes: list[Route]) -> None:
    r = find(routes, "10.244.2.0/24")
    (nh,) = r.nexthops
    assert nh.gateway == ip_address("10.244.2.0") and nh.dev == "flannel.1" and nh.onlink and nh.flags == ()
    assert r.proto is None and r.scope is None and r.metric == 0
    assert str(r.source) == "ip-route.txt:12"
    assert r.source is not None and r.source.text.startswith("10.244.2.0/24 via 10.244.2.0")
    v6 = find(routes, "fd00:244:2::/64")
    assert v6.nexthops[0].onlink and v6.metric == 1024 and v6.pref == "medium"


def test_default_routes(routes: list[Route]) -> None:
    r = find(routes, "0.0.0.0/0")
    assert r.nexthops[0].gateway == ip_address("192.168.56.1") and r.nexthops[0].dev == "eth0" and r.proto == "static"
    assert find(routes, "0.0.0.0/0", table="100").proto is None
    v6 = find(routes, "::/0")
    assert v6.nexthops[0].gateway == ip_address("fd00:56::1") and v6.metric == 1024


def test_connected_and_local_table(routes: list[Route]) -> None:
    cni = find(routes, "10.244.1.0/24")
    assert cni.nexthops[0].gateway is None and cni.nexthops[0].dev == "cni0"
    assert cni.proto == "kernel" and cni.scope == "link" and cni.src == ip_address("10.244.1.1")
    local = find(routes, "10.244.1.1/32", table="local", type="local")
    assert local.scope == "host" and local.nexthops[0].dev == "cni0"
    vtep = find(routes, "10.244.1.0/32", table="local", type="local")
    assert vtep.nexthops[0].dev == "flannel.1"
    assert find(routes, "10.244.1.255/32", table="local", type="broadcast").scope == "link"
    assert find(routes, "127.0.0.0/8", table="local", type="local").src == ip_address("127.0.0.1")
    assert sum(r.type == "anycast" for r in routes) == 9
    assert sum(r.type == "multicast" and r.dst == ip_network("ff00::/8") for r in routes) == 7


def test_special_types_have_no_nexthop(routes: list[Route]) -> None:
    for dst, rtype in [("10.96.0.0/12", "throw"), ("10.97.0.0/16", "prohibit"), ("10.98.0.0/16", "unreachable"),
                       ("10.99.0.0/16", "blackhole")]:
        assert find(routes, dst, table="100", type=rtype).nexthops == ()
    # IPv6 shows its blackholes on lo
    assert find(routes, "fd00:99::/64", table="100", type="blackhole").nexthops[0].dev == "lo"


def test_multipath(routes: list[Route]) -> None:
    r = find(routes, "172.16.0.0/16", table="100")
    assert [(str(n.gateway), n.dev, n.weight) for n in r.nexthops] == [("192.168.56.21", "eth0", 1), ("192.168.56.22", "eth0", 3)]
    assert r.proto == "static" and r.source is not None and r.source.line == 6
    assert find(routes, "0.0.0.0/0").source.line == 9  # type: ignore[union-attr]  # after the two nexthop lines
    v6 = find(routes, "fd00:98::/64", table="100")
    assert [n.weight for n in v6.nexthops] == [1, 2] and v6.metric == 1024


def test_dead_linkdown_nhid_mtu(routes: list[Route]) -> None:
    mp = find(routes, "10.252.0.0/16")
    assert mp.nexthops[0].dev == "down2" and mp.nexthops[0].flags == ("dead", "linkdown")
    assert mp.nexthops[1].flags == ()
    assert find(routes, "10.250.0.0/24").nexthops[0].flags == ("linkdown",)
    nh = find(routes, "198.18.0.0/15")
    assert nh.nhid == 10 and nh.nexthops[0].gateway == ip_address("192.168.56.40")
    m = find(routes, "198.51.100.0/24")
    assert (m.metric, m.mtu, m.src, m.proto) == (100, 1400, ip_address("192.168.56.11"), "static")
    assert all(r.unknown == () for r in parse_ip_route(fixture("ip-route.txt")))


def test_plain_ip_r_is_the_main_ipv4_table(routes: list[Route]) -> None:
    main4 = [r for r in routes if r.table == "main" and r.dst.version == 4]
    assert strip(parse_ip_route(fixture("ip-r.txt"))) == strip(main4)


def test_ipv6_file() -> None:
    v6 = parse_ip_route(fixture("ip-6-route.txt"), "ip-6-route.txt")
    assert len(v6) == 39 and all(r.dst.version == 6 and r.pref == "medium" for r in v6)


def test_json_cites_where_each_entry_starts() -> None:
    pretty = parse_ip_route(fixture("ip-route.pretty.json"), "ip-route.json")
    assert (pretty[0].source.line, pretty[0].source.col) == (1, 3)  # type: ignore[union-attr]  # `[ {`
    assert (pretty[1].source.line, pretty[1].source.col) == (7, 7)  # type: ignore[union-attr]  # `    },{`
    assert pretty[1].source.text.startswith('[1] {"type":"throw"')  # type: ignore[union-attr]
    compact = parse_ip_route(fixture("ip-route.json"), "ip-route.json")
    assert {r.source.line for r in compact} == {1}  # type: ignore[union-attr]
    assert compact[1].source.col > compact[0].source.col  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Forms the fixture does not show


def test_default_family_comes_from_the_route() -> None:
    rs = parse_ip_route(
        "default dev wg0 table 51820 scope link\n"
        "unreachable default dev lo table 200 metric 4278198272 pref medium\n"
        "default via fe80::1 dev eth0 proto ra metric 1024 expires 1797sec hoplimit 64 pref medium\n"
    )
    assert [str(r.dst) for r in rs] == ["0.0.0.0/0", "::/0", "::/0"]
    assert rs[2].proto == "ra" and rs[2].unknown == ()  # expires/hoplimit read and dropped


def test_via_family_mtu_lock_and_detail_type() -> None:
    (r,) = parse_ip_route("unicast 10.1.0.0/16 via inet6 fe80::1 dev eth0 proto boot scope global mtu lock 1400\n")
    assert r.type == "unicast" and r.nexthops[0].gateway == ip_address("fe80::1") and r.mtu == 1400 and r.scope == "global"


def test_unknown_words_are_kept() -> None:
    (r,) = parse_ip_route("2001:db8::/64 from 2001:db8:1::/64 via fe80::1 dev eth0 metric 1024 shiny pref medium\n")
    assert r.unknown == ("from", "2001:db8:1::/64", "shiny")
    (j,) = parse_ip_route('[{"dst":"2001:db8::/64","src":"2001:db8:1::/64","gateway":"fe80::1","dev":"eth0","shiny":null}]')
    assert j.unknown == ("from", "2001:db8:1::/64", "shiny")


def test_json_via_object_and_lock_metric() -> None:
    (r,) = parse_ip_route(
        '[{"dst":"10.1.0.0/16","via":{"family":"inet6","host":"fe80::1"},"dev":"eth0","metrics":[{"mtu":["lock",1400]}]}]'
    )
    assert r.nexthops[0].gateway == ip_address("fe80::1") and r.mtu == 1400


def test_several_json_lists_in_one_file() -> None:
    rs = parse_ip_route('[{"dst":"10.0.0.0/8","dev":"eth0"}]\n[{"dst":"fd00::/8","dev":"eth0"}]\n')
    assert [r.source.text[:3] for r in rs] == ["[0]", "[1]"]  # type: ignore[union-attr]
    assert rs[1].source.line == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("Error: ipv4: FIB table does not exist.\n", 1, 1, "expected a route destination"),
        ("10.0.0.0/8 dev eth0\n10.1.0.0/16 via 10.0.0.300 dev eth0\n", 2, 17, "invalid address '10.0.0.300'"),
        ("\tnexthop via 10.0.0.1 dev eth0\n", 1, 2, "continuation line before any route"),
        ("10.0.0.0/8 dev\n", 1, 12, "'dev' needs a value"),
        ("10.0.0.0/99 dev eth0\n", 1, 1, "invalid destination"),
        ("local\n", 1, 6, "expected a destination"),
        ("10.0.0.0/8 dev eth0 metric many\n", 1, 28, "expected a number"),
        ('[{"dst":"10.0.0.0/8"},\n {"dev":"eth0"}]', 2, 2, "has no 'dst'"),
        ('[{"dst":"10.0.0.0/8",}]', 1, 22, "invalid JSON"),
        ('[{"dst":"10.0.0.0/8","metric":"x"}]', 1, 2, "'metric' should be a number"),
        ('[1]', 1, 2, "not a JSON object"),
        ('[{"dst":"10.0.0.0/8"}] trailing', 1, 24, "expected the JSON list"),
    ],
)
def test_errors_are_located(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_ip_route(text, "r.txt")
    assert (e.value.line, e.value.col) == (line, col) and message in e.value.message


VOCAB = ["default", "via", "dev", "table", "proto", "scope", "src", "metric", "nexthop", "weight", "onlink", "dead",
         "linkdown", "local", "broadcast", "blackhole", "unreachable", "mtu", "lock", "inet6", "pref", "nhid", "cache"]
JSON_KEYS = ["dst", "type", "gateway", "via", "dev", "table", "protocol", "scope", "prefsrc", "metric", "flags", "nexthops",
             "metrics", "mtu", "weight", "pref", "nhid", "host", "src", "tos"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), junk_text(VOCAB), junk_json(JSON_KEYS)))
@example("10.0.0.0/8 via inet6\n")
@example("10.0.0.0/8 mtu lock\n")
@example('[{"dst":"default","nexthops":[{"via":{"host":5}}]}]')
@example("[" * 5000)
def test_junk_gives_routes_or_parse_error(text: str) -> None:
    try:
        result = parse_ip_route(text, "junk")
    except ParseError:
        return
    assert isinstance(result, list) and all(isinstance(r, Route) for r in result)
