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
    # A trace's view: the hooks in the order the packet meets them (each a column, "routing" between),
    # the hook each chain was first visited in, and how each branch ends (where the packet dies).
    hooks: list[str] = field(default_factory=list)
    hook_of: dict[GNode, str] = field(default_factory=dict)
    ends: list[End] = field(default_factory=list)
    names: dict[GNode, str] = field(default_factory=dict)  # a kube-proxy chain's Service (and endpoint)


@dataclass(slots=True)
class End:
    """Where a trace's branches end: `✖ DROP` at the chain whose rule or policy decided, or the fate."""

    id: str
    label: str
    kind: str  # dies | passes | unknown
    after: GNode | None  # the chain (or hook) it is drawn after
    share: float
    cite: str | None


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
    return View(f"chains of Service {service} in {rs.file}", nodes | context, context,
                names=_service_names(g, nodes | context, rs))


_FATAL = ("DROP", "REJECT", "POLICY DROP", "POLICY REJECT", "BLACKHOLE", "PROHIBIT", "UNREACHABLE", "NONE",
          "NO_SERVICE", "UNDETERMINED", "OVERLAY")
HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def trace_view(g: Any, trace: Trace, node: str | None, rs: Ruleset | None = None) -> View:
    """The hooks and chains a trace visited on one node (`node` None: steps without a node label), the
    hooks in the order the packet meets them, and each branch's end: the DROP/REJECT that kills it."""
    nodes: set[GNode] = set()
    edges: set[GEdge] = set()
    hooks: list[str] = []
    hook_of: dict[GNode, str] = {}
    ends: dict[tuple[str, GNode | None], End] = {}
    for b in trace.branches:
        steps = [s for s in b.steps if (s.node == node or s.node is None) and not s.encapsulated]
        last: GNode | None = None
        for s in steps:
            if s.hook in HOOKS or s.hook == "routing":
                if s.hook not in hooks:
                    hooks.append(s.hook)
            if s.table is None or s.chain is None or s.hook == "routing":
                continue
            here: GNode = ("chain", s.table, s.chain)
            if here not in g:
                continue
            nodes.add(here)
            hook_of.setdefault(here, s.hook)
            last = here
            if s.depth == 0 and s.chain == s.hook and ("hook", s.hook) in g:
                nodes.add(("hook", s.hook))
                edges.update((("hook", s.hook), here, k) for k in _keys(g, ("hook", s.hook), here))
            m = _JUMP.search(s.text) if s.action in ("JUMP", "GOTO") else None
            if m is not None:
                # A jump into a chain none of whose rules matched is a visit too, with no step inside.
                there: GNode = ("chain", s.table, m.group(1))
                if there in g:
                    nodes.add(there)
                    hook_of.setdefault(there, s.hook)
                    edges.update((here, there, k) for k, d in _edge_data(g, here, there) if d.get("rule") == s.rule)
        _add_end(ends, b, steps, last, g, node)
    if not nodes:
        raise KptraceError("the trace visited no chain of this node's ruleset (it was decided before netfilter: "
                           "see `kptrace why`)")
    f = trace.flow
    port = f":{f.dport}" if f.dport is not None else ""
    title = f"{f.src} → {f.dst}{port}/{f.proto}: {trace.disposition.value}" + (f" on {node}" if node else "")
    names = _service_names(g, nodes, rs) if rs is not None else {}
    return View(title, set(nodes), set(), set(nodes), edges, hooks, hook_of, list(ends.values()), names)


def _add_end(ends: dict[tuple[str, GNode | None], End], b: Any, steps: list[Step], last: GNode | None, g: Any,
             node: str | None) -> None:
    fatal = next((s for s in reversed(steps) if s.action in _FATAL or s.action.startswith("POLICY D")), None)
    if fatal is not None and b.disposition.value not in ("ACCEPTED", "DELIVERED", "FORWARDED"):
        where: GNode | None = ("chain", fatal.table, fatal.chain) if fatal.table and fatal.chain else None
        if where is not None and where not in g:
            where = None
        kind = "unknown" if fatal.action == "UNDETERMINED" else "dies"
        mark = "?" if kind == "unknown" else "✖"
        label = f"{mark} {b.disposition.value}: {fatal.action}" + (" (policy)" if fatal.action.startswith("POLICY")
                                                                     else "")
        if fatal.hook == "routing":
            label += f"\n{fatal.text[:60]}"
        key = (label, where)
        cite = fatal.source
    else:
        where = last
        label = b.disposition.value + (f"\nDNAT → {b.dnat}" if b.dnat else "")
        elsewhere = b.egress is not None and b.egress.node is not None and node is not None and b.egress.node != node
        if elsewhere:
            label += f"\n→ {b.egress.node}" + (f", out {b.egress.iface}" if b.egress.iface else "")
        elif b.egress is not None and b.egress.iface:
            label += f"\nout {b.egress.iface}"
        kind = "passes" if not b.disposition.failed else "dies"
        key = (label, where)
        cite = None
    if key in ends:
        ends[key].share += b.probability
    else:
        ends[key] = End(f"end{len(ends) + 1}", label, kind, where, b.probability, cite)


def _service_names(g: Any, nodes: set[GNode], rs: Ruleset) -> dict[GNode, str]:
    """kube-proxy's chains by what they are for: `default/web:http` (KUBE-SVC/EXT/FW/SVL), `default/web:http
    → 10.244.1.12:8080` (KUBE-SEP); nft's service-/endpoint- chains by the name they carry."""
    from kptrace.render.names import service_in, service_in_comment

    out: dict[GNode, str] = {}
    for n in nodes:
        if n[0] != "chain":
            continue
        name = n[2]
        if name.startswith((*_SERVICE_CHAINS, "KUBE-SEP-")):
            chain = rs.chain(n[1], name)
            rules = chain.rules if chain is not None else []
            svc = next((x for x in (service_in_comment(r.comment() or "") for r in rules) if x), None)
            if svc is None:
                continue
            if name.startswith("KUBE-SEP-"):
                dnat = next((r.target.opt("--to-destination") for r in rules
                             if r.target is not None and r.target.name == "DNAT"), None)
                if dnat is not None:
                    svc += f" → {dnat.value()}"
            out[n] = svc
        else:
            svc = service_in(name)
            if svc is not None:
                out[n] = svc + (" → " + name.split("__", 1)[1].replace("/", ":") if "__" in name else "")
    return out


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


def _label(g: Any, n: GNode, view: View | None = None) -> str:
    if n[0] == "hook":
        return n[1]
    d = g.nodes[n]
    rules = d.get("rules", 0)
    extra = f"policy {d['policy']}" if d.get("policy") and d.get("policy") != "-" else \
        f"{rules} rule{'' if rules == 1 else 's'}"
    svc = view.names.get(n) if view is not None else None
    if svc:
        # The Service, not the chain's hash: the hash's kind (KUBE-SVC, KUBE-SEP…) stays, shortened.
        kind = n[2].split("-")[0] + "-" + n[2].split("-")[1] if n[2].startswith("KUBE-") else n[2].split("-")[0]
        return f"{svc}\n{kind} · {extra}"
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


def _trace_dot(g: Any, view: View) -> str:
    """A trace's path, left to right as the packet goes: a column per hook in the order it meets them
    (routing decisions between), the chains it visited inside, the jumps it took in red, and each
    branch's end: a red octagon where it dies (DROP, REJECT, a policy), green where it gets through."""
    lines = [f"// kptrace {__version__}: {printable(view.title, one_line=True)}", "digraph kptrace {", "  rankdir=LR;",
             "  newrank=true;", '  node [shape=box, fontname="monospace", fontsize=10];',
             '  edge [fontname="monospace", fontsize=9];', f"  label={_dq(view.title)}; labelloc=t;"]
    dying = {e.after for e in view.ends if e.kind == "dies"}
    spine: list[str] = []
    for i, hook in enumerate(view.hooks):
        hid = f"hook:{hook}" if hook != "routing" else f"routing:{i}"
        spine.append(hid)
        if hook == "routing":
            lines.append(f"  {_dq(hid)} [label={_dq(f'{len(spine)}. routing')}, shape=diamond, style=filled, "
                         "fillcolor=lightyellow];")
            continue
        lines.append(f"  subgraph {_dq('cluster_' + hook)} {{")
        lines.append(f"    label={_dq(f'{len(spine)}. {hook}')}; style=rounded; color=grey;")
        lines.append(f"    {_dq(hid)} [label={_dq(hook)}, shape=cds, style=filled, fillcolor=lightgrey, color=red, "
                     "penwidth=2];")
        # In the order the packet entered them: rule order top to bottom, as it reads in the dump.
        chains = [n for n in view.hook_of if n in view.nodes and view.hook_of[n] == hook]
        # The hook's own chains in the order its tables run (raw, mangle, nat, filter), then the rest.
        chains.sort(key=lambda n: (TABLE_ORDER.index(n[1]) if n[1] in TABLE_ORDER else 9) if n[2] == hook else 10)
        for n in chains:
            attrs = [f"label={_dq(n[1] + ': ' + _label(g, n, view))}", 'color="red"']
            attrs.append("penwidth=2" if g.nodes[n].get("builtin") else 'style="rounded"')
            if n in dying:
                attrs = [a for a in attrs if not a.startswith("style=")]
                attrs.append('style="filled' + ("" if g.nodes[n].get("builtin") else ",rounded") + '"')
                attrs.append('fillcolor="#ffd6d6"')
            lines.append(_node_line(g, n, view, attrs))
        lines.append("  }")
    for a, b in zip(spine, spine[1:]):
        lines.append(f"  {_dq(a)} -> {_dq(b)} [color=grey40, penwidth=3, arrowhead=vee];")
    for u, v, k, d in _edges(g, view):
        if d.get("kind") == "hook":
            attrs = [f"label={_dq(_order(d))}", "style=dotted"]
        else:
            attrs = [_rule_label(d)]
            if d.get("kind") == "goto":
                attrs.append("style=dashed")
            if d.get("source"):
                attrs.append(f"tooltip={_dq(str(d['source']))}")
        if (u, v, k) in view.visited_edges:
            attrs.append('color="red", penwidth=2.5')
        lines.append(f"  {_dq(node_id(u))} -> {_dq(node_id(v))} [{', '.join(attrs)}];")
    for e in view.ends:
        share = f"\n{e.share * 100:.4g} %" if len(view.ends) > 1 or e.share < 1 else ""
        text = e.label + (f"\n{e.cite}" if e.cite else "") + share
        if e.kind == "dies":
            look = 'shape=octagon, style=filled, fillcolor="#ff4d4d", fontcolor=white, color="#990000", penwidth=2'
            edge = 'color="#cc0000", penwidth=3'
        elif e.kind == "unknown":
            look = 'shape=octagon, style=filled, fillcolor="#ffe680", color="#b38f00"'
            edge = 'color="#b38f00", penwidth=2, style=dashed'
        else:
            look = 'shape=box, style="filled,rounded", fillcolor="#c8f7c5", color="#1e7b1e", penwidth=2'
            edge = 'color="#1e7b1e", penwidth=3'
        lines.append(f"  {_dq(e.id)} [label={_dq(text)}, {look}];")
        after = node_id(e.after) if e.after is not None else (spine[-1] if spine else None)
        if after is not None:
            lines.append(f"  {_dq(after)} -> {_dq(e.id)} [{edge}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_dot(g: Any, view: View) -> str:
    if view.hooks:
        return _trace_dot(g, view)
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
            attrs = [f"label={_dq(_label(g, n, view))}"]
            styles = [] if g.nodes[n].get("builtin") else ["rounded"]
            if g.nodes[n].get("builtin"):
                attrs.append("penwidth=2")
            if n in view.context:
                styles.append("dashed")
            if styles:
                attrs.append(f"style={_dq(','.join(styles))}")
            if n in view.visited_nodes:
                attrs.append('color="red"')
            lines.append(_node_line(g, n, view, attrs))
        lines.append("  }")
    for u, v, k, d in _edges(g, view):
        attrs = []
        if d.get("kind") == "hook":
            attrs.append(f"label={_dq(_order(d))}")
            attrs.append("style=dotted")
        else:
            attrs.append(_rule_label(d))
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
                lines.append(f"    {ids[n]}{shape[0]}{_mq(_label(g, n, view))}{shape[1]}")
        lines.append("  end")
    for u, v, k, d in _edges(g, view):
        if d.get("kind") == "hook":
            text = _order(d)
        else:
            text = ("goto " if d.get("kind") == "goto" else "") + f"r{d.get('rule')}"
        arrow = "==>" if (u, v, k) in view.visited_edges else ("-.->" if d.get("kind") in ("goto", "hook") else "-->")
        lines.append(f"  {ids[u]} {arrow}|{_mq(text)}| {ids[v]}")
    for e in view.ends:
        text = e.label + (f"\n{e.cite}" if e.cite else "") + (f"\n{e.share * 100:.4g} %" if e.share < 1 else "")
        ids[("end", e.id)] = e.id
        lines.append(f"  {e.id}[{_mq(text)}]")
        if e.after is not None and e.after in ids:
            lines.append(f"  {ids[e.after]} ==>|{_mq(e.kind)}| {e.id}")
    lines.append("  classDef hook fill:#eee,stroke:#555")
    lines.append("  classDef dies fill:#ff4d4d,color:#fff,stroke:#900,stroke-width:3px")
    lines.append("  classDef passes fill:#c8f7c5,stroke:#1e7b1e,stroke-width:2px")
    for kind in ("dies", "passes"):
        mine = [e.id for e in view.ends if e.kind == kind]
        if mine:
            lines.append(f"  class {','.join(mine)} {kind}")
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
        if n in view.names:
            rec["service"] = view.names[n]
        if n in view.hook_of:
            rec["hook"] = view.hook_of[n]
        nodes.append(rec)
    links = []
    for u, v, k, d in _edges(g, view):
        links.append({"source": node_id(u), "target": node_id(v), "key": k, "kind": d.get("kind"),
                      "rule": d.get("rule"), "order": d.get("order"), "cite": d.get("source"),
                      "visited": (u, v, k) in view.visited_edges})
    return {"format": "kptrace-graph", "kptrace_version": __version__, "directed": True, "multigraph": True,
            "graph": {"title": view.title, "file": g.graph.get("file"), "family": g.graph.get("family")},
            "nodes": nodes, "links": links,
            **({"hooks": list(view.hooks), "ends": [
                {"id": e.id, "label": e.label.replace("\n", " "), "kind": e.kind, "share": e.share, "cite": e.cite,
                 "after": node_id(e.after) if e.after is not None else None} for e in view.ends]}
               if view.hooks else {})}


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


def _node_line(g: Any, n: Any, view: Any, attrs: list[str]) -> str:
    """One chain node's DOT line; a chain shown by its Service's name keeps its own name in the tooltip."""
    src = g.nodes[n].get("source")
    if src:
        attrs = [*attrs, f"tooltip={_dq((n[2] + ' ' if n in view.names else '') + src)}"]
    return f"    {_dq(node_id(n))} [{', '.join(attrs)}];"


def _rule_label(d: dict[str, Any]) -> str:
    """An edge's label: the rule number that jumps (or goes) there."""
    return f"label={_dq(('goto ' if d.get('kind') == 'goto' else '') + 'r' + str(d.get('rule')))}"
