"""Numbers as commands print them: ASCII digits only.

`str.isdigit()` is true for `²` and `٣`, `str.isdecimal()` for `٣`, regex `\\d` matches both, and
`int("٣٠")` is 30: a port written in Arabic-Indic digits would be read as a port, and `int("²")` raises.
No command kptrace reads prints such digits, so they are text, never a number. Every parser checks a
number with `is_num` (or `[0-9]`, never `\\d`) before `int()`, and bounds its length: Python refuses to
convert more than 4,300 digits, and no counter has more than 20.
"""

from __future__ import annotations

MAX_DIGITS = 20  # 2^64 has 20 digits


def is_num(s: str, max_len: int = MAX_DIGITS) -> bool:
    """`s` is 1 to `max_len` ASCII digits."""
    return 0 < len(s) <= max_len and s.isascii() and s.isdigit()


def ascii_int(s: str) -> int:
    """int(s, 0) of ASCII text of at most 40 characters (`0x4000`, `32766`): ValueError for anything else,
    `٣` and 5,000 digits included (int() reads the one and refuses the other with another message)."""
    if not s.isascii() or len(s) > 40:
        raise ValueError(f"not a number: {s[:40]!r}")
    return int(s, 0)
