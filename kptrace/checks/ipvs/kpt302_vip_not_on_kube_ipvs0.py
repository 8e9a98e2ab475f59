from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.ipvs.facts import (
    KUBE_IPVS0,
    MAX_LISTED,
    capped,
    ipvs_gate,
    own_addresses,
    vip_addresses,
)
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.model.flow import IPAddress
from kptrace.model.ipvs import IpvsService


@check(id="KPT302", name="ipvs-vip-not-on-kube-ipvs0", severity=Severity.HIGH, needs=("addresses", "ipvs"),
       remediation="Restart kube-proxy on this node (kubectl -n kube-system delete pod -l k8s-app=kube-proxy "
                   "--field-selector spec.nodeName=<node>) and read its log for \"Failed to bind service address\"; "
                   "kube-proxy binds every Service VIP to kube-ipvs0 and removes stale ones on each sync. Nothing "
                   "is made permanent by hand: kube-proxy rebuilds kube-ipvs0 and the virtual services.")
def vip_not_on_kube_ipvs0(ctx: CheckContext) -> Iterator[Outcome]:
    """A virtual service's VIP is not on kube-ipvs0 (nor any interface), or kube-ipvs0 holds an address with no service."""
    node = ctx.node
    assert node is not None
    _, stop = ipvs_gate(ctx, {"ipvsadm.txt": node.ipvs is not None, "ip-addr.txt": bool(node.addresses)})
    if stop is not None:
        yield stop
        return
    services = node.ipvs or []
    if any(vs.fwmark is None and vs.address is None for vs in services):
        yield missing("ipvsadm.txt", why="it lists host names, not addresses: collect it with `ipvsadm -Ln`")
        return
    vips = vip_addresses(node)
    on_ipvs0 = {a.address.ip for a in vips}
    own = own_addresses(node)
    by_vip: dict[IPAddress, list[IpvsService]] = {}
    for vs in services:
        if vs.address is not None:
            by_vip.setdefault(vs.address, []).append(vs)
    unbound: list[Outcome] = []
    for vip, vss in by_vip.items():
        if vip in on_ipvs0 or vip in own:
            continue
        names = ", ".join(str(vs) for vs in vss[:MAX_LISTED]) + (", …" if len(vss) > MAX_LISTED else "")
        unbound.append(fail(
            f"{names}: {vip} is not on {KUBE_IPVS0} (nor on any other interface), so it is not a local address: "
            f"packets to it are routed on (usually out of the default route) instead of being delivered to IPVS, "
            f"which only sees packets for local addresses; connections to the Service time out",
            *(vs.source for vs in vss)))
    stale: list[Outcome] = []
    for a in vips:
        ip = a.address.ip
        if ip not in by_vip:
            stale.append(fail(
                f"{KUBE_IPVS0} holds {ip}, but no virtual service uses it: the node takes packets to it for itself, "
                f"so they reach whatever listens on the node at that port (or are rejected) instead of a Service; "
                f"kube-proxy removes the address of a deleted Service on its next sync, so a stale one means it is "
                f"not syncing" + (f", and {ip} is also on {own[ip].iface} (KPT305)" if ip in own else ""), a.source))
    yield from capped(unbound, "virtual service address(es) on no interface")
    yield from capped(stale, f"{KUBE_IPVS0} address(es) without a virtual service")
    if not unbound and not stale:
        nodeports = sum(1 for vip in by_vip if vip not in on_ipvs0)
        yield passed(f"the {len(by_vip)} virtual service address(es) are local ({len(by_vip) - nodeports} on "
                     f"{KUBE_IPVS0}, {nodeports} node address(es) for NodePorts), and each of the {len(vips)} "
                     f"{KUBE_IPVS0} address(es) has a virtual service")
