"""The lazy reading of a large `nft list ruleset` answers exactly like the full parse."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace import load
from kptrace.model.flow import Flow
from kptrace.parsers import nft_scan
from kptrace.parsers.nft_text import parse_nft_text
from kptrace.render.jsonout import trace_json
from kptrace.testing.generator_nft import generate_nftables
from kptrace.walkers.netfilter import trace_flow


def _trace(bundle: Path, flow: Flow, lazy: bool, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(nft_scan, "LAZY_MIN_LINES", 0 if lazy else 10**9)
    node = load.load_node([bundle])
    doc = trace_json(trace_flow(node, flow))
    # The lazy reader adds one assumption saying so; everything else must be equal.
    doc["assumptions"] = [a for a in doc["assumptions"] if nft_scan.LAZY_NOTE not in a]
    for b in doc["branches"]:
        b["assumptions"] = [a for a in b["assumptions"] if nft_scan.LAZY_NOTE not in a]
    return json.dumps(doc, sort_keys=True)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    gen = generate_nftables(120, 3, seed=4, no_endpoint_fraction=0.1, nodeport_fraction=0.4, lb_fraction=0.1,
                            local_policy_fraction=0.2, affinity_fraction=0.05, udp_fraction=0.1)
    path = tmp_path_factory.mktemp("nft") / "node"
    gen.write_bundle(path)
    return path, gen


def test_lazy_equals_full_on_generated(bundle: tuple[Path, object], monkeypatch: pytest.MonkeyPatch) -> None:
    path, gen = bundle
    node_ip = gen.node_ips[0]  # type: ignore[attr-defined]
    flows = []
    for svc in gen.services[:60]:  # type: ignore[attr-defined]
        flows.append(Flow(ip_address("10.244.1.200"), ip_address(svc.cluster_ip), svc.proto, None, svc.port))
        if svc.node_port:
            flows.append(Flow(ip_address("203.0.113.7"), ip_address(node_ip), svc.proto, None, svc.node_port))
        if svc.lb_ip:
            flows.append(Flow(ip_address("203.0.113.7"), ip_address(svc.lb_ip), svc.proto, None, svc.port))
    flows.append(Flow(ip_address("10.244.1.200"), ip_address("10.96.255.254"), "tcp", None, 80))  # unallocated
    for flow in flows:
        assert _trace(path, flow, True, monkeypatch) == _trace(path, flow, False, monkeypatch), str(flow)


def test_lazy_tables_read_whole_when_listed(bundle: tuple[Path, object], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = bundle
    text = (path / "nft-ruleset.txt").read_text()
    monkeypatch.setattr(nft_scan, "LAZY_MIN_LINES", 0)
    lazy = nft_scan.scan_nft_text(text, "f")
    assert lazy is not None
    full = parse_nft_text(text, "f")
    for key, tbl in full.tables.items():
        other = lazy.tables[key]
        assert list(other.chains) == list(tbl.chains) and list(other.sets) == list(tbl.sets)
        assert [(i, c.name) for i, c in other.hooked_chains()] == [(i, c.name) for i, c in tbl.hooked_chains()]
        assert other.has_xt() == tbl.has_xt() and other.comment == tbl.comment and other.source == tbl.source
        assert [repr(c) for c in other.chains.values()] == [repr(c) for c in tbl.chains.values()]
        assert [repr(s) for s in other.sets.values()] == [repr(s) for s in tbl.sets.values()]


@pytest.mark.parametrize("text", [
    "add table ip t\nadd chain ip t c\n",  # an `nft -f` transaction, not a listing
    "table ip t {\n\tcounter c {\n\t\tpackets 0 bytes 0\n\t}\n}\n",  # a table-level object with a block
    "table ip t {\n\tchain c {\n\t\taccept\n}\n",  # a block without its end
    "table ip t {\n\tchain \"odd name\" {\n\t}\n}\n",  # a quoted name
    "junk\ntable ip t {\n}\n",
])
def test_other_layouts_go_to_the_full_parser(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft_scan, "LAZY_MIN_LINES", 0)
    assert nft_scan.scan_nft_text(text, "f") is None
