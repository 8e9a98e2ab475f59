"""ipset parser: golden models of real `ipset save` / `ipset list` output, and targeted checks.

The fixtures come from the real ipset tool in a netns (tests/lab_tools/make_ipset_fixtures.py).
Each `<fixture>.model.yml` in tests/fixtures/ipset/golden is generated, not hand-written: it starts
with a `_hash` line that this test recomputes, so an edit by hand fails. Regenerate with

    KPTRACE_REGEN_GOLDEN=1 python -m pytest -q tests/parsers/test_ipset.py tests/parsers/test_ipvsadm.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from enum import Enum
from ipaddress import IPv4Network, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.ipvs import SetPort
from kptrace.model.source import Source
from kptrace.parsers.ipset import parse_ipset, parse_ipset_list, parse_ipset_save

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ipset"
REGEN = os.environ.get("KPTRACE_REGEN_GOLDEN") == "1"


def to_plain(obj: Any) -> Any:
    """A model as YAML-able data: dataclasses as mappings, Sources as `file:line`, addresses as text."""
    if isinstance(obj, Source):
        return f"{obj.file}:{obj.line}"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) not in (None, (), [], {}, False)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    return str(obj)


def check_golden(fixture: Path, model: Any, golden_dir: Path) -> None:
    body = yaml.safe_dump(to_plain(model), sort_keys=False, allow_unicode=True, width=200)
    digest = hashlib.sha256(body.encode()).hexdigest()
    golden = golden_dir / f"{fixture.stem}.model.yml"
    if REGEN:
        golden.write_text(f"_hash: {digest}\n{body}")
    assert golden.exists(), f"{golden} is missing: run with KPTRACE_REGEN_GOLDEN=1"
    head, _, stored = golden.read_text().partition("\n")
    assert head == f"_hash: {hashlib.sha256(stored.encode()).hexdigest()}", \
        f"{golden} was edited by hand: regenerate it (KPTRACE_REGEN_GOLDEN=1)"
    assert stored == body, f"{fixture.name} parses differently from {golden.name}: regenerate if intended"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.txt")))
def test_golden(name: str) -> None:
    path = FIXTURES / name
    check_golden(path, parse_ipset(path.read_text(), name), FIXTURES / "golden")


def load(name: str) -> dict:  # type: ignore[type-arg]
    return parse_ipset((FIXTURES / name).read_text(), name)


def test_save_and_list_agree() -> None:
    for scenario in ("all-types", "kube-proxy"):
        a, b = load(f"{scenario}.save.txt"), load(f"{scenario}.list.txt")
        assert list(a) == list(b)
        for n in a:
            assert (a[n].type, a[n].family, [(m.parts, m.nomatch, m.comment) for m in a[n].members]) == \
                   (b[n].type, b[n].family, [(m.parts, m.nomatch, m.comment) for m in b[n].members]), n
            assert dict(a[n].options) == dict(b[n].options), n


def test_every_type_and_extension() -> None:
    sets = load("all-types.save.txt")
    assert {s.type for s in sets.values()} >= {"hash:ip", "hash:ip,port", "hash:ip,port,ip", "hash:ip,port,net",
                                               "hash:net", "hash:net,port", "bitmap:port", "list:set"}
    allow = sets["allow-ip"]
    m = allow.members[0]
    assert (m.timeout, m.packets, m.bytes, m.comment) == (299, 5, 300, "client one")
    assert m.source == Source("all-types.save.txt", 2, 1, m.source.text)
    assert allow.option("timeout") == "600" and allow.option("counters") == "" and allow.option("comment") == ""
    assert sets["allow-ip6"].family == 6
    assert sets["masked"].members[0].parts == (IPv4Network("10.1.2.0/24"),)
    svc = {m.text: m.parts[1] for m in sets["svc"].members}
    assert svc["10.96.0.10,udp:53"] == SetPort("udp", 53, "udp:53")
    assert svc["10.96.0.10,icmp:echo-request"] == SetPort("icmp", 8 << 8, "icmp:echo-request")
    assert svc["10.96.0.10,icmp:port-unreachable"].port == 3 << 8 | 3
    assert svc["10.96.0.10,gre:0"] == SetPort("gre", 0, "gre:0")
    assert {m.text: m.parts[1] for m in sets["svc6"].members}["fd00:96::a,ipv6-icmp:echo-request"].port == 128 << 8
    nets = {m.text: m.nomatch for m in sets["nets"].members}
    assert nets == {"10.1.1.0/24": False, "192.0.2.7": False, "10.0.0.0/8": False, "10.1.0.0/16": True}
    assert sets["nets6"].members[0].parts == (ip_network("fd00::5/128"),) and sets["nets6"].members[0].nomatch
    assert [m.parts[0].port for m in sets["ports"].members] == [30080, 31000, 31001, 31002]
    assert sets["ports"].family is None and sets["ports"].members[0].parts[0].proto is None
    assert sets["ports-timeout"].members[0].timeout == 49
    assert sets["iface"].members[0].parts == (IPv4Network("10.0.0.0/8"), "eth0")  # kept, not evaluated
    assert dict(sets["skb"].members[0].options) == {"skbmark": "0x10/0xff", "skbprio": "1:10", "skbqueue": "2"}
    assert [m.text for m in sets["members"].members] == ["allow-ip", "masked"]
    srcnet = sets["srcnet"].members
    assert srcnet[0].parts == (ip_network("198.51.100.20/32"), SetPort("tcp", 80, "tcp:80"), ip_network("203.0.113.128/25"))
    assert srcnet[0].nomatch


def test_list_header_fields_and_terse() -> None:
    lst = load("all-types.list.txt")
    assert lst["svc"].revision is not None and lst["svc"].entries == 7 and lst["svc"].references == 0
    terse = load("all-types.terse.txt")
    assert all(not s.members and not s.members_listed for s in terse.values())
    assert terse["svc"].entries == 7


def test_kube_proxy_sets() -> None:
    sets = load("kube-proxy.save.txt")
    assert sets["KUBE-CLUSTER-IP"].type == "hash:ip,port" and len(sets["KUBE-CLUSTER-IP"].members) == 7
    assert sets["KUBE-NODE-PORT-TCP"].option("range") == "0-65535"
    loop = sets["KUBE-LOOP-BACK"].members
    assert ("10.244.1.12,tcp:8080,10.244.1.12") in [m.text for m in loop]


@pytest.mark.parametrize("text,col,msg", [
    ("add X 10.0.0.1\n", 5, "before its 'create'"),
    ("create X hash:ip\nadd X 10.0.0.300\n", 7, "not an address"),
    ("create X hash:ip,port\nadd X 10.0.0.1\n", 7, "does not have the 2 parts"),
    ("create X hash:ip\nadd X 10.0.0.1 bogus 1\n", 16, "unknown element option"),
    ("create X hash:ip family inet6\nadd X 10.0.0.1\n", 7, "not an IPv6"),
    ("flush X\n", 1, "unknown ipset save command"),
])
def test_errors_are_located(text: str, col: int, msg: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_ipset_save(text, "s")
    assert e.value.col == col and msg in e.value.message


def test_list_errors() -> None:
    with pytest.raises(ParseError):
        parse_ipset_list("Type: hash:ip\n", "l")
    with pytest.raises(ParseError):
        parse_ipset_list("Name: X\nType: hash:ip\nRevision: x\n", "l")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["create", "add", "X", "hash:ip", "hash:ip,port", "bitmap:port", "10.0.0.1", "tcp:80",
                                 "10.0.0.1,tcp:80", "timeout", "5", "nomatch", "comment", '"c"', "Name:", "Type:",
                                 "Members:", "\n", " ", "range", "0-65535", "family", "inet6", "list:set"]), max_size=30))
def test_junk_never_crashes(words: list[str]) -> None:
    try:
        parse_ipset(" ".join(words), "junk")
    except ParseError:
        pass
