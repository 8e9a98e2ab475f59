from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.routing import KernelModule
from kptrace.parsers.modules import parse_modules
from tests.parsers.test_ip_route import junk_text

MODULES = Path(__file__).resolve().parents[1] / "fixtures" / "modules"


def names(file: str) -> list[str]:
    return [m.name for m in parse_modules((MODULES / file).read_text(), file)]


def test_proc_modules_and_lsmod_agree() -> None:
    proc = names("proc-modules.txt")
    assert len(proc) == 15 and {"br_netfilter", "bridge", "vxlan", "veth", "overlay"} <= set(proc)
    assert names("lsmod.txt") == proc


def test_source_lines() -> None:
    mods = parse_modules((MODULES / "lsmod.txt").read_text(), "modules.txt")
    assert str(mods[0].source) == "modules.txt:2" and mods[0].name == "br_netfilter"  # header skipped


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("vxlan 118784 0 - Live 0x0\nbr/netfilter 32768 0 - Live 0x0\n", 2, 1, "invalid module name"),
        ("vxlan big 0\n", 1, 7, "expected 'name size"),
        ("vxlan\n", 1, 6, "expected 'name size"),
    ],
)
def test_errors_are_located(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_modules(text, "modules.txt")
    assert (e.value.line, e.value.col) == (line, col) and message in e.value.message


VOCAB = ["Module", "Size", "Used", "by", "vxlan", "12288", "0", "-", "Live", "0x0000000000000000", "bridge,stp,"]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), junk_text(VOCAB)))
def test_junk_gives_modules_or_parse_error(text: str) -> None:
    try:
        result = parse_modules(text, "junk")
    except ParseError:
        return
    assert isinstance(result, list) and all(isinstance(m, KernelModule) for m in result)
