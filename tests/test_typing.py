"""Type hints everywhere, checked: mypy --strict over the package (STYLE.md §9)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict() -> None:
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "kptrace"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]


def test_no_unused_imports_or_names() -> None:
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed")
    r = subprocess.run(["ruff", "check", "--select", "F", "--output-format", "concise", "kptrace", "tests"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:]
