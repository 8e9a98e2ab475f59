"""What checks read: the loaded nodes, the bundle files load.py does not read, and facts from both.

load.py skips `services.txt`, `conntrack.txt` and `iptables-legacy-save.txt`, and refuses an
`iptables-nft-save.txt` next to `iptables-save.txt` ("a second IPv4 ruleset"). `load_for_checks`
reads those files here; a bundle directory holding a file load.py would refuse is handed to it as
a tree of links without that file, so every file keeps the label it has everywhere else.
TODO(load.py): give these kinds a place in the Node (`Node.extra_rulesets`, services, conntrack;
parsers/services.py and parsers/conntrack.py) and delete the shim.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from kptrace.errors import KptraceError, ParseError
from kptrace.load import (
    PASSIVE_KINDS,
    _node_dirs,
    _read_entries,
    _short,
    decode,
    load_cluster,
    sniff,
)
from kptrace.model.flow import IPAddress
from kptrace.model.netfilter import Chain, Cond, IPNetwork, Rule, Ruleset
from kptrace.model.node import Node
from kptrace.model.source import ASSUMED_FILE, Source
from kptrace.model.trace import InputFile

# Bundle files read here rather than by load.py, with the kind the JSON `inputs` list gives them.
EXTRA_KINDS = {
    "services.txt": "services",
    "conntrack.txt": "conntrack",
    "iptables-legacy-save.txt": "iptables-legacy-save",
    "iptables-nft-save.txt": "iptables-nft-save",
}
# Of these, load.py gets the first one a bundle holds; the others are read here as text.
IPV4_DUMPS = ("iptables-save.txt", "iptables-nft-save.txt", "iptables-legacy-save.txt")


@dataclass(frozen=True, slots=True)
class ServiceUnit:
    """One `systemctl list-units --type=service` row."""

    name: str  # without .service
    load: str
    active: str
    sub: str
    description: str
    source: Source


@dataclass(frozen=True, slots=True)
class ConntrackEntry:
    """One `conntrack -L` (or /proc/net/nf_conntrack) line: original and reply tuple."""

    proto: str
    orig_src: IPAddress
    orig_dst: IPAddress
    orig_dport: int | None
    reply_src: IPAddress
    flags: tuple[str, ...]  # UNREPLIED ASSURED …
    source: Source


@dataclass(slots=True)
class BundleExtras:
    inputs: list[InputFile] = field(default_factory=list)  # files read here, not by load.py
    present: set[str] = field(default_factory=set)  # base names of every file in this node's bundle
    iptables_text: dict[str, str] = field(default_factory=dict)  # label -> text, comments kept
    services: tuple[ServiceUnit, ...] | None = None
    conntrack: tuple[ConntrackEntry, ...] | None = None
    errors: list[ParseError] = field(default_factory=list)  # KPT001


@dataclass(slots=True)
class CheckContext:
    node: Node | None  # None: the bundle could not be loaded (errors says why)
    extra: BundleExtras
    peers: tuple[Node, ...] = ()  # the other nodes checked in the same run
    memo: dict[str, KubeRules] = field(default_factory=dict)  # per dump, read once (kube_rules)
    # Filled for late checks (KPT002, KPT003) from the others' results:
    missing_inputs: dict[str, list[str]] = field(default_factory=dict)  # file -> check ids
    crashed: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.node.name if self.node is not None else "node"

    def unread(self, file: str) -> bool:
        """In the bundle, but read by nothing yet (load.py skips it until its parser lands)."""
        read = {re.split(r"[/:]", i.file)[-1] for i in [*(self.node.inputs if self.node else ()), *self.extra.inputs]}
        return file in self.extra.present and file not in read


# --- loading -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    root: Path
    path: str  # as read: the file's path, or `archive:member`
    label: str  # as load.py cites it
    data: bytes

    @property
    def dir(self) -> str:
        return self.label.rsplit("/", 1)[0] if "/" in self.label else ""

    @property
    def base(self) -> str:
        return re.split(r"[/:]", self.label)[-1]


def load_for_checks(paths: list[Path], node_ips: list[str] | None = None,
                    pod_cidrs: list[str] | None = None) -> list[CheckContext]:
    """One context per node (a bundle directory, or the loose files together), each with its peers."""
    # Labels as load_cluster gives them: relative to each node's own bundle directory.
    entries = [_Entry(p, path, _short(path, g), data)
               for p in paths for g in _node_dirs(p) for path, data in _read_entries(g)]
    held = {(e.dir, e.base) for e in entries}
    kept_out = {id(e) for e in entries if _read_here(e, held)}
    # Of those, the ones load.py would not skip itself (it refuses a second IPv4 dump).
    refused = {id(e) for e in entries if id(e) in kept_out and not any(rx.match(e.base) for rx in PASSIVE_KINDS.values())}
    try:
        with tempfile.TemporaryDirectory(prefix="kptrace-check-") as tmp:
            nodes = load_cluster(_without(paths, entries, refused, Path(tmp)), node_ips, pod_cidrs)
    except ParseError as e:
        # Nothing loaded: what can be read from the raw files still runs (KPT001, KPT202, KPT209, KPT501).
        merged = BundleExtras(errors=[e])
        for entry in entries:
            _read_extra(entry, merged, id(entry) in kept_out, None)
        return [CheckContext(None, merged)]
    per_node = [BundleExtras() for _ in nodes]
    dirs = [{i.file.rsplit("/", 1)[0] if "/" in i.file else "" for i in n.inputs} for n in nodes]
    # Rulesets with tables only: an nft-only bundle gets empty iptables rulesets named after its nft file.
    dumps = {rs.file for n in nodes for rs in n.rulesets.values() if rs.tables}
    for entry in entries:
        k = next((i for i, d in enumerate(dirs) if entry.dir in d), 0)
        _read_extra(entry, per_node[k], id(entry) in kept_out, dumps)
    return [CheckContext(n, x, tuple(p for p in nodes if p is not n)) for n, x in zip(nodes, per_node, strict=True)]


def inputs_of(contexts: list[CheckContext]) -> list[InputFile]:
    """Every file read, by load.py or here, for the document's `inputs`."""
    return [i for c in contexts for i in [*(c.node.inputs if c.node else ()), *c.extra.inputs]]


def _read_here(e: _Entry, held: set[tuple[str, str]]) -> bool:
    if e.base in IPV4_DUMPS:
        first = next(name for name in IPV4_DUMPS if (e.dir, name) in held)
        return e.base != first
    return e.base in EXTRA_KINDS


def _without(paths: list[Path], entries: list[_Entry], refused: set[int], tmp: Path) -> list[Path]:
    """The paths for load.py, minus the files it would refuse: a bundle directory becomes a tree of links."""
    out: list[Path] = []
    for p in paths:
        mine = [e for e in entries if e.root is p]
        if not any(id(e) in refused for e in mine):
            out.append(p)
        elif p.is_dir():
            # TODO(load.py): a .tar.gz bundle holding these files still fails there; only directories are filtered.
            farm = tmp / str(len(out)) / p.resolve().name
            for e in mine:
                if id(e) not in refused:
                    rel = Path(e.path).relative_to(p)
                    (farm / rel).parent.mkdir(parents=True, exist_ok=True)
                    (farm / rel).symlink_to(Path(e.path).resolve())
            farm.mkdir(parents=True, exist_ok=True)
            out.append(farm)
    return out


def _read_extra(entry: _Entry, extra: BundleExtras, kept_out: bool, dumps: set[str] | None) -> None:
    """Record the file; read it if load.py did not, or keep the text of an iptables dump it parsed.

    dumps: the labels of the rulesets load.py read; None when it failed, and then any file that looks
    like an iptables dump is kept (for the checks that read raw lines).
    """
    extra.present.add(entry.base)
    kind = EXTRA_KINDS.get(entry.base) if kept_out else None
    if kind is None and dumps is not None and entry.label not in dumps:
        return
    try:
        text = decode(entry.data, entry.label)
    except KptraceError as e:
        if kept_out:  # load.py reports its own files; these are read only here
            extra.errors.append(e if isinstance(e, ParseError) else ParseError(entry.label, 1, 1, str(e).split(": ", 2)[-1]))
        return
    if kind is None:
        # The parser skips comments (`# Generated by … (nf_tables)`, `# Warning: iptables-legacy tables present`).
        kind = sniff(entry.label, text) if dumps is None else None
        if dumps is not None or kind in ("iptables-save", "ip6tables-save"):
            extra.iptables_text[entry.label] = text
        if kind is not None:
            extra.inputs.append(InputFile(entry.label, kind, hashlib.sha256(entry.data).hexdigest()))
        return
    extra.inputs.append(InputFile(entry.label, kind, hashlib.sha256(entry.data).hexdigest()))
    try:
        if kind == "services":
            extra.services = parse_services(text, entry.label)
        elif kind == "conntrack":
            extra.conntrack = parse_conntrack(text, entry.label)
        else:
            extra.iptables_text[entry.label] = text
    except ParseError as e:
        extra.errors.append(e)


# --- parsers for the files above (move to kptrace/parsers/ with the load.py change) ------------

_UNIT_RE = re.compile(r"^\s*(?:[●*x×]\s+)?(\S+)\.service\s+(\S+)\s+(\S+)\s+(\S+)\s*(.*)$")


def parse_services(text: str, file: str = "services.txt") -> tuple[ServiceUnit, ...]:
    """`systemctl list-units --type=service --all --no-pager` (with or without --plain/--no-legend).

        UNIT                     LOAD   ACTIVE SUB     DESCRIPTION
      ● firewalld.service        loaded active running firewalld - dynamic firewall daemon
        ufw.service              loaded active exited  Uncomplicated firewall
        (blank line, then the LOAD/ACTIVE/SUB legend and "N loaded units listed.")
    """
    units: list[ServiceUnit] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if units:
                break  # the legend follows the first blank line
            continue
        m = _UNIT_RE.match(line)
        if m:
            units.append(ServiceUnit(m.group(1), m.group(2), m.group(3), m.group(4), m.group(5).strip(),
                                     Source(file, n, 1, line)))
        elif not units and line.lstrip().startswith("UNIT "):
            continue
        elif not units:
            raise ParseError(file, n, 1, "expected `systemctl list-units --type=service` output", line)
    return tuple(units)


_CT_HEAD_RE = re.compile(r"^(?:ipv[46]\s+\d+\s+)?([a-z0-9-]+)\s+(\d+)\s+(\d+)\s+(?:([A-Z_]+)\s+)?(?=src=)")


def parse_conntrack(text: str, file: str = "conntrack.txt") -> tuple[ConntrackEntry, ...]:
    """`conntrack -L` or /proc/net/nf_conntrack:

        udp  17 29 src=10.244.1.5 dst=10.96.0.10 sport=53271 dport=53 [UNREPLIED] src=10.96.0.10 dst=10.244.1.5 sport=53 dport=53271 mark=0 use=1
        tcp  6 431999 ESTABLISHED src=… dst=… sport=… dport=… src=… … [ASSURED] mark=0 use=1
        ipv4 2 udp 17 29 src=…                                   (/proc/net/nf_conntrack)
        conntrack v1.4.6 (conntrack-tools): 2 flow entries have been shown.   (ignored)
    """
    out: list[ConntrackEntry] = []
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("conntrack v"):
            continue
        m = _CT_HEAD_RE.match(s)
        if m is None:
            raise ParseError(file, n, 1, "expected a conntrack entry (proto, number, timeout, src=… dst=…)", line)
        tuples: list[dict[str, str]] = []
        flags: list[str] = []
        for word in s[m.end():].split():
            if word.startswith("[") and word.endswith("]"):
                flags.append(word[1:-1])
            elif "=" in word:
                key, _, value = word.partition("=")
                if key == "src":
                    tuples.append({})
                if tuples:
                    tuples[-1][key] = value
        try:
            orig, reply = tuples[0], tuples[1]
            dport = orig.get("dport")
            out.append(ConntrackEntry(m.group(1), ip_address(orig["src"]), ip_address(orig["dst"]),
                                      int(dport) if dport else None, ip_address(reply["src"]), tuple(flags),
                                      Source(file, n, 1, line)))
        except (IndexError, KeyError, ValueError):
            raise ParseError(file, n, 1, "expected an original and a reply tuple (src= dst= twice)", line) from None
    return tuple(out)


# --- facts the checks share ------------------------------------------------------------------


def dumped(chain: Chain | None) -> list[Rule]:
    """A chain's rules as they are in the dump: without the jumps kptrace assumed (<assumed:kube-proxy>)."""
    if chain is None:
        return []
    return [r for r in chain.rules if r.source.file != ASSUMED_FILE]


def has_assumed(rs: Ruleset) -> bool:
    """Did the loader add kube-proxy's base-chain jumps to this dump (walkers/kube_jumps.py)?"""
    chains = [rs.chain("nat", name) for name in ("PREROUTING", "OUTPUT", "POSTROUTING")]
    return any(r.source.file == ASSUMED_FILE for c in chains if c is not None for r in c.rules)


def conf_key(family: int, iface: str, name: str) -> str:
    """sysctl key of a per-interface setting; a dot in the name is a slash in the key (flannel.1 -> flannel/1)."""
    return f"net.ipv{family}.conf.{iface.replace('.', '/')}.{name}"


def pod_networks(node: Node) -> list[IPNetwork]:
    """Every pod network the bundle names: the cluster CIDR(s), this node's share, flannel's."""
    nets: list[IPNetwork] = list(node.pod_cidrs)
    for n in (node.pod_subnet, node.flannel.network if node.flannel else None,
              node.flannel.subnet if node.flannel else None):
        if n is not None and n not in nets:
            nets.append(n)
    return nets


def _in_any(ip: IPAddress, nets: list[IPNetwork]) -> bool:
    return any(ip.version == n.version and ip in n for n in nets)


def local_pod_subnets(node: Node) -> list[IPNetwork]:
    """This node's own pod subnet(s): node.yaml pod_cidr, flannel's subnet, the pod bridge's network."""
    nets: list[IPNetwork] = []
    for n in (node.pod_subnet, node.flannel.subnet if node.flannel else None):
        if n is not None:
            nets.append(n)
    bridges = set(pod_bridges(node))  # once: an IPVS node holds 10k addresses on kube-ipvs0
    for a in node.addresses:
        if a.iface in bridges and a.address.network not in nets:
            nets.append(a.address.network)
    return nets


def pod_bridges(node: Node) -> list[str]:
    """Bridges pods hang off: an interface holding a subnet (not a /32) inside the pod network."""
    nets = pod_networks(node)
    names = [a.iface for a in node.addresses
             if a.address.network.prefixlen < a.address.max_prefixlen and _in_any(a.address.ip, nets)]
    names += [link.name for link in node.links if link.kind == "bridge" and link.name in ("cni0", "cbr0")]
    return sorted(set(names))


def overlays(node: Node) -> list[str]:
    """Tunnel devices pod traffic to other nodes leaves through (flannel.1, vxlan.calico, …)."""
    names = {link.name for link in node.links if link.vxlan is not None or link.kind in ("vxlan", "geneve", "ipip")}
    if node.flannel is not None:
        names |= {a.iface for a in node.addresses if a.iface.startswith("flannel")}
    return sorted(names)


def node_ifaces(node: Node) -> list[str]:
    """Interfaces holding the node's own addresses (node.yaml node_ips / --node-ip)."""
    return sorted({a.iface for a in node.addresses if a.address.ip in node.node_ips})


def dual_stack(node: Node) -> bool:
    """IPv6 Services or pods on this node: an IPv6 pod CIDR, or kube-proxy's IPv6 service chains."""
    if any(n.version == 6 for n in pod_networks(node)):
        return True
    rs = node.rulesets.get(6)
    nat = rs.tables.get("nat") if rs else None
    return nat is not None and any(name.startswith(("KUBE-SVC-", "KUBE-SEP-")) for name in nat.chains)


def iface_matches(pattern: str, iface: str) -> bool:
    """iptables' -i/-o: a trailing + matches any suffix."""
    return iface.startswith(pattern[:-1]) if pattern.endswith("+") else iface == pattern


def nets_of(cond: Cond[tuple[IPNetwork, ...]] | None) -> tuple[IPNetwork, ...]:
    return () if cond is None or cond.negated else cond.value


def overlaps(nets: tuple[IPNetwork, ...] | list[IPNetwork], others: list[IPNetwork]) -> bool:
    return any(a.version == b.version and a.overlaps(b) for a in nets for b in others)


def walk(rs: Ruleset, table: str, chain: str, follow: Callable[[str], bool],
         via: tuple[Rule, ...] = (), seen: frozenset[str] = frozenset()) -> Iterator[tuple[Rule, tuple[Rule, ...]]]:
    """Every rule a packet can reach from `chain`, depth first, with the jumps that lead to it.

    Only jumps to user chains `follow` accepts are followed; the jump rule itself is yielded too.
    """
    for r in dumped(rs.chain(table, chain)):
        yield r, via
        target = r.target.name if r.target else ""
        if rs.chain(table, target) is not None and target not in seen and follow(target):
            yield from walk(rs, table, target, follow, via + (r,), seen | {chain})


def ctstates(rule: Rule) -> set[str] | None:
    """The conntrack states a rule is limited to (None: any); a negated list is turned around."""
    every = {"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT"}
    for m in rule.matches:
        o = m.opt("--ctstate", "--state")
        if o is not None and m.module in ("conntrack", "state"):
            states = set(o.value().split(","))
            return every - states if o.negated else states
    return None


def comment_service(rule: RawRule, *suffixes: str) -> str | None:
    """`ns/name:port` from a kube-proxy comment such as "default/web:http has no endpoints"."""
    c = rule.comment()
    if c is None:
        return None
    for s in suffixes:
        if c.endswith(s):
            return c[: -len(s)].strip()
    return None if suffixes else c


# --- kube-proxy's rules, read from the dump's text -------------------------------------------------
#
# A 10k-Service dump has 300k+ rules in KUBE-SVC-*/KUBE-SEP-* chains; parsing each (as the model does
# when a chain is read) takes seconds. What the checks need from them (DNAT targets, which KUBE-SVC
# chain has an endpoint, the Service VIPs) is read from the lines instead, in one pass per dump.

_TARGET_RE = re.compile(r" -[jg] (\S+)")
_COMMENT_RE = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')
_TO_RE = re.compile(r"--to-destination (\S+)")
_DST_RE = re.compile(r"(?<!! )-d (\S+)")


@functools.lru_cache(maxsize=65536)
def _address(text: str) -> IPAddress | None:
    """Endpoint addresses repeat across Service ports: parse each once."""
    try:
        return ip_address(text)
    except ValueError:
        return None


def _to_address(line: str) -> IPAddress | None:
    m = _TO_RE.search(line)
    if m is None:
        return None
    text = m.group(1)  # 10.244.1.9:53, 10.244.1.9, [fd00::9]:53, fd00::9, 10.0.0.1-10.0.0.9:80
    host = text[1:].split("]", 1)[0] if text.startswith("[") else (text.rsplit(":", 1)[0] if text.count(":") == 1 else text)
    return _address(host.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class RawRule:
    """One `-A CHAIN …` line of a dump, as written (so never one kptrace assumed)."""

    table: str
    chain: str
    target: str
    source: Source

    def comment(self) -> str | None:
        m = _COMMENT_RE.search(self.source.text)
        return None if m is None else (m.group(1) if m.group(1) is not None else m.group(2))

    def dnat(self) -> IPAddress | None:
        """The address a DNAT rule translates to: `--to-destination 10.244.1.9:53`."""
        return _to_address(self.source.text) if self.target == "DNAT" else None

    def vip(self) -> IPAddress | None:
        """`-d VIP/32` (or /128, or no length), not negated."""
        m = _DST_RE.search(self.source.text)
        if m is None:
            return None
        host, _, plen = m.group(1).partition("/")
        try:
            ip = ip_address(host)
        except ValueError:
            return None
        return ip if plen in ("", str(ip.max_prefixlen)) else None


@dataclass(slots=True)
class KubeRules:
    services: list[RawRule] = field(default_factory=list)  # nat KUBE-SERVICES, in order
    filter_services: list[RawRule] = field(default_factory=list)  # filter KUBE-SERVICES and KUBE-EXTERNAL-SERVICES
    dnat_lines: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # chain -> its DNAT rules' lines
    svc_chains: dict[str, Source] = field(default_factory=dict)  # nat KUBE-SVC-* declarations
    svc_endpoints: dict[str, list[str]] = field(default_factory=dict)  # KUBE-SVC-* -> the KUBE-SEP-* it jumps to
    targets: dict[IPAddress, RawRule] | None = None  # every DNAT's address, once asked for
    svc_of: dict[str, str] | None = None  # "ns/name:port" -> its KUBE-SVC-* chain, once asked for


def kube_rules(ctx: CheckContext, rs: Ruleset) -> KubeRules:
    """kube-proxy's rules of one dump, read once per run."""
    cached = ctx.memo.get(rs.file)
    if cached is None:
        # An nft-only bundle has empty iptables rulesets and no iptables text: nothing of kube-proxy's here.
        text = ctx.extra.iptables_text.get(rs.file)
        cached = ctx.memo[rs.file] = _scan(rs.file, text) if text is not None else KubeRules()
    return cached


def _scan(file: str, text: str) -> KubeRules:
    # Plain string tests, no regex per line: at 400k lines this loop is most of `kptrace check`'s own time.
    out, table = KubeRules(), ""
    for n, line in enumerate(text.split("\n"), start=1):
        rule = line[line.find("] ") + 2:] if line.startswith("[") else line  # `iptables-save -c` counters
        if line.startswith("*"):
            table = line[1:].strip()
        elif table == "nat":
            if rule.startswith("-A KUBE-SEP-"):
                if " -j DNAT" in rule:
                    out.dnat_lines.setdefault(rule[3:rule.find(" ", 3)], []).append((n, line))
            elif rule.startswith("-A KUBE-SVC-"):
                if (i := rule.find(" -j KUBE-SEP-")) >= 0:
                    out.svc_endpoints.setdefault(rule[3:rule.find(" ", 3)], []).append(rule[i + 4:].split()[0])
            elif rule.startswith("-A KUBE-SERVICES "):
                out.services.append(_raw(file, table, n, line, rule))
            elif rule.startswith(":KUBE-SVC-"):
                out.svc_chains[rule[1:].split()[0]] = Source(file, n, 1, line)
            elif rule.startswith(("-A ", "-I ")) and not rule.startswith("-A KUBE-") and " -j DNAT" in rule:
                out.dnat_lines.setdefault(rule.split()[1], []).append((n, line))
        elif table == "filter" and rule.startswith(("-A KUBE-SERVICES ", "-A KUBE-EXTERNAL-SERVICES ")):
            out.filter_services.append(_raw(file, table, n, line, rule))
    return out


def _raw(file: str, table: str, n: int, line: str, rule: str) -> RawRule:
    targets = _TARGET_RE.findall(rule)
    return RawRule(table, rule.split(" ", 2)[1], targets[-1] if targets else "", Source(file, n, 1, line.rstrip("\r")))


def _dnat(file: str, chain: str, lines: list[tuple[int, str]]) -> Iterator[tuple[IPAddress, int, str]]:
    for n, line in lines:
        ip = _to_address(line)
        if ip is not None:
            yield ip, n, line


def _rule(file: str, chain: str, n: int, line: str) -> RawRule:
    return RawRule("nat", chain, "DNAT", Source(file, n, 1, line.rstrip("\r")))


def has_dnat(ctx: CheckContext) -> bool:
    node = ctx.node
    assert node is not None
    return any(kube_rules(ctx, rs).dnat_lines for rs in node.rulesets.values())


def dnat_targets(ctx: CheckContext) -> dict[IPAddress, RawRule]:
    """Every address the node's DNAT rules translate to, with the first rule that does."""
    node = ctx.node
    assert node is not None
    out: dict[IPAddress, RawRule] = {}
    for _, rs in sorted(node.rulesets.items()):
        kube = kube_rules(ctx, rs)
        if kube.targets is None:
            kube.targets = {}
            for chain, lines in kube.dnat_lines.items():
                for ip, n, line in _dnat(rs.file, chain, lines):
                    if ip not in kube.targets:
                        kube.targets[ip] = _rule(rs.file, chain, n, line)
        for ip, r in kube.targets.items():
            out.setdefault(ip, r)
    return out


def service_endpoints(ctx: CheckContext, rs: Ruleset, service: str) -> list[tuple[IPAddress, RawRule]]:
    """A Service port's endpoints (`ns/name:port`): its KUBE-SVC chain's KUBE-SEP chains' DNAT targets.

    Found through the chains, not the comments: kube-proxy leaves the endpoint comments out above
    1000 endpoints ("large cluster mode").
    """
    kube = kube_rules(ctx, rs)
    if kube.svc_of is None:
        kube.svc_of = {(r.comment() or "").removesuffix(" cluster IP"): r.target
                       for r in kube.services if r.target.startswith("KUBE-SVC-")}
    svc = kube.svc_of.get(service)
    return [(ip, _rule(rs.file, sep, n, line)) for sep in kube.svc_endpoints.get(svc or "", [])
            for ip, n, line in _dnat(rs.file, sep, kube.dnat_lines.get(sep, []))]


def service_vips(ctx: CheckContext, rs: Ruleset) -> list[tuple[IPAddress, str, RawRule]]:
    """Service addresses from nat KUBE-SERVICES: (VIP, comment, rule) for each `-d VIP/32 … -j KUBE-…`."""
    return [(vip, r.comment() or r.target, r) for r in kube_rules(ctx, rs).services
            if r.target.startswith("KUBE-") and (vip := r.vip()) is not None]


# CNI plugins' own filter chains (flannel, the CNI portmap/bridge plugins, Calico, Cilium, kube-router, Weave, Antrea).
CNI_CHAIN_PREFIXES = ("FLANNEL-", "CNI-", "cali-", "CILIUM_", "KUBE-ROUTER-", "WEAVE-", "ANTREA-")


def is_cni_chain(name: str) -> bool:
    return name.startswith(CNI_CHAIN_PREFIXES)


def is_kube_chain(name: str) -> bool:
    """kube-proxy's and the kubelet's chains."""
    return name.startswith("KUBE-") and not name.startswith("KUBE-ROUTER-")
