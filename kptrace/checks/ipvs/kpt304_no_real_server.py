from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, local_pod_subnets
from kptrace.checks.ipvs.facts import MAX_LISTED, capped, ipvs_gate
from kptrace.checks.registry import Outcome, check, fail, info, passed
from kptrace.model.finding import Severity
from kptrace.model.ipvs import IpvsDest, IpvsService
from kptrace.model.node import Node


@check(id="KPT304", name="ipvs-no-real-server", severity=Severity.HIGH, needs=("ipvs",),
       remediation="kubectl get endpointslices -A -o wide | grep <VIP or service>: if the Service has ready endpoints, "
                   "restart kube-proxy on this node (kubectl -n kube-system delete pod -l k8s-app=kube-proxy "
                   "--field-selector spec.nodeName=<node>) and read its log; real servers left at weight 0 with no "
                   "connections can be removed with ipvsadm -d -t <VIP:port> -r <endpoint:port>. Nothing is made "
                   "permanent by hand: kube-proxy owns the IPVS table.")
def no_real_server(ctx: CheckContext) -> Iterator[Outcome]:
    """A virtual service has no real server that can take a connection: all weight 0, or none while another node has some."""
    node = ctx.node
    assert node is not None
    _, stop = ipvs_gate(ctx, {"ipvsadm.txt": node.ipvs is not None})
    if stop is not None:
        yield stop
        return
    assert node.ipvs is not None
    # The same virtual service on the other nodes of this run, where it has real servers.
    elsewhere: dict[str, list[tuple[Node, IpvsService]]] = {}
    for peer in ctx.peers:
        for vs in peer.ipvs or []:
            if vs.dests:
                elsewhere.setdefault(str(vs), []).append((peer, vs))
    quiesced: list[Outcome] = []
    stale: list[Outcome] = []  # empty here, not elsewhere
    empty: list[IpvsService] = []
    for vs in node.ipvs:
        if vs.dests and all(d.weight == 0 for d in vs.dests):
            idle = all(d.active_conns == 0 and d.inactive_conns == 0 for d in vs.dests)
            why = ("these have none left, so kube-proxy on this node is not syncing" if idle else
                   "if the Service has ready endpoints, kube-proxy has not added them")
            quiesced.append(fail(
                f"{vs}: all {len(vs.dests)} real server(s) have weight 0 ({_list(vs.dests)}), so IPVS schedules no new "
                f"connection and answers ICMP port unreachable. kube-proxy sets weight 0 on an endpoint it removes and "
                f"deletes it once its connections end; {why} (or another tool set the weights)",
                vs.source, *(d.source for d in vs.dests)))
        elif not vs.dests:
            proof = [(peer, other) for peer, other in elsewhere.get(str(vs), []) if _cluster_wide(peer, other)]
            if not proof:
                empty.append(vs)
                continue
            peer, other = proof[0]
            stale.append(fail(
                f"{vs} has no real server here, but {peer.name}'s has {len(other.dests)} ({_list(other.dests)}), not "
                f"all of them on {peer.name}, so the Service has endpoints for the whole cluster: kube-proxy on this node "
                f"has not added them (it is not syncing, or cannot reach the API server), and IPVS answers ICMP port "
                f"unreachable", vs.source, other.source))
    yield from capped(quiesced, "virtual services whose real servers all have weight 0")
    yield from capped(stale, "virtual services without real servers here that other nodes have")
    if empty:
        shown = ", ".join(str(vs) for vs in empty[:MAX_LISTED]) + (f" and {len(empty) - MAX_LISTED} more"
                                                                   if len(empty) > MAX_LISTED else "")
        yield info(f"{len(empty)} virtual service(s) have no real server, so IPVS answers their connections with ICMP "
                   f"port unreachable: {shown}. kube-proxy keeps a virtual service without real servers for a Service "
                   f"with no ready endpoints (KPT204 reports the ClusterIP ones, as in iptables mode), and on nodes without a local "
                   f"endpoint for a Local traffic policy; if `kubectl get endpointslices` lists ready endpoints for "
                   f"one, kube-proxy on this node is not syncing", *(vs.source for vs in empty[:MAX_LISTED]))
    if not quiesced and not stale and not empty:
        yield passed(f"each of the {len(node.ipvs)} virtual service(s) has a real server with weight above 0"
                     if node.ipvs else "ipvsadm lists no virtual service")


def _list(dests: tuple[IpvsDest, ...]) -> str:
    return ", ".join(str(d) for d in dests[:3]) + (", …" if len(dests) > 3 else "")


def _cluster_wide(peer: Node, vs: IpvsService) -> bool:
    """A real server not on the peer itself: the peer's kube-proxy uses the Service's endpoints from every node.

    With a Local traffic policy a node lists only its own endpoints, and a node without one none: then an
    empty service here is by design, and only an endpoint elsewhere proves the policy is Cluster.
    """
    mine = local_pod_subnets(peer)
    if not mine:
        return False
    local = peer.local_addresses()
    return any(d.address is not None and d.address not in local
               and not any(d.address.version == n.version and d.address in n for n in mine) for d in vs.dests)
