"""A plain `kptrace why` without the CLI framework.

Start-up is part of every answer: importing typer (and click) and dispatching through it cost more than
a second query on a cached dump does (docs/performance.md). `main(argv)` recognises the common shape of a
`why` command line: one destination and the options below, each as `--opt VALUE`, `--opt=VALUE` or a
flag, and calls `kptrace.cli.why.run` with what click would have passed. Anything else (help, `--debug`,
`--demo`, an unknown or misspelt option, a value click would refuse or convert, a short option with its
value attached, `--`, other commands) returns None and the typer app parses the command line as before.
Output and exit codes are the typer path's, byte for byte (tests/cli/test_fast_path.py runs a matrix of
command lines both ways; `KPTRACE_NO_FAST=1` turns this path off).
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

# option -> (parameter, kind): "str" a string, "list" a repeatable string, "path" a repeatable path,
# "int:LO:HI" an integer in range (HI empty: no upper bound), "choice:A,B" one of the values (exactly as
# written: click also takes other cases, which are left to it).
_VALUED: dict[str, tuple[str, str]] = {
    "--from": ("src", "str"),
    "--proto": ("proto", "str"),
    "-p": ("proto", "str"),
    "--sport": ("sport", "int:1:65535"),
    "--in-iface": ("in_iface", "str"),
    "--dump": ("dump", "path"),
    "-d": ("dump", "path"),
    "--node-ip": ("node_ip", "list"),
    "--pod-cidr": ("pod_cidr", "list"),
    "--node": ("on", "str"),
    "--state": ("state", "str"),
    "--mark": ("mark", "str"),
    "--service-cidr": ("service_cidr", "list"),
    "--output": ("output", "choice:human,json,yaml"),
    "-o": ("output", "choice:human,json,yaml"),
    "--detail": ("detail", "choice:minimal,summary,full"),
    "--width": ("width", "int:40:"),
    "--what-if": ("what_if", "list"),
    "--suggest-max-size": ("suggest_max_size", "int:1:5"),
}
_FLAGS: dict[str, tuple[str, bool]] = {
    "--checks": ("checks", True),
    "--no-checks": ("checks", False),
    "--strict": ("strict", True),
    "--no-cache": ("no_cache", True),
    "--suggest-fix": ("suggest_fix", True),
}


def parse(argv: list[str]) -> dict[str, Any] | None:
    """The keyword arguments of `why.run` for a plain `why` command line, else None (typer's to parse)."""
    if not argv or argv[0] != "why" or "_KPTRACE_COMPLETE" in os.environ:
        return None
    kw: dict[str, Any] = {}
    dests: list[str] = []
    i, n = 1, len(argv)
    while i < n:
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            dests.append(arg)
            continue
        if arg in _FLAGS:
            name, flag = _FLAGS[arg]
            kw[name] = flag
            continue
        opt, eq, attached = arg.partition("=")
        value: str | None = attached
        if not eq or not opt.startswith("--"):
            opt, value = arg, None
        spec = _VALUED.get(opt)
        if spec is None:
            return None  # --help, --debug, --demo, an unknown option, `-ojson`, `--`: typer's
        if value is None:
            if i >= n:
                return None
            value = argv[i]
            i += 1
        # An empty value (an unset shell variable), or one click might take for an option: typer's.
        if not value or value.startswith("-"):
            return None
        name, kind = spec
        if kind == "str":
            kw[name] = value
        elif kind in ("list", "path"):
            from pathlib import Path

            kw.setdefault(name, []).append(Path(value) if kind == "path" else value)
        elif kind.startswith("int:"):
            lo, hi = kind.split(":")[1:]
            if not (value.isascii() and value.isdigit() and len(value) <= 6) or int(value) < int(lo) \
                    or (hi and int(value) > int(hi)):
                return None
            kw[name] = int(value)
        else:
            if value not in kind.split(":")[1].split(","):
                return None
            kw[name] = value
    if len(dests) != 1:
        return None
    kw["dest"] = dests[0]
    return kw


def main(argv: list[str]) -> int | None:
    """Run a plain `kptrace why` and return its exit code; None when argv is for the typer app."""
    kw = parse(argv)
    if kw is None or os.environ.get("KPTRACE_DEBUG"):
        return None
    import codecs

    if codecs.lookup(getattr(sys.stdout, "encoding", None) or "ascii").name == "ascii":
        return None  # click re-wraps a misconfigured stdout: typer's
    from kptrace.cli.app import _guard_stdout, _print_error, internal_error
    from kptrace.cli.why import OutputFormat, run
    from kptrace.errors import ExitCode, KptraceError
    from kptrace.render.detail import Detail

    if "output" in kw:
        kw["output"] = OutputFormat(kw["output"])
    if "detail" in kw:
        kw["detail"] = Detail(kw["detail"])
    _guard_stdout()
    try:
        return run(**kw)
    except KptraceError as e:
        _print_error("error: ", str(e))
        return int(e.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.INTERRUPTED)
    except EOFError:
        sys.stderr.write("\n")  # click's Abort: a new line on stderr
        sys.stderr.flush()
        return int(ExitCode.INTERRUPTED)
    except OSError as e:
        if e.errno != errno.EPIPE:
            internal_error(e)
        from typer._click.utils import PacifyFlushWrapper  # as click does for a closed pipe

        sys.stdout = PacifyFlushWrapper(sys.stdout)
        sys.stderr = PacifyFlushWrapper(sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - as kptrace.cli.app.main: exit 3 with one line, never a traceback
        internal_error(e)
