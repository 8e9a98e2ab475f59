from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, local_pod_subnets, overlays
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.model.node import Node
from kptrace.model.routing import Route


def _main(node: Node) -> list[Route]:
    return [r for r in node.routes if r.table in ("main", "254") and r.type == "unicast"]


@check(id="KPT402", name="overlay-peer-missing", severity=Severity.HIGH, needs=("routes", "neighbors", "fdb"),
       remediation="Restart flanneld (or the CNI agent) on this node so it re-programs the routes and the flannel.1 "
                   "neighbour and fdb entries from the nodes' annotations (flannel.alpha.coreos.com/backend-data holds "
                   "each node's VTEP MAC); if a node's flannel.1 was recreated, restart flanneld there too.")
def overlay_peers(ctx: CheckContext) -> Iterator[Outcome]:
    """A remote node's pod subnet has no route, or flannel.1's neighbour or fdb entry for it is missing or stale."""
    node = ctx.node
    assert node is not None
    if not node.routes:
        yield missing("ip-route.txt")
        return
    main, found = _main(node), False
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
