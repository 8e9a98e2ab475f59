"""The nft set index (walkers/nft_expr.py) finds the same element as testing every element in order."""

from __future__ import annotations

import random
from ipaddress import ip_address

import pytest

from kptrace.parsers.nft_text import parse_nft_text
from kptrace.walkers import nft_expr
from kptrace.walkers.nft_expr import TV, element_matches


def _first(elements: list, v: TV) -> object:  # type: ignore[type-arg]
    unknown = None
    for el in elements:
        r = element_matches(v, el.key)
        if r is True:
            return el
        if r is not True and r is not False:
            unknown = unknown or r
    return unknown


def _ruleset(rng: random.Random) -> str:
    ips = [f"10.96.{rng.randrange(4)}.{rng.randrange(10)}" for _ in range(60)]
    svc = sorted({f"{ip} . {rng.choice(['tcp', 'udp'])} . {rng.choice([53, 80, 443])} : goto c" for ip in ips})
    plain = sorted(set(ips))
    mixed = sorted(set(ips[:30])) + ["10.97.0.0/16", "10.98.0.1-10.98.0.9"]
    return ("table ip t {\n"
            "\tmap m {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n"
            f"\t\telements = {{ {', '.join(svc)} }}\n\t}}\n"
            f"\tset s {{\n\t\ttype ipv4_addr\n\t\telements = {{ {', '.join(plain)} }}\n\t}}\n"
            f"\tset i {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {', '.join(mixed)} }}\n\t}}\n"
            "\tchain c {\n\t}\n}\n")


@pytest.mark.parametrize("seed", range(4))
def test_indexed_lookup_finds_the_first_matching_element(seed: int) -> None:
    rng = random.Random(seed)
    rs = parse_nft_text(_ruleset(rng), "t.nft")
    sets = rs.tables[("ip", "t")].sets
    assert all(len(s.elements) >= 16 for s in sets.values())
    for _ in range(300):
        addr = TV("addr", ip_address(f"10.{rng.choice([96, 97, 98])}.{rng.randrange(4)}.{rng.randrange(12)}"))
        concat = TV("concat", (addr, TV("proto", rng.choice([6, 17, 1])), TV("port", rng.choice([53, 80, 443, 8080]))))
        for name, v in (("m", concat), ("s", addr), ("i", addr), ("m", addr), ("s", concat)):
            s = sets[name]
            assert _first(nft_expr._candidates(s, v), v) == _first(s.elements, v), (name, v)
