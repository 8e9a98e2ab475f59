"""The `kptrace` command: wires the sub-commands and turns errors into one line and an exit code."""

from __future__ import annotations

import os
import sys

import typer

from kptrace import __version__
from kptrace.errors import ExitCode, KptraceError

app = typer.Typer(
    name="kptrace",
    help=(
        "Follow a hypothetical packet through a Kubernetes node's netfilter state and say what happens to it.\n\n"
        "Exit codes: 0 accepted/delivered/forwarded, 1 dropped/rejected/no route, 2 usage or unusable input, "
        "3 internal error, 4 undetermined."
    ),
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=True,
)
state = {"debug": False}


def _print_error(prefix: str, message: str) -> None:
    # rich is imported here, not at start-up: `-o json` runs never print with it.
    from rich.text import Text

    from kptrace.render.safe import printable, safe_console

    # The message quotes inputs (file names, rule text): one line, control characters escaped.
    line = Text(prefix, style="red") + Text(printable(message, one_line=True))
    safe_console(stderr=True).print(line, highlight=False, soft_wrap=True)


def _show_usage_error(e: Exception) -> None:
    """click's own usage message, with any control character of the arguments it quotes escaped."""
    import io

    from kptrace.render.safe import printable

    buf = io.StringIO()
    e.show(file=buf)  # type: ignore[attr-defined]
    sys.stderr.write(printable(buf.getvalue()))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kptrace {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error instead of one line."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state["debug"] = debug or bool(os.environ.get("KPTRACE_DEBUG"))


COMMANDS = ("why", "check", "explain", "collect", "graph", "services", "parse", "sweep", "diff")


def _register(argv: list[str] | None = None) -> None:
    """Register the commands; only the one being run when argv names it (each pulls in its own
    parsers and renderers, and start-up time is part of every answer)."""
    import importlib

    wanted = [a for a in (argv or [])[:4] if not a.startswith("-")][:1]
    names = wanted if wanted and wanted[0] in COMMANDS else list(COMMANDS)
    for name in names:
        importlib.import_module(f"kptrace.cli.{name}").register(app)


def _check_dump_args(argv: list[str]) -> None:
    """`--dump ''` (an unset shell variable) is an error: click would make it Path(''), the current directory."""
    for i, a in enumerate(argv):
        if a in ("--dump=", "-d=") or (a in ("--dump", "-d") and i + 1 < len(argv) and argv[i + 1] == ""):
            raise KptraceError("--dump '': an empty path (give a file, a bundle directory, a .tar.gz or - for stdin)")


def main() -> None:
    _register(sys.argv[1:])
    try:
        _check_dump_args(sys.argv[1:])
        # Without standalone mode click returns the command's exit code instead of exiting.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except KptraceError as e:
        if state["debug"]:
            raise
        _print_error("error: ", str(e))
        sys.exit(int(e.exit_code))
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
    except (typer.Abort, EOFError):
        sys.exit(int(ExitCode.INTERRUPTED))
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the one place a bug becomes exit 3 instead of a traceback
        # Usage errors come from click (vendored inside newer typer releases): they know how to show themselves.
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            _show_usage_error(e)
            sys.exit(int(ExitCode.USAGE))
        if state["debug"]:
            raise
        msg = f"{type(e).__name__}: {e} — rerun with --debug for the traceback"
        _print_error("internal error (KPT003): ", msg)
        sys.exit(int(ExitCode.INTERNAL))
