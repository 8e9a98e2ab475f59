"""Issue 4's kernel acceptance: every check against a real broken state in the netns lab.

For each check ID the lab node is put into the broken state the check describes, a real packet is
sent, and the kernel shows it failing: a TRACE verdict, conntrack, counters (`/proc/net/snmp`,
`/proc/net/netstat`, link statistics, the legacy backend's policy counters), neighbour states and
what the target's listener received. The bundle of that moment (docs/bundle.md) then goes to
`kptrace check` (the check must FAIL) and to `kptrace why` for the same packet (its `findings`
must name the check, and it must not let the packet through). Then the same lab is fixed: the
packet is delivered and the check PASSes.

Every kptrace test first asserts what the kernel did, so a broken lab fails as a lab problem,
never as a kptrace one. Where kptrace misses what the kernel shows, the test carries
`xfail(strict=True)` with the kernel's evidence (docs/lab.md, "Checks against real broken states").

Namespaces are `kpt-chk-<pid>-…` (tests/lab/broken.py); only lab addresses, nothing leaves them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import skip_or_fail
from tests.lab import broken, netns
from tests.lab.broken import Observation
from tests.lab.netns import (
    EXTERNAL_CLIENT_IP,
    LOCAL_PODS,
    NODE_IP,
    REMOTE_PODS,
    Flow,
    Lab,
)
from tests.lab.rulesets import Endpoint, NodeRuleset, Service, UserRule

pytestmark = pytest.mark.kernel

POD_A, POD_B = LOCAL_PODS["pod-a"], LOCAL_PODS["pod-b"]
RPOD = REMOTE_PODS["rpod"]
CLUSTER_IP = "10.96.0.10"
TOOLS = ("iptables-nft-restore", "iptables-legacy-restore", "iptables-nft-save", "iptables-legacy-save",
         "iptables-legacy", "bridge", "sysctl")


def web(*endpoints: Endpoint, **kw: Any) -> Service:
    return Service("default", "web", CLUSTER_IP, 80, list(endpoints), **kw)


def _require(oracle: Any) -> None:
    reason = netns.unavailable_reason()
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if reason is None and missing:
        reason = f"{missing[0]} is not installed"
    if reason is None and not Path(broken.BRIDGE_SYSCTL_DIR).is_dir():
        reason = "br_netfilter is not available (no /proc/sys/net/bridge)"
    if reason is not None:
        skip_or_fail(reason)
    oracle.require()  # `python -m kptrace` runs (conftest)
    broken.cleanup_stale_namespaces()


# ---------------------------------------------------------------------------------------------
# The scenarios on the lab node (tests/lab/netns.py topology). Each returns an Observation and
# leaves the node healthy again.


def _observe(lab: Lab, name: str, rules: str, flow: Flow, in_iface: str | None, *,
             state: AbstractContextManager[Any] | None = None, node_ips: tuple[str, ...] = (NODE_IP,)) -> Observation:
    with state or nullcontext():
        loaded = broken.load(lab, name, rules, node_ips=node_ips)
        before = broken.snmp_counters(lab.node)
        kernel = lab.probe(flow)
        after = broken.snmp_counters(lab.node)
    obs = Observation(name, flow, in_iface, [loaded.bundle], kernel=kernel, client=kernel.client_result,
                      evidence={"node snmp delta": broken.counter_delta(before, after)})
    return obs.start_kptrace()


def kpt101(lab: Lab, bad: bool) -> Observation:
    """pod-a -> ClusterIP (UDP) whose endpoint pod-b is on the same bridge. With
    bridge-nf-call-iptables=0 the request is DNATed (it is routed), the reply is bridged pod to
    pod and never meets conntrack, so it arrives from 10.244.1.3 instead of the ClusterIP."""
    if bad:
        scope = broken.bridge_sysctls_per_netns()
        if not scope.get("bridge-nf-call-iptables"):
            skip_or_fail(f"net.bridge.bridge-nf-call-iptables is global on this kernel ({scope}): turning it off "
                         f"in the lab would turn it off for the host")
    svc = Service("default", "dns", CLUSTER_IP, 53, [Endpoint(POD_B, 5353)], protocol="udp", port_name="dns")
    return _observe(lab, f"kpt101-{'broken' if bad else 'healthy'}", NodeRuleset(services=[svc]).render(),
                    Flow("pod-a", POD_A, CLUSTER_IP, 53, "udp"), "cni0",
                    state=broken.bridge_nf_call_iptables(lab, not bad))


def kpt103(lab: Lab, bad: bool) -> Observation:
    """pod-a -> a pod on another node with net.ipv4.ip_forward=0 on this node."""
    return _observe(lab, f"kpt103-{'broken' if bad else 'healthy'}", NodeRuleset().render(),
                    Flow("pod-a", POD_A, RPOD, 8080), "cni0", state=broken.ip_forward(lab, not bad))


def kpt104(variant: str) -> Callable[[Lab, bool], Observation]:
    """An off-link client -> NodePort on the node IP of a second interface (eth1) while the
    default route leaves by eth0: strict rp_filter drops it after nat PREROUTING.

    distro: conf.all=1 and conf.default=1 (eth1 inherits 1), as a distribution's sysctl.d sets
    them at boot; iface: only conf.eth1.rp_filter=1. Healthy: everything loose (2)."""
    modes = {"distro": {"rp_all": 1, "rp_default": 1}, "iface": {"rp_all": 0, "rp_iface": 1},
             "healthy": {"rp_all": 2, "rp_default": 2, "rp_iface": 2}}

    def run(lab: Lab, bad: bool) -> Observation:
        mode = variant if bad else "healthy"
        rules = NodeRuleset(services=[web(Endpoint(POD_B, 8080), node_port=30080)]).render()
        return _observe(lab, f"kpt104-{mode}", rules, Flow("world", EXTERNAL_CLIENT_IP, broken.SECOND_NODE_IP, 30080),
                        broken.SECOND_NIC, state=broken.second_nic(lab, **modes[mode]),
                        node_ips=(NODE_IP, broken.SECOND_NODE_IP))
    return run


FLANNEL_FWD = [  # what flanneld adds (--iptables-forward-rules, its default)
    UserRule("filter", '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD'),
    UserRule("filter", '-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT'),
    UserRule("filter", '-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT'),
]


def kpt201(lab: Lab, bad: bool) -> Observation:
    """pod-a -> a pod on another node; FORWARD policy DROP (Docker's). Healthy: the CNI's accepts."""
    rules = NodeRuleset(forward_policy="DROP")
    if not bad:
        rules.user_chains.append(("filter", "FLANNEL-FWD"))
        rules.user_rules += FLANNEL_FWD
    return _observe(lab, f"kpt201-{'broken' if bad else 'healthy'}", rules.render(), Flow("pod-a", POD_A, RPOD, 8080),
                    "cni0")


def kpt203(lab: Lab, bad: bool) -> Observation:
    """world -> NodePort: a user DROP of the pod subnet inserted ahead of kube-proxy's jumps
    (`iptables -I FORWARD 1`) beats KUBE-FORWARD's accept. Healthy: the same DROP appended after them."""
    line = f"-I FORWARD 1 -d {netns.POD_CIDR} -j DROP" if bad else f"-A FORWARD -d {netns.POD_CIDR} -j DROP"
    rules = NodeRuleset(services=[web(Endpoint(POD_B, 8080), node_port=30080)], user_rules=[UserRule("filter", line)])
    return _observe(lab, f"kpt203-{'broken' if bad else 'healthy'}", rules.render(),
                    Flow("world", EXTERNAL_CLIENT_IP, NODE_IP, 30080), "eth0")


def kpt204(lab: Lab, bad: bool) -> Observation:
    """pod-a -> ClusterIP of a Service with no endpoints (kube-proxy's REJECT). Healthy: one endpoint."""
    rules = NodeRuleset(services=[web(*([] if bad else [Endpoint(POD_B, 8080)]))])
    return _observe(lab, f"kpt204-{'broken' if bad else 'healthy'}", rules.render(),
                    Flow("pod-a", POD_A, CLUSTER_IP, 80), "cni0")


def kpt205(variant: str) -> Callable[[Lab, bool], Observation]:
    """world -> NodePort of an externalTrafficPolicy=Local Service.

    broken: its endpoint pod-b runs on this node, but kube-proxy (a --hostname-override that is not
    the Node's name) does not take it for local and renders "has no local endpoints" DROP.
    healthy: kube-proxy knows pod-b is local (KUBE-SVL). by-design: the only endpoint is on
    another node, dropped here as designed (INFO)."""
    def run(lab: Lab, bad: bool) -> Observation:
        mode = variant if bad else "healthy"
        ep = Endpoint(RPOD, 8080, local=False) if mode == "by-design" else Endpoint(POD_B, 8080, local=mode == "healthy")
        rules = NodeRuleset(services=[web(ep, node_port=30082, external_policy_local=True, health_check_node_port=32001)])
        return _observe(lab, f"kpt205-{mode}", rules.render(), Flow("world", EXTERNAL_CLIENT_IP, NODE_IP, 30082), "eth0")
    return run


def kpt401(lab: Lab, bad: bool) -> Observation:
    """The node itself -> ClusterIP with no default route (and none for the Service CIDR)."""
    rules = NodeRuleset(services=[web(Endpoint(POD_B, 8080))]).render()
    return _observe(lab, f"kpt401-{'broken' if bad else 'healthy'}", rules, Flow("node", NODE_IP, CLUSTER_IP, 80), None,
                    state=broken.default_route(lab, not bad))


ON_LAB_NODE: dict[str, Callable[[Lab, bool], Observation]] = {
    "KPT101": kpt101, "KPT103": kpt103, "KPT104-distro": kpt104("distro"), "KPT104-iface": kpt104("iface"),
    "KPT104": kpt104("healthy"), "KPT201": kpt201, "KPT203": kpt203, "KPT204": kpt204, "KPT205": kpt205("broken"),
    "KPT205-by-design": kpt205("by-design"), "KPT401": kpt401,
}


# ---------------------------------------------------------------------------------------------
# KPT202: its own lab, because a legacy table, once loaded, stays for the namespace's life.

# Docker (on iptables-legacy) next to kube-proxy (on iptables-nft): its FORWARD policy DROP and
# chains, exactly as `iptables-legacy-save` prints them on such a host (docker0 is absent here).
DOCKER_LEGACY = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""
LEGACY_WARNING = "# Warning: iptables-legacy tables present"


def kpt202_sequence(dump_dir: Path) -> dict[str, Observation]:
    """pod-a -> a pod on another node, kube-proxy's rules loaded with iptables-nft-restore:
    never mixed; then Docker's legacy filter table loaded with iptables-legacy-restore next to
    them; then that table flushed (policies ACCEPT, no rules), as KPT202's remediation says."""
    lab = broken.make_lab(dump_dir, netns.lab_seed() + 202)
    out: dict[str, Observation] = {}
    flow = Flow("pod-a", POD_A, RPOD, 8080)
    rules = NodeRuleset(services=[web(Endpoint(RPOD, 8080, local=False))]).render()
    try:
        tables = broken.legacy_tables(lab.node)
        loaded = broken.load(lab, "kpt202-never-mixed", rules, split=True)
        kernel = lab.probe(flow)
        assert loaded.split is not None
        out["KPT202-never-mixed"] = Observation(
            "KPT202-never-mixed", flow, "cni0", [loaded.split], kernel=kernel, client=kernel.client_result,
            evidence={"legacy tables before": tables, "legacy tables after": broken.legacy_tables(lab.node)},
        ).start_kptrace()

        loaded = broken.load(lab, "kpt202-mixed", rules, legacy_rules=DOCKER_LEGACY, split=True)
        before = broken.policy_counters(lab.node)
        kernel = lab.probe(flow)
        after = broken.policy_counters(lab.node)
        evidence = {
            "legacy tables": broken.legacy_tables(lab.node),
            "legacy FORWARD policy": after["FORWARD"][0],
            "packets the legacy FORWARD policy dropped": after["FORWARD"][1] - before["FORWARD"][1],
            "iptables-save stderr": loaded.save_stderr.strip(),
            "warning in iptables-save.txt": LEGACY_WARNING in (loaded.bundle / "iptables-save.txt").read_text(),
        }
        for name, bundle in (("KPT202", loaded.split), ("KPT202-one-file", loaded.bundle)):
            assert bundle is not None
            out[name] = Observation(name, flow, "cni0", [bundle], kernel=kernel, client=kernel.client_result,
                                    evidence=evidence).start_kptrace()

        broken.reset_legacy(lab.node)
        loaded = broken.load(lab, "kpt202-flushed", rules, split=True)
        before = broken.policy_counters(lab.node)
        kernel = lab.probe(flow)
        after = broken.policy_counters(lab.node)
        assert loaded.split is not None
        out["KPT202-flushed"] = Observation(
            "KPT202-flushed", flow, "cni0", [loaded.split], kernel=kernel, client=kernel.client_result,
            evidence={"legacy policies": after, "legacy tables": broken.legacy_tables(lab.node),
                      "iptables-save stderr": loaded.save_stderr.strip()},
        ).start_kptrace()
    finally:
        lab.close()
    return out


# ---------------------------------------------------------------------------------------------
# KPT402: two nodes joined by flannel's VXLAN (broken.Overlay).


def kpt402_sequence(dump_dir: Path) -> dict[str, Observation]:
    """pod-a (node-a) -> pod-b:8080 (node-b) over flannel.1: healthy; node-a's route for node-b's
    subnet missing; its neighbour entry missing; its fdb entry missing; node-b's flannel.1
    recreated with a new MAC that node-a never learnt; healed (flanneld's resync). Each broken
    state is healed before the next, and the bundles are collected before the probe."""
    overlay = broken.make_overlay(dump_dir)
    a, b = overlay.nodes["node-a"], overlay.nodes["node-b"]
    flow = Flow("pod-a", a.pod_ip, b.pod_ip, 8080)
    out: dict[str, Observation] = {}
    breaks: dict[str, Callable[[], Any]] = {
        "KPT402": lambda: None,
        "KPT402-route": lambda: overlay.forget_route(a, b),
        "KPT402-neigh": lambda: overlay.forget_neigh(a, b),
        "KPT402-fdb": lambda: overlay.forget_fdb(a, b),
        "KPT402-stale-mac": lambda: overlay.recreate_vtep(b, "be:ef:00:00:00:12"),
        "KPT402-healed": overlay.heal,
    }
    try:
        for name, apply in breaks.items():
            apply()
            bundles = overlay.collect(name)
            link_a, link_b = broken.link_stats(a.ns, broken.VTEP), broken.link_stats(b.ns, broken.VTEP)
            router = broken.snmp_counters(overlay.router)
            client, received = overlay.probe()
            evidence = {
                "node-a flannel.1 delta": broken.counter_delta(link_a, broken.link_stats(a.ns, broken.VTEP)),
                "node-b flannel.1 delta": broken.counter_delta(link_b, broken.link_stats(b.ns, broken.VTEP)),
                "gateway snmp delta": broken.counter_delta(router, broken.snmp_counters(overlay.router)),
                f"node-a neighbour {b.vtep_ip}": broken.neigh_state(a.ns, b.vtep_ip, broken.VTEP),
            }
            out[name] = Observation(name, flow, "cni0", bundles, client=client, received=received,
                                    evidence=evidence).start_kptrace()
            if name not in ("KPT402", "KPT402-healed"):
                overlay.heal()
                healed, got = overlay.probe()
                assert healed == "connected" and got, f"lab: the overlay did not heal after {name}: {healed} {got}"
    finally:
        overlay.close()
    return out


# ---------------------------------------------------------------------------------------------
# Fixtures: every observation is made once, on first use.


@pytest.fixture(scope="module")
def checks_lab(tmp_path_factory: pytest.TempPathFactory, kptrace: Any) -> Iterator[Lab]:
    _require(kptrace)
    lab = broken.make_lab(tmp_path_factory.mktemp("checks-lab"), netns.lab_seed())
    try:
        yield lab
    finally:
        lab.close()


# Made once per session: tests/kernel/test_kernel_monotonic.py reads the same observations.
_SEQUENCES: dict[str, dict[str, Observation]] = {}


@pytest.fixture(scope="module")
def kpt202_runs(tmp_path_factory: pytest.TempPathFactory, kptrace: Any) -> dict[str, Observation]:
    _require(kptrace)
    if "KPT202" not in _SEQUENCES:
        _SEQUENCES["KPT202"] = kpt202_sequence(tmp_path_factory.mktemp("checks-kpt202"))
    return _SEQUENCES["KPT202"]


@pytest.fixture(scope="module")
def kpt402_runs(tmp_path_factory: pytest.TempPathFactory, kptrace: Any) -> dict[str, Observation]:
    _require(kptrace)
    if "KPT402" not in _SEQUENCES:
        _SEQUENCES["KPT402"] = kpt402_sequence(tmp_path_factory.mktemp("checks-kpt402"))
    return _SEQUENCES["KPT402"]


_CACHE: dict[tuple[str, bool], Observation] = {}


@pytest.fixture
def observe(request: pytest.FixtureRequest) -> Callable[[str, bool], Observation]:
    """observe(key, broken) -> the Observation of that scenario (made on first use)."""
    def get(key: str, bad: bool) -> Observation:
        if key.startswith("KPT202"):
            return request.getfixturevalue("kpt202_runs")[key]
        if key.startswith("KPT402"):
            return request.getfixturevalue("kpt402_runs")[key]
        if (key, bad) not in _CACHE:
            _CACHE[(key, bad)] = ON_LAB_NODE[key](request.getfixturevalue("checks_lab"), bad)
        return _CACHE[(key, bad)]
    return get


# ---------------------------------------------------------------------------------------------
# What the kernel shows in each broken state (asserted before anything about kptrace)


def _stopped(obs: Observation) -> None:
    k = obs.kernel
    assert k is not None and k.delivery is None and k.client_result not in ("connected", "reply"), obs.describe()


def _snmp(obs: Observation, counter: str) -> int:
    return int(obs.evidence["node snmp delta"].get(counter, 0))


def kernel_fails_101(obs: Observation) -> None:
    k = obs.kernel
    assert k is not None and k.dnat == f"{POD_B}:5353", obs.describe()
    # The request was routed, DNATed and delivered to pod-b...
    assert k.delivery is not None and (k.delivery.ns_role, k.delivery.src) == ("pod-b", POD_A), obs.describe()
    # ...its answer never came back as one: conntrack never saw it (the reply skipped iptables on
    # the bridge, so nothing undid the DNAT) and pod-a's socket, connected to the ClusterIP, got nothing.
    assert k.conntrack is not None and "UNREPLIED" in k.conntrack.flags, obs.describe()
    assert k.client_result == "timeout", obs.describe()


def kernel_fails_103(obs: Observation) -> None:
    _stopped(obs)
    k = obs.kernel
    assert k is not None and k.verdict == "VANISHED" and k.hooks == ["PREROUTING"], obs.describe()
    assert _snmp(obs, "Ip.InAddrErrors") >= 1, obs.describe()  # ip_error(): not forwarding, dropped silently


def kernel_fails_104(obs: Observation) -> None:
    _stopped(obs)
    k = obs.kernel
    assert k is not None and k.verdict == "VANISHED" and k.hooks == ["PREROUTING"], obs.describe()
    assert k.dnat == f"{POD_B}:8080", obs.describe()  # DNAT in PREROUTING, then the routing decision drops it
    assert _snmp(obs, "TcpExt.IPReversePathFilter") >= 1, obs.describe()


def kernel_fails_201(obs: Observation) -> None:
    _stopped(obs)
    k = obs.kernel
    assert k is not None and k.verdict == "DROP", obs.describe()
    assert any(e.kind == "policy" and e.table == "filter" and e.chain == "FORWARD" and e.verdict == "DROP"
               for e in k.events), obs.describe()


def kernel_fails_202(obs: Observation) -> None:
    _stopped(obs)
    k = obs.kernel
    # The nf_tables half (kube-proxy's) let it through FORWARD; it never reached POSTROUTING:
    # the legacy FORWARD policy, invisible to TRACE, dropped it (its counter says so).
    assert k is not None and k.verdict == "VANISHED" and "FORWARD" in k.hooks and "POSTROUTING" not in k.hooks, \
        obs.describe()
    assert obs.evidence["legacy FORWARD policy"] == "DROP", obs.describe()
    assert obs.evidence["packets the legacy FORWARD policy dropped"] >= 1, obs.describe()


def kernel_fails_203(obs: Observation) -> None:
    _stopped(obs)
    k = obs.kernel
    assert k is not None and k.verdict == "DROP" and k.dnat == f"{POD_B}:8080", obs.describe()
    assert [e.text for e in k.rules if e.verdict == "DROP"] == [f"-A FORWARD -d {netns.POD_CIDR} -j DROP"], \
        obs.describe()


def kernel_fails_204(obs: Observation) -> None:
    _stopped(obs)
    k = obs.kernel
    assert k is not None and k.verdict == "REJECT" and k.client_result == "refused", obs.describe()
    assert any("has no endpoints" in e.text for e in k.rules), obs.describe()


def kernel_fails_205(obs: Observation) -> None:
    _stopped(obs)
    k = obs.kernel
    assert k is not None and k.verdict == "DROP" and k.dnat is None, obs.describe()
    assert any("has no local endpoints" in e.text and e.verdict == "DROP" for e in k.rules), obs.describe()


def kernel_fails_401(obs: Observation) -> None:
    _stopped(obs)
    k = obs.kernel
    # connect() failed with ENETUNREACH before any packet existed: nothing reached netfilter.
    assert k is not None and k.client_result == "oserror:101" and k.events == [], obs.describe()


def _overlay_lost(obs: Observation) -> None:
    assert obs.client != "connected" and obs.received == [], obs.describe()


def kernel_fails_402_route(obs: Observation) -> None:
    _overlay_lost(obs)
    # Sent unencapsulated to the default gateway, which has no route for pod subnets.
    assert obs.evidence["gateway snmp delta"].get("IpExt.InNoRoutes", 0) >= 1, obs.describe()


def kernel_fails_402_neigh(obs: Observation) -> None:
    _overlay_lost(obs)
    # The kernel tried to resolve the VTEP IP on flannel.1; with nolearning and no fdb entry for the
    # broadcast the ARP request had nowhere to go, so flannel.1 dropped it.
    assert obs.evidence["node-a neighbour 10.244.2.0"] in ("INCOMPLETE", "FAILED"), obs.describe()
    assert obs.evidence["node-a flannel.1 delta"].get("tx.dropped", 0) >= 1, obs.describe()


def kernel_fails_402_fdb(obs: Observation) -> None:
    _overlay_lost(obs)
    assert obs.evidence["node-a neighbour 10.244.2.0"] == "PERMANENT", obs.describe()
    assert obs.evidence["node-a flannel.1 delta"].get("tx.dropped", 0) >= 1, obs.describe()


def kernel_fails_402_stale(obs: Observation) -> None:
    _overlay_lost(obs)
    # Encapsulated and sent to node-b, whose flannel.1 received it for another MAC and dropped it.
    assert obs.evidence["node-a flannel.1 delta"].get("tx.packets", 0) >= 1, obs.describe()
    delta_b = obs.evidence["node-b flannel.1 delta"]
    assert delta_b.get("rx.packets", 0) >= 1, obs.describe()
    assert delta_b.get("rx.otherhost", 1) >= 1, obs.describe()  # counted where iproute2 shows it


KERNEL_FAILS: dict[str, Callable[[Observation], None]] = {
    "KPT101": kernel_fails_101, "KPT103": kernel_fails_103, "KPT104-distro": kernel_fails_104,
    "KPT104-iface": kernel_fails_104, "KPT201": kernel_fails_201, "KPT202": kernel_fails_202,
    "KPT202-one-file": kernel_fails_202, "KPT203": kernel_fails_203, "KPT204": kernel_fails_204,
    "KPT205": kernel_fails_205, "KPT401": kernel_fails_401, "KPT402-route": kernel_fails_402_route,
    "KPT402-neigh": kernel_fails_402_neigh, "KPT402-fdb": kernel_fails_402_fdb,
    "KPT402-stale-mac": kernel_fails_402_stale,
}


def check_id(key: str) -> str:
    return key[:6]


# ---------------------------------------------------------------------------------------------
# Misses: kptrace against the kernel's evidence (each XPASS fails until its marker goes).

ONE_FILE_202 = (
    "bundle as docs/bundle.md collects it (`iptables-save > iptables-save.txt`, no iptables-legacy-save.txt): the "
    "kernel drops pod-a -> 10.244.2.5 in the legacy FORWARD policy (its counter +1), but iptables v1.8.9 prints "
    "'# Warning: iptables-legacy tables present' on stderr, so iptables-save.txt has no trace of the legacy half; "
    "a bundle cannot show what the node hid: KPT202 can only WARN that iptables-legacy-save.txt is missing (its "
    "module list is not in this bundle) and `why` says FORWARDED; `kptrace collect` saves both backends")
BROKEN = ["KPT101", "KPT103", "KPT104-distro", "KPT104-iface", "KPT201", "KPT202", "KPT202-one-file", "KPT203",
          "KPT204", "KPT205", "KPT401", "KPT402-route", "KPT402-neigh", "KPT402-fdb", "KPT402-stale-mac"]


def _params(xfails: dict[str, str], keys: list[str] = BROKEN) -> list[Any]:
    return [pytest.param(k, id=k, marks=[pytest.mark.xfail(strict=True, reason=xfails[k])] if k in xfails else [])
            for k in keys]


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("key", BROKEN)
def test_kernel_shows_the_failure(observe: Callable[[str, bool], Observation], key: str) -> None:
    """The broken state really breaks the packet, in the kernel."""
    KERNEL_FAILS[key](observe(key, True))


@pytest.mark.parametrize("key", _params({"KPT202-one-file": ONE_FILE_202}))
def test_check_fails(observe: Callable[[str, bool], Observation], key: str) -> None:
    """`kptrace check` on the bundle of that moment: the check FAILs (for node-a, in two-node runs)."""
    obs = observe(key, True)
    KERNEL_FAILS[key](obs)
    node = "node-a" if key.startswith("KPT402") else None
    assert "FAIL" in obs.check.statuses(check_id(key), node), obs.describe() + "\n" + obs.check.brief(check_id(key))


@pytest.mark.parametrize("key", _params({"KPT202-one-file": ONE_FILE_202}))
def test_why_names_the_check(observe: Callable[[str, bool], Observation], key: str) -> None:
    """`kptrace why` for the failing packet lists the check's finding among those at its steps."""
    obs = observe(key, True)
    KERNEL_FAILS[key](obs)
    assert check_id(key) in obs.why.finding_ids, obs.describe() + "\n" + obs.why.brief()


# KPT402-route is left out: node-a does forward the packet (out of eth0, to its default gateway);
# the gateway drops it, outside both bundles. `why` says FORWARDED there and attaches KPT402.
@pytest.mark.parametrize("key", _params({"KPT202-one-file": ONE_FILE_202},
                                        [k for k in BROKEN if k != "KPT402-route"]))
def test_why_does_not_let_it_through(observe: Callable[[str, bool], Observation], key: str) -> None:
    """`kptrace why` does not claim the packet (or its reply) gets through: exit 1."""
    obs = observe(key, True)
    KERNEL_FAILS[key](obs)
    assert obs.why.rc == 1, obs.describe() + "\n" + obs.why.brief()


# The same lab, fixed: the packet is delivered, the check PASSes and `why` does not name it.
HEALTHY: dict[str, tuple[str, str | None]] = {  # key -> (receiving agent, source address it sees; None: any)
    "KPT101": ("pod-b", POD_A), "KPT103": ("rpod", POD_A), "KPT104": ("pod-b", None), "KPT201": ("rpod", POD_A),
    "KPT202-never-mixed": ("rpod", POD_A), "KPT202-flushed": ("rpod", POD_A), "KPT203": ("pod-b", None),
    "KPT204": ("pod-b", POD_A), "KPT205": ("pod-b", EXTERNAL_CLIENT_IP), "KPT401": ("pod-b", None),
    "KPT402": ("pod-b", "10.244.1.2"), "KPT402-healed": ("pod-b", "10.244.1.2"),
}


@pytest.mark.parametrize("key", list(HEALTHY))
def test_fixed_lab_delivers_and_the_check_passes(observe: Callable[[str, bool], Observation], key: str) -> None:
    obs = observe(key, False)
    role, src = HEALTHY[key]
    if obs.kernel is not None:
        k = obs.kernel
        assert k.client_result in ("connected", "reply") and k.delivery is not None, obs.describe()
        assert k.delivery.ns_role == role and src in (None, k.delivery.src), obs.describe()
        if key == "KPT101":
            assert k.conntrack is not None and "UNREPLIED" not in k.conntrack.flags, obs.describe()
    else:
        assert obs.client == "connected" and [r["src"] for r in obs.received] == [src], obs.describe()
    if key == "KPT202-never-mixed":
        assert obs.evidence["legacy tables after"] == [], obs.describe()
    statuses = obs.check.statuses(check_id(key))
    assert statuses and set(statuses) == {"PASS"}, obs.describe() + "\n" + obs.check.brief(check_id(key))
    assert check_id(key) not in obs.why.finding_ids, obs.describe() + "\n" + obs.why.brief()


def test_kpt205_endpoint_elsewhere_is_info(observe: Callable[[str, bool], Observation]) -> None:
    """eTP=Local whose only endpoint is on another node: the kernel drops it here too, by design,
    and KPT205 says so as INFO (not FAIL); `why` attaches only FAIL and WARN findings."""
    obs = observe("KPT205-by-design", True)
    kernel_fails_205(obs)
    assert obs.check.statuses("KPT205") == ["INFO"], obs.check.brief("KPT205")
    assert "KPT205" not in obs.why.finding_ids and obs.why.rc == 1, obs.why.brief()


def test_bridge_nf_call_iptables_is_per_netns() -> None:
    """The lab turns bridge-nf-call-iptables off in its node namespace only: that is safe only
    because br_netfilter's sysctls are per network namespace here (Linux >= 5.3). All six
    net.bridge.* keys are measured; docs/lab.md lists them for the kernel the lab was written on."""
    reason = netns.unavailable_reason() or (None if Path(broken.BRIDGE_SYSCTL_DIR).is_dir() else
                                            "br_netfilter is not available (no /proc/sys/net/bridge)")
    if reason is not None:
        skip_or_fail(reason)
    broken.cleanup_stale_namespaces()
    scope = broken.bridge_sysctls_per_netns()
    if not scope.get("bridge-nf-call-iptables"):
        skip_or_fail(f"net.bridge.bridge-nf-call-iptables is global on this kernel (per-netns: {scope}); the "
                     f"KPT101 scenario would change the host")
    assert set(scope) >= {"bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"}, scope
