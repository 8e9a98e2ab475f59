"""Issue 16 in the real kernel: the verdicts kptrace used to get wrong, on the single-node lab.

Each test asserts what the kernel did first, then holds kptrace's answer to it (tests.lab.netns):
a pod reaching itself through its Service with hairpin off/on and no neighbour entry for it, a
ClusterIP nobody owns (and a port its Service does not have), a stale UDP conntrack entry made before
the rules (`conntrack -I`, then a probe from that source port), and a DNAT to the node's own address
when the input has no address list, only the kernel's routes with their `src`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.lab import netns, thinning
from tests.lab.netns import (
    BRIDGE,
    EXTERNAL_CLIENT_IP,
    LOCAL_PODS,
    NODE_IP,
    SERVICE_CIDR,
    UPLINK,
    Flow,
    KernelResult,
    Lab,
    sh,
)
from tests.lab.rulesets import Endpoint, NodeRuleset, Service, UserRule

pytestmark = pytest.mark.kernel

POD_A, POD_B = LOCAL_PODS["pod-a"], LOCAL_PODS["pod-b"]
WEB = Service("default", "web", "10.96.0.10", 80, [Endpoint(POD_B, 8080)])
DNS = Service("kube-system", "kube-dns", "10.96.0.53", 53, [Endpoint(POD_B, 5353)], port_name="dns", protocol="udp")
VIP = "198.51.100.10"


def assert_untranslated_out(kernel: KernelResult, egress: str = UPLINK) -> None:
    """The node sent it on as it was (ACCEPT through POSTROUTING, no DNAT) and nobody received it."""
    assert kernel.verdict == "ACCEPT" and kernel.dnat is None, kernel.describe()
    assert kernel.egress == egress and kernel.delivery is None, kernel.describe()
    assert kernel.client_result not in ("connected", "reply"), kernel.describe()


# 1. hairpin to oneself, no neighbour entry for the pod ----------------------------------------------

@pytest.mark.parametrize("hairpin", [False, True], ids=["hairpin-off", "hairpin-on"])
def test_hairpin_to_self_without_neighbour_entry(lab: Lab, kptrace, hairpin: bool) -> None:
    """pod-b → its own Service: the bridge must send the frame back by pod-b's port. The node has no
    neighbour entry for pod-b when the bundle is taken; the port is pod-b's own all the same, and its
    mode is every port's (the kubelet's hairpin-veth mode sets them all alike)."""
    for pod in LOCAL_PODS:
        lab.set_hairpin(pod, hairpin)
    dump = lab.load(NodeRuleset(services=[WEB]).render(), name=f"hairpin-self-{'on' if hairpin else 'off'}")
    sh(["ip", "neigh", "flush", "dev", BRIDGE], ns=lab.node)
    bundle = netns.bundle_of(dump)
    (bundle / "ip-neigh.txt").write_text(sh(["ip", "neigh", "show"], ns=lab.node).stdout)
    assert POD_B not in (bundle / "ip-neigh.txt").read_text()
    kernel = lab.probe(Flow("pod-b", POD_B, WEB.cluster_ip, 80), retry=hairpin)
    assert kernel.dnat == f"{POD_B}:8080", kernel.describe()
    if hairpin:
        assert kernel.verdict == "ACCEPT" and kernel.delivery is not None, kernel.describe()
        assert (kernel.delivery.ns_role, kernel.delivery.src) == ("pod-b", netns.BRIDGE_IP), kernel.describe()
        assert kernel.masquerade is True
    else:
        assert kernel.verdict == "VANISHED" and kernel.hooks == ["PREROUTING"], kernel.describe()
    kptrace.check(dump, kernel, exact_endpoint=True, modes=("bundle",))


# 2. a Service address nobody owns ----------------------------------------------------------------------

@pytest.mark.parametrize("origin", ["pod", "node"])
def test_cluster_ip_nobody_owns(lab: Lab, kptrace, origin: str) -> None:
    """10.96.99.99 is in the Service range, no Service has it: forwarded untranslated to the default
    gateway (which refuses it), no answer. kptrace: NO_SERVICE, exit 1, in every input mode."""
    dump = lab.load(NodeRuleset(services=[WEB]).render(), name=f"no-such-clusterip-{origin}")
    flow = Flow("pod-a", POD_A, "10.96.99.99", 80) if origin == "pod" else Flow("node", NODE_IP, "10.96.99.99", 80)
    kernel = lab.probe(flow, retry=False)
    assert_untranslated_out(kernel)
    kptrace.check(dump, kernel, extra=("--service-cidr", SERVICE_CIDR))


def test_cluster_ip_port_it_does_not_have(lab: Lab, kptrace) -> None:
    """A ClusterIP on a forgotten port: kube-proxy's rules name its ports, no range is needed."""
    dump = lab.load(NodeRuleset(services=[WEB]).render(), name="clusterip-wrong-port")
    kernel = lab.probe(Flow("pod-a", POD_A, WEB.cluster_ip, 81), retry=False)
    assert_untranslated_out(kernel)
    kptrace.check(dump, kernel)


# 5. a stale UDP conntrack entry ------------------------------------------------------------------------

def test_stale_udp_conntrack_entry(lab: Lab, kptrace) -> None:
    """An entry for pod-a:SPORT → kube-dns:53 made before kube-proxy's rules (conntrack -I on an empty
    table, then the rules): the probe from that same source port belongs to it, so nothing DNATs it
    and it leaves for the gateway untranslated. kptrace reads the entry from the bundle's conntrack.txt."""
    sport = lab._next_sport()
    entry = ["-p", "udp", "-s", POD_A, "-d", DNS.cluster_ip, "--sport", str(sport), "--dport", "53", "--timeout", "120"]
    dump = lab.load(NodeRuleset(services=[DNS]).render(), name="stale-udp-entry", conntrack_before=[entry])
    table = (netns.bundle_of(dump) / "conntrack.txt").read_text()
    assert f"sport={sport} dport=53" in table, table
    kernel = lab.probe(Flow("pod-a", POD_A, DNS.cluster_ip, 53, "udp"), sport=sport, retry=False)
    assert_untranslated_out(kernel)
    assert kernel.conntrack is not None and kernel.conntrack.dnat is None, kernel.describe()
    kptrace.check(dump, kernel, modes=("bundle",), extra=("--sport", str(sport)))
    # Another source port is a new connection: DNATed to the endpoint as usual.
    fresh = lab.probe(Flow("pod-a", POD_A, DNS.cluster_ip, 53, "udp"))
    assert fresh.dnat == f"{POD_B}:5353" and fresh.delivery is not None, fresh.describe()
    kptrace.check(dump, fresh, exact_endpoint=True, modes=("bundle",))


# 8. DNAT to the node's own address, known only from the routes' src ---------------------------------

def test_dnat_to_node_address_known_from_route_src(lab: Lab, kptrace, tmp_path: Path) -> None:
    """A DNAT from a VIP to the node's own address: routed local and delivered through INPUT, even
    with FORWARD policy DROP. The input has no address list (no ip addr, no node_ips): only `ip route`
    of the main table, whose `192.168.0.0/24 dev eth0 proto kernel scope link src 192.168.0.2` says
    192.168.0.2 is the node's."""
    rules = NodeRuleset(forward_policy="DROP", user_rules=[
        UserRule("nat", f"-I PREROUTING 1 -d {VIP}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination {NODE_IP}:10250")])
    dump = lab.load(rules.render(), name="dnat-to-node")
    kernel = lab.probe(Flow("world", EXTERNAL_CLIENT_IP, VIP, 80))
    assert kernel.dnat == f"{NODE_IP}:10250", kernel.describe()
    assert kernel.verdict == "ACCEPT" and kernel.delivery is not None and kernel.delivery.ns_role == "node", kernel.describe()
    assert "INPUT" in kernel.hooks and "FORWARD" not in kernel.hooks, kernel.describe()
    routes_only = tmp_path / "routes-only"
    shutil.copytree(netns.bundle_of(dump), routes_only)
    for name in ("ip-addr.txt", "ip-addr.json", "ip-route.json", "node.yaml"):
        (routes_only / name).unlink(missing_ok=True)
    main = sh(["ip", "route", "show"], ns=lab.node).stdout
    assert f"src {NODE_IP}" in main, main
    (routes_only / "ip-route.txt").write_text(main)
    answer = netns.run_kptrace(routes_only, kernel.flow, node_ips=())
    problems = netns.disagreements(kernel, answer, dump, exact_endpoint=True)
    assert not problems, netns.format_report(kernel, answer, problems)
    thinning.assert_thinned(answer.argv, answer.report, what=str(kernel.flow),
                            kernel_classes=thinning.kernel_classes(kernel.verdict))
