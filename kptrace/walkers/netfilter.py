"""Follow one flow through a node in netfilter hook order and return its Trace.

Order (IPv4 and IPv6 alike), for the first packet of a NEW connection:
  from outside: PREROUTING raw, mangle, nat -> routing -> INPUT mangle, filter, security, nat   (local)
                                                       -> FORWARD mangle, filter, security -> POSTROUTING mangle, nat
  from the node: routing -> OUTPUT raw, mangle, nat, filter, security -> re-route after DNAT
                 -> POSTROUTING mangle, nat -> (local destination) lo: PREROUTING raw, mangle -> INPUT mangle, filter, security
nat chains run once per connection and direction, so a packet looped back through lo skips them.
After POSTROUTING the link layer (kptrace/walkers/link.py) names the bridge port or the VXLAN peer,
and a packet for another node of the input continues there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address
from typing import TYPE_CHECKING

from kptrace.errors import InputError
from kptrace.model.flow import Flow, IPAddress
from kptrace.model.netfilter import HOOK_TABLES, Ruleset, table_priority
from kptrace.model.node import Node
from kptrace.model.trace import Branch, Disposition, Egress, Reply, Step, Trace
from kptrace.walkers import link
from kptrace.walkers.chains import ACCEPT, DROP, REJECT, UNDETERMINED, ChainWalker
from kptrace.walkers.matches import MatchContext
from kptrace.walkers.memo import active as active_memo
from kptrace.walkers.hooks import HookEntry
from kptrace.walkers.packet import Packet, Path
from kptrace.walkers.routing import RouteResult, describe, knows_local, lookup

if TYPE_CHECKING:
    from kptrace.walkers.ipvs import IpvsOutcome
    from kptrace.walkers.memo import HookMemo

IPNetwork = IPv4Network | IPv6Network

_LOOPBACK4 = IPv4Network("127.0.0.0/8")
_VERDICT_DISPOSITION = {DROP: Disposition.DROPPED, REJECT: Disposition.REJECTED, UNDETERMINED: Disposition.UNDETERMINED}
_ROUTE_FAILURE = {"blackhole": Disposition.DROPPED, "prohibit": Disposition.REJECTED,
                  "unreachable": Disposition.NO_ROUTE, "none": Disposition.NO_ROUTE,
                  "undetermined": Disposition.UNDETERMINED}
MAX_NODE_HOPS = 8  # a packet bouncing between nodes more often than this is a routing loop

Final = tuple[Path, Disposition]


def _assume_all(path: Path, notes: list[str]) -> Path:
    for n in notes:
        path = path.assume(n)
    return path


def _nat_bound(path: Path, hook: str) -> bool:
    pkt = path.packet
    if hook in ("PREROUTING", "OUTPUT"):
        return pkt.dnat is not None and pkt.dnat_node == pkt.node
    return bool(pkt.masquerade or pkt.snat) and pkt.snat_node == pkt.node


def _bind(walker: ChainWalker, table: str, hook: str) -> Callable[[Path], list[tuple[Path, str]]]:
    return lambda path: walker.walk(table, hook, path)


@dataclass(slots=True)
class _Walk:
    node: Node
    ruleset: Ruleset
    cluster: list[Node]
    finals: list[Final]
    label: str | None = None  # node name on steps, when the trace spans nodes
    hops: int = 0
    local: set[IPAddress] = field(default_factory=set)
    # entries(), their notes, and the memo of the whole hook (in a sweep)
    hooked: dict[str, tuple[list[HookEntry], list[str], HookMemo | None]] = field(default_factory=dict)

    def ctx(self, hook: str) -> MatchContext:
        return MatchContext(self.local, self.node.knows_addresses, hook, [], sets=self.node.ipsets)

    def step(self, text: str, source: str | None = None, action: str = "ROUTE", hook: str = "routing") -> Step:
        return Step(hook, None, None, None, source, action, text, 0, self.label)

    def entries(self, hook: str) -> list[HookEntry]:
        """Every base chain registered at this hook, in the kernel's priority order.

        iptables tables (nf_tables or legacy backend) sit at their fixed priorities; nft tables of
        their own (kube-proxy's nftables mode, firewalld) at the priority their base chain declares.
        All of them run: a drop in any drops, an accept only ends that base chain.
        """
        out: list[HookEntry] = []
        memo = active_memo()
        for backend, rs in self.iptables_rulesets():
            for table in HOOK_TABLES[hook]:
                if rs.chain(table, hook) is None:
                    continue
                ctx = self.ctx(hook)
                walker = ChainWalker(rs, ctx, hook, self.label)
                prio = table_priority(table, hook)
                walk = _bind(walker, table, hook)
                if memo is not None:  # walks shared with other flows of a sweep (walkers/memo.py)
                    walk = memo.wrap(self.node, rs, table, hook, self.label, ctx, walk)
                out.append(HookEntry(prio, f"{backend}:{table}", table == "nat", walk))
        if self.node.nft is not None:
            from kptrace.walkers import nft  # imported on demand: most nodes have no nft ruleset of their own

            out.extend(nft.hook_entries(self.node.nft, hook, self.ruleset.family, lambda: self.ctx(hook), self.label))
        elif self.node.nft_unknown is not None:
            from kptrace.walkers.absent import unknown_nft_entries

            out.extend(unknown_nft_entries(hook, self.node.nft_unknown, self.label, self.node.pod_cidrs))
        # Python's sort is stable: at equal priority iptables-nft, then legacy, then nft tables.
        out.sort(key=lambda e: e.priority)
        return out

    def shared_priorities(self, entries: list[HookEntry], hook: str) -> list[str]:
        """Base chains of different backends at one priority: the kernel's order between them is
        the reverse of registration, which no dump shows; kptrace's order is a stated guess."""
        notes = []
        by_prio: dict[int, list[str]] = {}
        for e in entries:
            by_prio.setdefault(e.priority, []).append(e.label)
        for prio, labels in by_prio.items():
            backends = {label.split(":")[0] for label in labels}
            if len(backends) > 1:
                notes.append(f"{hook} priority {prio}: {', '.join(labels)} share it; kptrace runs them in that order "
                             "(the kernel runs the one registered last first, which a dump does not show)")
        return notes

    def iptables_rulesets(self) -> list[tuple[str, Ruleset]]:
        rulesets = [("iptables", self.ruleset)]
        legacy = self.node.legacy_rulesets.get(self.ruleset.family)
        if legacy is not None:
            rulesets.append(("legacy", legacy))
        return rulesets

    def hook(self, hook: str, paths: list[Path], skip_nat: bool = False) -> list[Path]:
        """Run every base chain of one hook; return the paths that come out accepted."""
        known = self.hooked.get(hook)
        if known is None:  # once per hook and trace: a trace of a Service of 10 endpoints runs FORWARD 20 times
            memo = active_memo()
            if memo is not None:  # and once per sweep: every trace and reply on this node shares them
                known = self.hooked[hook] = memo.hook_entries(self, hook)
            else:
                entries = self.entries(hook)
                known = self.hooked[hook] = (entries, self.shared_priorities(entries, hook), None)
        entries, notes, whole = known
        if notes:
            paths = [_assume_all(p, notes) for p in paths]
        if whole is not None and len(paths) == 1:
            # The whole hook, memoised (walkers/memo.py): one path at a time, so its ended branches keep their order.
            return whole.run(paths[0], skip_nat, self.finals, lambda ps: self._run(hook, entries, ps, skip_nat))
        return self._run(hook, entries, paths, skip_nat)

    def _run(self, hook: str, entries: list[HookEntry], paths: list[Path], skip_nat: bool) -> list[Path]:
        for entry in entries:
            if entry.nat and skip_nat:
                continue  # conntrack already holds this connection's NAT: nat chains are not consulted
            nxt: list[Path] = []
            for path in paths:
                # nat chains run until one sets up this connection's NAT for the hook's direction;
                # the kernel then skips the rest (nf_nat_inet_fn), whichever backend they belong to.
                if entry.nat and (path.packet.untracked or path.packet.reply):
                    nxt.append(path)
                    continue
                if entry.nat and path.packet.ct_dnat is not None and hook in ("PREROUTING", "OUTPUT"):
                    path = _apply_ct_dnat(self, path, hook)
                if entry.nat and path.packet.ct_confirmed and path.packet.ctstate == "ESTABLISHED":
                    # nf_nat_inet_fn(): an ESTABLISHED packet only gets the NAT its entry holds.
                    why = f"{entry.label} nat {hook} not consulted: conntrack ESTABLISHED, the entry holds this connection's NAT"
                    nxt.append(path.step(self.step(why, None, "SKIP", hook)))
                    continue
                if entry.nat and not entry.label.startswith("nft:") and _nat_bound(path, hook):
                    # (nft chains check this themselves and show a SKIP step; do the same here.)
                    why = f"{entry.label} nat {hook} not consulted: this connection's NAT is already set up"
                    nxt.append(path.step(self.step(why, None, "SKIP", hook)))
                    continue
                for out, verdict in entry.walk(path):
                    if verdict == ACCEPT:
                        nxt.append(out)
                    elif verdict in _VERDICT_DISPOSITION:
                        self.finals.append((out, _VERDICT_DISPOSITION[verdict]))
                    else:
                        reason = f"verdict {verdict} in {entry.label}/{hook} is not modelled"
                        self.finals.append((out.unknown(reason), Disposition.UNDETERMINED))
            paths = nxt
        return paths

    def sysctl(self, key: str) -> tuple[str | None, str | None]:
        s = self.node.sysctls.get(key)
        return (s.value, str(s.source)) if s else (None, None)

    def route(self, path: Path, dst: IPAddress, iif: str | None) -> tuple[Path, RouteResult]:
        res = lookup(self.node, dst, path.packet.src if iif else None, iif, None, path.packet.mark)
        for a in res.assumptions:
            path = path.assume(a)
        if res.kind in ("local", "undetermined") or dst in self.local or knows_local(self.node, dst):
            return path, res
        condition = f"the node's addresses (not in the input; give `ip addr`): {dst} is not one of them"
        if condition not in path.conditions:
            # Nothing in the input shows the node's addresses: whether `dst` is one of them (routed local,
            # INPUT) is unknown. The answer depends on it; the walk goes on as if it is not, as a what-if.
            reason = (f"whether {dst} is one of the node's own addresses (routed local, to INPUT) is not in the input: "
                      f"nothing shows the node's addresses (give `ip addr` output, or --node-ip)")
            self.finals.append((path.step(self.step(reason, None, "UNDETERMINED")).unknown(reason), Disposition.UNDETERMINED))
            path = path.given(condition)
        return path, res

    def fail(self, path: Path, res: RouteResult, dst: IPAddress) -> None:
        text = describe(res, dst)
        cite = res.cite or (str(res.rule.source) if res.rule and res.rule.source else None)
        if res.kind == "undetermined":
            path = path.unknown(f"{cite}: {res.reason}" if cite else res.reason)
        self.finals.append((path.step(self.step(text, cite, res.kind.upper())), _ROUTE_FAILURE[res.kind]))


def trace_flow(node: Node, flow: Flow, cluster: list[Node] | None = None, notes: tuple[str, ...] = (),
               service_cidrs: tuple[IPNetwork, ...] = ()) -> Trace:
    """Walk `flow` from `node`; `notes` are assumptions the caller made (how it chose the start node),
    `service_cidrs` the Service range when the caller was told it (--service-cidr)."""
    ruleset = _ruleset(node, flow)
    finals: list[Final] = []
    multi = cluster is not None and len(cluster) > 1
    w = _Walk(node, ruleset, cluster or [node], finals, node.name if multi else None, 0, _local_set(node))
    assumptions = list(notes) + list(ruleset.assumptions) + list(node.assumptions)
    at = len(assumptions)  # the packet's conntrack state is said here, before the derived interface
    if not node.knows_addresses:
        assumptions.append("no node addresses given (--node-ip or ip-addr.txt): the source counts as the node's own only "
                           "if it is loopback" + ("" if knows_local(node, flow.dst) else
                                                 "; whether a destination is the node's own is unknown"))
    local_origin = _is_local(w, flow.src)
    origin = "local" if local_origin else ("pod" if _in_any(flow.src, node.pod_cidrs) else "external")
    in_iface = flow.in_iface
    if in_iface is None and not local_origin:
        in_iface = link.ingress_iface(node, flow.src)
        if in_iface is not None:
            assumptions.append(f"the packet arrives on {in_iface}, the interface the route back to {flow.src} uses (use --in-iface to change)")
    pkt = Packet(flow.src, flow.dst, flow.proto, flow.sport, flow.dport, None if local_origin else in_iface,
                 mark=flow.mark, local_origin=local_origin, node=node.name)
    start = Path(1.0, pkt)
    start, state_notes = _conntrack_state(w, start, flow)
    assumptions[at:at] = state_notes
    if flow.mark:
        assumptions.append(f"the packet enters with mark {flow.mark:#x} (--mark)")
    if local_origin:
        _local(w, start)
    else:
        _incoming(w, start)
    nodes = cluster or [node]
    if flow.state == "new" and not start.packet.reply:
        _no_service(w, flow, service_cidrs, start)
    branches = tuple(_branch(p, d, _reply(nodes, flow, p, d, multi)) for p, d in finals if not p.conditions)
    conditional = _what_if([_branch(p, d, _reply(nodes, flow, p, d, multi)) for p, d in finals if p.conditions])
    return Trace(flow, origin, pkt.in_iface, branches, tuple(i for n in (cluster or [node]) for i in n.inputs),
                 tuple(dict.fromkeys(assumptions)), conditional)


MAX_WHAT_IF = 12  # what-if branches kept per trace (each unknown passed adds at most one per path)


def _what_if(branches: list[Branch]) -> tuple[Branch, ...]:
    """The what-if branches, fewest conditions first, one per distinct (conditions, fate, endpoint)."""
    seen: set[tuple[object, ...]] = set()
    out: list[Branch] = []
    for b in sorted(branches, key=lambda b: len(b.conditions)):
        key = (b.conditions, b.disposition, b.dnat)
        if key not in seen:
            seen.add(key)
            out.append(b)
    return tuple(out[:MAX_WHAT_IF])


def _conntrack_state(w: _Walk, path: Path, flow: Flow) -> tuple[Path, list[str]]:
    """The packet's conntrack state: --state, and the input's conntrack entry for its 5-tuple.

    An entry makes the packet part of that connection (`kptrace/walkers/conntrack.py`): NEW while it
    has seen no reply, ESTABLISHED after, or the reply; its NAT is the entry's, and nat chains set up
    nothing. Without an entry, --state established/related/reply say which packet it is, and its NAT
    is the one the nat chains would have given the connection's first packet.
    """
    from kptrace.walkers import conntrack as ct

    pkt = path.packet
    notes: list[str] = []
    match = ct.find_entry(w.node, pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
    table = w.node.conntrack is not None
    if match is None:
        if flow.state == "new":
            others = ct.entries_for(w.node, pkt.proto, pkt.src, pkt.dst, pkt.dport) if pkt.sport is None else []
            where = " (the input's conntrack table has none for this 5-tuple)" if table and pkt.sport is not None else ""
            notes.append(f"the first packet of a NEW connection (conntrack state NEW, no earlier entry){where}")
            if others:
                cites = ", ".join(str(e.source) for e in others[:3] if e.source is not None)
                notes.append(f"the input's conntrack table has {len(others)} entr{'y' if len(others) == 1 else 'ies'} from "
                             f"{pkt.src} to {pkt.dst}:{pkt.dport} ({cites}); pass --sport to trace a packet of one of them")
            return path, notes
        if flow.state == "reply":
            notes.append("a packet of the answer direction (conntrack ESTABLISHED, reply); "
                         + ("no entry for it in the input's conntrack table: " if table else "")
                         + "no NAT is known to undo (nat chains are not consulted for it)")
            return path.with_packet(reply=True, ctstate="ESTABLISHED"), notes
        state = flow.state.upper()
        notes.append(f"a later packet of the connection (conntrack state {state}, --state {flow.state}); "
                     + ("no entry for it in the input's conntrack table: " if table else "")
                     + "its NAT is the one the nat chains give the connection's first packet, as walked here")
        if flow.state == "related":
            notes.append("a RELATED connection (an ICMP error, an FTP data channel) is translated like its master; "
                         "kptrace walks the nat chains as for the master's first packet")
        return path.with_packet(ctstate=state), notes
    cite = match.cite or "conntrack"
    e = match.entry
    shown = f"{e.proto} {e.original.src}:{e.original.sport} → {e.original.dst}:{e.original.dport}"
    if match.direction == ct.REPLY:
        text = f"conntrack entry {shown} ({cite}): this packet is its reply (ESTABLISHED)"
        p = path.with_packet(reply=True, ctstate="ESTABLISHED", ct_confirmed=True, orig_src=e.original.src,
                             orig_sport=e.original.sport, orig_dst=e.original.dst, orig_dport=e.original.dport)
        if match.snat is not None:
            p = p.with_packet(snat_node=w.node.name, masquerade=True)
        if match.dnat is not None:
            p = p.with_packet(dnat_node=w.node.name)
        else:
            p = p.with_packet(orig_dst=None, orig_dport=None)
        if match.snat is None:
            p = p.with_packet(orig_src=None, orig_sport=None)
    else:
        state = match.ctstate
        nat = []
        p = path.with_packet(ctstate=state, ct_confirmed=True)
        if match.dnat is not None:
            host, port = match.dnat
            shown_dnat = f"[{host}]" if host.version == 6 else str(host)
            dnat = f"{shown_dnat}:{port}" if port is not None else shown_dnat
            nat.append(f"DNAT to {dnat}")
            p = p.with_packet(dnat=dnat, dnat_node=w.node.name, orig_dst=pkt.dst, orig_dport=pkt.dport,
                              ct_dnat=(host, port, match.cite))
        if match.snat is not None:
            nat.append(f"source NAT to {match.snat[0]}:{match.snat[1]}")
            p = p.with_packet(snat=f"{match.snat[0]}", snat_node=w.node.name)
        what = ", ".join(nat) if nat else "no NAT (its reply tuple is the original turned around)"
        seen = "has seen no reply yet (UNREPLIED): state NEW" if match.unreplied else "has seen a reply: state ESTABLISHED"
        text = f"conntrack entry {shown} ({cite}) holds this packet's connection; it {seen}; {what}"
        if flow.state not in ("new", state.lower()):
            notes.append(f"--state {flow.state} asked, but the input's conntrack entry ({cite}) gives {state}")
    step = Step("PREROUTING" if not pkt.local_origin else "OUTPUT", None, None, None, match.cite, "CONNTRACK", text, 0, w.label)
    notes.append(f"the packet belongs to the connection of conntrack entry {cite} (not its first packet)")
    return p.step(step), notes


def _apply_ct_dnat(w: _Walk, path: Path, hook: str) -> Path:
    """The DNAT a conntrack entry holds, applied where the kernel applies it: at the nat hook."""
    pkt = path.packet
    assert pkt.ct_dnat is not None
    host, port, cite = pkt.ct_dnat
    text = f"conntrack: the connection's entry{f' ({cite})' if cite else ''} says dnat to {pkt.dnat}"
    return path.with_packet(dst=host, dport=port if port is not None else pkt.dport, ct_dnat=None).step(
        w.step(text, cite, "DNAT", hook))


def _no_service(w: _Walk, flow: Flow, given: tuple[IPNetwork, ...], start: Path) -> None:
    """A branch that leaves untranslated for a Service address no Service port matches, or whose
    conntrack entry was made before the rules translated it (a stale entry): nothing will answer it
    (the gateway does not own a ClusterIP), so its disposition is NO_SERVICE."""
    if not any(d == Disposition.FORWARDED and p.packet.dnat is None for p, d in w.finals):
        return
    from kptrace.walkers.service_addr import service_address

    addr = service_address(w.node, flow.dst, given)
    if not addr.is_service:
        return
    if start.packet.ct_confirmed:
        if not addr.has(flow.proto, flow.dport):
            return
        from kptrace.walkers.conntrack import delete_command, find_entry

        m = find_entry(w.node, flow.proto, flow.src, flow.sport, flow.dst, flow.dport)
        if m is None:
            return
        reason = (f"{flow.dst}:{flow.dport} is a Service port, but this packet's conntrack entry ({m.cite}) was made "
                  f"before kube-proxy's rules translated it (a stale entry; `{delete_command(m.entry)}` clears it)")
    elif addr.has(flow.proto, flow.dport):
        return
    else:
        reason = addr.describe(flow.dst, flow.proto, flow.dport)
    for i, (p, d) in enumerate(w.finals):
        if d != Disposition.FORWARDED or p.packet.dnat is not None:
            continue
        pkt = p.packet
        via = f" via {pkt.next_hop}" if pkt.next_hop else ""
        out = f"; the packet leaves untranslated out {pkt.out_iface}{via}" if pkt.out_iface else "; the packet leaves untranslated"
        text = f"{reason}{out}, and no host there owns {flow.dst}: no reply"
        cite = next((s.source for s in reversed(p.steps) if s.hook == "routing" and s.source), None)
        w.finals[i] = (p.step(Step("service", None, None, None, cite, "NO_SERVICE", text, 0, p.packet.node if w.label else None)),
                       Disposition.NO_SERVICE)


def _local_set(node: Node) -> set[IPAddress]:
    """The node's addresses; without an address list, the `src` of its routes (they are node addresses)."""
    local = node.local_addresses()
    if node.knows_addresses:
        return local
    from kptrace.walkers.routing import route_sources

    return local | route_sources(node)


def _ruleset(node: Node, flow: Flow) -> Ruleset:
    if flow.src.version != flow.dst.version:
        raise InputError("source and destination are of different IP versions")
    from kptrace.walkers.absent import ruleset_of

    return ruleset_of(node, flow.dst.version)


def _ruleset_of(node: Node, family: int) -> Ruleset:
    from kptrace.walkers.absent import ruleset_of

    return ruleset_of(node, family)


def _is_local(w: _Walk, addr: IPAddress) -> bool:
    if isinstance(addr, IPv4Address) and addr in _LOOPBACK4:
        return True
    return str(addr) == "::1" or addr in w.local or any(
        r.type == "local" and r.table in ("local", "255") and r.dst.prefixlen == r.dst.max_prefixlen and addr in r.dst
        for r in w.node.routes)


def _in_any(addr: IPAddress, nets: list[IPv4Network | IPv6Network]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def _incoming(w: _Walk, path: Path) -> None:
    pkt = path.packet
    if link.bridged(w.node, pkt.in_iface, pkt.src, pkt.dst):
        _bridged(w, path)
        return
    for p in w.hook("PREROUTING", [path]):
        _route_incoming(w, _undo_snat(w, p))


def _bridged(w: _Walk, path: Path) -> None:
    """Same subnet on the same bridge: switched, and seen by iptables only through br_netfilter."""
    pkt = path.packet
    on, cite, how = link.br_netfilter(w.node, pkt.dst.version)
    if on is None:
        path = path.assume(how)
        on = True
    if not on:
        text = f"{pkt.dst} is on {pkt.in_iface}'s own subnet: the bridge switches the frame; iptables never sees it ({how})"
        _leave(w, path.with_packet(out_iface=pkt.in_iface).step(w.step(text, cite, "BRIDGE", "link")), conntrack=False)
        return
    text = f"{pkt.dst} is on {pkt.in_iface}'s own subnet: bridged, and br_netfilter passes the frame through iptables ({how})"
    path = path.step(w.step(text, cite, "BRIDGE", "link"))
    for p in w.hook("PREROUTING", [path]):
        p = _undo_snat(w, p)
        if p.packet.dst != pkt.dst:
            # br_netfilter routes a frame whose destination a DNAT changed.
            _route_incoming(w, p)
            continue
        p = p.with_packet(out_iface=pkt.in_iface)
        for q in w.hook("FORWARD", [p]):
            for r in w.hook("POSTROUTING", [q]):
                _leave(w, r)


def _undo_snat(w: _Walk, path: Path) -> Path:
    """A reply to a masqueraded connection gets its destination back in PREROUTING, before routing."""
    pkt = path.packet
    if not pkt.reply or pkt.snat_node != w.node.name or pkt.orig_src is None:
        return path
    text = f"conntrack: the reply to {pkt.dst} belongs to a masqueraded connection; destination restored to {pkt.orig_src}"
    return path.with_packet(dst=pkt.orig_src, dport=pkt.orig_sport, snat_node=None).step(w.step(text, None, "UN-SNAT", "PREROUTING"))


def _undo_dnat(w: _Walk, path: Path, hook: str) -> Path:
    """A reply leaving the node that DNATed its connection gets the Service address back as source."""
    pkt = path.packet
    if not pkt.reply or pkt.dnat_node != w.node.name or pkt.orig_dst is None:
        return path
    port = f":{pkt.orig_dport}" if pkt.orig_dport is not None else ""
    text = f"conntrack: the reply from {pkt.src} belongs to a DNATed connection; source restored to {pkt.orig_dst}{port}"
    return path.with_packet(src=pkt.orig_dst, sport=pkt.orig_dport, dnat_node=None).step(w.step(text, None, "UN-DNAT", hook))


def _route_incoming(w: _Walk, path: Path) -> None:
    pkt = path.packet
    special = _special_input(w, path)
    if special is None:
        return
    path, kind = special
    if kind is not None:
        # Limited broadcast, an all-hosts multicast: ip_route_input_slow()/ip_route_input_mc() deliver
        # them locally before (or instead of) any fib lookup, and never forward them.
        rp = _rp_filter(w, path)
        if rp is None:
            return
        for p in w.hook("INPUT", [rp]):
            w.finals.append((p, Disposition.DELIVERED))
        return
    if isinstance(pkt.dst, IPv4Address) and pkt.dst in _LOOPBACK4 and pkt.in_iface != "lo":
        on, src, path = _route_localnet(w, path)
        if not on:
            why = f"martian destination {pkt.dst}: a 127.0.0.0/8 address arriving on an interface is dropped unless route_localnet=1"
            w.finals.append((path.step(w.step(why, src, "DROP")), Disposition.DROPPED))
            return
    path, res = w.route(path, pkt.dst, pkt.in_iface or "?")
    if res.kind in _ROUTE_FAILURE:
        w.fail(path, res, pkt.dst)
        return
    rp = _rp_filter(w, path)
    if rp is None:
        return
    path = rp
    if res.kind in ("local", "broadcast", "multicast"):
        path = path.step(w.step(describe(res, pkt.dst) + " (INPUT)", res.cite))
        for p in w.hook("INPUT", [path]):
            # kube-proxy IPVS mode: a virtual service takes the packet at LOCAL_IN and sends it on to a
            # real server (kptrace/walkers/ipvs.py, docs/ipvs.md); like a locally sent packet after DNAT
            # it is routed again, then OUTPUT (nat not consulted) and POSTROUTING.
            outs = _ipvs_paths(w, p)
            if outs is None:
                w.finals.append((_undo_dnat(w, p, "INPUT"), Disposition.DELIVERED))
                continue
            _ipvs_sent(w, outs, hooks=("OUTPUT", "POSTROUTING"))
        return
    fwd = _forwarding(w, path)
    if fwd is None:
        return
    for p in _per_nexthop(w, fwd, res, pkt.dst):
        hp = _hairpin(w, p)
        if hp is None:
            continue
        for q in w.hook("FORWARD", [hp]):
            for r in w.hook("POSTROUTING", [q]):
                _leave(w, r)


_ZERONET4 = IPv4Network("0.0.0.0/8")
_MULTICAST4 = IPv4Network("224.0.0.0/4")
_LBCAST4 = IPv4Address("255.255.255.255")
_ALL_HOSTS4 = IPv4Address("224.0.0.1")


def _special_input(w: _Walk, path: Path) -> tuple[Path, str | None] | None:
    """The address checks ip_route_input_slow() makes before the fib lookup (net/ipv4/route.c).

    Returns None when the packet is dropped here (a martian), (path, "broadcast"|"multicast") when the
    kernel delivers it locally without a lookup, (path, None) to route it normally.
    """
    pkt = path.packet
    if not isinstance(pkt.src, IPv4Address) or not isinstance(pkt.dst, IPv4Address) or pkt.reply:
        return path, None
    src, dst = pkt.src, pkt.dst
    on = pkt.in_iface or "its interface"
    if src in _MULTICAST4 or src == _LBCAST4:
        return _martian(w, path, f"martian source {src}: a multicast or broadcast address is never a sender's; "
                                 f"the kernel drops the packet arriving on {on} (route.c martian_source)")
    if src in _LOOPBACK4 and pkt.in_iface != "lo":
        allowed, cite, path = _route_localnet(w, path)
        if not allowed:
            return _martian(w, path, f"martian source {src}: a 127.0.0.0/8 source arriving on {on} is dropped "
                                     "unless route_localnet=1", cite)
    if dst == _LBCAST4 or (src == dst and int(src) == 0):
        text = (f"{dst} is the limited broadcast: the kernel delivers it to this node (ip route get: broadcast … dev lo) "
                "and never forwards it (INPUT)")
        if link.is_bridge(w.node, pkt.in_iface):
            path = path.assume(f"a broadcast frame is also flooded to every other port of {pkt.in_iface}; "
                               "kptrace follows the copy the node itself receives")
        return path.step(w.step(text, None)), "broadcast"
    if src in _ZERONET4:
        return _martian(w, path, f"martian source {src}: 0.0.0.0/8 may only send to 255.255.255.255 (DHCP); "
                                 f"the kernel drops the packet arriving on {on}")
    if dst in _ZERONET4:
        return _martian(w, path, f"martian destination {dst}: 0.0.0.0/8 is never a destination; the kernel drops it")
    if dst in _MULTICAST4:
        if dst == _ALL_HOSTS4:
            text = (f"{dst} is the all-hosts multicast group, which every interface joins: the kernel delivers it "
                    "to this node (ip route get: multicast … dev lo) (INPUT)")
            return path.step(w.step(text, None)), "multicast"
        reason = (f"{dst} is a multicast group: the kernel delivers it only if {on} joined the group and forwards it "
                  "only with a multicast routing daemon; the input does not show group memberships (ip maddr)")
        w.finals.append((path.step(w.step(reason, None, "UNDETERMINED")).unknown(reason), Disposition.UNDETERMINED))
        return None
    return path, None


def _martian(w: _Walk, path: Path, why: str, cite: str | None = None) -> tuple[Path, str | None] | None:
    """A martian: dropped by the input route (no special delivery, nothing to route); always None."""
    w.finals.append((path.step(w.step(why, cite, "DROP")), Disposition.DROPPED))
    return None


def _hairpin(w: _Walk, path: Path) -> Path | None:
    """A packet routed back out of the bridge it came from, to the pod that sent it (a pod reaching
    itself through its Service). With br_netfilter the routed frame is handed back to the bridge
    (br_nf_pre_routing_finish: bridged_dnat), which sends it out of the port it came in on only in
    hairpin mode; without hairpin the frame is dropped before FORWARD. The sender is the destination,
    so its port is the port the frame came in on: no neighbour entry is needed to know it."""
    pkt = path.packet
    bridge = pkt.in_iface
    if bridge is None or pkt.out_iface != bridge or not link.is_bridge(w.node, bridge):
        return path
    hop = pkt.next_hop or pkt.dst
    if hop != pkt.src:
        return path
    on, _, how = link.br_netfilter(w.node, pkt.dst.version)
    if on is False:
        # The node routes the packet and the bridge sends it from its own device: no hairpin needed.
        return path
    if on is None:
        path = path.assume(how)
    port, hairpin, cite, note = link.sender_hairpin(w.node, bridge, pkt.src)
    where = f"{port}, the port it came in on" if port else "the port it came in on"
    if port is None and hairpin is not None:
        where += f" (every port of {bridge} has hairpin {'on' if hairpin else 'off'})"
    if hairpin is None:
        if note:
            reason = f"hairpin: {pkt.src} reaches itself, so the frame must leave {bridge} by {where}; {note}"
            w.finals.append((path.step(w.step(reason, cite, "UNDETERMINED", "link")).unknown(reason), Disposition.UNDETERMINED))
            return None
        return path.assume(f"hairpin mode on {port or 'the port of ' + str(pkt.src)} is on (the kubelet/CNI sets it; not in the dump)")
    if not hairpin:
        why = (f"hairpin: {pkt.src} reaches itself, so the frame must leave {bridge} by {where}, and hairpin mode is "
               f"off there: the bridge drops it (before FORWARD)")
        w.finals.append((path.step(w.step(why, cite, "DROP", "link")), Disposition.DROPPED))
        return None
    return path.step(w.step(f"hairpin: {pkt.src} reaches itself; {where} is in hairpin mode, so the bridge sends the "
                            "frame back out of it", cite, "BRIDGE", "link"))


def _ipvs_paths(w: _Walk, p: Path) -> list[IpvsOutcome] | None:
    if w.node.ipvs is None:
        return None  # not an IPVS node: its walker (and model) are not even imported
    from kptrace.walkers.ipvs import ipvs_paths

    return ipvs_paths(w.node, p, w.step)


def _ipvs_sent(w: _Walk, outs: list[IpvsOutcome], hooks: tuple[str, ...] = ("POSTROUTING",)) -> None:
    """Each way IPVS passes the packet on: routed again to the real server, then the remaining hooks."""
    for o in outs:
        if o.local and hooks == ("POSTROUTING",):
            _ipvs_local_out(w, o.path)
            continue
        if o.final is not None:
            w.finals.append((o.path, o.final))
            continue
        q, res2 = w.route(o.path, o.path.packet.next_hop or o.path.packet.dst, None)
        if res2.kind in _ROUTE_FAILURE:
            w.fail(q, res2, q.packet.dst)
            continue
        sent = _output_paths(w, q, res2, q.packet.dst, "IPVS sends it on; route:")
        for hook in hooks:
            # nat OUTPUT is not consulted for a packet IPVS already rewrote; nat POSTROUTING (masquerade) is.
            sent = w.hook(hook, sent, skip_nat=hook == "OUTPUT")
        for r in sent:
            if r.packet.out_iface == "lo":
                w.finals.append((r, Disposition.DELIVERED))
            else:
                _leave(w, r)


def _ipvs_local_out(w: _Walk, path: Path) -> None:
    """A node's own connection scheduled at LOCAL_OUT to a real server on the node itself (a node
    calling its API server through the kubernetes Service). ip_vs_nat_xmit() finds the real server
    local and lets the packet go on (ip_vs_nat_send_or_cont(): NF_ACCEPT): the rest of OUTPUT,
    routed to lo, POSTROUTING (where kube-proxy's KUBE-POSTROUTING masquerades the 0x4000 mark), then
    back in through lo: PREROUTING and INPUT without their nat chains, and a local socket."""
    pkt = path.packet
    q, res = w.route(path, pkt.dst, None)
    if res.kind in _ROUTE_FAILURE:
        w.fail(q, res, pkt.dst)
        return
    sent = _output_paths(w, q, res, pkt.dst, "the real server is this node; re-routed:")
    for r in w.hook("POSTROUTING", sent):
        rp = r.packet
        if rp.out_iface != "lo":
            _leave(w, r)
            continue
        if rp.masquerade and rp.snat_node == w.node.name and rp.orig_src is None:
            new_src = _loopback_masquerade_source(w, r)
            if new_src is not None:
                r = r.with_packet(src=new_src, orig_src=rp.src, orig_sport=rp.sport).assume(
                    f"MASQUERADE out of lo takes the node's first global address ({new_src}): lo has none "
                    "(inet_select_addr)")
        r = r.with_packet(in_iface="lo", out_iface=None).step(w.step("looped back through lo to a local socket"))
        for s2 in w.hook("PREROUTING", [r], skip_nat=True):
            for s3 in w.hook("INPUT", [s2], skip_nat=True):
                w.finals.append((s3, Disposition.DELIVERED))


def _loopback_masquerade_source(w: _Walk, path: Path) -> IPAddress | None:
    for a in w.node.addresses:
        ip = a.address.ip
        if ip.version == path.packet.dst.version and a.scope == "global" and not ip.is_loopback and a.iface != "lo":
            return ip
    return None


def _route_localnet(w: _Walk, path: Path) -> tuple[bool, str | None, Path]:
    """net.ipv4.conf.all.route_localnet: from the sysctl dump, else from kube-proxy's rules.

    kube-proxy sets it to 1 when it serves NodePorts on localhost (its default in iptables mode),
    and then guards it with KUBE-FIREWALL's "block incoming localnet connections" rule.
    """
    value, src = w.sysctl("net.ipv4.conf.all.route_localnet")
    if value is not None:
        return value.strip() == "1", src, path
    guard = _localnet_guard(w.ruleset)
    if guard is not None:
        return True, guard, path.assume(f"net.ipv4.conf.all.route_localnet = 1: kube-proxy serves NodePorts on localhost "
                                        f"and set it (its localnet guard is at {guard}; no sysctl dump)")
    return False, None, path.assume("net.ipv4.conf.all.route_localnet = 0 (the kernel default; no sysctl dump)")


def _localnet_guard(rs: Ruleset) -> str | None:
    """A rule showing kube-proxy serves NodePorts on 127.0.0.1: its localnet guard, or a
    `--dst-type LOCAL -j KUBE-NODEPORTS` jump that does not exclude 127.0.0.0/8."""
    chain = rs.chain("filter", "KUBE-FIREWALL")
    for r in chain.rules if chain is not None else ():
        if (r.comment() or "").startswith("block incoming localnet connections"):
            return str(r.source)
    services = rs.chain("nat", "KUBE-SERVICES")
    if services is None:
        return None
    for i in services.candidates("127.0.0.1"):
        r = services.rule_at(i)
        if r.target is None or r.target.name != "KUBE-NODEPORTS":
            continue
        local = any(m.module == "addrtype" and (o := m.opt("--dst-type")) is not None and o.value() == "LOCAL" and not o.negated
                    for m in r.matches)
        if local and r.dst is None:
            return str(r.source)
    return None


def _forwarding(w: _Walk, path: Path) -> Path | None:
    """ip_forward=0 (or forwarding off on the input interface) means the kernel does not forward."""
    pkt = path.packet
    if pkt.dst.version == 4:
        keys = [f"net.ipv4.conf.{_key(pkt.in_iface)}.forwarding"] if pkt.in_iface else []
        keys += ["net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"]
    else:
        keys = [f"net.ipv6.conf.{_key(pkt.in_iface or 'all')}.forwarding", "net.ipv6.conf.all.forwarding"]
    for key in keys:
        value, src = w.sysctl(key)
        if value is None:
            continue
        if value == "0":
            why = f"{pkt.dst} is not local and {key} = 0: the kernel does not forward"
            w.finals.append((path.step(w.step(why, src, "DROP")), Disposition.DROPPED))
            return None
        return path
    return path.assume(f"{keys[-1] if pkt.dst.version == 6 else 'net.ipv4.ip_forward'} = 1 (no sysctl dump)")


def _rp_filter(w: _Walk, path: Path) -> Path | None:
    """Reverse-path filter: 1 (strict) drops a packet whose source is not routed back out of the
    interface it came in on; 2 (loose) drops it only when there is no route back at all."""
    pkt = path.packet
    if pkt.src.version != 4 or pkt.in_iface is None or not w.node.routes:
        return path
    values = []
    cites = []
    for key in ("net.ipv4.conf.all.rp_filter", f"net.ipv4.conf.{_key(pkt.in_iface)}.rp_filter"):
        v, src = w.sysctl(key)
        if v is not None and v.strip().isdecimal() and len(v.strip()) < 4:
            values.append(int(v))
            cites.append(src)
    if not values:
        return path.assume("rp_filter is off (no sysctl dump)")
    mode = max(values)  # the kernel uses the larger of conf.all and conf.<iface>
    if mode == 0:
        return path
    back = lookup(w.node, pkt.src)
    devs = {h.dev for h in back.nexthops}
    # Cite the interface's own key when it holds the deciding value (it is what an operator changes).
    cite = cites[len(values) - 1 - values[::-1].index(mode)]
    if back.kind not in ("unicast", "local"):
        why = f"rp_filter={mode}: no route back to {pkt.src}, so the kernel drops it as a martian source"
    elif mode == 1 and pkt.in_iface not in devs:
        why = (f"rp_filter=1 (strict): the route back to {pkt.src} leaves via {', '.join(sorted(d or '?' for d in devs))}, "
               f"not {pkt.in_iface} where it arrived; the kernel drops it")
    else:
        return path
    w.finals.append((path.step(w.step(why, cite, "DROP")), Disposition.DROPPED))
    return None


def _key(iface: str) -> str:
    # sysctl writes an interface's dots as slashes: net.ipv4.conf.flannel/1.rp_filter.
    return iface.replace(".", "/")


def _per_nexthop(w: _Walk, path: Path, res: RouteResult, dst: IPAddress) -> list[Path]:
    """One path per next hop; ECMP shares follow the weights (the kernel hashes the flow onto one)."""
    hops = res.nexthops or ()
    total = sum(h.weight for h in hops) or 1
    out = []
    for h in hops:
        p = path
        if len(hops) > 1:
            p = p.scaled(h.weight / total).assume("multipath route: the kernel hashes each flow onto one next hop; shares follow the weights")
        text = describe(res, dst) if len(hops) == 1 else f"{dst} via {h.gateway or 'direct'} dev {h.dev} (ECMP weight {h.weight}/{total})"
        p = p.with_packet(out_iface=h.dev, next_hop=h.gateway).step(w.step(text + ": forward", res.cite))
        out.append(p)
    return out


def _local(w: _Walk, path: Path) -> None:
    pkt = path.packet
    # The output route is looked up before any packet exists (connect()): no route, no DNAT.
    path, res = w.route(path, pkt.dst, None)
    if res.kind in _ROUTE_FAILURE:
        w.fail(path.assume("a socket on the node cannot even send: the kernel reports the error to connect()"), res, pkt.dst)
        return
    paths = _output_paths(w, path, res, pkt.dst, "locally generated; output route:")
    for p in w.hook("OUTPUT", paths):
        # IPVS schedules a node's own connection to a virtual service at LOCAL_OUT (just after nat
        # OUTPUT; kptrace runs it after the whole OUTPUT hook, which kube-proxy's rules do not tell apart).
        outs = _ipvs_paths(w, p) if p.packet.out_iface == "lo" else None
        if outs is not None:
            _ipvs_sent(w, outs)
            continue
        if p.packet.dst != pkt.dst:
            # A DNAT in nat OUTPUT changes the destination, so the kernel routes the packet again.
            p, res2 = w.route(p, p.packet.dst, None)
            if res2.kind in _ROUTE_FAILURE:
                w.fail(p, res2, p.packet.dst)
                continue
            rerouted = _output_paths(w, p, res2, p.packet.dst, "re-routed after DNAT:")
            rerouted = [q for q in rerouted if _loopback_source_may_leave(w, q)]
        else:
            rerouted = [p]
        for q in w.hook("POSTROUTING", rerouted):
            if q.packet.out_iface == "lo":
                q = q.with_packet(in_iface="lo", out_iface=None).step(w.step("looped back through lo to a local socket"))
                for r in w.hook("PREROUTING", [q], skip_nat=True):
                    for s in w.hook("INPUT", [r], skip_nat=True):
                        w.finals.append((s, Disposition.DELIVERED))
            else:
                _leave(w, q)


def _loopback_source_may_leave(w: _Walk, path: Path) -> bool:
    """127.0.0.1 -> 127.0.0.1:NodePort DNATed to a pod: rerouting a loopback source off the host
    fails unless route_localnet=1 (kube-proxy then masquerades it); the kernel drops the packet."""
    pkt = path.packet
    if not (isinstance(pkt.src, IPv4Address) and pkt.src in _LOOPBACK4) or pkt.out_iface == "lo":
        return True
    on, src, path = _route_localnet(w, path)
    if on:
        return True
    why = f"source {pkt.src} cannot leave the host through {pkt.out_iface or 'an interface'} (route_localnet=0): dropped after the DNAT"
    w.finals.append((path.step(w.step(why, src, "DROP")), Disposition.DROPPED))
    return False


def _group_dst(res: RouteResult, dst: IPAddress) -> bool:
    """A broadcast or multicast destination, which the kernel sends as a link-layer broadcast."""
    if res.kind in ("broadcast", "multicast"):
        return True
    return isinstance(dst, IPv4Address) and (dst == _LBCAST4 or dst in _MULTICAST4) or (dst.version == 6 and dst.is_multicast)


def _output_paths(w: _Walk, path: Path, res: RouteResult, dst: IPAddress, what: str) -> list[Path]:
    if _group_dst(res, dst) and res.kind != "local":
        # ip_mc_output(): the frame goes out of the route's device to every host on the link, and a
        # copy is looped back to the node's own sockets; neither has a gateway.
        dev = (res.nexthops[0].dev if res.nexthops else None) or (
            res.route.nexthops[0].dev if res.route is not None and res.route.nexthops else None)
        if dev and dev != "lo":
            kind = "multicast" if res.kind == "multicast" or not (isinstance(dst, IPv4Address) and
                                                                   (dst == _LBCAST4 or res.kind == "broadcast")) else "broadcast"
            text = f"{what} {dst} is a {kind} destination: sent out {dev} to every host on the link"
            p = path.with_packet(out_iface=dev, next_hop=None, group=True).step(w.step(text, res.cite))
            return [p.assume(f"a copy of the {kind} packet is also looped back to the node's own sockets; kptrace "
                             f"follows the one sent out {dev} (the socket has SO_BROADCAST or joined the group)")]
    if res.kind in ("local", "broadcast", "multicast"):
        return [path.with_packet(out_iface="lo").step(w.step(f"{what} {describe(res, dst)} via lo", res.cite))]
    paths = []
    for p in _per_nexthop(w, path, res, dst):
        paths.append(p)
    return paths


def _leave(w: _Walk, path: Path, conntrack: bool = True) -> None:
    """The packet has passed POSTROUTING (or bypassed netfilter: conntrack=False, so no NAT is
    undone): the link layer decides where it really goes."""
    if conntrack:
        path = _undo_dnat(w, path, "POSTROUTING")
    pkt = path.packet
    if not pkt.reply and pkt.snat_node == w.node.name and pkt.orig_src is None and (pkt.masquerade or pkt.snat):
        new_src = link.snat_source(w.node, pkt) if pkt.masquerade else _snat_addr(pkt.snat)
        if new_src is not None:
            path = path.with_packet(src=new_src, orig_src=pkt.src, orig_sport=pkt.sport)
    if pkt.group:
        w.finals.append((path.step(w.step(f"{pkt.dst}: a link-layer broadcast on {pkt.out_iface}, no neighbour entry needed",
                                          None, "LINK", "link")), Disposition.FORWARDED))
        return
    out = link.egress(w.node, w.cluster, path)
    for text, cite in out.steps:
        path = path.step(w.step(text, cite, "LINK", "link"))
    for a in out.assumptions:
        path = path.assume(a)
    if out.failure is not None:
        w.finals.append((path.unknown(out.failure) if out.undetermined else path,
                         Disposition.UNDETERMINED if out.undetermined else Disposition.DROPPED))
        return
    carried = [path]
    if out.underlay is not None:
        carried = _encapsulated(w, path, out)
    for path in carried:
        if out.remote_node is None or w.hops >= MAX_NODE_HOPS:
            # Name where it goes: the VXLAN peer's address, or this node when the trace spans several.
            path = path.with_packet(egress_node=out.remote_label or w.label)
            w.finals.append((path, Disposition.FORWARDED))
            continue
        _continue_on(w, path, out.remote_node, out.remote_iface)


def _encapsulated(w: _Walk, path: Path, out: link.LinkOutcome) -> list[Path]:
    """The VXLAN packet that carries this one: a UDP packet from this node's underlay address to the
    peer's (port 8472 for flannel, 4789 elsewhere), sent by the kernel itself (udp_tunnel_xmit_skb ->
    ip_local_out): routed, then this node's OUTPUT and POSTROUTING; on the peer, PREROUTING, the input
    route and INPUT before the VXLAN socket decapsulates it. A firewall rule on either side drops every
    packet of the overlay. Returns the inner packet again for each way the outer one gets through.

    The outer source port is a hash of the inner flow (from the local port range): a rule testing it
    is UNDETERMINED. Each outer packet is NEW to conntrack (the other direction uses another port)."""
    assert out.underlay is not None
    inner = path.packet
    dst, port, dev, local = out.underlay
    vx = inner.out_iface or "the VXLAN device"
    src = local or _underlay_source(w, dev, dst)
    if src is None:
        path = path.assume(f"the underlay source address of {vx} is not in the input: rules testing it are not matched against it")
        src = ip_address("0.0.0.0") if dst.version == 4 else ip_address("::")
    peer = out.remote_node.name if out.remote_node is not None else str(dst)
    what = f"VXLAN ({vx}, UDP {port}) from {w.node.name} to {peer}"
    outer = Packet(src, dst, "udp", None, port, None, mark=inner.mark, local_origin=True, node=w.node.name, inner=inner)
    text = (f"the VXLAN packet {src} → {dst}:{port}/udp carries it: routed, then through OUTPUT and POSTROUTING "
            "like a packet of the node's own")
    p = replace_packet(path, outer).step(w.step(text, None, "ENCAP", "link"))
    first = len(path.steps)  # the outer packet's steps start here
    before = len(w.finals)
    p, res = w.route(p, dst, None)
    if res.kind in _ROUTE_FAILURE:
        w.fail(p, res, dst)
        _overlay_broken(w, before, what, first)
        return []
    sent = _output_paths(w, p, res, dst, "underlay route:")
    sent = w.hook("POSTROUTING", w.hook("OUTPUT", sent))
    survivors: list[Path] = []
    remote = out.remote_node
    for q in sent:
        if remote is None:
            survivors.append(q)
            continue
        survivors.extend(_underlay_arrives(w, q, remote))
    _overlay_broken(w, before, what, first)
    return [_mark_outer(replace_packet(q, inner), first) for q in survivors]


def _mark_outer(path: Path, first: int) -> Path:
    from dataclasses import replace

    steps = path.steps[:first] + tuple(replace(s, encapsulated=True) for s in path.steps[first:])
    return Path(path.probability, path.packet, steps, path.assumptions, path.unknowns, path.conditions)


def replace_packet(path: Path, pkt: Packet) -> Path:
    return Path(path.probability, pkt, path.steps, path.assumptions, path.unknowns, path.conditions)


def _underlay_source(w: _Walk, dev: str | None, dst: IPAddress) -> IPAddress | None:
    """The address the underlay route's device sends from (the route's `src`, else the device's first)."""
    res = lookup(w.node, dst)
    if res.route is not None and res.route.src is not None:
        return res.route.src
    devs = [dev] if dev else [h.dev for h in res.nexthops if h.dev]
    for a in w.node.addresses:
        if a.iface in devs and a.address.version == dst.version and a.scope == "global":
            return a.address.ip
    return None


def _underlay_arrives(w: _Walk, path: Path, remote: Node) -> list[Path]:
    """The encapsulated packet on the peer: PREROUTING, the input route, INPUT, then the VXLAN socket."""
    pkt = path.packet
    try:
        rs = _ruleset(remote, Flow(pkt.src, pkt.dst))
    except InputError as e:
        w.finals.append((path.unknown(str(e)), Disposition.UNDETERMINED))
        return []
    nxt = _Walk(remote, rs, w.cluster, w.finals, remote.name, w.hops + 1, _local_set(remote))
    _, iface = link.node_owning(w.cluster, pkt.dst, w.node)
    arrived = replace_packet(path, Packet(pkt.src, pkt.dst, "udp", None, pkt.dport, iface, mark=0, node=remote.name,
                                          inner=pkt.inner))
    arrived = arrived.step(nxt.step(f"the encapsulated packet arrives on {remote.name} via {iface or '?'}", None, "LINK", "link"))
    out: list[Path] = []
    for q in nxt.hook("PREROUTING", [arrived]):
        q, res = nxt.route(q, pkt.dst, iface or "?")
        if res.kind in _ROUTE_FAILURE:
            nxt.fail(q, res, pkt.dst)
            continue
        if res.kind != "local":
            reason = f"{pkt.dst} is not local on {remote.name} ({describe(res, pkt.dst)}): its VXLAN socket does not get the packet"
            w.finals.append((q.step(nxt.step(reason, res.cite, "UNDETERMINED")).unknown(reason), Disposition.UNDETERMINED))
            continue
        q = q.step(nxt.step(describe(res, pkt.dst) + " (INPUT)", res.cite))
        rp = _rp_filter(nxt, q)
        if rp is None:
            continue
        for r in nxt.hook("INPUT", [rp]):
            out.append(r.step(nxt.step("the VXLAN packet passed PREROUTING and INPUT; the VXLAN socket decapsulates the packet it carries", None, "DECAP", "link")))
    return out


def _overlay_broken(w: _Walk, start: int, what: str, first: int) -> None:
    """Name the overlay a drop of an encapsulated packet breaks, on the branch it ends."""
    for i in range(start, len(w.finals)):
        p, d = w.finals[i]
        if p.packet.inner is None:
            continue
        if d.failed:
            last = next((s for s in reversed(p.steps) if s.source), None)
            by = f" by {last.source}" if last is not None else ""
            text = (f"the encapsulated packet of {what} is {d.value.lower()}{by}: the overlay between these nodes "
                    "is broken, every packet carried over it is lost")
            p = p.step(Step("link", None, None, None, last.source if last else None, "OVERLAY", text, 0,
                            last.node if last is not None else w.label))
        w.finals[i] = (_mark_outer(p, first), d)


def _continue_on(w: _Walk, path: Path, node: Node, iface: str | None) -> None:
    """The packet arrives on another node of the input (VXLAN or a plain route): walk it there."""
    flow_like = Flow(path.packet.src, path.packet.dst)
    try:
        rs = _ruleset(node, flow_like)
    except InputError as e:
        w.finals.append((path.unknown(str(e)), Disposition.UNDETERMINED))
        return
    nxt = _Walk(node, rs, w.cluster, w.finals, node.name, w.hops + 1, _local_set(node))
    pkt = path.packet
    src = pkt.src
    # Its own conntrack: an entry of the first node's table says nothing about this one's.
    carried = path.with_packet(in_iface=iface, out_iface=None, mark=0, ctmark=0, untracked=False,
                               local_origin=False, next_hop=None, node=node.name, ct_confirmed=False, ct_dnat=None)
    if pkt.reply or pkt.ctstate == "ESTABLISHED":
        state = "its conntrack has the connection (ESTABLISHED)"
    elif pkt.ctstate == "RELATED":
        state = "its conntrack sees it RELATED"
    else:
        state = "its own conntrack sees a NEW connection"
    carried = carried.step(nxt.step(f"arrives on {node.name} via {iface or '?'} (src {src}, dst {pkt.dst}); {state}",
                                    None, "ARRIVE", "link"))
    _incoming(nxt, carried)


def _snat_addr(text: str | None) -> IPAddress | None:
    from ipaddress import ip_address

    host = (text or "").split(":")[0].split("-")[0]
    try:
        return ip_address(host)
    except ValueError:
        return None


def _reply(nodes: list[Node], flow: Flow, path: Path, disposition: Disposition, multi: bool) -> Reply | None:
    """Walk the answer back: from where the packet ended, towards the address it came from."""
    pkt = path.packet
    if disposition != Disposition.FORWARDED or pkt.reply or pkt.group:
        return None  # (a broadcast has no one connection to answer it)
    node = next((n for n in nodes if n.name == pkt.node), None)
    if node is None:
        return None
    finals: list[Final] = []
    w = _Walk(node, _ruleset_of(node, pkt.dst.version), nodes, finals, node.name if multi else None, 0, _local_set(node))
    back = Packet(pkt.dst, pkt.src, pkt.proto, pkt.dport, pkt.sport, pkt.out_iface, node=node.name, reply=True,
                  dnat_node=pkt.dnat_node, snat_node=pkt.snat_node, orig_dst=pkt.orig_dst, orig_dport=pkt.orig_dport,
                  orig_src=pkt.orig_src, orig_sport=pkt.orig_sport, ctstate="ESTABLISHED" if pkt.ctstate else None)
    # A what-if branch's reply takes the same unknowns for not deciding it.
    start = Path(1.0, back, conditions=path.conditions).step(
        w.step(f"reply {back.src} → {back.dst} arrives on {back.in_iface or '?'} (conntrack ESTABLISHED)",
               None, "REPLY", "link"))
    _incoming(w, start)
    if not finals:
        return None
    # The first way the reply can go is shown; the others differ only by ECMP or random choices.
    rpath, rdisp = finals[0]
    problem = None
    if rdisp.failed:
        last = rpath.steps[-1] if rpath.steps else None
        problem = f"the reply is {rdisp.value.lower()}" + (f" at {last.source}" if last and last.source else "")
    elif rdisp in (Disposition.FORWARDED, Disposition.DELIVERED):
        got = rpath.packet
        if got.src != flow.dst or (flow.dport is not None and got.sport != flow.dport):
            problem = (f"the reply reaches {got.dst} from {got.src}:{got.sport} but the client sent to {flow.dst}:{flow.dport}; "
                       f"the conntrack entry that would restore {flow.dst} was bypassed, so the client drops the reply")
    return Reply(Disposition.DROPPED if problem and not rdisp.failed else rdisp, rpath.steps, problem)


def _branch(path: Path, disposition: Disposition, reply: Reply | None = None) -> Branch:
    # A branch that ended on an encapsulated packet (dropped on the underlay) reports the packet it carried.
    pkt = path.packet.inner or path.packet
    egress = None
    if disposition in (Disposition.FORWARDED, Disposition.NO_SERVICE) or pkt.egress_node:
        if pkt.out_iface is None:
            path = path.assume("no route for the destination in the input: the egress interface is not known")
        else:
            egress = Egress(pkt.out_iface, str(pkt.next_hop) if pkt.next_hop else None, pkt.egress_node)
    return Branch(
        probability=path.probability, disposition=disposition, steps=path.steps, dnat=pkt.dnat,
        masquerade=pkt.masquerade, snat=pkt.snat, egress=egress, assumptions=path.assumptions,
        unknowns=path.unknowns, reply=reply, conditions=path.conditions,
    )
