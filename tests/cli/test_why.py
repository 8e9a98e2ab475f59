"""`kptrace why` end to end through the CLI: output formats, schema, exit codes, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.render.jsonout import schema

_register()
runner = CliRunner()

DUMP = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.244.1.9:53
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -d 10.244.9.0/24 -j DROP
-A FORWARD -m quota2 --name q -j ACCEPT
COMMIT
"""


@pytest.fixture()
def dump(tmp_path: Path) -> Path:
    p = tmp_path / "iptables-save.txt"
    p.write_text(DUMP)
    return p


def why(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["why", *args])
    return r.exit_code, r.stdout


def test_json_validates_against_schema(dump: Path) -> None:
    code, out = why("10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "--dump", str(dump), "-o", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, schema())
    assert doc["schema"] == "kptrace/v1" and doc["kind"] == "trace"
    assert doc["endpoints"] == ["10.244.1.9:53"]
    assert doc["inputs"][0]["kind"] == "iptables-save" and len(doc["inputs"][0]["sha256"]) == 64
    # quota2 is not modelled: the branch that reaches it is UNDETERMINED, exit 4.
    assert doc["disposition"] == "UNDETERMINED" and code == 4


def test_exit_1_on_drop_and_human_summary(dump: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(dump.parent)
    code, out = why("10.244.9.3:80", "--from", "203.0.113.9", "--dump", dump.name, "--node-ip", "192.168.0.2")
    assert code == 1
    first = out.splitlines()[0]
    assert first.startswith("203.0.113.9 → 10.244.9.3:80/tcp: DROPPED")
    assert "iptables-save.txt:11" in out


def test_exit_0_delivered(dump: Path) -> None:
    code, out = why("192.168.0.2:22", "--from", "203.0.113.9", "--dump", str(dump), "--node-ip", "192.168.0.2", "--detail", "minimal")
    assert code == 0 and "DELIVERED" in out


def test_demo_runs_and_validates() -> None:
    code, out = why("10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "--demo", "-o", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, schema())
    assert code == 0 and sorted(doc["endpoints"]) == ["10.244.1.9:53", "10.244.2.7:53"]
    assert abs(sum(b["probability"] for b in doc["branches"]) - 1) < 1e-9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["10.96.0.10", "--proto", "tcp"], "needs a port"),
        (["10.96.0.300:53"], "is not an IP address"),
        (["10.96.0.10:99999"], "not in 1-65535"),
        (["10.96.0.10:53", "--proto", "gre"], "expected one of"),
        (["10.96.0.10:53"], "cannot read this node's iptables rules"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    cmd = [sys.executable, "-m", "kptrace", "why", *args]
    env = None
    if "iptables rules" in message:
        # No --dump: the live node, here with no tool on PATH to read it with, and none of the optional
        # readers (the `live` extra may be installed: python-iptables would read the legacy tables).
        env = {**os.environ, "PATH": "/nonexistent"}
        blocked = "import sys; sys.modules['iptc'] = sys.modules['pyroute2'] = None; "
        cmd = [sys.executable, "-c", blocked + "from kptrace.cli.app import main; sys.argv[0] = 'kptrace'; main()",
               "why", *args]
    else:
        cmd += ["--demo"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "located"),
    [
        (DUMP.rsplit("COMMIT", 1)[0], ":12:1: table 'filter' has no COMMIT"),  # truncated
        (DUMP.replace("--dport 53", "--dport"), ":5:54: invalid port '-j' for '--dport'"),
        (DUMP.replace("-d 10.244.9.0/24 -j DROP", "-j DROPP"), "chain filter/DROPP is not in the input (referenced at {p}:11)"),
    ],
)
def test_corrupt_dump_is_read_around_its_bad_line(tmp_path: Path, content: str, located: str) -> None:
    """One bad line does not refuse the dump: the rest is read, the bad part is said with its place,
    and the answer is UNDETERMINED where it depends on it (never exit 2 while the rest can be read)."""
    p = tmp_path / "iptables-save.txt"
    p.write_text(content)
    r = subprocess.run([sys.executable, "-m", "kptrace", "why", "10.96.0.10:53", "-p", "udp", "--dump", str(p),
                        "--from", "10.244.1.5", "-o", "json"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 2 and "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    said = json.dumps(doc)
    assert (located.format(p=p) if "{p}" in located else f"{p}{located}") in said, said[:2000]


def test_binary_and_bad_utf8_inputs(tmp_path: Path) -> None:
    b = tmp_path / "iptables-save.txt"
    b.write_bytes(b"*nat\n\x00\x01")
    r = subprocess.run([sys.executable, "-m", "kptrace", "why", "1.2.3.4:5", "--dump", str(b)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "binary data" in r.stderr
    b.write_bytes(b"*nat\n-A PRE \xff\n")
    r = subprocess.run([sys.executable, "-m", "kptrace", "why", "1.2.3.4:5", "--dump", str(b)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"{b}:2:8: invalid UTF-8 byte 0xff" in r.stderr


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("kptrace ")


def test_findings_touching_the_trace_are_shown() -> None:
    from kptrace.load import demo_path

    broken = demo_path().parent / "broken-node"
    code, out = why("10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "--dump", str(broken), "-o", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, schema())
    assert code == 1 and [f["id"] for f in doc["findings"]] == ["KPT201"]
    code, out = why("10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "--dump", str(broken), "-o", "json", "--no-checks")
    assert json.loads(out)["findings"] == []
