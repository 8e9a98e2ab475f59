"""One exception family and the exit codes every command shares."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # trace accepted/delivered/forwarded; check found no FAIL at or above --fail-on
    FAIL = 1  # trace dropped/rejected/no route (or mixed with a drop); check found a FAIL
    USAGE = 2  # usage error or unusable input
    INTERNAL = 3  # a bug in kptrace (KPT003)
    INCONCLUSIVE = 4  # trace UNDETERMINED, or checks could only WARN
    INTERRUPTED = 130


class KptraceError(Exception):
    """An error a user can act on; the CLI prints it as one line and exits."""

    exit_code = ExitCode.USAGE


class ParseError(KptraceError):
    """Input that cannot be read, located as file:line:col."""

    def __init__(self, file: str, line: int, col: int, message: str, text: str = "") -> None:
        # Positions are 1-based, like compilers and editors print them.
        self.file, self.line, self.col = file, max(line, 1), max(col, 1)
        self.message, self.text = message, text
        super().__init__(str(self))

    def __reduce__(self) -> tuple[type[ParseError], tuple[str, int, int, str, str]]:
        # Bundles load in worker processes (kptrace check over many nodes): errors travel back pickled.
        return (ParseError, (self.file, self.line, self.col, self.message, self.text))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}: {self.message}"
        if self.text:
            shown = self.text if len(self.text) <= 160 else self.text[:157] + "..."
            where += f' in "{shown}"'
        return where


class InputError(KptraceError):
    """A dump that is missing, unreadable or of an unknown kind."""
