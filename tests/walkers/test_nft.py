"""Walking nftables rulesets: base chains across tables, verdict maps, numgen, NAT, sets, unknowns.

Behaviours the kernel lab checks end to end (tests/kernel/test_kernel_nft.py) are pinned here on
small rulesets, so a regression shows without root.
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.model.nft import NftRuleset
from kptrace.model.trace import Disposition, Trace
from kptrace.walkers.netfilter import trace_flow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nft"
NODE_IP = "192.168.0.2"


def node_of(tmp_path: Path, files: dict[str, str], node_ips: tuple[str, ...] = (NODE_IP,), cidr: str | None = None):  # type: ignore[no-untyped-def]
    d = tmp_path / "bundle"
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return load_node([d], list(node_ips), [cidr] if cidr else None)


def trace(node, src: str, dst: str, dport: int | None = 80, proto: str = "tcp", iface: str | None = "eth0") -> Trace:  # type: ignore[no-untyped-def]
    return trace_flow(node, Flow(ip_address(src), ip_address(dst), proto, None, dport, iface))


def actions(t: Trace, i: int = 0) -> list[str]:
    return [f"{s.table}/{s.chain}#{s.rule} {s.action}" for s in t.branches[i].steps if s.table]


def fixture_node(tmp_path: Path, form: str = "txt"):  # type: ignore[no-untyped-def]
    name = f"nft-ruleset.{form}"
    return node_of(tmp_path, {name: (FIXTURES / "kube-proxy" / name).read_text()})


# -- kube-proxy's nftables mode ------------------------------------------------------------------


@pytest.mark.parametrize("form", ["txt", "json"])
def test_kube_proxy_clusterip(tmp_path: Path, form: str) -> None:
    node = fixture_node(tmp_path, form)
    t = trace(node, "203.0.113.2", "10.96.0.10")
    assert set(t.endpoints) == {"10.244.1.3:8080", "10.244.1.4:8080"}
    assert [round(b.probability, 6) for b in t.branches] == [0.5, 0.5]
    assert all(b.masquerade and b.disposition == Disposition.FORWARDED and not b.unknowns for b in t.branches)
    steps = actions(t)
    assert "ip kube-proxy/nat-prerouting#1 JUMP" in steps and "ip kube-proxy/services#1 GOTO" in steps
    assert "ip kube-proxy/masquerading#3 MASQUERADE" in steps
    lookup = next(s for s in t.branches[0].steps if s.action == "LOOKUP")
    assert lookup.text.startswith("@service-ips: 10.96.0.10 . tcp . 80 : goto service-")
    # A pod's own traffic is not masqueraded (kube-proxy's `ip saddr != <pod CIDR>`).
    t = trace(node, "10.244.1.2", "10.96.0.10", iface="cni0")
    assert not any(b.masquerade for b in t.branches) and len(t.endpoints) == 2


@pytest.mark.parametrize("form", ["txt", "json"])
def test_kube_proxy_rejects_and_drops(tmp_path: Path, form: str) -> None:
    node = fixture_node(tmp_path, form)
    t = trace(node, "203.0.113.2", "10.96.0.20")  # no endpoints
    assert t.disposition == Disposition.REJECTED
    assert actions(t)[-1] == "ip kube-proxy/reject-chain#1 REJECT"
    assert trace(node, "203.0.113.2", NODE_IP, 30020).disposition == Disposition.REJECTED  # its NodePort
    assert trace(node, "203.0.113.130", "198.51.100.20").disposition == Disposition.DROPPED  # firewall
    assert trace(node, "203.0.113.2", "198.51.100.20").endpoints == ["10.244.1.3:8080"]
    assert trace(node, "203.0.113.2", "198.51.100.40").disposition == Disposition.DROPPED  # eTP Local, no local ep
    assert trace(node, "203.0.113.2", NODE_IP, 30040).disposition == Disposition.DROPPED


def test_kube_proxy_affinity_assumption(tmp_path: Path) -> None:
    t = trace(fixture_node(tmp_path), "203.0.113.2", "10.96.0.50")
    assert t.endpoints == ["10.244.1.4:8080"]
    assert any("no entry for this packet in dynamic set @affinity-" in a for a in t.branches[0].assumptions)


def test_kube_proxy_ipv6(tmp_path: Path) -> None:
    node = fixture_node(tmp_path)
    t = trace(node, "2001:db8::7", "fd00:96::10")
    assert set(t.endpoints) == {"[fd00:244:1::3]:8080", "[fd00:244:1::4]:8080"}
    # NodePorts on every local address (`fib daddr type local`), here the IPv6 node address.
    node6 = node_of(tmp_path, {"nft-ruleset.txt": (FIXTURES / "kube-proxy" / "nft-ruleset.txt").read_text()},
                    node_ips=("fd00:1::2",))
    assert len(trace(node6, "2001:db8::7", "fd00:1::2", 30080).endpoints) == 2
    assert trace(node6, "2001:db8::7", "fd00:96::20").disposition == Disposition.REJECTED


def test_pod_cidr_read_from_kube_proxy(tmp_path: Path) -> None:
    node = fixture_node(tmp_path)
    assert [str(c) for c in node.pod_cidrs] == ["10.244.0.0/16"]
    assert any("pod CIDR 10.244.0.0/16, read from kube-proxy's masquerade rule" in a for a in node.assumptions)


# -- base chains across tables -------------------------------------------------------------------

TWO_TABLES = """table inet a {
    chain fwd { type filter hook forward priority 0; policy accept;
        tcp dport 80 accept
    }
}
table ip b {
    chain fwd { type filter hook forward priority 10; policy accept;
        ip saddr 203.0.113.130 drop
    }
    chain early { type filter hook forward priority -10; policy accept;
        tcp dport 81 jump sub
        tcp dport 82 goto sub
        tcp dport 83 drop
    }
    chain sub {
        ip saddr 203.0.113.9 return
        ip saddr 203.0.113.8 accept
    }
}
"""


def test_accept_ends_only_its_base_chain(tmp_path: Path) -> None:
    node = node_of(tmp_path, {"nft-ruleset.txt": TWO_TABLES})
    ok = trace(node, "203.0.113.2", "10.244.1.3")
    assert ok.disposition == Disposition.FORWARDED
    assert actions(ok)[:3] == ["ip b/early#None POLICY ACCEPT", "inet a/fwd#1 ACCEPT", "ip b/fwd#None POLICY ACCEPT"]
    dropped = trace(node, "203.0.113.130", "10.244.1.3")
    assert dropped.disposition == Disposition.DROPPED and actions(dropped)[-1] == "ip b/fwd#1 DROP"


def test_jump_goto_return(tmp_path: Path) -> None:
    node = node_of(tmp_path, {"nft-ruleset.txt": TWO_TABLES})
    # jump: `return` comes back after the jumping rule; 83 is still tested after 81.
    t = trace(node, "203.0.113.9", "10.244.1.3", 81)
    assert actions(t)[:3] == ["ip b/early#1 JUMP", "ip b/sub#1 RETURN", "ip b/early#None POLICY ACCEPT"]
    # accept in a called chain ends the base chain.
    t = trace(node, "203.0.113.8", "10.244.1.3", 82)
    assert actions(t)[:3] == ["ip b/early#2 GOTO", "ip b/sub#2 ACCEPT", "inet a/fwd#None POLICY ACCEPT"]
    # goto then falling off: back to the base chain's caller, i.e. its policy.
    t = trace(node, "203.0.113.7", "10.244.1.3", 82)
    assert actions(t)[:2] == ["ip b/early#2 GOTO", "ip b/early#None POLICY ACCEPT"]


def test_ct_state_before_conntrack(tmp_path: Path) -> None:
    """A chain before conntrack (priority < -200) sees no entry: nft reads that as `invalid`."""
    node = node_of(tmp_path, {"nft-ruleset.txt": """table inet raw {
    chain pre { type filter hook prerouting priority -300; policy accept;
        ct state invalid counter
        ct state new drop
    }
}
"""})
    t = trace(node, "203.0.113.2", "10.244.1.3")
    assert t.disposition == Disposition.FORWARDED and actions(t)[0] == "inet raw/pre#1 COUNTER"


def test_equal_priority_last_created_runs_first(tmp_path: Path) -> None:
    node = node_of(tmp_path, {"nft-ruleset.txt": """table ip first {
    chain pre { type nat hook prerouting priority -100; tcp dport 80 dnat to 10.244.1.3:8080 }
}
table ip second {
    chain pre { type nat hook prerouting priority -100; tcp dport 80 dnat to 10.244.1.4:8080 }
}
"""})
    t = trace(node, "203.0.113.2", NODE_IP)
    # The later table's chain registered last, so it runs first and binds the NAT; the other is skipped.
    assert t.endpoints == ["10.244.1.4:8080"]
    assert [s.action for s in t.branches[0].steps if s.table == "ip first"] == ["SKIP"]


def test_nat_chains_stop_after_a_binding(tmp_path: Path) -> None:
    """nf_nat runs nat chains until one sets up the NAT: iptables' DNAT at -100 wins over nft's at -90."""
    node = node_of(tmp_path, {
        "iptables-save.txt": "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 10.244.1.3:8080\nCOMMIT\n",
        "nft-ruleset.txt": "table ip portmap {\n chain pre { type nat hook prerouting priority -90;\n"
                           "  tcp dport 80 dnat to 10.244.1.4:8080\n  tcp dport 81 dnat to 10.244.1.4:8080\n }\n}\n"})
    assert trace(node, "203.0.113.2", NODE_IP).endpoints == ["10.244.1.3:8080"]
    assert trace(node, "203.0.113.2", NODE_IP, 81).endpoints == ["10.244.1.4:8080"]


# -- expressions ---------------------------------------------------------------------------------


def test_numgen_and_random_split_probabilities(tmp_path: Path) -> None:
    node = node_of(tmp_path, {"nft-ruleset.txt": """table ip lb {
    chain pre { type nat hook prerouting priority dstnat;
        tcp dport 80 numgen random mod 3 vmap { 0 : goto a, 1 : goto b, 2 : goto c }
        tcp dport 81 meta random & 2147483647 < 536870912 dnat to 10.0.0.1:81
        tcp dport 81 dnat to 10.0.0.2:81
        tcp dport 82 dnat to numgen random mod 2 map { 0 : 10.0.0.1, 1 : 10.0.0.2 }
    }
    chain a { dnat to 10.0.0.1 }
    chain b { dnat to 10.0.0.2 }
    chain c { dnat to 10.0.0.3 }
}
"""})
    t = trace(node, "203.0.113.2", NODE_IP)
    assert sorted(t.endpoints) == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    assert [round(b.probability, 9) for b in t.branches] == [round(1 / 3, 9)] * 3
    t = trace(node, "203.0.113.2", NODE_IP, 81)
    assert {b.dnat: round(b.probability, 6) for b in t.branches} == {"10.0.0.1:81": 0.25, "10.0.0.2:81": 0.75}
    t = trace(node, "203.0.113.2", NODE_IP, 82)
    assert {b.dnat: b.probability for b in t.branches} == {"10.0.0.1:82": 0.5, "10.0.0.2:82": 0.5}


def test_sets_concatenations_intervals(tmp_path: Path) -> None:
    node = node_of(tmp_path, {"nft-ruleset.txt": """table inet f {
    set blocked { type ipv4_addr . inet_proto . inet_service; flags interval;
        elements = { 203.0.113.0/25 . tcp . 8000-8100, 198.51.100.7 . udp . 53 } }
    chain fwd { type filter hook forward priority 0; policy accept;
        ip saddr . meta l4proto . th dport @blocked drop
        ip6 saddr ::1 drop
        ip daddr { 10.244.1.9, 10.244.2.0/24 } reject
    }
}
"""})
    assert trace(node, "203.0.113.2", "10.244.1.3", 8080).disposition == Disposition.DROPPED
    assert trace(node, "203.0.113.200", "10.244.1.3", 8080).disposition == Disposition.FORWARDED
    assert trace(node, "203.0.113.2", "10.244.1.3", 8200).disposition == Disposition.FORWARDED
    assert trace(node, "198.51.100.7", "10.244.1.3", 53, "udp").disposition == Disposition.DROPPED
    assert trace(node, "203.0.113.2", "10.244.2.5").disposition == Disposition.REJECTED
    # An ICMP packet: `th dport` is not a port, but no element has icmp, so the lookup misses.
    assert trace(node, "203.0.113.2", "10.244.1.3", None, "icmp").disposition == Disposition.FORWARDED


def test_marks_and_masquerade(tmp_path: Path) -> None:
    node = node_of(tmp_path, {"nft-ruleset.txt": """table ip m {
    chain pre { type filter hook prerouting priority mangle; policy accept;
        tcp dport 80 meta mark set meta mark | 0x00004000
        ct mark set meta mark
    }
    chain post { type nat hook postrouting priority srcnat; policy accept;
        ct mark & 0x00004000 == 0x00000000 return
        meta mark & 0x00004000 == 0x00004000 masquerade
    }
}
"""})
    assert trace(node, "203.0.113.2", "10.244.1.3").branches[0].masquerade
    assert not trace(node, "203.0.113.2", "10.244.1.3", 81).branches[0].masquerade


def test_unknowns_are_cited(tmp_path: Path) -> None:
    node = node_of(tmp_path, {"nft-ruleset.txt": """table inet f {
    chain fwd { type filter hook forward priority 0; policy accept;
        tcp dport 80 socket transparent 1 drop
        tcp dport 81 jhash ip saddr mod 2 vmap { 0 : accept, 1 : drop }
        tcp dport 82 meta skuid 0 drop
        tcp dport 83 numgen inc mod 2 vmap { 0 : accept, 1 : drop }
    }
}
"""})
    for port, why in ((80, "'socket transparent 1 drop' is not modelled"), (81, "jhash"), (83, "numgen inc")):
        t = trace(node, "203.0.113.2", "10.244.1.3", port)
        assert t.disposition == Disposition.UNDETERMINED
        assert t.branches[0].unknowns[0].startswith("bundle/nft-ruleset.txt:3") is (port == 80) and why in t.branches[0].unknowns[0]
    # meta skuid: only a local socket has one; a forwarded packet does not match.
    assert trace(node, "203.0.113.2", "10.244.1.3", 82).disposition == Disposition.FORWARDED


# -- iptables-nft tables ---------------------------------------------------------------------------


def test_iptables_nft_tables_read_from_iptables_save(tmp_path: Path) -> None:
    d = FIXTURES / "iptables-mixed"
    node = node_of(tmp_path, {"nft-ruleset.json": (d / "nft-ruleset.json").read_text(),
                              "iptables-nft-save.txt": (d / "iptables-nft-save.txt").read_text()})
    assert isinstance(node.nft, NftRuleset) and set(node.nft.skipped) == {("ip", "filter"), ("ip", "nat")}
    assert any("table ip nat in" in a and "skipped in the nft view" in a for a in node.assumptions)
    t = trace(node, "203.0.113.2", "10.96.0.10")
    assert set(t.endpoints) == {"10.244.1.3:8080", "10.244.1.4:8080"} and not any(b.unknowns for b in t.branches)
    assert any(s.source and "iptables-nft-save.txt" in s.source for s in t.branches[0].steps)


def test_iptables_nft_tables_without_iptables_save(tmp_path: Path) -> None:
    d = FIXTURES / "iptables-mixed"
    # Text: nft prints libxtables' translations (statistic as `meta random`, DNAT as `dnat to`).
    node = node_of(tmp_path, {"nft-ruleset.txt": (d / "nft-ruleset.txt").read_text()})
    t = trace(node, "203.0.113.2", "10.96.0.10")
    assert {b.dnat: b.probability for b in t.branches} == {"10.244.1.3:8080": 0.5, "10.244.1.4:8080": 0.5}
    assert any("no iptables-nft-save of it is in the input" in a for a in node.assumptions)
    # JSON: only the extension's name; the walk stops there, citing the rule.
    node = node_of(tmp_path / "j", {"nft-ruleset.json": (d / "nft-ruleset.json").read_text()})
    t = trace(node, "203.0.113.2", "10.96.0.10")
    assert t.disposition == Disposition.UNDETERMINED
    assert "`xt target MARK` is listed without its options" in t.branches[0].unknowns[0]


def test_bundle_with_text_and_json(tmp_path: Path) -> None:
    d = FIXTURES / "kube-proxy"
    node = node_of(tmp_path, {"nft-ruleset.txt": (d / "nft-ruleset.txt").read_text(),
                              "nft-ruleset.json": (d / "nft-ruleset.json").read_text()})
    assert isinstance(node.nft, NftRuleset) and node.nft.file.endswith("nft-ruleset.txt")
    assert any("nft-ruleset.json was not read" in a for a in node.assumptions)


def test_pasted_files_are_sniffed(tmp_path: Path) -> None:
    d = FIXTURES / "kube-proxy"
    for name, src in (("paste1", "nft-ruleset.txt"), ("paste2", "nft-ruleset.json")):
        p = tmp_path / name
        p.write_text((d / src).read_text())
        node = load_node([p], [NODE_IP])
        assert isinstance(node.nft, NftRuleset) and set(node.rulesets) == {4, 6}
        assert trace(node, "203.0.113.2", "10.96.0.20").disposition == Disposition.REJECTED
