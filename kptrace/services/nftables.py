"""Service ports from kube-proxy's nftables mode (`table ip kube-proxy` / `table ip6 kube-proxy`).

kube-proxy names its chains after the service port and endpoint (pkg/proxy/nftables/proxier.go):

  map service-ips        { 10.96.0.10 . udp . 53 : goto service-HASH-kube-system/kube-dns/udp/dns, … }
  map service-nodeports  { tcp . 30080 : goto external-HASH-default/web/tcp/p80, … }
  map no-endpoint-services / no-endpoint-nodeports   { 10.96.77.7 . tcp . 80 comment "default/broken:p80" : … }
  map firewall-ips       { 198.51.100.20 . tcp . 80 comment "default/lb:p80" : goto firewall-HASH-… }
  chain service-HASH-NS/NAME/PROTO/PORT   numgen random mod N vmap { 0 : goto endpoint-HASH-NS/NAME/PROTO/PORT__IP/PORT, … }
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import ip_address

from kptrace.model.node import Node
from kptrace.services.model import Endpoint, Health, ServicePort

_CHAIN = re.compile(r"^(?:service|external|firewall|endpoint)-[A-Z0-9]+-(?P<ns>[^/]+)/(?P<name>[^/]+)/(?P<proto>[a-z]+)/(?P<port>[^_]*)(?:__(?P<ep>.+))?$")
_COMMENT = re.compile(r"^(?P<ns>[^/\s]+)/(?P<name>[^:\s]+)(?::(?P<port>\S+))?$")


def _consts(expr: object) -> list[str]:
    items = getattr(expr, "items", None)
    parts = items if items is not None else (expr,)
    return [str(getattr(p, "value", "")) for p in parts]


def _endpoint(text: str) -> str:
    # `10.244.1.3/8080` in a chain name is 10.244.1.3:8080; kube-proxy writes an IPv6 address with
    # dots for colons (chain names cannot hold ':'): `fd00.244.1..3/8080` is [fd00:244:1::3]:8080.
    addr, _, port = text.rpartition("/")
    try:
        ip = ip_address(addr)
    except ValueError:
        try:
            ip = ip_address(addr.replace(".", ":"))
        except ValueError:
            return f"{addr}:{port}"
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@dataclass(slots=True)
class _Acc:
    cluster_ips: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    lb: list[str] = field(default_factory=list)
    port: int | None = None
    node_port: int | None = None
    endpoints: dict[str, str] = field(default_factory=dict)  # address -> the endpoint chain's file:line
    health: list[Health] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


def service_ports(node: Node) -> list[ServicePort]:
    rs = node.nft
    tables = getattr(rs, "tables", None)
    if not tables:
        return []
    acc: dict[tuple[str, str, str, str], _Acc] = {}

    def entry(ns: str, name: str, port: str, proto: str) -> _Acc:
        return acc.setdefault((ns, name, port, proto), _Acc())

    for table in tables.values():
        if table.name != "kube-proxy":
            continue
        for set_name, kind in (("service-ips", "vip"), ("service-nodeports", "nodeport"), ("firewall-ips", "lb"),
                               ("no-endpoint-services", "none"), ("no-endpoint-nodeports", "none-np")):
            s = table.sets.get(set_name)
            for el in s.elements if s is not None else ():
                target = getattr(el.value, "target", None) or ""
                m = _CHAIN.match(target)
                c = _COMMENT.match(el.comment or "")
                if m:
                    ns, name, port, proto = m["ns"], m["name"], m["port"], m["proto"]
                elif c:
                    keys = _consts(el.key)
                    ns, name, port = c["ns"], c["name"], c["port"] or ""
                    proto = next((k for k in keys if k in ("tcp", "udp", "sctp")), "tcp")
                else:
                    continue
                e = entry(ns, name, port, proto)
                keys = _consts(el.key)
                cite = str(el.source.source) if el.source else None
                if cite:
                    e.sources.append(cite)
                if kind in ("vip", "none") and len(keys) >= 3:
                    # service-ips holds external and load-balancer IPs too; they go to external-… chains.
                    # (A no-endpoint drop is externalTrafficPolicy Local: only external addresses get one.)
                    external = target.startswith(("external-", "firewall-")) or getattr(el.value, "kind", "") == "drop"
                    (e.external if external else e.cluster_ips).append(keys[0])
                    e.port = int(keys[2]) if keys[2].isdecimal() else None
                elif kind in ("nodeport", "none-np") and len(keys) >= 2 and keys[-1].isdecimal():
                    e.node_port = int(keys[-1])
                elif kind == "lb" and keys:
                    e.lb.append(keys[0])
                if kind.startswith("none"):
                    # A drop (not a goto to the reject chain) is externalTrafficPolicy Local with none here.
                    local = getattr(el.value, "kind", "") == "drop"
                    health = ("no-local-endpoints", "has no local endpoints") if local else ("no-endpoints", "has no endpoints")
                    h = Health(health[0], f"{el.comment or target} {health[1]}", cite, node.name)
                    if h not in e.health:
                        e.health.append(h)
        for chain_name in table.chains:
            m = _CHAIN.match(chain_name)
            if m and m["ep"]:
                e = entry(m["ns"], m["name"], m["port"], m["proto"])
                e.endpoints[_endpoint(m["ep"])] = str(table.chains[chain_name].source.source)
    out = []
    for (ns, name, port, proto), e in sorted(acc.items()):
        share = 1 / len(e.endpoints) if e.endpoints else None  # numgen random mod N: an equal share each
        out.append(ServicePort(
            namespace=ns, name=name, port_name=port, protocol=proto, node=node.name, source_kind="nftables",
            port=e.port, cluster_ips=tuple(dict.fromkeys(e.cluster_ips)), node_port=e.node_port,
            load_balancer_ips=tuple(dict.fromkeys(e.lb)),
            external_ips=tuple(ip for ip in dict.fromkeys(e.external) if ip not in e.lb),
            endpoints=tuple(Endpoint(a, share, src) for a, src in e.endpoints.items()),
            health=tuple(e.health), sources=tuple(e.sources),
        ))
    return out
