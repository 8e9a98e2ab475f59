from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import (
    CheckContext,
    conf_key,
    local_pod_subnets,
    node_ifaces,
    overlaps,
    overlays,
    pod_bridges,
    pod_networks,
)
from kptrace.checks.registry import Outcome, check, fail, missing, passed, warn
from kptrace.model.finding import Severity
from kptrace.model.node import Node, Setting
from kptrace.model.routing import Route
from kptrace.model.source import Source


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def _devs(r: Route) -> set[str]:
    return {h.dev for h in r.nexthops if h.dev}


def _asymmetry(node: Node, iface: str) -> tuple[str, Source | None] | None:
    """Why traffic arriving on iface would have its reply routed out of another interface, if it would."""
    main = [r for r in node.routes if r.dst.version == 4 and r.table in ("main", "254") and r.type == "unicast"]
    if iface in overlays(node):
        local = local_pod_subnets(node)
        remote = [r for r in main if r.dst.prefixlen > 0 and overlaps([r.dst], pod_networks(node)) and r.dst not in local]
        elsewhere = [r for r in remote if iface not in _devs(r)]
        if elsewhere and len(elsewhere) < len(remote):
            r = elsewhere[0]
            return f"pod subnet {r.dst} is routed via {', '.join(sorted(_devs(r)))}, not {iface}", r.source
        return None
    if iface in pod_bridges(node):
        for net in local_pod_subnets(node):
            best = max((r for r in main if net.network_address in r.dst), key=lambda r: r.dst.prefixlen, default=None)
            if best is not None and iface not in _devs(best):
                return f"the route to this node's pods ({net}) leaves via {', '.join(sorted(_devs(best)))}", best.source
        return None
    # A node interface: off-link clients (NodePort, LoadBalancer, externalIPs) are answered via the default route.
    defaults = [r for r in main if r.dst.prefixlen == 0]
    if defaults and not any(iface in _devs(r) for r in defaults):
        devs = ", ".join(sorted(set().union(*(_devs(r) for r in defaults))))
        why = (f"the default route leaves via {devs}, so off-link clients reaching NodePorts or LoadBalancer IPs "
               f"through {iface} are dropped")
        return why, defaults[0].source
    return None


CILIUM_IFACES = ("lxc", "cilium_")


def _cilium_rp_filter(node: Node, all_v: int, all_s: Setting) -> Outcome | None:
    """Cilium routes its pods' traffic so that any reverse-path filter drops some of it: it needs 0, and
    systemd >= 245 (50-default.conf: net.ipv4.conf.*.rp_filter = 2) sets 2 on every new interface."""
    prefix, suffix = "net.ipv4.conf.", ".rp_filter"
    found: list[tuple[str, int, Source]] = []
    for key, s in node.sysctls.items():
        if key.startswith(prefix) and key.endswith(suffix):
            iface = key[len(prefix):-len(suffix)].replace("/", ".")
            v = _int(s.value)
            if iface.startswith(CILIUM_IFACES) and v is not None and max(all_v, v) != 0:
                found.append((iface, max(all_v, v), s.source))
    if not found:
        return None
    shown = ", ".join(f"{i} = {v}" for i, v, _ in found[:6]) + (", …" if len(found) > 6 else "")
    return warn(f"Cilium's interfaces filter by reverse path (effective rp_filter, the larger of conf.all = {all_v} "
                f"and the interface's: {shown}): Cilium needs 0 on them, or pod traffic leaving the node and "
                f"pod → Service traffic (kube-proxy IPVS) is dropped (cilium#10645: systemd >= 245 sets 2 on new "
                f"interfaces; cilium#19761)", all_s.source, *(s for _, _, s in found[:6]))


@check(id="KPT104", name="rp-filter-strict", severity=Severity.MEDIUM,
       remediation="sysctl -w net.ipv4.conf.all.rp_filter=2 and net.ipv4.conf.<if>.rp_filter=2 (loose) for the "
                   "interfaces shown; make it permanent in /etc/sysctl.d/99-kubernetes.conf.")
def rp_filter(ctx: CheckContext) -> Iterator[Outcome]:
    """Strict rp_filter (1) on an interface whose traffic is answered through another one: the kernel drops it."""
    node = ctx.node
    assert node is not None
    all_s = node.sysctls.get("net.ipv4.conf.all.rp_filter")
    if all_s is None or _int(all_s.value) is None:
        yield missing("sysctl.txt", why="net.ipv4.conf.all.rp_filter is not in it")
        return
    all_v = _int(all_s.value) or 0
    ifaces = sorted(set(pod_bridges(node) + overlays(node) + node_ifaces(node)))
    if not ifaces:
        prefix, suffix = "net.ipv4.conf.", ".rp_filter"
        ifaces = sorted(k[len(prefix):-len(suffix)].replace("/", ".") for k in node.sysctls
                        if k.startswith(prefix) and k.endswith(suffix)
                        and k[len(prefix):-len(suffix)] not in ("all", "default", "lo"))
    cilium = _cilium_rp_filter(node, all_v, all_s)
    if cilium is not None:
        yield cilium
    strict: list[tuple[str, Source]] = []
    unknown: list[str] = []
    for i in ifaces:
        s = node.sysctls.get(conf_key(4, i, "rp_filter"))
        v = _int(s.value) if s is not None else None
        # The kernel applies the larger of conf.all and conf.<if> (IN_DEV_RPFILTER).
        if v is None and all_v != 2:
            unknown.append(i)
        elif max(all_v, v or 0) == 1:
            strict.append((i, s.source if s is not None and v == 1 else all_s.source))
    if not strict:
        if unknown:
            yield missing("sysctl.txt", why=f"net.ipv4.conf.<if>.rp_filter of {', '.join(unknown)} is not in it")
        elif cilium is None:
            yield passed(f"rp_filter is not strict on {', '.join(ifaces) or 'any interface'} "
                         f"(conf.all.rp_filter = {all_v})", all_s.source)
        return
    if not node.routes:
        yield missing("ip-route.txt", why=f"rp_filter = 1 on {', '.join(i for i, _ in strict)}; whether replies "
                                          f"leave by another interface depends on the routes")
        return
    bad = [(i, src, a) for i, src in strict if (a := _asymmetry(node, i)) is not None]
    for i, src, (why, route_src) in bad:
        yield fail(f"rp_filter = 1 on {i} but {why}: strict reverse-path filtering drops those packets "
                   f"(counted in LinuxIPReversePathFilter / `nstat -az TcpExtIPReversePathFilter`)", src, route_src,
                   # The kernel applies the larger of conf.all and conf.<if>: all = 2 makes every interface loose.
                   fix=("sysctl -w net.ipv4.conf.all.rp_filter=2",))
    if not bad:
        yield passed(f"rp_filter = 1 on {', '.join(i for i, _ in strict)}, and the routes back to what arrives there "
                     f"leave by the same interface", *(s for _, s in strict))
