"""The IPVS lab: kube-proxy's IPVS mode built in network namespaces, run inside the VM (tests/lab/vm.py).

The host kernel has no IPVS; the VM's Debian kernel does. Inside the VM this module builds the
netns lab's topology (tests/lab/netns.py: node, world, pods behind cni0, a remote pod behind the
world) and gives the node what kube-proxy v1.30 in IPVS mode gives one: kube-ipvs0 (a dummy)
holding the VIPs, IPVS virtual services, the ipsets and the iptables rules
(kptrace.testing.generator_ipvs's layout). Each *state* (a variant of that node: hairpin on,
FORWARD DROP, a check's broken state) is loaded, collected with `kptrace collect` into a bundle,
and probed; each probe is observed with TRACE, conntrack, `ipvsadm -Lnc` and the endpoint that
answers, and asked of `kptrace why` live (no --dump) in the node namespace.

    python -m tests.lab.ipvs_vm run OUT      (inside the VM, as root) writes OUT/results.json and
                                             OUT/<state>/{iptables-save.txt,bundle/}

The host side (tests/kernel_vm/) reads results.json back, asks kptrace offline on each bundle, and
compares both answers with the kernel (netns.disagreements).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import tempfile
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.lab import netns  # noqa: E402
from tests.lab.netns import (  # noqa: E402
    CLUSTER_CIDR,
    NODE_IP,
    ConntrackEntry,
    Delivery,
    Flow,
    KernelResult,
    LabError,
    TraceEvent,
    sh,
)

POD_A, POD_B, POD_C = netns.LOCAL_PODS["pod-a"], netns.LOCAL_PODS["pod-b"], netns.LOCAL_PODS["pod-c"]
RPOD = netns.REMOTE_PODS["rpod"]
KUBE_IPVS0 = "kube-ipvs0"
NODE_PORT = 30080
API_PORT = 10250  # the node agent listens there: the API server's real server on this node


@dataclass(frozen=True)
class RealServer:
    ip: str
    port: int
    weight: int = 1


@dataclass(frozen=True)
class Service:
    name: str
    proto: str
    vip: str
    port: int
    scheduler: str
    dests: tuple[RealServer, ...]
    node_port: int | None = None


SERVICES: tuple[Service, ...] = (
    Service("web", "tcp", "10.96.0.10", 80, "rr",
            (RealServer(POD_A, 8080), RealServer(POD_B, 8080), RealServer(RPOD, 8080)), node_port=NODE_PORT),
    Service("dns", "udp", "10.96.0.53", 53, "rr", (RealServer(POD_B, 5353), RealServer(POD_C, 5353))),
    Service("kubernetes", "tcp", "10.96.0.1", 443, "rr", (RealServer(NODE_IP, API_PORT),)),
    Service("empty", "tcp", "10.96.0.20", 80, "rr", ()),
    Service("drain", "tcp", "10.96.0.30", 80, "rr", (RealServer(POD_A, 8080, 0), RealServer(POD_C, 8080, 1))),
    Service("quiesced", "tcp", "10.96.0.31", 80, "rr", (RealServer(POD_A, 8080),)),
    Service("remote", "tcp", "10.96.0.70", 80, "rr", (RealServer(RPOD, 8080),)),
    Service("weighted", "tcp", "10.96.0.40", 80, "wrr", (RealServer(POD_A, 8443, 3), RealServer(POD_C, 8443, 1))),
    Service("hashed", "tcp", "10.96.0.50", 80, "sh",
            (RealServer(POD_A, 9090), RealServer(POD_B, 9090), RealServer(POD_C, 9090))),
    Service("self", "tcp", "10.96.0.60", 80, "rr", (RealServer(POD_A, 8080),)),
)
SERVICE = {s.name: s for s in SERVICES}
LOCAL_IPS = set(netns.LOCAL_PODS.values())


# ---------------------------------------------------------------------------------------------
# A node state: kube-proxy's view, then what breaks it


@dataclass
class State:
    name: str
    services: tuple[Service, ...] = SERVICES
    hairpin: bool = False
    forward_drop: bool = False
    unbound_vips: tuple[str, ...] = ()  # VIPs missing from kube-ipvs0 (KPT302)
    cluster_ip_missing: tuple[str, ...] = ()  # "VIP,proto:port" left out of KUBE-CLUSTER-IP (KPT303)
    extra_ipvs0: tuple[str, ...] = ()  # addresses wrongly on kube-ipvs0, in KUBE-IPVS-IPS (KPT305)
    no_ip_vs: bool = False  # IPVS modules unloaded (KPT301)
    links: bool = False  # vlan uplink, ipip (tunl0) and vxlan routes (the links the host kernel lacks)
    quiesced: tuple[str, ...] = ()  # services whose real servers all get weight 0 (KPT304)

    def ipvs_services(self) -> tuple[Service, ...]:
        return tuple(replace(s, dests=tuple(replace(d, weight=0) for d in s.dests)) if s.name in self.quiesced else s
                     for s in self.services)


def ipset_members(state: State) -> dict[str, set[str]]:
    from kptrace.testing.generator_ipvs import _IPSETS

    members: dict[str, set[str]] = {name: set() for name, _, _ in _IPSETS}
    for s in state.services:
        entry = f"{s.vip},{s.proto}:{s.port}"
        if entry not in state.cluster_ip_missing:
            members["KUBE-CLUSTER-IP"].add(entry)
        members["KUBE-IPVS-IPS"].add(s.vip)
        for d in s.dests:
            if d.ip in LOCAL_IPS:
                members["KUBE-LOOP-BACK"].add(f"{d.ip},{s.proto}:{d.port},{d.ip}")
        if s.node_port:
            members[f"KUBE-NODE-PORT-{s.proto.upper()}"].add(str(s.node_port))
    members["KUBE-IPVS-IPS"].update(a.split("/")[0] for a in state.extra_ipvs0)
    return members


def ruleset(state: State) -> str:
    """kube-proxy v1.30's IPVS-mode iptables rules for these sets (the generator's layout)."""
    from kptrace.testing.generator_ipvs import _IpsetState, _render_iptables

    text = _render_iptables(_IpsetState(ipset_members(state), []), CLUSTER_CIDR, True, "nft", 1733600000)
    if state.forward_drop:
        # filter FORWARD's policy (Docker's DROP), not mangle's: the filter table's own header line.
        head, sep, rest = text.partition("*filter\n")
        assert sep and ":FORWARD ACCEPT [0:0]\n" in rest, "no filter FORWARD chain in the generated rules"
        text = head + sep + rest.replace(":FORWARD ACCEPT [0:0]\n", ":FORWARD DROP [0:0]\n", 1)
    return text


def ipset_restore(state: State) -> str:
    from kptrace.testing.generator_ipvs import _IPSETS

    members = ipset_members(state)
    lines = []
    for name, kind, _ in _IPSETS:
        opts = "range 0-65535" if kind.startswith("bitmap") else "family inet hashsize 1024 maxelem 65536"
        lines.append(f"create {name} {kind} {opts}")
        lines += [f"add {name} {m}" for m in sorted(members[name])]
    return "\n".join(lines) + "\n"


def ipvs_restore(state: State) -> str:
    lines = []
    for s in state.ipvs_services():
        flag = {"tcp": "-t", "udp": "-u"}[s.proto]
        addrs = [s.vip] + ([NODE_IP] if s.node_port else [])
        for addr in addrs:
            port = s.port if addr == s.vip else s.node_port
            lines.append(f"-A {flag} {addr}:{port} -s {s.scheduler}")
            lines += [f"-a {flag} {addr}:{port} -r {d.ip}:{d.port} -m -w {d.weight}" for d in s.dests]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Probes


@dataclass(frozen=True)
class Probe:
    name: str  # what it covers (docs/ipvs.md's rows)
    state: str
    client: str
    dst: str
    dport: int
    proto: str = "tcp"
    live: bool = False  # also ask `kptrace why` live in the VM (~25 s each under TCG: a chosen few)

    def flow(self) -> Flow:
        src = {"node": NODE_IP, "world": netns.EXTERNAL_CLIENT_IP}.get(self.client) or netns.LOCAL_PODS.get(
            self.client) or netns.REMOTE_PODS[self.client]
        return Flow(self.client, src, self.dst, self.dport, self.proto)


def _probes() -> list[Probe]:
    web, dns, api, remote = SERVICE["web"], SERVICE["dns"], SERVICE["kubernetes"], SERVICE["remote"]
    hashed, quiesced = SERVICE["hashed"], SERVICE["quiesced"]
    return [
        # A healthy IPVS node (hairpin off on every bridge port, as a CNI without hairpinMode leaves it).
        Probe("pod->ClusterIP", "base", "pod-c", web.vip, web.port, live=True),
        Probe("pod->ClusterIP udp", "base", "pod-a", dns.vip, dns.port, "udp"),
        Probe("pod->ClusterIP, remote endpoint", "base", "pod-a", remote.vip, remote.port),
        Probe("pod->ClusterIP sh", "base", "pod-c", hashed.vip, hashed.port),
        Probe("node->ClusterIP", "base", "node", web.vip, web.port, live=True),
        Probe("node->ClusterIP udp", "base", "node", dns.vip, dns.port, "udp"),
        Probe("outside->NodePort", "base", "world", NODE_IP, NODE_PORT, live=True),
        Probe("pod->NodePort", "base", "pod-b", NODE_IP, NODE_PORT),
        Probe("remote pod->NodePort", "base", "rpod", NODE_IP, NODE_PORT),
        Probe("pod->local real server", "base", "pod-b", api.vip, api.port),
        Probe("node->local real server", "base", "node", api.vip, api.port, live=True),
        Probe("hairpin", "base", "pod-a", SERVICE["self"].vip, 80, live=True),
        Probe("no real server", "base", "pod-b", SERVICE["empty"].vip, 80, live=True),
        Probe("weight 0, another server", "base", "pod-b", SERVICE["drain"].vip, 80),
        Probe("quiesced service", "base", "pod-b", quiesced.vip, quiesced.port),
        Probe("wrong port", "base", "pod-b", web.vip, 81),
        Probe("pod->remote pod", "base", "pod-a", RPOD, 8080),
        Probe("outside->node port 10250", "base", "world", NODE_IP, API_PORT),
        # Hairpin mode on, and the links the host kernel lacks.
        Probe("hairpin", "hairpin", "pod-a", SERVICE["self"].vip, 80, live=True),
        Probe("pod->ClusterIP", "hairpin", "pod-c", web.vip, web.port),
        Probe("vlan uplink", "hairpin", "pod-a", "192.168.100.1", 7),
        Probe("ipip (calico)", "hairpin", "pod-a", "10.244.3.5", 8080, live=True),
        Probe("vxlan (calico)", "hairpin", "pod-a", "10.244.4.5", 8080),
        # filter FORWARD policy DROP (KPT201).
        Probe("pod->ClusterIP, remote endpoint", "forward-drop", "pod-a", remote.vip, remote.port, live=True),
        Probe("node->ClusterIP", "forward-drop", "node", web.vip, web.port),
        Probe("outside->NodePort", "forward-drop", "world", NODE_IP, NODE_PORT),
        Probe("pod->NodePort", "forward-drop", "pod-b", NODE_IP, NODE_PORT),
        Probe("pod->remote pod", "forward-drop", "pod-a", RPOD, 8080),
        # The checks' broken states, one mutation per check, each breaking its own packet.
        Probe("KPT302: VIP not on kube-ipvs0", "broken", "pod-c", web.vip, web.port, live=True),
        Probe("KPT303: no KUBE-CLUSTER-IP entry", "broken", "pod-c", hashed.vip, hashed.port),
        Probe("KPT304: every real server weight 0", "broken", "pod-b", quiesced.vip, quiesced.port),
        Probe("KPT305: node address on kube-ipvs0", "broken", "world", NODE_IP, API_PORT),
        Probe("KPT301: no ip_vs", "kpt301-broken", "pod-c", web.vip, web.port, live=True),
    ]


PROBES = _probes()
BROKEN = State("broken", unbound_vips=(SERVICE["web"].vip,),
               cluster_ip_missing=(f"{SERVICE['hashed'].vip},tcp:{SERVICE['hashed'].port}",),
               extra_ipvs0=(f"{NODE_IP}/32",), quiesced=("quiesced",))
STATES: dict[str, State] = {
    "base": State("base"),
    "hairpin": State("hairpin", hairpin=True, links=True),
    "forward-drop": State("forward-drop", forward_drop=True),
    "broken": BROKEN,
    "kpt301-broken": State("kpt301-broken", no_ip_vs=True),
}
# Many connections to one virtual service: (name, client, service, connections).
# Clients that are not real servers of the service (a pod reaching itself is the hairpin case).
SHARES: tuple[tuple[str, str, str, int], ...] = (
    ("rr", "pod-c", "web", 30),
    ("wrr", "pod-b", "weighted", 40),
    ("sh", "node", "hashed", 12),
    ("sh", "rpod", "hashed", 12),
)


# ---------------------------------------------------------------------------------------------
# kptrace inside the node namespace, without paying Python's start-up each time

CLONE_NEWNET = 0x40000000


def kptrace_in(ns: str, args: list[str], timeout: float = 300.0) -> tuple[int, str, str]:
    """`ip netns exec NS kptrace ARGS`, forked from this process (kptrace already imported).

    Under TCG a new Python process spends ~20 s importing kptrace over 9p; a fork that enters the
    namespace (setns, as `ip netns exec` does; kptrace reads /proc/sys per namespace and /sys only
    for /sys/module) answers in a few seconds. Returns (exit code, stdout, stderr)."""
    import kptrace.cli.app  # noqa: F401 - imported once, before forking

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 3
            try:
                fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                sys.argv = ["kptrace", *args]
                from kptrace.cli.app import main as kptrace_main

                try:
                    kptrace_main()
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                os.write(2, f"kptrace_in: {exc!r}\n".encode())
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return -9, "", f"kptrace {' '.join(args)} in {ns}: no answer in {timeout}s (killed)"
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode(errors="replace"), err.read().decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# The lab inside the VM


class IpvsLab(netns.Lab):
    """netns.Lab whose node runs kube-proxy's IPVS mode."""

    reply_events: list[TraceEvent] = []  # the last TCP probe's answer (SYN-ACK), as TRACE saw it

    def build(self) -> IpvsLab:
        super().build()
        sh(["ip", "link", "add", KUBE_IPVS0, "type", "dummy"], ns=self.node)
        for key, value in (("net.ipv4.vs.conntrack", "1"), ("net.ipv4.vs.conn_reuse_mode", "0"),
                           ("net.ipv4.vs.expire_nodest_conn", "1"), ("net.ipv4.vs.expire_quiescent_template", "1"),
                           ("net.ipv4.conf.all.arp_ignore", "1"), ("net.ipv4.conf.all.arp_announce", "2")):
            sh(["sysctl", "-qw", f"{key}={value}"], ns=self.node)
        return self

    def apply(self, state: State, out: Path) -> Path:
        """Make the node `state`, collect its bundle with `kptrace collect`, arm TRACE; the state's dir."""
        assert self.monitor is not None
        n = self.node
        where = out / state.name
        where.mkdir(parents=True, exist_ok=True)
        sh(["nft", "flush", "ruleset"], ns=n)
        sh(["ipset", "destroy"], ns=n, check=False)
        sh(["ipvsadm", "-C"], ns=n, check=False)
        sh(["ip", "addr", "flush", "dev", KUBE_IPVS0], ns=n)
        self._links(state.links)
        if state.no_ip_vs:
            sh(["ipvsadm", "-C"], ns=n, check=False)
            for mod in ("xt_ipvs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs"):
                sh(["rmmod", mod], check=False)
            if Path("/sys/module/ip_vs").exists():
                raise LabError("ip_vs is still loaded: KPT301's broken state cannot be made")
        else:
            sh(["ipvsadm", "-R"], ns=n, stdin=ipvs_restore(state))
        for s in state.services:
            if s.vip not in state.unbound_vips:
                sh(["ip", "addr", "add", f"{s.vip}/32", "dev", KUBE_IPVS0], ns=n, check=False)
        for addr in state.extra_ipvs0:
            sh(["ip", "addr", "add", addr, "dev", KUBE_IPVS0], ns=n)
        sh(["ipset", "restore"], ns=n, stdin=ipset_restore(state))
        sh(["iptables-restore"], ns=n, stdin=ruleset(state))
        for pod in netns.LOCAL_PODS:
            self.set_hairpin(pod, state.hairpin)
        sh(["conntrack", "-F"], ns=n, check=False)
        self.warm_up_neighbours()
        (where / "iptables-save.txt").write_text(sh(["iptables-save"], ns=n).stdout)
        bundle = where / "bundle"
        if bundle.exists():
            subprocess.run(["rm", "-rf", str(bundle)], check=True)
        rc, _, err = kptrace_in(n, ["collect", "-o", str(bundle)])
        if rc not in (0, 4) or not bundle.is_dir():
            raise LabError(f"kptrace collect failed in {state.name}: rc={rc} {err[-2000:]}")
        self.monitor.install_trace_rules()
        # The answer too: a SYN-ACK towards a probe's port, so a lost reply shows where it died.
        probe = f"{netns.PROBE_SPORTS[0]}:{netns.PROBE_SPORTS[-1]}"
        sh(["iptables", "-t", "raw", "-I", "PREROUTING", "-p", "tcp", "-m", "tcp", "--dport", probe,
            "--tcp-flags", "SYN,ACK", "SYN,ACK", "-j", "TRACE"], ns=n)
        self.monitor.wait_ready()
        return where

    def _links(self, on: bool) -> None:
        """A VLAN uplink, calico's ipip (tunl0) and vxlan (vxlan.calico) routes, each to the world."""
        n, w = self.node, self.world
        for ns, dev in ((n, "eth0.100"), (w, "eth0.100"), (n, "vxlan.calico"), (w, "vxlan.calico")):
            sh(["ip", "link", "del", dev], ns=ns, check=False)
        for ns in (n, w):
            sh(["ip", "addr", "flush", "dev", "tunl0"], ns=ns, check=False)
            sh(["ip", "link", "set", "tunl0", "down"], ns=ns, check=False)
        sh(["ip", "route", "del", "10.244.3.0/26"], ns=n, check=False)
        if not on:
            return
        for ns, ip in ((n, "192.168.100.2"), (w, "192.168.100.1")):
            sh(["ip", "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id", "100"], ns=ns)
            sh(["ip", "addr", "add", f"{ip}/24", "dev", "eth0.100"], ns=ns)
            sh(["ip", "link", "set", "eth0.100", "up"], ns=ns)
        # calico IPIP: tunl0 carries the node's tunnel address; a remote block routed onlink to its node.
        sh(["ip", "addr", "add", "10.244.1.64/32", "dev", "tunl0"], ns=n)
        sh(["ip", "link", "set", "tunl0", "up"], ns=n)
        sh(["ip", "route", "add", "10.244.3.0/26", "via", netns.WORLD_UPLINK_IP, "dev", "tunl0", "onlink"], ns=n)
        sh(["ip", "link", "set", "tunl0", "up"], ns=w)
        # calico VXLAN: vxlan.calico, a remote block via its tunnel address, neighbour and fdb entries.
        mac = "66:bd:3c:aa:00:01"
        for ns, ip, local in ((n, "10.244.1.128", NODE_IP), (w, "10.244.4.0", netns.WORLD_UPLINK_IP)):
            sh(["ip", "link", "add", "vxlan.calico", "type", "vxlan", "id", "4096", "dstport", "4789", "local", local,
                "dev", "eth0", "nolearning"], ns=ns)
            sh(["ip", "addr", "add", f"{ip}/32", "dev", "vxlan.calico"], ns=ns)
            sh(["ip", "link", "set", "vxlan.calico", "up"], ns=ns)
        sh(["ip", "link", "set", "vxlan.calico", "address", mac], ns=w)
        sh(["ip", "neigh", "replace", "10.244.4.0", "lladdr", mac, "dev", "vxlan.calico", "nud", "permanent"], ns=n)
        sh(["bridge", "fdb", "replace", mac, "dev", "vxlan.calico", "dst", netns.WORLD_UPLINK_IP], ns=n)
        sh(["ip", "route", "add", "10.244.4.0/26", "via", "10.244.4.0", "dev", "vxlan.calico", "onlink"], ns=n)

    def probe(self, flow: Flow, *, timeout: float = 0.9, sport: int | None = None,
              retry: bool = True) -> KernelResult:
        """netns.Lab.probe, plus IPVS's own refusal: with no real server to take the connection,
        ip_vs_leave() answers ICMP port unreachable from LOCAL_IN, after netfilter's INPUT chains,
        so TRACE shows an accepted packet. The node's ICMP OutDestUnreachs counter going up while
        the packet got no further than INPUT, a virtual service exists for it and lists no
        connection for it, is that refusal."""
        assert self.monitor is not None
        first_line = self.monitor.line_count()
        before = self.icmp_unreachables()
        # No retry: a second attempt would reuse `sport` (the one live `why` was asked about) and meet
        # the first attempt's conntrack entry. The agents listen long before the first probe.
        kernel = super().probe(flow, timeout=timeout, sport=sport, retry=False)
        sent = self.icmp_unreachables() - before
        if kernel.delivery is None and kernel.client_result == "timeout" and flow.proto == "tcp":
            kernel.delivery = self.half_open(kernel)
            if kernel.delivery is not None:
                kernel.verdict = netns.verdict_of(kernel.events, delivered=True, client_result=kernel.client_result)
        self.reply_events = []
        ct = kernel.conntrack
        if ct is not None and flow.proto == "tcp":
            events = netns.parse_trace_lines(self.monitor.lines(first_line))
            self.reply_events = [e for e in events if e.packet.get("SRC") == ct.reply_src
                                 and e.packet.get("SPORT") == str(ct.reply_sport)
                                 and e.packet.get("DPORT") == str(ct.reply_dport)]
        if (kernel.verdict == "ACCEPT" and kernel.delivery is None and sent > 0 and kernel.hooks[-1:] == ["INPUT"]
                and self.has_virtual_service(flow)
                and self.ipvs_connection(flow.proto, flow.src, kernel.sport) is None):
            kernel.verdict = "REJECT"
        return kernel

    def half_open(self, kernel: KernelResult) -> Delivery | None:
        """A SYN that reached its listener whose SYN-ACK never made it back (a hairpin without hairpin
        mode): the listener never accepts, so the agent reports nothing, but the listener's
        namespace holds the connection in SYN-RECV, from the (masqueraded) source it saw."""
        ct = kernel.conntrack
        if ct is None:
            return None  # without the connection's entry a SYN-RECV socket cannot be tied to this probe
        # The listener sees the connection as the reply tuple turned around: from the (masqueraded)
        # source to the (DNATed) destination. Anything else is another probe's half-open socket.
        server, peer = f"{ct.reply_src}:{ct.reply_sport}", f"{ct.reply_dst}:{ct.reply_dport}"
        for role in (*netns.LOCAL_PODS, *netns.REMOTE_PODS, "node"):
            out = sh(["ss", "-Htn", "state", "syn-recv"], ns=self.ns_of(role), check=False).stdout
            for line in out.splitlines():
                f = line.split()
                if len(f) >= 4 and f[-2] == server and f[-1] == peer:
                    return Delivery(role, ct.reply_dst, ct.reply_dport, ct.reply_src, ct.reply_sport)
        return None

    def icmp_unreachables(self) -> int:
        text = sh(["cat", "/proc/net/snmp"], ns=self.node).stdout.splitlines()
        heads = [line.split() for line in text if line.startswith("Icmp:")]
        if len(heads) < 2:
            raise LabError("no Icmp lines in /proc/net/snmp")
        return int(dict(zip(heads[0][1:], heads[1][1:]))["OutDestUnreachs"])

    def has_virtual_service(self, flow: Flow) -> bool:
        flag = {"tcp": "-t", "udp": "-u"}.get(flow.proto)
        if flag is None:
            return False
        return sh(["ipvsadm", "-Ln", flag, f"{flow.dst}:{flow.dport}"], ns=self.node, check=False).returncode == 0

    def ipvs_connection(self, proto: str, src: str, sport: int) -> str | None:
        """The real server `ipvsadm -Lnc` lists for the connection from src:sport."""
        out = sh(["ipvsadm", "-Lnc"], ns=self.node, check=False).stdout
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 6 and f[0].lower() == proto and f[3] == f"{src}:{sport}":
                return f[5]
        return None

    def live_why(self, flow: Flow, sport: int) -> dict[str, Any]:
        """`kptrace why` read live in the node namespace, asked before the probe is sent (so no
        conntrack entry of its own exists yet); --sport because the lab's TRACE rules test it."""
        argv = ["why", f"{flow.dst}:{flow.dport}", "--from", flow.src, "--sport", str(sport),
                "--proto", flow.proto, "-o", "json"]
        if flow.in_iface:
            argv += ["--in-iface", flow.in_iface]
        rc, stdout, stderr = kptrace_in(self.node, argv)
        try:
            report = json.loads(stdout) if stdout.strip() else {}
        except json.JSONDecodeError:
            report = {}
        return {"argv": ["kptrace", *argv], "exit_code": rc, "report": report, "stderr": stderr[-3000:]}


def disagreements(kernel: KernelResult, answer: netns.KptraceAnswer, dump: Path) -> list[str]:
    """netns.disagreements, with kptrace's exit code read as IPVS makes it mean.

    kptrace exits 1 when some way the connection can go fails. The kernel took one way: when that
    way's reply was lost as kptrace says (a hairpin without hairpin mode), or when another branch,
    to a real server the kernel did not pick this time, is the one that fails (rr sending a pod to
    itself), exit 1 is kptrace being right, not a disagreement. Everything else stands."""
    problems = netns.disagreements(kernel, answer, dump, exact_endpoint=False)
    if kernel.verdict != "ACCEPT" or answer.exit_code != 1:
        return problems
    kdnat = kernel.dnat
    failing = [b for b in answer.branches if netns.disposition_class(str(b.get("disposition"))) != "pass"
               or netns.disposition_class(str((b.get("reply") or {}).get("disposition", "FORWARDED"))) != "pass"]
    explained = (kernel.reply_ok is False and any(b.get("dnat") == kdnat for b in failing)) or \
        any(b.get("dnat") != kdnat for b in failing)
    return [p for p in problems if not (explained and p.startswith("exit code:"))]


def kernel_to_json(k: KernelResult) -> dict[str, Any]:
    doc = asdict(k)
    if k.conntrack is not None:
        doc["conntrack"]["flags"] = sorted(k.conntrack.flags)
    return doc


def kernel_from_json(doc: dict[str, Any]) -> KernelResult:
    ct = doc.get("conntrack")
    return KernelResult(
        flow=Flow(**doc["flow"]), sport=doc["sport"], verdict=doc["verdict"],
        events=[TraceEvent(**e) for e in doc["events"]],
        conntrack=ConntrackEntry(**{**ct, "flags": frozenset(ct["flags"])}) if ct else None,
        delivery=Delivery(**doc["delivery"]) if doc.get("delivery") else None,
        client_result=doc["client_result"], trace_dnat=doc.get("trace_dnat"), attempts=doc.get("attempts", 1))


def _shares(lab: IpvsLab, client: str, svc: Service, count: int) -> dict[str, Any]:
    """`count` connections from one client to one virtual service; who answered each."""
    src = Probe("share", "base", client, svc.vip, svc.port).flow().src
    answered: list[str | None] = []
    listed: list[str | None] = []
    for _ in range(count):
        sport = lab._next_sport()
        before = {role: a.recv_count() for role, a in lab.agents.items()}
        res = lab.agents[client].send(svc.proto, src, sport, svc.vip, svc.port, timeout=2.0)
        got = None
        deadline = time.monotonic() + 2.0
        while got is None and time.monotonic() < deadline:
            for role, agent in lab.agents.items():
                for ev in agent.received_since(before[role]):
                    if ev.get("sport") == sport:
                        got = f"{ev['dst']}:{ev['dport']}"
            time.sleep(0.01)
        chosen = lab.ipvs_connection(svc.proto, src, sport)
        if got is None and chosen is not None:
            # Masqueraded (a node's own connection): the listener saw another source port; the one
            # new connection at the server IPVS chose is this one (the lab sends one at a time).
            for role, agent in lab.agents.items():
                if any(f"{ev['dst']}:{ev['dport']}" == chosen for ev in agent.received_since(before[role])):
                    got = chosen
        answered.append(got if res.get("result") == "connected" else None)
        listed.append(chosen)
    return {"client": client, "service": svc.name, "answered": answered, "ipvsadm": listed}


def _progress(text: str) -> None:
    print(f"ipvs_vm: {text}", file=sys.stderr, flush=True)


def run(out: Path, *, live: bool = True, shares: bool = True) -> dict[str, Any]:
    """Every state and probe; results.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    netns.cleanup_stale_namespaces()
    lab = IpvsLab(prefix=netns.lab_prefix(), seed=netns.lab_seed(), dump_dir=out)
    netns.built(lab)
    results: dict[str, Any] = {"uname": sh(["uname", "-r"]).stdout.strip(), "states": {}, "probes": [],
                               "shares": [], "timings": {}}
    t0 = time.monotonic()
    try:
        order = list(dict.fromkeys(p.state for p in PROBES))
        for state_name in order:
            state = STATES[state_name]
            ts = time.monotonic()
            try:
                where = lab.apply(state, out)
            except LabError as exc:  # this state could not be made: said in the results, the others still run
                _progress(f"{state_name}: cannot be made: {exc}")
                results["states"][state_name] = {"error": str(exc)}
                continue
            results["states"][state_name] = {"dir": where.name, "ipvsadm": sh(["ipvsadm", "-Ln"], ns=lab.node,
                                                                              check=False).stdout}
            _progress(f"{state_name}: loaded in {time.monotonic() - ts:.0f}s")
            for probe in (p for p in PROBES if p.state == state_name):
                _progress(f"{state_name}: {probe.name}")
                flow = probe.flow()
                sport = lab._next_sport()
                tl = time.monotonic()
                answer = lab.live_why(flow, sport) if live and probe.live else None
                tp = time.monotonic()
                kernel = lab.probe(flow, sport=sport)
                record: dict[str, Any] = {"probe": asdict(probe), "kernel": kernel_to_json(kernel),
                                          "ipvs_conn": lab.ipvs_connection(flow.proto, flow.src, kernel.sport)}
                if answer is not None:
                    record["live"] = answer
                record["reply_events"] = [asdict(e) for e in lab.reply_events]
                record["seconds"] = {"kernel": round(time.monotonic() - tp, 1), "live": round(tp - tl, 1)}
                _progress(f"  {record['seconds']}")
                results["probes"].append(record)
                (out / "partial.json").write_text(json.dumps(results) + "\n")  # what a timeout leaves behind
            if state_name == "base" and shares:
                for kind, client, svc_name, count in SHARES:
                    share = _shares(lab, client, SERVICE[svc_name], count)
                    share["kind"] = kind
                    results["shares"].append(share)
            results["timings"][state_name] = round(time.monotonic() - ts, 1)
    finally:
        lab.close()
    results["timings"]["total"] = round(time.monotonic() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def only(states: list[str]) -> Callable[[Probe], bool]:
    return lambda p: p.state in states


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "run":
        print("usage: python -m tests.lab.ipvs_vm run OUT [--no-live] [--only STATE,...]", file=sys.stderr)
        return 2
    global PROBES
    if "--only" in argv:
        keep = argv[argv.index("--only") + 1].split(",")
        PROBES = [p for p in PROBES if p.state in keep]
    run(Path(argv[1]), live="--no-live" not in argv, shares="--no-shares" not in argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

