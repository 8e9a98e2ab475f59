"""Builders for iptables-restore input shaped exactly like kubelet + kube-proxy (iptables mode).

The layout follows kube-proxy's syncProxyRules (v1.28+): nat KUBE-SERVICES -> KUBE-SVC-X
(statistic random) -> KUBE-SEP-Y (hairpin KUBE-MARK-MASQ, DNAT), KUBE-EXT-X for NodePort,
externalIP and LoadBalancer traffic, KUBE-SVL-X for externalTrafficPolicy=Local, KUBE-NODEPORTS
reached through `-m addrtype --dst-type LOCAL` as the last KUBE-SERVICES rule, and the filter
chains KUBE-SERVICES / KUBE-EXTERNAL-SERVICES (REJECT/DROP), KUBE-FORWARD, KUBE-NODEPORTS,
KUBE-PROXY-FIREWALL, plus kubelet's KUBE-FIREWALL. Chain names use kube-proxy's hashing.

`legacy=True` renders the pre-1.25 shape instead for externalTrafficPolicy=Local: KUBE-XLB-X
ending in `-j KUBE-MARK-DROP`, and kubelet's KUBE-FIREWALL dropping mark 0x8000.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, field

from . import netns

MASQ_MARK = "0x4000"
DROP_MARK = "0x8000"


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    local: bool = True  # runs on this node

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass
class Service:
    namespace: str
    name: str
    cluster_ip: str
    port: int
    endpoints: list[Endpoint] = field(default_factory=list)
    port_name: str = "http"
    protocol: str = "tcp"
    node_port: int | None = None
    external_ips: list[str] = field(default_factory=list)
    lb_ips: list[str] = field(default_factory=list)
    external_policy_local: bool = False
    health_check_node_port: int | None = None

    @property
    def port_name_string(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.lb_ips)

    @property
    def local_endpoints(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.local]

    def _hash(self, extra: str = "") -> str:
        digest = hashlib.sha256((self.port_name_string + self.protocol + extra).encode()).digest()
        return base64.b32encode(digest).decode()[:16]

    @property
    def svc_chain(self) -> str:
        return "KUBE-SVC-" + self._hash()

    @property
    def svl_chain(self) -> str:
        return "KUBE-SVL-" + self._hash()

    @property
    def ext_chain(self) -> str:
        return "KUBE-EXT-" + self._hash()

    @property
    def xlb_chain(self) -> str:
        return "KUBE-XLB-" + self._hash()

    def sep_chain(self, ep: Endpoint) -> str:
        return "KUBE-SEP-" + self._hash(str(ep))


@dataclass
class UserRule:
    """A rule an admin or another agent added with `iptables -I` (so it lands first)."""

    table: str
    line: str  # e.g. "-I FORWARD 1 -d 10.244.1.0/24 -j DROP"


@dataclass
class NodeRuleset:
    services: list[Service] = field(default_factory=list)
    cluster_cidr: str = netns.CLUSTER_CIDR
    forward_policy: str = "ACCEPT"
    kube_forward_accepts: bool = True
    localhost_nodeports: bool = True
    legacy: bool = False
    user_rules: list[UserRule] = field(default_factory=list)
    user_chains: list[tuple[str, str]] = field(default_factory=list)  # (table, chain)

    def render(self) -> str:
        return "\n".join([*self._mangle(), *self._filter(), *self._nat()]) + "\n"

    # -- tables ---------------------------------------------------------------------------------

    def _mangle(self) -> list[str]:
        lines = ["*mangle", *_base_chains("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
                 ":KUBE-KUBELET-CANARY - [0:0]", ":KUBE-PROXY-CANARY - [0:0]",
                 *self._user_chain_lines("mangle")]
        return [*lines, *self._user("mangle"), "COMMIT"]

    def _filter(self) -> list[str]:
        chains = ["KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD", "KUBE-KUBELET-CANARY",
                  "KUBE-NODEPORTS", "KUBE-PROXY-CANARY", "KUBE-PROXY-FIREWALL", "KUBE-SERVICES"]
        lines = ["*filter", ":INPUT ACCEPT [0:0]", f":FORWARD {self.forward_policy} [0:0]",
                 ":OUTPUT ACCEPT [0:0]", *[f":{c} - [0:0]" for c in chains],
                 *self._user_chain_lines("filter")]
        lines += _FILTER_JUMPS
        lines.append('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" '
                     "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")
        if self.legacy:
            lines.append('-A KUBE-FIREWALL -m comment --comment "kubernetes firewall for dropping '
                         f'marked packets" -m mark --mark {DROP_MARK}/{DROP_MARK} -j DROP')
        for svc in self.services:
            lines += self._filter_service(svc)
        if self.kube_forward_accepts:
            lines += [
                "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
                ('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" '
                f"-m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"),
                ('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
            ]
        return [*lines, *self._user("filter"), "COMMIT"]

    def _nat(self) -> list[str]:
        chains = ["KUBE-KUBELET-CANARY", "KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
                  "KUBE-PROXY-CANARY", "KUBE-SERVICES"]
        if self.legacy:
            chains.append("KUBE-MARK-DROP")
        rules: list[str] = [
            '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
            '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
            f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
            ('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully"),
            f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
        ]
        if self.legacy:
            rules.append(f"-A KUBE-MARK-DROP -j MARK --or-mark {DROP_MARK}")
        for svc in self.services:
            svc_chains, svc_rules = self._nat_service(svc)
            chains += svc_chains
            rules += svc_rules
        nodeports = ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: '
                     'this must be the last rule in this chain" -m addrtype --dst-type LOCAL')
        if not self.localhost_nodeports:
            nodeports += " ! -d 127.0.0.0/8"
        rules.append(nodeports + " -j KUBE-NODEPORTS")
        lines = ["*nat", *_base_chains("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
                 *[f":{c} - [0:0]" for c in dict.fromkeys(chains)], *self._user_chain_lines("nat"),
                 *rules]
        return [*lines, *self._user("nat"), "COMMIT"]

    def _user(self, table: str) -> list[str]:
        return [r.line for r in self.user_rules if r.table == table]

    def _user_chain_lines(self, table: str) -> list[str]:
        return [f":{c} - [0:0]" for t, c in self.user_chains if t == table]

    # -- per service ------------------------------------------------------------------------------

    def _filter_service(self, svc: Service) -> list[str]:
        has_eps = bool(svc.endpoints)
        has_ext_eps = has_eps and (not svc.external_policy_local or bool(svc.local_endpoints))
        target, comment = "REJECT", f'"{svc.port_name_string} has no endpoints"'
        if has_eps:
            target, comment = "DROP", f'"{svc.port_name_string} has no local endpoints"'
        p = svc.protocol
        lines = []
        if not has_eps:
            lines.append(f"-A KUBE-SERVICES -m comment --comment {comment} -m {p} -p {p} "
                         f"-d {svc.cluster_ip} --dport {svc.port} -j REJECT")
        # The legacy layout drops through KUBE-MARK-DROP in nat instead of in filter.
        if not has_ext_eps and not (self.legacy and has_eps):
            for ip in [*svc.external_ips, *svc.lb_ips]:
                lines.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} -m {p} "
                             f"-p {p} -d {ip} --dport {svc.port} -j {target}")
            if svc.node_port:
                lines.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} -m addrtype "
                             f"--dst-type LOCAL -m {p} -p {p} --dport {svc.node_port} -j {target}")
        if svc.health_check_node_port:
            lines.append(f'-A KUBE-NODEPORTS -m comment --comment "{svc.port_name_string} health '
                         f'check node port" -m tcp -p tcp --dport {svc.health_check_node_port} -j ACCEPT')
        return lines

    def _nat_service(self, svc: Service) -> tuple[list[str], list[str]]:
        if not svc.endpoints:
            return [], []  # only the filter REJECT rules exist for such a service
        name, p = svc.port_name_string, svc.protocol
        local_eps = svc.local_endpoints
        ext_target = svc.xlb_chain if self.legacy and svc.external_policy_local else svc.ext_chain
        chains = [svc.svc_chain]
        rules = [(f'-A KUBE-SERVICES -m comment --comment "{name} cluster IP" -m {p} -p {p} '
                 f"-d {svc.cluster_ip} --dport {svc.port} -j {svc.svc_chain}")]
        for ip in svc.external_ips:
            rules.append(f'-A KUBE-SERVICES -m comment --comment "{name} external IP" -m {p} -p {p} '
                         f"-d {ip} --dport {svc.port} -j {ext_target}")
        for ip in svc.lb_ips:
            rules.append(f'-A KUBE-SERVICES -m comment --comment "{name} loadbalancer IP" -m {p} '
                         f"-p {p} -d {ip} --dport {svc.port} -j {ext_target}")
        if svc.node_port:
            rules.append(f"-A KUBE-NODEPORTS -m comment --comment {name} -m {p} -p {p} "
                         f"--dport {svc.node_port} -j {ext_target}")
        rules.append(f'-A {svc.svc_chain} -m comment --comment "{name} cluster IP" -m {p} -p {p} '
                     f"-d {svc.cluster_ip} --dport {svc.port} ! -s {self.cluster_cidr} -j KUBE-MARK-MASQ")
        if svc.externally_accessible:
            chains.append(ext_target)
            rules += (self._xlb_rules(svc) if ext_target == svc.xlb_chain else self._ext_rules(svc))
        rules += _balance(svc, svc.svc_chain, svc.endpoints)
        if svc.external_policy_local and local_eps:
            chains.append(svc.svl_chain)
            rules += _balance(svc, svc.svl_chain, local_eps)
        for ep in svc.endpoints:
            sep = svc.sep_chain(ep)
            chains.append(sep)
            rules += [f"-A {sep} -m comment --comment {name} -s {ep.ip} -j KUBE-MARK-MASQ",
                      (f"-A {sep} -m comment --comment {name} -m {p} -p {p} -j DNAT "
                      f"--to-destination {ep}")]
        return chains, rules

    def _ext_rules(self, svc: Service) -> list[str]:
        name, ext = svc.port_name_string, svc.ext_chain
        if not svc.external_policy_local:
            return [(f'-A {ext} -m comment --comment "masquerade traffic for {name} external '
                    f'destinations" -j KUBE-MARK-MASQ'), f"-A {ext} -j {svc.svc_chain}"]
        rules = [
            (f'-A {ext} -m comment --comment "pod traffic for {name} external destinations" '
            f"-s {self.cluster_cidr} -j {svc.svc_chain}"),
            (f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {name} external '
            f'destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ'),
            (f'-A {ext} -m comment --comment "route LOCAL traffic for {name} external '
            f'destinations" -m addrtype --src-type LOCAL -j {svc.svc_chain}'),
        ]
        if svc.local_endpoints:
            rules.append(f"-A {ext} -j {svc.svl_chain}")
        return rules

    def _xlb_rules(self, svc: Service) -> list[str]:
        name, xlb = svc.port_name_string, svc.xlb_chain
        rules = [
            (f'-A {xlb} -m comment --comment "Redirect pods trying to reach external loadbalancer '
            f'VIP to clusterIP" -s {self.cluster_cidr} -j {svc.svc_chain}'),
            (f'-A {xlb} -m comment --comment "masquerade LOCAL traffic for {name} LB IP" '
            f"-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"),
            (f'-A {xlb} -m comment --comment "route LOCAL traffic for {name} LB IP to service '
            f'chain" -m addrtype --src-type LOCAL -j {svc.svc_chain}'),
        ]
        if svc.local_endpoints:
            return rules + _balance(svc, xlb, svc.local_endpoints, svl=False)
        return rules + [(f'-A {xlb} -m comment --comment "{name} has no local endpoints" '
                        "-j KUBE-MARK-DROP")]


def _base_chains(*names: str) -> list[str]:
    return [f":{n} ACCEPT [0:0]" for n in names]


def _balance(svc: Service, chain: str, eps: list[Endpoint], svl: bool = True) -> list[str]:
    """kube-proxy's load balancing: rule i matches with probability 1/(n-i), the last always."""
    rules = []
    for i, ep in enumerate(eps):
        rule = f'-A {chain} -m comment --comment "{svc.port_name_string} -> {ep}"'
        if i < len(eps) - 1:
            rule += f" -m statistic --mode random --probability {1.0 / (len(eps) - i):0.10f}"
        rules.append(f"{rule} -j {svc.sep_chain(ep)}")
    return rules


# kube-proxy prepends each jump with `iptables -I`, so the final order is the reverse of the
# order it ensures them in; this is the resulting order (kubelet's KUBE-FIREWALL came first).
_FILTER_JUMPS = [
    '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
    '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
    '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
    "-A INPUT -j KUBE-FIREWALL",
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
    '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
    '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
    '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    "-A OUTPUT -j KUBE-FIREWALL",
]


# ---------------------------------------------------------------------------------------------
# Random kube-proxy-like rulesets for the property test


@dataclass
class RandomCase:
    ruleset: NodeRuleset
    probes: list[netns.Flow]


_TARGET_PORTS = {"tcp": [p for proto, p in netns.POD_PORTS if proto == "tcp"],
                 "udp": [p for proto, p in netns.POD_PORTS if proto == "udp"]}


def random_case(seed: int, n_probes: int = 4) -> RandomCase:
    """A seeded random node: services with 0-3 endpoints, NodePorts, user DROPs, and probes."""
    rng = random.Random(seed)
    pods = [(ip, name not in ("pod-a",)) for name, ip in netns.LOCAL_PODS.items()]
    services: list[Service] = []
    used_ports: set[int] = set()
    for i in range(rng.randint(2, 4)):
        proto = rng.choice(["tcp", "tcp", "udp"])
        n_eps = rng.choice([0, 1, 1, 2, 3])
        target = rng.choice(_TARGET_PORTS[proto])
        candidates = [ip for ip, ok in pods if ok] + list(netns.REMOTE_PODS.values())
        eps = [Endpoint(ip, target, local=ip.startswith("10.244.1."))
               for ip in rng.sample(candidates, k=min(n_eps, len(candidates)))]
        node_port = None
        if rng.random() < 0.6:
            node_port = rng.choice([p for p in range(30000, 30100) if p not in used_ports])
            used_ports.add(node_port)
        external = rng.random() < 0.3
        services.append(Service(
            namespace=rng.choice(["default", "shop", "kube-system"]), name=f"svc{i}",
            cluster_ip=f"10.96.{rng.randint(0, 200)}.{10 + i}", port=rng.choice([80, 443, 53, 8080]),
            endpoints=eps, protocol=proto, node_port=node_port,
            external_ips=[f"198.51.100.{10 + i}"] if external and rng.random() < 0.5 else [],
            lb_ips=[f"198.51.100.{50 + i}"] if external else [],
            external_policy_local=(node_port is not None or external) and rng.random() < 0.3,
        ))
    ruleset = NodeRuleset(services=services, forward_policy=rng.choice(["ACCEPT", "ACCEPT", "DROP"]))
    _add_random_user_rules(rng, ruleset)
    probes = [_random_probe(rng, services) for _ in range(n_probes)]
    return RandomCase(ruleset, probes)


def _add_random_user_rules(rng: random.Random, ruleset: NodeRuleset) -> None:
    """Rules other actors put ahead of kube-proxy's: admin DROP/REJECT, a CNI hostPort DNAT."""
    rules = ruleset.user_rules
    if rng.random() < 0.4:
        victim = rng.choice(list(netns.LOCAL_PODS.values())[1:])
        rules.append(UserRule("filter", f"-I FORWARD 1 -d {victim}/32 -j DROP"))
    if rng.random() < 0.25:
        rules.append(UserRule("filter", f"-I FORWARD 1 -s {netns.EXTERNAL_CLIENT_IP}/32 -p tcp -j DROP"))
    if rng.random() < 0.25:
        rules.append(UserRule("filter", "-I INPUT 1 -p tcp --dport 10250 -j DROP"))
    if rng.random() < 0.2:
        rules.append(UserRule("filter", "-I INPUT 1 -p tcp --dport 10255 -j REJECT --reject-with tcp-reset"))
    node_ports = [s.node_port for s in ruleset.services if s.node_port and s.protocol == "tcp"]
    if node_ports and rng.random() < 0.3:
        # The CNI portmap plugin's hostPort DNAT runs before KUBE-SERVICES and shadows a NodePort.
        ruleset.user_chains.append(("nat", "CNI-HOSTPORT-DNAT"))
        rules.append(UserRule("nat", "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"))
        rules.append(UserRule("nat", f"-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport {rng.choice(node_ports)} "
                                     f"-j DNAT --to-destination {netns.LOCAL_PODS['pod-c']}:9090"))


def _random_probe(rng: random.Random, services: list[Service]) -> netns.Flow:
    """A probe the lab can observe end to end: every destination it picks has a listener or a
    rule that stops it, and no source is one the receiving pod would discard as martian."""
    svc = rng.choice(services)
    other_pods = list(netns.LOCAL_PODS.values())[1:]
    client = rng.choice(["pod-a", "world", "node", "loopback"])
    roll = rng.random()
    if client == "world":
        src = netns.EXTERNAL_CLIENT_IP
        vips = svc.external_ips + svc.lb_ips
        if vips and roll < 0.4:
            return netns.Flow("world", src, rng.choice(vips), svc.port, svc.protocol)
        if svc.node_port and roll < 0.7:
            return netns.Flow("world", src, netns.NODE_IP, svc.node_port, svc.protocol)
        if roll < 0.78:
            return netns.Flow("world", src, svc.cluster_ip, svc.port, svc.protocol)
        if roll < 0.88:
            return netns.Flow("world", src, rng.choice(other_pods), 8080, "tcp")
        return netns.Flow("world", src, netns.NODE_IP, rng.choice([10250, 10255]), "tcp")
    if client == "loopback":
        if svc.node_port:
            return netns.Flow("node", "127.0.0.1", "127.0.0.1", svc.node_port, svc.protocol)
        return netns.Flow("node", "127.0.0.1", svc.cluster_ip, svc.port, svc.protocol)
    src = netns.LOCAL_PODS["pod-a"] if client == "pod-a" else netns.NODE_IP
    vips = svc.external_ips + svc.lb_ips
    if vips and roll > 0.8:
        return netns.Flow(client, src, rng.choice(vips), svc.port, svc.protocol)
    if svc.node_port and roll < 0.3:
        return netns.Flow(client, src, netns.NODE_IP, svc.node_port, svc.protocol)
    if client == "pod-a" and roll < 0.45:
        return netns.Flow(client, src, rng.choice(other_pods), 8080, "tcp")
    return netns.Flow(client, src, svc.cluster_ip, svc.port, svc.protocol)
