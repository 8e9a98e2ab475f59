"""Tests for the synthetic kube-proxy nftables-mode ruleset generator.

The structural tests read the listing with a tiny local parser on purpose, so
they do not depend on kptrace's nft parser; the kptrace tests then check that
kptrace reads the same text and traces it to the answer the metadata predicts.
The kernel tests are the judge of the text itself: nft must print it back as
is, and real packets through the loaded ruleset must be DNATed or rejected.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest

from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.model.nft import NftRuleset, UnknownStmt, Xt
from kptrace.model.trace import Disposition, Trace
from kptrace.parsers.nft_text import parse_nft_text
from kptrace.render.jsonout import trace_json
from kptrace.testing.generator import ServicePort, generate_iptables
from kptrace.testing.generator_nft import (
    GeneratedNft,
    generate_nftables,
    hash_and_truncate,
    main,
    nft_time,
    service_chains,
)
from kptrace.walkers.netfilter import trace_flow

POD = "10.244.1.200"  # a pod on this node (10.244.1.0/24 is the local pod prefix)
CLIENT, BLOCKED = "203.0.113.7", "198.51.100.9"  # inside / outside loadBalancerSourceRanges
NODE_IP = "192.168.0.2"
# Inflated fractions so every code path appears in a small ruleset.
SMALL = {"lb_fraction": 0.1, "local_policy_fraction": 0.15, "no_endpoint_fraction": 0.08, "affinity_fraction": 0.08}


@pytest.fixture(scope="module")
def small() -> GeneratedNft:
    return generate_nftables(120, 3, seed=7, **SMALL)  # type: ignore[arg-type]


# -- a tiny reader of `nft list ruleset` ---------------------------------------

def objects(text: str) -> dict[str, dict[str, list[str]]]:
    """{"chain"|"set"|"map": {name: body lines}} in listing order."""
    out: dict[str, dict[str, list[str]]] = {"chain": {}, "set": {}, "map": {}}
    body: list[str] = []
    for line in text.splitlines():
        m = re.match(r"\t(chain|set|map) (\S+) \{$", line)
        if m:
            body = out[m.group(1)][m.group(2)] = []
        elif line.startswith("\t\t"):
            body.append(line.strip())
    return out


def elements(lines: list[str]) -> list[str]:
    text = " ".join(lines)
    m = re.search(r"elements = \{ (.*) \}", text)
    return [e.strip() for e in m.group(1).split(",")] if m else []


# -- naming, determinism, model ---------------------------------------------------

def test_names_match_kube_proxy() -> None:
    # From kube-proxy's own TestOverallNFTablesRules expectations, and a real node's listing.
    assert hash_and_truncate("ns1/svc1/tcp/p80") == "ULMVA6XW-ns1/svc1/tcp/p80"
    assert hash_and_truncate("ns1/svc1/tcp/p80__10.180.0.1/80") == "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    api = generate_nftables(10, 2).services[0]
    assert service_chains(api)["service"] == "service-2QRHZV4L-default/kubernetes/tcp/https"
    assert len(hash_and_truncate("x" * 300)) == 240 and hash_and_truncate("x" * 300).endswith("...")
    assert [nft_time(s) for s in (10800, 90061, 0, 59)] == ["3h", "1d1h1m1s", "0s", "59s"]


def test_deterministic_for_seed() -> None:
    a, b, c = (generate_nftables(150, 3, seed=s) for s in (1, 1, 2))
    assert a.text == b.text and a.to_meta() == b.to_meta() and a.transaction() == b.transaction()
    assert a.text != c.text


def test_same_services_as_iptables_mode(small: GeneratedNft) -> None:
    ipt = generate_iptables(120, 3, seed=7, **SMALL)  # type: ignore[arg-type]
    assert [s.to_dict() for s in small.services] == [s.to_dict() for s in ipt.services]


@pytest.fixture(scope="module")
def big() -> GeneratedNft:
    return generate_nftables(2000, 10, seed=3)


def test_one_chain_set_per_service_port(big: GeneratedNft) -> None:
    # A Service's ports have distinct names (the API server insists), so every (name, protocol) of
    # the iptables generator's model is one nft service; generator_nft would keep only the first
    # of a repeated one, as kube-proxy does.
    ipt, rs = generate_iptables(2000, 10, seed=3), big
    keys = Counter((s.key, s.proto) for s in ipt.services)
    assert max(keys.values()) == 1
    assert len(rs.services) == len(ipt.services)
    assert len({(s.key, s.proto) for s in rs.services}) == len(rs.services)


# -- structure -----------------------------------------------------------------------

def test_layout_and_references(small: GeneratedNft) -> None:
    objs = objects(small.text)
    chains = list(objs["chain"])
    assert chains[:8] == ["filter-prerouting", "filter-input", "filter-forward", "filter-output",
                          "filter-output-post-dnat", "nat-prerouting", "nat-output", "nat-postrouting"]
    assert chains[8:16] == ["nodeport-endpoints-check", "service-endpoints-check", "firewall-check", "services",
                            "masquerading", "cluster-ips-check", "mark-for-masquerade", "reject-chain"]
    assert list(objs["set"])[:2] == ["cluster-ips", "nodeport-ips"]
    assert list(objs["map"]) == ["no-endpoint-services", "no-endpoint-nodeports", "firewall-ips", "service-ips",
                                 "service-nodeports"]
    sets = set(objs["set"]) | set(objs["map"])
    everything = re.sub(r'comment "[^"]*"', "", small.text)
    for target in re.findall(r"(?:goto|jump) (\S+?)[,\s}]", everything):
        assert target in objs["chain"], target
    for ref in re.findall(r"@(\S+)", everything):
        assert ref in sets, ref
    # nft's layout: the table comment, then sets/maps, then chains, one blank line between objects.
    assert small.text.startswith('table ip kube-proxy {\n\tcomment "rules for kube-proxy"\n\tset cluster-ips {\n')
    assert small.text.endswith("\t}\n}\n") and "\n\n\n" not in small.text


def test_metadata_matches_listing(small: GeneratedNft) -> None:
    objs = objects(small.text)
    service_ips = elements(objs["map"]["service-ips"])
    no_endpoints = elements(objs["map"]["no-endpoint-services"])
    for svc, meta in zip(small.services, small.to_meta()["services"]):
        vip = f"{svc.cluster_ip} . {svc.proto} . {svc.port}"
        assert svc.cluster_ip in elements(objs["set"]["cluster-ips"])
        if not svc.endpoints:
            assert f'{vip} comment "{svc.key}" : goto reject-chain' in no_endpoints
            assert meta["service_chain"] is None
            continue
        chain = meta["service_chain"]
        assert f"{vip} : goto {chain}" in service_ips
        rules = objs["chain"][chain]
        assert rules[0] == (f"ip daddr {svc.cluster_ip} {svc.proto} dport {svc.port} ip saddr != 10.244.0.0/16 "
                            "jump mark-for-masquerade")
        assert rules[-1].startswith(f"numgen random mod {len(svc.endpoints)} vmap {{ 0 : goto endpoint-")
        for ep, ep_meta in zip(svc.endpoints, meta["endpoints"]):
            assert objs["chain"][ep_meta["chain"]][-1] == f"meta l4proto {svc.proto} dnat to {ep.ip}:{ep.port}"
        if svc.external_verdict == "DROP":
            assert meta["local_chain"] is None
            assert not any(r.startswith("goto ") for r in objs["chain"][meta["external_chain"]])


def test_every_path_is_present(small: GeneratedNft) -> None:
    kinds = Counter((s.cluster_ip_verdict, s.external_verdict, s.policy) for s in small.services)
    assert kinds[("REJECT", None, "Cluster")] and kinds[("DNAT", "DNAT", "Local")] and kinds[("DNAT", "DROP", "Local")]
    assert any(s.lb_ip for s in small.services) and any(s.session_affinity == "ClientIP" for s in small.services)
    text = small.text
    for needle in ("\tset affinity-", "\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n",
                   "\tchain local-", "\tchain firewall-", 'comment "short-circuit pod traffic"',
                   "ip saddr != { 192.168.0.0/16, 198.18.", "ip daddr 10.96.0.0/12 drop"):
        assert needle in text, needle


@pytest.mark.parametrize("order", ["nft-1.0", "network"])
def test_elements_in_nft_listing_order(order: str) -> None:
    # nft 1.0.x sorts a concatenation by its bytes read little-endian (the port's
    # low byte weighs most; the kernel test proves it with nft 1.0.6), releases
    # after October 2025 read them big-endian; an ipv4_addr set sorts numerically.
    rs = generate_nftables(120, 3, seed=7, element_order=order, **SMALL)  # type: ignore[arg-type]
    objs = objects(rs.text)
    ips = elements(objs["set"]["cluster-ips"])
    assert ips == sorted(ips, key=lambda ip: int(IPv4Address(ip)))
    proto = {"tcp": 6, "udp": 17}

    def key(elem: str) -> int:
        parts = elem.split(" : ")[0].split(" comment ")[0].split(" . ")
        raw = b"".join([IPv4Address(parts[0]).packed] if len(parts) == 3 else [])
        raw += bytes((proto[parts[-2]],)) + int(parts[-1]).to_bytes(2, "big")
        return int.from_bytes(raw, "little" if order == "nft-1.0" else "big")

    for name, body in objs["map"].items():
        elems = elements(body)
        assert elems == sorted(elems, key=key), name


def test_pick_meta_and_bundle(small: GeneratedNft, tmp_path: Path) -> None:
    assert small.pick(verdict="DNAT").endpoints
    assert small.pick(verdict="DROP", external=True).policy == "Local"
    meta = json.loads(json.dumps(small.to_meta()))
    assert len(meta["services"]) == 120 and meta["lines"] == small.lines == small.text.count("\n")
    bundle = small.write_bundle(tmp_path / "b")
    assert (bundle / "nft-ruleset.txt").read_text() == small.text
    assert f"inet {NODE_IP}/24" in (bundle / "ip-addr.txt").read_text()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, meta, tx = tmp_path / "r.nft", tmp_path / "meta.json", tmp_path / "tx.nft"
    argv = ["--services", "40", "--endpoints", "3", "-o", str(out), "--bundle", str(tmp_path / "b"),
            "--meta", str(meta), "--transaction", str(tx)]
    assert main(argv) == 0
    expected = generate_nftables(40, 3)
    assert out.read_text() == expected.text and tx.read_text() == expected.transaction()
    assert (tmp_path / "b" / "nft-ruleset.txt").exists() and len(json.loads(meta.read_text())["services"]) == 40
    assert re.fullmatch(r"generated 40 service ports, \d+ lines, [\d.]+ MB in [\d.]+ s\n", capsys.readouterr().err)


def test_2000_services_by_10_endpoints(big: GeneratedNft) -> None:
    rs = big
    meta = rs.to_meta()["services"]
    per_service = sum(len(m["endpoints"]) + sum(m[k] is not None for k in
                                                ("service_chain", "local_chain", "external_chain", "firewall_chain"))
                      for m in meta if m["endpoints"] or m["firewall_chain"])
    assert rs.text.count("\n\tchain ") == 16 + per_service
    assert rs.lines > 100_000 and rs.nbytes == len(rs.text.encode())


# -- kptrace reads the listing and traces it to the expected answer ---------------

@pytest.fixture(scope="module")
def node(small: GeneratedNft, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_node([small.write_bundle(tmp_path_factory.mktemp("nft-bundle"))])


def _trace(node, src: str, dst: str, svc: ServicePort, port: int) -> Trace:  # type: ignore[no-untyped-def]
    trace = trace_flow(node, Flow(ip_address(src), ip_address(dst), svc.proto, None, port))
    doc = trace_json(trace)
    assert abs(sum(b["probability"] for b in doc["branches"]) - 1.0) < 1e-9
    assert not any(b.unknowns for b in trace.branches), [b.unknowns for b in trace.branches]
    return trace


def test_kptrace_parses_everything(small: GeneratedNft) -> None:
    rs = parse_nft_text(small.text, "nft-ruleset.txt")
    assert isinstance(rs, NftRuleset) and not rs.diagnostics
    assert not [r.text for r in rs.all_rules() if any(isinstance(s, (UnknownStmt, Xt)) for s in r.stmts)]


def test_kptrace_cluster_ips(small: GeneratedNft, node) -> None:  # type: ignore[no-untyped-def]
    for svc in small.services:
        trace = _trace(node, POD, svc.cluster_ip, svc, svc.port)
        if not svc.endpoints:
            assert trace.disposition == Disposition.REJECTED, svc.key
            continue
        # One numgen branch per endpoint, each DNATed to it.
        assert sorted(trace_json(trace)["endpoints"]) == sorted(ep.address for ep in svc.endpoints), svc.key
        assert all(b.dnat and not b.disposition.failed for b in trace.branches), svc.key
    probe = small.pick(verdict="DNAT")
    assert _trace(node, POD, probe.cluster_ip, probe, 1).disposition == Disposition.REJECTED  # not a service port
    assert _trace(node, POD, "10.111.255.254", probe, 80).disposition == Disposition.DROPPED  # unallocated


def test_kptrace_node_ports_and_load_balancers(small: GeneratedNft, node) -> None:  # type: ignore[no-untyped-def]
    expected = {"DROP": Disposition.DROPPED, "REJECT": Disposition.REJECTED}
    seen: Counter[tuple[bool, str | None]] = Counter()
    for svc in small.services:
        probes = [(CLIENT, NODE_IP, svc.node_port)] if svc.node_port else []
        probes += [(CLIENT, svc.lb_ip, svc.port)] if svc.lb_ip else []
        for src, dst, port in probes:
            assert port is not None
            trace = _trace(node, src, dst, svc, port)
            if svc.external_verdict == "DNAT":
                eps = svc.local_endpoints if svc.policy == "Local" else svc.endpoints
                assert sorted(trace.endpoints) == sorted(ep.address for ep in eps), (svc.key, dst)
            else:
                assert trace.disposition == expected[str(svc.external_verdict)], (svc.key, dst)
            seen[(dst == NODE_IP, svc.external_verdict)] += 1
        if svc.lb_ip:  # loadBalancerSourceRanges: firewall-check drops other sources
            assert _trace(node, BLOCKED, svc.lb_ip, svc, svc.port).disposition == Disposition.DROPPED
    assert seen[(True, "DNAT")] and seen[(True, "DROP")] and seen[(False, "DNAT")]


# -- kernel: nft must print the text back exactly ---------------------------------

def _skip_or_fail(reason: str) -> None:
    # tests/kernel/conftest.py's convention: KPTRACE_REQUIRE_KERNEL=1 turns a skip into a failure.
    if os.environ.get("KPTRACE_REQUIRE_KERNEL") == "1":
        pytest.fail(f"KPTRACE_REQUIRE_KERNEL=1 but the kernel test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _netns() -> str:
    if os.geteuid() != 0:
        _skip_or_fail("needs root for a network namespace")
    if not shutil.which("ip") or not shutil.which("nft"):
        _skip_or_fail("needs ip(8) and nft(8)")
    name = f"kpt-gennft-{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        _skip_or_fail(f"ip netns unavailable: {res.stderr.strip()}")
    return name


def _load_and_list(ns: str, path: Path) -> str:
    run = ["ip", "netns", "exec", ns, "nft"]
    subprocess.run([*run, "flush", "ruleset"], check=True)
    res = subprocess.run([*run, "-f", str(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return subprocess.run([*run, "list", "ruleset"], check=True, capture_output=True, text=True).stdout


@pytest.mark.kernel
@pytest.mark.parametrize("variant", [
    {},
    {"nodeport_addresses": "all", "service_cidr": None, "seed": 11},
], ids=["primary-nodeport-ips", "nodeport-all-no-service-cidr"])
def test_kernel_round_trip(variant: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    """The listing is nft's own output for kube-proxy's transaction, byte for byte.

    1. `nft -f` of the listing, listed again, gives the same text (a fixed point);
    2. `nft -f` of kube-proxy's transaction (its written forms, its creation order,
       elements unsorted) lists exactly the same text: element order, the
       canonical rule forms and the object order are nft's, not ours.
    """
    rs = generate_nftables(60, 3, **{"seed": 5, **SMALL, **variant})
    listing, tx = tmp_path / "listing.nft", tmp_path / "transaction.nft"
    rs.write(listing)
    tx.write_text(rs.transaction())
    ns = _netns()
    try:
        assert _load_and_list(ns, listing) == rs.text
        assert _load_and_list(ns, tx) == rs.text
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def _sh(*cmd: str) -> str:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True).stdout


def _connect(ns: str, dst: str, port: int) -> str:
    """One TCP connection attempt from inside ``ns``: "refused", "timeout" or "connected"."""
    code = (f"import socket\ns = socket.socket()\ns.settimeout(0.5)\n"
            f"try:\n    s.connect(({dst!r}, {port}))\n    print('connected')\n"
            f"except ConnectionRefusedError:\n    print('refused')\n"
            f"except OSError:\n    print('timeout')\n")
    return _sh("ip", "netns", "exec", ns, sys.executable, "-c", code).strip()


@pytest.mark.kernel
def test_kernel_packets(tmp_path: Path) -> None:
    """Real SYNs from a pod namespace through the loaded ruleset: DNAT to an
    endpoint (read back from conntrack) and a REJECT for a service without endpoints.

    Two namespaces joined by a veth; the node's default route (other nodes' pods,
    the service range) goes into a veth whose peer is in the same namespace, so
    nothing leaves the namespaces.
    """
    if not shutil.which("conntrack"):
        _skip_or_fail("needs conntrack(8)")
    rs = generate_nftables(60, 3, seed=5, **SMALL)  # type: ignore[arg-type]
    rs.write(tmp_path / "r.nft")
    node = _netns()
    pod = node + "-pod"
    try:
        _sh("ip", "netns", "add", pod)
        _sh("ip", "-n", node, "link", "add", "veth-node", "type", "veth", "peer", "name", "veth-pod", "netns", pod)
        # A veth pair with both ends in the node namespace stands in for eth0 (no dummy module needed).
        _sh("ip", "-n", node, "link", "add", "eth0", "type", "veth", "peer", "name", "sink")
        for cmd in (["addr", "add", "10.244.1.1/24", "dev", "veth-node"],
                    ["addr", "add", f"{NODE_IP}/24", "dev", "eth0"], ["link", "set", "lo", "up"], ["link", "set", "veth-node", "up"], ["link", "set", "eth0", "up"],
                    ["link", "set", "sink", "up"], ["route", "add", "default", "dev", "eth0"]):
            _sh("ip", "-n", node, *cmd)
        for cmd in (["addr", "add", f"{POD}/24", "dev", "veth-pod"], ["link", "set", "lo", "up"],
                    ["link", "set", "veth-pod", "up"], ["route", "add", "default", "via", "10.244.1.1"]):
            _sh("ip", "-n", pod, *cmd)
        _sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        _sh("ip", "netns", "exec", node, "nft", "-f", str(tmp_path / "r.nft"))

        svc = next(s for s in rs.services if s.endpoints and s.proto == "tcp" and s.session_affinity == "None"
                   and all(ep.ip.startswith("10.244.") and not ep.ip.startswith("10.244.1.") for ep in s.endpoints))
        assert _connect(pod, svc.cluster_ip, svc.port) == "timeout"  # no host answers for the endpoint
        ct = _sh("ip", "netns", "exec", node, "conntrack", "-L", "-p", "tcp", "--orig-dst", svc.cluster_ip)
        replies = re.findall(r"src=(\S+) dst=" + re.escape(POD) + r" sport=(\d+)", ct)
        assert len(replies) == 1 and f"{replies[0][0]}:{replies[0][1]}" in {ep.address for ep in svc.endpoints}, ct

        empty = next(s for s in rs.services if not s.endpoints and s.proto == "tcp")
        assert _connect(pod, empty.cluster_ip, empty.port) == "refused"  # reject-chain: ICMP port unreachable
    finally:
        for ns in (pod, node):
            subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)
