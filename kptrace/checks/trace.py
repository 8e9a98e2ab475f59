"""Which findings touch a traced packet: those that cite a rule, route or setting the trace went through."""

from __future__ import annotations

from kptrace.model.finding import Finding, Status
from kptrace.model.trace import Trace


def cited(trace: Trace) -> set[tuple[str, int]]:
    """(file, line) of every step of every branch and reply."""
    out: set[tuple[str, int]] = set()
    for b in trace.branches:
        steps = list(b.steps) + (list(b.reply.steps) if b.reply else [])
        for s in steps:
            if s.source and ":" in s.source:
                file, _, line = s.source.rpartition(":")
                if line.isdigit():
                    out.add((file, int(line)))
    return out


def findings_for_trace(trace: Trace, findings: list[Finding]) -> list[Finding]:
    """FAIL and WARN findings located at a step of this trace; PASS/INFO say nothing about it."""
    where = cited(trace)
    return [f for f in findings if f.status in (Status.FAIL, Status.WARN)
            and any((loc.file, loc.line) in where for loc in f.locations)]
