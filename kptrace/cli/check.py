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

from kptrace.errors import KptraceError
from kptrace.model.finding import Finding, Severity

if TYPE_CHECKING:
    from kptrace.checks.facts import CheckContext
    from kptrace.model.node import Node


class FailOn(str, Enum):
    high = "high"
    medium = "medium"
    low = "low"
    info = "info"


class CheckFormat(str, Enum):
    human = "human"
    json = "json"
    yaml = "yaml"
    junit = "junit"
    sarif = "sarif"


def check(
    dump: list[Path] = typer.Option(None, "--dump", "-d", help="A dump file, bundle directory (or a directory of node "
                                    "bundles) or bundle .tar.gz; repeatable."),
    node_ip: list[str] = typer.Option(None, "--node-ip", help="An address of this node; repeatable."),
    pod_cidr: list[str] = typer.Option(None, "--pod-cidr", help="The cluster's pod CIDR (default: node.yaml, or "
                                       "kube-proxy's rules)."),
    demo: bool = typer.Option(False, "--demo", help="Check the demo cluster shipped with kptrace."),
    fail_on: FailOn = typer.Option(FailOn.high, "--fail-on", case_sensitive=False,
                                   help="Exit 1 on a FAIL of this severity or higher: high, medium, low or info."),
    output: CheckFormat = typer.Option(CheckFormat.human, "--output", "-o", case_sensitive=False,
                                       help="human, json, yaml, junit (XML) or sarif (2.1.0)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show PASS results too."),
    only: list[str] = typer.Option(None, "--only", help="Only these checks: IDs or names, comma-separated or "
                                   "repeated (KPT001 and KPT003 always show)."),
    skip: list[str] = typer.Option(None, "--skip", help="Not these checks: IDs or names, comma-separated or repeated."),
    width: int = typer.Option(None, "--width", min=40, help="Columns for the human view (default: COLUMNS or the "
                              "terminal's; piped: no wrapping)."),
    baseline: Path = typer.Option(None, "--baseline", help="Known findings: a `kptrace check -o json` document or a "
                                  "file of fingerprints, one a line; they are left out of the output and exit code."),
    what_if: list[str] = typer.Option(None, "--what-if", help="A change tried on the model before the checks run, never "
                                      "on the node (docs/what-if.md); repeatable."),
    verify_fixes: bool = typer.Option(True, "--verify-fixes/--no-verify-fixes", help="Try each FAIL's remediation on "
                                      "the model and re-trace the flows it concerns (docs/what-if.md)."),
    suggest_fix: bool = typer.Option(False, "--suggest-fix", help="When a flow a FAIL concerns still fails with its "
                                     "fix, search the smallest set of candidate changes that makes it arrive "
                                     "(docs/what-if.md)."),
) -> None:
    """Run every check on a node's bundle: the runbook step before tracing single packets.

    FAIL: the problem is there. WARN: the check could not run (the message names the missing input).
    INFO: worth knowing, not a fault. PASS: shown with --verbose.

    Exit codes: 0 no FAIL at or above --fail-on and no WARN, 1 a FAIL at or above --fail-on,
    2 usage error or an input that does not parse (KPT001), 3 a check crashed (KPT003), 4 only WARN.
    Findings in --baseline count for none of them.

    Examples:

      kptrace check --demo

      kptrace check --dump node-a/ --fail-on medium -o json

      kptrace check --dump bundles/        (a directory of node bundles: a row per node at the end)

      kptrace check --dump node-a/ -o junit --baseline known.json --skip KPT105 > report.xml

      kptrace check --dump node-a/ --what-if 'sysctl -w net.ipv4.ip_forward=1'

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
    if what_if:
        from kptrace.checks.facts import contexts as make_contexts
        from kptrace.whatif.cli import what_if as apply_what_if

        changed = apply_what_if([ctx.node for _, ctx in named], what_if)
        assert changed is not None
        named = [(name, ctx) for (name, _), ctx in zip(named, make_contexts(changed.cluster))]
    contexts = [ctx for _, ctx in named]
    several = len(named) > 1
    findings = [f for name, ctx in named
                for f in run_checks(ctx, node_name=name if several else None, debug=bool(state["debug"]))]
    from kptrace.render import pipeline

    findings = pipeline.select(findings, only, skip)
    known: list[Finding] = []
    if baseline is not None:
        findings, known = pipeline.apply_baseline(findings, pipeline.read_baseline(baseline))
    from kptrace.whatif.verify import Verifier

    verified = Verifier(contexts).verify_all(findings) if verify_fixes or suggest_fix else []
    searches = {}
    if suggest_fix:
        from kptrace.whatif.search import search_verifications

        searches = search_verifications(verified, [c.node for c in contexts])
    if output in (CheckFormat.json, CheckFormat.yaml):
        from kptrace.whatif.verify import add_verifications

        doc = check_json(findings, [i for c in contexts for i in c.node.inputs])
        if what_if:
            from kptrace.whatif.cli import inputs_with_changes

            doc["inputs"] = inputs_with_changes(doc["inputs"], changed)
        from kptrace.whatif.search import add_searches

        typer.echo(dumps(add_searches(add_verifications(doc, findings, verified), findings, searches), output.value))
    elif output == CheckFormat.junit:
        typer.echo(pipeline.junit(findings), nl=False)
    elif output == CheckFormat.sarif:
        typer.echo(dumps(pipeline.sarif(findings)))
    else:
        from kptrace.render.human import make_console

        console = make_console(width)
        if what_if:
            from kptrace.whatif.cli import render_applied

            render_applied(changed, console)
        render_findings(findings, console, verbose)
        from kptrace.whatif.verify import render_verifications

        render_verifications(verified, console)
        from kptrace.whatif.search import render_searches

        render_searches(verified, searches, console)
        if known:
            console.print(f"{len(known)} known finding{'s' if len(known) != 1 else ''} left out (--baseline {baseline})",
                          soft_wrap=True, highlight=False)
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
    from kptrace.load import is_stream_path, same_node

    # --node-ip names the first node, as load_cluster has it.
    jobs = [(b, node_ips if i == 0 else [], pod_cidrs) for i, b in enumerate(bundles)]
    results: dict[int, Loaded] = {}
    n = max(1, min(workers or os.cpu_count() or 1, len(bundles)))
    if any(is_stream_path(b) for b in bundles):
        n = 1  # `-`, /dev/stdin or a FIFO is read here, once: a worker's standard input is closed
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
