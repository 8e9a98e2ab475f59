"""IPVS virtual services and ipsets: what kube-proxy's IPVS mode programs besides iptables.

`ipvsadm -Ln` / `ipvsadm -Sn` become IpvsService objects (each with its real servers, IpvsDest);
`ipset save` / `ipset list` become IpsetSet objects (each with its parsed members). Every object
keeps the Source of the line it was read from.
"""

from __future__ import annotations

from dataclasses import field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from kptrace.model._compiled import dataclass
from kptrace.model.source import Source

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# ipvsadm's forward method names (fwd_name() in ipvsadm.c) and the -Sn switches that mean them.
FORWARD_METHODS = ("Masq", "Local", "Tunnel", "Route")
FORWARD_SWITCHES = {"-m": "Masq", "--masquerading": "Masq", "-i": "Tunnel", "--ipip": "Tunnel",
                    "-g": "Route", "--gatewaying": "Route"}


@dataclass(frozen=True, slots=True)
class Counters:
    """`ipvsadm --stats` (totals) or `--rate` (per second) columns, as numbers.

    ipvsadm prints large values scaled (`1234K`, `12M`) unless `--exact`; `scaled` says a value
    here was read from such a column and is a lower bound, not the exact count.
    """

    conns: int
    inpkts: int
    outpkts: int
    inbytes: int
    outbytes: int
    scaled: bool = False


@dataclass(frozen=True, slots=True)
class IpvsDest:
    """One real server of a virtual service (`  -> 10.244.1.5:8080  Masq  1  0  0`)."""

    host: str  # as printed: an address, or a host name when ipvsadm ran without -n
    port: int | None  # None when printed as a service name (`:http`) that kptrace does not resolve
    source: Source
    address: IPAddress | None = None  # None when `host` is an unresolved name
    port_name: str | None = None  # `http`, when ipvsadm printed a service name
    forward: str | None = None  # Masq Local Tunnel Route; None when the listing does not show it
    weight: int | None = None
    active_conns: int | None = None  # None: this listing has no ActiveConn column
    inactive_conns: int | None = None
    persist_conns: int | None = None  # `--persistent-conn`
    upper_threshold: int | None = None  # `--thresholds`
    lower_threshold: int | None = None
    tunnel_info: str | None = None  # `--tun-info` column (`ipip`, `gue:6080,+c`, …)
    tunnel: tuple[str, ...] = ()  # -Sn: `--tun-type gue --tun-port 6080 --tun-csum`
    stats: Counters | None = None
    rate: Counters | None = None
    truncated: bool = False  # ipvsadm cuts a non-numeric name at 28 characters

    @property
    def resolved(self) -> bool:
        return self.address is not None and self.port is not None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if self.port is not None else self.port_name}"


@dataclass(frozen=True, slots=True)
class IpvsService:
    """One virtual service: `TCP  10.96.0.1:443 rr` or `FWM  100 wlc`, with its real servers."""

    protocol: str  # tcp udp sctp, or "fwmark"
    host: str | None  # the VIP as printed (None for fwmark services)
    port: int | None
    scheduler: str | None  # None when the listing does not show it (--stats, --rate, …)
    source: Source
    address: IPAddress | None = None
    port_name: str | None = None
    fwmark: int | None = None
    family: int = 4  # 6 for `[fd00::1]:80` and `FWM  5 IPv6`
    persistent: int | None = None  # persistence timeout in seconds; None: not persistent
    netmask: str | None = None  # persistence granularity (`mask 255.255.255.0`, or a prefix length for IPv6)
    pe: str | None = None  # persistence engine (`pe sip`)
    one_packet: bool = False  # `ops`: each UDP datagram scheduled on its own
    sched_flags: tuple[str, ...] = ()  # `(sh-fallback,sh-port)`, `-b flag-1`
    dests: tuple[IpvsDest, ...] = ()
    stats: Counters | None = None
    rate: Counters | None = None
    truncated: bool = False  # ipvsadm cuts a non-numeric `PROTO  name:port` at 33 characters
    listing: str = "list"  # list (-Ln), save (-Sn), stats, rate, thresholds, persistent-conn, tun-info

    @property
    def resolved(self) -> bool:
        return self.fwmark is not None or (self.address is not None and self.port is not None)

    def __str__(self) -> str:
        if self.fwmark is not None:
            return f"FWM {self.fwmark}" + (" IPv6" if self.family == 6 else "")
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.protocol.upper()} {host}:{self.port if self.port is not None else self.port_name}"


@dataclass(frozen=True, slots=True)
class IpvsConnection:
    """One `ipvsadm -Lnc` line: `TCP 14:59  ESTABLISHED 10.244.1.5:40000 10.96.0.1:443 192.168.56.10:6443`."""

    protocol: str
    expires: int  # seconds
    state: str
    client: str
    virtual: str
    dest: str
    source: Source
    pe_name: str | None = None
    pe_data: str | None = None


@dataclass(slots=True)
class IpvsTable:
    """Everything one ipvsadm listing held."""

    file: str
    services: list[IpvsService] = field(default_factory=list)
    connections: list[IpvsConnection] = field(default_factory=list)
    version: str | None = None  # `IP Virtual Server version 1.2.1 (size=4096)`
    conn_table_size: int | None = None
    numeric: bool = True  # False: ipvsadm ran without -n and printed names
    notes: list[str] = field(default_factory=list)  # what the reader should know (names not resolved, …)


@dataclass(frozen=True, slots=True)
class SetPort:
    """A port dimension value: `tcp:80`, `udp:53`, `icmp:echo-request` (8/0), `gre:0`; bitmap:port has no protocol."""

    proto: str | None  # tcp udp sctp udplite icmp icmpv6 …; None for bitmap:port
    port: int  # the port, or (type << 8 | code) for ICMP
    text: str


@dataclass(frozen=True, slots=True)
class IpsetMember:
    """One element with its extensions, as `add NAME ELEM …` or a `Members:` line shows it."""

    text: str  # the element as printed: `10.96.0.10,tcp:53`
    source: Source
    # One value per dimension of the set type: an IP network (ip, net), a SetPort (port), or the
    # raw text for dimensions kptrace does not evaluate (mac, iface, mark, set name of list:set).
    parts: tuple[IPNetwork | SetPort | str, ...] = ()
    nomatch: bool = False
    timeout: int | None = None  # seconds left when the dump was taken
    packets: int | None = None
    bytes: int | None = None
    comment: str | None = None
    options: tuple[tuple[str, str], ...] = ()  # skbmark, skbprio, skbqueue, … verbatim


@dataclass(frozen=True, slots=True)
class IpsetSet:
    """One set: `create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536`."""

    name: str
    type: str  # hash:ip,port, bitmap:port, list:set, …
    source: Source
    family: int | None = None  # 4 or 6; None for bitmap:port and list:set (family-less)
    members: tuple[IpsetMember, ...] = ()
    options: tuple[tuple[str, str], ...] = ()  # header words: hashsize 1024, timeout 600, counters "", …
    revision: int | None = None  # `ipset list` only
    references: int | None = None  # `ipset list` only
    entries: int | None = None  # `Number of entries:` (ipset list)
    members_listed: bool = True  # False for `ipset list -t` (terse: no members printed)

    @property
    def dimensions(self) -> tuple[str, ...]:
        """`hash:ip,port,net` -> ("ip", "port", "net")."""
        return tuple(self.type.partition(":")[2].split(","))

    def option(self, name: str) -> str | None:
        for k, v in self.options:
            if k == name:
                return v
        return None
