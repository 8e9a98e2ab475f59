"""`kptrace dns`: the DNS path as hops, for people (plain lines) and as a `kind: "dns"` kptrace/v1 document."""

from __future__ import annotations

from typing import Any

from kptrace import __version__
from kptrace.model.node import Node
from kptrace.render.jsonout import SCHEMA_ID, inputs_json, trace_json
from kptrace.walkers.dns import FAIL, DnsTrace, Hop

_TRACE_KEYS = ("flow", "disposition", "endpoints", "assumptions", "branches", "conditional_branches")


def hop_json(h: Hop) -> dict[str, Any]:
    trace = None
    if h.trace is not None:
        doc = trace_json(h.trace)
        trace = {k: doc[k] for k in _TRACE_KEYS if k in doc}
    return {"kind": h.kind, "name": h.name, "status": h.status, "summary": h.summary, "fate": h.fate,
            "node": h.node, "cites": list(h.cites), "trace": trace}


def dns_json(d: DnsTrace, nodes: list[Node], name: str | None) -> dict[str, Any]:
    inputs = [i for n in nodes for i in n.inputs]
    svc = d.service
    kr = d.resolv
    failing = d.failing
    return {
        "schema": SCHEMA_ID,
        "kind": "dns",
        "kptrace_version": __version__,
        "inputs": inputs_json(inputs),
        "client": str(d.client),
        "node": d.node,
        "name": name,
        "status": d.status,
        "failing_hop": None if failing is None else d.hops.index(failing),
        "dns_service": None if svc is None else {"ip": str(svc.ip), "from": svc.how, "service": svc.name,
                                                 "endpoints": list(svc.endpoints)},
        "resolv_conf": None if kr is None else {
            "path": kr.path, "setting": None if kr.setting is None else f"{kr.setting.file}:{kr.setting.line}",
            "default": kr.default, "known": kr.known, "unknown": kr.unknown,
            "servers": [{"server": s, "source": None if src is None else f"{src.file}:{src.line}"}
                        for s, src in kr.servers()] if kr.known else []},
        "queries": [{"name": q, "answered_by": who} for q, who in d.queries],
        "notes": list(d.notes),
        "hops": [hop_json(h) for h in d.hops],
    }


def render_dns(d: DnsTrace, name: str | None, width: int | None = None, traces: bool = False) -> list[str]:
    """The hops as lines: number, status, hop, what decided it, the input lines cited."""
    from kptrace.render.safe import printable

    svc = d.service
    head = f"DNS path from {d.client} on {d.node}"
    if svc is not None:
        head += f": cluster DNS {svc.ip}" + (f" (Service {svc.name})" if svc.name else "")
    out = [printable(head, one_line=True)]
    wide = max((len(h.name) for h in d.hops), default=0)
    for i, h in enumerate(d.hops, start=1):
        status = h.status.upper()
        line = f"{i:>3}  {status:<7} {h.name:<{wide}}  {h.summary}"
        if h.cites:
            line += f"  [{', '.join(h.cites)}]"
        out.append(printable(line, one_line=True))
    failing = d.failing
    if failing is not None:
        out.append(printable(f"failing hop: {d.hops.index(failing) + 1} ({failing.name}): {failing.fate or FAIL}",
                             one_line=True))
    elif d.status == "unknown":
        out.append("no hop fails, but not every hop is known (see above)")
    else:
        out.append("every hop of the DNS path goes through")
    if name is not None and d.queries:
        out.append(f"names a pod tries for {name}, in order:")
        out += [printable(f"  {q}  -> {who}", one_line=True) for q, who in d.queries]
    for n in d.notes:
        out.append(printable(f"note: {n}", one_line=True))
    return out
