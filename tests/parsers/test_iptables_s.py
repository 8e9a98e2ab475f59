"""`iptables -S` and excerpts of `iptables-save` (greps): tables inferred and said, fragments, tolerance."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kptrace.parsers.iptables_s import (default_table_of, parse_iptables_s, rendered, table_of_builtins, table_of_target)
from kptrace.parsers.placeholders import NOT_SHOWN, is_not_shown
from kptrace.parsers.iptables_save import render_rule, tokenize

S_FILTER = """\
-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N KUBE-FORWARD
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
"""


def test_s_listing_is_complete_and_filter() -> None:
    res = parse_iptables_s(S_FILTER, "s")
    rs = res.ruleset
    assert list(rs.tables) == ["filter"]
    assert rs.chain("filter", "FORWARD").policy == "DROP"  # type: ignore[union-attr]
    assert res.complete == {("filter", "INPUT"), ("filter", "FORWARD"), ("filter", "OUTPUT"), ("filter", "KUBE-FORWARD")}
    assert not res.fragments and not res.unparsed and not rs.assumptions
    r = rs.chain("filter", "KUBE-FORWARD").rules[1]  # type: ignore[union-attr]
    assert r.index == 2 and r.source.line == 7 and rendered(r) == "-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT"


def test_s_v_counters_and_nat_built_ins() -> None:
    text = ("-P PREROUTING ACCEPT -c 10 600\n-P INPUT ACCEPT -c 0 0\n-P OUTPUT ACCEPT -c 0 0\n-P POSTROUTING ACCEPT -c 0 0\n"
            "-N KUBE-SERVICES\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -c 3 180 -j KUBE-SERVICES\n")
    res = parse_iptables_s(text, "s")
    assert list(res.ruleset.tables) == ["nat"] and not res.unparsed
    r = res.ruleset.chain("nat", "PREROUTING").rules[0]  # type: ignore[union-attr]
    assert r.target is not None and r.target.name == "KUBE-SERVICES"


def test_table_given_by_the_command_wins() -> None:
    res = parse_iptables_s("-N KUBE-SVC-X\n-A KUBE-SVC-X -j KUBE-SEP-Y\n", "s", table="filter")
    assert list(res.ruleset.tables) == ["filter"]


def test_grep_infers_tables_from_names_and_targets_and_says_so() -> None:
    grep = ("-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-ABC\n"
            "-A KUBE-SERVICES -d 10.96.0.30/32 -p tcp -m tcp --dport 443 -j REJECT --reject-with icmp-port-unreachable\n"
            "-A KUBE-SVC-ABC -j KUBE-SEP-DEF\n"
            "-A FORWARD -d 10.244.1.4/32 -j DROP\n")
    res = parse_iptables_s(grep, "g", excerpt=True)
    rs = res.ruleset
    assert sorted(rs.tables) == ["filter", "nat"]
    assert [r.target.name for r in rs.chain("nat", "KUBE-SERVICES").rules] == ["KUBE-SVC-ABC"]  # type: ignore[union-attr]
    assert [r.target.name for r in rs.chain("filter", "KUBE-SERVICES").rules] == ["REJECT"]  # type: ignore[union-attr]
    assert rs.chain("filter", "FORWARD") is not None
    assert ("nat", "KUBE-SVC-ABC") in res.fragments and not res.complete
    assert any("point at tables" in a for a in rs.assumptions) and any("inferred" in a for a in rs.assumptions)


def test_ambiguous_chain_says_it_guessed() -> None:
    res = parse_iptables_s("-A MYCHAIN -s 10.0.0.0/8 -j MYOTHER\n", "g", excerpt=True)
    assert list(res.ruleset.tables) == ["filter"]
    assert any("ambiguous" in a for a in res.ruleset.assumptions)


def test_grep_that_kept_table_lines_uses_them() -> None:
    text = "*nat\n-A MYCHAIN -j RETURN\nCOMMIT\n*filter\n-A MYCHAIN -j DROP\nCOMMIT\n"
    rs = parse_iptables_s(text, "g", excerpt=True).ruleset
    assert rs.chain("nat", "MYCHAIN") is not None and rs.chain("filter", "MYCHAIN") is not None


def test_unreadable_rule_is_kept_in_its_chain() -> None:
    res = parse_iptables_s("-N X\n-A X -j ACCEPT\n-A X --bogus 1 -j ACCEPT\n-A X -j DROP\nnot a rule at all\n", "s")
    rules = res.ruleset.chain("filter", "X").rules  # type: ignore[union-attr]
    assert len(rules) == 3 and not rules[1].matches[0].known and "unknown option '--bogus'" in rules[1].matches[0].why_unknown
    assert [u.source.line for u in res.unparsed] == [3, 5]


def test_wrapped_rule_is_joined() -> None:
    line = '-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-ABC'
    text = "-N KUBE-SERVICES\n" + line[:80] + "\n" + line[80:] + "\n"
    res = parse_iptables_s(text, "s", table="nat")
    rules = res.ruleset.chain("nat", "KUBE-SERVICES").rules  # type: ignore[union-attr]
    assert len(rules) == 1 and rendered(rules[0]) is not None and rules[0].source.line == 2
    assert not res.unparsed
    shell = parse_iptables_s("-N X\n-A X -p tcp \\\n  --dport 80 -j ACCEPT\n", "s").ruleset.chain("filter", "X")
    assert shell is not None and len(shell.rules) == 1 and shell.rules[0].matches[0].opt("--dport") is not None


def test_bad_policy_line_is_unknown_policy() -> None:
    res = parse_iptables_s("-P FORWARD MAYBE\n-A FORWARD -j ACCEPT\n", "s")
    fwd = res.ruleset.chain("filter", "FORWARD")
    assert fwd is not None and fwd.policy is None and is_not_shown(fwd.rules[-1]) and res.unparsed


def test_first_line_offsets_sources() -> None:
    res = parse_iptables_s("-N X\n-A X -j ACCEPT\n", "paste.txt", first_line=40)
    assert str(res.ruleset.chain("filter", "X").rules[0].source) == "paste.txt:41"  # type: ignore[union-attr]


@pytest.mark.parametrize(("names", "table"), [
    ({"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"}, "nat"),
    ({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}, "mangle"),
    ({"PREROUTING", "OUTPUT"}, "raw"),
    ({"INPUT", "FORWARD", "OUTPUT"}, "filter"),
])
def test_table_of_builtins(names: set[str], table: str) -> None:
    assert table_of_builtins(names, set())[0] == table


def test_table_hints() -> None:
    assert table_of_target("DNAT") == "nat" and table_of_target("CT") == "raw" and table_of_target("REJECT") == "filter"
    assert table_of_target("KUBE-SEP-ABCDEF") == "nat" and table_of_target("KUBE-FORWARD") == "filter"
    assert default_table_of("POSTROUTING") == "nat" and default_table_of("FOO") == "filter"
    assert NOT_SHOWN == "kptrace-not-shown"


# --- properties ------------------------------------------------------------------------------------------

_addr = st.builds(lambda a, b, p: f"10.{a}.{b}.0/{p}", st.integers(0, 255), st.integers(0, 255), st.integers(8, 32))


@st.composite
def s_rules(draw: st.DrawFn) -> str:
    parts: list[str] = []
    if draw(st.booleans()):
        parts += (["!"] if draw(st.booleans()) else []) + ["-s", draw(_addr)]
    proto = draw(st.sampled_from(["tcp", "udp", None]))
    if proto:
        parts += ["-p", proto]
        if draw(st.booleans()):
            parts += ["-m", proto, "--dport", str(draw(st.integers(1, 65535)))]
    if draw(st.booleans()):
        parts += ["-m", "conntrack", "--ctstate", draw(st.sampled_from(["NEW", "RELATED,ESTABLISHED"]))]
    if draw(st.booleans()):
        parts += ["-c", str(draw(st.integers(0, 10**9))), str(draw(st.integers(0, 10**12)))]
    parts += draw(st.sampled_from([["-j", "ACCEPT"], ["-j", "KUBE-X"], ["-j", "DNAT", "--to-destination", "10.1.1.1:80"]]))
    return "-A KUBE-X " + " ".join(parts)


@settings(max_examples=300, deadline=None)
@given(st.lists(s_rules(), min_size=1, max_size=5))
def test_generated_s_rules_round_trip(lines: list[str]) -> None:
    text = "-N KUBE-X\n" + "\n".join(lines) + "\n"
    res = parse_iptables_s(text, "gen", table="nat")
    rules = res.ruleset.chain("nat", "KUBE-X").rules  # type: ignore[union-attr]
    assert not res.unparsed and len(rules) == len(lines)
    words = lambda s: [w for w, _ in tokenize(s, "gen", 1)]  # noqa: E731
    for r, line in zip(rules, lines):
        expected = words(line)
        if "-c" in expected:
            k = expected.index("-c")
            del expected[k : k + 3]
        assert words(render_rule(r)) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
@example("-A \"\n-P X\n-N\n:X\n*nope\n[1:2] -A\n-A X -s 1.2.3.4/99 -j\n")
@example("-A X " + "! " * 50 + "\n-A X -j " + "Y" * 10000)
def test_junk_never_raises(junk: str) -> None:
    res = parse_iptables_s(junk, "junk")
    for u in res.unparsed:
        assert u.source.line >= 1
    for excerpt in (True, False):
        parse_iptables_s(junk, "junk", table="nat", excerpt=excerpt)
