"""What the IPVS checks (KPT301-KPT305) share: is the node in IPVS mode, kube-ipvs0, services and set entries.

kube-proxy's IPVS mode leaves four traces a bundle can hold: virtual services (`ipvsadm -Ln`), the
dummy device kube-ipvs0 holding the Service addresses (`ip addr`), iptables rules matching its
ipsets (`-m set --match-set KUBE-CLUSTER-IP dst,dst`, chains KUBE-IPVS-FILTER/-OUT-FILTER) and the
ipsets themselves (`KUBE-CLUSTER-IP`; `KUBE-6-CLUSTER-IP` for IPv6, kube-proxy's ipset.go). Any one
of them is taken as IPVS mode. node.yaml's `proxy_mode` would be a fifth, but load.py does not
keep it (TODO(load.py): `Node.proxy_mode`).
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from kptrace.checks.facts import CheckContext, rule_texts
from kptrace.checks.registry import Outcome, fail, missing, passed
from kptrace.model.finding import Location
from kptrace.model.flow import IPAddress
from kptrace.model.ipvs import IpsetMember, IpsetSet, IpvsService, SetPort
from kptrace.model.node import Address, Node
from kptrace.model.source import Source

KUBE_IPVS0 = "kube-ipvs0"
# kube-proxy's hash:ip,port sets of Service addresses; the IPv6 proxier names them KUBE-6-… (ipset.go).
CLUSTER_IP = "KUBE-CLUSTER-IP"
EXTERNAL_SETS = ("KUBE-EXTERNAL-IP", "KUBE-EXTERNAL-IP-LOCAL", "KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER-LOCAL")
IPVS_IPS = "KUBE-IPVS-IPS"

MAX_LISTED = 10  # FAILs of one kind reported one by one; the rest in one more

ServiceKey = tuple[IPAddress, str, int]  # (VIP, protocol, port): a virtual service, or an ip,port set entry


def set_name(base: str, family: int) -> str:
    """`KUBE-CLUSTER-IP` for IPv4, `KUBE-6-CLUSTER-IP` for IPv6."""
    return base if family == 4 else "KUBE-6-" + base.removeprefix("KUBE-")


def ipvs_evidence(ctx: CheckContext) -> tuple[str, Source | None] | None:
    """What shows kube-proxy runs in IPVS mode here (with the line that shows it), or None."""
    node = ctx.node
    assert node is not None
    if node.ipvs:
        return f"ipvsadm lists {len(node.ipvs)} virtual service(s)", node.ipvs[0].source
    vips = vip_addresses(node)
    if vips:
        return "kube-ipvs0 holds Service addresses", vips[0].source
    link = next((lk for lk in node.links if lk.name == KUBE_IPVS0), None)
    if link is not None:
        return "kube-ipvs0 exists", link.source
    for t in rule_texts(ctx):
        for needle, at_start in ((f"--match-set {CLUSTER_IP} ", False),
                                 (f"--match-set {set_name(CLUSTER_IP, 6)} ", False), (":KUBE-IPVS-", True)):
            found = _find_line(t.text, needle, at_start)
            if found is not None:
                n, line = found
                return "kube-proxy's IPVS-mode iptables rules", t.source(n, line)
    for base in (CLUSTER_IP, IPVS_IPS):
        for fam in (4, 6):
            s = (node.ipsets or {}).get(set_name(base, fam))
            if s is not None:
                return f"ipset {s.name} exists", s.source
    return None


def ipvs_gate(ctx: CheckContext, inputs: dict[str, bool]) -> tuple[tuple[str, Source | None] | None, Outcome | None]:
    """The opening every IPVS check shares: (evidence of IPVS mode, None) when the check can run, else
    (None, the outcome to report): not IPVS mode (PASS), or bundle files it needs are missing.
    `inputs` maps each needed file to whether the input has it."""
    evidence = ipvs_evidence(ctx)
    if evidence is None:
        return None, not_ipvs(ctx)
    absent = [name for name, have in inputs.items() if not have]
    if absent:
        return None, missing(*absent, why=f"IPVS mode: {evidence[0]}")
    return evidence, None


def not_ipvs(ctx: CheckContext) -> Outcome:
    """The PASS of a node that shows no sign of IPVS mode, saying what was looked for."""
    iptables_mode = any(":KUBE-SVC-" in t.text for t in rule_texts(ctx))
    # Only the whole rules prove the absence of KUBE-IPVS-* chains and set matches.
    return passed("not in IPVS mode: no IPVS virtual service, no kube-ipvs0, no KUBE-IPVS-* chain and no "
                  "KUBE-CLUSTER-IP set or rule matching it"
                  + ("; kube-proxy's iptables-mode KUBE-SVC-* chains are there" if iptables_mode else ""),
                  needs=("rules",))


def capped(fails: list[Outcome], more: str) -> list[Outcome]:
    """The first MAX_LISTED FAILs, then one FAIL for the rest: a node without kube-ipvs0 would list every Service."""
    if len(fails) <= MAX_LISTED:
        return fails
    rest = fails[MAX_LISTED:]
    where: list[Location] = [loc for o in rest[:MAX_LISTED] for loc in o.locations[:1]]
    return [*fails[:MAX_LISTED], fail(f"and {len(rest)} more {more}", *where)]


def ipvs_filter_reject(ctx: CheckContext) -> Source | None:
    """kube-proxy's (v1.26+) KUBE-IPVS-FILTER REJECT of new connections to a Service address on a port no Service has."""
    sets = (f"--match-set {IPVS_IPS} ", f"--match-set {set_name(IPVS_IPS, 6)} ")
    for t in rule_texts(ctx):
        if "-A KUBE-IPVS-FILTER " not in t.text:
            continue
        for n, line in enumerate(t.text.split("\n"), start=1):
            rule = line[line.find("] ") + 2:] if line.startswith("[") else line  # `iptables-save -c` counters
            if rule.startswith("-A KUBE-IPVS-FILTER ") and " -j REJECT" in rule and any(m in rule for m in sets):
                return t.source(n, line.rstrip("\r"))
    return None


def _find_line(text: str, needle: str, at_start: bool = False) -> tuple[int, str] | None:
    """(line number, line) of needle's first occurrence (at a line's start, with at_start)."""
    if at_start and text.startswith(needle):
        i = 0
    else:
        i = text.find("\n" + needle if at_start else needle)
        if i < 0:
            return None
        i += 1 if at_start else 0
    start = text.rfind("\n", 0, i) + 1
    end = text.find("\n", i)
    return text.count("\n", 0, i) + 1, text[start:end if end >= 0 else len(text)].rstrip("\r")


def vip_addresses(node: Node) -> list[Address]:
    """kube-ipvs0's addresses (not link-local)."""
    return [a for a in node.addresses if a.iface == KUBE_IPVS0 and a.scope != "link"]


def own_addresses(node: Node) -> dict[IPAddress, Address]:
    """Addresses on the node's other interfaces (eth0, cni0, flannel.1, lo, …), not link-local: first one wins."""
    out: dict[IPAddress, Address] = {}
    for a in node.addresses:
        if a.iface != KUBE_IPVS0 and a.scope != "link":
            out.setdefault(a.address.ip, a)
    return out


def service_key(vs: IpvsService) -> ServiceKey | None:
    """(VIP, protocol, port) of an address:port virtual service; None for fwmark or unresolved ones."""
    if vs.fwmark is not None or vs.address is None or vs.port is None:
        return None
    return vs.address, vs.protocol.lower(), vs.port


def show(key: ServiceKey) -> str:
    ip, proto, port = key
    return f"{proto.upper()} {'[' + str(ip) + ']' if ip.version == 6 else ip}:{port}"


def ip_port_entries(s: IpsetSet | None) -> dict[ServiceKey, IpsetMember]:
    """The (address, protocol, port) entries of a hash:ip,port set such as KUBE-CLUSTER-IP."""
    out: dict[ServiceKey, IpsetMember] = {}
    if s is None or s.dimensions[:2] != ("ip", "port"):
        return out
    for m in s.members:
        if len(m.parts) < 2 or m.nomatch:
            continue
        net, port = m.parts[0], m.parts[1]
        if not isinstance(net, (IPv4Network, IPv6Network)) or not isinstance(port, SetPort) or port.proto is None:
            continue
        if net.num_addresses == 1:
            out.setdefault((net.network_address, port.proto.lower(), port.port), m)
    return out


def ip_entries(s: IpsetSet | None) -> dict[IPAddress, IpsetMember]:
    """The single addresses of a hash:ip set such as KUBE-IPVS-IPS."""
    out: dict[IPAddress, IpsetMember] = {}
    if s is None:
        return out
    for m in s.members:
        net = m.parts[0] if m.parts else None
        if isinstance(net, (IPv4Network, IPv6Network)) and net.num_addresses == 1 and not m.nomatch:
            out.setdefault(net.network_address, m)
    return out
