"""Routing, links, neighbours and the bridge: what decides where a packet goes after netfilter."""

from __future__ import annotations

from kptrace.model._compiled import dataclass
from kptrace.model.flow import IPAddress
from kptrace.model.netfilter import IPNetwork
from kptrace.model.source import Source

# iproute2's table ids; `ip route show table all` prints names for these.
TABLE_IDS = {"local": 255, "main": 254, "default": 253, "unspec": 0}


@dataclass(frozen=True, slots=True)
class Nexthop:
    gateway: IPAddress | None  # `via`; None for a directly connected route
    dev: str | None
    weight: int = 1  # multipath `weight N` (ECMP share)
    onlink: bool = False
    # Other RTNH flags as printed: dead linkdown pervasive offload trap. The kernel never picks a
    # `dead` nexthop, nor a `linkdown` one when ignore_routes_with_linkdown is set.
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    """One `ip route show table all` line (or `ip -j route` entry)."""

    dst: IPNetwork  # `default` is 0.0.0.0/0 or ::/0
    table: str = "main"  # "main", "local", "default" or a number as text
    type: str = "unicast"  # unicast local broadcast blackhole unreachable prohibit throw multicast anycast nat
    nexthops: tuple[Nexthop, ...] = ()
    proto: str | None = None
    scope: str | None = None
    src: IPAddress | None = None  # preferred source address
    metric: int = 0
    tos: str | None = None
    source: Source | None = None
    nhid: int | None = None  # `nhid N`: the nexthop object; its resolved via/dev are in nexthops
    mtu: int | None = None  # `mtu [lock] N` route metric
    pref: str | None = None  # IPv6 router preference: low medium high
    # Words the parser does not model and that may change what the route matches or where it sends
    # (`from` source-specific routes, `encap`, …), verbatim. Non-empty: never guess past this route.
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One `ip rule` line: `32766: from all lookup main`."""

    priority: int
    action: str = "lookup"  # lookup, blackhole, unreachable, prohibit, goto, nop
    table: str | None = "main"
    src: IPNetwork | None = None  # `from`; None is `all`
    dst: IPNetwork | None = None  # `to`
    iif: str | None = None
    oif: str | None = None
    fwmark: tuple[int, int] | None = None  # (value, mask)
    invert: bool = False  # `not`
    source: Source | None = None
    goto: int | None = None  # `goto N`: continue at the first rule with priority >= N
    suppress_prefixlength: int | None = None  # a lookup result with prefix length <= N is ignored
    # Selectors and words not modelled (`ipproto tcp`, `dport 80`, `uidrange`, `tos`, `[detached]`),
    # verbatim. Non-empty: whether the rule matches is unknown.
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Vxlan:
    vni: int
    local: IPAddress | None = None
    dev: str | None = None  # underlay device
    dstport: int = 8472  # Linux's default; flannel uses 8472, the IANA port is 4789


@dataclass(frozen=True, slots=True)
class Link:
    """One `ip -d link` entry."""

    name: str
    index: int | None = None
    kind: str | None = None  # veth bridge vxlan dummy ipvlan … None for a plain device
    master: str | None = None  # the bridge a port belongs to
    mtu: int | None = None
    state: str | None = None  # UP DOWN UNKNOWN LOWERLAYERDOWN
    flags: tuple[str, ...] = ()  # <BROADCAST,MULTICAST,UP,LOWER_UP>
    mac: str | None = None
    peer: str | None = None  # `eth0@if7` -> "if7"; a veth's other end
    vxlan: Vxlan | None = None
    netns_id: int | None = None  # `link-netnsid 0`
    source: Source | None = None
    # `link-netns cni-…`: text names the peer's namespace instead of its id when it has a name
    # (`ip -j` still gives the id). Either one set means the peer is in another namespace.
    netns: str | None = None

    @property
    def up(self) -> bool:
        return "UP" in self.flags and self.state not in ("DOWN", "LOWERLAYERDOWN")


@dataclass(frozen=True, slots=True)
class Neighbor:
    """One `ip neigh` line: `10.244.2.0 dev flannel.1 lladdr 9a:… PERMANENT`."""

    dst: IPAddress
    dev: str
    lladdr: str | None = None
    state: str | None = None  # PERMANENT REACHABLE STALE DELAY PROBE FAILED INCOMPLETE NOARP
    router: bool = False
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class FdbEntry:
    """One `bridge fdb show` line: `9a:… dev flannel.1 dst 192.168.56.12 self permanent`."""

    mac: str
    dev: str
    master: str | None = None
    dst: IPAddress | None = None  # VXLAN remote (underlay) address
    vlan: int | None = None
    flags: tuple[str, ...] = ()  # self master permanent static extern_learn offload
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class BridgePort:
    """One `bridge link show` (or `brctl show`) port: `veth1234 master cni0 state forwarding … hairpin on`."""

    name: str
    master: str
    state: str | None = None  # forwarding blocking disabled learning listening
    hairpin: bool | None = None  # None: not shown (needs `bridge -d link`)
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class FlannelSubnet:
    """`/run/flannel/subnet.env`."""

    network: IPNetwork | None
    subnet: IPNetwork | None
    mtu: int | None
    ipmasq: bool | None
    source: Source | None = None


@dataclass(frozen=True, slots=True)
class KernelModule:
    name: str
    source: Source | None = None
