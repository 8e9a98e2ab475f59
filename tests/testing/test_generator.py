"""Tests for the synthetic kube-proxy dump generator.

The structural tests use a tiny local parser on purpose: they must not depend
on kptrace's own parser, which these dumps exist to exercise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from kptrace.testing.generator import (
    GeneratedRuleset,
    chain_hash,
    generate_iptables,
    iptables_probability,
    main,
)

BUILTIN_TARGETS = {
    "ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "SNAT", "MASQUERADE", "MARK",
}


@dataclass
class Table:
    chains: list[str] = field(default_factory=list)
    rules: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    order: list[str] = field(default_factory=list)  # chain of each rule, in file order


def parse(text: str) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    cur: Table | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            cur = tables[line[1:]] = Table()
        elif line.startswith(":"):
            assert cur is not None
            cur.chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            assert cur is not None
            chain = line.split()[1]
            cur.rules[chain].append(line)
            cur.order.append(chain)
    return tables


def target(rule: str) -> str | None:
    words = rule.split()
    return words[words.index("-j") + 1] if "-j" in words else None


def option(rule: str, name: str) -> str:
    words = rule.split()
    return words[words.index(name) + 1]


@pytest.fixture(scope="module")
def small() -> GeneratedRuleset:
    # Inflated fractions so every code path appears in a small dump.
    return generate_iptables(
        300, 5, seed=7, lb_fraction=0.1, local_policy_fraction=0.15, no_endpoint_fraction=0.05,
        affinity_fraction=0.05, large_cluster_mode=False,
    )


@pytest.fixture(scope="module")
def small_tables(small: GeneratedRuleset) -> dict[str, Table]:
    return parse(small.text)


# -- determinism and kube-proxy formulas -----------------------------------

def test_deterministic_for_seed() -> None:
    a = generate_iptables(200, 4, seed=1)
    b = generate_iptables(200, 4, seed=1)
    c = generate_iptables(200, 4, seed=2)
    assert a.text == b.text
    assert a.to_meta() == b.to_meta()
    assert a.text != c.text


def test_chain_names_match_real_clusters() -> None:
    # These names appear in every real cluster's dump; they pin the hash input
    # format ("ns/name:port" + lowercase protocol) and the base32 encoding.
    assert chain_hash("kube-system/kube-dns:dnsudp") == "TCOU7JCQXEZGVUNU"
    assert chain_hash("kube-system/kube-dns:dns-tcptcp") == "ERIFXISQEP7F7OF4"
    assert chain_hash("default/kubernetes:httpstcp") == "NPX46M4PTMTKRN6Y"
    rs = generate_iptables(10, 2)
    api = rs.services[0]
    assert (api.key, api.svc_chain) == ("default/kubernetes:https", "KUBE-SVC-NPX46M4PTMTKRN6Y")


def test_probability_text_as_iptables_save_prints_it() -> None:
    assert iptables_probability(2) == "0.50000000000"
    assert iptables_probability(3) == "0.33333333349"
    assert iptables_probability(10) == "0.10000000009"
    # Checked against iptables-nft-save 1.8.9 for every n in 2..1000.
    assert iptables_probability(1000) == "0.00100000016"


# -- structure ---------------------------------------------------------------

def test_every_jump_target_is_declared(small_tables: dict[str, Table]) -> None:
    for name, table in small_tables.items():
        declared = set(table.chains)
        for chain, rules in table.rules.items():
            assert chain in declared, (name, chain)
            for rule in rules:
                tgt = target(rule)
                assert tgt is None or tgt in BUILTIN_TARGETS or tgt in declared, (name, rule)


def test_layout_is_iptables_save_order(small_tables: dict[str, Table]) -> None:
    for table in small_tables.values():
        builtins = [c for c in table.chains if c.isupper() and not c.startswith("KUBE-")]
        users = table.chains[len(builtins):]
        assert users == sorted(users)
        # Rules are grouped by chain, in declaration order.
        seen = list(dict.fromkeys(table.order))
        assert seen == [c for c in table.chains if c in table.rules]


def test_nodeports_jump_is_last_in_kube_services(small_tables: dict[str, Table]) -> None:
    rules = small_tables["nat"].rules["KUBE-SERVICES"]
    assert target(rules[-1]) == "KUBE-NODEPORTS"
    assert "-m addrtype --dst-type LOCAL" in rules[-1]
    assert all(target(r) != "KUBE-NODEPORTS" for r in rules[:-1])


def test_probabilities_give_uniform_choice(small_tables: dict[str, Table]) -> None:
    nat = small_tables["nat"]
    checked = 0
    for chain in nat.chains:
        if not chain.startswith(("KUBE-SVC-", "KUBE-SVL-")):
            continue
        jumps = [r for r in nat.rules[chain] if target(r).startswith("KUBE-SEP-") and "-m recent" not in r]
        assert jumps and "statistic" not in jumps[-1], chain
        remaining, chances = 1.0, []
        for rule in jumps:
            p = float(option(rule, "--probability")) if "statistic" in rule else 1.0
            chances.append(remaining * p)
            remaining *= 1.0 - p
        assert sum(chances) == pytest.approx(1.0, abs=1e-12)
        assert chances == pytest.approx([1.0 / len(jumps)] * len(jumps), abs=1e-8)
        checked += 1
    assert checked > 250


def test_metadata_matches_dump(small: GeneratedRuleset, small_tables: dict[str, Table]) -> None:
    nat, filt = small_tables["nat"], small_tables["filter"]
    services_rules = "\n".join(nat.rules["KUBE-SERVICES"])
    for svc in small.services:
        vip = f"-d {svc.cluster_ip}/32 -p {svc.proto} -m comment --comment \"{svc.key} "
        if not svc.endpoints:
            assert svc.cluster_ip_verdict == "REJECT"
            assert any(vip in r and "REJECT --reject-with icmp-port-unreachable" in r
                       for r in filt.rules["KUBE-SERVICES"])
            assert svc.svc_chain not in nat.chains
            continue
        assert f"{vip}cluster IP\" -m {svc.proto} --dport {svc.port} -j {svc.svc_chain}" in services_rules
        for ep in svc.endpoints:
            dnat = nat.rules[ep.chain][-1]
            assert dnat.endswith(f"-j DNAT --to-destination {ep.ip}:{ep.port}")
        for chain in svc.chains():
            assert chain in nat.chains
        if svc.external_verdict == "DROP":
            assert any(f"\"{svc.key} has no local endpoints\"" in r and r.endswith("-j DROP")
                       for r in filt.rules["KUBE-EXTERNAL-SERVICES"])
            assert f"-j {svc.svl_chain}" not in "\n".join(nat.rules[svc.ext_chain])


def test_every_path_is_present(small: GeneratedRuleset) -> None:
    verdicts = {(s.cluster_ip_verdict, s.external_verdict, s.policy) for s in small.services}
    assert ("REJECT", None, "Cluster") in verdicts
    assert ("DNAT", "DNAT", "Local") in verdicts
    assert ("DNAT", "DROP", "Local") in verdicts
    assert any(s.lb_ip for s in small.services)
    assert any(s.session_affinity == "ClientIP" for s in small.services)
    assert any(not s.port_name for s in small.services)
    assert any(s.protocol == "UDP" for s in small.services)
    assert "KUBE-FW-" in small.text and "KUBE-PROXY-FIREWALL -d" in small.text


def test_large_cluster_mode_drops_endpoint_comments() -> None:
    big = generate_iptables(150, 10, seed=3)  # 1000+ endpoints -> auto on
    assert big.large_cluster_mode
    assert " -> " not in big.text
    assert "-A KUBE-SEP-" in big.text and '"kube-system/kube-dns:dns cluster IP"' in big.text
    assert not generate_iptables(20, 3).large_cluster_mode


def test_pick_and_meta_roundtrip(small: GeneratedRuleset) -> None:
    probe = small.pick(verdict="DNAT")
    assert probe.endpoints
    assert small.pick(verdict="DROP", external=True).policy == "Local"
    meta = json.loads(json.dumps(small.to_meta()))
    assert len(meta["services"]) == 300
    assert meta["lines"] == small.lines


def test_cli_writes_dump_and_meta(tmp_path) -> None:
    out, meta = tmp_path / "dump.txt", tmp_path / "meta.json"
    assert main(["--services", "40", "--endpoints", "3", "-o", str(out), "--meta", str(meta)]) == 0
    assert out.read_text() == generate_iptables(40, 3).text
    assert len(json.loads(meta.read_text())["services"]) == 40


# -- kernel: the dump must be loadable exactly as iptables-save printed it --

def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace"
    if not shutil.which("ip") or not shutil.which("iptables-restore"):
        return "needs ip(8) and iptables-restore"
    return None


def _backends() -> list[str]:
    return [b for b in ("nft", "legacy") if shutil.which(f"iptables-{b}-restore")] or [""]


def _tables_without_comments(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cur: list[str] = []
    for line in text.splitlines():
        if line.startswith("*"):
            cur = out[line] = []
        elif not line.startswith("#"):
            cur.append(line)
    return out


def _require_kernel() -> None:
    reason = _kernel_unavailable()
    if reason:
        if os.environ.get("KPTRACE_REQUIRE_KERNEL") == "1":
            pytest.fail(f"KPTRACE_REQUIRE_KERNEL=1 but {reason}")
        pytest.skip(reason)


def _roundtrip(ns: str, backend: str, rs: GeneratedRuleset, dump) -> None:
    suffix = f"-{backend}" if backend else ""
    run = ["ip", "netns", "exec", ns]
    with dump.open() as fh:
        test = subprocess.run([*run, f"iptables{suffix}-restore", "--test"], stdin=fh,
                              capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    # Load for real, then compare with what iptables-save prints back: proves
    # the option order and normalisation are byte-exact.
    with dump.open() as fh:
        subprocess.run([*run, f"iptables{suffix}-restore"], stdin=fh, check=True)
    saved = subprocess.run([*run, f"iptables{suffix}-save"], check=True,
                           capture_output=True, text=True).stdout
    assert _tables_without_comments(saved) == _tables_without_comments(rs.text), backend
    for table in ("nat", "filter", "mangle"):  # a clean slate for the next load
        subprocess.run([*run, f"iptables{suffix}", "-t", table, "-F"], check=True)
        subprocess.run([*run, f"iptables{suffix}", "-t", table, "-X"], check=True)


@pytest.mark.kernel
def test_kernel_restore_and_roundtrip(tmp_path) -> None:
    _require_kernel()
    rs = generate_iptables(50, 4, seed=11, lb_fraction=0.1, local_policy_fraction=0.1,
                           affinity_fraction=0.1, large_cluster_mode=False)
    dump = tmp_path / "dump.txt"
    dump.write_text(rs.text)
    ns = f"kpt-gen-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for backend in _backends():
            _roundtrip(ns, backend, rs, dump)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


@pytest.mark.kernel
def test_kernel_nfacct_variant(tmp_path) -> None:
    _require_kernel()
    rs = generate_iptables(30, 2, seed=5, nodeport_fraction=0.5, nfacct=True)
    assert "--nfacct-name  localhost_nps_accepted_pkts" in rs.text
    dump = tmp_path / "dump.txt"
    dump.write_text(rs.text)
    ns = f"kpt-gen-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        if not shutil.which("nfacct"):
            # Without the counters a real load fails; --test still parses it.
            with dump.open() as fh:
                res = subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "--test"], stdin=fh,
                                     capture_output=True, text=True)
            assert res.returncode == 0, res.stderr
            return
        for name in ("localhost_nps_accepted_pkts", "ct_state_invalid_dropped_pkts"):
            subprocess.run(["ip", "netns", "exec", ns, "nfacct", "add", name], check=True)
        _roundtrip(ns, "", rs, dump)
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
