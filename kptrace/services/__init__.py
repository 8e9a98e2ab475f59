"""Every Service port kptrace can see in a node's state, merged over the nodes of the input.

One function per source turns a Node into ServicePort records. To add a source (IPVS, nftables),
write `kptrace/services/<source>.py` with `service_ports(node) -> list[ServicePort]` and add it to
`SOURCES`; `collect` merges what every source on every node says about the same port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kptrace.model.node import Node
from kptrace.services import iptables, ipvs, nftables
from kptrace.services.model import Endpoint, Health, Service, ServicePort

Source = Callable[[Node], list[ServicePort]]
SOURCES: dict[str, Source] = {
    "iptables": iptables.service_ports,
    "nftables": nftables.service_ports,
    "ipvs": ipvs.service_ports,
}


def service_ports(nodes: Iterable[Node]) -> list[ServicePort]:
    """The records of every source on every node, in node order."""
    return [p for node in nodes for read in SOURCES.values() for p in read(node)]


def _union(values: Iterable[Iterable[str]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for vs in values for v in vs))


def _first(values: Iterable[int | str | None]) -> int | str | None:
    return next((v for v in values if v is not None), None)


def _type(node_port: int | None, lb: tuple[str, ...], fw: bool) -> str:
    if lb or fw:
        return "LoadBalancer"
    return "NodePort" if node_port is not None else "ClusterIP"


def merge(records: list[ServicePort]) -> list[Service]:
    groups: dict[tuple[str, str, str, str], list[ServicePort]] = {}
    for r in records:
        groups.setdefault(r.key, []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3])):
        rs = groups[key]
        endpoints: dict[str, Endpoint] = {}
        for r in rs:
            for e in r.endpoints:
                endpoints.setdefault(e.address, e)
        local = tuple((r.node, r.local_endpoints) for r in rs if r.local_endpoints is not None)
        health: list[Health] = []
        for r in rs:
            health.extend(h for h in r.health if h not in health)
        lb = _union(r.load_balancer_ips for r in rs)
        node_port = _first(r.node_port for r in rs)
        ext = [r.external_policy for r in rs if r.external_policy]
        internal = [r.internal_policy for r in rs if r.internal_policy]
        out.append(Service(
            namespace=key[0], name=key[1], port_name=key[2], protocol=key[3],
            port=_first(r.port for r in rs),  # type: ignore[arg-type]
            type=_type(node_port, lb, any(c.startswith("KUBE-FW-") for r in rs for c in r.chains)),  # type: ignore[arg-type]
            cluster_ips=_union(r.cluster_ips for r in rs), node_port=node_port,  # type: ignore[arg-type]
            external_ips=_union(r.external_ips for r in rs), load_balancer_ips=lb,
            load_balancer_source_ranges=_union(r.load_balancer_source_ranges for r in rs),
            health_check_node_port=_first(r.health_check_node_port for r in rs),  # type: ignore[arg-type]
            endpoints=tuple(endpoints.values()), local_endpoints=local,
            external_policy="Local" if "Local" in ext else (ext[0] if ext else None),
            internal_policy="Local" if "Local" in internal else (internal[0] if internal else None),
            session_affinity=any(r.session_affinity for r in rs), health=tuple(health),
            chains=_union(r.chains for r in rs), nodes=tuple(dict.fromkeys(r.node for r in rs)),
            source_kinds=tuple(dict.fromkeys(r.source_kind for r in rs)),
            sources=_union(r.sources for r in rs)))
    return out


def collect(nodes: Iterable[Node]) -> list[Service]:
    """Every Service port of the input, merged over nodes and sources, sorted by namespace, name, port."""
    return merge(service_ports(nodes))


__all__ = ["SOURCES", "Endpoint", "Health", "Service", "ServicePort", "collect", "merge", "service_ports"]
