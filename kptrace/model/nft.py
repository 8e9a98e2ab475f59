"""The nftables model: `nft list ruleset` (text or `nft -j` JSON) as tables, chains, rules, sets and maps.

Both parsers build the same objects. A rule is a sequence of statements evaluated left to right
(matches, verdicts, NAT, mark changes, vmap lookups, …); expressions are kept in the shape of
nft's own JSON schema (libnftables-json(5)), so text and JSON of one ruleset compare equal. What
kptrace does not model is kept as `UnknownExpr` / `UnknownStmt` with the words it saw, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, ItemsView, Iterator, MutableMapping, ValuesView
from dataclasses import field
from typing import TypeVar

from kptrace.model._compiled import dataclass
from kptrace.model.netfilter import BUILTIN_CHAINS
from kptrace.model.source import Source

# Where nft places its named chain priorities (nft(8), "CHAIN PRIORITIES"), families ip/ip6/inet/netdev.
PRIORITY_NAMES: dict[str, int] = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
# The bridge family uses other values for the same names.
BRIDGE_PRIORITY_NAMES: dict[str, int] = {"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300}
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
# Tables iptables-nft creates, and the base chains it puts in them: iptables' own.
IPTABLES_TABLES = BUILTIN_CHAINS


@dataclass(frozen=True, slots=True)
class NftSource:
    """A Source, plus the JSON path of an object read from `nft -j` output."""

    source: Source
    path: str | None = None  # `$.nftables[12]`, or `$.nftables[3].set.elem[5]` for an element

    def __str__(self) -> str:
        # Compact `nft -j` output is one line: a line number would not say which object.
        if self.path is not None and self.source.line == 1:
            return f"{self.source.file}:{self.path}"
        return str(self.source)

    @property
    def text(self) -> str:
        return self.source.text


# --------------------------------------------------------------------------------------------
# Expressions: what a rule reads from the packet, and the constants it compares with


@dataclass(frozen=True, slots=True)
class Payload:
    """`ip daddr`, `tcp dport`, `th dport` (any transport header), `icmp type`, `@th,64,8` (raw)."""

    proto: str
    field: str


@dataclass(frozen=True, slots=True)
class Meta:
    """`meta l4proto`, `meta mark`, `iifname` (meta keys may be written bare)."""

    key: str


@dataclass(frozen=True, slots=True)
class Ct:
    """`ct state`, `ct mark`, `ct status`, `ct original ip daddr` (dir = original|reply)."""

    key: str
    dir: str | None = None
    family: str | None = None


@dataclass(frozen=True, slots=True)
class Fib:
    """`fib daddr type`, `fib saddr . iif oif`: flags (saddr/daddr, iif/oif/mark) and a result."""

    flags: tuple[str, ...]
    result: str


@dataclass(frozen=True, slots=True)
class Numgen:
    """`numgen random mod 2 [offset 0]`; mode inc counts packets."""

    mode: str
    mod: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Hash:
    """`jhash ip saddr mod 2 seed 0x0`, `symhash mod 2`: a flow hash kptrace cannot compute."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class Concat:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Binop:
    """`meta mark & 0x4000`, `mark or 0x4000` (op is the symbol: & | ^ << >>)."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Const:
    """A literal as written: `10.0.0.1`, `80`, `tcp`, `new`, `0x00004000`, `"eth0"` (quoted=True)."""

    value: str | int
    quoted: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Prefix:
    """`10.0.0.0/8`."""

    addr: str
    length: int


@dataclass(frozen=True, slots=True)
class Range:
    """`1000-2000`, `10.0.0.1-10.0.0.9`."""

    lo: Expr
    hi: Expr


@dataclass(frozen=True, slots=True)
class Flags:
    """`established,related` (a comma list of flag names: any of them, for ct state and tcp flags)."""

    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class SetRef:
    """`@service-ips`: a named set or map of the same table."""

    name: str


@dataclass(frozen=True, slots=True)
class VerdictExpr:
    """The value of a verdict map element: accept, drop, continue, return, jump X, goto X."""

    kind: str
    target: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.target}" if self.target else self.kind


@dataclass(frozen=True, slots=True)
class Element:
    """One element of a set or map (`172.30.0.41 . tcp . 80 : goto service-…`), with where it was written."""

    key: Expr
    value: Expr | None = None  # VerdictExpr for a verdict map, data for a data map
    comment: str | None = None
    source: NftSource | None = field(default=None, compare=False)
    text: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class AnonSet:
    """`{ 10.0.0.1, 10.0.0.2 }` or an anonymous map `{ 0 : goto a, 1 : goto b }`."""

    elements: tuple[Element, ...]


@dataclass(frozen=True, slots=True)
class MapLookup:
    """`ip daddr map @m` / `numgen random mod 2 map { 0 : 10.0.0.1, 1 : 10.0.0.2 }` (a data map)."""

    key: Expr
    data: SetRef | AnonSet


@dataclass(frozen=True, slots=True)
class UnknownExpr:
    text: str
    why: str = ""


Expr = (Payload | Meta | Ct | Fib | Numgen | Hash | Concat | Binop | Const | Prefix | Range | Flags | SetRef
        | VerdictExpr | AnonSet | MapLookup | UnknownExpr)


# --------------------------------------------------------------------------------------------
# Statements: one rule is a sequence of them


@dataclass(frozen=True, slots=True)
class Match:
    """`ip daddr 10.0.0.1`, `ip saddr != 10.0.0.0/8`, `ct state new` (op `in`: implicit flag or set test)."""

    left: Expr
    op: str
    right: Expr


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: str  # accept drop continue return jump goto queue
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Vmap:
    """`ip daddr . meta l4proto . th dport vmap @service-ips`, `numgen random mod 2 vmap { … }`."""

    key: Expr
    data: SetRef | AnonSet


@dataclass(frozen=True, slots=True)
class Nat:
    """dnat / snat / masquerade / redirect, with their address and port expressions."""

    kind: str
    family: str | None = None
    addr: Expr | None = None
    port: Expr | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reject:
    type: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Mangle:
    """`meta mark set meta mark | 0x4000`, `ct mark set meta mark`, `meta nftrace set 1`."""

    key: Expr
    value: Expr


@dataclass(frozen=True, slots=True)
class Counter:
    packets: int | None = None
    bytes: int | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Notrack:
    pass


@dataclass(frozen=True, slots=True)
class Passive:
    """A statement that records or rate-limits but leaves the verdict alone: log, limit, quota, flow offload…"""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class SetUpdate:
    """`update @affinity-… { ip saddr }`: changes a dynamic set for later packets."""

    op: str
    set: str
    elem: Expr


@dataclass(frozen=True, slots=True)
class Xt:
    """An iptables-nft extension nft shows as `xt match "physdev"` (without its options)."""

    type: str
    name: str


@dataclass(frozen=True, slots=True)
class UnknownStmt:
    text: str
    why: str = ""


Stmt = Match | Verdict | Vmap | Nat | Reject | Mangle | Counter | Notrack | Passive | SetUpdate | Xt | UnknownStmt


# --------------------------------------------------------------------------------------------
# Objects


@dataclass(frozen=True, slots=True)
class NftRule:
    family: str
    table: str
    chain: str
    index: int  # 1-based position in its chain
    source: NftSource
    stmts: tuple[Stmt, ...]
    text: str  # the rule as nft prints it (statements only)
    comment: str | None = None
    handle: int | None = None


@dataclass(slots=True)
class NftChain:
    family: str
    table: str
    name: str
    source: NftSource
    type: str | None = None  # filter, nat, route (None: a regular chain)
    hook: str | None = None  # prerouting, input, forward, output, postrouting, ingress
    priority: int | None = None
    priority_text: str | None = None
    policy: str = "accept"
    devices: tuple[str, ...] = ()
    comment: str | None = None
    rules: list[NftRule] = field(default_factory=list)
    handle: int | None = None
    policy_source: NftSource | None = None  # the `type … hook … policy …;` line

    @property
    def base(self) -> bool:
        return self.hook is not None


@dataclass(slots=True)
class NftSet:
    family: str
    table: str
    name: str
    source: NftSource
    is_map: bool = False
    key_type: tuple[str, ...] = ()  # `ipv4_addr . inet_proto . inet_service`
    typeof: Expr | None = None  # `typeof ip daddr . meta l4proto`
    data_type: str | None = None  # `verdict`, `ipv4_addr`, …
    flags: tuple[str, ...] = ()
    elements: list[Element] = field(default_factory=list)
    comment: str | None = None
    timeout: str | None = None
    handle: int | None = None

    @property
    def dynamic(self) -> bool:
        """A set the ruleset fills while packets pass (session affinity): the dump is a snapshot."""
        return "dynamic" in self.flags or "timeout" in self.flags or self.timeout is not None


@dataclass(slots=True)
class NftObject:
    """A table-level object kptrace keeps but does not evaluate (counter, quota, flowtable, ct helper…)."""

    kind: str
    name: str
    source: NftSource


T = TypeVar("T")


class LazyNftMap(MutableMapping[str, T]):
    """A large table's chains or sets, each parsed from its block of the dump when first looked up
    (kptrace/parsers/nft_scan.py). Iterating the values reads the whole table at once."""

    def __init__(self, names: list[str], make: Callable[[str], T], make_all: Callable[[], dict[str, T]]) -> None:
        self._order = list(names)
        self._pending = set(names)
        self._made: dict[str, T] = {}
        self._make, self._make_all = make, make_all
        self.has_xt: bool | None = None  # chains: whether the table's text holds `xt` expressions
        self.hooked: list[tuple[int, str]] | None = None  # chains: (position, name) of the base chains

    def __getitem__(self, name: str) -> T:
        got = self._made.get(name)
        if got is None:
            if name not in self._pending:
                raise KeyError(name)
            got = self._made[name] = self._make(name)
            self._pending.discard(name)
        return got

    def __setitem__(self, name: str, value: T) -> None:
        if name not in self._made and name not in self._pending:
            self._order.append(name)
        self._pending.discard(name)
        self._made[name] = value

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._pending.discard(name)
        self._made.pop(name, None)
        self._order.remove(name)

    def __contains__(self, name: object) -> bool:
        return name in self._made or name in self._pending

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def materialize(self) -> None:
        """Everything parsed, in one pass over the table (what checks and listings want)."""
        if self._pending:
            full = self._make_all()
            for name in list(self._pending):
                self._made[name] = full[name]
            self._pending.clear()

    def values(self) -> ValuesView[T]:
        self.materialize()
        return super().values()

    def items(self) -> ItemsView[str, T]:
        self.materialize()
        return super().items()


@dataclass(slots=True)
class NftTable:
    family: str
    name: str
    source: NftSource
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)
    objects: list[NftObject] = field(default_factory=list)
    comment: str | None = None
    flags: tuple[str, ...] = ()
    iptables_warning: bool = False  # `# Warning: table ip nat is managed by iptables-nft, do not touch!`
    handle: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.family, self.name)

    @property
    def label(self) -> str:
        return f"{self.family} {self.name}"

    def has_xt(self) -> bool:
        if isinstance(self.chains, LazyNftMap) and self.chains.has_xt is not None:
            return self.chains.has_xt
        return any(isinstance(s, Xt) for c in self.chains.values() for r in c.rules for s in r.stmts)

    def hooked_chains(self) -> list[tuple[int, NftChain]]:
        """(position in creation order, chain) of the chains with a hook (base chains), without
        reading a large table's other chains."""
        if isinstance(self.chains, LazyNftMap) and self.chains.hooked is not None:
            return [(i, self.chains[name]) for i, name in self.chains.hooked]
        return [(i, c) for i, c in enumerate(self.chains.values()) if c.hook is not None]

    @property
    def iptables_nft(self) -> bool:
        """Written by iptables-nft: nft's warning, xt expressions, or iptables' table and chain names."""
        if self.iptables_warning or self.has_xt():
            return True
        builtins = IPTABLES_TABLES.get(self.name)
        if builtins is None or self.family not in ("ip", "ip6") or not self.chains:
            return False
        base = [c for c in self.chains.values() if c.base]
        return bool(base) and all(c.name in builtins and c.hook == c.name.lower() for c in base)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """Something the parser kept but could not read: cited, never dropped silently."""

    source: Source
    message: str


@dataclass(slots=True)
class NftRuleset:
    file: str
    tables: dict[tuple[str, str], NftTable] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # Tables the walk leaves out (family, name) -> why, e.g. iptables-nft tables read from iptables-save.
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)

    def table(self, family: str, name: str) -> NftTable | None:
        return self.tables.get((family, name))

    def all_rules(self) -> list[NftRule]:
        return [r for t in self.tables.values() for c in t.chains.values() for r in c.rules]

    def base_chains(self) -> list[NftChain]:
        return [c for t in self.tables.values() for _, c in t.hooked_chains() if c.base]
