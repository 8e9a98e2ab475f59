"""`kptrace services` output: kubectl-style columns for people, a `kptrace/v1` document of kind services."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from kptrace import __version__
from kptrace.model.trace import InputFile
from kptrace.render.jsonout import SCHEMA_ID, inputs_json
from kptrace.render.safe import printable
from kptrace.services.model import Endpoint, Service

NONE = "<none>"


def _share(p: float | None) -> str:
    return "" if p is None else f"({p * 100:.4g}%)"


def ports_text(s: Service) -> str:
    """As kubectl shows it: `53/UDP`, `80:30080/TCP`."""
    port = str(s.port) if s.port is not None else "?"
    if s.node_port is not None:
        port += f":{s.node_port}"
    return f"{port}/{s.protocol.upper()}"


def external_text(s: Service) -> str:
    ips = list(s.load_balancer_ips) + [ip for ip in s.external_ips if ip not in s.load_balancer_ips]
    return ",".join(ips) if ips else NONE


def endpoints_text(s: Service, wide: bool = False) -> str:
    eps = list(s.endpoints)
    if not eps:
        for _, local in s.local_endpoints:
            eps.extend(e for e in local if e not in eps)
    if not eps:
        return NONE
    return ",".join(e.address + (_share(e.probability) if wide else "") for e in eps)


def policy_text(s: Service) -> str:
    parts = []
    if s.external_policy == "Local":
        parts.append("external=Local")
    if s.internal_policy == "Local":
        parts.append("internal=Local")
    if s.session_affinity:
        parts.append("affinity=ClientIP")
    if s.load_balancer_source_ranges:
        parts.append("sourceRanges=" + ",".join(s.load_balancer_source_ranges))
    if s.health_check_node_port is not None:
        parts.append(f"healthCheckNodePort={s.health_check_node_port}")
    return ",".join(parts) if parts else NONE


def _status_style(status: str) -> str:
    return "green" if status == "ok" else "bold red"


_FOLDS = ("EXTERNAL-IP", "ENDPOINTS", "CHAINS", "NODES")
_MIN_FOLD = 21  # an IPv4 endpoint with its port and a comma


def _fold(cell: Text, width: int) -> list[Text]:
    """A comma-separated list cut into lines of at most `width` cells, at commas (a longer item on its own)."""
    if cell.cell_len <= width:
        return [cell]
    out: list[Text] = []
    line = Text(style=cell.style)
    start = 0
    plain = cell.plain
    for end in [i + 1 for i, ch in enumerate(plain) if ch == ","] + [len(plain)]:
        item = cell[start:end]
        start = end
        if line.cell_len and line.cell_len + item.cell_len > width:
            out.append(line)
            line = Text(style=cell.style)
        line.append_text(item)
    out.append(line)
    return out


def render_services(services: list[Service], console: Console, wide: bool = False) -> None:
    """Columns as kubectl prints them: left-aligned, three spaces apart, never wrapped."""
    if not services:
        console.print(Text("no Service ports found in the input (no kube-proxy rules, nftables table or IPVS services)", style="yellow"))
        return
    cols = ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS", "STATUS"]
    if wide:
        cols[2:2] = ["PORT-NAME"]
        cols += ["POLICY", "CHAINS", "NODES"]
    rows: list[list[Text]] = [[Text(c, style="bold") for c in cols]]
    for s in services:
        cells = [s.namespace, s.name, *([s.port_name or NONE] if wide else []), s.type, ",".join(s.cluster_ips) or NONE,
                 external_text(s), ports_text(s), endpoints_text(s, wide), s.status]
        if wide:
            cells += [policy_text(s), ",".join(s.chains) or NONE, ",".join(s.nodes)]
        # Names come from rule comments: control characters escaped, before the columns are measured.
        row = [Text(printable(c, one_line=True)) for c in cells]
        row[len(cells) - (4 if wide else 1)].stylize(_status_style(s.status))
        rows.append(row)
    # The width rule of every command (render.human.output_width): without a terminal, COLUMNS or --width
    # nothing wraps; past the width, the lists (endpoints, external addresses, chains, nodes) wrap in
    # their column at a comma, as few as needed, the other columns stay whole (kubectl's never wrap).
    widths = [max(r[i].cell_len for r in rows) for i in range(len(cols))]
    gap = 3
    excess = sum(widths) + gap * (len(cols) - 1) - console.width
    for i in sorted((i for i, c in enumerate(cols) if c in _FOLDS), key=lambda i: -widths[i]):
        if excess <= 0:
            break
        cut = min(excess, widths[i] - _MIN_FOLD)
        if cut > 0:
            widths[i] -= cut
            excess -= cut
    folded = [[_fold(cell, widths[i]) if cols[i] in _FOLDS else [cell] for i, cell in enumerate(r)] for r in rows]
    widths = [max(p.cell_len for r in folded for p in r[i]) for i in range(len(cols))]
    for row_parts in folded:
        for k in range(max(len(c) for c in row_parts)):
            line = Text()
            for i, parts in enumerate(row_parts):
                piece = parts[k] if k < len(parts) else Text()
                line.append_text(piece)
                if i < len(row_parts) - 1:
                    line.append(" " * (widths[i] - piece.cell_len + gap))
            line.rstrip()
            console.print(line, soft_wrap=True)
    problems = [h for s in services for h in s.health]
    if problems and wide:
        console.print(Text("health:", style="bold"))
        for h in problems:
            where = f" ({h.source})" if h.source else ""
            node = f"{h.node}: " if h.node else ""
            console.print(Text(printable(f"  - {node}{h.message}{where}"), style="red"), soft_wrap=True)


def _endpoint_json(e: Endpoint) -> dict[str, Any]:
    return {"address": e.address, "probability": e.probability, "source": e.source}


def service_json(s: Service) -> dict[str, Any]:
    return {
        "namespace": s.namespace,
        "name": s.name,
        "port_name": s.port_name,
        "protocol": s.protocol,
        "port": s.port,
        "type": s.type,
        "cluster_ips": list(s.cluster_ips),
        "node_port": s.node_port,
        "external_ips": list(s.external_ips),
        "load_balancer_ips": list(s.load_balancer_ips),
        "load_balancer_source_ranges": list(s.load_balancer_source_ranges),
        "health_check_node_port": s.health_check_node_port,
        "endpoints": [_endpoint_json(e) for e in s.endpoints],
        "local_endpoints": {node: [_endpoint_json(e) for e in eps] for node, eps in s.local_endpoints},
        "external_traffic_policy": s.external_policy,
        "internal_traffic_policy": s.internal_policy,
        "session_affinity": "ClientIP" if s.session_affinity else None,
        "status": s.status,
        "health": [{"kind": h.kind, "message": h.message, "source": h.source, "node": h.node} for h in s.health],
        "chains": list(s.chains),
        "nodes": list(s.nodes),
        "source_kinds": list(s.source_kinds),
        "sources": list(s.sources),
    }


def services_json(services: list[Service], inputs: list[InputFile]) -> dict[str, Any]:
    return {
        "schema": SCHEMA_ID,
        "kind": "services",
        "kptrace_version": __version__,
        "inputs": inputs_json(inputs),
        "services": [service_json(s) for s in services],
    }
