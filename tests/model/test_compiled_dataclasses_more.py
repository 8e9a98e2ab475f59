"""The loader's, the parsers' and model/netfilter.py's, model/source.py's dataclasses go through
kptrace/model/_compiled.py too: each module is executed again under another name with the plain
`dataclasses.dataclass`, and every class and generated method compared (as test_compiled_dataclasses.py
does for the other model modules)."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

from kptrace.model import _compiled
from tests.model.test_compiled_dataclasses import METHODS, _unwrap

MODULES = ["kptrace.model.source", "kptrace.model.netfilter", "kptrace.load", "kptrace.parsers.iptables_save",
           "kptrace.parsers.ip_route", "kptrace.parsers.iptables_list", "kptrace.parsers.iptables_s",
           "kptrace.parsers.paste"]


def _plain(name: str, monkeypatch: pytest.MonkeyPatch) -> object:
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
        assert cls.__doc__ == other.__doc__
        for m in METHODS:
            a, b = _unwrap(vars(cls).get(m)), _unwrap(vars(other).get(m))
            assert (a is None) == (b is None), (cls, m)
            if a is not None and hasattr(a, "__code__"):
                assert a.__code__ == b.__code__, (cls, m)  # type: ignore[union-attr]
                assert (a.__defaults__, a.__kwdefaults__, a.__qualname__) == \
                       (b.__defaults__, b.__kwdefaults__, b.__qualname__), (cls, m)  # type: ignore[union-attr]
