"""Where a parsed object came from, so every explanation can cite file:line."""

from __future__ import annotations

from kptrace.model._compiled import dataclass


@dataclass(frozen=True, slots=True)
class Source:
    file: str
    line: int
    col: int = 1
    text: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


# Rules kptrace adds itself (kube-proxy's base-chain jumps missing from a test dump) cite this file.
ASSUMED_FILE = "<assumed:kube-proxy>"
