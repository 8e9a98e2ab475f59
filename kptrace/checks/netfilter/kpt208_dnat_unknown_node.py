from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, RawRule, dnat_targets, pod_networks
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.model.flow import IPAddress


@check(id="KPT208", name="dnat-to-unknown-node", severity=Severity.MEDIUM, needs=("rules",),
       remediation="Find the endpoint (kubectl get endpointslices -A -o wide | grep <address>): remove a stale "
                   "manual Endpoints/EndpointSlice or a deleted node's address, or add the node's bundle to the check.")
def dnat_unknown_node(ctx: CheckContext) -> Iterator[Outcome]:
    """A DNAT goes to an address on the node network that is neither this node nor any node the bundle knows."""
    node = ctx.node
    assert node is not None
    node_nets = [a.address.network for a in node.addresses if a.address.ip in node.node_ips]
    if not node_nets:
        yield missing("node.yaml", why="this node's address (node_ips, or --node-ip) and so the node network are not known")
        return
    # flanneld programs one VXLAN fdb entry per other node, with that node's address as dst: the only
    # complete node list a bundle has. Other nodes' bundles add to it but need not cover every node.
    listed = {f.dst for f in node.fdb if f.dst is not None}
    if not listed:
        yield missing("bridge-fdb.txt", why="the other nodes' addresses come from the overlay's fdb entries")
        return
    known: set[IPAddress] = listed | node.local_addresses()
    for peer in ctx.peers:
        known |= peer.local_addresses()
    pods = pod_networks(node) + [n for p in ctx.peers for n in pod_networks(p)]
    strangers: dict[IPAddress, RawRule] = {}
    for ip, r in dnat_targets(ctx).items():
        if ip in known or any(ip.version == n.version and ip in n for n in pods):
            continue
        if any(ip.version == n.version and ip in n for n in node_nets):
            strangers.setdefault(ip, r)
    for ip, r in sorted(strangers.items(), key=lambda kv: (kv[0].version, kv[0])):
        yield fail(f"DNAT to {ip} ({r.comment() or r.chain}): an address on the node network "
                   f"({', '.join(str(n) for n in node_nets)}) that is not this node and not a node in the bundle: "
                   f"a removed node's, or a hand-made endpoint (fine only for a host outside the cluster on purpose)", r.source)
    if not strangers:
        yield passed(f"every DNAT target on the node network is a known node ({len(known)} addresses known)")
