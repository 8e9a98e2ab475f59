"""kube-proxy's nftables expected ruleset (../shared/conformance/kube-proxy/nftables), traced by kptrace.

The corpus holds TestOverallNFTablesRules' expected `nft -f` transaction but no flow cases (the
nftables tests that run flows assert no literal dump; see its cases.yaml). The cases below were
written for this ruleset from kube-proxy's proxier semantics and are kernel-checked: the kernel lab
loads the same file (reordered so nft accepts it) and compares every case's verdict, endpoints,
masquerade and rules hit with kptrace (tests/kernel/test_kernel_nft.py::test_conformance_overall_ruleset).
Here kptrace reads the file as written, and every case must come out without unknowns.
"""

from __future__ import annotations

import os
from ipaddress import ip_address
from pathlib import Path

import pytest
import yaml

from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.model.nft import NftRuleset, UnknownStmt, Xt
from kptrace.model.trace import Disposition
from kptrace.parsers.nft_text import parse_nft_text
from kptrace.walkers.netfilter import trace_flow

ROOT = Path(os.environ.get("KPTRACE_CONFORMANCE_DIR", Path(__file__).resolve().parents[3] / "shared" / "conformance"))
OVERALL = ROOT / "kube-proxy" / "nftables" / "TestOverallNFTablesRules"
MISSING = f"conformance corpus not found at {OVERALL} (needs ../shared; set KPTRACE_CONFORMANCE_DIR)"

CLIENT, BLOCKED, POD, NODE = "203.0.113.2", "203.0.113.130", "10.244.1.2", "192.168.0.2"
# (name, client role, src, dst, dport, expected: pass|DROP|REJECT, endpoints, masquerade)
OVERALL_CASES: list[tuple[str, str, str, str, int, str, set[str] | None, bool | None]] = [
    ("svc1-from-outside", "world", CLIENT, "172.30.0.41", 80, "pass", {"10.180.0.1:80"}, True),
    ("svc1-from-pod", "pod-a", POD, "172.30.0.41", 80, "pass", {"10.180.0.1:80"}, False),
    ("svc1-from-node", "node", NODE, "172.30.0.41", 80, "pass", {"10.180.0.1:80"}, True),
    ("svc4-two-endpoints", "world", CLIENT, "172.30.0.44", 80, "pass", {"10.180.0.4:80", "10.180.0.5:80"}, True),
    ("svc4-external-ip", "world", CLIENT, "192.168.99.33", 80, "pass", {"10.180.0.4:80", "10.180.0.5:80"}, True),
    ("svc2-external-ip-no-local-endpoints", "world", CLIENT, "192.168.99.22", 80, "DROP", None, None),
    ("svc2-external-ip-from-pod", "pod-a", POD, "192.168.99.22", 80, "pass", {"10.180.0.2:80"}, False),
    ("svc2-lb-no-local-endpoints", "world", CLIENT, "1.2.3.4", 80, "DROP", None, None),
    ("svc2-nodeport-no-local-endpoints", "world", CLIENT, NODE, 3001, "DROP", None, None),
    ("svc3-nodeport", "world", CLIENT, NODE, 3003, "pass", {"10.180.0.3:80"}, True),
    ("svc5-lb-allowed", "world", CLIENT, "5.6.7.8", 80, "pass", {"10.180.0.3:80"}, True),
    ("svc5-lb-firewalled", "world", BLOCKED, "5.6.7.8", 80, "DROP", None, None),
    ("svc5-nodeport-not-firewalled", "world", BLOCKED, NODE, 3002, "pass", {"10.180.0.3:80"}, True),
    ("svc6-no-endpoints", "world", CLIENT, "172.30.0.46", 80, "REJECT", None, None),
    ("clusterip-wrong-port", "world", CLIENT, "172.30.0.41", 81, "REJECT", None, None),
    ("unallocated-clusterip", "world", CLIENT, "172.30.0.99", 80, "DROP", None, None),
    ("not-a-service", "world", CLIENT, NODE, 10250, "pass", None, None),
]
IFACE = {"world": "eth0", "pod-a": "cni0", "node": None}


def _skip_or_fail() -> None:
    if os.environ.get("KPTRACE_REQUIRE_CONFORMANCE") == "1":
        pytest.fail(MISSING, pytrace=False)
    pytest.skip(MISSING)


def _meta() -> dict:  # type: ignore[type-arg]
    if not (OVERALL / "cases.yaml").exists():
        _skip_or_fail()
    return yaml.safe_load((OVERALL / "cases.yaml").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def node():  # type: ignore[no-untyped-def]
    meta = _meta()
    return load_node([OVERALL / meta["dump"]], meta["node_ips"], [meta["cluster_cidr"]])


@pytest.mark.parametrize("case", OVERALL_CASES, ids=[c[0] for c in OVERALL_CASES])
def test_case(node, case: tuple) -> None:  # type: ignore[no-untyped-def, type-arg]
    _name, role, src, dst, dport, expect, endpoints, masq = case
    trace = trace_flow(node, Flow(ip_address(src), ip_address(dst), "tcp", None, dport, IFACE[role]))
    assert abs(sum(b.probability for b in trace.branches) - 1.0) < 1e-9
    assert not any(b.unknowns for b in trace.branches), [b.unknowns for b in trace.branches]
    kinds = {b.disposition for b in trace.branches}
    if expect == "pass":
        assert kinds <= {Disposition.FORWARDED, Disposition.DELIVERED, Disposition.ACCEPTED}, kinds
    else:
        assert trace.disposition == (Disposition.DROPPED if expect == "DROP" else Disposition.REJECTED)
    if endpoints is not None:
        assert set(trace.endpoints) == endpoints
        assert all(b.masquerade == masq for b in trace.branches)
    elif expect == "pass":
        assert not trace.endpoints


def test_every_rule_is_modelled() -> None:
    """Nothing in kube-proxy's ruleset is unknown to kptrace (no UnknownStmt, no xt)."""
    meta = _meta()
    rs = parse_nft_text((OVERALL / meta["dump"]).read_text(), meta["dump"])
    assert rs.all_rules() and not rs.diagnostics
    assert not [r.text for r in rs.all_rules() if any(isinstance(s, (UnknownStmt, Xt)) for s in r.stmts)]


def test_order_of_the_transaction_does_not_matter() -> None:
    """nft needs the file reordered (table, sets/maps, chains, rules, elements); kptrace reads either."""
    from tests.lab_tools.make_nft_fixtures import reorder_transaction

    meta = _meta()
    text = (OVERALL / meta["dump"]).read_text()
    a, b = parse_nft_text(text, "as-written"), parse_nft_text(reorder_transaction(text), "reordered")
    assert isinstance(a, NftRuleset) and list(a.tables) == list(b.tables)
    for key, t in a.tables.items():
        tb = b.tables[key]
        assert sorted(t.chains) == sorted(tb.chains)
        for name, c in t.chains.items():
            assert ([r.stmts for r in c.rules], c.hook, c.priority) == ([r.stmts for r in tb.chains[name].rules],
                                                                        tb.chains[name].hook, tb.chains[name].priority)
        assert {n: s.elements for n, s in t.sets.items()} == {n: s.elements for n, s in tb.sets.items()}
