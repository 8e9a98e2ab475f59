"""Synthetic kube-proxy (iptables mode) node dumps at cluster scale.

``generate_iptables(services, endpoints)`` returns the text that
``iptables-save`` would print on a node whose kube-proxy (>= 1.28, iptables
mode, default flags) programs that many service ports, plus metadata about
every service port so tests and benchmarks can pick probes and know the
expected answer without parsing the dump themselves.

Fidelity notes (verified against kube-proxy's pkg/proxy/iptables/proxier.go
and by round-tripping through ``iptables-restore``/``iptables-save`` v1.8.9,
both nft and legacy back ends; see tests/testing/test_generator.py):

* Chain names are ``KUBE-{SVC,SVL,EXT,FW}-`` + the first 16 chars of
  base32(sha256("ns/name:port" + "tcp")), and ``KUBE-SEP-`` + the same over
  ("ns/name:port" + "tcp" + "ip:port").  An unnamed port makes the
  ServicePortName just "ns/name" (no colon).
* iptables-save lists built-in chains, then user chains sorted by name, then
  the rules chain by chain in that order (NOT kube-proxy's restore order).
  Within KUBE-SERVICES, rules keep kube-proxy's order, which iterates a Go
  map: service order is effectively random; the nodeports jump is last.
* iptables-save re-orders options: ``! -s``, ``-d``, ``-p`` come first, then
  the matches in the order given (comment before tcp/statistic), e.g.
  ``-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "..." -m udp
  --dport 53 -j KUBE-SVC-...``.  Comments are always double-quoted.
* ``--probability`` is kube-proxy's "%0.10f" of 1/n, stored by the kernel as
  lround(p * 2^31) and printed back with "%.11f" (1/10 -> 0.10000000009).
* ``MARK --or-mark 0x4000`` prints as ``--set-xmark 0x4000/0x4000``;
  ``--xor-mark 0x4000`` as ``--set-xmark 0x4000/0x0``; REJECT gains
  ``--reject-with icmp-port-unreachable``; ``-m recent`` gains
  ``--mask 255.255.255.255 --rsource``.
* "Large cluster mode": when the total number of endpoints exceeds 1000,
  kube-proxy drops the ``-m comment`` from KUBE-SVC->KUBE-SEP jumps and from
  the KUBE-SEP rules.  Both benchmark sizes (1k x 10, 10k x 10) are in that
  mode, exactly like a real node of that size.
* Services without endpoints get only filter-table REJECT rules (no nat
  chains at all).  ``externalTrafficPolicy: Local`` without local endpoints
  keeps the KUBE-EXT chain (pod/LOCAL short-circuit rules) but without the
  final jump, and gets filter KUBE-EXTERNAL-SERVICES ``DROP`` rules
  ("has no local endpoints").  KUBE-MARK-DROP no longer exists (>= 1.28).
* A KUBE-FW chain ends with a rule that has a comment and *no* ``-j``.
* With ``nfacct=True``: libxt_nfacct prints ``--nfacct-name  NAME`` with TWO
  spaces, so splitting a rule on single spaces yields an empty token.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

__all__ = [
    "Endpoint",
    "GeneratedRuleset",
    "ServicePort",
    "chain_hash",
    "generate_iptables",
    "iptables_probability",
    "main",
]

# kube-proxy switches to "large cluster mode" above this many endpoints.
LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000
# Default --masquerade-bit 14, as iptables-save prints it.
MASQ_MARK = "0x4000"
# A fixed timestamp keeps the dump byte-for-byte deterministic for a seed.
DEFAULT_TIMESTAMP = 1767225600  # 2026-01-01T00:00:00Z
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
NODEPORT_RANGE = range(30000, 32768)
AFFINITY_TIMEOUT = 10800  # kube-proxy default ClientIP stickiness

_NFACCT_LOCALHOST = "localhost_nps_accepted_pkts"
_NFACCT_INVALID = "ct_state_invalid_dropped_pkts"
_NODEPORTS_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"
_BUILTIN_CHAINS = {
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
}
# iptables-nft-save prints tables in this fixed order.
_TABLE_ORDER = ("mangle", "filter", "nat")

_APP_WORDS = (
    "api", "web", "auth", "billing", "cart", "search", "catalog", "payments",
    "orders", "users", "inventory", "gateway", "redis", "postgres", "kafka",
    "metrics", "logging", "frontend", "backend", "worker", "ledger", "mailer",
)
_PORTS = (
    ("http", 80), ("https", 443), ("http-alt", 8080), ("grpc", 9090),
    ("metrics", 9100), ("redis", 6379), ("postgres", 5432), ("mysql", 3306),
    ("web", 8443), ("api", 9000),
)
_TARGET_PORTS = (8080, 8443, 9090, 3000, 5000, 6379, 5432, 3306, 9100)


# --------------------------------------------------------------------------
# kube-proxy naming and number formatting
# --------------------------------------------------------------------------

def chain_hash(text: str) -> str:
    """First 16 chars of base32(sha256(text)), kube-proxy's portProtoHash.

    Go's base32.StdEncoding is RFC 4648 with padding, the same as Python's
    b32encode; the padding never reaches the first 16 characters.
    """
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest)[:16].decode()


def iptables_probability(n: int) -> str:
    """The ``--probability`` text iptables-save prints for kube-proxy's 1/n.

    kube-proxy writes "%0.10f" % (1/n); libxt_statistic stores
    lround(p * 0x80000000) in the kernel and prints value / 0x80000000 with
    "%.11f".  So the dump never shows the exact 1/n.
    """
    written = float("%0.10f" % (1.0 / n))
    stored = math.floor(written * 0x80000000 + 0.5)  # lround, p >= 0
    return "%.11f" % (stored / 0x80000000)


# --------------------------------------------------------------------------
# Metadata model
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    local: bool
    chain: str  # KUBE-SEP-...

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass
class ServicePort:
    """One kube-proxy ServicePortName and everything needed to predict it."""

    namespace: str
    name: str
    port_name: str
    cluster_ip: str
    port: int
    protocol: str  # "TCP" or "UDP"
    node_port: int | None
    endpoints: list[Endpoint]
    policy: str  # externalTrafficPolicy: "Cluster" or "Local"
    lb_ip: str | None = None
    lb_source_ranges: list[str] = field(default_factory=list)
    health_check_node_port: int | None = None
    session_affinity: str = "None"  # or "ClientIP"

    @property
    def key(self) -> str:
        """kube-proxy's ServicePortName.String(): "ns/name:port" or "ns/name"."""
        suffix = f":{self.port_name}" if self.port_name else ""
        return f"{self.namespace}/{self.name}{suffix}"

    @property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def _hash(self) -> str:
        return chain_hash(self.key + self.proto)

    @property
    def svc_chain(self) -> str:
        return "KUBE-SVC-" + self._hash

    @property
    def svl_chain(self) -> str:
        return "KUBE-SVL-" + self._hash

    @property
    def ext_chain(self) -> str:
        return "KUBE-EXT-" + self._hash

    @property
    def fw_chain(self) -> str:
        return "KUBE-FW-" + self._hash

    @property
    def local_endpoints(self) -> list[Endpoint]:
        return [ep for ep in self.endpoints if ep.local]

    @property
    def has_endpoints(self) -> bool:
        return bool(self.endpoints)

    @property
    def externally_accessible(self) -> bool:
        return self.node_port is not None or self.lb_ip is not None

    @property
    def cluster_ip_verdict(self) -> str:
        """Outcome for a new connection to cluster IP:port from a pod."""
        return "DNAT" if self.endpoints else "REJECT"

    @property
    def external_verdict(self) -> str | None:
        """Outcome for a NodePort/LB connection from outside the cluster.

        None when the service is not externally reachable.  (From a pod or
        the node itself, Local services short-circuit to KUBE-SVC and DNAT to
        any endpoint.)
        """
        if not self.externally_accessible:
            return None
        if not self.endpoints:
            return "REJECT"
        if self.policy == "Local" and not self.local_endpoints:
            return "DROP"
        return "DNAT"

    def chains(self) -> list[str]:
        """The per-service nat chains this service port has in the dump."""
        if not self.endpoints:
            return []
        out = [self.svc_chain]
        if self.externally_accessible:
            out.append(self.ext_chain)
        if self.lb_ip and self.lb_source_ranges:
            out.append(self.fw_chain)
        if self.policy == "Local" and self.local_endpoints:
            out.append(self.svl_chain)
        out.extend(ep.chain for ep in self.endpoints)
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["endpoints"] = [
            {"ip": ep.ip, "port": ep.port, "local": ep.local, "chain": ep.chain}
            for ep in self.endpoints
        ]
        data.update(
            key=self.key,
            svc_chain=self.svc_chain,
            ext_chain=self.ext_chain if self.externally_accessible else None,
            fw_chain=self.fw_chain if self.lb_ip and self.lb_source_ranges else None,
            svl_chain=self.svl_chain if self.policy == "Local" else None,
            cluster_ip_verdict=self.cluster_ip_verdict,
            external_verdict=self.external_verdict,
        )
        return data


@dataclass
class GeneratedRuleset:
    text: str
    services: list[ServicePort]
    node_ips: tuple[str, ...]
    pod_cidr: str
    large_cluster_mode: bool
    params: dict[str, Any]

    @property
    def lines(self) -> int:
        return self.text.count("\n")

    @property
    def nbytes(self) -> int:
        return len(self.text.encode())

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.text)

    def to_meta(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "node_ips": list(self.node_ips),
            "pod_cidr": self.pod_cidr,
            "large_cluster_mode": self.large_cluster_mode,
            "lines": self.lines,
            "bytes": self.nbytes,
            "services": [svc.to_dict() for svc in self.services],
        }

    def pick(self, *, verdict: str = "DNAT", external: bool = False,
             policy: str | None = None, index: float = 0.5) -> ServicePort:
        """A deterministic probe: the service at relative position ``index``
        among those matching the filters (0.5 = middle of the dump's list)."""
        def ok(svc: ServicePort) -> bool:
            got = svc.external_verdict if external else svc.cluster_ip_verdict
            return got == verdict and (policy is None or svc.policy == policy)

        matches = [svc for svc in self.services if ok(svc)]
        if not matches:
            raise LookupError(f"no service with verdict={verdict} external={external} policy={policy}")
        return matches[min(len(matches) - 1, int(index * len(matches)))]


# --------------------------------------------------------------------------
# Building the service model
# --------------------------------------------------------------------------

class _Pools:
    """Deterministic, collision-free allocators for IPs and ports."""

    def __init__(self, rng: random.Random, services: int, pod_cidr: str,
                 local_prefix: str, num_nodes: int) -> None:
        self.rng = rng
        base = int(SERVICE_CIDR.network_address)
        # .0 is the network, .1 is default/kubernetes, .10 is kube-dns.
        reserved = {base, base + 1, base + 10}
        candidates = rng.sample(range(base, base + SERVICE_CIDR.num_addresses - 1),
                                services + len(reserved))
        self._cluster_ips = [str(ipaddress.IPv4Address(ip)) for ip in candidates if ip not in reserved]
        self._node_ports = list(NODEPORT_RANGE)
        rng.shuffle(self._node_ports)
        self._lb_count = 0
        self.local_prefix, self.remote_prefixes = _node_prefixes(pod_cidr, local_prefix, num_nodes)

    def cluster_ip(self) -> str:
        return self._cluster_ips.pop()

    def node_port(self) -> int | None:
        # Real clusters refuse more NodePorts than the range holds; we
        # degrade to ClusterIP instead so huge benchmarks still generate.
        return self._node_ports.pop() if self._node_ports else None

    def lb_ip(self) -> str:
        i = self._lb_count
        self._lb_count += 1
        return str(ipaddress.IPv4Address("198.18.0.0") + 1 + i)

    def pod_ips(self, count: int, local: int) -> list[tuple[str, bool]]:
        """``count`` distinct pod IPs of which exactly ``local`` are on this
        node (None-local pods spread over the other nodes' /24s)."""
        seen: set[str] = set()
        out: list[tuple[str, bool]] = []
        while len(out) < count:
            is_local = len(out) < local
            prefix = self.local_prefix if is_local else self.rng.choice(self.remote_prefixes)
            ip = f"{prefix}{self.rng.randint(2, 254)}"
            if ip not in seen:
                seen.add(ip)
                out.append((ip, is_local))
        return out


def _node_prefixes(pod_cidr: str, local_prefix: str, num_nodes: int) -> tuple[str, list[str]]:
    """Per-node /24 prefixes ("10.244.7.") inside the pod CIDR."""
    net = ipaddress.IPv4Network(pod_cidr)
    if net.prefixlen > 22:
        raise ValueError("pod_cidr must be /22 or larger (one /24 per node)")
    if not local_prefix.endswith(".") or ipaddress.IPv4Address(local_prefix + "0") not in net:
        raise ValueError(f"local_node_pod_prefix {local_prefix!r} must be like '10.244.1.' inside {pod_cidr}")
    subnets = min(num_nodes + 1, net.num_addresses // 256)
    prefixes = []
    for k in range(subnets):
        first = ipaddress.IPv4Address(int(net.network_address) + k * 256)
        prefix = str(first).rsplit(".", 1)[0] + "."
        if prefix != local_prefix:
            prefixes.append(prefix)
    return local_prefix, prefixes[:num_nodes]


def _endpoint(key: str, proto: str, ip: str, port: int, local: bool) -> Endpoint:
    chain = "KUBE-SEP-" + chain_hash(f"{key}{proto}{ip}:{port}")
    return Endpoint(ip=ip, port=port, local=local, chain=chain)


def _sorted_endpoints(svc: ServicePort, pods: Iterable[tuple[str, bool]], target: int) -> list[Endpoint]:
    # kube-proxy sorts endpoints by their "ip:port" string (byEndpoint), so
    # 10.244.3.10 comes before 10.244.3.9.
    eps = [_endpoint(svc.key, svc.proto, ip, target, local) for ip, local in pods]
    return sorted(eps, key=lambda ep: ep.address)


def _system_services(node_ips: Sequence[str], endpoints: int, pools: _Pools) -> list[ServicePort]:
    """default/kubernetes and kube-dns, as every cluster has them."""
    api = ServicePort("default", "kubernetes", "https", "10.96.0.1", 443, "TCP", None, [], "Cluster")
    api.endpoints = _sorted_endpoints(api, [(ip, True) for ip in node_ips], 6443)
    dns_pods = pools.pod_ips(min(endpoints, 2), 0)
    out = [api]
    for port_name, proto, port, target in (("dns", "UDP", 53, 53), ("dns-tcp", "TCP", 53, 53),
                                           ("metrics", "TCP", 9153, 9153)):
        svc = ServicePort("kube-system", "kube-dns", port_name, "10.96.0.10", port, proto, None, [], "Cluster")
        svc.endpoints = _sorted_endpoints(svc, dns_pods, target)
        out.append(svc)
    return out


@dataclass
class _Fractions:
    no_endpoint: float
    nodeport: float
    local_policy: float
    lb: float
    affinity: float
    udp: float
    multi_port: float
    unnamed_port: float


def _build_services(services: int, endpoints: int, rng: random.Random, pools: _Pools,
                    fr: _Fractions, node_ips: Sequence[str]) -> list[ServicePort]:
    out: list[ServicePort] = []
    if services >= 4:
        out.extend(_system_services(node_ips, endpoints, pools))
    external = fr.nodeport + fr.lb
    p_local = min(1.0, fr.local_policy / external) if external else 0.0
    namespaces = max(1, services // 25)
    index = 0
    while len(out) < services:
        n_ports = 2 if services - len(out) >= 2 and rng.random() < fr.multi_port else 1
        out.extend(_one_service(index, n_ports, endpoints, rng, pools, fr, p_local, namespaces, node_ips))
        index += 1
    return out


def _one_service(index: int, n_ports: int, endpoints: int, rng: random.Random, pools: _Pools,
                 fr: _Fractions, p_local: float, namespaces: int,
                 node_ips: Sequence[str]) -> list[ServicePort]:
    """One Service object with ``n_ports`` ports sharing IP, pods and policy."""
    namespace = f"ns-{rng.randrange(namespaces):04d}"
    name = f"{rng.choice(_APP_WORDS)}-{index:05d}"
    kind = rng.random()
    is_lb = kind < fr.lb
    is_nodeport = is_lb or kind < fr.lb + fr.nodeport
    policy = "Local" if is_nodeport and rng.random() < p_local else "Cluster"
    affinity = "ClientIP" if rng.random() < fr.affinity else "None"
    no_endpoints = rng.random() < fr.no_endpoint
    proto = "UDP" if rng.random() < fr.udp else "TCP"
    unnamed = n_ports == 1 and rng.random() < fr.unnamed_port
    cluster_ip = pools.cluster_ip()
    lb_ip = pools.lb_ip() if is_lb else None

    n_eps = 0 if no_endpoints else endpoints
    # Local-policy services: half get a local endpoint, half none, so both
    # the KUBE-SVL path and the "has no local endpoints" DROP path exist.
    n_local = (1 if rng.random() < 0.5 else 0) if policy == "Local" else sum(
        rng.random() < 1.0 / (len(pools.remote_prefixes) + 1) for _ in range(n_eps))
    pods = pools.pod_ips(n_eps, min(n_local, n_eps))

    port_choices = rng.sample(_PORTS, n_ports)
    # One health-check NodePort per Service (not per port), LB + Local only.
    hc_port = pools.node_port() if lb_ip and policy == "Local" else None
    out = []
    for port_name, port in port_choices:
        node_port = pools.node_port() if is_nodeport else None
        svc = ServicePort(
            namespace=namespace, name=name, port_name="" if unnamed else port_name,
            cluster_ip=cluster_ip, port=port, protocol=proto, node_port=node_port,
            endpoints=[], policy=policy if node_port or lb_ip else "Cluster",
            lb_ip=lb_ip, session_affinity=affinity,
        )
        if lb_ip:
            svc.lb_source_ranges = _source_ranges(index, node_ips)
            svc.health_check_node_port = hc_port
        target = port if rng.random() < 0.3 else rng.choice(_TARGET_PORTS)
        svc.endpoints = _sorted_endpoints(svc, pods, target)
        out.append(svc)
    return out


def _source_ranges(index: int, node_ips: Sequence[str]) -> list[str]:
    """loadBalancerSourceRanges; every other LB also admits the node's own
    network, which makes kube-proxy add the "-s LB-IP" allow rule."""
    ranges = ["203.0.113.0/24"]
    if index % 2 == 0 and node_ips:
        ranges.append(str(ipaddress.IPv4Network(node_ips[0] + "/16", strict=False)))
    return ranges


# --------------------------------------------------------------------------
# Rendering: exactly what iptables-save prints
# --------------------------------------------------------------------------

class _Table:
    """Rules per chain; rendered as iptables-save does (built-ins first,
    user chains sorted, rules grouped by chain)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chains: dict[str, list[str]] = {c: [] for c in _BUILTIN_CHAINS[name]}

    def declare(self, chain: str) -> list[str]:
        return self.chains.setdefault(chain, [])

    def add(self, chain: str, rule: str) -> None:
        self.chains.setdefault(chain, []).append(f"-A {chain} {rule}")

    def render(self, header: str, stamp: str) -> list[str]:
        builtins = _BUILTIN_CHAINS[self.name]
        users = sorted(c for c in self.chains if c not in builtins)
        out = [f"# Generated by {header} on {stamp}", f"*{self.name}"]
        out += [f":{c} ACCEPT [0:0]" for c in builtins]
        out += [f":{c} - [0:0]" for c in users]
        for chain in (*builtins, *users):
            out += self.chains[chain]
        out += ["COMMIT", f"# Completed on {stamp}"]
        return out


def _port_match(svc: ServicePort, port: int) -> str:
    return f"-m {svc.proto} --dport {port}"


def _fixed_rules(mangle: _Table, filt: _Table, nat: _Table, nfacct: bool) -> None:
    """Chains and base-chain jumps every kube-proxy/kubelet node has."""
    for table in (mangle, filt, nat):
        table.declare("KUBE-PROXY-CANARY")
        table.declare("KUBE-KUBELET-CANARY")
    mangle.declare("KUBE-IPTABLES-HINT")
    for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD",
                  "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"):
        filt.declare(chain)
    for chain in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"):
        nat.declare(chain)

    # kube-proxy *prepends* each jump in list order, so they appear reversed;
    # kubelet's KUBE-FIREWALL jump was there first and ends up last.
    new = "-m conntrack --ctstate NEW -m comment --comment"
    filt.add("INPUT", f'{new} "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL')
    filt.add("INPUT", '-m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS')
    filt.add("INPUT", f'{new} "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES')
    filt.add("INPUT", "-j KUBE-FIREWALL")
    filt.add("FORWARD", f'{new} "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL')
    filt.add("FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD')
    filt.add("FORWARD", f'{new} "kubernetes service portals" -j KUBE-SERVICES')
    filt.add("FORWARD", f'{new} "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES')
    filt.add("OUTPUT", f'{new} "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL')
    filt.add("OUTPUT", f'{new} "kubernetes service portals" -j KUBE-SERVICES')
    filt.add("OUTPUT", "-j KUBE-FIREWALL")
    filt.add("KUBE-FIREWALL", '! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment '
             '"block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP')
    counter = f"-m nfacct --nfacct-name  {_NFACCT_INVALID} " if nfacct else ""
    filt.add("KUBE-FORWARD", f"-m conntrack --ctstate INVALID {counter}-j DROP")
    filt.add("KUBE-FORWARD", f'-m comment --comment "kubernetes forwarding rules" '
             f"-m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT")
    filt.add("KUBE-FORWARD", '-m comment --comment "kubernetes forwarding conntrack rule" '
             "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")

    nat.add("PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
    nat.add("OUTPUT", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
    nat.add("POSTROUTING", '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING')
    nat.add("KUBE-MARK-MASQ", f"-j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}")
    nat.add("KUBE-POSTROUTING", f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
    nat.add("KUBE-POSTROUTING", f"-j MARK --set-xmark {MASQ_MARK}/0x0")
    nat.add("KUBE-POSTROUTING", '-m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully")


def _service_filter_rules(filt: _Table, svc: ServicePort) -> None:
    """REJECT/DROP/firewall rules kube-proxy puts in the filter table."""
    key, p = svc.key, svc.proto
    if not svc.endpoints:
        comment, target = f'"{key} has no endpoints"', "REJECT --reject-with icmp-port-unreachable"
        filt.add("KUBE-SERVICES", f"-d {svc.cluster_ip}/32 -p {p} -m comment --comment {comment} "
                 f"{_port_match(svc, svc.port)} -j {target}")
    elif svc.external_verdict == "DROP":
        comment, target = f'"{key} has no local endpoints"', "DROP"
    else:
        comment = target = ""
    if svc.lb_ip:
        if svc.endpoints and svc.lb_source_ranges:
            filt.add("KUBE-PROXY-FIREWALL", f"-d {svc.lb_ip}/32 -p {p} -m comment --comment "
                     f'"{key} traffic not accepted by {svc.fw_chain}" {_port_match(svc, svc.port)} -j DROP')
        if target:
            filt.add("KUBE-EXTERNAL-SERVICES", f"-d {svc.lb_ip}/32 -p {p} -m comment --comment {comment} "
                     f"{_port_match(svc, svc.port)} -j {target}")
    if svc.node_port and target:
        filt.add("KUBE-EXTERNAL-SERVICES", f"-p {p} -m comment --comment {comment} "
                 f"-m addrtype --dst-type LOCAL {_port_match(svc, svc.node_port)} -j {target}")
    if svc.health_check_node_port:
        filt.add("KUBE-NODEPORTS", f'-p tcp -m comment --comment "{key} health check node port" '
                 f"-m tcp --dport {svc.health_check_node_port} -j ACCEPT")


def _service_nat_rules(nat: _Table, svc: ServicePort, pod_cidr: str, large: bool,
                       node_ip: str | None, nfacct: bool) -> None:
    if not svc.endpoints:
        return
    key, p = svc.key, svc.proto
    vip_match = f'-d {svc.cluster_ip}/32 -p {p} -m comment --comment "{key} cluster IP" {_port_match(svc, svc.port)}'
    nat.add("KUBE-SERVICES", f"{vip_match} -j {svc.svc_chain}")
    if svc.lb_ip:
        lb_target = svc.fw_chain if svc.lb_source_ranges else svc.ext_chain
        nat.add("KUBE-SERVICES", f'-d {svc.lb_ip}/32 -p {p} -m comment --comment "{key} loadbalancer IP" '
                f"{_port_match(svc, svc.port)} -j {lb_target}")
    if svc.node_port and nfacct:
        # With nfacct available (kube-proxy >= 1.29 on most kernels) each
        # NodePort also gets a counted localhost rule, matched first.
        nat.add("KUBE-NODEPORTS", f'-d 127.0.0.0/8 -p {p} -m comment --comment "{key}" '
                f"{_port_match(svc, svc.node_port)} -m nfacct --nfacct-name  {_NFACCT_LOCALHOST} -j {svc.ext_chain}")
    if svc.node_port:
        nat.add("KUBE-NODEPORTS", f'-p {p} -m comment --comment "{key}" {_port_match(svc, svc.node_port)} '
                f"-j {svc.ext_chain}")

    nat.declare(svc.svc_chain)
    nat.add(svc.svc_chain, f"! -s {pod_cidr} {vip_match} -j KUBE-MARK-MASQ")
    _endpoint_jumps(nat, svc, svc.svc_chain, svc.endpoints, large)
    if svc.externally_accessible:
        _external_chain(nat, svc, pod_cidr)
    if svc.lb_ip and svc.lb_source_ranges:
        _firewall_chain(nat, svc, node_ip)
    if svc.policy == "Local" and svc.local_endpoints:
        nat.declare(svc.svl_chain)
        _endpoint_jumps(nat, svc, svc.svl_chain, svc.local_endpoints, large)
    for ep in svc.endpoints:
        _endpoint_chain(nat, svc, ep, large)


def _endpoint_jumps(nat: _Table, svc: ServicePort, chain: str, eps: list[Endpoint], large: bool) -> None:
    """kube-proxy's writeServiceToEndpointRules: affinity checks, then the
    1/(n-i) probability cascade with an unconditional last jump."""
    def comment(ep: Endpoint) -> str:
        return "" if large else f'-m comment --comment "{svc.key} -> {ep.address}" '

    if svc.session_affinity == "ClientIP":
        for ep in eps:
            nat.add(chain, f"{comment(ep)}-m recent --rcheck --seconds {AFFINITY_TIMEOUT} --reap "
                    f"--name {ep.chain} --mask 255.255.255.255 --rsource -j {ep.chain}")
    n = len(eps)
    for i, ep in enumerate(eps):
        stat = f"-m statistic --mode random --probability {iptables_probability(n - i)} " if i < n - 1 else ""
        nat.add(chain, f"{comment(ep)}{stat}-j {ep.chain}")


def _endpoint_chain(nat: _Table, svc: ServicePort, ep: Endpoint, large: bool) -> None:
    comment = "" if large else f'-m comment --comment "{svc.key}" '
    recent = (f"-m recent --set --name {ep.chain} --mask 255.255.255.255 --rsource "
              if svc.session_affinity == "ClientIP" else "")
    nat.declare(ep.chain)
    nat.add(ep.chain, f"-s {ep.ip}/32 {comment}-j KUBE-MARK-MASQ")
    nat.add(ep.chain, f"-p {svc.proto} {comment}{recent}-m {svc.proto} -j DNAT --to-destination {ep.address}")


def _external_chain(nat: _Table, svc: ServicePort, pod_cidr: str) -> None:
    chain, key = svc.ext_chain, svc.key
    nat.declare(chain)
    if svc.policy != "Local":
        nat.add(chain, f'-m comment --comment "masquerade traffic for {key} external destinations" -j KUBE-MARK-MASQ')
        nat.add(chain, f"-j {svc.svc_chain}")
        return
    nat.add(chain, f'-s {pod_cidr} -m comment --comment "pod traffic for {key} external destinations" '
            f"-j {svc.svc_chain}")
    nat.add(chain, f'-m comment --comment "masquerade LOCAL traffic for {key} external destinations" '
            "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ")
    nat.add(chain, f'-m comment --comment "route LOCAL traffic for {key} external destinations" '
            f"-m addrtype --src-type LOCAL -j {svc.svc_chain}")
    if svc.local_endpoints:
        nat.add(chain, f"-j {svc.svl_chain}")


def _firewall_chain(nat: _Table, svc: ServicePort, node_ip: str | None) -> None:
    chain, key = svc.fw_chain, svc.key
    nat.declare(chain)
    allow_node = False
    for cidr in svc.lb_source_ranges:
        nat.add(chain, f'-s {cidr} -m comment --comment "{key} loadbalancer IP" -j {svc.ext_chain}')
        # kube-proxy compares against its single (primary) node IP.
        if node_ip and ipaddress.IPv4Address(node_ip) in ipaddress.IPv4Network(cidr):
            allow_node = True
    if allow_node:
        nat.add(chain, f'-s {svc.lb_ip}/32 -m comment --comment "{key} loadbalancer IP" -j {svc.ext_chain}')
    # No -j: a packet that falls off this rule was not DNATed and is dropped
    # later by filter KUBE-PROXY-FIREWALL.
    nat.add(chain, f'-m comment --comment "other traffic to {key} will be dropped by KUBE-PROXY-FIREWALL"')


def _render(services: list[ServicePort], rng: random.Random, pod_cidr: str, large: bool,
            node_ip: str | None, nfacct: bool, backend: str, timestamp: int) -> str:
    mangle, filt, nat = _Table("mangle"), _Table("filter"), _Table("nat")
    _fixed_rules(mangle, filt, nat, nfacct)
    # kube-proxy walks a Go map, so the KUBE-SERVICES order is arbitrary.
    order = list(services)
    rng.shuffle(order)
    for svc in order:
        _service_filter_rules(filt, svc)
        _service_nat_rules(nat, svc, pod_cidr, large, node_ip, nfacct)
    nat.add("KUBE-SERVICES", f'-m comment --comment "{_NODEPORTS_COMMENT}" -m addrtype --dst-type LOCAL '
            "-j KUBE-NODEPORTS")

    header = "iptables-save v1.8.9" + (" (nf_tables)" if backend == "nft" else "")
    stamp = time.asctime(time.gmtime(timestamp))
    tables = {"mangle": mangle, "filter": filt, "nat": nat}
    lines: list[str] = []
    for name in _TABLE_ORDER:
        lines += tables[name].render(header, stamp)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------

def generate_iptables(
    services: int,
    endpoints: int,
    *,
    seed: int = 0,
    node_ips: Sequence[str] = ("192.168.0.2",),
    pod_cidr: str = "10.244.0.0/16",
    local_node_pod_prefix: str = "10.244.1.",
    no_endpoint_fraction: float = 0.02,
    nodeport_fraction: float = 0.2,
    local_policy_fraction: float = 0.05,
    lb_fraction: float = 0.02,
    affinity_fraction: float = 0.01,
    udp_fraction: float = 0.03,
    multi_port_fraction: float = 0.05,
    unnamed_port_fraction: float = 0.2,
    num_nodes: int = 100,
    large_cluster_mode: bool | None = None,
    nfacct: bool = False,
    backend: str = "nft",
    timestamp: int = DEFAULT_TIMESTAMP,
) -> GeneratedRuleset:
    """Build an ``iptables-save`` dump of a kube-proxy node.

    ``services`` counts service *ports* (kube-proxy's ServicePortName); a
    few Services have two ports sharing a cluster IP.  With ``services >= 4``
    the first four are default/kubernetes:https (endpoints = ``node_ips``,
    port 6443) and kube-system/kube-dns dns/dns-tcp/metrics (2 pods).  Every
    other service has ``endpoints`` endpoints unless it is one of the
    ``no_endpoint_fraction``.  ``large_cluster_mode=None`` follows kube-proxy
    (on when total endpoints > 1000).  ``nfacct=True`` adds the nfacct
    counter matches newer kube-proxy writes when the kernel supports them
    (such a dump passes ``iptables-restore --test`` but only loads for real
    once the nfacct objects exist).  Deterministic for a given seed.
    """
    if services < 0 or endpoints < 0:
        raise ValueError("services and endpoints must be >= 0")
    if backend not in ("nft", "legacy"):
        raise ValueError("backend must be 'nft' or 'legacy'")
    params = {k: v for k, v in locals().items() if k != "params"}
    params["node_ips"] = list(node_ips)
    rng = random.Random(seed)
    pools = _Pools(rng, services, pod_cidr, local_node_pod_prefix, num_nodes)
    fractions = _Fractions(no_endpoint_fraction, nodeport_fraction, local_policy_fraction, lb_fraction,
                           affinity_fraction, udp_fraction, multi_port_fraction, unnamed_port_fraction)
    svcs = _build_services(services, endpoints, rng, pools, fractions, node_ips)
    total_eps = sum(len(s.endpoints) for s in svcs)
    large = total_eps > LARGE_CLUSTER_ENDPOINTS_THRESHOLD if large_cluster_mode is None else large_cluster_mode
    node_ip = node_ips[0] if node_ips else None
    text = _render(svcs, rng, pod_cidr, large, node_ip, nfacct, backend, timestamp)
    return GeneratedRuleset(text=text, services=svcs, node_ips=tuple(node_ips), pod_cidr=pod_cidr,
                            large_cluster_mode=large, params=params)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m kptrace.testing.generator",
        description="Generate a synthetic kube-proxy iptables-save dump (and metadata).")
    ap.add_argument("--services", type=int, default=1000, help="number of service ports")
    ap.add_argument("--endpoints", type=int, default=10, help="endpoints per service port")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", default="-", help="dump path ('-' = stdout)")
    ap.add_argument("--meta", help="write service metadata JSON here")
    ap.add_argument("--node-ip", action="append", dest="node_ips", help="this node's IP (repeatable)")
    ap.add_argument("--pod-cidr", default="10.244.0.0/16")
    ap.add_argument("--local-node-pod-prefix", default="10.244.1.")
    ap.add_argument("--no-endpoint-fraction", type=float, default=0.02)
    ap.add_argument("--nodeport-fraction", type=float, default=0.2)
    ap.add_argument("--local-policy-fraction", type=float, default=0.05)
    ap.add_argument("--lb-fraction", type=float, default=0.02)
    ap.add_argument("--large-cluster-mode", choices=("auto", "on", "off"), default="auto",
                    help="drop per-endpoint comments like kube-proxy does above 1000 endpoints")
    ap.add_argument("--nfacct", action="store_true", help="add kube-proxy's nfacct counter matches")
    ap.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    start = time.perf_counter()
    mode = {"auto": None, "on": True, "off": False}[args.large_cluster_mode]
    rs = generate_iptables(
        args.services, args.endpoints, seed=args.seed,
        node_ips=tuple(args.node_ips or ("192.168.0.2",)), pod_cidr=args.pod_cidr,
        local_node_pod_prefix=args.local_node_pod_prefix,
        no_endpoint_fraction=args.no_endpoint_fraction, nodeport_fraction=args.nodeport_fraction,
        local_policy_fraction=args.local_policy_fraction, lb_fraction=args.lb_fraction,
        large_cluster_mode=mode, nfacct=args.nfacct, backend=args.backend,
    )
    elapsed = time.perf_counter() - start
    if args.output == "-":
        sys.stdout.write(rs.text)
    else:
        rs.write(args.output)
    if args.meta:
        with open(args.meta, "w", encoding="utf-8") as fh:
            json.dump(rs.to_meta(), fh, indent=1)
    print(f"generated {len(rs.services)} service ports, {rs.lines} lines, {rs.nbytes / 1e6:.1f} MB "
          f"in {elapsed:.2f} s (large_cluster_mode={rs.large_cluster_mode})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
