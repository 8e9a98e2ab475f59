"""The trace for people: a one-line answer first, then each branch as a tree read like the packet's life."""

from __future__ import annotations

from enum import Enum

from rich.console import Console, Group
from rich.text import Text
from rich.tree import Tree

from kptrace.model.trace import Branch, Disposition, Step, Trace

_STYLE = {
    Disposition.DELIVERED: "bold green", Disposition.FORWARDED: "bold green", Disposition.ACCEPTED: "bold green",
    Disposition.DROPPED: "bold red", Disposition.REJECTED: "bold red", Disposition.NO_ROUTE: "bold red",
    Disposition.UNDETERMINED: "bold yellow", Disposition.MIXED: "bold yellow",
}
_ACTION_STYLE = {
    "DNAT": "bold magenta", "REDIRECT": "bold magenta", "MASQUERADE": "bold cyan", "SNAT": "bold cyan",
    "ACCEPT": "green", "DROP": "bold red", "REJECT": "bold red", "UNDETERMINED": "bold yellow",
    "MARK": "cyan", "RETURN": "dim", "JUMP": "blue", "GOTO": "blue", "ROUTE": "bold",
}


class Detail(str, Enum):
    minimal = "minimal"
    summary = "summary"
    full = "full"


def _endpoint_text(t: Trace) -> str:
    parts = []
    for ep in t.endpoints:
        p = sum(b.probability for b in t.branches if b.dnat == ep)
        parts.append(f"{ep} ({p * 100:.4g} %)")
    return " or ".join(parts)


def _flow_text(t: Trace) -> str:
    f = t.flow
    dst = f"[{f.dst}]" if f.dst.version == 6 and f.dport is not None else str(f.dst)
    port = f":{f.dport}" if f.dport is not None else ""
    return f"{f.src} → {dst}{port}/{f.proto}"


def summary_line(t: Trace) -> str:
    d = t.disposition
    parts = []
    if t.endpoints:
        parts.append(f"DNAT to {_endpoint_text(t)}")
    if any(b.masquerade for b in t.branches):
        parts.append("masqueraded")
    kinds: dict[str, float] = {}
    for b in t.branches:
        word = b.disposition.value.lower()
        if b.disposition == Disposition.FORWARDED and b.egress and b.egress.iface:
            word += f" via {b.egress.iface}"
            if b.egress.node:
                word += f" on {b.egress.node}"
        if b.disposition in (Disposition.DROPPED, Disposition.REJECTED, Disposition.UNDETERMINED):
            why = _deciding(b)
            if why:
                word += f" by {why}"
        kinds[word] = kinds.get(word, 0.0) + b.probability
    if len(kinds) == 1:
        parts.append(next(iter(kinds)))
    else:
        parts.append(" / ".join(f"{k} ({p * 100:.4g} %)" for k, p in kinds.items()))
    broken = sum(b.probability for b in t.branches if b.reply_failed)
    if broken:
        parts.append(f"but the REPLY fails ({broken * 100:.4g} %)")
    return f"{_flow_text(t)}: {d.value}: " + ", ".join(parts)


def _deciding(b: Branch) -> str:
    for s in reversed(b.steps):
        if s.action in ("DROP", "REJECT", "UNDETERMINED") or s.action.startswith("POLICY"):
            where = f"{s.table}/{s.chain}" if s.table else s.hook
            return f"{where} ({s.source})" if s.source else where
    return ""


def _step_text(s: Step) -> Text:
    style = _ACTION_STYLE.get(s.action.split()[0], "")
    t = Text()
    if s.source:
        t.append(f"{s.source}  ", style="dim")
    t.append(s.text if s.text else "", style="")
    t.append(f"  {s.action}", style=style)
    return t


def _keep(steps: list[Step], i: int, detail: Detail) -> bool:
    if detail == Detail.full:
        return True
    s = steps[i]
    # A built-in chain whose rules all missed adds nothing to the story at this level,
    if s.action == "POLICY ACCEPT" and s.rule is None and s.depth == 0:
        return False
    # nor does a jump into a chain that matched nothing and came straight back.
    if s.action in ("JUMP", "GOTO"):
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        return nxt is not None and nxt.depth > s.depth and nxt.hook == s.hook
    return True


def branch_tree(b: Branch, n: int, total: int, detail: Detail, prefix_from: tuple[int, int] | None) -> Tree:
    head = Text(f"branch {n}/{total}  ", style="bold")
    head.append(f"{b.probability * 100:.4g} %  ")
    head.append(b.disposition.value, style=_STYLE[b.disposition])
    if b.dnat:
        head.append(f"  DNAT → {b.dnat}", style="magenta")
    if b.masquerade:
        head.append("  masquerade", style="cyan")
    if b.egress and b.egress.iface:
        head.append(f"  out {b.egress.iface}")
    tree = Tree(head)
    steps = list(b.steps)
    shared = prefix_from[0] if prefix_from else 0
    if shared:
        tree.add(Text(f"(the first {shared} steps are those of branch {prefix_from[1]}, shown dimmed)", style="dim italic"))  # type: ignore[index]
    hook_node: Tree | None = None
    hook_name = None
    stack: list[Tree] = []
    for i, s in enumerate(steps):
        if not _keep(steps, i, detail):
            continue
        dim = i < shared
        if s.hook == "routing":
            where = f"routing · {s.node}  " if s.node else "routing  "
            tree.add(_dim(Text(where, style="bold") + _step_text(s), dim))
            hook_node, hook_name, stack = None, None, []
            continue
        key = f"{s.hook} · {s.node}" if s.node else s.hook
        if hook_node is None or key != hook_name:
            hook_node = tree.add(_dim(Text(key, style="bold underline"), dim))
            hook_name, stack = key, []
        label = Text(f"{s.table}  ", style="bold") if s.depth == 0 and s.table else Text()
        parent = hook_node if s.depth == 0 or not stack else stack[min(s.depth, len(stack)) - 1]
        node = parent.add(_dim(label + _step_text(s), dim))
        stack = stack[: s.depth] + [node]
    if b.reply is not None:
        r = b.reply
        head = Text("reply  ", style="bold") + Text(r.disposition.value, style=_STYLE[r.disposition])
        if r.problem:
            head.append(f"  {r.problem}", style="bold red")
        rt = tree.add(head)
        for i, s in enumerate(r.steps):
            if detail == Detail.full or _keep(list(r.steps), i, detail):
                where = f"{s.hook}" + (f" · {s.node}" if s.node else "")
                rt.add(Text(f"{where}  ", style="bold") + _step_text(s))
    if detail == Detail.full:
        for a in b.assumptions:
            tree.add(Text(f"assumed: {a}", style="italic"))
    for u in b.unknowns:
        tree.add(Text(f"undetermined: {u}", style="yellow"))
    return tree


def _dim(t: Text, dim: bool) -> Text:
    if dim:
        t.stylize("dim")
    return t


def _common_prefix(a: tuple[Step, ...], b: tuple[Step, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def render_trace(t: Trace, console: Console, detail: Detail = Detail.summary) -> None:
    console.print(Text(summary_line(t), style=_STYLE[t.disposition]))
    if detail == Detail.minimal:
        for n, b in enumerate(t.branches, start=1):
            why = _deciding(b) if b.disposition.failed or b.disposition == Disposition.UNDETERMINED else ""
            extra = f"  DNAT → {b.dnat}" if b.dnat else ""
            console.print(f"  branch {n}: {b.probability * 100:.4g} % {b.disposition.value}{extra}" + (f" at {why}" if why else ""), markup=False, highlight=False)
        return
    trees = []
    for n, b in enumerate(t.branches, start=1):
        best = None
        for k in range(n - 1):
            c = _common_prefix(t.branches[k].steps, b.steps)
            if c and (best is None or c > best[0]):
                best = (c, k + 1)
        trees.append(branch_tree(b, n, len(t.branches), detail, best if detail != Detail.full else None))
    console.print(Group(*trees))
    shared = [a for a in t.assumptions]
    branch_assumptions = {a for b in t.branches for a in b.assumptions}
    if shared or branch_assumptions:
        console.print(Text("assumptions:", style="bold"))
        for a in list(dict.fromkeys(shared + sorted(branch_assumptions))):
            console.print(Text(f"  - {a}", style="italic"))
    if t.inputs:
        dirs = sorted({i.file.rsplit("/", 1)[0] + "/" if "/" in i.file else i.file for i in t.inputs})
        console.print(Text(f"inputs: {len(t.inputs)} files from {', '.join(dirs)} (-o json lists them with sha256)", style="dim"))
