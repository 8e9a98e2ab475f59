"""The input's conntrack table (`conntrack -L`): the entry a traced packet belongs to, and stale entries.

conntrack looks a packet's 5-tuple up in both directions: a match on an entry's original tuple makes
the packet part of that connection in the original direction (state NEW while the entry has seen no
reply, `[UNREPLIED]`, ESTABLISHED after), a match on its reply tuple makes it the answer
(ESTABLISHED). Such a packet is not its connection's first: its NAT is the one the entry records
(the reply tuple differs from the inverted original), and nat chains set up nothing new
(nf_nat_setup_info() returns at once for a confirmed connection).

A UDP flow to a ClusterIP recorded before the Service had endpoints (or before kube-proxy wrote its
rules) has an entry without DNAT; as long as packets keep it alive, every later packet of that
5-tuple goes to the ClusterIP untranslated. kube-proxy clears such entries when endpoints appear
(`conntrack -D --orig-dst <ClusterIP> -p udp`); one it missed is a classic DNS outage.
`stale_service_entries()` finds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from kptrace.model.flow import IPAddress
from kptrace.model.node import ConntrackEntry, Node
from kptrace.walkers.service_addr import IPNetwork, service_address

ORIGINAL, REPLY = "original", "reply"


@dataclass(frozen=True, slots=True)
class EntryMatch:
    entry: ConntrackEntry
    direction: str  # ORIGINAL or REPLY

    @property
    def cite(self) -> str | None:
        return str(self.entry.source) if self.entry.source is not None else None

    @property
    def unreplied(self) -> bool:
        return "UNREPLIED" in self.entry.flags

    @property
    def ctstate(self) -> str:
        """The state conntrack gives this packet: NEW for the original direction of an entry that has
        seen no reply yet, ESTABLISHED otherwise."""
        if self.direction == ORIGINAL and self.unreplied:
            return "NEW"
        return "ESTABLISHED"

    @property
    def dnat(self) -> tuple[IPAddress, int | None] | None:
        """The destination the connection is translated to, when the entry records a DNAT."""
        e = self.entry
        if e.reply is None:
            return None
        if (e.reply.src, e.reply.sport) != (e.original.dst, e.original.dport):
            return e.reply.src, e.reply.sport
        return None

    @property
    def snat(self) -> tuple[IPAddress, int | None] | None:
        e = self.entry
        if e.reply is None:
            return None
        if (e.reply.dst, e.reply.dport) != (e.original.src, e.original.sport):
            return e.reply.dst, e.reply.dport
        return None


def _proto(p: str) -> str:
    return {"6": "tcp", "17": "udp", "1": "icmp", "132": "sctp", "58": "icmp6", "ipv6-icmp": "icmp6"}.get(p.lower(), p.lower())


def find_entry(node: Node, proto: str, src: IPAddress, sport: int | None, dst: IPAddress,
               dport: int | None) -> EntryMatch | None:
    """The entry this packet belongs to: its 5-tuple as an entry's original or reply tuple.

    A flow without a source port (or without ports, icmp) matches no entry: conntrack needs the whole
    tuple, and kptrace does not pick one of several connections."""
    if node.conntrack is None or (proto in ("tcp", "udp", "sctp") and (sport is None or dport is None)):
        return None
    for e in node.conntrack:
        if _proto(e.proto) != proto or (e.zone or 0) != 0:
            continue
        o, r = e.original, e.reply
        if (o.src, o.sport, o.dst, o.dport) == (src, sport, dst, dport):
            return EntryMatch(e, ORIGINAL)
        if r is not None and (r.src, r.sport, r.dst, r.dport) == (src, sport, dst, dport):
            return EntryMatch(e, REPLY)
    return None


def entries_for(node: Node, proto: str, src: IPAddress, dst: IPAddress, dport: int | None) -> list[ConntrackEntry]:
    """Entries from src to dst:dport with any source port (to say so when --sport is not given)."""
    return [e for e in node.conntrack or () if _proto(e.proto) == proto and e.original.src == src
            and e.original.dst == dst and (dport is None or e.original.dport == dport)]


@dataclass(frozen=True, slots=True)
class StaleEntry:
    """A conntrack entry to a Service port that was never translated, and how to clear it."""

    entry: ConntrackEntry
    service: str  # the Service port as kube-proxy's rule names it ("kube-system/kube-dns:dns")
    rule: str | None  # file:line of the KUBE-SERVICES rule that would DNAT it now
    command: str  # the `conntrack -D` that deletes exactly this entry
    message: str

    @property
    def source(self) -> str | None:
        return str(self.entry.source) if self.entry.source is not None else None


def delete_command(e: ConntrackEntry) -> str:
    """`conntrack -D` for exactly this entry (its original tuple)."""
    o = e.original
    parts = ["conntrack", "-D", "-p", _proto(e.proto), "--orig-src", str(o.src), "--orig-dst", str(o.dst)]
    if o.sport is not None:
        parts += ["--orig-port-src", str(o.sport)]
    if o.dport is not None:
        parts += ["--orig-port-dst", str(o.dport)]
    if e.family == 6:
        parts.insert(2, "-f")
        parts.insert(3, "ipv6")
    return " ".join(parts)


def stale_service_entries(node: Node, service_cidrs: tuple[IPNetwork, ...] = (),
                          protos: tuple[str, ...] = ("udp",)) -> list[StaleEntry]:
    """Entries to a Service address and port that kube-proxy's rules translate now, but whose reply
    tuple shows no translation: made before the rules (or the endpoints) existed. Every later packet
    of that 5-tuple skips the Service while the entry lives (UDP: every packet refreshes it).

    Only `protos` are looked at (UDP by default: a TCP connection made that way never completed, and
    its entry ages out); an empty list when the input has no conntrack table."""
    out: list[StaleEntry] = []
    cache: dict[IPAddress, object] = {}
    for e in node.conntrack or ():
        proto = _proto(e.proto)
        if proto not in protos or e.reply is None or (e.zone or 0) != 0:
            continue
        o, r = e.original, e.reply
        if (r.src, r.sport) != (o.dst, o.dport):
            continue  # translated: the entry follows the Service
        addr = cache.get(o.dst)
        if addr is None:
            addr = cache[o.dst] = service_address(node, o.dst, service_cidrs)
        ports = [p for p in addr.ports if p.proto == proto and (p.port is None or p.port == o.dport)]  # type: ignore[attr-defined]
        translating = [p for p in ports if "has no endpoints" not in p.name]
        if not translating:
            continue
        svc = translating[0]
        cite = f" ({e.source})" if e.source is not None else ""
        msg = (f"conntrack entry {proto} {o.src}:{o.sport} → {o.dst}:{o.dport}{cite} was never translated, but "
               f"{svc.name} ({svc.source}) DNATs that address now: while the entry lives every packet of this "
               f"5-tuple goes to {o.dst} untranslated and gets no answer")
        out.append(StaleEntry(e, svc.name, svc.source, delete_command(e), msg))
    return out

