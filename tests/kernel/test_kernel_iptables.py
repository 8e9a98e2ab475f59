"""Acceptance scenarios: kube-proxy rulesets in the real kernel vs kptrace on the same dump.

Each test first asserts what the kernel did (so a broken lab is never mistaken for a kptrace
bug), then asks kptrace about the same flow and the same `iptables-save` and requires it to
agree on the verdict, the DNAT endpoint, masquerade, and the rules the packet matched.
"""

from __future__ import annotations

import pytest

from tests.lab import netns
from tests.lab.netns import (
    BRIDGE_IP,
    EXTERNAL_CLIENT_IP,
    LOCAL_PODS,
    NODE_IP,
    REMOTE_PODS,
    Flow,
    KernelResult,
    Lab,
)
from tests.lab.rulesets import Endpoint, NodeRuleset, Service, UserRule

pytestmark = pytest.mark.kernel

POD_A, POD_B, POD_C = LOCAL_PODS["pod-a"], LOCAL_PODS["pod-b"], LOCAL_PODS["pod-c"]
RPOD = REMOTE_PODS["rpod"]
EXTERNAL_IP = "198.51.100.10"
LB_IP = "198.51.100.20"

def web(*endpoints: Endpoint, **kw: object) -> Service:
    return Service("default", "web", "10.96.0.10", 80, list(endpoints), **kw)  # type: ignore[arg-type]


def from_pod_a(dst: str, dport: int, proto: str = "tcp") -> Flow:
    return Flow("pod-a", POD_A, dst, dport, proto)


def from_world(dst: str, dport: int, proto: str = "tcp") -> Flow:
    return Flow("world", EXTERNAL_CLIENT_IP, dst, dport, proto)


def from_node(dst: str, dport: int, src: str = NODE_IP, proto: str = "tcp") -> Flow:
    return Flow("node", src, dst, dport, proto)


def run(lab: Lab, ruleset: NodeRuleset, flow: Flow, name: str) -> tuple[KernelResult, object]:
    dump = lab.load(ruleset.render(), name=name)
    return lab.probe(flow), dump


def assert_delivered(kernel: KernelResult, role: str, *, src: str, dport: int) -> None:
    assert kernel.verdict == "ACCEPT", kernel.describe()
    assert kernel.delivery is not None, "kernel accepted but nothing arrived\n" + kernel.describe()
    assert (kernel.delivery.ns_role, kernel.delivery.src, kernel.delivery.dport) == (
        role, src, dport), kernel.describe()


def assert_stopped(kernel: KernelResult, verdict: str, rule_fragment: str) -> None:
    assert kernel.verdict == verdict, kernel.describe()
    assert kernel.delivery is None, kernel.describe()
    assert any(rule_fragment in e.text for e in kernel.rules), kernel.describe()


# 1. pod -> ClusterIP ----------------------------------------------------------------------------

@pytest.mark.parametrize("proto,endpoints", [
    ("tcp", [POD_B]),
    ("tcp", [POD_B, POD_C]),
    ("udp", [POD_B]),
], ids=["tcp-one-endpoint", "tcp-two-endpoints", "udp-one-endpoint"])
def test_pod_to_cluster_ip(lab: Lab, kptrace, proto: str, endpoints: list[str]) -> None:
    """Pod traffic to a ClusterIP is DNATed to an endpoint on the same bridge, not masqueraded.

    The reply goes pod to pod across the bridge; only br_netfilter (bridge-nf-call-iptables=1)
    lets conntrack see it and undo the DNAT, which is why kube-proxy requires it.
    """
    port = 8080 if proto == "tcp" else 5353
    svc = Service("default", "web", "10.96.0.10", 80, [Endpoint(ip, port) for ip in endpoints],
                  protocol=proto)
    kernel, dump = run(lab, NodeRuleset(services=[svc]), from_pod_a(svc.cluster_ip, 80, proto),
                       "pod-clusterip")
    assert kernel.dnat in {f"{ip}:{port}" for ip in endpoints}, kernel.describe()
    role = {POD_B: "pod-b", POD_C: "pod-c"}[kernel.dnat.split(":")[0]]
    assert_delivered(kernel, role, src=POD_A, dport=port)
    assert kernel.masquerade is False
    assert kernel.client_result in ("connected", "reply")
    kptrace.check(dump, kernel, exact_endpoint=len(endpoints) == 1)


# 2. NodePort ------------------------------------------------------------------------------------

@pytest.mark.parametrize("origin", ["world", "node", "loopback", "pod"])
def test_nodeport(lab: Lab, kptrace, origin: str) -> None:
    """NodePort (externalTrafficPolicy=Cluster) is DNATed and masqueraded from any origin.

    From 127.0.0.1 it only works because kube-proxy sets route_localnet=1; MASQUERADE then
    picks the bridge address as the new source. From a pod the endpoint's reply goes back
    through the bridge to the masquerade address and is un-NATed to the calling pod.
    """
    svc = web(Endpoint(POD_B, 8080), node_port=30080)
    flow = {"world": from_world(NODE_IP, 30080), "node": from_node(NODE_IP, 30080),
            "loopback": from_node("127.0.0.1", 30080, src="127.0.0.1"),
            "pod": from_pod_a(NODE_IP, 30080)}[origin]
    kernel, dump = run(lab, NodeRuleset(services=[svc]), flow, f"nodeport-{origin}")
    assert kernel.dnat == f"{POD_B}:8080"
    assert_delivered(kernel, "pod-b", src=BRIDGE_IP, dport=8080)
    assert kernel.masquerade is True and kernel.reply_ok is True, kernel.describe()
    kptrace.check(dump, kernel, exact_endpoint=True)


def test_nodeport_to_endpoint_on_another_node(lab: Lab, kptrace) -> None:
    """The endpoint is off-node: the packet leaves via the uplink, masqueraded to the node IP."""
    svc = web(Endpoint(RPOD, 8080, local=False), node_port=30080)
    kernel, dump = run(lab, NodeRuleset(services=[svc]), from_world(NODE_IP, 30080),
                       "nodeport-remote")
    assert kernel.dnat == f"{RPOD}:8080"
    assert_delivered(kernel, "rpod", src=NODE_IP, dport=8080)
    kptrace.check(dump, kernel, exact_endpoint=True)


# 3. externalIP / 4. LoadBalancer IP -------------------------------------------------------------

def test_external_ip(lab: Lab, kptrace) -> None:
    """Traffic to a Service externalIP routed to the node goes through KUBE-EXT and is masqueraded."""
    svc = web(Endpoint(POD_B, 8080), external_ips=[EXTERNAL_IP])
    kernel, dump = run(lab, NodeRuleset(services=[svc]), from_world(EXTERNAL_IP, 80), "external-ip")
    assert kernel.dnat == f"{POD_B}:8080"
    assert_delivered(kernel, "pod-b", src=BRIDGE_IP, dport=8080)
    kptrace.check(dump, kernel, exact_endpoint=True)


@pytest.mark.parametrize("policy", ["Cluster", "Local"])
def test_load_balancer_ip(lab: Lab, kptrace, policy: str) -> None:
    """LB IP from outside: Cluster masquerades; Local keeps the client address (KUBE-SVL)."""
    local = policy == "Local"
    svc = web(Endpoint(POD_B, 8080), lb_ips=[LB_IP], node_port=30081,
              external_policy_local=local, health_check_node_port=32000 if local else None)
    kernel, dump = run(lab, NodeRuleset(services=[svc]), from_world(LB_IP, 80), f"lb-{policy}")
    assert kernel.dnat == f"{POD_B}:8080"
    assert_delivered(kernel, "pod-b", src=EXTERNAL_CLIENT_IP if local else BRIDGE_IP, dport=8080)
    assert kernel.masquerade is (not local)
    kptrace.check(dump, kernel, exact_endpoint=True)


def test_off_cluster_client_to_cluster_ip_is_masqueraded(lab: Lab, kptrace) -> None:
    """A client outside the cluster with a route to the service range: KUBE-SVC's
    `! -s <clusterCIDR> -j KUBE-MARK-MASQ` masquerades it, in case the endpoint is off-node."""
    svc = web(Endpoint(POD_B, 8080))
    kernel, dump = run(lab, NodeRuleset(services=[svc]), from_world(svc.cluster_ip, 80),
                       "offcluster-clusterip")
    assert kernel.dnat == f"{POD_B}:8080"
    assert_delivered(kernel, "pod-b", src=BRIDGE_IP, dport=8080)
    assert any("! -s 10.244.0.0/16" in e.text for e in kernel.rules), kernel.describe()
    kptrace.check(dump, kernel, exact_endpoint=True)


# 5. Service without endpoints -------------------------------------------------------------------

@pytest.mark.parametrize("origin", ["pod", "node", "world-nodeport"])
def test_no_endpoints_rejects(lab: Lab, kptrace, origin: str) -> None:
    """No endpoints: no nat rules at all, and filter REJECTs (FORWARD, OUTPUT or INPUT)."""
    svc = Service("default", "empty", "10.96.0.30", 80, [], node_port=30090)
    flow = {"pod": from_pod_a("10.96.0.30", 80), "node": from_node("10.96.0.30", 80),
            "world-nodeport": from_world(NODE_IP, 30090)}[origin]
    kernel, dump = run(lab, NodeRuleset(services=[svc]), flow, f"no-endpoints-{origin}")
    assert_stopped(kernel, "REJECT", "has no endpoints")
    assert kernel.client_result == "refused", kernel.describe()
    assert kernel.dnat is None
    kptrace.check(dump, kernel)


# 6. externalTrafficPolicy=Local without a local endpoint ----------------------------------------

@pytest.mark.parametrize("variant", ["nodeport", "lb-ip", "legacy-mark-drop"])
def test_local_policy_without_local_endpoint_drops(lab: Lab, kptrace, variant: str) -> None:
    """eTP=Local and the only endpoint is on another node: external traffic is dropped.

    Current kube-proxy drops in filter KUBE-EXTERNAL-SERVICES ("has no local endpoints");
    before v1.25 the nat KUBE-XLB chain marked it 0x8000 (KUBE-MARK-DROP) and kubelet's
    KUBE-FIREWALL dropped it in INPUT.
    """
    svc = web(Endpoint(RPOD, 8080, local=False), node_port=30082, lb_ips=[LB_IP],
              external_policy_local=True, health_check_node_port=32001)
    ruleset = NodeRuleset(services=[svc], legacy=variant == "legacy-mark-drop")
    dst = LB_IP if variant == "lb-ip" else NODE_IP
    kernel, dump = run(lab, ruleset, from_world(dst, 80 if variant == "lb-ip" else 30082),
                       f"etp-local-{variant}")
    fragment = "dropping marked packets" if ruleset.legacy else "has no local endpoints"
    assert_stopped(kernel, "DROP", fragment)
    assert kernel.dnat is None
    kptrace.check(dump, kernel)


def test_local_policy_pod_traffic_short_circuits(lab: Lab, kptrace) -> None:
    """A pod calling the LB IP of an eTP=Local service still reaches the remote endpoint."""
    svc = web(Endpoint(RPOD, 8080, local=False), lb_ips=[LB_IP], node_port=30082,
              external_policy_local=True, health_check_node_port=32001)
    kernel, dump = run(lab, NodeRuleset(services=[svc]), from_pod_a(LB_IP, 80), "etp-local-pod")
    assert kernel.dnat == f"{RPOD}:8080"
    assert_delivered(kernel, "rpod", src=POD_A, dport=8080)
    kptrace.check(dump, kernel, exact_endpoint=True)


# 7. Hairpin -------------------------------------------------------------------------------------

def test_hairpin_masquerade(lab: Lab, kptrace) -> None:
    """A pod reaching itself through its Service: KUBE-SEP's `-s podIP` rule masquerades.

    Without SNAT the pod would answer itself directly and the connection would break; the
    bridge port also needs hairpin mode to send the frame back where it came from.
    """
    lab.set_hairpin("pod-b", True)
    svc = web(Endpoint(POD_B, 8080))
    flow = Flow("pod-b", POD_B, svc.cluster_ip, 80)
    kernel, dump = run(lab, NodeRuleset(services=[svc]), flow, "hairpin")
    assert kernel.dnat == f"{POD_B}:8080"
    assert_delivered(kernel, "pod-b", src=BRIDGE_IP, dport=8080)
    assert kernel.masquerade is True
    kptrace.check(dump, kernel, exact_endpoint=True)


# 8. FORWARD policy DROP -------------------------------------------------------------------------

@pytest.mark.parametrize("kube_forward", [False, True], ids=["no-kube-forward", "kube-forward"])
def test_forward_policy_drop_nodeport(lab: Lab, kptrace, kube_forward: bool) -> None:
    """FORWARD policy DROP: NodePort traffic passes only via KUBE-FORWARD's 0x4000-mark ACCEPT."""
    svc = web(Endpoint(POD_B, 8080), node_port=30080)
    ruleset = NodeRuleset(services=[svc], forward_policy="DROP", kube_forward_accepts=kube_forward)
    kernel, dump = run(lab, ruleset, from_world(NODE_IP, 30080), f"fwd-drop-{kube_forward}")
    assert kernel.dnat == f"{POD_B}:8080", kernel.describe()
    if kube_forward:
        assert_delivered(kernel, "pod-b", src=BRIDGE_IP, dport=8080)
    else:
        assert kernel.verdict == "DROP" and kernel.delivery is None, kernel.describe()
        assert any(e.kind == "policy" and e.verdict == "DROP" and e.chain == "FORWARD"
                   for e in kernel.events), kernel.describe()
    kptrace.check(dump, kernel, exact_endpoint=True)


@pytest.mark.parametrize("target", ["cluster-ip", "pod-direct"])
def test_forward_policy_drop_pod_traffic(lab: Lab, kptrace, target: str) -> None:
    """Pod traffic carries no masquerade mark, so KUBE-FORWARD does not save it from policy DROP.

    Pod to pod on the same bridge is dropped too: br_netfilter sends bridged frames through
    iptables FORWARD.
    """
    svc = web(Endpoint(POD_B, 8080))
    ruleset = NodeRuleset(services=[svc], forward_policy="DROP")
    flow = from_pod_a(svc.cluster_ip, 80) if target == "cluster-ip" else from_pod_a(POD_B, 8080)
    kernel, dump = run(lab, ruleset, flow, f"fwd-drop-pod-{target}")
    assert kernel.verdict == "DROP" and kernel.delivery is None, kernel.describe()
    assert "FORWARD" in kernel.hooks
    kptrace.check(dump, kernel, exact_endpoint=True)


# 9. A user DROP ahead of kube-proxy's rules -----------------------------------------------------

@pytest.mark.parametrize("case", ["forward-pod-clusterip", "forward-world-nodeport",
                                  "input-kubelet", "input-other-port"])
def test_user_drop_ahead_of_kube_rules(lab: Lab, kptrace, case: str) -> None:
    """`iptables -I FORWARD 1 -d <podCIDR> -j DROP` beats kube-proxy after DNAT; an INPUT DROP
    for the kubelet port hits only that port."""
    svc = web(Endpoint(POD_B, 8080), node_port=30080)
    ruleset = NodeRuleset(services=[svc], user_rules=[
        UserRule("filter", f"-I FORWARD 1 -d {netns.POD_CIDR} -j DROP"),
        UserRule("filter", "-I INPUT 1 -p tcp -m tcp --dport 10250 -j DROP"),
    ])
    flow = {"forward-pod-clusterip": from_pod_a(svc.cluster_ip, 80),
            "forward-world-nodeport": from_world(NODE_IP, 30080),
            "input-kubelet": from_world(NODE_IP, 10250),
            "input-other-port": from_world(NODE_IP, 10255)}[case]
    kernel, dump = run(lab, ruleset, flow, f"user-drop-{case}")
    if case == "input-other-port":
        assert_delivered(kernel, "node", src=EXTERNAL_CLIENT_IP, dport=10255)
        assert kernel.dnat is None
    else:
        assert_stopped(kernel, "DROP", "-j DROP")
        dropped_by = [e.text for e in kernel.rules if e.verdict == "DROP"]
        assert dropped_by[-1] in ("-A FORWARD -d 10.244.1.0/24 -j DROP",
                                  "-A INPUT -p tcp -m tcp --dport 10250 -j DROP"), kernel.describe()
    kptrace.check(dump, kernel, exact_endpoint=kernel.dnat is not None)


# 10. Node state beyond the rules: compared in bundle mode only ------------------------------------
# The dump alone cannot tell these apart from the scenarios above; the bundle (sysctls, bridge
# ports, neighbours) can, so only the bundle answer is held to the kernel's.

def test_bridged_traffic_bypasses_iptables_without_br_netfilter(lab: Lab, kptrace) -> None:
    """bridge-nf-call-iptables=0: same-bridge pod-to-pod frames never reach iptables, so a
    FORWARD policy DROP does not stop them (with it on, as in test_forward_policy_drop_pod_traffic,
    they are dropped)."""
    lab.set_bridge_nf_call_iptables(False)
    kernel, dump = run(lab, NodeRuleset(forward_policy="DROP"), from_pod_a(POD_B, 8080),
                       "br-netfilter-off")
    assert kernel.events == [], kernel.describe()
    assert_delivered(kernel, "pod-b", src=POD_A, dport=8080)
    kptrace.check(dump, kernel, modes=("bundle",))


def test_hairpin_off_loses_the_frame(lab: Lab, kptrace) -> None:
    """A pod calling itself through its Service with hairpin mode off on its bridge port: nat
    PREROUTING DNATs it, then the bridge discards the frame before FORWARD; no netfilter verdict,
    nothing arrives."""
    lab.set_hairpin("pod-b", False)
    svc = web(Endpoint(POD_B, 8080))
    kernel, dump = run(lab, NodeRuleset(services=[svc]), Flow("pod-b", POD_B, svc.cluster_ip, 80),
                       "hairpin-off")
    assert kernel.verdict == "VANISHED" and kernel.delivery is None, kernel.describe()
    assert kernel.dnat == f"{POD_B}:8080" and kernel.hooks == ["PREROUTING"], kernel.describe()
    kptrace.check(dump, kernel, exact_endpoint=True, modes=("bundle",))


def test_localhost_nodeport_needs_route_localnet(lab: Lab, kptrace) -> None:
    """127.0.0.1:nodePort with route_localnet=0 (e.g. reset by a sysctl.d file after kube-proxy
    set it): DNAT in nat OUTPUT succeeds, then rerouting a 127.0.0.1 source off-host fails and
    the packet is gone before POSTROUTING."""
    lab.set_route_localnet(False)
    svc = web(Endpoint(POD_B, 8080), node_port=30080)
    kernel, dump = run(lab, NodeRuleset(services=[svc]),
                       from_node("127.0.0.1", 30080, src="127.0.0.1"), "route-localnet-off")
    assert kernel.verdict == "VANISHED" and kernel.delivery is None, kernel.describe()
    assert kernel.dnat == f"{POD_B}:8080" and "POSTROUTING" not in kernel.hooks, kernel.describe()
    kptrace.check(dump, kernel, exact_endpoint=True, modes=("bundle",))
