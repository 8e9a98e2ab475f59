from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import (
    CheckContext,
    comment_service,
    kube_rules,
)
from kptrace.checks.registry import Outcome, check, fail, passed
from kptrace.model.finding import Severity
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
    for svc, sources in sorted(services.items()):
        yield fail(f"{svc} has no endpoints: kube-proxy rejects connections to it (ICMP port unreachable, or a TCP "
                   f"reset); its selector matches no ready pod", *sorted(sources, key=lambda s: (s.file, s.line)))
    if not services:
        yield passed("every Service in kube-proxy's rules has endpoints")
