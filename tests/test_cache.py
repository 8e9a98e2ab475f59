"""The scan cache: same answers with and without it, keyed by content, robust to junk."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace import cache
from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.parsers import iptables_save
from kptrace.render.jsonout import trace_json
from kptrace.testing.generator import generate_iptables
from kptrace.walkers.netfilter import trace_flow


@pytest.fixture()
def dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, object]:
    monkeypatch.setenv("KPTRACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(iptables_save, "LAZY_MIN_LINES", 0)
    monkeypatch.setattr(cache, "ENABLED", [True])
    gen = generate_iptables(60, 3, seed=3)
    p = tmp_path / "iptables-save.txt"
    p.write_text(gen.text)
    return p, gen


def _doc(p: Path, flow: Flow) -> str:
    return json.dumps(trace_json(trace_flow(load_node([p], ["192.168.0.2"]), flow)), sort_keys=True)


def test_second_run_uses_the_cache_and_answers_the_same(dump: tuple[Path, object], tmp_path: Path) -> None:
    p, gen = dump
    svc = gen.services[0]  # type: ignore[attr-defined]
    flow = Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), svc.proto, None, svc.port)
    first = _doc(p, flow)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1
    assert _doc(p, flow) == first
    files[0].write_bytes(b"junk that is not marshal data")
    assert _doc(p, flow) == first  # a broken entry is ignored


def test_disabled_cache_writes_nothing(dump: tuple[Path, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p, gen = dump
    monkeypatch.setattr(cache, "ENABLED", [False])
    svc = gen.services[0]  # type: ignore[attr-defined]
    _doc(p, Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), svc.proto, None, svc.port))
    assert not (tmp_path / "cache").exists()
