"""Run the YAML check cases (tests/fixtures/checks/KPTnnn.yml): exact findings, for every check, per case.

After sqlfluff's test/rules/yaml_test_cases_test.py; `pytest -k KPT101` runs one check's cases.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from kptrace.checks import registry
from kptrace.checks.run import run_checks
from tests.checks.cases import contexts, line, load_cases

CASES = load_cases()


def _crashing(spec: registry.CheckSpec) -> registry.CheckSpec:
    def boom(ctx: object) -> list[registry.Outcome]:
        raise RuntimeError("boom")

    return dataclasses.replace(spec, func=boom)


@pytest.mark.parametrize(("check_id", "case"), CASES, ids=[f"{c}-{case['name']}" for c, case in CASES])
def test_case(check_id: str, case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.get("crash"):
        spec = registry.get_check(case["crash"])
        assert spec is not None
        monkeypatch.setitem(registry._REGISTRY, spec.id, _crashing(spec))
    ctx = contexts(tmp_path, case)[0]
    findings = run_checks(ctx)
    mine = [f for f in findings if f.id == check_id]
    assert [line(f) for f in mine] == case["expect"], "\n".join(f"{line(f)}: {f.message}" for f in mine)
    for text in case.get("message_contains", []):
        assert any(text in f.message for f in mine), f"no {check_id} message contains {text!r}"
    # Every check, not only this file's, must survive every case's bundle.
    if not case.get("crash"):
        crashed = [f.message for f in findings if f.id == "KPT003" and f.status.value == "FAIL"]
        assert not crashed, crashed
