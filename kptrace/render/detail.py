"""How much of a trace the tree view shows (`--detail`); its own module so that choosing JSON output
never imports rich."""

from __future__ import annotations

from enum import Enum


class Detail(str, Enum):
    minimal = "minimal"
    summary = "summary"
    full = "full"
