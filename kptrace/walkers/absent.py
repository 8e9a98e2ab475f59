"""The iptables rules of a family the input does not hold: unknown, never "no rules".

A walk through them meets, at every built-in chain, one rule standing for all the rules that may
be there; the walk says the answer depends on it (and goes on past it where it can).
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from kptrace.model.netfilter import BUILTIN_CHAINS, Chain, Ruleset, Table
from kptrace.model.node import Node
from kptrace.model.source import Source
from kptrace.parsers.placeholders import not_shown_rule

if TYPE_CHECKING:
    from kptrace.walkers.hooks import HookEntry
    from kptrace.walkers.packet import Path

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


def unknown_nft_entries(hook: str, why: str, label: str | None, pods: Sequence[IPv4Network | IPv6Network] = ()) -> list[HookEntry]:
    """A base chain standing for the node's nft tables the input does not show, at one hook: the answer depends
    on them (an UNDETERMINED branch), and the walk goes on past them as a what-if (they do not decide it)."""
    from kptrace.model.trace import Step
    from kptrace.walkers.chains import ACCEPT, MAX_CONDITIONS, UNDETERMINED
    from kptrace.walkers.hooks import HookEntry

    condition = "the node's nft tables (not in the input; give `nft list ruleset`): they do not decide it"
    reason = f"{why}: an nft base chain at {hook} may translate, drop or accept the packet"

    def walk(path: Path) -> list[tuple[Path, str]]:
        dst = path.packet.dst
        if condition in path.conditions or any(dst.version == n.version and dst in n for n in pods):
            # kube-proxy's nft table, the one the input suggests (load._unknown_nft), handles only Service
            # traffic: a packet to a pod address is not its.
            return [(path, ACCEPT)]
        s = Step(hook, None, None, None, NOT_GIVEN, UNDETERMINED, reason, 0, label)
        out: list[tuple[Path, str]] = [(path.step(s).unknown(reason), UNDETERMINED)]
        if len(path.conditions) < MAX_CONDITIONS:
            out.append((path.step(s).given(condition), ACCEPT))
        return out

    return [HookEntry(0, f"nft:{NOT_GIVEN}", False, walk)]
