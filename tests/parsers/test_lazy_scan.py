"""The lazy scan (large dumps: rules parsed when read) answers exactly like the full parse."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path

import pytest
import yaml

from kptrace import load
from kptrace.model.flow import Flow
from kptrace.parsers import iptables_save
from kptrace.render.jsonout import trace_json
from kptrace.testing.generator import generate_iptables
from kptrace.walkers.netfilter import trace_flow
from tests.conformance.test_kube_proxy_iptables import IPTABLES, _dump


def _trace(dump: Path, node_ips: list[str], flow: Flow, lazy: bool, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setattr(iptables_save, "LAZY_MIN_LINES", 0 if lazy else 10**9)
    monkeypatch.setattr(iptables_save, "INDEX_MIN_RULES", 1 if lazy else 64)
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
