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
