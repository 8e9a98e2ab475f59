"""The IPVS hop and ipset matching on recorded states; each expected outcome is reasoned in docs/ipvs.md.

IPVS is not in the kernel the lab runs on, so these cases are checked against the kernel's
scheduling code as docs/ipvs.md explains it (section "Recorded states"), not against packets.
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.model.trace import Disposition, Trace
from kptrace.walkers.netfilter import trace_flow

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "ipvs"
DEMO = ROOT / "kptrace" / "demo" / "ipvs-node"
VIPS = ["10.96.0.20", "10.96.0.21", "10.96.0.22", "10.96.0.23", "10.96.0.24", "10.96.0.25", "10.96.0.26", "10.96.0.27",
        "10.96.0.28", "10.96.0.29", "10.96.0.10", "198.51.100.10", "198.51.100.11", "198.51.100.12"]
OPEN = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.96.0.99/32 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x64/0xffffffff
COMMIT
"""


def ip_addr() -> str:
    lines = ["1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default qlen 1000",
             "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
             "    inet 127.0.0.1/8 scope host lo",
             "       valid_lft forever preferred_lft forever",
             "2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000",
             "    link/ether 08:00:27:8a:41:11 brd ff:ff:ff:ff:ff:ff",
             "    inet 192.168.56.11/24 brd 192.168.56.255 scope global eth0",
             "       valid_lft forever preferred_lft forever",
             "3: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default ",
             "    link/ether 6e:12:9a:3c:b7:40 brd ff:ff:ff:ff:ff:ff"]
    for vip in VIPS + ["10.96.0.99"]:
        lines += [f"    inet {vip}/32 scope global kube-ipvs0", "       valid_lft forever preferred_lft forever"]
    return "\n".join(lines) + "\n"


def bundle(tmp_path: Path, ipvs: str | None = "features.Ln.txt", rules: str = OPEN, ipset: str | None = None) -> Path:
    d = tmp_path / "node"
    d.mkdir(exist_ok=True)
    (d / "iptables-save.txt").write_text(rules)
    (d / "ip-addr.txt").write_text(ip_addr())
    (d / "ip-route.txt").write_text("default via 192.168.56.1 dev eth0 proto static \n"
                                    "192.168.56.0/24 dev eth0 proto kernel scope link src 192.168.56.11 \n")
    if ipvs is not None:
        (d / "ipvsadm.txt").write_text((FIX / ipvs).read_text())
    if ipset is not None:
        (d / "ipset-save.txt").write_text(ipset)
    return d


def trace(d: Path, dst: str, dport: int | None, proto: str = "tcp", src: str = "192.168.56.1") -> Trace:
    return trace_flow(load_node([d]), Flow(ip_address(src), ip_address(dst), proto, 40000, dport, "eth0"))


def shares(t: Trace) -> dict[str | None, float]:
    out: dict[str | None, float] = {}
    for b in t.branches:
        out[b.dnat] = round(out.get(b.dnat, 0) + b.probability, 6)
    return out


def notes(t: Trace) -> str:
    return "\n".join(a for b in t.branches for a in b.assumptions)


# --- schedulers (docs/ipvs.md, "Recorded states") -----------------------------------------------

def test_wrr_follows_weights_and_skips_weight_zero(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path), "10.96.0.20", 80)
    assert shares(t) == {"10.244.1.5:8080": 0.75, "10.244.2.5:8080": 0.25}
    assert all(b.disposition == Disposition.FORWARDED for b in t.branches)
    assert "wrr" in notes(t)


def test_wlc_picks_lowest_overhead_per_weight(tmp_path: Path) -> None:
    # overheads (active*256+inactive)/weight: 1024/1, 1024/2 = 512, (512+300)/1 = 812
    assert shares(trace(bundle(tmp_path), "10.96.0.21", 80)) == {"10.244.2.5:8080": 1.0}


def test_lc_tie_is_split_and_said(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path), "10.96.0.22", 80)
    assert shares(t) == {"10.244.1.5:8080": 0.5, "10.244.2.5:8080": 0.5}
    assert "ties" in notes(t)


def test_sed_counts_active_plus_one_per_weight(tmp_path: Path) -> None:
    # (0+1)/1 = 1 and (2+1)/3 = 1: a tie
    assert shares(trace(bundle(tmp_path), "10.96.0.23", 80)) == {"10.244.1.5:8080": 0.5, "10.244.2.5:8080": 0.5}


def test_nq_takes_the_idle_server(tmp_path: Path) -> None:
    assert shares(trace(bundle(tmp_path), "10.96.0.24", 80)) == {"10.244.2.5:8080": 1.0}


def test_sh_hash_all_servers_by_weight_with_persistence(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path), "10.96.0.25", 5060, "udp")
    assert shares(t) == {"10.244.1.5:5060": 0.25, "10.244.2.5:5060": 0.75}
    n = notes(t)
    assert "not predictable" in n and "persistent (300 s, mask 255.255.255.0)" in n and "(ops)" in n


def test_mh_and_dh(tmp_path: Path) -> None:
    d = bundle(tmp_path)
    assert shares(trace(d, "10.96.0.26", 443)) == {"10.244.1.5:8443": 0.5, "10.244.2.5:8443": 0.5}
    assert "destination address" in notes(trace(d, "10.96.0.27", 80))


def test_fo_highest_weight(tmp_path: Path) -> None:
    assert shares(trace(bundle(tmp_path), "198.51.100.11", 80)) == {"192.0.2.21:80": 1.0}


def test_ovf_skips_full_server_and_port_zero_keeps_port(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path), "198.51.100.12", 8443)
    assert shares(t) == {"192.0.2.22:8443": 1.0}
    assert "persistent (360 s)" in notes(t)


def test_only_weight_zero_is_rejected(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path), "10.96.0.29", 80)
    assert t.disposition == Disposition.REJECTED and "all weights 0" in t.branches[0].steps[-1].text


def test_sctp_service(tmp_path: Path) -> None:
    assert shares(trace(bundle(tmp_path), "10.96.0.28", 9, "sctp")) == {"10.244.1.5:9": 1.0}


def test_no_service_for_port_is_plain_delivery(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path), "10.96.0.20", 81)
    assert t.disposition == Disposition.DELIVERED and not any(s.hook == "IPVS" for s in t.branches[0].steps)


def test_fwmark_service(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path), "10.96.0.99", 80)
    assert shares(t) == {"10.244.1.5:80": 1.0}
    assert any("FWM 100" in s.text for s in t.branches[0].steps)


def test_route_and_tunnel_forwarding(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path), "198.51.100.10", 80)
    kinds = {b.steps[[s.hook for s in b.steps].index("IPVS") + 1].text.split(" ")[5] for b in t.branches}
    assert kinds == {"Route", "Tunnel"}
    route = next(b for b in t.branches if any("direct routing" in s.text for s in b.steps))
    assert route.dnat is None and route.probability == pytest.approx(1 / 3)


def test_save_listing_has_no_counts_so_weights_decide(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path, "features.Sn.txt"), "10.96.0.21", 80)
    assert shares(t) == {"10.244.1.5:8080": 0.25, "10.244.2.5:8080": 0.5, "10.244.3.5:8080": 0.25}
    assert "no connection counts" in notes(t)


def test_stats_listing_states_what_it_lacks(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path, "features.Ln-stats.txt"), "10.96.0.20", 80)
    n = notes(t)
    assert "shows no weights" in n and "forward method" in n and len(t.branches) == 3


def test_names_are_undetermined(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path, "features.L.txt"), "10.96.0.20", 80)
    assert t.disposition == Disposition.UNDETERMINED
    assert "-n" in t.branches[0].unknowns[0]


def test_without_ipvs_listing_the_node_delivers(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path, None), "10.96.0.20", 80)
    assert t.disposition == Disposition.DELIVERED


# --- ipset matching -------------------------------------------------------------------------

SET_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m set --match-set ALLOWED src -j ACCEPT
-A INPUT -j DROP
COMMIT
"""


def test_set_missing_from_bundle_is_undetermined(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path, None, SET_RULES), "192.168.56.11", 22)
    assert t.disposition == Disposition.UNDETERMINED
    assert "no ipset dump" in t.branches[0].unknowns[0] and "iptables-save.txt:5" in t.branches[0].unknowns[0]


def test_set_name_missing_from_dump_is_undetermined(tmp_path: Path) -> None:
    t = trace(bundle(tmp_path, None, SET_RULES, ipset="create OTHER hash:ip family inet\n"), "192.168.56.11", 22)
    assert "not in the input's ipset dump" in t.branches[0].unknowns[0]


@pytest.mark.parametrize("src,verdict", [("10.0.0.1", Disposition.DELIVERED), ("10.1.2.3", Disposition.DROPPED),
                                         ("10.1.1.9", Disposition.DELIVERED), ("172.16.0.1", Disposition.DROPPED)])
def test_hash_net_most_specific_wins(tmp_path: Path, src: str, verdict: Disposition) -> None:
    sets = "create ALLOWED hash:net family inet\nadd ALLOWED 10.0.0.0/8\nadd ALLOWED 10.1.0.0/16 nomatch\nadd ALLOWED 10.1.1.0/24\n"
    t = trace(bundle(tmp_path, None, SET_RULES, ipset=sets), "192.168.56.11", 22, src=src)
    assert t.disposition == verdict


def test_timeout_element_is_an_assumption(tmp_path: Path) -> None:
    sets = "create ALLOWED hash:ip family inet timeout 600\nadd ALLOWED 192.168.56.1 timeout 42\n"
    t = trace(bundle(tmp_path, None, SET_RULES, ipset=sets), "192.168.56.11", 22)
    assert t.disposition == Disposition.DELIVERED and "42 s left" in notes(t)


# --- the demo node --------------------------------------------------------------------------

def demo(dst: str, dport: int, src: str, proto: str = "tcp") -> Trace:
    return trace_flow(load_node([DEMO]), Flow(ip_address(src), ip_address(dst), proto, None, dport))


def test_demo_dns_two_real_servers() -> None:
    t = demo("10.96.0.10", 53, "10.244.1.5", "udp")
    assert shares(t) == {"10.244.1.9:53": 0.5, "10.244.2.7:53": 0.5}
    assert not any(b.masquerade for b in t.branches)


def test_demo_hairpin_loop_back_masquerades() -> None:
    t = demo("10.96.12.34", 80, "10.244.1.12")
    own = next(b for b in t.branches if b.dnat == "10.244.1.12:8080")
    assert own.masquerade and any("KUBE-LOOP-BACK" in s.text and s.action == "MASQUERADE" for s in own.steps)
    other = next(b for b in t.branches if b.dnat == "10.244.2.15:8080")
    assert not other.masquerade


def test_demo_nodeport_and_external_cluster_ip_masquerade() -> None:
    np = demo("192.168.56.11", 30080, "192.168.56.1")
    assert all(b.masquerade for b in np.branches) and len(np.branches) == 2
    assert any("KUBE-NODE-PORT-TCP" in s.text for s in np.branches[0].steps)
    ext = demo("10.96.0.1", 443, "192.168.56.1")
    assert shares(ext) == {"192.168.56.10:6443": 1.0} and ext.branches[0].masquerade


def test_demo_rejections() -> None:
    no_endpoints = demo("10.96.77.7", 80, "10.244.1.5")
    assert no_endpoints.disposition == Disposition.REJECTED and no_endpoints.branches[0].steps[-1].hook == "IPVS"
    wrong_port = demo("10.96.0.10", 54, "10.244.1.5")
    assert wrong_port.disposition == Disposition.REJECTED
    assert "KUBE-IPVS-IPS" in wrong_port.branches[0].steps[-1].text


def test_demo_persistent_service() -> None:
    t = demo("10.96.33.3", 80, "10.244.1.5")
    assert len(t.branches) == 2 and "persistent (10800 s)" in notes(t)
