from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.registry import Outcome, check, passed
from kptrace.model.finding import Severity


@check(id="KPT003", name="check-crashed", severity=Severity.HIGH, needs_node=False, late=True,
       remediation="This is a bug in kptrace: report it with the bundle (and `kptrace --debug check` output). "
                   "The other checks ran; the crashed one has no result.")
def check_crashed(ctx: CheckContext) -> Iterator[Outcome]:
    """A check raised an error instead of reporting; kptrace ran the others and exits 3."""
    # The runner reports each crash itself (with the check and the error); this only confirms there was none.
    if not ctx.crashed:
        yield passed("every check ran to completion")
