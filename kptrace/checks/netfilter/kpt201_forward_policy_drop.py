from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import (
    CheckContext,
    ctstates,
    dual_stack,
    iface_matches,
    is_cni_chain,
    nets_of,
    overlaps,
    pod_bridges,
    pod_networks,
    walk,
)
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.model.netfilter import IPNetwork, Rule, Ruleset

# Matches that do not narrow what an accept lets through (for this check's purpose).
NEUTRAL = {"comment", "conntrack", "state"}


def _accepts_pods(rule: Rule, via: tuple[Rule, ...], pods: list[IPNetwork], bridges: list[str]) -> bool:
    """Does this ACCEPT (reached through `via`) let new pod connections through?"""
    if rule.target is None or rule.target.name != "ACCEPT":
        return False
    chain = [*via, rule]
    if any((s := ctstates(r)) is not None and "NEW" not in s for r in chain):
        return False  # RELATED,ESTABLISHED only: replies, never a new connection
    if is_cni_chain(rule.chain):
        return True  # the CNI's own forward chain: assumed to be there for pod traffic
    if any(m.module not in NEUTRAL for r in chain for m in r.matches):
        return False  # a mark, set, port …: only part of the traffic (KUBE-FORWARD's mark rule is one)
    nets = [n for r in chain for n in nets_of(r.src) + nets_of(r.dst)]
    ifaces = [c.value for r in chain for c in (r.in_iface, r.out_iface) if c is not None and not c.negated]
    if not nets and not ifaces and not any(r.src or r.dst or r.in_iface or r.out_iface for r in chain):
        return True  # unconditional
    return overlaps(nets, pods) or any(iface_matches(p, b) for p in ifaces for b in bridges)


@check(id="KPT201", name="forward-policy-drop", severity=Severity.HIGH, needs=("rules",),
       remediation="Accept the pod network in FORWARD: iptables -I FORWARD 1 -s <cluster CIDR> -j ACCEPT && "
                   "iptables -I FORWARD 1 -d <cluster CIDR> -j ACCEPT (with Docker, put them in DOCKER-USER, which "
                   "Docker keeps first), or let the CNI add them (flannel: do not run flanneld with "
                   "--iptables-forward-rules=false); persist them in /etc/iptables/rules.v4 or the CNI's config.")
def forward_policy_drop(ctx: CheckContext) -> Iterator[Outcome]:
    """filter FORWARD drops by default (policy DROP, e.g. Docker's) and no rule accepts the pod network."""
    node = ctx.node
    assert node is not None
    bridges = pod_bridges(node)
    for family in [4, 6] if dual_stack(node) else [4]:
        rs = node.rulesets.get(family)
        chain = rs.chain("filter", "FORWARD") if rs is not None else None
        if rs is None or chain is None:
            if family == 4:
                yield passed("no filter FORWARD chain in the IPv4 dump: nothing filters forwarded traffic")
            continue
        if chain.policy != "DROP":
            yield passed(f"filter FORWARD policy {chain.policy} ({rs.file})", chain.source)
            continue
        pods = [n for n in pod_networks(node) if n.version == family]
        hit = next(((r, via) for r, via in walk(rs, "filter", "FORWARD", lambda _: True)
                    if _accepts_pods(r, via, pods, bridges)), None)
        if hit is not None:
            r, via = hit
            yield passed(f"filter FORWARD policy DROP, but {r.source} accepts pod traffic", chain.source,
                         *(v.source for v in via), r.source)
        elif not pods and not bridges and _names_networks(rs):
            yield missing("node.yaml", why="the pod CIDR is not known (node.yaml cluster_cidr or --pod-cidr), so "
                                           "which of FORWARD's accepts is for it cannot be told")
        else:
            kube = next((r for r, _ in walk(rs, "filter", "FORWARD", lambda _: False)
                         if r.target and r.target.name == "KUBE-FORWARD"), None)
            what = ", ".join(str(n) for n in pods) or ", ".join(bridges) or "whatever its CIDR: no rule accepts any network"
            also = (" KUBE-FORWARD accepts only Service traffic kube-proxy marked for masquerade (0x4000) and established "
                    "connections, so" if kube else "")
            yield fail(f"filter FORWARD policy DROP and no rule accepts the pod network ({what});{also} new pod-to-pod "
                       f"connections across nodes and pod → ClusterIP connections to endpoints on other nodes are "
                       f"dropped", chain.source, kube.source if kube else None)


def _names_networks(rs: Ruleset) -> bool:
    """Does some FORWARD accept name addresses or interfaces (one of which may be the pod network)?"""
    for r, via in walk(rs, "filter", "FORWARD", lambda _: True):
        if r.target is not None and r.target.name == "ACCEPT" and \
                any(c is not None for x in (*via, r) for c in (x.src, x.dst, x.in_iface, x.out_iface)):
            return True
    return False
