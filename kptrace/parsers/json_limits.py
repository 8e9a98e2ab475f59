"""Limits every JSON input is held to: `ip -j`, `bridge -j` and `nft -j` print a few levels of nesting.

A decoded entry nested deeper than MAX_JSON_DEPTH is refused where it starts, before a parser (or a
walk over its expressions) recurses into it: `ip-addr.json:1:1: JSON nested deeper than 64 levels`.
Python's own decoder stops near 1,000 levels with a RecursionError; each parser turns that into the
same one-line error.
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64


def json_depth(obj: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """How deeply `obj` nests lists and objects (a scalar is 0), counted without recursion; counting
    stops past `limit` (the answer is then limit + 1)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            items: Any = o.values()
        elif isinstance(o, list):
            items = o
        else:
            continue
        d += 1
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        stack.extend((x, d) for x in items if isinstance(x, (dict, list)))
    return deepest


def too_deep(obj: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """The message for an entry nested deeper than `limit`, or None."""
    return f"JSON nested deeper than {limit} levels; no command kptrace reads prints that" \
        if json_depth(obj, limit) > limit else None


def recursion_message(e: BaseException) -> str:
    """A decoder's RecursionError (or a number too long to convert) as one line."""
    if isinstance(e, RecursionError):
        return "invalid JSON: nested too deeply to read (no command kptrace reads prints that)"
    return f"invalid JSON: {str(e)[:160]}"


# What a parser meets in JSON whose shape is wrong (a key missing, a number where a list belongs).
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def malformed(e: Exception) -> str:
    """One line for a MALFORMED exception met while reading a JSON entry."""
    if isinstance(e, KeyError):
        return f"the key {str(e)[:60]} is missing"
    if isinstance(e, (TypeError, AttributeError)):
        return "a value is not of the type the command prints"
    return f"a value kptrace cannot read ({str(e)[:80]})"
