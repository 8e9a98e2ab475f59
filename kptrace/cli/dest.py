"""Destinations as people type them: `IP:PORT`, `IP:PORT/PROTO` (as kptrace prints it, `10.96.0.10:53/udp`),
and a Service by name, kubectl's way: `ns/name:port` or `svc/ns/name:port` (port: the port's name or
number; without it the Service's only port). A name is resolved from the input itself: the comments
kube-proxy writes on its rules and nft elements (`kptrace services` lists what it finds)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kptrace.errors import KptraceError

if TYPE_CHECKING:
    from kptrace.model.node import Node

PROTOS = ("tcp", "udp", "sctp", "icmp")
_NAME = r"[a-z0-9][-a-z0-9.]*"
_SERVICE = re.compile(rf"(?:(?:svc|service|services)/)?({_NAME})/({_NAME})(?::([-a-zA-Z0-9]+))?(?:/(tcp|udp|sctp))?",
                      re.IGNORECASE)
_PROTO_SUFFIX = re.compile(r"^(.*:[0-9]+)/([A-Za-z]+)$")


def split_proto(dest: str) -> tuple[str, str | None]:
    """`10.96.0.10:53/udp` → (`10.96.0.10:53`, `udp`); anything else unchanged, no protocol."""
    m = _PROTO_SUFFIX.match(dest)
    if not m:
        return dest, None
    proto = m.group(2).lower()
    if proto not in PROTOS:
        raise KptraceError(f"destination '{dest[:80]}': '{m.group(2)[:20]}' is not a protocol ({', '.join(PROTOS)})")
    return m.group(1), proto


def is_service_ref(dest: str) -> bool:
    return "/" in dest and _SERVICE.fullmatch(dest) is not None and not re.match(r"^[0-9.]+/", dest)


def resolve_service(dest: str, nodes: list[Node], proto: str | None) -> tuple[str, int, str]:
    """(cluster IP, port, protocol) of the Service port `dest` names, from the rules in the input."""
    from kptrace.services import collect

    m = _SERVICE.fullmatch(dest)
    if m is None:
        raise KptraceError(f"destination '{dest[:80]}': expected IP:PORT, ns/name:port or svc/ns/name:port")
    ns, name, port, suffix = m.group(1), m.group(2), m.group(3), m.group(4)
    want = (suffix or proto or "").lower() or None
    found = [s for s in collect(nodes) if s.namespace == ns and s.name == name]
    if not found:
        raise KptraceError(f"destination '{dest}': no Service {ns}/{name} in the input's rules "
                           "(kptrace services lists the ones it has)")
    ports = [s for s in found if port is None or s.port_name == port or str(s.port) == port]
    if want:
        ports = [s for s in ports if s.protocol.lower() == want]
    if not ports:
        have = ", ".join(sorted({f"{s.port_name or s.port}/{s.protocol.lower()}" for s in found}))
        raise KptraceError(f"destination '{dest}': {ns}/{name} has no port {port or ''}{'/' + want if want else ''} "
                           f"(it has {have})")
    if len(ports) > 1:
        have = ", ".join(f"{ns}/{name}:{s.port_name or s.port}/{s.protocol.lower()}" for s in ports)
        raise KptraceError(f"destination '{dest}' names {len(ports)} Service ports: give one of {have}")
    s = ports[0]
    if not s.cluster_ips or s.port is None:
        raise KptraceError(f"destination '{dest}': the input shows no cluster IP and port for {s.display_name}")
    return s.cluster_ips[0], s.port, s.protocol.lower()


def service_at(nodes: list[Node], ip: str, port: int, proto: str) -> str | None:
    """The name of the one Service port the input's rules give `ip:port/proto` (its cluster, external or load
    balancer IP, or a node port on a node's address), or None: none, several, or only unnamed ones (IPVS)."""
    from ipaddress import ip_address

    from kptrace.services import collect

    addr = ip_address(ip)
    on_node = any(addr in n.local_addresses() for n in nodes)
    names: set[str] = set()
    for s in collect(nodes):
        if s.protocol.lower() != proto or not {"iptables", "nftables"} & set(s.source_kinds):
            continue
        if (s.port == port and ip in (*s.cluster_ips, *s.external_ips, *s.load_balancer_ips)) or \
                (on_node and s.node_port == port):
            names.add(s.display_name)
    return names.pop() if len(names) == 1 else None
