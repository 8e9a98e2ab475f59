from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, dumped, has_assumed, kube_rules
from kptrace.checks.registry import Outcome, check, fail, missing, passed, warn
from kptrace.model.netfilter import Ruleset
from kptrace.model.node import Node
from kptrace.model.finding import Severity

BASE_JUMPS = (("PREROUTING", "KUBE-SERVICES"), ("OUTPUT", "KUBE-SERVICES"), ("POSTROUTING", "KUBE-POSTROUTING"))


def _listed_base_chains(node: Node, fam: int, rs: Ruleset) -> Iterator[Outcome]:
    cov = node.coverage[fam]
    for base, target in BASE_JUMPS:
        chain = rs.chain("nat", base)
        if ("nat", base) not in cov.complete or chain is None:
            continue
        if any(r.target and r.target.name == target for r in dumped(chain)):
            continue
        if rs.chain("nat", target) is not None:
            yield fail(f"nat {base}, listed whole ({chain.source}), has no jump to {target}: packets never reach "
                       f"kube-proxy's Service rules", chain.source)
        elif node.kube_nodes:
            # No chain of kube-proxy's in what was pasted, on a node `kubectl get node` shows.
            yield warn(f"nat {base}, listed whole ({chain.source}), has no jump to {target}, on a Kubernetes node: "
                       f"kube-proxy in iptables or IPVS mode always adds it (nftables mode and kube-proxy replacements "
                       f"such as Cilium do not), so unless one of those runs here, Services go nowhere; a firewalld "
                       f"restart or an iptables-restore at boot flushes it", chain.source)


@check(id="KPT206", name="kube-jumps-missing", severity=Severity.HIGH, needs=("rules",),
       remediation="Restart kube-proxy (it re-adds its jumps at every sync); if they vanish again, find what flushes "
                   "the built-in chains (firewalld reload, iptables-restore of a saved ruleset at boot such as "
                   "/etc/iptables/rules.v4 or /etc/sysconfig/iptables, a CNI) and stop it.")
def kube_jumps(ctx: CheckContext) -> Iterator[Outcome]:
    """kube-proxy's jumps from the built-in nat chains are missing, or KUBE-NODEPORTS is not last in KUBE-SERVICES."""
    node = ctx.node
    assert node is not None
    found, checked = False, []
    for fam, rs in sorted(node.rulesets.items()):
        nat = rs.tables.get("nat")
        if fam in node.coverage and nat is not None:
            # A listing or an excerpt: only a built-in chain listed whole shows a jump is not there.
            outcomes = list(_listed_base_chains(node, fam, rs))
            yield from outcomes or [missing("iptables-save.txt", why=f"{rs.file} is a listing or excerpt, not a "
                                                                     f"whole dump")]
            found = True
            continue
        if nat is None or "KUBE-SERVICES" not in nat.chains:
            continue
        checked.append(rs.file)
        services = nat.chains["KUBE-SERVICES"]
        # Only rules as dumped count: the loader adds these jumps (<assumed:kube-proxy>) when a dump has none.
        gone = [f"nat {base} → {target}" for base, target in BASE_JUMPS if target in nat.chains
                and not any(r.target and r.target.name == target for r in dumped(rs.chain("nat", base)))]
        if gone:
            found = True
            note = (" (kptrace's traces assume them, cited as <assumed:kube-proxy>, because kube-proxy's own test dumps "
                    "leave them out; a node's dump must have them)") if has_assumed(rs) else ""
            yield fail(f"{rs.file} has no {', '.join(gone)} jump: packets never reach kube-proxy's Service rules "
                       f"(ClusterIPs and NodePorts go nowhere, masquerading is skipped){note}", services.source)
        rules = kube_rules(ctx, rs).services
        last = max((i for i, r in enumerate(rules) if r.target == "KUBE-NODEPORTS"), default=None)
        if last is not None and last != len(rules) - 1:
            found = True
            after = rules[last + 1]
            yield fail(f"the KUBE-NODEPORTS jump ({rules[last].source}) is not the last rule of KUBE-SERVICES: "
                       f"{len(rules) - last - 1} rule(s) follow it, from {after.source}; kube-proxy writes it last so "
                       f"a NodePort on a node address never wins over a Service's own rules, and a kube-proxy that "
                       f"did not write these rules may be fighting another writer", rules[last].source, after.source)
    if not found:
        yield passed(f"kube-proxy's base-chain jumps are in {', '.join(checked)} and KUBE-NODEPORTS is last"
                     if checked else "no kube-proxy iptables chains in the dump (kube-proxy runs in another mode, or not)")
