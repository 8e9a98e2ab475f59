"""`kptrace parse`: what was recognised, counts and unknowns, human and JSON, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.render.jsonout import schema

_register()
runner = CliRunner()
FIX = Path(__file__).resolve().parents[1] / "fixtures" / "listings" / "kube-node"


def run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["parse", *args])
    return r.exit_code, r.stdout


def test_mixed_paste_json_validates_and_lists_every_section() -> None:
    code, out = run(str(FIX / "mixed-paste.txt"), "-o", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, schema())
    assert code == 0 and doc["kind"] == "parse" and doc["schema"] == "kptrace/v1"
    f = doc["files"][0]
    assert f["kind"] == "paste"
    assert [s["kind"] for s in f["sections"]] == ["iptables-list", "route-n", "route-n", "arp", "arp", "ip-neigh",
                                                  "conntrack", "ip-route", "iptables-rules"]
    assert f["sections"][0]["command"] == "iptables -t nat -L KUBE-SERVICES -n -v" and f["sections"][0]["table"] == "nat"
    assert f["sections"][1]["counts"] == {"entries": 6}
    rs = doc["model"]["rulesets"][0]
    assert rs["partial"] and rs["family"] == 4
    chains = {c["name"]: c for t in rs["tables"] for c in t["chains"]}
    svc = chains["KUBE-SERVICES"]["rules"][0]
    assert svc["iptables_save"].startswith("-A KUBE-SERVICES -p tcp -d 10.96.0.20")
    assert chains["KUBE-SERVICES"]["rules"][-1]["not_shown"]
    assert len(doc["model"]["conntrack"]) == 3 and doc["model"]["neighbors"]


def test_lossy_listing_exits_4_and_says_why() -> None:
    code, out = run(str(FIX / "all-L.txt"))
    assert code == 4
    assert "without -v" in out and "without -n" in out and "lines 2-" in out


def test_whole_save_counts_and_exit_0() -> None:
    code, out = run(str(FIX / "iptables-save.txt"), "-o", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, schema())
    sec = doc["files"][0]["sections"][0]
    assert code == 0 and sec["kind"] == "iptables-save" and sec["counts"]["rules"] > 40
    assert not doc["model"]["rulesets"][0]["partial"]


def test_unrecognised_file_is_listed_not_fatal(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("the node was rebooted at noon\n")
    code, out = run(str(p), str(FIX / "route-n.txt"), "-o", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, schema())
    assert code == 4 and doc["files"][0]["kind"] is None and doc["files"][0]["unrecognised"]
    assert doc["files"][1]["kind"] == "route-n"


def test_errors_are_one_located_line_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "paste.txt"
    save = (FIX / "iptables-save.txt").read_text().replace("-j KUBE-FIREWALL", "-j KUBE-FIREWALLX", 1)
    p.write_text("$ iptables-save\n" + save)
    r = subprocess.run([sys.executable, "-m", "kptrace", "parse", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and f"{p}:" in r.stderr and "KUBE-FIREWALLX" in r.stderr
    b = tmp_path / "bin.txt"
    b.write_bytes(b"Chain X\x00\x01")
    r = subprocess.run([sys.executable, "-m", "kptrace", "parse", str(b)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "binary data" in r.stderr


def test_why_reads_a_pasted_listing_end_to_end(tmp_path: Path) -> None:
    p = tmp_path / "paste.txt"
    p.write_text((FIX / "all-L-n-v-x-lines.txt").read_text().replace("\n", "\r\n"))
    r = runner.invoke(app, ["why", "192.168.0.2:10250", "--from", "203.0.113.7", "--in-iface", "eth0",
                            "--dump", str(p), "--node-ip", "192.168.0.2", "-o", "json"])
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, schema())
    assert r.exit_code == 1 and doc["disposition"] == "DROPPED"
    assert doc["inputs"][0]["kind"] == "iptables-list"


def test_a_pastes_unrecognised_lines_are_listed_once(tmp_path: Path) -> None:
    """The paste's own reading and the loader both find a line no command printed: `parse` says it once."""
    p = tmp_path / "paste.txt"
    p.write_text("$ ip route\ndefault via 10.0.0.1 dev eth0\n\nhello world, this is prose\n$ sysctl net.ipv4.ip_forward\n"
                 "net.ipv4.ip_forward = 1\n")
    code, out = run(str(p), "-o", "json")
    lines = [(u["line"], u["reason"]) for u in json.loads(out)["files"][0]["unrecognised"]]
    assert code == 4 and [n for n, _ in lines] == [4], lines
