"""`nft list ruleset` text (tests/fixtures/nft/*, real nft 1.0.6 output) and `nft -f` transactions."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.nft import (
    AnonSet,
    Binop,
    Concat,
    Const,
    Ct,
    Fib,
    Flags,
    Mangle,
    Match,
    Meta,
    Nat,
    Numgen,
    Payload,
    Prefix,
    Range,
    Reject,
    SetRef,
    SetUpdate,
    UnknownStmt,
    Verdict,
    VerdictExpr,
    Vmap,
    Xt,
)
from kptrace.parsers.nft_text import parse_nft_text, render_rule, tokenize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nft"
SCENARIOS = ["kube-proxy", "iptables-mixed", "expressions"]


def load(scenario: str, name: str = "nft-ruleset.txt"):  # type: ignore[no-untyped-def]
    return parse_nft_text((FIXTURES / scenario / name).read_text(), name)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_round_trip(scenario: str) -> None:
    """Rendering each parsed rule gives back nft's own text for it.

    In iptables-nft's tables nft prints libxtables' translation of an extension (`meta mark set mark
    or 0x4000` for -j MARK), not its native form: there the rendered text parses to the same rule.
    """
    rs = load(scenario)
    assert rs.all_rules()
    for t in rs.tables.values():
        for c in t.chains.values():
            for r in c.rules:
                rendered = render_rule(r.stmts, r.comment)
                if t.iptables_nft:
                    again = parse_nft_text(f"table ip t {{ chain c {{\n{rendered}\n}} }}", "again")
                    assert again.tables[("ip", "t")].chains["c"].rules[0].stmts == r.stmts, r.source
                else:
                    assert rendered == r.text, r.source


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_sources_cite_the_rule_line(scenario: str) -> None:
    text = (FIXTURES / scenario / "nft-ruleset.txt").read_text().splitlines()
    for r in load(scenario).all_rules():
        assert " ".join(text[r.source.source.line - 1].split()) == r.text
        assert str(r.source) == f"nft-ruleset.txt:{r.source.source.line}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_handles_listing_is_the_same_ruleset(scenario: str) -> None:
    plain, handles = load(scenario), load(scenario, "nft-ruleset.handles.txt")
    assert [(r.chain, r.stmts) for r in plain.all_rules()] == [(r.chain, r.stmts) for r in handles.all_rules()]
    assert all(r.handle is not None for r in handles.all_rules())


def test_kube_proxy_fixture() -> None:
    rs = load("kube-proxy")
    assert set(rs.tables) == {("ip", "kube-proxy"), ("ip6", "kube-proxy")}
    t = rs.tables[("ip", "kube-proxy")]
    assert t.comment == "rules for kube-proxy"
    fp = t.chains["filter-prerouting"]
    assert (fp.type, fp.hook, fp.priority, fp.priority_text, fp.policy) == ("filter", "prerouting", -110, "dstnat - 10", "accept")
    assert t.chains["nat-postrouting"].priority == 100
    svc = t.sets["service-ips"]
    assert svc.is_map and svc.key_type == ("ipv4_addr", "inet_proto", "inet_service") and svc.data_type == "verdict"
    el = next(e for e in svc.elements if e.key == Concat((Const("10.96.0.10"), Const("tcp"), Const(80))))
    assert el.value == VerdictExpr("goto", "service-CLLS5CZR-default/web/tcp/p80")
    # Elements over several lines cite their own line.
    lines = (FIXTURES / "kube-proxy" / "nft-ruleset.txt").read_text().splitlines()
    assert "10.96.0.10 . tcp . 80" in lines[el.source.source.line - 1]  # type: ignore[union-attr]
    noep = t.sets["no-endpoint-services"].elements
    assert any(e.comment == "default/empty:p80" and e.value == VerdictExpr("goto", "reject-chain") for e in noep)
    aff = next(s for n, s in t.sets.items() if n.startswith("affinity-"))
    assert aff.dynamic and "timeout" in aff.flags
    services = t.chains["services"].rules
    assert services[0].stmts == (Vmap(Concat((Payload("ip", "daddr"), Meta("l4proto"), Payload("th", "dport"))),
                                      SetRef("service-ips")),)
    v6 = rs.tables[("ip6", "kube-proxy")].chains["services"].rules[1]
    assert v6.stmts[0] == Match(Fib(("daddr",), "type"), "==", Const("local"))
    assert v6.stmts[1] == Match(Payload("ip6", "daddr"), "!=", Const("::1"))
    assert not rs.diagnostics


def test_statements() -> None:
    rs = parse_nft_text("""table ip t {
    chain c {
        meta mark & 0x00004000 == 0x00000000 return
        meta mark set meta mark | 0x00004000
        numgen random mod 2 vmap { 0 : goto a, 1 : goto b }
        ct state established,related accept
        tcp flags syn / fin,syn,rst,ack accept
        meta l4proto tcp dnat to [fd00::1]:80
        tcp dport 80 dnat to 10.0.0.1-10.0.0.5:80-90 persistent
        masquerade fully-random
        reject with tcp reset
        ip saddr 10.0.0.0/8 tcp dport { 22, 80-90 } accept comment "ssh and web"
        update @aff { ip saddr }
        xt match "physdev" counter packets 0 bytes 0 accept
        socket transparent 1 accept
    }
    chain a { }
    chain b { }
}
""", "t.nft")
    r = [x.stmts for x in rs.tables[("ip", "t")].chains["c"].rules]
    assert r[0] == (Match(Binop("&", Meta("mark"), Const(0x4000)), "==", Const(0)), Verdict("return"))
    assert r[1] == (Mangle(Meta("mark"), Binop("|", Meta("mark"), Const(0x4000))),)
    assert isinstance(r[2][0], Vmap) and r[2][0].key == Numgen("random", 2)
    assert isinstance(r[2][0].data, AnonSet) and [e.value for e in r[2][0].data.elements] == [
        VerdictExpr("goto", "a"), VerdictExpr("goto", "b")]
    assert r[3][0] == Match(Ct("state"), "in", Flags((Const("established"), Const("related"))))
    assert r[4][0] == Match(Binop("&", Payload("tcp", "flags"), Flags((Const("fin"), Const("syn"), Const("rst"), Const("ack")))),
                            "==", Const("syn"))
    assert r[5][1] == Nat("dnat", None, Const("fd00::1"), Const(80))
    assert r[6][1] == Nat("dnat", None, Range(Const("10.0.0.1"), Const("10.0.0.5")), Range(Const(80), Const(90)), ("persistent",))
    assert r[7] == (Nat("masquerade", flags=("fully-random",)),)
    assert r[8] == (Reject("tcp reset"),)
    assert r[9][0] == Match(Payload("ip", "saddr"), "==", Prefix("10.0.0.0", 8))
    assert rs.tables[("ip", "t")].chains["c"].rules[9].comment == "ssh and web"
    assert r[10] == (SetUpdate("update", "aff", Payload("ip", "saddr")),)
    assert r[11][0] == Xt("match", "physdev")
    # What kptrace does not model is kept, with the rest of the rule, and listed as a diagnostic.
    assert r[12] == (UnknownStmt("socket transparent 1 accept", "'socket transparent'"),)
    assert [d.source.line for d in rs.diagnostics] == [15]


def test_transaction_is_order_independent() -> None:
    """kube-proxy's expected output lists rules before the chains they `goto`; nft would refuse
    it, its test sorts it. Declared later or earlier, the model is the same."""
    text = """add table ip kp
add rule ip kp services ip daddr . meta l4proto . th dport vmap @service-ips
add chain ip kp nat-prerouting { type nat hook prerouting priority -100 ; }
add rule ip kp nat-prerouting jump services
add map ip kp service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add chain ip kp services
add element ip kp service-ips { 10.96.0.10 . tcp . 80 : goto svc }
add chain ip kp svc
add rule ip kp svc meta l4proto tcp dnat to 10.244.1.3:8080
"""
    rs = parse_nft_text(text, "tx.nft")
    t = rs.tables[("ip", "kp")]
    assert t.chains["nat-prerouting"].hook == "prerouting" and t.chains["nat-prerouting"].priority == -100
    assert t.chains["services"].source.source.line == 6  # cited where it is declared
    assert len(t.sets["service-ips"].elements) == 1
    assert not rs.diagnostics


def test_transaction_commands() -> None:
    rs = parse_nft_text("""add table inet f
add chain inet f c { type filter hook input priority 0 ; policy drop ; }
add rule inet f c tcp dport 22 accept
add rule inet f c tcp dport 80 accept
insert rule inet f c iifname "lo" accept
add rule inet f c index 0 tcp dport 443 accept
flush chain inet f c
add rule inet f c udp dport 53 accept
""", "tx.nft")
    c = rs.tables[("inet", "f")].chains["c"]
    assert c.policy == "drop" and [r.text for r in c.rules] == ["udp dport 53 accept"] and c.rules[0].index == 1
    rs = parse_nft_text("add table ip t\nadd chain ip t c\nadd rule ip t c accept\ninsert rule ip t c drop\n", "x")
    assert [r.text for r in rs.tables[("ip", "t")].chains["c"].rules] == ["drop", "accept"]
    rs = parse_nft_text("table ip t { chain c { accept } }\nflush ruleset\ntable ip u { }\n", "x")
    assert set(rs.tables) == {("ip", "u")}


def test_iptables_nft_warning_and_names() -> None:
    rs = parse_nft_text("# Warning: table ip nat is managed by iptables-nft, do not touch!\n"
                        "table ip nat {\n\tchain POSTROUTING {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n}\n"
                        "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n",
                        "w.txt")
    assert rs.tables[("ip", "nat")].iptables_warning and rs.tables[("ip", "nat")].iptables_nft
    assert not rs.tables[("inet", "filter")].iptables_nft
    mixed = load("iptables-mixed")
    assert mixed.tables[("ip", "filter")].iptables_nft and mixed.tables[("ip", "nat")].iptables_nft
    assert not mixed.tables[("inet", "filter")].iptables_nft


@pytest.mark.parametrize(("text", "line", "col", "message"), [
    ('table ip t {\n chain c {\n  iifname "eth0 accept\n }\n}\n', 3, 11, "unterminated string"),
    ("frobnicate ip t\n", 1, 1, "unknown command 'frobnicate'"),
    ("table ip t {\n chain c {\n  accept\n", 4, 1, "'}' missing"),
    ("table ip t {\n chain c {\n  type filter hook input priority sideways;\n }\n}\n", 3, 35, "unknown chain priority"),
    ("table ip t {\n widget w\n}\n", 2, 2, "unknown object 'widget'"),
])
def test_errors_are_located(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_nft_text(text, "bad.txt")
    assert (e.value.line, e.value.col) == (line, col) and message in e.value.message


# A small grammar of rules nft prints: each parses with nothing unknown and renders back.
_ADDR = st.builds(lambda a, b: f"10.{a}.{b}.1", st.integers(0, 255), st.integers(0, 255))
_MATCH = st.one_of(
    st.builds(lambda a: f"ip saddr {a}", _ADDR),
    st.builds(lambda a, n: f"ip daddr != {a.rsplit('.', 1)[0]}.0/{n}", _ADDR, st.integers(8, 24)),
    st.builds(lambda p: f"tcp dport {p}", st.integers(1, 65535)),
    st.builds(lambda p, q: f"udp sport {min(p, q)}-{max(p, q) + 1}", st.integers(1, 60000), st.integers(1, 60000)),
    st.sampled_from(["ct state new", "ct state established,related", "meta l4proto tcp", "fib daddr type local",
                     'iifname "eth0"', 'oifname != "cni0"', "meta mark & 0x00004000 == 0x00004000"]),
)
_VERDICT = st.sampled_from(["accept", "drop", "return", "jump x", "goto x", "counter packets 0 bytes 0 accept",
                            "meta mark set meta mark | 0x00004000", "masquerade", "reject"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_MATCH, max_size=4), _VERDICT)
@example([], "accept")
def test_generated_rules_round_trip(matches: list[str], verdict: str) -> None:
    rule = " ".join([*matches, verdict])
    rs = parse_nft_text(f"table ip t {{\n\tchain c {{\n\t\t{rule}\n\t}}\n\tchain x {{\n\t}}\n}}\n", "gen.txt")
    (r,) = rs.tables[("ip", "t")].chains["c"].rules
    assert r.text == rule and render_rule(r.stmts) == rule
    assert not any(isinstance(s, (UnknownStmt, Xt)) for s in r.stmts) and not rs.diagnostics


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('table ip chain {};\n"@.,:-/=!<>&|01 ')), max_size=80))
def test_junk_is_a_parse_error_or_kept(junk: str) -> None:
    try:
        parse_nft_text(junk, "junk.txt")
    except ParseError:
        pass


def test_tokens_keep_positions() -> None:
    toks = tokenize('table ip t { # handle 3\n  ip daddr @s accept\n}', "x")
    assert [(t.kind, t.text, t.line, t.col) for t in toks[:6]] == [
        ("word", "table", 1, 1), ("word", "ip", 1, 7), ("word", "t", 1, 10), ("punct", "{", 1, 12),
        ("handle", "3", 1, 14), ("nl", "\n", 1, 24)]
