"""Add the base-chain jumps kube-proxy installs when a dump has kube-proxy's chains but not them.

kube-proxy writes its own chains with iptables-restore and adds the jumps from the built-in chains
separately (EnsureRule), so its expected-output test data has none. A node always has them; without
them nothing would reach KUBE-SERVICES. The rules below are in the final order a node shows
(each is prepended, so the list in kube-proxy's source is reversed).
"""

from __future__ import annotations

from dataclasses import replace

from kptrace.model.netfilter import BUILTIN_CHAINS, Chain, Ruleset
from kptrace.model.source import Source
from kptrace.model.source import ASSUMED_FILE
from kptrace.parsers.iptables_save import parse_rule_line

KUBE_PROXY_JUMPS = (
    ("filter", 'INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("filter", 'INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS'),
    ("filter", 'INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
    ("filter", 'FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("filter", 'FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
    ("filter", 'FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("filter", 'FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES'),
    ("filter", 'OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL'),
    ("filter", 'OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", 'PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", 'OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", 'POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'),
    # The kubelet's chain comes after kube-proxy's jumps.
    ("filter", "INPUT -j KUBE-FIREWALL"),
    ("filter", "OUTPUT -j KUBE-FIREWALL"),
)


def has_base_jumps(rs: Ruleset) -> bool:
    """True when any built-in chain already jumps to a KUBE-* chain (a real node's dump)."""
    for t in rs.tables.values():
        for name in BUILTIN_CHAINS[t.name]:
            c = t.chains.get(name)
            if c is not None and any(r.target and r.target.name.startswith("KUBE-") for r in c.rules):
                return True
    return False


def add_kube_proxy_jumps(rs: Ruleset) -> list[str]:
    """Insert the missing jumps (only those whose target chain exists); return what was assumed."""
    if has_base_jumps(rs) or rs.chain("nat", "KUBE-SERVICES") is None and rs.chain("filter", "KUBE-SERVICES") is None:
        return []
    added: list[str] = []
    inserted: dict[tuple[str, str], int] = {}
    for n, (table, text) in enumerate(KUBE_PROXY_JUMPS, start=1):
        chain_name = text.split()[0]
        target = text.split()[-1]
        t = rs.tables.get(table)
        if t is None or target not in t.chains:
            continue
        line = f"-A {text}"
        rule = parse_rule_line(table, line, ASSUMED_FILE, n)
        chain = t.chains.get(chain_name)
        if chain is None:
            chain = Chain(table, chain_name, "ACCEPT", Source(ASSUMED_FILE, n, 1, f":{chain_name} ACCEPT [0:0]"))
            t.chains[chain_name] = chain
        if target == "KUBE-FIREWALL":
            chain.rules.append(rule)
        else:
            # kube-proxy prepends, so its jumps come before any rule already in the chain.
            pos = inserted.get((table, chain_name), 0)
            chain.rules.insert(pos, rule)
            inserted[(table, chain_name)] = pos + 1
        chain.rules[:] = [replace(r, index=i) for i, r in enumerate(chain.rules, start=1)]
        added.append(f"-t {table} {line}")
    if added:
        rs.assumptions.append(
            f"{rs.file} has kube-proxy's chains but no jumps to them from the built-in chains (kube-proxy adds those "
            f"separately); assumed the {len(added)} jumps kube-proxy and the kubelet install on every node"
        )
    return added
