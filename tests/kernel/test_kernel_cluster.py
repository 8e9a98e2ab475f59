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

from pathlib import Path

import pytest

from tests.kernel.conftest import Oracle
from tests.lab import cluster as cl
from tests.lab import netns, thinning
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


@pytest.fixture
def lab(clean_cluster: ClusterLab) -> ClusterLab:
    return clean_cluster


def check(kptrace: Oracle, kernel: ClusterResult, scen: Path) -> None:
    kptrace.require()
    problems, answer = cl.compare(kernel, scen)
    if problems:
        raise AssertionError(cl.format_report(kernel, answer, problems))
    # Less evidence (a file or a chain fewer in one node's bundle) never changes what it determined.
    thinning.assert_thinned(answer.argv, answer.report, what=str(kernel.flow),
                            kernel_classes=cl._KERNEL_CLASSES.get(kernel.verdict))


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


# 8. The overlay's own packet dropped on the underlay (issue 16) ---------------------------------

VXLAN_DROP = "-p udp -m udp --dport 8472 -j DROP"


def _with_first_rule(ruleset: str, chain: str, rule: str) -> str:
    """The ruleset with `-A chain rule` as the first rule of that filter chain (an admin's -I)."""
    head, _, filt = ruleset.partition("*filter\n")
    lines = filt.split("\n")
    at = next(i for i, ln in enumerate(lines) if ln.startswith(f"-A {chain} ") or ln == "COMMIT")
    lines.insert(at, f"-A {chain} {rule}")
    return head + "*filter\n" + "\n".join(lines)


def _drop_count(lab: ClusterLab, role: str, chain: str) -> int:
    """Packets the DROP rule counted (iptables-save -c), the kernel's own account of the drop."""
    out = netns.sh(["iptables-save", "-c", "-t", "filter"], ns=lab.ns[role]).stdout
    for line in out.splitlines():
        if line.endswith(f"-A {chain} {VXLAN_DROP}"):
            return int(line.split("]")[0].strip("[").split(":")[0])
    raise AssertionError(f"no VXLAN DROP rule in {role}'s {chain}:\n{out}")


@pytest.mark.parametrize(("role", "chain"), [("nodeB", "INPUT"), ("nodeA", "OUTPUT")],
                         ids=["node-b-input", "node-a-output"])
def test_vxlan_dropped_on_the_request_path(lab: ClusterLab, kptrace: Oracle, role: str, chain: str) -> None:
    """A firewall drops UDP 8472 where the request's VXLAN packet passes (the sender's OUTPUT, the
    receiver's INPUT): pod → pod across nodes is lost, although the pod packet itself passed every
    chain of node A. kptrace names the rule, its node, and the overlay it breaks."""
    rulesets = {r: cl.node_ruleset(r) for r in NODES}
    rulesets[role] = _with_first_rule(rulesets[role], chain, VXLAN_DROP)
    scen = lab.load(f"vxlan-drop-{role}-{chain}", rulesets)
    kernel = lab.probe(from_pod("pod-a1", POD_B1, 5353, "udp"))
    assert kernel.delivery is None and kernel.client_result == "timeout", kernel.describe()
    assert _drop_count(lab, role, chain) >= 1, kernel.describe()
    first = kernel.first
    assert first is not None and first.role == "nodeA" and first.egress == VXLAN_DEV, kernel.describe()
    assert [o.role for o in kernel.nodes] == ["nodeA"], kernel.describe()  # the pod packet never reached node B
    kptrace.require()
    answer = cl.run_kptrace([scen / r for r in NODES], kernel.flow)
    report = cl.format_report(kernel, answer, ["(the VXLAN drop case)"])
    assert answer.disposition == "DROPPED" and answer.exit_code == 1, report
    (branch,) = answer.branches
    drop = next(s for s in branch["steps"] if s["action"] == "DROP")
    assert (drop["node"], drop["chain"], drop.get("encapsulated")) == (NODES[role].name, chain, True), report
    assert netns.normalize_rule(drop["text"]) == f"-A {chain} {VXLAN_DROP}", report
    assert branch["steps"][-1]["action"] == "OVERLAY" and "UDP 8472" in branch["steps"][-1]["text"], report
    # Node A's part agrees rule for rule with what TRACE saw of the pod packet there.
    texts = [netns.normalize_rule(s["text"]) for s in branch["steps"] if s.get("node") == "node-a"]
    tables = cl.dump_tables(scen)
    missing = [netns.normalize_rule(e.text) for e in first.rules if e.table in tables
               and netns.normalize_rule(e.text) not in texts]
    assert not missing, report + f"\nmissing: {missing}"


@pytest.mark.parametrize(("role", "chain"), [("nodeB", "OUTPUT"), ("nodeA", "INPUT")],
                         ids=["node-b-output", "node-a-input"])
def test_vxlan_dropped_on_the_reply_path(lab: ClusterLab, kptrace: Oracle, role: str, chain: str) -> None:
    """UDP 8472 dropped where the answer's VXLAN packet passes: the datagram reaches pod-b1, its echo
    is lost; kptrace's branch is FORWARDED with a failed reply (exit 1)."""
    rulesets = {r: cl.node_ruleset(r) for r in NODES}
    rulesets[role] = _with_first_rule(rulesets[role], chain, VXLAN_DROP)
    scen = lab.load(f"vxlan-drop-reply-{role}-{chain}", rulesets)
    kernel = lab.probe(from_pod("pod-a1", POD_B1, 5353, "udp"))
    assert_delivered(kernel, "pod-b1", src=POD_A1, dport=5353)
    assert kernel.reply_ok is False, kernel.describe()
    assert _drop_count(lab, role, chain) >= 1, kernel.describe()
    check(kptrace, kernel, scen)
