"""Service ports from IPVS (`ipvsadm -Ln`): virtual services and their real servers.

IPVS has no Service names; kube-proxy's IPVS mode writes none into iptables either. A virtual
service is listed under its address (`ipvs/10.96.0.10:53`), with its real servers and the shares
their weights give them.
"""

from __future__ import annotations

from kptrace.model.node import Node
from kptrace.services.model import Endpoint, Health, ServicePort


def service_ports(node: Node) -> list[ServicePort]:
    out = []
    for svc in node.ipvs or []:
        if svc.host is None or svc.port is None:
            continue  # fwmark services have no address and port to list
        total = sum(d.weight or 0 for d in svc.dests)
        eps = tuple(Endpoint(str(d), (d.weight or 0) / total if total else None, str(d.source)) for d in svc.dests)
        health = () if svc.dests else (Health("no-endpoints", f"{svc.host}:{svc.port} has no real server",
                                              str(svc.source), node.name),)
        out.append(ServicePort(
            namespace="ipvs", name=f"{svc.host}:{svc.port}", port_name="", protocol=svc.protocol, node=node.name,
            source_kind="ipvs", port=svc.port, cluster_ips=(svc.host,), endpoints=eps, health=health,
            sources=(str(svc.source),),
        ))
    return out
