"""`kptrace services` end to end: table, wide, json (schema), namespace filter, errors."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import jsonschema
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.render.jsonout import schema

if not any(c.name == "services" for c in app.registered_commands):
    _register()
runner = CliRunner()


def test_table() -> None:
    r = runner.invoke(app, ["services", "--demo"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "NAME", "TYPE"]
    broken = next(line for line in lines if " broken " in line)
    assert broken.split() == ["default", "broken", "ClusterIP", "10.96.77.7", "<none>", "80/TCP", "<none>", "no",
                              "endpoints"]


def test_wide_and_namespace() -> None:
    r = runner.invoke(app, ["services", "--demo", "-o", "wide", "-n", "ingress-nginx"])
    assert r.exit_code == 0
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[2] for row in rows] == ["http", "https"]
    assert all("sourceRanges=192.168.56.0/24" in row for row in rows)


def test_json_validates() -> None:
    r = runner.invoke(app, ["services", "--demo", "-o", "json"])
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, schema())
    assert doc["kind"] == "services" and len(doc["services"]) == 9 and len(doc["inputs"]) == 36  # hostname.txt of both nodes too


def test_no_input_is_a_usage_error() -> None:
    p = subprocess.run([sys.executable, "-m", "kptrace", "services"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no input" in p.stderr and "Traceback" not in p.stderr


def test_help_has_examples() -> None:
    r = runner.invoke(app, ["services", "--help"])
    assert r.exit_code == 0 and "kptrace services --demo" in r.stdout


def test_nftables_and_ipvs_sources(tmp_path: Path) -> None:
    """kube-proxy's nftables mode (chain names, maps) and IPVS virtual services are listed too."""
    from kptrace.load import demo_path

    root = Path(__file__).resolve().parents[1] / "fixtures" / "nft" / "kube-proxy" / "nft-ruleset.txt"
    r = runner.invoke(app, ["services", "--dump", str(root), "-o", "json"])
    doc = json.loads(r.stdout)
    web = next(s for s in doc["services"] if s["name"] == "web")
    assert "[fd00:244:1::3]:8080" in [e["address"] for e in web["endpoints"]]
    assert any(s["name"] == "empty" and s["health"] for s in doc["services"])
    ipvs = demo_path().parent / "ipvs-node"
    r = runner.invoke(app, ["services", "--dump", str(ipvs), "-o", "json"])
    doc = json.loads(r.stdout)
    dns = [s for s in doc["services"] if s["namespace"] == "ipvs" and s["name"] == "10.96.0.10:53"]
    assert dns and {e["address"] for e in dns[0]["endpoints"]} == {"10.244.1.9:53", "10.244.2.7:53"}
