"""`kptrace check`: run every check on a node bundle and report FAIL, WARN, INFO (and PASS with --verbose).

Several node bundles (a directory of them, as the DaemonSet writes, or several --dump) are loaded in
parallel, one process per core, with a progress bar on stderr; the human output then ends with one
row per node. Each worker runs the checks' own loader (`load_for_checks`) on one bundle, so a bundle
reads exactly as it does alone; `kptrace.collect.cluster.load_bundles_parallel` is not used because
it returns bare Nodes: it would skip the files only the checks read (services.txt, conntrack.txt,
a second IPv4 dump), refuse a bundle holding both iptables backends, and turn an unparsable file
into an error instead of KPT001.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from kptrace.cli.why import OutputFormat
from kptrace.errors import KptraceError, ParseError
from kptrace.model.finding import Severity

if TYPE_CHECKING:
    from kptrace.checks.inputs import CheckContext


class FailOn(str, Enum):
    high = "high"
    medium = "medium"
    low = "low"


def check(
    dump: list[Path] = typer.Option(None, "--dump", "-d", help="A dump file, bundle directory (or a directory of node "
                                    "bundles) or bundle .tar.gz; repeatable."),
    node_ip: list[str] = typer.Option(None, "--node-ip", help="An address of this node; repeatable."),
    pod_cidr: list[str] = typer.Option(None, "--pod-cidr", help="The cluster's pod CIDR (default: node.yaml, or "
                                       "kube-proxy's rules)."),
    demo: bool = typer.Option(False, "--demo", help="Check the demo cluster shipped with kptrace."),
    fail_on: FailOn = typer.Option(FailOn.high, "--fail-on", help="Exit 1 on a FAIL of this severity or higher."),
    output: OutputFormat = typer.Option(OutputFormat.human, "--output", "-o", help="human or json."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show PASS results too."),
) -> None:
    """Run every check on a node's bundle: the runbook step before tracing single packets.

    FAIL: the problem is there. WARN: the check could not run (the message names the missing input).
    INFO: worth knowing, not a fault. PASS: shown with --verbose.

    Exit codes: 0 no FAIL at or above --fail-on and no WARN, 1 a FAIL at or above --fail-on,
    2 usage error or an input that does not parse (KPT001), 3 a check crashed (KPT003), 4 only WARN.

    Examples:

      kptrace check --demo

      kptrace check --dump node-a/ --fail-on medium -o json

      kptrace check --dump bundles/        (a directory of node bundles: a row per node at the end)

      kptrace explain KPT101
    """
    from kptrace.checks.inputs import inputs_of
    from kptrace.checks.run import exit_code, run_checks
    from kptrace.cli.app import state
    from kptrace.load import demo_path
    from kptrace.render.findings import check_json, render_findings
    from kptrace.render.jsonout import dumps

    paths = list(dump or [])
    if demo:
        paths.insert(0, demo_path())
    if not paths:
        raise KptraceError("no input: give --dump PATH (a file, a bundle directory or .tar.gz) or --demo")
    named = load_contexts(paths, list(node_ip or []), list(pod_cidr or []), progress=sys.stderr.isatty())
    contexts = [ctx for _, ctx in named]
    several = len(named) > 1
    findings = [f for name, ctx in named
                for f in run_checks(ctx, node_name=name if several else None, debug=bool(state["debug"]))]
    if output == OutputFormat.json:
        typer.echo(dumps(check_json(findings, inputs_of(contexts))))
    else:
        render_findings(findings, Console(), verbose)
    raise typer.Exit(int(exit_code(findings, Severity(fail_on.value.upper()))))


def load_contexts(paths: list[Path], node_ips: list[str], pod_cidrs: list[str], *, workers: int | None = None,
                  progress: bool = False) -> list[tuple[str, CheckContext]]:
    """(node name, context) per node: several bundles in parallel, anything else as `load_for_checks` reads it."""
    from kptrace.checks.inputs import load_for_checks
    from kptrace.collect.cluster import TARBALL_SUFFIXES, bundle_paths

    bundles = bundle_paths(paths)
    loose = any(b.is_file() and not b.name.endswith(TARBALL_SUFFIXES) for b in bundles)
    if len(bundles) < 2 or loose:
        # One bundle, or pasted files (which load_cluster makes one node of, together): as before.
        return [(ctx.name, ctx) for ctx in load_for_checks(paths, node_ips, pod_cidrs)]
    return _load_parallel(bundles, node_ips, pod_cidrs, workers, progress)


# What a worker sends back for one bundle: its contexts, each with its parse errors as plain fields
# (ParseError does not survive pickling: its __init__ takes five arguments), or the error that stopped it.
ErrorFields = tuple[str, int, int, str, str]
Loaded = list[tuple["CheckContext", list[ErrorFields]]] | KptraceError


def _load_parallel(bundles: list[Path], node_ips: list[str], pod_cidrs: list[str], workers: int | None,
                   progress: bool) -> list[tuple[str, CheckContext]]:
    from kptrace.collect.cluster import _bar

    # --node-ip names the first node, as load_cluster has it.
    jobs = [(b, node_ips if i == 0 else [], pod_cidrs) for i, b in enumerate(bundles)]
    results: dict[int, Loaded] = {}
    n = max(1, min(workers or os.cpu_count() or 1, len(bundles)))
    if n == 1:
        with _bar(progress, len(bundles)) as advance:
            for i, job in enumerate(jobs):
                results[i] = _load_bundle(*job)
                advance(bundles[i])
    else:
        with ProcessPoolExecutor(max_workers=n) as pool:
            # Submit (and so fork the workers) before the progress bar starts its refresh thread.
            futures: dict[Future[Loaded], int] = {pool.submit(_load_bundle, *job): i for i, job in enumerate(jobs)}
            with _bar(progress, len(bundles)) as advance:
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    advance(bundles[futures[fut]])
    loaded: list[tuple[str, CheckContext, Path]] = []
    for i, b in enumerate(bundles):
        res = results[i]
        if isinstance(res, KptraceError):
            raise res  # the first failing bundle in path order, as loading them all together would
        for ctx, errors in res:
            ctx.extra.errors = [ParseError(*e) for e in errors]
            loaded.append((ctx.node.name if ctx.node is not None else _bundle_name(b), ctx, b))
    # A name two bundles share (or none) becomes the bundle's, as load_cluster does for directories.
    names = [name for name, _, _ in loaded]
    named: list[tuple[str, CheckContext]] = []
    for name, ctx, b in loaded:
        if names.count(name) > 1 or name == "node":
            name = _bundle_name(b)
            if ctx.node is not None:
                ctx.node.name = name
        named.append((name, ctx))
    nodes = [ctx.node for _, ctx in named if ctx.node is not None]
    for _, ctx in named:
        ctx.peers = tuple(p for p in nodes if p is not ctx.node)
    return named


def _load_bundle(bundle: Path, node_ips: list[str], pod_cidrs: list[str]) -> Loaded:
    """One bundle, as `kptrace check --dump BUNDLE` reads it; runs in a worker process."""
    from kptrace.checks.inputs import load_for_checks

    try:
        contexts = load_for_checks([bundle], node_ips, pod_cidrs)
    except KptraceError as e:
        return KptraceError(str(e)) if isinstance(e, ParseError) else e
    out: list[tuple[CheckContext, list[ErrorFields]]] = []
    for ctx in contexts:
        out.append((ctx, [(e.file, e.line, e.col, e.message, e.text) for e in ctx.extra.errors]))
        ctx.extra.errors = []
    return out


def _bundle_name(path: Path) -> str:
    return path.name.removesuffix(".tar.gz").removesuffix(".tgz")


def register(app: typer.Typer) -> None:
    app.command(name="check")(check)
