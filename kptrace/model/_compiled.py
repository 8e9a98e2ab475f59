"""`dataclass` for the model's classes, with the methods it generates kept compiled between runs.

Python's `dataclasses` writes each class's `__init__`, `__repr__`, `__eq__`, `__hash__`, `__setattr__`
and `__delattr__` as source text and compiles it every time the class is created: for the model's
classes that was most of importing them (docs/performance.md), paid by every `kptrace` process.
This decorator is `dataclasses.dataclass` itself; only while it runs, the text dataclasses hands to
`exec` is looked up in a table of code objects compiled from that exact text (by the same Python),
kept in kptrace's cache directory (kptrace/cache.py: verified entries, `--no-cache`/KPTRACE_NO_CACHE
honoured). The code run is the code the text compiles to, so the classes are the same; a text not in the
table (a new field, another Python) is compiled as dataclasses would, and the table is written back at exit.
"""

from __future__ import annotations

import dataclasses
import sys
from types import CodeType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataclasses import dataclass as dataclass  # mypy's dataclass plugin: the same decorator

_NAME = f"dataclass-code-{sys.implementation.cache_tag}-{sys.hexversion:x}"
_MAX = 2000  # texts kept; past this only the ones this process used are written back
_codes: dict[str, CodeType] = {}
_state = {"loaded": False, "dirty": False, "off": False}
_used: set[str] = set()


def _load() -> None:
    _state["loaded"] = True
    from kptrace import cache

    if not cache.enabled_by_default():
        _state["off"] = True  # never written
        return
    try:
        table = cache._get(_NAME)
    except Exception:  # noqa: BLE001 - a cache can only save time, never fail a run
        table = None
    if isinstance(table, dict):
        _codes.update((k, v) for k, v in table.items() if isinstance(k, str) and isinstance(v, CodeType))
    import atexit

    atexit.register(_save)


def _save() -> None:
    if not _state["dirty"] or _state["off"]:
        return
    from kptrace import cache

    table = _codes if len(_codes) <= _MAX else {k: _codes[k] for k in _used}
    try:
        cache._put(_NAME, table)
    except Exception:  # noqa: BLE001 - best effort, as every cache write
        pass


def _exec(source: Any, globals: dict[str, Any] | None = None, locals: dict[str, Any] | None = None) -> None:
    """`exec` of dataclasses' generated text, from the table when the same text was compiled before."""
    if not isinstance(source, str):
        exec(source, globals, locals)
        return
    code = _codes.get(source)
    if code is None:
        # As exec(source) from dataclasses would: no __future__ flags of this module inherited.
        code = _codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
        _state["dirty"] = True
    _used.add(source)
    exec(code, globals, locals)


if not TYPE_CHECKING:
    def dataclass(cls=None, /, **kwargs):
        """dataclasses.dataclass, its generated methods compiled once (see the module's docstring)."""
        def wrap(c):
            if not _state["loaded"]:
                _load()
            had = "exec" in vars(dataclasses)
            dataclasses.exec = _exec
            try:
                return dataclasses.dataclass(c, **kwargs)
            finally:
                if not had:
                    vars(dataclasses).pop("exec", None)  # (another thread's decorator may have run meanwhile)
        return wrap if cls is None else wrap(cls)
