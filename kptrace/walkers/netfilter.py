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
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from kptrace.errors import InputError
from kptrace.model.flow import Flow, IPAddress
from kptrace.model.netfilter import HOOK_TABLES, Ruleset, table_priority
from kptrace.model.node import Node
from kptrace.model.trace import Branch, Disposition, Egress, Reply, Step, Trace
from kptrace.walkers import link
from kptrace.walkers.chains import ACCEPT, DROP, REJECT, UNDETERMINED, ChainWalker
from kptrace.walkers.matches import MatchContext
from kptrace.walkers.packet import Packet, Path
from kptrace.walkers.routing import RouteResult, describe, lookup

if TYPE_CHECKING:
    from kptrace.walkers.ipvs import IpvsOutcome

_LOOPBACK4 = IPv4Network("127.0.0.0/8")
_VERDICT_DISPOSITION = {DROP: Disposition.DROPPED, REJECT: Disposition.REJECTED, UNDETERMINED: Disposition.UNDETERMINED}
_ROUTE_FAILURE = {"blackhole": Disposition.DROPPED, "prohibit": Disposition.REJECTED,
                  "unreachable": Disposition.NO_ROUTE, "none": Disposition.NO_ROUTE,
                  "undetermined": Disposition.UNDETERMINED}
MAX_NODE_HOPS = 8  # a packet bouncing between nodes more often than this is a routing loop

Final = tuple[Path, Disposition]


@dataclass(frozen=True, slots=True)
class HookEntry:
    priority: int
    label: str
    nat: bool  # a nat chain: consulted only for a connection's first packet
    walk: Callable[[Path], list[tuple[Path, str]]]


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
        for backend, rs in self.iptables_rulesets():
            for table in HOOK_TABLES[hook]:
                if rs.chain(table, hook) is None:
                    continue
                walker = ChainWalker(rs, self.ctx(hook), hook, self.label)
                prio = table_priority(table, hook)
                out.append(HookEntry(prio, f"{backend}:{table}", table == "nat", _bind(walker, table, hook)))
        if self.node.nft is not None:
            from kptrace.walkers import nft  # type: ignore[attr-defined,unused-ignore]

            out.extend(nft.hook_entries(self.node.nft, hook, self.ruleset.family, lambda: self.ctx(hook), self.label))
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
        entries = self.entries(hook)
        notes = self.shared_priorities(entries, hook)
        if notes:
            paths = [_assume_all(p, notes) for p in paths]
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
        return path, res

    def fail(self, path: Path, res: RouteResult, dst: IPAddress) -> None:
        text = describe(res, dst)
        cite = res.cite or (str(res.rule.source) if res.rule and res.rule.source else None)
        if res.kind == "undetermined":
            path = path.unknown(f"{cite}: {res.reason}" if cite else res.reason)
        self.finals.append((path.step(self.step(text, cite, res.kind.upper())), _ROUTE_FAILURE[res.kind]))


def trace_flow(node: Node, flow: Flow, cluster: list[Node] | None = None) -> Trace:
    ruleset = _ruleset(node, flow)
    finals: list[Final] = []
    multi = cluster is not None and len(cluster) > 1
    w = _Walk(node, ruleset, cluster or [node], finals, node.name if multi else None, 0, node.local_addresses())
    assumptions = list(ruleset.assumptions) + list(node.assumptions)
    assumptions.append("the first packet of a NEW connection (conntrack state NEW, no earlier entry)")
    if not node.knows_addresses:
        assumptions.append("no node addresses given (--node-ip or ip-addr.txt): only loopback counts as local")
    local_origin = _is_local(w, flow.src)
    origin = "local" if local_origin else ("pod" if _in_any(flow.src, node.pod_cidrs) else "external")
    in_iface = flow.in_iface
    if in_iface is None and not local_origin:
        in_iface = link.ingress_iface(node, flow.src)
        if in_iface is not None:
            assumptions.append(f"the packet arrives on {in_iface}, the interface the route back to {flow.src} uses (use --in-iface to change)")
    pkt = Packet(flow.src, flow.dst, flow.proto, flow.sport, flow.dport, None if local_origin else in_iface,
                 local_origin=local_origin, node=node.name)
    start = Path(1.0, pkt)
    if local_origin:
        _local(w, start)
    else:
        _incoming(w, start)
    nodes = cluster or [node]
    branches = tuple(_branch(p, d, _reply(nodes, flow, p, d, multi)) for p, d in finals)
    return Trace(flow, origin, pkt.in_iface, branches, tuple(i for n in (cluster or [node]) for i in n.inputs),
                 tuple(dict.fromkeys(assumptions)))


def _ruleset(node: Node, flow: Flow) -> Ruleset:
    if flow.src.version != flow.dst.version:
        raise InputError("source and destination are of different IP versions")
    ruleset = node.rulesets.get(flow.dst.version)
    if ruleset is None:
        which = "ip6tables-save" if flow.dst.version == 6 else "iptables-save"
        raise InputError(f"the input for node {node.name} has no {which} dump for an IPv{flow.dst.version} flow")
    return ruleset


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
        for q in w.hook("FORWARD", [p]):
            for r in w.hook("POSTROUTING", [q]):
                _leave(w, r)


def _ipvs_paths(w: _Walk, p: Path) -> list[IpvsOutcome] | None:
    if w.node.ipvs is None:
        return None  # not an IPVS node: its walker (and model) are not even imported
    from kptrace.walkers.ipvs import ipvs_paths

    return ipvs_paths(w.node, p, w.step)


def _ipvs_sent(w: _Walk, outs: list[IpvsOutcome], hooks: tuple[str, ...] = ("POSTROUTING",)) -> None:
    """Each way IPVS passes the packet on: routed again to the real server, then the remaining hooks."""
    for o in outs:
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


def _output_paths(w: _Walk, path: Path, res: RouteResult, dst: IPAddress, what: str) -> list[Path]:
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
    out = link.egress(w.node, w.cluster, path)
    for text, cite in out.steps:
        path = path.step(w.step(text, cite, "LINK", "link"))
    for a in out.assumptions:
        path = path.assume(a)
    if out.failure is not None:
        w.finals.append((path.unknown(out.failure) if out.undetermined else path,
                         Disposition.UNDETERMINED if out.undetermined else Disposition.DROPPED))
        return
    if out.remote_node is None or w.hops >= MAX_NODE_HOPS:
        # Name where it goes: the VXLAN peer's address, or this node when the trace spans several.
        path = path.with_packet(egress_node=out.remote_label or w.label)
        w.finals.append((path, Disposition.FORWARDED))
        return
    _continue_on(w, path, out.remote_node, out.remote_iface)


def _continue_on(w: _Walk, path: Path, node: Node, iface: str | None) -> None:
    """The packet arrives on another node of the input (VXLAN or a plain route): walk it there."""
    flow_like = Flow(path.packet.src, path.packet.dst)
    try:
        rs = _ruleset(node, flow_like)
    except InputError as e:
        w.finals.append((path.unknown(str(e)), Disposition.UNDETERMINED))
        return
    nxt = _Walk(node, rs, w.cluster, w.finals, node.name, w.hops + 1, node.local_addresses())
    pkt = path.packet
    src = pkt.src
    carried = path.with_packet(in_iface=iface, out_iface=None, mark=0, ctmark=0, untracked=False,
                               local_origin=False, next_hop=None, node=node.name)
    state = "its conntrack has the connection (ESTABLISHED)" if pkt.reply else "its own conntrack sees a NEW connection"
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
    if disposition != Disposition.FORWARDED or pkt.reply:
        return None
    node = next((n for n in nodes if n.name == pkt.node), None)
    if node is None or node.rulesets.get(pkt.dst.version) is None:
        return None
    finals: list[Final] = []
    w = _Walk(node, node.rulesets[pkt.dst.version], nodes, finals, node.name if multi else None, 0, node.local_addresses())
    back = Packet(pkt.dst, pkt.src, pkt.proto, pkt.dport, pkt.sport, pkt.out_iface, node=node.name, reply=True,
                  dnat_node=pkt.dnat_node, snat_node=pkt.snat_node, orig_dst=pkt.orig_dst, orig_dport=pkt.orig_dport,
                  orig_src=pkt.orig_src, orig_sport=pkt.orig_sport)
    start = Path(1.0, back).step(w.step(f"reply {back.src} → {back.dst} arrives on {back.in_iface or '?'} (conntrack ESTABLISHED)",
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
    pkt = path.packet
    egress = None
    if disposition == Disposition.FORWARDED or pkt.egress_node:
        if pkt.out_iface is None:
            path = path.assume("no route for the destination in the input: the egress interface is not known")
        else:
            egress = Egress(pkt.out_iface, str(pkt.next_hop) if pkt.next_hop else None, pkt.egress_node)
    return Branch(
        probability=path.probability, disposition=disposition, steps=path.steps, dnat=pkt.dnat,
        masquerade=pkt.masquerade, snat=pkt.snat, egress=egress, assumptions=path.assumptions,
        unknowns=path.unknowns, reply=reply,
    )
