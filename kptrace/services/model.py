"""What kptrace can see of a Service port on a node: addresses, ports, endpoints, policy and health.

Each source (kube-proxy's iptables rules, its nftables mode, IPVS virtual services) turns one node's state
into `ServicePort` records; `kptrace.services.collect` merges them over the nodes of the input.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str  # "10.244.1.9:53", "[fd00::9]:53", or an address alone when the DNAT names no port
    probability: float | None = None  # the share kube-proxy sends here (None: not known, e.g. IPVS weights)
    source: str | None = None  # file:line of the rule that names it (the DNAT, else the KUBE-SVC rule)


@dataclass(frozen=True, slots=True)
class Health:
    kind: str  # "no-endpoints" | "no-local-endpoints"
    message: str  # the rule's comment, e.g. "default/broken has no endpoints"
    source: str | None
    node: str | None = None


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of one Service as one source on one node shows it."""

    namespace: str
    name: str
    port_name: str  # "" for an unnamed (single) port
    protocol: str  # tcp | udp | sctp, lower case
    node: str
    source_kind: str  # iptables | ipvs | nftables
    port: int | None = None
    cluster_ips: tuple[str, ...] = ()
    node_port: int | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    health_check_node_port: int | None = None
    endpoints: tuple[Endpoint, ...] = ()  # every endpoint (KUBE-SVC-…)
    local_endpoints: tuple[Endpoint, ...] | None = None  # this node's, for a Local policy (KUBE-SVL-…)
    external_policy: str | None = None  # "Local" | "Cluster" | None (no external entry point seen)
    internal_policy: str | None = None
    session_affinity: bool = False
    health: tuple[Health, ...] = ()
    chains: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # file:line of every rule this record was read from

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.namespace, self.name, self.port_name, self.protocol)

    @property
    def display_name(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base


@dataclass(frozen=True, slots=True)
class Service:
    """A Service port merged over every node and source of the input."""

    namespace: str
    name: str
    port_name: str
    protocol: str
    port: int | None
    type: str  # ClusterIP | NodePort | LoadBalancer
    cluster_ips: tuple[str, ...]
    node_port: int | None
    external_ips: tuple[str, ...]
    load_balancer_ips: tuple[str, ...]
    load_balancer_source_ranges: tuple[str, ...]
    health_check_node_port: int | None
    endpoints: tuple[Endpoint, ...]
    local_endpoints: tuple[tuple[str, tuple[Endpoint, ...]], ...]  # (node, its endpoints) for Local policies
    external_policy: str | None
    internal_policy: str | None
    session_affinity: bool
    health: tuple[Health, ...]
    chains: tuple[str, ...]
    nodes: tuple[str, ...]
    source_kinds: tuple[str, ...]
    sources: tuple[str, ...]

    @property
    def display_name(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def status(self) -> str:
        """ok, or the problems: `no endpoints`, `no local endpoints on node-a`."""
        kinds = {h.kind for h in self.health}
        if "no-endpoints" in kinds or (not self.endpoints and not self.local_endpoints):
            return "no endpoints"
        bad = sorted({h.node or "?" for h in self.health if h.kind == "no-local-endpoints"})
        if bad:
            return "no local endpoints on " + ", ".join(bad)
        return "ok"
