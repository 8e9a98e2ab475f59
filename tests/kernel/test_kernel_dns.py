"""Issue 22, item 4: the DNS path in the kernel lab, proven with real DNS-shaped UDP probes.

A node namespace (`kd-<pid>-…-node`) with a pod bridge, a client pod, a CoreDNS stand-in (a small UDP
forwarder that does what CoreDNS's `forward . /etc/resolv.conf` does: relay a query to the upstream
server and send the answer back, and say "loop" when it receives its own query, as CoreDNS's `loop`
plugin does), a systemd-resolved stand-in answering on the node's 127.0.0.53:53 and an upstream
router namespace answering on 192.168.77.1:53. kube-proxy-like rules DNAT the kube-dns ClusterIP
10.96.0.10 (udp and tcp 53) to the CoreDNS stand-in. The node's files (resolv.conf, kubelet's config)
are in a fake root given to `kptrace collect` as the host root, and the bundle it writes from inside
the node namespace is what kptrace checks and traces.

Three states, each first measured (a query from the client pod to 10.96.0.10:53, and one from the
CoreDNS stand-in's own namespace to its upstream), then given to kptrace:

- pod-network CoreDNS, node resolv.conf `nameserver 127.0.0.53`: the upstream query comes back to the
  stand-in itself (the kernel never lets it out of the pod's namespace): KPT601 FAILs and `kptrace dns`
  names the upstream hop, `loopback-pod`, with no packet leaving the pod;
- hostNetwork CoreDNS (its endpoint is the node's address), the same resolv.conf: the upstream query
  is answered by the node's own stub: the upstream hop's trace ends on the node itself (DELIVERED,
  `loopback-node`), and KPT601 warns (it works only while a resolver listens there);
- pod-network CoreDNS, resolv.conf `nameserver 192.168.77.1`: the query is routed out of the node and
  answered upstream: KPT601 PASSes, the hop is FORWARDED out eth0 (`routed-out`).

Only addresses inside these namespaces are used.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kernel.conftest import skip_or_fail
from tests.lab import netns

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
PREFIX = "kd-"
NODE_IP, UPSTREAM_IP = "192.168.77.11", "192.168.77.1"
CLIENT_IP, COREDNS_IP, GW = "10.244.1.5", "10.244.1.9", "10.244.1.1"
CLUSTER_DNS = "10.96.0.10"

# A DNS-shaped UDP server: answers every query with its own name. As a forwarder (`--upstream`) it relays the
# query (tagged with its own id) to the upstream and returns the answer; a query carrying its own tag came
# back to it: the loop CoreDNS's `loop` plugin detects, answered "loop".
SERVER = r'''
import socket, sys, threading
name, bind, upstream = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((bind, 53))
print("ready", flush=True)
tag = ("via:" + name + ";").encode()

def forward(data, peer):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(1.0)
    try:
        u.sendto(tag + data, (upstream, 53))
        answer, _ = u.recvfrom(2048)
    except OSError:
        answer = b"timeout"
    finally:
        u.close()
    s.sendto(answer, peer)

while True:
    data, peer = s.recvfrom(2048)
    if data.startswith(tag):
        s.sendto(b"loop", peer)  # our own query came back to us
    elif upstream:
        threading.Thread(target=forward, args=(data, peer), daemon=True).start()
    else:
        s.sendto(name.encode(), peer)
'''

PROBE = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3.0)
s.sendto(b"query example.com", (sys.argv[1], 53))
try:
    data, peer = s.recvfrom(2048)
    print(data.decode(), peer[0])
except OSError:
    print("no-answer -")
'''


def _require() -> None:
    reason = netns.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)


@dataclass
class DnsLab:
    tag: str
    root: Path
    procs: list[subprocess.Popen[str]]

    def ns(self, name: str) -> str:
        return f"{PREFIX}{os.getpid()}-{self.tag}-{name}"

    def sh(self, where: str, *args: str, stdin: str | None = None) -> str:
        return netns.sh(list(args), ns=self.ns(where), stdin=stdin).stdout

    def serve(self, where: str, name: str, bind: str, upstream: str = "") -> None:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(where), sys.executable, "-c", SERVER, name, bind,
                              *([upstream] if upstream else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None and p.stderr else "")

    def stop_servers(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()

    def probe(self, where: str, dst: str) -> tuple[str, str]:
        out = netns.sh([sys.executable, "-c", PROBE, dst], ns=self.ns(where)).stdout.split()
        return out[0], out[1]


def _veth(lab: DnsLab, a: str, a_if: str, b: str, b_if: str) -> None:
    tmp = f"kd{random.randrange(16**6):06x}"
    netns.sh(["ip", "link", "add", tmp, "type", "veth", "peer", "name", tmp + "p"])
    netns.sh(["ip", "link", "set", tmp, "netns", lab.ns(a)])
    netns.sh(["ip", "link", "set", tmp + "p", "netns", lab.ns(b)])
    lab.sh(a, "ip", "link", "set", tmp, "name", a_if)
    lab.sh(b, "ip", "link", "set", tmp + "p", "name", b_if)
    lab.sh(a, "ip", "link", "set", a_if, "up")
    lab.sh(b, "ip", "link", "set", b_if, "up")


def _rules(endpoint: str) -> str:
    return f"""*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
:KUBE-SVC-ERIFXISQEP7F7OF4 - [0:0]
:KUBE-SEP-KDUDP - [0:0]
:KUBE-SEP-KDTCP - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -o eth0 -j MASQUERADE
-A KUBE-SERVICES -d {CLUSTER_DNS}/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
-A KUBE-SERVICES -d {CLUSTER_DNS}/32 -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp cluster IP" -m tcp --dport 53 -j KUBE-SVC-ERIFXISQEP7F7OF4
-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns -> {endpoint}:53" -j KUBE-SEP-KDUDP
-A KUBE-SVC-ERIFXISQEP7F7OF4 -m comment --comment "kube-system/kube-dns:dns-tcp -> {endpoint}:53" -j KUBE-SEP-KDTCP
-A KUBE-SEP-KDUDP -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination {endpoint}:53
-A KUBE-SEP-KDTCP -p tcp -m comment --comment "kube-system/kube-dns:dns-tcp" -m tcp -j DNAT --to-destination {endpoint}:53
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
COMMIT
"""


@pytest.fixture
def dns_lab(tmp_path: Path) -> Iterator[DnsLab]:
    _require()
    lab = DnsLab(f"{random.randrange(16**4):04x}", tmp_path / "host-root", [])
    made: list[str] = []
    try:
        for n in ("node", "dns", "cli", "up"):
            netns.sh(["ip", "netns", "add", lab.ns(n)])
            made.append(lab.ns(n))
            lab.sh(n, "ip", "link", "set", "lo", "up")
        lab.sh("node", "ip", "link", "add", "cni0", "type", "bridge")
        lab.sh("node", "ip", "addr", "add", f"{GW}/24", "dev", "cni0")
        lab.sh("node", "ip", "link", "set", "cni0", "up")
        for pod, ip, veth in (("dns", COREDNS_IP, "vethdns"), ("cli", CLIENT_IP, "vethcli")):
            _veth(lab, "node", veth, pod, "eth0")
            lab.sh("node", "ip", "link", "set", veth, "master", "cni0")
            lab.sh(pod, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            lab.sh(pod, "ip", "route", "add", "default", "via", GW)
        _veth(lab, "node", "eth0", "up", "eth0")
        lab.sh("node", "ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
        lab.sh("node", "ip", "route", "add", "default", "via", UPSTREAM_IP)
        lab.sh("up", "ip", "addr", "add", f"{UPSTREAM_IP}/24", "dev", "eth0")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            lab.sh("node", "sysctl", "-qw", key)
        (lab.root / "etc").mkdir(parents=True)
        (lab.root / "var" / "lib" / "kubelet").mkdir(parents=True)
        (lab.root / "var" / "lib" / "kubelet" / "config.yaml").write_text(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
            f"clusterDNS:\n- {CLUSTER_DNS}\nclusterDomain: cluster.local\nresolvConf: /etc/resolv.conf\n")
        lab.serve("node", "node-stub", "127.0.0.53")  # systemd-resolved's stub listener, on the node
        lab.serve("up", "upstream", UPSTREAM_IP)  # the real upstream server, outside the node
        yield lab
    finally:
        lab.stop_servers()
        for name in made:
            netns.sh(["ip", "netns", "del", name], check=False)


def _state(lab: DnsLab, endpoint: str, upstream: str) -> None:
    """kube-dns -> `endpoint`, the node's resolv.conf -> `upstream`, the CoreDNS stand-in forwarding there."""
    lab.sh("node", "iptables-restore", stdin=_rules(endpoint))
    (lab.root / "etc" / "resolv.conf").write_text(f"# the node's resolv.conf\nnameserver {upstream}\noptions edns0\n")
    if endpoint == COREDNS_IP:
        lab.serve("dns", "coredns", "0.0.0.0", upstream)  # in its own namespace, it reads its copy of the node's file
    else:
        lab.serve("node", "coredns", endpoint, upstream)  # hostNetwork: the node's namespace


def _kptrace(lab: DnsLab, *args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kptrace", *args]
    if ns is not None:
        cmd = ["ip", "netns", "exec", lab.ns(ns), "env", f"KPTRACE_HOST_ROOT={lab.root}", *cmd]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)


def _bundle(lab: DnsLab, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    p = _kptrace(lab, "collect", "-o", str(out), "-q", "--node-name", "node-a", "--node-ip", NODE_IP,
                 "--pod-cidr", "10.244.1.0/24", ns="node")
    assert p.returncode in (0, 4), p.stderr
    assert (out / "resolv.conf").read_text() == (lab.root / "etc" / "resolv.conf").read_text()
    assert "resolvConf: /etc/resolv.conf" in (out / "kubelet-config.yaml").read_text()
    man = json.loads((out / "manifest.json").read_text())
    absent = {e.get("absent_file") for e in man["commands"] if e["status"] == "absent"}
    assert "systemd-resolved-resolv.conf" in absent  # the fake root has none: recorded as absent, not an error
    return out


def _check(bundle: Path, check_id: str) -> dict[str, object]:
    p = subprocess.run([sys.executable, "-m", "kptrace", "check", "--dump", str(bundle), "-o", "json"], cwd=REPO,
                       capture_output=True, text=True, timeout=240, check=False)
    doc = json.loads(p.stdout)
    [row] = [r for r in doc["results"] if r["id"] == check_id]
    return row  # type: ignore[no-any-return]


def _dns(bundle: Path) -> tuple[int, dict[str, object]]:
    p = subprocess.run([sys.executable, "-m", "kptrace", "dns", "example.com", "--from", CLIENT_IP, "--dump",
                        str(bundle), "-o", "json"], cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert p.stdout, p.stderr
    return p.returncode, json.loads(p.stdout)


def _upstream_hop(doc: dict[str, object]) -> dict[str, object]:
    hops = [h for h in doc["hops"] if h["kind"] == "upstream"]  # type: ignore[attr-defined,union-attr]
    assert len(hops) == 1, hops
    return hops[0]  # type: ignore[no-any-return]


def _service_hops_ok(doc: dict[str, object], endpoint: str) -> None:
    service = [h for h in doc["hops"] if h["kind"] == "service"]  # type: ignore[attr-defined,union-attr]
    assert [h["name"].rsplit("/", 1)[1] for h in service] == ["udp", "tcp"]
    for h in service:
        assert h["status"] == "ok" and h["trace"]["endpoints"] == [f"{endpoint}:53"], h


def test_pod_coredns_with_a_stub_upstream_loops_back_into_itself(dns_lab: DnsLab, tmp_path: Path) -> None:
    _state(dns_lab, COREDNS_IP, "127.0.0.53")
    # The kernel: the client's query reaches CoreDNS through the Service, and CoreDNS's forward to 127.0.0.53
    # comes back to CoreDNS itself (its own loopback), never to the node's stub.
    assert dns_lab.probe("cli", CLUSTER_DNS)[0] == "loop"
    # (answered from the pod's own loopback: a server bound to 0.0.0.0 answers from lo's first address)
    assert dns_lab.probe("dns", "127.0.0.53")[0] == "loop"
    bundle = _bundle(dns_lab, tmp_path)
    row = _check(bundle, "KPT601")
    assert row["status"] == "FAIL", row
    assert {"file": "bundle/resolv.conf", "line": 2} in row["locations"]  # type: ignore[operator]
    code, doc = _dns(bundle)
    assert code == 1 and doc["status"] == "fail"
    _service_hops_ok(doc, COREDNS_IP)
    hop = _upstream_hop(doc)
    assert doc["failing_hop"] == doc["hops"].index(hop)  # type: ignore[attr-defined]
    assert hop["status"] == "fail" and hop["fate"] == "loopback-pod" and hop["trace"] is None, hop
    assert hop["node"] == "node-a" and "bundle/resolv.conf:2" in hop["cites"]  # type: ignore[operator]


def test_host_network_coredns_upstream_trace_ends_on_the_node(dns_lab: DnsLab, tmp_path: Path) -> None:
    _state(dns_lab, NODE_IP, "127.0.0.53")
    # The kernel: the same 127.0.0.53 from the node's namespace is the node's own stub, which answers.
    assert dns_lab.probe("cli", CLUSTER_DNS)[0] == "node-stub"
    assert dns_lab.probe("node", "127.0.0.53")[0] == "node-stub"
    bundle = _bundle(dns_lab, tmp_path)
    row = _check(bundle, "KPT601")
    assert row["status"] == "WARN" and "hostNetwork" in str(row["message"]), row
    code, doc = _dns(bundle)
    _service_hops_ok(doc, NODE_IP)
    hop = _upstream_hop(doc)
    assert hop["status"] == "local" and hop["fate"] == "loopback-node", hop
    trace = hop["trace"]
    assert trace["disposition"] == "DELIVERED" and trace["flow"]["src"] == NODE_IP  # type: ignore[index]
    assert trace["flow"]["dst"] == "127.0.0.53" and trace["flow"]["origin"] == "local"  # type: ignore[index]
    assert code == 0 and doc["status"] == "ok"


def test_pod_coredns_with_a_routed_upstream_goes_out_of_the_node(dns_lab: DnsLab, tmp_path: Path) -> None:
    _state(dns_lab, COREDNS_IP, UPSTREAM_IP)
    assert dns_lab.probe("cli", CLUSTER_DNS)[0] == "upstream"
    assert dns_lab.probe("dns", UPSTREAM_IP) == ("upstream", UPSTREAM_IP)
    bundle = _bundle(dns_lab, tmp_path)
    assert _check(bundle, "KPT601")["status"] == "PASS"
    code, doc = _dns(bundle)
    hop = _upstream_hop(doc)
    assert hop["status"] == "ok" and hop["fate"] == "routed-out", hop
    trace = hop["trace"]
    assert trace["disposition"] == "FORWARDED"  # type: ignore[index]
    assert {b["egress"]["iface"] for b in trace["branches"]} == {"eth0"}  # type: ignore[index]
    assert all(b["masquerade"] for b in trace["branches"])  # type: ignore[index]
    assert code == 0 and doc["status"] == "ok"
