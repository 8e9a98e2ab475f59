"""Run every check on a node (or on each node of a cluster) and turn outcomes into findings.

A check that raises becomes a KPT003 finding naming it and the error, and the run goes on
(sqlfluff turns a crashing rule into a lint error the same way). Late checks (KPT001, KPT002,
KPT003) run last and read what the others reported.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable

from kptrace.checks.facts import CheckContext, evidence_gaps
from kptrace.checks.registry import CheckSpec, Outcome, all_checks, get_check
from kptrace.errors import ExitCode, ParseError
from kptrace.model.finding import Finding, Severity, Status


def run_checks(ctx: CheckContext, checks: Iterable[CheckSpec] | None = None, *, node_name: str | None = None,
               debug: bool = False) -> list[Finding]:
    """Findings of every check (or of `checks`) on one node, in check-id order. debug: re-raise a crash."""
    specs = sorted(checks if checks is not None else all_checks(), key=lambda s: s.id)
    done: list[tuple[Finding, tuple[str, ...]]] = []  # with the inputs whose absence made it a WARN
    for late in (False, True):
        if late:
            ctx.missing_inputs = {}
            for f, files in done:
                for file in files:
                    ctx.missing_inputs.setdefault(file, []).append(f.id)
        for spec in specs:
            if spec.late != late:
                continue
            try:
                outcomes = [_proven(spec, o, ctx) for o in spec.func(ctx)]
            except ParseError as e:
                # A large dump's rules are parsed when first read; a broken one surfaces here (KPT001 cites it).
                ctx.node.errors.append(e)
                outcomes = [Outcome(Status.CANNOT_TELL, f"cannot tell: {e.file} does not parse at line {e.line}",
                                    (), (e.file,))]
            except Exception as e:  # a crashing check must not stop the others
                if debug:
                    raise
                ctx.crashed.append(spec.id)
                done.append((_crash(spec, e, node_name), ()))
                continue
            done.extend((_finding(spec, o, ctx, node_name), o.missing) for o in outcomes)
    return [f for f, _ in done]


def run_all(contexts: list[CheckContext], *, debug: bool = False) -> list[Finding]:
    """Every node's findings, each carrying its node's name when there is more than one."""
    several = len(contexts) > 1
    return [f for ctx in contexts for f in run_checks(ctx, node_name=ctx.name if several else None, debug=debug)]


def _proven(spec: CheckSpec, o: Outcome, ctx: CheckContext) -> Outcome:
    """A PASS stands only on evidence seen whole (spec.needs); otherwise it cannot tell."""
    needs = o.needs if o.needs is not None else spec.needs
    if o.status is not Status.PASS or not needs:
        return o
    gaps = evidence_gaps(ctx.node, needs)
    if not gaps:
        return o
    seen = "; ".join(f"{f} ({ev.level})" for f, ev in sorted(ctx.node.evidence.items())
                     if f in {n for need in needs for n in need.split("|")} or
                     ("rules" in needs and f in ("iptables", "ip6tables", "nft"))) or "none of it"
    return Outcome(Status.CANNOT_TELL, f"cannot tell: give {', '.join(gaps)} (the input shows {seen}; "
                                       f"what it shows would pass: {o.message})", o.locations, tuple(gaps))


def _finding(spec: CheckSpec, o: Outcome, ctx: CheckContext, node: str | None) -> Finding:
    return Finding(spec.id, spec.name, spec.severity, o.status, o.message, o.locations, spec.remediation, spec.docs_url,
                   node, o.missing, o.fix, o.flows)


def _crash(spec: CheckSpec, e: Exception, node: str | None) -> Finding:
    crash = get_check("KPT003")
    assert crash is not None
    frames = [fr for fr in traceback.extract_tb(e.__traceback__) if "/kptrace/" in fr.filename.replace("\\", "/")]
    where = f" at {frames[-1].filename.rsplit('/kptrace/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    message = (f"{spec.id} ({spec.name}) crashed: {type(e).__name__}: {e}{where}; it has no result, the other checks "
               f"ran (kptrace --debug check … shows the traceback)")
    return Finding(crash.id, crash.name, crash.severity, Status.FAIL, message, (), crash.remediation, crash.docs_url, node)


def exit_code(findings: list[Finding], fail_on: Severity = Severity.HIGH) -> ExitCode:
    """3 a check crashed, 1 a FAIL at or above fail_on, 4 a WARN or a check that cannot tell, else 0.

    An input that could not be read (KPT001) is a WARN: the rest of the input was checked. Nothing
    readable at all never gets here (the loader's one-line error, exit 2).
    """
    if any(f.id == "KPT003" and f.status is Status.FAIL for f in findings):
        return ExitCode.INTERNAL
    if any(f.status is Status.FAIL and f.severity.rank >= fail_on.rank for f in findings):
        return ExitCode.FAIL
    if any(f.status in (Status.WARN, Status.CANNOT_TELL) for f in findings):
        return ExitCode.INCONCLUSIVE
    return ExitCode.OK
