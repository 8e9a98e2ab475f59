"""Verified remediation: try each FAIL's fix on the model and re-trace the flows the FAIL concerns.

A check that can say its remediation as --what-if changes yields them with its FAIL (`fail(…, fix=…)`).
`kptrace check` then applies them to a copy of that node, runs the check again, and traces again the
flows the FAIL concerns: those the check names, else every Service flow of a sweep of the node
(kptrace/walkers/sweep.py) that does not arrive and whose trace the finding explains (the same link
`why --checks` draws, kptrace/checks/trace.py). The verdict:

  verified       the check no longer fails and every such flow now arrives
  not_sufficient the check still fails, or a flow still does not arrive (with where it stops)
  cannot_verify  the fix does not apply to the input (it says why), or the input is too large to sweep
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kptrace.errors import KptraceError
from kptrace.model.finding import Finding, Status
from kptrace.model.flow import Flow
from kptrace.model.node import Node
from kptrace.model.trace import Trace

if TYPE_CHECKING:
    from kptrace.checks.facts import CheckContext

VERIFIED, NOT_SUFFICIENT, CANNOT_VERIFY = "verified", "not_sufficient", "cannot_verify"
MAX_FLOWS = 32  # flows re-traced per finding (a FORWARD DROP concerns every Service of the node)


@dataclass(frozen=True, slots=True)
class FlowResult:
    flow: Flow
    start: str  # the node the trace starts on
    before: str  # fate without the fix
    after: str  # fate with it
    ok: bool  # arrives with the fix
    stop: str | None  # where it still stops: `file:line (text)`
    other: tuple[str, ...] = ()  # still failing, for these other checks' FAILs only (the fix did its part)


@dataclass(frozen=True, slots=True)
class Verification:
    finding: Finding
    status: str  # verified | not_sufficient | cannot_verify
    message: str
    check_after: str | None  # the check's status with the fix (None: not run)
    flows: tuple[FlowResult, ...] = ()
    flows_total: int = 0  # flows concerned, of which `flows` were re-traced


def flow_text(f: Flow) -> str:
    """`10.244.1.5 → 10.96.0.10:53/udp` (icmp without a port)."""
    return f"{f.src} → {f.dst}" + (f":{f.dport}/{f.proto}" if f.dport is not None else f" {f.proto}")


def fate(t: Trace) -> str:
    """A trace's answer in one word or a few: FORWARDED, DROPPED, MIXED (DROPPED, FORWARDED), or the
    disposition with `reply fails` when the first packet arrives and its answer does not."""
    from kptrace.model.trace import Disposition

    d = t.disposition
    if d == Disposition.MIXED:
        kinds = sorted({b.disposition.value for b in t.branches})
        return f"MIXED ({', '.join(kinds)})"
    if any(b.reply_failed for b in t.branches):
        return f"{d.value}, but the reply fails"
    return str(d.value)


def arrives(t: Trace) -> bool:
    from kptrace.walkers.sweep import OK, row_status

    return row_status(t) == OK


def stop_of(t: Trace) -> str | None:
    """Where a trace that does not arrive stops: the deciding step, cited."""
    from kptrace.walkers.sweep import _deciding

    for b in t.branches:
        for d in _deciding(b):
            text = d.text if len(d.text) <= 140 else d.text[:137] + "…"
            return f"{d.source} ({text})" if d.source else text
    return None


class Verifier:
    """Verifies the fixes of one `kptrace check` run's findings, with one sweep per node at most."""

    def __init__(self, contexts: list[CheckContext]) -> None:
        self.contexts = contexts
        self.cluster = [c.node for c in contexts]
        self._rows: dict[str, list[Any] | None] = {}

    def node_of(self, f: Finding) -> Node:
        if f.node is not None:
            for n in self.cluster:
                if n.name == f.node:
                    return n
        return self.cluster[0]

    def verify_all(self, findings: list[Finding]) -> list[Verification]:
        self.findings = findings
        return [self.verify(f) for f in findings if f.status is Status.FAIL and f.fix]

    findings: list[Finding] = []

    def verify(self, f: Finding) -> Verification:
        from kptrace.whatif.apply import apply_changes
        from kptrace.whatif.grammar import parse_changes

        node = self.node_of(f)
        label = " && ".join(f"`{c}`" for c in f.fix)
        try:
            changes = parse_changes([f"@{node.name} {c}" for c in f.fix])
            changed = apply_changes(self.cluster, changes)
        except KptraceError as e:
            return Verification(f, CANNOT_VERIFY, f"cannot verify {label}: {_reason(e)}", None)
        new_node = next(n for n, old in zip(changed.cluster, self.cluster) if old is node)
        after = self._recheck(f, new_node, changed.cluster)
        still = [g for g in after if g.status is Status.FAIL and g.id == f.id and
                 (g.message == f.message or set(g.locations) & set(f.locations))]
        # This finding's status with the fix: FAIL (still there), PASS (the check passes), or GONE (this finding
        # is gone; the check still reports others, e.g. a second DROP rule the fix did not touch).
        check_after = "FAIL" if still else ("GONE" if any(g.status is Status.FAIL and g.id == f.id for g in after)
                                            else ("PASS" if any(g.status is Status.PASS for g in after) else
                                                  (after[0].status.value if after else "PASS")))
        flows, total, why_none = self._flows(f, node)
        results = []
        for start, flow in flows[:MAX_FLOWS]:
            old_start = next(n for n in self.cluster if n.name == start)
            new_start = next(n for n in changed.cluster if n.name == start)
            t0 = self._trace(old_start, flow, self.cluster)
            t1 = self._trace(new_start, flow, changed.cluster)
            ok = arrives(t1)
            other: tuple[str, ...] = ()
            if not ok:
                from kptrace.checks.trace import findings_for_trace

                # Past this FAIL's step, the flow may stop at another check's: this fix did its part.
                others = [g for g in self.findings if g.status is Status.FAIL and g.id != f.id]
                if not findings_for_trace(t1, [f]):
                    other = tuple(dict.fromkeys(g.id for g in findings_for_trace(t1, others)))
            results.append(FlowResult(flow, start, fate(t0), fate(t1), ok, None if ok else stop_of(t1), other))
        if still:
            return Verification(f, NOT_SUFFICIENT, f"fix not sufficient: with {label} {f.id} still fails: "
                                                   f"{still[0].message}", check_after, tuple(results), total)
        bad = [r for r in results if not r.ok and not r.other]
        if bad:
            r = bad[0]
            more = f" (and {len(bad) - 1} more flow{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
            return Verification(f, NOT_SUFFICIENT, f"fix not sufficient: with {label} {flow_text(r.flow)} is still "
                                                   f"{r.after} at {r.stop or 'its last step'}{more}",
                                check_after, tuple(results), total)
        if results:
            r = next((x for x in results if x.ok), results[0])
            more = f" (and {total - 1} more flow{'s' if total > 2 else ''} it concerns)" if total > 1 else ""
            rest = [x for x in results if x.other]
            tail = (f"; {len(rest)} of them still fail{'s' if len(rest) == 1 else ''} for "
                    f"{', '.join(sorted({i for x in rest for i in x.other}))}, past this fix "
                    f"(e.g. {flow_text(rest[0].flow)}: {rest[0].after})" if rest else "")
            return Verification(f, VERIFIED, f"fix verified: with {label} {flow_text(r.flow)} is now {r.after} "
                                             f"(was {r.before}){more}; {_after(f, check_after)}{tail}", check_after,
                                tuple(results), total)
        return Verification(f, VERIFIED, f"fix verified: with {label} {_after(f, check_after)} ({why_none})",
                            check_after, (), 0)

    def _recheck(self, f: Finding, node: Node, cluster: list[Node]) -> list[Finding]:
        from kptrace.checks.facts import CheckContext
        from kptrace.checks.registry import get_check
        from kptrace.checks.run import run_checks

        spec = get_check(f.id)
        assert spec is not None
        ctx = CheckContext(node, tuple(n for n in cluster if n is not node))
        return run_checks(ctx, [spec])

    def _trace(self, start: Node, flow: Flow, cluster: list[Node]) -> Trace:
        from kptrace.walkers.netfilter import trace_flow

        return trace_flow(start, flow, cluster)

    def _flows(self, f: Finding, node: Node) -> tuple[list[tuple[str, Flow]], int, str]:
        """(start node, flow) the finding concerns, how many, and why there are none when there are none."""
        if f.flows:
            return [(node.name, fl) for fl in f.flows], len(f.flows), ""
        rows = self._sweep(node)
        if rows is None:
            return [], 0, "the input is read lazily for its size: no sweep re-traced"
        from kptrace.checks.trace import findings_for_trace
        from kptrace.walkers.sweep import OK

        hit = [(r.start, r.trace.flow) for r in rows if r.status != OK and findings_for_trace(r.trace, [f])]
        # A pod reaching itself through its own Service (hairpin) is a flow no sweep row has.
        for flow in self._self_flows(node):
            t = self._trace(node, flow, self.cluster)
            if not arrives(t) and findings_for_trace(t, [f]):
                hit.append((node.name, flow))
        hit = list(dict.fromkeys(hit))
        if not hit:
            why = ("no failing flow of a sweep of the node stops at it" if rows else
                   "the input shows no Service flow to re-trace")
            return [], 0, why
        return hit, len(hit), ""

    def _self_flows(self, node: Node) -> list[Flow]:
        """Each endpoint in this node's pod subnet to its own Service's ClusterIP."""
        from ipaddress import ip_address

        from kptrace.services import merge, service_ports
        from kptrace.walkers.sweep import _host

        subnets = [n for n in ([node.pod_subnet] if node.pod_subnet else [])]
        out = []
        for svc in merge(service_ports([node])):
            if svc.port is None or not svc.cluster_ips:
                continue
            for ep in svc.endpoints:
                ip = _host(ep.address)
                if ip is not None and any(ip.version == n.version and ip in n for n in subnets):
                    out.append(Flow(ip, ip_address(svc.cluster_ips[0]), svc.protocol, None, svc.port))
        return out[:MAX_FLOWS]

    def _sweep(self, node: Node) -> list[Any] | None:
        if node.name not in self._rows:
            from kptrace.walkers.sweep import Sweeper

            # A large dump read lazily (10k Services) is not swept here: `kptrace sweep --what-if` does that.
            if any("parsed when the trace reads them" in a for rs in node.rulesets.values() for a in rs.assumptions):
                self._rows[node.name] = None
            else:
                self._rows[node.name] = Sweeper(self.cluster, checks=False).sweep_node(node).rows
        return self._rows[node.name]


def _after(f: Finding, status: str) -> str:
    if status == "GONE":
        return f"this {f.id} finding is gone (the check's other findings remain)"
    return f"{f.id} passes" if status == "PASS" else f"{f.id} no longer fails ({status})"


def _reason(e: KptraceError) -> str:
    from kptrace.errors import ParseError

    if isinstance(e, ParseError):
        return e.message
    return str(e)


def verification_json(v: Verification) -> dict[str, Any]:
    return {
        "changes": list(v.finding.fix), "status": v.status, "message": v.message, "check_after": v.check_after,
        "flows_concerned": v.flows_total,
        "flows": [{"src": str(r.flow.src), "dst": str(r.flow.dst), "dport": r.flow.dport, "proto": r.flow.proto,
                   "start": r.start, "before": r.before, "after": r.after, "arrives": r.ok, "stops_at": r.stop,
                   "still_fails_for": list(r.other)}
                  for r in v.flows],
    }


def add_verifications(doc: dict[str, Any], findings: list[Finding], verified: list[Verification]) -> dict[str, Any]:
    """`results[i].fix` for each FAIL whose remediation was tried (results are in the order of findings)."""
    by_finding = {id(v.finding): v for v in verified}
    for rec, f in zip(doc.get("results", []), findings):
        v = by_finding.get(id(f))
        if v is not None:
            rec["fix"] = verification_json(v)
    return doc


def render_verifications(verified: list[Verification], console: Any) -> None:
    if not verified:
        return
    from rich.text import Text

    console.print(Text("remediations tried on the model (never on the node; docs/what-if.md):", style="bold"))
    for v in verified:
        who = f"{v.finding.id}" + (f" ({v.finding.node})" if v.finding.node else "")
        console.print(Text(f"  {who}: {v.message}"), soft_wrap=True, highlight=False)
