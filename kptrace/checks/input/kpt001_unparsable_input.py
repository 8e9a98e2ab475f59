from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.registry import Outcome, check, passed
from kptrace.model.finding import Location, Severity, Status


@check(id="KPT001", name="unparsable-input", severity=Severity.HIGH, late=True,
       remediation="Collect the file again with the command docs/bundle.md gives for it and do not edit it; "
                   "if the command's own output does not parse, report it with the file.")
def unparsable_input(ctx: CheckContext) -> Iterator[Outcome]:
    """An input (or part of one) could not be read; the checks ran on the rest of the input."""
    # Several checks can meet the same broken rule of a large dump (parsed when first read): report it once.
    for e in {str(e): e for e in ctx.node.errors}.values():
        # The parser's message already reads `file:line:col: what` and quotes the line.
        yield Outcome(Status.WARN, f"not read: {e}", (Location(e.file, e.line, e.col),))
    if not ctx.node.errors:
        yield passed(f"all {len(ctx.node.inputs)} inputs were read")
