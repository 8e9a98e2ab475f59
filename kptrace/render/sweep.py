"""`kptrace sweep` and `kptrace diff` output: columns for people (broken first), CSV, and `kptrace/v1`
documents of kind sweep and diff."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.text import Text

from kptrace import __version__
from kptrace.model.trace import InputFile, Trace
from kptrace.render.jsonout import SCHEMA_ID, inputs_json
from kptrace.render.safe import printable
from kptrace.walkers.sweep import BROKEN, OK, UNDETERMINED, Change, EndpointShare, Row, SweepResult

NONE = "<none>"
_ORDER = {BROKEN: 0, UNDETERMINED: 1, OK: 2}
_STYLE = {BROKEN: "bold red", UNDETERMINED: "yellow", OK: "green"}


# --- summaries ---------------------------------------------------------------------------------------


def summary(rows: Sequence[Row], service_ports: int) -> dict[str, int]:
    broken = [r for r in rows if r.status == BROKEN]
    return {
        "service_ports": service_ports,
        "flows": len(rows),
        "delivered": sum(r.status == OK for r in rows),
        "broken": len(broken),
        "undetermined": sum(r.status == UNDETERMINED for r in rows),
        "broken_services": len({r.service for r in broken}),
    }


def summary_line(s: dict[str, int]) -> str:
    """`412 Service ports, 1,648 flows: 1,640 delivered, 8 broken (3 Services)`."""
    services = "Service" if s["broken_services"] == 1 else "Services"
    line = (f"{s['service_ports']:,} Service ports, {s['flows']:,} flows: {s['delivered']:,} delivered, "
            f"{s['broken']:,} broken ({s['broken_services']:,} {services})")
    if s["undetermined"]:
        line += f", {s['undetermined']:,} undetermined"
    return line


def sorted_rows(rows: Sequence[Row]) -> list[Row]:
    """Broken first, then undetermined, then the rest; in each, by Service, port, source kind."""
    kinds = ("pod", "remote", "node", "external")
    return sorted(rows, key=lambda r: (_ORDER.get(r.status, 3), r.namespace, r.name, r.port_name, r.protocol,
                                       kinds.index(r.source_kind) if r.source_kind in kinds else 9, r.entry, r.dst))


# --- cells -------------------------------------------------------------------------------------------


def _pct(share: float) -> str:
    return f"{share * 100:.4g}%"


def endpoints_text(eps: Sequence[EndpointShare]) -> str:
    if not eps or all(e.address is None for e in eps):
        return NONE
    parts = []
    for e in eps:
        addr = e.address or "untranslated"
        parts.append(f"{addr}({_pct(e.share)})" if len(eps) > 1 or e.share < 1 else addr)
    return ",".join(parts)


def decided_text(r: Row) -> str:
    if r.status == OK:
        return ""
    return ",".join(dict.fromkeys(d.source or d.action for d in r.deciding)) or "?"


def port_text(r: Row) -> str:
    name = r.port_name or ""
    return f"{name + ' ' if name else ''}{r.dport}/{r.protocol.upper()}"


def _columns(console: Console, rows: list[list[Text]]) -> None:
    """Left-aligned columns three spaces apart, never wrapped (as `kptrace services`)."""
    widths = [max(r[i].cell_len for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        line = Text()
        for i, cell in enumerate(r):
            line.append_text(cell)
            if i < len(r) - 1:
                line.append(" " * (widths[i] - cell.cell_len + 3))
        console.print(line, soft_wrap=True)


def _cell(text: str, style: str = "") -> Text:
    return Text(printable(text, one_line=True), style=style)


# --- sweep: human ------------------------------------------------------------------------------------


def render_sweep(result: SweepResult, console: Console) -> None:
    several = len(result.nodes) > 1
    for ns in result.nodes:
        head = summary_line(summary(ns.rows, ns.service_ports))
        console.print(Text(f"{ns.node}: " + head, style="bold"), soft_wrap=True)
        for note in ns.notes:
            console.print(Text(printable(f"  note: {note}"), style="yellow"), soft_wrap=True)
        if not ns.rows:
            why = "the notes above say why" if ns.service_ports else "no Service ports in the input"
            console.print(Text(f"  no flows to sweep ({why})", style="yellow"))
            continue
        cols = ["STATUS", "SERVICE", "PORT", "SOURCE", "ENTRY", "FROM", "TO", "FATE", "ENDPOINTS", "DECIDED-BY",
                "FINDINGS"]
        table: list[list[Text]] = [[Text(c, style="bold") for c in cols]]
        for r in sorted_rows(ns.rows):
            table.append([
                _cell(r.status, _STYLE.get(r.status, "")), _cell(r.service), _cell(port_text(r)), _cell(r.source_kind),
                _cell(r.entry), _cell(r.src + (f" ({r.start})" if r.start != r.node else "")), _cell(r.dst),
                _cell(r.fate.value, _STYLE.get(r.status, "")), _cell(endpoints_text(r.endpoints)),
                _cell(decided_text(r) or "-"), _cell(",".join(r.findings) or "-"),
            ])
        _columns(console, table)
        if several:
            console.print()
    if several:
        total = summary(result.rows, sum(n.service_ports for n in result.nodes))
        console.print(Text(f"cluster ({len(result.nodes)} nodes): " + summary_line(total), style="bold"),
                      soft_wrap=True)
        partly = result.partly_broken()
        if partly:
            console.print(Text("broken on some nodes only (a stale or differently configured node?):", style="bold"))
            for port, bad, good in partly:
                console.print(Text(printable(f"  {port}: broken on {', '.join(bad)}; fine on {', '.join(good)}"),
                                   style="red"), soft_wrap=True)
    details = [r for ns in result.nodes for r in sorted_rows(ns.rows) if r.status != OK]
    if details:
        console.print(Text("what decides each flow that does not arrive (kptrace why … for the whole trace):",
                           style="bold"))
        for r in details:
            console.print(Text(printable(f"  {r.node}: {r.display_name} {r.source_kind} {r.entry} "
                                         f"{r.src} → {r.dst}:{r.dport}/{r.protocol}: {r.fate.value}")),
                          soft_wrap=True)
            for d in r.deciding:
                where = f" ({d.source})" if d.source else ""
                console.print(Text(printable(f"      {d.action}  {d.text}{where}", one_line=True), style="red"),
                              soft_wrap=True)


# --- sweep: machine formats --------------------------------------------------------------------------


def endpoint_json(e: EndpointShare) -> dict[str, Any]:
    return {"address": e.address, "share": e.share, "dispositions": list(e.dispositions),
            "masquerade": e.masquerade, "egress": list(e.egress)}


def row_json(r: Row) -> dict[str, Any]:
    return {
        "node": r.node,
        "namespace": r.namespace,
        "name": r.name,
        "port_name": r.port_name,
        "protocol": r.protocol,
        "source_kind": r.source_kind,
        "entry": r.entry,
        "src": r.src,
        "dst": r.dst,
        "dport": r.dport,
        "start_node": r.start,
        "fate": r.fate.value,
        "status": r.status,
        "endpoints": [endpoint_json(e) for e in r.endpoints],
        "deciding": [{"source": d.source, "action": d.action, "text": d.text, "node": d.node} for d in r.deciding],
        "findings": list(r.findings),
    }


def _inputs(traces: list[Trace], extra: Sequence[InputFile] = ()) -> list[dict[str, str]]:
    seen: dict[tuple[str, str], InputFile] = {}
    for i in list(extra) + [i for t in traces for i in t.inputs]:
        seen.setdefault((i.file, i.sha256), i)
    return inputs_json(list(seen.values()))


def sweep_json(result: SweepResult, inputs: Sequence[InputFile]) -> dict[str, Any]:
    rows = sorted_rows(result.rows)
    return {
        "schema": SCHEMA_ID,
        "kind": "sweep",
        "kptrace_version": __version__,
        "inputs": _inputs([], inputs),
        "summary": summary(rows, sum(n.service_ports for n in result.nodes)),
        "nodes": [{"node": n.node, "summary": summary(n.rows, n.service_ports), "notes": list(n.notes)}
                  for n in result.nodes],
        "partly_broken": [{"service_port": p, "broken_on": bad, "fine_on": good}
                          for p, bad, good in result.partly_broken()],
        "rows": [row_json(r) for r in rows],
    }


CSV_COLUMNS = ("node", "namespace", "name", "port_name", "protocol", "source_kind", "entry", "src", "dst", "dport",
               "start_node", "fate", "status", "endpoints", "masquerade", "egress", "deciding", "findings")


def sweep_csv(result: SweepResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in sorted_rows(result.rows):
        w.writerow([r.node, r.namespace, r.name, r.port_name, r.protocol, r.source_kind, r.entry, r.src, r.dst,
                    r.dport, r.start, r.fate.value, r.status,
                    " ".join(f"{e.address or 'untranslated'}={e.share:g}" for e in r.endpoints),
                    " ".join(f"{e.address or 'untranslated'}={'yes' if e.masquerade else 'no'}" for e in r.endpoints),
                    " ".join(f"{e.address or 'untranslated'}={'|'.join(e.egress) or '-'}" for e in r.endpoints),
                    " ".join(d.source or d.action for d in r.deciding), " ".join(r.findings)])
    return buf.getvalue()


# --- diff --------------------------------------------------------------------------------------------


def path_only(a: Trace | None, b: Trace | None, limit: int = 6) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The steps one side's path takes and the other's does not (compared by rule text, not by line), each
    side's first few: the rules, routes and settings that differ on the flow's path."""

    def steps(t: Trace | None) -> list[tuple[str, str | None, str]]:
        if t is None:
            return []
        out: dict[str, tuple[str, str | None, str]] = {}
        for br in t.branches:
            for s in br.steps:
                out.setdefault(s.text, (s.text, s.source, s.action))
        return list(out.values())

    sa, sb = steps(a), steps(b)
    ta, tb = {s[0] for s in sa}, {s[0] for s in sb}

    def rec(s: tuple[str, str | None, str]) -> dict[str, Any]:
        return {"source": s[1], "action": s[2], "text": s[0]}

    return [rec(s) for s in sa if s[0] not in tb][:limit], [rec(s) for s in sb if s[0] not in ta][:limit]


def change_json(c: Change) -> dict[str, Any]:
    only_a, only_b = path_only(c.a.trace if c.a else None, c.b.trace if c.b else None)
    return {
        "namespace": c.key[0], "name": c.key[1], "port_name": c.key[2], "protocol": c.key[3],
        "source_kind": c.key[4], "entry": c.key[5],
        "changed": list(c.what),
        "a": row_json(c.a) if c.a else None,
        "b": row_json(c.b) if c.b else None,
        "path_only_in_a": only_a,
        "path_only_in_b": only_b,
    }


def diff_json(changes: list[Change], a: tuple[str, str, Sequence[Row], int], b: tuple[str, str, Sequence[Row], int],
              inputs: Sequence[InputFile]) -> dict[str, Any]:
    def side(label: str, node: str, rows: Sequence[Row], ports: int) -> dict[str, Any]:
        return {"label": label, "node": node, "summary": summary(rows, ports)}

    return {
        "schema": SCHEMA_ID,
        "kind": "diff",
        "kptrace_version": __version__,
        "inputs": _inputs([], inputs),
        "a": side(*a),
        "b": side(*b),
        "summary": {"changed": len(changes), "flows_a": len(a[2]), "flows_b": len(b[2])},
        "changes": [change_json(c) for c in changes],
    }


def _side_text(r: Row | None) -> str:
    if r is None:
        return "(no such flow)"
    text = f"{r.fate.value} {endpoints_text(r.endpoints)}"
    masq = [e.address or "untranslated" for e in r.endpoints if e.masquerade]
    if masq:
        text += " masq " + ",".join(masq)
    egress = sorted({x for e in r.endpoints for x in e.egress})
    if egress:
        text += " out " + ",".join(egress)
    return text


def render_diff(changes: list[Change], a: tuple[str, str, Sequence[Row], int], b: tuple[str, str, Sequence[Row], int],
                console: Console) -> None:
    console.print(Text(printable(f"A: {a[0]} ({a[1]}): " + summary_line(summary(a[2], a[3]))), style="bold"),
                  soft_wrap=True)
    console.print(Text(printable(f"B: {b[0]} ({b[1]}): " + summary_line(summary(b[2], b[3]))), style="bold"),
                  soft_wrap=True)
    if not changes:
        console.print(Text("no flow differs: same fates, endpoints, shares, masquerade and egress", style="green"))
        return
    n = len(changes)
    verb = "flows differ" if n != 1 else "flow differs"
    console.print(Text(f"{n} {verb}:", style="bold red"))
    for c in changes:
        r = c.a or c.b
        assert r is not None
        console.print(Text(printable(f"{r.display_name} {r.protocol} from {r.source_kind} via {r.entry}: "
                                     f"{', '.join(c.what)}"), style="bold"), soft_wrap=True)
        console.print(Text(printable(f"  A: {_side_text(c.a)}")), soft_wrap=True)
        console.print(Text(printable(f"  B: {_side_text(c.b)}")), soft_wrap=True)
        only_a, only_b = path_only(c.a.trace if c.a else None, c.b.trace if c.b else None, limit=4)
        for label, steps in (("A", only_a), ("B", only_b)):
            for s in steps:
                where = f" ({s['source']})" if s["source"] else ""
                console.print(Text(printable(f"    only in {label}: {s['action']}  {s['text']}{where}", one_line=True),
                                   style="red" if label == "B" else "cyan"), soft_wrap=True)
