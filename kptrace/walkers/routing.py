"""The kernel's route lookup (fib): policy rules by priority, then longest prefix in the table.

Without any route in the input kptrace falls back to "node address = local, else out of the
interface whose connected subnet holds it" and says so; with routes it answers like `ip route get`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from kptrace.model.flow import IPAddress
from kptrace.model.node import Node
from kptrace.model.routing import Nexthop, PolicyRule, Route

_LOOPBACK4 = IPv4Network("127.0.0.0/8")
# The rules every Linux kernel starts with (`ip rule` on a fresh box).
DEFAULT_RULES = (
    PolicyRule(0, table="local"),
    PolicyRule(32766, table="main"),
    PolicyRule(32767, table="default"),
)
FAILING_TYPES = {"blackhole", "unreachable", "prohibit"}


@dataclass(frozen=True, slots=True)
class RouteResult:
    kind: str  # local | unicast | broadcast | multicast | blackhole | unreachable | prohibit | none
    route: Route | None = None
    rule: PolicyRule | None = None
    nexthops: tuple[Nexthop, ...] = ()
    assumptions: tuple[str, ...] = field(default=())
    reason: str = ""  # why the lookup is undetermined

    @property
    def cite(self) -> str | None:
        if self.route is not None and self.route.source is not None:
            return str(self.route.source)
        return None


def _table_name(t: str | None) -> str:
    return {"255": "local", "254": "main", "253": "default"}.get(t or "main", t or "main")


def _rule_matches(r: PolicyRule, src: IPAddress | None, dst: IPAddress, iif: str | None, oif: str | None, mark: int) -> bool:
    ok = True
    if r.src is not None:
        ok = ok and src is not None and src.version == r.src.version and src in r.src
    if r.dst is not None:
        ok = ok and dst.version == r.dst.version and dst in r.dst
    if r.iif is not None:
        # Locally generated packets match `iif lo`.
        ok = ok and (iif or "lo") == r.iif
    if r.oif is not None:
        ok = ok and oif == r.oif
    if r.fwmark is not None:
        value, mask = r.fwmark
        ok = ok and (mark & mask) == value
    return ok != r.invert


def _best_in_table(routes: list[Route], table: str, dst: IPAddress) -> Route | None:
    best: Route | None = None
    for rt in routes:
        if _table_name(rt.table) != table or rt.dst.version != dst.version or dst not in rt.dst:
            continue
        if best is None or (rt.dst.prefixlen, -rt.metric) > (best.dst.prefixlen, -best.metric):
            best = rt
    return best


def lookup(node: Node, dst: IPAddress, src: IPAddress | None = None, iif: str | None = None,
           oif: str | None = None, mark: int = 0) -> RouteResult:
    family_routes = [r for r in node.routes if r.dst.version == dst.version]
    if not family_routes:
        return _fallback(node, dst)
    v = dst.version
    # `ip rule` and `ip -6 rule` are separate lists; a rule with an address selector belongs to its family.
    rules = sorted([r for r in node.policy_rules if not ((r.src and r.src.version != v) or (r.dst and r.dst.version != v))]
                   or list(DEFAULT_RULES), key=lambda r: r.priority)
    has_local_table = any(_table_name(r.table) == "local" for r in family_routes)
    for rule in rules:
        if rule.unknown:
            return RouteResult("undetermined", None, rule, reason=f"ip rule {rule.priority} has selectors kptrace does not model: {' '.join(rule.unknown)}")
        if not _rule_matches(rule, src, dst, iif, oif, mark):
            continue
        if rule.action in FAILING_TYPES:
            return RouteResult(rule.action, None, rule)
        if rule.action not in ("lookup", "table"):
            continue
        table = _table_name(rule.table)
        if table == "local" and not has_local_table:
            local = _fallback_local(node, dst)
            if local:
                how = ("node addresses are local" if dst in node.local_addresses() or not isinstance(dst, IPv4Address)
                       or dst in _LOOPBACK4 else f"{dst} is the `src` of a route, so a node address, and local")
                return RouteResult("local", None, rule, (), (f"no local routing table in the input: {how}",))
            continue
        rt = _best_in_table(family_routes, table, dst)
        if rt is None or rt.type == "throw":
            continue
        if rt.unknown:
            return RouteResult("undetermined", rt, rule, reason=f"route {rt.dst} has attributes kptrace does not model: {' '.join(rt.unknown)}")
        if rt.type in FAILING_TYPES | {"local", "broadcast", "multicast"}:
            return RouteResult(rt.type, rt, rule)
        hops = tuple(h for h in _resolve(family_routes, rt) if "dead" not in h.flags)
        if not hops:
            return RouteResult("unreachable", rt, rule)
        return RouteResult("unicast", rt, rule, hops)
    return RouteResult("none")


def _resolve(routes: list[Route], rt: Route) -> tuple[Nexthop, ...]:
    """Fill a missing `dev` from the route to the gateway, as the kernel does for `via X` alone."""
    out = []
    for nh in rt.nexthops or (Nexthop(None, None),):
        if nh.dev is None and nh.gateway is not None:
            via = _best_in_table(routes, "main", nh.gateway)
            if via is not None and via.nexthops:
                nh = Nexthop(nh.gateway, via.nexthops[0].dev, nh.weight, nh.onlink, nh.flags)
        out.append(nh)
    return tuple(out)


def route_sources(node: Node) -> set[IPAddress]:
    """The `src` of the node's routes: the kernel only accepts a preferred source that is one of the
    node's addresses (`192.168.0.0/24 dev eth0 proto kernel scope link src 192.168.0.2`), so these are
    node addresses even when the input has no address list."""
    return {r.src for r in node.routes if r.src is not None}


def knows_local(node: Node, dst: IPAddress) -> bool:
    """Does the input show which addresses of dst's family are the node's (so that one not among them is not)?
    An address list (`ip addr`, --node-ip, node.yaml), the `src` of a route, or the local routing table;
    loopback addresses are always local."""
    if (isinstance(dst, IPv4Address) and dst in _LOOPBACK4) or (dst.version == 6 and str(dst) == "::1"):
        return True
    if node.knows_addresses or route_sources(node):
        return True
    return any(_table_name(r.table) == "local" and r.dst.version == dst.version for r in node.routes)


def _fallback_local(node: Node, dst: IPAddress) -> bool:
    if isinstance(dst, IPv4Address) and dst in _LOOPBACK4:
        return True
    return (dst.version == 6 and str(dst) == "::1") or dst in node.local_addresses() or dst in route_sources(node)


def _fallback(node: Node, dst: IPAddress) -> RouteResult:
    note = ("no route table in the input (ip-route.txt): a node address is local, anything else leaves "
            "through the interface whose subnet holds it",)
    if _fallback_local(node, dst):
        return RouteResult("local", assumptions=note)
    best = None
    for a in node.addresses:
        net = a.address.network
        if net.version == dst.version and dst in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, a.iface)
    hop = (Nexthop(None, best[1]),) if best else (Nexthop(None, None),)
    return RouteResult("unicast", nexthops=hop, assumptions=note)


def describe(res: RouteResult, dst: IPAddress) -> str:
    """One line like `ip route get` prints, with the rule and table that decided."""
    where = ""
    if res.rule is not None and res.route is not None:
        where = f" (rule {res.rule.priority}: table {_table_name(res.rule.table)}, route {res.route.dst})"
    elif res.rule is not None:
        where = f" (rule {res.rule.priority})"
    if res.kind == "local":
        return f"{dst} is local{where}: deliver"
    if res.kind == "unicast":
        hops = ", ".join(
            (f"via {h.gateway} " if h.gateway else "") + (f"dev {h.dev}" if h.dev else "dev ?") + (" onlink" if h.onlink else "")
            + (f" weight {h.weight}" if len(res.nexthops) > 1 else "")
            for h in res.nexthops
        )
        return f"{dst} {hops}{where}"
    if res.kind == "undetermined":
        return f"route to {dst} undetermined: {res.reason}"
    if res.kind == "none":
        return f"no route to {dst}: no rule's table has a matching route (network unreachable)"
    return f"{dst}: {res.kind} route{where}"
