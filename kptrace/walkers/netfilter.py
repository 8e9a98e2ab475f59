"""Follow one flow through a node in netfilter hook order and return its Trace.

Order (IPv4 and IPv6 alike), for the first packet of a NEW connection:
  from outside: PREROUTING raw, mangle, nat -> routing -> INPUT mangle, filter, security, nat   (local)
                                                       -> FORWARD mangle, filter, security -> POSTROUTING mangle, nat
  from the node: routing -> OUTPUT raw, mangle, nat, filter, security -> re-route after DNAT
                 -> POSTROUTING mangle, nat -> (local destination) lo: PREROUTING raw, mangle -> INPUT mangle, filter, security
nat chains run once per connection and direction, so a packet looped back through lo skips them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from kptrace.errors import InputError
from kptrace.model.flow import Flow, IPAddress
from kptrace.model.netfilter import Ruleset
from kptrace.model.node import Node
from kptrace.model.trace import Branch, Disposition, Egress, Step, Trace
from kptrace.walkers.chains import ACCEPT, DROP, REJECT, UNDETERMINED, ChainWalker
from kptrace.walkers.matches import MatchContext
from kptrace.walkers.packet import Packet, Path

HOOK_TABLES: dict[str, tuple[str, ...]] = {
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter", "security", "nat"),
    "FORWARD": ("mangle", "filter", "security"),
    "OUTPUT": ("raw", "mangle", "nat", "filter", "security"),
    "POSTROUTING": ("mangle", "nat"),
}
_LOOPBACK4 = IPv4Network("127.0.0.0/8")
_VERDICT_DISPOSITION = {DROP: Disposition.DROPPED, REJECT: Disposition.REJECTED, UNDETERMINED: Disposition.UNDETERMINED}

Final = tuple[Path, Disposition]


@dataclass(slots=True)
class _Walk:
    node: Node
    ruleset: Ruleset
    local: set[IPAddress]
    finals: list[Final] = field(default_factory=list)

    def ctx(self, hook: str) -> MatchContext:
        return MatchContext(self.local, self.node.knows_addresses, hook, [])

    def hook(self, hook: str, paths: list[Path], skip_nat: bool = False) -> list[Path]:
        """Run every table of one hook; return the paths that come out accepted."""
        for table in HOOK_TABLES[hook]:
            if table == "nat" and skip_nat:
                continue
            if self.ruleset.chain(table, hook) is None:
                continue
            walker = ChainWalker(self.ruleset, self.ctx(hook), hook)
            nxt: list[Path] = []
            for path in paths:
                if table == "nat" and path.packet.untracked:
                    continue
                for out, verdict in walker.walk(table, hook, path):
                    if verdict == ACCEPT:
                        nxt.append(out)
                    elif verdict in _VERDICT_DISPOSITION:
                        self.finals.append((out, _VERDICT_DISPOSITION[verdict]))
                    else:
                        reason = f"verdict {verdict} in {table}/{hook} is not modelled"
                        self.finals.append((out.unknown(reason), Disposition.UNDETERMINED))
            paths = nxt
        return paths

    def is_local(self, addr: IPAddress) -> bool:
        if isinstance(addr, IPv4Address) and addr in _LOOPBACK4:
            return True
        return str(addr) == "::1" or addr in self.local

    def sysctl(self, key: str) -> tuple[str | None, str | None]:
        s = self.node.sysctls.get(key)
        return (s.value, str(s.source)) if s else (None, None)

    def egress_iface(self, addr: IPAddress) -> str | None:
        """The interface whose connected subnet holds addr (longest prefix); full routing is separate."""
        best = None
        for a in self.node.addresses:
            net = a.address.network
            if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, a.iface)
        return best[1] if best else None


def route_step(text: str, source: str | None = None, action: str = "ROUTE") -> Step:
    return Step("routing", None, None, None, source, action, text)


def trace_flow(node: Node, flow: Flow) -> Trace:
    ruleset = node.rulesets.get(flow.dst.version)
    if ruleset is None:
        which = "ip6tables-save" if flow.dst.version == 6 else "iptables-save"
        raise InputError(f"the input has no {which} dump for an IPv{flow.dst.version} flow")
    if flow.src.version != flow.dst.version:
        raise InputError("source and destination are of different IP versions")
    w = _Walk(node, ruleset, node.local_addresses())
    assumptions = list(ruleset.assumptions) + list(node.assumptions)
    assumptions.append("the first packet of a NEW connection (conntrack state NEW, no earlier entry)")
    if not node.knows_addresses:
        assumptions.append("no node addresses given (--node-ip or ip-addr.txt): only loopback counts as local")
    local_origin = w.is_local(flow.src)
    origin = "local" if local_origin else ("pod" if _in_any(flow.src, node.pod_cidrs) else "external")
    in_iface = flow.in_iface
    if in_iface is None and not local_origin:
        in_iface = w.egress_iface(flow.src)
        if in_iface is not None:
            assumptions.append(f"the packet arrives on {in_iface}, the interface whose subnet holds {flow.src} (use --in-iface to change)")
    pkt = Packet(flow.src, flow.dst, flow.proto, flow.sport, flow.dport, None if local_origin else in_iface,
                 local_origin=local_origin)
    start = Path(1.0, pkt)
    if local_origin:
        _local(w, start)
    else:
        _incoming(w, start)
    branches = tuple(_branch(w, p, d) for p, d in w.finals)
    return Trace(flow, origin, pkt.in_iface, branches, tuple(node.inputs), tuple(dict.fromkeys(assumptions)))


def _in_any(addr: IPAddress, nets: list[IPv4Network | IPv6Network]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def _incoming(w: _Walk, path: Path) -> None:
    for p in w.hook("PREROUTING", [path]):
        _route_incoming(w, p)


def _route_incoming(w: _Walk, path: Path) -> None:
    pkt = path.packet
    if isinstance(pkt.dst, IPv4Address) and pkt.dst in _LOOPBACK4 and pkt.in_iface != "lo":
        value, src = w.sysctl("net.ipv4.conf.all.route_localnet")
        if value != "1":
            if value is None:
                path = path.assume("net.ipv4.conf.all.route_localnet = 0 (the kernel default; no sysctl dump)")
            why = f"martian destination {pkt.dst}: a 127.0.0.0/8 address arriving on an interface is dropped unless route_localnet=1"
            w.finals.append((path.step(route_step(why, src, "DROP")), Disposition.DROPPED))
            return
    if w.is_local(pkt.dst):
        path = path.step(route_step(f"{pkt.dst} is a local address: deliver (INPUT)"))
        for p in w.hook("INPUT", [path]):
            w.finals.append((p, Disposition.DELIVERED))
        return
    key = "net.ipv4.ip_forward" if pkt.dst.version == 4 else "net.ipv6.conf.all.forwarding"
    value, src = w.sysctl(key)
    if value == "0":
        why = f"{pkt.dst} is not local and {key} = 0: the kernel does not forward"
        w.finals.append((path.step(route_step(why, src, "DROP")), Disposition.DROPPED))
        return
    if value is None:
        path = path.assume(f"{key} = 1 (no sysctl dump)")
    out = w.egress_iface(pkt.dst)
    path = path.with_packet(out_iface=out).step(route_step(f"{pkt.dst} is not a local address: forward" + (f" via {out}" if out else "")))
    for p in w.hook("FORWARD", [path]):
        for q in w.hook("POSTROUTING", [p]):
            w.finals.append((q, Disposition.FORWARDED))


def _local(w: _Walk, path: Path) -> None:
    pkt = path.packet
    out = "lo" if w.is_local(pkt.dst) else w.egress_iface(pkt.dst)
    path = path.with_packet(out_iface=out).step(route_step(f"locally generated; output route to {pkt.dst}" + (f" via {out}" if out else "")))
    for p in w.hook("OUTPUT", [path]):
        if p.packet.dst != pkt.dst:
            # A DNAT in nat OUTPUT changes the destination, so the kernel routes the packet again.
            out2 = "lo" if w.is_local(p.packet.dst) else w.egress_iface(p.packet.dst)
            p = p.with_packet(out_iface=out2).step(route_step(f"re-routed after DNAT to {p.packet.dst}" + (f" via {out2}" if out2 else "")))
        for q in w.hook("POSTROUTING", [p]):
            if w.is_local(q.packet.dst):
                q = q.with_packet(in_iface="lo", out_iface=None).step(route_step("looped back through lo to a local socket"))
                for r in w.hook("PREROUTING", [q], skip_nat=True):
                    for s in w.hook("INPUT", [r], skip_nat=True):
                        w.finals.append((s, Disposition.DELIVERED))
            else:
                w.finals.append((q, Disposition.FORWARDED))


def _branch(w: _Walk, path: Path, disposition: Disposition) -> Branch:
    pkt = path.packet
    egress = None
    if disposition == Disposition.FORWARDED:
        if pkt.out_iface is None:
            path = path.assume("no route for the destination in the input: the egress interface is not known")
        else:
            egress = Egress(pkt.out_iface, None)
    return Branch(
        probability=path.probability, disposition=disposition, steps=path.steps, dnat=pkt.dnat,
        masquerade=pkt.masquerade, snat=pkt.snat, egress=egress, assumptions=path.assumptions,
        unknowns=path.unknowns,
    )
