"""Tests for the synthetic kube-proxy IPVS-mode bundle generator.

What each file is checked against:
  ipvsadm.txt     ipvsadm 1.31's own listing of the demo node (the renderer must reproduce it byte
                  for byte) and kptrace's ipvsadm parser (every virtual and real server read back);
  ipset-save.txt  the kernel: `ipset restore` then `ipset save` prints the file back byte for byte,
                  and replaying kube-proxy's own calls (create with hashsize 1024, sorted adds) makes
                  the kernel print the same file, resizes included;
  iptables-save   the kernel: `iptables-restore --test`, then a real load and `iptables-save`;
  the bundle      kptrace's answer for pods and outside clients probing the services.
The kernel tests need root and `ip netns` (IPVS itself is not in the lab kernel).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.parsers.ip_addr import parse_ip_addr
from kptrace.parsers.ipset import parse_ipset
from kptrace.parsers.ipvsadm import parse_ipvsadm
from kptrace.render.jsonout import trace_json
from kptrace.testing.generator import ServicePort, generate_iptables
from kptrace.testing.generator_ipvs import (
    GeneratedBundle,
    RealServer,
    VirtualService,
    generate_ipvs,
    ipset_hash_order,
    jhash2,
    main,
    render_ipvsadm,
    sort_virtual_services,
)
from kptrace.walkers.netfilter import trace_flow

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "kptrace" / "demo" / "ipvs-node"
POD = "10.244.1.200"  # a pod on this node (local_node_pod_prefix 10.244.1.)
OUTSIDE = "203.0.113.7"
NODE_IP = "192.168.0.2"
# Inflated fractions: every kind of service (no endpoints, LB with and without node access,
# Local with and without a local endpoint, ClientIP, UDP NodePorts) in 60 service ports.
KNOBS: dict[str, Any] = dict(seed=4, lb_fraction=0.1, local_policy_fraction=0.15, no_endpoint_fraction=0.05,
                             affinity_fraction=0.05, udp_fraction=0.1)


@pytest.fixture(scope="module")
def bundle() -> GeneratedBundle:
    return generate_ipvs(60, 3, **KNOBS)


@pytest.fixture(scope="module")
def bundle_dir(bundle: GeneratedBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle.write(tmp_path_factory.mktemp("ipvs-bundle") / "node")


# -- the model: the same services as the iptables-mode generator ---------------------------------

def test_deterministic_for_seed() -> None:
    a, b, c = generate_ipvs(80, 3, seed=1), generate_ipvs(80, 3, seed=1), generate_ipvs(80, 3, seed=2)
    assert a.files == b.files
    assert a.to_meta() == b.to_meta()
    assert a.files["ipvsadm.txt"] != c.files["ipvsadm.txt"]


def test_same_services_as_iptables_generator() -> None:
    knobs = {k: v for k, v in KNOBS.items() if k != "seed"}
    ipvs = generate_ipvs(60, 3, seed=9, **knobs)
    ipt = generate_iptables(60, 3, seed=9, **knobs)
    assert [s.to_dict() for s in ipvs.services] == [s.to_dict() for s in ipt.services]


def test_bundle_files_and_write(bundle: GeneratedBundle, bundle_dir: Path) -> None:
    assert sorted(bundle.files) == ["ip-addr.txt", "ipset-save.txt", "iptables-save.txt", "ipvsadm.txt", "node.yaml"]
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(bundle.files)
    assert all((bundle_dir / n).read_text() == t for n, t in bundle.files.items())
    assert bundle.lines == sum(t.count("\n") for t in bundle.files.values())
    assert bundle.nbytes == sum(len(t.encode()) for t in bundle.files.values())


# -- ipvsadm.txt ---------------------------------------------------------------------------------

def test_renderer_reproduces_ipvsadms_own_listing_of_the_demo() -> None:
    # kptrace/demo/ipvs-node/ipvsadm.txt was printed by ipvsadm 1.31's listing code: column widths,
    # the signed-subtraction sort (192.168.x before 10.x), persistence. Rebuild it from its parse,
    # shuffled, and the renderer must give it back byte for byte.
    text = (DEMO / "ipvsadm.txt").read_text()
    vss = [VirtualService(s.protocol.upper(), str(s.address), s.port or 0,
                          tuple(RealServer(str(d.address), d.port or 0, d.forward or "Masq", d.weight or 0,
                                           d.active_conns or 0, d.inactive_conns or 0) for d in s.dests),
                          "", "", s.scheduler or "", s.persistent)
           for s in parse_ipvsadm(text).services]
    random.Random(3).shuffle(vss)
    assert render_ipvsadm(sort_virtual_services(vss)) == text


def _expected_virtual_services(svc: ServicePort, node_ips: tuple[str, ...]) -> dict[tuple[str, str, int], set[str]]:
    """kube-proxy's IPVS calls for one service port, written out independently of the module."""
    internal = {ep.address for ep in svc.endpoints}
    local = {ep.address for ep in svc.endpoints if ep.local}
    # Local policy: the local endpoints, or every endpoint when there is none (kube-proxy PR 97081).
    external = local if svc.policy == "Local" and local else internal
    proto = svc.proto
    out = {(proto, svc.cluster_ip, svc.port): internal}
    if svc.lb_ip:
        out[(proto, svc.lb_ip, svc.port)] = external
    if svc.node_port:
        out.update({(proto, ip, svc.node_port): external for ip in node_ips})
    return out


def test_ipvsadm_reads_back_through_kptraces_parser(bundle: GeneratedBundle) -> None:
    table = parse_ipvsadm(bundle.files["ipvsadm.txt"])
    assert (table.version, table.conn_table_size, table.numeric) == ("1.2.1", 4096, True)
    got: dict[tuple[str, str, int], set[str]] = {}
    for s in table.services:
        assert (s.scheduler, s.listing) == ("rr", "list")
        assert all((d.forward, d.weight, d.active_conns, d.inactive_conns) == ("Masq", 1, 0, 0) for d in s.dests)
        got[(s.protocol, str(s.address), s.port or 0)] = {f"{d.address}:{d.port}" for d in s.dests}
    expected: dict[tuple[str, str, int], set[str]] = {}
    for svc in bundle.services:
        expected.update(_expected_virtual_services(svc, bundle.node_ips))
    assert got == expected
    persistent = {(s.protocol, str(s.address), s.port) for s in table.services if s.persistent == 10800}
    assert persistent == {k for svc in bundle.services if svc.session_affinity == "ClientIP"
                          for k in _expected_virtual_services(svc, bundle.node_ips)}
    assert [str(vs) for vs in bundle.virtual_services] == [f"{s.protocol.upper()} {s.address}:{s.port}"
                                                          for s in table.services]


def test_ipvsadm_sorts_high_addresses_first(bundle: GeneratedBundle) -> None:
    # libipvs compares `ntohl(a) - ntohl(b)` as a signed int: NodePorts on 192.168.0.2 and LB IPs
    # 198.18.x come before the 10.96.0.0/12 cluster IPs, within each protocol.
    tcp = [vs.ip for vs in bundle.virtual_services if vs.protocol == "TCP"]
    first_ten = next(i for i, ip in enumerate(tcp) if ip.startswith("10."))
    assert tcp[:first_ten] and all(not ip.startswith("10.") for ip in tcp[:first_ten])
    assert all(ip.startswith("10.") for ip in tcp[first_ten:])


def test_sort_agrees_with_libipvs_pairwise() -> None:
    # Every pair in the sorted list must compare as libipvs's `(int)(ntohl(a) - ntohl(b))` says.
    rng = random.Random(5)
    ips = [f"{rng.choice([10, 172, 192, 198])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
           for _ in range(200)]
    vss = sort_virtual_services(VirtualService("TCP", ip, rng.choice([80, 443]), (), "", "") for ip in ips)

    def signed(a: str, b: str) -> int:
        d = (int(ip_address(a)) - int(ip_address(b))) & 0xFFFFFFFF
        return d - (1 << 32) if d & 0x80000000 else d

    assert all(signed(x.ip, y.ip) < 0 or (x.ip == y.ip and x.port < y.port)
               for i, x in enumerate(vss) for y in vss[i + 1:])


# -- ipset-save.txt ------------------------------------------------------------------------------

def test_ipset_members_are_kube_proxys(bundle: GeneratedBundle) -> None:
    sets = parse_ipset(bundle.files["ipset-save.txt"])
    members = {name: {m.text for m in s.members} for name, s in sets.items()}
    svcs = bundle.services
    assert len(sets) == 17 and all(s.family in (4, None) for s in sets.values())
    assert members["KUBE-CLUSTER-IP"] == {f"{s.cluster_ip},{s.proto}:{s.port}" for s in svcs}
    assert members["KUBE-LOAD-BALANCER"] == {f"{s.lb_ip},{s.proto}:{s.port}" for s in svcs if s.lb_ip}
    assert members["KUBE-LOAD-BALANCER-LOCAL"] == {f"{s.lb_ip},{s.proto}:{s.port}" for s in svcs
                                                   if s.lb_ip and s.policy == "Local"}
    assert members["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == {f"{s.lb_ip},{s.proto}:{s.port},{c}" for s in svcs
                                                         if s.lb_ip for c in s.lb_source_ranges}
    assert members["KUBE-NODE-PORT-TCP"] == {str(s.node_port) for s in svcs if s.node_port and s.protocol == "TCP"}
    assert members["KUBE-NODE-PORT-LOCAL-UDP"] == {str(s.node_port) for s in svcs
                                                   if s.node_port and s.protocol == "UDP" and s.policy == "Local"}
    assert members["KUBE-HEALTH-CHECK-NODE-PORT"] == {str(s.health_check_node_port) for s in svcs
                                                      if s.health_check_node_port}
    # Hairpin entries for local endpoints; the apiserver's endpoints are never local to kube-proxy.
    assert members["KUBE-LOOP-BACK"] == {f"{e.ip},{s.proto}:{e.port},{e.ip}" for s in svcs for e in s.endpoints
                                         if e.local and s.name != "kubernetes"}
    vips = {s.cluster_ip for s in svcs} | {s.lb_ip for s in svcs if s.lb_ip}
    assert members["KUBE-IPVS-IPS"] == vips
    assert not members["KUBE-EXTERNAL-IP"] and not members["KUBE-NODE-PORT-SCTP-HASH"]
    header = dict(sets["KUBE-CLUSTER-IP"].options)
    assert (header["hashsize"], header["maxelem"], header["bucketsize"]) == ("1024", "65536", "12")
    assert dict(sets["KUBE-NODE-PORT-TCP"].options) == {"range": "0-65535"}


def test_jhash2_and_bucket_order_pinned() -> None:
    # What the lab kernel (6.18, x86_64) printed for these; the kernel tests re-prove it at scale.
    # 10.96.0.10,udp:53 as hash:ip,port stores it: address, port (network order), protocol 17.
    assert jhash2([0x0A00600A, 0x00113500], 0x1C7D4A2B) == 0x6DFA1B63
    entries = sorted(f"10.96.{i}.{j},tcp:80" for i in range(4) for j in range(1, 200))
    size, order = ipset_hash_order(entries, "hash:ip,port", 0x1C7D4A2B, hashsize=64)
    assert size == 256  # 796 entries: the 64-bucket table doubled twice
    assert order[:4] == ["10.96.1.77,tcp:80", "10.96.1.8,tcp:80", "10.96.1.96,tcp:80", "10.96.2.133,tcp:80"]
    assert sorted(order) == entries
    with pytest.raises(ValueError):
        jhash2([], 0)


def test_ip_addr_holds_every_vip_on_kube_ipvs0(bundle: GeneratedBundle) -> None:
    addrs = parse_ip_addr(bundle.files["ip-addr.txt"])
    by_iface: dict[str, set[str]] = {}
    for a in addrs:
        by_iface.setdefault(a.iface, set()).add(str(a.address))
    vips = {f"{s.cluster_ip}/32" for s in bundle.services} | {f"{s.lb_ip}/32" for s in bundle.services if s.lb_ip}
    assert by_iface["kube-ipvs0"] == vips
    assert f"{NODE_IP}/24" in by_iface["eth0"] and "127.0.0.1/8" in by_iface["lo"]
    assert "3: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default \n" \
        in bundle.files["ip-addr.txt"]


# -- kptrace's answer ----------------------------------------------------------------------------

def _trace(node: Any, src: str, dst: str, proto: str, port: int) -> dict[str, Any]:
    return trace_json(trace_flow(node, Flow(ip_address(src), ip_address(dst), proto, None, port)))


@pytest.fixture(scope="module")
def node(bundle_dir: Path) -> Any:
    return load_node([bundle_dir])


def _ipvs_steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for b in doc["branches"] for s in b["steps"] if s["hook"] == "IPVS"]


def test_pod_to_cluster_ip_is_scheduled_to_the_services_endpoints(bundle: GeneratedBundle, node: Any) -> None:
    for index in (0.2, 0.5, 0.9):
        svc = bundle.pick(verdict="DNAT", index=index)
        doc = _trace(node, POD, svc.cluster_ip, svc.proto, svc.port)
        # rr over every real server: one branch per endpoint, each through the IPVS hop.
        assert doc["disposition"] == "FORWARDED", svc.key
        assert set(doc["endpoints"]) == {ep.address for ep in svc.endpoints}
        assert {b["dnat"] for b in doc["branches"]} == {ep.address for ep in svc.endpoints}
        ipvs = _ipvs_steps(doc)
        assert ipvs and all("ipvsadm.txt:" in s["source"] for s in ipvs)  # cites the ipvsadm line
        assert any(f"virtual service {svc.protocol} {svc.cluster_ip}:{svc.port}" in s["text"] for s in ipvs)
        assert not any(b["masquerade"] for b in doc["branches"])  # a pod source: no KUBE-MARK-MASQ


def test_service_without_endpoints_is_rejected_by_ipvs(bundle: GeneratedBundle, node: Any) -> None:
    # The virtual service exists without real servers: IPVS answers ICMP port unreachable.
    svc = bundle.pick(verdict="REJECT")
    doc = _trace(node, POD, svc.cluster_ip, svc.proto, svc.port)
    assert doc["disposition"] == "REJECTED" and doc["endpoints"] == []
    last = doc["branches"][0]["steps"][-1]
    assert (last["hook"], last["action"]) == ("IPVS", "REJECT")
    assert "no real server" in last["text"]


def test_nodeport_from_outside(bundle: GeneratedBundle, node: Any) -> None:
    svc = bundle.pick(verdict="DNAT", external=True, policy="Cluster")
    doc = _trace(node, OUTSIDE, NODE_IP, svc.proto, svc.node_port or 0)
    assert set(doc["endpoints"]) == {ep.address for ep in svc.endpoints}
    # KUBE-NODE-PORT-<PROTO> marks it; KUBE-POSTROUTING masquerades every branch.
    assert all(b["masquerade"] for b in doc["branches"])


def test_local_nodeport_without_local_endpoint_uses_all_endpoints(bundle: GeneratedBundle, node: Any) -> None:
    # Unlike iptables mode (DROP), kube-proxy's IPVS mode falls back to every endpoint.
    svc = next(s for s in bundle.services if s.policy == "Local" and s.node_port and s.endpoints
               and not s.local_endpoints)
    doc = _trace(node, OUTSIDE, NODE_IP, svc.proto, svc.node_port or 0)
    assert set(doc["endpoints"]) == {ep.address for ep in svc.endpoints}
    # KUBE-NODE-PORT-LOCAL-<PROTO> returns before the masquerade mark: the client IP is kept.
    assert not any(b["masquerade"] for b in doc["branches"])


def test_pick_and_meta(bundle: GeneratedBundle) -> None:
    assert bundle.pick(verdict="REJECT").endpoints == []
    with pytest.raises(LookupError):
        bundle.pick(verdict="DROP", external=True)  # IPVS mode never drops for a missing local endpoint
    meta = json.loads(json.dumps(bundle.to_meta()))
    assert len(meta["services"]) == 60 and meta["lines"] == bundle.lines
    api = meta["services"][0]
    assert api["key"] == "default/kubernetes:https" and "svc_chain" not in api
    assert api["virtual_services"] == ["TCP 10.96.0.1:443"]


def test_cli_writes_bundle_and_meta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, meta = tmp_path / "bundle", tmp_path / "meta.json"
    assert main(["--services", "40", "--endpoints", "3", "-o", str(out), "--meta", str(meta)]) == 0
    assert (out / "ipvsadm.txt").read_text() == generate_ipvs(40, 3).files["ipvsadm.txt"]
    assert len(json.loads(meta.read_text())["services"]) == 40
    line = capsys.readouterr().out.strip()
    assert "5 files" in line and " lines, " in line and " MB in " in line


def test_two_thousand_services_generate() -> None:
    big = generate_ipvs(2000, 10)
    lines = {name: text.count("\n") for name, text in big.files.items()}
    external = sum(1 for s in big.services if s.node_port) + sum(1 for s in big.services if s.lb_ip)
    assert len(big.virtual_services) == 2000 + external
    assert lines["ipvsadm.txt"] == 3 + len(big.virtual_services) + sum(len(vs.real_servers)
                                                                     for vs in big.virtual_services)
    assert len(big.ipsets()["KUBE-CLUSTER-IP"]) == 2000
    assert lines["ip-addr.txt"] == 14 + 2 * len(big.ipsets()["KUBE-IPVS-IPS"])
    assert big.nbytes > 1_000_000


# -- kernel: ipset and iptables load what the files say -------------------------------------------

REQUIRE_ENV = "KPTRACE_REQUIRE_KERNEL"


def _skip_or_fail(reason: str) -> None:
    # tests/kernel/conftest.py's rule: with KPTRACE_REQUIRE_KERNEL=1 a would-be skip is a failure.
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the kernel test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace"
    for tool in ("ip", "ipset", "iptables-restore", "iptables-save"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


Run = Callable[..., str]


@pytest.fixture
def netns() -> Iterator[Run]:
    """A throwaway network namespace (ipsets and iptables are per netns); `run(*cmd, stdin=)` in it."""
    reason = _kernel_unavailable()
    if reason:
        _skip_or_fail(reason)
    name = f"kpt-genipvs-{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if add.returncode != 0:
        _skip_or_fail(f"ip netns unavailable: {add.stderr.strip()}")

    def run(*cmd: str, stdin: str | None = None) -> str:
        proc = subprocess.run(["ip", "netns", "exec", name, *cmd], input=stdin, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr.strip()[-2000:]}"
        return proc.stdout

    try:
        yield run
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.kernel
def test_kernel_ipset_save_prints_the_file_back(netns: Run, bundle: GeneratedBundle) -> None:
    text = bundle.files["ipset-save.txt"]
    netns("ipset", "restore", stdin=text)
    # Byte for byte: set order, headers (hashsize, bucketsize, initval) and the kernel's member order.
    assert netns("ipset", "save") == text


def _kube_proxy_replay(text: str) -> str:
    """The same sets made as kube-proxy makes them: created with hashsize 1024, then members added
    one at a time in sorted order (syncIPSetEntries), so the kernel does its own resizing."""
    lines = text.splitlines()
    creates = [re.sub(r" hashsize \d+ ", " hashsize 1024 ", ln) for ln in lines if ln.startswith("create ")]
    adds = sorted((ln for ln in lines if ln.startswith("add ")), key=lambda ln: ln.split(" ", 2)[1:])
    return "\n".join(creates + adds) + "\n"


@pytest.mark.kernel
def test_kernel_replaying_kube_proxy_gives_the_file(netns: Run) -> None:
    # 6000 cluster IPs overflow a 1024-bucket table: the kernel resizes, and the file must show
    # the size and bucket order it ends with.
    big = generate_ipvs(6000, 1, seed=2)
    text = big.files["ipset-save.txt"]
    cluster = next(ln for ln in text.splitlines() if ln.startswith("create KUBE-CLUSTER-IP "))
    assert "hashsize 1024 " not in cluster
    netns("ipset", "restore", stdin=_kube_proxy_replay(text))
    assert netns("ipset", "save") == text


def _rules(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.startswith("#")]


@pytest.mark.kernel
def test_kernel_iptables_restore(netns: Run, bundle: GeneratedBundle) -> None:
    rules = bundle.files["iptables-save.txt"]
    assert " -m ipvs " in rules  # KUBE-IPVS-OUT-FILTER for LBs the node may not reach
    netns("ipset", "restore", stdin=bundle.files["ipset-save.txt"])  # -m set needs the sets
    netns("iptables-restore", "--test", stdin=rules)
    # A real load, then iptables-save must print the rules back as written. The lab kernel has no
    # IPVS, hence no xt_ipvs: those rules pass --test (parsed by libxt_ipvs) but cannot load.
    loadable = "\n".join(ln for ln in rules.splitlines() if " -m ipvs " not in ln) + "\n"
    netns("iptables-restore", stdin=loadable)
    assert _rules(netns("iptables-save")) == _rules(loadable)
