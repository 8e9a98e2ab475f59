"""Check results for people (a rich table, worst first) and for programs (the `kind: check` document)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from kptrace import __version__
from kptrace.model.finding import Finding, Location, Severity, Status
from kptrace.model.trace import InputFile, Trace
from kptrace.render.jsonout import SCHEMA_ID, inputs_json
from kptrace.render.safe import printable

if TYPE_CHECKING:
    from rich.console import Console

ORDER = {Status.FAIL: 0, Status.WARN: 1, Status.INFO: 2, Status.CANNOT_TELL: 3, Status.PASS: 4}
STYLE = {Status.FAIL: "bold red", Status.WARN: "yellow", Status.INFO: "cyan", Status.PASS: "green",
         Status.CANNOT_TELL: "magenta"}
MAX_LOCATIONS = 4


class LocationRecord(TypedDict):
    file: str
    line: int
    col: NotRequired[int]


class FindingRecord(TypedDict):
    id: str
    name: str
    severity: str
    status: str
    message: str
    locations: list[LocationRecord]
    remediation: str
    docs_url: str
    fingerprint: str
    node: NotRequired[str]
    settle: NotRequired[list[str]]


# `pass` is a keyword, hence the functional form.
SummaryRecord = TypedDict("SummaryRecord", {"total": int, "fail": int, "warn": int, "info": int, "pass": int,
                                             "cannot_tell": int})
# One node's counts when several are checked together, and the ids of its FAILs.
NodeRecord = TypedDict("NodeRecord", {"node": str, "total": int, "fail": int, "warn": int, "info": int, "pass": int,
                                      "failing": list[str]})


def location_json(loc: Location) -> LocationRecord:
    out: LocationRecord = {"file": loc.file, "line": loc.line}
    if loc.col is not None:
        out["col"] = loc.col
    return out


def finding_json(f: Finding) -> FindingRecord:
    out: FindingRecord = {
        "id": f.id, "name": f.name, "severity": f.severity.value, "status": f.status.value, "message": f.message,
        "locations": [location_json(loc) for loc in f.locations], "remediation": f.remediation,
        "docs_url": f.docs_url, "fingerprint": f.fingerprint(),
    }
    if f.node is not None:
        out["node"] = f.node
    if f.settle:
        out["settle"] = list(f.settle)
    return out


def summary_json(findings: list[Finding]) -> SummaryRecord:
    counts = {s: sum(1 for f in findings if f.status is s) for s in Status}
    return {"total": len(findings), "fail": counts[Status.FAIL], "warn": counts[Status.WARN],
            "info": counts[Status.INFO], "pass": counts[Status.PASS], "cannot_tell": counts[Status.CANNOT_TELL]}


def node_names(findings: list[Finding]) -> list[str]:
    """The nodes findings name, in the order they were checked (empty for a single node: its findings name none)."""
    return list(dict.fromkeys(f.node for f in findings if f.node is not None))


def nodes_json(findings: list[Finding]) -> list[NodeRecord]:
    """Per node: its counts and the ids of its FAILs (each once, in id order)."""
    out: list[NodeRecord] = []
    for name in node_names(findings):
        mine = [f for f in findings if f.node == name]
        s = summary_json(mine)
        out.append({"node": name, "total": s["total"], "fail": s["fail"], "warn": s["warn"], "info": s["info"],
                    "pass": s["pass"], "failing": sorted({f.id for f in mine if f.status is Status.FAIL})})
    return out


def check_json(findings: list[Finding], inputs: list[InputFile]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "kind": "check",
        "kptrace_version": __version__,
        "inputs": inputs_json(inputs),
        "results": [finding_json(f) for f in findings],
        "summary": summary_json(findings),
    }
    if len(node_names(findings)) > 1:
        # Several nodes (a cluster's bundles): one summary per node, as the human output's per-node table.
        doc["nodes"] = nodes_json(findings)
    return doc


def sort_key(f: Finding) -> tuple[int, int, str, str]:
    return ORDER[f.status], -f.severity.rank, f.node or "", f.id


def summary_line(findings: list[Finding], verbose: bool = False) -> str:
    s = summary_json(findings)
    high = sum(1 for f in findings if f.status is Status.FAIL and f.severity is Severity.HIGH)
    passes = f"{s['pass']} PASS" + ("" if verbose or not s["pass"] else " (shown with --verbose)")
    return (f"{s['fail']} FAIL ({high} HIGH), {s['warn']} WARN, {s['info']} INFO, {s['cannot_tell']} CANNOT TELL, "
            f"{passes}")


def cannot_tell_line(findings: list[Finding]) -> str | None:
    """"12 checks cannot tell: give ip-route.txt (KPT401, KPT402), sysctl.txt (KPT101, KPT103) …"."""
    unknown = [f for f in findings if f.status is Status.CANNOT_TELL]
    if not unknown:
        return None
    by_input: dict[str, list[str]] = {}
    for f in unknown:
        for file in f.settle or ("(see -v)",):
            ids = by_input.setdefault(file.split(" (", 1)[0], [])
            if f.id not in ids:
                ids.append(f.id)
    checks = len({(f.id, f.node) for f in unknown})
    parts = [f"{file} ({', '.join(sorted(ids))})" for file, ids in sorted(by_input.items(), key=lambda kv: -len(kv[1]))]
    return f"{checks} check{'s' if checks != 1 else ''} cannot tell: give {', '.join(parts)}"


def render_findings(findings: list[Finding], console: Console, verbose: bool = False) -> None:
    # rich is imported by the two functions that draw: the JSON document never needs it.
    from rich import box
    from rich.table import Table
    from rich.text import Text

    """FAIL, WARN and INFO rows worst first (PASS too with verbose), then each failing check's fix."""
    # Without -v, the checks that cannot tell (and KPT002's list of what would settle them) are one line.
    grouped = (Status.PASS, Status.CANNOT_TELL)
    shown = sorted((f for f in findings if verbose or (f.status not in grouped and not (f.id == "KPT002" and
                                                                                        f.status is Status.INFO))),
                   key=sort_key)
    nodes = any(f.node for f in findings)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("status", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("check", no_wrap=True)
    if nodes:
        table.add_column("node", no_wrap=True)
    table.add_column("where: what", ratio=1, overflow="fold")
    for f in shown:
        where = [printable(str(loc), one_line=True) for loc in f.locations[:MAX_LOCATIONS]]
        if len(f.locations) > MAX_LOCATIONS:
            where.append(f"+{len(f.locations) - MAX_LOCATIONS} more")
        # Text, not markup: rule text is full of brackets ([0:0], [unsupported revision]).
        what = Text("\n".join(where) + "\n", style="bold") if where else Text()
        row = [Text(f.status.value, style=STYLE[f.status]), Text(f.severity.value), Text(f"{f.id} {f.name}")]
        if nodes:
            row.append(Text(printable(f.node or "")))
        table.add_row(*row, what + Text(printable(f.message)))
    if shown:
        console.print(table)
    fixes: dict[str, Finding] = {}
    for f in shown:
        if f.status is Status.FAIL:
            fixes.setdefault(f.id, f)
    if fixes:
        console.print(Text("how to fix:", style="bold"))
        for f in fixes.values():
            # One line, never wrapped: a fix command cut mid-argument cannot be pasted into a shell.
            console.print(Text(f"  {f.id} {f.name}: ", style="bold") + Text(printable(f.remediation))
                          + Text(f"  (kptrace explain {f.id})", style="dim"), soft_wrap=True)
    if len(node_names(findings)) > 1:
        render_nodes(findings, console)
    line = cannot_tell_line(findings)
    if line is not None and not verbose:
        # One line even on a narrow terminal or a pipe: it is what gets pasted into a ticket.
        console.print(Text(printable(line) + " (-v lists them)", style=STYLE[Status.CANNOT_TELL]), soft_wrap=True)
    console.print(Text(summary_line(findings, verbose)), soft_wrap=True)


def render_nodes(findings: list[Finding], console: Console) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    """One row per node: its FAIL, WARN and INFO counts and the checks that FAIL there."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title="per node", title_justify="left",
                  title_style="bold")
    table.add_column("node", no_wrap=True)
    for status in (Status.FAIL, Status.WARN, Status.INFO):
        table.add_column(status.value, justify="right", no_wrap=True)
    table.add_column("failing checks", ratio=1, overflow="fold")
    for rec in nodes_json(findings):
        counts = ((rec["fail"], Status.FAIL), (rec["warn"], Status.WARN), (rec["info"], Status.INFO))
        table.add_row(Text(printable(rec["node"])), *(Text(str(n), style=STYLE[st] if n else "") for n, st in counts),
                      Text(" ".join(rec["failing"]) or "-"))
    console.print(table)


def changes_fate(trace: Trace) -> bool:
    """Whether findings belong under this trace: its packet fails, is undetermined, or its reply fails.
    A packet that gets through is not explained by a finding at one of its steps (`kptrace check` lists them)."""
    from kptrace.model.trace import Disposition

    return (trace.disposition.failed or trace.disposition in (Disposition.UNDETERMINED, Disposition.MIXED)
            or any(b.reply_failed for b in trace.branches))


def render_trace_findings(findings: list[Finding], trace: Trace, console: Console, detail: str) -> None:
    """The findings at the steps of a trace: as a table under `--detail summary|full`, one line of IDs
    under `minimal`; under summary and minimal only when they change this packet's fate."""
    from rich.text import Text

    if not findings or (detail != "full" and not changes_fate(trace)):
        return
    if detail == "minimal":
        ids = list(dict.fromkeys(f"{f.id} {f.status.value}" for f in sorted(findings, key=sort_key)))
        console.print(Text("findings: " + ", ".join(ids) + " (kptrace explain ID)"), soft_wrap=True)
        return
    console.print("findings at the steps of this trace (kptrace explain ID for details):")
    render_findings(findings, console, verbose=False)
