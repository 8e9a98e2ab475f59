"""`kptrace graph` output: the chain graph (kptrace/graph/chains.py) as DOT, Mermaid, JSON or SVG.

A view picks the part of the graph to draw: the whole ruleset, one Service's chains (everything
reachable from the KUBE-SVC/SVL/EXT/FW chains whose rule comments name it, plus the chains that
jump into them), or the chains a `kptrace why` trace visited, its edges highlighted.

The graph object is only read through `nodes`, `edges(keys=True, data=True)` and `successors`, so
this module does not import networkx (only graph/ and walkers/ do).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kptrace import __version__
from kptrace.errors import KptraceError
from kptrace.model.netfilter import Ruleset
from kptrace.model.trace import Step, Trace
from kptrace.render.safe import printable

GNode = tuple[str, ...]  # ("hook", HOOK) or ("chain", table, name)
GEdge = tuple[GNode, GNode, int]  # (from, to, key) of the multigraph

TABLE_ORDER = ("raw", "mangle", "nat", "filter", "security")
_JUMP = re.compile(r"\s-[jg]\s+(\S+)")
_SERVICE_CHAINS = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")


@dataclass(slots=True)
class View:
    """Which nodes and edges to draw, and which to highlight."""

    title: str
    nodes: set[GNode]
    context: set[GNode] = field(default_factory=set)  # drawn dashed: the way in, not the subject
    visited_nodes: set[GNode] = field(default_factory=set)
    visited_edges: set[GEdge] = field(default_factory=set)


def node_id(n: GNode) -> str:
    return f"hook:{n[1]}" if n[0] == "hook" else f"{n[1]}/{n[2]}"


def whole_view(g: Any) -> View:
    return View(f"chain graph of {g.graph.get('file', 'the ruleset')}", set(g.nodes))


def _reachable(g: Any, roots: Iterable[GNode]) -> set[GNode]:
    seen: set[GNode] = set()
    todo = [r for r in roots if r in g]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        todo.extend(s for s in g.successors(n) if s not in seen)
    return seen


def _names_service(comment: str, service: str) -> bool:
    """`ns/name` in a kube-proxy comment, as itself and not a prefix of another name (ns/name-2)."""
    return re.search(rf"(^|\s){re.escape(service)}(:|\s|$)", comment) is not None


def service_view(g: Any, rs: Ruleset, service: str) -> View:
    """The chains reachable from the KUBE-SVC/SVL/EXT/FW chains whose rule comments name `service`."""
    if "/" not in service:
        raise KptraceError(f"--service '{service}': expected NAMESPACE/NAME (e.g. kube-system/kube-dns)")
    roots: set[GNode] = set()
    for t in rs.tables.values():
        for name in t.chains:
            if not name.startswith(_SERVICE_CHAINS):
                continue
            chain = t.chains[name]
            if any(_names_service(r.comment() or "", service) for r in chain.rules):
                roots.add(("chain", t.name, name))
    if not roots:
        raise KptraceError(f"--service '{service}': no KUBE-SVC/SVL/EXT/FW chain in {rs.file} has a rule whose "
                           "comment names it (`kptrace services` lists the Services the rules show)")
    nodes = _reachable(g, roots)
    context = {u for u, v in g.edges() if v in roots and u not in nodes}
    return View(f"chains of Service {service} in {rs.file}", nodes | context, context)


def trace_view(g: Any, trace: Trace, node: str | None) -> View:
    """The hooks and chains a trace visited on one node (`node` None: steps without a node label)."""
    steps = [s for s in _all_steps(trace) if s.node == node or s.node is None]
    nodes: set[GNode] = set()
    edges: set[GEdge] = set()
    for s in steps:
        if s.table is None or s.chain is None or s.hook == "routing":
            continue
        here: GNode = ("chain", s.table, s.chain)
        if here not in g:
            continue
        nodes.add(here)
        if s.depth == 0 and s.chain == s.hook and ("hook", s.hook) in g:
            nodes.add(("hook", s.hook))
            edges.update((("hook", s.hook), here, k) for k in _keys(g, ("hook", s.hook), here))
        m = _JUMP.search(s.text) if s.action in ("JUMP", "GOTO") else None
        if m is not None:
            # A jump into a chain none of whose rules matched is a visit too, with no step inside.
            there: GNode = ("chain", s.table, m.group(1))
            if there in g:
                nodes.add(there)
                edges.update((here, there, k) for k, d in _edge_data(g, here, there) if d.get("rule") == s.rule)
    if not nodes:
        raise KptraceError("the trace visited no chain of this node's ruleset (it was decided before netfilter: "
                           "see `kptrace why`)")
    f = trace.flow
    title = f"chains visited by {f}" + (f" on {node}" if node else "")
    return View(title, set(nodes), set(), set(nodes), edges)


def _all_steps(trace: Trace) -> list[Step]:
    return [s for b in trace.branches for s in b.steps]


def _keys(g: Any, u: GNode, v: GNode) -> list[int]:
    return [k for k, _ in _edge_data(g, u, v)]


def _edge_data(g: Any, u: GNode, v: GNode) -> list[tuple[int, dict[str, Any]]]:
    data = g.get_edge_data(u, v)
    return list(data.items()) if data else []


def _sorted_nodes(view: View) -> list[GNode]:
    def key(n: GNode) -> tuple[int, int, str]:
        if n[0] == "hook":
            return (0, ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING").index(n[1])
                    if n[1] in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING") else 9, n[1])
        t = TABLE_ORDER.index(n[1]) if n[1] in TABLE_ORDER else 9
        return (1 + t, 0, n[2])
    return sorted(view.nodes, key=key)


def _edges(g: Any, view: View) -> list[tuple[GNode, GNode, int, dict[str, Any]]]:
    out = [(u, v, k, d) for u, v, k, d in g.edges(keys=True, data=True) if u in view.nodes and v in view.nodes]
    # Draw only the way into a context chain, not what else it does.
    out = [e for e in out if not (e[0] in view.context and e[1] in view.context)]
    out = [e for e in out if not (e[0] in view.context and e[1] not in view.nodes - view.context)]
    return sorted(out, key=lambda e: (node_id(e[0]), e[3].get("rule") or 0, node_id(e[1]), e[2]))


def _label(g: Any, n: GNode) -> str:
    if n[0] == "hook":
        return n[1]
    d = g.nodes[n]
    extra = f"policy {d['policy']}" if d.get("policy") and d.get("policy") != "-" else f"{d.get('rules', 0)} rules"
    return f"{n[2]}\n{extra}"


def _order(d: dict[str, Any]) -> str:
    """A hook edge's label: the table's place in the hook (1. runs first)."""
    return f"{int(d['order']) + 1}." if isinstance(d.get("order"), int) else ""


def _tables(view: View) -> list[str]:
    seen = {n[1] for n in view.nodes if n[0] == "chain"}
    return [t for t in TABLE_ORDER if t in seen] + sorted(seen - set(TABLE_ORDER))


# --- DOT ---------------------------------------------------------------------------------------------


def _dq(s: str) -> str:
    # Control characters escaped first (raw ESC would reach a terminal, and makes SVG invalid XML);
    # then the backslashes that escaping wrote are quoted like any other.
    s = printable(s)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", " ") + '"'


def to_dot(g: Any, view: View) -> str:
    lines = [f"// kptrace {__version__}: {printable(view.title, one_line=True)}", "digraph kptrace {", "  rankdir=LR;",
             '  node [shape=box, fontname="monospace", fontsize=10];', '  edge [fontname="monospace", fontsize=9];',
             f"  label={_dq(view.title)}; labelloc=t;"]
    hooks = [n for n in _sorted_nodes(view) if n[0] == "hook"]
    for n in hooks:
        style = ', color="red", penwidth=2' if n in view.visited_nodes else ""
        lines.append(f"  {_dq(node_id(n))} [label={_dq(n[1])}, shape=cds, style=filled, fillcolor=lightgrey{style}];")
    for t in _tables(view):
        lines.append(f"  subgraph {_dq('cluster_' + t)} {{")
        lines.append(f"    label={_dq(t)}; style=rounded; color=grey;")
        for n in _sorted_nodes(view):
            if n[0] != "chain" or n[1] != t:
                continue
            attrs = [f"label={_dq(_label(g, n))}"]
            styles = [] if g.nodes[n].get("builtin") else ["rounded"]
            if g.nodes[n].get("builtin"):
                attrs.append("penwidth=2")
            if n in view.context:
                styles.append("dashed")
            if styles:
                attrs.append(f"style={_dq(','.join(styles))}")
            if n in view.visited_nodes:
                attrs.append('color="red"')
            src = g.nodes[n].get("source")
            if src:
                attrs.append(f"tooltip={_dq(src)}")
            lines.append(f"    {_dq(node_id(n))} [{', '.join(attrs)}];")
        lines.append("  }")
    for u, v, k, d in _edges(g, view):
        attrs = []
        if d.get("kind") == "hook":
            attrs.append(f"label={_dq(_order(d))}")
            attrs.append("style=dotted")
        else:
            attrs.append(f"label={_dq(('goto ' if d.get('kind') == 'goto' else '') + 'r' + str(d.get('rule')))}")
            if d.get("kind") == "goto":
                attrs.append("style=dashed")
            if d.get("source"):
                attrs.append(f"tooltip={_dq(str(d['source']))}")
        if (u, v, k) in view.visited_edges:
            attrs.append('color="red", penwidth=2.5')
        lines.append(f"  {_dq(node_id(u))} -> {_dq(node_id(v))} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- Mermaid -----------------------------------------------------------------------------------------


def _mq(s: str) -> str:
    """A Mermaid label: quoted, control characters escaped, # " < > & ` as entity codes (so a name
    from the input is never HTML or Markdown to the renderer), newlines as <br/>."""
    s = printable(s).replace("\t", " ").replace("#", "#35;").replace('"', "#quot;")
    s = s.replace("<", "#60;").replace(">", "#62;").replace("&", "#38;").replace("`", "#96;")
    return '"' + s.replace("\n", "<br/>") + '"'


def to_mermaid(g: Any, view: View) -> str:
    """A `flowchart LR`: a subgraph per table, `-->` jumps, `-.->` gotos, `==>` the trace's path."""
    ids = {n: f"n{i}" for i, n in enumerate(_sorted_nodes(view))}
    lines = [f"%% kptrace {__version__}: {printable(view.title, one_line=True)}", "flowchart LR"]
    for n in _sorted_nodes(view):
        if n[0] == "hook":
            lines.append(f"  {ids[n]}[[{_mq(n[1])}]]")
    for t in _tables(view):
        lines.append(f"  subgraph tbl_{re.sub(r'[^A-Za-z0-9_]', '_', t)}[{_mq(t)}]")
        for n in _sorted_nodes(view):
            if n[0] == "chain" and n[1] == t:
                shape = ("[", "]") if g.nodes[n].get("builtin") else ("(", ")")
                lines.append(f"    {ids[n]}{shape[0]}{_mq(_label(g, n))}{shape[1]}")
        lines.append("  end")
    for u, v, k, d in _edges(g, view):
        if d.get("kind") == "hook":
            text = _order(d)
        else:
            text = ("goto " if d.get("kind") == "goto" else "") + f"r{d.get('rule')}"
        arrow = "==>" if (u, v, k) in view.visited_edges else ("-.->" if d.get("kind") in ("goto", "hook") else "-->")
        lines.append(f"  {ids[u]} {arrow}|{_mq(text)}| {ids[v]}")
    lines.append("  classDef hook fill:#eee,stroke:#555")
    lines.append("  classDef visited stroke:#d00,stroke-width:3px")
    lines.append("  classDef context stroke-dasharray:5 5")
    hooks = [ids[n] for n in _sorted_nodes(view) if n[0] == "hook"]
    if hooks:
        lines.append(f"  class {','.join(hooks)} hook")
    visited = [ids[n] for n in _sorted_nodes(view) if n in view.visited_nodes]
    if visited:
        lines.append(f"  class {','.join(visited)} visited")
    context = [ids[n] for n in _sorted_nodes(view) if n in view.context]
    if context:
        lines.append(f"  class {','.join(context)} context")
    return "\n".join(lines) + "\n"


# --- JSON --------------------------------------------------------------------------------------------


def to_json(g: Any, view: View) -> dict[str, Any]:
    """networkx's node-link layout (`networkx.node_link_graph(doc, edges="links")` reads it back)."""
    nodes = []
    for n in _sorted_nodes(view):
        d = dict(g.nodes[n])
        rec: dict[str, Any] = {"id": node_id(n), "kind": n[0]}
        if n[0] == "hook":
            rec["hook"] = n[1]
        else:
            rec.update({"table": n[1], "chain": n[2], "policy": d.get("policy"), "builtin": bool(d.get("builtin")),
                        "rules": d.get("rules"), "cite": d.get("source")})
        rec["visited"] = n in view.visited_nodes
        rec["context"] = n in view.context
        nodes.append(rec)
    links = []
    for u, v, k, d in _edges(g, view):
        links.append({"source": node_id(u), "target": node_id(v), "key": k, "kind": d.get("kind"),
                      "rule": d.get("rule"), "order": d.get("order"), "cite": d.get("source"),
                      "visited": (u, v, k) in view.visited_edges})
    return {"format": "kptrace-graph", "kptrace_version": __version__, "directed": True, "multigraph": True,
            "graph": {"title": view.title, "file": g.graph.get("file"), "family": g.graph.get("family")},
            "nodes": nodes, "links": links}


# --- SVG ---------------------------------------------------------------------------------------------


def to_svg(dot_text: str, dot: str | None = None) -> str:
    """Graphviz's layout of the DOT text; a clear error when Graphviz's `dot` is not installed."""
    exe = dot or shutil.which("dot")
    if exe is None:
        raise KptraceError("-o svg needs Graphviz's `dot` (apt-get install graphviz, brew install graphviz); "
                           "or write -o dot and render it elsewhere")
    p = subprocess.run([exe, "-Tsvg"], input=dot_text, capture_output=True, text=True, timeout=300, check=False)
    if p.returncode != 0:
        first = (p.stderr.strip().splitlines() or ["no message"])[0]
        raise KptraceError(f"Graphviz `dot -Tsvg` failed (rc={p.returncode}): {first}")
    return p.stdout
