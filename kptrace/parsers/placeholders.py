"""Rules kptrace puts where the input does not show (or kptrace cannot read) what is there.

A walk that reaches one is UNDETERMINED, never guessed past silently: it is unknown whether it matches.
Every parser that builds rulesets from partial input uses these (iptables-save read leniently,
listings, `-S`, pastes, a ruleset the input does not hold at all).
"""

from __future__ import annotations

from kptrace.model.netfilter import Match, Option, Rule
from kptrace.model.source import Source

# A rule kptrace adds to say "what is here is not in the input": it never matches or misses, it is unknown.
NOT_SHOWN = "kptrace-not-shown"


def not_shown_rule(table: str, chain: str, source: Source, why: str) -> Rule:
    """A rule standing for rules the input leaves out: a walk that reaches it is UNDETERMINED."""
    return Rule(table=table, chain=chain, index=0, source=source,
                matches=(Match(NOT_SHOWN, (), known=False, col=1, why_unknown=why),))


def is_not_shown(rule: Rule) -> bool:
    return any(m.module == NOT_SHOWN for m in rule.matches)


def unreadable_rule(table: str, chain: str, source: Source, why: str) -> Rule:
    """A rule the input shows but kptrace cannot read: it exists, so a walk that reaches it is UNDETERMINED."""
    return Rule(table=table, chain=chain, index=0, source=source,
                matches=(Match("unparsed", (Option("--text", (source.text.strip()[:200],)),), known=False, col=1,
                               why_unknown=why),))
