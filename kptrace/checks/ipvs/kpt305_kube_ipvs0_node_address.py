from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.ipvs.facts import (
    IPVS_IPS,
    KUBE_IPVS0,
    ip_entries,
    ipvs_filter_reject,
    ipvs_gate,
    own_addresses,
    set_name,
    vip_addresses,
)
from kptrace.checks.registry import Outcome, check, fail, passed
from kptrace.model.finding import Severity


@check(id="KPT305", name="kube-ipvs0-node-address", severity=Severity.HIGH, needs=("addresses",),
       remediation="Find the Service that names the address (kubectl get svc -A -o wide | grep <address>: "
                   "spec.externalIPs or a load-balancer IP) and give it an address no node has; kube-proxy then removes "
                   "it from kube-ipvs0 on every node (by hand: ip addr del <address>/32 dev kube-ipvs0). Make it "
                   "permanent in the Service manifest, and keep node addresses out of externalIPs (admission plugin "
                   "DenyServiceExternalIPs, or a policy).")
def kube_ipvs0_node_address(ctx: CheckContext) -> Iterator[Outcome]:
    """kube-ipvs0 holds a node's own address (a node IP, or one also on another interface): traffic to that node breaks."""
    node = ctx.node
    assert node is not None
    _, stop = ipvs_gate(ctx, {"ip-addr.txt": bool(node.addresses)})
    if stop is not None:
        yield stop
        return
    own = own_addresses(node)
    peers = [(peer, own_addresses(peer), set(peer.node_ips)) for peer in ctx.peers]
    ipvs_ips = {ip: m for fam in (4, 6) for ip, m in ip_entries((node.ipsets or {}).get(set_name(IPVS_IPS, fam))).items()}
    reject = ipvs_filter_reject(ctx)
    vips = vip_addresses(node)
    found = False
    for a in vips:
        ip = a.address.ip
        if ip.is_loopback:
            continue
        other = own.get(ip)
        if other is not None or ip in node.node_ips:
            found = True
            what = " and ".join(([f"also on {other.iface}"] if other is not None else [])
                                + (["this node's IP (node.yaml / --node-ip)"] if ip in node.node_ips else []))
            member = ipvs_ips.get(ip)
            blocked = member is not None and reject is not None
            filtered = (f"; it is in {IPVS_IPS}, so KUBE-IPVS-FILTER rejects new connections to its ports that are "
                        f"not a Service's (ssh, the kubelet's 10250, the API server)" if blocked else "")
            yield fail(f"{KUBE_IPVS0} holds {ip}, {what}: a Service (externalIPs or a load-balancer IP) names this "
                       f"node's address, so every node's kube-proxy binds it to its own {KUBE_IPVS0} and routes it "
                       f"locally: the other nodes can no longer reach this node at {ip}, and IPVS takes the Service's "
                       f"ports on it here{filtered}",
                       a.source, other.source if other else None,
                       *((member.source, reject) if member is not None and blocked else ()))
            continue
        for peer, peer_own, peer_ips in peers:
            theirs = peer_own.get(ip)
            if theirs is not None or ip in peer_ips:
                found = True
                where = f" (on its {theirs.iface})" if theirs is not None else " (its node IP)"
                yield fail(f"{KUBE_IPVS0} holds {ip}, {peer.name}'s address{where}: a Service (externalIPs or a "
                           f"load-balancer IP) names it, so this node routes {ip} locally (table local) and can no "
                           f"longer reach {peer.name} at that address: not its kubelet or NodePorts, nor, when {ip} "
                           f"is its overlay endpoint, its pods", a.source, theirs.source if theirs else None)
                break
    if not found:
        yield passed(f"none of the {len(vips)} {KUBE_IPVS0} address(es) is a node's own address"
                     + (f" (compared with {', '.join(p.name for p in ctx.peers)} too)" if ctx.peers else ""))

