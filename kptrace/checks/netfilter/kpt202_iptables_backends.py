from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, iptables_rulesets, rule_texts
from kptrace.checks.registry import Outcome, check, fail, missing, passed, warn
from kptrace.model.finding import Location, Severity
from kptrace.checks.rule_text import RuleText
from kptrace.model.netfilter import Chain, Ruleset
from kptrace.model.node import COMPLETE
from kptrace.model.source import Source

WARNING = "# Warning: iptables-legacy tables present"
# kubelet writes KUBE-IPTABLES-HINT (mangle) and KUBE-KUBELET-CANARY in the backend it uses;
# kubernetes-sigs/iptables-wrappers picks the mode of a container's iptables from them.
KUBELET_HINTS = (":KUBE-IPTABLES-HINT ", ":KUBE-KUBELET-CANARY ")
PROXY_HINT = ":KUBE-PROXY-CANARY "


def _hints(texts: list[RuleText]) -> str:
    kubelet = [str(t.source(n, "")) for t in texts if (n := t.find(KUBELET_HINTS))]
    proxy = [str(t.source(n, "")) for t in texts if (n := t.find((PROXY_HINT,)))]
    parts = []
    if kubelet:
        parts.append(f"kubelet's hint chains (KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY) are in {', '.join(kubelet)}, "
                     f"so containers using iptables-wrappers (kube-proxy, most CNIs) pick that backend")
    if proxy:
        parts.append(f"kube-proxy's KUBE-PROXY-CANARY is in {', '.join(proxy)}")
    return "; ".join(parts)


# A built-in chain's policy that is not ACCEPT filters as a rule would (Docker's legacy `:FORWARD DROP`).
_POLICIES = tuple(f":{c} {p} " for c in ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING") for p in ("DROP",))


def _has_rules(t: RuleText) -> Location | None:
    """The first rule (or DROP policy) the dump holds: what makes its backend filter anything."""
    found = [n for n in (t.find(("-A ",)), t.find(_POLICIES)) if n is not None]
    return _loc(t.source(min(found), "")) if found else None


def _policies_differ(main: Ruleset, legacy: Ruleset) -> tuple[Chain, Chain] | None:
    """A built-in chain both listings show with different policies: one backend's table cannot show two, so the
    unnamed `iptables` is not iptables-legacy (it is iptables-nft), unless the policy changed between the two commands."""
    for table, t in sorted(main.tables.items()):
        other = legacy.tables.get(table)
        if other is None:
            continue
        for name, c in t.chains.items():
            o = other.chains.get(name)
            if c.builtin and o is not None and c.policy and o.policy and c.policy != o.policy:
                return c, o
    return None


def _loc(src: Source) -> Location:
    return Location(src.file, src.line)


def _legacy_table_modules(ctx: CheckContext) -> list[str] | None:
    """The loaded iptable_*/ip6table_* modules; None when the bundle has no module list."""
    node = ctx.node
    if node is None or node.modules is None:
        return None
    return sorted(m.name for m in node.modules if m.name.startswith(("iptable_", "ip6table_")))


@check(id="KPT202", name="iptables-backend-mix", severity=Severity.HIGH,
       remediation="Use one backend: find the component still writing the other one (an old kube-proxy or CNI "
                   "image, a host script) and switch it (update-alternatives --set iptables /usr/sbin/iptables-nft), "
                   "then flush the stale backend's tables (iptables-legacy -F; iptables-legacy -t nat -F; "
                   "iptables-legacy -t mangle -F) and reboot or restart kube-proxy and the CNI.")
def iptables_backends(ctx: CheckContext) -> Iterator[Outcome]:
    """Rules are split between iptables-legacy and iptables-nft: each half filters without the other's rules."""
    node = ctx.node
    texts = {id(t.ruleset): t for t in rule_texts(ctx) if t.ruleset.family == 4}
    main = node.rulesets.get(4) if node.rulesets.get(4) is not None and id(node.rulesets[4]) in texts else None
    legacy = node.legacy_rulesets.get(4)
    if legacy is not None and id(legacy) not in texts:
        legacy = None  # rules standing for a legacy dump that was not collected: no rules to compare
    found = False
    if main is not None and legacy is not None:
        where = [loc for rs in (legacy, main) if (loc := _has_rules(texts[id(rs)])) is not None]
        if len(where) == 2:
            found = True
            hints = _hints([texts[id(legacy)], texts[id(main)]])
            yield fail(f"both iptables-legacy ({legacy.file}) and iptables-nft ({main.file}) hold rules; packets go "
                       f"through both, and rules in one cannot see chains or accepts of the other"
                       + (f" ({hints})" if hints else ""), *where)
    # `# Warning: iptables-legacy tables present` says the legacy backend has tables loaded, not that they hold
    # rules: they stay loaded, empty, after `iptables-legacy -F` until a reboot. A whole legacy dump answers it (FAIL
    # above when it holds rules, PASS below when not); without one, what they hold is unknown: a WARN.
    answered = legacy is not None and node.level("iptables-legacy") == COMPLETE
    for rs in iptables_rulesets(node):
        warning = next((c for c in rs.comments if c.text.startswith(WARNING)), None)
        if warning is not None and not answered:
            found = True
            hints = _hints([texts[id(rs)]] if id(rs) in texts else [])
            yield warn(f"{rs.file} says legacy tables are loaded next to its nf_tables rules: what they hold is not in "
                       f"this dump (collect iptables-legacy-save.txt); rules or a DROP policy there filter every packet "
                       f"besides these (empty tables stay loaded after a flush, until a reboot)"
                       + (f"; {hints}" if hints else ""), _loc(warning))
    shown = {(c.file, c.line) for rs in iptables_rulesets(node) for c in rs.comments}
    for w in node.legacy_warnings:
        if (w.file, w.line) not in shown and not answered:
            # Said in a paste, beside a listing or a grep: no dump's own header.
            found = True
            yield warn(f"iptables says legacy tables are present next to the nf_tables rules shown ({w}): what they "
                       f"hold is not in the input; rules or a DROP policy there filter every packet besides these", w)
    if not found and main is not None and legacy is not None and main.backend is None:
        differ = _policies_differ(main, legacy)
        if differ is not None:
            found = True
            c, o = differ
            yield warn(f"{c.table} {c.name} is policy {c.policy} in {main.file} but {o.policy} in the iptables-legacy "
                       f"listing {legacy.file}: one table cannot show two policies, so {main.file} is iptables-nft's "
                       f"(unless the policy changed between the two commands) and both backends have a {c.table} "
                       f"table; every packet passes both, so the {'DROP' if 'DROP' in (c.policy, o.policy) else c.policy} "
                       f"policy of one drops what the other's rules accept (a component writing through the other "
                       f"backend, such as a CNI's FORWARD accepts, does not help)", c.source, o.source)
    if found:
        return
    if main is None:
        yield missing("iptables-save.txt", why="no IPv4 iptables rules in the input")
    elif main.backend == "legacy" and legacy is None:
        yield missing("iptables-nft-save.txt", why=f"{main.file} was written by iptables-legacy, which does not show "
                                                   f"nf_tables rules")
    elif legacy is not None:
        # Only both whole dumps show that one of them holds no rule (a listing of one chain does not).
        yield passed(f"only one of {legacy.file} and {main.file} holds rules", needs=("iptables", "iptables-legacy"))
    elif main.backend == "nft":
        # iptables-nft-save prints "# Warning: iptables-legacy tables present" on stderr, which a saved
        # file does not keep. Legacy tables exist only while an iptable_* module is loaded.
        legacy_mods = _legacy_table_modules(ctx)
        uncollected = node.not_collected.get("iptables-legacy-save.txt")
        if uncollected and legacy_mods != []:
            yield missing("iptables-legacy-save.txt", why=f"it was not collected ({uncollected})")
        elif legacy_mods == [] and node.level("modules") == "complete":
            header = next((c for c in main.comments if c.text.startswith("# Generated by")), None)
            yield passed(f"{main.file} was written by iptables-nft and no legacy table module (iptable_filter, "
                         f"iptable_nat, …) is loaded, so no legacy rules exist", *([_loc(header)] if header else []))
        else:
            held = f" ({', '.join(legacy_mods)} loaded)" if legacy_mods else ""
            yield missing("iptables-legacy-save.txt", why=f"{main.file} was written by iptables-nft; legacy rules{held} "
                                                          f"would only show as a warning on its stderr")
    else:
        yield missing("iptables-nft-save.txt", "iptables-legacy-save.txt",
                      why=f"{main.file} has no `# Generated by iptables-save vX (backend)` line to tell which backend "
                          f"wrote it")
