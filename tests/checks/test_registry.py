"""Meta-tests over the check registry: ids, severities, summaries, modules, docs pages and YAML cases.

After ansible-lint's test/test_rule_properties.py and sqlfluff's test/core/rules/docstring_test.py:
whatever a new check forgets, one of these names it.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from kptrace.checks.registry import GROUPS, ID_RE, all_checks, doc_page, get_check
from kptrace.model.finding import Severity

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "checks"
PACKAGED = ROOT / "kptrace" / "checks" / "docs"
FIXTURES = ROOT / "tests" / "fixtures" / "checks"
HEADINGS = ["What it detects", "Why traffic breaks", "Failing example", "Passing example", "Remediation", "References"]
RANGES = {"input": "0", "kernel": "1", "netfilter": "2", "ipvs": "3", "routing": "4", "host": "5", "dns": "6"}

CHECKS = all_checks()
IDS = [c.id for c in CHECKS]


def test_ids_are_kptnnn_and_unique() -> None:
    assert all(ID_RE.match(i) for i in IDS)
    assert len(IDS) == len(set(IDS))
    names = [c.name for c in CHECKS]
    assert len(names) == len(set(names))


def test_issue_catalogue_is_registered() -> None:
    wanted = {"KPT001", "KPT002", "KPT003", "KPT101", "KPT102", "KPT103", "KPT104", "KPT105", "KPT201", "KPT202",
              "KPT203", "KPT204", "KPT205", "KPT206", "KPT207", "KPT208", "KPT209", "KPT401", "KPT402", "KPT403",
              "KPT404", "KPT501"}
    assert wanted <= set(IDS)


@pytest.mark.parametrize("spec", CHECKS, ids=IDS)
def test_metadata(spec) -> None:  # type: ignore[no-untyped-def]
    assert spec.severity in set(Severity)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", spec.name), spec.name
    assert spec.summary and "\n" not in spec.summary and spec.summary.endswith("."), spec.summary
    assert len(spec.summary) <= 120, f"{spec.id}: summary is {len(spec.summary)} characters"
    assert spec.remediation.strip()
    assert spec.docs_url == f"docs/checks/{spec.id}.md"
    assert get_check(spec.id) is spec and get_check(spec.name) is spec and get_check(spec.id.lower()) is spec


def test_every_module_is_listed_and_named_after_its_check() -> None:
    seen = []
    for group in GROUPS:
        package = importlib.import_module(f"kptrace.checks.{group}")
        files = sorted(p.stem for p in (ROOT / "kptrace" / "checks" / group).glob("kpt*.py"))
        assert sorted(package.CHECKS) == files, f"{group}/__init__.py CHECKS must list every kptNNN_*.py module"
        for module in package.CHECKS:
            number = re.match(r"kpt(\d{3})_", module)
            assert number, module
            assert number.group(1)[0] == RANGES[group], f"{module} is in the wrong group for its range"
            spec = get_check(f"KPT{number.group(1)}")
            assert spec is not None and spec.func.__module__ == f"kptrace.checks.{group}.{module}"
            seen.append(spec.id)
    assert sorted(seen) == IDS


def _sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, re.M)


@pytest.mark.parametrize("spec", CHECKS, ids=IDS)
def test_docs_page(spec) -> None:  # type: ignore[no-untyped-def]
    page = DOCS / f"{spec.id}.md"
    assert page.exists(), f"write {page.relative_to(ROOT)}"
    text = page.read_text(encoding="utf-8")
    assert text.startswith(f"# {spec.id} {spec.name}\n")
    assert spec.summary in text, "the page repeats the check's summary (its docstring's first line)"
    assert f"Severity **{spec.severity.value}**" in text
    assert _sections(text) == HEADINGS
    body = dict(zip(HEADINGS, re.split(r"^## .+$", text, flags=re.M)[1:], strict=True))
    assert all(body[h].strip() for h in HEADINGS)
    assert "```" in body["Remediation"], "Remediation gives the exact commands"
    assert "ermanent" in body["Remediation"], "Remediation says what makes the fix permanent (or that nothing has to)"


@pytest.mark.parametrize("spec", CHECKS, ids=IDS)
def test_failing_example_cites_a_real_line(spec) -> None:  # type: ignore[no-untyped-def]
    """`path:line` of a file in the repo, followed by a code block whose first line is that line."""
    text = (DOCS / f"{spec.id}.md").read_text(encoding="utf-8")
    failing = re.split(r"^## .+$", text, flags=re.M)[HEADINGS.index("Failing example") + 1]
    m = re.search(r"`((?:tests|kptrace)/[^`:]+):(\d+)(?:-\d+)?`.*?```text\n(.*?)\n", failing, re.S)
    assert m, "Failing example starts with `path:line` and the excerpt"
    lines = (ROOT / m.group(1)).read_text(encoding="utf-8").splitlines()
    assert 0 < int(m.group(2)) <= len(lines), f"{m.group(1)} has no line {m.group(2)}"
    assert lines[int(m.group(2)) - 1].strip() == m.group(3).strip(), f"{m.group(1)}:{m.group(2)} is not the excerpt"
    assert f"{spec.id}" in failing.split(m.group(3), 1)[1], "and the finding it gives"


def test_packaged_pages_are_copies_of_docs() -> None:
    """docs/checks/ is edited; kptrace/checks/docs/ ships in the wheel for `kptrace explain`."""
    docs = {p.name: p.read_bytes() for p in DOCS.glob("KPT*.md")}
    packaged = {p.name: p.read_bytes() for p in PACKAGED.glob("KPT*.md")}
    stale = sorted(n for n in docs.keys() | packaged.keys() if docs.get(n) != packaged.get(n))
    assert not stale, f"run `cp docs/checks/KPT*.md kptrace/checks/docs/` (and remove pages of removed checks): {stale}"
    assert sorted(docs) == sorted(f"{i}.md" for i in IDS)
    assert doc_page("KPT101") == docs["KPT101.md"].decode()


def test_index_lists_every_check() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for spec in CHECKS:
        row = f"| [{spec.id}]({spec.id}.md) | {spec.name} | {spec.severity.value} | {spec.summary} |"
        assert row in index, f"docs/checks/index.md needs: {row}"


@pytest.mark.parametrize("spec", CHECKS, ids=IDS)
def test_yaml_cases_have_pass_and_fail(spec) -> None:  # type: ignore[no-untyped-def]
    path = FIXTURES / f"{spec.id}.yml"
    assert path.exists(), f"write {path.relative_to(ROOT)}"
    doc = yaml.safe_load(path.read_text())
    assert doc["check"] == spec.id
    names = [c["name"] for c in doc["cases"]]
    assert len(names) == len(set(names))
    assert all(re.match(r"(pass|fail|warn|info|cannot)_[a-z0-9_]+$", n) for n in names), names
    by_kind = {k: [c for c in doc["cases"] if c["name"].startswith(k + "_")] for k in ("pass", "fail", "warn", "info")}
    # KPT001/KPT002 report on the input, not the node: what they find is a WARN or an INFO, never a FAIL.
    found = by_kind["fail"] or (spec.func.__module__.split(".")[2] == "input" and (by_kind["warn"] or by_kind["info"]))
    assert by_kind["pass"] and found
    for case in by_kind["pass"]:
        assert all(e.split()[1] == "PASS" for e in case["expect"]), case["name"]
    for case in by_kind["fail"]:
        assert any(e.split()[1] in ("FAIL", "WARN") for e in case["expect"]), case["name"]
    for case in doc["cases"]:
        assert all(re.match(rf"{spec.id} (FAIL|WARN|INFO|PASS|CANNOT_TELL)( @ \S+:\d+(:\d+)?( \S+:\d+(:\d+)?)*)?$", e)
                   for e in case["expect"]), case["expect"]
