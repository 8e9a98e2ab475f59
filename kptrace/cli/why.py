"""`kptrace why DEST`: trace one hypothetical packet and print what happens to it.

`run` is the command; `register` wraps it for typer. This module imports neither typer nor the model at
start-up: a plain `kptrace why` is answered without the CLI framework (kptrace/cli/fast.py), and start-up
is part of every answer."""

from __future__ import annotations

import re
from enum import Enum
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import TYPE_CHECKING

from kptrace.errors import ExitCode, KptraceError
from kptrace.render.detail import Detail

if TYPE_CHECKING:
    import typer

    from kptrace.model.finding import Finding
    from kptrace.model.flow import IPAddress
    from kptrace.model.node import Node
    from kptrace.model.trace import Trace

PROTOS = ("tcp", "udp", "sctp", "icmp")


class OutputFormat(str, Enum):
    human = "human"
    json = "json"
    yaml = "yaml"


def parse_dest(text: str) -> tuple[str, int | None]:
    """`IP:PORT`, `IP` (icmp), `[v6]:PORT`, or a bare IPv6 address."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::([0-9]+))?", text)
    if m:
        host, port = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    try:
        ip_address(host)
    except ValueError:
        raise KptraceError(f"destination '{text}': '{host}' is not an IP address (expected IP:PORT, IP or [v6]:PORT)") from None
    # ASCII digits only: `:²` and `:٥٣` are not ports (str.isdigit() and int() accept them), nor 5,000 digits.
    if port is not None and not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise KptraceError(f"destination '{text[:80]}': port '{port[:20]}' is not in 1-65535")
    return host, int(port) if port is not None else None


def exit_code(t: Trace) -> ExitCode:
    from kptrace.model.trace import Disposition

    kinds = {b.disposition for b in t.branches}
    if any(k.failed for k in kinds) or any(b.reply_failed for b in t.branches):
        return ExitCode.FAIL
    if Disposition.UNDETERMINED in kinds or not kinds:
        return ExitCode.INCONCLUSIVE
    return ExitCode.OK


def run(dest: str, src: str | None = None, proto: str | None = None, sport: int | None = None,
        in_iface: str | None = None, dump: list[Path] | None = None, node_ip: list[str] | None = None,
        pod_cidr: list[str] | None = None, on: str | None = None, state: str = "new", mark: str | None = None,
        service_cidr: list[str] | None = None, demo: bool = False, output: OutputFormat = OutputFormat.human,
        checks: bool = True, strict: bool = False, no_cache: bool = False, detail: Detail = Detail.summary,
        width: int | None = None, what_if: list[str] | None = None, suggest_fix: bool = False,
        suggest_max_size: int = 3) -> int:
    """`kptrace why`: print the trace of one packet; returns the exit code (the command's docstring says which)."""
    from kptrace.load import LoadOptions, demo_path, load_cluster

    options = LoadOptions(strict=strict, cache=not no_cache and LoadOptions().cache)
    from kptrace.render.jsonout import dumps, trace_json
    from kptrace.walkers.netfilter import trace_flow

    from kptrace.cli.dest import is_service_ref, resolve_service, split_proto

    service_ref = is_service_ref(dest)
    if not service_ref:
        dest, suffix = split_proto(dest)  # 10.96.0.10:53/udp, as kptrace prints it
        if suffix and proto and suffix != proto.lower():
            raise KptraceError(f"destination '{dest}/{suffix}' and --proto {proto} disagree")
        if not proto and suffix:
            proto = suffix
        host, port = parse_dest(dest)
        p = (proto or ("tcp" if port is not None else "icmp")).lower()
        if p not in PROTOS:
            raise KptraceError(f"--proto '{proto}': expected one of {', '.join(PROTOS)}")
        if p != "icmp" and port is None:
            raise KptraceError(f"destination '{dest}' needs a port for {p}")
    paths = list(dump or [])
    if demo:
        paths.insert(0, demo_path())
    if paths:
        cluster = load_cluster(paths, list(node_ip or []), list(pod_cidr or []), options=options)
    else:
        from kptrace.cli.collect import live_node

        # No --dump and no --demo: this node, read live (read-only), through the same loader.
        cluster = [live_node(list(node_ip or []), list(pod_cidr or []))]
    if service_ref:
        # ns/name:port, svc/ns/name:port: the Service's cluster IP and port, from the input's own rules.
        host, resolved, p = resolve_service(dest, cluster, proto)
        port = resolved
    from kptrace.model.flow import STATES, Flow

    st = (state or "new").lower()
    if st not in STATES:
        raise KptraceError(f"--state '{state}': expected one of {', '.join(STATES)}")
    mark_value = _mark(mark)
    changed = None
    if what_if:  # the what-if modules only when asked for
        from kptrace.whatif.cli import what_if as apply_what_if

        changed = apply_what_if(cluster, what_if)
    before = cluster
    if changed is not None:
        cluster = changed.cluster
    cidrs = tuple(_network(c) for c in service_cidr or ())
    dst_ip = ip_address(host)
    src_ip = _source(src, cluster, dst_ip)
    node, notes = choose_start(cluster, src_ip, dst_ip, on)
    flow = Flow(src_ip, dst_ip, p, sport, port, in_iface, st, mark_value)
    trace = trace_flow(node, flow, cluster, tuple(notes), cidrs)
    findings = _findings(trace, node, cluster, paths, node_ip, pod_cidr) if checks else []
    # With --what-if, the same packet on the input as it is: what the changes change for it.
    was = trace_flow(before[next(i for i, n in enumerate(cluster) if n is node)], flow, before, tuple(notes), cidrs) \
        if changed is not None else None
    fix_search = None
    if suggest_fix:
        from kptrace.whatif.search import search_fix

        fix_search = search_fix(cluster, node, flow, tuple(notes), cidrs, max_size=suggest_max_size)
    if output in (OutputFormat.json, OutputFormat.yaml):
        doc = trace_json(trace)
        doc["findings"] = []
        if findings:
            from kptrace.render.findings import finding_json

            doc["findings"] = [finding_json(f) for f in findings]
        if changed is not None and was is not None:
            from kptrace.whatif.cli import inputs_with_changes

            doc["inputs"] = inputs_with_changes(doc["inputs"], changed)
            doc["without_what_if"] = {"disposition": was.disposition.value}
        if fix_search is not None:
            from kptrace.whatif.search import search_json

            doc["suggest_fix"] = search_json(fix_search)
        echo(dumps(doc, output.value))
    else:
        from kptrace.render.human import make_console, render_trace

        console = make_console(width)
        if changed is not None:
            from kptrace.whatif.cli import render_applied

            render_applied(changed, console)
        render_trace(trace, console, detail, _service_named(trace, cluster, paths))
        if was is not None:
            from kptrace.whatif.verify import fate

            console.print(f"without the what-if changes: {fate(was)}", highlight=False)
        if findings:
            from kptrace.render.findings import render_trace_findings

            render_trace_findings(findings, trace, console, detail.value)
        if fix_search is not None:
            from kptrace.whatif.search import render_search

            render_search(fix_search, console)
    return int(exit_code(trace))


def _service_named(trace: Trace, cluster: list[Node], paths: list[Path]) -> str | None:
    """The Service port the destination is, from the input's Service table (kube-proxy's rule comments), for a
    first line whose trace stopped before a rule naming it. Large inputs are read lazily: left unnamed there."""
    from kptrace.render.human import service_name

    f = trace.flow
    if service_name(trace) or f.dport is None or (paths and _input_bytes(paths) > CHECKS_MAX_BYTES):
        return None
    from kptrace.cli.dest import service_at

    return service_at(cluster, str(f.dst), f.dport, f.proto)


def _findings(trace: Trace, node: Node, cluster: list[Node], paths: list[Path],
              node_ip: list[str] | None, pod_cidr: list[str] | None) -> list[Finding]:
    """The check findings that cite a step of this trace. Large inputs (a 10k-service node) are read
    lazily for speed; the checks read every rule and address, so they are left to `kptrace check` there."""
    # A live node (no paths) is checked like its bundle would be: the same facts, the same findings.
    if (paths and _input_bytes(paths) > CHECKS_MAX_BYTES) or \
            any("parsed when the trace reads them" in a for rs in node.rulesets.values() for a in rs.assumptions):
        return []
    from kptrace.checks.facts import contexts
    from kptrace.checks.run import run_all
    from kptrace.checks.trace import findings_for_trace

    # The nodes the trace walked, with the same --pod-cidr/--node-ip and inferred facts: one load.
    return findings_for_trace(trace, run_all(contexts(cluster)))


CHECKS_MAX_BYTES = 4 * 1024 * 1024  # past this `why --checks` leaves the checks to `kptrace check`


def _input_bytes(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        files = (f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        total += sum(f.stat().st_size for f in files if f.exists())
    return total


def _source(src: str | None, cluster: list[Node], dst: IPAddress) -> IPAddress:
    """--from, or the address the first node would send from (the route's `src`, else its egress interface's)."""
    if src is not None:
        try:
            return ip_address(src)
        except ValueError:
            raise KptraceError(f"--from '{src}' is not an IP address") from None
    from kptrace.walkers.routing import lookup

    node = cluster[0]
    res = lookup(node, dst)
    if res.kind == "local" and node.node_ips:
        return next((a for a in node.node_ips if a.version == dst.version), node.node_ips[0])
    if res.kind == "local":
        # A node address as destination (kube-ipvs0 VIP, NodePort): send from the node's main address.
        res = lookup(node, ip_address("192.0.2.1" if dst.version == 4 else "2001:db8::1"))  # documentation addresses: the default route
    if res.route is not None and res.route.src is not None:
        return res.route.src
    devs = [h.dev for h in res.nexthops if h.dev]
    candidates = [a for a in node.addresses if a.address.version == dst.version and not a.address.ip.is_loopback
                  and a.scope != "link"]
    for a in candidates:
        if a.iface in devs:
            return a.address.ip
    ips = [a for a in node.node_ips if a.version == dst.version] + [a.address.ip for a in candidates]
    return ips[0] if ips else ip_address("127.0.0.1" if dst.version == 4 else "::1")


def _mark(text: str | None) -> int:
    if text is None:
        return 0
    try:
        value = int(text, 0)
    except ValueError:
        raise KptraceError(f"--mark '{text}': expected a number such as 0x4000") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise KptraceError(f"--mark '{text}': a mark is 32 bits")
    return value


def _network(text: str) -> IPv4Network | IPv6Network:
    try:
        return ip_network(text, strict=False)
    except ValueError:
        raise KptraceError(f"--service-cidr '{text}' is not a network (e.g. 10.96.0.0/12)") from None


def choose_start(cluster: list[Node], src: IPAddress, dst: IPAddress, name: str | None) -> tuple[Node, list[str]]:
    """The node the packet starts on, and what kptrace assumed to choose it.

    A node's own address or pod: that node. A client outside the cluster sends to an address some
    node owns (its address, a NodePort, an externalIP or LoadBalancer IP bound on it), else its
    packet reaches the node it shares a link with; failing both, the first node, and it says so.
    """
    if name is not None or len(cluster) == 1:
        return start_node(cluster, src, name), []
    for n in cluster:
        if src in n.local_addresses():
            return n, []
    for n in cluster:
        if n.pod_subnet is not None and src.version == n.pod_subnet.version and src in n.pod_subnet:
            return n, []
    owners = [n for n in cluster if dst in n.local_addresses() or _local_route(n, dst)]
    if len(owners) == 1:
        return owners[0], [f"the client is outside the cluster; its packet enters {owners[0].name}, which owns {dst} "
                           "(use --node to change)"]
    linked = [n for n in cluster if any(a.address.version == src.version and src in a.address.network
                                        and a.scope != "host" and not a.address.ip.is_loopback for a in n.addresses)]
    if len(linked) == 1:
        return linked[0], [f"the client is outside the cluster; its packet enters {linked[0].name}, the node on its "
                           f"subnet (use --node to change)"]
    first = owners[0] if owners else cluster[0]
    why = (f"several nodes own {dst} ({', '.join(n.name for n in owners)})" if owners else
           f"no node of the input owns {dst} or shares a subnet with {src}")
    return first, [f"the client is outside the cluster and {why}: the packet is traced from {first.name} "
                   "(use --node to say where it enters)"]


def _local_route(n: Node, dst: IPAddress) -> bool:
    return any(r.type == "local" and dst.version == r.dst.version and dst in r.dst for r in n.routes)


def start_node(cluster: list[Node], src: IPAddress, name: str | None) -> Node:
    if name is not None:
        for n in cluster:
            if n.name == name:
                return n
        raise KptraceError(f"--node '{name}': no such node in the input ({', '.join(n.name for n in cluster)})")
    for n in cluster:
        if src in n.local_addresses():
            return n
    for n in cluster:
        if n.pod_subnet is not None and src.version == n.pod_subnet.version and src in n.pod_subnet:
            return n
    return cluster[0]


def echo(text: str) -> None:
    """typer.echo's output, without importing typer: the text and a newline, ANSI codes removed unless
    stdout is a terminal, flushed."""
    import codecs
    import sys

    out = sys.stdout
    if codecs.lookup(getattr(out, "encoding", None) or "ascii").name == "ascii":
        import typer  # click re-wraps a misconfigured (ASCII) stdout: let it

        typer.echo(text)
        return
    try:
        tty = out.isatty()
    except Exception:  # noqa: BLE001 - click's isatty() answers False for any stream that cannot say
        tty = False
    out.write(text + "\n" if tty else _ANSI.sub("", text + "\n"))
    out.flush()


_ANSI = re.compile(r"\033\[[;?0-9]*[a-zA-Z]")  # click's strip_ansi


def register(app: typer.Typer) -> None:
    import typer

    from kptrace.whatif.cli import HELP as WHAT_IF_HELP

    def why(
        dest: str = typer.Argument(..., help="Destination: IP:PORT, IP:PORT/PROTO, IP (icmp), [IPv6]:PORT, or a Service: "
                                   "ns/name:port or svc/ns/name:port (resolved from the rules' comments)."),
        src: str = typer.Option(None, "--from", help="Source address (default: a node address, i.e. locally generated)."),
        proto: str = typer.Option(None, "--proto", "-p", help="tcp, udp, sctp or icmp (default tcp, icmp without a port)."),
        sport: int = typer.Option(None, "--sport", help="Source port, for rules that test it.", min=1, max=65535),
        in_iface: str = typer.Option(None, "--in-iface", help="Interface the packet arrives on (default: derived and stated)."),
        dump: list[Path] = typer.Option(None, "--dump", "-d", help="A dump file, bundle directory or bundle .tar.gz; repeatable."),
        node_ip: list[str] = typer.Option(None, "--node-ip", help="An address of this node (addrtype LOCAL); repeatable."),
        pod_cidr: list[str] = typer.Option(None, "--pod-cidr", help="The cluster's pod CIDR (default: read from kube-proxy's rules)."),
        on: str = typer.Option(None, "--node", help="The node the packet starts on (default: the one owning --from or its pod "
                               "subnet; for an outside client the one owning the destination, else the one on its subnet)."),
        state: str = typer.Option("new", "--state", help="The packet's conntrack state: new (a connection's first packet), "
                                  "established (a later one), related, or reply (the answer direction)."),
        mark: str = typer.Option(None, "--mark", help="The packet's mark when it enters, e.g. 0x4000."),
        service_cidr: list[str] = typer.Option(None, "--service-cidr", help="The cluster's Service range (default: node.yaml); "
                                               "a destination in it that no Service has is answered NO_SERVICE."),
        demo: bool = typer.Option(False, "--demo", help="Use the demo cluster shipped with kptrace (flannel VXLAN, node-a and node-b)."),
        output: OutputFormat = typer.Option(OutputFormat.human, "--output", "-o", case_sensitive=False,
                                            help="human, json or yaml."),
        checks: bool = typer.Option(True, "--checks/--no-checks", help="Show the `kptrace check` findings at the steps they affect (inputs under 4 MiB; "
                                    "`kptrace check` for larger ones)."),
        strict: bool = typer.Option(False, "--strict", help="Parse every rule of every dump (large iptables-save and nft dumps are otherwise read lazily)."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the cache of large dumps (KPTRACE_NO_CACHE=1)."),
        detail: Detail = typer.Option(Detail.summary, "--detail", help="minimal, summary or full."),
        width: int = typer.Option(None, "--width", min=40, help="Columns for the human view (default: COLUMNS or the terminal)."),
        what_if: list[str] = typer.Option(None, "--what-if", help=WHAT_IF_HELP),
        suggest_fix: bool = typer.Option(False, "--suggest-fix", help="When the packet does not arrive, search the smallest "
                                         "set of candidate changes (the checks' remediations and the fixes they imply) that "
                                         "makes it arrive, each verified by re-tracing on the model (docs/what-if.md)."),
        suggest_max_size: int = typer.Option(3, "--suggest-max-size", min=1, max=5,
                                             help="--suggest-fix: the largest set of changes tried."),
    ) -> None:
        """Trace one packet: which rule, route or setting decides its fate, step by step.

        Examples:

          kptrace why 10.96.0.10:53 --proto udp --from 10.244.1.5 --demo

          kptrace why 192.168.0.2:30080 --from 203.0.113.7 --dump node-a/ -o json

          kptrace why svc/kube-system/kube-dns:dns --from 10.244.1.5 --demo

          kptrace why 10.244.2.5:8080 --from 10.244.1.5 --dump node-a/ --what-if 'iptables -P FORWARD ACCEPT'

        Exit codes: 0 accepted, delivered or forwarded; 1 dropped, rejected, no route or no Service (on any
        branch, or its reply fails); 2 usage error or unusable input; 3 internal error; 4 undetermined.
        """
        raise typer.Exit(run(dest, src, proto, sport, in_iface, dump, node_ip, pod_cidr, on, state, mark, service_cidr,
                             demo, output, checks, strict, no_cache, detail, width, what_if, suggest_fix,
                             suggest_max_size))

    app.command(name="why")(why)
