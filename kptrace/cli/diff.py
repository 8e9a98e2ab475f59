"""`kptrace diff`: what changed for Service traffic between two inputs, or between two nodes of one."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kptrace.errors import ExitCode, KptraceError

if TYPE_CHECKING:
    from kptrace.model.node import Node


class DiffFormat(str, Enum):
    human = "human"
    json = "json"


def _pick(cluster: list[Node], name: str | None, what: str) -> Node:
    if name is None:
        return cluster[0]
    for n in cluster:
        if n.name == name:
            return n
    raise KptraceError(f"{what} '{name}': no such node in the input ({', '.join(n.name for n in cluster)})")


def diff(
    inputs: list[Path] = typer.Argument(None, help="Two inputs, A then B: dump files, bundle directories or .tar.gz."),
    dump: list[Path] = typer.Option(None, "--dump", "-d", help="With --vs: the input holding both nodes (a directory "
                                    "of node bundles); repeatable."),
    demo: bool = typer.Option(False, "--demo", help="With --vs: the demo cluster."),
    node: str = typer.Option(None, "--node", help="The node to compare (A's, and B's when two inputs are given; "
                             "default: each input's first)."),
    vs: str = typer.Option(None, "--vs", help="Compare --node with this node of the same input."),
    service: str = typer.Option(None, "--service", help="Only this Service: ns/name, or ns/name:port-name."),
    source: list[str] = typer.Option(None, "--source", help="Only these source kinds: pod, remote, node, external; "
                                     "repeatable."),
    output: DiffFormat = typer.Option(DiffFormat.human, "--output", "-o", help="human or json."),
    checks: bool = typer.Option(False, "--checks/--no-checks", help="Name the checks that explain each flow that "
                                "does not arrive."),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="Parse every rule up front (default)."),
    width: int = typer.Option(None, "--width", min=40, help="Columns for the human view."),
) -> None:
    """Sweep two inputs (or two nodes of one) and list every flow whose fate, endpoints, shares, masquerade or
    egress differ, with what differs on its path on each side.

    Flows are paired by Service name, port name, protocol, source kind and entry point (never by kube-proxy's
    chain hashes or node addresses), so a re-hashed chain or another node's address is not a change.

    Exit codes: 0 nothing differs, 1 some flow differs, 2 usage error or unusable input.

    Examples:

      kptrace diff yesterday/node-a.tar.gz today/node-a.tar.gz

      kptrace diff --dump bundles/ --node node-b --vs node-c
    """
    from kptrace.cli.sweep import load_for_sweep, sources_option
    from kptrace.walkers.sweep import Sweeper, diff_rows

    kinds = sources_option(source)
    paths = list(inputs or [])
    if vs is not None:
        if paths and dump:
            raise KptraceError("--vs compares two nodes of one input: give it with --dump (or --demo), not as arguments")
        cluster = load_for_sweep(list(dump or []) + paths, demo, strict=strict)
        if node is None:
            raise KptraceError("--vs needs --node: the node to compare it with")
        na, nb = _pick(cluster, node, "--node"), _pick(cluster, vs, "--vs")
        sweeper = Sweeper(cluster, checks=checks)
        sa, sb = sweeper.sweep_node(na, service, kinds), sweeper.sweep_node(nb, service, kinds)
        label_a = label_b = ", ".join(str(p) for p in (list(dump or []) + paths)) or "demo"
        all_inputs = [i for n in cluster for i in n.inputs]
    else:
        if len(paths) != 2 or dump or demo:
            raise KptraceError("diff takes two inputs (kptrace diff A B), or one input and two of its nodes "
                               "(kptrace diff --dump bundles/ --node X --vs Y)")
        ca = load_for_sweep([paths[0]], False, strict=strict)
        cb = load_for_sweep([paths[1]], False, strict=strict)
        na, nb = _pick(ca, node, "--node"), _pick(cb, node, "--node")
        sa = Sweeper(ca, checks=checks).sweep_node(na, service, kinds)
        sb = Sweeper(cb, checks=checks).sweep_node(nb, service, kinds)
        label_a, label_b = str(paths[0]), str(paths[1])
        all_inputs = [i for n in ca + cb for i in n.inputs]
    changes = diff_rows(sa.rows, sb.rows)
    side_a = (label_a, na.name, sa.rows, sa.service_ports)
    side_b = (label_b, nb.name, sb.rows, sb.service_ports)
    if output == DiffFormat.json:
        from kptrace.render.jsonout import dumps
        from kptrace.render.sweep import diff_json

        typer.echo(dumps(diff_json(changes, side_a, side_b, all_inputs)))
    else:
        from kptrace.render.human import make_console
        from kptrace.render.sweep import render_diff

        render_diff(changes, side_a, side_b, make_console(width))
    raise typer.Exit(int(ExitCode.FAIL if changes else ExitCode.OK))


def register(app: typer.Typer) -> None:
    app.command(name="diff")(diff)
