"""What the commands share for `--what-if`: reading the option, applying it, saying what applied."""

from __future__ import annotations

from typing import Any

from kptrace.model.node import Node
from kptrace.whatif.apply import WhatIf, apply_changes
from kptrace.whatif.grammar import parse_changes

HELP = ("A change tried on the model, never on the node, e.g. 'sysctl -w net.ipv4.ip_forward=1', "
        "'iptables -P FORWARD ACCEPT', 'delete iptables-save.txt:12', 'ip route add default via 192.168.0.1' "
        "(docs/what-if.md); repeatable, applied in order, cited as what-if:N.")


def what_if(cluster: list[Node], texts: list[str] | None) -> WhatIf | None:
    """The cluster with the changes applied, or None without --what-if. A change that does not read or
    does not apply raises WhatIfError (exit 2) before anything is traced."""
    if not texts:
        return None
    return apply_changes(cluster, parse_changes(list(texts)))


def applied_lines(w: WhatIf) -> list[str]:
    """`what-if:1 sysctl -w … → node-a: net.ipv4.ip_forward = 1 (was 0)`, one per change and node."""
    lines = []
    for c in w.changes:
        for a in w.by_change(c):
            lines.append(f"{c.cite}  {c.text}  → {a.node}: {a.effect}")
    return lines


def render_applied(w: WhatIf | None, console: Any) -> None:
    if w is None:
        return
    from rich.text import Text

    console.print(Text(f"what-if: {len(w.changes)} change{'s' if len(w.changes) != 1 else ''} applied to the model "
                       "(never to the node):", style="bold"))
    for line in applied_lines(w):
        console.print(Text("  " + line), soft_wrap=True)


def inputs_with_changes(inputs: list[dict[str, Any]], w: WhatIf | None) -> list[dict[str, Any]]:
    """JSON `inputs`: each what-if input also records its change and what it did on each node."""
    if w is None:
        return inputs
    cited = {c.cite: c for c in w.changes}
    out = []
    seen: set[str] = set()
    for rec in inputs:
        c = cited.get(rec.get("file", ""))
        if c is not None and rec.get("kind") == "what-if":
            if c.cite in seen:
                continue  # one record per change, whatever the number of nodes it changed
            seen.add(c.cite)
            rec = dict(rec, change=c.text, applied=[{"node": a.node, "effect": a.effect} for a in w.by_change(c)])
        out.append(rec)
    return out
