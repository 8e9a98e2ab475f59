"""kptrace's ipset matching against the kernel's, rule by rule, with real sets and real packets.

Two namespaces, `kpt-ipvs-<pid>-client` and `kpt-ipvs-<pid>-node`, joined by a veth. The node gets
kube-proxy's IPVS-mode sets and rules (KUBE-CLUSTER-IP dst,dst -> KUBE-MARK-MASQ / ACCEPT,
KUBE-NODE-PORT-TCP bitmap:port, KUBE-IPVS-IPS -> REJECT, KUBE-LOOP-BACK dst,dst,src) plus probe
rules in mangle PREROUTING for the other forms (nomatch, --return-nomatch, `!`, flag counts,
list:set, hash:net,port, hash:ip,port,net), loaded with `ipset restore` and `iptables-restore`.
For each probe packet the kernel's rule counters (`iptables-save -c`) say which rules matched;
kptrace, given the node's `iptables-save`, `ipset save`, `ip addr` and `ip route`, must step
through exactly those rules. IPVS itself is not in this kernel (docs/ipvs.md): the Service VIPs
sit on the node's lo, so the packets end in INPUT as they would before the IPVS hook.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.walkers.netfilter import trace_flow

pytestmark = pytest.mark.kernel

PREFIX = f"kpt-ipvs-{os.getpid()}"
CLIENT, NODE = f"{PREFIX}-client", f"{PREFIX}-node"
NODE_IP, CLIENT_IP = "192.168.56.11", "192.168.56.1"
CLIENT_EXTRA = ["10.244.1.5", "10.244.1.21", "10.244.2.9"]
VIPS = ["10.96.0.1", "10.96.0.10"]

IPSETS = """\
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-CLUSTER-IP 10.96.0.10,udp:53
add KUBE-CLUSTER-IP 10.96.0.10,tcp:53
add KUBE-CLUSTER-IP 10.96.0.1,tcp:443
create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536
add KUBE-LOOP-BACK 10.244.1.20,udp:8080,10.244.1.21
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536
add KUBE-IPVS-IPS 10.96.0.1
add KUBE-IPVS-IPS 10.96.0.10
create NETS hash:net family inet hashsize 1024 maxelem 65536
add NETS 10.244.0.0/16
add NETS 10.244.1.0/24 nomatch
add NETS 10.244.1.21
create PORTS bitmap:port range 0-65535 timeout 3600
add PORTS 30080 timeout 3000
add PORTS 8080
create NETPORT hash:net,port family inet hashsize 1024 maxelem 65536 comment
add NETPORT 10.244.0.0/16,udp:8080 comment "pods to 8080"
add NETPORT 10.244.2.0/24,udp:8080 nomatch
create SRCNET hash:ip,port,net family inet hashsize 1024 maxelem 65536 counters
add SRCNET 10.96.0.10,udp:53,192.168.0.0/16
add SRCNET 10.96.0.10,udp:53,192.168.56.0/24 nomatch
create SRC6 hash:ip family inet6 hashsize 1024 maxelem 65536
add SRC6 fd00::1
create LIST list:set size 8
add LIST KUBE-IPVS-IPS
add LIST NETS
"""

RULES = """\
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MARK --or-mark 0x1
-A PREROUTING -m set --match-set NETS src -j MARK --or-mark 0x2
-A PREROUTING -m set --match-set NETS src --return-nomatch -j MARK --or-mark 0x4
-A PREROUTING -m set ! --match-set NETS src -j MARK --or-mark 0x8
-A PREROUTING -m set --match-set PORTS dst -j MARK --or-mark 0x10
-A PREROUTING -m set --match-set KUBE-CLUSTER-IP dst -j MARK --or-mark 0x20
-A PREROUTING -m set --match-set KUBE-CLUSTER-IP dst,dst,src -j MARK --or-mark 0x40
-A PREROUTING -m set --match-set KUBE-CLUSTER-IP src,dst -j MARK --or-mark 0x80
-A PREROUTING -m set --match-set LIST dst -j MARK --or-mark 0x100
-A PREROUTING -m set --match-set LIST src -j MARK --or-mark 0x200
-A PREROUTING -m set --match-set NETPORT src,dst -j MARK --or-mark 0x400
-A PREROUTING -m set --match-set NETPORT src,dst --return-nomatch -j MARK --or-mark 0x800
-A PREROUTING -m set --match-set SRCNET dst,dst,src -j MARK --or-mark 0x1000
-A PREROUTING -m set --match-set SRCNET dst,dst,src ! --update-counters -j MARK --or-mark 0x2000
-A PREROUTING -m set --match-set KUBE-LOOP-BACK dst,src,src -j MARK --or-mark 0x8000
-A PREROUTING -m mark --mark 0x0/0xffff -j MARK --or-mark 0x10000
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-IPVS-FILTER - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -m mark --mark 0x4000/0x4000 -j MARK --or-mark 0x0
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""


@dataclass(frozen=True)
class Probe:
    name: str
    proto: str
    src: str
    dst: str
    dport: int


PROBES = [
    Probe("pod-to-cluster-ip-udp", "udp", "10.244.1.5", "10.96.0.10", 53),
    Probe("external-to-cluster-ip-masq", "udp", CLIENT_IP, "10.96.0.10", 53),
    Probe("external-to-vip-unknown-port-rejected", "udp", CLIENT_IP, "10.96.0.10", 54),
    Probe("nodeport-tcp-in-bitmap", "tcp", CLIENT_IP, NODE_IP, 30080),
    Probe("nodeport-tcp-not-in-bitmap", "tcp", CLIENT_IP, NODE_IP, 30081),
    Probe("nodeport-udp-bitmap-any-proto", "udp", CLIENT_IP, NODE_IP, 30080),
    Probe("hairpin-loop-back", "udp", "10.244.1.21", "10.244.1.20", 8080),
    Probe("other-pod-no-loop-back", "udp", "10.244.2.9", "10.244.1.20", 8080),
    Probe("nomatch-subnet", "udp", "10.244.1.5", "10.244.1.20", 8080),
    Probe("pod-to-kubernetes-tcp", "tcp", "10.244.1.5", "10.96.0.1", 443),
    Probe("tcp-to-udp-only-entry", "tcp", CLIENT_IP, "10.96.0.10", 54),
]


def _sh(args: list[str], ns: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + args
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> rc={p.returncode}: {p.stderr.strip()}")
    return p.stdout


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, ipset, iptables)"
    for tool in ("ip", "ipset", "iptables-restore", "iptables-save"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("KPTRACE_REQUIRE_KERNEL") == "1":
            pytest.fail(f"KPTRACE_REQUIRE_KERNEL=1 but the ipset lab cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    bundle = tmp_path_factory.mktemp("ipset-lab") / "node"
    bundle.mkdir()
    try:
        for ns in (CLIENT, NODE):
            _sh(["ip", "netns", "add", ns])
            _sh(["ip", "link", "set", "lo", "up"], ns)
        _sh(["ip", "link", "add", "eth0", "netns", NODE, "type", "veth", "peer", "name", "eth0", "netns", CLIENT], NODE)
        _sh(["ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0"], NODE)
        _sh(["ip", "link", "set", "eth0", "up"], NODE)
        for vip in VIPS:
            _sh(["ip", "addr", "add", f"{vip}/32", "dev", "lo"], NODE)
        _sh(["ip", "route", "add", "10.244.0.0/16", "via", CLIENT_IP], NODE)
        _sh(["ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0"], CLIENT)
        for a in CLIENT_EXTRA:
            _sh(["ip", "addr", "add", f"{a}/32", "dev", "eth0"], CLIENT)
        _sh(["ip", "link", "set", "eth0", "up"], CLIENT)
        _sh(["ip", "route", "add", "default", "via", NODE_IP], CLIENT)
        _sh(["ipset", "restore"], NODE, stdin=IPSETS)
        _sh(["iptables-restore"], NODE, stdin=RULES)
        (bundle / "iptables-save.txt").write_text(_sh(["iptables-save"], NODE))
        (bundle / "ipset-save.txt").write_text(_sh(["ipset", "save"], NODE))
        (bundle / "ipset-list.txt").write_text(_sh(["ipset", "list"], NODE))
        (bundle / "ip-addr.txt").write_text(_sh(["ip", "addr", "show"], NODE))
        (bundle / "ip-route.txt").write_text(_sh(["ip", "route", "show", "table", "all"], NODE))
        yield bundle
    finally:
        for ns in (CLIENT, NODE):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


_COUNTER_RE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) ")


def _matched_rules(save_c: str) -> set[tuple[str, str, int]]:
    """(table, chain, 1-based index) of every rule whose packet counter is not zero."""
    out: set[tuple[str, str, int]] = set()
    table = ""
    index: dict[tuple[str, str], int] = {}
    for line in save_c.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        m = _COUNTER_RE.match(line)
        if not m:
            continue
        key = (table, m.group(3))
        index[key] = index.get(key, 0) + 1
        if int(m.group(1)) > 0:
            out.add((table, m.group(3), index[key]))
    return out


_SPORT = [41000]


def _send(p: Probe) -> int:
    _SPORT[0] += 1
    sport = _SPORT[0]
    kind = "SOCK_STREAM" if p.proto == "tcp" else "SOCK_DGRAM"
    code = (f"import socket\ns=socket.socket(socket.AF_INET, socket.{kind})\ns.bind(({p.src!r}, {sport}))\n"
            f"s.settimeout(0.3)\n"
            + (f"try:\n    s.connect(({p.dst!r}, {p.dport}))\nexcept OSError:\n    pass\n" if p.proto == "tcp"
               else f"s.sendto(b'probe', ({p.dst!r}, {p.dport}))\n"))
    for table in ("mangle", "nat", "filter"):
        _sh(["iptables", "-t", table, "-Z"], NODE)
    _sh([sys.executable, "-c", code], CLIENT)
    time.sleep(0.2)
    return sport


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_set_matching_agrees_with_kernel(lab: Path, probe: Probe) -> None:
    sport = _send(probe)
    kernel = _matched_rules(_sh(["iptables-save", "-c"], NODE))
    assert kernel, f"the kernel counted no rule for {probe}: the lab did not deliver the packet"
    node = load_node([lab])
    trace = trace_flow(node, Flow(ip_address(probe.src), ip_address(probe.dst), probe.proto, sport, probe.dport, "eth0"))
    assert len(trace.branches) == 1, trace.branches
    b = trace.branches[0]
    assert not b.unknowns, b.unknowns
    stepped = {(s.table, s.chain, s.rule) for s in b.steps if s.table and s.rule is not None}
    # Built-in chain policies and user-chain returns carry no rule number; every matched rule does.
    assert stepped == kernel, (f"{probe}: kptrace matched {sorted(stepped - kernel)} that the kernel did not; "
                               f"the kernel matched {sorted(kernel - stepped)} that kptrace did not")


def test_verdicts_agree_with_kernel(lab: Path) -> None:
    """REJECT by KUBE-IPVS-IPS and ACCEPT through KUBE-CLUSTER-IP, as the kernel decides them."""
    node = load_node([lab])
    for probe, want in ((PROBES[2], "REJECTED"), (PROBES[1], "DELIVERED"), (PROBES[0], "DELIVERED")):
        sport = _send(probe)
        kernel = _matched_rules(_sh(["iptables-save", "-c"], NODE))
        rejected = ("filter", "KUBE-IPVS-FILTER", 2) in kernel
        assert rejected == (want == "REJECTED"), kernel
        t = trace_flow(node, Flow(ip_address(probe.src), ip_address(probe.dst), probe.proto, sport, probe.dport, "eth0"))
        assert t.disposition.value == want


def test_list_and_save_load_alike(lab: Path, tmp_path: Path) -> None:
    """`ipset list` and `ipset save` of the same sets give the same members."""
    from kptrace.parsers.ipset import parse_ipset

    a = parse_ipset((lab / "ipset-save.txt").read_text(), "ipset-save.txt")
    b = parse_ipset((lab / "ipset-list.txt").read_text(), "ipset-list.txt")
    assert {n: (s.type, s.family, [(m.parts, m.nomatch) for m in s.members]) for n, s in a.items()} == \
           {n: (s.type, s.family, [(m.parts, m.nomatch) for m in s.members]) for n, s in b.items()}
