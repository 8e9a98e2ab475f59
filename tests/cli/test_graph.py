"""`kptrace graph` end to end: the formats, the three views, the errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from tests.render.test_graph import check_mermaid

if not any(c.name == "graph" for c in app.registered_commands):
    _register()
runner = CliRunner()


def graph(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["graph", *args])
    return r.exit_code, r.stdout


def test_dot_whole_ruleset() -> None:
    code, out = graph("--demo")
    assert code == 0 and "digraph kptrace {" in out and '"hook:PREROUTING" -> "nat/PREROUTING"' in out


def test_mermaid_service() -> None:
    code, out = graph("--demo", "--service", "kube-system/kube-dns", "-o", "mermaid")
    # Chains by their Service's name (issue 19), not the hash; -o json keeps the chain's own name.
    assert code == 0 and check_mermaid(out) == [] and "kube-system/kube-dns:dns<br/>KUBE-SVC · 3 rules" in out
    assert "KUBE-SVC-TCOU7JCQXEZGVUNU" not in out
    code, doc = graph("--demo", "--service", "kube-system/kube-dns", "-o", "json")
    svc = next(n for n in json.loads(doc)["nodes"] if n.get("chain") == "KUBE-SVC-TCOU7JCQXEZGVUNU")
    assert svc["service"] == "kube-system/kube-dns:dns"


def test_json_trace_path_on_node_b() -> None:
    code, out = graph("--demo", "--node", "node-b", "--from", "192.168.56.1", "--to", "192.168.56.12:31234", "-o", "json")
    assert code == 0
    doc = json.loads(out)
    visited = {n["chain"] for n in doc["nodes"] if n["visited"] and n["kind"] == "chain"}
    assert {"KUBE-NODEPORTS", "KUBE-EXT-ZJIF2UXKDP6NCKW5", "KUBE-SVL-ZJIF2UXKDP6NCKW5"} <= visited
    assert doc["graph"]["file"] == "node-b/iptables-save.txt"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed (apt-get install graphviz)")
def test_svg_is_valid() -> None:
    code, out = graph("--demo", "--from", "10.244.1.5", "--to", "10.96.0.10:53", "--proto", "udp", "-o", "svg")
    assert code == 0
    root = ET.fromstring(out)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--demo", "--from", "10.244.1.5"], "--from and --to go together"),
        (["--demo", "--service", "default/nope"], "no KUBE-SVC/SVL/EXT/FW chain"),
        (["--demo", "--service", "default/web", "--from", "1.2.3.4", "--to", "10.96.0.1:443"], "give one of them"),
        (["--demo", "--node", "nope"], "no such node"),
        ([], "no input"),
    ],
)
def test_errors_are_one_line_exit_2(args: list[str], message: str) -> None:
    p = subprocess.run([sys.executable, "-m", "kptrace", "graph", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_trace_graph_takes_destinations_as_why_does_and_marks_the_drop() -> None:
    code, out = graph("--demo", "broken", "--from", "10.244.1.5", "--to", "svc/default/web:80", "-o", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["graph"]["title"] == "10.244.1.5 → 10.96.12.34:80/tcp: DROPPED"
    assert doc["hooks"] == ["PREROUTING", "routing", "FORWARD"]
    assert [(e["kind"], e["after"], e["cite"]) for e in doc["ends"]] == [
        ("dies", "filter/FORWARD", "broken-node/iptables-save.txt:16")]
    code, out = graph("--demo", "--from", "10.244.1.5", "--to", "10.96.0.10:53/udp", "-o", "json")
    assert code == 0 and json.loads(out)["graph"]["title"].startswith("10.244.1.5 → 10.96.0.10:53/udp: FORWARDED")
