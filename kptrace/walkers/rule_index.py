"""The rules of a long chain that can match a packet, found by destination, port and source instead of read
one by one: KUBE-SERVICES is dispatched by the packet's destination once, not scanned rule by rule.

A chain still read lazily from a large dump has its own index over its rule lines
(`parsers/iptables_scan.py`, used through `Chain.candidates`). This one is the same index over parsed
rules: a whole dump parsed up front (`--strict`, `kptrace sweep`), a chain a check or `kptrace services`
parsed whole, a chain built from a listing. A rule is left out only when it cannot match: its `-d` names
other hosts, or its one `--dport` (tcp, udp, sctp, udplite) another port, or its `-s` another host;
such a rule evaluates to False whatever else it tests (`eval_rule`: one False condition is False), so
the walk is the same as reading every rule, only shorter.

The index of a rule list is built on first use and kept while the list is the same object of the same
length. A chain edited after a walk read it must get a new rule list (what-if edits copy the chain first).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network

from kptrace.model.netfilter import Chain, Rule
from kptrace.walkers.packet import Packet

INDEX_MIN_RULES = 16  # rules left to read from `start`: fewer are read one by one
_PORT_MODULES = frozenset({"tcp", "udp", "sctp", "udplite"})


class RuleIndex:
    """Rules by their one plain destination host; of the others, by their one plain `--dport`; of those,
    by their one plain source host; every other rule is always a candidate."""

    __slots__ = ("rules", "size", "hosts", "ports", "sources", "others")

    def __init__(self, rules: list[Rule]) -> None:
        self.rules, self.size = rules, len(rules)
        self.hosts: dict[str, list[int]] = {}
        self.ports: dict[int, list[int]] = {}
        self.sources: dict[str, list[int]] = {}
        self.others: list[int] = []
        for i, r in enumerate(rules):
            keys = _hosts(r.dst.value if r.dst is not None and not r.dst.negated else None)
            if keys:
                for k in keys:
                    self.hosts.setdefault(k, []).append(i)
                continue
            port = _plain_dport(r)
            if port is not None:
                self.ports.setdefault(port, []).append(i)
                continue
            keys = _hosts(r.src.value if r.src is not None and not r.src.negated else None)
            if keys:
                for k in keys:
                    self.sources.setdefault(k, []).append(i)
            else:
                self.others.append(i)

    def candidates(self, dst: str, start: int, dport: int | None, src: str | None) -> list[int]:
        hits = [*self.others, *self.hosts.get(dst, ())]
        if dport is None:
            hits += [i for rows in self.ports.values() for i in rows]
        else:
            hits += self.ports.get(dport, ())
        if src is None:
            hits += [i for rows in self.sources.values() for i in rows]
        else:
            hits += self.sources.get(src, ())
        return sorted({i for i in hits if i >= start})


def _hosts(nets: tuple[IPv4Network | IPv6Network, ...] | None) -> list[str] | None:
    """The host addresses of `-d a,b` when each is a single host; None for anything else."""
    if not nets or any(n.prefixlen != n.max_prefixlen for n in nets):
        return None
    return [str(n.network_address) for n in nets]


def _plain_dport(rule: Rule) -> int | None:
    """N of the rule's one `--dport N` (no range, list or `!`) in a port match kptrace evaluates; None otherwise.
    A match kptrace does not model is Unknown whatever its options say, so it is never indexed."""
    found: int | None = None
    for m in rule.matches:
        for o in m.options:
            if o.name not in ("--dport", "--dports", "--sport", "--sports", "--ports"):
                continue
            if o.name != "--dport" or o.negated or m.module not in _PORT_MODULES or not m.known or found is not None:
                return None
            v = o.value()
            if not v.isdigit() or len(v) > 5:
                return None
            found = int(v)
    return found


_INDEXES: dict[int, RuleIndex] = {}


def candidates(chain: Chain, pkt: Packet, start: int) -> Iterable[int]:
    """Indexes of the rules of `chain`, from `start` on, that can match the packet."""
    n = len(chain)
    if n - start < INDEX_MIN_RULES:
        return range(start, n)
    dst, dport, src = str(pkt.dst), pkt.dport, str(pkt.src)
    found = chain.candidates(dst, start, dport, src)
    if not isinstance(found, range) or not chain.parsed:
        return found  # indexed by its lines, or still lines and short (a short lazy chain is read rule by rule)
    rules = chain.rules
    idx = _INDEXES.get(id(rules))
    if idx is None or idx.rules is not rules or idx.size != len(rules):
        idx = _INDEXES[id(rules)] = RuleIndex(rules)
    return idx.candidates(dst, start, dport, src)
