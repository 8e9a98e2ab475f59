"""Issue 17: a sweep of each cluster-lab scenario agrees with the kernel for every row that can be probed.

The lab (tests/lab/cluster.py: two flannel nodes, pods, kube-proxy rules, a world namespace) is put in a
state, its bundles are loaded once and swept (every Service port, from a pod, a pod of the other node,
the node itself and the world's client). Every row whose source exists in the lab (a lab pod, a node, the
world's 203.0.113.2) is then sent through the real kernel, and the row's trace must agree with what the
kernel did, by the same comparison the `why` tests use (tests.lab.cluster.disagreements: disposition,
exit code, endpoint, masquerade, reply, nodes crossed, egress and next hop, the rules TRACE saw).
Rows whose source the lab does not have are not probed: node-b's pod source (the subnet's last host, as
its only pod is an endpoint), so node-b's pod rows and node-a's remote rows.
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from kptrace.load import load_cluster
from kptrace.render.jsonout import trace_json
from kptrace.walkers.sweep import Row, Sweeper
from tests.lab import cluster as cl
from tests.lab import netns
from tests.lab.cluster import EXTERNAL_CLIENT_IP, NODES, POD_IPS, ClusterFlow, ClusterLab, from_node, from_pod, from_world

pytestmark = pytest.mark.kernel

_EXIT = {"ok": 0, "broken": 1, "undetermined": 4}


@pytest.fixture
def lab(clean_cluster: ClusterLab) -> ClusterLab:
    return clean_cluster


def _probe_flow(r: Row) -> ClusterFlow | None:
    """The lab flow of a row, when the lab has its source."""
    pods = {ip: pod for pod, ip in POD_IPS.items()}
    nodes = {spec.ip: role for role, spec in NODES.items()}
    if r.src in pods:
        return from_pod(pods[r.src], r.dst, r.dport, r.protocol)
    if r.src in nodes:
        return from_node(nodes[r.src], r.dst, r.dport, r.protocol)
    if r.src == EXTERNAL_CLIENT_IP:
        return from_world(r.dst, r.dport, r.protocol)
    return None


def _exit_for(r: Row, kernel: cl.ClusterResult) -> int:
    """The row's exit code, or, for a row of several endpoints, the code of the branches to the endpoint the
    kernel chose (a Service with one endpoint broken is broken, but one probe sees one endpoint)."""
    if len(r.endpoints) < 2 or kernel.dnat is None:
        return _EXIT[r.status]
    mine = [b for b in r.trace.branches if b.dnat == kernel.dnat]
    if not mine:
        return _EXIT[r.status]
    if any(b.disposition.failed or b.reply_failed for b in mine):
        return 1
    return 4 if any(b.disposition.value == "UNDETERMINED" for b in mine) else 0


def _handshake_lost(kernel: cl.ClusterResult) -> bool:
    return (kernel.flow.proto == "tcp" and kernel.verdict == "ACCEPT" and kernel.delivery is None
            and kernel.client_result == "timeout")


def _reply_fails(r: Row, dnat: str | None) -> bool:
    return any(b.reply_failed for b in r.trace.branches if b.dnat == dnat)


def _states() -> list[str]:
    return ["baseline", "bridge-nf-0-node-a", "ip-forward-0-node-b", "no-default-route-node-a"]


@pytest.mark.parametrize("state", _states())
def test_sweep_rows_agree_with_the_kernel(lab: ClusterLab, state: str) -> None:
    if state == "bridge-nf-0-node-a":
        lab.set_bridge_nf_call_iptables("nodeA", False)
    elif state == "ip-forward-0-node-b":
        lab.set_ip_forward("nodeB", False)
    elif state == "no-default-route-node-a":
        lab.set_default_route("nodeA", False)
    scen = lab.load(f"sweep-{state}")
    cluster = load_cluster([scen / role for role in NODES])
    rows = Sweeper(cluster, checks=False, external_client={4: ip_address(EXTERNAL_CLIENT_IP)}).sweep().rows
    assert {r.source_kind for r in rows} == {"pod", "remote", "node", "external"}, state
    tables = cl.dump_tables(scen)
    probed: dict[tuple[str, str, int, str], Row] = {}
    skipped = []
    failures = []
    for r in rows:
        flow = _probe_flow(r)
        if flow is None:
            skipped.append(r)
            continue
        key = (flow.src, flow.dst, flow.dport, flow.proto)
        if key in probed:
            assert probed[key].trace == r.trace  # one flow, one trace, whichever node's row it is
            continue
        probed[key] = r
        kernel = lab.probe(flow)
        answer = netns.KptraceAnswer(_exit_for(r, kernel), trace_json(r.trace),
                                     ["kptrace", "sweep", f"({r.node} {r.source_kind} {r.entry})", str(flow)], "")
        problems = cl.disagreements(kernel, answer, tables)
        if _handshake_lost(kernel) and _reply_fails(r, kernel.dnat):
            # TCP: the lab's server records a delivery only once the handshake completes, so a lost SYN-ACK
            # leaves reply_ok unknown (no delivery) although the client timed out after the kernel forwarded
            # the SYN; the row's failed reply is exactly that. (UDP probes see it: test_kernel_cluster.py.)
            problems = [p for p in problems if not p.startswith("exit code:")]
        if problems:
            failures.append(cl.format_report(kernel, answer, problems))
    assert not failures, "\n\n".join(failures)
    # Only the rows from node-b's pod source are not probed (node-b's pod rows, node-a's remote rows).
    assert all((r.source_kind, r.start) in (("pod", "node-b"), ("remote", "node-b")) for r in skipped), [
        (r.node, r.source_kind, r.src) for r in skipped]
    assert len(probed) >= 12, len(probed)
