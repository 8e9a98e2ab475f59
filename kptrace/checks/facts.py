"""What checks read: the loaded node (kptrace/load.py, the one loader) and facts derived from it.

Checks read the model, never an input's text, so a whole iptables-save, a listing, `-S` output, a
grep or an nft ruleset feed them alike. kube-proxy's rules are the one exception for speed: a whole
dump keeps its text on the ruleset (Ruleset.text), and `kube_rules` reads those lines in one pass
rather than parse 300k rules; a ruleset built from listings is turned into the same lines from its
rules (model/save_form.py), each citing the input line it came from.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address

from kptrace.model.flow import IPAddress
from kptrace.model.netfilter import Chain, Cond, IPNetwork, Rule, Ruleset
from kptrace.model.node import Node
from kptrace.model.routing import Link
from kptrace.checks.rule_text import RuleText, rule_text
from kptrace.model.source import ASSUMED_FILE, Source


@dataclass(slots=True)
class CheckContext:
    node: Node
    peers: tuple[Node, ...] = ()  # the other nodes checked in the same run
    memo: dict[str, KubeRules] = field(default_factory=dict)  # per dump, read once (kube_rules)
    texts: dict[int, RuleText] = field(default_factory=dict)  # per ruleset (id), made once (rule_texts)
    # Filled for late checks (KPT001, KPT002, KPT003) from the others' results:
    missing_inputs: dict[str, list[str]] = field(default_factory=dict)  # file -> check ids
    crashed: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.node.name


def contexts(nodes: list[Node]) -> list[CheckContext]:
    """One context per node, each knowing the others (KPT208, KPT304 compare nodes)."""
    return [CheckContext(n, tuple(p for p in nodes if p is not n)) for n in nodes]


def iptables_rulesets(node: Node) -> list[Ruleset]:
    """Every iptables ruleset the input holds, both backends, IPv4 first."""
    from kptrace.walkers.absent import NOT_GIVEN

    out = [rs for _, rs in sorted(node.rulesets.items()) if rs.tables]
    out += [rs for _, rs in sorted(node.legacy_rulesets.items()) if rs.tables]
    return [rs for rs in out if rs.file != NOT_GIVEN]  # rules standing for ones not collected are no rules


def rule_texts(ctx: CheckContext) -> list[RuleText]:
    """Each iptables ruleset as iptables-save lines (its own text, or made from its rules)."""
    out = []
    for rs in iptables_rulesets(ctx.node):
        t = ctx.texts.get(id(rs))
        if t is None:
            t = ctx.texts[id(rs)] = rule_text(rs)
        out.append(t)
    return out


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
    names = {link.name for link in node.links if (link.vxlan is not None or link.kind in ("vxlan", "geneve", "ipip"))
             and not _carries_nothing(node, link)}
    if node.flannel is not None:
        names |= {a.iface for a in node.addresses if a.iface.startswith("flannel")}
    return sorted(names)


def _carries_nothing(node: Node, link: Link) -> bool:
    """A tunnel device that is down, has no address and no route through it: the ipip module's
    fallback device `tunl0` (and `gre0`, …) that every namespace gets when the module is loaded.
    It sends nothing, so no packet leaves through it and its MTU or forwarding setting cannot matter."""
    if not link.flags or "UP" in link.flags:
        return False
    if any(a.iface == link.name for a in node.addresses):
        return False
    return not any(h.dev == link.name for r in node.routes for h in r.nexthops)


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
NO_LOCAL = "has no local endpoints"
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
    source: Source  # the input line (an iptables-save line, or the listing row it was made from)
    line: str = ""  # the rule as iptables-save writes it

    @property
    def text(self) -> str:
        return self.line or self.source.text

    def comment(self) -> str | None:
        m = _COMMENT_RE.search(self.text)
        return None if m is None else (m.group(1) if m.group(1) is not None else m.group(2))

    def dnat(self) -> IPAddress | None:
        """The address a DNAT rule translates to: `--to-destination 10.244.1.9:53`."""
        return _to_address(self.text) if self.target == "DNAT" else None

    def vip(self) -> IPAddress | None:
        """`-d VIP/32` (or /128, or no length), not negated."""
        m = _DST_RE.search(self.text)
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
    text: RuleText | None = None  # the lines these were read from
    nat_no_local: list[RawRule] = field(default_factory=list)  # nat KUBE-XLB-*/KUBE-EXT-* "has no local endpoints"


def kube_rules(ctx: CheckContext, rs: Ruleset) -> KubeRules:
    """kube-proxy's rules of one dump, read once per run."""
    cached = ctx.memo.get(rs.file)
    if cached is None:
        # An nft-only bundle has empty iptables rulesets: nothing of kube-proxy's here.
        texts = {id(t.ruleset): t for t in rule_texts(ctx)}
        t = texts.get(id(rs))
        cached = ctx.memo[rs.file] = _scan(t) if t is not None else KubeRules()
    return cached


def _scan(rt: RuleText) -> KubeRules:
    # Plain string tests, no regex per line: at 400k lines this loop is most of `kptrace check`'s own time.
    out, table = KubeRules(), ""
    out.text = rt
    for n, line in enumerate(rt.text.split("\n"), start=1):
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
                out.services.append(_raw(rt, table, n, line, rule))
            elif NO_LOCAL in rule and rule.startswith(("-A KUBE-XLB-", "-A KUBE-EXT-", "-A KUBE-SVL-")):
                # kube-proxy before 1.24 (KUBE-XLB-…) marks these for drop in nat: `-j KUBE-MARK-DROP`.
                out.nat_no_local.append(_raw(rt, table, n, line, rule))
            elif rule.startswith(":KUBE-SVC-"):
                out.svc_chains[rule[1:].split()[0]] = rt.source(n, line)
            elif rule.startswith(("-A ", "-I ")) and not rule.startswith("-A KUBE-") and " -j DNAT" in rule:
                out.dnat_lines.setdefault(rule.split()[1], []).append((n, line))
        elif table == "filter" and rule.startswith(("-A KUBE-SERVICES ", "-A KUBE-EXTERNAL-SERVICES ")):
            out.filter_services.append(_raw(rt, table, n, line, rule))
    return out


def _raw(rt: RuleText, table: str, n: int, line: str, rule: str) -> RawRule:
    targets = _TARGET_RE.findall(rule)
    return RawRule(table, rule.split(" ", 2)[1], targets[-1] if targets else "", rt.source(n, line.rstrip("\r")), line)


def _dnat(file: str, chain: str, lines: list[tuple[int, str]]) -> Iterator[tuple[IPAddress, int, str]]:
    for n, line in lines:
        ip = _to_address(line)
        if ip is not None:
            yield ip, n, line


def _rule(rt: RuleText | None, file: str, chain: str, n: int, line: str) -> RawRule:
    src = rt.source(n, line.rstrip("\r")) if rt is not None else Source(file, n, 1, line.rstrip("\r"))
    return RawRule("nat", chain, "DNAT", src, line)


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
                        kube.targets[ip] = _rule(kube.text, rs.file, chain, n, line)
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
    return [(ip, _rule(kube.text, rs.file, sep, n, line)) for sep in kube.svc_endpoints.get(svc or "", [])
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


# --- evidence ---------------------------------------------------------------------------------------


def evidence_gaps(node: Node, needs: tuple[str, ...]) -> list[str]:
    """The inputs that would settle what `needs` asks for: empty when the input shows all of it whole.

    "rules" is the node's netfilter rules: a whole iptables-save (or nft ruleset) shows them; a
    listing, `-S` of some chains or a grep does not. "a|b" is satisfied by either.
    """
    from kptrace.model.node import COMPLETE, FACTS

    gaps: list[str] = []
    for need in needs:
        options = need.split("|")
        if any(_complete(node, o, COMPLETE) for o in options):
            continue
        file = "iptables-save.txt" if options[0] == "rules" else FACTS.get(options[0], options[0])
        why = node.not_collected.get(file)
        gaps.append(f"{file} ({why})" if why else file)
    return gaps


def evidence_gaps_of(node: Node) -> set[str]:
    """Which of the kinds the checks lean on most the input does not show whole ("rules", "routes", …)."""
    return {need for need in ("rules", "routes", "addresses", "links") if evidence_gaps(node, (need,))}


def _complete(node: Node, fact: str, complete: str) -> bool:
    if fact == "rules":
        levels = [node.level(f) for f in ("iptables", "nft")]
        partial = bool(node.coverage)
        return complete in levels and not partial and "iptables-save.txt" not in node.not_collected
    return node.level(fact) == complete and _file_of(fact) not in node.not_collected


def _file_of(fact: str) -> str:
    from kptrace.model.node import FACTS

    return FACTS.get(fact, fact)
