from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, local_pod_subnets, overlays
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Location, Severity
from kptrace.model.node import Node
from kptrace.model.routing import Route


def _main(node: Node) -> list[Route]:
    return [r for r in node.routes if r.table in ("main", "254") and r.type == "unicast"]


def _stale_neighbours(ctx: CheckContext) -> Iterator[Outcome]:
    """A VTEP neighbour entry (flannel.1's, programmed by flanneld from the peer's VtepMAC annotation) whose MAC
    is not the MAC the peer's own device has: frames reach the peer and are dropped there (flannel#1155:
    systemd >= 242 re-programs the device's MAC after flanneld published it). Needs no route: the entry's
    address is the peer's device address."""
    node = ctx.node
    over = set(overlays(node))
    for n in node.neighbors:
        if not n.lladdr or not (n.dev in over or n.dev.startswith(("flannel", "vxlan"))):
            continue
        for peer in ctx.peers:
            addr = next((a for a in peer.addresses if a.address.ip == n.dst and a.iface == n.dev), None)
            link = next((lk for lk in peer.links if lk.name == n.dev and lk.mac), None)
            if addr is None or link is None or link.mac is None or link.mac.lower() == n.lladdr.lower():
                continue
            yield fail(f"{n.dev}'s neighbour entry says {n.dst} is {n.lladdr}, but {peer.name}'s {link.name} (which "
                       f"holds {n.dst}) has MAC {link.mac}: encapsulated packets reach {peer.name} and are dropped "
                       f"there (its {link.name} was given another MAC after flanneld published it: flannel#1155, "
                       f"systemd's MACAddressPolicy)", n.source, link.source, addr.source)


@check(id="KPT402", name="overlay-peer-missing", severity=Severity.HIGH, needs=("routes", "neighbors", "fdb"),
       remediation="Restart flanneld (or the CNI agent) on this node so it re-programs the routes and the flannel.1 "
                   "neighbour and fdb entries from the nodes' annotations (flannel.alpha.coreos.com/backend-data holds "
                   "each node's VTEP MAC); if a node's flannel.1 was recreated, restart flanneld there too.")
def overlay_peers(ctx: CheckContext) -> Iterator[Outcome]:
    """A remote node's pod subnet has no route, or flannel.1's neighbour or fdb entry for it is missing or stale."""
    node = ctx.node
    stale = list(_stale_neighbours(ctx))
    yield from stale
    if not node.routes:
        if not stale:
            yield missing("ip-route.txt")
        return
    main, found = _main(node), bool(stale)
    for peer in ctx.peers:
        for subnet in local_pod_subnets(peer)[:1]:
            best = max((r for r in main if r.dst.version == subnet.version and subnet.network_address in r.dst),
                       key=lambda r: r.dst.prefixlen, default=None)
            if best is None or best.dst.prefixlen == 0:
                found = True
                yield fail(f"no route for {peer.name}'s pod subnet {subnet}: traffic to its pods "
                           + ("follows the default route out of the node network" if best else "has no route at all"),
                           best.source if best else None)
    over = set(overlays(node))
    hops = [(r, h) for r in main for h in r.nexthops if h.dev in over and h.gateway is not None]
    if hops and (not node.neighbors or not node.fdb):
        yield missing(*[f for f, have in (("ip-neigh.txt", node.neighbors), ("bridge-fdb.txt", node.fdb)) if not have],
                      why=f"{len(hops)} routes through {', '.join(sorted(over))} to resolve")
        return
    for r, h in hops:
        # The VXLAN device is NOARP: flanneld programs a neighbour (VTEP IP -> MAC) and an fdb entry
        # (MAC -> node address) per node; without them the kernel drops the packet instead of asking.
        n = next((n for n in node.neighbors if n.dst == h.gateway and n.dev == h.dev and n.lladdr), None)
        if n is None or n.state in ("FAILED", "INCOMPLETE"):
            found = True
            yield fail(f"route {r.dst} via {h.gateway} dev {h.dev}: no neighbour entry for {h.gateway} on {h.dev}, "
                       f"so packets to {r.dst} are dropped ({h.dev} does not ARP; flanneld must add it)", r.source,
                       n.source if n else None)
            continue
        assert n.lladdr is not None
        fdb = next((f for f in node.fdb if f.dev == h.dev and f.mac.lower() == n.lladdr.lower() and f.dst), None)
        if fdb is None:
            found = True
            yield fail(f"route {r.dst} via {h.gateway} dev {h.dev}: no fdb entry for VTEP MAC {n.lladdr}, so the "
                       f"kernel does not know which node to send the encapsulated packet to", r.source, n.source)
            continue
        if n.source is not None and any(Location(n.source.file, n.source.line) in o.locations for o in stale):
            continue  # said above, from the peer's own device
        owner = next((p for p in ctx.peers if fdb.dst in p.local_addresses()), None)
        link = next((lk for lk in owner.links if lk.name == h.dev or lk.vxlan is not None), None) if owner else None
        if owner is not None and link is not None and link.mac and link.mac.lower() != n.lladdr.lower():
            found = True
            yield fail(f"route {r.dst} via {h.gateway} dev {h.dev}: the neighbour entry says {h.gateway} is "
                       f"{n.lladdr}, but {owner.name}'s {link.name} has MAC {link.mac} (recreated since flanneld "
                       f"programmed this node): the packets reach {owner.name} and are dropped there", r.source,
                       n.source, fdb.source, link.source)
    if not found:
        what = [f"{len(hops)} overlay routes resolve to a neighbour and fdb entry"] if hops else []
        if ctx.peers:
            what.append(f"every pod subnet of {', '.join(p.name for p in ctx.peers)} is routed")
        yield passed("; ".join(what) if what else "no overlay routes and no other node's bundle to compare with")
