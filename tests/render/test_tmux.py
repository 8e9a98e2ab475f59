"""Colour in a real terminal: `kptrace why` run inside tmux (a pty of fixed size), captured with escapes.

The visible text must equal the plain golden (same width), the disposition must be red, a matched
value of the deciding rule highlighted, and NO_COLOR must remove every colour. Skips without tmux.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.regen_golden import EXPECTED, ROOT, SCENARIOS, WIDTH, absolute

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install -y tmux)")
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _run_in_tmux(scenario: str, env: dict[str, str], tmp: Path) -> str:
    """Run the scenario in a detached tmux session of WIDTH columns; return the pane with escapes."""
    assert TMUX is not None
    args, _ = SCENARIOS[scenario]
    socket = f"kptrace-test-{uuid.uuid4().hex[:8]}"
    done = tmp / f"{scenario}.done"
    argv = " ".join(_quote(a) for a in [sys.executable, "-m", "kptrace", "why", *absolute(args)])
    envs = " ".join(f"{k}={_quote(v)}" for k, v in env.items())
    cmd = f"cd {_quote(str(ROOT))} && env -u COLUMNS -u NO_COLOR {envs} {argv}; touch {_quote(str(done))}; sleep 60"
    base = [TMUX, "-L", socket, "-f", os.devnull]
    subprocess.run([*base, "new-session", "-d", "-x", str(WIDTH), "-y", "60", "-s", "t", cmd], check=True,
                   env={**os.environ, "TERM": "xterm-256color"}, timeout=30)
    try:
        subprocess.run([*base, "set-option", "-g", "history-limit", "5000"], check=False, timeout=30)
        deadline = time.monotonic() + 60
        while not done.exists():
            if time.monotonic() > deadline:
                pytest.fail("kptrace did not finish inside tmux within 60 s")
            time.sleep(0.1)
        time.sleep(0.2)
        p = subprocess.run([*base, "capture-pane", "-p", "-e", "-J", "-S", "-", "-t", "t"], capture_output=True,
                           text=True, check=True, timeout=30)
        return p.stdout
    finally:
        subprocess.run([*base, "kill-server"], check=False, capture_output=True, timeout=30)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _visible(captured: str) -> list[str]:
    lines = [SGR.sub("", line).rstrip() for line in captured.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _colour_of(captured: str, word: str) -> set[str]:
    """The SGR parameters in force where `word` first appears."""
    for line in captured.splitlines():
        pos = SGR.sub("", line).find(word)
        if pos < 0:
            continue
        active: set[str] = set()
        visible = 0
        i = 0
        while i < len(line):
            m = SGR.match(line, i)
            if m:
                params = m.group(1).split(";") if m.group(1) else ["0"]
                if "0" in params or params == [""]:
                    active = set()
                active |= {p for p in params if p not in ("0", "")}
                i = m.end()
                continue
            if visible == pos:
                return active
            visible += 1
            i += 1
    raise AssertionError(f"{word!r} not in the captured pane")


@pytest.mark.parametrize("scenario", ["no-endpoints", "forward-drop"])
def test_terminal_output_is_the_golden_in_colour(scenario: str, tmp_path: Path) -> None:
    captured = _run_in_tmux(scenario, {"TERM": "xterm-256color"}, tmp_path)
    golden = (EXPECTED / f"{scenario}.txt").read_text(encoding="utf-8").splitlines()[2:]
    assert _visible(captured) == golden
    verdict = "REJECTED" if scenario == "no-endpoints" else "DROPPED"
    assert _colour_of(captured, verdict) & {"31", "91"}, "the failed disposition is red"
    assert SGR.search(captured), "colour on a terminal"


def test_matched_value_highlighted_in_terminal(tmp_path: Path) -> None:
    captured = _run_in_tmux("no-endpoints", {"TERM": "xterm-256color"}, tmp_path)
    assert _colour_of(captured, "10.96.77.7/32") & {"33", "93"}, "the matched -d value is highlighted"


def test_no_color_turns_colour_off(tmp_path: Path) -> None:
    captured = _run_in_tmux("no-endpoints", {"TERM": "xterm-256color", "NO_COLOR": "1"}, tmp_path)
    colours = [p for m in SGR.finditer(captured) for p in m.group(1).split(";")
               if p.isdigit() and (30 <= int(p) <= 48 or 90 <= int(p) <= 107) and p != "39"]  # 39: default colour
    assert colours == [], "NO_COLOR: no foreground or background colour"
    assert _visible(captured) == (EXPECTED / "no-endpoints.txt").read_text(encoding="utf-8").splitlines()[2:]
