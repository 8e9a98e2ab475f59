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
import shlex
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    words = shlex.split(change)  # as a shell would: iptables-save quotes comments
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


# --- minimal fix search: `why --suggest-fix`, its answer applied in the namespace ---------------------------

@dataclass
class TwoFaults:
    rules: str
    flow: Flow
    state: Callable[[Lab], object]  # the second fault, as a context manager (healed after)
    needs_bridge_sysctl: bool = False


DNS = Service("default", "dns", CLUSTER_IP, 53, [Endpoint(POD_B, 5353)], protocol="udp", port_name="dns")
TWO_FAULTS: dict[str, TwoFaults] = {
    # ip_forward=0 and FORWARD policy DROP: the packet to a pod on another node needs both fixed.
    "forward-drop+ip-forward-off": TwoFaults(NodeRuleset(forward_policy="DROP").render(),
                                             Flow("pod-a", POD_A, RPOD, 8080),
                                             lambda lab: broken.ip_forward(lab, False)),
    # bridge-nf-call-iptables=0 and FORWARD DROP: pod-a → ClusterIP → pod-b on the same bridge, DNAT in the
    # routed direction (FORWARD), the reply bridged past iptables unless the sysctl is on.
    "forward-drop+bridge-nf-off": TwoFaults(NodeRuleset(forward_policy="DROP", services=[DNS]).render(),
                                            Flow("pod-a", POD_A, CLUSTER_IP, 53, "udp"),
                                            lambda lab: broken.bridge_nf_call_iptables(lab, False),
                                            needs_bridge_sysctl=True),
    # ip_forward=0 and a REJECT before kube-proxy's jumps: the fix moves the REJECT (`delete FILE:LINE`, then
    # `iptables -A`), run on the node as `iptables -D` of the rule the citation names.
    "reject-before-kube+ip-forward-off": TwoFaults(
        NodeRuleset(services=[web(Endpoint(POD_B, 8080), node_port=30080)],
                    user_rules=[UserRule("filter", f"-I FORWARD 1 -d {netns.POD_CIDR} -j REJECT")]).render(),
        Flow("world", EXTERNAL_CLIENT_IP, NODE_IP, 30080), lambda lab: broken.ip_forward(lab, False)),
}


def _as_typed(change: str, bundle: Path) -> str:
    """`delete FILE:LINE` as the node takes it: `iptables -t TABLE -D` of the rule the bundle has at that line."""
    if not change.startswith("delete "):
        return change
    cited, _, line = change.split()[1].rpartition(":")
    lines = (bundle / cited.rpartition("/")[2]).read_text().splitlines()
    rule = lines[int(line) - 1]
    table = next(ln[1:] for ln in reversed(lines[:int(line)]) if ln.startswith("*"))
    assert rule.startswith("-A "), rule
    return f"iptables -t {table} -D {rule[3:]}"


def _broken_probe(lab: Lab, sc: TwoFaults, name: str, changes: list[str]) -> netns.KernelResult:
    """Break the node both ways, apply `changes` in its namespace, and send the packet."""
    with ExitStack() as stack:
        stack.enter_context(sc.state(lab))  # type: ignore[arg-type]
        broken.load(lab, name, sc.rules)
        for change in changes:
            _in_netns(lab, change)
        return lab.probe(sc.flow, retry=bool(changes))


@pytest.mark.parametrize("name", list(TWO_FAULTS))
def test_suggested_fix_is_minimal_and_works_in_the_kernel(whatif_lab: Lab, name: str) -> None:
    """kptrace searches the smallest fix on the model; the kernel must agree that it works and that neither of
    its two parts alone does."""
    lab = whatif_lab
    sc = TWO_FAULTS[name]
    if sc.needs_bridge_sysctl and not broken.bridge_sysctls_per_netns().get("bridge-nf-call-iptables"):
        skip_or_fail("net.bridge.bridge-nf-call-iptables is global on this kernel: the lab never turns it off")
    with ExitStack() as stack:
        stack.enter_context(sc.state(lab))  # type: ignore[arg-type]
        loaded = broken.load(lab, f"suggest-{name}", sc.rules)
        before = lab.probe(sc.flow, retry=False)
        args = broken.why_args(sc.flow, [loaded.bundle], sc.flow.in_iface) + ["--suggest-fix"]
        run = broken.Pending(*args).run
    assert not _works(before), f"the lab is not broken:\n{before.describe()}"
    search = run.doc["suggest_fix"]
    assert run.rc == 1 and search["status"] == "found" and search["size"] == 2, run.brief()
    fix = search["fixes"][0]
    members = [[_as_typed(c, loaded.bundle) for c in search["candidates"][i]["changes"]] for i in fix["candidates"]]
    for k, part in enumerate(members):
        alone = _broken_probe(lab, sc, f"suggest-{name}-part{k}", part)
        assert not _works(alone), (f"the kernel works with only {part} of {fix['changes']}: the fix kptrace found "
                                   f"is not minimal\n{alone.describe()}")
    after = _broken_probe(lab, sc, f"suggest-{name}-all", [c for part in members for c in part])
    assert _works(after), f"kptrace's fix {members} does not work in the kernel:\n{after.describe()}"


# --- nft: `nft add rule` / `nft delete rule` as --what-if, then the same command in the namespace -------------

NFT_TOOLS = ("nft", "conntrack", "iptables-nft-restore", "iptables-legacy-restore", "stdbuf", "timeout")
# The node's own firewall table (policy drop, the replies let through), as an SRE would have one.
NFT_FW = """table inet fw {
	chain forward {
		type filter hook forward priority filter; policy drop;
		ct state established,related accept
		ip saddr 203.0.113.130 drop
	}
}
"""
NFT_FW_DROP = """table inet fw {
	chain forward {
		type filter hook forward priority filter; policy accept;
		ip daddr 10.244.1.0/24 tcp dport 8080 drop
	}
}
"""


@pytest.fixture(scope="module")
def nft_whatif_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.kernel import test_kernel_nft as kn

    reason = netns.unavailable_reason()
    missing = [t for t in NFT_TOOLS if shutil.which(t) is None]
    if reason is None and missing:
        reason = f"{missing[0]} is not installed"
    if reason is not None:
        skip_or_fail(reason)
    lab = kn.NftLab(tmp_path_factory.mktemp("nft-whatif"))
    lab.prefix = f"kpt-e2n{os.getpid()}-"  # this helper's namespaces
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


def _nft_why(bundle: Path, flow: Any, changes: list[str]) -> tuple[int, dict[str, Any]]:
    import json
    import subprocess

    from tests.kernel import test_kernel_nft as kn

    argv = kn.why_argv(bundle, flow)
    for c in changes:
        argv += ["--what-if", c]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=kn.REPO_ROOT, check=False)
    assert proc.returncode in (0, 1, 4) and proc.stdout.strip(), f"{' '.join(argv)}\n{proc.stderr[-2000:]}"
    return proc.returncode, json.loads(proc.stdout)


def _handle(listing: str, rule: str) -> int:
    """The handle `nft -a list ruleset` gives the rule whose text is `rule`."""
    import re

    for line in listing.splitlines():
        m = re.fullmatch(r"\s*(.*?) # handle (\d+)", line)
        if m and m.group(1) == rule:
            return int(m.group(2))
    raise AssertionError(f"no handle for `{rule}` in:\n{listing}")


NFT_CASES = {
    # nft add rule: an accept appended to a policy-drop chain opens the port.
    "add-accept": (NFT_FW, "pod-a", ["nft add rule inet fw forward ip daddr 10.244.1.0/24 tcp dport 8080 accept"]),
    # nft add rule after a drop that matches first: the kernel still drops, and kptrace must say so.
    "add-after-drop": (NFT_FW, "blocked",
                       ["nft add rule inet fw forward ip daddr 10.244.1.0/24 tcp dport 8080 accept"]),
    # nft delete rule … handle H: the drop goes, the policy accepts.
    "delete-drop": (NFT_FW_DROP, "pod-a", ["nft delete rule inet fw forward handle {drop}"]),
    # nft insert rule: an accept before the drop.
    "insert-accept": (NFT_FW_DROP, "pod-a", ["nft insert rule inet fw forward ip saddr 203.0.113.2 accept"]),
}


@pytest.mark.parametrize("name", list(NFT_CASES))
def test_nft_what_if_predicts_the_kernel(nft_whatif_lab: Any, name: str) -> None:
    from tests.kernel import test_kernel_nft as kn

    lab = nft_whatif_lab
    ruleset, client, changes = NFT_CASES[name]
    flow = kn.world(kn.PODS["pod-a"], 8080, src=kn.BLOCKED if client == "blocked" else kn.CLIENT)
    loaded = lab.load(f"whatif-{name}", nft=ruleset)
    bundle = loaded.bundles["text"]
    # `nft -a list ruleset`, as a bundle collected with handles holds it: `delete rule … handle H` needs them.
    (bundle / "nft-ruleset.txt").write_text(loaded.handles)  # listed before the lab's trace table goes in
    drop = "ip daddr 10.244.1.0/24 tcp dport 8080 drop"
    changes = [c.format(drop=_handle(loaded.handles, drop)) if "{drop}" in c else c for c in changes]
    before = lab.probe(flow)
    assert before.verdict in ("DROP", "REJECT", "VANISHED"), f"the lab is not broken:\n{before.describe()}"
    plain_rc, plain = _nft_why(bundle, flow, [])
    rc, doc = _nft_why(bundle, flow, changes)
    assert plain_rc == 1, plain
    assert any(i.get("kind") == "what-if" and i.get("change") == changes[0] for i in doc["inputs"])
    for c in changes:
        kn.sh(c.split(), ns=lab.ns("node"))
    lab.current = None  # the kernel's ruleset is no longer the one loaded
    after = lab.probe(flow)
    detail = f"{changes}\nkernel after:\n{after.describe()}\nkptrace with --what-if: rc={rc} {doc['disposition']}"
    assert (after.verdict == "ACCEPT") == (rc == 0), detail
    assert (after.verdict == "ACCEPT") == (name != "add-after-drop"), detail
