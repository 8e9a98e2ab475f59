from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, overlays, pod_bridges
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity


@check(id="KPT403", name="pod-mtu-too-large", severity=Severity.MEDIUM, needs=("links",),
       remediation="Give pods the overlay's MTU (flannel: FLANNEL_MTU in /run/flannel/subnet.env comes from the "
                   "uplink MTU minus 50 for VXLAN; set \"mtu\" in the CNI config /etc/cni/net.d/10-flannel.conflist or "
                   "net-conf.json), then recreate the pods (their veth keeps the old MTU).")
def pod_mtu(ctx: CheckContext) -> Iterator[Outcome]:
    """Pod interfaces have a larger MTU than the overlay: large packets to pods on other nodes are dropped."""
    node = ctx.node
    assert node is not None
    if not node.links:
        yield missing("ip-link.txt")
        return
    over = [lk for lk in node.links if lk.name in overlays(node) and lk.mtu]
    if not over:
        yield passed("no overlay device: pod traffic to other nodes is not encapsulated")
        return
    tunnel = min(over, key=lambda lk: lk.mtu or 0)
    assert tunnel.mtu is not None
    bridges = pod_bridges(node)
    pods = [lk for lk in node.links if lk.mtu and (lk.name in bridges or lk.master in bridges)]
    big = [lk for lk in pods if lk.mtu and lk.mtu > tunnel.mtu]
    flannel = node.flannel
    if flannel is not None and flannel.mtu and flannel.mtu > tunnel.mtu:
        yield fail(f"FLANNEL_MTU={flannel.mtu} is larger than {tunnel.name}'s MTU {tunnel.mtu}: new pods get an MTU "
                   f"the overlay cannot carry", flannel.source, tunnel.source)
    if big:
        shown = ", ".join(f"{lk.name} mtu {lk.mtu}" for lk in big[:8]) + (", …" if len(big) > 8 else "")
        yield fail(f"{shown} > {tunnel.name} mtu {tunnel.mtu}: a pod sends packets the overlay cannot carry; "
                   f"with DF set (TCP) they are dropped, and if the ICMP \"fragmentation needed\" is lost large "
                   f"transfers to pods on other nodes hang", *(lk.source for lk in big[:8]), tunnel.source)
    elif not (flannel and flannel.mtu and flannel.mtu > tunnel.mtu):
        yield passed(f"{len(pods)} pod interfaces, none above {tunnel.name} mtu {tunnel.mtu}", tunnel.source)
