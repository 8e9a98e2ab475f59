"""Limits every YAML input is held to (`kubectl get nodes -o yaml`, a KubeletConfiguration; node.yaml has
its own in load.py): checked on PyYAML's event stream, which is read without recursion, before anything
is composed or built.

- anchors and aliases (`&a`, `*a`) are refused where they are: none of these files needs them, and an
  alias bomb (nine levels of nine aliases: 387M values) expands past any memory when walked;
- nesting deeper than MAX_YAML_DEPTH is refused where it starts (PyYAML's composer recurses and stops
  near 1,000 levels with a RecursionError);
- an input longer than MAX_YAML_BYTES is refused at once.

Each is one located line, `file:line:col: what is wrong`.
"""

from __future__ import annotations

import io
from typing import Any

from kptrace.errors import ParseError

MAX_YAML_DEPTH = 64  # `kubectl get nodes -o yaml` nests about 8 levels; a KubeletConfiguration 4
MAX_YAML_BYTES = 64 * 1024 * 1024  # a list of 5,000 nodes is ~50 MB of YAML


def check_yaml(text: str, file: str, what: str = "this file", max_depth: int = MAX_YAML_DEPTH) -> None:
    """Raise a located ParseError for an anchor, an alias, or nesting past `max_depth`. Syntax errors are
    left to the caller's own parse (which says them its way)."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise ParseError(file, 1, 1, f"{len(text)} characters of YAML, more than {what} holds "
                                     f"({MAX_YAML_BYTES // (1024 * 1024)} MiB max)")
    depth = 0
    try:
        for ev in yaml.parse(io.StringIO(text), Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None):
                raise ParseError(file, *_at(ev.start_mark), f"YAML anchors and aliases (&x, *x) are not read in {what}",
                                 _line(text, ev.start_mark))
            if isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise ParseError(file, *_at(ev.start_mark), f"YAML nested deeper than {max_depth} levels; "
                                                                f"{what} is not", _line(text, ev.start_mark))
            elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return  # the caller's parse says where and what


def _at(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _line(text: str, mark: Any) -> str:
    if mark is None:
        return ""
    lines = text.splitlines()
    return lines[mark.line][:200] if 0 <= mark.line < len(lines) else ""
