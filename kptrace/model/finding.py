"""What a check reports: a finding with its status, severity and the input lines it cites."""

from __future__ import annotations

from enum import Enum

from kptrace.model._compiled import dataclass
from kptrace.model.flow import Flow


class Severity(str, Enum):
    """Impact if the check fails; `--fail-on` compares against this order."""

    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"
    INFO = "INFO"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.HIGH: 3, Severity.MEDIUM: 2, Severity.LOW: 1, Severity.INFO: 0}


class Status(str, Enum):
    """After kube-bench's State: FAIL, WARN, INFO, PASS; and CANNOT_TELL: the input does not show what
    the check needs (it names the input that would settle it). A check never PASSes on what it did not see."""

    FAIL = "FAIL"
    WARN = "WARN"
    INFO = "INFO"
    PASS = "PASS"
    CANNOT_TELL = "CANNOT_TELL"


@dataclass(frozen=True, slots=True)
class Location:
    """An input line a finding cites; line and col are 1-based."""

    file: str
    line: int
    col: int | None = None

    def __post_init__(self) -> None:
        # ansible-lint's MatchError refuses 0 too: a 0 here is a bug in the check, not in the input.
        if self.line < 1 or (self.col is not None and self.col < 1):
            raise ValueError(f"location {self.file}:{self.line}:{self.col}: line and col start at 1")

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" + (f":{self.col}" if self.col is not None else "")


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    name: str
    severity: Severity
    status: Status
    message: str
    locations: tuple[Location, ...] = ()
    remediation: str = ""
    docs_url: str = ""
    node: str | None = None  # which node's bundle, when several are checked together
    settle: tuple[str, ...] = ()  # CANNOT_TELL: the inputs that would settle it
    fix: tuple[str, ...] = ()  # FAIL: the remediation as --what-if changes (kptrace/whatif), when it can be one
    flows: tuple[Flow, ...] = ()  # FAIL: the flows it concerns, when the check names them

    def fingerprint(self) -> str:
        """sha256 of id, first cited file and line, and message: stable across runs on the same inputs."""
        first = self.locations[0] if self.locations else None
        parts = (self.id, first.file if first else "", str(first.line) if first else "", self.message)
        import hashlib  # here: OpenSSL's start-up is paid only by the runs that print findings

        return hashlib.sha256("\0".join(parts).encode()).hexdigest()
