from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import (
    CheckContext,
    ctstates,
    dual_stack,
    iface_matches,
    is_cni_chain,
    is_kube_chain,
    nets_of,
    overlaps,
    pod_bridges,
    pod_networks,
    walk,
)
from kptrace.checks.registry import Outcome, check, fail, missing, passed, warn
from kptrace.model.finding import Severity
from kptrace.model.netfilter import Chain, IPNetwork, Rule, Ruleset
from kptrace.model.node import Node
from kptrace.parsers.iptables_save import TARGET_OPTIONS
from kptrace.parsers.placeholders import is_not_shown

# Matches that do not narrow what an accept lets through (for this check's purpose).
NEUTRAL = {"comment", "conntrack", "state"}
# Docker's own chains: what they accept (published container ports, docker0) is known without listing them.
DOCKER_CHAINS = ("DOCKER", "DOCKER-ISOLATION", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER-INGRESS")


def _not_in_input(rs: Ruleset) -> Rule | None:
    """The first rule of FORWARD's walk whose effect the input does not show: rules an elision left out, or a
    jump to a chain that is not in the listing and may accept pod traffic (a CNI's, DOCKER-USER, firewalld's)."""
    for r, _ in walk(rs, "filter", "FORWARD", lambda _: True):
        if is_not_shown(r):
            return r
        name = r.target.name if r.target else ""
        if name and name not in TARGET_OPTIONS and rs.chain("filter", name) is None and not is_kube_chain(name) \
                and name not in DOCKER_CHAINS:
            return r
    return None


def _policy_dropped(chain: Chain) -> Outcome | None:
    """What the policy's own counter shows (`iptables -L -v`, `iptables-save`): packets it dropped."""
    if chain.counters is None or chain.counters[0] == 0:
        return None
    packets, size = chain.counters
    return warn(f"filter FORWARD's policy DROP has dropped {packets} packets ({size} bytes) since its counters were "
                f"last zeroed: forwarded packets no rule accepted; on a Kubernetes node these are "
                f"pod or Service traffic unless the node forwards other traffic too (watch the counter while the "
                f"failing connection is tried)", chain.source)


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
        dropped = _policy_dropped(chain)
        if dropped is not None:
            yield dropped
        pods = [n for n in pod_networks(node) if n.version == family]
        hit = next(((r, via) for r, via in walk(rs, "filter", "FORWARD", lambda _: True)
                    if _accepts_pods(r, via, pods, bridges)), None)
        if hit is not None:
            r, via = hit
            yield passed(f"filter FORWARD policy DROP, but {r.source} accepts pod traffic", chain.source,
                         *(v.source for v in via), r.source)
        elif (unknown := _not_in_input(rs)) is not None:
            what = (f"rules left out at {unknown.source}" if is_not_shown(unknown) else
                    f"{unknown.target.name if unknown.target else '?'} (jumped to at {unknown.source})")
            yield missing("iptables-save.txt", why=f"{what}: not in the input; whether it accepts pod traffic "
                                                   f"before the policy DROP decides")
        elif not pods and not bridges and _names_networks(rs):
            yield missing("node.yaml", why="the pod CIDR is not known (node.yaml cluster_cidr or --pod-cidr), so "
                                           "which of FORWARD's accepts is for it cannot be told")
        else:
            kube = next((r for r, _ in walk(rs, "filter", "FORWARD", lambda _: False)
                         if r.target and r.target.name == "KUBE-FORWARD"), None)
            what = ", ".join(str(n) for n in pods) or ", ".join(bridges) or "whatever its CIDR: no rule accepts any network"
            also = (" KUBE-FORWARD accepts only Service traffic kube-proxy marked for masquerade (0x4000) and established "
                    "connections, so" if kube else "")
            if _ipvs_mode(node, rs):
                # IPVS takes Service traffic at LOCAL_IN and sends it on from there (OUTPUT): it never
                # crosses FORWARD; its replies do, as ESTABLISHED, which KUBE-FORWARD accepts.
                lost = ("new pod-to-pod connections across nodes are dropped (Service traffic is not: IPVS sends it "
                        "from LOCAL_IN through OUTPUT, never FORWARD)")
            else:
                lost = ("new pod-to-pod connections across nodes and pod → ClusterIP connections to endpoints on "
                        "other nodes are dropped")
            yield fail(f"filter FORWARD policy DROP and no rule accepts the pod network ({what});{also} {lost}",
                       chain.source, kube.source if kube else None,
                       fix=tuple(f"{'ip6tables' if family == 6 else 'iptables'} -I FORWARD 1 {d} {pods[0]} -j ACCEPT"
                                 for d in ("-s", "-d")) if pods else ())


def _ipvs_mode(node: Node, rs: Ruleset) -> bool:
    """kube-proxy in IPVS mode: virtual services listed, or its KUBE-IPVS-FILTER chain in the rules."""
    return bool(node.ipvs) or rs.chain("filter", "KUBE-IPVS-FILTER") is not None


def _names_networks(rs: Ruleset) -> bool:
    """Does some FORWARD accept name addresses or interfaces (one of which may be the pod network)?"""
    for r, via in walk(rs, "filter", "FORWARD", lambda _: True):
        if r.target is not None and r.target.name == "ACCEPT" and \
                any(c is not None for x in (*via, r) for c in (x.src, x.dst, x.in_iface, x.out_iface)):
            return True
    return False
