"""The scan cache: same answers with and without it, keyed by content, robust to junk."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace import cache, load
from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.parsers import iptables_scan as iptables_save
from kptrace.render.jsonout import trace_json
from kptrace.testing.generator import generate_iptables
from kptrace.walkers.netfilter import trace_flow


@pytest.fixture()
def dump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, object]:
    monkeypatch.setenv("KPTRACE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(iptables_save, "LAZY_MIN_LINES", 0)
    monkeypatch.setattr(load, "MAP_MIN_BYTES", 0)  # read as a large file is: mapped, hashed via the cache
    monkeypatch.delenv("KPTRACE_NO_CACHE", raising=False)
    gen = generate_iptables(60, 3, seed=3)
    p = tmp_path / "iptables-save.txt"
    p.write_text(gen.text)
    return p, gen


def _doc(p: Path, flow: Flow, use_cache: bool = True) -> str:
    node = load_node([p], ["192.168.0.2"], options=load.LoadOptions(cache=use_cache))
    return json.dumps(trace_json(trace_flow(node, flow)), sort_keys=True)


def test_second_run_uses_the_cache_and_answers_the_same(dump: tuple[Path, object], tmp_path: Path) -> None:
    p, gen = dump
    svc = gen.services[0]  # type: ignore[attr-defined]
    flow = Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), svc.proto, None, svc.port)
    first = _doc(p, flow)
    files = list((tmp_path / "cache").glob("scan-*"))
    assert len(files) == 1
    assert _doc(p, flow) == first
    for f in (tmp_path / "cache").iterdir():
        f.write_bytes(b"junk that is not marshal data")
    assert _doc(p, flow) == first  # a broken entry is ignored


def test_disabled_cache_writes_nothing(dump: tuple[Path, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p, gen = dump
    svc = gen.services[0]  # type: ignore[attr-defined]
    _doc(p, Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), svc.proto, None, svc.port), use_cache=False)
    assert not (tmp_path / "cache").exists()


def _digest(p: Path) -> str:
    node = load_node([p], ["192.168.0.2"])
    return node.inputs[0].sha256


def test_unchanged_file_is_not_hashed_again(dump: tuple[Path, object], monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    p, _ = dump
    monkeypatch.setattr(cache, "RACY_NS", 0)
    assert _digest(p) == hashlib.sha256(p.read_bytes()).hexdigest()

    class NoHash:
        @staticmethod
        def sha256(data: bytes) -> object:
            if len(data) > 4096:  # the record's own name (a path) may be hashed; the dump may not
                raise AssertionError("hashed again")
            return hashlib.sha256(data)

    monkeypatch.setattr(cache, "hashlib", NoHash)
    assert _digest(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_changed_file_is_hashed_again(dump: tuple[Path, object], monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import os

    p, _ = dump
    monkeypatch.setattr(cache, "RACY_NS", 0)
    _digest(p)
    st = p.stat()
    text = p.read_text()
    p.write_text(text.replace("KUBE-SERVICES -d", "KUBE-SERVICES -d", 1)[:-2] + "x\n")  # same size, new bytes
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime: ctime moved
    assert p.stat().st_size == st.st_size
    assert _digest(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_a_file_changed_just_now_gets_no_record(dump: tuple[Path, object], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A second change within the clock's granularity could keep every time stamp: like git, wait.
    p, _ = dump
    monkeypatch.setattr(cache, "RACY_NS", 10**18)
    _digest(p)
    assert not list((tmp_path / "cache").glob("file-*"))
    assert list((tmp_path / "cache").glob("scan-*"))


def test_an_entry_of_another_format_is_replaced(dump: tuple[Path, object], tmp_path: Path) -> None:
    import hashlib

    p, gen = dump
    svc = gen.services[0]  # type: ignore[attr-defined]
    flow = Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), svc.proto, None, svc.port)
    first = _doc(p, flow)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    cache.put(digest, {"format": -1, "sections": [], "tables": {}})  # a valid entry, of another scanner version
    assert _doc(p, flow) == first
    hints = cache.get(digest)
    assert hints is not None and hints["format"] == iptables_save.HINTS_FORMAT
