"""`kptrace explain`: a check's page from the package, by id or name; the list of checks; unknown ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kptrace.checks.registry import all_checks
from kptrace.cli.app import _register, app

_register()
runner = CliRunner()
DOCS = Path(__file__).resolve().parents[2] / "docs" / "checks"


@pytest.mark.parametrize("key", ["KPT101", "kpt101", "br-netfilter-missing"])
def test_prints_the_page(key: str) -> None:
    r = runner.invoke(app, ["explain", key])
    assert r.exit_code == 0
    assert r.stdout == (DOCS / "KPT101.md").read_text(encoding="utf-8")


def test_every_check_has_a_page() -> None:
    for spec in all_checks():
        r = runner.invoke(app, ["explain", spec.id])
        assert r.exit_code == 0 and r.stdout.startswith(f"# {spec.id} {spec.name}\n")
        assert "## Remediation" in r.stdout


def test_without_argument_lists_the_checks() -> None:
    r = runner.invoke(app, ["explain"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    rows = [line.split()[:3] for line in r.stdout.splitlines() if line.startswith("KPT")]
    assert rows == [[s.id, s.severity.value, s.name] for s in all_checks()]


def test_unknown_check_is_one_line_and_exit_2() -> None:
    p = subprocess.run([sys.executable, "-m", "kptrace", "explain", "KPT999"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == "error: unknown check 'KPT999' (`kptrace explain` lists them)"
