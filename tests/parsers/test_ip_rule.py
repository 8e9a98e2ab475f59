from __future__ import annotations

from ipaddress import ip_network

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.routing import PolicyRule
from kptrace.parsers.ip_rule import parse_ip_rule
from tests.parsers.test_ip_route import fixture, junk_json, junk_text


@pytest.fixture(scope="module")
def rules() -> dict[int, PolicyRule]:
    return {r.priority: r for r in parse_ip_rule(fixture("ip-rule.txt"), "ip-rule.txt")}


def test_default_rules(rules: dict[int, PolicyRule]) -> None:
    assert len(rules) == 11
    assert [(p, rules[p].table) for p in (0, 32766, 32767)] == [(0, "local"), (32766, "main"), (32767, "default")]
    assert all(rules[p].action == "lookup" and rules[p].src is None for p in (0, 32766, 32767))
    assert str(rules[32766].source) == "ip-rule.txt:10"


def test_selectors(rules: dict[int, PolicyRule]) -> None:
    assert rules[1000].fwmark == (0x4000, 0x4000) and rules[1000].table == "100"
    r = rules[1001]
    assert (r.src, r.dst, r.iif, r.oif) == (ip_network("10.244.1.0/24"), ip_network("10.96.0.0/12"), "cni0", None)
    assert rules[1004].oif == "flannel.1"
    assert rules[1005].fwmark == (1, 0xFFFFFFFF)  # no mask: all 32 bits


def test_not_and_suppress_prefixlength(rules: dict[int, PolicyRule]) -> None:
    r = rules[1002]
    assert r.invert and r.src == ip_network("10.244.0.0/16") and r.table == "main" and r.suppress_prefixlength == 0


def test_actions(rules: dict[int, PolicyRule]) -> None:
    assert [(rules[p].action, rules[p].table) for p in (1003, 1004, 1005)] == [
        ("blackhole", None), ("unreachable", None), ("prohibit", None)]
    assert rules[1003].dst == ip_network("203.0.113.0/24")
    assert (rules[1006].action, rules[1006].goto, rules[1006].iif) == ("goto", 32766, "eth0")


def test_unmodelled_selectors_are_kept(rules: dict[int, PolicyRule]) -> None:
    assert rules[1007].unknown == ("ipproto", "tcp", "dport", "8080") and rules[1007].table == "100"
    assert all(not r.unknown for p, r in rules.items() if p != 1007)


def test_ipv6_rules() -> None:
    rules = parse_ip_rule(fixture("ip-6-rule.txt"))
    assert [r.priority for r in rules] == [0, 1000, 1001, 32766]  # IPv6 has no 32767 "default" rule
    assert rules[2].src == ip_network("fd00:244:1::/64")


def test_other_forms() -> None:
    a, b, c = parse_ip_rule(
        "100:\tfrom all iif wg0 [detached] lookup 51820\n"
        "101:\tfrom all lookup main suppress_prefixlength 0 uidrange 1000-2000\n"
        "102:\tfrom 10.0.0.1 nop\n"
    )
    assert a.iif == "wg0" and a.unknown == ("[detached]",) and a.table == "51820"
    assert b.unknown == ("uidrange", "1000-2000")
    assert c.action == "nop" and c.table is None and c.src == ip_network("10.0.0.1/32")
    (j,) = parse_ip_rule('[{"priority":100,"src":"all","iif":"wg0","iif_detached":true,"table":"51820"}]')
    assert j.unknown == ("[detached]",)


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("from all lookup main\n", 1, 1, "expected 'PRIORITY:'"),
        ("0:\tfrom all lookup local\n1:\tfrom 10.0.0.300 lookup 1\n", 2, 9, "invalid prefix"),
        ("5:\tfrom all fwmark 0xzz lookup 1\n", 1, 20, "invalid fwmark"),
        ("5:\tfrom all goto\n", 1, 13, "'goto' needs a value"),
        ('[{"src":"all"}]', 1, 2, "has no 'priority'"),
    ],
)
def test_errors_are_located(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_ip_rule(text, "rule.txt")
    assert (e.value.line, e.value.col) == (line, col) and message in e.value.message


VOCAB = ["0:", "32766:", "from", "to", "all", "not", "lookup", "table", "iif", "oif", "fwmark", "goto", "blackhole",
         "suppress_prefixlength", "[detached]"]
JSON_KEYS = ["priority", "not", "src", "srclen", "dst", "dstlen", "iif", "oif", "fwmark", "fwmask", "table", "action",
             "goto", "suppress_prefixlen", "ipproto"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), junk_text(VOCAB), junk_json(JSON_KEYS)))
@example('[{"priority":1,"src":"10.0.0.0","srclen":99}]')
@example('[{"priority":1,"fwmark":"0x1","fwmask":"x"}]')
def test_junk_gives_rules_or_parse_error(text: str) -> None:
    try:
        result = parse_ip_rule(text, "junk")
    except ParseError:
        return
    assert isinstance(result, list) and all(isinstance(r, PolicyRule) for r in result)
