"""The README's first lines are the two commands that work on a fresh machine; CI runs the second."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    block = readme[readme.index("```sh") + 1 : readme.index("```sh") + 3]
    assert block[0].startswith("pip install . && kptrace why ") and "--demo" in block[0]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == block[1]


# --- every fenced example runs as written, from any directory (issue 19) --------------------------



DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Inputs the reader brings (their own bundles and pastes): an example naming one shows how to call
# kptrace on it, and is run by no one here. Anything under kptrace/demo/ is not one of them: the demos
# are `--demo NAME`, which works from any directory after `pip install`.
READERS_FILES = re.compile(r"^(node-[a-z]|bundles|pasted|before|after|yesterday|today|known)\b")
NOT_HERE = ("collect -o", "collect -q", "--install-completion", "sudo ")  # writes to a node or to the shell's rc


def _examples() -> list[tuple[str, int, str, str | None]]:
    """(doc, line, command, the first output line the doc shows for it, if it shows one)."""
    out: list[tuple[str, int, str, str | None]] = []
    for doc in DOCS:
        lines = doc.read_text(encoding="utf-8").splitlines()
        fence: str | None = None
        block: list[tuple[int, str]] = []
        for n, line in enumerate(lines, start=1):
            if line.startswith("```"):
                if fence is None:
                    fence, block = line[3:].strip(), []
                    continue
                out += _commands(doc.relative_to(ROOT).as_posix(), fence, block)
                fence = None
                continue
            if fence is not None:
                block.append((n, line))
    return out


def _commands(doc: str, fence: str, block: list[tuple[int, str]]) -> list[tuple[str, int, str, str | None]]:
    found: list[tuple[str, int, str, str | None]] = []
    joined: list[tuple[int, str]] = []
    for n, line in block:
        if joined and joined[-1][1].endswith("\\"):
            joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
        else:
            joined.append((n, line))
    for i, (n, line) in enumerate(joined):
        text = line.strip()
        shown = text.startswith("$ ")
        cmd = text[2:] if shown else text
        if fence not in ("sh", "text", "") or not cmd.startswith("kptrace "):
            continue
        if fence == "text" and not shown:
            continue
        first = joined[i + 1][1] if shown and i + 1 < len(joined) and not joined[i + 1][1].startswith("$ ") else None
        found.append((doc, n, cmd, first))
    return found


EXAMPLES = _examples()


def _runnable(cmd: str) -> str | None:
    """Why an example is not run here (None: it is)."""
    if any(x in cmd for x in NOT_HERE):
        return "writes to the node or the shell"
    words = shlex.split(cmd.split(" #", 1)[0], posix=True)
    if "DEST" in words or any(w.startswith("[") for w in words) or "…" in cmd:
        return "a synopsis"
    if any(READERS_FILES.match(w) for w in words):
        return "the reader's own files"
    if "-o svg" in cmd or "dot -T" in cmd:
        return None if shutil.which("dot") else "needs Graphviz's dot"
    return None


def test_demo_paths_are_demos_by_name() -> None:
    """`--dump kptrace/demo/…` works only inside a checkout; a doc example must run after `pip install`."""
    bad = [f"{doc}:{n}: {cmd}" for doc, n, cmd, _ in EXAMPLES if "kptrace/demo/" in cmd]
    assert not bad, "use --demo, --demo broken, --demo ipvs or --demo nft:\n" + "\n".join(bad)


def _kptrace_on_path(tmp: Path) -> dict[str, str]:
    """The environment an installed kptrace runs in: the console script when it imports from anywhere, else
    a stand-in that runs this checkout's package (an editable install whose source moved)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "KPTRACE_DEBUG", "NO_COLOR")}
    exe = shutil.which("kptrace")
    if exe is not None and subprocess.run([exe, "--version"], cwd=tmp, capture_output=True, env=env,
                                          check=False).returncode == 0:
        return env
    shim = tmp / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "kptrace").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m kptrace "$@"\n')
    (shim / "kptrace").chmod(0o755)
    return {**env, "PATH": f"{shim}:{env.get('PATH', '')}", "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize(("doc", "line", "cmd", "first"), EXAMPLES, ids=[f"{d}:{n}" for d, n, _, _ in EXAMPLES])
def test_every_doc_example_runs_from_a_temp_dir(doc: str, line: int, cmd: str, first: str | None,
                                                tmp_path: Path) -> None:
    why = _runnable(cmd)
    if why is not None:
        pytest.skip(why)
    run = tmp_path / "cwd"
    run.mkdir()
    env = _kptrace_on_path(tmp_path)
    r = subprocess.run(["sh", "-c", cmd], cwd=run, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert r.returncode not in (2, 3, 126, 127), f"{doc}:{line}: `{cmd}` exited {r.returncode}: {r.stderr[-500:]}"
    assert "Traceback" not in r.stderr, f"{doc}:{line}: {r.stderr[-800:]}"
    if first is not None:
        got = r.stdout.splitlines()[0] if r.stdout else ""
        assert got == first, f"{doc}:{line}: the first line the doc shows is not what `{cmd}` prints"


def test_enough_examples_run() -> None:
    ran = [cmd for _, _, cmd, _ in EXAMPLES if _runnable(cmd) is None]
    shown = [cmd for _, _, cmd, first in EXAMPLES if first is not None]
    assert len(ran) >= 25 and len(shown) >= 4, (len(ran), len(shown))
