"""Synthetic kube-proxy (nftables mode) node rulesets at cluster scale.

``generate_nftables(services, endpoints)`` returns the text that ``nft list
ruleset`` prints on a node whose kube-proxy (>= 1.31, ``--proxy-mode
nftables``, default flags) programs the same service ports that
``generate_iptables`` builds for the same seed, plus metadata about every
service port so tests and benchmarks can pick probes and know the expected
answer without parsing the dump.  ``write_bundle(dir)`` makes a kptrace bundle
(``nft-ruleset.txt`` + ``ip-addr.txt``).

What kube-proxy writes follows pkg/proxy/nftables/proxier.go (setupNFTables,
syncProxyRules, writeServiceToEndpointRules) of kubernetes/kubernetes at the
version with ``filter-output-post-dnat`` and ``cluster-ips-check``; what nft
prints back was checked by loading into a throwaway network namespace with
nft v1.0.6 (tests/testing/test_generator_nft.py):

* Names: ``service-``/``local-``/``external-``/``firewall-`` + base32(sha256(
  "ns/name/proto/port"))[:8] + "-ns/name/proto/port"; ``endpoint-`` and
  ``affinity-`` hash "ns/name/proto/port__ip/port" the same way.  An unnamed
  port gives a trailing slash (``.../tcp/``); element comments use
  ServicePortName.String() ("ns/name:port", or "ns/name").
* nft lists a table's comment, then every named set and map in creation
  order, then every chain in creation order, one blank line between objects.
  Creation order is kube-proxy's transaction order on its first full sync:
  base chains, the helper chains, the sets/maps, then per service (a Go map
  walk, so shuffled) its endpoint chains, ``service-``, ``local-``,
  ``external-``, ``firewall-`` chains, and affinity sets after the maps.
* nft sorts set elements when it lists them (mergesort.c): a plain
  ``ipv4_addr`` set numerically, printed two per line; a concatenation key
  (``ipv4_addr . inet_proto . inet_service``) by the key's bytes read as one
  *host-endian* (little-endian on x86) integer, so the last byte (the low byte
  of the port) weighs most, printed one per line.  nft with the October 2025
  mergesort.c change reads those bytes big-endian: ``element_order="network"``
  (not checked against a kernel here; the local nft is 1.0.6).
* Rules print in nft's canonical form, not as kube-proxy writes them:
  ``mark set mark or 0x004000`` -> ``meta mark set meta mark | 0x00004000``,
  ``mark and 0x004000 == 0 return`` -> ``meta mark & 0x00004000 ==
  0x00000000 return``, a one-element anonymous set ``{ 10.96.0.0/12 }`` loses
  its braces, an interval set is sorted, ``timeout 10800s`` -> ``3h``, a
  dynamic set gains ``size 65535``, priorities print as ``dstnat - 10``
  (prerouting), ``-110`` (input/forward/output), ``-90``, ``dstnat``/``srcnat``.
  ``transaction()`` gives kube-proxy's own ``nft -f`` input for the same
  ruleset; loading it lists exactly ``text``.
* NodePorts answer on the first node IP only (``@nodeport-ips``): nftables
  mode defaults ``--nodeport-addresses`` to the node's primary IPs.
* A ServicePortName that generate_iptables repeats (one Service with two ports
  named "http") is kept once: the API server rejects such a Service, and
  kube-proxy keys its service map by that name.
* Only ``table ip kube-proxy`` is written: an IPv4-only node's ``table ip6
  kube-proxy`` holds no services and does not change an IPv4 trace.
* Services without endpoints get no chains, only ``no-endpoint-*`` elements
  (``goto reject-chain``); ``externalTrafficPolicy: Local`` without local
  endpoints keeps its ``external-`` chain (short-circuit rules) and gets
  ``drop`` elements.  loadBalancerSourceRanges give a ``firewall-`` chain even
  without endpoints.  Health-check NodePorts need no rule in this mode.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kptrace.testing.generator import Endpoint, ServicePort, generate_iptables

__all__ = [
    "GeneratedNft",
    "endpoint_chain",
    "generate_nftables",
    "hash_and_truncate",
    "main",
    "nft_time",
    "service_chains",
]

TABLE = "ip kube-proxy"
# Default --masquerade-bit 14: kube-proxy writes "%#08x", nft prints 8 hex digits.
MASQ_MARK_WRITTEN = "0x004000"
MASQ_MARK_PRINTED = "0x00004000"
# What nft gives a `flags dynamic` set created without a size (kube-proxy's affinity sets).
DYNAMIC_SET_SIZE = 65535
AFFINITY_TIMEOUT = 10800  # service.spec.sessionAffinityConfig default, seconds
# knftables.NameLengthMax (256) minus the longest chain prefix kube-proxy uses (16).
CHAIN_NAME_BASE_MAX = 240
_PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}
# nft's continuation indent for elements printed on several lines (set_expr_print).
_ELEM_NEWLINE = ",\n\t\t\t     "

# (name, type, hook, priority as kube-proxy writes it, as nft prints it).  nft
# only has the symbolic names dstnat/srcnat for the hooks where they are defined.
_BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", "-110", "dstnat - 10"),
    ("filter-input", "filter", "input", "-110", "-110"),
    ("filter-forward", "filter", "forward", "-110", "-110"),
    ("filter-output", "filter", "output", "-110", "-110"),
    ("filter-output-post-dnat", "filter", "output", "-90", "-90"),
    ("nat-prerouting", "nat", "prerouting", "-100", "dstnat"),
    ("nat-output", "nat", "output", "-100", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100", "srcnat"),
)
# nftablesJumpChains: (destination, source base chain, extra match).
_JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-forward", "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting", "ct state new "),
    ("firewall-check", "filter-output", "ct state new "),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new "),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new "),
)
_VMAP_KEY = "ipv4_addr . inet_proto . inet_service : verdict"
_PORT_KEY = "inet_proto . inet_service : verdict"


# --------------------------------------------------------------------------
# kube-proxy naming
# --------------------------------------------------------------------------

def hash_and_truncate(name: str) -> str:
    """kube-proxy's hashAndTruncate: 8 chars of base32(sha256(name)) + "-" + name."""
    # The first 5 bytes are exactly the first 8 base32 characters; encoding
    # only those is 3x faster at 100k endpoint chains.
    encoded = base64.b32encode(hashlib.sha256(name.encode()).digest()[:5]).decode()
    out = encoded + "-" + name
    return out if len(out) <= CHAIN_NAME_BASE_MAX else out[:CHAIN_NAME_BASE_MAX - 3] + "..."


def _service_base(svc: ServicePort) -> str:
    return hash_and_truncate(f"{svc.namespace}/{svc.name}/{svc.proto}/{svc.port_name}")


def service_chains(svc: ServicePort) -> dict[str, str]:
    """The per-service-port chain names (``service``, ``local``, ``external``, ``firewall``)."""
    base = _service_base(svc)
    return {kind: f"{kind}-{base}" for kind in ("service", "local", "external", "firewall")}


def endpoint_chain(svc: ServicePort, ep: Endpoint) -> str:
    """``endpoint-HASH-ns/name/proto/port__ip/port``; the affinity set swaps the prefix."""
    ip = ep.ip.replace(":", ".")  # IPv6 colons are not allowed in chain names
    return "endpoint-" + hash_and_truncate(f"{svc.namespace}/{svc.name}/{svc.proto}/{svc.port_name}__{ip}/{ep.port}")


def nft_time(seconds: int) -> str:
    """A duration as nft prints it: 10800 -> "3h", 90061 -> "1d1h1m1s"."""
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


# --------------------------------------------------------------------------
# nft's element order
# --------------------------------------------------------------------------

def _concat_sort_key(parts: bytes, order: str) -> int:
    # mergesort.c concat_expr_msort_value: the components' bytes in a row (no
    # padding), imported host-endian up to nft 1.1.x, big-endian afterwards.
    return int.from_bytes(parts, "little" if order == "nft-1.0" else "big")


def _service_key(ip: str, proto: str, port: int, order: str) -> int:
    raw = ipaddress.IPv4Address(ip).packed + bytes((_PROTO_NUMBERS[proto],)) + port.to_bytes(2, "big")
    return _concat_sort_key(raw, order)


def _port_key(proto: str, port: int, order: str) -> int:
    return _concat_sort_key(bytes((_PROTO_NUMBERS[proto],)) + port.to_bytes(2, "big"), order)


def _anon_interval_set(members: Sequence[str]) -> str:
    """``{ a, b }`` as nft prints an anonymous interval set: sorted, /32 bare,
    and a single element without braces."""
    nets = sorted((ipaddress.IPv4Network(m, strict=False) for m in members),
                  key=lambda n: (int(n.network_address), n.prefixlen))
    shown = [str(n.network_address) if n.prefixlen == 32 else str(n) for n in nets]
    return shown[0] if len(shown) == 1 else "{ " + ", ".join(shown) + " }"


# --------------------------------------------------------------------------
# Two renderings of one transaction: what nft lists, and kube-proxy's input
# --------------------------------------------------------------------------

@dataclass
class _SetDecl:
    kind: str  # "set" or "map"
    header: list[str]  # printed lines after "set NAME {", before the elements
    per_line: int  # elements per printed line: 2 for ipv4_addr, 1 for concatenations
    elements: list[tuple[int, str]] = field(default_factory=list)  # (nft's sort key, text)


class _Listing:
    """Collects objects and prints them as ``nft list ruleset`` does."""

    def __init__(self) -> None:
        self.comment = ""
        self.sets: dict[str, _SetDecl] = {}
        self.chains: dict[str, list[str]] = {}

    def table(self, comment: str) -> None:
        self.comment = comment

    def chain(self, name: str, base: tuple[str, str, str, str] | None, comment: str | None) -> None:
        lines = [f"\tchain {name} {{"]
        if comment:
            lines.append(f'\t\tcomment "{comment}"')
        if base:
            ctype, hook, _written, printed = base
            lines.append(f"\t\ttype {ctype} hook {hook} priority {printed}; policy accept;")
        self.chains[name] = lines

    def rule(self, chain: str, printed: str, written: str | None, comment: str | None) -> None:
        self.chains[chain].append(f'\t\t{printed} comment "{comment}"' if comment else "\t\t" + printed)

    def set(self, name: str, kind: str, key_type: str, comment: str | None, timeout: int | None) -> None:
        header = [f"\t\ttype {key_type}"]
        if timeout is not None:
            header += [f"\t\tsize {DYNAMIC_SET_SIZE}", "\t\tflags dynamic,timeout", f"\t\ttimeout {nft_time(timeout)}"]
        if comment:
            header.append(f'\t\tcomment "{comment}"')
        self.sets[name] = _SetDecl(kind, header, 2 if key_type == "ipv4_addr" else 1)

    def element(self, name: str, text: str, key: int) -> None:
        self.sets[name].elements.append((key, text))

    def render(self) -> str:
        objects = [self._render_set(name, decl) for name, decl in self.sets.items()]
        objects += ["\n".join(lines) + "\n\t}" for lines in self.chains.values()]
        head = f"table {TABLE} {{\n" + (f'\tcomment "{self.comment}"\n' if self.comment else "")
        return head + "\n\n".join(objects) + "\n}\n"

    @staticmethod
    def _render_set(name: str, decl: _SetDecl) -> str:
        lines = [f"\t{decl.kind} {name} {{", *decl.header]
        if decl.elements:
            texts = [text for _key, text in sorted(decl.elements, key=lambda e: e[0])]
            if decl.per_line == 1:
                body = _ELEM_NEWLINE.join(texts)
            else:
                rows = [", ".join(texts[i:i + decl.per_line]) for i in range(0, len(texts), decl.per_line)]
                body = _ELEM_NEWLINE.join(rows)
            lines.append(f"\t\telements = {{ {body} }}")
        return "\n".join(lines) + "\n\t}"


class _Transaction:
    """Collects the same calls as kube-proxy's ``nft -f`` input (knftables' text)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def table(self, comment: str) -> None:
        self.lines.append(f'add table {TABLE} {{ comment "{comment}" ; }}')

    def chain(self, name: str, base: tuple[str, str, str, str] | None, comment: str | None) -> None:
        props = ""
        if base:
            ctype, hook, written, _printed = base
            props = f" {{ type {ctype} hook {hook} priority {written} ; }}"
        elif comment:
            props = f' {{ comment "{comment}" ; }}'
        self.lines.append(f"add chain {TABLE} {name}{props}")

    def rule(self, chain: str, printed: str, written: str | None, comment: str | None) -> None:
        suffix = f' comment "{comment}"' if comment else ""
        self.lines.append(f"add rule {TABLE} {chain} {written or printed}{suffix}")

    def set(self, name: str, kind: str, key_type: str, comment: str | None, timeout: int | None) -> None:
        props = f"type {key_type} ;"
        if timeout is not None:
            props += f" flags dynamic,timeout ; timeout {timeout}s ;"
        if comment:
            props += f' comment "{comment}" ;'
        self.lines.append(f"add {kind} {TABLE} {name} {{ {props} }}")

    def element(self, name: str, text: str, key: int) -> None:
        self.lines.append(f"add element {TABLE} {name} {{ {text} }}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


_Sink = _Listing | _Transaction


# --------------------------------------------------------------------------
# kube-proxy's sync, one call per object it adds
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Config:
    pod_cidr: str
    service_cidr: str | None
    nodeport_ips: tuple[str, ...] | None  # None: --nodeport-addresses matches all
    element_order: str


def _setup(out: _Sink, cfg: _Config) -> None:
    """setupNFTables on the first full sync of a fresh node."""
    out.table("rules for kube-proxy")
    for name, ctype, hook, written, printed in _BASE_CHAINS:
        out.chain(name, (ctype, hook, written, printed), None)
    created: set[str] = set()

    def ensure(chain: str) -> None:
        if chain not in created:
            created.add(chain)
            out.chain(chain, None, None)

    for dst, src, extra in _JUMP_CHAINS:
        ensure(dst)
        out.rule(src, f"{extra}jump {dst}", None, None)
    for chain in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
        ensure(chain)
    out.rule("mark-for-masquerade", f"meta mark set meta mark | {MASQ_MARK_PRINTED}",
             f"mark set mark or {MASQ_MARK_WRITTEN}", None)
    out.rule("masquerading", f"meta mark & {MASQ_MARK_PRINTED} == 0x00000000 return",
             f"mark and {MASQ_MARK_WRITTEN} == 0 return", None)
    out.rule("masquerading", f"meta mark set meta mark ^ {MASQ_MARK_PRINTED}",
             f"mark set mark xor {MASQ_MARK_WRITTEN}", None)
    out.rule("masquerading", "masquerade fully-random", None, None)

    out.set("cluster-ips", "set", "ipv4_addr", "Active ClusterIPs", None)
    out.rule("cluster-ips-check", "ip daddr @cluster-ips reject", None, "Reject traffic to invalid ports of ClusterIPs")
    if cfg.service_cidr:
        # Only with ServiceCIDR objects (MultiCIDRServiceAllocator) does kube-proxy know the range.
        out.rule("cluster-ips-check", f"ip daddr {_anon_interval_set([cfg.service_cidr])} drop",
                 f"ip daddr {{ {cfg.service_cidr} }} drop", "Drop traffic to unallocated ClusterIPs")

    # nftables mode defaults --nodeport-addresses to the node's primary IP; with
    # "match all" the set is added and deleted in the same transaction (never exists).
    if cfg.nodeport_ips is not None:
        out.set("nodeport-ips", "set", "ipv4_addr", "IPs that accept NodePort traffic", None)
        for ip in cfg.nodeport_ips:
            out.element("nodeport-ips", ip, int(ipaddress.IPv4Address(ip)))
        nodeport_match = "ip daddr @nodeport-ips "
    else:
        nodeport_match = "fib daddr type local ip daddr != 127.0.0.0/8 "

    out.set("no-endpoint-services", "map", _VMAP_KEY,
            "vmap to drop or reject packets to services with no endpoints", None)
    out.set("no-endpoint-nodeports", "map", _PORT_KEY,
            "vmap to drop or reject packets to service nodeports with no endpoints", None)
    out.chain("reject-chain", None, "helper for @no-endpoint-services / @no-endpoint-nodeports")
    out.rule("reject-chain", "reject", None, None)
    out.rule("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services", None, None)
    # The input hook only sees local destinations, so "match all" needs no fib here.
    check_match = nodeport_match if cfg.nodeport_ips is not None else "ip daddr != 127.0.0.0/8 "
    out.rule("nodeport-endpoints-check", f"{check_match}meta l4proto . th dport vmap @no-endpoint-nodeports",
             None, None)
    out.set("firewall-ips", "map", _VMAP_KEY, "destinations that are subject to LoadBalancerSourceRanges", None)
    out.rule("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips", None, None)
    out.set("service-ips", "map", _VMAP_KEY, "ClusterIP, ExternalIP and LoadBalancer IP traffic", None)
    out.set("service-nodeports", "map", _PORT_KEY, "NodePort traffic", None)
    out.rule("services", "ip daddr . meta l4proto . th dport vmap @service-ips", None, None)
    out.rule("services", f"{nodeport_match}meta l4proto . th dport vmap @service-nodeports", None, None)


@dataclass
class _Plan:
    """What syncProxyRules decides for one service port (CategorizeEndpoints & co)."""

    svc: ServicePort
    chains: dict[str, str]
    ep_chains: dict[Endpoint, str]
    reachable: list[Endpoint]  # allLocallyReachableEndpoints, in kube-proxy's order
    local_eps: list[Endpoint]
    uses_local: bool
    uses_external: bool
    uses_firewall: bool
    has_external: bool


def _plan(svc: ServicePort) -> _Plan:
    external = svc.externally_accessible
    local_policy = svc.policy == "Local" and external
    local_eps = svc.local_endpoints if local_policy else []
    return _Plan(
        svc=svc, chains=service_chains(svc), ep_chains={ep: endpoint_chain(svc, ep) for ep in svc.endpoints},
        # Every endpoint is ready and no topology hints are set, so
        # CategorizeEndpoints returns clusterEndpoints (a superset of the
        # local ones) as they are, without its Go-map merge.
        reachable=list(svc.endpoints), local_eps=local_eps,
        uses_local=bool(local_eps), uses_external=bool(svc.endpoints) and external,
        uses_firewall=bool(svc.lb_ip and svc.lb_source_ranges),
        has_external=bool(svc.endpoints) and (not local_policy or bool(local_eps)),
    )


def _sync_service(out: _Sink, plan: _Plan, cfg: _Config, node_ip: str | None, cluster_ips: set[str]) -> None:
    svc, names = plan.svc, plan.chains
    p, order = svc.proto, cfg.element_order
    ep_chains = [plan.ep_chains[ep] for ep in plan.reachable]
    for chain in ep_chains:
        out.chain(chain, None, None)
    if svc.endpoints:
        out.chain(names["service"], None, None)
    if plan.uses_local:
        out.chain(names["local"], None, None)
    if plan.uses_external:
        out.chain(names["external"], None, None)
    if plan.uses_firewall:
        out.chain(names["firewall"], None, None)
    _service_elements(out, plan, order, cluster_ips)

    if svc.endpoints:
        out.rule(names["service"], f"ip daddr {svc.cluster_ip} {p} dport {svc.port} ip saddr != {cfg.pod_cidr} "
                 "jump mark-for-masquerade", None, None)
    if plan.uses_external:
        _external_rules(out, plan, cfg.pod_cidr)
    if plan.uses_firewall:
        _firewall_rule(out, plan, node_ip)
    affinity = svc.session_affinity == "ClientIP"
    if affinity:
        for chain in ep_chains:
            out.set("affinity-" + chain[len("endpoint-"):], "set", "ipv4_addr", None, AFFINITY_TIMEOUT)
    if svc.endpoints:
        _endpoint_jumps(out, names["service"], [plan.ep_chains[ep] for ep in svc.endpoints], affinity)
    if plan.uses_local:
        _endpoint_jumps(out, names["local"], [plan.ep_chains[ep] for ep in plan.local_eps], affinity)
    for ep, chain in zip(plan.reachable, ep_chains):
        out.rule(chain, f"ip saddr {ep.ip} jump mark-for-masquerade", None, None)
        if affinity:
            out.rule(chain, f"update @affinity-{chain[len('endpoint-'):]} {{ ip saddr }}", None, None)
        out.rule(chain, f"meta l4proto {p} dnat to {ep.ip}:{ep.port}", None, None)


def _service_elements(out: _Sink, plan: _Plan, order: str, cluster_ips: set[str]) -> None:
    """The service's entries in the shared sets and verdict maps."""
    svc, names = plan.svc, plan.chains
    p, key = svc.proto, svc.key
    reject = "goto reject-chain"
    ext_verdict = reject if not svc.endpoints else "drop"
    if svc.cluster_ip not in cluster_ips:
        # The ports of one Service share its ClusterIP; ensureElem adds it once.
        cluster_ips.add(svc.cluster_ip)
        out.element("cluster-ips", svc.cluster_ip, int(ipaddress.IPv4Address(svc.cluster_ip)))
    vip = f"{svc.cluster_ip} . {p} . {svc.port}"
    vip_key = _service_key(svc.cluster_ip, p, svc.port, order)
    if svc.endpoints:
        out.element("service-ips", f"{vip} : goto {names['service']}", vip_key)
    else:
        out.element("no-endpoint-services", f'{vip} comment "{key}" : {reject}', vip_key)
    if svc.lb_ip:
        lb = f"{svc.lb_ip} . {p} . {svc.port}"
        lb_key = _service_key(svc.lb_ip, p, svc.port, order)
        if svc.endpoints:
            out.element("service-ips", f"{lb} : goto {names['external']}", lb_key)
        if plan.uses_firewall:
            out.element("firewall-ips", f"{lb} : goto {names['firewall']}", lb_key)
        if not plan.has_external:
            out.element("no-endpoint-services", f'{lb} comment "{key}" : {ext_verdict}', lb_key)
    if svc.node_port:
        np, np_key = f"{p} . {svc.node_port}", _port_key(p, svc.node_port, order)
        if svc.endpoints:
            out.element("service-nodeports", f"{np} : goto {names['external']}", np_key)
        if not plan.has_external:
            out.element("no-endpoint-nodeports", f'{np} comment "{key}" : {ext_verdict}', np_key)


def _external_rules(out: _Sink, plan: _Plan, pod_cidr: str) -> None:
    names = plan.chains
    ext, cluster = names["external"], names["service"]
    if plan.svc.policy != "Local":
        out.rule(ext, "jump mark-for-masquerade", None, None)
    else:
        # Pods and the node itself reach Local services through any endpoint,
        # as if they went out to the load balancer and came back.
        out.rule(ext, f"ip saddr {pod_cidr} goto {cluster}", None, "short-circuit pod traffic")
        out.rule(ext, "fib saddr type local jump mark-for-masquerade", None, "masquerade local traffic")
        out.rule(ext, f"fib saddr type local goto {cluster}", None, "short-circuit local traffic")
    if plan.has_external:
        out.rule(ext, f"goto {names['local'] if plan.svc.policy == 'Local' else cluster}", None, None)


def _firewall_rule(out: _Sink, plan: _Plan, node_ip: str | None) -> None:
    svc = plan.svc
    sources = list(svc.lb_source_ranges)
    # A VIP-like LB can loop a node's own request back with the VIP as source.
    if node_ip and any(ipaddress.IPv4Address(node_ip) in ipaddress.IPv4Network(c) for c in sources):
        sources.append(str(svc.lb_ip))
    out.rule(plan.chains["firewall"], f"ip saddr != {_anon_interval_set(sources)} drop",
             f"ip saddr != {{ {' , '.join(sources)} }} drop", None)


def _endpoint_jumps(out: _Sink, chain: str, targets: list[str], affinity: bool) -> None:
    """writeServiceToEndpointRules: affinity shortcuts, then one numgen vmap."""
    if affinity:
        for target in targets:
            out.rule(chain, f"ip saddr @affinity-{target[len('endpoint-'):]} goto {target}", None, None)
    vmap = ", ".join(f"{i} : goto {t}" for i, t in enumerate(targets))
    written = " , ".join(f"{i} : goto {t}" for i, t in enumerate(targets))
    out.rule(chain, f"numgen random mod {len(targets)} vmap {{ {vmap} }}",
             f"numgen random mod {len(targets)} vmap {{ {written} }}", None)


def _sync(out: _Sink, ordered: Sequence[ServicePort], plans: dict[int, _Plan], cfg: _Config,
          node_ip: str | None) -> None:
    _setup(out, cfg)
    cluster_ips: set[str] = set()
    for svc in ordered:
        _sync_service(out, plans[id(svc)], cfg, node_ip, cluster_ips)


# --------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------

@dataclass
class GeneratedNft:
    text: str
    services: list[ServicePort]
    node_ips: tuple[str, ...]
    pod_cidr: str
    params: dict[str, Any]
    _ordered: list[ServicePort] = field(repr=False, default_factory=list)
    _plans: dict[int, _Plan] = field(repr=False, default_factory=dict)
    _config: _Config | None = field(repr=False, default=None)

    @property
    def lines(self) -> int:
        return self.text.count("\n")

    @property
    def nbytes(self) -> int:
        return len(self.text.encode())

    def transaction(self) -> str:
        """kube-proxy's ``nft -f`` input for this ruleset (knftables' text, in its
        order, without the flushes a fresh table does not need)."""
        assert self._config is not None
        out = _Transaction()
        _sync(out, self._ordered, self._plans, self._config, self.node_ips[0] if self.node_ips else None)
        return out.render()

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.text, encoding="utf-8")

    def write_bundle(self, dirpath: str | Path) -> Path:
        """A kptrace bundle: ``nft-ruleset.txt`` and an ``ip-addr.txt`` holding
        lo and eth0 with the node IPs (what ``fib ... type local`` and NodePorts
        compare against)."""
        d = Path(dirpath)
        d.mkdir(parents=True, exist_ok=True)
        self.write(d / "nft-ruleset.txt")
        (d / "ip-addr.txt").write_text(_ip_addr_text(self.node_ips), encoding="utf-8")
        return d

    def to_meta(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "node_ips": list(self.node_ips),
            "pod_cidr": self.pod_cidr,
            "lines": self.lines,
            "bytes": self.nbytes,
            "services": [_service_meta(self._plans[id(svc)]) for svc in self.services],
        }

    def pick(self, *, verdict: str = "DNAT", external: bool = False,
             policy: str | None = None, index: float = 0.5) -> ServicePort:
        """A deterministic probe: the service at relative position ``index``
        among those matching the filters (0.5 = middle of the list)."""
        def ok(svc: ServicePort) -> bool:
            got = svc.external_verdict if external else svc.cluster_ip_verdict
            return got == verdict and (policy is None or svc.policy == policy)

        matches = [svc for svc in self.services if ok(svc)]
        if not matches:
            raise LookupError(f"no service with verdict={verdict} external={external} policy={policy}")
        return matches[min(len(matches) - 1, int(index * len(matches)))]


def _service_meta(plan: _Plan) -> dict[str, Any]:
    svc, names = plan.svc, plan.chains
    return {
        "key": svc.key, "namespace": svc.namespace, "name": svc.name, "port_name": svc.port_name,
        "cluster_ip": svc.cluster_ip, "port": svc.port, "protocol": svc.protocol, "node_port": svc.node_port,
        "policy": svc.policy, "lb_ip": svc.lb_ip, "lb_source_ranges": list(svc.lb_source_ranges),
        "session_affinity": svc.session_affinity,
        "endpoints": [{"ip": ep.ip, "port": ep.port, "local": ep.local, "chain": plan.ep_chains[ep]}
                      for ep in svc.endpoints],
        "service_chain": names["service"] if svc.endpoints else None,
        "local_chain": names["local"] if plan.uses_local else None,
        "external_chain": names["external"] if plan.uses_external else None,
        "firewall_chain": names["firewall"] if plan.uses_firewall else None,
        "cluster_ip_verdict": svc.cluster_ip_verdict,
        "external_verdict": svc.external_verdict,
    }


def _ip_addr_text(node_ips: Sequence[str]) -> str:
    lines = [
        "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default qlen 1000",
        "    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00",
        "    inet 127.0.0.1/8 scope host lo",
        "       valid_lft forever preferred_lft forever",
        "2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000",
        "    link/ether 02:00:c0:a8:00:02 brd ff:ff:ff:ff:ff:ff",
    ]
    for ip in node_ips:
        net = ipaddress.IPv4Network(f"{ip}/24", strict=False)
        lines += [f"    inet {ip}/24 brd {net.broadcast_address} scope global eth0",
                  "       valid_lft forever preferred_lft forever"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------

def generate_nftables(
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
    service_cidr: str | None = "10.96.0.0/12",
    nodeport_addresses: str = "primary",
    element_order: str = "nft-1.0",
) -> GeneratedNft:
    """Build the ``nft list ruleset`` of a kube-proxy node in nftables mode.

    The service ports are ``generate_iptables(...).services`` for the same
    seed and knobs, so both modes describe one cluster.  ``service_cidr``
    (None: no ServiceCIDR objects) gives cluster-ips-check its drop rule;
    ``nodeport_addresses`` is "primary" (kube-proxy's nftables default: the
    first node IP in ``@nodeport-ips``) or "all" (``fib daddr type local``);
    ``element_order`` is "nft-1.0" (nft <= 1.1.x) or "network" (see the
    module docstring).  Deterministic for a given seed.
    """
    if nodeport_addresses not in ("primary", "all"):
        raise ValueError("nodeport_addresses must be 'primary' or 'all'")
    if element_order not in ("nft-1.0", "network"):
        raise ValueError("element_order must be 'nft-1.0' or 'network'")
    params = {k: v for k, v in locals().items() if k != "params"}
    params["node_ips"] = list(node_ips)
    model = generate_iptables(
        services, endpoints, seed=seed, node_ips=node_ips, pod_cidr=pod_cidr,
        local_node_pod_prefix=local_node_pod_prefix, no_endpoint_fraction=no_endpoint_fraction,
        nodeport_fraction=nodeport_fraction, local_policy_fraction=local_policy_fraction,
        lb_fraction=lb_fraction, affinity_fraction=affinity_fraction, udp_fraction=udp_fraction,
        multi_port_fraction=multi_port_fraction, unnamed_port_fraction=unnamed_port_fraction,
        num_nodes=num_nodes,
    )
    svcs = _unique_port_names(model.services)
    cfg = _Config(pod_cidr=pod_cidr, service_cidr=service_cidr,
                  nodeport_ips=tuple(node_ips[:1]) if nodeport_addresses == "primary" else None,
                  element_order=element_order)
    rng = random.Random(f"kube-proxy-nft-{seed}")
    # kube-proxy walks svcPortMap, a Go map: the service order is arbitrary.
    ordered = list(svcs)
    rng.shuffle(ordered)
    plans = {id(svc): _plan(svc) for svc in ordered}
    listing = _Listing()
    _sync(listing, ordered, plans, cfg, node_ips[0] if node_ips else None)
    return GeneratedNft(text=listing.render(), services=svcs, node_ips=tuple(node_ips),
                        pod_cidr=pod_cidr, params=params, _ordered=ordered, _plans=plans, _config=cfg)


def _unique_port_names(services: list[ServicePort]) -> list[ServicePort]:
    """The service ports minus repeated ServicePortNames (first one kept).

    generate_iptables can give one Service two ports named "http" (80 and
    8080), which the API server rejects; kube-proxy keys its service map by
    ServicePortName, so only one of them can exist on a node.
    """
    seen: set[tuple[str, str]] = set()
    out = []
    for svc in services:
        if (svc.key, svc.proto) not in seen:
            seen.add((svc.key, svc.proto))
            out.append(svc)
    return out


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m kptrace.testing.generator_nft",
        description="Generate a synthetic kube-proxy nftables-mode `nft list ruleset` (and metadata).")
    ap.add_argument("--services", type=int, default=1000, help="number of service ports")
    ap.add_argument("--endpoints", type=int, default=10, help="endpoints per service port")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", default="-", help="ruleset path ('-' = stdout)")
    ap.add_argument("--bundle", help="also write a kptrace bundle directory here")
    ap.add_argument("--meta", help="write service metadata JSON here")
    ap.add_argument("--transaction", help="write kube-proxy's `nft -f` input here")
    ap.add_argument("--node-ip", action="append", dest="node_ips", help="this node's IP (repeatable)")
    ap.add_argument("--pod-cidr", default="10.244.0.0/16")
    ap.add_argument("--service-cidr", default="10.96.0.0/12", help="'' = no ServiceCIDR drop rule")
    ap.add_argument("--nodeport-addresses", choices=("primary", "all"), default="primary")
    ap.add_argument("--element-order", choices=("nft-1.0", "network"), default="nft-1.0")
    ap.add_argument("--no-endpoint-fraction", type=float, default=0.02)
    ap.add_argument("--nodeport-fraction", type=float, default=0.2)
    ap.add_argument("--local-policy-fraction", type=float, default=0.05)
    ap.add_argument("--lb-fraction", type=float, default=0.02)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    start = time.perf_counter()
    rs = generate_nftables(
        args.services, args.endpoints, seed=args.seed, node_ips=tuple(args.node_ips or ("192.168.0.2",)),
        pod_cidr=args.pod_cidr, service_cidr=args.service_cidr or None,
        nodeport_addresses=args.nodeport_addresses, element_order=args.element_order,
        no_endpoint_fraction=args.no_endpoint_fraction, nodeport_fraction=args.nodeport_fraction,
        local_policy_fraction=args.local_policy_fraction, lb_fraction=args.lb_fraction,
    )
    elapsed = time.perf_counter() - start
    if args.output == "-":
        sys.stdout.write(rs.text)
    else:
        rs.write(args.output)
    if args.bundle:
        rs.write_bundle(args.bundle)
    if args.meta:
        with open(args.meta, "w", encoding="utf-8") as fh:
            json.dump(rs.to_meta(), fh, indent=1)
    if args.transaction:
        Path(args.transaction).write_text(rs.transaction(), encoding="utf-8")
    print(f"generated {len(rs.services)} service ports, {rs.lines} lines, {rs.nbytes / 1e6:.1f} MB "
          f"in {elapsed:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
