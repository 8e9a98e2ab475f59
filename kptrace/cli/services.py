"""`kptrace services`: every Service port kube-proxy's rules show, with endpoints, policy and health."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from kptrace.errors import KptraceError


class ServicesFormat(str, Enum):
    human = "human"
    table = "table"  # the human table, by its older name
    wide = "wide"
    json = "json"
    yaml = "yaml"


def services(
    dump: list[Path] = typer.Option(None, "--dump", "-d", help="A dump file, bundle directory (or a directory of node "
                                    "bundles) or bundle .tar.gz; repeatable."),
    demo: bool = typer.Option(False, "--demo", help="Use the demo cluster shipped with kptrace."),
    namespace: str = typer.Option(None, "--namespace", "-n", help="Only Services in this namespace."),
    output: ServicesFormat = typer.Option(ServicesFormat.human, "--output", "-o", case_sensitive=False,
                                          help="human (or table), wide, json or yaml."),
    width: int = typer.Option(None, "--width", help="Columns to render to (default: COLUMNS or the terminal's).",
                              min=40),
) -> None:
    """List every Service port the node's kube-proxy rules show: addresses, endpoints, policy, health.

    One row per Service port, read from the comments kube-proxy writes on its rules (`ns/name:port
    cluster IP`, `… -> 10.244.1.9:53`, `… has no endpoints`, `… has no local endpoints`). With several
    node bundles the rows are merged; STATUS names the nodes without a local endpoint.

    Columns: NAMESPACE NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) ENDPOINTS STATUS; `-o wide` adds the
    port name, endpoint probabilities, traffic policy, kube-proxy's chains and the nodes.

    Exit codes: 0 listed (whatever the health; `kptrace check` turns it into FAIL/exit 1), 2 usage
    error or unusable input.

    Examples:

      kptrace services --demo

      kptrace services --dump node-a/ -o wide

      kptrace services --dump cluster/ -n kube-system -o json
    """
    from kptrace.load import demo_path, load_cluster
    from kptrace.render.human import make_console
    from kptrace.render.jsonout import dumps
    from kptrace.render.services import render_services, services_json
    from kptrace.services import collect

    paths = list(dump or [])
    if demo:
        paths.insert(0, demo_path())
    if not paths:
        raise KptraceError("no input: give --dump PATH (a file, a bundle directory or .tar.gz) or --demo")
    cluster = load_cluster(paths)
    found = [s for s in collect(cluster) if namespace is None or s.namespace == namespace]
    if output in (ServicesFormat.json, ServicesFormat.yaml):
        inputs = [i for n in cluster for i in n.inputs]
        typer.echo(dumps(services_json(found, inputs), output.value))
    else:
        render_services(found, make_console(width), wide=output == ServicesFormat.wide)


def register(app: typer.Typer) -> None:
    app.command(name="services")(services)
