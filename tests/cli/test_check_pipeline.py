"""`kptrace check` in a CI job (issue 19): JUnit and SARIF, --only/--skip, a --baseline of known findings,
and the check's title in every human row."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.errors import KptraceError

BROKEN = str(Path(__file__).resolve().parents[2] / "kptrace" / "demo" / "broken-node")


def _run(*args: str) -> tuple[int, str]:
    if not any(c.name == "check" for c in app.registered_commands):
        _register()
    r = CliRunner().invoke(app, ["check", *args], env={"COLUMNS": "250"})
    if isinstance(r.exception, KptraceError):
        return int(r.exception.exit_code), str(r.exception)  # main() prints it as one line and exits with it
    return r.exit_code, r.stdout


def _json(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, out = _run(*args, "-o", "json")
    return code, json.loads(out)


def test_junit_has_a_failure_per_fail_and_a_skip_per_unknown() -> None:
    code, out = _run("--dump", BROKEN, "-o", "junit")
    _, doc = _json("--dump", BROKEN)
    root = ET.fromstring(out)
    cases = root.findall(".//testcase")
    assert len(cases) == len(doc["results"])
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failed == {f"{r['id']} {r['name']}" for r in doc["results"] if r["status"] == "FAIL"}
    assert "KPT201 forward-policy-drop" in failed
    f = next(c for c in cases if c.get("name") == "KPT201 forward-policy-drop")
    assert f.get("file") == "broken-node/iptables-save.txt" and f.find("failure").get("type") == "HIGH"  # type: ignore[union-attr]
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    assert skipped == sum(1 for r in doc["results"] if r["status"] in ("WARN", "CANNOT_TELL"))
    assert code == 1


def test_sarif_results_carry_rules_levels_locations_and_fingerprints() -> None:
    code, out = _run("--dump", BROKEN, "-o", "sarif")
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0" and code == 1
    run = sarif["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    res = run["results"]
    assert {r["ruleId"] for r in res} == set(rules) and all(rules[r["ruleIndex"]] == r["ruleId"] for r in res)
    kpt201 = next(r for r in res if r["ruleId"] == "KPT201")
    assert kpt201["level"] == "error"
    loc = kpt201["locations"][0]["physicalLocation"]
    assert loc["artifactLocation"]["uri"] == "broken-node/iptables-save.txt" and loc["region"]["startLine"] >= 1
    _, doc = _json("--dump", BROKEN)
    prints = {r["fingerprint"] for r in doc["results"]}
    assert all(r["partialFingerprints"]["kptraceFinding/v1"] in prints for r in res)


def test_only_and_skip_take_ids_and_names() -> None:
    _, doc = _json("--dump", BROKEN, "--only", "KPT201,kpt204")
    assert {r["id"] for r in doc["results"]} - {"KPT001", "KPT003"} <= {"KPT201", "KPT204"}
    _, skipped = _json("--dump", BROKEN, "--skip", "forward-policy-drop")
    assert "KPT201" not in {r["id"] for r in skipped["results"]}
    code, _ = _run("--dump", BROKEN, "--skip", "forward-policy-drop")
    assert code != 1 or any(r["status"] == "FAIL" and r["severity"] == "HIGH" for r in skipped["results"])
    code, _ = _run("--dump", BROKEN, "--only", "KPT999")
    assert code == 2


def test_a_baseline_stops_known_findings_failing_the_job(tmp_path: Path) -> None:
    code, out = _run("--dump", BROKEN, "-o", "json")
    assert code == 1
    known = tmp_path / "known.json"
    known.write_text(out)
    code, doc = _json("--dump", BROKEN, "--baseline", str(known))
    assert code != 1 and not [r for r in doc["results"] if r["status"] == "FAIL"]
    # A plain list of fingerprints works too; a new finding (not in it) still fails.
    kpt201 = next(r["fingerprint"] for r in json.loads(out)["results"] if r["id"] == "KPT201")
    others = tmp_path / "others.txt"
    others.write_text("".join(r["fingerprint"] + "  # " + r["id"] + "\n" for r in json.loads(out)["results"]
                              if r["fingerprint"] != kpt201))
    code, doc = _json("--dump", BROKEN, "--baseline", str(others))
    assert code == 1 and [r["id"] for r in doc["results"] if r["status"] == "FAIL"] == ["KPT201"]
    code, human = _run("--dump", BROKEN, "--baseline", str(known))
    assert "known finding" in human and "left out (--baseline" in human
    bad = tmp_path / "bad.txt"
    bad.write_text("not-a-fingerprint\n")
    assert _run("--dump", BROKEN, "--baseline", str(bad))[0] == 2


def test_every_row_names_the_check_by_id_and_title() -> None:
    _, out = _run("--dump", BROKEN)
    rows = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert rows and any("KPT201 forward-policy-drop" in row for row in rows)
    assert all(row.split()[2].startswith("KPT") and row.split()[3][0].islower() for row in rows)
