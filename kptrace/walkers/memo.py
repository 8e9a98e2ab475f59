"""Hook walks shared between flows (megaflow-style): one iptables base chain's walk, memoised by what it can read.

A sweep runs the same base chains for thousands of packets that differ only in what those chains never test:
a Service of 10 endpoints runs FORWARD, POSTROUTING and the reply's hooks once per endpoint, and every
Service's endpoints look alike to the filter table. `WalkMemo` keeps, per base chain (ruleset, table, hook,
node label, node facts), the outcomes of `ChainWalker.walk` for a key that holds everything that walk reads,
and replays them onto the next path with the same key. Exact: a hit gives the very steps, assumptions,
unknowns, conditions, probabilities, packets and verdicts the walk would give (tests/walkers/test_walk_memo.py
compares every branch with the memo on and off).

What the key holds, and why (the audit of chains.py, matches.py, ipset.py, results.py, rule_index.py):

- The entry: the ruleset object (identity: a Sweeper's cluster is not edited while it sweeps), the table,
  the hook, the node label steps carry, the node's addresses, whether it knows them, and its ipsets (what
  MatchContext holds).
- The path: its probability exactly (SplitBudget and Pending's floor compare it with absolute shares; the
  outcomes' shares and the "N random branches ... (x% of the packets)" texts are products of it), its
  assumptions exactly (`assume()` dedupes against them; `merged()` unions them), its conditions exactly
  (MAX_CONDITIONS, `condition in path.conditions`, a builtin chain without policy on a what-if branch).
  Steps are never read (only appended: the outcome's steps are the path's plus a recorded suffix), nor are
  unknowns (appended; `merged()` compares whole tuples of paths that share the input's prefix).
- The packet's small fields exactly: proto, ports (-p, --dport, multiport, sets, the rule index), ifaces
  (-i/-o; "interface not known" Unknowns), mark and ctmark (-m mark/connmark, MARK/CONNMARK), untracked,
  reply, ctstate (conntrack, tcp flags, Pending's floor), local_origin (owner, REDIRECT), node (NAT targets
  write it into dnat_node/snat_node), ct_confirmed (NAT targets set nothing up), orig_dport (--ctorigdstport).
- dnat and snat only as "set or not" (ct_states: DNAT/SNAT), masquerade exactly; but where a closure rule's
  target writes them (DNAT/REDIRECT; SNAT/MASQUERADE), they and the fields those targets write or copy
  (dst, dport, orig_dst, orig_dport, dnat_node; snat, snat_node) are keyed exactly: a written value must be
  a literal of the rule or a copy of an exact field, and `merged()` compares whole packets.
- Addresses (src, dst, orig_dst) abstracted to what the closure's rules can tell of them: the address
  itself when a rule names it as a host (-s/-d, --ctorigdst/--ctorigsrc; this also keeps the rule index's
  candidates, and so the split budget's count, the same), else which of the named networks hold it
  (at most MAX_NETWORKS of them), and its addrtype class when a rule tests addrtype or pkttype.
  Keyed exactly instead when a rule tests ipsets or ipranges, when addrtype cannot tell a node address
  (its Unknown names the address), and dst when a NAT target would say "the packet keeps <dst>"
  (a confirmed connection).
- Not read by any chain walk, so not keyed and carried over unchanged: orig_src, orig_sport, next_hop,
  egress_node, ct_dnat, group, inner, and dnat_node/snat_node where nothing writes them.

Two levels: a base chain's walk (EntryMemo, the key above) and a whole hook for one path (HookMemo: every
base chain of the hook in order, the paths it accepts and the branches it ends; its key is the finest of its
base chains' keys, without the nat chains' where they are not consulted, plus what `_Walk.hook` reads itself:
skip_nat, dnat_node, snat_node; a packet carrying a conntrack entry's DNAT is not memoised). The memo also
keeps each hook's entries (`_Walk.entries`) for every trace of the sweep.

Memory (issue 17: a 10k-Service sweep within 500 MB): outcomes are kept as deltas whose tuples (steps, packet
changes as one flat tuple, assumptions, conditions) are shared between equal ones (WalkMemo.share, bounded); a
store that does not pay (WARMUP, HIT_RATIO) records nothing more; the chains' facts are forgotten once no new
hook has been made for FACTS_IDLE walks. Each bound only forgets: a forgotten walk is walked again.

A closure with a chain not parsed yet (a large dump read lazily), a match module or a target not audited
here is not memoised: it is walked each time. The nft walker (walkers/nft.py), IPVS and the stand-in
entries for missing rulesets are not memoised either, nor is a hook that has one of them. Only a Sweeper
uses a memo (`using`); KPTRACE_NO_MEMO=1 turns it off, KPTRACE_MEMO=all shares one memo between every walk
of the process (to run a whole test suite through it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from kptrace.walkers.packet import Packet, Path

if TYPE_CHECKING:
    from kptrace.model.netfilter import Chain, Ruleset
    from kptrace.model.node import Node
    from kptrace.model.trace import Disposition, Step
    from kptrace.walkers.hooks import HookEntry
    from kptrace.walkers.matches import MatchContext
    from kptrace.walkers.netfilter import _Walk as _WalkLike

IPNetwork = IPv4Network | IPv6Network
Outcome = tuple[Path, str]
WalkFn = Callable[[Path], list[Outcome]]

MAX_NETWORKS = 64  # non-host networks an address is tested against for its key; more and addresses are exact
MAX_KEYS = 200_000  # recorded keys per base chain; past it the store is cleared
MAX_SHARED = 65_536  # tuples WalkMemo.share keeps; past it they are forgotten (the stores keep theirs)
# The chains' facts (WalkMemo.facts) are only read to make a new entry's closure; once FACTS_IDLE hooks in a row
# were made before, they are forgotten (made again if a new entry comes: a cost of time, never of exactness).
FACTS_IDLE = 2048
MAX_CLASSES = 4096  # addresses whose class a key function keeps; past it the cache is cleared
# A store that has missed WARMUP times and hit less than once per HIT_RATIO misses records nothing more (a sweep
# walks nat PREROUTING once per Service port: recording those would only hold memory); it still answers.
WARMUP, HIT_RATIO = 256, 4

# Match modules audited (matches.py EVALUATORS, ipset.py): what each reads of the packet and the context.
# A module not here but evaluated gives Unknown with a text of the rule alone (not modelled), which is safe;
# one kptrace evaluates and that is not here stops the memo for that closure.
_PLAIN_MATCHES = frozenset({
    "tcp", "udp", "udplite", "sctp", "multiport",  # proto, sport, dport, tcp flags (reply, ctstate)
    "comment", "nfacct", "limit", "statistic",  # nothing of the packet; constant assumptions/texts
    "mark", "connmark",  # mark, ctmark
    "recent",  # nothing of the packet; the assumption names the list
    "icmp", "icmp6",  # proto
    "owner",  # local_origin
    "physdev", "mac",  # constant Unknowns
})
# Options that test a port (matches.py _ports, _conntrack): their ports and ranges are named.
_PORT_OPTIONS = frozenset({"--dport", "--dports", "--sport", "--sports", "--ports", "--ctorigdstport"})
_ADDR_MATCHES = frozenset({"conntrack", "state"})  # ctstate, dnat/snat set, reply, proto, orig_dst|dst, src
_CLASS_MATCHES = frozenset({"addrtype", "pkttype"})  # the address's class: node-local, multicast, broadcast
_EXACT_MATCHES = frozenset({"set", "iprange"})  # any address (set members, ranges): keyed exactly
_VERDICTS = frozenset({"ACCEPT", "DROP", "REJECT", "RETURN"})
_DNAT = frozenset({"DNAT", "REDIRECT"})
_SNAT = frozenset({"SNAT", "MASQUERADE"})
_CONTINUING = frozenset({"LOG", "NFLOG", "TRACE", "CHECKSUM", "TCPMSS", "NOTRACK", "CT", "MARK", "CONNMARK"})

_PACKET_FIELDS = tuple(f.name for f in fields(Packet))
_AT = {name: i for i, name in enumerate(_PACKET_FIELDS)}
_packet_values = attrgetter(*_PACKET_FIELDS)
# Read by a chain walk and keyed exactly, always (see the module's docstring).
_SMALL = ("proto", "in_iface", "out_iface", "mark", "ctmark", "untracked", "reply", "ctstate",
          "local_origin", "node", "ct_confirmed", "masquerade")
# Fields the targets of a closure may write: MARK/CONNMARK/NOTRACK/CT always, NAT targets when present.
_WRITES = frozenset({"mark", "ctmark", "untracked"})
_WRITES_DNAT = frozenset({"dst", "dport", "orig_dst", "orig_dport", "dnat_node", "dnat"})
_WRITES_SNAT = frozenset({"snat", "snat_node", "masquerade"})


def disabled() -> bool:
    return os.environ.get("KPTRACE_NO_MEMO", "") not in ("", "0")


class _Closure:
    """What the rules reachable from one base chain can test and write, computed once."""

    __slots__ = ("hosts", "nets", "classes", "exact_addr", "dnat", "snat", "nat", "ctorig", "ports", "ranges",
                 "exact_ports")

    def __init__(self) -> None:
        self.hosts: set[object] = set()
        self.nets: list[IPNetwork] = []
        self.classes = False  # addrtype / pkttype: the address's class
        self.exact_addr = False
        self.ports: set[int] = set()  # ports a rule names alone (`--dport 80`)
        self.ranges: list[tuple[int, int]] = []  # and in ranges (`--dports 30000:32767`)
        self.exact_ports = False
        self.dnat = self.snat = self.nat = False
        self.ctorig = False


_FLAGS = ("classes", "exact_addr", "dnat", "snat", "nat", "ctorig", "exact_ports")
# A chain's own facts: its _FLAGS set, the networks and ports its rules name (hosts and others alike), port
# ranges, and the chains it jumps to; tuples, and () shared, so 100k KUBE-SEP chains keep little.
_Facts = tuple[frozenset[str], tuple[IPNetwork, ...], tuple[int, ...], tuple[tuple[int, int], ...], tuple[str, ...]]


def _chain_facts(chain: Chain) -> _Facts | None:
    """What one chain's rules test and write, or None when it must not be memoised (a module not audited)."""
    from kptrace.walkers.matches import EVALUATORS, parse_ports

    flags: set[str] = set()
    nets: dict[IPNetwork, None] = {}
    ports: set[int] = set()
    ranges: set[tuple[int, int]] = set()
    jumps: list[str] = []
    for rule in chain.rules:
        for cond in (rule.src, rule.dst):
            if cond is not None:
                for n in cond.value:
                    nets[n] = None
        for m in rule.matches:
            # Every port a rule names, whatever its module (naming more only refines the key): the rule
            # index of a chain read from a dump's lines (iptables_scan) picks rules by their text's port.
            for o in m.options:
                if o.name in _PORT_OPTIONS:
                    try:
                        spans = parse_ports(o.value())
                    except ValueError:
                        continue  # a service name: Unknown, with the rule's text
                    for lo, hi in spans:
                        if lo == hi:
                            ports.add(lo)
                        else:
                            ranges.add((lo, hi))
            if not m.known or m.module not in EVALUATORS:
                continue  # Unknown(the parser's or a constant text): reads nothing
            if m.module in _PLAIN_MATCHES:
                continue
            if m.module in _CLASS_MATCHES:
                flags.add("classes")
            elif m.module in _EXACT_MATCHES:
                flags |= {"exact_addr", "exact_ports"}  # set members and ranges: addresses and ports
            elif m.module in _ADDR_MATCHES:
                for o in m.options:
                    if o.name == "--ctorigdstport":
                        flags.add("ctorig")  # orig_dport if orig_dst is set, else dport
                    if o.name in ("--ctorigdst", "--ctorigsrc"):
                        flags.add("ctorig")
                        try:
                            nets[ip_network(o.value(), strict=False)] = None
                        except ValueError:
                            pass  # _addr_in: False whatever the address
            else:
                return None  # evaluated, but not audited here
        t = rule.target
        if t is None or not t.known:
            continue  # no target, or one not modelled (UNDETERMINED, citing the rule)
        if t.name in _DNAT:
            flags |= {"dnat", "nat"}
        elif t.name in _SNAT:
            flags |= {"snat", "nat"}
        elif t.name not in _VERDICTS and t.name not in _CONTINUING:
            jumps.append(t.name)  # a jump or goto (or a chain not in the input: walk() says so)
    fs = frozenset(flags)
    return (_FLAG_SETS.setdefault(fs, fs), tuple(nets) or (), tuple(ports) or (), tuple(ranges) or (), tuple(jumps) or ())


_FLAG_SETS: dict[frozenset[str], frozenset[str]] = {}  # each set of flags once


def _closure(rs: Ruleset, table: str, base: str, cache: dict[int, tuple[Chain, _Facts | None]] | None = None
             ) -> _Closure | None:
    """The facts of every chain a walk from `base` can reach, or None when it must not be memoised (a chain not
    parsed, a module not audited). `cache` keeps each chain's own facts (KUBE-SERVICES is reached from nat
    PREROUTING and OUTPUT)."""
    cache = {} if cache is None else cache
    c = _Closure()
    nets: dict[IPNetwork, None] = {}
    ranges: set[tuple[int, int]] = set()
    flags: set[str] = set()
    seen = {base}
    todo = [base]
    while todo:
        chain = rs.chain(table, todo.pop())
        if chain is None:
            continue  # a jump to a chain not in the input: an Unknown whose text names the rule and chain
        if not chain.parsed:
            return None  # rules still text (a large dump read lazily): reading them all would defeat that
        known = cache.get(id(chain))
        if known is None or known[0] is not chain:
            known = cache[id(chain)] = (chain, _chain_facts(chain))
        facts = known[1]
        if facts is None:
            return None
        own_flags, own_nets, own_ports, own_ranges, jumps = facts
        flags |= own_flags
        nets.update(dict.fromkeys(own_nets))
        c.ports.update(own_ports)
        ranges.update(own_ranges)
        for name in jumps:
            if name not in seen:
                seen.add(name)
                todo.append(name)
    for flag in flags:
        setattr(c, flag, True)
    for n in nets:
        if n.prefixlen == n.max_prefixlen:
            c.hosts.add(n.network_address)
        else:
            c.nets.append(n)
    if len(c.nets) > MAX_NETWORKS:
        c.exact_addr = True
    c.ranges = sorted(ranges)
    if len(c.ranges) > MAX_NETWORKS:
        c.exact_ports = True
    return c


def _union(closures: list[_Closure]) -> _Closure:
    """A closure that tells apart whatever one of `closures` tells apart (the base chains of one hook)."""
    u = _Closure()
    nets: dict[IPNetwork, None] = {}
    ranges: set[tuple[int, int]] = set()
    with_hosts = [c.hosts for c in closures if c.hosts]
    if len(with_hosts) == 1:
        u.hosts = with_hosts[0]  # shared, not copied (nat PREROUTING's: every ClusterIP); never written after
    for c in closures:
        if len(with_hosts) > 1:
            u.hosts |= c.hosts
        nets.update(dict.fromkeys(c.nets))
        u.ports |= c.ports
        ranges.update(c.ranges)
        for flag in _FLAGS:
            setattr(u, flag, getattr(u, flag) or getattr(c, flag))
    u.nets, u.ranges = list(nets), sorted(ranges)
    if len(u.nets) > MAX_NETWORKS:
        u.exact_addr = True
    if len(u.ranges) > MAX_NETWORKS:
        u.exact_ports = True
    return u


# What `_Walk.hook` itself reads around the base chains' walks (besides what they read): untracked, reply,
# ct_confirmed, ctstate (nat chains not consulted), dnat/dnat_node/node and masquerade/snat/snat_node
# (_nat_bound), ct_dnat (a conntrack entry's DNAT: such a packet is not memoised at all).
_HOOK_EXTRA = ("dnat_node", "snat_node")


class HookMemo:
    """One hook's whole run (every base chain, `_Walk.hook` for one path): the paths it accepts and the
    branches it ends (DROP, REJECT, UNDETERMINED), recorded as deltas like a base chain's walk. Its key is the
    finest of its base chains' keys plus what the hook reads itself (skip_nat, _HOOK_EXTRA)."""

    __slots__ = ("key", "key_no_nat", "store", "memo")

    def __init__(self, entries: list[EntryMemo], nat: list[bool], memo: WalkMemo) -> None:
        union = _union([e.closure for e in entries])
        self.key = EntryMemo(union, entries[0].ctx, entries[0].walk, memo, _HOOK_EXTRA)
        # A reply, an untracked packet and skip_nat pass the nat chains by: only the others' rules count.
        others = [e.closure for e, is_nat in zip(entries, nat) if not is_nat]
        self.key_no_nat = EntryMemo(_union(others), entries[0].ctx, entries[0].walk, memo, _HOOK_EXTRA) \
            if len(others) < len(entries) else self.key
        self.store: dict[tuple[object, ...], tuple[tuple[_Rec, ...], tuple[_Rec, ...]]] = {}
        self.memo = memo

    def run(self, path: Path, skip_nat: bool, finals: list[tuple[Path, Disposition]],
            walk: Callable[[list[Path]], list[Path]]) -> list[Path]:
        if path.packet.ct_dnat is not None:
            return walk([path])  # _apply_ct_dnat's step names the connection's dnat
        pkt = path.packet
        keyer = self.key_no_nat if skip_nat or pkt.reply or pkt.untracked else self.key
        key = (skip_nat, keyer is self.key, keyer.key(path))
        recs = self.store.get(key)
        memo = self.memo
        if recs is not None:
            memo.hook_hits += 1
            keyer.own_hits += 1
            accepted, ended = recs
            if ended:
                finals.extend(replay(ended, path))
            return [p for p, _ in replay(accepted, path)]
        memo.hook_misses += 1
        keyer.own_misses += 1
        before = len(finals)
        out = walk([path])
        if not keyer.worth():
            return out
        acc = record(path, [(p, None) for p in out], keyer.writable, memo.share)
        end = record(path, finals[before:], keyer.writable, memo.share)
        if acc is not None and end is not None:
            if len(self.store) >= MAX_KEYS:
                self.store.clear()
            self.store[key] = (acc, end)
        return out


class _Rec:
    """One outcome of a recorded walk, as a delta against the path that entered it."""

    __slots__ = ("probability", "changes", "steps", "assumptions", "unknowns", "conditions", "verdict")

    def __init__(self, probability: float, changes: tuple[Any, ...], steps: tuple[Step, ...],
                 assumptions: tuple[str, ...], unknowns: tuple[str, ...], conditions: tuple[str, ...],
                 verdict: object) -> None:
        self.probability, self.changes, self.steps = probability, changes, steps
        self.assumptions, self.unknowns, self.conditions, self.verdict = assumptions, unknowns, conditions, verdict


class EntryMemo:
    """The memo of one base chain's walk for one node: its key function and its recorded outcomes."""

    __slots__ = ("closure", "ctx", "walk", "store", "small", "writable", "exact_dst", "exact_dport", "memo",
                 "_addrs4", "_addrs6", "_ports", "_classes", "own_hits", "own_misses")

    def __init__(self, closure: _Closure, ctx: MatchContext, walk: WalkFn, memo: WalkMemo,
                 extra: tuple[str, ...] = ()) -> None:
        self.closure, self.ctx, self.walk, self.memo = closure, ctx, walk, memo
        self.store: dict[tuple[object, ...], tuple[_Rec, ...]] = {}
        small = list(_SMALL) + [f for f in extra if f not in _SMALL]
        writable = set(_WRITES)
        if closure.dnat:
            # DNAT/REDIRECT copy dst and dport into orig_dst/orig_dport and write dnat from them.
            small += ["dst", "dport", "orig_dst", "orig_dport", "dnat"] + ([] if "dnat_node" in small else ["dnat_node"])
            writable |= _WRITES_DNAT
        if closure.snat:
            small += ["snat"] + ([] if "snat_node" in small else ["snat_node"])
            writable |= _WRITES_SNAT
        self.small = attrgetter(*small)
        self.writable = frozenset(_AT[f] for f in writable)
        self.exact_dst = self.exact_dport = closure.dnat
        self._addrs4: dict[int, object] = {}  # an address's class, by its number
        self._addrs6: dict[int, object] = {}
        self._ports: dict[int | None, object] = {}  # a port's class, by the port
        self._classes: dict[object, object] = {}  # each class once (100k endpoints share a handful)
        self.own_hits = self.own_misses = 0

    def _addr(self, a: object) -> object:
        """What the closure's rules can tell of an address (see the module's docstring): the address (as its
        number, and for IPv6 tagged) where a rule names it or the key must be exact, else its class."""
        if a is None:
            return None
        v4 = type(a) is IPv4Address
        cache = self._addrs4 if v4 else self._addrs6
        n = int(a)  # type: ignore[call-overload]  # (an IP address; a dict of ints is cheaper than of addresses)
        k = cache.get(n)
        if k is not None:
            return k
        c = self.closure
        if c.exact_addr or a in c.hosts:
            k = n if v4 else ("v6", n)
        else:
            bits = 0
            for net in c.nets:
                bits = (bits << 1) | (a in net)
            k = (4 if v4 else 6, bits)
            if c.classes:
                from kptrace.walkers.matches import addr_type

                k = (*k, addr_type(a, self.ctx))
            k = self._classes.setdefault(k, k)
        if len(cache) >= MAX_CLASSES:
            cache.clear()
        cache[n] = k
        return k

    def _port(self, p: int | None) -> object:
        """A port as the rules can tell it: itself where a rule names it, else which named ranges hold it."""
        k = self._ports.get(p)
        if k is None:
            c = self.closure
            if p is None or c.exact_ports or p in c.ports:
                k = p if p is not None else "none"
            else:
                k = ("other", tuple(a <= p <= b for a, b in c.ranges))
            self._ports[p] = k
        return k

    def key(self, path: Path) -> tuple[object, ...]:
        pkt = path.packet
        c = self.closure
        confirmed = c.nat and pkt.ct_confirmed  # "the packet keeps <dst>:<dport>" names them
        if self.exact_dst:
            dst: object = None  # in small
            dport: object = None
        else:
            dst = pkt.dst if confirmed else self._addr(pkt.dst)
            dport = pkt.dport if confirmed else self._port(pkt.dport)
            if c.ctorig:
                dport = (dport, self._port(pkt.orig_dport))  # --ctorigdstport reads orig_dport (if orig_dst)
        orig = (None if self.exact_dst else self._addr(pkt.orig_dst)) if c.ctorig else pkt.orig_dst is None
        return (self.small(pkt), self._addr(pkt.src), dst, self._port(pkt.sport), dport, orig, pkt.dnat is None,
                pkt.snat is None, not pkt.snat, path.probability, path.assumptions, path.conditions)

    def __call__(self, path: Path) -> list[Outcome]:
        memo = self.memo
        key = self.key(path)
        recs = self.store.get(key)
        if recs is not None:
            memo.hits += 1
            self.own_hits += 1
            return replay(recs, path)
        memo.misses += 1
        self.own_misses += 1
        outs = self.walk(path)
        if not self.worth():
            return outs
        recs = record(path, outs, self.writable, memo.share)
        if recs is None:
            memo.unrecorded += 1
        else:
            if len(self.store) >= MAX_KEYS:
                self.store.clear()
            self.store[key] = recs
        return outs


    def worth(self) -> bool:
        """Whether recording one more walk is worth its memory (WARMUP, HIT_RATIO)."""
        return self.own_misses < WARMUP or self.own_hits * HIT_RATIO >= self.own_misses


def record(path: Path, outs: Sequence[tuple[Path, object]], writable: frozenset[int],
           share: Callable[[Any], Any]) -> tuple[_Rec, ...] | None:
    """The outcomes as deltas against `path`; None when one is not a plain extension of it (then the walk is
    not stored), or it changed a field its key does not hold exactly. `share` gives each tuple kept (changes,
    steps, assumptions, conditions) as one equal tuple kept already (WalkMemo.share)."""
    n, u = len(path.steps), len(path.unknowns)
    fixed = _fixed_getter(writable)
    kept = fixed(path.packet)
    before = _packet_values(path.packet)
    recs = []
    for out, verdict in outs:
        if out.steps[:n] != path.steps or out.unknowns[:u] != path.unknowns:
            return None
        changes: tuple[Any, ...] = ()
        if out.packet is not path.packet:
            if fixed(out.packet) != kept:
                return None  # a field the key does not hold exactly changed
            after = _packet_values(out.packet)
            # Flat (field index, value, field index, value, ...): one tuple, not one per field.
            changes = tuple(x for i in sorted(writable) if after[i] is not before[i] and after[i] != before[i]
                            for x in (i, after[i]))
        recs.append(_Rec(out.probability, share(changes), share(out.steps[n:]), share(out.assumptions),
                         share(out.unknowns[u:]), share(out.conditions), verdict))
    return tuple(recs)


_FIXED: dict[frozenset[int], Callable[[Packet], tuple[object, ...]]] = {}


def _fixed_getter(writable: frozenset[int]) -> Callable[[Packet], tuple[object, ...]]:
    """The packet's fields a walk must not change (all but `writable`), as one tuple."""
    get = _FIXED.get(writable)
    if get is None:
        names = [f for i, f in enumerate(_PACKET_FIELDS) if i not in writable]
        get = _FIXED[writable] = attrgetter(*names)
    return get


def replay(recs: tuple[_Rec, ...], path: Path) -> list[Any]:
    out: list[Any] = []
    pkt0 = path.packet
    for r in recs:
        pkt = pkt0
        if r.changes:
            values = list(_packet_values(pkt0))
            ch = r.changes
            for j in range(0, len(ch), 2):
                values[ch[j]] = ch[j + 1]
            pkt = Packet(*values)
        steps = path.steps + r.steps if r.steps else path.steps
        unknowns = path.unknowns + r.unknowns if r.unknowns else path.unknowns
        out.append((Path(r.probability, pkt, steps, r.assumptions, unknowns, r.conditions), r.verdict))
    return out


class WalkMemo:
    """The memo of a sweep (or any caller that walks many flows over one loaded cluster that it does not edit
    meanwhile): base chains' walks by what they read. Counters say how much it shared."""

    def __init__(self) -> None:
        self.entries: dict[tuple[object, ...], EntryMemo | None] = {}
        self.hooked: dict[tuple[object, ...], tuple[list[HookEntry], list[str], HookMemo | None]] = {}
        self.facts: dict[int, tuple[Chain, _Facts | None]] = {}  # each chain's own facts (_closure)
        self._idle = 0  # hook_entries answered from what is made since the last one made
        self.keep: list[object] = []  # the rulesets and nodes keyed by identity, kept alive while the memo is
        self.hits = self.misses = self.unrecorded = 0  # base chains' walks
        self.hook_hits = self.hook_misses = 0  # whole hooks
        # Each tuple the recorded outcomes keep (steps, changes, assumptions, conditions), once: outcomes of many
        # keys are alike (every endpoint's FORWARD walk has the same steps). Cleared past MAX_SHARED.
        self._shared: dict[tuple[object, ...], tuple[object, ...]] = {}

    def share(self, t: tuple[object, ...]) -> tuple[object, ...]:
        """`t`, or an equal tuple kept before (tuples are values: which of two equal ones is kept changes nothing)."""
        if not t:
            return ()
        kept = self._shared.get(t)
        if kept is None:
            if len(self._shared) >= MAX_SHARED:
                self._shared.clear()
            kept = self._shared[t] = t
        return kept

    def wrap(self, node: Node, rs: Ruleset, table: str, hook: str, label: str | None, ctx: MatchContext,
             walk: WalkFn) -> WalkFn:
        """The walk of base chain `table`/`hook` of `rs` on `node`, memoised where it can be."""
        if rs is not node.rulesets.get(rs.family) and rs is not node.legacy_rulesets.get(rs.family):
            return walk  # a stand-in made for this walk (absent.py): nothing to share it with
        ident = (id(rs), table, hook, label, id(node), frozenset(ctx.local), ctx.knows_local, id(ctx.sets))
        if ident in self.entries:
            em = self.entries[ident]
        else:
            closure = _closure(rs, table, hook, self.facts)
            if closure is not None and ctx.knows_local is False and closure.classes:
                closure.exact_addr = True  # addrtype's Unknown names the address
            em = None if closure is None else EntryMemo(closure, ctx, walk, self)
            self.entries[ident] = em
            self.keep += [rs, node]
        if em is None:
            return walk
        if em.walk is not walk:
            # The first ChainWalker of this entry keeps walking for it: same ruleset, hook, label and facts.
            pass
        return em

    def hook_entries(self, w: _WalkLike, hook: str) -> tuple[list[HookEntry], list[str], HookMemo | None]:
        """A hook's entries and notes (`_Walk.entries`, `shared_priorities`), made once per node, ruleset, hook,
        node label and node addresses: they read nothing else of the walk, and keep no state between walks;
        and the memo of the whole hook when each of its entries is memoised."""
        ident = (id(w.node), id(w.ruleset), hook, w.label, frozenset(w.local))
        known = self.hooked.get(ident)
        if known is not None:
            self._idle += 1
            if self._idle == FACTS_IDLE:
                self.facts.clear()  # ~30 MB at 10k Services; a later new entry reads its chains again
        else:
            self._idle = 0
            entries = w.entries(hook)
            walks = [e.walk for e in entries]
            whole = None
            if walks and all(isinstance(f, EntryMemo) for f in walks):
                whole = HookMemo([f for f in walks if isinstance(f, EntryMemo)], [e.nat for e in entries], self)
            known = self.hooked[ident] = (entries, w.shared_priorities(entries, hook), whole)
            self.keep += [w.node, w.ruleset]
        return known


_ACTIVE: list[WalkMemo] = []


_EVERYWHERE: list[WalkMemo] = []
_MEMO_ALL = os.environ.get("KPTRACE_MEMO") == "all"  # read once: the process's walks all share one memo


def active() -> WalkMemo | None:
    if _ACTIVE:
        return _ACTIVE[-1]
    if _MEMO_ALL and not disabled():
        # A check of the memo, not a mode: every walk of the process shares one memo, so a whole test run
        # compares with its expectations (inputs edited in place after a walk, as what-if tests do, defeat it).
        if not _EVERYWHERE:
            _EVERYWHERE.append(WalkMemo())
        return _EVERYWHERE[0]
    return None


@contextmanager
def using(memo: WalkMemo | None) -> Iterator[None]:
    """Walks inside this block share `memo` (None: they do not)."""
    if memo is None or disabled():
        yield
        return
    _ACTIVE.append(memo)
    try:
        yield
    finally:
        _ACTIVE.pop()
