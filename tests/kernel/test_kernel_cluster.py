"""Issue 3 acceptance: two flannel (VXLAN) nodes in the real kernel vs kptrace on both bundles.

The lab (tests/lab/cluster.py) is two node namespaces on an underlay bridge, each with cni0, pods
and a real `vxlan` flannel.1 programmed as flanneld does it, kube-proxy + flannel rules on both,
and a world namespace. Each test first asserts what the kernel did (TRACE `OUT=` on every node,
`ip route get`, conntrack, /proc/net counters, which namespace received the packet), then runs
`kptrace why ... --dump <scenario>/nodeA --dump <scenario>/nodeB -o json` and requires the same
disposition, egress interface and next hop on each node, the node that received it, the DNAT
endpoint, masquerade and reply (tests.lab.cluster.disagreements).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.conftest import Oracle, skip_or_fail
from tests.lab import cluster as cl
from tests.lab import netns
from tests.lab.cluster import (
    BRIDGE,
    ECHO_LOCAL,
    EXTERNAL_CLIENT_IP,
    NODES,
    POD_A1,
    POD_A2,
    POD_B1,
    SIDE_LINK,
    UPLINK,
    VXLAN_DEV,
    WEB_BOTH,
    WEB_LOCAL,
    WEB_REMOTE,
    ClusterLab,
    ClusterResult,
    from_node,
    from_pod,
    from_world,
)

pytestmark = pytest.mark.kernel

NODE_A, NODE_B = NODES["nodeA"], NODES["nodeB"]


@pytest.fixture(scope="module")
def cluster_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    reason = cl.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    cl.cleanup_stale_namespaces()
    lab = cl.make_cluster(tmp_path_factory.mktemp("cluster-lab"), seed=netns.lab_seed())
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab(cluster_lab: ClusterLab) -> Iterator[ClusterLab]:
    """The module's cluster, back to the baseline (forwarding on, rp_filter 0, br_netfilter on,
    default routes) before and after each test."""
    cluster_lab.reset()
    try:
        yield cluster_lab
    finally:
        cluster_lab.reset()


def check(kptrace: Oracle, kernel: ClusterResult, scen: Path) -> None:
    kptrace.require()
    problems, answer = cl.compare(kernel, scen)
    if problems:
        raise AssertionError(cl.format_report(kernel, answer, problems))


def assert_delivered(kernel: ClusterResult, role: str, *, src: str, dport: int) -> None:
    assert kernel.verdict == "ACCEPT", kernel.describe()
    assert kernel.delivery is not None, "kernel accepted but nothing arrived\n" + kernel.describe()
    assert (kernel.delivery.ns_role, kernel.delivery.src, kernel.delivery.dport) == (
        role, src, dport), kernel.describe()


def assert_path(kernel: ClusterResult, *hops: tuple[str, str, str | None]) -> None:
    """The nodes the packet crossed, with the interface each sent it out of (TRACE OUT=) and the
    next hop `ip route get` gives there."""
    got = [(o.role, o.egress, o.route.via if o.route else None) for o in kernel.nodes]
    assert got == list(hops), kernel.describe()


# 1. pod -> ClusterIP ----------------------------------------------------------------------------

def test_pod_to_cluster_ip_local_endpoint(lab: ClusterLab, kptrace: Oracle) -> None:
    """DNAT on node A to a pod on the same bridge: out cni0, no next hop, never reaches node B."""
    scen = lab.load("pod-clusterip-local")
    kernel = lab.probe(from_pod("pod-a1", WEB_LOCAL.cluster_ip, 80))
    assert kernel.dnat == f"{POD_A2}:8080"
    assert_delivered(kernel, "pod-a2", src=POD_A1, dport=8080)
    assert_path(kernel, ("nodeA", BRIDGE, None))
    assert kernel.masquerade is False and kernel.reply_ok is True, kernel.describe()
    check(kptrace, kernel, scen)


def test_pod_to_cluster_ip_remote_endpoint(lab: ClusterLab, kptrace: Oracle) -> None:
    """DNAT on node A to a pod on node B: out flannel.1 via 10.244.2.0 (VXLAN to 192.168.56.12),
    then node B forwards it out its cni0; the source is kept (FLANNEL-POSTRTG RETURN)."""
    scen = lab.load("pod-clusterip-remote")
    kernel = lab.probe(from_pod("pod-a1", WEB_REMOTE.cluster_ip, 80))
    assert kernel.dnat == f"{POD_B1}:8080"
    assert_delivered(kernel, "pod-b1", src=POD_A1, dport=8080)
    assert_path(kernel, ("nodeA", VXLAN_DEV, NODE_B.vtep_ip), ("nodeB", BRIDGE, None))
    assert kernel.masquerade is False and kernel.reply_ok is True, kernel.describe()
    check(kptrace, kernel, scen)


def test_pod_to_cluster_ip_endpoints_on_both_nodes(lab: ClusterLab, kptrace: Oracle) -> None:
    """Two endpoints, one per node: the kernel picks one, which must be one of kptrace's branches
    and agree with it hop by hop."""
    scen = lab.load("pod-clusterip-both")
    kernel = lab.probe(from_pod("pod-a1", WEB_BOTH.cluster_ip, 80))
    assert kernel.dnat in (f"{POD_A2}:8080", f"{POD_B1}:8080"), kernel.describe()
    remote = kernel.dnat == f"{POD_B1}:8080"
    assert_delivered(kernel, "pod-b1" if remote else "pod-a2", src=POD_A1, dport=8080)
    if remote:
        assert_path(kernel, ("nodeA", VXLAN_DEV, NODE_B.vtep_ip), ("nodeB", BRIDGE, None))
    else:
        assert_path(kernel, ("nodeA", BRIDGE, None))
    check(kptrace, kernel, scen)


# 2. pod -> pod across nodes ---------------------------------------------------------------------

def test_pod_to_pod_across_nodes(lab: ClusterLab, kptrace: Oracle) -> None:
    scen = lab.load("pod-pod-cross")
    kernel = lab.probe(from_pod("pod-a1", POD_B1, 8080))
    assert kernel.dnat is None
    assert_delivered(kernel, "pod-b1", src=POD_A1, dport=8080)
    assert_path(kernel, ("nodeA", VXLAN_DEV, NODE_B.vtep_ip), ("nodeB", BRIDGE, None))
    check(kptrace, kernel, scen)


# 3. external -> NodePort on node A, endpoint on node B -----------------------------------------

def test_external_nodeport_endpoint_on_other_node(lab: ClusterLab, kptrace: Oracle) -> None:
    """KUBE-NODEPORTS -> KUBE-EXT (mark) -> DNAT to node B's pod; KUBE-POSTROUTING masquerades to
    flannel.1's address 10.244.1.0, so node B's pod sees node A's VTEP, and the reply comes back
    to node A to be un-NATed."""
    scen = lab.load("nodeport-remote")
    kernel = lab.probe(from_world(NODE_A.ip, 30080))
    assert kernel.dnat == f"{POD_B1}:8080"
    assert_delivered(kernel, "pod-b1", src=NODE_A.vtep_ip, dport=8080)
    assert_path(kernel, ("nodeA", VXLAN_DEV, NODE_B.vtep_ip), ("nodeB", BRIDGE, None))
    assert kernel.masquerade is True and kernel.reply_ok is True, kernel.describe()
    check(kptrace, kernel, scen)


# 4. node -> ClusterIP, with and without a default route ----------------------------------------

@pytest.mark.parametrize("default_route", [True, False], ids=["default-route", "no-default-route"])
def test_node_to_cluster_ip(lab: ClusterLab, kptrace: Oracle, default_route: bool) -> None:
    """A process on node A connects to a ClusterIP. The output route is looked up before nat
    OUTPUT: with a default route the packet is DNATed, re-routed to flannel.1 and masqueraded to
    10.244.1.0; without one connect() fails with ENETUNREACH and no packet exists (k8s #110659)."""
    lab.set_default_route("nodeA", default_route)
    scen = lab.load(f"node-clusterip-{'default' if default_route else 'nodefault'}")
    kernel = lab.probe(from_node("nodeA", WEB_REMOTE.cluster_ip, 80))
    if default_route:
        assert kernel.dnat == f"{POD_B1}:8080"
        assert_delivered(kernel, "pod-b1", src=NODE_A.vtep_ip, dport=8080)
        assert_path(kernel, ("nodeA", VXLAN_DEV, NODE_B.vtep_ip), ("nodeB", BRIDGE, None))
    else:
        rg = lab.route_get("nodeA", WEB_REMOTE.cluster_ip, NODE_A.ip)
        assert not rg.ok and "unreachable" in rg.text.lower(), rg
        assert kernel.client_result == "oserror:101", kernel.describe()  # ENETUNREACH
        assert kernel.verdict == "NO_ROUTE" and kernel.nodes == [], kernel.describe()
        assert kernel.delivery is None
    check(kptrace, kernel, scen)


# 5. bridge-nf-call-iptables 0/1, same-node pod -> ClusterIP ------------------------------------

@pytest.mark.parametrize("br_nf", [1, 0], ids=["bridge-nf-1", "bridge-nf-0"])
def test_bridge_nf_call_iptables_same_node_cluster_ip(lab: ClusterLab, kptrace: Oracle,
                                                       br_nf: int) -> None:
    """The request is routed (DNAT in PREROUTING either way); the endpoint's answer goes pod to pod
    across cni0. With bridge-nf-call-iptables=1 conntrack sees it and restores the ClusterIP as
    source; with 0 it bypasses conntrack, the client gets an answer from the pod IP and drops it."""
    lab.set_bridge_nf_call_iptables("nodeA", bool(br_nf))
    # The setting is per network namespace: node B (and the host) keep their own value.
    assert lab.sysctl_value("nodeB", "net.bridge.bridge-nf-call-iptables") == "1"
    scen = lab.load(f"bridge-nf-{br_nf}")
    kernel = lab.probe(from_pod("pod-a1", ECHO_LOCAL.cluster_ip, 53, "udp"))
    assert kernel.dnat == f"{POD_A2}:5353"
    assert_delivered(kernel, "pod-a2", src=POD_A1, dport=5353)
    assert_path(kernel, ("nodeA", BRIDGE, None))
    assert kernel.reply_ok is bool(br_nf), kernel.describe()
    check(kptrace, kernel, scen)


# 6. ip_forward 0/1 ------------------------------------------------------------------------------

@pytest.mark.parametrize("off_on", [None, "nodeA", "nodeB"],
                         ids=["ip_forward-1", "ip_forward-0-node-a", "ip_forward-0-node-b"])
def test_ip_forward(lab: ClusterLab, kptrace: Oracle, off_on: str | None) -> None:
    """pod -> pod across nodes with net.ipv4.ip_forward=0 on the sending or the receiving node: the
    input route fails (EHOSTUNREACH, counted as Ip InAddrErrors) and the packet is silently gone
    after PREROUTING on that node."""
    if off_on:
        lab.set_ip_forward(off_on, False)
    scen = lab.load(f"ip-forward-{off_on or 'on'}")
    kernel = lab.probe(from_pod("pod-a1", POD_B1, 8080))
    if off_on is None:
        assert_delivered(kernel, "pod-b1", src=POD_A1, dport=8080)
        assert_path(kernel, ("nodeA", VXLAN_DEV, NODE_B.vtep_ip), ("nodeB", BRIDGE, None))
    else:
        assert kernel.verdict == "VANISHED" and kernel.delivery is None, kernel.describe()
        last = kernel.nodes[-1]
        assert last.role == off_on and last.hooks == ["PREROUTING"], kernel.describe()
        assert last.counters["Ip.InAddrErrors"] >= 1, kernel.describe()
        assert last.route is not None and not last.route.ok, kernel.describe()
        if off_on == "nodeB":
            assert kernel.nodes[0].egress == VXLAN_DEV, kernel.describe()
    check(kptrace, kernel, scen)


# 7. rp_filter with an asymmetric route ----------------------------------------------------------

@pytest.mark.parametrize("mode", [1, 2], ids=["strict", "loose"])
def test_rp_filter_asymmetric_route(lab: ClusterLab, kptrace: Oracle, mode: int) -> None:
    """The world sends to a node A pod over its second link (eth1) while node A's route back to
    the world is the default route out eth0. rp_filter=1 (strict) drops it in the input route
    (TcpExt IPReversePathFilter; `ip route get ... iif eth1` fails); rp_filter=2
    (loose) only needs some route back, so it is forwarded and the reply leaves by eth0."""
    lab.set_rp_filter("nodeA", mode)
    scen = lab.load(f"rp-filter-{mode}")
    kernel = lab.probe(from_world(POD_A2, 8080, in_iface=SIDE_LINK))
    first = kernel.nodes[0] if kernel.nodes else None
    assert first is not None and first.in_iface == SIDE_LINK, kernel.describe()
    back = lab.route_get("nodeA", EXTERNAL_CLIENT_IP)
    assert back.dev == UPLINK, back
    if mode == 1:
        assert kernel.verdict == "VANISHED" and kernel.delivery is None, kernel.describe()
        assert first.hooks == ["PREROUTING"], kernel.describe()
        assert first.counters["TcpExt.IPReversePathFilter"] >= 1, kernel.describe()
        # The input route fails as a martian source (EINVAL) for `ip route get ... iif eth1`.
        assert first.route is not None and not first.route.ok, kernel.describe()
    else:
        assert_delivered(kernel, "pod-a2", src=EXTERNAL_CLIENT_IP, dport=8080)
        assert_path(kernel, ("nodeA", BRIDGE, None))
        assert kernel.reply_ok is True, kernel.describe()
    check(kptrace, kernel, scen)
