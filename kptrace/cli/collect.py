"""`kptrace collect`: capture this node, read-only, into a bundle other kptrace commands read with --dump."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.text import Text

from kptrace.errors import ExitCode, KptraceError
from kptrace.render.safe import printable, safe_console

if TYPE_CHECKING:
    from kptrace.collect.capture import Capture
    from kptrace.collect.live import Options
    from kptrace.model.node import Node


def collect(
    output: Path = typer.Option(None, "--output", "-o", help="Bundle to write: NAME.tar.gz, a new directory, or - "
                                "(the .tar.gz on stdout). An existing directory (or one ending in /) gets "
                                "kptrace-HOST-TIME.tar.gz inside. Default: kptrace-HOST-TIME.tar.gz here. Nothing that "
                                "exists is overwritten."),
    include: list[str] = typer.Option(None, "--include", help="Also collect an optional part: conntrack "
                                      "(every tracked connection; can be large). Repeatable."),
    redact: bool = typer.Option(False, "--redact", help="Replace public IP addresses and this node's host "
                                "names, consistently, so the bundle can be shared. The mapping is kept nowhere."),
    node_name: str = typer.Option(None, "--node-name", envvar="KPTRACE_NODE_NAME", help="The Kubernetes node "
                                  "name for node.yaml (default: the host name)."),
    node_ip: list[str] = typer.Option(None, "--node-ip", help="An address of this node for node.yaml; repeatable."),
    pod_cidr: str = typer.Option(None, "--pod-cidr", help="This node's pod CIDR (spec.podCIDR) for node.yaml."),
    timeout: float = typer.Option(60.0, "--timeout", min=1.0, help="Seconds each command may take."),
    host_root: str = typer.Option(None, "--host-root", envvar="KPTRACE_HOST_ROOT", help="The host's root "
                                  "filesystem, mounted read-only (the DaemonSet mounts / at /host): iptables-save is "
                                  "then the host's own, run in it with chroot; both versions go in manifest.json."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar; warnings are still printed."),
    script: bool = typer.Option(False, "--script", help="Print a POSIX sh script that writes the same bundle with "
                                "only the shell, coreutils and the node's own tools (for nodes whose Python is older "
                                "than 3.11): `kptrace collect --script > collect.sh`, then `sudo sh collect.sh` there."),
) -> None:
    """Capture this node's netfilter rules, routes, links, neighbours and settings into a bundle.

    Read-only: it only lists and saves; nothing on the node changes.

    Run it as root: iptables-save, nft and conntrack need CAP_NET_ADMIN. As another user it collects
    what it can read and names what it could not.

    Exit codes: 0 everything collected; 4 written, but some parts are missing (named on stderr and in
    manifest.json); 2 usage error, or the bundle could not be written.

    Examples:

      sudo kptrace collect -o node-a.tar.gz

      kptrace why 10.96.0.10:53 --proto udp --dump node-a.tar.gz

      kptrace collect --script > collect.sh; scp collect.sh node-a:; ssh node-a sudo sh collect.sh -o /tmp/b
    """
    if script:
        from kptrace.collect.script import script as collect_script

        typer.echo(collect_script(), nl=False)
        return
    from kptrace.collect import bundle
    from kptrace.collect.live import INCLUDABLE, Options, hostname
    from kptrace.collect.live import collect as run_collect
    from kptrace.collect.redact import Redactor

    parts = [p.strip().lower() for item in include or [] for p in item.split(",") if p.strip()]
    for p in parts:
        if p not in INCLUDABLE:
            raise KptraceError(f"--include '{p}': expected one of {', '.join(INCLUDABLE)}")
    for ip in node_ip or []:
        _check_ip(ip)
    if pod_cidr is not None:
        _check_cidr(pod_cidr)
    started = bundle.now()
    host = hostname()
    redactor = Redactor([host, *([node_name] if node_name else [])]) if redact else None
    # Redacted, the host name leaves the file name and the tarball's top directory too.
    name = bundle.default_name(redactor.host(host) if redactor else host, started)
    to_stdout = output is not None and str(output) == "-"
    out = None if to_stdout else _output_path(output, name)
    err = safe_console(stderr=True)
    if redactor is not None and redactor.unreplaceable:
        err.print(Text("warning: ", style="yellow") + Text(
            "--redact: a host name too short or too common a word to replace inside the dumps is replaced only in "
            "the file name, hostname.txt, node.yaml and manifest.json"), highlight=False, soft_wrap=True)
    options = Options(include=frozenset(parts), timeout=timeout, node_name=node_name, node_ips=tuple(node_ip or ()),
                      pod_cidr=pod_cidr, host_root=host_root or None)
    caps = _run(run_collect, options, err, quiet)
    meta = bundle.Meta(host, node_name or host, started, bundle.now() - started, tuple(parts))
    try:
        if out is None:
            bundle.write_tar(caps, sys.stdout.buffer, name, meta, redactor)
            written: Path | str = "stdout"
        else:
            written = bundle.write_bundle(caps, out, meta, redactor)
    except FileExistsError:
        # It appeared while collecting: nothing was written through it, and it is left as it is.
        raise KptraceError(f"{out} exists; kptrace collect does not overwrite files") from None
    except OSError as e:
        raise KptraceError(f"cannot write {out or 'stdout'}: {e.strerror or e}") from None
    versions = next((c.facts["iptables_versions"] for c in caps if "iptables_versions" in c.facts), None)
    if isinstance(versions, dict) and versions.get("mismatch"):
        err.print(Text("warning: ", style="yellow") + Text(printable(
            f"iptables: the host's is {versions.get('host')}, the one beside kptrace {versions.get('container')}; "
            f"the rules were read with the {versions.get('used')}'s (manifest.json: iptables_versions)", one_line=True)),
            highlight=False, soft_wrap=True)
    elif isinstance(versions, dict) and host_root and versions.get("used") != "host":
        err.print(Text("warning: ", style="yellow") + Text(printable(f"--host-root: {versions.get('note')}",
                                                                      one_line=True)), highlight=False, soft_wrap=True)
    for note in redactor.crowded if redactor is not None else []:
        err.print(Text("warning: ", style="yellow") + Text(f"--redact: {note}"), highlight=False, soft_wrap=True)
    warns = [c for c in caps if c.warn]
    for c in warns:
        msg = redactor.text(c.message) if redactor else c.message
        err.print(Text("warning: ", style="yellow") + Text(printable(f"{c.name}: {msg}", one_line=True)),
                  highlight=False, soft_wrap=True)
    files = sum(1 for c in caps if c.data is not None)
    summary = f"wrote {printable(str(written), one_line=True)} ({files} files"
    summary += f", {len(warns)} parts not collected)" if warns else ")"
    err.print(Text(summary), highlight=False, soft_wrap=True)
    if out is not None:
        typer.echo(str(written))
    raise typer.Exit(int(ExitCode.INCONCLUSIVE if warns else ExitCode.OK))


def live_node(node_ips: list[str], pod_cidrs: list[str]) -> Node:
    """This node, read live for `kptrace why`; the parts that could not be read are named on stderr."""
    from kptrace.collect import live

    node, caps = live.live_node(node_ips, pod_cidrs)
    err = safe_console(stderr=True)
    for c in caps:
        if c.warn:
            err.print(Text("warning: ", style="yellow") + Text(printable(f"live: {c.message}", one_line=True)),
                      highlight=False, soft_wrap=True)
    return node


def _check_ip(raw: str) -> None:
    from ipaddress import ip_address

    try:
        ip_address(raw)
    except ValueError:
        raise KptraceError(f"--node-ip '{raw}' is not an IP address") from None


def _check_cidr(raw: str) -> None:
    """--pod-cidr as node.yaml will hold it: one CIDR (`10.244.1.0/24`), ASCII digits only."""
    from ipaddress import ip_network

    try:
        if not raw.isascii() or "/" not in raw:
            raise ValueError
        ip_network(raw.strip(), strict=False)
    except ValueError:
        raise KptraceError(f"--pod-cidr '{raw}' is not a CIDR (e.g. 10.244.1.0/24)") from None


def _output_path(output: Path | None, name: str) -> Path:
    """Where the bundle goes; refused before collecting when something is already there (a file, a
    directory, a link, even a dangling one). bundle.write_bundle refuses it again, atomically."""
    if output is None:
        out = Path(f"{name}.tar.gz")
    elif output.is_dir() or str(output).endswith("/"):
        out = output / f"{name}.tar.gz"
    else:
        out = output
    if os.path.lexists(out):
        raise KptraceError(f"{out} exists; kptrace collect does not overwrite files")
    if not out.parent.is_dir():
        raise KptraceError(f"{out.parent}: no such directory (kptrace collect creates the bundle, not its parents)")
    return out


def _run(run_collect: Callable[..., list[Capture]], options: Options, err: Console, quiet: bool) -> list[Capture]:
    if quiet:
        return run_collect(options)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("collecting", total=None)

        def progress(title: str, done: int, total: int) -> None:
            bar.update(task, description=title, completed=done, total=total)

        return run_collect(options, progress=progress)


def register(app: typer.Typer) -> None:
    app.command(name="collect")(collect)
