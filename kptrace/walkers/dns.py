"""The DNS path of a pod, hop by hop: pod -> kube-dns Service (udp and tcp 53) -> CoreDNS endpoint ->
its upstream servers (from the resolv.conf kubelet gave CoreDNS), each hop traced with the usual tracer.

What decides each hop:

- **Which resolv.conf CoreDNS gets.** CoreDNS runs with `dnsPolicy: Default`, so kubelet gives it a copy
  of the file named by its `resolvConf` setting (config file) or `--resolv-conf` flag, default
  `/etc/resolv.conf`, truncated to 3 nameservers. `kubelet_resolv` says which of the node's files that is,
  or why it is not known. The default Corefile forwards what it does not serve to those servers
  (`forward . /etc/resolv.conf`); kptrace assumes it and says so.
- **Where CoreDNS runs.** An endpoint on a node's pod subnet is a pod with its own network namespace: a
  loopback upstream (127.0.0.53) is that pod's own loopback, where CoreDNS itself listens, and the
  query never leaves the pod (the loop its `loop` plugin reports). An endpoint that is a node address
  (hostNetwork) shares the node's namespace: the query is traced from the node and ends on the node
  itself (local delivery) or leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address

from kptrace.model.flow import Flow, IPAddress
from kptrace.model.node import Node
from kptrace.model.observed import KubeletDNS, ResolvConf
from kptrace.model.source import Source
from kptrace.model.trace import Disposition, Trace
from kptrace.parsers.dns_files import ETC_RESOLV, SYSTEMD_RESOLV, SYSTEMD_STUB

MAX_NAMESERVERS = 3  # glibc's MAXNS; kubelet keeps this many (validation.MaxDNSNameservers)
STUB = ip_address("127.0.0.53")  # systemd-resolved's stub listener
CLUSTER_DOMAIN = "cluster.local"  # kubelet's clusterDomain when the input does not say


def server_ip(text: str) -> IPAddress | None:
    try:
        return ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def is_loopback(text: str) -> bool:
    ip = server_ip(text)
    return ip is not None and ip.is_loopback


def node_files(node: Node) -> list[ResolvConf]:
    """The node's own resolv.conf files in the input (not a pod's read with kubectl exec)."""
    return [rc for rc in node.resolv_conf if rc.whose is None]


def pod_files(node: Node) -> list[ResolvConf]:
    return [rc for rc in node.resolv_conf if rc.whose is not None]


def file_at(node: Node, path: str) -> ResolvConf | None:
    """The node's copy of `path`; a copy whose path was not said counts as /etc/resolv.conf (`cat` of it)."""
    files = node_files(node)
    exact = next((rc for rc in files if rc.path == path), None)
    if exact is not None or path != ETC_RESOLV:
        return exact
    return next((rc for rc in files if rc.path is None), None)


@dataclass(frozen=True, slots=True)
class KubeletResolv:
    """The resolv.conf kubelet hands `dnsPolicy: Default` pods (CoreDNS) and hostNetwork ClusterFirst pods.

    `file`: the node's copy of it, when the input has one (`stub`: it is systemd-resolved's stub file,
    whose only server is 127.0.0.53 by definition). `setting`: where kubelet's setting was read (None:
    not in the input). `candidates`: when kubelet's setting is not in the input, the node's files it may
    be (its default /etc/resolv.conf, and systemd-resolved's file kubeadm chooses when resolved runs).
    """

    path: str | None
    setting: Source | None
    file: ResolvConf | None = None
    stub: bool = False
    candidates: tuple[ResolvConf, ...] = ()
    unknown: str | None = None  # why the file is not known, and what would settle it
    default: bool = False  # kubelet's default applies (no resolvConf key, no flag)
    notes: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return self.unknown is None and (self.file is not None or self.stub or self.path == "")

    def servers(self) -> list[tuple[str, Source | None]]:
        """The upstream servers the pods get (kubelet keeps the first 3), each with its line."""
        if self.stub and self.file is None:
            return [(str(STUB), self.setting)]
        if self.file is None:
            return []
        srcs = list(self.file.nameserver_sources) + [None] * len(self.file.nameservers)
        return [(s, srcs[i] or self.file.source) for i, s in enumerate(self.file.nameservers)]


def kubelet_setting(node: Node) -> KubeletDNS | None:
    if not node.kubelet_dns:
        return None
    from kptrace.parsers.kubelet import effective

    return effective(node.kubelet_dns)


def kubelet_resolv(node: Node) -> KubeletResolv:
    """Which file kubelet reads for the pods' upstream servers, and the node's copy of it."""
    k = kubelet_setting(node)
    if k is not None:
        configs = [s for s in node.kubelet_dns or [] if s.origin == "config"]
        src: Source | None
        if k.resolv_conf is not None:
            path, src = k.resolv_conf
            default = False
        elif configs or k.config_path is None:
            # A config file without `resolvConf` (or a command line without --config): kubelet's default.
            path, default = ETC_RESOLV, True
            # Said by the config file as a whole (its line 1), or by the command line that names no --config.
            src = configs[-1].source if configs else k.source
        else:
            return KubeletResolv(None, k.config_path[1] if k.config_path else None,
                                 unknown=f"kubelet reads its settings from {k.config_path[0]}, which the input does not hold "
                                         f"(give kubelet-config.yaml)")
        notes: tuple[str, ...] = ()
        if not any(s.origin == "flags" for s in node.kubelet_dns or []):
            notes = ("kubelet's command line is not in the input (kubelet-cmdline.txt): a --resolv-conf flag there "
                     "would override the config file",)
        if path == "":
            return KubeletResolv("", src, notes=("kubelet's resolvConf is empty: pods get no nameserver from the node",
                                                 *notes))
        rc = file_at(node, path)
        if rc is not None:
            return KubeletResolv(path, src, rc, default=default, notes=notes)
        if path == SYSTEMD_STUB:
            return KubeletResolv(path, src, None, stub=True, default=default, notes=notes)
        return KubeletResolv(path, src, default=default, notes=notes,
                             unknown=f"kubelet reads {path} ({src}), which the input does not hold")
    # kubelet's setting is not in the input: the files it may read.
    etc = file_at(node, ETC_RESOLV)
    systemd = file_at(node, SYSTEMD_RESOLV)
    cands = tuple(rc for rc in (etc, systemd) if rc is not None)
    why = "kubelet's resolvConf is not in the input (give kubelet-config.yaml or kubelet-cmdline.txt)"
    if systemd is None and "systemd-resolved-resolv.conf" not in node.absent and etc is not None and \
            any(server_ip(s) == STUB for s in etc.nameservers):
        # /etc/resolv.conf is resolved's stub: kubeadm then points kubelet at resolved's own file, unseen here.
        return KubeletResolv(None, None, candidates=cands,
                             unknown=f"{why}; /etc/resolv.conf is systemd-resolved's stub, and kubeadm points kubelet at "
                                     f"{SYSTEMD_RESOLV} then (give systemd-resolved-resolv.conf)")
    return KubeletResolv(None, None, candidates=cands, unknown=why)


# --- the Service, its endpoints, and where CoreDNS runs ----------------------------------------------------


def cluster_domain(node: Node) -> tuple[str, Source | None, bool]:
    """kubelet's clusterDomain (with the line that says it), or cluster.local (False: assumed)."""
    k = kubelet_setting(node)
    if k is not None and k.cluster_domain is not None and k.cluster_domain[0]:
        return k.cluster_domain[0].strip("."), k.cluster_domain[1], True
    return CLUSTER_DOMAIN, None, False


@dataclass(frozen=True, slots=True)
class DnsService:
    """The cluster DNS Service as the node's proxy rules show it: its address, ports and endpoints."""

    ip: IPAddress
    how: str  # where the address came from
    name: str | None = None  # "kube-system/kube-dns"
    endpoints: tuple[str, ...] = ()  # "10.244.1.7:53"
    sources: tuple[str, ...] = ()


def dns_service(nodes: list[Node], given: str | None = None) -> DnsService | None:
    """The kube-dns Service: --dns-ip, else kubelet's clusterDNS, else a pod's nameserver, else the rules'
    kube-system/kube-dns Service."""
    from kptrace.services import collect

    services = [s for s in collect(nodes) if s.protocol in ("udp", "tcp")]

    def with_ip(ip: IPAddress, how: str) -> DnsService:
        svc = [s for s in services if str(ip) in s.cluster_ips and s.port == 53]
        eps = tuple(dict.fromkeys(e.address for s in svc for e in s.endpoints))
        name = f"{svc[0].namespace}/{svc[0].name}" if svc else None
        return DnsService(ip, how, name, eps, tuple(x for s in svc for x in s.sources[:2]))

    if given is not None:
        return with_ip(ip_address(given), "--dns-ip")
    for node in nodes:
        k = kubelet_setting(node)
        for value, src in k.cluster_dns if k else ():
            ip = server_ip(value)
            if ip is not None:
                return with_ip(ip, f"kubelet's clusterDNS ({src})")
    for node in nodes:
        for rc in pod_files(node):
            for i, value in enumerate(rc.nameservers):
                ip = server_ip(value)
                if ip is not None:
                    src = rc.nameserver_sources[i] if i < len(rc.nameserver_sources) else rc.source
                    return with_ip(ip, f"{rc.whose}'s nameserver ({src})")
    for s in services:
        if (s.namespace, s.name) == ("kube-system", "kube-dns") and s.cluster_ips:
            return with_ip(ip_address(s.cluster_ips[0]), f"kube-system/kube-dns in the proxy rules ({s.sources[0] if s.sources else '?'})")
    return None


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an endpoint runs: on which node of the input, and in a pod's own namespace or the node's."""

    node: Node | None
    host_network: bool = False
    why: str = ""


def place(ip: IPAddress, nodes: list[Node]) -> Placement:
    from kptrace.checks.facts import local_pod_subnets

    for n in nodes:
        if ip in n.local_addresses():
            return Placement(n, True, f"{ip} is an address of {n.name} (a hostNetwork pod)")
    for n in nodes:
        for net in local_pod_subnets(n):
            if net.version == ip.version and ip in net:
                return Placement(n, False, f"{ip} is in {n.name}'s pod subnet {net}")
    return Placement(None, False, f"no node of the input holds {ip} or its pod subnet")


def endpoint_ip(ep: str) -> IPAddress | None:
    host = ep.rsplit(":", 1)[0] if ep.count(":") == 1 or ep.startswith("[") else ep
    return server_ip(host.strip("[]"))


def coredns_on(node: Node, nodes: list[Node]) -> tuple[bool | None, bool, str]:
    """Does a kube-dns endpoint run on `node` (None: the input does not show kube-dns's endpoints), is it
    a hostNetwork one (in the node's own network namespace), and what says so."""
    svc = dns_service(nodes)
    if svc is None or not svc.endpoints:
        return None, False, "the input shows no kube-dns endpoints"
    here = [(e, p) for e in svc.endpoints if (ip := endpoint_ip(e)) is not None and (p := place(ip, [node])).node is node]
    pods = [e for e, p in here if not p.host_network]
    if pods:
        return True, False, f"{svc.name or svc.ip}'s endpoint {pods[0]} runs on this node"
    if here:
        return True, True, f"{svc.name or svc.ip}'s endpoint {here[0][0]} is this node's own address (hostNetwork)"
    return False, False, f"{svc.name or svc.ip}'s endpoints ({', '.join(svc.endpoints[:3])}) are not on this node"


# --- the trace ---------------------------------------------------------------------------------------------


OK, FAIL, UNKNOWN, LOCAL = "ok", "fail", "unknown", "local"


@dataclass(frozen=True, slots=True)
class Hop:
    """One hop of the DNS path, with the packet trace that decides it (None: decided without one)."""

    kind: str  # "service" | "endpoint" | "upstream" | "name"
    name: str  # "pod -> kube-dns 10.96.0.10:53/udp", "CoreDNS 10.244.1.7 -> upstream 127.0.0.53:53/udp"
    status: str  # ok | fail | unknown | local (ends on the node itself or in the pod itself)
    summary: str
    fate: str | None = None  # upstream: routed-out | loopback-pod | loopback-node | node-local | coredns-loop | …
    trace: Trace | None = None
    node: str | None = None
    cites: tuple[str, ...] = ()


@dataclass(slots=True)
class DnsTrace:
    client: IPAddress
    node: str
    service: DnsService | None
    hops: list[Hop] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    queries: list[tuple[str, str]] = field(default_factory=list)  # (name tried, who answers it)
    resolv: KubeletResolv | None = None

    @property
    def failing(self) -> Hop | None:
        return next((h for h in self.hops if h.status == FAIL), None)

    @property
    def status(self) -> str:
        if self.failing is not None:
            return FAIL
        if any(h.status == UNKNOWN for h in self.hops) or not self.hops:
            return UNKNOWN
        return OK


def _trace(node: Node, flow: Flow, cluster: list[Node], notes: tuple[str, ...] = ()) -> Trace:
    from kptrace.walkers.netfilter import trace_flow

    return trace_flow(node, flow, cluster, notes)


def _verdict(t: Trace) -> str:
    d = t.disposition
    if d.failed or any(b.reply_failed for b in t.branches):
        return FAIL
    if d in (Disposition.UNDETERMINED, Disposition.MIXED):
        return FAIL if any(b.disposition.failed for b in t.branches) else UNKNOWN
    return OK


def _cites(t: Trace) -> tuple[str, ...]:
    """The steps that decided a trace: its DNATs (which endpoint), then the last step of each branch."""
    out: list[str] = []
    for b in t.branches:
        for s in b.steps:
            if s.action == "DNAT" and s.source and s.source not in out:
                out.append(s.source)
    for b in t.branches:
        last = next((s.source for s in reversed(b.steps) if s.source), None)
        if last and last not in out:
            out.append(last)
    return tuple(out[:4])


def trace_dns(cluster: list[Node], start: Node, client: IPAddress, dns_ip: str | None = None,
              name: str | None = None) -> DnsTrace:
    """The DNS path from `client` on `start`: both transports to the Service, then each CoreDNS endpoint
    and its upstream servers."""
    svc = dns_service(cluster, dns_ip)
    out = DnsTrace(client, start.name, svc)
    if svc is None:
        out.hops.append(Hop("service", "pod -> cluster DNS", UNKNOWN,
                            "the input does not say the cluster DNS address (no kubelet clusterDNS, no pod resolv.conf, "
                            "no kube-system/kube-dns Service in the proxy rules): give --dns-ip"))
        return out
    out.notes.append(f"cluster DNS {svc.ip} from {svc.how}" + (f" (Service {svc.name})" if svc.name else ""))
    endpoints: list[str] = []
    for proto in ("udp", "tcp"):
        t = _trace(start, Flow(client, svc.ip, proto, None, 53), cluster)
        verdict = _verdict(t)
        eps = t.endpoints
        endpoints += [e for e in eps if e not in endpoints]
        what = f"{t.disposition.value}" + (f", DNAT to {', '.join(eps)}" if eps else "")
        out.hops.append(Hop("service", f"{client} -> {svc.ip}:53/{proto}", verdict, what, None, t, start.name, _cites(t)))
    if name is not None:
        out.queries = _queries(name, start, out)
    eps_ips = [(e, ip) for e in endpoints if (ip := endpoint_ip(e)) is not None]
    if not eps_ips:
        if all(h.status == OK for h in out.hops):
            out.hops.append(Hop("endpoint", "CoreDNS endpoint", UNKNOWN,
                                "the Service trace reaches no endpoint address: which CoreDNS answers is not known"))
        return out
    if out.queries and all(who == "CoreDNS" for _, who in out.queries):
        out.notes.append(f"{name} is a cluster name: CoreDNS answers it without asking upstream")
        for e, ip in eps_ips:
            p = place(ip, cluster)
            out.hops.append(Hop("endpoint", f"CoreDNS {e}", OK if p.node else UNKNOWN, p.why, node=p.node.name if p.node else None))
        return out
    coredns = {ip for _, ip in eps_ips}
    for e, ip in eps_ips:
        p = place(ip, cluster)
        out.hops.append(Hop("endpoint", f"CoreDNS {e}", OK if p.node else UNKNOWN, p.why,
                            node=p.node.name if p.node else None))
        if p.node is None:
            continue
        _upstreams(out, p, ip, cluster, coredns)
    return out


def _upstreams(out: DnsTrace, p: Placement, ip: IPAddress, cluster: list[Node], coredns: set[IPAddress]) -> None:
    assert p.node is not None
    node = p.node
    kr = kubelet_resolv(node)
    out.resolv = out.resolv or kr
    if not kr.known:
        cands = ", ".join(f"{rc.path or rc.source.file}: {' '.join(rc.nameservers) or 'no nameserver'}" for rc in kr.candidates)
        out.hops.append(Hop("upstream", f"CoreDNS {ip} -> upstream", UNKNOWN,
                            f"{kr.unknown}" + (f"; the node's files: {cands}" if cands else ""), node=node.name))
        return
    servers = kr.servers()
    out.notes.extend(n for n in kr.notes if n not in out.notes)
    where = kr.path + (" (kubelet's default)" if kr.default else "") if kr.path is not None else "?"
    out.notes.append(f"CoreDNS on {node.name} forwards to the servers of {where}, as kubelet gives it "
                     f"(dnsPolicy: Default; the default Corefile's `forward . /etc/resolv.conf` assumed)")
    if not servers:
        out.hops.append(Hop("upstream", f"CoreDNS {ip} -> upstream", FAIL,
                            f"{where} lists no nameserver: CoreDNS has no upstream (glibc would try 127.0.0.1)",
                            node=node.name, cites=(str(kr.file.source),) if kr.file else ()))
        return
    for server, src in servers[:MAX_NAMESERVERS]:
        up = server_ip(server)
        cite = (f"{src.file}:{src.line}",) if src is not None else ()
        label = f"CoreDNS {ip} -> upstream {server}:53/udp"
        if up is None:
            continue
        if up.is_loopback and not p.host_network:
            out.hops.append(Hop("upstream", label, FAIL,
                                f"{server} is the CoreDNS pod's own loopback: the query never leaves the pod, and "
                                f"CoreDNS itself listens on :53 there, so it forwards to itself (its `loop` plugin stops "
                                f"it: \"Loop ... detected\")", "loopback-pod", None, node.name, cite))
            continue
        t = _trace(node, Flow(ip, up, "udp", None, 53), cluster)
        looped = [e for e in t.endpoints if endpoint_ip(e) in coredns]
        if looped:
            out.hops.append(Hop("upstream", label, FAIL,
                                f"{server} is a Service whose endpoints are CoreDNS itself ({', '.join(looped)}): "
                                f"CoreDNS forwards to itself", "coredns-loop", t, node.name, cite + _cites(t)))
            continue
        verdict = _verdict(t)
        if t.disposition is Disposition.DELIVERED:
            fate = "loopback-node" if up.is_loopback else "node-local"
            summary = (f"DELIVERED on {node.name} itself: the query ends on the node "
                       f"({'its loopback' if up.is_loopback else 'one of its addresses'}); only a resolver listening on "
                       f"{server}:53 there answers (systemd-resolved's stub, dnsmasq), which kptrace cannot see")
            out.hops.append(Hop("upstream", label, LOCAL if verdict == OK else verdict, summary, fate, t, node.name,
                                cite + _cites(t)))
            continue
        egress = next((b.egress for b in t.branches if b.egress is not None), None)
        fate = "routed-out" if t.disposition is Disposition.FORWARDED or verdict == OK else t.disposition.value.lower()
        how = f"{t.disposition.value}" + (f" via {egress.iface}" if egress and egress.iface else "") + \
              (f" to {egress.next_hop}" if egress and egress.next_hop else "")
        out.hops.append(Hop("upstream", label, verdict, how, fate, t, node.name, cite + _cites(t)))


def _queries(name: str, node: Node, out: DnsTrace) -> list[tuple[str, str]]:
    """The names a pod's resolver tries for `name`, in order, and who answers each (CoreDNS or upstream)."""
    domain, _, _ = cluster_domain(node)
    pods = pod_files(node)
    if pods:
        rc = pods[0]
        search = list(rc.search)
        from kptrace.parsers.resolv_conf import option_value

        nd = option_value(rc, "ndots")
        ndots = nd[0] if nd else 1
        out.notes.append(f"search list and ndots from {rc.whose}'s resolv.conf ({rc.source.file})")
    else:
        host = node_files(node)
        search = [f"default.svc.{domain}", f"svc.{domain}", domain] + list(host[0].search if host else ())
        ndots = 5
        out.notes.append(f"search list as kubelet writes it for a ClusterFirst pod in namespace default "
                         f"(default.svc.{domain} svc.{domain} {domain} + the node's), ndots:5")
    absolute = name.endswith(".")
    bare = name.rstrip(".")
    tried = [bare] if absolute else ([f"{bare}.{d.rstrip('.')}" for d in search] + [bare]
                                     if bare.count(".") < ndots else [bare] + [f"{bare}.{d.rstrip('.')}" for d in search])
    return [(q, "CoreDNS" if q == domain or q.endswith("." + domain) else "upstream") for q in tried]
