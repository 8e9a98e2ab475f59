"""`kptrace sweep`: every Service port the node knows, from every kind of source, at once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kptrace.errors import ExitCode, KptraceError

if TYPE_CHECKING:
    from kptrace.model.node import Node

SOURCES = ("pod", "remote", "node", "external")


class SweepFormat(str, Enum):
    human = "human"
    json = "json"
    yaml = "yaml"
    csv = "csv"


def sources_option(source: list[str] | None) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(s.lower() for s in source or ())) or SOURCES
    bad = [k for k in kinds if k not in SOURCES]
    if bad:
        raise KptraceError(f"--source '{bad[0]}': expected one of {', '.join(SOURCES)}")
    return kinds


def load_for_sweep(dump: list[Path] | None, demo: bool, node_ip: list[str] | None = None,
                   pod_cidr: list[str] | None = None, strict: bool = True) -> list[Node]:
    """The input, loaded once for every flow. A sweep reads every rule of a large dump anyway, and the full
    parser does that faster than rule by rule (--no-strict: read lazily, as `why` does)."""
    from kptrace.load import LoadOptions, demo_path, load_cluster

    paths = list(dump or [])
    if demo:
        paths.insert(0, demo_path())
    if not paths:
        raise KptraceError("no input: give --dump PATH (a file, a bundle directory, a directory of node bundles "
                           "or .tar.gz) or --demo")
    return load_cluster(paths, list(node_ip or []), list(pod_cidr or []), options=LoadOptions(strict=strict))


def progress_bar(enabled: bool) -> Callable[[str, int, int], None] | None:
    """A progress line on stderr for long runs on a terminal; None otherwise."""
    if not enabled:
        return None
    from kptrace.render.safe import safe_console

    console = safe_console(stderr=True)

    def show(node: str, done: int, total: int) -> None:
        if total >= 200 and (done % 50 == 0 or done == total):
            console.print(f"\r{node}: {done:,}/{total:,} Service ports swept", end="" if done < total else "\n",
                          highlight=False, soft_wrap=True)

    return show


def sweep_exit(statuses: set[str]) -> ExitCode:
    if "broken" in statuses:
        return ExitCode.FAIL
    if "undetermined" in statuses:
        return ExitCode.INCONCLUSIVE
    return ExitCode.OK


def sweep(
    dump: list[Path] = typer.Option(None, "--dump", "-d", help="A dump file, bundle directory, a directory of node "
                                    "bundles or bundle .tar.gz; repeatable."),
    demo: bool = typer.Option(False, "--demo", help="Sweep the demo cluster shipped with kptrace (node-a and node-b)."),
    service: str = typer.Option(None, "--service", help="Only this Service: ns/name, or ns/name:port-name."),
    source: list[str] = typer.Option(None, "--source", help="Only these source kinds: pod, remote, node, external; "
                                     "repeatable."),
    node: str = typer.Option(None, "--node", help="Only rows for this node of the input (the others still serve as "
                             "peers)."),
    node_ip: list[str] = typer.Option(None, "--node-ip", help="An address of this node; repeatable."),
    pod_cidr: list[str] = typer.Option(None, "--pod-cidr", help="The cluster's pod CIDR (default: node.yaml, or "
                                       "kube-proxy's rules)."),
    output: SweepFormat = typer.Option(SweepFormat.human, "--output", "-o", help="human, json, yaml or csv."),
    checks: bool = typer.Option(True, "--checks/--no-checks", help="Name the checks that explain each flow that does "
                                "not arrive (large dumps read lazily: left to `kptrace check`)."),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="Parse every rule up front (default; a sweep reads "
                                "them all) or as the walk reads them."),
    width: int = typer.Option(None, "--width", min=40, help="Columns for the human view (default: COLUMNS or the "
                              "terminal)."),
    what_if: list[str] = typer.Option(None, "--what-if", help="A change tried on the model before the sweep, never "
                                      "on the node (docs/what-if.md); repeatable."),
) -> None:
    """Trace every Service port the node knows, from a pod on it, a pod on another node, the node itself and a
    client outside: one row per flow, broken ones first.

    Each row is what `kptrace why` answers for that flow: the fate, the endpoints and their shares and, for a
    flow that does not arrive, the rule, route or setting that decides it (`file:line`) and the checks that
    explain it. A directory of node bundles gives rows per node and a cluster summary naming the Service
    ports broken on some nodes only.

    Exit codes: 0 every flow arrives, 1 some flow is dropped, rejected, unrouted or unanswered, 2 usage error
    or unusable input, 4 some flow is undetermined (or none could be swept) and none broken.

    Examples:

      kptrace sweep --demo

      kptrace sweep --dump node-a/ --source pod --source external -o csv

      kptrace sweep --dump bundles/ --service kube-system/kube-dns -o json
    """
    from kptrace.walkers.sweep import Sweeper

    kinds = sources_option(source)
    cluster = load_for_sweep(dump, demo, node_ip, pod_cidr, strict)
    from kptrace.whatif.cli import what_if as apply_what_if

    changed = apply_what_if(cluster, what_if)
    if changed is not None:
        cluster = changed.cluster
    targets = cluster
    if node is not None:
        targets = [n for n in cluster if n.name == node]
        if not targets:
            raise KptraceError(f"--node '{node}': no such node in the input ({', '.join(n.name for n in cluster)})")
    sweeper = Sweeper(cluster, checks=checks, progress=progress_bar(output == SweepFormat.human and sys.stderr.isatty()),
                      keep_traces=False)  # no output shows whole traces
    result = sweeper.sweep(service, kinds, targets)
    if service is not None and not any(n.service_ports for n in result.nodes):
        raise KptraceError(f"--service '{service}': no such Service port in the input (kptrace services lists them)")
    if output in (SweepFormat.json, SweepFormat.yaml):
        from kptrace.render.jsonout import dumps
        from kptrace.render.sweep import sweep_json

        from kptrace.whatif.cli import inputs_with_changes

        doc = sweep_json(result, [i for n in cluster for i in n.inputs])
        doc["inputs"] = inputs_with_changes(doc["inputs"], changed)
        typer.echo(dumps(doc, output.value))
    elif output == SweepFormat.csv:
        from kptrace.render.sweep import sweep_csv

        typer.echo(sweep_csv(result), nl=False)
    else:
        from kptrace.render.human import make_console
        from kptrace.render.sweep import render_sweep

        from kptrace.whatif.cli import render_applied

        console = make_console(width)
        render_applied(changed, console)
        render_sweep(result, console)
    statuses = {r.status for r in result.rows}
    if not result.rows and any(n.service_ports for n in result.nodes):
        statuses.add("undetermined")  # Service ports, but no source the input could give: nothing was shown to work
    raise typer.Exit(int(sweep_exit(statuses)))


def register(app: typer.Typer) -> None:
    app.command(name="sweep")(sweep)
