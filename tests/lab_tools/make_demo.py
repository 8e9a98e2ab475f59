#!/usr/bin/env python3
"""Regenerate the shipped demo bundles under kptrace/demo/ from real tools.

Each node is built in a Linux network namespace: interfaces (veth, bridge,
vxlan), addresses, routes, neighbours and fdb entries are created with
iproute2; the iptables rules are loaded in the order the real agents do it
(Docker, kubelet, kube-proxy, flannel), with kube-proxy's part rendered from
the same logic as pkg/proxy/iptables/proxier.go and loaded with
``iptables-restore --noflush``. The bundle files are then captured with the
real commands listed in docs/bundle.md. Only modules.txt, flannel-subnet.env,
hostname.txt and node.yaml are written by hand.

No packet is sent to any address outside the namespaces made here: neighbour
and fdb entries are installed statically; the "LAN" is a bridge in a private,
anonymous namespace held by a sleep process. Everything is deleted at the end.

Needs root, iproute2, bridge, iptables (nft backend), unshare.

    sudo python3 tests/lab_tools/make_demo.py            # writes kptrace/demo/
    sudo python3 tests/lab_tools/make_demo.py --out DIR  # somewhere else
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------

CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
GATEWAY_IP = "192.168.56.1"
GATEWAY_MAC = "0a:00:27:00:00:00"  # VirtualBox host-only adapter
FLANNEL_MTU = 1450
VXLAN_ID = 1
VXLAN_PORT = 8472
MASQ_MARK = "0x4000"
K8S_VERSION = "v1.30.4"


@dataclass
class Node:
    name: str
    ip: str
    pod_cidr: str
    eth0_mac: str
    vtep_mac: str
    cni0_mac: str = ""
    bundled: bool = True

    @property
    def cni0_ip(self) -> str:
        net = ipaddress.ip_network(self.pod_cidr)
        return str(net.network_address + 1)

    @property
    def vtep_ip(self) -> str:
        return str(ipaddress.ip_network(self.pod_cidr).network_address)


NODES = {
    "cp": Node("cp", "192.168.56.10", "10.244.0.0/24", "08:00:27:3c:5e:10", "e6:1c:a4:0f:7b:21", bundled=False),
    "node-a": Node("node-a", "192.168.56.11", "10.244.1.0/24", "08:00:27:8a:41:11", "42:9d:6e:b1:3a:05", "9e:41:c7:2d:80:1a"),
    "node-b": Node("node-b", "192.168.56.12", "10.244.2.0/24", "08:00:27:d2:19:12", "5a:f0:83:27:c4:9e", "b6:72:0d:e5:4f:33"),
}


@dataclass
class Pod:
    node: str
    namespace: str
    name: str
    ip: str

    def _h(self, salt: str) -> bytes:
        return hashlib.sha256(f"{salt}/{self.namespace}/{self.name}".encode()).digest()

    @property
    def veth(self) -> str:  # CNI bridge plugin style: "veth" + 8 hex digits
        return "veth" + self._h("veth").hex()[:8]

    @staticmethod
    def _mac(b: bytes) -> str:
        first = (b[0] & 0xFC) | 0x02  # locally administered, unicast
        return ":".join(f"{x:02x}" for x in bytes([first]) + b[1:6])

    @property
    def mac(self) -> str:  # eth0 inside the pod
        return self._mac(self._h("pod-mac"))

    @property
    def veth_mac(self) -> str:  # host side of the pair
        return self._mac(self._h("veth-mac"))

    @property
    def netns(self) -> str:  # CNI runtime netns name
        return "cni-" + str(uuid.UUID(bytes=self._h("netns")[:16], version=4))


PODS = [
    Pod("node-a", "default", "client-7d9f8b6c5-x2k4q", "10.244.1.5"),
    Pod("node-a", "kube-system", "coredns-76f75df574-8hxq2", "10.244.1.9"),
    Pod("node-a", "default", "web-5b7c9d8f4-lm9zt", "10.244.1.12"),
    Pod("node-b", "kube-system", "coredns-76f75df574-w5r7n", "10.244.2.7"),
    Pod("node-b", "default", "web-5b7c9d8f4-q4vhd", "10.244.2.15"),
    Pod("node-b", "default", "api-local-6c8d7f9b5-tj2mp", "10.244.2.20"),
    Pod("node-b", "ingress-nginx", "ingress-nginx-controller-7f9c6d4b8-zp5kr", "10.244.2.30"),
]


@dataclass
class Port:
    name: str  # "" for an unnamed single port
    port: int
    proto: str  # "tcp" | "udp"
    target: int
    node_port: int = 0


@dataclass
class Service:
    namespace: str
    name: str
    cluster_ip: str
    ports: list[Port]
    endpoints: list[str]  # endpoint IPs (ready)
    external_policy_local: bool = False
    health_check_node_port: int = 0
    lb_ips: list[str] = field(default_factory=list)
    lb_source_ranges: list[str] = field(default_factory=list)


SERVICES = [
    Service("default", "kubernetes", "10.96.0.1", [Port("https", 443, "tcp", 6443)], ["192.168.56.10"]),
    Service("kube-system", "kube-dns", "10.96.0.10",
            [Port("dns", 53, "udp", 53), Port("dns-tcp", 53, "tcp", 53), Port("metrics", 9153, "tcp", 9153)],
            ["10.244.1.9", "10.244.2.7"]),
    Service("default", "web", "10.96.12.34", [Port("", 80, "tcp", 8080, 30080)], ["10.244.1.12", "10.244.2.15"]),
    Service("default", "api-local", "10.96.45.6", [Port("http", 8080, "tcp", 8080, 31234)], ["10.244.2.20"],
            external_policy_local=True, health_check_node_port=32012),
    Service("default", "broken", "10.96.77.7", [Port("", 80, "tcp", 80)], []),
    Service("ingress-nginx", "ingress-nginx-controller", "10.99.142.17",
            [Port("http", 80, "tcp", 80, 31080), Port("https", 443, "tcp", 443, 31443)], ["10.244.2.30"],
            lb_ips=["192.168.56.200"], lb_source_ranges=["192.168.56.0/24"]),
]


def node_of_ip(ip: str) -> str | None:
    for n in NODES.values():
        if ip == n.ip or ipaddress.ip_address(ip) in ipaddress.ip_network(n.pod_cidr):
            return n.name
    return None


# --------------------------------------------------------------------------
# kube-proxy (iptables mode) rule rendering, after proxier.go syncProxyRules
# --------------------------------------------------------------------------


def _hash(s: str) -> str:
    return base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:16]


def svc_port_name(svc: Service, p: Port) -> str:
    base = f"{svc.namespace}/{svc.name}"
    return f"{base}:{p.name}" if p.name else base


def chain(prefix: str, spn: str, proto: str) -> str:
    return f"KUBE-{prefix}-" + _hash(spn + proto)


def sep_chain(spn: str, proto: str, ep: str) -> str:
    return "KUBE-SEP-" + _hash(spn + proto + ep)


def probability(n: int) -> str:
    return f"{1.0 / n:0.10f}"


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def w(self, *args: str) -> None:
        self.lines.append(" ".join(args))


def kube_proxy_restore(node: Node, ipv6: bool = False, order_seed: int = 7) -> str:
    """Return the iptables-restore payload kube-proxy would write on `node`."""
    f_chains, f_rules, n_chains, n_rules = Lines(), Lines(), Lines(), Lines()
    for c in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"):
        f_chains.w(f":{c} - [0:0]")
    for c in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"):
        n_chains.w(f":{c} - [0:0]")
    n_rules.w("-A KUBE-POSTROUTING -m mark ! --mark", f"{MASQ_MARK}/{MASQ_MARK}", "-j RETURN")
    n_rules.w("-A KUBE-POSTROUTING -j MARK --xor-mark", MASQ_MARK)
    n_rules.w('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully')
    n_rules.w("-A KUBE-MARK-MASQ -j MARK --or-mark", MASQ_MARK)
    if not ipv6:  # localhostNodePorts=true (default) on IPv4
        f_chains.w(":KUBE-FIREWALL - [0:0]")
        f_rules.w('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
                  "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")

    if_local = f"-s {CLUSTER_CIDR}"
    if_not_local = f"! -s {CLUSTER_CIDR}"

    svc_ports = [] if ipv6 else [(s, p) for s in SERVICES for p in s.ports]
    random.Random(order_seed).shuffle(svc_ports)  # kube-proxy iterates a Go map

    for svc, p in svc_ports:
        proto = p.proto
        spn = svc_port_name(svc, p)
        svc_chain = chain("SVC", spn, proto)
        svl_chain = chain("SVL", spn, proto)
        fw_chain = chain("FW", spn, proto)
        ext_chain = chain("EXT", spn, proto)
        eps = sorted(svc.endpoints, key=lambda ip: ipaddress.ip_address(ip))
        ep_strs = [f"{ip}:{p.target}" for ip in eps]
        local_eps = [e for e, ip in zip(ep_strs, eps) if node_of_ip(ip) == node.name]
        externally_accessible = bool(p.node_port or svc.lb_ips)
        ext_local = svc.external_policy_local and externally_accessible
        has_endpoints = bool(ep_strs)
        uses_cluster_chain = bool(ep_strs)  # internalTrafficPolicy is Cluster everywhere here
        uses_local_chain = bool(local_eps) and ext_local
        has_internal = has_endpoints
        has_external = has_endpoints and (bool(local_eps) if ext_local else True)
        ext_policy_chain = svl_chain if ext_local else svc_chain
        uses_ext_chain = has_endpoints and externally_accessible
        uses_fw = has_endpoints and bool(svc.lb_ips) and bool(svc.lb_source_ranges)
        lb_chain = fw_chain if uses_fw else ext_chain
        if not has_endpoints:
            int_target, int_comment = "REJECT", f'"{spn} has no endpoints"'
            ext_target, ext_comment = "REJECT", int_comment
        else:
            int_target = int_comment = ""
            ext_target, ext_comment = ("DROP", f'"{spn} has no local endpoints"') if not has_external else ("", "")
        m = f"-m {proto} -p {proto}"

        if has_internal:
            n_rules.w("-A KUBE-SERVICES -m comment --comment", f'"{spn} cluster IP"', m,
                      "-d", svc.cluster_ip, "--dport", str(p.port), "-j", svc_chain)
        else:
            f_rules.w("-A KUBE-SERVICES -m comment --comment", int_comment, m,
                      "-d", svc.cluster_ip, "--dport", str(p.port), "-j", int_target)
        for lbip in svc.lb_ips:
            if has_endpoints:
                n_rules.w("-A KUBE-SERVICES -m comment --comment", f'"{spn} loadbalancer IP"', m,
                          "-d", lbip, "--dport", str(p.port), "-j", lb_chain)
            if uses_fw:
                f_rules.w("-A KUBE-PROXY-FIREWALL -m comment --comment", f'"{spn} traffic not accepted by {fw_chain}"',
                          m, "-d", lbip, "--dport", str(p.port), "-j DROP")
        if not has_external:
            for lbip in svc.lb_ips:
                f_rules.w("-A KUBE-EXTERNAL-SERVICES -m comment --comment", ext_comment, m,
                          "-d", lbip, "--dport", str(p.port), "-j", ext_target)
        if p.node_port:
            if has_endpoints:
                n_rules.w("-A KUBE-NODEPORTS -m comment --comment", spn, m, "--dport", str(p.node_port), "-j", ext_chain)
            if not has_external:
                f_rules.w("-A KUBE-EXTERNAL-SERVICES -m comment --comment", ext_comment,
                          "-m addrtype --dst-type LOCAL", m, "--dport", str(p.node_port), "-j", ext_target)
        if svc.health_check_node_port:
            f_rules.w("-A KUBE-NODEPORTS -m comment --comment", f'"{spn} health check node port"',
                      "-m tcp -p tcp --dport", str(svc.health_check_node_port), "-j ACCEPT")

        if has_internal:
            n_rules.w("-A", svc_chain, "-m comment --comment", f'"{spn} cluster IP"', m,
                      "-d", svc.cluster_ip, "--dport", str(p.port), if_not_local, "-j KUBE-MARK-MASQ")

        if uses_ext_chain:
            n_chains.w(f":{ext_chain} - [0:0]")
            if not ext_local:
                n_rules.w("-A", ext_chain, "-m comment --comment",
                          f'"masquerade traffic for {spn} external destinations"', "-j KUBE-MARK-MASQ")
            else:
                n_rules.w("-A", ext_chain, "-m comment --comment",
                          f'"pod traffic for {spn} external destinations"', if_local, "-j", svc_chain)
                n_rules.w("-A", ext_chain, "-m comment --comment",
                          f'"masquerade LOCAL traffic for {spn} external destinations"',
                          "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")
                n_rules.w("-A", ext_chain, "-m comment --comment",
                          f'"route LOCAL traffic for {spn} external destinations"',
                          "-m addrtype --src-type LOCAL -j", svc_chain)
            if has_external:
                n_rules.w("-A", ext_chain, "-j", ext_policy_chain)

        if uses_fw:
            n_chains.w(f":{fw_chain} - [0:0]")
            head = f'-A {fw_chain} -m comment --comment "{spn} loadbalancer IP"'
            allow_from_node = False
            for cidr in svc.lb_source_ranges:
                n_rules.w(head, "-s", cidr, "-j", ext_chain)
                if ipaddress.ip_address(node.ip) in ipaddress.ip_network(cidr):
                    allow_from_node = True
            if allow_from_node:
                for lbip in svc.lb_ips:
                    n_rules.w(head, "-s", lbip, "-j", ext_chain)
            n_rules.w("-A", fw_chain, "-m comment --comment",
                      f'"other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL"')

        def to_endpoints(chain_name: str, endpoints: list[str]) -> None:
            n = len(endpoints)
            for i, ep in enumerate(endpoints):
                args = ["-A", chain_name, "-m comment --comment", f'"{spn} -> {ep}"']
                if i < n - 1:
                    args += ["-m statistic --mode random --probability", probability(n - i)]
                n_rules.w(*args, "-j", sep_chain(spn, proto, ep))

        if uses_cluster_chain:
            n_chains.w(f":{svc_chain} - [0:0]")
            to_endpoints(svc_chain, ep_strs)
        if uses_local_chain:
            n_chains.w(f":{svl_chain} - [0:0]")
            to_endpoints(svl_chain, local_eps)

        reachable = list(ep_strs) if uses_cluster_chain else []
        for e in local_eps if uses_local_chain else []:
            if e not in reachable:
                reachable.append(e)
        for ep in reachable:
            sep = sep_chain(spn, proto, ep)
            n_chains.w(f":{sep} - [0:0]")
            n_rules.w("-A", sep, "-m comment --comment", spn, "-s", ep.rsplit(":", 1)[0], "-j KUBE-MARK-MASQ")
            n_rules.w("-A", sep, "-m comment --comment", spn, m, "-j DNAT --to-destination", ep)

    if ipv6:
        dest = "-m addrtype --dst-type LOCAL ! -d ::1/128"
    else:
        dest = "-m addrtype --dst-type LOCAL"  # localhostNodePorts=true
    n_rules.w('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"',
              dest, "-j KUBE-NODEPORTS")
    f_rules.w("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP")
    f_rules.w('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark',
              f"{MASQ_MARK}/{MASQ_MARK}", "-j ACCEPT")
    f_rules.w('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
              "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")

    out = ["*filter", *f_chains.lines, *f_rules.lines, "COMMIT",
           "*nat", *n_chains.lines, *n_rules.lines, "COMMIT", ""]
    return "\n".join(out)


# kube-proxy's iptablesJumpChains, ensured with EnsureRule(Prepend, ...) in this order
JUMP_CHAINS = [
    ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", ""),
    ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ""),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", ""),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", ""),
]


# --------------------------------------------------------------------------
# Running things inside namespaces
# --------------------------------------------------------------------------


def run(cmd: list[str], *, input: str | None = None, check: bool = True) -> str:
    p = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


class NetNS:
    def __init__(self, name: str) -> None:
        self.name = name
        run(["ip", "netns", "add", name])

    def __call__(self, *cmd: str, input: str | None = None, check: bool = True) -> str:
        return run(["ip", "netns", "exec", self.name, *cmd], input=input, check=check)

    def sh(self, line: str, check: bool = True) -> str:
        return self(*_split(line), check=check)

    def delete(self) -> None:
        run(["ip", "netns", "del", self.name], check=False)


def _split(line: str) -> list[str]:
    import shlex
    return shlex.split(line)


class AnonNS:
    """A namespace without a name (shows up as link-netnsid N), held by a sleep."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
        time.sleep(0.3)
        self.pid = self.proc.pid

    def __call__(self, *cmd: str, check: bool = True) -> str:
        return run(["nsenter", "-t", str(self.pid), "-n", *cmd], check=check)

    def delete(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


# --------------------------------------------------------------------------
# Building one node
# --------------------------------------------------------------------------

SYSCTL_SET = [
    ("net.ipv4.conf.default.rp_filter", "2"),
    ("net.ipv4.conf.all.rp_filter", "2"),
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.route_localnet", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
    ("net.netfilter.nf_conntrack_tcp_be_liberal", "0"),
]

SYSCTL_CAPTURE = [
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.eth0.forwarding",
    "net.ipv4.conf.cni0.forwarding",
    "net.ipv4.conf.flannel/1.forwarding",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.ipv4.conf.eth0.rp_filter",
    "net.ipv4.conf.cni0.rp_filter",
    "net.ipv4.conf.flannel/1.rp_filter",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv4.conf.all.accept_redirects",
    "net.ipv4.conf.all.send_redirects",
    "net.ipv4.conf.all.arp_ignore",
    "net.ipv4.conf.all.arp_announce",
    "net.ipv4.ip_local_port_range",
    "net.ipv6.conf.all.forwarding",
    "net.ipv6.conf.all.disable_ipv6",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_count",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
]

DOCKER_FILTER = [
    "-N DOCKER", "-N DOCKER-ISOLATION-STAGE-1", "-N DOCKER-ISOLATION-STAGE-2", "-N DOCKER-USER",
    "-P FORWARD DROP",
    "-A FORWARD -j DOCKER-USER",
    "-A FORWARD -j DOCKER-ISOLATION-STAGE-1",
    "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A FORWARD -o docker0 -j DOCKER",
    "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT",
    "-A FORWARD -i docker0 -o docker0 -j ACCEPT",
    "-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2",
    "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
    "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
    "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
    "-A DOCKER-USER -j RETURN",
]
DOCKER_NAT = [
    "-N DOCKER",
    "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
    "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
    "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
    "-A DOCKER -i docker0 -j RETURN",
]


def ipt(ns: NetNS, family: str, table: str, spec: str) -> None:
    ns(family, "-w", "-t", table, *_split(spec))


def load_rules(ns: NetNS, node: Node, *, docker: bool, flannel_forward: bool) -> None:
    # 1. Docker (starts at boot, before kubelet)
    if docker:
        for spec in DOCKER_FILTER:
            ipt(ns, "iptables", "filter", spec)
        for spec in DOCKER_NAT:
            ipt(ns, "iptables", "nat", spec)
    # 2. kubelet: hint + canary chains, KUBE-FIREWALL (IPv4 only)
    for fam in ("iptables", "ip6tables"):
        ipt(ns, fam, "mangle", "-N KUBE-IPTABLES-HINT")
        for t in ("mangle", "nat", "filter"):
            ipt(ns, fam, t, "-N KUBE-KUBELET-CANARY")
    ipt(ns, "iptables", "filter", "-N KUBE-FIREWALL")
    ipt(ns, "iptables", "filter",
        '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
        "--dst 127.0.0.0/8 ! --src 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
    ipt(ns, "iptables", "filter", "-I OUTPUT 1 -j KUBE-FIREWALL")
    ipt(ns, "iptables", "filter", "-I INPUT 1 -j KUBE-FIREWALL")
    # 3. kube-proxy: canaries, jump chains (prepended), then the restore payload
    for fam, restore, v6 in (("iptables", "iptables-restore", False), ("ip6tables", "ip6tables-restore", True)):
        for t in ("mangle", "nat", "filter"):
            ipt(ns, fam, t, "-N KUBE-PROXY-CANARY")
        created: set[tuple[str, str]] = set()
        jumps = JUMP_CHAINS + [("filter", "KUBE-FIREWALL", "INPUT", "", ""), ("filter", "KUBE-FIREWALL", "OUTPUT", "", "")]
        for table, dst, src, comment, extra in jumps:
            if (table, dst) not in created:
                ns(fam, "-w", "-t", table, "-N", dst, check=False)  # EnsureChain
                created.add((table, dst))
            args = _split(extra)
            if comment:
                args += ["-m", "comment", "--comment", comment]
            args += ["-j", dst]
            exists = subprocess.run(["ip", "netns", "exec", ns.name, fam, "-w", "-t", table, "-C", src, *args],
                                    capture_output=True).returncode == 0
            if not exists:
                ns(fam, "-w", "-t", table, "-I", src, "1", *args)
        ns(restore, "-w", "--noflush", "--counters", input=kube_proxy_restore(node, ipv6=v6))
    # 4. flannel
    cidr, pod = CLUSTER_CIDR, node.pod_cidr
    ipt(ns, "iptables", "nat", "-N FLANNEL-POSTRTG")
    for spec in [
        '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
        f'-A FLANNEL-POSTRTG -m mark --mark {MASQ_MARK}/{MASQ_MARK} -m comment --comment "flanneld masq" -j RETURN',
        f'-A FLANNEL-POSTRTG -s {pod} -d {cidr} -m comment --comment "flanneld masq" -j RETURN',
        f'-A FLANNEL-POSTRTG -s {cidr} -d {pod} -m comment --comment "flanneld masq" -j RETURN',
        f'-A FLANNEL-POSTRTG ! -s {cidr} -d {pod} -m comment --comment "flanneld masq" -j RETURN',
        f'-A FLANNEL-POSTRTG -s {cidr} ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
        f'-A FLANNEL-POSTRTG ! -s {cidr} -d {cidr} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully',
    ]:
        ipt(ns, "iptables", "nat", spec)
    if flannel_forward:
        ipt(ns, "iptables", "filter", "-N FLANNEL-FWD")
        for spec in [
            '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
            f'-A FLANNEL-FWD -s {cidr} -m comment --comment "flanneld forward" -j ACCEPT',
            f'-A FLANNEL-FWD -d {cidr} -m comment --comment "flanneld forward" -j ACCEPT',
        ]:
            ipt(ns, "iptables", "filter", spec)


def build_node(node: Node, lan: AnonNS, nsname: str, *, broken: bool = False) -> tuple[NetNS, list[NetNS]]:
    ns = NetNS(nsname)
    pod_nss: list[NetNS] = []
    ns.sh("ip link set lo up")
    for key, val in SYSCTL_SET:
        if broken and key == "net.bridge.bridge-nf-call-iptables":
            val = "0"
        ns("sysctl", "-q", "-w", f"{key}={val}")
    ns("sysctl", "-q", "-w", "net.netfilter.nf_conntrack_max=131072", check=False)

    # eth0: node NIC, peer on the private LAN bridge
    lan_port = f"lan-{node.name[-1]}" + ("x" if broken else "")
    ns.sh(f"ip link add eth0 index 2 type veth peer name {lan_port} netns {lan.pid}")
    lan("ip", "link", "set", lan_port, "master", "br0", "up")
    ns.sh(f"ip link set eth0 address {node.eth0_mac} up")
    ns.sh(f"ip addr add {node.ip}/24 brd 192.168.56.255 dev eth0")
    ns.sh(f"ip route add default via {GATEWAY_IP} dev eth0 proto static")

    idx = 3
    if broken:  # docker0, no containers: NO-CARRIER / linkdown
        ns.sh(f"ip link add docker0 index {idx} type bridge")
        ns.sh("ip link set docker0 address 02:42:5b:9e:3a:c1 up")
        ns.sh("ip addr add 172.17.0.1/16 brd 172.17.255.255 dev docker0")
        idx += 1

    # flannel.1 (VXLAN VTEP)
    ns.sh(f"ip link add flannel.1 index {idx} type vxlan id {VXLAN_ID} local {node.ip} dev eth0 "
          f"dstport {VXLAN_PORT} nolearning")
    ns.sh(f"ip link set flannel.1 address {node.vtep_mac} mtu {FLANNEL_MTU} up")
    ns.sh(f"ip addr add {node.vtep_ip}/32 dev flannel.1")
    idx += 1

    # cni0 bridge
    ns.sh(f"ip link add cni0 index {idx} type bridge")
    ns.sh(f"ip link set cni0 address {node.cni0_mac} mtu {FLANNEL_MTU} up")
    ns.sh(f"ip addr add {node.cni0_ip}/24 brd {ipaddress.ip_network(node.pod_cidr).broadcast_address} dev cni0")
    idx += 1

    # pods
    for pod in [p for p in PODS if p.node == node.name]:
        pns = NetNS(pod.netns)
        pod_nss.append(pns)
        pns.sh("ip link set lo up")
        ns.sh(f"ip link add {pod.veth} index {idx} type veth peer name eth0 index 2 netns {pod.netns}")
        idx += 1
        ns.sh(f"ip link set {pod.veth} address {pod.veth_mac} mtu {FLANNEL_MTU}")
        ns.sh(f"ip link set {pod.veth} master cni0")
        ns.sh(f"bridge link set dev {pod.veth} hairpin on")
        ns.sh(f"ip link set {pod.veth} up")
        pns.sh(f"ip link set eth0 address {pod.mac} mtu {FLANNEL_MTU} up")
        pns.sh(f"ip addr add {pod.ip}/24 brd {ipaddress.ip_network(node.pod_cidr).broadcast_address} dev eth0")
        pns.sh(f"ip route add {CLUSTER_CIDR} via {node.cni0_ip} dev eth0")
        pns.sh(f"ip route add default via {node.cni0_ip} dev eth0")

    # flannel routes, neighbours and fdb for every other node
    for other in NODES.values():
        if other.name == node.name:
            continue
        ns.sh(f"ip route add {other.pod_cidr} via {other.vtep_ip} dev flannel.1 onlink")
        ns.sh(f"ip neigh replace {other.vtep_ip} dev flannel.1 lladdr {other.vtep_mac} nud permanent")
        ns.sh(f"bridge fdb append {other.vtep_mac} dev flannel.1 dst {other.ip} self permanent")

    time.sleep(2.5)  # let DAD finish so link-local addresses are not "tentative"
    # neighbours (static install, nothing is sent)
    ns.sh(f"ip neigh replace {GATEWAY_IP} dev eth0 lladdr {GATEWAY_MAC} nud reachable")
    for other in NODES.values():
        if other.name != node.name:
            ns.sh(f"ip neigh replace {other.ip} dev eth0 lladdr {other.eth0_mac} nud stale")
    for pod in [p for p in PODS if p.node == node.name]:
        ns.sh(f"ip neigh replace {pod.ip} dev cni0 lladdr {pod.mac} nud reachable")
        ns.sh(f"bridge fdb replace {pod.mac} dev {pod.veth} master dynamic")

    load_rules(ns, node, docker=broken, flannel_forward=not broken)
    return ns, pod_nss


# --------------------------------------------------------------------------
# Capturing a bundle
# --------------------------------------------------------------------------

CAPTURES = [
    ("iptables-save.txt", ["iptables-save"]),
    ("ip6tables-save.txt", ["ip6tables-save"]),
    ("ip-addr.txt", ["ip", "addr", "show"]),
    ("ip-addr.json", ["ip", "-j", "addr", "show"]),
    ("ip-link.txt", ["ip", "-d", "link", "show"]),
    ("ip-link.json", ["ip", "-j", "-d", "link", "show"]),
    ("ip-route.txt", ["ip", "route", "show", "table", "all"]),
    ("ip-route.json", ["ip", "-j", "route", "show", "table", "all"]),
    ("ip-6-route.txt", ["ip", "-6", "route", "show", "table", "all"]),
    ("ip-rule.txt", ["ip", "rule", "show"]),
    ("ip-neigh.txt", ["ip", "neigh", "show"]),
    ("bridge-fdb.txt", ["bridge", "fdb", "show"]),
    ("bridge-link.txt", ["bridge", "link", "show"]),
]

MODULES_BASE = """\
xt_statistic 12288 6 - Live 0x0000000000000000
xt_nat 12288 41 - Live 0x0000000000000000
xt_mark 12288 12 - Live 0x0000000000000000
xt_comment 12288 103 - Live 0x0000000000000000
xt_addrtype 12288 9 - Live 0x0000000000000000
xt_MASQUERADE 16384 5 - Live 0x0000000000000000
xt_conntrack 12288 14 - Live 0x0000000000000000
xt_tcpudp 16384 58 - Live 0x0000000000000000
nft_compat 20480 212 - Live 0x0000000000000000
nft_chain_nat 12288 8 - Live 0x0000000000000000
nf_nat 61440 4 xt_nat,xt_MASQUERADE,nft_chain_nat,xt_REDIRECT, Live 0x0000000000000000
nf_conntrack_netlink 57344 0 - Live 0x0000000000000000
nf_conntrack 196608 5 xt_nat,xt_MASQUERADE,xt_conntrack,nf_conntrack_netlink,nf_nat, Live 0x0000000000000000
nf_defrag_ipv6 24576 1 nf_conntrack, Live 0x0000000000000000
nf_defrag_ipv4 12288 1 nf_conntrack, Live 0x0000000000000000
xt_REDIRECT 12288 0 - Live 0x0000000000000000
ip_set 61440 0 - Live 0x0000000000000000
nf_tables 376832 253 nft_compat,nft_chain_nat, Live 0x0000000000000000
nfnetlink 20480 6 nf_conntrack_netlink,ip_set,nft_compat,nf_tables, Live 0x0000000000000000
libcrc32c 12288 3 nf_nat,nf_conntrack,nf_tables, Live 0x0000000000000000
vxlan 118784 0 - Live 0x0000000000000000
ip6_udp_tunnel 16384 1 vxlan, Live 0x0000000000000000
udp_tunnel 32768 1 vxlan, Live 0x0000000000000000
veth 45056 0 - Live 0x0000000000000000
br_netfilter 32768 0 - Live 0x0000000000000000
bridge 421888 1 br_netfilter, Live 0x0000000000000000
stp 12288 1 bridge, Live 0x0000000000000000
llc 16384 2 bridge,stp, Live 0x0000000000000000
overlay 212992 14 - Live 0x0000000000000000
nls_iso8859_1 12288 1 - Live 0x0000000000000000
intel_rapl_msr 20480 0 - Live 0x0000000000000000
intel_rapl_common 40960 1 intel_rapl_msr, Live 0x0000000000000000
joydev 32768 0 - Live 0x0000000000000000
input_leds 12288 0 - Live 0x0000000000000000
serio_raw 20480 0 - Live 0x0000000000000000
vboxguest 57344 0 - Live 0x0000000000000000
sch_fq_codel 24576 2 - Live 0x0000000000000000
dm_multipath 45056 0 - Live 0x0000000000000000
msr 12288 0 - Live 0x0000000000000000
efi_pstore 12288 0 - Live 0x0000000000000000
ip_tables 32768 0 - Live 0x0000000000000000
x_tables 65536 11 xt_statistic,xt_nat,xt_mark,xt_comment,xt_addrtype,xt_MASQUERADE,xt_conntrack,xt_tcpudp,nft_compat,xt_REDIRECT,ip_tables, Live 0x0000000000000000
autofs4 57344 2 - Live 0x0000000000000000
e1000 180224 0 - Live 0x0000000000000000
crc32_pclmul 12288 0 - Live 0x0000000000000000
psmouse 217088 0 - Live 0x0000000000000000
ahci 49152 2 - Live 0x0000000000000000
libahci 53248 1 ahci, Live 0x0000000000000000
"""


def flannel_env(node: Node) -> str:
    return (f"FLANNEL_NETWORK={CLUSTER_CIDR}\n"
            f"FLANNEL_SUBNET={node.cni0_ip}/24\n"
            f"FLANNEL_MTU={FLANNEL_MTU}\n"
            "FLANNEL_IPMASQ=true\n")


def node_yaml(node: Node, *, broken: bool) -> str:
    lines = [
        "# kptrace bundle metadata (hand-written; values as `kubectl get node` and the",
        "# kube-proxy / flannel configuration report them).",
        f"name: {node.name}",
        f"hostname: {node.name}",
        "node_ips:",
        f"  - {node.ip}",
        f"pod_cidr: {node.pod_cidr}",
        f"cluster_cidr: {CLUSTER_CIDR}",
        f"service_cidr: {SERVICE_CIDR}",
        "proxy_mode: iptables",
        "cni: flannel",
        "flannel_backend: vxlan",
        f"kubernetes_version: {K8S_VERSION}",
        "container_runtime: containerd://1.7.22",
        "os_image: Ubuntu 24.04.1 LTS",
        "kernel_version: 6.8.0-45-generic",
    ]
    if broken:
        lines.append("notes: node-a after Docker was installed and flanneld restarted with --iptables-forward-rules=false")
    return "\n".join(lines) + "\n"


def capture(ns: NetNS, node: Node, out: Path, *, broken: bool) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for fname, cmd in CAPTURES:
        text = ns(*cmd)
        if fname.endswith(".json") and not text.endswith("\n"):
            text += "\n"
        (out / fname).write_text(text)
    (out / "sysctl.txt").write_text(ns("sysctl", *SYSCTL_CAPTURE))
    (out / "modules.txt").write_text(MODULES_BASE)
    (out / "flannel-subnet.env").write_text(flannel_env(node))
    (out / "hostname.txt").write_text(node.name + "\n")
    (out / "node.yaml").write_text(node_yaml(node, broken=broken))


def verify_restore(out: Path) -> None:
    """iptables-save output must load back (iptables-restore --test) in a scratch netns."""
    ns = NetNS("kptdemo-verify")
    try:
        ns("iptables-restore", "--test", input=(out / "iptables-save.txt").read_text())
        ns("ip6tables-restore", "--test", input=(out / "ip6tables-save.txt").read_text())
    finally:
        ns.delete()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "kptrace" / "demo")
    ap.add_argument("--print-rules", metavar="NODE", help="print kube-proxy's restore payload for NODE and exit")
    args = ap.parse_args()
    if args.print_rules:
        sys.stdout.write(kube_proxy_restore(NODES[args.print_rules]))
        return 0
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2

    made: list = []
    try:
        lan = AnonNS()
        made.append(lan)
        lan("ip", "link", "add", "br0", "type", "bridge")
        lan("ip", "link", "set", "br0", "up")
        # the cluster: node-a and node-b side by side on one LAN
        for name in ("node-a", "node-b"):
            ns, pods = build_node(NODES[name], lan, f"kptdemo-{name}")
            made += [ns, *pods]
        for name in ("node-a", "node-b"):
            ns = next(m for m in made if isinstance(m, NetNS) and m.name == f"kptdemo-{name}")
            capture(ns, NODES[name], args.out / "cluster" / name, broken=False)
        for m in reversed(made[1:]):
            m.delete()
        del made[1:]
        # the broken variant of node-a
        ns, pods = build_node(NODES["node-a"], lan, "kptdemo-broken", broken=True)
        made += [ns, *pods]
        capture(ns, NODES["node-a"], args.out / "broken-node", broken=True)
    finally:
        for m in reversed(made):
            m.delete()
    for d in (args.out / "cluster" / "node-a", args.out / "cluster" / "node-b", args.out / "broken-node"):
        verify_restore(d)
        print(f"wrote {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
