"""Issue 18's kernel acceptance: a fix tried with --what-if predicts what the kernel does once it is applied.

For each broken state (FORWARD policy DROP, ip_forward=0, br_netfilter off, a REJECT before kube-proxy's
rules, hairpin off, no default route) the lab node is broken, a real packet shows the kernel failing, and
the bundle of that moment is taken. kptrace answers `why` for the packet without and with `--what-if FIX`;
then the same FIX is applied in the node's namespace, the packet is sent again, and the kernel's outcome
must be the one kptrace predicted: the connection works (and kptrace exits 0), or it does not (and kptrace
exits 1).

Namespaces are `kpt-e<pid>-…` (this helper's prefix), only lab addresses; deleted by the fixture.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kernel.conftest import skip_or_fail
from tests.lab import broken, netns
from tests.lab.netns import LOCAL_PODS, NODE_IP, REMOTE_PODS, UPLINK, WORLD_UPLINK_IP, EXTERNAL_CLIENT_IP, Flow, Lab, sh
from tests.lab.rulesets import Endpoint, NodeRuleset, Service, UserRule

pytestmark = pytest.mark.kernel

POD_A, POD_B = LOCAL_PODS["pod-a"], LOCAL_PODS["pod-b"]
RPOD = REMOTE_PODS["rpod"]
CLUSTER_IP = "10.96.0.10"
TOOLS = ("iptables-nft-restore", "iptables-nft", "bridge", "sysctl")


@dataclass
class Scenario:
    rules: str
    flow: Flow
    fix: list[str]  # what the SRE types: given to kptrace as --what-if and run in the node's namespace
    state: Callable[[Lab], object] | None = None  # a context manager that breaks the node (and heals it after)
    prepare: Callable[[Lab], None] | None = None  # a break that the fix itself undoes


def web(*endpoints: Endpoint, **kw: object) -> Service:
    return Service("default", "web", CLUSTER_IP, 80, list(endpoints), **kw)  # type: ignore[arg-type]


def _hairpin_off(lab: Lab) -> None:
    for pod in LOCAL_PODS:
        lab.set_hairpin(pod, False)


SCENARIOS: dict[str, Scenario] = {
    "forward-drop": Scenario(NodeRuleset(forward_policy="DROP").render(), Flow("pod-a", POD_A, RPOD, 8080),
                             ["iptables -P FORWARD ACCEPT"]),
    "ip-forward-off": Scenario(NodeRuleset().render(), Flow("pod-a", POD_A, RPOD, 8080),
                               ["sysctl -w net.ipv4.ip_forward=1"], state=lambda lab: broken.ip_forward(lab, False)),
    "br-netfilter-off": Scenario(
        NodeRuleset(services=[Service("default", "dns", CLUSTER_IP, 53, [Endpoint(POD_B, 5353)], protocol="udp",
                                      port_name="dns")]).render(),
        Flow("pod-a", POD_A, CLUSTER_IP, 53, "udp"), ["sysctl -w net.bridge.bridge-nf-call-iptables=1"],
        state=lambda lab: broken.bridge_nf_call_iptables(lab, False)),
    "reject-before-kube": Scenario(
        NodeRuleset(services=[web(Endpoint(POD_B, 8080), node_port=30080)],
                    user_rules=[UserRule("filter", f"-I FORWARD 1 -d {netns.POD_CIDR} -j REJECT")]).render(),
        Flow("world", EXTERNAL_CLIENT_IP, NODE_IP, 30080),
        [f"iptables -D FORWARD -d {netns.POD_CIDR} -j REJECT", f"iptables -A FORWARD -d {netns.POD_CIDR} -j REJECT"]),
    "hairpin-off": Scenario(NodeRuleset(services=[web(Endpoint(POD_B, 8080))]).render(),
                            Flow("pod-b", POD_B, CLUSTER_IP, 80),
                            [f"ip link set {Lab.host_veth('pod-b')} type bridge_slave hairpin on"], prepare=_hairpin_off),
    "no-default-route": Scenario(NodeRuleset(services=[web(Endpoint(POD_B, 8080))]).render(),
                                 Flow("node", NODE_IP, CLUSTER_IP, 80),
                                 [f"ip route add default via {WORLD_UPLINK_IP} dev {UPLINK}"],
                                 state=lambda lab: broken.default_route(lab, False)),
}


@pytest.fixture(scope="module")
def whatif_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = netns.unavailable_reason()
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if reason is None and missing:
        reason = f"{missing[0]} is not installed"
    if reason is None and not Path(broken.BRIDGE_SYSCTL_DIR).is_dir():
        reason = "br_netfilter is not available (no /proc/sys/net/bridge)"
    if reason is not None:
        skip_or_fail(reason)
    lab = Lab(prefix=f"kpt-e{os.getpid()}-", seed=netns.lab_seed(), dump_dir=tmp_path_factory.mktemp("whatif"))
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def _in_netns(lab: Lab, change: str) -> None:
    """The fix as the SRE runs it on the node (here: in the lab node's namespace, nft backend)."""
    words = change.split()
    if words[0] == "iptables":
        words[0] = "iptables-nft"
    sh(words, ns=lab.node)


def _works(kernel: netns.KernelResult) -> bool:
    return kernel.client_result in ("connected", "reply")


def _why(loaded: broken.Loaded, flow: Flow, changes: list[str]) -> broken.Run:
    args = broken.why_args(flow, [loaded.bundle], flow.in_iface)
    for c in changes:
        args += ["--what-if", c]
    return broken.Pending(*args).run


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_what_if_predicts_the_kernel_after_the_fix(whatif_lab: Lab, name: str) -> None:
    lab = whatif_lab
    sc = SCENARIOS[name]
    if name == "br-netfilter-off" and not broken.bridge_sysctls_per_netns().get("bridge-nf-call-iptables"):
        skip_or_fail("net.bridge.bridge-nf-call-iptables is global on this kernel: the lab never turns it off")
    with ExitStack() as stack:
        if sc.state is not None:
            stack.enter_context(sc.state(lab))  # type: ignore[arg-type]
        if sc.prepare is not None:
            sc.prepare(lab)
            stack.callback(lab.reset_link_state)
        loaded = broken.load(lab, f"whatif-{name}", sc.rules)
        before = lab.probe(sc.flow, retry=False)
        assert not _works(before), f"the lab is not broken:\n{before.describe()}"
        plain = _why(loaded, sc.flow, [])
        predicted = _why(loaded, sc.flow, sc.fix)
        assert plain.rc == 1, f"kptrace does not see the broken state:\n{plain.brief()}"
        for change in sc.fix:
            _in_netns(lab, change)
        after = lab.probe(sc.flow)
    assert predicted.doc["without_what_if"]["disposition"] == plain.doc["disposition"]
    assert any(i.get("kind") == "what-if" and i.get("change") == sc.fix[0] for i in predicted.doc["inputs"])
    detail = f"kernel after the fix:\n{after.describe()}\nkptrace with --what-if:\n{predicted.brief()}"
    assert _works(after) == (predicted.rc == 0), detail
    assert _works(after), detail  # every fix here is the one the check's remediation gives: it must work
