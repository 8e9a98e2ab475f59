"""`kptrace check`: run every check on a node bundle and report FAIL, WARN, INFO (and PASS with --verbose).

Several node bundles (a directory of them, as the DaemonSet writes, or several --dump) are loaded in
parallel, one process per core, with a progress bar on stderr; the human output then ends with one
row per node. Each worker runs the one loader (load.py) on one bundle, so a bundle reads exactly
as it does alone, unreadable bundles and files included (KPT001).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kptrace.cli.why import OutputFormat
from kptrace.errors import KptraceError
from kptrace.model.finding import Severity

if TYPE_CHECKING:
    from kptrace.checks.facts import CheckContext
    from kptrace.model.node import Node


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
        typer.echo(dumps(check_json(findings, [i for c in contexts for i in c.node.inputs])))
    else:
        from kptrace.render.safe import safe_console

        render_findings(findings, safe_console(), verbose)
    raise typer.Exit(int(exit_code(findings, Severity(fail_on.value.upper()))))


def load_contexts(paths: list[Path], node_ips: list[str], pod_cidrs: list[str], *, workers: int | None = None,
                  progress: bool = False) -> list[tuple[str, CheckContext]]:
    """(node name, context) per node: several bundles in parallel, anything else as load_cluster reads it.

    A bundle with nothing readable is still checked (KPT001 says why) while another one can be read.
    """
    from kptrace.checks.facts import contexts
    from kptrace.collect.cluster import TARBALL_SUFFIXES, bundle_paths
    from kptrace.load import load_cluster

    bundles = bundle_paths(paths)
    loose = any(b.is_file() and not b.name.endswith(TARBALL_SUFFIXES) for b in bundles)
    if len(bundles) < 2 or loose:
        # One bundle, or pasted files (which load_cluster makes one node of, together).
        return [(ctx.name, ctx) for ctx in contexts(load_cluster(paths, node_ips, pod_cidrs, keep_unusable=True))]
    return _load_parallel(bundles, node_ips, pod_cidrs, workers, progress)


Loaded = list["Node"] | KptraceError


def _load_parallel(bundles: list[Path], node_ips: list[str], pod_cidrs: list[str], workers: int | None,
                   progress: bool) -> list[tuple[str, CheckContext]]:
    from kptrace.checks.facts import contexts
    from kptrace.collect.cluster import _bar
    from kptrace.load import same_node

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
    loaded: list[tuple[Node, Path]] = []
    failed: list[KptraceError] = []
    for i, b in enumerate(bundles):
        res = results[i]
        if isinstance(res, KptraceError):
            # Only two inputs that contradict each other get here; the bundle is named and the others checked.
            failed.append(res)
            continue
        loaded.extend((node, b) for node in res)
    if not any(node.usable for node, _ in loaded):
        raise failed[0] if failed else KptraceError(f"nothing kptrace can read in {', '.join(map(str, bundles))}")
    # Two bundles of one node are refused, and a bundle without a name takes its own, as load_cluster does.
    same_node([node for node, _ in loaded], [[b] for _, b in loaded])
    for node, b in loaded:
        if node.name == "node":
            node.name = _bundle_name(b)
    return [(ctx.name, ctx) for ctx in contexts([node for node, _ in loaded])]


def _load_bundle(bundle: Path, node_ips: list[str], pod_cidrs: list[str]) -> Loaded:
    """One bundle, as `kptrace check --dump BUNDLE` reads it; runs in a worker process."""
    from kptrace.load import load_cluster

    try:
        nodes = load_cluster([bundle], node_ips, pod_cidrs, keep_unusable=True)
    except KptraceError as e:
        return KptraceError(str(e))
    for node in nodes:
        for rs in [*node.rulesets.values(), *node.legacy_rulesets.values()]:
            if rs.text is not None and not isinstance(rs.text, str):
                rs.text = bytes(rs.text[:]).decode("utf-8", "replace")  # a mapped file does not cross processes
    return nodes


def _bundle_name(path: Path) -> str:
    return path.name.removesuffix(".tar.gz").removesuffix(".tgz")


def register(app: typer.Typer) -> None:
    app.command(name="check")(check)
