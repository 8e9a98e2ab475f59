"""`kptrace sweep` and `kptrace diff` end to end: exit codes, the summary line, broken rows first, json
(schema) and csv, the filters, and rows that equal `kptrace why` for the same flow."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.errors import KptraceError
from kptrace.render.jsonout import schema

if not any(c.name == "sweep" for c in app.registered_commands):
    _register()
runner = CliRunner()
DEMO = Path(__file__).resolve().parents[2] / "kptrace" / "demo"


def _json(args: list[str], code: int) -> dict:
    r = runner.invoke(app, args)
    assert r.exit_code == code, r.output
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, schema())
    return doc


def test_demo_human_broken_first_and_summary() -> None:
    r = runner.invoke(app, ["sweep", "--demo", "--width", "250"])
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "node-a: 9 Service ports, 33 flows: 27 delivered, 6 broken (3 Services)"
    table = lines[1:lines.index("")]
    statuses = [line.split()[0] for line in table[1:]]
    assert statuses == sorted(statuses, key=lambda s: s != "broken") and statuses[:6] == ["broken"] * 6
    assert "cluster (2 nodes): 18 Service ports, 66 flows: 55 delivered, 11 broken (3 Services)" in lines
    assert "  default/api-local:http (tcp): broken on node-a; fine on node-b" in lines


def test_json_validates_and_filters() -> None:
    doc = _json(["sweep", "--dump", str(DEMO / "broken-node"), "--service", "default/web", "--source", "pod",
                 "--source", "external", "-o", "json"], 1)
    assert doc["kind"] == "sweep"
    assert [(r["source_kind"], r["entry"], r["fate"]) for r in doc["rows"]] == [
        ("pod", "cluster-ip", "DROPPED"), ("external", "node-port", "FORWARDED")]
    assert doc["rows"][0]["deciding"][0]["source"] == "broken-node/iptables-save.txt:16"
    assert "KPT201" in doc["rows"][0]["findings"]
    assert doc["summary"] == {"service_ports": 1, "flows": 2, "delivered": 1, "broken": 1, "undetermined": 0,
                              "broken_services": 1}


def test_ok_exit_zero_and_csv() -> None:
    r = runner.invoke(app, ["sweep", "--demo", "--service", "kube-system/kube-dns", "-o", "csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 18 and {row["status"] for row in rows} == {"ok"}
    first = next(row for row in rows if row["port_name"] == "dns" and row["source_kind"] == "pod"
                 and row["node"] == "node-a")
    assert first["endpoints"] == "10.244.1.9:53=0.5 10.244.2.7:53=0.5"
    assert first["egress"] == "10.244.1.9:53=cni0@node-a 10.244.2.7:53=cni0@node-b"


def test_undetermined_exits_four(tmp_path: Path) -> None:
    text = (DEMO / "cluster" / "node-a" / "iptables-save.txt").read_text()
    start = text.index("*nat")
    nat = tmp_path / "nat.txt"
    nat.write_text(text[start:text.index("COMMIT", start) + 7])  # the nat table alone: filter is unknown
    r = runner.invoke(app, ["sweep", "--dump", str(nat), "--no-checks"])
    assert r.exit_code == 4, r.output
    assert "undetermined" in r.stdout.splitlines()[0]


def _usage_error(args: list[str]) -> bool:
    r = runner.invoke(app, args)
    return isinstance(r.exception, KptraceError) and r.exception.exit_code == 2


@pytest.mark.parametrize("args", [["--source", "pods"], ["--service", "default/nope"], ["--node", "node-z"]])
def test_usage_errors(args: list[str]) -> None:
    assert _usage_error(["sweep", "--demo", *args])


def test_usage_error_from_the_command_line() -> None:
    p = subprocess.run([sys.executable, "-m", "kptrace", "sweep", "--demo", "--source", "pods"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "--source 'pods'" in p.stderr and "Traceback" not in p.stderr


def test_diff_two_inputs() -> None:
    doc = _json(["diff", str(DEMO / "cluster" / "node-a"), str(DEMO / "broken-node"), "-o", "json"], 1)
    assert doc["kind"] == "diff" and doc["summary"]["changed"] == 8
    assert {c["source_kind"] for c in doc["changes"]} == {"pod"}
    web = next(c for c in doc["changes"] if c["name"] == "web")
    assert web["changed"] == ["fate"] and web["a"]["fate"] == "FORWARDED" and web["b"]["fate"] == "DROPPED"
    assert any("FLANNEL-FWD" in s["text"] for s in web["path_only_in_a"])
    assert any(s["source"] == "broken-node/iptables-save.txt:16" for s in web["b"]["deciding"])


def test_diff_nothing_changed_exits_zero() -> None:
    path = str(DEMO / "broken-node")
    r = runner.invoke(app, ["diff", path, path])
    assert r.exit_code == 0, r.output
    assert "no flow differs" in r.stdout


def test_diff_two_nodes_of_one_input() -> None:
    r = runner.invoke(app, ["diff", "--demo", "--node", "node-a", "--vs", "node-b", "--width", "200"])
    assert r.exit_code == 1, r.output
    assert "1 flow differs:" in r.stdout
    assert "default/api-local:http tcp from external via node-port: fate, endpoints" in r.stdout


def test_diff_usage() -> None:
    assert _usage_error(["diff", str(DEMO / "broken-node")])
    assert _usage_error(["diff", "--demo", "--vs", "node-b"])


def _why(row: dict, dump: list[str], extra: tuple[str, ...] = ()) -> dict:
    args = ["why", f"{row['dst']}:{row['dport']}", "--from", row["src"], "--proto", row["protocol"],
            "--node", row["start_node"], "--no-checks", "-o", "json", *extra]
    for d in dump:
        args += ["--dump", d]
    r = runner.invoke(app, args)
    assert r.exit_code in (0, 1, 4), r.output
    return json.loads(r.stdout)


@pytest.mark.parametrize("dump", [[str(DEMO / "cluster")], [str(DEMO / "broken-node")]])
def test_rows_equal_why(dump: list[str]) -> None:
    doc = _json(["sweep", *sum((["--dump", d] for d in dump), []), "--no-checks", "-o", "json"], 1)
    for row in random.Random(4).sample(doc["rows"], 6):
        why = _why(row, dump)
        assert row["fate"] == why["disposition"], row
        assert [e["address"] for e in row["endpoints"] if e["address"]] == why["endpoints"], row


def test_rows_equal_why_on_a_generated_1k_dump(tmp_path: Path) -> None:
    from kptrace.testing.generator import generate_iptables

    gen = generate_iptables(1000, 10, seed=11)
    path = tmp_path / "iptables-save.txt"
    gen.write(str(path))
    svc = gen.pick(verdict="DNAT", index=0.5)
    dump = [str(path)]
    doc = _json(["sweep", "--dump", str(path), "--node-ip", "192.168.0.2", "--service", f"{svc.namespace}/{svc.name}",
                 "--no-checks", "-o", "json"], 0)
    assert doc["rows"]
    assert {r["source_kind"] for r in doc["rows"]} >= {"node"}
    for row in doc["rows"]:
        why = _why(row, dump, ("--node-ip", "192.168.0.2"))
        assert row["fate"] == why["disposition"], row
        assert [e["address"] for e in row["endpoints"] if e["address"]] == why["endpoints"], row
