"""kube-proxy's IPVS mode: ipset matching (`-m set`) and the IPVS hop at LOCAL_IN.

IPVS registers at NF_INET_LOCAL_IN with priority NF_IP_PRI_NAT_SRC - 2 (98): after the filter and
security tables, before nat INPUT (net/netfilter/ipvs/ip_vs_core.c, ip_vs_ops4). A packet for a
virtual service (protocol, VIP, port; or its firewall mark) is scheduled to a real server and sent
on from there (ip_vs_nat_xmit & co.): through the OUTPUT hook (its nat chains are not consulted:
conntrack already holds the connection) and POSTROUTING, whose nat chains still run because the
packet never reached nat INPUT, so kube-proxy's MASQUERADE applies. See docs/ipvs.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from kptrace.model.ipvs import IpvsDest, IpvsService
from kptrace.model.node import Node
from kptrace.model.trace import Disposition, Step
from kptrace.walkers.results import Unknown
from kptrace.walkers.packet import Packet, Path

# ---------------------------------------------------------------------------------------------
# The IPVS hop


@dataclass(frozen=True, slots=True)
class IpvsOutcome:
    """One way the packet leaves the IPVS hop.

    final None: sent on to `path.packet.dst` (route, OUTPUT, POSTROUTING); local True: the real
    server is this node, so the packet stays in INPUT and is delivered. Otherwise it ends here.
    """

    path: Path
    final: Disposition | None = None
    local: bool = False


StepFactory = Callable[..., Step]


_SERVICES: dict[int, tuple[list[IpvsService], int, dict[tuple[object, ...], IpvsService]]] = {}


def _services_by_key(services: list[IpvsService]) -> dict[tuple[object, ...], IpvsService]:
    """(protocol, VIP, port) -> the first such virtual service: a node's 10k services by hash."""
    held = _SERVICES.get(id(services))
    if held is None or held[0] is not services or held[1] != len(services):
        index: dict[tuple[object, ...], IpvsService] = {}
        for svc in services:
            if svc.fwmark is None:
                index.setdefault((svc.protocol, svc.address, svc.port), svc)
        held = _SERVICES[id(services)] = (services, len(services), index)
    return held[2]


def find_service(node: Node, pkt: Packet) -> IpvsService | Unknown | None:
    """ip_vs_service_find: firewall-mark services first, then (proto, VIP, port), then the VIP's port-0 service."""
    services = node.ipvs or []
    if pkt.mark:
        for svc in services:
            if svc.fwmark is not None and svc.fwmark == pkt.mark and svc.family == pkt.dst.version:
                return svc
    if pkt.proto not in ("tcp", "udp", "sctp"):
        return None  # IPVS schedules only TCP, UDP and SCTP
    by_key = _services_by_key(services)
    for port in (pkt.dport, 0):
        found = by_key.get((pkt.proto, pkt.dst, port))
        if found is not None:
            return found
    unresolved = [s for s in services if s.fwmark is None and s.protocol == pkt.proto and not s.resolved]
    if unresolved:
        return Unknown(f"{unresolved[0].source}: the IPVS listing names services by host or service name "
                       f"('{unresolved[0]}'; ipvsadm ran without -n), so whether one is {pkt.dst}:{pkt.dport} is not known")
    return None


def ipvs_paths(node: Node, path: Path, step: StepFactory) -> list[IpvsOutcome] | None:
    """Schedule a locally delivered packet to a real server; None when no virtual service takes it."""
    pkt = path.packet
    if node.ipvs is None or pkt.reply:
        return None
    svc = find_service(node, pkt)
    if svc is None:
        return None
    if isinstance(svc, Unknown):
        return [IpvsOutcome(path.unknown(svc.reason), Disposition.UNDETERMINED)]
    cite = str(svc.source)
    path = path.step(step(f"IPVS virtual service {svc} ({_describe(svc)})", cite, "IPVS", "IPVS"))
    if svc.persistent is not None:
        mask = f", mask {svc.netmask}" if svc.netmask else ""
        path = path.assume(f"IPVS service {svc} is persistent ({svc.persistent} s{mask}): a client that connected within "
                           f"that time goes back to the same real server; assumed this client has no persistence "
                           f"template yet, so the scheduler picks")
    if svc.one_packet:
        path = path.assume(f"IPVS service {svc} schedules each datagram on its own (ops)")
    choices, notes, undetermined = schedule(svc)
    for n in notes:
        path = path.assume(n)
    if undetermined:
        return [IpvsOutcome(path.unknown(f"{cite}: {undetermined}"), Disposition.UNDETERMINED)]
    if not choices:
        # ip_vs_leave(): no real server available -> ICMP port unreachable, packet dropped.
        why = (f"IPVS service {svc} has no real server that can take a new connection "
               f"({'no servers' if not svc.dests else 'all weights 0'}): the kernel answers ICMP port unreachable")
        return [IpvsOutcome(path.step(step(why, cite, "REJECT", "IPVS")), Disposition.REJECTED)]
    out: list[IpvsOutcome] = []
    for dest, p in choices:
        out.append(_send(node, path.scaled(p), svc, dest, p, len(choices), step))
    return out


def _describe(svc: IpvsService) -> str:
    parts = [f"scheduler {svc.scheduler}" if svc.scheduler else "scheduler not shown in this listing"]
    if svc.persistent is not None:
        parts.append(f"persistent {svc.persistent}")
    parts.append(f"{len(svc.dests)} real server{'s' if len(svc.dests) != 1 else ''}")
    return ", ".join(parts)


def _overhead(d: IpvsDest, kind: str) -> int:
    a, i = d.active_conns or 0, d.inactive_conns or 0
    if kind in ("sed", "nq"):
        return a + 1  # ip_vs_sed_dest_overhead / ip_vs_nq_dest_overhead
    return a * 256 + i  # ip_vs_dest_conn_overhead: active connections weigh 256 times an inactive one


def schedule(svc: IpvsService) -> tuple[list[tuple[IpvsDest, float]], list[str], str | None]:
    """(real server, probability) pairs for a new connection, the assumptions made, or why it is undetermined."""
    notes: list[str] = []
    unresolved = [d for d in svc.dests if not d.resolved]
    if unresolved:
        return [], notes, (f"real server '{unresolved[0]}' at {unresolved[0].source} is a name (ipvsadm ran without -n); "
                           "kptrace does not resolve names")
    dests = list(svc.dests)
    if any(d.weight is None for d in dests):
        notes.append(f"this ipvsadm listing of {svc} shows no weights: every real server is taken to have weight 1")
        dests = [d if d.weight is not None else _with_weight(d) for d in dests]
    # A real server with weight 0 is quiesced: no scheduler gives it new connections.
    live = [d for d in dests if (d.weight or 0) > 0]
    if not live:
        return [], notes, None
    sched = svc.scheduler
    total = sum(d.weight or 0 for d in live)
    even = [(d, 1.0 / len(live)) for d in live]
    weighted = [(d, (d.weight or 0) / total) for d in live]
    if sched is None:
        notes.append(f"this ipvsadm listing does not show {svc}'s scheduler: shares follow the weights")
        return weighted, notes, None
    if sched == "rr":
        if len(live) > 1:
            notes.append(f"IPVS rr ({svc}): each new connection goes to the next real server in turn; which one is next "
                         "depends on the scheduler's position, not in the dump, so each server gets an equal share")
        return even, notes, None
    if sched == "wrr":
        if len(live) > 1:
            notes.append(f"IPVS wrr ({svc}): servers take turns in proportion to their weights; which one is next is not "
                         "in the dump, so shares follow the weights")
        return weighted, notes, None
    if sched in ("lc", "wlc", "sed", "nq"):
        counts = all(d.active_conns is not None and d.inactive_conns is not None for d in live)
        if not counts:
            notes.append(f"IPVS {sched} ({svc}) picks the server with the fewest connections; this listing shows no "
                         "connection counts (ipvsadm -Ln does), so shares follow the weights")
            return weighted, notes, None
        if sched == "nq":
            idle = [d for d in live if d.active_conns == 0]
            if idle:
                return _ties(idle, svc, sched, notes, "has no active connection"), notes, None
        kind = "lc" if sched == "lc" else sched
        def score(d: IpvsDest) -> float:
            o = _overhead(d, kind)
            return o if kind == "lc" else o / (d.weight or 1)
        best = min(score(d) for d in live)
        winners = [d for d in live if score(d) == best]
        notes.append(f"IPVS {sched} ({svc}) picks the real server with the lowest "
                     f"{'active×256+inactive connections' if kind in ('lc', 'wlc') else 'active+1 connections'}"
                     f"{'' if kind == 'lc' else ' per weight'}, from the counts in the listing")
        return _ties(winners, svc, sched, notes, "ties"), notes, None
    if sched in ("fo", "ovf"):
        cand = live
        if sched == "ovf":
            if any(d.active_conns is None for d in live):
                notes.append(f"IPVS ovf ({svc}): no connection counts in this listing; assumed no server is full")
            else:
                cand = [d for d in live if (d.active_conns or 0) < (d.weight or 0)]
            if not cand:
                return [], notes, None
        top = max(d.weight or 0 for d in cand)
        notes.append(f"IPVS {sched} ({svc}) sends new connections to the available real server with the highest weight")
        return _ties([d for d in cand if d.weight == top], svc, sched, notes, "share the highest weight"), notes, None
    if sched in ("sh", "dh", "mh", "lblc", "lblcr"):
        what = {"sh": "a hash of the client address", "dh": "a hash of the destination address",
                "mh": "a Maglev hash of the client address", "lblc": "the destination's recent server (locality)",
                "lblcr": "the destination's recent server set (locality)"}[sched]
        notes.append(f"IPVS {sched} ({svc}) picks the real server by {what}: which one this flow gets is not "
                     "predictable from the dump; every real server is shown, with its share of the hash table (by weight)")
        return weighted, notes, None
    return [], notes, f"IPVS scheduler '{sched}' is not modelled"


def _with_weight(d: IpvsDest) -> IpvsDest:
    from dataclasses import replace

    return replace(d, weight=1)


def _ties(cands: list[IpvsDest], svc: IpvsService, sched: str, notes: list[str], why: str) -> list[tuple[IpvsDest, float]]:
    if len(cands) > 1:
        notes.append(f"IPVS {sched} ({svc}): {len(cands)} real servers {why}; the kernel takes the first in its own "
                     "list order, which ipvsadm's sorted listing does not show, so each is shown with an equal share")
    return [(d, 1.0 / len(cands)) for d in cands]


def _send(node: Node, path: Path, svc: IpvsService, dest: IpvsDest, p: float, n: int, step: StepFactory) -> IpvsOutcome:
    pkt = path.packet
    cite = str(dest.source)
    share = f" (share {p:.3g})" if n > 1 else ""
    fwd = dest.forward
    if fwd is None:
        path = path.assume(f"this ipvsadm listing does not show the forward method of {dest}: assumed Masq (kube-proxy's)")
        fwd = "Masq"
    assert dest.address is not None and dest.port is not None
    new_port = dest.port if dest.port != 0 else pkt.dport  # real server port 0 keeps the packet's port
    local = dest.address in node.local_addresses() or (isinstance(dest.address, IPv4Address) and dest.address.is_loopback)
    # `ipvsadm -S` prints a Local real server as -g (Route); the kernel forwards to a local address locally.
    if fwd == "Local" or (local and fwd == "Route") or (local and dest.address == pkt.dst and new_port == pkt.dport):
        text = f"IPVS → real server {dest} Local{share}: delivered to this node unchanged"
        return IpvsOutcome(path.step(step(text, cite, "IPVS", "IPVS")), Disposition.DELIVERED, local=True)
    if fwd == "Masq":
        host = f"[{dest.address}]" if dest.address.version == 6 else str(dest.address)
        moved = path.with_packet(dst=dest.address, dport=new_port, dnat=f"{host}:{new_port}", orig_dst=pkt.dst,
                                 orig_dport=pkt.dport, dnat_node=pkt.node)
        text = f"IPVS → real server {dest} Masq, weight {dest.weight}{share}: destination rewritten to {host}:{new_port}"
        moved = moved.step(step(text, cite, "IPVS", "IPVS"))
        if local:
            return IpvsOutcome(moved, Disposition.DELIVERED, local=True)
        return IpvsOutcome(moved)
    if fwd == "Route":
        # Direct routing: the frame goes to the real server's MAC, the IP header is untouched.
        text = (f"IPVS → real server {dest} Route (direct routing){share}: sent unchanged to {dest.address}, "
                f"which must own {pkt.dst} itself (on lo, with arp_ignore) to accept it")
        moved = path.with_packet(next_hop=dest.address).step(step(text, cite, "IPVS", "IPVS"))
        return IpvsOutcome(moved.assume(f"direct routing: {dest.address} is on a network this node reaches directly"))
    # Tunnel: IP-in-IP (or GUE/GRE) to the real server; the inner packet keeps the VIP.
    text = (f"IPVS → real server {dest} Tunnel{share}: encapsulated to {dest.address} "
            f"({dest.tunnel_info or ' '.join(dest.tunnel) or 'ipip'}); the inner packet keeps {pkt.dst}:{pkt.dport}")
    moved = path.with_packet(dst=dest.address, proto="ipip", sport=None, dport=None, orig_dst=pkt.dst,
                             orig_dport=pkt.dport).step(step(text, cite, "IPVS", "IPVS"))
    return IpvsOutcome(moved.assume("the outer (tunnel) packet is what OUTPUT and POSTROUTING see; its source is the node's"))
