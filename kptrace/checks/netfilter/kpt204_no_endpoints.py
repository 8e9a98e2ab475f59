from __future__ import annotations

import re
from collections.abc import Iterator

from kptrace.checks.facts import (
    CheckContext,
    comment_service,
    kube_rules,
)
from kptrace.checks.registry import Outcome, check, fail, passed, warn
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
    grepped = list(_grepped_without_endpoints(ctx, set(services)))
    yield from grepped
    for svc, sources in sorted(services.items()):
        yield fail(f"{svc} has no endpoints: kube-proxy rejects connections to it (ICMP port unreachable, or a TCP "
                   f"reset); its selector matches no ready pod", *sorted(sources, key=lambda s: (s.file, s.line)))
    if not services and not grepped:
        # In IPVS mode the Services are virtual services: only ipvsadm and the KUBE-CLUSTER-IP set show them all.
        from kptrace.checks.ipvs.facts import ipvs_evidence

        ipvs = ("ipvs", "ipsets") if ipvs_evidence(ctx) is not None else ()
        yield passed("every Service in kube-proxy's rules has endpoints", needs=("rules", *ipvs))


def _grepped_without_endpoints(ctx: CheckContext, known: set[str]) -> Iterator[Outcome]:
    """`iptables-save | grep WORD` shows a Service's jump from KUBE-SERVICES to its KUBE-SVC chain but no rule of
    that chain. kube-proxy comments each of the chain's jumps to an endpoint with the Service's name ("ns/name:port"
    or "ns/name:port -> 10.244.1.5:80"), so a grep whose WORD is in that name would have printed them: the
    Service has no endpoints. Only a WARN: kube-proxy leaves those comments out in "large cluster mode" (over
    1000 endpoints), and the input cannot show that the paste was not cut."""
    node = ctx.node
    for fam, rs in sorted(node.rulesets.items()):
        cov = node.coverage.get(fam)
        if cov is None or not cov.greps:
            continue
        kube = kube_rules(ctx, rs)
        shown = {r.chain for r in kube.services} | set(kube.svc_endpoints) | set(kube.dnat_lines)
        seen: set[str] = set()
        for r in kube.services:
            comment = r.comment() or ""
            svc = comment.split(" ", 1)[0]
            chain = r.target
            if not chain.startswith("KUBE-SVC-") or not svc or svc in known or svc in seen or chain in shown \
                    or rs.chain("nat", chain) is not None and len(rs.chain("nat", chain) or ()) > 0:
                continue
            grep = next(((p, src) for p, src in cov.greps if p in svc or p in svc.lower()), None)
            if grep is None:
                continue
            seen.add(svc)
            m = re.search(r"(sudo\s+)?\S*ip6?tables\S*-save\b.*", grep[1].text)  # the command, without its prompt
            command = (m.group(0) if m else grep[1].text).strip()[:80]
            yield warn(f"{svc} likely has no endpoints: `{command}` prints every rule holding "
                       f"'{grep[0]}', which kube-proxy writes into each jump from {chain} to one of the Service's "
                       f"endpoints (comment \"{svc} …\"), and it printed none, only the jump to {chain} ({r.source}); "
                       f"with no REJECT for it either, connections to it hang (unless kube-proxy runs in large-cluster "
                       f"mode, over 1000 endpoints, where it leaves those comments out)", r.source, grep[1])


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
