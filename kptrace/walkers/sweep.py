"""Every Service port a node knows, from every kind of source, at once: the engine of `kptrace sweep` and `kptrace diff`.

A sweep asks `trace_flow` the question `kptrace why` would ask for each (Service port, source kind,
entry point) and keeps what decides the answer: the fate, the endpoints with their shares, where each
leaves the node, whether it is masqueraded, and, for a flow that does not arrive, the deciding step
(`file:line`) and the checks that explain it. One loaded cluster and one process serve every flow;
traces are memoised per (start node, flow), so a pod's flows seen as "remote" from its peers are
walked once.

Source kinds (a row is skipped, and the sweep says so, when the input cannot give one):

  pod       an address of this node's pod subnet that no endpoint uses (a pod the neighbour table
            shows, else the subnet's last host): to the ClusterIP
  remote    the same address of a peer node of the input: to the ClusterIP, traced from that peer as
            `why --from` does (its packets reach this node's endpoints over the overlay)
  node      the node's own address: to the ClusterIP
  external  a client outside the cluster (203.0.113.10, TEST-NET-3) entering this node: to the
            NodePort on the node's address, each LoadBalancer IP and each externalIP
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from kptrace.model.finding import Finding
from kptrace.model.flow import Flow, IPAddress
from kptrace.model.node import Node
from kptrace.model.trace import Branch, Disposition, Step, Trace
from kptrace.services import merge, service_ports
from kptrace.services.model import Service
from kptrace.walkers.memo import WalkMemo, using
from kptrace.walkers.memo import disabled as memo_disabled

SOURCE_KINDS = ("pod", "remote", "node", "external")
ENTRIES = ("cluster-ip", "node-port", "load-balancer", "external-ip")
EXTERNAL_CLIENT = {4: ip_address("203.0.113.10"), 6: ip_address("2001:db8:113::10")}  # documentation ranges
OK, BROKEN, UNDETERMINED = "ok", "broken", "undetermined"


@dataclass(frozen=True, slots=True)
class EndpointShare:
    """One endpoint a flow reaches (or `None`: the branches that were translated by nothing)."""

    address: str | None
    share: float  # the sum of its branches' probabilities
    dispositions: tuple[str, ...]  # its branches' fates
    masquerade: bool  # any of its branches masqueraded or SNATed
    egress: tuple[str, ...]  # where its branches leave: `iface@node`


@dataclass(frozen=True, slots=True)
class Decision:
    """The step that decided a branch that did not arrive: a rule, route or setting, cited."""

    source: str | None
    action: str
    text: str
    node: str | None


@dataclass(frozen=True, slots=True)
class Row:
    """One flow of the sweep: a Service port, from one kind of source, through one entry point."""

    node: str  # the node swept
    namespace: str
    name: str
    port_name: str
    protocol: str
    source_kind: str  # pod | remote | node | external
    entry: str  # cluster-ip | node-port | load-balancer | external-ip
    src: str
    dst: str
    dport: int
    start: str  # the node the trace starts on (a peer for `remote`)
    fate: Disposition
    status: str  # ok | broken | undetermined, as `why`'s exit code 0 | 1 | 4
    endpoints: tuple[EndpointShare, ...]
    deciding: tuple[Decision, ...]  # for a fate that is not DELIVERED/FORWARDED/ACCEPTED
    findings: tuple[str, ...]  # ids of the checks that explain it
    retrace: Callable[[], Trace] = field(compare=False, repr=False)  # the trace: kept, or walked again

    @property
    def trace(self) -> Trace:
        """The whole trace of this flow (what `kptrace why` shows): the one the sweep kept, or, when the sweep
        keeps none (`Sweeper(keep_traces=False)`: 50 KB a flow), the same flow walked again."""
        return self.retrace()

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def display_name(self) -> str:
        return self.service + (f":{self.port_name}" if self.port_name else "")

    @property
    def key(self) -> tuple[str, str, str, str, str, str]:
        """What pairs a row with its counterpart in another sweep (names, never chain hashes or addresses)."""
        return (self.namespace, self.name, self.port_name, self.protocol, self.source_kind, self.entry)

    @property
    def broken(self) -> bool:
        return self.status == BROKEN


@dataclass(slots=True)
class NodeSweep:
    node: str
    service_ports: int
    rows: list[Row]
    notes: list[str]  # what was skipped and why, and the source addresses chosen


@dataclass(slots=True)
class SweepResult:
    nodes: list[NodeSweep]

    @property
    def rows(self) -> list[Row]:
        return [r for n in self.nodes for r in n.rows]

    def partly_broken(self) -> list[tuple[str, list[str], list[str]]]:
        """Service ports broken on some nodes of the input and not on others: (port, broken on, fine on)."""
        if len(self.nodes) < 2:
            return []
        by_port: dict[str, dict[str, bool]] = {}
        for r in self.rows:
            seen = by_port.setdefault(r.display_name + f" ({r.protocol})", {})
            seen[r.node] = seen.get(r.node, False) or r.broken
        out = []
        for port, nodes in sorted(by_port.items()):
            bad = [n for n, b in nodes.items() if b]
            good = [n for n, b in nodes.items() if not b]
            if bad and good:
                out.append((port, bad, good))
        return out


def row_status(t: Trace) -> str:
    """As `kptrace why` exits: broken (1) when a branch fails or its reply does, undetermined (4), else ok (0)."""
    kinds = {b.disposition for b in t.branches}
    if any(k.failed for k in kinds) or any(b.reply_failed for b in t.branches):
        return BROKEN
    if Disposition.UNDETERMINED in kinds or not kinds:
        return UNDETERMINED
    return OK


class Sweeper:
    """One loaded cluster, swept node by node; traces shared between rows and nodes."""

    def __init__(self, cluster: list[Node], checks: bool = True,
                 progress: Callable[[str, int, int], None] | None = None,
                 external_client: dict[int, IPAddress] | None = None, keep_traces: bool = True) -> None:
        self.cluster = cluster
        # Traces are what a sweep's memory goes to (about 50 KB a flow: every branch's steps and reply). Without
        # them a row keeps what it shows, and `row.trace` walks its flow again (what `diff` does for a change).
        self.keep_traces = keep_traces
        self._derived: dict[tuple[str, Flow], _Derived] = {}
        self._shares: dict[object, Any] = {}  # endpoint_shares: each share and tuple of them once
        self.external_client = {**EXTERNAL_CLIENT, **(external_client or {})}  # the outside client, by IP version
        self.checks = checks  # name the findings that explain a flow that does not arrive
        self._findings: list[Finding] | None = None  # run once, at the first such flow
        self.progress = progress  # (node, Service ports done, Service ports) after each port
        self._traces: dict[tuple[str, Flow], Trace] = {}
        self._pod_source: dict[tuple[str, int], IPAddress | None] = {}
        self._endpoints: set[IPAddress] | None = None
        self._ports: dict[str, list[Service]] = {}
        # Hook walks shared between flows (walkers/memo.py; KPTRACE_NO_MEMO=1 turns it off): exact, and the
        # cluster is not edited while this Sweeper lives.
        self.memo: WalkMemo | None = None if memo_disabled() else WalkMemo()

    def service_ports(self, node: Node) -> list[Service]:
        """What `kptrace services` lists for this node alone, read once."""
        if node.name not in self._ports:
            self._ports[node.name] = merge(service_ports([node]))
        return self._ports[node.name]

    def findings(self) -> list[Finding]:
        if self._findings is None:
            self._findings = (cluster_findings(self.cluster) if self.checks else None) or []
        return self._findings

    # --- sources ---------------------------------------------------------------------------------

    def endpoint_addresses(self) -> set[IPAddress]:
        if self._endpoints is None:
            out: set[IPAddress] = set()
            for s in (p for n in self.cluster for p in self.service_ports(n)):
                for e in list(s.endpoints) + [e for _, eps in s.local_endpoints for e in eps]:
                    host = _host(e.address)
                    if host is not None:
                        out.add(host)
            self._endpoints = out
        return self._endpoints

    def pod_source(self, node: Node, family: int) -> IPAddress | None:
        """A pod of this node that is no endpoint: one the neighbour table shows on the pod subnet, else the
        subnet's last host; None when the node's pod subnet is not in the input."""
        key = (node.name, family)
        if key not in self._pod_source:
            self._pod_source[key] = self._choose_pod(node, family)
        return self._pod_source[key]

    def _choose_pod(self, node: Node, family: int) -> IPAddress | None:
        subnet = _pod_subnet(node, family)
        if subnet is None:
            return None
        taken = self.endpoint_addresses() | node.local_addresses()
        known = sorted({n.dst for n in node.neighbors if n.dst.version == family and n.dst in subnet
                        and n.dst not in taken and n.state not in ("FAILED", "INCOMPLETE")})
        if known:
            return known[0]
        last = subnet.broadcast_address if subnet.prefixlen < subnet.max_prefixlen - 1 else None
        for i in range(1, 256):
            if last is None:
                break
            cand = last - i
            if cand in subnet and cand not in taken and cand != subnet.network_address:
                return cand
        return None

    # --- the sweep -------------------------------------------------------------------------------

    def trace(self, start: Node, flow: Flow) -> Trace:
        """The trace of `flow` from `start`: memoised when the sweep keeps traces, else walked again."""
        from kptrace.walkers.netfilter import trace_flow

        key = (start.name, flow)
        t = self._traces.get(key)
        if t is None:
            with using(self.memo):
                t = trace_flow(start, flow, self.cluster)
            if self.keep_traces:
                self._traces[key] = t
        return t

    def sweep_node(self, node: Node, services: str | None = None, kinds: Sequence[str] = SOURCE_KINDS) -> NodeSweep:
        ports = [s for s in self.service_ports(node) if services is None or _service_matches(s, services)]
        notes: list[str] = []
        rows: list[Row] = []
        with _few_collections():
            for i, svc in enumerate(ports):
                for kind, entry, start, flow in self.flows(node, svc, kinds, notes):
                    rows.append(self.row(node, svc, kind, entry, start, flow))
                if self.progress is not None:
                    self.progress(node.name, i + 1, len(ports))
        return NodeSweep(node.name, len(ports), rows, list(dict.fromkeys(notes)))

    def sweep(self, services: str | None = None, kinds: Sequence[str] = SOURCE_KINDS,
              nodes: Iterable[Node] | None = None) -> SweepResult:
        return SweepResult([self.sweep_node(n, services, kinds) for n in (nodes or self.cluster)])

    def flows(self, node: Node, svc: Service, kinds: Sequence[str],
              notes: list[str]) -> Iterator[tuple[str, str, Node, Flow]]:
        """(source kind, entry, start node, flow) for each flow of this Service port on this node."""
        ipvs_entry = _ipvs_entry(node, svc)
        if ipvs_entry is not None and ipvs_entry != "cluster-ip":
            # A NodePort or LoadBalancer virtual service of IPVS mode (no names: known by its address) is
            # swept as iptables mode sweeps those entries: from a client outside.
            if "external" in kinds and svc.port is not None:
                to = ip_address(svc.cluster_ips[0])
                yield "external", ipvs_entry, node, Flow(self.external_client[to.version], to, svc.protocol, None,
                                                         svc.port)
            return
        for kind in kinds:
            if kind == "external":
                for entry, to, port in _external_entries(node, svc):
                    yield kind, entry, node, Flow(self.external_client[to.version], to, svc.protocol, None, port)
                continue
            if svc.port is None or not svc.cluster_ips:
                continue
            dst = ip_address(svc.cluster_ips[0])
            if kind == "pod":
                pod = self.pod_source(node, dst.version)
                if pod is None:
                    notes.append(f"{node.name}: no pod subnet in the input (node.yaml pod_cidr, flannel subnet.env): "
                                 "pod flows skipped")
                    continue
                yield kind, "cluster-ip", node, Flow(pod, dst, svc.protocol, None, svc.port)
            elif kind == "remote":
                peer = next(((p, a) for p in self.cluster if p is not node
                             for a in [self.pod_source(p, dst.version)] if a is not None), None)
                if peer is None:
                    notes.append(f"{node.name}: no peer node with a pod subnet in the input: remote-pod flows skipped")
                    continue
                yield kind, "cluster-ip", peer[0], Flow(peer[1], dst, svc.protocol, None, svc.port)
            elif kind == "node":
                own = _node_address(node, dst.version)
                if own is None:
                    notes.append(f"{node.name}: no node address in the input (ip-addr.txt, node.yaml, --node-ip): "
                                 "node flows skipped")
                    continue
                yield kind, "cluster-ip", node, Flow(own, dst, svc.protocol, None, svc.port)

    def row(self, node: Node, svc: Service, kind: str, entry: str, start: Node, flow: Flow) -> Row:
        key = (start.name, flow)
        d = self._derived.get(key)  # a peer's pod flow is the same flow for each node's remote rows
        kept: Trace | None = None
        if d is None:
            kept = t = self.trace(start, flow)
            d = self._derived[key] = self._derive(t, start)
        elif self.keep_traces:
            kept = self.trace(start, flow)
        assert flow.dport is not None
        return Row(node=node.name, namespace=svc.namespace, name=svc.name, port_name=svc.port_name,
                   protocol=svc.protocol, source_kind=kind, entry=entry, src=str(flow.src), dst=str(flow.dst),
                   dport=flow.dport, start=start.name, fate=d.fate, status=d.status, endpoints=d.endpoints,
                   deciding=d.deciding, findings=d.findings,
                   retrace=_Retrace(kept if self.keep_traces else None, self, start, flow))

    def _derive(self, t: Trace, start: Node) -> _Derived:
        status = row_status(t)
        deciding: tuple[Decision, ...] = ()
        found: tuple[str, ...] = ()
        if status != OK:
            deciding = tuple(dict.fromkeys(d for b in t.branches for d in _deciding(b)))
            findings = self.findings()
            if findings:
                from kptrace.checks.trace import findings_for_trace

                found = tuple(dict.fromkeys(f.id for f in findings_for_trace(t, findings)))
        return _Derived(t.disposition, status, endpoint_shares(t, start.name, self._shares), deciding, found)


MAX_SHARED_SHARES = 1 << 18  # shares and tuples of them endpoint_shares keeps to share; past it, forgotten
GC_BATCH = 20_000  # objects allocated between two collections of the youngest generation while a sweep runs


@contextmanager
def _few_collections() -> Iterator[None]:
    """Python's cyclic collector, run less often while a sweep makes millions of short-lived paths and keeps
    its memo: with the default threshold (700) it ran a thousand times in a 1k sweep, a fifth of its time.
    Nothing else changes (the walks make no cycles the collector must break early)."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], GC_BATCH), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


@dataclass(frozen=True, slots=True)
class _Derived:
    """What a row shows of its trace."""

    fate: Disposition
    status: str
    endpoints: tuple[EndpointShare, ...]
    deciding: tuple[Decision, ...]
    findings: tuple[str, ...]


class _Retrace:
    """A row's trace: the one kept, else its flow walked again from its start node."""

    __slots__ = ("kept", "sweeper", "start", "flow")

    def __init__(self, kept: Trace | None, sweeper: Sweeper, start: Node, flow: Flow) -> None:
        self.kept, self.sweeper, self.start, self.flow = kept, sweeper, start, flow

    def __call__(self) -> Trace:
        return self.kept if self.kept is not None else self.sweeper.trace(self.start, self.flow)


def _host(address: str) -> IPAddress | None:
    """The address of `10.244.1.9:53`, `[fd00::9]:53` or a bare address."""
    text = address
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ip_address(text)
    except ValueError:
        return None


def _service_matches(s: Service, wanted: str) -> bool:
    return wanted in (f"{s.namespace}/{s.name}", s.display_name, f"{s.namespace}/{s.name}:{s.port_name}")


def _pod_subnet(node: Node, family: int) -> IPv4Network | IPv6Network | None:
    if node.pod_subnet is not None and node.pod_subnet.version == family:
        return node.pod_subnet
    subnet = node.flannel.subnet if node.flannel is not None else None
    if isinstance(subnet, (IPv4Network, IPv6Network)) and subnet.version == family:
        return subnet
    return None


def _node_address(node: Node, family: int) -> IPAddress | None:
    """The node's address: node.yaml / --node-ip, else the first global address outside the pod network."""
    for a in node.node_ips:
        if a.version == family:
            return a
    for addr in node.addresses:
        ip = addr.address.ip
        if ip.version == family and addr.scope == "global" and not ip.is_loopback \
                and not any(ip in c for c in node.pod_cidrs if c.version == family):
            return ip
    return None


IPVS_DUMMY = "kube-ipvs0"  # kube-proxy's IPVS mode binds every ClusterIP, LoadBalancer IP and externalIP here


def _ipvs_entry(node: Node, svc: Service) -> str | None:
    """For a virtual service of `ipvsadm -Ln` (listed as `ipvs/ADDR:PORT`): node-port when ADDR is the node's
    own (--node-ip, or an address on a device other than kube-ipvs0), load-balancer when it lies outside the
    node's Service CIDRs (node.yaml; an externalIP is swept alike: IPVS does not tell them apart), else
    cluster-ip. None for a Service that is not a virtual service."""
    if svc.namespace != "ipvs" or not svc.cluster_ips:
        return None
    try:
        addr = ip_address(svc.cluster_ips[0])
    except ValueError:
        return None
    if addr in node.node_ips or any(a.address.ip == addr and a.iface not in (IPVS_DUMMY, "lo") for a in node.addresses):
        return "node-port"
    cidrs = [net for net, _ in node.service_cidrs if net.version == addr.version]
    if cidrs and not any(addr in net for net in cidrs):
        return "load-balancer"
    return "cluster-ip"


def _external_entries(node: Node, svc: Service) -> list[tuple[str, IPAddress, int]]:
    out: list[tuple[str, IPAddress, int]] = []
    if svc.node_port is not None:
        for fam in (4, 6):
            addr = _node_address(node, fam)
            if addr is not None:
                out.append(("node-port", addr, svc.node_port))
                break
    if svc.port is not None:
        for entry, ips in (("load-balancer", svc.load_balancer_ips), ("external-ip", svc.external_ips)):
            for text in ips:
                try:
                    out.append((entry, ip_address(text), svc.port))
                except ValueError:
                    continue  # a range (`-d 10.0.0.0/24`) is not one address to send to
    return out


def egress_label(b: Branch, start: str) -> str | None:
    """Where a branch leaves, as `iface@node`: the node the packet finally leaves (the start node when the
    trace does not say), or the underlay address of a peer the input does not hold."""
    if b.egress is None or b.egress.iface is None:
        return None
    return f"{b.egress.iface}@{b.egress.node or start}"


def endpoint_shares(t: Trace, start: str, shared: dict[object, Any] | None = None) -> tuple[EndpointShare, ...]:
    """The trace's branches grouped by endpoint, in the order the trace names them. `shared` (a Sweeper's)
    gives each share, and each tuple of them, as an equal one made before: 10k Services' rows keep 200k shares,
    and a Service's pod and node flows mostly reach their endpoints alike."""
    groups: dict[str | None, list[Branch]] = {}
    for b in t.branches:
        groups.setdefault(b.dnat, []).append(b)
    out = []
    for addr, bs in groups.items():
        dispositions = tuple(dict.fromkeys(b.disposition.value for b in bs))
        egress = tuple(sorted({e for b in bs for e in [egress_label(b, start)] if e is not None}))
        if shared is not None:
            dispositions, egress = shared.setdefault(dispositions, dispositions), shared.setdefault(egress, egress)
        e = EndpointShare(
            address=addr, share=round(sum(b.probability for b in bs), 9), dispositions=dispositions,
            masquerade=any(b.masquerade or b.snat is not None for b in bs), egress=egress)
        if shared is not None:
            e = shared.setdefault(e, e)
        out.append(e)
    whole = tuple(out)
    if shared is not None:
        whole = shared.setdefault(whole, whole)
        if len(shared) > MAX_SHARED_SHARES:
            shared.clear()  # only sharing is lost: the rows keep theirs
    return whole


def _deciding(b: Branch) -> list[Decision]:
    """The step that ended a branch that failed or is undetermined, or the reply's last step when the
    reply is what fails."""
    out: list[Decision] = []
    if b.disposition.failed or b.disposition == Disposition.UNDETERMINED:
        step = _last_cited(b.steps)
        if step is not None:
            out.append(Decision(step.source, step.action, step.text, step.node))
    if b.reply is not None and b.reply.problem:
        step = _last_cited(b.reply.steps)
        out.append(Decision(step.source if step else None, "REPLY", b.reply.problem, step.node if step else None))
    return out


def _last_cited(steps: Sequence[Step]) -> Step | None:
    for s in reversed(steps):
        if s.source:
            return s
    return steps[-1] if steps else None


def cluster_findings(cluster: list[Node]) -> list[Finding] | None:
    """Every check's findings over the input, or None for a large dump read lazily (as `why --checks`
    leaves those to `kptrace check`)."""
    if any("parsed when the trace reads them" in a for n in cluster for rs in n.rulesets.values()
           for a in rs.assumptions):
        return None
    from kptrace.checks.facts import contexts
    from kptrace.checks.run import run_all

    return run_all(contexts(cluster))


# --- diff --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    key: tuple[str, str, str, str, str, str]
    what: tuple[str, ...]  # fate | endpoints | shares | masquerade | egress | only-in-a | only-in-b
    a: Row | None
    b: Row | None

    @property
    def display_name(self) -> str:
        r = self.a or self.b
        assert r is not None
        return r.display_name


def _egress_equal(a: Row, b: Row, ea: tuple[str, ...], eb: tuple[str, ...]) -> bool:
    """Equal, or equal once each side's own start node is left out (`eth0` leaving node-b seen from node-b
    is `eth0` leaving node-c seen from node-c)."""
    if ea == eb:
        return True

    def own(r: Row, labels: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(lbl.rsplit("@", 1)[0] + "@" if lbl.endswith((f"@{r.start}", f"@{r.node}")) else lbl
                            for lbl in labels))

    return own(a, ea) == own(b, eb)


def compare(a: Row, b: Row) -> tuple[str, ...]:
    """What changed between two rows of one flow: fate, endpoint set, shares, masquerade, egress."""
    what: list[str] = []
    if a.fate != b.fate or a.status != b.status:
        what.append("fate")
    ea = {e.address: e for e in a.endpoints}
    eb = {e.address: e for e in b.endpoints}
    if set(ea) != set(eb):
        what.append("endpoints")
    common = [k for k in ea if k in eb]
    if any(abs(ea[k].share - eb[k].share) > 1e-6 for k in common) and "endpoints" not in what:
        what.append("shares")
    if any(ea[k].dispositions != eb[k].dispositions for k in common) and "fate" not in what:
        what.append("fate")
    # Where an endpoint's fate changed, its masquerade and egress went with it: only the fate is news.
    same = [k for k in common if ea[k].dispositions == eb[k].dispositions]
    if any(ea[k].masquerade != eb[k].masquerade for k in same):
        what.append("masquerade")
    if any(not _egress_equal(a, b, ea[k].egress, eb[k].egress) for k in same):
        what.append("egress")
    return tuple(what)


def diff_rows(a: Iterable[Row], b: Iterable[Row]) -> list[Change]:
    """Every flow whose fate, endpoint set, shares, masquerade or egress differ, paired by Service name, port
    name, protocol, source kind and entry point; a flow only one side has is a change too."""
    ra = {r.key: r for r in a}
    rb = {r.key: r for r in b}
    out: list[Change] = []
    for key in sorted(set(ra) | set(rb)):
        x, y = ra.get(key), rb.get(key)
        if x is None:
            out.append(Change(key, ("only-in-b",), None, y))
        elif y is None:
            out.append(Change(key, ("only-in-a",), x, None))
        else:
            what = compare(x, y)
            if what:
                out.append(Change(key, what, x, y))
    return out
