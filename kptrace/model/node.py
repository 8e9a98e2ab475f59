"""Everything kptrace knows about one node: its rulesets, addresses and settings, with their inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field
from typing import TYPE_CHECKING
from ipaddress import IPv4Interface, IPv6Interface, IPv4Network, IPv6Network

from kptrace.errors import ParseError
from kptrace.model._compiled import dataclass
from kptrace.model.flow import IPAddress
from kptrace.model.netfilter import Ruleset
from kptrace.model.source import Source

if TYPE_CHECKING:
    # In annotations only: a node's routes and observations are imported by the code that reads them.
    from kptrace.model.observed import KernelMessage, KubeletDNS, KubeNode, ResolvConf, SysValue, TraceEvent
    from kptrace.model.routing import (BridgePort, FdbEntry, FlannelSubnet, KernelModule, Link, Neighbor, PolicyRule,
                                       Route)
    from kptrace.model.trace import InputFile
    from kptrace.model.ipvs import IpsetSet, IpvsConnection, IpvsService  # IPVS nodes only: not imported for the others

IPInterface = IPv4Interface | IPv6Interface


@dataclass(frozen=True, slots=True)
class Address:
    """One `ip addr` entry: an address on an interface."""

    iface: str
    address: IPInterface
    source: Source
    scope: str = "global"


@dataclass(frozen=True, slots=True)
class Setting:
    """A sysctl value and where it was read."""

    value: str
    source: Source


@dataclass(frozen=True, slots=True)
class ConntrackTuple:
    """One direction of a conntrack entry: `src=… dst=… sport=… dport=…` (ICMP: `type= code= id=` in extra)."""

    src: IPAddress
    dst: IPAddress
    sport: int | None = None
    dport: int | None = None
    extra: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One `conntrack -L` (or /proc/net/nf_conntrack) entry: the original and the reply direction."""

    proto: str  # tcp udp icmp sctp … or the protocol number as text
    original: ConntrackTuple
    reply: ConntrackTuple | None
    timeout: int | None = None
    state: str | None = None  # TCP/SCTP state: ESTABLISHED TIME_WAIT SYN_SENT …
    flags: tuple[str, ...] = ()  # ASSURED UNREPLIED OFFLOAD HW_OFFLOAD
    mark: int | None = None
    zone: int | None = None
    family: int = 4
    source: Source | None = None
    unknown: tuple[str, ...] = ()  # words kept verbatim that the model has no field for


@dataclass(frozen=True, slots=True)
class ServiceUnit:
    """One `systemctl list-units --type=service` row (firewalld, ufw, …)."""

    name: str  # without .service
    load: str
    active: str
    sub: str
    description: str
    source: Source


# How much of one kind of fact the input shows. A fact of a kind the input does not show at all has no
# Evidence: it is unknown, never "empty" or "off".
COMPLETE = "complete"  # the whole output of the command that shows it (a whole iptables-save, `sysctl -a`)
EXCERPT = "excerpt"  # part of it (a grep, one chain's listing, some sysctl keys, `lsmod | grep`)


@dataclass(slots=True)
class Evidence:
    """How complete one kind of fact is, and which inputs showed it."""

    level: str  # COMPLETE or EXCERPT
    files: list[str] = field(default_factory=list)

    def add(self, level: str, file: str) -> None:
        if level == COMPLETE:
            self.level = COMPLETE
        if file not in self.files:
            self.files.append(file)


# The kinds of fact, with the bundle file that shows each whole (what a "cannot tell" asks for).
FACTS: dict[str, str] = {
    "iptables": "iptables-save.txt", "ip6tables": "ip6tables-save.txt",
    "iptables-legacy": "iptables-legacy-save.txt", "nft": "nft-ruleset.txt",
    "addresses": "ip-addr.txt", "routes": "ip-route.txt", "routes6": "ip-6-route.txt", "policy_rules": "ip-rule.txt", "links": "ip-link.txt",
    "neighbors": "ip-neigh.txt", "fdb": "bridge-fdb.txt", "bridge_ports": "bridge-link.txt",
    "sysctls": "sysctl.txt", "modules": "modules.txt", "conntrack": "conntrack.txt", "ipsets": "ipset-save.txt",
    "ipvs": "ipvsadm.txt", "services": "services.txt", "flannel": "flannel-subnet.env", "node_meta": "node.yaml",
    # Observations without a bundle file of their own (what a paste or a log shows).
    "ipvs_connections": "ipvsadm -Lnc", "trace": "the kernel's TRACE log", "kernel_log": "dmesg",
    "resolv_conf": "/etc/resolv.conf", "kube_nodes": "kubectl get node -o yaml",
    "kubelet_dns": "kubelet-config.yaml",  # kubelet's resolvConf/clusterDNS (or kubelet-cmdline.txt)
}


@dataclass(slots=True)
class Coverage:
    """What a ruleset built from listings or excerpts (not a whole iptables-save) holds."""

    complete: set[tuple[str, str]] = field(default_factory=set)  # (table, chain) listed in full
    fragments: set[tuple[str, str]] = field(default_factory=set)  # chains of which only some rules are shown
    files: list[str] = field(default_factory=list)
    # `iptables-save | grep PATTERN` shown whole: every rule holding PATTERN is in the input (the command cited).
    greps: list[tuple[str, Source]] = field(default_factory=list)


@dataclass(slots=True)
class Node:
    name: str = "node"
    rulesets: dict[int, Ruleset] = field(default_factory=dict)  # by family, 4 or 6 (iptables-save, nft backend or only one)
    legacy_rulesets: dict[int, Ruleset] = field(default_factory=dict)  # iptables-legacy-save, when both backends hold rules
    nft: object | None = None  # an nft ruleset (`nft list ruleset`), kptrace.model.nft.NftRuleset
    addresses: list[Address] = field(default_factory=list)
    node_ips: list[IPAddress] = field(default_factory=list)  # given with --node-ip
    pod_cidrs: list[IPv4Network | IPv6Network] = field(default_factory=list)  # the cluster's pod network
    pod_subnet: IPv4Network | IPv6Network | None = None  # this node's share of it (node.yaml pod_cidr)
    service_cidrs: list[tuple[IPv4Network | IPv6Network, Source | None]] = field(default_factory=list)  # node.yaml
    sysctls: dict[str, Setting] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)  # all tables, both families
    policy_rules: list[PolicyRule] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    neighbors: list[Neighbor] = field(default_factory=list)
    fdb: list[FdbEntry] = field(default_factory=list)
    bridge_ports: list[BridgePort] = field(default_factory=list)
    flannel: FlannelSubnet | None = None
    modules: list[KernelModule] | None = None  # None: no module list in the input
    ipsets: dict[str, IpsetSet] | None = None  # by set name; None: no ipset dump in the input
    ipvs: list[IpvsService] | None = None  # IPVS virtual services; None: no ipvsadm listing in the input
    inputs: list[InputFile] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    # None: no conntrack listing in the input. A large one is a parsers.conntrack.ConntrackTable (read in place).
    conntrack: Sequence[ConntrackEntry] | None = None
    # By family: rulesets built from `iptables -L`/`-S` listings and excerpts, and what they cover.
    coverage: dict[int, Coverage] = field(default_factory=dict)
    services: tuple[ServiceUnit, ...] | None = None  # None: no `systemctl list-units` in the input
    evidence: dict[str, Evidence] = field(default_factory=dict)  # by FACTS key; absent: not in the input
    errors: list[ParseError] = field(default_factory=list)  # inputs (or parts) that could not be read (KPT001)
    not_collected: dict[str, str] = field(default_factory=dict)  # bundle file -> why (manifest.json)
    # manifest.json's iptables_versions (kptrace collect): the container's and the host's `iptables-save --version`,
    # which one read the rules ("used": host | container) and whether they differ ("mismatch"); KPT209 reads it.
    iptables_versions: dict[str, object] | None = None
    # By family: iptables-legacy rules built from listings (`iptables-legacy -L`), and what they cover.
    legacy_coverage: dict[int, Coverage] = field(default_factory=dict)
    ipvs_connections: list[IpvsConnection] | None = None  # `ipvsadm -Lnc`; None: not in the input
    trace_events: list[TraceEvent] | None = None  # kernel TRACE log / xtables-monitor --trace; None: not in the input
    kernel_log: list[KernelMessage] | None = None  # dmesg / journal lines; None: not in the input
    sys_values: list[SysValue] | None = None  # single /proc and /sys values as read (also put in sysctls, bridge_ports)
    resolv_conf: list[ResolvConf] = field(default_factory=list)  # the node's, or pods' read with kubectl exec
    kube_nodes: list[KubeNode] = field(default_factory=list)  # `kubectl get node -o yaml`: this node or its peers
    # kubelet's DNS settings, from its config file and its command line (flags win); None: not in the input.
    kubelet_dns: list[KubeletDNS] | None = None
    absent: dict[str, str] = field(default_factory=dict)  # bundle file -> why the node has no such thing (manifest)
    # Why the node's nft tables of its own (firewalld, kube-proxy's nftables mode) are unknown: no nft ruleset in the
    # input and nothing showing there is none (kptrace.load); None: the input shows them, or that there are none.
    nft_unknown: str | None = None
    # Modules a filtered module list shows are not loaded (`lsmod | grep br_netfilter` printing nothing).
    modules_not_loaded: dict[str, Source] = field(default_factory=dict)
    # nft chains shown without their `table` line: which table (and so which hook) they belong to is not
    # in the input, so no walk reads them (kptrace.model.nft.NftRuleset each).
    nft_fragments: list[object] = field(default_factory=list)
    conflicts: set[str] = field(default_factory=set)  # sysctl keys two inputs disagree on: unknown
    legacy_warnings: list[Source] = field(default_factory=list)
    links_from_addr: set[str] = field(default_factory=set)  # links known only from `ip addr`: `ip link` replaces them  # `# Warning: iptables-legacy tables present` lines

    _local: tuple[int, int, set[IPAddress]] | None = field(default=None, repr=False, compare=False)

    def local_addresses(self) -> set[IPAddress]:
        # Kept while the lists only grow (loading appends): an IPVS node has 10k addresses on
        # kube-ipvs0 and a walk asks dozens of times.
        key = (len(self.addresses), len(self.node_ips))
        if self._local is None or self._local[:2] != key:
            self._local = (*key, {a.address.ip for a in self.addresses} | set(self.node_ips))
        return self._local[2]

    @property
    def knows_addresses(self) -> bool:
        return bool(self.addresses or self.node_ips)

    def merge_sysctls(self, new: dict[str, Setting]) -> None:
        """Two inputs that show one key with different values (a before/after pair) leave it unknown, whatever
        their order: the answer must not depend on which was given first."""
        for key, s in new.items():
            old = self.sysctls.get(key)
            if key in self.conflicts:
                continue
            if old is not None and old.value.strip() != s.value.strip() and old.source.file != s.source.file:
                del self.sysctls[key]
                self.conflicts.add(key)
                self.errors.append(ParseError(s.source.file, s.source.line, 1,
                                              f"{key} = {s.value.strip()} here but {old.value.strip()} at {old.source}: "
                                              f"two inputs of one node disagree (give them as two nodes' bundles); "
                                              f"the key is unknown"))
            else:
                self.sysctls[key] = s

    def saw(self, fact: str, level: str, file: str) -> None:
        """Record that an input showed this kind of fact, wholly or in part."""
        ev = self.evidence.get(fact)
        if ev is None:
            self.evidence[fact] = Evidence(level, [file])
        else:
            ev.add(level, file)

    def level(self, fact: str) -> str | None:
        """COMPLETE, EXCERPT, or None when the input does not show this kind of fact."""
        ev = self.evidence.get(fact)
        return ev.level if ev else None

    @property
    def usable(self) -> bool:
        """Did any input give kptrace something to reason on?"""
        return bool(self.evidence) or bool(self.rulesets) or self.nft is not None
