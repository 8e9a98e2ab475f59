"""Which findings touch a traced packet: those that cite a rule, route or setting the trace went through."""

from __future__ import annotations

import re

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


# What a step says -> the checks about that cause, for steps that cite no line a finding could share
# (no route at all, a reply bypassing conntrack, a setting read from another key).
_CAUSES = (
    (re.compile(r"no route to|network unreachable|ENETUNREACH"), ("KPT401", "KPT207")),
    (re.compile(r"rp_filter"), ("KPT104",)),
    (re.compile(r"ip_forward|\.forwarding = 0"), ("KPT103",)),
    (re.compile(r"iptables never sees it|br_netfilter"), ("KPT101", "KPT102")),
    (re.compile(r"hairpin"), ("KPT404",)),
    (re.compile(r"neighbour entry|fdb entry|VXLAN|drops the frame"), ("KPT402",)),
    (re.compile(r"MTU"), ("KPT403",)),
)


def causes(trace: Trace) -> set[str]:
    """Check IDs about what ended a branch or broke its reply."""
    out: set[str] = set()
    for b in trace.branches:
        ends = [b.steps[-1]] if b.steps and (b.disposition.failed or b.disposition.value == "UNDETERMINED") else []
        if b.reply is not None and b.reply.problem:
            ends += list(b.reply.steps)
        texts = [s.text for s in ends] + ([b.reply.problem] if b.reply and b.reply.problem else [])
        texts += [s.text for s in b.steps if s.action in ("BRIDGE", "LINK")]
        for text in texts:
            for rx, ids in _CAUSES:
                if rx.search(text):
                    out.update(ids)
    return out


def findings_for_trace(trace: Trace, findings: list[Finding]) -> list[Finding]:
    """FAIL and WARN findings located at a step of this trace, or about what ended it; PASS/INFO
    say nothing about it."""
    where = cited(trace)
    why = causes(trace)
    return [f for f in findings if f.status in (Status.FAIL, Status.WARN)
            and (any((loc.file, loc.line) in where for loc in f.locations) or (f.status == Status.FAIL and f.id in why))]
