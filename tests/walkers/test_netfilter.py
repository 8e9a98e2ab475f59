"""Walker semantics on small hand-made rulesets: each test pins one netfilter behaviour."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.model.trace import Disposition, Trace
from kptrace.walkers.netfilter import trace_flow

NODE_IP = "192.168.0.2"


def run(tmp_path: Path, dump: str, src: str, dst: str, dport: int | None = 80, proto: str = "tcp",
        node_ips: tuple[str, ...] = (NODE_IP,), extra: dict[str, str] | None = None, in_iface: str | None = None) -> Trace:
    d = tmp_path / "bundle"
    d.mkdir(exist_ok=True)
    (d / "iptables-save.txt").write_text(dump)
    for name, text in (extra or {}).items():
        (d / name).write_text(text)
    node = load_node([d], list(node_ips))
    return trace_flow(node, Flow(ip_address(src), ip_address(dst), proto, None, dport, in_iface))


def actions(t: Trace, branch: int = 0) -> list[str]:
    return [s.action for s in t.branches[branch].steps]


def test_mark_bits_masq_then_cleared_by_xor(tmp_path: Path) -> None:
    dump = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:MARKIT - [0:0]
-A PREROUTING -j MARKIT
-A PREROUTING -m mark --mark 0x4000/0x4000 -j DNAT --to-destination 10.244.1.9:8080
-A MARKIT -j MARK --set-xmark 0x4000/0x4000
-A POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A POSTROUTING -j MARK --xor-mark 0x4000
-A POSTROUTING -m mark --mark 0x4000/0x4000 -j ACCEPT
-A POSTROUTING -j MASQUERADE
COMMIT
"""
    t = run(tmp_path, dump, "203.0.113.2", "10.96.0.1")
    b = t.branches[0]
    assert b.dnat == "10.244.1.9:8080" and b.masquerade
    # After the xor the mark is clear, so the ACCEPT that tests it is skipped and MASQUERADE runs.
    assert actions(t)[-2:] == ["MARK", "MASQUERADE"]


def test_statistic_branches_multiply_and_sum_to_one(tmp_path: Path) -> None:
    dump = """*nat
:PREROUTING ACCEPT [0:0]
:SVC - [0:0]
-A PREROUTING -d 10.96.0.10 -j SVC
-A SVC -m statistic --mode random --probability 0.33333333349 -j DNAT --to-destination 10.0.0.1:53
-A SVC -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.0.0.2:53
-A SVC -j DNAT --to-destination 10.0.0.3:53
COMMIT
"""
    t = run(tmp_path, dump, "203.0.113.2", "10.96.0.10", 53, "udp")
    probs = {b.dnat: b.probability for b in t.branches}
    assert set(probs) == {"10.0.0.1:53", "10.0.0.2:53", "10.0.0.3:53"}
    assert abs(sum(probs.values()) - 1) < 1e-12
    assert all(abs(p - 1 / 3) < 1e-6 for p in probs.values())


def test_goto_returns_to_callers_caller(tmp_path: Path) -> None:
    dump = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:A - [0:0]
:B - [0:0]
-A FORWARD -j A
-A FORWARD -j DROP
-A A -g B
-A A -j REJECT
-A B -j RETURN
COMMIT
"""
    t = run(tmp_path, dump, "203.0.113.2", "10.244.1.9")
    # B returns to FORWARD (the caller of A), skipping A's REJECT; FORWARD then drops.
    assert t.disposition == Disposition.DROPPED
    assert actions(t)[-4:] == ["JUMP", "GOTO", "RETURN", "DROP"]


def test_return_in_builtin_chain_applies_policy(tmp_path: Path) -> None:
    dump = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n-A FORWARD -j RETURN\n-A FORWARD -j ACCEPT\nCOMMIT\n"
    assert run(tmp_path, dump, "203.0.113.2", "10.244.1.9").disposition == Disposition.DROPPED


def test_forward_policy_drop_and_reject_and_delivery(tmp_path: Path) -> None:
    dump = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp --dport 22 -j REJECT --reject-with tcp-reset
COMMIT
"""
    assert run(tmp_path, dump, "203.0.113.2", "10.244.1.9").disposition == Disposition.DROPPED
    assert run(tmp_path, dump, "203.0.113.2", NODE_IP, 22).disposition == Disposition.REJECTED
    assert run(tmp_path, dump, "203.0.113.2", NODE_IP, 80).disposition == Disposition.DELIVERED


def test_unknown_match_makes_branch_undetermined_with_rule_cited(tmp_path: Path) -> None:
    dump = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m quota2 --name x -j DROP\nCOMMIT\n"
    t = run(tmp_path, dump, "203.0.113.2", "10.244.1.9")
    assert t.disposition == Disposition.UNDETERMINED
    assert t.branches[0].unknowns[0].startswith("bundle/iptables-save.txt:4:")
    assert "quota2" in t.branches[0].unknowns[0]


def test_missing_chain_in_partial_dump_is_undetermined(tmp_path: Path) -> None:
    dump = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j ACCEPT\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"
    t = run(tmp_path, dump, "203.0.113.2", "10.244.1.9")
    assert t.disposition == Disposition.FORWARDED  # complete tables: nothing unknown


def test_addrtype_local_needs_node_addresses(tmp_path: Path) -> None:
    dump = """*nat
:PREROUTING ACCEPT [0:0]
:NP - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j NP
-A NP -p tcp --dport 30080 -j DNAT --to-destination 10.244.1.9:80
COMMIT
"""
    t = run(tmp_path, dump, "203.0.113.2", NODE_IP, 30080, node_ips=())
    assert t.disposition == Disposition.UNDETERMINED and "--node-ip" in t.branches[0].unknowns[0]
    t = run(tmp_path, dump, "203.0.113.2", NODE_IP, 30080)
    assert t.endpoints == ["10.244.1.9:80"]
    ip_addr = "2: eth0: <BROADCAST,UP> mtu 1500\n    inet 192.168.0.2/24 brd 192.168.0.255 scope global eth0\n"
    t = run(tmp_path, dump, "203.0.113.2", NODE_IP, 30080, node_ips=(), extra={"ip-addr.txt": ip_addr})
    assert t.endpoints == ["10.244.1.9:80"]


def test_local_origin_goes_through_output_and_loops_back(tmp_path: Path) -> None:
    dump = """*nat
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A OUTPUT -d 10.96.0.1 -p tcp --dport 443 -j DNAT --to-destination 192.168.0.2:6443
COMMIT
*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp --dport 6443 -i lo -j ACCEPT
-A INPUT -j DROP
COMMIT
"""
    t = run(tmp_path, dump, NODE_IP, "10.96.0.1", 443)
    assert t.origin == "local" and t.disposition == Disposition.DELIVERED
    hooks = [s.hook for s in t.branches[0].steps]
    assert hooks.index("OUTPUT") < hooks.index("POSTROUTING") < hooks.index("INPUT")


def test_ip_forward_zero_drops_forwarded_packet(tmp_path: Path) -> None:
    dump = "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"
    t = run(tmp_path, dump, "203.0.113.2", "10.244.1.9", extra={"sysctl.txt": "net.ipv4.ip_forward = 0\n"})
    assert t.disposition == Disposition.DROPPED
    assert t.branches[0].steps[-1].source == "bundle/sysctl.txt:1"


def test_martian_localhost_from_pod(tmp_path: Path) -> None:
    dump = "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"
    assert run(tmp_path, dump, "10.244.1.5", "127.0.0.1", 3001).disposition == Disposition.DROPPED
    t = run(tmp_path, dump, "10.244.1.5", "127.0.0.1", 3001,
            extra={"sysctl.txt": "net.ipv4.conf.all.route_localnet = 1\n"})
    assert t.disposition == Disposition.DELIVERED


def test_recent_rcheck_assumes_no_affinity_and_says_so(tmp_path: Path) -> None:
    dump = """*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -m recent --name SEP1 --rcheck --seconds 10800 --reap --rsource -j DNAT --to-destination 10.0.0.1:80
-A PREROUTING -j DNAT --to-destination 10.0.0.2:80
COMMIT
"""
    t = run(tmp_path, dump, "203.0.113.2", "10.96.0.5")
    assert t.endpoints == ["10.0.0.2:80"]
    assert any("recent list 'SEP1'" in a for a in t.branches[0].assumptions)


@pytest.mark.parametrize(("proto", "expected"), [("tcp", "10.0.0.1:80"), ("udp", None)])
def test_protocol_module_needs_matching_protocol(tmp_path: Path, proto: str, expected: str | None) -> None:
    dump = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -m tcp --dport 80 --syn -j DNAT --to-destination 10.0.0.1\nCOMMIT\n"
    t = run(tmp_path, dump, "203.0.113.2", "10.96.0.5", 80, proto)
    assert (t.branches[0].dnat or None) == expected


def test_ingress_interface_wildcards(tmp_path: Path) -> None:
    dump = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -i cni+ -j DROP\nCOMMIT\n"
    assert run(tmp_path, dump, "10.244.1.5", "10.244.2.9", in_iface="cni0").disposition == Disposition.DROPPED
    assert run(tmp_path, dump, "10.244.1.5", "10.244.2.9", in_iface="eth0").disposition == Disposition.FORWARDED
    t = run(tmp_path, dump, "10.244.1.5", "10.244.2.9")
    assert t.disposition == Disposition.UNDETERMINED and "input interface" in t.branches[0].unknowns[0]


def test_ipv6_service_dnat(tmp_path: Path) -> None:
    dump = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SVC-6 - [0:0]
-A PREROUTING -d fd00:10:96::a/128 -p udp -m udp --dport 53 -j KUBE-SVC-6
-A KUBE-SVC-6 -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination [fd00:10:244:1::9]:53
-A KUBE-SVC-6 -j DNAT --to-destination [fd00:10:244:2::7]:53
COMMIT
"""
    d = tmp_path / "b"
    d.mkdir()
    (d / "ip6tables-save.txt").write_text(dump)
    (d / "iptables-save.txt").write_text("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    node = load_node([d], ["2001:db8::2"])
    t = trace_flow(node, Flow(ip_address("fd00:10:244:1::5"), ip_address("fd00:10:96::a"), "udp", None, 53))
    assert sorted(t.endpoints) == ["[fd00:10:244:1::9]:53", "[fd00:10:244:2::7]:53"]
    assert t.disposition == Disposition.FORWARDED


def test_legacy_and_nft_backends_both_run(tmp_path: Path) -> None:
    """Rules split between iptables-nft and iptables-legacy: both sets of hooks see the packet."""
    d = tmp_path / "split"
    d.mkdir()
    (d / "iptables-nft-save.txt").write_text(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n"
        "-A FORWARD -j KUBE-FORWARD\n-A KUBE-FORWARD -d 10.244.0.0/16 -j ACCEPT\nCOMMIT\n")
    (d / "iptables-legacy-save.txt").write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\nCOMMIT\n")
    node = load_node([d], [NODE_IP])
    t = trace_flow(node, Flow(ip_address("10.244.1.5"), ip_address("10.244.2.9"), "tcp", None, 80))
    # The nft FORWARD accepts, which only ends that base chain; legacy's FORWARD policy then drops.
    assert t.disposition == Disposition.DROPPED
    last = t.branches[0].steps[-1]
    assert last.source == "split/iptables-legacy-save.txt:3" and last.action == "POLICY DROP"


# --- absent is not empty (issue 15, point 5) ------------------------------------------------------------

DNAT_TO_NODE = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -d 198.51.100.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 192.168.0.2:10250
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""


def test_without_node_addresses_whether_a_destination_is_local_is_a_branch(tmp_path: Path) -> None:
    """Nothing shows the node's addresses: 192.168.0.2 may be one (DELIVERED through INPUT) or not (FORWARD's
    DROP policy); the answer depends on it and says what would settle it, the rest a what-if."""
    d = tmp_path / "b"
    d.mkdir()
    (d / "iptables-save.txt").write_text(DNAT_TO_NODE)
    flow = Flow(ip_address("203.0.113.2"), ip_address("198.51.100.10"), "tcp", None, 80)
    t = trace_flow(load_node([d]), flow)
    assert t.disposition == Disposition.UNDETERMINED
    assert any("node's own addresses" in u for b in t.branches for u in b.unknowns), t.branches
    assert {b.disposition for b in t.conditional} == {Disposition.DROPPED}
    assert trace_flow(load_node([d], [NODE_IP]), flow).disposition == Disposition.DELIVERED
    (d / "ip-route.txt").write_text("192.168.0.0/24 dev eth0 proto kernel scope link src 192.168.0.2\n")
    assert trace_flow(load_node([d]), flow).disposition == Disposition.DELIVERED


def test_without_an_nft_ruleset_a_kubernetes_nodes_nft_tables_are_unknown(tmp_path: Path) -> None:
    """A Kubernetes node (node.yaml) whose iptables show no kube-proxy chain: its Service rules may be an nft
    table, so without `nft list ruleset` the answer depends on it. kube-proxy's chains in iptables (its mode)
    or an nft ruleset given settle it."""
    d = tmp_path / "b"
    d.mkdir()
    (d / "iptables-save.txt").write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                                         ":KUBE-FIREWALL - [0:0]\nCOMMIT\n")
    (d / "node.yaml").write_text("node_ips: [192.168.0.2]\npod_cidr: 10.244.1.0/24\n")
    (d / "ip-route.txt").write_text("default via 192.168.0.1 dev eth0\n"
                                    "192.168.0.0/24 dev eth0 proto kernel scope link src 192.168.0.2\n")
    flow = Flow(ip_address("10.244.1.5"), ip_address("10.96.0.10"), "tcp", None, 80, "cni0")
    t = trace_flow(load_node([d]), flow)
    assert t.disposition == Disposition.UNDETERMINED
    assert any("nft" in u for b in t.branches for u in b.unknowns), t.branches
    assert {b.disposition for b in t.conditional} == {Disposition.FORWARDED}
    (d / "nft-ruleset.txt").write_text("table inet filter {\n}\n")
    assert trace_flow(load_node([d]), flow).disposition == Disposition.FORWARDED
    (d / "nft-ruleset.txt").unlink()
    (d / "iptables-save.txt").write_text("*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n")
    t = trace_flow(load_node([d]), flow)
    assert t.disposition == Disposition.FORWARDED
    assert any("no nft ruleset in the input" in a for a in t.assumptions), t.assumptions
