"""The fast path of `kptrace why` (kptrace/cli/fast.py) answers exactly as the typer app does.

Every command line below runs twice as a new process, through `kptrace.cli.app.main` (what the console
script calls): once as is, once with KPTRACE_NO_FAST=1 (the typer app parses it). stdout, stderr and
the exit code must be identical, byte for byte, for answers and for errors alike."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kptrace.cli import fast
from kptrace.testing.generator import generate_iptables

DEMO = Path(__file__).resolve().parents[2] / "kptrace" / "demo"
NODE_A = DEMO / "cluster" / "node-a"
BROKEN = DEMO / "broken-node"
MAIN = "import sys; sys.argv[0] = 'kptrace'; from kptrace.cli.app import main; main()"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("fast")
    # Past 4 MiB: read lazily, mapped, cached (the path the fast path is for).
    rs = generate_iptables(1300, 10, seed=3)
    big = d / "big.txt"
    rs.write(str(big))
    assert big.stat().st_size > 4 * 1024 * 1024
    svc = next(s for s in rs.services[600:] if s.endpoints and s.protocol == "TCP")
    small = generate_iptables(30, 3, seed=1)
    small_path = d / "small.txt"
    small.write(str(small_path))
    s2 = next(s for s in small.services if s.endpoints and s.protocol == "TCP")
    bad = d / "bad.txt"
    # A bad line on the probe's path (its KUBE-SERVICES rule): the answer cites it as file:line:col.
    lines = small.text.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith(f"-A KUBE-SERVICES -d {s2.cluster_ip}/32 ")
              and f"--dport {s2.port} " in line)
    lines[at] = lines[at].replace(f"--dport {s2.port} ", "--dport ")  # its port left out
    bad.write_text("".join(lines))
    truncated = d / "truncated.txt"
    truncated.write_text(small.text.rsplit("COMMIT", 1)[0])
    return {"big": str(big), "vip": f"{svc.cluster_ip}:{svc.port}", "small": str(small_path),
            "vip2": f"{s2.cluster_ip}:{s2.port}", "bad": str(bad), "truncated": str(truncated),
            "missing": str(d / "nope.txt"), "cache": str(d / "cache")}


# {name} is replaced from the fixture; each entry is one command line after `kptrace`.
CASES: list[list[str]] = [
    # answers: json, yaml, text, with every option the fast path reads
    ["why", "{vip}", "--from", "10.244.1.7", "--dump", "{big}", "--node-ip", "192.168.0.2", "-o", "json"],
    ["why", "{vip}", "--from", "10.244.1.7", "--dump", "{big}", "--node-ip", "192.168.0.2", "-o", "json"],  # cached
    ["why", "{vip}", "--from", "10.244.1.7", "--dump", "{big}", "--node-ip", "192.168.0.2"],
    ["why", "{vip}", "--from=10.244.1.7", "--dump={big}", "--node-ip=192.168.0.2", "--output=yaml"],
    ["why", "--dump", "{big}", "{vip}/tcp", "--from", "203.0.113.9", "--node-ip", "192.168.0.2", "--detail", "full",
     "--width", "120"],
    ["why", "{vip2}", "--from", "10.244.1.7", "-d", "{small}", "-p", "tcp", "--sport", "40000", "-o", "json"],
    ["why", "{vip2}", "--from", "10.244.1.7", "-d", "{small}", "--detail", "minimal", "--no-checks"],
    ["why", "{vip2}", "--from", "10.244.1.7", "-d", "{small}", "--state", "established", "--mark", "0x4000",
     "--checks", "--strict", "--no-cache"],
    ["why", "{vip2}", "--from", "10.244.1.7", "-d", "{small}", "--pod-cidr", "10.244.0.0/16",
     "--service-cidr", "10.96.0.0/12", "--in-iface", "cni0", "-o", "json"],
    ["why", "10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "--dump", str(NODE_A)],
    ["why", "10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "--dump", str(NODE_A), "-o", "json"],
    ["why", "10.244.2.5:8080", "--from", "10.244.1.5", "--dump", str(BROKEN)],
    ["why", "10.244.2.5:8080", "--from", "10.244.1.5", "--dump", str(BROKEN), "-o", "json", "--detail", "full"],
    ["why", "10.244.2.5:8080", "--from", "10.244.1.5", "--dump", str(BROKEN), "--what-if",
     "sysctl -w net.ipv4.ip_forward=1", "-o", "json"],
    ["why", "10.244.2.5:8080", "--from", "10.244.1.5", "--dump", str(BROKEN), "--suggest-fix",
     "--suggest-max-size", "2"],
    ["why", "svc/kube-system/kube-dns:dns", "--proto", "udp", "--from", "10.244.1.5", "--dump", str(NODE_A)],
    ["why", "10.96.0.10", "--proto", "icmp", "--from", "10.244.1.5", "--dump", str(NODE_A), "--node", "node-a"],
    # errors the command reports (KptraceError): one line on stderr and exit 2
    ["why", "{vip}", "--from", "10.244.1.7", "--dump", "{missing}"],
    ["why", "{vip2}", "--from", "10.244.1.7", "--dump", "{bad}"],
    ["why", "{vip2}", "--from", "10.244.1.7", "--dump", "{bad}", "--strict", "-o", "json"],
    ["why", "{vip2}", "--from", "10.244.1.7", "--dump", "{truncated}", "-o", "json"],
    ["why", "not-an-ip:80", "--dump", "{small}"],
    ["why", "10.0.0.1:99999", "--dump", "{small}"],
    ["why", "10.0.0.1:80", "--from", "nowhere", "--dump", "{small}"],
    ["why", "10.0.0.1:80", "--proto", "gre", "--dump", "{small}"],
    ["why", "10.0.0.1:80/udp", "--proto", "tcp", "--dump", "{small}"],
    ["why", "10.0.0.1:80", "--state", "weird", "--dump", "{small}"],
    ["why", "10.0.0.1:80", "--mark", "0xzz", "--dump", "{small}"],
    ["why", "10.0.0.1:80", "--service-cidr", "nonsense", "--dump", "{small}"],
    ["why", "10.0.0.1:80", "--node", "nosuchnode", "--dump", "{small}"],
    ["why", "10.0.0.1:80", "--what-if", "frobnicate everything", "--dump", "{small}"],
    ["why", "10.0.0.1", "--proto", "tcp", "--dump", "{small}"],
    # usage errors and everything else: the typer app's (the fast path must hand them over)
    ["why", "{vip}", "--dump", "{big}", "-o", "xml"],
    ["why", "{vip}", "--dump", "{big}", "-o", "JSON", "--node-ip", "192.168.0.2", "--from", "10.244.1.7"],
    ["why", "{vip}", "--dump", "{big}", "-ojson", "--node-ip", "192.168.0.2", "--from", "10.244.1.7"],
    ["why", "{vip}", "--dump", "{big}", "--sport", "0"],
    ["why", "{vip}", "--dump", "{big}", "--sport", "abc"],
    ["why", "{vip}", "--dump", "{big}", "--width", "10"],
    ["why", "{vip}", "--dump", "{big}", "--detail", "everything"],
    ["why", "{vip}", "--dump", "{big}", "--suggest-max-size", "9"],
    ["why", "{vip}", "--frm", "10.244.1.7", "--dump", "{big}"],
    ["why", "{vip}", "--dump", ""],
    ["why", "{vip}", "--dump="],
    ["why", "{vip}", "--dump"],
    ["why", "{vip}", "{vip2}", "--dump", "{small}"],
    ["why", "--dump", "{small}"],
    ["why", "{vip}", "--from", "-1", "--dump", "{small}"],
    ["why", "{vip2}", "--from", "10.244.1.7", "-d", "{small}", "--debug", "-o", "json"],
    ["why", "{vip2}", "--from", "10.244.1.7", "-d", "{small}", "--", "-o"],
    ["why", "--help"],
    ["why", "-h"],
    ["why"],
    ["--version"],
    ["wat", "{vip}"],
]


def _argv(case: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in case]


def _run(argv: list[str], files: dict[str, str], typer_only: bool) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("KPTRACE_NO_FAST", "KPTRACE_DEBUG", "COLUMNS")}
    env.update(KPTRACE_CACHE_DIR=files["cache"], COLUMNS="100", NO_COLOR="1")
    if typer_only:
        env["KPTRACE_NO_FAST"] = "1"
    return subprocess.run([sys.executable, "-c", MAIN, *argv], capture_output=True, env=env, timeout=120)


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c)[:60] for c in CASES])
def test_fast_path_is_the_typer_path(case: list[str], files: dict[str, str]) -> None:
    argv = _argv(case, files)
    typer_run = _run(argv, files, typer_only=True)
    fast_run = _run(argv, files, typer_only=False)
    assert fast_run.returncode == typer_run.returncode, (fast_run.stderr, typer_run.stderr)
    assert fast_run.stderr == typer_run.stderr
    assert fast_run.stdout == typer_run.stdout
    assert b"Traceback" not in fast_run.stderr


def test_a_bad_line_is_located(files: dict[str, str]) -> None:
    for argv in (["why", "{vip2}", "--from", "10.244.1.7", "--dump", "{bad}"],
                 ["why", "{vip2}", "--from", "10.244.1.7", "--dump", "{bad}", "--strict", "-o", "json"]):
        p = _run(_argv(argv, files), files, typer_only=False)
        assert re.search(rb"bad\.txt:[0-9]+:[0-9]+", p.stdout + p.stderr), (p.stdout, p.stderr)


def test_the_matrix_takes_both_paths(files: dict[str, str]) -> None:
    """Most answers and the command's own errors go the fast way; usage errors and help do not."""
    taken = [fast.parse(_argv(c, files)) is not None for c in CASES]
    first_usage = CASES.index(["why", "{vip}", "--dump", "{big}", "-o", "xml"])
    assert all(taken[:first_usage])
    assert not any(taken[first_usage:])


def test_fast_path_parses_as_click_does() -> None:
    kw = fast.parse(["why", "-o", "json", "10.0.0.1:80", "--dump", "a", "-d", "b", "--node-ip=1.2.3.4",
                     "--from", "x", "--from", "y", "--no-checks", "--checks", "--sport", "080"])
    assert kw == {"output": "json", "dest": "10.0.0.1:80", "dump": [Path("a"), Path("b")], "node_ip": ["1.2.3.4"],
                  "src": "y", "checks": True, "sport": 80}


def test_fast_path_imports_no_cli_framework(files: dict[str, str]) -> None:
    argv = _argv(CASES[1], files)
    code = ("import sys; sys.argv = ['kptrace', *sys.argv[1:]]\n"
            "from kptrace.cli.app import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            "sys.stderr.write(repr((code, sorted(m for m in ('typer', 'click', 'rich', 'pydantic', 'yaml', 'networkx')"
            " if m in sys.modules))))\n")
    env = {**os.environ, "KPTRACE_CACHE_DIR": files["cache"]}
    env.pop("KPTRACE_NO_FAST", None)
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert p.stderr.endswith("(0, [])"), p.stderr
