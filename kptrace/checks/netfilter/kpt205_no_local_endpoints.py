from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import (
    CheckContext,
    comment_service,
    kube_rules,
    local_pod_subnets,
    service_endpoints,
)
from kptrace.checks.registry import Outcome, check, fail, info, passed
from kptrace.model.finding import Severity
from kptrace.model.flow import IPAddress
from kptrace.model.source import Source

NO_LOCAL = " has no local endpoints"
MAX_LISTED = 10


@check(id="KPT205", name="no-local-endpoints", severity=Severity.MEDIUM, needs=("rules",),
       remediation="If the Service's pods run on this node, make kube-proxy use the Node's name: --hostname-override "
                   "(or hostnameOverride in the KubeProxyConfiguration, usually from spec.nodeName) must equal "
                   "`kubectl get node` NAME. Otherwise schedule an endpoint here, or use Cluster traffic policy.")
def no_local_endpoints(ctx: CheckContext) -> Iterator[Outcome]:
    """A Local traffic policy Service has no endpoint on this node ("has no local endpoints"): its traffic is dropped here."""
    node = ctx.node
    assert node is not None
    drops: dict[str, list[Source]] = {}
    endpoints: dict[str, list[IPAddress]] = {}
    for _, rs in sorted(node.rulesets.items()):
        kube = kube_rules(ctx, rs)
        for r in [*kube.filter_services, *kube.nat_no_local]:
            svc = comment_service(r, NO_LOCAL)
            if svc and r.target in ("DROP", "REJECT", "KUBE-MARK-DROP"):
                drops.setdefault(svc, []).append(r.source)
                if svc not in endpoints:
                    endpoints[svc] = [ip for ip, _ in service_endpoints(ctx, rs, svc)]
    mine = local_pod_subnets(node)
    local = node.local_addresses()
    by_design: list[tuple[str, list[IPAddress], list[Source]]] = []
    for svc, sources in sorted(drops.items()):
        eps = endpoints.get(svc, [])
        here = [ip for ip in eps if ip in local or any(ip.version == n.version and ip in n for n in mine)]
        if here:
            yield fail(f"{svc}: kube-proxy drops its traffic here as having no local endpoints, yet "
                       f"{', '.join(map(str, here))} is on this node: kube-proxy does not take its own endpoints for "
                       f"local, so its node name (--hostname-override) is probably not the Node's name ({node.name})",
                       *sources)
        else:
            by_design.append((svc, eps, sources))
    if by_design:
        # One INFO for all of them: a large cluster has hundreds, and none is a fault.
        shown = "; ".join(f"{svc} (endpoints elsewhere: {', '.join(map(str, eps[:3]))}{', …' if len(eps) > 3 else ''})"
                          if eps else f"{svc} (no endpoint in this dump)" for svc, eps, _ in by_design[:MAX_LISTED])
        more = f"; and {len(by_design) - MAX_LISTED} more" if len(by_design) > MAX_LISTED else ""
        yield info(f"{len(by_design)} Service port(s) with externalTrafficPolicy or internalTrafficPolicy Local have no "
                   f"endpoint on this node, so kube-proxy drops their traffic here by design: {shown}{more}. If a pod "
                   f"of one runs here, check kube-proxy's node name (--hostname-override) against the Node name "
                   f"({node.name})" + ("" if mine else "; this node's pod subnet is not known, so that was not compared"),
                   *(src for _, _, sources in by_design[:MAX_LISTED] for src in sources))
    if not drops:
        yield passed("no Service with a Local traffic policy lacks a local endpoint")
