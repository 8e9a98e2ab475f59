"""`kptrace check`: run every check on a node bundle and report FAIL, WARN, INFO (and PASS with --verbose)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from kptrace.cli.why import OutputFormat
from kptrace.errors import KptraceError
from kptrace.model.finding import Severity


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

      kptrace explain KPT101
    """
    from kptrace.checks.inputs import inputs_of, load_for_checks
    from kptrace.checks.run import exit_code, run_all
    from kptrace.cli.app import state
    from kptrace.load import demo_path
    from kptrace.render.findings import check_json, render_findings
    from kptrace.render.jsonout import dumps

    paths = list(dump or [])
    if demo:
        paths.insert(0, demo_path())
    if not paths:
        raise KptraceError("no input: give --dump PATH (a file, a bundle directory or .tar.gz) or --demo")
    contexts = load_for_checks(paths, list(node_ip or []), list(pod_cidr or []))
    findings = run_all(contexts, debug=bool(state["debug"]))
    if output == OutputFormat.json:
        typer.echo(dumps(check_json(findings, inputs_of(contexts))))
    else:
        render_findings(findings, Console(), verbose)
    raise typer.Exit(int(exit_code(findings, Severity(fail_on.value.upper()))))


def register(app: typer.Typer) -> None:
    app.command(name="check")(check)
