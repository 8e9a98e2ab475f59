"""Check results for CI jobs: JUnit XML (one test case per check and node) and SARIF 2.1.0 (code
scanning), and the selection a pipeline makes (--only/--skip IDs, a --baseline of known findings).

JUnit: a FAIL is a `<failure>`, a WARN or CANNOT_TELL a `<skipped>` (the check could not decide),
INFO and PASS pass. SARIF: every FAIL, WARN and INFO is a result whose `partialFingerprints` carries
the finding's fingerprint (the one `-o json` prints and `--baseline` reads), located at the input
lines it cites; the rules are the checks that produced them, with their title and docs page.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from kptrace import __version__
from kptrace.errors import KptraceError
from kptrace.model.finding import Finding, Severity, Status

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
ALWAYS = ("KPT001", "KPT003")  # an unreadable input and a crashed check are never filtered away


def _ids(values: list[str] | None) -> list[str]:
    """`--only KPT101,KPT204 --only forward-policy-drop`: ids or names, comma-separated or repeated."""
    from kptrace.checks.registry import get_check

    out: list[str] = []
    for v in values or []:
        for part in v.split(","):
            key = part.strip()
            if not key:
                continue
            spec = get_check(key) or get_check(key.upper()) or get_check(key.lower())
            if spec is None:
                raise KptraceError(f"unknown check '{key}' (`kptrace explain` lists them)")
            out.append(spec.id)
    return out


def select(findings: list[Finding], only: list[str] | None, skip: list[str] | None) -> list[Finding]:
    keep, drop = set(_ids(only)), set(_ids(skip))
    return [f for f in findings if f.id in ALWAYS or ((not keep or f.id in keep) and f.id not in drop)]


def read_baseline(path: Path) -> set[str]:
    """Fingerprints from a `kptrace check -o json` document, or a text file of them (one a line, # comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise KptraceError(f"--baseline {path}: {e.strerror or e}") from None
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise KptraceError(f"--baseline {path}: not a kptrace check JSON document ({e})") from None
        results = doc.get("results") if isinstance(doc, dict) else None
        if not isinstance(results, list):
            raise KptraceError(f"--baseline {path}: a JSON baseline is `kptrace check -o json` output (no 'results')")
        return {str(r["fingerprint"]) for r in results if isinstance(r, dict) and r.get("fingerprint")}
    prints = {line.split("#", 1)[0].strip() for line in text.splitlines()}
    prints.discard("")
    bad = next((p for p in prints if len(p) != 64 or any(c not in "0123456789abcdef" for c in p)), None)
    if bad is not None:
        raise KptraceError(f"--baseline {path}: '{bad[:70]}' is not a finding fingerprint (64 hex digits)")
    return prints


def apply_baseline(findings: list[Finding], known: set[str]) -> tuple[list[Finding], list[Finding]]:
    """(new findings, findings the baseline knows). Only FAIL, WARN and INFO can be baselined."""
    new: list[Finding] = []
    old: list[Finding] = []
    for f in findings:
        baselined = f.status in (Status.FAIL, Status.WARN, Status.INFO) and f.fingerprint() in known
        (old if baselined else new).append(f)
    return new, old


# --- JUnit ------------------------------------------------------------------------------------------


def _where(f: Finding) -> str:
    return ", ".join(str(loc) for loc in f.locations)


def junit(findings: list[Finding]) -> str:
    suites = ET.Element("testsuites", name="kptrace check")
    by_node: dict[str, list[Finding]] = {}
    for f in findings:
        by_node.setdefault(f.node or "node", []).append(f)
    for node, mine in by_node.items():
        suite = ET.SubElement(suites, "testsuite", name=f"kptrace check {node}", tests=str(len(mine)),
                              failures=str(sum(f.status is Status.FAIL for f in mine)), errors="0",
                              skipped=str(sum(f.status in (Status.WARN, Status.CANNOT_TELL) for f in mine)))
        for f in mine:
            case = ET.SubElement(suite, "testcase", classname=f"kptrace.{node}", name=f"{f.id} {f.name}")
            if f.locations:
                case.set("file", f.locations[0].file)
                case.set("line", str(f.locations[0].line))
            body = f.message + (f"\nat {_where(f)}" if f.locations else "") + \
                (f"\nfix: {f.remediation}" if f.remediation and f.status is Status.FAIL else "")
            if f.status is Status.FAIL:
                el = ET.SubElement(case, "failure", message=f.message[:300], type=f.severity.value)
                el.text = body
            elif f.status in (Status.WARN, Status.CANNOT_TELL):
                why = f.message if not f.settle else f"{f.message} (would settle it: {', '.join(f.settle)})"
                ET.SubElement(case, "skipped", message=why[:300])
            else:
                ET.SubElement(case, "system-out").text = body
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# --- SARIF ------------------------------------------------------------------------------------------


def _level(f: Finding) -> str:
    if f.status is Status.FAIL:
        return "error" if f.severity in (Severity.HIGH, Severity.MEDIUM) else "warning"
    return "warning" if f.status is Status.WARN else "note"


def sarif(findings: list[Finding]) -> dict[str, Any]:
    from kptrace.checks.registry import get_check

    shown = [f for f in findings if f.status in (Status.FAIL, Status.WARN, Status.INFO)]
    rule_ids = list(dict.fromkeys(f.id for f in shown))
    rules = []
    for rid in rule_ids:
        spec = get_check(rid)
        f = next(x for x in shown if x.id == rid)
        rule: dict[str, Any] = {"id": rid, "name": f.name,
                                "shortDescription": {"text": spec.summary if spec else f.name},
                                "properties": {"severity": f.severity.value}}
        if f.docs_url:
            rule["helpUri"] = f.docs_url
        if f.remediation:
            rule["help"] = {"text": f.remediation}
        rules.append(rule)
    results = []
    for f in shown:
        res: dict[str, Any] = {
            "ruleId": f.id, "ruleIndex": rule_ids.index(f.id), "level": _level(f),
            "message": {"text": f.message},
            "partialFingerprints": {"kptraceFinding/v1": f.fingerprint()},
            "properties": {"status": f.status.value, "severity": f.severity.value},
        }
        if f.node:
            res["properties"]["node"] = f.node
        locs = []
        for loc in f.locations:
            region: dict[str, int] = {"startLine": loc.line}
            if loc.col is not None:
                region["startColumn"] = loc.col
            locs.append({"physicalLocation": {"artifactLocation": {"uri": loc.file}, "region": region}})
        if locs:
            res["locations"] = locs
        results.append(res)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "kptrace", "version": __version__, "semanticVersion": __version__,
                                "rules": rules}},
            "results": results,
        }],
    }
