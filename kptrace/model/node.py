"""Everything kptrace knows about one node: its rulesets, addresses and settings, with their inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from ipaddress import IPv4Interface, IPv6Interface, IPv4Network, IPv6Network

from kptrace.model.flow import IPAddress
from kptrace.model.netfilter import Ruleset
from kptrace.model.routing import BridgePort, FdbEntry, FlannelSubnet, KernelModule, Link, Neighbor, PolicyRule, Route
from kptrace.model.source import Source
from kptrace.model.trace import InputFile

if TYPE_CHECKING:
    from kptrace.model.ipvs import IpsetSet, IpvsService  # IPVS nodes only: not imported for the others

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


@dataclass(slots=True)
class Coverage:
    """What a ruleset built from listings or excerpts (not a whole iptables-save) holds."""

    complete: set[tuple[str, str]] = field(default_factory=set)  # (table, chain) listed in full
    fragments: set[tuple[str, str]] = field(default_factory=set)  # chains of which only some rules are shown
    files: list[str] = field(default_factory=list)


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
    conntrack: list[ConntrackEntry] | None = None  # None: no conntrack listing in the input
    # By family: rulesets built from `iptables -L`/`-S` listings and excerpts, and what they cover.
    coverage: dict[int, Coverage] = field(default_factory=dict)

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
