"""Broken node states for the checks' kernel acceptance (issue 4), built on the netns lab.

`tests/lab/netns.py` builds a healthy node; this module breaks it the ways `kptrace check` knows
(docs/checks/KPTnnn.md), reads what the kernel did about it (counters, neighbour states, the
legacy backend's policy counters, which TRACE cannot show), collects the bundle of that moment
and runs `kptrace check` / `kptrace why` on it. It also builds what netns.py has no room for: a
second node joined by flannel's VXLAN (KPT402).

Every namespace made here is called `kpt-chk-<pid>-<random>-<role>`, holds only lab addresses,
and is deleted by the caller's finally block (`Lab.close`, `Overlay.close`); a later run deletes
those of a process that no longer exists (`cleanup_stale_namespaces`). Nothing here touches the
host's network: the sysctls changed are per network namespace on this kernel (see
`bridge_sysctls_per_netns`), and a check that finds otherwise refuses to run.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import netns
from .netns import BRIDGE, NODE_IP, UPLINK, WORLD_UPLINK_IP, Lab, LabError, sh

PREFIX = "kpt-chk-"
REPO_ROOT = netns.REPO_ROOT
KPTRACE_TIMEOUT_S = 120


def new_prefix() -> str:
    return f"{PREFIX}{os.getpid()}-{random.Random().randrange(16**4):04x}-"


def cleanup_stale_namespaces() -> None:
    """Remove kpt-chk-<pid>-* namespaces left by test processes that no longer exist."""
    listing = sh(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{re.escape(PREFIX)}(\d+)-", name)
        if m and not netns._pid_alive(int(m.group(1))):
            sh(["ip", "netns", "del", name], check=False)


def make_lab(dump_dir: Path, seed: int) -> Lab:
    """The netns lab of tests/lab/netns.py under this module's namespace prefix."""
    lab = Lab(prefix=new_prefix(), seed=seed, dump_dir=dump_dir)
    try:
        lab.build()
    except BaseException:
        lab.close()
        raise
    return lab


# ---------------------------------------------------------------------------------------------
# Per-netns or global? (br_netfilter's sysctls became per-netns in Linux 5.3)

BRIDGE_SYSCTL_DIR = "/proc/sys/net/bridge"


def bridge_sysctls_per_netns() -> dict[str, bool]:
    """For each net.bridge.* sysctl: does writing it inside a namespace leave the host's value alone?

    Tried in a scratch namespace: flip the value there, read the host's. A key that turns out to
    be global has its host value written back at once (finally), so the host is changed for the
    span of two reads at most.
    """
    scratch = f"{new_prefix()}sysctl"
    out: dict[str, bool] = {}
    sh(["ip", "netns", "add", scratch])
    try:
        for path in sorted(Path(BRIDGE_SYSCTL_DIR).iterdir()):
            host = path.read_text().strip()
            inside = sh(["cat", str(path)], ns=scratch).stdout.strip()
            flipped = "0" if inside == "1" else "1"
            try:
                sh(["sh", "-c", f"echo {flipped} > {path}"], ns=scratch)
                out[path.name] = path.read_text().strip() == host
            finally:
                if path.read_text().strip() != host:
                    path.write_text(host + "\n")
    finally:
        sh(["ip", "netns", "del", scratch], check=False)
    return out


# ---------------------------------------------------------------------------------------------
# What the kernel counted


def snmp_counters(ns: str) -> dict[str, int]:
    """/proc/net/snmp and /proc/net/netstat of a namespace: {"Ip.InAddrErrors": n, "TcpExt.IPReversePathFilter": n}."""
    out: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = sh(["cat", path], ns=ns).stdout.splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            group, _, names = head.partition(":")
            for name, value in zip(names.split(), values.partition(":")[2].split(), strict=False):
                if value.lstrip("-").isdigit():
                    out[f"{group}.{name}"] = int(value)
    return out


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def link_stats(ns: str, dev: str) -> dict[str, int]:
    """`ip -s -s -j link show dev X`: rx/tx packets, dropped, errors (flattened: tx.dropped …)."""
    doc = json.loads(sh(["ip", "-s", "-s", "-j", "link", "show", "dev", dev], ns=ns).stdout)[0]
    stats = doc.get("stats64") or doc.get("stats") or {}
    return {f"{side}.{k}": int(v) for side in ("rx", "tx") for k, v in (stats.get(side) or {}).items()
            if isinstance(v, int)}


def neigh_state(ns: str, ip: str, dev: str) -> str | None:
    """The NUD state of a neighbour entry (PERMANENT, REACHABLE, INCOMPLETE, FAILED …), None without one."""
    doc = json.loads(sh(["ip", "-j", "neigh", "show", ip, "dev", dev], ns=ns).stdout or "[]")
    return ",".join(doc[0].get("state", [])) if doc else None


_POLICY_RE = re.compile(r"^Chain (\S+) \(policy (\S+) (\d+) packets")


def policy_counters(ns: str, tool: str = "iptables-legacy", table: str = "filter") -> dict[str, tuple[str, int]]:
    """Each built-in chain's policy and how many packets it decided: `iptables -L -v -x -n`."""
    text = sh([tool, "-t", table, "-L", "-v", "-x", "-n"], ns=ns).stdout
    return {m.group(1): (m.group(2), int(m.group(3))) for line in text.splitlines()
            if (m := _POLICY_RE.match(line))}


# ---------------------------------------------------------------------------------------------
# Loading rules with either backend, and the bundle of that moment

@dataclass
class Loaded:
    dump: Path  # `iptables-save` of the moment, before TRACE (what kube-proxy's backend shows)
    bundle: Path  # the bundle of docs/bundle.md: iptables-save.txt and the rest
    split: Path | None = None  # the same, with iptables-nft-save.txt + iptables-legacy-save.txt instead
    save_stderr: str = ""  # what `iptables-save` wrote to stderr (not into iptables-save.txt)


def load(lab: Lab, name: str, nft_rules: str, *, legacy_rules: str | None = None, split: bool = False,
         node_ips: Iterable[str] = (NODE_IP,)) -> Loaded:
    """Lab.load, with the backends named: kube-proxy's rules through `iptables-nft-restore`, an
    optional second half through `iptables-legacy-restore`, then the bundle, then TRACE.

    split: also write the bundle with the two reserved names docs/bundle.md gives the backends
    (iptables-nft-save.txt and iptables-legacy-save.txt, from those tools) in place of
    iptables-save.txt. Running iptables-legacy-save creates no legacy table (it lists the loaded
    ones), so a node that never used the legacy backend stays that way.
    The dump is taken before the TRACE rules go in, as Lab.load does.
    """
    assert lab.monitor is not None and lab.dump_dir is not None
    sh(["nft", "flush", "ruleset"], ns=lab.node)
    sh(["iptables-nft-restore"], ns=lab.node, stdin=nft_rules)
    if legacy_rules is not None:
        sh(["iptables-legacy-restore"], ns=lab.node, stdin=legacy_rules)
    sh(["conntrack", "-F"], ns=lab.node, check=False)
    dump = lab.dump_dir / f"{name}.iptables-save"
    saved = sh(["iptables-save"], ns=lab.node)
    dump.write_text(saved.stdout)
    bundle = lab.collect_bundle(dump)
    write_node_yaml(bundle, "lab-node", node_ips, netns.POD_CIDR, cni="bridge")
    other = None
    if split:
        other = bundle.with_name(bundle.name.replace(".bundle", ".split.bundle"))
        shutil.copytree(bundle, other, dirs_exist_ok=True)
        (other / "iptables-save.txt").unlink()
        (other / "iptables-nft-save.txt").write_text(sh(["iptables-nft-save"], ns=lab.node).stdout)
        (other / "iptables-legacy-save.txt").write_text(sh(["iptables-legacy-save"], ns=lab.node).stdout)
    lab.monitor.install_trace_rules()
    lab.monitor.wait_ready()
    return Loaded(dump, bundle, other, saved.stderr)


def legacy_tables(ns: str) -> list[str]:
    """Tables the legacy backend has loaded in a namespace (/proc/net/ip_tables_names)."""
    return sh(["cat", "/proc/net/ip_tables_names"], ns=ns, check=False).stdout.split()


def write_node_yaml(bundle: Path, name: str, node_ips: Iterable[str], pod_cidr: str, *, cni: str,
                    extra: str = "") -> None:
    (bundle / "node.yaml").write_text(
        f"name: {name}\nhostname: {name}\nnode_ips: [{', '.join(node_ips)}]\npod_cidr: {pod_cidr}\n"
        f"cluster_cidr: {netns.CLUSTER_CIDR}\nservice_cidr: {netns.SERVICE_CIDR}\n"
        f"proxy_mode: iptables\ncni: {cni}\n{extra}")


def reset_legacy(ns: str) -> None:
    """Empty the legacy filter table and set its policies back to ACCEPT (the table itself stays
    registered until the namespace goes: iptables-nft then keeps warning about it)."""
    sh(["iptables-legacy-restore"], ns=ns,
        stdin="*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")


# ---------------------------------------------------------------------------------------------
# Broken states of the lab's node (each restores the healthy state on the way out)

def sysctl(ns: str, key: str, value: str | int) -> None:
    sh(["sysctl", "-qw", f"{key}={value}"], ns=ns)


def read_sysctl(ns: str, key: str) -> str:
    return sh(["cat", "/proc/sys/" + key.replace(".", "/")], ns=ns).stdout.strip()


@contextmanager
def bridge_nf_call_iptables(lab: Lab, on: bool) -> Iterator[None]:
    """KPT101: net.bridge.bridge-nf-call-iptables in the node namespace (per-netns since Linux 5.3;
    refused when this kernel makes it global: the lab never changes the host)."""
    if not on:
        scope = bridge_sysctls_per_netns()
        if not scope.get("bridge-nf-call-iptables", False):
            raise LabError("net.bridge.bridge-nf-call-iptables is global on this kernel: turning it off in "
                           "the lab would turn it off for the host")
    lab.set_bridge_nf_call_iptables(on)
    try:
        yield
    finally:
        lab.set_bridge_nf_call_iptables(True)


@contextmanager
def ip_forward(lab: Lab, on: bool) -> Iterator[None]:
    """KPT103: net.ipv4.ip_forward (writing it sets every conf.*.forwarding too)."""
    sysctl(lab.node, "net.ipv4.ip_forward", int(on))
    try:
        yield
    finally:
        sysctl(lab.node, "net.ipv4.ip_forward", 1)


SECOND_NIC = "eth1"
SECOND_NODE_IP = "192.168.1.2"
SECOND_WORLD_IP = "192.168.1.1"


@contextmanager
def second_nic(lab: Lab, *, rp_all: int, rp_default: int | None = None, rp_iface: int | None = None) -> Iterator[str]:
    """KPT104: a second node interface (eth1, 192.168.1.2/24, to the world's eth1) holding a node
    IP, while the default route stays on eth0: what arrives on eth1 from off-link clients is
    answered through eth0.

    rp_filter: conf.all is set first, then conf.default (which eth1 inherits when it is created:
    a distribution's sysctl.d file does exactly that at boot), then conf.eth1 if given.
    The world sends its ARP requests from its eth1 address (arp_announce=2), as the router in
    front of a real node does; otherwise strict rp_filter would already refuse the ARP request
    from 203.0.113.2 and the probe would never be sent.
    """
    keys = ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter")
    saved = {k: read_sysctl(lab.node, k) for k in keys}
    try:
        sysctl(lab.node, keys[0], rp_all)
        if rp_default is not None:
            sysctl(lab.node, keys[1], rp_default)
        lab._veth(lab.node, SECOND_NIC, lab.world, SECOND_NIC)  # both ends inside the lab's namespaces
        sh(["ip", "-n", lab.node, "addr", "add", f"{SECOND_NODE_IP}/24", "dev", SECOND_NIC])
        sh(["ip", "-n", lab.world, "addr", "add", f"{SECOND_WORLD_IP}/24", "dev", SECOND_NIC])
        sysctl(lab.world, f"net.ipv4.conf.{SECOND_NIC}.arp_announce", 2)
        if rp_iface is not None:
            sysctl(lab.node, f"net.ipv4.conf.{SECOND_NIC}.rp_filter", rp_iface)
        yield SECOND_NODE_IP
    finally:
        sh(["ip", "-n", lab.node, "link", "del", SECOND_NIC], check=False)
        for k, v in saved.items():
            sysctl(lab.node, k, v)


@contextmanager
def default_route(lab: Lab, present: bool) -> Iterator[None]:
    """KPT401: the node's default route (via the world) removed, and put back afterwards."""
    if not present:
        sh(["ip", "-n", lab.node, "route", "del", "default"])
    try:
        yield
    finally:
        sh(["ip", "-n", lab.node, "route", "replace", "default", "via", WORLD_UPLINK_IP, "dev", UPLINK])


# ---------------------------------------------------------------------------------------------
# Two nodes joined by flannel's VXLAN backend (KPT402)

VNI = 1
VXLAN_PORT = 8472
VTEP = "flannel.1"


@dataclass
class OverlayNode:
    name: str  # node-a, node-b
    ns: str
    ip: str  # underlay (node IP)
    subnet: str  # this node's pod subnet, 10.244.N.0/24
    pod_ns: str = ""
    pod_ip: str = ""
    vtep_mac: str = ""

    @property
    def vtep_ip(self) -> str:  # flannel gives flannel.1 the subnet's network address, /32
        return self.subnet.split("/")[0]

    @property
    def bridge_ip(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + ".1"


@dataclass
class Overlay:
    """node-a (192.168.0.2, pods 10.244.1.0/24) and node-b (192.168.0.3, 10.244.2.0/24) on one
    underlay segment (a bridge in the `underlay` namespace, whose 192.168.0.1 is both nodes'
    default gateway and, like a cloud router, knows nothing of pod subnets), each with cni0, one
    pod, and flannel.1 (vxlan id 1 dstport 8472 nolearning) programmed as flanneld does it: per
    peer an onlink route via the peer's VTEP IP, a permanent neighbour entry (VTEP IP -> VTEP MAC)
    and an fdb entry (VTEP MAC -> node IP). IPv6 is off in every namespace so that the counters
    read here move only for the lab's probes."""

    prefix: str
    dump_dir: Path
    nodes: dict[str, OverlayNode] = field(default_factory=dict)
    router: str = ""
    agents: dict[str, netns.Agent] = field(default_factory=dict)  # pod-a, pod-b
    _namespaces: list[str] = field(default_factory=list)
    _sport: int = 41000

    GATEWAY = "192.168.0.1"

    def build(self) -> Overlay:
        self.router = self._ns("underlay")
        sh(["ip", "-n", self.router, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.router, "addr", "add", f"{self.GATEWAY}/24", "dev", "br0"])
        sh(["ip", "-n", self.router, "link", "set", "br0", "up"])
        sysctl(self.router, "net.ipv4.ip_forward", 1)
        a = OverlayNode("node-a", self._ns("node-a"), "192.168.0.2", "10.244.1.0/24")
        b = OverlayNode("node-b", self._ns("node-b"), "192.168.0.3", "10.244.2.0/24")
        self.nodes = {"node-a": a, "node-b": b}
        for n in (a, b):
            port = "port-" + n.name[-1]
            self._veth(n.ns, "eth0", self.router, port)
            sh(["ip", "-n", self.router, "link", "set", port, "master", "br0"])
            sh(["ip", "-n", n.ns, "addr", "add", f"{n.ip}/24", "dev", "eth0"])
            sh(["ip", "-n", n.ns, "route", "add", "default", "via", self.GATEWAY, "dev", "eth0"])
            sh(["ip", "-n", n.ns, "link", "add", VTEP, "type", "vxlan", "id", str(VNI), "local", n.ip, "dev",
                "eth0", "dstport", str(VXLAN_PORT), "nolearning"])
            sh(["ip", "-n", n.ns, "link", "set", VTEP, "mtu", "1450", "up"])
            sh(["ip", "-n", n.ns, "addr", "add", f"{n.vtep_ip}/32", "dev", VTEP])
            n.vtep_mac = self.mac(n)
            sh(["ip", "-n", n.ns, "link", "add", BRIDGE, "type", "bridge"])
            sh(["ip", "-n", n.ns, "addr", "add", f"{n.bridge_ip}/24", "dev", BRIDGE])
            sh(["ip", "-n", n.ns, "link", "set", BRIDGE, "mtu", "1450", "up"])
            sysctl(n.ns, "net.ipv4.ip_forward", 1)
            sh(["sh", "-c", "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables"], ns=n.ns)
            self._pod(n, "pod-a" if n is a else "pod-b")
            sh(["iptables-nft-restore"], ns=n.ns, stdin=FLANNEL_RULES)
        for n, peer in ((a, b), (b, a)):
            self.program_peer(n, peer)
        self.agents["pod-a"] = netns.Agent(a.pod_ns, ())
        self.agents["pod-b"] = netns.Agent(b.pod_ns, netns.POD_PORTS)
        return self

    def _ns(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        sh(["ip", "netns", "add", name])
        self._namespaces.append(name)
        for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
            sysctl(name, key, 1)
        sh(["ip", "link", "set", "lo", "up"], ns=name)
        return name

    @staticmethod
    def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        sh(["ip", "link", "add", "kpttmp0", "netns", ns_a, "type", "veth", "peer", "name", "kpttmp1", "netns", ns_b])
        sh(["ip", "-n", ns_a, "link", "set", "kpttmp0", "name", name_a])
        sh(["ip", "-n", ns_b, "link", "set", "kpttmp1", "name", name_b])
        sh(["ip", "-n", ns_a, "link", "set", name_a, "up"])
        sh(["ip", "-n", ns_b, "link", "set", name_b, "up"])

    def _pod(self, n: OverlayNode, pod: str) -> None:
        """A pod as the CNI bridge plugin makes it under flannel: both veth ends at flannel's MTU."""
        n.pod_ns = self._ns(pod)
        n.pod_ip = n.subnet.rsplit(".", 1)[0] + ".2"
        host_if = "veth" + pod.replace("-", "")
        self._veth(n.pod_ns, "eth0", n.ns, host_if)
        sh(["ip", "-n", n.ns, "link", "set", host_if, "mtu", "1450", "master", BRIDGE])
        sh(["ip", "-n", n.pod_ns, "link", "set", "eth0", "mtu", "1450"])
        sh(["ip", "-n", n.pod_ns, "addr", "add", f"{n.pod_ip}/24", "dev", "eth0"])
        sh(["ip", "-n", n.pod_ns, "route", "add", "default", "via", n.bridge_ip])

    @staticmethod
    def mac(n: OverlayNode) -> str:
        return str(json.loads(sh(["ip", "-j", "link", "show", VTEP], ns=n.ns).stdout)[0]["address"])

    def program_peer(self, n: OverlayNode, peer: OverlayNode) -> None:
        """What flanneld does for each other node (from its lease: subnet, VTEP MAC, public IP)."""
        sh(["ip", "-n", n.ns, "route", "replace", peer.subnet, "via", peer.vtep_ip, "dev", VTEP, "onlink"])
        sh(["ip", "-n", n.ns, "neigh", "replace", peer.vtep_ip, "lladdr", peer.vtep_mac, "dev", VTEP,
            "nud", "permanent"])
        sh(["bridge", "-n", n.ns, "fdb", "replace", peer.vtep_mac, "dev", VTEP, "dst", peer.ip, "self", "permanent"])

    # Each break leaves the other entries as flanneld programmed them.
    def forget_route(self, n: OverlayNode, peer: OverlayNode) -> None:
        sh(["ip", "-n", n.ns, "route", "del", peer.subnet, "dev", VTEP])

    def forget_neigh(self, n: OverlayNode, peer: OverlayNode) -> None:
        sh(["ip", "-n", n.ns, "neigh", "del", peer.vtep_ip, "dev", VTEP])

    def forget_fdb(self, n: OverlayNode, peer: OverlayNode) -> None:
        sh(["bridge", "-n", n.ns, "fdb", "del", peer.vtep_mac, "dev", VTEP, "dst", peer.ip, "self"])

    def recreate_vtep(self, n: OverlayNode, mac: str) -> str:
        """n's flannel.1 comes back with a new MAC (recreated on reboot or upgrade) and n's flanneld
        programs n's own entries again; its peers still hold the old MAC. Returns the old one."""
        old = n.vtep_mac
        sh(["ip", "-n", n.ns, "link", "set", VTEP, "address", mac])
        n.vtep_mac = self.mac(n)
        for peer in self.nodes.values():
            if peer is not n:
                self.program_peer(n, peer)
        return old

    def heal(self) -> None:
        """flanneld's resync on every node: stale entries removed, every peer programmed from its current MAC."""
        for n in self.nodes.values():
            sh(["ip", "-n", n.ns, "neigh", "flush", "dev", VTEP], check=False)
            for entry in json.loads(sh(["bridge", "-j", "fdb", "show", "dev", VTEP], ns=n.ns).stdout or "[]"):
                if entry.get("dst"):
                    sh(["bridge", "-n", n.ns, "fdb", "del", entry["mac"], "dev", VTEP, "dst", entry["dst"], "self"],
                       check=False)
            for peer in self.nodes.values():
                if peer is not n:
                    self.program_peer(n, peer)

    def warm_up(self) -> None:
        """Each pod talks to its bridge, so ARP and the bridge fdb know it (as on a node with running pods)."""
        for pod, n in (("pod-a", self.nodes["node-a"]), ("pod-b", self.nodes["node-b"])):
            self.agents[pod].send("udp", n.pod_ip, 0, n.bridge_ip, netns.CANARY_PORT, timeout=0.05)

    def collect(self, name: str) -> list[Path]:
        """Both nodes' bundles (docs/bundle.md) under dump_dir/<name>/<node>/."""
        self.warm_up()
        out = []
        for n in self.nodes.values():
            bundle = self.dump_dir / name / n.name
            bundle.mkdir(parents=True, exist_ok=True)
            (bundle / "iptables-save.txt").write_text(sh(["iptables-save"], ns=n.ns).stdout)
            for fname, cmd in netns.BUNDLE_COMMANDS.items():
                (bundle / fname).write_text(sh(cmd, ns=n.ns, check=False).stdout)
            sysctls = sh(["sysctl", "-a"], ns=n.ns, check=False).stdout.splitlines()
            (bundle / "sysctl.txt").write_text("".join(line + "\n" for line in sysctls
                                                       if netns.BUNDLE_SYSCTL.match(line)))
            (bundle / "hostname.txt").write_text(n.name + "\n")
            (bundle / "flannel-subnet.env").write_text(
                f"FLANNEL_NETWORK={netns.CLUSTER_CIDR}\nFLANNEL_SUBNET={n.bridge_ip}/24\nFLANNEL_MTU=1450\n"
                "FLANNEL_IPMASQ=true\n")
            write_node_yaml(bundle, n.name, [n.ip], n.subnet, cni="flannel", extra="flannel_backend: vxlan\n")
            out.append(bundle)
        return out

    def probe(self, dport: int = 8080, timeout: float = 0.9) -> tuple[str, list[dict[str, Any]]]:
        """pod-a -> pod-b:dport (TCP) over the overlay: the client's result and what pod-b accepted."""
        a, b = self.nodes["node-a"], self.nodes["node-b"]
        before = self.agents["pod-b"].recv_count()
        self._sport += 1
        res = self.agents["pod-a"].send("tcp", a.pod_ip, self._sport, b.pod_ip, dport, timeout=timeout)
        deadline = time.monotonic() + (1.0 if res.get("result") == "connected" else 0.2)
        while True:  # the listener reports an accepted connection a moment after the client sees it
            got = [e for e in self.agents["pod-b"].received_since(before) if e.get("src") == a.pod_ip]
            if got or time.monotonic() > deadline:
                return str(res.get("result")), got
            time.sleep(0.01)

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for ns in reversed(self._namespaces):
            sh(["ip", "netns", "del", ns], check=False)
        self._namespaces.clear()


# flanneld's own filter rules (--iptables-forward-rules, the default) and nothing else: no Services.
FLANNEL_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
"""


def make_overlay(dump_dir: Path) -> Overlay:
    overlay = Overlay(prefix=new_prefix(), dump_dir=dump_dir)
    try:
        overlay.build()
    except BaseException:
        overlay.close()
        raise
    return overlay


# ---------------------------------------------------------------------------------------------
# kptrace, and what one probe showed


@dataclass
class Run:
    argv: list[str]
    rc: int
    doc: dict[str, Any]
    stderr: str

    def command(self) -> str:
        return "python -m kptrace " + " ".join(self.argv[3:])

    def results(self, check_id: str, node: str | None = None) -> list[dict[str, Any]]:
        """`kptrace check` results of one check (and one node, when several were checked)."""
        return [r for r in self.doc.get("results", []) if r["id"] == check_id
                and (node is None or r.get("node") in (None, node))]

    def statuses(self, check_id: str, node: str | None = None) -> list[str]:
        return [r["status"] for r in self.results(check_id, node)]

    @property
    def finding_ids(self) -> list[str]:
        """`kptrace why`: the FAIL/WARN findings located at a step of the trace."""
        return [f["id"] for f in self.doc.get("findings", [])]

    def brief(self, check_id: str | None = None) -> str:
        """The command, its exit code and what matters of its answer, for assertion messages."""
        lines = [f"$ {self.command()}  # exit {self.rc}"]
        if self.doc.get("kind") == "check":
            for r in self.doc["results"]:
                if check_id in (None, r["id"]):
                    where = " ".join(f"{loc['file']}:{loc['line']}" for loc in r["locations"])
                    lines.append(f"  {r['id']} {r['status']} {r.get('node') or ''} {where}  {r['message']}")
        else:
            lines.append(f"  disposition {self.doc.get('disposition')}, findings "
                         + ", ".join(f"{f['id']} {f['status']} @ " + " ".join(
                             f"{loc['file']}:{loc['line']}" for loc in f["locations"])
                             for f in self.doc.get("findings", [])))
            for b in self.doc.get("branches", []):
                lines.append(f"  branch {b.get('disposition')} (reply {(b.get('reply') or {}).get('disposition')})")
                lines += [f"    {s.get('source')}  {(s.get('text') or '')[:160]}" for s in b.get("steps", [])]
        return "\n".join(lines)


MAX_IN_FLIGHT = 4  # kptrace processes running beside the lab (two CPUs: more only slows the probes)
_in_flight: list[Pending] = []


class Pending:
    """A kptrace run started in the background; `.run` waits for it."""

    def __init__(self, *args: str) -> None:
        while len(_in_flight) >= MAX_IN_FLIGHT:
            _in_flight[0].run  # noqa: B018 - finish the oldest first
        self.argv = [sys.executable, "-m", "kptrace", *args]
        self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self._run: Run | None = None
        _in_flight.append(self)

    @property
    def run(self) -> Run:
        if self._run is None:
            try:
                out, err = self.proc.communicate(timeout=KPTRACE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
                raise AssertionError(f"kptrace timed out: {' '.join(self.argv)}") from None
            finally:
                if self in _in_flight:
                    _in_flight.remove(self)
            if self.proc.returncode in (2, 3) or not out.strip():
                raise AssertionError(f"kptrace failed (rc={self.proc.returncode}): {' '.join(self.argv)}\n"
                                     f"{out[-2000:]}\n{err[-4000:]}")
            self._run = Run(self.argv, self.proc.returncode, json.loads(out), err)
        return self._run


def check_args(bundles: Iterable[Path]) -> list[str]:
    return ["check", *[a for b in bundles for a in ("--dump", str(b))], "-o", "json"]


def why_args(flow: netns.Flow, bundles: Iterable[Path], in_iface: str | None) -> list[str]:
    args = ["why", f"{flow.dst}:{flow.dport}", "--from", flow.src, "--proto", flow.proto,
            *[a for b in bundles for a in ("--dump", str(b))], "-o", "json"]
    return args + (["--in-iface", in_iface] if in_iface else [])


@dataclass
class Observation:
    """One probe in one node state: what the kernel did, the bundle(s) of that moment, and
    kptrace's `check` and `why` on them (started at once, read when a test asks)."""

    name: str
    flow: netns.Flow
    in_iface: str | None  # where the node sees the packet arrive (None: the node sends it)
    bundles: list[Path]
    kernel: netns.KernelResult | None = None  # from the lab's TRACE/conntrack/agents (None: overlay lab)
    client: str = ""  # the sender's result: connected, reply, refused, timeout, oserror:<errno>
    received: list[dict[str, Any]] = field(default_factory=list)  # what the target's agent got
    evidence: dict[str, Any] = field(default_factory=dict)  # counters and states read around the probe
    _check: Pending | None = None
    _why: Pending | None = None

    def start_kptrace(self) -> Observation:
        self._check = Pending(*check_args(self.bundles))
        self._why = Pending(*why_args(self.flow, self.bundles, self.in_iface))
        return self

    @property
    def check(self) -> Run:
        assert self._check is not None
        return self._check.run

    @property
    def why(self) -> Run:
        assert self._why is not None
        return self._why.run

    def describe(self) -> str:
        lines = [f"[{self.name}] {self.flow} (in-iface {self.in_iface}); bundle(s): "
                 + " ".join(str(b) for b in self.bundles)]
        if self.kernel is not None:
            lines.append(self.kernel.describe())
            if self.kernel.conntrack is not None:
                lines.append(f"  conntrack flags: {sorted(self.kernel.conntrack.flags)}")
        else:
            lines.append(f"kernel: client={self.client} received={self.received}")
        lines += [f"  evidence {k}: {v}" for k, v in self.evidence.items()]
        return "\n".join(lines)
