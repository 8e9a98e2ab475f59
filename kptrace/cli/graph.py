"""`kptrace graph`: draw the chain graph of a ruleset, one Service's chains, or a trace's path."""

from __future__ import annotations

from enum import Enum
from ipaddress import ip_address
from pathlib import Path

import typer

from kptrace.errors import KptraceError


class GraphFormat(str, Enum):
    dot = "dot"
    mermaid = "mermaid"
    json = "json"
    yaml = "yaml"
    svg = "svg"


def graph(
    dump: list[Path] = typer.Option(None, "--dump", "-d", help="A dump file, bundle directory (or a directory of node "
                                    "bundles) or bundle .tar.gz; repeatable."),
    demo: bool = typer.Option(False, "--demo", help="Use the demo cluster shipped with kptrace."),
    on: str = typer.Option(None, "--node", help="The node whose rules to draw (default: the one owning --from, "
                           "or the first)."),
    service: str = typer.Option(None, "--service", "-s", help="Only this Service's chains: NAMESPACE/NAME."),
    src: str = typer.Option(None, "--from", help="With --to: draw the chains a `kptrace why` trace visits."),
    to: str = typer.Option(None, "--to", help="The trace's destination, as `kptrace why DEST` takes it: IP:PORT, "
                           "IP:PORT/PROTO, ns/name:port or svc/ns/name:port."),
    proto: str = typer.Option(None, "--proto", "-p", help="The trace's protocol: tcp, udp, sctp or icmp."),
    family: int = typer.Option(None, "--family", help="4 or 6 (default: --to's, else 4).", min=4, max=6),
    output: GraphFormat = typer.Option(GraphFormat.dot, "--output", "-o", case_sensitive=False,
                                       help="dot, mermaid, json, yaml or svg."),
) -> None:
    """Draw the chain graph: hooks → built-in chains → user chains, one edge per jump rule.

    Without a filter the whole ruleset is drawn; --service NS/NAME draws the chains reachable from
    the Service's KUBE-SVC/SVL/EXT/FW chains (and the chains that jump into them, dashed);
    --from SRC --to DEST:PORT draws the chains a `kptrace why DEST --from SRC` trace visits, its
    path in red. Edges are labelled with the jumping rule's number (tooltip: its file:line).

    -o svg runs Graphviz's `dot` (apt-get install graphviz); -o dot and -o mermaid need nothing;
    -o json is networkx's node-link layout.

    Exit codes: 0 drawn; 2 usage error, unusable input, or a view with nothing to draw; 3 internal error.

    Examples:

      kptrace graph --demo --service kube-system/kube-dns -o svg > kube-dns.svg

      kptrace graph --demo --from 10.244.1.5 --to 10.96.0.10:53 --proto udp -o mermaid

      kptrace graph --dump node-a/ -o dot | dot -Tpng > rules.png
    """
    from kptrace.cli.why import PROTOS, _source, parse_dest, start_node
    from kptrace.graph.chains import build_graph
    from kptrace.load import demo_path, load_cluster
    from kptrace.render import graph as render
    from kptrace.render.jsonout import dumps

    paths = list(dump or [])
    if demo:
        paths.insert(0, demo_path())
    if not paths:
        raise KptraceError("no input: give --dump PATH (a file, a bundle directory or .tar.gz) or --demo")
    if (src is None) != (to is None):
        raise KptraceError("--from and --to go together: they name the trace whose path to draw")
    if service is not None and to is not None:
        raise KptraceError("--service and --from/--to draw different views: give one of them")
    if family not in (None, 4, 6):
        raise KptraceError(f"--family {family}: expected 4 or 6")
    cluster = load_cluster(paths)
    trace = None
    if to is not None:
        from kptrace.model.flow import Flow
        from kptrace.walkers.netfilter import trace_flow

        from kptrace.cli.dest import is_service_ref, resolve_service, split_proto

        if is_service_ref(to):
            # ns/name:port or svc/ns/name:port, as `kptrace why` takes it (from the rules' comments).
            host, port, p = resolve_service(to, cluster, proto)
        else:
            bare, suffix = split_proto(to)
            host, port = parse_dest(bare)
            p = (proto or suffix or ("tcp" if port is not None else "icmp")).lower()
        if p not in PROTOS:
            raise KptraceError(f"--proto '{proto}': expected one of {', '.join(PROTOS)}")
        dst = ip_address(host)
        src_ip = _source(src, cluster, dst)
        node = start_node(cluster, src_ip, on)
        trace = trace_flow(node, Flow(src_ip, dst, p, None, port, None), cluster)
        family = family or dst.version
    else:
        node = start_node(cluster, ip_address("0.0.0.0"), on) if on else cluster[0]
    fam = family or 4
    rs = node.rulesets.get(fam)
    if rs is None:
        raise KptraceError(f"node {node.name} has no IPv{fam} ruleset in the input")
    g = build_graph(rs)
    if trace is not None:
        label = node.name if any(s.node for b in trace.branches for s in b.steps) else None
        view = render.trace_view(g, trace, label, rs)
    elif service is not None:
        view = render.service_view(g, rs, service)
    else:
        view = render.whole_view(g)
    if output in (GraphFormat.json, GraphFormat.yaml):
        typer.echo(dumps(render.to_json(g, view), output.value))
    elif output == GraphFormat.mermaid:
        typer.echo(render.to_mermaid(g, view), nl=False)
    elif output == GraphFormat.svg:
        typer.echo(render.to_svg(render.to_dot(g, view)), nl=False)
    else:
        typer.echo(render.to_dot(g, view), nl=False)


def register(app: typer.Typer) -> None:
    app.command(name="graph")(graph)
