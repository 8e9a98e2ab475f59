"""ipvsadm parser: golden models of every listing flag, and targeted checks.

The fixtures are ipvsadm 1.31's own output (its listing code linked against a recorded IPVS state,
tests/fixtures/ipvs/render.sh: this kernel has no IPVS). Goldens regenerate as in test_ipset.py.
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.ipvs import IpvsTable
from kptrace.parsers.ipvsadm import parse_ipvsadm
from tests.parsers.test_ipset import check_golden

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ipvs"
FLAGS = ["Ln", "Ln-stats", "Ln-stats-exact", "Ln-rate", "Ln-persistent-conn", "Ln-thresholds", "Ln-tun-info",
         "Lnc", "Lnc-persistent-conn", "Sn", "S", "L", "Lc"]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.txt")))
def test_golden(name: str) -> None:
    path = FIXTURES / name
    check_golden(path, parse_ipvsadm(path.read_text(), name), FIXTURES / "golden")


def test_every_flag_has_a_fixture() -> None:
    for state in ("kube-proxy", "features"):
        for flag in FLAGS:
            assert (FIXTURES / f"{state}.{flag}.txt").exists(), (state, flag)


def load(name: str) -> IpvsTable:
    return parse_ipvsadm((FIXTURES / name).read_text(), name)


def svc(t: IpvsTable, text: str):  # type: ignore[no-untyped-def]
    hits = [s for s in t.services if str(s) == text]
    assert len(hits) == 1, [str(s) for s in t.services]
    return hits[0]


def test_list_numeric() -> None:
    t = load("features.Ln.txt")
    assert t.version == "1.2.1" and t.conn_table_size == 4096 and t.numeric
    assert len(t.services) == 17
    wrr = svc(t, "TCP 10.96.0.20:80")
    assert wrr.scheduler == "wrr" and wrr.address == ip_address("10.96.0.20") and wrr.listing == "list"
    d = wrr.dests[0]
    assert (d.address, d.port, d.forward, d.weight, d.active_conns, d.inactive_conns) == (ip_address("10.244.1.5"), 8080, "Masq", 3, 4, 10)
    assert str(d.source) == "features.Ln.txt:15"
    sh = svc(t, "UDP 10.96.0.25:5060")
    assert (sh.scheduler, sh.sched_flags, sh.persistent, sh.netmask, sh.pe, sh.one_packet) == \
        ("sh", ("sh-fallback", "sh-port"), 300, "255.255.255.0", "sip", True)
    assert svc(t, "TCP 10.96.0.26:443").sched_flags == ("mh-port",)
    v6 = svc(t, "TCP [fd00:96::a]:80")
    assert v6.family == 6 and v6.persistent == 60 and v6.netmask == "64"
    assert svc(t, "FWM 100").fwmark == 100 and svc(t, "FWM 200 IPv6").family == 6
    assert svc(t, "SCTP 10.96.0.28:9").protocol == "sctp"
    fwd = {d.host: d.forward for d in svc(t, "TCP 198.51.100.10:80").dests}
    assert fwd == {"192.0.2.21": "Route", "192.0.2.22": "Tunnel", "192.0.2.23": "Tunnel"}
    assert svc(t, "TCP 198.51.100.11:80").dests[0].forward == "Local"
    assert svc(t, "TCP 198.51.100.12:0").port == 0
    assert svc(load("kube-proxy.Ln.txt"), "TCP 10.96.77.7:80").dests == ()


def test_save_matches_list() -> None:
    for state in ("kube-proxy", "features"):
        a, b = load(f"{state}.Ln.txt"), load(f"{state}.Sn.txt")
        # ipvsadm -S prints a Local real server as -g (fwd_switch() in ipvsadm.c): Local reads back as Route.
        key = lambda t: sorted((str(s), s.scheduler, s.persistent, s.netmask, s.pe, s.one_packet, s.sched_flags,
                                tuple((str(d), d.forward if d.forward != "Local" else "Route", d.weight) for d in s.dests))
                               for s in t.services)
        assert key(a) == key(b), state
    sn = load("features.Sn.txt")
    tun = {str(d): d.tunnel for d in svc(sn, "TCP 198.51.100.10:80").dests}
    assert tun["192.0.2.22:80"] == ("--tun-type", "gue", "--tun-port", "6080", "--tun-csum")
    assert all(s.listing == "save" for s in sn.services)


def test_stats_rate_and_scaling() -> None:
    t = load("features.Ln-stats.txt")
    s = svc(t, "TCP 10.96.0.20:80")
    assert s.scheduler is None and s.stats is not None and s.stats.scaled
    assert s.stats.conns == 123456000 and s.stats.inpkts == 9876000000 and s.stats.outbytes == 100 * 10**12
    exact = svc(load("features.Ln-stats-exact.txt"), "TCP 10.96.0.20:80").stats
    assert exact is not None and not exact.scaled and exact.conns == 123456789 and exact.outbytes == 100000000000000
    rate = svc(load("features.Ln-rate.txt"), "TCP 10.96.0.20:80").dests[0].rate
    assert rate is not None and (rate.conns, rate.inpkts, rate.outpkts, rate.inbytes) == (3, 40, 38, 52000)


def test_persistent_conn_thresholds_tun_info() -> None:
    pc = svc(load("kube-proxy.Ln-persistent-conn.txt"), "TCP 10.96.33.3:80")
    assert pc.persistent == 10800 and [d.persist_conns for d in pc.dests] == [1, 0] and pc.dests[0].forward is None
    th = svc(load("features.Ln-thresholds.txt"), "TCP 10.96.0.20:80").dests[0]
    assert (th.upper_threshold, th.lower_threshold, th.active_conns, th.inactive_conns, th.weight) == (100, 50, 4, 10, None)
    ti = {d.host: d.tunnel_info for d in svc(load("features.Ln-tun-info.txt"), "TCP 198.51.100.10:80").dests}
    assert ti == {"192.0.2.21": "n/a", "192.0.2.22": "gue:6080:+c", "192.0.2.23": "ipip"}


def test_connections() -> None:
    t = load("features.Lnc-persistent-conn.txt")
    assert not t.services and len(t.connections) == 3
    c = t.connections[1]
    assert (c.protocol, c.expires, c.state, c.client, c.virtual, c.dest, c.pe_name, c.pe_data) == \
        ("UDP", 179, "UDP", "10.244.1.5:5060", "10.96.0.25:5060", "10.244.1.5:5060", "sip", "3c26700d3b0f4b37")
    assert load("kube-proxy.Lnc.txt").connections[0].expires == 14 * 60 + 59


def test_names_are_kept_unresolved() -> None:
    t = load("kube-proxy.L.txt")
    assert not t.numeric and t.notes and "does not resolve" in t.notes[0]
    cut = [s for s in t.services if s.truncated]
    assert {s.host for s in cut} == {"node-a.k8s.example.internal", "kubernetes.default.svc.clust"}
    assert all(s.address is None and s.port is None for s in cut)
    dns = svc(t, "UDP 10.96.0.10:domain")
    assert dns.address == ip_address("10.96.0.10") and dns.port is None and dns.port_name == "domain" and not dns.resolved
    api = next(d for s in t.services for d in s.dests if d.host.startswith("cp."))
    assert api.address is None and api.port == 6443 and not api.resolved
    s = load("kube-proxy.S.txt")
    assert not s.numeric and any(sv.port_name == "https" for sv in s.services)


def test_single_service_listing() -> None:
    t = load("kube-proxy.Ln-service-udp.txt")
    assert [str(s) for s in t.services] == ["UDP 10.96.0.10:53"] and t.version is None


@pytest.mark.parametrize("text,line,msg", [
    ("  -> 10.0.0.1:80 Masq 1 0 0\n", 1, "before any virtual service"),
    ("TCP  10.0.0.1:80 rr\n  -> 10.0.0.2:80 Bogus 1 0 0\n", 2, "unknown forward method"),
    ("TCP  10.0.0.1:80 rr\n  -> 10.0.0.2:80 Masq 1 0\n", 2, "expected 4 columns"),
    ("TCP  10.0.0.1:80 rr wibble\n", 1, "unknown service flag"),
    ("-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1\n", 1, "not added before it"),
    ("-A -t 10.0.0.1:80 -s rr -Q\n", 1, "unknown virtual service option"),
    ("hello world\n", 1, "not an ipvsadm line"),
])
def test_errors_are_located(text: str, line: int, msg: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_ipvsadm(text, "x")
    assert e.value.line == line and msg in e.value.message


def test_save_defaults() -> None:
    t = parse_ipvsadm("-A -t 10.0.0.1:80 -p\n-a -t 10.0.0.1:80 -r 10.0.0.2\n", "s")
    s = t.services[0]
    assert s.scheduler == "wlc" and s.persistent == 360
    assert (s.dests[0].forward, s.dests[0].weight, s.dests[0].port) == ("Route", 1, None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["TCP", "UDP", "FWM", "->", "10.0.0.1:80", "[fd00::1]:80", "rr", "Masq", "1", "0",
                                 "persistent", "mask", "-A", "-a", "-t", "-r", "-m", "-w", "\n", " ", "  ", "123K",
                                 "IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port"]), max_size=30))
def test_junk_never_crashes(words: list[str]) -> None:
    try:
        parse_ipvsadm(" ".join(words), "junk")
    except ParseError:
        pass
