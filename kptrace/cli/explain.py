"""`kptrace explain KPTnnn`: print a check's page (what it detects, why traffic breaks, how to fix it)."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from kptrace.errors import KptraceError


def explain(
    key: str = typer.Argument(None, metavar="[KPTnnn|NAME]", help="A check's id or name; without it, list the checks."),
    width: int = typer.Option(None, "--width", min=40, help="Columns (default: COLUMNS or the terminal's; piped: "
                              "no wrapping)."),
) -> None:
    """Print a check's documentation page, or list every check.

    Exit codes: 0 printed; 2 no such check.

    Examples:

      kptrace explain KPT101

      kptrace explain forward-policy-drop
    """
    from kptrace.checks.registry import all_checks, doc_page, get_check

    from kptrace.render.human import make_console

    console = make_console(width)
    if key is None:
        table = Table("check", "severity", "name", "summary", box=None, pad_edge=False)
        for spec in all_checks():
            table.add_row(Text(spec.id), Text(spec.severity.value), Text(spec.name), Text(spec.summary))
        console.print(table)
        return
    spec = get_check(key)
    if spec is None:
        raise KptraceError(f"unknown check '{key}' (`kptrace explain` lists them)")
    text = doc_page(spec.id)
    if console.is_terminal:
        from rich.markdown import Markdown

        console.print(Markdown(text))
    else:
        typer.echo(text, nl=False)


def register(app: typer.Typer) -> None:
    app.command(name="explain")(explain)
