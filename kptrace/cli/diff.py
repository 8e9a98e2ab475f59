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
    yaml = "yaml"


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
    output: DiffFormat = typer.Option(DiffFormat.human, "--output", "-o", help="human, json or yaml."),
    checks: bool = typer.Option(False, "--checks/--no-checks", help="Name the checks that explain each flow that "
                                "does not arrive."),
    strict: bool = typer.Option(True, "--strict/--no-strict", help="Parse every rule up front (default)."),
    width: int = typer.Option(None, "--width", min=40, help="Columns for the human view."),
    what_if: list[str] = typer.Option(None, "--what-if", help="With one input (or --dump/--demo): A is the input, B the "
                                      "input with these changes (docs/what-if.md); repeatable."),
) -> None:
    """Sweep two inputs (or two nodes of one) and list every flow whose fate, endpoints, shares, masquerade or
    egress differ, with what differs on its path on each side.

    Flows are paired by Service name, port name, protocol, source kind and entry point (never by kube-proxy's
    chain hashes or node addresses), so a re-hashed chain or another node's address is not a change.

    Exit codes: 0 nothing differs, 1 some flow differs, 2 usage error or unusable input.

    Examples:

      kptrace diff yesterday/node-a.tar.gz today/node-a.tar.gz

      kptrace diff --dump bundles/ --node node-b --vs node-c

      kptrace diff node-a/ --what-if 'iptables -P FORWARD ACCEPT'     (what else the change opens)
    """
    from kptrace.cli.sweep import load_for_sweep, sources_option
    from kptrace.walkers.sweep import Sweeper, diff_rows

    kinds = sources_option(source)
    paths = list(inputs or [])
    changed = None
    if what_if:
        if vs is not None or len(paths) + len(dump or []) + int(demo) != 1:
            raise KptraceError("diff --what-if takes one input (kptrace diff INPUT --what-if CHANGE, or --dump/--demo): "
                               "A is the input, B the input with the changes")
        from kptrace.whatif.cli import what_if as apply_what_if

        ca = load_for_sweep(list(dump or []) + paths, demo, strict=strict)
        changed = apply_what_if(ca, what_if)
        assert changed is not None
        cb = changed.cluster
        na, nb = _pick(ca, node, "--node"), _pick(cb, node, "--node")
        sa = Sweeper(ca, checks=checks, keep_traces=False).sweep_node(na, service, kinds)
        sb = Sweeper(cb, checks=checks, keep_traces=False).sweep_node(nb, service, kinds)
        label_a = ", ".join(str(p) for p in (list(dump or []) + paths)) or "demo"
        label_b = f"{label_a} with " + "; ".join(f"{c.cite} {c.text}" for c in changed.changes)
        all_inputs = [i for n in cb for i in n.inputs]
    elif vs is not None:
        if paths and dump:
            raise KptraceError("--vs compares two nodes of one input: give it with --dump (or --demo), not as arguments")
        cluster = load_for_sweep(list(dump or []) + paths, demo, strict=strict)
        if node is None:
            raise KptraceError("--vs needs --node: the node to compare it with")
        na, nb = _pick(cluster, node, "--node"), _pick(cluster, vs, "--vs")
        sweeper = Sweeper(cluster, checks=checks, keep_traces=False)  # a change walks its flow again
        sa, sb = sweeper.sweep_node(na, service, kinds), sweeper.sweep_node(nb, service, kinds)
        label_a = label_b = ", ".join(str(p) for p in (list(dump or []) + paths)) or "demo"
        all_inputs = [i for n in cluster for i in n.inputs]
    else:
        if len(paths) != 2 or dump or demo:
            raise KptraceError("diff takes two inputs (kptrace diff A B), or one input and two of its nodes "
                               "(kptrace diff --dump bundles/ --node X --vs Y)")
        from kptrace.load import stdin_once

        stdin_once(paths)
        ca = load_for_sweep([paths[0]], False, strict=strict)
        cb = load_for_sweep([paths[1]], False, strict=strict)
        na, nb = _pick(ca, node, "--node"), _pick(cb, node, "--node")
        sa = Sweeper(ca, checks=checks, keep_traces=False).sweep_node(na, service, kinds)
        sb = Sweeper(cb, checks=checks, keep_traces=False).sweep_node(nb, service, kinds)
        label_a, label_b = str(paths[0]), str(paths[1])
        all_inputs = [i for n in ca + cb for i in n.inputs]
    changes = diff_rows(sa.rows, sb.rows)
    side_a = (label_a, na.name, sa.rows, sa.service_ports)
    side_b = (label_b, nb.name, sb.rows, sb.service_ports)
    if output in (DiffFormat.json, DiffFormat.yaml):
        from kptrace.render.jsonout import dumps
        from kptrace.render.sweep import diff_json

        doc = diff_json(changes, side_a, side_b, all_inputs)
        if changed is not None:
            from kptrace.whatif.cli import inputs_with_changes

            doc["inputs"] = inputs_with_changes(doc["inputs"], changed)
        typer.echo(dumps(doc, output.value))
    else:
        from kptrace.render.human import make_console
        from kptrace.render.sweep import render_diff

        from kptrace.whatif.cli import render_applied

        console = make_console(width)
        render_applied(changed, console)
        render_diff(changes, side_a, side_b, console)
    raise typer.Exit(int(ExitCode.FAIL if changes else ExitCode.OK))


def register(app: typer.Typer) -> None:
    app.command(name="diff")(diff)
