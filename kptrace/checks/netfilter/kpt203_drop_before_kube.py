from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_network

from kptrace.checks.facts import (
    CheckContext,
    ctstates,
    dumped,
    iface_matches,
    is_cni_chain,
    is_kube_chain,
    nets_of,
    node_ifaces,
    overlaps,
    overlays,
    pod_bridges,
    pod_networks,
    walk,
)
from kptrace.checks.host.kpt501_host_firewall import FIREWALL_CHAINS
from kptrace.checks.registry import Outcome, check, fail, passed, warn
from kptrace.model.finding import Severity
from kptrace.model.netfilter import IPNetwork, Rule, Ruleset
from kptrace.model.source import ASSUMED_FILE

LOOPBACK = (ip_network("127.0.0.0/8"), ip_network("::1/128"))
VERDICTS = ("DROP", "REJECT")
FIREWALL_JUMPS = {name for names in FIREWALL_CHAINS.values() for name in names}


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


def _accepts_pods(rule: Rule, pods: list[IPNetwork], relevant: set[str] | None) -> bool:
    """The CNI's own accept for the pod network: a jump to its chain (FLANNEL-FWD, cali-FORWARD …), or an
    ACCEPT that only names pod addresses or pod interfaces (old flannel's `-s 10.244.0.0/16 -j ACCEPT`)."""
    target = rule.target.name if rule.target else ""
    if is_cni_chain(target):
        return True
    if target != "ACCEPT" or any(m.module not in ("comment",) for m in rule.matches):
        return False
    nets = nets_of(rule.src) + nets_of(rule.dst)
    if nets:
        # Without a known pod CIDR (node.yaml, --pod-cidr, kube-proxy's rules) a private network stands for it.
        return overlaps(nets, pods) if pods else all(n.is_private and n.prefixlen <= 24 for n in nets)
    ifaces = [c.value for c in (rule.in_iface, rule.out_iface) if c is not None and not c.negated]
    return bool(ifaces) and relevant is not None and any(iface_matches(i, r) for i in ifaces for r in relevant)


def _move(rule: Rule) -> tuple[str, ...]:
    """The remediation as --what-if changes: the rule (or the jump that leads to it) moved to the chain's end."""
    from kptrace.parsers.iptables_save import render_rule

    if rule.source.file == ASSUMED_FILE:
        return ()
    return (f"delete {rule.source.file}:{rule.source.line}", f"iptables -t {rule.table} {render_rule(rule)}")


def _shadowing(rs: Ruleset, name: str, rules: list[Rule], first: int, pods: list[IPNetwork],
               relevant: set[str] | None) -> Iterator[Outcome]:
    """A FAIL for each DROP/REJECT pod or Service traffic meets before the rule that accepts it."""
    # kube-proxy's jumps accept only some packets (KUBE-FORWARD: marked or established ones): a new pod
    # packet goes on to the CNI's accept, and a REJECT between the two still stops it.
    accept = next((i for i, r in enumerate(rules) if i >= first and _accepts_pods(r, pods, relevant)), None)
    last = accept if accept is not None and accept > first else first
    anchor = rules[last]
    for rule in rules[:last]:
        if rule.target is not None and _ours(rule.target.name):
            continue
        for verdict, via in _drops(rs, rule):
            if not _may_hit((*via, verdict), relevant):
                continue
            assert verdict.target is not None and anchor.target is not None
            what = (f"the CNI's accept for the pod network `{anchor.text.strip()}`" if last != first
                    else f"kube-proxy's or the CNI's jump to {anchor.target.name}")
            yield fail(f"filter {name}: `{verdict.text}` ({verdict.source}"
                       + (f", reached from {via[0].source}" if via else "") + f") {verdict.target.name}s "
                       f"before {what} ({anchor.source}): Service and pod traffic it matches never reaches "
                       f"their accepts",
                       *(v.source for v in via), verdict.source, anchor.source, fix=_move((*via, verdict)[0]))


@check(id="KPT203", name="drop-before-kube-rules", severity=Severity.HIGH, needs=("rules",),
       remediation="Move the rule after kube-proxy's and the CNI's jumps, or narrow it so it cannot match pod and "
                   "Service traffic; with firewalld add the pod and Service CIDRs to a trusted zone "
                   "(firewall-cmd --permanent --zone=trusted --add-source=<pod CIDR>) instead of editing its chains. "
                   "Persist user rules where they are loaded from (/etc/iptables/rules.v4, /etc/sysconfig/iptables).")
def drop_before_kube(ctx: CheckContext) -> Iterator[Outcome]:
    """A DROP or REJECT (firewalld, a distro default, a user rule) comes before kube-proxy's or the CNI's rules."""
    node = ctx.node
    assert node is not None
    relevant = set(pod_bridges(node) + overlays(node) + node_ifaces(node)) if node.addresses else None
    pods = pod_networks(node)
    found = False
    checked = []
    for _, rs in sorted(node.rulesets.items()):
        for name in ("INPUT", "FORWARD"):
            rules = dumped(rs.chain("filter", name))
            first = next((i for i, r in enumerate(rules) if r.target and _ours(r.target.name)), None)
            fails = list(_shadowing(rs, name, rules, first, pods, relevant)) if first is not None else []
            if first is not None:
                checked.append(f"{name} of {rs.file}")
            yield from fails
            found = found or bool(fails)
            fw = next((r for r in rules[:first] if r.target and r.target.name in FIREWALL_JUMPS), None)
            if fw is not None and not fails:
                # firewalld's zone chains reject what no zone allows (they end in REJECT icmp-host-prohibited):
                # rules after them are reached only by what a zone accepts.
                found = True
                anchor = rules[first] if first is not None else None
                after = (f"before kube-proxy's or the CNI's jump to {anchor.target.name} ({anchor.source})"
                         if anchor is not None and anchor.target is not None else
                         "and the input shows no rule of kube-proxy's or the CNI's in it")
                yield warn(f"filter {name}: the host firewall's chains (`{fw.text.strip()}`, {fw.source}) filter "
                           f"{name} {after}; firewalld ends them with a catch-all REJECT (icmp-host-prohibited), so "
                           f"pod and Service traffic no zone allows never reaches their accepts", fw.source)
    if not found:
        yield passed("no DROP or REJECT before kube-proxy's and the CNI's rules in filter " + (", ".join(checked) or
                     "INPUT or FORWARD (neither jumps to them in the dump)"))
