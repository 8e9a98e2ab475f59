"""The iptables rules of a family the input does not hold: unknown, never "no rules".

A walk through them meets, at every built-in chain, one rule standing for all the rules that may
be there; the walk says the answer depends on it (and goes on past it where it can).
"""

from __future__ import annotations

from kptrace.model.netfilter import BUILTIN_CHAINS, Chain, Ruleset, Table
from kptrace.model.node import Node
from kptrace.model.source import Source
from kptrace.parsers.placeholders import not_shown_rule

NOT_GIVEN = "<not in the input>"  # the file the standing-in rules cite


def ruleset_of(node: Node, family: int) -> Ruleset:
    """The node's ruleset of this family, or one that stands for rules the input does not show."""
    rs = node.rulesets.get(family)
    return rs if rs is not None else unknown_ruleset(family, node.not_collected)


def unknown_ruleset(family: int, not_collected: dict[str, str] | None = None, why: str | None = None) -> Ruleset:
    save = "iptables-save" if family == 4 else "ip6tables-save"
    reason = (not_collected or {}).get(f"{save}.txt")
    if why is None:
        why = (f"the IPv{family} iptables rules were not collected ({reason})" if reason else
               f"the IPv{family} iptables rules are not in the input (give `{save}` output)")
    rs = Ruleset(NOT_GIVEN, family)
    for tname in ("raw", "mangle", "nat", "filter"):
        src = Source(NOT_GIVEN, 1, 1, f"(not in the input: table {tname})")
        t = rs.tables[tname] = Table(tname, src)
        for b in BUILTIN_CHAINS[tname]:
            t.chains[b] = Chain(tname, b, None, src, [not_shown_rule(tname, b, src, f"{why}: unknown chain {tname}/{b}")])
    rs.assumptions.append(why)
    return rs
