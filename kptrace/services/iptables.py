"""Service ports from kube-proxy's iptables rules, read from the comments kube-proxy writes on them.

The forms read (pkg/proxy/iptables/proxier.go, v1.28+; `ns/name` alone for an unnamed port):

  nat KUBE-SERVICES      -d VIP/32 -p udp --dport 53 "ns/name:port cluster IP"      -j KUBE-SVC-… | KUBE-SVL-…
                         -d IP/32 --dport P "ns/name:port external IP"              -j KUBE-EXT-… | KUBE-SVC-…
                         -d IP/32 --dport P "ns/name:port loadbalancer IP"          -j KUBE-FW-… | KUBE-EXT-…
  nat KUBE-NODEPORTS     --dport NP "ns/name:port" (older: "… nodePort")            -j KUBE-EXT-… | KUBE-SVC-…
  nat KUBE-SVC-/KUBE-SVL-  "ns/name:port -> 10.244.1.9:53" [-m statistic --probability p] -j KUBE-SEP-…
  nat KUBE-SEP-…         -j DNAT --to-destination 10.244.1.9:53
  nat KUBE-EXT-…         "pod traffic for …", -j KUBE-SVL-…  (externalTrafficPolicy: Local)
  nat KUBE-FW-…          -s RANGE "… loadbalancer IP" -j KUBE-EXT-…  (loadBalancerSourceRanges)
  filter KUBE-SERVICES, KUBE-EXTERNAL-SERVICES
                         "ns/name:port has no endpoints" -j REJECT; "… has no local endpoints" -j DROP
  filter KUBE-NODEPORTS  --dport P "ns/name:port health check node port" -j ACCEPT
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kptrace.model.netfilter import Chain, Rule, Ruleset
from kptrace.model.node import Node
from kptrace.services.model import Endpoint, Health, ServicePort

_NAME = r"(?P<ns>[^/\s]+)/(?P<name>[^:\s]+)(?::(?P<port>[^\s]+))?"
_KIND = re.compile(rf"^{_NAME}(?: (?P<kind>cluster IP|external IP|loadbalancer IP|nodePort|has no endpoints"
                   r"|has no local endpoints|health check node port))?$")
_ENDPOINT = re.compile(rf"^{_NAME} -> (?P<ep>\S+)$")
_SVC_CHAIN = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-XLB-")


@dataclass(slots=True)
class _Acc:
    """What the rules say about one service port, gathered before it is frozen into a ServicePort."""

    port: int | None = None
    cluster_ips: list[str] = field(default_factory=list)
    node_port: int | None = None
    external_ips: list[str] = field(default_factory=list)
    lb_ips: list[str] = field(default_factory=list)
    lb_ranges: list[str] = field(default_factory=list)
    hc_port: int | None = None
    svc_chain: str | None = None
    svl_chain: str | None = None
    ext_chain: str | None = None
    fw_chain: str | None = None
    internal_policy: str | None = None
    health: list[Health] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    proto: str = "tcp"


def _dport(r: Rule) -> int | None:
    for m in r.matches:
        o = m.opt("--dport", "--destination-port")
        if o is not None and o.value().isdigit() and not o.negated:
            return int(o.value())
    return None


def _dst(r: Rule) -> str | None:
    if r.dst is None or r.dst.negated or not r.dst.value:
        return None
    net = r.dst.value[0]
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _src(r: Rule) -> str | None:
    if r.src is None or r.src.negated or not r.src.value:
        return None
    return str(r.src.value[0])


def _proto(r: Rule) -> str | None:
    return r.proto.value.lower() if r.proto is not None and not r.proto.negated else None


def _target(r: Rule) -> str:
    return r.target.name if r.target is not None else ""


def _add(xs: list[str], x: str | None) -> None:
    if x is not None and x not in xs:
        xs.append(x)


def _rules(rs: Ruleset, table: str, chain: str) -> list[Rule]:
    """A chain's rules (its own list: read, never changed here)."""
    c: Chain | None = rs.chain(table, chain)
    return c.rules if c is not None else []


class _Reader:
    def __init__(self, node: Node, rs: Ruleset) -> None:
        self.node, self.rs = node, rs
        self.acc: dict[tuple[str, str, str, str], _Acc] = {}
        self.affinity: set[tuple[str, str, str, str]] = set()

    def get(self, m: re.Match[str], proto: str | None) -> tuple[tuple[str, str, str, str], _Acc] | None:
        """The record of the port a comment names; a comment without a protocol matches an existing record."""
        ns, name, port = m.group("ns"), m.group("name"), m.group("port") or ""
        if proto is None:
            found = [k for k in self.acc if k[:3] == (ns, name, port)]
            if len(found) == 1:
                return found[0], self.acc[found[0]]
            proto = "tcp"
        key = (ns, name, port, proto)
        a = self.acc.setdefault(key, _Acc(proto=proto))
        return key, a

    def entry_rules(self) -> None:
        for r in [*_rules(self.rs, "nat", "KUBE-SERVICES"), *_rules(self.rs, "nat", "KUBE-NODEPORTS")]:
            m = _KIND.match(r.comment() or "")
            if m is None:
                continue
            kind, tgt = m.group("kind"), _target(r)
            if kind in ("has no endpoints", "has no local endpoints", "health check node port"):
                continue
            got = self.get(m, _proto(r))
            if got is None:
                continue
            _, a = got
            a.sources.append(str(r.source))
            if r.chain == "KUBE-NODEPORTS":
                if kind in (None, "nodePort") and _dport(r) is not None:
                    a.node_port = _dport(r)
                    self.chain_of(a, tgt)
                continue
            if kind == "cluster IP":
                _add(a.cluster_ips, _dst(r))
                a.port = _dport(r) or a.port
                if tgt.startswith("KUBE-SVL-"):
                    a.internal_policy = "Local"
                elif tgt.startswith("KUBE-SVC-"):
                    a.internal_policy = "Cluster"
            elif kind == "external IP":
                _add(a.external_ips, _dst(r))
                a.port = a.port or _dport(r)
            elif kind == "loadbalancer IP":
                _add(a.lb_ips, _dst(r))
                a.port = a.port or _dport(r)
            self.chain_of(a, tgt)

    def chain_of(self, a: _Acc, tgt: str) -> None:
        if tgt.startswith("KUBE-SVC-"):
            a.svc_chain = a.svc_chain or tgt
        elif tgt.startswith(("KUBE-SVL-", "KUBE-XLB-")):
            a.svl_chain = a.svl_chain or tgt
        elif tgt.startswith("KUBE-EXT-"):
            a.ext_chain = a.ext_chain or tgt
        elif tgt.startswith("KUBE-FW-"):
            a.fw_chain = a.fw_chain or tgt

    def filter_rules(self) -> None:
        """No endpoints (REJECT), no local endpoints (DROP), health check node ports (ACCEPT)."""
        for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS"):
            for r in _rules(self.rs, "filter", chain):
                m = _KIND.match(r.comment() or "")
                if m is None or m.group("kind") is None:
                    continue
                kind = m.group("kind")
                if kind not in ("has no endpoints", "has no local endpoints", "health check node port"):
                    continue
                got = self.get(m, _proto(r))
                if got is None:
                    continue
                _, a = got
                a.sources.append(str(r.source))
                if kind == "health check node port":
                    a.hc_port = _dport(r)
                    continue
                dst, port = _dst(r), _dport(r)
                local_dst = any(mm.module == "addrtype" and (mm.opt("--dst-type") or None) is not None
                                for mm in r.matches)
                if chain == "KUBE-SERVICES" and dst is not None:
                    _add(a.cluster_ips, dst)
                    a.port = a.port or port
                elif dst is not None:
                    if dst not in a.lb_ips:
                        _add(a.external_ips, dst)
                    a.port = a.port or port
                elif local_dst and port is not None:
                    a.node_port = a.node_port or port
                h = "no-endpoints" if kind == "has no endpoints" else "no-local-endpoints"
                if not any(x.kind == h for x in a.health):
                    a.health.append(Health(h, r.comment() or "", str(r.source), self.node.name))

    def endpoints(self, chain: str | None, a: _Acc, key: tuple[str, str, str, str]) -> tuple[Endpoint, ...]:
        if chain is None:
            return ()
        out: list[Endpoint] = []
        remaining = 1.0
        for r in _rules(self.rs, "nat", chain):
            tgt = r.target.name if r.target is not None else ""
            if not tgt.startswith("KUBE-SEP-"):
                continue
            matches = r.matches
            if any(m.module == "recent" for m in matches):
                self.affinity.add(key)  # sessionAffinity: ClientIP; the same endpoints follow without it
                continue
            p = 1.0
            for m in matches:
                if m.module != "statistic":
                    continue
                o = m.opt("--probability")
                if o is not None:
                    try:
                        p = float(o.value())
                    except ValueError:
                        p = 1.0
            share = remaining * p
            remaining -= share
            addr, cite = self.sep_target(tgt)
            where = str(r.source)
            if addr is None:
                em = _ENDPOINT.match(r.comment() or "")
                addr, cite = (em.group("ep"), where) if em else (tgt, where)
            a.sources.append(where)
            out.append(Endpoint(addr, round(share, 12), cite))
        return tuple(out)

    def sep_target(self, chain: str) -> tuple[str | None, str | None]:
        for r in _rules(self.rs, "nat", chain):
            t = r.target
            if t is not None and t.name == "DNAT":
                o = t.opt("--to-destination")
                if o is not None:
                    return o.value(), str(r.source)
        return None, None

    def ext_policy(self, a: _Acc) -> str | None:
        if a.ext_chain is None:
            return "Cluster" if a.node_port or a.external_ips or a.lb_ips else None
        local = False
        for r in _rules(self.rs, "nat", a.ext_chain):
            tgt = _target(r)
            comment = r.comment() or ""
            if tgt.startswith(("KUBE-SVL-", "KUBE-XLB-")):
                a.svl_chain = a.svl_chain or tgt
                local = True
            elif comment.startswith("pod traffic for "):
                local = True
            elif tgt.startswith("KUBE-SVC-"):
                a.svc_chain = a.svc_chain or tgt
        return "Local" if local else "Cluster"

    def fw_ranges(self, a: _Acc) -> None:
        if a.fw_chain is None:
            return
        for r in _rules(self.rs, "nat", a.fw_chain):
            if _target(r).startswith(("KUBE-EXT-", "KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-")):
                self.chain_of(a, _target(r))
                s = _src(r)
                if s is not None and not (s.endswith("/32") and s[:-3] in a.lb_ips):
                    _add(a.lb_ranges, s)

    def records(self) -> list[ServicePort]:
        self.entry_rules()
        self.filter_rules()
        out = []
        for key, a in self.acc.items():
            self.fw_ranges(a)
            ext = self.ext_policy(a)
            eps = self.endpoints(a.svc_chain, a, key)
            local = self.endpoints(a.svl_chain, a, key) if a.svl_chain else None
            if local is None and "Local" in (ext, a.internal_policy):
                local = ()  # a Local policy and no KUBE-SVL chain: no endpoint on this node
            if ext == "Local" and not local and not any(h.kind == "no-local-endpoints" for h in a.health):
                a.health.append(Health("no-local-endpoints", f"{_display(key)}: no KUBE-SVL chain with endpoints "
                                       "on this node (externalTrafficPolicy: Local)", a.ext_chain, self.node.name))
            if a.svc_chain is not None and not eps and not any(h.kind == "no-endpoints" for h in a.health):
                a.health.append(Health("no-endpoints", f"{_display(key)}: {a.svc_chain} has no endpoints",
                                       a.svc_chain, self.node.name))
            chains = tuple(c for c in (a.fw_chain, a.ext_chain, a.svc_chain, a.svl_chain) if c)
            out.append(ServicePort(
                namespace=key[0], name=key[1], port_name=key[2], protocol=key[3], node=self.node.name,
                source_kind="iptables", port=a.port, cluster_ips=tuple(a.cluster_ips), node_port=a.node_port,
                external_ips=tuple(a.external_ips), load_balancer_ips=tuple(a.lb_ips),
                load_balancer_source_ranges=tuple(a.lb_ranges), health_check_node_port=a.hc_port,
                endpoints=eps, local_endpoints=local, external_policy=ext, internal_policy=a.internal_policy,
                session_affinity=key in self.affinity, health=tuple(a.health), chains=chains,
                sources=tuple(dict.fromkeys(a.sources))))
        return out


def _display(key: tuple[str, str, str, str]) -> str:
    return f"{key[0]}/{key[1]}" + (f":{key[2]}" if key[2] else "")


def service_ports(node: Node) -> list[ServicePort]:
    """Every Service port kube-proxy's iptables rules (IPv4 and IPv6) on this node name."""
    out: list[ServicePort] = []
    for family in sorted(node.rulesets):
        rs = node.rulesets[family]
        if rs.chain("nat", "KUBE-SERVICES") is None and rs.chain("filter", "KUBE-SERVICES") is None:
            continue
        out.extend(_Reader(node, rs).records())
    return out
