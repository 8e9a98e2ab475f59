"""Is a destination a Service address, and which Service ports does it have?

kube-proxy writes one KUBE-SERVICES rule per Service port and address (`-d 10.96.0.10/32 -p udp
--dport 53 … -j KUBE-SVC-…`, or a filter REJECT "has no endpoints"), and in IPVS mode one virtual
service per port. A packet to such an address on a port no rule names, or to an address in the
Service range that no Service has, is not translated by anything: the node routes it as it is (to
its default gateway, usually), and nobody answers. The Service range comes from node.yaml's
`service_cidr` (when the loader keeps it) or `--service-cidr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from kptrace.model.flow import IPAddress
from kptrace.model.netfilter import Rule
from kptrace.model.node import Node

IPNetwork = IPv4Network | IPv6Network
# The chains kube-proxy sends a Service port's packets to from KUBE-SERVICES (iptables mode).
_SERVICE_TARGETS = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-")


@dataclass(frozen=True, slots=True)
class ServicePortRef:
    proto: str
    port: int | None
    name: str  # the rule's comment ("kube-system/kube-dns:dns cluster IP") or the IPVS service
    source: str | None


@dataclass(slots=True)
class ServiceAddress:
    """What the input says about one destination address."""

    ports: list[ServicePortRef] = field(default_factory=list)  # Service ports kube-proxy has for it
    cidr: IPNetwork | None = None  # the Service range holding it
    cidr_source: str | None = None  # where that range was read

    @property
    def is_service(self) -> bool:
        return bool(self.ports) or self.cidr is not None

    def has(self, proto: str, port: int | None) -> bool:
        return any(p.proto == proto and (p.port is None or p.port == port) for p in self.ports)

    def describe(self, dst: IPAddress, proto: str, port: int | None) -> str:
        """Why nothing translates dst:port, in one sentence."""
        where = f"{dst}:{port}/{proto}" if port is not None else f"{dst}/{proto}"
        if self.ports:
            names = sorted({p.name for p in self.ports})
            have = ", ".join(sorted({f"{p.port}/{p.proto}" if p.port is not None else p.proto for p in self.ports}))
            return (f"{dst} is a Service address ({'; '.join(names)}) but it has no port {where.split(':', 1)[-1]}: "
                    f"kube-proxy's rules name only {have}")
        assert self.cidr is not None
        cite = f" ({self.cidr_source})" if self.cidr_source else ""
        return f"{dst} is in the Service range {self.cidr}{cite} but no Service has it: nothing translates {where}"


def _rule_dst_is(rule: Rule, dst: IPAddress) -> bool:
    if rule.dst is None or rule.dst.negated:
        return False
    return any(n.version == dst.version and n.prefixlen == n.max_prefixlen and dst in n for n in rule.dst.value)


def _proto_port(rule: Rule) -> tuple[str, int | None]:
    proto = rule.proto.value if rule.proto is not None and not rule.proto.negated else "all"
    port = None
    for m in rule.matches:
        o = m.opt("--dport", "--dports")
        if o is not None and not o.negated and o.value().isdigit():
            port = int(o.value())
    return proto, port


def iptables_ports(node: Node, dst: IPAddress) -> list[ServicePortRef]:
    """The Service ports kube-proxy's KUBE-SERVICES chains (nat, and filter's REJECTs) name for dst."""
    out: list[ServicePortRef] = []
    for rs in [r for r in (node.rulesets.get(dst.version), node.legacy_rulesets.get(dst.version)) if r is not None]:
        for table in ("nat", "filter"):
            chain = rs.chain(table, "KUBE-SERVICES")
            if chain is None:
                continue
            for i in chain.candidates(str(dst)):
                rule = chain.rule_at(i)
                t = rule.target
                if t is None or not _rule_dst_is(rule, dst):
                    continue
                comment = rule.comment() or ""
                if not (t.name.startswith(_SERVICE_TARGETS) or (t.name == "REJECT" and "has no endpoints" in comment)):
                    continue
                proto, port = _proto_port(rule)
                out.append(ServicePortRef(proto, port, comment.removesuffix(" cluster IP") or t.name, str(rule.source)))
    return out


def ipvs_ports(node: Node, dst: IPAddress) -> list[ServicePortRef]:
    return [ServicePortRef(s.protocol, s.port or None, str(s), str(s.source))
            for s in node.ipvs or () if s.fwmark is None and s.address == dst]


def service_cidrs(node: Node, given: tuple[IPNetwork, ...] = ()) -> list[tuple[IPNetwork, str | None]]:
    """The Service range: --service-cidr, and node.yaml's service_cidr (Node.service_cidrs).

(kube-proxy's nftables mode drops traffic to unallocated ClusterIPs itself, so its trace ends in that rule.)"""
    out: list[tuple[IPNetwork, str | None]] = [(n, "--service-cidr") for n in given]
    for net, src in node.service_cidrs:
        out.append((net, str(src) if src is not None else "node.yaml"))
    return out


def service_address(node: Node, dst: IPAddress, given: tuple[IPNetwork, ...] = ()) -> ServiceAddress:
    addr = ServiceAddress(iptables_ports(node, dst) + ipvs_ports(node, dst))
    for net, src in service_cidrs(node, given):
        if net.version == dst.version and dst in net:
            addr.cidr, addr.cidr_source = net, src
            break
    return addr
