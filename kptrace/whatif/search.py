"""Minimal fix search: the smallest sets of candidate changes that make one failing flow arrive.

Candidates come from two places, each as `--what-if` changes (kptrace/whatif/grammar.py):

  catalogue  every FAIL of `kptrace check` on the input that carries its remediation in machine form
             (`fail(…, fix=…)`: KPT101, KPT103, KPT201, KPT203, KPT401, KPT404, …)
  generic    the fixes that catalogue implies, read off the node and the failing trace: filter FORWARD
             policy ACCEPT when it is DROP; a DROP/REJECT the trace stops at (or the jump that led to it)
             moved to the end of its chain when kube-proxy's or the CNI's jump comes after it; ip_forward=1
             when it is 0; `modprobe br_netfilter` when the input shows it not loaded, bridge-nf-call-iptables=1
             when it is 0; hairpin on for the source pod's bridge port when it is off; a default route only via
             a gateway the input names (a route of that family `via` it).

The search tries every set of 1 candidate, then of 2, … (changes applied in candidate order), re-tracing
the flow on a copy of the model for each (kptrace/whatif/apply.py): the first size at which some sets make
the flow arrive (as `kptrace why` exits 0) gives the answer, all the sets of that size that work. Every
smaller set of the same candidates was tried and failed, so each is minimal among the candidates. A set that
does not work may get the flow further (to another node's FORWARD): the generic fixes its trace implies join
the candidates and the search starts again from sets of one (sets already traced are not traced again). Bounds:
at most `max_candidates` candidates (the ones the trace points at first), sets of at most `max_size`,
`max_sets` traces; the result says when a bound cut the search short.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from kptrace.errors import KptraceError
from kptrace.model.flow import Flow
from kptrace.model.netfilter import IPNetwork
from kptrace.model.node import Node
from kptrace.model.trace import Trace

MAX_CANDIDATES = 10
MAX_SIZE = 3
MAX_SETS = 200

FOUND, NOT_NEEDED, NONE, BOUNDED = "found", "not_needed", "none", "bound"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One candidate fix: one or more changes that go together (KPT201's two ACCEPTs, a delete and an append)."""

    changes: tuple[str, ...]  # as --what-if takes them; `@NODE ` first in a cluster of several nodes
    origin: str  # a check ID (the catalogue), or "generic"
    why: str  # what in the input calls for it
    node: str


@dataclass(frozen=True, slots=True)
class Tried:
    """A set of candidates, applied and the flow re-traced."""

    members: tuple[int, ...]  # indexes into FixSearch.candidates
    fate: str  # kptrace's answer for the flow with these changes (kptrace/whatif/verify.py fate)
    arrives: bool
    stop: str | None  # where it still stops, cited


@dataclass(slots=True)
class FixSearch:
    flow: Flow
    start: str
    before: str  # the flow's fate as the input is
    status: str = NONE  # found | not_needed | none | bound
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[tuple[Candidate, str]] = field(default_factory=list)  # candidates that do not apply, and why
    dropped: int = 0  # candidates past max_candidates
    alone: dict[int, Tried] = field(default_factory=dict)  # what each candidate does on its own
    fixes: list[Tried] = field(default_factory=list)  # the minimal sets that make the flow arrive
    sets_tried: int = 0
    size_searched: int = 0  # every set up to this size was tried
    bound_hit: str | None = None
    max_size: int = MAX_SIZE
    max_candidates: int = MAX_CANDIDATES
    max_sets: int = MAX_SETS
    catalogue: bool = True  # the checks ran (not on a large dump read lazily: generic candidates only)

    def changes(self, t: Tried) -> list[str]:
        return [c for i in t.members for c in self.candidates[i].changes]


def search_fix(cluster: list[Node], start: Node, flow: Flow, notes: tuple[str, ...] = (),
               cidrs: tuple[IPNetwork, ...] = (), *, max_size: int = MAX_SIZE,
               max_candidates: int = MAX_CANDIDATES, max_sets: int = MAX_SETS) -> FixSearch:
    """Search the smallest sets of candidate changes that make `flow`, started on `start`, arrive.

    A set that does not work may get the packet further (past node-a's forwarding, to node-b's FORWARD): the
    generic fixes its trace implies join the candidates, and the search starts again from sets of one (the sets
    already tried are not traced again), so what it returns stays minimal among all the candidates it had."""
    from kptrace.whatif.verify import arrives, fate, stop_of

    k = next(i for i, n in enumerate(cluster) if n is start)
    trace = _trace(cluster, k, flow, notes, cidrs)
    out = FixSearch(flow, start.name, fate(trace), max_size=max_size, max_candidates=max_candidates,
                    max_sets=max_sets)
    if arrives(trace):
        out.status = NOT_NEEDED
        return out
    seen: set[tuple[str, ...]] = set()

    def admit(cands: list[Candidate]) -> bool:
        grew = False
        for c in cands:
            if c.changes in seen:
                continue
            seen.add(c.changes)
            reason = _applies(cluster, c)
            if reason is not None:
                out.skipped.append((c, reason))
            elif len(out.candidates) < max_candidates:
                out.candidates.append(c)
                grew = True
            else:
                out.dropped += 1
        return grew

    from kptrace.walkers.sweep import cluster_findings

    findings = cluster_findings(cluster)  # None: a large dump read lazily, whose checks `kptrace check` runs
    out.catalogue = findings is not None
    admit(candidates(cluster, start, trace, findings or []))
    results: dict[tuple[int, ...], Tried] = {}
    best: int | None = None
    stopped: str | None = None
    while True:
        grew = False
        best = None
        for size in range(1, min(max_size, len(out.candidates)) + 1):
            for members in combinations(range(len(out.candidates)), size):
                if members in results:
                    continue
                if out.sets_tried >= max_sets:
                    stopped = f"stopped after {max_sets} sets, in the sets of {size}"
                    break
                out.sets_tried += 1
                t = _try(cluster, k, flow, notes, cidrs, [ch for i in members for ch in out.candidates[i].changes])
                ok = t is not None and arrives(t)
                results[members] = Tried(members, fate(t) if t is not None else "the changes do not apply together",
                                         ok, None if t is None or ok else stop_of(t))
                if t is not None and not ok:
                    grew |= admit(_further(cluster, start, t))
            if stopped:
                break
            out.size_searched = size
            if any(r.arrives for m, r in results.items() if len(m) == size):
                best = size
                break
        if stopped or not grew:
            break
    out.alone = {m[0]: r for m, r in results.items() if len(m) == 1}
    if best is not None:
        out.fixes = [results[m] for m in sorted(results) if len(m) == best and results[m].arrives]
    else:
        # Sets the bound cut short may still have found one: never smaller than the sizes tried whole.
        found = [m for m, r in results.items() if r.arrives]
        if found:
            size = min(len(m) for m in found)
            out.fixes = [results[m] for m in sorted(found) if len(m) == size]
    notes_hit = []
    if stopped:
        notes_hit.append(stopped)
    if out.dropped:
        notes_hit.append(f"{len(out.candidates) + out.dropped} candidates apply; the first {max_candidates} (those "
                         f"the trace points at first) were searched")
    if best is None and not stopped and len(out.candidates) > max_size:
        notes_hit.append(f"sets of at most {max_size} of the {len(out.candidates)} candidates were searched")
    out.bound_hit = "; ".join(notes_hit) or None
    out.status = FOUND if out.fixes else (BOUNDED if out.bound_hit else NONE)
    return out


def _further(cluster: list[Node], start: Node, trace: Trace) -> list[Candidate]:
    """The generic fixes a trace with some changes implies where it now stops, read off the input's nodes."""
    several = len(cluster) > 1
    by_name = {n.name: n for n in cluster}
    out = []
    nodes = [start] + [by_name[n] for n in _trace_nodes(trace) if n in by_name and by_name[n] is not start]
    for node in nodes:
        for changes, why in _generic(node, trace, start):
            out.append(Candidate(tuple(f"@{node.name} {c}" for c in changes) if several else changes,
                                 "generic", why, node.name))
    return out


def _trace(cluster: list[Node], k: int, flow: Flow, notes: tuple[str, ...], cidrs: tuple[IPNetwork, ...]) -> Trace:
    from kptrace.walkers.netfilter import trace_flow

    return trace_flow(cluster[k], flow, cluster, notes, cidrs)


def _try(cluster: list[Node], k: int, flow: Flow, notes: tuple[str, ...], cidrs: tuple[IPNetwork, ...],
         changes: list[str]) -> Trace | None:
    from kptrace.whatif.apply import apply_changes
    from kptrace.whatif.grammar import parse_changes

    try:
        changed = apply_changes(cluster, parse_changes(changes))
    except KptraceError:
        return None  # e.g. two candidates that delete the same rule
    return _trace(changed.cluster, k, flow, notes, cidrs)


def _applies(cluster: list[Node], c: Candidate) -> str | None:
    from kptrace.whatif.apply import apply_changes
    from kptrace.whatif.grammar import parse_changes

    try:
        apply_changes(cluster, parse_changes(list(c.changes)))
    except KptraceError as e:
        return getattr(e, "message", str(e))
    return None


# --- candidates ---------------------------------------------------------------------------------------------

def candidates(cluster: list[Node], start: Node, trace: Trace, findings: list[Any] | None = None) -> list[Candidate]:
    """The catalogue's fixes for the FAILs this trace meets, the generic ones the trace and node imply, then
    the catalogue's other fixes (of `findings`, by default every check's on the cluster); each once."""
    from kptrace.checks.trace import findings_for_trace
    from kptrace.walkers.sweep import cluster_findings

    if findings is None:
        findings = cluster_findings(cluster) or []
    several = len(cluster) > 1

    def scoped(node: str, changes: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(f"@{node} {c}" for c in changes) if several else changes

    linked = findings_for_trace(trace, findings)
    out: list[Candidate] = []

    def catalogue(fs: list[Any]) -> None:
        for f in fs:
            if f.fix and f.status.value == "FAIL":
                node = f.node or start.name
                msg = f.message if len(f.message) <= 120 else f.message[:117] + "…"
                out.append(Candidate(scoped(node, tuple(f.fix)), f.id, msg, node))

    catalogue(linked)
    out += _further(cluster, start, trace)
    catalogue([f for f in findings if f not in linked])
    # Each once, where it first comes; a generic one that a check's FAIL also gives is named by the check.
    unique: dict[tuple[str, ...], Candidate] = {}
    for c in out:
        had = unique.get(c.changes)
        if had is None:
            unique[c.changes] = c
        elif had.origin == "generic" and c.origin != "generic":
            unique[c.changes] = c
    return list(unique.values())


def _trace_nodes(trace: Trace) -> list[str]:
    return list(dict.fromkeys(s.node for b in trace.branches for s in b.steps if s.node))


def _generic(node: Node, trace: Trace, start: Node) -> Iterator[tuple[tuple[str, ...], str]]:
    fam = trace.flow.dst.version
    cmd = "ip6tables" if fam == 6 else "iptables"
    rs = node.rulesets.get(fam) or node.legacy_rulesets.get(fam)
    chain = rs.chain("filter", "FORWARD") if rs is not None else None
    if chain is not None and chain.policy == "DROP":
        yield (f"{cmd} -P FORWARD ACCEPT",), f"filter FORWARD policy DROP ({chain.source})"
    yield from _moves(node, trace, start)
    forwarding = ("net.ipv4.ip_forward",) if fam == 4 else ("net.ipv6.conf.all.forwarding",)
    for key in forwarding:
        s = node.sysctls.get(key)
        if s is not None and s.value.strip() == "0":
            yield (f"sysctl -w {key}=1",), f"{key} = 0 ({s.source})"
    if "br_netfilter" in node.modules_not_loaded or (
            node.level("modules") == "complete" and node.modules is not None
            and not any(m.name == "br_netfilter" for m in node.modules)):
        yield ("modprobe br_netfilter",), "the input shows br_netfilter not loaded"
    key = "net.bridge.bridge-nf-call-ip6tables" if fam == 6 else "net.bridge.bridge-nf-call-iptables"
    s = node.sysctls.get(key)
    if s is not None and s.value.strip() == "0":
        yield (f"sysctl -w {key}=1",), f"{key} = 0 ({s.source})"
    port = _source_port(node, trace.flow) if node is start else None
    if port is not None and port.hairpin is False:
        yield ((f"ip link set {port.name} type bridge_slave hairpin on",),
               f"{trace.flow.src} sits on {port.name}, whose hairpin mode is off ({port.source})")
    yield from _default_routes(node, fam)


def _moves(node: Node, trace: Trace, start: Node) -> Iterator[tuple[tuple[str, ...], str]]:
    """The filter rule in a built-in chain that led to the DROP/REJECT a branch stops at, moved to the end of its
    chain, when a jump to kube-proxy's or the CNI's chains comes after it (KPT203's remediation, for this flow)."""
    from kptrace.checks.facts import is_cni_chain, is_kube_chain
    from kptrace.model.netfilter import BUILTIN_CHAINS
    from kptrace.model.source import ASSUMED_FILE
    from kptrace.parsers.iptables_save import render_rule

    done: set[str] = set()
    for b in trace.branches:
        if not b.disposition.failed:
            continue
        steps = [s for s in b.steps if (s.node or start.name) == node.name]
        verdict = next((i for i in range(len(steps) - 1, -1, -1) if steps[i].action in ("DROP", "REJECT")
                        and steps[i].table == "filter" and steps[i].source), None)
        if verdict is None:
            continue
        # The step at depth 0 of the same hook, at or before the verdict: the rule of the built-in chain.
        outer = next((steps[i] for i in range(verdict, -1, -1)
                      if steps[i].depth == 0 and steps[i].hook == steps[verdict].hook and steps[i].table == "filter"
                      and steps[i].source), None)
        if outer is None or outer.source is None or outer.source in done or \
                outer.chain not in BUILTIN_CHAINS["filter"]:
            continue
        done.add(outer.source)
        for rs in (node.rulesets.get(trace.flow.dst.version), node.legacy_rulesets.get(trace.flow.dst.version)):
            chain = rs.chain("filter", outer.chain) if rs is not None else None
            if chain is None:
                continue
            k = next((i for i, r in enumerate(chain.rules) if str(r.source) == outer.source), None)
            if k is None:
                continue
            rule = chain.rules[k]
            if rule.source.file == ASSUMED_FILE:
                break
            later = next((r for r in chain.rules[k + 1:] if r.target is not None
                          and (is_kube_chain(r.target.name) or is_cni_chain(r.target.name))), None)
            if later is not None and later.target is not None:
                yield ((f"delete {rule.source.file}:{rule.source.line}", f"iptables -t filter {render_rule(rule)}"),
                       f"`{rule.text.strip()}` ({rule.source}) comes before the jump to {later.target.name} "
                       f"({later.source})")
            break


def _source_port(node: Node, flow: Flow) -> Any:
    """The bridge port the flow's source sits on: its neighbour entry's MAC, learned by the bridge on that port."""
    n = next((n for n in node.neighbors if n.dst == flow.src and n.lladdr), None)
    if n is None or not n.lladdr:
        return None
    f = next((f for f in node.fdb if f.mac.lower() == n.lladdr.lower() and f.dev), None)
    if f is None:
        return None
    return next((p for p in node.bridge_ports if p.name == f.dev), None)


def _default_routes(node: Node, fam: int) -> Iterator[tuple[tuple[str, ...], str]]:
    """`ip route add default via G dev D` when the main table has no default route of this family and the input
    names G as a gateway (a route via it); never a guessed gateway."""
    if node.level("routes") is None:
        return
    main = [r for r in node.routes if r.table == "main" and r.dst.version == fam]
    if any(r.dst.prefixlen == 0 for r in main):
        return
    seen: set[tuple[str, str]] = set()
    for r in node.routes:
        if r.dst.version != fam:
            continue
        for h in r.nexthops:
            if h.gateway is None or h.dev is None or h.onlink:
                continue  # an overlay's onlink next hop (flannel's 10.244.2.0) is no gateway out
            gw = (str(h.gateway), h.dev)
            if gw in seen:
                continue
            seen.add(gw)
            ip = "ip -6" if fam == 6 else "ip"
            yield ((f"{ip} route add default via {gw[0]} dev {gw[1]}",),
                   f"no IPv{fam} default route; the input names {gw[0]} as a gateway ({r.source})")


# --- output ----------------------------------------------------------------------------------------------

def search_json(s: FixSearch) -> dict[str, Any]:
    return {
        "flow": {"src": str(s.flow.src), "dst": str(s.flow.dst), "dport": s.flow.dport, "proto": s.flow.proto},
        "status": s.status,
        "start": s.start,
        "before": s.before,
        "candidates": [{"changes": list(c.changes), "origin": c.origin, "why": c.why, "node": c.node,
                        "alone": s.alone[i].fate if i in s.alone else None}
                       for i, c in enumerate(s.candidates)],
        "not_applicable": [{"changes": list(c.changes), "origin": c.origin, "reason": r} for c, r in s.skipped],
        "fixes": [{"changes": s.changes(t), "candidates": list(t.members),
                   "origins": [s.candidates[i].origin for i in t.members], "after": t.fate, "arrives": t.arrives}
                  for t in s.fixes],
        "size": len(s.fixes[0].members) if s.fixes else None,
        "sets_tried": s.sets_tried,
        "size_searched": s.size_searched,
        "bounds": {"candidates": s.max_candidates, "size": s.max_size, "sets": s.max_sets},
        "bound_hit": s.bound_hit,
        "catalogue": s.catalogue,
    }


def _quote(c: str) -> str:
    return "'" + c.replace("'", "'\\''") + "'"


def search_lines(s: FixSearch) -> list[str]:
    """The human view: what was searched, the minimal sets, or why none was found."""
    from kptrace.whatif.verify import flow_text

    head = f"fix search for {flow_text(s.flow)} (now {s.before}), on the model (never on the node):"
    if s.status == NOT_NEEDED:
        return [f"fix search for {flow_text(s.flow)}: nothing to fix, it is {s.before}"]
    lines = [head]
    tried = (f"{s.sets_tried} set{'s' if s.sets_tried != 1 else ''} of {len(s.candidates)} "
             f"candidate{'s' if len(s.candidates) != 1 else ''} tried")
    if s.fixes:
        size = len(s.fixes[0].members)
        lines.append(f"  smallest fix: {size} of the candidates"
                     f"{' (' + str(len(s.fixes)) + ' ways)' if len(s.fixes) > 1 else ''}, verified by re-tracing"
                     + (f"; no smaller set of them works ({tried}):" if size > 1 else f" ({tried}):"))
        for n, t in enumerate(s.fixes, start=1):
            lines.append(f"  {n}. → {t.fate}")
            for i in t.members:
                c = s.candidates[i]
                lines.append(f"       {' && '.join(c.changes)}   ({c.origin}: {c.why})")
        best = s.fixes[0]
        lines.append("  try it: --what-if " + " --what-if ".join(_quote(c) for c in s.changes(best)))
    elif not s.candidates:
        lines.append("  no candidate change: no check's FAIL carries a fix that applies, and the trace and node "
                     "imply none (docs/what-if.md)")
    else:
        lines.append(f"  no set of up to {min(s.max_size, len(s.candidates))} candidates makes it arrive ({tried}); "
                     f"each alone:")
        for i, c in enumerate(s.candidates):
            alone = s.alone.get(i)
            lines.append(f"    {' && '.join(c.changes)}   ({c.origin}) → {alone.fate if alone else 'not tried'}"
                         + (f" at {alone.stop}" if alone and alone.stop else ""))
    if not s.catalogue:
        lines.append("  the checks were not run on this large input (read lazily): generic candidates only; "
                     "`kptrace check` gives the checks' fixes")
    for c, reason in s.skipped[:5]:
        lines.append(f"  not a candidate here: {' && '.join(c.changes)} ({c.origin}): {reason}")
    if s.bound_hit:
        lines.append(f"  search bound hit: {s.bound_hit} (--suggest-max-size, docs/what-if.md)")
    return lines


def render_search(s: FixSearch, console: Any) -> None:
    from rich.text import Text

    for n, line in enumerate(search_lines(s)):
        console.print(Text(line, style="bold" if n == 0 else ""), soft_wrap=True, highlight=False)


# --- kptrace check --suggest-fix ------------------------------------------------------------------------------

def search_verifications(verified: list[Any], cluster: list[Node], max_size: int = MAX_SIZE) -> dict[int, FixSearch]:
    """For each verified (or not sufficient) remediation whose flows do not all arrive with it, the fix search for
    the first such flow: what else it needs. Keyed by id(finding); one search per flow."""
    by_flow: dict[tuple[str, Flow], FixSearch] = {}
    out: dict[int, FixSearch] = {}
    for v in verified:
        r = next((r for r in v.flows if not r.ok), None)
        if r is None:
            continue
        key = (r.start, r.flow)
        if key not in by_flow:
            start = next(n for n in cluster if n.name == r.start)
            by_flow[key] = search_fix(cluster, start, r.flow, max_size=max_size)
        out[id(v.finding)] = by_flow[key]
    return out


def add_searches(doc: dict[str, Any], findings: list[Any], searches: dict[int, FixSearch]) -> dict[str, Any]:
    """`results[i].fix.search` (results are in the order of findings)."""
    for rec, f in zip(doc.get("results", []), findings):
        s = searches.get(id(f))
        if s is not None and "fix" in rec:
            rec["fix"]["search"] = search_json(s)
    return doc


def render_searches(verified: list[Any], searches: dict[int, FixSearch], console: Any) -> None:
    from rich.text import Text

    for v in verified:
        s = searches.get(id(v.finding))
        if s is None:
            continue
        console.print(Text(f"  {v.finding.id}: a flow it concerns still fails with its fix; "
                           + search_lines(s)[0]), soft_wrap=True, highlight=False)
        for line in search_lines(s)[1:]:
            console.print(Text("  " + line), soft_wrap=True, highlight=False)
