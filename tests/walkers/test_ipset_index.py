"""The ipset index (walkers/ipset.py) answers exactly like testing every element in order."""

from __future__ import annotations

import random
from ipaddress import ip_address

import pytest

from kptrace.parsers.ipset import parse_ipset
from kptrace.walkers import ipset as ipvs_sets
from kptrace.walkers.matches import MatchContext
from kptrace.walkers.packet import Packet


def _sets(rng: random.Random) -> str:
    lines = ["create A hash:ip,port family inet hashsize 1024 maxelem 65536",
             "create N hash:net family inet hashsize 1024 maxelem 65536",
             "create P bitmap:port range 0-65535",
             "create L hash:ip,port,ip family inet hashsize 1024 maxelem 65536",
             "create M hash:net,port family inet hashsize 1024 maxelem 65536"]
    for _ in range(60):
        ip = f"10.96.{rng.randrange(3)}.{rng.randrange(8)}"
        port = rng.choice([53, 80, 443])
        proto = rng.choice(["tcp", "udp"])
        lines.append(f"add A {ip},{proto}:{port}")
        lines.append(f"add N {ip}/{rng.choice([32, 30, 24, 16])}" + (" nomatch" if rng.random() < 0.2 else ""))
        lines.append(f"add P {port + rng.randrange(3)}")
        lines.append(f"add P {rng.randrange(1000, 2000)}")
        lines.append(f"add L {ip},{proto}:{port},10.244.1.{rng.randrange(4)}")
        lines.append(f"add M {ip}/{rng.choice([32, 24])},{proto}:{port}" + (" nomatch" if rng.random() < 0.2 else ""))
    return "\n".join(dict.fromkeys(lines)) + "\n"  # an ipset refuses a duplicate element


@pytest.mark.parametrize("seed", range(5))
def test_indexed_set_lookup_equals_the_element_by_element_test(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    sets = parse_ipset(_sets(rng))
    assert all(len(s.members) >= 16 for s in sets.values())  # the index is in use
    flags = {"A": ["dst", "dst"], "N": ["dst"], "P": ["dst"], "L": ["dst", "dst", "src"], "M": ["dst", "dst"]}
    for _ in range(200):
        pkt = Packet(ip_address(f"10.244.1.{rng.randrange(4)}"), ip_address(f"10.96.{rng.randrange(3)}.{rng.randrange(8)}"),
                     rng.choice(["tcp", "udp", "icmp"]), 40000, rng.choice([53, 80, 81, 443, 444]), None)
        for name, s in sets.items():
            for nomatch in (False, True):
                ctx = MatchContext(set(), False, "PREROUTING", [], sets)
                indexed = ipvs_sets._test(s, flags[name], pkt, ctx, nomatch, sets, 0)
                with monkeypatch.context() as m:
                    m.setattr(ipvs_sets, "_candidates", lambda s, values: list(s.members))
                    plain = ipvs_sets._test(s, flags[name], pkt, MatchContext(set(), False, "PREROUTING", [], sets),
                                       nomatch, sets, 0)
                assert indexed == plain, (name, pkt, nomatch)


def test_unknown_port_against_an_empty_set_matches_nothing() -> None:
    """A reply's destination port is unknown without --sport; an empty set (kube-proxy's KUBE-LOAD-BALANCER on
    a node without LoadBalancers, tested by KUBE-IPVS-FILTER on every packet) still matches nothing (issue 21)."""
    sets = parse_ipset("create KUBE-LOAD-BALANCER hash:ip,port family inet hashsize 1024 maxelem 65536\n"
                       "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n"
                       "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\n")
    for dst, name, want in (("10.244.1.4", "KUBE-LOAD-BALANCER", False),  # empty: no
                            ("10.244.1.4", "KUBE-CLUSTER-IP", False),  # no element for this address: no
                            ("10.96.0.10", "KUBE-CLUSTER-IP", None)):  # the address is there: the port decides
        pkt = Packet(ip_address("10.244.2.5"), ip_address(dst), "tcp", 8080, None, None)
        ctx = MatchContext(set(), False, "INPUT", [], sets)
        got = ipvs_sets._test(sets[name], ["dst", "dst"], pkt, ctx, False, sets, 0)
        if want is None:
            assert isinstance(got, ipvs_sets.Unknown), (dst, name, got)
        else:
            assert got is want, (dst, name, got)
