"""A two-node flannel (VXLAN) cluster built from network namespaces, observed in the real kernel.

Topology (every address exists only inside namespaces this module creates):

    world  lo 203.0.113.2/32 (external client)
           eth0 192.168.56.1/24 ─┐                    eth1 192.168.57.1/24 ──veth── nodeA eth1 192.168.57.11/24
                                 │  lan: bridge br0 (the underlay switch)
    nodeA  eth0 192.168.56.11/24 ┤
    nodeB  eth0 192.168.56.12/24 ┘
    node X (A: X=1, B: X=2)
      cni0       bridge 10.244.X.1/24, mtu 1450; pods are veth ports with hairpin on
      flannel.1  vxlan id 1 dstport 8472 local <node ip> dev eth0 nolearning, 10.244.X.0/32, mtu 1450
      routes     default via 192.168.56.1 dev eth0; 10.244.Y.0/24 via 10.244.Y.0 dev flannel.1 onlink
      neigh      10.244.Y.0 dev flannel.1 lladdr <peer VTEP MAC> PERMANENT
      fdb        <peer VTEP MAC> dev flannel.1 dst <peer node ip> self permanent
    pods   pod-a1 10.244.1.5 (client), pod-a2 10.244.1.12 on nodeA; pod-b1 10.244.2.15 on nodeB

The flannel part is programmed exactly as flanneld's VXLAN backend does it (route, neighbour and
fdb entry per remote node). The world is the nodes' default gateway; it routes the nodeA pod subnet
over its second link (eth1), so a world packet to a nodeA pod arrives on an interface the route back
does not use: the asymmetric path the rp_filter scenario needs.

Each node runs kube-proxy-like rules (tests.lab.rulesets builders) plus flanneld's FLANNEL-POSTRTG
and FLANNEL-FWD. A probe is one packet (TCP SYN or UDP datagram) from an agent; both nodes are
traced with xtables-monitor; conntrack, `ip route get`, /proc/net counters and the receiving agent
say what the kernel did. `compare()` holds kptrace's multi-node answer (bundles of both nodes) to it:
disposition, per-node egress interface and next hop, the node that received it, DNAT, masquerade
and the reply.

The agents, trace parsing, conntrack parsing and command runner are imported from tests.lab.netns;
nothing here changes that module.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab import netns
from tests.lab.netns import (
    BUNDLE_COMMANDS,
    BUNDLE_SYSCTL,
    NODE_PORTS_LISTENING,
    POD_PORTS,
    PROBE_SPORTS,
    Agent,
    ConntrackEntry,
    Delivery,
    LabError,
    MonitorLost,
    TraceEvent,
    TraceMonitor,
    disposition_class,
    normalize_rule,
    parse_conntrack,
    parse_trace_lines,
    sh,
    verdict_of,
)
from tests.lab.rulesets import Endpoint, NodeRuleset, Service, UserRule

# ---------------------------------------------------------------------------------------------
# Addresses. All of them live only inside this lab's namespaces.

NS_PREFIX = "kpt-cl-"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
LAN_PREFIX = 24
GATEWAY_IP = "192.168.56.1"  # the world, on the underlay LAN
EXTERNAL_CLIENT_IP = "203.0.113.2"  # on the world's lo
WORLD_SIDE_IP = "192.168.57.1"  # the world's second link, to nodeA eth1
NODE_A_SIDE_IP = "192.168.57.11"
VXLAN_ID = 1
VXLAN_PORT = 8472
FLANNEL_MTU = 1450
MASQ_MARK = "0x4000"
VXLAN_DEV = "flannel.1"
BRIDGE = "cni0"
UPLINK = "eth0"
SIDE_LINK = "eth1"


@dataclass(frozen=True)
class NodeSpec:
    role: str  # namespace role and bundle directory name: nodeA, nodeB
    name: str  # the Kubernetes node name (node.yaml), kptrace's node label
    ip: str
    pod_cidr: str
    eth0_mac: str
    vtep_mac: str
    cni0_mac: str
    pods: tuple[tuple[str, str], ...]  # (pod role, pod IP)

    @property
    def bridge_ip(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr).network_address + 1)

    @property
    def vtep_ip(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr).network_address)


NODES: dict[str, NodeSpec] = {
    "nodeA": NodeSpec("nodeA", "node-a", "192.168.56.11", "10.244.1.0/24", "08:00:27:8a:41:11",
                      "42:9d:6e:b1:3a:05", "9e:41:c7:2d:80:1a",
                      (("pod-a1", "10.244.1.5"), ("pod-a2", "10.244.1.12"))),
    "nodeB": NodeSpec("nodeB", "node-b", "192.168.56.12", "10.244.2.0/24", "08:00:27:d2:19:12",
                      "5a:f0:83:27:c4:9e", "b6:72:0d:e5:4f:33",
                      (("pod-b1", "10.244.2.15"),)),
}
POD_IPS: dict[str, str] = {pod: ip for spec in NODES.values() for pod, ip in spec.pods}
POD_NODE: dict[str, str] = {pod: spec.role for spec in NODES.values() for pod, _ in spec.pods}
NODE_OF_NAME: dict[str, str] = {spec.name: spec.role for spec in NODES.values()}

# The services every node renders (kube-proxy writes the same rules on every node).
POD_A1, POD_A2, POD_B1 = POD_IPS["pod-a1"], POD_IPS["pod-a2"], POD_IPS["pod-b1"]
WEB_LOCAL = Service("default", "web-local", "10.96.0.20", 80, [Endpoint(POD_A2, 8080)])
ECHO_LOCAL = Service("default", "echo-local", "10.96.0.21", 53, [Endpoint(POD_A2, 5353)],
                     port_name="dns", protocol="udp")
WEB_REMOTE = Service("default", "web-remote", "10.96.0.30", 80, [Endpoint(POD_B1, 8080)],
                     node_port=30080)
WEB_BOTH = Service("default", "web", "10.96.0.40", 80,
                   [Endpoint(POD_A2, 8080), Endpoint(POD_B1, 8080)], node_port=30081)
SERVICES = (WEB_LOCAL, ECHO_LOCAL, WEB_REMOTE, WEB_BOTH)

# /proc/net counters read around every probe: the kernel's own account of a silent drop.
COUNTERS = ("Ip.ForwDatagrams", "Ip.InAddrErrors", "Ip.InNoRoutes", "Ip.OutNoRoutes",
            "TcpExt.IPReversePathFilter")


def unavailable_reason() -> str | None:
    """Why the cluster lab cannot run here (root, tools, netns, TRACE, VXLAN), or None."""
    if os.geteuid() != 0:
        return "kernel lab needs root (network namespaces, iptables)"
    for tool in ("ip", "bridge", "sysctl", "iptables", "iptables-restore", "iptables-save",
                 "xtables-monitor", "conntrack", "nft", "stdbuf", "timeout"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    name = f"{NS_PREFIX}{os.getpid()}-check"
    try:
        sh(["ip", "netns", "add", name], timeout=10)
    except (LabError, OSError) as exc:
        return f"ip netns unavailable: {exc}"
    try:
        probe = sh(["iptables", "-t", "raw", "-A", "OUTPUT", "-p", "udp", "-j", "TRACE"], ns=name,
                   check=False)
        if probe.returncode != 0:
            return f"iptables TRACE unavailable in a netns: {probe.stderr.strip()}"
        probe = sh(["ip", "-n", name, "link", "add", "vx0", "type", "vxlan", "id", "1", "dstport",
                    str(VXLAN_PORT), "local", "192.0.2.1", "nolearning"], check=False)
        if probe.returncode != 0:
            return f"no VXLAN support in this kernel: {probe.stderr.strip()}"
    finally:
        sh(["ip", "netns", "del", name], check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale_namespaces() -> None:
    """Remove kpt-cl-<pid>-* namespaces left by cluster labs whose process no longer exists."""
    for line in sh(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{re.escape(NS_PREFIX)}(\d+)-", name)
        if m and not _pid_alive(int(m.group(1))):
            sh(["ip", "netns", "del", name], check=False)


# ---------------------------------------------------------------------------------------------
# Rulesets: kube-proxy (tests.lab.rulesets) plus flanneld's chains, as flanneld appends them.


def flannel_rules(spec: NodeSpec) -> tuple[list[tuple[str, str]], list[UserRule]]:
    cidr, pod = CLUSTER_CIDR, spec.pod_cidr
    c = '-m comment --comment "flanneld masq"'
    f = '-m comment --comment "flanneld forward"'
    chains = [("nat", "FLANNEL-POSTRTG"), ("filter", "FLANNEL-FWD")]
    rules = [UserRule("nat", line) for line in (
        f"-A POSTROUTING {c} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark {MASQ_MARK}/{MASQ_MARK} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {pod} -d {cidr} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {cidr} -d {pod} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {cidr} -d {pod} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {cidr} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {cidr} -d {cidr} {c} -j MASQUERADE --random-fully",
    )] + [UserRule("filter", line) for line in (
        f"-A FORWARD {f} -j FLANNEL-FWD",
        f"-A FLANNEL-FWD -s {cidr} {f} -j ACCEPT",
        f"-A FLANNEL-FWD -d {cidr} {f} -j ACCEPT",
    )]
    return chains, rules


def node_ruleset(role: str, services: Iterable[Service] = SERVICES, **kw: Any) -> str:
    """kube-proxy's rules for `services` as node `role` renders them, then flanneld's."""
    spec = NODES[role]
    net = ipaddress.ip_network(spec.pod_cidr)
    local_view = []
    for svc in services:
        eps = [Endpoint(e.ip, e.port, local=ipaddress.ip_address(e.ip) in net) for e in svc.endpoints]
        local_view.append(Service(svc.namespace, svc.name, svc.cluster_ip, svc.port, eps,
                                  port_name=svc.port_name, protocol=svc.protocol,
                                  node_port=svc.node_port, external_ips=list(svc.external_ips),
                                  lb_ips=list(svc.lb_ips),
                                  external_policy_local=svc.external_policy_local,
                                  health_check_node_port=svc.health_check_node_port))
    chains, rules = flannel_rules(spec)
    rs = NodeRuleset(services=local_view, cluster_cidr=CLUSTER_CIDR, user_chains=chains,
                     user_rules=rules, **kw)
    return rs.render()


# ---------------------------------------------------------------------------------------------
# Flows and what the kernel did with one


@dataclass(frozen=True)
class ClusterFlow:
    client: str  # role of the sending namespace: a pod, "world", "nodeA" or "nodeB"
    src: str
    dst: str
    dport: int
    proto: str = "tcp"
    in_iface: str | None = None  # where it enters its first node; None: generated on that node

    @property
    def start(self) -> str:
        """The node the packet starts on (or enters first)."""
        if self.client in NODES:
            return self.client
        if self.client in POD_NODE:
            return POD_NODE[self.client]
        return next((r for r, s in NODES.items() if s.ip == self.dst), "nodeA")

    def __str__(self) -> str:
        return f"{self.proto} {self.client}({self.src}) -> {self.dst}:{self.dport}"


def from_pod(pod: str, dst: str, dport: int, proto: str = "tcp") -> ClusterFlow:
    return ClusterFlow(pod, POD_IPS[pod], dst, dport, proto, BRIDGE)


def from_world(dst: str, dport: int, proto: str = "tcp", in_iface: str = UPLINK) -> ClusterFlow:
    return ClusterFlow("world", EXTERNAL_CLIENT_IP, dst, dport, proto, in_iface)


def from_node(role: str, dst: str, dport: int, proto: str = "tcp") -> ClusterFlow:
    return ClusterFlow(role, NODES[role].ip, dst, dport, proto, None)


@dataclass(frozen=True)
class RouteGet:
    """`ip route get` in a node namespace: the kernel's own route decision."""

    command: str
    ok: bool
    via: str | None
    dev: str | None
    text: str

    def __str__(self) -> str:
        return f"`{self.command}` -> {self.text!r}"


@dataclass
class NodeObservation(netns.TracedPacket):
    role: str
    events: list[TraceEvent]
    conntrack: ConntrackEntry | None
    route: RouteGet | None
    counters: dict[str, int]

    @property
    def name(self) -> str:
        return NODES[self.role].name

    @property
    def in_iface(self) -> str | None:
        """IN= of the packet's first event on this node (None: generated here)."""
        return self.events[0].packet.get("IN") or None if self.events else None


@dataclass
class ClusterResult:
    flow: ClusterFlow
    sport: int
    verdict: str  # ACCEPT | DROP | REJECT | VANISHED | NO_ROUTE | LOST
    nodes: list[NodeObservation]  # in the order the packet visited them, only nodes it reached
    delivery: Delivery | None
    client_result: str

    def on(self, role: str) -> NodeObservation | None:
        return next((o for o in self.nodes if o.role == role), None)

    @property
    def first(self) -> NodeObservation | None:
        return self.nodes[0] if self.nodes else None

    @property
    def dnat(self) -> str | None:
        first = self.first
        if first is not None and first.conntrack is not None and first.conntrack.dnat:
            return first.conntrack.dnat
        if first is not None:
            return netns.dnat_from_trace(first.events, self.flow.dst, self.flow.dport)
        return None

    @property
    def masquerade(self) -> bool | None:
        first = self.first
        if first is None or first.conntrack is None:
            return None
        return first.conntrack.snat is not None

    @property
    def reply_ok(self) -> bool | None:
        if self.client_result in ("connected", "reply"):
            return True
        if self.delivery is not None and self.client_result == "timeout":
            return False
        return None

    @property
    def receiving_node(self) -> str | None:
        """Name of the node whose namespace (the node's own, or one of its pods') received it."""
        if self.delivery is None:
            return None
        role = self.delivery.ns_role
        role = POD_NODE.get(role, role)
        return NODES[role].name if role in NODES else role

    @property
    def stopped_on(self) -> str | None:
        """Name of the last node that saw the packet."""
        return self.nodes[-1].name if self.nodes else None

    def describe(self) -> str:
        d = self.delivery
        where = (f"{d.ns_role} on {self.receiving_node} from {d.src}:{d.sport} to {d.dst}:{d.dport}"
                 if d else "nothing received")
        lines = [(f"kernel: {self.flow} sport={self.sport} verdict={self.verdict} "
                  f"client={self.client_result} dnat={self.dnat} masquerade={self.masquerade} "
                  f"delivery: {where}")]
        for o in self.nodes:
            lines.append(f"  {o.name}: in={o.in_iface} out(TRACE OUT=)={o.egress} hooks={o.hooks}")
            if o.route is not None:
                lines.append(f"    route: {o.route}")
            nonzero = {k: v for k, v in o.counters.items() if v}
            if nonzero:
                lines.append(f"    /proc/net counters during the probe: {nonzero}")
            if o.conntrack:
                c = o.conntrack
                lines.append(f"    conntrack: {c.proto} {c.orig_src}:{c.orig_sport}->{c.orig_dst}:"
                             f"{c.orig_dport} reply {c.reply_src}:{c.reply_sport}->{c.reply_dst}:"
                             f"{c.reply_dport}")
            for e in o.events:
                if e.table != "raw":
                    lines.append(f"    [{e.hook}] {e.table}:{e.chain} {e.kind} {e.verdict}  {e.text}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The lab


def _route_get_parse(out: str) -> tuple[str | None, str | None]:
    via = re.search(r"\bvia (\S+)", out)
    dev = re.search(r"\bdev (\S+)", out)
    return (via.group(1) if via else None), (dev.group(1) if dev else None)


def _read_counters(ns: str) -> dict[str, int]:
    text = sh(["cat", "/proc/net/snmp", "/proc/net/netstat"], ns=ns, check=False).stdout
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        hk, _, hnames = head.partition(":")
        vk, _, hvals = vals.partition(":")
        if hk != vk:
            continue
        for k, v in zip(hnames.split(), hvals.split()):
            if f"{hk}.{k}" in COUNTERS and v.lstrip("-").isdigit():
                out[f"{hk}.{k}"] = int(v)
    return out


@dataclass
class ClusterLab:
    prefix: str
    dump_dir: Path
    seed: int = 1
    ns: dict[str, str] = field(default_factory=dict)  # role -> namespace name
    agents: dict[str, Agent] = field(default_factory=dict)
    monitors: dict[str, TraceMonitor] = field(default_factory=dict)  # node role -> monitor
    _namespaces: list[str] = field(default_factory=list)
    _used_sports: set[int] = field(default_factory=set)
    _rng: random.Random = field(default_factory=random.Random)
    _scenarios: int = 0

    # -- topology -------------------------------------------------------------------------------

    def build(self) -> ClusterLab:
        self._rng = random.Random(self.seed)
        for role in ("lan", "world", *NODES, *POD_IPS):
            self._add_ns(role)
        self._build_lan()
        self._build_world()
        for spec in NODES.values():
            self._build_node(spec)
        for spec in NODES.values():
            self._build_flannel_peers(spec)
        self.reset()
        self._start_agents()
        return self

    def _add_ns(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        sh(["ip", "netns", "add", name])
        self._namespaces.append(name)
        self.ns[role] = name
        sh(["ip", "link", "set", "lo", "up"], ns=name)
        return name

    def _veth(self, role_a: str, name_a: str, role_b: str, name_b: str) -> None:
        # Created directly inside the namespaces: no interface ever exists in the host netns.
        a, b = self.ns[role_a], self.ns[role_b]
        sh(["ip", "link", "add", "kpttmp0", "netns", a, "type", "veth",
            "peer", "name", "kpttmp1", "netns", b])
        sh(["ip", "-n", a, "link", "set", "kpttmp0", "name", name_a])
        sh(["ip", "-n", b, "link", "set", "kpttmp1", "name", name_b])

    def _ip(self, role: str, *args: str) -> None:
        sh(["ip", "-n", self.ns[role], *args])

    def _sysctl(self, role: str, key: str, value: str) -> None:
        sh(["sysctl", "-qw", f"{key}={value}"], ns=self.ns[role])

    def _build_lan(self) -> None:
        # The underlay switch; a plain bridge, never filtered.
        self._ip("lan", "link", "add", "br0", "type", "bridge")
        self._ip("lan", "link", "set", "br0", "up")
        sh(["sh", "-c", "echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables"], ns=self.ns["lan"],
           check=False)

    def _lan_port(self, role: str, port: str) -> None:
        self._veth(role, UPLINK, "lan", port)
        self._ip("lan", "link", "set", port, "master", "br0")
        self._ip("lan", "link", "set", port, "up")

    def _build_world(self) -> None:
        self._lan_port("world", "lan-w")
        self._ip("world", "addr", "add", f"{GATEWAY_IP}/{LAN_PREFIX}", "dev", UPLINK)
        self._ip("world", "link", "set", UPLINK, "up")
        self._ip("world", "addr", "add", f"{EXTERNAL_CLIENT_IP}/32", "dev", "lo")
        # ARP from the address of the link, as a router forwarding someone else's packet does.
        # With its default (arp_announce=0) the world would ask "who-has 192.168.57.11 tell
        # 203.0.113.2", and nodeA, with strict rp_filter, does not answer an ARP request whose
        # sender fails the reverse-path check: the SYN would never leave the world.
        self._sysctl("world", "net.ipv4.conf.all.arp_announce", "2")

    def _build_node(self, spec: NodeSpec) -> None:
        role = spec.role
        self._sysctl(role, "net.ipv4.conf.all.rp_filter", "0")
        self._sysctl(role, "net.ipv4.conf.default.rp_filter", "0")
        self._lan_port(role, f"lan-{role[-1].lower()}")
        self._ip(role, "link", "set", UPLINK, "address", spec.eth0_mac)
        self._ip(role, "addr", "add", f"{spec.ip}/{LAN_PREFIX}", "dev", UPLINK)
        self._ip(role, "link", "set", UPLINK, "up")
        if role == "nodeA":
            # A second link to the world: the world sends nodeA's pod subnet this way, while
            # nodeA's route back to the world is its default route (eth0).
            self._veth(role, SIDE_LINK, "world", SIDE_LINK)
            self._ip(role, "addr", "add", f"{NODE_A_SIDE_IP}/24", "dev", SIDE_LINK)
            self._ip("world", "addr", "add", f"{WORLD_SIDE_IP}/24", "dev", SIDE_LINK)
            self._ip(role, "link", "set", SIDE_LINK, "up")
            self._ip("world", "link", "set", SIDE_LINK, "up")
            self._ip("world", "route", "add", spec.pod_cidr, "via", NODE_A_SIDE_IP, "dev", SIDE_LINK)
        # flannel.1, as flanneld's VXLAN backend creates it.
        self._ip(role, "link", "add", VXLAN_DEV, "type", "vxlan", "id", str(VXLAN_ID), "local",
                 spec.ip, "dev", UPLINK, "dstport", str(VXLAN_PORT), "nolearning")
        self._ip(role, "link", "set", VXLAN_DEV, "address", spec.vtep_mac, "mtu", str(FLANNEL_MTU))
        self._ip(role, "addr", "add", f"{spec.vtep_ip}/32", "dev", VXLAN_DEV)
        self._ip(role, "link", "set", VXLAN_DEV, "up")
        # cni0, as the bridge CNI plugin creates it.
        self._ip(role, "link", "add", BRIDGE, "type", "bridge")
        self._ip(role, "link", "set", BRIDGE, "address", spec.cni0_mac, "mtu", str(FLANNEL_MTU))
        self._ip(role, "addr", "add", f"{spec.bridge_ip}/24", "dev", BRIDGE)
        self._ip(role, "link", "set", BRIDGE, "up")
        for pod, ip in spec.pods:
            host_if = self.host_veth(pod)
            self._veth(pod, "eth0", role, host_if)
            self._ip(role, "link", "set", host_if, "mtu", str(FLANNEL_MTU), "master", BRIDGE)
            self._ip(role, "link", "set", host_if, "type", "bridge_slave", "hairpin", "on")
            self._ip(role, "link", "set", host_if, "up")
            self._ip(pod, "link", "set", "eth0", "mtu", str(FLANNEL_MTU), "up")
            self._ip(pod, "addr", "add", f"{ip}/24", "dev", "eth0")
            self._ip(pod, "route", "add", CLUSTER_CIDR, "via", spec.bridge_ip, "dev", "eth0")
            self._ip(pod, "route", "add", "default", "via", spec.bridge_ip, "dev", "eth0")

    def _build_flannel_peers(self, spec: NodeSpec) -> None:
        """What flanneld programs for every other node's lease (vxlan backend, DirectRouting off)."""
        for other in NODES.values():
            if other.role == spec.role:
                continue
            self._ip(spec.role, "route", "add", other.pod_cidr, "via", other.vtep_ip, "dev", VXLAN_DEV,
                     "onlink")
            self._ip(spec.role, "neigh", "replace", other.vtep_ip, "dev", VXLAN_DEV, "lladdr",
                     other.vtep_mac, "nud", "permanent")
            sh(["bridge", "fdb", "append", other.vtep_mac, "dev", VXLAN_DEV, "dst", other.ip, "self",
                "permanent"], ns=self.ns[spec.role])

    @staticmethod
    def host_veth(pod: str) -> str:
        return "veth" + pod.replace("-", "")[:10]

    def _start_agents(self) -> None:
        for pod in POD_IPS:
            self.agents[pod] = Agent(self.ns[pod], POD_PORTS)
        for role in NODES:
            self.agents[role] = Agent(self.ns[role], NODE_PORTS_LISTENING)
        self.agents["world"] = Agent(self.ns["world"], ())
        for role in NODES:
            self.monitors[role] = TraceMonitor(self.ns[role], self.agents[role])

    def close(self) -> None:
        # Cleanup goes on whatever one process does: the namespaces must go.
        procs: list[TraceMonitor | Agent] = [*self.monitors.values(), *self.agents.values()]
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.stop()
        for name in reversed(self._namespaces):
            sh(["ip", "netns", "del", name], check=False)
        self._namespaces.clear()

    # -- node state -----------------------------------------------------------------------------

    def reset(self) -> None:
        """The baseline every scenario starts from: what kubeadm + flannel leave on a node."""
        for role in NODES:
            self.set_ip_forward(role, True)
            self.set_rp_filter(role, 0)
            self.set_bridge_nf_call_iptables(role, True)
            self.set_default_route(role, True)
            self._sysctl(role, "net.ipv4.conf.all.route_localnet", "1")

    def set_ip_forward(self, role: str, on: bool) -> None:
        # Writing ip_forward also sets conf.all and every conf.<if>.forwarding.
        self._sysctl(role, "net.ipv4.ip_forward", "1" if on else "0")

    def set_rp_filter(self, role: str, mode: int) -> None:
        """conf.all.rp_filter; the kernel uses max(conf.all, conf.<if>), and every conf.<if> is 0."""
        self._sysctl(role, "net.ipv4.conf.all.rp_filter", str(mode))

    def set_bridge_nf_call_iptables(self, role: str, on: bool) -> None:
        """Per network namespace on this kernel (checked; see docs/lab.md)."""
        path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        sh(["sh", "-c", f"echo {1 if on else 0} > {path}"], ns=self.ns[role])
        got = sh(["cat", path], ns=self.ns[role]).stdout.strip()
        if got != ("1" if on else "0"):
            raise LabError(f"bridge-nf-call-iptables is {got} in {self.ns[role]}")

    def set_default_route(self, role: str, present: bool) -> None:
        if present:
            self._ip(role, "route", "replace", "default", "via", GATEWAY_IP, "dev", UPLINK)
        else:
            sh(["ip", "-n", self.ns[role], "route", "del", "default"], check=False)

    def sysctl_value(self, role: str, key: str) -> str:
        return sh(["sysctl", "-n", key], ns=self.ns[role]).stdout.strip()

    def route_get(self, role: str, dst: str, src: str | None = None,
                  iif: str | None = None) -> RouteGet:
        args = ["ip", "route", "get", dst]
        if src:
            args += ["from", src]
        if iif:
            args += ["iif", iif]
        proc = sh(args, ns=self.ns[role], check=False)
        text = (proc.stdout.splitlines() or [""])[0].strip() if proc.returncode == 0 else proc.stderr.strip()
        via, dev = _route_get_parse(text) if proc.returncode == 0 else (None, None)
        return RouteGet(f"ip netns exec <{role}> {' '.join(args)}", proc.returncode == 0, via, dev, text)

    # -- rules and bundles ----------------------------------------------------------------------

    def load(self, name: str, rulesets: dict[str, str] | None = None) -> Path:
        """Load each node's ruleset, write both bundles to a fresh scenario directory, arm TRACE.

        Change node state (sysctls, routes) before calling this: the bundles describe the moment
        they were collected. Returns the scenario directory, holding nodeA/ and nodeB/.
        """
        rulesets = rulesets or {role: node_ruleset(role) for role in NODES}
        self._scenarios += 1
        scen = self.dump_dir / f"{self._scenarios:03d}-{name}"
        scen.mkdir(parents=True)
        for role in NODES:
            ns = self.ns[role]
            sh(["nft", "flush", "ruleset"], ns=ns)
            sh(["iptables-restore"], ns=ns, stdin=rulesets[role])
            sh(["conntrack", "-F"], ns=ns, check=False)
        self.warm_up_neighbours()
        for role in NODES:
            self.collect_bundle(role, scen / role)
        for role in NODES:
            self.monitors[role].install_trace_rules()
            # A probe masqueraded on the other node (MASQUERADE --random-fully to its flannel.1
            # address) arrives here with a source port outside the probe range: trace the first
            # packets from the peers' VTEP addresses too (TCP SYNs, and UDP).
            for other in NODES.values():
                if other.role == role:
                    continue
                for match in (["-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN,ACK", "SYN"],
                              ["-p", "udp", "-m", "udp", "!", "--dport", str(VXLAN_PORT)]):
                    sh(["iptables", "-t", "raw", "-I", "PREROUTING", "-s", f"{other.vtep_ip}/32",
                        *match, "-j", "TRACE"], ns=self.ns[role])
            # The VXLAN device picks the outer UDP source port from the inner flow's hash, in
            # 32768-60999, so most encapsulated packets would match the probe range and be traced
            # too (every packet of the connection, both nodes): enough events to overflow
            # xtables-monitor. Ahead of the TRACE rules (raw is not in the dump), ACCEPT ends the
            # raw table for the underlay packets only; every other table still sees them.
            for chain in ("PREROUTING", "OUTPUT"):
                sh(["iptables", "-t", "raw", "-I", chain, "1", "-p", "udp", "-m", "udp", "--dport",
                    str(VXLAN_PORT), "-j", "ACCEPT"], ns=self.ns[role])
        for role in NODES:
            self.monitors[role].wait_ready()
        return scen

    def collect_bundle(self, role: str, out: Path) -> Path:
        """The docs/bundle.md files, captured inside the node namespace."""
        spec, ns = NODES[role], self.ns[role]
        out.mkdir(parents=True, exist_ok=True)
        (out / "iptables-save.txt").write_text(sh(["iptables-save"], ns=ns).stdout)
        for fname, cmd in BUNDLE_COMMANDS.items():
            (out / fname).write_text(sh(cmd, ns=ns, check=False).stdout)
        sysctls = sh(["sysctl", "-a"], ns=ns, check=False).stdout.splitlines()
        (out / "sysctl.txt").write_text(
            "".join(line + "\n" for line in sysctls if BUNDLE_SYSCTL.match(line)))
        (out / "hostname.txt").write_text(spec.name + "\n")
        (out / "flannel-subnet.env").write_text(
            f"FLANNEL_NETWORK={CLUSTER_CIDR}\nFLANNEL_SUBNET={spec.bridge_ip}/24\n"
            f"FLANNEL_MTU={FLANNEL_MTU}\nFLANNEL_IPMASQ=true\n")
        (out / "node.yaml").write_text(
            f"name: {spec.name}\nhostname: {spec.name}\nnode_ips: [{spec.ip}]\n"
            f"pod_cidr: {spec.pod_cidr}\ncluster_cidr: {CLUSTER_CIDR}\n"
            f"service_cidr: {SERVICE_CIDR}\nproxy_mode: iptables\ncni: flannel\n"
            "flannel_backend: vxlan\n")
        return out

    def warm_up_neighbours(self) -> None:
        """Every pod talks to its bridge once, so the node's ARP table and cni0's fdb know its
        port, as on a node with running pods. Done before TRACE is armed."""
        for pod, ip in POD_IPS.items():
            gw = NODES[POD_NODE[pod]].bridge_ip
            self.agents[pod].send("udp", ip, 0, gw, netns.CANARY_PORT, timeout=0.05)

    # -- probing --------------------------------------------------------------------------------

    def _next_sport(self) -> int:
        while True:
            port = self._rng.choice(PROBE_SPORTS)
            if port not in self._used_sports:
                self._used_sports.add(port)
                return port

    def probe(self, flow: ClusterFlow, *, timeout: float = 0.9) -> ClusterResult:
        try:
            return self._probe_once(flow, timeout)
        except MonitorLost:
            for mon in self.monitors.values():
                mon.ensure_running()
            return self._probe_once(flow, timeout)

    def _conntrack(self, role: str, proto: str, src: str, sport: int) -> ConntrackEntry | None:
        out = sh(["conntrack", "-L", "-p", proto], ns=self.ns[role], check=False).stdout
        return next((e for e in parse_conntrack(out) if e.orig_src == src and e.orig_sport == sport),
                    None)

    def _probe_once(self, flow: ClusterFlow, timeout: float) -> ClusterResult:
        for mon in self.monitors.values():
            mon.ensure_running()
        sport = self._next_sport()
        starts: dict[str, int] = {}
        for role, mon in self.monitors.items():
            mark = mon.mark()
            if mark is None:
                raise MonitorLost(f"{role}: trace monitor lost its canary before {flow}: {mon.health()}")
            starts[role] = mark
        before = {role: _read_counters(self.ns[role]) for role in NODES}
        counts = {role: a.recv_count() for role, a in self.agents.items()}
        res = str(self.agents[flow.client].send(flow.proto, flow.src, sport, flow.dst, flow.dport,
                                                timeout=timeout).get("result"))
        keys = {(flow.src, sport)}
        delivery = self._await_delivery(counts, flow, keys, res in ("connected", "reply"))
        ends: dict[str, int] = {}
        for role, mon in self.monitors.items():
            mark = mon.mark()
            if mark is None:
                raise MonitorLost(f"{role}: trace monitor lost its canary after {flow}: {mon.health()}")
            ends[role] = mark
        after = {role: _read_counters(self.ns[role]) for role in NODES}

        # Follow the packet node by node: on its first node by (src, sport); after a masquerade
        # conntrack names the new (src, sport). The IP ID survives NAT and VXLAN.
        order = [flow.start] + [r for r in NODES if r != flow.start]
        events_by_role = {role: parse_trace_lines(self.monitors[role].lines(starts[role], ends[role]))
                          for role in NODES}
        entries: dict[str, ConntrackEntry | None] = {}
        for role in order:
            found = None
            for src, sp in keys:
                found = found or self._conntrack(role, flow.proto, src, sp)
            entries[role] = found
            if found is not None and found.snat:
                keys.add((found.reply_dst, found.reply_dport))
        ip_id: str | None = None
        observations: list[NodeObservation] = []
        for role in order:
            mine = [e for e in events_by_role[role]
                    if (e.packet.get("SRC"), _int(e.packet.get("SPORT"))) in keys]
            if mine and ip_id is None:
                ip_id = mine[0].packet.get("ID")
            mine = [e for e in mine if e.packet.get("ID") == ip_id]
            if not mine:
                continue
            observations.append(NodeObservation(role, mine, entries[role], None,
                                                {k: after[role].get(k, 0) - before[role].get(k, 0)
                                                 for k in COUNTERS}))
        for o in observations:
            o.route = self._kernel_route(o)
        if delivery is None:
            delivery = self._find_delivery(counts, flow, keys)
        all_events = [e for o in observations for e in o.events]
        if not all_events and res.startswith("oserror:"):
            verdict = "NO_ROUTE" if res == "oserror:101" else "LOST"
        else:
            verdict = verdict_of(all_events, delivered=delivery is not None, client_result=res)
        return ClusterResult(flow, sport, verdict, observations, delivery, res)

    def _kernel_route(self, o: NodeObservation) -> RouteGet:
        """`ip route get` for the packet as this node routed it: after DNAT, before SNAT."""
        post = [e for e in o.events if e.hook in ("FORWARD", "POSTROUTING")]
        if o.in_iface is None:
            post = [e for e in o.events if e.hook == "POSTROUTING"] or [
                e for e in o.events if e.hook == "OUTPUT"]
        pkt = (post[0] if post else o.events[-1]).packet
        return self.route_get(o.role, pkt.get("DST", ""), pkt.get("SRC"), o.in_iface)

    def _await_delivery(self, counts: dict[str, int], flow: ClusterFlow,
                        keys: set[tuple[str, int]], expected: bool) -> Delivery | None:
        deadline = time.monotonic() + (1.0 if expected else 0.15)
        while time.monotonic() < deadline:
            found = self._find_delivery(counts, flow, keys)
            if found is not None:
                return found
            time.sleep(0.01)
        return None

    def _find_delivery(self, counts: dict[str, int], flow: ClusterFlow,
                       keys: set[tuple[str, int]]) -> Delivery | None:
        candidates = [Delivery(role, ev["src"], int(ev["sport"]), ev["dst"], int(ev["dport"]))
                      for role, agent in self.agents.items()
                      for ev in agent.received_since(counts[role]) if ev.get("proto") == flow.proto]
        for d in candidates:
            if (d.src, d.sport) in keys:
                return d
        # Masqueraded with --random-fully before conntrack was read: the lab is quiet, so the one
        # new arrival of this protocol is this probe.
        return candidates[0] if len(candidates) == 1 else None


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def make_cluster(dump_dir: Path, seed: int = 1) -> ClusterLab:
    return netns.built(ClusterLab(prefix=netns.lab_prefix(), dump_dir=dump_dir, seed=seed))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# kptrace on both bundles, and the comparison


ClusterAnswer = netns.KptraceAnswer


def run_kptrace(bundles: list[Path], flow: ClusterFlow) -> ClusterAnswer:
    argv = [sys.executable, "-m", "kptrace", "why", f"{flow.dst}:{flow.dport}", "--from", flow.src,
            "--proto", flow.proto]
    for b in bundles:
        argv += ["--dump", str(b)]
    if flow.in_iface:
        argv += ["--in-iface", flow.in_iface]
    # An outside client's packet: kptrace picks the node it enters (the one owning the destination,
    # else the one on the client's subnet, else the first, said) itself; the kernel's first node is
    # held to its choice (disagreements: "nodes").
    argv += ["-o", "json"]
    return netns.answer_of(argv)


_KERNEL_CLASSES = {"ACCEPT": {"pass"}, "DROP": {"drop"}, "REJECT": {"reject"},
                   "VANISHED": {"drop", "no_route"}, "NO_ROUTE": {"no_route"}}
_ROUTE_TEXT = re.compile(r"(\d+\.\d+\.\d+\.\d+) (?:via (\S+) )?dev (\S+)")


def kptrace_routes(branch: dict[str, Any]) -> dict[str, tuple[str | None, str]]:
    """Per node label, the last route kptrace's branch took there: (next hop, egress device)."""
    out: dict[str, tuple[str | None, str]] = {}
    for s in branch.get("steps") or []:
        # The overlay's own (encapsulated) packet has routes of its own; the traced packet's are compared.
        if s.get("hook") != "routing" or s.get("action") != "ROUTE" or s.get("encapsulated"):
            continue
        m = _ROUTE_TEXT.search(s.get("text") or "")
        if m:
            out[str(s.get("node"))] = (m.group(2), m.group(3))
    return out


def _steps_on(branch: dict[str, Any], node: str) -> list[dict[str, Any]]:
    return [s for s in branch.get("steps") or [] if s.get("node") == node]


def _nodes_of(branch: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(str(s.get("node")) for s in branch.get("steps") or [] if s.get("node")))


def _final_node(branch: dict[str, Any]) -> str | None:
    eg = branch.get("egress") or {}
    if eg.get("node"):
        return str(eg["node"])
    nodes = _nodes_of(branch)
    return nodes[-1] if nodes else None


def _is_subsequence(needles: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)


def disagreements(kernel: ClusterResult, answer: ClusterAnswer, tables: set[str]) -> list[str]:
    """Every way kptrace's multi-node answer differs from what the kernel did."""
    problems: list[str] = []
    kclasses = _KERNEL_CLASSES.get(kernel.verdict)
    if kclasses is None:
        return [f"kernel outcome {kernel.verdict} is not comparable (lab problem)"]
    top = answer.disposition
    if top != "MIXED" and disposition_class(top) not in kclasses:
        problems.append(f"disposition: kptrace {top}, kernel {kernel.verdict}")
    expected_rc = 0 if kclasses == {"pass"} and kernel.reply_ok is not False else 1
    if top != "MIXED" and answer.exit_code != expected_rc:
        problems.append(f"exit code: kptrace {answer.exit_code}, expected {expected_rc} for kernel "
                        f"{kernel.verdict} (reply {'lost' if kernel.reply_ok is False else 'ok/unknown'})")

    kdnat = kernel.dnat
    if kdnat is not None and kdnat not in answer.endpoints:
        problems.append(f"endpoint: kernel DNAT to {kdnat}, kptrace endpoints {answer.endpoints}")
    same = [b for b in answer.branches if (b.get("dnat") or None) == kdnat]
    if not same:
        problems.append(f"no kptrace branch with dnat={kdnat}; branches have "
                        f"{[b.get('dnat') for b in answer.branches]}")
        return problems
    branch = min(same, key=lambda b: disposition_class(str(b.get("disposition"))) not in kclasses)
    if disposition_class(str(branch.get("disposition"))) not in kclasses:
        problems.append(f"branch dnat={kdnat}: kptrace {branch.get('disposition')}, kernel {kernel.verdict}")
    if kernel.masquerade is not None:
        kp = bool(branch.get("masquerade")) or branch.get("snat") not in (None, "", False)
        if kp != kernel.masquerade:
            first = kernel.first
            problems.append(f"masquerade: kptrace {kp}, kernel {kernel.masquerade} (conntrack snat "
                            f"{first.conntrack.snat if first and first.conntrack else None})")
    reply = branch.get("reply")
    if isinstance(reply, dict) and kernel.reply_ok is not None:
        rclass = disposition_class(str(reply.get("disposition")))
        if kernel.reply_ok and rclass in ("drop", "reject", "no_route"):
            problems.append(f"reply: kptrace {reply.get('disposition')} ({reply.get('problem')}), but "
                            f"the kernel delivered it (client {kernel.client_result})")
        if not kernel.reply_ok and rclass == "pass":
            problems.append(f"reply: kptrace {reply.get('disposition')}, but the kernel lost it "
                            f"(probe delivered, client {kernel.client_result})")
    elif kernel.reply_ok is False:
        problems.append("reply: the kernel lost the reply (probe delivered, client timed out); "
                        "kptrace's branch predicts no failed reply")

    # Node by node: was it there, which way did it leave, by which next hop, which rules.
    routes = kptrace_routes(branch)
    knodes = [o.name for o in kernel.nodes]
    pnodes = _nodes_of(branch)
    if not knodes and kernel.verdict == "NO_ROUTE":
        # No packet was ever sent: kptrace's only node is the one whose socket got the error.
        knodes = [NODES[kernel.flow.start].name]
    if knodes != pnodes:
        problems.append(f"nodes: the kernel saw the packet on {knodes}, kptrace's branch visits {pnodes}")
    for o in kernel.nodes:
        steps = _steps_on(branch, o.name)
        if not steps:
            continue
        if o.egress is not None:
            got = routes.get(o.name)
            if got is None:
                problems.append(f"{o.name}: the kernel sent it out {o.egress} (TRACE OUT=); kptrace has "
                                "no route step there")
            else:
                if got[1] != o.egress:
                    problems.append(f"{o.name} egress: kptrace {got[1]}, kernel {o.egress} (TRACE OUT=)")
                if o.route is not None and o.route.ok and got[0] != o.route.via:
                    problems.append(f"{o.name} next hop: kptrace {got[0]}, kernel {o.route.via} ({o.route})")
        krules = [normalize_rule(e.text) for e in o.rules if e.table in tables]
        texts = [normalize_rule(s.get("text") or "") for s in steps]
        missing = [r for r in krules if r not in texts]
        for r in missing:
            problems.append(f"{o.name}: rule the kernel matched is not among kptrace's steps: {r}")
        if not missing and not _is_subsequence(krules, texts):
            problems.append(f"{o.name}: kptrace's steps hold the kernel's rules in another order")
        for e in o.events:
            if e.kind == "policy" and e.table in tables and not any(
                    s.get("table") == e.table and s.get("chain") == e.chain and s.get("rule") is None
                    for s in steps):
                problems.append(f"{o.name}: the kernel applied the {e.table} {e.chain} policy "
                                f"({e.verdict}); kptrace has no step for it")
    # Where it ended: the node that received it, and the interface it left the last node by.
    if kernel.delivery is not None:
        final = _final_node(branch)
        if final != kernel.receiving_node:
            problems.append(f"remote node: kernel delivered on {kernel.receiving_node} "
                            f"({kernel.delivery.ns_role}), kptrace ends on {final}")
        last = kernel.nodes[-1] if kernel.nodes else None
        peg = branch.get("egress") or {}
        if last is not None and last.egress and peg.get("iface") != last.egress:
            problems.append(f"final egress: kptrace {peg.get('iface')} on {final}, kernel {last.egress} "
                            f"on {last.name}")
        if last is not None and last.route is not None and last.route.ok and last.egress and (
                peg.get("next_hop") != last.route.via):
            problems.append(f"final next hop: kptrace {peg.get('next_hop')}, kernel {last.route.via} "
                            f"({last.route})")
    elif kernel.nodes and pnodes and pnodes[-1] != kernel.stopped_on:
        problems.append(f"stopped on: the kernel lost it on {kernel.stopped_on}, kptrace's branch "
                        f"ends on {pnodes[-1]}")
    return problems


def _trim(report: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in report.items() if k not in ("inputs", "findings")}
    return keep


def format_report(kernel: ClusterResult, answer: ClusterAnswer, problems: list[str]) -> str:
    return "\n".join([
        "kptrace disagrees with the kernel:",
        *[f"  - {p}" for p in problems],
        kernel.describe(),
        "kptrace: " + " ".join(answer.argv[2:]),
        f"  exit={answer.exit_code}",
        json.dumps(_trim(answer.report), indent=1)[:8000],
    ])


def dump_tables(scen: Path) -> set[str]:
    return {line[1:].strip() for role in NODES
            for line in (scen / role / "iptables-save.txt").read_text().splitlines()
            if line.startswith("*")}


def compare(kernel: ClusterResult, scen: Path) -> tuple[list[str], ClusterAnswer]:
    """kptrace on the bundles of both nodes; the disagreements (empty: it agrees) and its answer."""
    answer = run_kptrace([scen / role for role in NODES], kernel.flow)
    return disagreements(kernel, answer, dump_tables(scen)), answer
