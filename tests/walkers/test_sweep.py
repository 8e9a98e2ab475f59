"""The sweep engine: the broken flows of the demo cluster and broken-node are exactly the ones
kptrace/demo/README.md describes, a diff names exactly the flows that differ, and every row sampled
equals what `trace_flow` (the engine of `why`) answers for that flow, on the demo bundles and a generated
1k-Service dump."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kptrace import load
from kptrace.load import demo_path, load_cluster
from kptrace.model.flow import Flow
from kptrace.walkers.netfilter import trace_flow
from kptrace.walkers.sweep import Row, Sweeper, diff_rows

DEMO = Path(__file__).resolve().parents[2] / "kptrace" / "demo"


def broken(rows: list[Row]) -> set[tuple[str, str, str, str, str]]:
    return {(r.node, r.display_name, r.protocol, r.source_kind, r.entry) for r in rows if r.status == "broken"}


@pytest.fixture(scope="module")
def demo_sweep() -> list[Row]:
    return Sweeper(load_cluster([demo_path()])).sweep().rows


@pytest.fixture(scope="module")
def broken_sweep() -> list[Row]:
    return Sweeper(load_cluster([DEMO / "broken-node"])).sweep().rows


# What the demo README says fails, on each node of the demo cluster:
#  - scenario 3: default/broken has no endpoints: filter KUBE-SERVICES REJECTs it, whoever sends;
#  - scenario 6: NodePort 31234 of default/api-local (externalTrafficPolicy: Local) on node-a, which has no
#    local endpoint: KUBE-EXTERNAL-SERVICES DROP;
#  - scenario 10: the LoadBalancer IP 192.168.56.200 from a client outside loadBalancerSourceRanges (both
#    ports have a KUBE-FW chain): KUBE-PROXY-FIREWALL DROP.
def _readme_demo(node: str) -> set[tuple[str, str, str, str, str]]:
    out = {(node, "default/broken", "tcp", kind, "cluster-ip") for kind in ("pod", "remote", "node")}
    out |= {(node, f"ingress-nginx/ingress-nginx-controller:{p}", "tcp", "external", "load-balancer")
            for p in ("http", "https")}
    if node == "node-a":
        out.add((node, "default/api-local:http", "tcp", "external", "node-port"))
    return out


def test_demo_cluster_names_exactly_the_readme_failures(demo_sweep: list[Row]) -> None:
    assert broken(demo_sweep) == _readme_demo("node-a") | _readme_demo("node-b")
    assert all(r.status == "ok" for r in demo_sweep if r.status != "broken")
    # every broken flow names what decides it, as file:line
    for r in demo_sweep:
        if r.broken:
            assert r.deciding and all(d.source and d.source.rsplit(":", 1)[1].isdigit() for d in r.deciding)
    rejected = [r for r in demo_sweep if r.name == "broken" and r.node == "node-a" and r.source_kind == "pod"][0]
    assert rejected.fate.value == "REJECTED" and "KPT204" in rejected.findings
    assert [d.source for d in rejected.deciding] == ["node-a/iptables-save.txt:49"]


def test_demo_cluster_summary_names_api_local_on_node_a_only() -> None:
    result = Sweeper(load_cluster([demo_path()])).sweep()
    assert result.partly_broken() == [("default/api-local:http (tcp)", ["node-a"], ["node-b"])]


# broken-node (README, "broken-node"): FORWARD policy DROP and no FLANNEL-FWD, so every pod flow to a
# Service with endpoints is DNATed and then dropped in FORWARD ("The same happens to 10.96.0.10:53"); the
# node's own flows and external NodePort flows still work (KUBE-FORWARD accepts the 0x4000 mark). What it
# inherits from node-a (default/broken, api-local's NodePort, the LoadBalancer source ranges) fails as there.
def test_broken_node_names_exactly_the_readme_failures(broken_sweep: list[Row]) -> None:
    pods = {("node-a", n, p, "pod", "cluster-ip") for n, p in (
        ("default/api-local:http", "tcp"), ("default/kubernetes:https", "tcp"), ("default/web", "tcp"),
        ("ingress-nginx/ingress-nginx-controller:http", "tcp"), ("ingress-nginx/ingress-nginx-controller:https", "tcp"),
        ("kube-system/kube-dns:dns", "udp"), ("kube-system/kube-dns:dns-tcp", "tcp"),
        ("kube-system/kube-dns:metrics", "tcp"))}
    inherited = _readme_demo("node-a") - {("node-a", "default/broken", "tcp", "remote", "cluster-ip")}  # no peer here
    assert broken(broken_sweep) == pods | inherited
    web = [r for r in broken_sweep if r.name == "web" and r.source_kind == "pod"][0]
    assert web.fate.value == "DROPPED"
    assert [e.address for e in web.endpoints] == ["10.244.1.12:8080", "10.244.2.15:8080"]
    assert [d.source for d in web.deciding] == ["broken-node/iptables-save.txt:16"]  # :FORWARD DROP
    assert "KPT201" in web.findings
    nodeport = [r for r in broken_sweep if r.name == "web" and r.source_kind == "external"][0]
    assert nodeport.status == "ok"  # README: "Works as on node-a"


def test_diff_healthy_vs_broken_names_the_pod_flows() -> None:
    a = Sweeper(load_cluster([DEMO / "cluster" / "node-a"])).sweep().rows
    b = Sweeper(load_cluster([DEMO / "broken-node"])).sweep().rows
    changes = diff_rows(a, b)
    assert {(c.display_name, c.key[4]) for c in changes} == {
        (n, "pod") for n in ("default/api-local:http", "default/kubernetes:https", "default/web",
                             "ingress-nginx/ingress-nginx-controller:http", "ingress-nginx/ingress-nginx-controller:https",
                             "kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:metrics")}
    assert all(c.what[0] == "fate" and c.a and c.b and c.a.fate.value == "FORWARDED" and c.b.fate.value == "DROPPED"
               for c in changes)


def test_diff_of_a_sweep_with_itself_is_empty(demo_sweep: list[Row]) -> None:
    assert diff_rows(demo_sweep, demo_sweep) == []


def test_nodes_of_one_cluster_pair_by_service_not_address() -> None:
    cluster = load_cluster([demo_path()])
    sw = Sweeper(cluster)
    a, b = sw.sweep_node(cluster[0]), sw.sweep_node(cluster[1])
    changes = diff_rows(a.rows, b.rows)
    # node addresses and which endpoints are local differ; only api-local's NodePort does not work alike
    assert [(c.display_name, c.key[4], c.what) for c in changes] == [
        ("default/api-local:http", "external", ("fate", "endpoints"))]


def test_remote_rows_share_the_peer_traces() -> None:
    cluster = load_cluster([demo_path()])
    sw = Sweeper(cluster)
    sw.sweep()
    rows = sw.sweep().rows  # the second sweep is served from the memo
    remote_a = [r for r in rows if r.node == "node-a" and r.source_kind == "remote"]
    pod_b = {r.key[:4]: r for r in rows if r.node == "node-b" and r.source_kind == "pod"}
    assert remote_a and all(r.trace is pod_b[r.key[:4]].trace for r in remote_a)


def _check_row_against_trace(sw: Sweeper, r: Row) -> None:
    start = next(n for n in sw.cluster if n.name == r.start)
    from ipaddress import ip_address

    t = trace_flow(start, Flow(ip_address(r.src), ip_address(r.dst), r.protocol, None, r.dport), sw.cluster)
    assert r.fate == t.disposition, r
    assert [e.address for e in r.endpoints if e.address] == t.endpoints, r
    shares: dict[str | None, float] = {}
    for b in t.branches:
        shares[b.dnat] = shares.get(b.dnat, 0.0) + b.probability
    assert {e.address: e.share for e in r.endpoints} == pytest.approx(shares), r


@pytest.mark.parametrize("bundle", ["cluster", "broken-node", "ipvs-node"])
def test_rows_equal_a_fresh_trace_on_the_demo_bundles(bundle: str) -> None:
    sw = Sweeper(load_cluster([DEMO / bundle]), checks=False)
    rows = sw.sweep().rows
    assert rows
    for r in random.Random(17).sample(rows, min(12, len(rows))):
        _check_row_against_trace(sw, r)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kptrace.testing.generator import generate_iptables

    path = tmp_path_factory.mktemp("gen") / "iptables-save.txt"
    generate_iptables(1000, 10, seed=3).write(str(path))
    return path


def test_rows_equal_a_fresh_trace_on_a_generated_1k_dump(generated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = load_cluster([generated], ["192.168.0.2"], ["10.244.0.0/16"], options=load.LoadOptions(strict=True))
    from ipaddress import ip_network

    cluster[0].pod_subnet = ip_network("10.244.1.0/24")  # the generator's node; a bare dump does not say it
    sw = Sweeper(cluster, checks=False)
    from kptrace.services import merge, service_ports

    names = sorted({f"{s.namespace}/{s.name}" for s in merge(service_ports(cluster))})
    assert len(names) > 900
    rows = [r for name in random.Random(5).sample(names, 15) for r in sw.sweep_node(cluster[0], name).rows]
    assert {r.source_kind for r in rows} >= {"pod", "node"}
    for r in rows:
        _check_row_against_trace(sw, r)
