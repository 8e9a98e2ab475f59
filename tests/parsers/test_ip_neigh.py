from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.routing import Neighbor
from kptrace.parsers.ip_neigh import parse_ip_neigh
from tests.parsers.test_ip_route import fixture, junk_json, junk_text


@pytest.fixture(scope="module")
def neigh() -> dict[str, Neighbor]:
    return {str(n.dst): n for n in parse_ip_neigh(fixture("ip-neigh.txt"), "ip-neigh.txt")}


def test_flannel_vtep_entries_are_permanent(neigh: dict[str, Neighbor]) -> None:
    assert len(neigh) == 12
    for vtep, mac in [("10.244.2.0", "5a:f0:83:27:c4:9e"), ("10.244.0.0", "e6:1c:a4:0f:7b:21")]:
        n = neigh[vtep]
        assert (n.dev, n.lladdr, n.state, n.router) == ("flannel.1", mac, "PERMANENT", False)
        assert n.source is not None and n.source.text.startswith(vtep + " dev flannel.1")


def test_other_entries(neigh: dict[str, Neighbor]) -> None:
    gw6 = neigh["fd00:56::1"]
    assert gw6.router and gw6.state == "STALE" and gw6.dev == "eth0"
    assert neigh["192.168.56.1"].lladdr == "0a:00:27:00:00:00"
    assert sum(n.dev == "cni0" for n in neigh.values()) == 6


def test_other_forms() -> None:
    failed, stats, noarp = parse_ip_neigh(
        "10.244.1.77 dev cni0  FAILED\n"
        "10.244.1.5 dev cni0 lladdr da:ef:07:04:db:cc used 10/10/7 probes 1 STALE\n"
        "10.250.0.9 dev down0 lladdr 02:00:00:00:00:21 extern_learn NOARP\n"
    )
    assert failed.lladdr is None and failed.state == "FAILED" and failed.dst == ip_address("10.244.1.77")
    assert stats.state == "STALE" and stats.lladdr == "da:ef:07:04:db:cc"
    assert noarp.state == "NOARP"
    (j,) = parse_ip_neigh('[{"dst":"10.0.0.1","dev":"eth0","state":["REACHABLE","NOARP"]}]')
    assert j.state == "REACHABLE,NOARP" and j.lladdr is None


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("10.0.0.1 lladdr 00:11:22:33:44:55 REACHABLE\n", 1, 1, "no 'dev'"),
        ("10.0.0.1 dev eth0 STALE\nnonsense dev eth0\n", 2, 1, "invalid address 'nonsense'"),
        ("10.0.0.1 dev\n", 1, 10, "'dev' needs a value"),
        ('[{"dst":"10.0.0.1"}]', 1, 2, "needs 'dst' and 'dev'"),
        ('[{"dst":"10.0.0.1","dev":"eth0","state":"STALE"}]', 1, 2, "'state' should be a list"),
    ],
)
def test_errors_are_located(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_ip_neigh(text, "neigh.txt")
    assert (e.value.line, e.value.col) == (line, col) and message in e.value.message


VOCAB = ["dev", "lladdr", "router", "REACHABLE", "STALE", "PERMANENT", "FAILED", "used", "probes", "proxy"]
JSON_KEYS = ["dst", "dev", "lladdr", "state", "router", "proxy"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), junk_text(VOCAB), junk_json(JSON_KEYS)))
@example('[{"dst":"10.0.0.1","dev":"eth0","state":[1]}]')
def test_junk_gives_neighbours_or_parse_error(text: str) -> None:
    try:
        result = parse_ip_neigh(text, "junk")
    except ParseError:
        return
    assert isinstance(result, list) and all(isinstance(n, Neighbor) for n in result)
