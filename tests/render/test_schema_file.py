"""The shipped output schema is a valid Draft 2020-12 schema and means what docs/output-json.md says."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")
from jsonschema import Draft202012Validator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "kptrace" / "render" / "schema" / "kptrace-output.v1.json"
DOC_PATH = ROOT / "docs" / "output-json.md"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(schema: dict) -> Draft202012Validator:
    return Draft202012Validator(schema)


def _step(**over):
    step = {
        "hook": "PREROUTING",
        "table": "nat",
        "chain": "KUBE-SERVICES",
        "rule": 1,
        "source": "iptables-save.txt:148",
        "action": "jump",
        "text": "-A KUBE-SERVICES ... -j KUBE-SVC-TCOU7JCQXEZGVUNU",
    }
    step.update(over)
    return step


def _branch(**over):
    branch = {
        "probability": 0.5,
        "disposition": "DELIVERED",
        "dnat": "10.244.1.9:53",
        "masquerade": False,
        "snat": None,
        "egress": {"iface": "cni0", "next_hop": None},
        "steps": [_step(), _step(hook="routing", table=None, chain=None, rule=None,
                                 source="ip-route.txt:3", action="route", text="10.244.1.0/24 dev cni0")],
        "assumptions": ["conntrack state NEW"],
        "unknowns": [],
    }
    branch.update(over)
    return branch


def _finding(**over):
    finding = {
        "id": "KPT001",
        "name": "forward-policy-drop",
        "severity": "HIGH",
        "status": "FAIL",
        "message": "filter FORWARD policy is DROP and nothing accepts pod traffic",
        "locations": [{"file": "iptables-save.txt", "line": 14}, {"file": "sysctl.txt", "line": 20, "col": 1}],
        "remediation": "accept the pod CIDR in FORWARD",
        "docs_url": "docs/checks/KPT001.md",
        "fingerprint": "KPT001:9f2c",
    }
    finding.update(over)
    return finding


def trace_doc() -> dict:
    return {
        "schema": "kptrace/v1",
        "kind": "trace",
        "kptrace_version": "0.1.0",
        "inputs": [{"file": "iptables-save.txt", "kind": "iptables-save", "sha256": "a" * 64}],
        "flow": {"src": "10.244.1.5", "sport": None, "dst": "10.96.0.10", "dport": 53,
                 "proto": "udp", "origin": "pod", "in_iface": "cni0"},
        "disposition": "MIXED",
        "endpoints": ["10.244.1.9:53", "10.244.2.7:53"],
        "branches": [
            _branch(),
            _branch(disposition="FORWARDED", dnat="10.244.2.7:53",
                    egress={"iface": "flannel.1", "next_hop": "10.244.2.0", "node": "node-b"}),
        ],
    }


def check_doc() -> dict:
    return {
        "schema": "kptrace/v1",
        "kind": "check",
        "kptrace_version": "0.1.0",
        "inputs": [],
        "results": [_finding(), _finding(id="KPT002", status="PASS", severity="LOW", locations=[])],
        "summary": {"total": 2, "fail": 1, "warn": 0, "info": 0, "pass": 1},
    }


def _errors(validator: Draft202012Validator, doc: dict) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


# --- the schema file itself -------------------------------------------------


def test_schema_is_valid_draft_2020_12(schema: dict) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)  # raises SchemaError if not


def test_schema_pins_the_format_identifier(schema: dict) -> None:
    assert schema["properties"]["schema"]["const"] == "kptrace/v1"
    assert set(schema["required"]) == {"schema", "kind", "kptrace_version", "inputs"}


def test_no_object_forbids_additional_keys(schema: dict) -> None:
    """v1 may only grow: nothing may say additionalProperties/unevaluatedProperties false."""
    def walk(node):
        if isinstance(node, dict):
            assert node.get("additionalProperties", True) is not False
            assert node.get("unevaluatedProperties", True) is not False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(schema)


# --- documents that must validate -------------------------------------------


def test_trace_document_valid(validator: Draft202012Validator) -> None:
    assert _errors(validator, trace_doc()) == []


def test_trace_document_with_findings_valid(validator: Draft202012Validator) -> None:
    doc = trace_doc()
    doc["findings"] = [_finding()]
    assert _errors(validator, doc) == []


def test_check_document_valid(validator: Draft202012Validator) -> None:
    assert _errors(validator, check_doc()) == []


@pytest.mark.parametrize("kind", ["services", "parse"])
def test_other_kinds_need_common_keys_only(validator: Draft202012Validator, kind: str) -> None:
    doc = {"schema": "kptrace/v1", "kind": kind, "kptrace_version": "0.1.0", "inputs": [], "services": []}
    assert _errors(validator, doc) == []


def test_added_keys_are_allowed_everywhere(validator: Draft202012Validator) -> None:
    doc = trace_doc()
    doc["generated_at"] = "2026-01-01T00:00:00Z"
    doc["flow"]["family"] = "ipv4"
    doc["inputs"][0]["size"] = 123
    doc["branches"][0]["service"] = "kube-system/kube-dns:dns"
    doc["branches"][0]["steps"][0]["matched"] = True
    doc["branches"][0]["egress"]["mac"] = "8e:3a:4b:12:52:7f"
    assert _errors(validator, doc) == []


def test_trace_assumptions_and_unknown_egress_node_valid(validator: Draft202012Validator) -> None:
    doc = trace_doc()
    doc["assumptions"] = ["the first packet of a NEW connection"]
    doc["branches"][0]["egress"]["node"] = None
    assert _errors(validator, doc) == []


def test_null_egress_and_null_ports_valid(validator: Draft202012Validator) -> None:
    doc = trace_doc()
    doc["flow"].update(proto="icmp", dport=None, in_iface=None, origin="local")
    doc["disposition"] = "DROPPED"
    doc["branches"] = [_branch(probability=1, disposition="DROPPED", dnat=None, egress=None)]
    assert _errors(validator, doc) == []


def _doc_examples() -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)\n```", DOC_PATH.read_text(encoding="utf-8"), flags=re.S)
    return [json.loads(b) for b in blocks]


def test_examples_in_docs_validate(validator: Draft202012Validator) -> None:
    examples = _doc_examples()
    assert {e["kind"] for e in examples} >= {"trace", "check"}
    for ex in examples:
        assert _errors(validator, ex) == [], ex["kind"]


# --- documents that must not validate ----------------------------------------


def _set(path: str, value):
    """Return a mutator that sets doc[path] (dotted; ints index lists); value=... deletes."""
    def mutate(doc: dict) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = doc
        for p in parents:
            node = node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return mutate


INVALID_TRACE = {
    "missing schema": _set("schema", ...),
    "other schema id": _set("schema", "kptrace/v2"),
    "unknown kind": _set("kind", "graph"),
    "missing kptrace_version": _set("kptrace_version", ...),
    "missing inputs": _set("inputs", ...),
    "bad sha256": _set("inputs.0.sha256", "ABC"),
    "input without kind": _set("inputs.0.kind", ...),
    "missing flow": _set("flow", ...),
    "missing branches": _set("branches", ...),
    "missing endpoints": _set("endpoints", ...),
    "unknown disposition": _set("disposition", "LOST"),
    "flow missing sport": _set("flow.sport", ...),
    "sport as string": _set("flow.sport", "53"),
    "dport out of range": _set("flow.dport", 70000),
    "in_iface as number": _set("flow.in_iface", 3),
    "branch disposition MIXED": _set("branches.0.disposition", "MIXED"),
    "probability above 1": _set("branches.0.probability", 1.5),
    "probability negative": _set("branches.0.probability", -0.1),
    "masquerade as string": _set("branches.0.masquerade", "no"),
    "branch missing snat": _set("branches.0.snat", ...),
    "branch missing unknowns": _set("branches.0.unknowns", ...),
    "egress without iface": _set("branches.0.egress", {"next_hop": None}),
    "egress without next_hop": _set("branches.0.egress", {"iface": "cni0"}),
    "step missing text": _set("branches.0.steps.0.text", ...),
    "step rule zero": _set("branches.0.steps.0.rule", 0),
    "step source without line": _set("branches.0.steps.0.source", "iptables-save.txt"),
    "step source line zero": _set("branches.0.steps.0.source", "iptables-save.txt:0"),
    "top-level assumptions not a list": _set("assumptions", "conntrack NEW"),
    "egress node as number": _set("branches.1.egress.node", 2),
}


@pytest.mark.parametrize("mutate", list(INVALID_TRACE.values()), ids=list(INVALID_TRACE))
def test_invalid_trace_documents(validator: Draft202012Validator, mutate) -> None:
    doc = copy.deepcopy(trace_doc())
    mutate(doc)
    assert _errors(validator, doc), "should not validate"


INVALID_CHECK = {
    "missing results": _set("results", ...),
    "missing summary": _set("summary", ...),
    "summary missing pass": _set("summary.pass", ...),
    "id too short": _set("results.0.id", "KPT12"),
    "id lower case": _set("results.0.id", "kpt012"),
    "unknown severity": _set("results.0.severity", "CRITICAL"),
    "unknown status": _set("results.0.status", "ERROR"),
    "location line zero": _set("results.0.locations.0.line", 0),
    "location col zero": _set("results.0.locations.1.col", 0),
    "location without file": _set("results.0.locations.0", {"line": 3}),
    "missing fingerprint": _set("results.0.fingerprint", ...),
    "missing docs_url": _set("results.0.docs_url", ...),
}


@pytest.mark.parametrize("mutate", list(INVALID_CHECK.values()), ids=list(INVALID_CHECK))
def test_invalid_check_documents(validator: Draft202012Validator, mutate) -> None:
    doc = copy.deepcopy(check_doc())
    mutate(doc)
    assert _errors(validator, doc), "should not validate"


def test_trace_findings_are_checked_too(validator: Draft202012Validator) -> None:
    doc = trace_doc()
    doc["findings"] = [_finding(severity="SEVERE")]
    assert _errors(validator, doc)
