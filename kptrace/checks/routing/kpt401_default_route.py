from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.inputs import CheckContext, dual_stack, service_vips
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.walkers.routing import lookup

MAX_LISTED = 5


@check(id="KPT401", name="no-default-route", severity=Severity.HIGH,
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
                       *(r.source for _, _, r in unrouted[:MAX_LISTED]))
        else:
            yield passed(f"no IPv{family} default route, but " + ("every Service address is routed" if vips else
                         "no Service address in the dump needs one"))
