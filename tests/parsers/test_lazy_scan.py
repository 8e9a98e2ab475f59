"""The lazy scan (large dumps: rules parsed when read) answers exactly like the full parse."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path

import pytest
import yaml

from kptrace import load
from kptrace.model.flow import Flow
from kptrace.parsers import iptables_scan as iptables_save
from kptrace.render.jsonout import trace_json
from kptrace.testing.generator import generate_iptables
from kptrace.walkers.netfilter import trace_flow
from tests.conformance.test_kube_proxy_iptables import IPTABLES, _dump


def _trace(dump: Path, node_ips: list[str], flow: Flow, lazy: bool, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setattr(iptables_save, "LAZY_MIN_LINES", 0 if lazy else 10**9)
    monkeypatch.setattr(iptables_save, "INDEX_MIN_RULES", 1 if lazy else 64)
    monkeypatch.setattr(load, "MAP_MIN_BYTES", 0 if lazy else 10**12)  # lazy: from the mapped bytes
    node = load.load_node([dump], node_ips)
    doc = trace_json(trace_flow(node, flow))
    for b in doc["branches"]:
        # The lazy path adds one assumption saying it is lazy; everything else must be equal.
        b["assumptions"] = [a for a in b["assumptions"] if "parsed when the trace reads them" not in a]
    doc["assumptions"] = [a for a in doc["assumptions"] if "parsed when the trace reads them" not in a]
    return doc


def _conformance_cases() -> list[object]:
    if not IPTABLES.is_dir():
        return []
    out = []
    for f in sorted(IPTABLES.rglob("cases.yaml")):
        meta = yaml.safe_load(f.read_text())
        for c in meta["cases"]:
            out.append(pytest.param(_dump(f.parent), meta["node_ips"], c, id=f"{f.parent.name}::{c['name']}"))
    return out


@pytest.mark.parametrize(("dump", "node_ips", "case"), _conformance_cases())
def test_lazy_equals_full_on_conformance(dump: Path, node_ips: list[str], case: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = Flow(ip_address(case["src"]), ip_address(case["dst"]), case.get("proto", "tcp"), None, case["dport"])
    full = _trace(dump, node_ips, flow, False, monkeypatch)
    lazy = _trace(dump, node_ips, flow, True, monkeypatch)
    assert json.dumps(lazy, sort_keys=True) == json.dumps(full, sort_keys=True)


def test_lazy_equals_full_on_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generate_iptables(120, 4, seed=7)
    dump = tmp_path / "iptables-save.txt"
    dump.write_text(gen.text)
    probes = []
    for svc in gen.services[:40]:
        probes.append(Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), svc.proto, None, svc.port))
        if svc.node_port:
            probes.append(Flow(ip_address("203.0.113.7"), ip_address("192.168.0.2"), svc.proto, None, svc.node_port))
    assert probes
    for flow in probes:
        full = _trace(dump, ["192.168.0.2"], flow, False, monkeypatch)
        lazy = _trace(dump, ["192.168.0.2"], flow, True, monkeypatch)
        assert json.dumps(lazy, sort_keys=True) == json.dumps(full, sort_keys=True), str(flow)


def test_lazy_scan_reports_structure_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kptrace.errors import ParseError

    monkeypatch.setattr(iptables_save, "LAZY_MIN_LINES", 0)
    text = "*nat\n:PREROUTING ACCEPT [0:0]\n-A KUBE-NOPE -j ACCEPT\nCOMMIT\n"
    with pytest.raises(ParseError, match="dump:3:4: chain 'KUBE-NOPE' is not declared"):
        iptables_save.scan_iptables_save(text, "dump")
    with pytest.raises(ParseError, match="no COMMIT"):
        iptables_save.scan_iptables_save("*nat\n:PREROUTING ACCEPT [0:0]\n", "dump")


# --- layouts the bisection must not misread --------------------------------------------------------

def _probes(gen: object, n: int = 12) -> list[Flow]:
    out = []
    for svc in gen.services[:n]:  # type: ignore[attr-defined]
        out.append(Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), svc.proto, None, svc.port))
        if svc.node_port:
            out.append(Flow(ip_address("203.0.113.7"), ip_address("192.168.0.2"), svc.proto, None, svc.node_port))
    return out


def _same(dump: Path, probes: list[Flow], monkeypatch: pytest.MonkeyPatch) -> None:
    for flow in probes:
        full = _trace(dump, ["192.168.0.2"], flow, False, monkeypatch)
        lazy = _trace(dump, ["192.168.0.2"], flow, True, monkeypatch)
        assert json.dumps(lazy, sort_keys=True) == json.dumps(full, sort_keys=True), str(flow)


def _tables(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(header, declaration lines, rule lines) per table of a generated dump."""
    out = []
    for block in text.split("COMMIT\n")[:-1]:
        lines = block.split("\n")
        head = next(i for i, line in enumerate(lines) if line.startswith("*"))
        body = [line for line in lines[head + 1:] if line]
        out.append((lines[head], [x for x in body if x.startswith(":")], [x for x in body if x.startswith("-A ")]))
    return out


def _join(tables: list[tuple[str, list[str], list[str]]]) -> str:
    text = "# Generated by iptables-save v1.8.9 (nf_tables)\n"
    for head, decls, rules in tables:
        text += "\n".join([head, *decls, *rules, "COMMIT"]) + "\n"
    return text


@pytest.mark.parametrize("change", ["comment", "counters", "blank", "unsorted"])
def test_lazy_equals_full_on_irregular_layouts(change: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Comments, `-c` counters or blank lines among the rules send a table to the full parser when
    the scan meets them; declarations out of sorted order are ranked instead of bisected."""
    gen = generate_iptables(80, 3, seed=11)
    tables = _tables(gen.text)
    changed = []
    for head, decls, rules in tables:
        if change == "comment":
            rules = rules[: len(rules) // 2] + ["# a note someone added"] + rules[len(rules) // 2:]
        elif change == "counters":
            rules = [f"[3:180] {r}" for r in rules]
        elif change == "blank":
            rules = [r for pair in zip(rules, [""] * len(rules)) for r in pair]
        else:
            # Reverse the user chains' declarations and, as iptables-save would print them, their rules.
            builtin = [d for d in decls if not d.split()[1] == "-"]
            users = [d for d in decls if d.split()[1] == "-"][::-1]
            order = {d[1:].split()[0]: k for k, d in enumerate(builtin + users)}
            decls = builtin + users
            rules = sorted(rules, key=lambda r: order[r.split()[1]])  # stable: a chain keeps its order
        changed.append((head, decls, rules))
    dump = tmp_path / "iptables-save.txt"
    dump.write_text(_join(changed))
    _same(dump, _probes(gen), monkeypatch)


def _with_bad_byte(text: str, row: int, col: int) -> bytes:
    lines = text.split("\n")
    line = lines[row].encode()
    lines_b = [x.encode() for x in lines]
    lines_b[row] = line[: col - 1] + b"\xff" + line[col - 1:]
    return b"\n".join(lines_b)


def test_lazy_reports_bad_utf8_where_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kptrace.errors import KptraceError, ParseError

    monkeypatch.setattr(iptables_save, "LAZY_MIN_LINES", 0)
    monkeypatch.setattr(load, "MAP_MIN_BYTES", 0)
    gen = generate_iptables(40, 2, seed=5)
    with_eps = [s for s in gen.services if s.endpoints]
    svc, other = with_eps[0], with_eps[-1]
    lines = gen.text.split("\n")
    flow = Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), svc.proto, None, svc.port)
    dump = tmp_path / "iptables-save.txt"

    # In a line the trace reads: reported with its place, like any syntax error.
    row = next(i for i, x in enumerate(lines) if x.startswith("-A KUBE-SERVICES ") and f" -d {svc.cluster_ip}/32 " in x)
    col = lines[row].index('"') + 2
    dump.write_bytes(_with_bad_byte(gen.text, row, col))
    with pytest.raises(ParseError, match=rf"iptables-save.txt:{row + 1}:{col}: invalid UTF-8 byte 0xff"):
        trace_flow(load.load_node([dump], ["192.168.0.2"]), flow)

    # In a line it never reads (another service's endpoint chain): the answer stands, --strict finds it.
    sep = other.endpoints[0].chain
    row = next(i for i, x in enumerate(lines) if x.startswith(f"-A {sep} "))
    dump.write_bytes(_with_bad_byte(gen.text, row, 5))
    trace_flow(load.load_node([dump], ["192.168.0.2"]), flow)
    # Strict: the whole file is decoded first; a file that does not decode is not read, and with nothing
    # else in the input that is the one-line error (exit 2).
    with pytest.raises(KptraceError, match=rf"iptables-save.txt:{row + 1}:5: invalid UTF-8 byte 0xff"):
        load.load_node([dump], ["192.168.0.2"], options=load.LoadOptions(strict=True))


@pytest.mark.parametrize(("line", "port"), [
    ("-A KUBE-NODEPORTS -p tcp -m comment --comment \"a/b\" -m tcp --dport 30001 -j KUBE-EXT-X", 30001),
    ("-A KUBE-NODEPORTS -p tcp -m tcp ! --dport 30001 -j KUBE-EXT-X", None),
    ("-A KUBE-NODEPORTS -p tcp -m tcp --dport 30000:30010 -j KUBE-EXT-X", None),
    ("-A KUBE-NODEPORTS -p tcp -m comment --comment \"x --dport 5 y\" -j KUBE-EXT-X", None),
    ("-A KUBE-NODEPORTS -p tcp -m tcp --dport 1 -m udp --dport 2 -j X", None),
    ("-A KUBE-NODEPORTS -p tcp -m multiport --dports 80,443 -j X", None),
])
def test_port_index_reads_only_one_plain_dport(line: str, port: int | None) -> None:
    assert iptables_save._plain_dport(line) == port


def test_destination_index_keeps_rules_it_cannot_read() -> None:
    from kptrace.parsers.iptables_scan import _LazyRules

    lines = [f"-A KUBE-SERVICES -d 10.96.0.{i}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}" for i in range(70)]
    lines[5] = '-A KUBE-SERVICES -d 10.96.0.5/32 -p tcp -m comment --comment "also -d 10.96.0.9" -j KUBE-SVC-5'
    lines[7] = "-A KUBE-SERVICES ! -d 10.96.0.7/32 -p tcp -j KUBE-SVC-7"
    lines[8] = "-A KUBE-SERVICES -p tcp -m tcp --dport 8080 -j KUBE-SVC-8"
    raw = _LazyRules(lines, range(1, 71), "nat", "KUBE-SERVICES", "f")
    # 5 (a second "-d" in a comment) and 7 (negated) stay candidates for every address; 8 for its port.
    assert list(raw.candidates("10.96.0.9", 0, 80)) == [5, 7, 9]
    assert list(raw.candidates("10.96.0.9", 0, 8080)) == [5, 7, 8, 9]
    assert list(raw.candidates("10.96.0.9", 0, None)) == [5, 7, 8, 9]
    assert list(raw.candidates("10.96.0.9", 8, 80)) == [9]
