"""`route -n` / `netstat -rn`, `arp -n` / `arp -na`, `conntrack -L`: real output from the netns lab, and junk."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.node import Node
from kptrace.parsers.arp import parse_arp
from kptrace.parsers.conntrack import parse_conntrack
from kptrace.parsers.route_n import parse_route_n
from kptrace.walkers.routing import lookup

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "listings" / "kube-node"


def test_route_n_from_the_lab() -> None:
    routes = parse_route_n((FIX / "route-n.txt").read_text(), "route-n.txt")
    by = {str(r.dst): r for r in routes}
    assert set(by) == {"0.0.0.0/0", "10.98.0.0/16", "10.99.0.0/16", "10.244.1.0/24", "10.244.2.0/24", "192.168.0.0/24"}
    d = by["0.0.0.0/0"]
    assert d.nexthops[0].gateway == ip_address("192.168.0.1") and d.nexthops[0].dev == "eth0" and d.metric == 100
    assert str(d.source) == "route-n.txt:3" and not d.unknown
    assert by["10.244.2.0/24"].nexthops[0].gateway == ip_address("192.168.0.12")
    assert by["10.244.1.0/24"].nexthops[0].gateway is None
    assert by["10.99.0.0/16"].unknown and "reject route" in by["10.99.0.0/16"].unknown[0]
    assert by["10.98.0.0/16"].unknown and "blackhole" in by["10.98.0.0/16"].unknown[0]


def test_route_n_routes_like_ip_route() -> None:
    node = Node(routes=parse_route_n((FIX / "route-n.txt").read_text(), "r"))
    res = lookup(node, ip_address("10.244.2.9"))
    assert res.kind == "unicast" and res.nexthops[0].gateway == ip_address("192.168.0.12")
    assert lookup(node, ip_address("10.99.1.1")).kind == "undetermined"  # unreachable or prohibit: not said


def test_netstat_and_names_and_ipv6() -> None:
    text = ("Kernel IP routing table\n"
            "Destination     Gateway         Genmask         Flags   MSS Window  irtt Iface\n"
            "default         _gateway        0.0.0.0         UG        0 0          0 eth0\n"
            "10.244.0.0      *               255.255.0.0     U         0 0          0 cni0\n"
            "Kernel IPv6 routing table\n"
            "Destination                    Next Hop                   Flag Met Ref  Use If\n"
            "fd00::/64                      ::                         U    256 1      0 eth0\n"
            "::/0                           fd00::1                    UG   1024 2     0 eth0\n"
            "::1/128                        ::                         Un   0   2      0 lo\n")
    routes = parse_route_n(text, "r")
    assert routes[0].dst == ip_network("0.0.0.0/0") and "_gateway" in routes[0].unknown[0]
    assert routes[1].nexthops[0].gateway is None and not routes[1].unknown
    assert routes[3].nexthops[0].gateway == ip_address("fd00::1") and routes[4].unknown


@pytest.mark.parametrize(("line", "message"), [
    ("10.0.0.0 0.0.0.0 255.0.0.0 U 0 0 0", "expected 8 columns"),
    ("myhost 0.0.0.0 255.0.0.0 U 0 0 0 eth0", "is not an address"),
    ("10.0.0.0 0.0.0.0 255.0.255.0 U 0 0 0 eth0", "invalid netmask"),
])
def test_route_n_errors_are_located(line: str, message: str) -> None:
    head = "Destination     Gateway         Genmask         Flags Metric Ref    Use Iface\n"
    with pytest.raises(ParseError) as e:
        parse_route_n(head + line, "r")
    assert e.value.line == 2 and message in e.value.message
    errors: list[ParseError] = []
    assert parse_route_n(head + line, "r", errors) == [] and len(errors) == 1


def test_arp_both_forms_from_the_lab() -> None:
    n = parse_arp((FIX / "arp-n.txt").read_text(), "arp-n.txt")
    a = parse_arp((FIX / "arp-na.txt").read_text(), "arp-na.txt")
    key = lambda xs: sorted((str(x.dst), x.dev, x.lladdr, x.state) for x in xs)  # noqa: E731
    assert key(n) == key(a)
    assert ("10.244.1.5", "cni0", "da:ef:07:04:db:cc", "PERMANENT") in key(n)
    assert ("192.168.0.1", "eth0", "0a:00:27:00:00:01", None) in key(n)  # C: complete, NUD state not shown
    inc = parse_arp("? (10.244.1.77) at <incomplete> on cni0\n10.244.1.78                      (incomplete)     "
                    "                         cni0\n", "a")
    assert [(str(x.dst), x.lladdr, x.state) for x in inc] == [("10.244.1.77", None, "INCOMPLETE"),
                                                              ("10.244.1.78", None, "INCOMPLETE")]
    with pytest.raises(ParseError):
        parse_arp("gateway.lan              ether   0a:00:27:00:00:01   C                     eth0\n", "a")


def test_conntrack_from_the_lab_and_proc() -> None:
    entries = parse_conntrack((FIX / "conntrack-L.txt").read_text(), "ct")
    tcp = next(e for e in entries if e.proto == "tcp")
    assert tcp.state == "ESTABLISHED" and tcp.original.dport == 80 and tcp.reply is not None
    assert tcp.reply.src == ip_address("10.244.1.2") and tcp.reply.sport == 8080 and "ASSURED" in tcp.flags
    assert tcp.mark == 0 and "use=1" in tcp.unknown
    proc = parse_conntrack("ipv4     2 udp      17 28 src=10.244.1.5 dst=10.96.0.10 sport=53271 dport=53 [UNREPLIED] "
                           "src=10.244.1.3 dst=10.244.1.5 sport=5353 dport=53271 mark=0 zone=0 use=2\n", "p")
    assert proc[0].proto == "udp" and proc[0].zone == 0 and proc[0].timeout == 28 and "UNREPLIED" in proc[0].flags
    icmp = parse_conntrack("icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 "
                           "type=0 code=0 id=7 mark=0 use=1\n", "i")
    assert icmp[0].original.extra == ("type=8", "code=0") and icmp[0].original.dport is None


@pytest.mark.parametrize("line", [
    "tcp 6 1 ESTABLISHED sport=1",
    "tcp 6 1 src=10.0.0.1 dst=nope",
    "tcp 6 1 src=10.0.0.1 dst=10.0.0.2 dport=99999",
    "tcp 6 1 src=1.1.1.1 dst=1.1.1.2 src=1.1.1.2 dst=1.1.1.1 src=1.1.1.3",
])
def test_conntrack_errors(line: str) -> None:
    with pytest.raises(ParseError):
        parse_conntrack(line, "c")


VOCAB = ["Kernel", "IP", "routing", "table", "Destination", "Gateway", "Genmask", "Flags", "Metric", "Ref", "Use",
         "Iface", "UG", "U", "!", "*", "-", "0.0.0.0", "255.255.255.0", "Address", "HWtype", "HWaddress", "ether",
         "(incomplete)", "?", "(10.0.0.1)", "at", "on", "[ether]", "PERM", "tcp", "udp", "6", "17", "src=1.2.3.4",
         "dst=::1", "sport=1", "dport=99", "[ASSURED]", "mark=0x", "zone=z", "ipv4", "2", "²", "9" * 30]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(VOCAB + ["\n", " ", "  "]) | st.text(max_size=6), max_size=60).map(" ".join))
@example("Destination Gateway Genmask Flags Metric Ref Use Iface\n1.2.3.4 0.0.0.0 0.0.0.0 U ² 0 0 eth0")
@example("tcp 6 " + "9" * 5000 + " src=1.1.1.1 dst=1.1.1.2")
def test_junk_gives_parse_error_or_entries(junk: str) -> None:
    for parse in (parse_route_n, parse_arp, parse_conntrack):
        try:
            parse(junk, "junk")
        except ParseError as e:
            assert e.line >= 1 and e.col >= 1
        errors: list[ParseError] = []
        parse(junk, "junk", errors)
