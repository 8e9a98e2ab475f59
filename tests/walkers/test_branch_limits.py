"""Random branches at scale (issue 20, items 2 and 3): a Service of 1,000 endpoints is walked as a loop, not a
recursion; statistic or numgen splits in series that leave the packet alike are merged; splits that multiply
distinct packets are cut below 1/4096 of the packets, said as one UNDETERMINED branch; `numgen random mod
4294967295` is counted, never enumerated. Every ruleset is generated here.
"""

from __future__ import annotations

import time
from ipaddress import ip_address
from pathlib import Path

from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.model.trace import Disposition, Trace
from kptrace.testing.generator import generate_iptables
from kptrace.walkers.chains import MAX_SPLIT_STEPS, MIN_BRANCH_SHARE
from kptrace.walkers.netfilter import trace_flow

NODE_IP = "192.168.0.2"


def node_of(tmp_path: Path, files: dict[str, str]):  # type: ignore[no-untyped-def]
    d = tmp_path / "bundle"
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return load_node([d], [NODE_IP])


def trace(node, dst: str = "10.96.0.10", dport: int | None = 80, proto: str = "tcp") -> Trace:  # type: ignore[no-untyped-def]
    return trace_flow(node, Flow(ip_address("203.0.113.2"), ip_address(dst), proto, None, dport, "eth0"))


def total(t: Trace) -> float:
    return sum(b.probability for b in t.branches)


def mangle(rules: list[str], nat: str = "") -> str:
    return ("*mangle\n:PREROUTING ACCEPT [0:0]\n:RET - [0:0]\n" + "".join(r + "\n" for r in rules) + "COMMIT\n"
            "*nat\n:PREROUTING ACCEPT [0:0]\n" + nat + "COMMIT\n")


def test_a_service_of_1000_endpoints(tmp_path: Path) -> None:
    g = generate_iptables(5, 1000, seed=1, no_endpoint_fraction=0, nodeport_fraction=0, local_policy_fraction=0,
                          lb_fraction=0, affinity_fraction=0, udp_fraction=0, multi_port_fraction=0)
    svc = next(s for s in g.services if len(s.endpoints) == 1000)
    d = tmp_path / "n"
    d.mkdir()
    (d / "iptables-save.txt").write_text(g.text)
    node = load_node([d], ["192.168.0.2"])
    t = trace_flow(node, Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), "tcp", None, svc.port, "cni0"))
    assert len(t.branches) == 1000 and len({b.dnat for b in t.branches}) == 1000
    assert abs(total(t) - 1) < 1e-9
    assert all(b.disposition != Disposition.UNDETERMINED for b in t.branches)


def test_a_long_chain_of_returning_jumps(tmp_path: Path) -> None:
    """3,000 jumps to a chain that returns: each goes on in the caller, without a frame per jump."""
    node = node_of(tmp_path, {"iptables-save.txt": mangle(["-A PREROUTING -j RET"] * 3000)})
    t = trace(node)
    assert [b.disposition for b in t.branches] == [Disposition.NO_ROUTE] or len(t.branches) == 1


def test_splits_that_leave_the_packet_alike_are_merged(tmp_path: Path) -> None:
    """30 statistic rules in series whose target changes nothing: 2^30 ways, one packet: one branch."""
    rules = [f"-A PREROUTING -m statistic --mode random --probability 0.5 -j LOG --log-prefix s{i}" for i in range(30)]
    node = node_of(tmp_path, {"iptables-save.txt": mangle(rules)})
    start = time.monotonic()
    t = trace(node)
    assert time.monotonic() - start < 5
    assert len(t.branches) == 1 and abs(t.branches[0].probability - 1) < 1e-9
    assert any("random branches reach" in a and "go on as one" in a for a in t.branches[0].assumptions)


def test_splits_that_multiply_packets_are_cut_and_say_so(tmp_path: Path) -> None:
    """20 statistic rules in series, each setting its own mark bit: 2^20 distinct packets. Followed down to
    1/4096 of the packets; the rest is one UNDETERMINED branch that names the limit. Never a hang."""
    rules = [f"-A PREROUTING -m statistic --mode random --probability 0.5 -j MARK --set-xmark {1 << i:#x}/{1 << i:#x}"
             for i in range(20)]
    node = node_of(tmp_path, {"iptables-save.txt": mangle(rules)})
    start = time.monotonic()
    t = trace(node)
    assert time.monotonic() - start < 10
    assert abs(total(t) - 1) < 1e-9
    cut = [b for b in t.branches if b.disposition == Disposition.UNDETERMINED]
    assert cut and any("more than 4096 branches" in u for b in cut for u in b.unknowns)
    assert len(t.branches) <= 1 / MIN_BRANCH_SHARE + 1


def test_a_rare_drop_is_kept_as_its_own_branch(tmp_path: Path) -> None:
    """A share under the limit that ends at once (a DROP) is cheap: it stays a branch, with its probability."""
    node = node_of(tmp_path, {"iptables-save.txt": mangle(
        ["-A PREROUTING -m statistic --mode random --probability 0.00001 -j DROP"])})
    t = trace(node)
    drops = [b for b in t.branches if b.disposition == Disposition.DROPPED]
    assert len(drops) == 1 and abs(drops[0].probability - 0.00001) < 1e-9


NFT_HEAD = "table ip t {\n\tchain a { accept }\n\tchain b { drop }\n\tchain pre {\n\t\ttype filter hook prerouting priority 0; policy accept;\n"


def test_numgen_of_2_to_the_32_is_counted_not_enumerated(tmp_path: Path) -> None:
    node = node_of(tmp_path, {"nft-ruleset.txt": NFT_HEAD + (
        "\t\tnumgen random mod 4294967295 vmap { 0-2147483647 : jump a, 2147483648-4294967294 : jump b }\n\t}\n}\n")})
    start = time.monotonic()
    t = trace(node)
    assert time.monotonic() - start < 5
    dropped = sum(b.probability for b in t.branches if b.disposition == Disposition.DROPPED)
    assert abs(dropped - 2147483647 / 4294967295) < 1e-9


def test_numgen_match_forms_of_2_to_the_32(tmp_path: Path) -> None:
    node = node_of(tmp_path, {"nft-ruleset.txt": NFT_HEAD + (
        "\t\tnumgen random mod 4294967295 < 1000 drop\n"
        "\t\tnumgen random mod 4294967295 { 5, 7-9 } drop\n\t}\n}\n")})
    t = trace(node)
    drops = sorted(b.probability for b in t.branches if b.disposition == Disposition.DROPPED)
    assert len(drops) == 2 and abs(drops[0] - 4 / 4294967295) < 1e-15 and abs(drops[1] - 1000 / 4294967295) < 1e-12
    assert abs(total(t) - 1) < 1e-9


def test_numgen_elements_of_one_verdict_are_one_branch_each(tmp_path: Path) -> None:
    """A range element holds many values: one branch for the element, with the share of its values."""
    node = node_of(tmp_path, {"nft-ruleset.txt": NFT_HEAD + (
        "\t\tnumgen random mod 10 vmap { 0-6 : jump a, 7-9 : jump b }\n\t}\n}\n")})
    t = trace(node)
    assert sorted(round(b.probability, 9) for b in t.branches) == [0.3, 0.7]


def test_nft_splits_in_series(tmp_path: Path) -> None:
    alike = "".join("\t\tnumgen random mod 2 == 0 counter\n" for _ in range(40))
    marks = "".join(f"\t\tnumgen random mod 2 == 0 meta mark set meta mark | {1 << i:#x}\n" for i in range(20))
    node = node_of(tmp_path, {"nft-ruleset.txt": NFT_HEAD + alike + "\t}\n}\n"})
    t = trace(node)
    assert len(t.branches) == 1 and abs(t.branches[0].probability - 1) < 1e-9
    node = node_of(tmp_path, {"nft-ruleset.txt": NFT_HEAD + marks + "\t}\n}\n"})
    start = time.monotonic()
    t = trace(node)
    assert time.monotonic() - start < 10 and abs(total(t) - 1) < 1e-9
    assert any("more than 4096 branches" in u for b in t.branches for u in b.unknowns)


def test_nft_long_chain_of_returning_jumps(tmp_path: Path) -> None:
    rules = "".join("\t\tjump r\n" for _ in range(3000))
    node = node_of(tmp_path, {"nft-ruleset.txt": "table ip t {\n\tchain r { }\n\tchain pre {\n"
                              "\t\ttype filter hook prerouting priority 0; policy accept;\n" + rules + "\t}\n}\n"})
    t = trace(node)
    assert len(t.branches) == 1


def test_random_branches_have_a_budget_of_rule_evaluations(tmp_path: Path) -> None:
    """12 splits into 4,096 distinct packets (each at the floor), then 1,000 more rules each of them walks:
    4M rule evaluations. The branches stop after MAX_SPLIT_STEPS of them, said as UNDETERMINED."""
    rules = [f"-A PREROUTING -m statistic --mode random --probability 0.5 -j MARK --set-xmark {1 << i:#x}/{1 << i:#x}"
             for i in range(12)] + [f"-A PREROUTING -j LOG --log-prefix r{k}" for k in range(1000)]
    node = node_of(tmp_path, {"iptables-save.txt": mangle(rules)})
    start = time.monotonic()
    t = trace(node)
    assert time.monotonic() - start < 10
    assert abs(total(t) - 1) < 1e-9
    assert any(f"more than {MAX_SPLIT_STEPS} rule evaluations" in u for b in t.branches for u in b.unknowns)
