"""The chain graph of a ruleset: hooks -> built-in chains -> user chains, one edge per jump rule.

Nodes are ("hook", HOOK), ("chain", table, name); an edge carries the rule that makes it (its
Source), the kind (hook, jump or goto) and, for hook edges, the table's position in the hook.
"""

from __future__ import annotations

import networkx as nx  # type: ignore[import-untyped]

from kptrace.model.netfilter import HOOK_TABLES as HOOK_ORDER
from kptrace.model.netfilter import Ruleset

TERMINALS = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "REDIRECT"}


def chain_node(table: str, name: str) -> tuple[str, str, str]:
    return ("chain", table, name)


def build_graph(rs: Ruleset) -> nx.MultiDiGraph:
    g = nx.MultiDiGraph(family=rs.family, file=rs.file)
    for hook, tables in HOOK_ORDER.items():
        g.add_node(("hook", hook), kind="hook")
        for order, table in enumerate(tables):
            if rs.chain(table, hook) is not None:
                g.add_edge(("hook", hook), chain_node(table, hook), kind="hook", order=order)
    for t in rs.tables.values():
        for c in t.chains.values():
            g.add_node(chain_node(t.name, c.name), kind="chain", table=t.name, policy=c.policy,
                       builtin=c.builtin, rules=len(c), source=str(c.source))
            for r in c.rules:
                if r.target is None or r.target.name in TERMINALS or r.target.name not in t.chains:
                    continue
                g.add_edge(chain_node(t.name, c.name), chain_node(t.name, r.target.name),
                           kind="goto" if r.target.goto else "jump", rule=r.index, source=str(r.source))
    return g


def unreachable_chains(g: nx.MultiDiGraph) -> list[tuple[str, str]]:
    """User chains no hook can reach: rules that can never see a packet."""
    reach: set[object] = set()
    for hook in HOOK_ORDER:
        if ("hook", hook) in g:
            reach |= nx.descendants(g, ("hook", hook))
    return sorted((n[1], n[2]) for n in g.nodes if n[0] == "chain" and n not in reach)


def jump_cycles(g: nx.MultiDiGraph) -> list[list[tuple[str, str]]]:
    """Loops between chains (iptables-restore refuses them; a hand-made dump may have one)."""
    return [[(n[1], n[2]) for n in cyc] for cyc in nx.simple_cycles(nx.DiGraph(g)) if all(n[0] == "chain" for n in cyc)]
