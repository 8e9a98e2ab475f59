"""`nft -j list ruleset` (tests/fixtures/nft/*, real nft 1.0.6 output) gives the model the text gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kptrace.errors import ParseError
from kptrace.model.nft import Const, Match, Payload, UnknownStmt, Xt
from kptrace.parsers.nft_json import is_nft_json, parse_nft_json
from kptrace.parsers.nft_text import parse_nft_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nft"


def both(scenario: str):  # type: ignore[no-untyped-def]
    d = FIXTURES / scenario
    return (parse_nft_text((d / "nft-ruleset.txt").read_text(), "nft-ruleset.txt"),
            parse_nft_json((d / "nft-ruleset.json").read_text(), "nft-ruleset.json"))


@pytest.mark.parametrize("scenario", ["kube-proxy", "expressions"])
def test_text_and_json_agree(scenario: str) -> None:
    text, js = both(scenario)
    assert list(text.tables) == list(js.tables)
    for key, t in text.tables.items():
        tj = js.tables[key]
        assert tj.comment in (None, t.comment)  # nft 1.0.6 leaves a table's comment out of its JSON
        assert list(t.chains) == list(tj.chains)
        for name, c in t.chains.items():
            cj = tj.chains[name]
            assert (c.type, c.hook, c.priority, c.policy) == (cj.type, cj.hook, cj.priority, cj.policy)
            for r, rj in zip(c.rules, cj.rules, strict=True):
                if any(isinstance(s, UnknownStmt) for s in r.stmts):
                    # `tcp option …`: unknown in both, the JSON keeps the statements after it.
                    assert any(isinstance(s, UnknownStmt) for s in rj.stmts)
                    continue
                assert (r.stmts, r.comment) == (rj.stmts, rj.comment), r.source
                assert r.text == rj.text  # JSON rules get nft's text back
        for name, s in t.sets.items():
            sj = tj.sets[name]
            assert (s.is_map, s.key_type, s.data_type, s.elements) == (sj.is_map, sj.key_type, sj.data_type, sj.elements)
            assert set(s.flags) - {"dynamic"} == set(sj.flags)


def test_iptables_nft_extensions_are_xt_in_json() -> None:
    """nft's JSON shows iptables-nft's extensions only by name; the text shows libxtables' translation."""
    text, js = both("iptables-mixed")
    svc = js.tables[("ip", "nat")].chains["KUBE-SVC-WEB"].rules[1]
    assert Xt("match", "statistic") in svc.stmts and Xt("target", "DNAT") in svc.stmts
    assert not any(isinstance(s, Xt) for s in text.tables[("ip", "nat")].chains["KUBE-SVC-WEB"].rules[1].stmts)
    assert js.tables[("ip", "nat")].iptables_nft and not js.tables[("inet", "filter")].iptables_nft
    # The plain nft table is the same in both.
    for c, cj in zip(text.tables[("inet", "filter")].chains.values(), js.tables[("inet", "filter")].chains.values()):
        assert [r.stmts for r in c.rules] == [r.stmts for r in cj.rules]


def test_citations() -> None:
    _, js = both("kube-proxy")
    r = js.tables[("ip", "kube-proxy")].chains["services"].rules[0]
    # Compact output is one line: the JSON path says which object.
    assert str(r.source).startswith("nft-ruleset.json:$.nftables[") and r.source.source.line == 1
    el = js.tables[("ip", "kube-proxy")].sets["service-ips"].elements[0]
    assert ".map.elem[0]" in str(el.source)
    pretty = json.dumps(json.loads((FIXTURES / "kube-proxy" / "nft-ruleset.json").read_text()), indent=2)
    rp = parse_nft_json(pretty, "pretty.json").tables[("ip", "kube-proxy")].chains["services"].rules[0]
    assert str(rp.source) == f"pretty.json:{rp.source.source.line}" and rp.source.source.line > 1
    assert pretty.splitlines()[rp.source.source.line - 1].strip().startswith("{")


def test_expressions_read() -> None:
    rs = parse_nft_json(json.dumps({"nftables": [
        {"table": {"family": "ip", "name": "t", "handle": 1}},
        {"chain": {"family": "ip", "table": "t", "name": "c", "handle": 1, "type": "filter", "hook": "input",
                   "prio": 0, "policy": "drop"}},
        {"rule": {"family": "ip", "table": "t", "chain": "c", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}},
            {"socket": {"key": "transparent"}}, {"accept": None}]}},
    ]}), "x.json")
    c = rs.tables[("ip", "t")].chains["c"]
    assert c.policy == "drop" and c.priority == 0
    stmts = c.rules[0].stmts
    assert stmts[0] == Match(Payload("tcp", "dport"), "==", Const(22))
    assert isinstance(stmts[1], UnknownStmt) and "socket" in stmts[1].why
    assert rs.diagnostics and "$.nftables[2].rule.expr[1]" in rs.diagnostics[0].message


@pytest.mark.parametrize(("text", "message"), [
    ('{"nftables": [{"table": {"family": "ip"', "invalid JSON"),
    ('[{"table": {}}]', 'expected {"nftables"'),
    ('{"nftables": [{"table": {"family": "ip", "name": 3}}]}', "'name' should be a string"),
    ('{"nftables": [{"chain": {"family": "ip", "table": "t", "name": "c", "hook": "input", "prio": "x"}}]}',
     "not a number"),
])
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_nft_json(text, "bad.json")


def test_sniff() -> None:
    assert is_nft_json('{"nftables": []}') and is_nft_json(' {\n  "nftables": [')
    assert not is_nft_json('[{"dst": "default"}]')
