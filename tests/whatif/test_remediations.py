"""Every check with a machine-form remediation: its what-if form parses and is verified on its FAIL fixture.

The FAIL cases of tests/fixtures/checks/KPTnnn.yml are loaded as `kptrace check` loads them; each FAIL that
carries a fix must parse (kptrace/whatif/grammar.py), apply to that node, and be verified: the check no
longer fails and every flow the FAIL concerns arrives (or stops only at another check's FAIL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kptrace.checks.run import run_checks
from kptrace.model.finding import Status
from kptrace.whatif.grammar import parse_change
from kptrace.whatif.verify import VERIFIED, Verifier
from tests.checks.cases import contexts, load_cases

# The checks whose remediation is expressed as --what-if changes. A check that stops carrying one (or a new
# one that starts) must be listed or removed here: the list is the promise docs/what-if.md makes.
FIXABLE = {"KPT101", "KPT102", "KPT103", "KPT104", "KPT201", "KPT203", "KPT401", "KPT404"}

FAIL_CASES = [(cid, case) for cid, case in load_cases() if case["name"].startswith("fail")]


def _fails(check_id: str, case: dict[str, Any], tmp_path: Path) -> tuple[list[Any], list[Any]]:
    ctxs = contexts(tmp_path, case)
    findings = [f for ctx in ctxs[:1] for f in run_checks(ctx) if f.id == check_id and f.status is Status.FAIL]
    return ctxs, findings


@pytest.mark.parametrize(("check_id", "case"), FAIL_CASES, ids=[f"{c}-{k['name']}" for c, k in FAIL_CASES])
def test_fix_parses_and_is_verified(check_id: str, case: dict[str, Any], tmp_path: Path) -> None:
    ctxs, findings = _fails(check_id, case, tmp_path)
    fixed = [f for f in findings if f.fix]
    if check_id not in FIXABLE:
        assert not fixed, f"{check_id} now carries a fix: add it to FIXABLE and to docs/what-if.md"
        return
    for f in fixed:
        for n, change in enumerate(f.fix, start=1):
            parse_change(change, n)  # raises WhatIfError when the check writes what the grammar refuses
        v = Verifier(ctxs).verify_all([f])[0]
        assert v.status == VERIFIED, v.message
        assert v.check_after in ("PASS", "GONE", "CANNOT_TELL")
        assert v.message.startswith("fix verified: with `" + f.fix[0] + "`")


def test_every_fixable_check_has_a_fail_fixture_with_a_fix(tmp_path: Path) -> None:
    seen = set()
    for i, (check_id, case) in enumerate(FAIL_CASES):
        if check_id in FIXABLE and check_id not in seen:
            _, findings = _fails(check_id, case, tmp_path / str(i))
            if any(f.fix for f in findings):
                seen.add(check_id)
    assert seen == FIXABLE, f"no FAIL fixture with a fix for {sorted(FIXABLE - seen)}"
