"""The iptables model: tables of chains of rules, each rule a list of matches and one target."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import field
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Generic, Protocol, TypeVar

from kptrace.model._compiled import dataclass
from kptrace.model.source import Source

IPNetwork = IPv4Network | IPv6Network
T = TypeVar("T")

# Built-in chains per table, in the order iptables-save prints them.
BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

# The tables each hook runs, in the kernel's priority order (raw -300, mangle -150, nat -100 before
# routing / +100 after it, filter 0, security 50: include/uapi/linux/netfilter_ipv4.h NF_IP_PRI_*).
HOOK_TABLES: dict[str, tuple[str, ...]] = {
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter", "security", "nat"),
    "FORWARD": ("mangle", "filter", "security"),
    "OUTPUT": ("raw", "mangle", "nat", "filter", "security"),
    "POSTROUTING": ("mangle", "nat"),
}
_TABLE_PRIORITY = {"raw": -300, "mangle": -150, "filter": 0, "security": 50}


def table_priority(table: str, hook: str) -> int:
    """Where iptables registers a table at a hook; nat is destination NAT before routing, source NAT after."""
    if table == "nat":
        return -100 if hook in ("PREROUTING", "OUTPUT") else 100
    return _TABLE_PRIORITY[table]


@dataclass(frozen=True, slots=True)
class Cond(Generic[T]):
    """A generic rule field (-p, -s, -d, -i, -o, -f) with its optional `!`."""

    value: T
    negated: bool = False
    col: int = 1
    text: str = ""  # the value as written (`10.0.0.1/32` and `10.0.0.1` parse alike)


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    values: tuple[str, ...]
    negated: bool = False
    col: int = 1

    def value(self) -> str:
        return self.values[0] if self.values else ""


def find_option(options: tuple[Option, ...], names: tuple[str, ...]) -> Option | None:
    """The first option spelled as one of names (matches and targets both keep theirs in order)."""
    return next((o for o in options if o.name in names), None)


@dataclass(frozen=True, slots=True)
class Match:
    """One `-m MODULE --opt …`; known=False keeps a module or option kptrace does not model."""

    module: str
    options: tuple[Option, ...]
    known: bool = True
    col: int = 1
    negated: bool = False  # `! -m set` style negation of the whole module is not iptables; kept for listings
    why_unknown: str = ""
    implicit: bool = False  # loaded by `-p tcp --dport …` without `-m tcp`

    def opt(self, *names: str) -> Option | None:
        return find_option(self.options, names)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    options: tuple[Option, ...] = ()
    goto: bool = False
    known: bool = True
    col: int = 1

    def opt(self, *names: str) -> Option | None:
        return find_option(self.options, names)


@dataclass(frozen=True, slots=True)
class Rule:
    table: str
    chain: str
    index: int  # 1-based position in its chain, as `iptables -L --line-numbers` shows it
    source: Source
    proto: Cond[str] | None = None
    src: Cond[tuple[IPNetwork, ...]] | None = None
    dst: Cond[tuple[IPNetwork, ...]] | None = None
    in_iface: Cond[str] | None = None
    out_iface: Cond[str] | None = None
    fragment: Cond[bool] | None = None
    matches: tuple[Match, ...] = ()
    target: Target | None = None
    counters: tuple[int, int] | None = None
    tokens: tuple[str, ...] = ()  # the rule's words after `-A CHAIN`, unquoted

    def __getattr__(self, name: str) -> Any:
        # A rule read by the fast path (parsers/iptables_fast.py) leaves `tokens` unset: few readers ask for
        # them, and 300k tuples of words are ~30 MB. They are the words of its line, made when first read.
        if name == "tokens" and LAZY_TOKENS:
            tokens = LAZY_TOKENS[0](self)
            object.__setattr__(self, "tokens", tokens)
            return tokens
        raise AttributeError(name)

    @property
    def text(self) -> str:
        return self.source.text

    def comment(self) -> str | None:
        for m in self.matches:
            if m.module == "comment":
                o = m.opt("--comment")
                if o is not None:
                    return o.value()
        return None


# How a rule whose `tokens` were left unset makes them (set by kptrace.parsers.iptables_fast, which makes such rules).
LAZY_TOKENS: list[Callable[[Rule], tuple[str, ...]]] = []


class RawRules(Protocol):
    """A chain's rules still as text; parsed one at a time when a walk reads them."""

    def __len__(self) -> int: ...

    def parse(self, i: int) -> Rule: ...

    def candidates(self, dst: str, start: int, dport: int | None = None, src: str | None = None) -> Iterable[int]: ...


class Chain:
    """A chain and its rules. Rules from a large dump stay text until read (see parsers/iptables_save.py)."""

    __slots__ = ("table", "name", "policy", "source", "counters", "_rules", "_raw")

    def __init__(self, table: str, name: str, policy: str | None, source: Source, rules: list[Rule] | None = None,
                 counters: tuple[int, int] | None = None, raw: RawRules | None = None) -> None:
        self.table, self.name, self.policy, self.source, self.counters = table, name, policy, source, counters
        self._rules: list[Rule] | None = rules if rules is not None else ([] if raw is None else None)
        self._raw = raw

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_CHAINS.get(self.table, ())

    @property
    def rules(self) -> list[Rule]:
        """Every rule, parsed (forces a lazy chain)."""
        if self._rules is None:
            assert self._raw is not None
            self._rules = [self._raw.parse(i) for i in range(len(self._raw))]
        return self._rules

    def __len__(self) -> int:
        return len(self._rules) if self._rules is not None else len(self._raw or ())

    @property
    def parsed(self) -> bool:
        """Whether every rule is parsed already (`rules` costs nothing more)."""
        return self._rules is not None

    def rule_at(self, i: int) -> Rule:
        if self._rules is not None:
            return self._rules[i]
        assert self._raw is not None
        return self._raw.parse(i)

    def candidates(self, dst: str, start: int = 0, dport: int | None = None, src: str | None = None) -> Iterable[int]:
        """Indexes of the rules, from start, that can match a packet to dst (and to dport, from src, if
        given): all of them unless the chain is indexed."""
        if self._raw is None or (self._rules is not None and len(self._rules) != len(self._raw)):
            return range(start, len(self))  # (a parsed chain: walkers/rule_index.py indexes its rules)
        return self._raw.candidates(dst, start, dport, src)  # parsed from these lines, or still lines


@dataclass(slots=True)
class Table:
    name: str
    source: Source
    chains: MutableChains = field(default_factory=dict)


class ChainNames(Protocol):
    """The declared chain names of a large table (a dict, or a lookup by bisection over the dump)."""

    def __contains__(self, name: object) -> bool: ...

    def __iter__(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...

    def setdefault(self, name: str, default: object = None) -> object: ...


class LazyChains(Mapping[str, Chain]):
    """Chains of a large table, made when first looked up: a 10k-service node declares 100k+ chains."""

    def __init__(self, names: ChainNames, make: object) -> None:
        self._names, self._make, self._made = names, make, {}  # type: ignore[var-annotated]

    def __getitem__(self, name: str) -> Chain:
        c = self._made.get(name)
        if c is None:
            if name not in self._names:
                raise KeyError(name)
            c = self._made[name] = self._make(name)  # type: ignore[operator]
        return c  # type: ignore[no-any-return]

    def __setitem__(self, name: str, chain: Chain) -> None:
        self._names.setdefault(name, None)
        self._made[name] = chain

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


MutableChains = dict[str, Chain] | LazyChains


@dataclass(slots=True)
class Ruleset:
    """One `iptables-save` (family 4) or `ip6tables-save` (family 6) document."""

    file: str
    family: int
    tables: dict[str, Table] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)
    scan_hints: dict[str, Any] | None = None  # what a lazy scan found, for the cache (kptrace/cache.py)
    # A whole dump's own text (str, or the mapped bytes of a large one): checks over every kube-proxy rule
    # read its lines rather than parse 300k rules. None for rulesets built from listings and excerpts.
    text: Any = None
    comments: list[Source] = field(default_factory=list)  # `# Generated by … (nf_tables)`, `# Warning: …`
    backend: str | None = None  # "nft" or "legacy" when the input says which iptables wrote it

    def chain(self, table: str, name: str) -> Chain | None:
        t = self.tables.get(table)
        return t.chains.get(name) if t else None

    def all_rules(self) -> list[Rule]:
        return [r for t in self.tables.values() for c in t.chains.values() for r in c.rules]
