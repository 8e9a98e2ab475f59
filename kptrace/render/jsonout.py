"""The `kptrace/v1` JSON documents, built field by field (never dumped from dataclasses)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, TypedDict

from kptrace import __version__
from kptrace.model.trace import Branch, InputFile, Step, Trace

SCHEMA_ID = "kptrace/v1"


class StepRecord(TypedDict):
    hook: str
    table: str | None
    chain: str | None
    rule: int | None
    source: str | None
    action: str
    text: str


def inputs_json(inputs: tuple[InputFile, ...] | list[InputFile]) -> list[dict[str, str]]:
    return [{"file": i.file, "kind": i.kind, "sha256": i.sha256} for i in inputs]


def step_json(s: Step) -> StepRecord:
    rec: StepRecord = {"hook": s.hook, "table": s.table, "chain": s.chain, "rule": s.rule, "source": s.source,
                       "action": s.action, "text": s.text}
    if s.node is not None:
        rec["node"] = s.node  # type: ignore[typeddict-unknown-key]
    if s.encapsulated:
        rec["encapsulated"] = True  # type: ignore[typeddict-unknown-key]
    return rec


def branch_json(b: Branch) -> dict[str, Any]:
    return {
        "probability": round(b.probability, 12),
        "disposition": b.disposition.value,
        "dnat": b.dnat,
        "masquerade": b.masquerade,
        "snat": b.snat,
        "egress": None if b.egress is None else _egress(b),
        "steps": [step_json(s) for s in b.steps],
        "assumptions": list(b.assumptions),
        "unknowns": list(b.unknowns),
        "reply": None if b.reply is None else {
            "disposition": b.reply.disposition.value,
            "problem": b.reply.problem,
            "steps": [step_json(s) for s in b.reply.steps],
        },
    }


def _egress(b: Branch) -> dict[str, Any]:
    assert b.egress is not None
    out: dict[str, Any] = {"iface": b.egress.iface, "next_hop": b.egress.next_hop}
    if b.egress.node is not None:
        out["node"] = b.egress.node
    return out


def trace_json(t: Trace) -> dict[str, Any]:
    f = t.flow
    doc: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "kind": "trace",
        "kptrace_version": __version__,
        "inputs": inputs_json(t.inputs),
        "flow": {"src": str(f.src), "sport": f.sport, "dst": str(f.dst), "dport": f.dport, "proto": f.proto,
                 "origin": t.origin, "in_iface": t.in_iface, "state": f.state, "mark": f.mark},
        "disposition": t.disposition.value,
        "endpoints": t.endpoints,
        "assumptions": list(t.assumptions),
        "branches": [branch_json(b) for b in t.branches],
    }
    if t.conditional:
        # Past each unknown: what decides the packet if the unknown does not (conditions, not shares).
        doc["conditional_branches"] = [{"conditions": list(b.conditions), **branch_json(b)} for b in t.conditional]
    return doc


def dumps(doc: dict[str, Any], fmt: str = "json") -> str:
    """The document as `-o json` (indented) or `-o yaml` (the same document, block style, keys in order)."""
    if fmt == "yaml":
        import yaml

        # Through JSON: the document's strings and numbers as plain YAML scalars (str subclasses included).
        return yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False, allow_unicode=True, default_flow_style=False,
                              width=10_000).rstrip("\n")
    return json.dumps(doc, indent=2, sort_keys=False)


def schema() -> dict[str, Any]:
    text = (resources.files("kptrace") / "render" / "schema" / "kptrace-output.v1.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]
