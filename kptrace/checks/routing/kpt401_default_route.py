from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, dual_stack, node_ifaces, service_vips
from kptrace.checks.registry import Outcome, check, fail, missing, passed, warn
from kptrace.model.finding import Severity
from kptrace.model.node import Node
from kptrace.walkers.routing import lookup

MAX_LISTED = 5


def _fix(node: Node, family: int) -> tuple[str, ...]:
    """The remediation as a --what-if change where the input names its parts: a route for the Service CIDR
    (node.yaml) by the one interface holding the node's address. The gateway of a default route is not in
    an input that lacks the route, so that form is not offered."""
    cidrs = [c for c, _ in node.service_cidrs if c.version == family]
    ifaces = [i for i in node_ifaces(node) if any(a.iface == i and a.address.version == family for a in node.addresses)]
    if len(cidrs) != 1 or len(ifaces) != 1:
        return ()
    return (f"ip {'-6 ' if family == 6 else ''}route add {cidrs[0]} dev {ifaces[0]}",)


@check(id="KPT401", name="no-default-route", severity=Severity.HIGH, needs=("routes",),
       remediation="ip route add default via <gateway> dev <if> (or a route for the Service CIDR, e.g. "
                   "ip route add 10.96.0.0/12 dev <node if>); persist it in the network configuration "
                   "(/etc/netplan/*.yaml, /etc/network/interfaces, NetworkManager).")
def default_route(ctx: CheckContext) -> Iterator[Outcome]:
    """No default route (and none for the Service CIDR): connections from the node to a ClusterIP fail before DNAT."""
    node = ctx.node
    assert node is not None
    if not node.routes:
        yield missing("ip-route.txt")
        return
    for family in [4, 6] if dual_stack(node) else [4]:
        defaults = [r for r in node.routes if r.dst.version == family and r.dst.prefixlen == 0
                    and r.type == "unicast" and r.table in ("main", "254")]
        if defaults:
            yield passed(f"IPv{family} default route {defaults[0].source.text.strip() if defaults[0].source else ''}",
                         defaults[0].source)
            continue
        if node.level("routes") != "complete":
            yield missing("ip-route.txt", why="the routes shown are an excerpt: a default route may be left out")
            continue
        rs = node.rulesets.get(family)
        vips = service_vips(ctx, rs) if rs else []
        # A local process's packet is routed before nat OUTPUT can DNAT it (then rerouted): with no route
        # to the ClusterIP, connect() fails with ENETUNREACH and kube-proxy's rules are never reached.
        unrouted = [(vip, c, r) for vip, c, r in vips if lookup(node, vip).kind not in ("unicast", "local")]
        if unrouted:
            shown = ", ".join(f"{vip} ({c})" for vip, c, _ in unrouted[:MAX_LISTED])
            yield fail(f"no IPv{family} default route and no route to {len(unrouted)} Service address(es) ({shown}"
                       f"{', …' if len(unrouted) > MAX_LISTED else ''}): connections from the node itself (kubelet, "
                       f"hostNetwork pods) fail with \"network unreachable\" before kube-proxy's DNAT",
                       *(r.source for _, _, r in unrouted[:MAX_LISTED]), fix=_fix(node, family))
        elif vips:
            yield passed(f"no IPv{family} default route, but every Service address is routed", needs=("rules", "routes"))
        else:
            # Which Service addresses need a route is not in the input; the missing default route is a fault
            # of its own for whatever takes the node's address from it.
            yield warn(f"no IPv{family} default route in the main table: kubelet, kube-proxy and k3s take the node's "
                       f"address from it when --node-ip is not set (\"no default routes found\"), and connections "
                       f"from the node to a ClusterIP fail unless a route covers the Service CIDR (kube-proxy's rules "
                       f"would show which: give iptables-save.txt)", *(r.source for r in node.routes[:1]))
