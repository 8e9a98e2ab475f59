"""The iptables model: tables of chains of rules, each rule a list of matches and one target."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Generic, TypeVar

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
        for o in self.options:
            if o.name in names:
                return o
        return None


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    options: tuple[Option, ...] = ()
    goto: bool = False
    known: bool = True
    col: int = 1

    def opt(self, *names: str) -> Option | None:
        for o in self.options:
            if o.name in names:
                return o
        return None


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


@dataclass(slots=True)
class Chain:
    table: str
    name: str
    policy: str | None  # None for user-defined chains
    source: Source
    rules: list[Rule] = field(default_factory=list)
    counters: tuple[int, int] | None = None

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_CHAINS.get(self.table, ())


@dataclass(slots=True)
class Table:
    name: str
    source: Source
    chains: dict[str, Chain] = field(default_factory=dict)


@dataclass(slots=True)
class Ruleset:
    """One `iptables-save` (family 4) or `ip6tables-save` (family 6) document."""

    file: str
    family: int
    tables: dict[str, Table] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)

    def chain(self, table: str, name: str) -> Chain | None:
        t = self.tables.get(table)
        return t.chains.get(name) if t else None

    def all_rules(self) -> list[Rule]:
        return [r for t in self.tables.values() for c in t.chains.values() for r in c.rules]
