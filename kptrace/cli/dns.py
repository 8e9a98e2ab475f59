"""`kptrace dns [NAME]`: the DNS path of a pod, hop by hop, naming the hop that fails.

pod -> kube-dns Service (udp and tcp 53, the usual trace) -> each CoreDNS endpoint (where it runs)
-> its upstream servers, from the resolv.conf kubelet gives CoreDNS (routed out of the node, or
looping back to CoreDNS or the node itself). See docs/how-it-works.md, "DNS".
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import typer

from kptrace.cli.why import OutputFormat
from kptrace.errors import ExitCode, KptraceError


def dns(
    name: str = typer.Argument(None, help="A name to resolve (e.g. example.com, kubernetes.default): says which names "
                               "a pod tries and whether CoreDNS answers them or asks upstream."),
    src: str = typer.Option(None, "--from", help="The client pod's address (default: a node address: the node itself)."),
    dns_ip: str = typer.Option(None, "--dns-ip", help="The cluster DNS address (default: kubelet's clusterDNS, a pod's "
                               "resolv.conf, or kube-system/kube-dns in the proxy rules)."),
    dump: list[Path] = typer.Option(None, "--dump", "-d", help="A dump file, bundle directory or bundle .tar.gz; repeatable."),
    node_ip: list[str] = typer.Option(None, "--node-ip", help="An address of this node (addrtype LOCAL); repeatable."),
    pod_cidr: list[str] = typer.Option(None, "--pod-cidr", help="The cluster's pod CIDR (default: read from kube-proxy's rules)."),
    on: str = typer.Option(None, "--node", help="The node the client runs on (default: the one owning --from)."),
    demo: bool = typer.Option(False, "--demo", help="Use the demo cluster shipped with kptrace."),
    output: OutputFormat = typer.Option(OutputFormat.human, "--output", "-o", help="human or json."),
    traces: bool = typer.Option(False, "--traces", help="Also print each hop's packet trace (human output)."),
    width: int = typer.Option(None, "--width", min=40, help="Columns for the human view."),
) -> None:
    """Trace the DNS path: pod -> kube-dns (udp, tcp 53) -> CoreDNS -> its upstream servers.

    Exit codes: 0 every hop goes through, 1 a hop fails (named), 4 a hop is not known.

    Examples:

      kptrace dns example.com --from 10.244.1.5 --dump node-a/

      kptrace dns --demo -o json
    """
    from kptrace.cli.why import _source, choose_start
    from kptrace.load import demo_path, load_cluster
    from kptrace.walkers.dns import FAIL, UNKNOWN, trace_dns

    if dns_ip is not None:
        try:
            ip_address(dns_ip)
        except ValueError:
            raise KptraceError(f"--dns-ip '{dns_ip}' is not an IP address") from None
    paths = list(dump or [])
    if demo:
        paths.insert(0, demo_path())
    if paths:
        cluster = load_cluster(paths, list(node_ip or []), list(pod_cidr or []))
    else:
        from kptrace.cli.collect import live_node

        cluster = [live_node(list(node_ip or []), list(pod_cidr or []))]
    probe = ip_address(dns_ip) if dns_ip else ip_address("192.0.2.1")
    client = _source(src, cluster, probe)
    start, _ = choose_start(cluster, client, probe, on)
    d = trace_dns(cluster, start, client, dns_ip, name)
    if src is None:
        d.notes.insert(0, f"the client is {client}, an address of {start.name} (use --from POD_IP for a pod)")
    if output == OutputFormat.json:
        from kptrace.render.dns import dns_json
        from kptrace.render.jsonout import dumps

        typer.echo(dumps(dns_json(d, cluster, name)))
    else:
        from kptrace.render.dns import render_dns
        from kptrace.render.human import make_console, render_trace

        console = make_console(width)
        for line in render_dns(d, name):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        if traces:
            for i, h in enumerate(d.hops, start=1):
                if h.trace is not None:
                    console.print(f"\nhop {i}: {h.name}", markup=False, highlight=False)
                    render_trace(h.trace, console)
    status = d.status
    raise typer.Exit(int(ExitCode.FAIL if status == FAIL else ExitCode.INCONCLUSIVE if status == UNKNOWN else ExitCode.OK))


def register(app: typer.Typer) -> None:
    app.command(name="dns")(dns)
