"""`kptrace parse FILE…`: what kptrace understood in each input, and what it could not."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import typer
from rich.console import Console
from rich.markup import escape

from kptrace.cli.why import OutputFormat
from kptrace.errors import ExitCode, KptraceError
from kptrace.model.netfilter import LazyChains, Ruleset
from kptrace.model.node import Node
from kptrace.model.trace import InputFile

MAX_SHOWN = 20  # unknown lines shown per section in the human view; JSON lists all


class UnknownRecord(TypedDict):
    file: str
    line: int
    col: int
    reason: str
    text: str


class SectionRecord(TypedDict):
    kind: str
    first_line: int
    last_line: int
    command: str | None
    table: str | None
    used: bool
    counts: dict[str, int]
    unknowns: list[UnknownRecord]
    notes: list[str]


class FileRecord(TypedDict):
    file: str
    kind: str | None
    sha256: str
    lines: int
    sections: list[SectionRecord]
    unrecognised: list[UnknownRecord]
    # What the input shows, by kind of fact: "complete" (the command's whole output) or "excerpt".
    evidence: NotRequired[dict[str, str]]


def parse(
    files: list[Path] = typer.Argument(..., help="Files, bundle directories or .tar.gz bundles to read."),
    output: OutputFormat = typer.Option(OutputFormat.human, "--output", "-o", case_sensitive=False,
                                        help="human, json or yaml."),
    width: int = typer.Option(None, "--width", min=40, help="Columns (default: COLUMNS or the terminal's; piped: "
                              "no wrapping)."),
) -> None:
    """Show what kptrace recognised in each input: sections, counts, and every line it could not read.

    A pasted file may hold several commands' output (iptables -L/-S, a grep of iptables-save,
    route -n, arp, conntrack -L, ip …), with shell prompts and `...` elisions; each part is listed
    with the parser that read it. Exit codes: 0 everything understood, 4 something was not
    understood (listed), 2 an input that cannot be read at all.

    Examples:

      kptrace parse pasted.txt

      kptrace parse node-a/ -o json
    """
    from kptrace.load import MappedFile, _load_one, _read_entries, _short, decode, sniff
    from kptrace.parsers.paste import parse_paste, paste_kind

    node = Node()
    # A cluster directory holds one bundle per node: each is read into its own Node, as the loader
    # reads them (two nodes' iptables-save are not one node's contradiction).
    per_bundle: dict[str, Node] = {}
    owner: dict[str, Node] = {}
    records: list[FileRecord] = []
    for p in files:
        entries = list(_read_entries(p))
        dirs = {_short(label, p).rsplit("/", 1)[0] for label, _ in entries if "/" in _short(label, p)}
        for label, data in entries:
            short = _short(label, p)
            in_bundle = p.is_dir() or label != str(p)
            if p.is_dir() and len(dirs) > 1 and "/" in short:
                node = per_bundle.setdefault(short.rsplit("/", 1)[0], Node())
            owner[short] = node
            if isinstance(data, KptraceError):
                records.append(FileRecord(file=short, kind=None, sha256="", lines=0, sections=[],
                                          unrecognised=[_from_error(data, short)]))
                continue
            text = decode(data, short)
            kind = sniff(short, text)
            raw = data.mm[:] if isinstance(data, MappedFile) else data
            rec = FileRecord(file=short, kind=kind, sha256=hashlib.sha256(raw).hexdigest(),
                             lines=text.count("\n") + (0 if text.endswith("\n") or not text else 1), sections=[],
                             unrecognised=[])
            if kind == "paste":
                pasted = parse_paste(text, short)
                rec["kind"] = paste_kind(pasted)
                rec["sections"] = [_section_record(s) for s in pasted.sections]
                rec["unrecognised"] = [_unknown(u.source.file, u.source.line, u.source.col, u.reason, u.source.text)
                                       for u in pasted.unrecognised]
            errors_before = len(node.errors)
            try:
                before = _snapshot(node)
                _load_one(node, short, data, in_bundle=in_bundle)
            except KptraceError as e:
                # Said as this input's note; the other inputs still load (exit 4, not 2).
                rec["unrecognised"].append(_from_error(e, short, text.split("\n", 1)[0]))
                records.append(rec)
                continue
            # A paste's unrecognised lines are also the loader's errors (KPT001 reads those): said once.
            said = {(u["file"], u["line"], u["reason"]) for u in rec["unrecognised"]}
            rec["unrecognised"] += [u for e in node.errors[errors_before:]
                                    if ((u := _from_error(e, short))["file"], u["line"], u["reason"]) not in said]
            if kind is None:
                # A bundle file the loader reads by its name alone (hostname.txt, the manifest).
                kind = next((i.kind for i in reversed(node.inputs) if i.file == short), None)
                rec["kind"] = kind
            if kind != "paste" and kind is not None:
                rec["sections"] = [_whole_file_section(node, before, kind, rec["lines"])]
            records.append(rec)
    for rec in records:
        mine = owner.get(rec["file"], node)
        rec["evidence"] = {fact: ev.level for fact, ev in sorted(mine.evidence.items()) if rec["file"] in ev.files}
    doc = parse_json(records, node)
    if output in (OutputFormat.json, OutputFormat.yaml):
        from kptrace.render.jsonout import dumps

        typer.echo(dumps(doc, output.value))
    else:
        from kptrace.render.human import make_console

        _render(records, node, make_console(width))
    raise typer.Exit(int(exit_code(records)))


def exit_code(records: list[FileRecord]) -> ExitCode:
    for r in records:
        if r["unrecognised"] or any(s["unknowns"] or not s["used"] for s in r["sections"]):
            return ExitCode.INCONCLUSIVE
    return ExitCode.OK


def _from_error(e: KptraceError, file: str, text: str = "") -> UnknownRecord:
    from kptrace.load import _as_parse_error

    pe = _as_parse_error(e, file)
    return _unknown(pe.file, pe.line, pe.col, pe.message, pe.text or text)


def _unknown(file: str, line: int, col: int, reason: str, text: str) -> UnknownRecord:
    return UnknownRecord(file=file, line=max(line, 1), col=max(col, 1), reason=reason, text=text[:240])


def _section_record(s: Any) -> SectionRecord:
    unknowns = [_unknown(u.source.file, u.source.line, u.source.col, u.reason, u.source.text) for u in s.unparsed]
    model = s.model
    rs = getattr(model, "ruleset", None)
    if isinstance(rs, Ruleset):
        unknowns += _rule_unknowns(rs, {u["line"] for u in unknowns})
    cmd = s.command
    return SectionRecord(kind=s.kind, first_line=s.first, last_line=max(s.last, s.first),
                         command=cmd.text if cmd else None, table=cmd.table if cmd else None, used=s.used,
                         counts=dict(s.counts), unknowns=sorted(unknowns, key=lambda u: (u["line"], u["col"])),
                         notes=list(dict.fromkeys([*s.notes, *(rs.assumptions if isinstance(rs, Ruleset) else [])])))


def _rule_unknowns(rs: Ruleset, skip: set[int]) -> list[UnknownRecord]:
    """One record per rule that is read but not completely: what exactly is unknown about it."""
    from kptrace.parsers.placeholders import NOT_SHOWN

    from kptrace.parsers.iptables_list import NO_IFACE

    out: list[UnknownRecord] = []
    no_iface: list[tuple[str, int, str]] = []
    for t in rs.tables.values():
        if isinstance(t.chains, LazyChains):
            continue  # a large dump's rules are read when a trace needs them (kptrace why --strict reads all)
        for c in t.chains.values():
            for r in c.rules:
                if r.source.line in skip:
                    continue
                why = [m.why_unknown or f"match module '{m.module}' is not modelled" for m in r.matches
                       if not m.known and m.module != NOT_SHOWN and m.why_unknown != NO_IFACE]
                if any(m.why_unknown == NO_IFACE for m in r.matches):
                    no_iface.append((r.source.file, r.source.line, r.source.text))
                if r.target is not None and not r.target.known:
                    why.append(f"target '{r.target.name}' with these options is not modelled")
                if why:
                    out.append(_unknown(r.source.file, r.source.line, 1, "; ".join(dict.fromkeys(why)), r.source.text))
    if no_iface:
        # Said once for the listing, not once per rule: every rule of it has the same gap.
        f, line, text = min(no_iface, key=lambda x: x[1])
        out.append(_unknown(f, line, 1, f"all {len(no_iface)} rules: {NO_IFACE}", text))
    return out


def _snapshot(node: Node) -> dict[str, int]:
    return {"routes": len(node.routes), "neighbors": len(node.neighbors), "addresses": len(node.addresses),
            "links": len(node.links), "policy_rules": len(node.policy_rules), "sysctls": len(node.sysctls),
            "rulesets": sum(1 for _ in node.rulesets), "fdb": len(node.fdb), "bridge_ports": len(node.bridge_ports),
            "nameservers": sum(len(rc.nameservers) for rc in node.resolv_conf),
            "kubelet_dns_settings": sum(bool(k.resolv_conf) + len(k.cluster_dns) + bool(k.cluster_domain)
                                        + bool(k.config_path) for k in node.kubelet_dns or [])}


def _whole_file_section(node: Node, before: dict[str, int], kind: str, lines: int) -> SectionRecord:
    after = _snapshot(node)
    counts = {k: after[k] - before[k] for k in after if after[k] != before[k] and k != "rulesets"}
    unknowns: list[UnknownRecord] = []
    notes: list[str] = []
    if "tables-save" in kind or "tables-legacy-save" in kind:
        from kptrace.parsers.paste import _ruleset_counts

        slot = node.legacy_rulesets if "legacy" in kind else node.rulesets
        rs = next((r for r in reversed(list(slot.values()))), None)
        if rs is not None:
            lazy = any(isinstance(t.chains, LazyChains) for t in rs.tables.values())
            if lazy:
                counts = {"tables": len(rs.tables), "chains": sum(len(t.chains) for t in rs.tables.values())}
                notes.append("a large dump: rules are read when a trace needs them; run kptrace why --strict to check "
                             "every rule")
            else:
                counts = _ruleset_counts(rs)
                unknowns = _rule_unknowns(rs, set())
            notes += rs.assumptions
    return SectionRecord(kind=kind, first_line=1, last_line=max(lines, 1), command=None, table=None, used=True,
                         counts=counts, unknowns=unknowns, notes=notes)


# --- JSON ------------------------------------------------------------------------------------------------


def parse_json(records: list[FileRecord], node: Node) -> dict[str, Any]:
    from kptrace import __version__
    from kptrace.render.jsonout import SCHEMA_ID, inputs_json

    inputs = [InputFile(r["file"], r["kind"] or "unrecognised", r["sha256"]) for r in records]
    return {
        "schema": SCHEMA_ID,
        "kind": "parse",
        "kptrace_version": __version__,
        "inputs": inputs_json(inputs),
        "files": [dict(r) for r in records],
        "model": model_json(node),
        "summary": {
            "files": len(records),
            "sections": sum(len(r["sections"]) for r in records),
            "unknowns": sum(len(s["unknowns"]) for r in records for s in r["sections"]) +
            sum(len(r["unrecognised"]) for r in records),
        },
    }


def model_json(node: Node) -> dict[str, Any]:
    from kptrace.parsers.iptables_s import rendered
    from kptrace.parsers.placeholders import NOT_SHOWN

    rulesets = []
    for fam, rs in sorted(node.rulesets.items()):
        cov = node.coverage.get(fam)
        tables = []
        for t in rs.tables.values():
            chains = []
            lazy = isinstance(t.chains, LazyChains)
            for c in t.chains.values():
                rules = [] if lazy else [{
                    "index": r.index, "source": str(r.source), "text": r.text,
                    "iptables_save": rendered(r),
                    "not_shown": any(m.module == NOT_SHOWN for m in r.matches),
                    "unknown": [m.why_unknown or m.module for m in r.matches if not m.known]
                    + ([f"target {r.target.name}"] if r.target is not None and not r.target.known else []),
                } for r in c.rules]
                chains.append({
                    "name": c.name, "policy": c.policy, "source": str(c.source), "rules": rules,
                    "complete": None if cov is None else (t.name, c.name) in cov.complete,
                })
            tables.append({"name": t.name, "chains": chains})
        rulesets.append({"family": fam, "file": rs.file, "partial": cov is not None, "tables": tables,
                         "assumptions": list(rs.assumptions)})
    return {
        "rulesets": rulesets,
        "routes": [{"dst": str(r.dst), "table": r.table, "type": r.type, "metric": r.metric,
                    "nexthops": [{"gateway": str(h.gateway) if h.gateway else None, "dev": h.dev} for h in r.nexthops],
                    "source": str(r.source) if r.source else None, "unknown": list(r.unknown)} for r in node.routes],
        "neighbors": [{"dst": str(n.dst), "dev": n.dev, "lladdr": n.lladdr, "state": n.state,
                       "source": str(n.source) if n.source else None} for n in node.neighbors],
        "conntrack": [{"proto": e.proto, "state": e.state, "flags": list(e.flags),
                       "original": _ct_tuple(e.original), "reply": _ct_tuple(e.reply) if e.reply else None,
                       "mark": e.mark, "source": str(e.source) if e.source else None} for e in node.conntrack or []],
        "addresses": [{"iface": a.iface, "address": str(a.address), "source": str(a.source)} for a in node.addresses],
        "assumptions": list(node.assumptions),
    }


def _ct_tuple(t: Any) -> dict[str, Any]:
    return {"src": str(t.src), "dst": str(t.dst), "sport": t.sport, "dport": t.dport}


# --- human -------------------------------------------------------------------------------------------


def _render(records: list[FileRecord], node: Node, console: Console) -> None:
    for r in records:
        console.print(f"[bold]{escape(r['file'])}[/bold]: {escape(r['kind'] or 'not recognised')}, {r['lines']} lines")
        for s in r["sections"]:
            counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in s["counts"].items())
            cmd = f"  `{escape(s['command'])}`" if s["command"] else ""
            used = "" if s["used"] else "  [yellow](recognised, not used)[/yellow]"
            console.print(f"  lines {s['first_line']}-{s['last_line']}  [cyan]{escape(s['kind'])}[/cyan]{cmd}: "
                          f"{escape(counts) or 'nothing'}{used}")
            for note in s["notes"]:
                console.print(f"    [dim]note: {escape(note)}[/dim]", soft_wrap=True)
            for u in s["unknowns"][:MAX_SHOWN]:
                console.print(f"    [yellow]? {escape(u['file'])}:{u['line']}:{u['col']}[/yellow]: {escape(u['reason'])}",
                              soft_wrap=True)
            if len(s["unknowns"]) > MAX_SHOWN:
                console.print(f"    … {len(s['unknowns']) - MAX_SHOWN} more (-o json lists them all)")
        for u in r["unrecognised"][:MAX_SHOWN]:
            console.print(f"  [yellow]? {escape(u['file'])}:{u['line']}[/yellow]: {escape(u['reason'])}: "
                          f"{escape(u['text'][:80])}", soft_wrap=True)
        if len(r["unrecognised"]) > MAX_SHOWN:
            console.print(f"  … {len(r['unrecognised']) - MAX_SHOWN} more lines not recognised")
    n_unknown = sum(len(s["unknowns"]) for r in records for s in r["sections"]) + sum(len(r["unrecognised"]) for r in records)
    partial = [f"IPv{f}" for f in sorted(node.coverage)]
    tail = f"; iptables rules from listings or excerpts ({', '.join(partial)}): a trace says what they leave out" if partial else ""
    console.print(f"{len(records)} file(s), {n_unknown} thing(s) not understood{tail}")


def register(app: typer.Typer) -> None:
    app.command(name="parse")(parse)


__all__ = ["parse", "register", "parse_json", "exit_code", "KptraceError"]
