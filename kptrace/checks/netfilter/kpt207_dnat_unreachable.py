from __future__ import annotations

from collections.abc import Callable, Iterator

from kptrace.checks.facts import CheckContext, dnat_targets, has_dnat
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.model.flow import IPAddress
from kptrace.model.node import Node
from kptrace.walkers.routing import FAILING_TYPES, RouteResult, describe, lookup

MAX_LISTED = 20
GROUP = {4: 24, 6: 64}


def _lookups(node: Node) -> Callable[[IPAddress], RouteResult]:
    """`lookup`, shared by addresses of one /24 (/64) that no longer route or ip rule tells apart.

    A 10k-Service node has tens of thousands of endpoints in a few hundred pod subnets.
    """
    split = {(n.version, int(n.network_address) >> (n.max_prefixlen - GROUP[n.version]))
             for n in [r.dst for r in node.routes] + [x for p in node.policy_rules for x in (p.src, p.dst) if x]
             if n.prefixlen > GROUP[n.version]}
    cache: dict[tuple[int, int], RouteResult] = {}

    def get(ip: IPAddress) -> RouteResult:
        key = (ip.version, int(ip) >> (ip.max_prefixlen - GROUP[ip.version]))
        if key in split:
            return lookup(node, ip)
        if key not in cache:
            cache[key] = lookup(node, ip)
        return cache[key]

    return get


@check(id="KPT207", name="dnat-target-unreachable", severity=Severity.HIGH, needs=("rules", "routes"),
       remediation="Restore the route to the endpoint (for pods on other nodes: the CNI's route for that node's pod "
                   "subnet, e.g. restart flanneld), bring the interface up (ip link set <if> up), or remove the "
                   "blackhole/unreachable route (ip route del <prefix>); persist routes in the network configuration "
                   "(/etc/netplan/*.yaml, /etc/sysconfig/network-scripts/route-<if>).")
def dnat_unreachable(ctx: CheckContext) -> Iterator[Outcome]:
    """A DNAT target (a Service endpoint) has no route from this node, a blackhole route, or one via a down interface."""
    node = ctx.node
    assert node is not None
    if not has_dnat(ctx):
        yield passed("no DNAT rule in the dump")
        return
    if not node.routes:
        yield missing("ip-route.txt", why="the DNAT targets' routes cannot be looked up")
        return
    targets = dnat_targets(ctx)
    links = {link.name: link for link in node.links}
    route = _lookups(node)
    bad = 0
    for ip, rule in sorted(targets.items(), key=lambda kv: (kv[0].version, kv[0])):
        res = route(ip)
        why = None
        if res.kind == "none" or res.kind in FAILING_TYPES:
            why = describe(res, ip)
        elif res.kind == "unicast":
            down = [h.dev for h in res.nexthops if h.dev and (
                {"dead", "linkdown"} & set(getattr(h, "flags", ())) or (h.dev in links and not links[h.dev].up))]
            if down and len(down) == len(res.nexthops):
                why = f"{describe(res, ip)}, but {', '.join(down)} is down"
        if why is not None:
            bad += 1
            if bad <= MAX_LISTED:
                link = links.get(res.nexthops[0].dev or "") if res.nexthops else None
                yield fail(f"DNAT to {ip} ({rule.comment() or rule.chain}) cannot leave this node: {why}",
                           rule.source, res.route.source if res.route else None, link.source if link else None)
    if bad > MAX_LISTED:
        yield fail(f"{bad - MAX_LISTED} more DNAT targets cannot be reached (only the first {MAX_LISTED} are listed)")
    if not bad:
        yield passed(f"all {len(targets)} DNAT targets have a usable route")
