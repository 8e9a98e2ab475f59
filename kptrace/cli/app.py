"""The `kptrace` command: wires the sub-commands and turns errors into one line and an exit code.

Start-up is part of every answer: this module imports no CLI framework. `main` first offers the command
line to kptrace/cli/fast.py (a plain `kptrace why`, run without typer); everything else goes to the typer
app, built on first use (`app` is made by `_app()`, and `from kptrace.cli.app import app` still works)."""

from __future__ import annotations

import io
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from kptrace import __version__
from kptrace.errors import ExitCode, KptraceError

if TYPE_CHECKING:
    import typer

HELP = (
    "Follow a hypothetical packet through a Kubernetes node's netfilter state and say what happens to it.\n\n"
    "Exit codes: 0 accepted/delivered/forwarded, 1 dropped/rejected/no route, 2 usage or unusable input, "
    "3 internal error, 4 undetermined."
)
state = {"debug": False}
_APP: list[typer.Typer] = []


def _app() -> typer.Typer:
    """The typer app (typer and click imported here, once)."""
    if _APP:
        return _APP[0]
    import typer
    from typer.core import TyperGroup

    class _Group(TyperGroup):
        """The command line as kubectl users type it: `--debug` anywhere before `--`, and `--demo NAME`
        (kptrace/demos.py) turned into the `--demo` flag with NAME selected, before click parses it."""

        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            from kptrace import demos

            return super().parse_args(ctx, demos.hoist(_hoist_debug(list(args))))

    app = typer.Typer(
        cls=_Group,
        name="kptrace",
        help=HELP,
        pretty_exceptions_enable=False,
        no_args_is_help=True,
        add_completion=True,
        # kubectl's habits: -h as well as --help, in every command (click's contexts inherit it).
        context_settings={"help_option_names": ["-h", "--help"]},
    )

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

    _APP.append(app)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _print_error(prefix: str, message: str) -> None:
    # rich is imported here, not at start-up: `-o json` runs never print with it.
    from rich.text import Text

    from kptrace.render.safe import printable, safe_console

    # The message quotes inputs (file names, rule text): one line, control characters escaped.
    line = Text(prefix, style="red") + Text(printable(message, one_line=True))
    safe_console(stderr=True).print(line, highlight=False, soft_wrap=True)


def _show_usage_error(e: Exception) -> None:
    """A usage error in kptrace's one-line style: `error: No such option: --frm (kptrace why --help)`."""
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else "kptrace"
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    _print_error("error: ", f"{message} ({path} --help)")


COMMANDS = ("why", "check", "explain", "collect", "graph", "services", "parse", "sweep", "diff", "dns")


def _register(argv: list[str] | None = None) -> None:
    """Register the commands; only the one being run when argv names it (each pulls in its own
    parsers and renderers, and start-up time is part of every answer)."""
    import importlib

    wanted = [a for a in (argv or [])[:4] if not a.startswith("-")][:1]
    names = wanted if wanted and wanted[0] in COMMANDS else list(COMMANDS)
    for name in names:
        importlib.import_module(f"kptrace.cli.{name}").register(_app())


def _check_dump_args(argv: list[str]) -> None:
    """`--dump ''` (an unset shell variable) is an error: click would make it Path(''), the current directory."""
    for i, a in enumerate(argv):
        if a in ("--dump=", "-d=") or (a in ("--dump", "-d") and i + 1 < len(argv) and argv[i + 1] == ""):
            raise KptraceError("--dump '': an empty path (give a file, a bundle directory, a .tar.gz or - for stdin)")


class _QuietClosedPipe(io.RawIOBase):
    """stdout's file descriptor, written until the reader goes away (`kptrace … | head -1`); after that
    output is discarded, so the command still ends with its own exit code, not a BrokenPipeError."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.reader_gone = False

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        if self.reader_gone:
            return len(data)
        try:
            return os.write(self.fd, data)
        except BrokenPipeError:
            self.reader_gone = True
            return len(data)

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def fileno(self) -> int:
        return self.fd


def _guard_stdout() -> None:
    out = sys.stdout
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test runner's buffer)
    out.flush()
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_QuietClosedPipe(fd)), encoding=out.encoding,
                                  errors=out.errors, line_buffering=bool(out.line_buffering))


def _hoist_debug(argv: list[str]) -> list[str]:
    """`--debug` anywhere before `--` (kubectl takes global flags after the subcommand) moves to the front."""
    cut = argv.index("--") if "--" in argv else len(argv)
    if "--debug" not in argv[:cut]:
        return argv
    return ["--debug", *[a for a in argv[:cut] if a != "--debug"], *argv[cut:]]


def main() -> None:
    argv = _hoist_debug(sys.argv[1:])
    if not os.environ.get("KPTRACE_NO_FAST"):
        from kptrace.cli import fast

        code = fast.main(argv)
        if code is not None:
            sys.exit(code)
    import typer

    _register(argv)
    _guard_stdout()
    try:
        _check_dump_args(argv)
        # Without standalone mode click returns the command's exit code instead of exiting.
        code = _app()(args=argv, prog_name="kptrace", standalone_mode=False)
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
        internal_error(e)


def internal_error(e: Exception) -> NoReturn:
    """A bug: one line on stderr and exit 3, never a traceback."""
    msg = f"{type(e).__name__}: {e} — rerun with --debug for the traceback"
    _print_error("internal error (KPT003): ", msg)
    sys.exit(int(ExitCode.INTERNAL))
