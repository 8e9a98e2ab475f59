"""The fast path for kube-proxy's rule shapes (parsers/iptables_fast.py) makes exactly the general parser's model.

Every dump is parsed twice, with the fast path and with it switched off, and compared rule for rule: every
field (columns, conditions, matches, options, targets), the Source (file, line, col, text), the tokens
(quoted words stay `Quoted`), the index, the chains and their declarations. Inputs: generated 1k dumps (large
cluster mode on and off, with affinity, UDP, LoadBalancer, Local policies), every kube-proxy conformance
dump, and every iptables-save dump among the demo bundles and test fixtures.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from kptrace import load
from kptrace.errors import KptraceError, ParseError
from kptrace.model.netfilter import Rule, Ruleset
from kptrace.parsers import iptables_fast
from kptrace.parsers.iptables_fast import FastParser, shape
from kptrace.parsers.iptables_save import Quoted, _reindex, parse_iptables_save, parse_rule_line
from kptrace.testing.generator import generate_iptables
from tests.conformance.test_kube_proxy_iptables import IPTABLES

REPO = Path(__file__).resolve().parents[2]


def _general(text: str, file: str, monkeypatch: pytest.MonkeyPatch) -> Ruleset:
    with monkeypatch.context() as m:
        m.setattr(iptables_fast, "shape", lambda line: None)
        return parse_iptables_save(text, file).ruleset


def _fields(r: Rule) -> tuple[object, ...]:
    return tuple(getattr(r, f.name) for f in dataclasses.fields(Rule))


def assert_same_model(text: str, file: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Both parsers' rulesets are equal, rule for rule; returns how many rules the fast path read."""
    fast = parse_iptables_save(text, file).ruleset
    general = _general(text, file, monkeypatch)
    assert fast.family == general.family and fast.assumptions == general.assumptions
    assert list(fast.tables) == list(general.tables)
    n_fast = 0
    for name, t in fast.tables.items():
        g = general.tables[name]
        assert t.source == g.source
        assert list(t.chains) == list(g.chains)
        for cname, c in t.chains.items():
            gc = g.chains[cname]
            assert (c.policy, c.source, c.counters) == (gc.policy, gc.source, gc.counters)
            assert len(c.rules) == len(gc.rules), cname
            for r, gr in zip(c.rules, gc.rules):
                lazy = "tokens" not in _set_slots(r)
                n_fast += lazy
                assert r.source == gr.source and r.source.text == gr.source.text
                assert repr(r) == repr(gr), f"{r.source}: {r.source.text}"
                assert r == gr and hash(r) == hash(gr)
                assert [type(w) for w in r.tokens] == [type(w) for w in gr.tokens]
                assert [type(v) for m in r.matches for o in m.options for v in o.values] == \
                    [type(v) for m in gr.matches for o in m.options for v in o.values]
                assert _fields(r) == _fields(gr)
    return n_fast


def _set_slots(r: Rule) -> set[str]:
    out = set()
    for f in dataclasses.fields(Rule):
        try:
            object.__getattribute__(r, f.name)
            out.add(f.name)
        except AttributeError:
            pass
    return out


@pytest.mark.parametrize("large", [True, False])
def test_generated_dump(large: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generate_iptables(400, 10, seed=3, large_cluster_mode=large, affinity_fraction=0.05, udp_fraction=0.1,
                            lb_fraction=0.05, local_policy_fraction=0.1)
    n = assert_same_model(gen.text, "gen.txt", monkeypatch)
    rules = sum(1 for line in gen.text.splitlines() if line.startswith("-A "))
    assert n > 0.9 * rules  # the fast path does read kube-proxy's dumps


def _conformance_dumps() -> list[Path]:
    return sorted(p for p in IPTABLES.rglob("iptables-save*.txt")) if IPTABLES.is_dir() else []


@pytest.mark.parametrize("dump", _conformance_dumps(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_conformance_dumps(dump: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = dump.read_text()
    try:
        _general(text, str(dump), monkeypatch)
    except ParseError as e:  # (an original TestTracePacket dump iptables-restore refuses too: same error)
        with pytest.raises(ParseError) as fast:
            parse_iptables_save(text, str(dump))
        assert str(fast.value) == str(e)
        return
    assert_same_model(text, str(dump), monkeypatch)


def _fixture_dumps() -> list[Path]:
    out = []
    for root in (REPO / "kptrace" / "demo", REPO / "tests" / "fixtures"):
        for p in sorted(root.rglob("*")):
            if not p.is_file() or p.stat().st_size > 20_000_000:
                continue
            try:
                text = p.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            try:
                kind = load.sniff(p.name, text)
            except Exception:  # noqa: BLE001 (a fixture of hostile input)
                continue
            if kind in load.DUMP_KINDS:
                out.append(p)
    return out


@pytest.mark.parametrize("dump", _fixture_dumps(), ids=lambda p: str(p.relative_to(REPO)))
def test_fixture_dumps(dump: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = dump.read_text()
    for lenient in (False, True):
        problems_f: list[ParseError] = []
        problems_g: list[ParseError] = []
        try:
            with monkeypatch.context() as m:
                m.setattr(iptables_fast, "shape", lambda line: None)
                general = parse_iptables_save(text, str(dump), lenient=problems_g if lenient else None).ruleset
        except ParseError as e:
            with pytest.raises(ParseError) as fast_err:
                parse_iptables_save(text, str(dump))
            assert str(fast_err.value) == str(e)
            continue
        fast = parse_iptables_save(text, str(dump), lenient=problems_f if lenient else None).ruleset
        assert [str(e) for e in problems_f] == [str(e) for e in problems_g]
        assert [r for r in fast.all_rules()] == [r for r in general.all_rules()]
        assert [r.source.text for r in fast.all_rules()] == [r.source.text for r in general.all_rules()]


def test_fixtures_found() -> None:
    assert len(_fixture_dumps()) >= 5  # the demo bundles at least


def _line_rule(table: str, line: str, lineno: int, index: int) -> Rule:
    r = parse_rule_line(table, line, "f.txt", lineno)
    return _reindex(r, index, r.tokens)


SHAPES = [
    '-A KUBE-SEP-2226RAZCO7TYCXES -s 10.244.56.119/32 -j KUBE-MARK-MASQ',
    '-A KUBE-SEP-2226RAZCO7TYCXES -p tcp -m tcp -j DNAT --to-destination 10.244.56.119:9100',
    '-A KUBE-SEP-2226RAZCO7TYCXES -p udp -m comment --comment "ns/a:dns" -m udp -j DNAT --to-destination 10.0.0.1:53',
    '-A KUBE-SVC-22A7PVYDM77WTZKH -m statistic --mode random --probability 0.10000000009 -j KUBE-SEP-L54B7HKCOQIB3IIW',
    '-A KUBE-SVC-22A7PVYDM77WTZKH -m comment --comment "a/b:c -> 10.0.0.1:80" -m statistic --mode random '
    '--probability 0.5 -j KUBE-SEP-L54B7HKCOQIB3IIW',
    '-A KUBE-SVC-22A7PVYDM77WTZKH ! -s 10.244.0.0/16 -d 10.105.17.254/32 -p tcp -m comment --comment '
    '"ns-0195/backend-00332:web cluster IP" -m tcp --dport 8443 -j KUBE-MARK-MASQ',
    '-A KUBE-SERVICES -d 10.97.136.15/32 -p tcp -m comment --comment "ns/x:http has no endpoints" -m tcp --dport 8080 '
    '-j REJECT --reject-with icmp-port-unreachable',
    '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "a/b has no local endpoints" -m addrtype --dst-type LOCAL '
    '-m tcp --dport 32341 -j DROP',
    '-A KUBE-EXT-X -m comment --comment "masquerade traffic for a/b external destinations" -j KUBE-MARK-MASQ',
    '-A KUBE-EXT-X -m comment --comment "it\'s [odd] but quoted" -m addrtype --src-type LOCAL -g KUBE-SVC-Y',
    '-A KUBE-FW-X -m comment --comment ""',
    '-A KUBE-FW-X',
    '-A KUBE-POSTROUTING ! -d 10.0.0.1 -j RETURN',
    '-A X -s 10.0.0.1 -d 10.0.0.0/8 -p sctp -m sctp --dport 9 -j ACCEPT',
]


@pytest.mark.parametrize("line", SHAPES)
def test_shapes_equal_general(line: str) -> None:
    fp = FastParser("nat", "f.txt")
    r = fp.rule(line, 12, 3)
    assert r is not None
    g = _line_rule("nat", line, 12, 3)
    assert repr(r) == repr(g) and r == g and hash(r) == hash(g)
    assert [type(w) for w in r.tokens] == [type(w) for w in g.tokens]
    assert any(isinstance(w, Quoted) for w in r.tokens) == ('"' in line)


@pytest.mark.parametrize("line", [
    '-A X -s 10.0.0.1/32  -j KUBE-MARK-MASQ',  # two spaces
    '-A X -s 10.0.0.1/32\t-j KUBE-MARK-MASQ',
    '-A X -p tcp -m udp --dport 53 -j ACCEPT',  # -m udp after -p tcp: the general parser decides
    '-A X -j MARK --to-destination 10.0.0.1:80',
    '-A X -j DNAT --reject-with icmp-port-unreachable',
    '-A X -m comment --comment "a \\" b" -j ACCEPT',
    '-A X -p tcp --dport 80 -j ACCEPT',  # implicit match
    '-A X -m statistic --mode random --probability -j ACCEPT',
    '[1:2] -A X -j ACCEPT',
    '-I X 1 -j ACCEPT',
    '-A X -s 10.0.0.1/32 -j ACCEPT ',
])
def test_other_forms_go_to_the_general_parser(line: str) -> None:
    assert FastParser("nat", "f").rule(line, 1, 1) is None


@pytest.mark.parametrize(("line", "message"), [
    ('-A KUBE-SEP-X -s 999.1.1.1/32 -j KUBE-MARK-MASQ', "f.txt:4:18: invalid address '999.1.1.1/32'"),
    ('-A KUBE-SEP-X -s 10.0.0.1/33 -j KUBE-MARK-MASQ', "f.txt:4:18: invalid address '10.0.0.1/33'"),
    ('-A KUBE-SEP-Y -s 10.0.0.1/32 -j KUBE-MARK-MASQ', "chain 'KUBE-SEP-Y' is not declared in table 'nat'"),
    ('-A KUBE-SEP-X -s 10.0.0.1/32 -j KUBE-NOPE', "jump to chain 'KUBE-NOPE' which does not exist"),
    ('-A KUBE-SEP-X -m statistic --mode random --probability 0.5.5 -j KUBE-MARK-MASQ', "invalid value '0.5.5'"),
])
def test_errors_are_the_general_parsers(line: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"*nat\n:KUBE-SEP-X - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n{line}\nCOMMIT\n"
    with pytest.raises(ParseError) as fast:
        parse_iptables_save(text, "f.txt")
    with pytest.raises(ParseError) as general:
        _general(text, "f.txt", monkeypatch)
    assert str(fast.value) == str(general.value)
    assert message in str(fast.value)


def test_sub_objects_are_shared() -> None:
    gen = generate_iptables(200, 10, seed=1)
    rs = parse_iptables_save(gen.text, "gen.txt").ruleset
    masq = [r.target for r in rs.all_rules() if r.target is not None and r.target.name == "KUBE-MARK-MASQ"
            and r.chain.startswith("KUBE-SEP-")]
    assert len(masq) > 100 and len({id(t) for t in masq}) < 20


def test_lazy_tokens_behave_as_a_field() -> None:
    line = SHAPES[5]
    r = FastParser("nat", "f.txt").rule(line, 3, 1)
    assert r is not None
    g = _line_rule("nat", line, 3, 1)
    assert "tokens" not in _set_slots(r)
    assert dataclasses.replace(r, index=9) == dataclasses.replace(g, index=9)
    assert pickle.loads(pickle.dumps(r)) == g
    assert r.tokens == g.tokens and "tokens" in _set_slots(r)  # made once, then kept
    with pytest.raises(AttributeError):
        r.nope  # type: ignore[attr-defined]  # noqa: B018
    assert shape("-A X -j ACCEPT") is not None


def test_lazy_scan_reads_the_same_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from kptrace.parsers import iptables_scan

    gen = generate_iptables(300, 5, seed=5, large_cluster_mode=False, affinity_fraction=0.05)
    monkeypatch.setattr(iptables_scan, "LAZY_MIN_LINES", 0)
    lazy = iptables_scan.scan_iptables_save(gen.text.encode(), "gen.txt")
    full = _general(gen.text, "gen.txt", monkeypatch)
    n = 0
    for name, t in full.tables.items():
        for cname, c in t.chains.items():
            lc = lazy.tables[name].chains[cname]
            for i, r in enumerate(c.rules):
                lr = lc.rule_at(i)
                n += "tokens" not in _set_slots(lr)
                assert repr(lr) == repr(r) and lr == r
    assert n > 1000


@pytest.mark.parametrize("chunk", [64, 1000, 1 << 22])
def test_mapped_parse_equals_text_parse(chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap

    from kptrace.parsers import iptables_save
    from kptrace.parsers.iptables_save import parse_iptables_save_mapped

    gen = generate_iptables(150, 4, seed=2, large_cluster_mode=False)
    # Line breaks splitlines() knows besides "\n" (a CR, a form feed, U+2028, CRLF) must number lines alike.
    text = gen.text.replace("COMMIT\n", "COMMIT\r\n# a\x0c# b\n# c\u2028# d\r# e\n", 1)
    path = tmp_path / "dump.txt"
    path.write_bytes(text.encode())
    monkeypatch.setattr(iptables_save, "_CHUNK", chunk)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mapped = parse_iptables_save_mapped(mm, "dump.txt").ruleset
        mapped_rules = [(r, r.source.text) for r in mapped.all_rules()]
        whole = parse_iptables_save(text, "dump.txt").ruleset
        assert mapped_rules == [(r, r.source.text) for r in whole.all_rules()]
        assert [(t.source, list(t.chains)) for t in mapped.tables.values()] == \
            [(t.source, list(t.chains)) for t in whole.tables.values()]
        assert [c.source for t in mapped.tables.values() for c in t.chains.values()] == \
            [c.source for t in whole.tables.values() for c in t.chains.values()]


def test_strict_load_of_a_mapped_dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--strict on a file large enough to be mapped: the same rules as parsing its text; bad UTF-8 still cited."""
    gen = generate_iptables(100, 3, seed=4)
    path = tmp_path / "iptables-save.txt"
    path.write_text(gen.text)
    monkeypatch.setattr(load, "MAP_MIN_BYTES", 0)
    node = load.load_node([path], ["192.168.0.2"], options=load.LoadOptions(strict=True))
    rs = node.rulesets[4]
    assert rs.all_rules() == parse_iptables_save(gen.text, str(path)).ruleset.all_rules()
    bad = gen.text.encode().replace(b"KUBE-MARK-MASQ", b"KUBE-MARK-MA\xff", 1)
    path.write_bytes(bad)
    before = bad[: bad.index(b"\xff")]
    line, col = before.count(b"\n") + 1, len(before) - before.rfind(b"\n")
    with pytest.raises(KptraceError) as err:  # (as before: the one input is unusable, said at its place)
        load.load_node([path], ["192.168.0.2"], options=load.LoadOptions(strict=True))
    assert str(err.value) == f"{path}:{line}:{col}: invalid UTF-8 byte 0xff"


def test_a_full_cache_is_emptied_and_rules_stay_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generate_iptables(100, 5, seed=9, large_cluster_mode=False)
    monkeypatch.setattr(iptables_fast, "_CACHE_MAX", 10)
    assert assert_same_model(gen.text, "gen.txt", monkeypatch) > 1000
