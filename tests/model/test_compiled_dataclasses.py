"""kptrace/model/_compiled.py: the classes of every module that uses it (the model, the loader, the
parsers a `why` imports) are the classes `dataclasses.dataclass` makes.

Each module is loaded a second time under another name with the plain decorator, and every
generated method is compared with the one made through the table of compiled code: the same code
object, defaults, annotations and names."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path
from types import FunctionType

import pytest

from kptrace.model import _compiled

MODULES = [f"kptrace.model.{m}" for m in ("flow", "routing", "node", "ipvs", "trace", "observed", "finding", "nft",
                                           "source", "netfilter")] + \
          ["kptrace.load"] + [f"kptrace.parsers.{m}" for m in ("iptables_save", "ip_route", "iptables_list",
                                                                "iptables_s", "paste")]
METHODS = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__", "__getstate__",
           "__setstate__", "__lt__", "__le__", "__gt__", "__ge__")


def _plain(name: str, monkeypatch: pytest.MonkeyPatch) -> object:
    """The module `name` executed again with `dataclass` as the standard library's."""
    ours = importlib.import_module(name)
    assert ours.__file__ is not None
    monkeypatch.setattr(_compiled, "dataclass", dataclasses.dataclass)
    spec = importlib.util.spec_from_file_location("_plain_" + name.replace(".", "_"), Path(ours.__file__))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return mod


def _unwrap(f: object) -> object:
    while hasattr(f, "__wrapped__"):
        f = f.__wrapped__
    return f


@pytest.mark.parametrize("name", MODULES)
def test_same_classes_as_dataclasses_makes(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = importlib.import_module(name)
    src = Path(str(ours.__file__)).read_text()
    assert "from kptrace.model._compiled import dataclass" in src and "import dataclass," not in src
    plain = _plain(name, monkeypatch)
    classes = [c for c in vars(ours).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
               and c.__module__ == ours.__name__]
    assert classes
    for cls in classes:
        other = getattr(plain, cls.__name__)
        assert repr(cls.__dataclass_params__) == repr(other.__dataclass_params__)
        assert [(f.name, f.type, f.default, f.init, f.repr, f.compare, f.hash, f.kw_only)
                for f in dataclasses.fields(cls)] == \
               [(f.name, f.type, f.default, f.init, f.repr, f.compare, f.hash, f.kw_only)
                for f in dataclasses.fields(other)]
        assert getattr(cls, "__slots__", None) == getattr(other, "__slots__", None)
        assert getattr(cls, "__match_args__", None) == getattr(other, "__match_args__", None)
        assert cls.__doc__ == other.__doc__
        for m in METHODS:
            a, b = _unwrap(vars(cls).get(m)), _unwrap(vars(other).get(m))
            assert (a is None) == (b is None), (cls, m)
            if isinstance(a, FunctionType):
                assert isinstance(b, FunctionType)
                assert a.__code__ == b.__code__, (cls, m)
                assert (a.__defaults__, a.__kwdefaults__, a.__qualname__) == \
                       (b.__defaults__, b.__kwdefaults__, b.__qualname__), (cls, m)
                assert {k: repr(v) for k, v in a.__annotations__.items()} == \
                       {k: repr(v) for k, v in b.__annotations__.items()}, (cls, m)
            elif a is not None:
                assert a == b or a is b or m == "__hash__" and a == b, (cls, m)


def test_the_decorator_leaves_dataclasses_as_it_was() -> None:
    @_compiled.dataclass(frozen=True, slots=True)
    class Point:
        x: int
        y: int = 2

    assert "exec" not in vars(dataclasses)
    p = Point(1)
    assert (p, repr(p), hash(p) == hash(Point(1)), p == Point(1, 2)) == (Point(1, 2), "test_the_decorator_leaves_dataclasses_as_it_was.<locals>.Point(x=1, y=2)", True, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 3  # type: ignore[misc]


def test_a_text_is_compiled_once_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    source = "def __create_fn__():\n def f(self):\n  return 41 + 1\n return f"
    monkeypatch.setattr(_compiled, "_codes", {})
    ns: dict[str, object] = {}
    _compiled._exec(source, {}, ns)
    assert source in _compiled._codes and ns["__create_fn__"]()(None) == 42  # type: ignore[operator]
    code = _compiled._codes[source]
    _compiled._exec(source, {}, ns)
    assert _compiled._codes[source] is code
