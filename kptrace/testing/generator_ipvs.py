"""Synthetic kube-proxy (IPVS mode) node bundles at cluster scale.

``generate_ipvs(services, endpoints)`` takes the service model of
``kptrace.testing.generator`` (same seed and knobs: the very same services,
endpoints, node ports and LB IPs as ``generate_iptables``) and writes what a
node running kube-proxy v1.30 in IPVS mode (``--ipvs-scheduler rr``,
``--cluster-cidr`` = ``pod_cidr``, default flags) shows, as a kptrace bundle
(docs/bundle.md): ``ipvsadm.txt``, ``ipset-save.txt``, ``iptables-save.txt``,
``ip-addr.txt`` and ``node.yaml``.

Fidelity notes (kube-proxy's pkg/proxy/ipvs/proxier.go and ipset.go, ipvsadm
1.31, ipset 7.17 on Linux 6.18; see tests/testing/test_generator_ipvs.py):

* Virtual services: ClusterIP:port for every service port (with or without
  endpoints: one without real servers answers ICMP port unreachable), each LB
  IP:port, and NodePort on every node IP (all local addresses but
  kube-ipvs0's and loopback).  ClientIP affinity is ``persistent 10800``.
  NodePort/LB services with ``externalTrafficPolicy: Local`` get only the
  local endpoints, or *all* endpoints when there is no local one (kube-proxy
  PR 97081): unlike iptables mode nothing is dropped.  The apiserver's
  endpoints carry no nodeName, so kube-proxy never counts them local.
* ``ipvsadm -Ln`` sorts with libipvs's ``ipvs_cmp_services``: protocol, then
  ``ntohl(a) - ntohl(b)`` as a signed int, so 192.168.x and 198.18.x sort
  *before* 10.96.x; real servers likewise (``ipvs_cmp_dests``).
* ipsets: names, types and order of ``ipsetInfo``; kube-proxy creates them
  (``family inet hashsize 1024 maxelem 65536``, bitmaps ``range 0-65535``)
  while walking a Go map, so their order in ``ipset save`` is random; it adds
  members one ``ipset add`` at a time in sorted string order.  ``ipset save``
  prints hash members in the kernel's bucket order, which this module
  reproduces: jhash2 over the element struct (little-endian words) with the
  set's initval, buckets of at most 12 (``bucketsize``), and the table
  doubling (``hashsize`` grows) when a 13th element lands in one bucket.
  Every set gets its own random initval, as ``get_random_bytes`` gives it.
* iptables: ``writeIptablesRules`` plus kubelet's KUBE-FIREWALL and the
  canary chains, in iptables-save layout.  Rules for empty sets are not
  written.  The KUBE-FORWARD INVALID drop is kube-proxy <= 1.30's
  (``invalid_drop=False`` leaves it out, as newer IPVS proxiers do).
  ``-m ipvs`` (KUBE-IPVS-OUT-FILTER) prints as libxt_ipvs saves it:
  ``--vproto 6 --vaddr IP/32 --vport N``.
* ``ip addr``: lo, eth0 with the node IPs, and kube-ipvs0 (a DOWN dummy)
  holding every cluster IP and LB IP as /32, in the order kube-proxy bound
  them (its Go-map walk over services).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from kptrace.testing.generator import (
    _TABLE_ORDER,
    AFFINITY_TIMEOUT,
    DEFAULT_TIMESTAMP,
    MASQ_MARK,
    SERVICE_CIDR,
    Endpoint,
    ServicePort,
    _build_services,
    _Fractions,
    _Pools,
    _Table,
)

__all__ = [
    "GeneratedBundle",
    "RealServer",
    "VirtualService",
    "external_real_servers",
    "generate_ipvs",
    "ipset_hash_order",
    "ipvs_cluster_verdict",
    "ipvs_external_verdict",
    "jhash2",
    "main",
    "render_ipvsadm",
    "sort_virtual_services",
]

SCHEDULER = "rr"
IPVS_HEADER = ("IP Virtual Server version 1.2.1 (size=4096)\n"
               "Prot LocalAddress:Port Scheduler Flags\n"
               "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")
# pkg/proxy/ipvs/ipset: what kube-proxy passes to `ipset create`.
IPSET_HASHSIZE = 1024
IPSET_MAXELEM = 65536
IPSET_PORT_RANGE = "0-65535"
# The kernel's default (AHASH_MAX_SIZE): a bucket holds at most 12 elements.
IPSET_BUCKETSIZE = 12
NODE_PREFIXLEN = 24
KUBERNETES_VERSION = "v1.30.4"

_PROTO_NUM = {"tcp": 6, "udp": 17, "sctp": 132}
_U32 = 0xFFFFFFFF

# pkg/proxy/ipvs/proxier.go ipsetInfo, comments from ipset.go.
_IPSETS = (
    ("KUBE-LOOP-BACK", "hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    ("KUBE-CLUSTER-IP", "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    ("KUBE-EXTERNAL-IP", "hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    ("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port",
     "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal"),
    ("KUBE-LOAD-BALANCER-FW", "hash:ip,port",
     "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    ("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port",
     "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip",
     "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net",
     "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    ("KUBE-NODE-PORT-TCP", "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-UDP", "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port",
     "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port",
     "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "Kubernetes health check node port"),
    ("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface"),
)
_COMMENT = {name: comment for name, _, comment in _IPSETS}

# ipsetWithIptablesChain: (set, table, chain, match flags, -p, target), in kube-proxy's order.
_SET_RULES = (
    ("KUBE-LOOP-BACK", "nat", "KUBE-POSTROUTING", "dst,dst,src", "", "MASQUERADE"),
    ("KUBE-LOAD-BALANCER", "nat", "KUBE-SERVICES", "dst,dst", "", "KUBE-LOAD-BALANCER"),
    ("KUBE-LOAD-BALANCER-LOCAL", "nat", "KUBE-LOAD-BALANCER", "dst,dst", "", "RETURN"),
    ("KUBE-NODE-PORT-LOCAL-TCP", "nat", "KUBE-NODE-PORT", "dst", "tcp", "RETURN"),
    ("KUBE-NODE-PORT-TCP", "nat", "KUBE-NODE-PORT", "dst", "tcp", "KUBE-MARK-MASQ"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "nat", "KUBE-NODE-PORT", "dst", "udp", "RETURN"),
    ("KUBE-NODE-PORT-UDP", "nat", "KUBE-NODE-PORT", "dst", "udp", "KUBE-MARK-MASQ"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "nat", "KUBE-NODE-PORT", "dst,dst", "sctp", "RETURN"),
    ("KUBE-NODE-PORT-SCTP-HASH", "nat", "KUBE-NODE-PORT", "dst,dst", "sctp", "KUBE-MARK-MASQ"),
    ("KUBE-LOAD-BALANCER-FW", "filter", "KUBE-PROXY-FIREWALL", "dst,dst", "", "KUBE-SOURCE-RANGES-FIREWALL"),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst,src", "", "RETURN"),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "filter", "KUBE-SOURCE-RANGES-FIREWALL", "dst,dst,src", "", "RETURN"),
)


# --------------------------------------------------------------------------
# Model of what IPVS holds
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class RealServer:
    """One IPVS destination: always Masq and weight 1 from kube-proxy."""

    ip: str
    port: int
    forward: str = "Masq"
    weight: int = 1
    active: int = 0
    inactive: int = 0

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class VirtualService:
    """One IPVS virtual service and the ServicePortName it was made for."""

    protocol: str  # "TCP" / "UDP" / "SCTP"
    ip: str
    port: int
    real_servers: tuple[RealServer, ...]
    kind: str  # "cluster-ip", "load-balancer" or "node-port"
    service: str  # ServicePort.key; "" when not from the generator
    scheduler: str = SCHEDULER
    persistent: int | None = None  # ClientIP affinity timeout

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol} {self.address}"


def ipvs_cluster_verdict(svc: ServicePort) -> str:
    """A new connection from a pod to cluster IP:port: "DNAT" to a real server,
    or "REJECT" (a virtual service without real servers: ICMP port unreachable)."""
    return "DNAT" if svc.endpoints else "REJECT"


def external_real_servers(svc: ServicePort) -> list[Endpoint]:
    """The endpoints of the NodePort/LB virtual services.

    Local policy means the local endpoints, but with none kube-proxy uses all
    of them so pods on the node can still reach the service (PR 97081).
    """
    if svc.policy == "Local" and svc.local_endpoints:
        return svc.local_endpoints
    return svc.endpoints


def ipvs_external_verdict(svc: ServicePort) -> str | None:
    """NodePort/LB connection from outside: None when not external, else as
    for the cluster IP (IPVS mode never drops for a missing local endpoint)."""
    return ipvs_cluster_verdict(svc) if svc.externally_accessible else None


def _real_servers(eps: Iterable[Endpoint]) -> tuple[RealServer, ...]:
    return tuple(RealServer(ep.ip, ep.port) for ep in eps)


def _persistence(svc: ServicePort) -> int | None:
    return AFFINITY_TIMEOUT if svc.session_affinity == "ClientIP" else None


def _virtual_services(svc: ServicePort, node_ips: Sequence[str]) -> list[VirtualService]:
    """syncProxyRules' IPVS calls for one service port."""
    proto, persist = svc.protocol, _persistence(svc)
    internal = _real_servers(svc.endpoints)
    out = [VirtualService(proto, svc.cluster_ip, svc.port, internal, "cluster-ip", svc.key, persistent=persist)]
    external_eps = external_real_servers(svc)
    external = internal if external_eps is svc.endpoints else _real_servers(external_eps)
    if svc.lb_ip:
        out.append(VirtualService(proto, svc.lb_ip, svc.port, external, "load-balancer", svc.key,
                                  persistent=persist))
    if svc.node_port:
        out += [VirtualService(proto, ip, svc.node_port, external, "node-port", svc.key, persistent=persist)
                for ip in node_ips]
    return out


# --------------------------------------------------------------------------
# ipvsadm -Ln
# --------------------------------------------------------------------------

def _ip_int(ip: str) -> int:
    return int.from_bytes(socket.inet_aton(ip), "big")


def _signed32(x: int) -> int:
    """C's `int r = ntohl(a) - ntohl(b)`: the unsigned difference read as a signed int."""
    x &= _U32
    return x - (1 << 32) if x & 0x80000000 else x


def _cmp_services(a: VirtualService, b: VirtualService) -> int:
    # libipvs ipvs_cmp_services: fwmark and family are equal here; then protocol, address, port.
    r = _PROTO_NUM[a.protocol.lower()] - _PROTO_NUM[b.protocol.lower()]
    return r or _signed32(_ip_int(a.ip) - _ip_int(b.ip)) or a.port - b.port


def _cmp_dests(a: RealServer, b: RealServer) -> int:
    return _signed32(_ip_int(a.ip) - _ip_int(b.ip)) or a.port - b.port


def _arc_start(addrs: set[int]) -> int | None:
    """Where the addresses start on the 2^32 ring, if they all lie on an arc
    shorter than 2^31: then libipvs's signed comparison is the order along
    that arc, and (addr - start) mod 2^32 is a sort key for it."""
    vals = sorted(addrs)
    if len(vals) < 2:
        return vals[0] if vals else 0
    # The arc begins after the widest gap between neighbours on the ring.
    gaps = [((vals[(i + 1) % len(vals)] - v) & _U32, i) for i, v in enumerate(vals)]
    _, widest = max(gaps)
    start, end = vals[(widest + 1) % len(vals)], vals[widest]
    return start if (end - start) & _U32 < 1 << 31 else None


def sort_virtual_services(services: Iterable[VirtualService]) -> list[VirtualService]:
    """ipvsadm's listing order, of the services and of each one's real servers
    (libipvs ipvs_cmp_services / ipvs_cmp_dests under glibc qsort)."""
    vss = list(services)
    ints = {ip: _ip_int(ip) for ip in {vs.ip for vs in vss} | {rs.ip for vs in vss for rs in vs.real_servers}}
    start = _arc_start(set(ints.values()))
    if start is None:
        # Addresses all over the ring: the signed comparison is no total order
        # and qsort's result depends on its algorithm; compare pairwise as it does.
        vss = [replace(vs, real_servers=tuple(sorted(vs.real_servers, key=functools.cmp_to_key(_cmp_dests))))
               for vs in vss]
        return sorted(vss, key=functools.cmp_to_key(_cmp_services))

    def ring(ip: str) -> int:
        return (ints[ip] - start) & _U32

    # NodePort and LB services share their real-server tuple with the cluster IP's: sort each once.
    done: dict[int, tuple[RealServer, ...]] = {}
    for i, vs in enumerate(vss):
        rss = done.get(id(vs.real_servers))
        if rss is None:
            rss = done[id(vs.real_servers)] = tuple(sorted(vs.real_servers, key=lambda rs: (ring(rs.ip), rs.port)))
        vss[i] = replace(vs, real_servers=rss)
    return sorted(vss, key=lambda vs: (_PROTO_NUM[vs.protocol.lower()], ring(vs.ip), vs.port))


def render_ipvsadm(services: Iterable[VirtualService]) -> str:
    """`ipvsadm -Ln` text (ipvsadm.c print_service_entry), in the order given."""
    out = [IPVS_HEADER]
    for vs in services:
        persist = f" persistent {vs.persistent}" if vs.persistent is not None else ""
        out.append(f"{vs.protocol}  {vs.ip}:{vs.port} {vs.scheduler}{persist}\n")
        out += [f"  -> {rs.address:<28} {rs.forward:<7} {rs.weight:<6} {rs.active:<10} {rs.inactive:<10}\n"
                for rs in vs.real_servers]
    return "".join(out)


# --------------------------------------------------------------------------
# ipset save: the kernel's hash tables
# --------------------------------------------------------------------------

def _rol32(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _U32


def jhash2(words: Sequence[int], initval: int) -> int:
    """Linux's jhash2() (include/linux/jhash.h) for keys of 1 to 3 words, the
    sizes of every ipset element kube-proxy stores."""
    if not 1 <= len(words) <= 3:
        raise ValueError("jhash2 here takes 1 to 3 words")
    a = b = c = (0xDEADBEEF + (len(words) << 2) + initval) & _U32
    if len(words) == 3:
        c = (c + words[2]) & _U32
    if len(words) >= 2:
        b = (b + words[1]) & _U32
    a = (a + words[0]) & _U32
    # __jhash_final
    c ^= b
    c = (c - _rol32(b, 14)) & _U32
    a ^= c
    a = (a - _rol32(c, 11)) & _U32
    b ^= a
    b = (b - _rol32(a, 25)) & _U32
    c ^= b
    c = (c - _rol32(b, 16)) & _U32
    a ^= c
    a = (a - _rol32(c, 4)) & _U32
    b ^= a
    b = (b - _rol32(a, 14)) & _U32
    c ^= b
    return (c - _rol32(b, 24)) & _U32


def _element_words(set_type: str, entry: str) -> tuple[int, ...]:
    """The element struct ip_set_hash_<type>.c hashes, as little-endian u32s
    (x86 and arm64): addresses and port in network order, then the protocol."""
    if set_type == "hash:ip":
        return struct.unpack("<I", socket.inet_aton(entry))
    parts = entry.split(",")
    proto, _, port = parts[1].partition(":")
    ip = socket.inet_aton(parts[0])
    port_proto = struct.pack(">H", int(port))
    if set_type == "hash:ip,port":
        raw = ip + port_proto + bytes((_PROTO_NUM[proto], 0))
    elif set_type == "hash:ip,port,ip":
        raw = ip + socket.inet_aton(parts[2]) + port_proto + bytes((_PROTO_NUM[proto], 0))
    elif set_type == "hash:ip,port,net":
        # The cidr is stored minus one in 7 bits, next to the nomatch bit (0 when adding).
        net = ipaddress.IPv4Network(parts[2])
        raw = ip + net.network_address.packed + port_proto + bytes(((net.prefixlen - 1) & 0x7F, _PROTO_NUM[proto]))
    else:
        raise ValueError(f"no kernel layout for {set_type}")
    return struct.unpack(f"<{len(raw) // 4}I", raw)


_Buckets = dict[int, list[str]]


def _place(buckets: _Buckets, key: int, entry: str, bucketsize: int) -> bool:
    bucket = buckets.setdefault(key, [])
    if len(bucket) >= bucketsize:
        return False
    bucket.append(entry)
    return True


def _resize(buckets: _Buckets, hashes: dict[str, int], bits: int, bucketsize: int) -> tuple[_Buckets, int]:
    """mtype_resize: double the table and re-add every element in bucket
    order; if a new bucket overflows, try again one size larger."""
    old = [e for key in sorted(buckets) for e in buckets[key]]
    while True:
        bits += 1
        new: _Buckets = {}
        mask = (1 << bits) - 1
        if all(_place(new, hashes[e] & mask, e, bucketsize) for e in old):
            return new, bits


def ipset_hash_order(entries: Iterable[str], set_type: str, initval: int, hashsize: int = IPSET_HASHSIZE,
                     bucketsize: int = IPSET_BUCKETSIZE) -> tuple[int, list[str]]:
    """Add ``entries`` in the order given, one `ipset add` each; return the
    hashsize `ipset save` then shows and its member order (bucket by bucket,
    each bucket in insertion order)."""
    bits = (max(hashsize, 64) - 1).bit_length()  # fls(hashsize - 1), at least IPSET_MIMINAL_HASHSIZE
    buckets: _Buckets = {}
    hashes: dict[str, int] = {}
    for entry in entries:
        hashes[entry] = jhash2(_element_words(set_type, entry), initval)
        while not _place(buckets, hashes[entry] & ((1 << bits) - 1), entry, bucketsize):
            buckets, bits = _resize(buckets, hashes, bits, bucketsize)
    return 1 << bits, [e for key in sorted(buckets) for e in buckets[key]]


@dataclass
class _IpsetState:
    """Each set's members as kube-proxy's activeEntries (string form)."""

    members: dict[str, set[str]]
    no_node_access: list[tuple[str, str, int]]  # LB (ip, proto, port) hidden from the node itself


def _ip_in(ip: str, cidr: str) -> bool:
    return ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(cidr)


def _net_text(cidr: str) -> str:
    # ipset prints a /32 "net" without its prefix length.
    return cidr[:-3] if cidr.endswith("/32") else cidr


def _is_local(svc: ServicePort, ep: Endpoint) -> bool:
    # The apiserver's EndpointSlice has no nodeName: kube-proxy never sees it as local.
    return ep.local and svc.key != "default/kubernetes:https"


def _lb_members(st: _IpsetState, svc: ServicePort, node_ip: str | None) -> None:
    assert svc.lb_ip is not None
    entry = f"{svc.lb_ip},{svc.proto}:{svc.port}"
    st.members["KUBE-LOAD-BALANCER"].add(entry)
    if svc.policy == "Local":
        st.members["KUBE-LOAD-BALANCER-LOCAL"].add(entry)
    if not svc.lb_source_ranges:
        return
    st.members["KUBE-LOAD-BALANCER-FW"].add(entry)
    for cidr in svc.lb_source_ranges:
        st.members["KUBE-LOAD-BALANCER-SOURCE-CIDR"].add(f"{entry},{_net_text(cidr)}")
    # kube-proxy compares the ranges with its one (primary) node IP.
    if node_ip and any(_ip_in(node_ip, cidr) for cidr in svc.lb_source_ranges):
        st.members["KUBE-LOAD-BALANCER-SOURCE-IP"].add(f"{entry},{svc.lb_ip}")
    else:
        st.no_node_access.append((svc.lb_ip, svc.proto, svc.port))


def _node_port_members(st: _IpsetState, svc: ServicePort) -> None:
    assert svc.node_port is not None
    suffix = svc.protocol if svc.protocol in ("TCP", "UDP") else "SCTP-HASH"
    st.members[f"KUBE-NODE-PORT-{suffix}"].add(str(svc.node_port))
    if svc.policy == "Local":
        st.members[f"KUBE-NODE-PORT-LOCAL-{suffix}"].add(str(svc.node_port))


def _ipset_members(order: Sequence[ServicePort], node_ips: Sequence[str], bound: Sequence[str]) -> _IpsetState:
    """syncProxyRules' ipset bookkeeping, service by service."""
    st = _IpsetState({name: set() for name, _, _ in _IPSETS}, [])
    node_ip = node_ips[0] if node_ips else None
    for svc in order:
        st.members["KUBE-LOOP-BACK"].update(f"{ep.ip},{svc.proto}:{ep.port},{ep.ip}"
                                            for ep in svc.endpoints if _is_local(svc, ep))
        st.members["KUBE-CLUSTER-IP"].add(f"{svc.cluster_ip},{svc.proto}:{svc.port}")
        if svc.lb_ip:
            _lb_members(st, svc, node_ip)
        # Without node IPs kube-proxy skips the rest of the service, health check included.
        if svc.node_port and not node_ips:
            continue
        if svc.node_port:
            _node_port_members(st, svc)
        if svc.health_check_node_port:
            st.members["KUBE-HEALTH-CHECK-NODE-PORT"].add(str(svc.health_check_node_port))
    st.members["KUBE-IPVS-IPS"].update(bound)
    return st


def _render_set(name: str, set_type: str, members: set[str], initval: int) -> list[str]:
    if set_type == "bitmap:port":
        head = f"create {name} bitmap:port range {IPSET_PORT_RANGE}"
        return [head, *(f"add {name} {p}" for p in sorted(members, key=int))]
    # syncIPSetEntries adds activeEntries.Difference(current).List(): sorted strings.
    hashsize, ordered = ipset_hash_order(sorted(members), set_type, initval)
    head = (f"create {name} {set_type} family inet hashsize {hashsize} maxelem {IPSET_MAXELEM} "
            f"bucketsize {IPSET_BUCKETSIZE} initval 0x{initval:08x}")
    return [head, *(f"add {name} {e}" for e in ordered)]


def _render_ipset(st: _IpsetState, rng: random.Random) -> str:
    # kube-proxy creates the sets while ranging over a Go map: the kernel's set
    # index (the order of `ipset save`) is that random order.
    sets = list(_IPSETS)
    rng.shuffle(sets)
    lines: list[str] = []
    for name, set_type, _ in sets:
        initval = rng.getrandbits(32)  # get_random_bytes() at create time
        lines += _render_set(name, set_type, st.members[name], initval)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# iptables-save
# --------------------------------------------------------------------------

def _comment(set_name: str) -> str:
    return f'-m comment --comment "{_COMMENT[set_name]}"'


def _base_rules(mangle: _Table, filt: _Table, nat: _Table, invalid_drop: bool) -> None:
    """Chains and jumps that do not depend on the services (createAndLinkKubeChain,
    kubelet's KUBE-FIREWALL and canaries)."""
    for table in (mangle, filt, nat):
        table.declare("KUBE-PROXY-CANARY")
        table.declare("KUBE-KUBELET-CANARY")
    mangle.declare("KUBE-IPTABLES-HINT")
    for chain in ("KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL",
                  "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER", "KUBE-FIREWALL"):
        filt.declare(chain)
    for chain in ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ"):
        nat.declare(chain)
    # iptablesJumpChain entries are *prepended* one by one, so each built-in
    # chain lists them in reverse; kubelet's KUBE-FIREWALL jump came first and ends last.
    filt.add("INPUT", '-m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER')
    filt.add("INPUT", '-m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL')
    filt.add("INPUT", '-m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT')
    filt.add("INPUT", "-j KUBE-FIREWALL")
    filt.add("FORWARD", '-m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL')
    filt.add("FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD')
    filt.add("OUTPUT", '-m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER')
    filt.add("OUTPUT", "-j KUBE-FIREWALL")
    filt.add("KUBE-FIREWALL", '! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment '
             '"block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP')
    if invalid_drop:
        filt.add("KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP")
    filt.add("KUBE-FORWARD", f'-m comment --comment "kubernetes forwarding rules" '
             f"-m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT")
    filt.add("KUBE-FORWARD", '-m comment --comment "kubernetes forwarding conntrack rule" '
             "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    nat.add("PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
    nat.add("OUTPUT", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
    nat.add("POSTROUTING", '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING')


def _set_rules(filt: _Table, nat: _Table, members: dict[str, set[str]]) -> None:
    """ipsetWithIptablesChain: one rule per non-empty set."""
    for name, table, chain, flags, proto, target in _SET_RULES:
        if not members[name]:
            continue
        p = f"-p {proto} " if proto else ""
        rule = f"{p}{_comment(name)} -m set --match-set {name} {flags} -j {target}"
        (filt if table == "filter" else nat).add(chain, rule)


def _service_rules(filt: _Table, nat: _Table, st: _IpsetState, cluster_cidr: str) -> None:
    """writeIptablesRules after the ipset loop, in its order."""
    if st.members["KUBE-CLUSTER-IP"]:
        # The local-traffic detector's `! -s CIDR` comes last in kube-proxy's
        # arguments; iptables-save prints it first.
        nat.add("KUBE-SERVICES", f"! -s {cluster_cidr} {_comment('KUBE-CLUSTER-IP')} "
                "-m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ")
    nat.add("KUBE-SERVICES", "-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT")
    nat.add("KUBE-LOAD-BALANCER", "-j KUBE-MARK-MASQ")
    filt.add("KUBE-SOURCE-RANGES-FIREWALL", "-j DROP")
    for ip, proto, port in st.no_node_access:
        # libxt_ipvs saves --vproto as a number, before --vaddr.
        filt.add("KUBE-IPVS-OUT-FILTER", f"-s {ip}/32 -m ipvs --vproto {_PROTO_NUM[proto]} "
                 f"--vaddr {ip}/32 --vport {port} -j DROP")
    # acceptIPVSTraffic: must stay the last rules of KUBE-SERVICES.
    for name in ("KUBE-CLUSTER-IP", "KUBE-LOAD-BALANCER"):
        if st.members[name]:
            nat.add("KUBE-SERVICES", f"-m set --match-set {name} dst,dst -j ACCEPT")


def _filter_tail(filt: _Table, nat: _Table) -> None:
    filt.add("KUBE-NODE-PORT", f"{_comment('KUBE-HEALTH-CHECK-NODE-PORT')} "
             "-m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT")
    for name in ("KUBE-LOAD-BALANCER", "KUBE-CLUSTER-IP", "KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL"):
        filt.add("KUBE-IPVS-FILTER", f"-m set --match-set {name} dst,dst -j RETURN")
    filt.add("KUBE-IPVS-FILTER", "-m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN")
    filt.add("KUBE-IPVS-FILTER", "-m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst "
             "-j REJECT --reject-with icmp-port-unreachable")
    nat.add("KUBE-POSTROUTING", f"-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN")
    nat.add("KUBE-POSTROUTING", f"-j MARK --set-xmark {MASQ_MARK}/0x0")  # --xor-mark as saved
    nat.add("KUBE-POSTROUTING", '-m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully")
    nat.add("KUBE-MARK-MASQ", f"-j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}")  # --or-mark as saved


def _render_iptables(st: _IpsetState, cluster_cidr: str, invalid_drop: bool, backend: str, timestamp: int) -> str:
    mangle, filt, nat = _Table("mangle"), _Table("filter"), _Table("nat")
    _base_rules(mangle, filt, nat, invalid_drop)
    nat.add("KUBE-SERVICES", "-s 127.0.0.0/8 -j RETURN")
    _set_rules(filt, nat, st.members)
    _service_rules(filt, nat, st, cluster_cidr)
    _filter_tail(filt, nat)
    header = "iptables-save v1.8.9" + (" (nf_tables)" if backend == "nft" else "")
    stamp = time.asctime(time.gmtime(timestamp))
    tables = {"mangle": mangle, "filter": filt, "nat": nat}
    lines: list[str] = []
    for name in _TABLE_ORDER:
        lines += tables[name].render(header, stamp)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# ip addr, node.yaml
# --------------------------------------------------------------------------

def _bound_addresses(order: Sequence[ServicePort]) -> list[str]:
    """kube-ipvs0's addresses in the order syncService bound them: each
    cluster IP, then LB IP, the first time the service walk meets it."""
    seen: dict[str, None] = {}
    for svc in order:
        seen.setdefault(svc.cluster_ip)
        if svc.lb_ip:
            seen.setdefault(svc.lb_ip)
    return list(seen)


def _mac(octets: bytes) -> str:
    return ":".join(f"{b:02x}" for b in octets)


def _eth0_lines(node_ips: Sequence[str]) -> list[str]:
    first = ipaddress.IPv4Address(node_ips[0]) if node_ips else ipaddress.IPv4Address("192.168.0.2")
    mac = b"\x52\x54\x00" + first.packed[1:]
    out = ["2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP group default qlen 1000",
           f"    link/ether {_mac(mac)} brd ff:ff:ff:ff:ff:ff"]
    nets: list[ipaddress.IPv4Network] = []
    for ip in node_ips:
        iface = ipaddress.IPv4Interface(f"{ip}/{NODE_PREFIXLEN}")
        # A second address in an already configured subnet is a secondary.
        secondary = "secondary " if iface.network in nets else ""
        nets.append(iface.network)
        out += [f"    inet {iface} brd {iface.network.broadcast_address} scope global {secondary}eth0",
                "       valid_lft forever preferred_lft forever"]
    # EUI-64 link-local address from the MAC.
    eui = bytes((mac[0] ^ 0x02, mac[1], mac[2], 0xFF, 0xFE, mac[3], mac[4], mac[5]))
    ll = ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + eui)
    out += [f"    inet6 {ll}/64 scope link ", "       valid_lft forever preferred_lft forever"]
    return out


def _render_ip_addr(node_ips: Sequence[str], bound: Sequence[str], rng: random.Random) -> str:
    lines = ["1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default qlen 1000",
             "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
             "    inet 127.0.0.1/8 scope host lo",
             "       valid_lft forever preferred_lft forever",
             "    inet6 ::1/128 scope host ",
             "       valid_lft forever preferred_lft forever"]
    lines += _eth0_lines(node_ips)
    # The dummy device kube-proxy creates and never sets up: random MAC, no IPv6 link-local.
    mac = bytes(((rng.getrandbits(8) & 0xFE) | 0x02, *(rng.getrandbits(8) for _ in range(5))))
    lines += ["3: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default ",
              f"    link/ether {_mac(mac)} brd ff:ff:ff:ff:ff:ff"]
    for ip in bound:
        lines += [f"    inet {ip}/32 scope global kube-ipvs0", "       valid_lft forever preferred_lft forever"]
    return "\n".join(lines) + "\n"


def _render_node_yaml(node_ips: Sequence[str], local_prefix: str, pod_cidr: str, seed: int) -> str:
    ips = "".join(f"\n  - {ip}" for ip in node_ips) or " []"
    return ("# kptrace bundle metadata, written by kptrace.testing.generator_ipvs "
            f"(seed {seed}).\n"
            "name: gen-ipvs-node\n"
            "hostname: gen-ipvs-node\n"
            f"node_ips:{ips}\n"
            f"pod_cidr: {local_prefix}0/24\n"
            f"cluster_cidr: {pod_cidr}\n"
            f"service_cidr: {SERVICE_CIDR}\n"
            "proxy_mode: ipvs\n"
            f"kubernetes_version: {KUBERNETES_VERSION}\n")


# --------------------------------------------------------------------------
# The bundle
# --------------------------------------------------------------------------

@dataclass
class GeneratedBundle:
    files: dict[str, str]  # bundle file name -> text
    services: list[ServicePort]
    virtual_services: list[VirtualService]  # in ipvsadm's order
    node_ips: tuple[str, ...]
    pod_cidr: str
    params: dict[str, Any]

    @property
    def lines(self) -> int:
        return sum(text.count("\n") for text in self.files.values())

    @property
    def nbytes(self) -> int:
        return sum(len(text.encode()) for text in self.files.values())

    def write(self, dirpath: str | Path) -> Path:
        """Create the bundle directory (and parents) and write every file."""
        out = Path(dirpath)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            (out / name).write_text(text, encoding="utf-8")
        return out

    def ipsets(self) -> dict[str, list[str]]:
        """Each set's members in `ipset save` order, read back from ipset-save.txt."""
        out: dict[str, list[str]] = {}
        for line in self.files["ipset-save.txt"].splitlines():
            words = line.split(" ", 2)
            if words[0] == "create":
                out[words[1]] = []
            else:
                out[words[1]].append(words[2])
        return out

    def to_meta(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "node_ips": list(self.node_ips),
            "pod_cidr": self.pod_cidr,
            "files": {name: {"lines": text.count("\n"), "bytes": len(text.encode())}
                      for name, text in self.files.items()},
            "lines": self.lines,
            "bytes": self.nbytes,
            "services": [_service_meta(svc, self.node_ips) for svc in self.services],
        }

    def pick(self, *, verdict: str = "DNAT", external: bool = False,
             policy: str | None = None, index: float = 0.5) -> ServicePort:
        """A deterministic probe, as GeneratedRuleset.pick, with IPVS verdicts:
        "DNAT" (scheduled to a real server) or "REJECT" (no real server)."""
        def ok(svc: ServicePort) -> bool:
            got = ipvs_external_verdict(svc) if external else ipvs_cluster_verdict(svc)
            return got == verdict and (policy is None or svc.policy == policy)

        matches = [svc for svc in self.services if ok(svc)]
        if not matches:
            raise LookupError(f"no service with verdict={verdict} external={external} policy={policy}")
        return matches[min(len(matches) - 1, int(index * len(matches)))]


def _virtual_service_names(svc: ServicePort, node_ips: Sequence[str]) -> list[str]:
    """`str()` of the service port's virtual services, without building them."""
    ips = [(svc.cluster_ip, svc.port)] + ([(svc.lb_ip, svc.port)] if svc.lb_ip else [])
    ips += [(ip, svc.node_port) for ip in node_ips] if svc.node_port else []
    return [f"{svc.protocol} {ip}:{port}" for ip, port in ips]


def _service_meta(svc: ServicePort, node_ips: Sequence[str]) -> dict[str, Any]:
    data = svc.to_dict()
    # iptables-mode chain names mean nothing on an IPVS node.
    for key in ("svc_chain", "ext_chain", "fw_chain", "svl_chain"):
        data.pop(key, None)
    for ep in data["endpoints"]:
        ep.pop("chain", None)
    data["cluster_ip_verdict"] = ipvs_cluster_verdict(svc)
    data["external_verdict"] = ipvs_external_verdict(svc)
    data["virtual_services"] = _virtual_service_names(svc, node_ips)
    data["external_real_servers"] = [ep.address for ep in external_real_servers(svc)] \
        if svc.externally_accessible else []
    return data


def generate_ipvs(
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
    invalid_drop: bool = True,
    backend: str = "nft",
    timestamp: int = DEFAULT_TIMESTAMP,
) -> GeneratedBundle:
    """Build the bundle of a kube-proxy IPVS-mode node.

    ``services``, ``endpoints`` and every knob shared with ``generate_iptables``
    mean the same there, and the same seed gives the same services.
    ``pod_cidr`` is kube-proxy's ``--cluster-cidr``; ``invalid_drop=False``
    leaves out KUBE-FORWARD's ``--ctstate INVALID -j DROP`` (newer kube-proxy,
    or nf_conntrack_tcp_be_liberal set).  Deterministic for a given seed.
    """
    if services < 0 or endpoints < 0:
        raise ValueError("services and endpoints must be >= 0")
    if backend not in ("nft", "legacy"):
        raise ValueError("backend must be 'nft' or 'legacy'")
    params = {k: v for k, v in locals().items() if k != "params"}
    params["node_ips"] = list(node_ips)
    # The same calls, in the same order, as generate_iptables: same rng stream, same services.
    rng = random.Random(seed)
    pools = _Pools(rng, services, pod_cidr, local_node_pod_prefix, num_nodes)
    fractions = _Fractions(no_endpoint_fraction, nodeport_fraction, local_policy_fraction, lb_fraction,
                           affinity_fraction, udp_fraction, multi_port_fraction, unnamed_port_fraction)
    svcs = _build_services(services, endpoints, rng, pools, fractions, node_ips)

    # syncProxyRules ranges over a Go map of service ports: a random order.
    order = list(svcs)
    rng.shuffle(order)
    bound = _bound_addresses(order)
    state = _ipset_members(order, node_ips, bound)
    vss = sort_virtual_services(vs for svc in svcs for vs in _virtual_services(svc, node_ips))
    files = {
        "ipvsadm.txt": render_ipvsadm(vss),
        "ipset-save.txt": _render_ipset(state, rng),
        "iptables-save.txt": _render_iptables(state, pod_cidr, invalid_drop, backend, timestamp),
        "ip-addr.txt": _render_ip_addr(node_ips, bound, rng),
        "node.yaml": _render_node_yaml(node_ips, local_node_pod_prefix, pod_cidr, seed),
    }
    return GeneratedBundle(files=files, services=svcs, virtual_services=vss, node_ips=tuple(node_ips),
                           pod_cidr=pod_cidr, params=params)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m kptrace.testing.generator_ipvs",
        description="Generate a synthetic kube-proxy IPVS-mode node bundle (and metadata).")
    ap.add_argument("--services", type=int, default=1000, help="number of service ports")
    ap.add_argument("--endpoints", type=int, default=10, help="endpoints per service port")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True, help="bundle directory (created)")
    ap.add_argument("--meta", help="write service metadata JSON here")
    ap.add_argument("--node-ip", action="append", dest="node_ips", help="this node's IP (repeatable)")
    ap.add_argument("--pod-cidr", default="10.244.0.0/16")
    ap.add_argument("--local-node-pod-prefix", default="10.244.1.")
    ap.add_argument("--no-endpoint-fraction", type=float, default=0.02)
    ap.add_argument("--nodeport-fraction", type=float, default=0.2)
    ap.add_argument("--local-policy-fraction", type=float, default=0.05)
    ap.add_argument("--lb-fraction", type=float, default=0.02)
    ap.add_argument("--no-invalid-drop", action="store_true",
                    help="leave out KUBE-FORWARD's INVALID drop (newer kube-proxy)")
    ap.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    start = time.perf_counter()
    bundle = generate_ipvs(
        args.services, args.endpoints, seed=args.seed,
        node_ips=tuple(args.node_ips or ("192.168.0.2",)), pod_cidr=args.pod_cidr,
        local_node_pod_prefix=args.local_node_pod_prefix,
        no_endpoint_fraction=args.no_endpoint_fraction, nodeport_fraction=args.nodeport_fraction,
        local_policy_fraction=args.local_policy_fraction, lb_fraction=args.lb_fraction,
        invalid_drop=not args.no_invalid_drop, backend=args.backend,
    )
    out = bundle.write(args.output)
    if args.meta:
        with open(args.meta, "w", encoding="utf-8") as fh:
            json.dump(bundle.to_meta(), fh, indent=1)
    elapsed = time.perf_counter() - start
    print(f"wrote {out}: {len(bundle.files)} files, {len(bundle.services)} service ports, "
          f"{len(bundle.virtual_services)} virtual services, {bundle.lines} lines, "
          f"{bundle.nbytes / 1e6:.1f} MB in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
