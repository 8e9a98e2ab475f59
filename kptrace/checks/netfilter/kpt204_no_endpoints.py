from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import (
    CheckContext,
    comment_service,
    kube_rules,
)
from kptrace.checks.registry import Outcome, check, fail, passed
from kptrace.model.finding import Severity
from kptrace.model.node import Node
from kptrace.model.source import Source

NO_ENDPOINTS = " has no endpoints"


@check(id="KPT204", name="service-no-endpoints", severity=Severity.MEDIUM, needs=("rules",),
       remediation="kubectl get endpointslices -n <ns> -l kubernetes.io/service-name=<name>: fix the Service's "
                   "selector or targetPort, or the pods' readiness, so the Service has ready endpoints.")
def no_endpoints(ctx: CheckContext) -> Iterator[Outcome]:
    """A Service has no endpoints: kube-proxy rejects its traffic ("has no endpoints") or its KUBE-SVC chain is empty."""
    node = ctx.node
    assert node is not None
    services: dict[str, list[Source]] = {}
    for _, rs in sorted(node.rulesets.items()):
        kube = kube_rules(ctx, rs)
        for r in kube.filter_services:
            svc = comment_service(r, NO_ENDPOINTS)
            if svc and r.target in ("REJECT", "DROP"):
                services.setdefault(svc, []).append(r.source)
        names = {r.target: (r.comment() or r.target).removesuffix(" cluster IP") for r in kube.services}
        for name, decl in kube.svc_chains.items():
            if name not in kube.svc_endpoints:
                services.setdefault(names.get(name, name), []).append(decl)
    for svc, sources in _empty_cluster_ip_services(node):
        services.setdefault(svc, []).extend(sources)
    for svc, sources in sorted(services.items()):
        yield fail(f"{svc} has no endpoints: kube-proxy rejects connections to it (ICMP port unreachable, or a TCP "
                   f"reset); its selector matches no ready pod", *sorted(sources, key=lambda s: (s.file, s.line)))
    if not services:
        # In IPVS mode the Services are virtual services: only ipvsadm and the KUBE-CLUSTER-IP set show them all.
        from kptrace.checks.ipvs.facts import ipvs_evidence

        ipvs = ("ipvs", "ipsets") if ipvs_evidence(ctx) is not None else ()
        yield passed("every Service in kube-proxy's rules has endpoints", needs=("rules", *ipvs))


def _empty_cluster_ip_services(node: Node) -> list[tuple[str, list[Source]]]:
    """IPVS mode: a ClusterIP virtual service (in the KUBE-CLUSTER-IP set) without any real server is a Service
    without endpoints, as kube-proxy's iptables mode shows it with a REJECT: the same finding, same severity."""
    from kptrace.checks.ipvs.facts import CLUSTER_IP, ip_port_entries, service_key, set_name

    out: list[tuple[str, list[Source]]] = []
    sets = node.ipsets or {}
    for vs in node.ipvs or []:
        key = service_key(vs)
        if key is None or vs.dests:
            continue
        member = ip_port_entries(sets.get(set_name(CLUSTER_IP, key[0].version))).get(key)
        if member is not None:
            out.append((f"ipvs/{vs}", [vs.source, member.source]))
    return out
