from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network

from kptrace.checks.inputs import (
    CheckContext,
    ctstates,
    dumped,
    iface_matches,
    is_cni_chain,
    is_kube_chain,
    nets_of,
    node_ifaces,
    overlays,
    pod_bridges,
    walk,
)
from kptrace.checks.registry import Outcome, check, fail, passed
from kptrace.model.finding import Severity
from kptrace.model.netfilter import Rule, Ruleset

LOOPBACK = (ip_network("127.0.0.0/8"), ip_network("::1/128"))
VERDICTS = ("DROP", "REJECT")


def _ours(name: str) -> bool:
    return is_kube_chain(name) or is_cni_chain(name)


def _drops(rs: Ruleset, rule: Rule) -> Iterator[tuple[Rule, tuple[Rule, ...]]]:
    """DROP/REJECT verdicts this rule gives, itself or in the (non-kube, non-CNI) chains it jumps to."""
    target = rule.target.name if rule.target else ""
    if target in VERDICTS:
        yield rule, ()
    elif rs.chain("filter", target) is not None and not _ours(target):
        for r, via in walk(rs, "filter", target, lambda n: not _ours(n), (rule,)):
            if r.target and r.target.name in VERDICTS:
                yield r, via


def _may_hit(chain: tuple[Rule, ...], relevant: set[str] | None) -> bool:
    """Could pod or Service traffic match every rule on the way to this verdict?"""
    for r in chain:
        states = ctstates(r)
        if states is not None and states <= {"INVALID", "UNTRACKED"}:
            return False  # kube-proxy drops INVALID itself
        for cond in (r.in_iface, r.out_iface):
            if cond is not None and not cond.negated and relevant is not None \
                    and not any(iface_matches(cond.value, i) for i in relevant):
                return False  # another interface (docker0, lo, a VPN …)
        nets = nets_of(r.src) + nets_of(r.dst)
        if nets and all(any(n.version == lo.version and n.subnet_of(lo) for lo in LOOPBACK) for n in nets):  # type: ignore[arg-type]
            return False
    return True


@check(id="KPT203", name="drop-before-kube-rules", severity=Severity.HIGH,
       remediation="Move the rule after kube-proxy's and the CNI's jumps, or narrow it so it cannot match pod and "
                   "Service traffic; with firewalld add the pod and Service CIDRs to a trusted zone "
                   "(firewall-cmd --permanent --zone=trusted --add-source=<pod CIDR>) instead of editing its chains. "
                   "Persist user rules where they are loaded from (/etc/iptables/rules.v4, /etc/sysconfig/iptables).")
def drop_before_kube(ctx: CheckContext) -> Iterator[Outcome]:
    """A DROP or REJECT (firewalld, a distro default, a user rule) comes before kube-proxy's or the CNI's rules."""
    node = ctx.node
    assert node is not None
    relevant = set(pod_bridges(node) + overlays(node) + node_ifaces(node)) if node.addresses else None
    found = False
    checked = []
    for _, rs in sorted(node.rulesets.items()):
        for name in ("INPUT", "FORWARD"):
            rules = dumped(rs.chain("filter", name))
            first = next((i for i, r in enumerate(rules) if r.target and _ours(r.target.name)), None)
            if first is None:
                continue  # nothing of kube-proxy's or the CNI's here to shadow (KPT206 and KPT201 look at that)
            anchor = rules[first]
            checked.append(f"{name} of {rs.file}")
            for rule in rules[:first]:
                for verdict, via in _drops(rs, rule):
                    if not _may_hit((*via, verdict), relevant):
                        continue
                    found = True
                    assert verdict.target is not None and anchor.target is not None
                    yield fail(f"filter {name}: `{verdict.text}` ({verdict.source}"
                               + (f", reached from {via[0].source}" if via else "") + f") {verdict.target.name}s "
                               f"before kube-proxy's or the CNI's jump to {anchor.target.name} ({anchor.source}): "
                               f"Service and pod traffic it matches never reaches their accepts",
                               *(v.source for v in via), verdict.source, anchor.source)
    if not found:
        yield passed("no DROP or REJECT before kube-proxy's and the CNI's rules in filter " + (", ".join(checked) or
                     "INPUT or FORWARD (neither jumps to them in the dump)"))
