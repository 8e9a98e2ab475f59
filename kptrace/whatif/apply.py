"""Apply what-if changes to copies of loaded nodes: the input's model is never changed, nor any node.

A node is copied when a change first touches it, and only the parts a change can touch are copied
(its settings, modules, routes, bridge ports and conntrack lists; a ruleset, table and chain only when
a rule of theirs changes): a 10k-Service node's lazily read dump stays lazy except for the chain changed.
What each change did is said in an Applied record, in the words `iptables`, `sysctl` and `ip` would use.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from ipaddress import ip_address
from typing import TypeVar

from kptrace.model.netfilter import Chain, LazyChains, Rule, Ruleset, Table
from kptrace.model.node import ConntrackEntry, Node, Setting
from kptrace.model.routing import BridgePort, KernelModule, Route
from kptrace.model.source import ASSUMED_FILE, Source
from kptrace.model.trace import InputFile
from kptrace.whatif.grammar import FILE, Change, WhatIfError


T = TypeVar("T")


class NotApplicable(Exception):
    """The change does not apply to this node (no such chain, rule, route or port): said, never guessed."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one change did on one node."""

    change: Change
    node: str
    effect: str

    def __str__(self) -> str:
        return f"{self.change.cite} on {self.node}: {self.effect}"


@dataclass(slots=True)
class WhatIf:
    """The changed cluster and what each change did (the input's nodes stay as they were)."""

    cluster: list[Node]
    applied: list[Applied]
    changes: list[Change]

    def by_change(self, c: Change) -> list[Applied]:
        return [a for a in self.applied if a.change is c]


def apply_changes(cluster: list[Node], changes: list[Change]) -> WhatIf:
    """Each change, in order, on every node it names (`@NODE`) or on every node it applies to.

    A change that applies to no node of the input is an error (exit 2), with the reason the node gave:
    iptables would refuse `-D FORWARD 9` on a chain of 5 rules just the same."""
    copies: dict[int, Node] = {}
    own = Own()
    out = list(cluster)
    applied: list[Applied] = []
    names = {n.name for n in cluster}
    for c in changes:
        if c.node is not None and c.node not in names:
            raise WhatIfError(c.n, 1, f"@{c.node}: no such node in the input ({', '.join(sorted(names))})", c.text)
        reasons: list[str] = []
        done = False
        for i, node in enumerate(out):
            if c.node is not None and node.name != c.node:
                continue
            work = copies.get(i)
            if work is None:
                work = copies[i] = _copy_node(node)
            try:
                effect = _apply(work, c, own)
            except NotApplicable as e:
                reasons.append(f"{node.name}: {e}" if len(cluster) > 1 else str(e))
                continue
            out[i] = work
            applied.append(Applied(c, node.name, effect))
            done = True
        if not done:
            raise WhatIfError(c.n, c.col, "does not apply: " + "; ".join(reasons), c.text)
    for i, node in copies.items():
        if out[i] is node:
            for c in changes:
                if any(a.change is c and a.node == node.name for a in applied):
                    node.inputs.append(InputFile(c.cite, "what-if", hashlib.sha256(c.text.encode()).hexdigest()))
    return WhatIf(out, applied, changes)


def _copy_node(node: Node) -> Node:
    new = copy.copy(node)
    new.sysctls = dict(node.sysctls)
    new.conflicts = set(node.conflicts)
    new.modules = list(node.modules) if node.modules is not None else None
    new.modules_not_loaded = dict(node.modules_not_loaded)
    new.routes = list(node.routes)
    new.bridge_ports = list(node.bridge_ports)
    new.conntrack = list(node.conntrack) if node.conntrack is not None else None
    new.inputs = list(node.inputs)
    new.rulesets = dict(node.rulesets)
    new.legacy_rulesets = dict(node.legacy_rulesets)
    new.assumptions = list(node.assumptions)
    new._local = None
    return new


class Own(dict[int, object]):
    """The objects this what-if made (by id, kept alive so no id is reused): only these are written to."""

    def keep(self, obj: T) -> T:
        self[id(obj)] = obj
        return obj


def _apply(node: Node, c: Change, own: Own) -> str:
    if c.kind == "sysctl":
        return _sysctl(node, c)
    if c.kind == "modprobe":
        return _modprobe(node, c)
    if c.kind == "iptables":
        return _iptables(node, c, own)
    if c.kind == "delete":
        return _delete(node, c, own)
    if c.kind == "route":
        return _route(node, c)
    if c.kind == "hairpin":
        return _hairpin(node, c)
    if c.kind == "conntrack":
        return _conntrack(node, c)
    if c.kind == "nft":
        return _nft(node, c, own)
    raise NotApplicable(f"unknown change kind {c.kind}")


# --- sysctl and modules ------------------------------------------------------------------------------

def _set(node: Node, key: str, value: str, src: Source) -> str:
    old = node.sysctls.get(key)
    node.sysctls[key] = Setting(value, src)
    node.conflicts.discard(key)
    was = old.value.strip() if old is not None else "not in the input"
    return f"{key} = {value} (was {was})"


def _sysctl(node: Node, c: Change) -> str:
    effects = []
    for key, value, col in c.settings:
        src = Source(FILE, c.n, col, c.text)
        effects.append(_set(node, key, value, src))
        # Writing ip_forward (or conf.all.forwarding) sets every interface's forwarding and the default
        # (net/ipv4/devinet.c, devinet_sysctl_forward -> inet_forward_change); IPv6's all.forwarding alike
        # (net/ipv6/addrconf.c, addrconf_fixup_forwarding).
        if key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"):
            also = sorted({k for k in node.sysctls if k.startswith("net.ipv4.conf.") and k.endswith(".forwarding")}
                          | {"net.ipv4.conf.all.forwarding", "net.ipv4.conf.default.forwarding",
                             "net.ipv4.ip_forward"} - {key})
            changed = [k for k in also if (node.sysctls.get(k) or Setting("", src)).value.strip() != value]
            for k in also:
                node.sysctls[k] = Setting(value, src)
                node.conflicts.discard(k)
            if changed:
                effects.append(f"and {', '.join(changed)} (the kernel sets every interface's forwarding with it)")
        elif key == "net.ipv6.conf.all.forwarding":
            for k in [k for k in node.sysctls if k.startswith("net.ipv6.conf.") and k.endswith(".forwarding")]:
                node.sysctls[k] = Setting(value, src)
    return "; ".join(effects)


BR_NETFILTER_KEYS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
                     "net.bridge.bridge-nf-call-arptables")


def _modprobe(node: Node, c: Change) -> str:
    src = c.source
    effects = []
    for name in c.modules:
        have = [m for m in node.modules or [] if m.name == name]
        if c.remove:
            if node.modules is not None:
                node.modules = [m for m in node.modules if m.name != name]
            node.modules_not_loaded[name] = src
            effects.append(f"{name} unloaded" if have else f"{name} not loaded")
            if name == "br_netfilter":
                for k in BR_NETFILTER_KEYS:
                    node.sysctls.pop(k, None)
            continue
        node.modules_not_loaded.pop(name, None)
        if have:
            effects.append(f"{name} already loaded ({have[0].source})")
            continue
        if node.modules is None:
            node.modules = []
        node.modules.append(KernelModule(name, src))
        effect = f"{name} loaded"
        if name == "br_netfilter":
            # Loading the module creates its sysctls with the kernel's default, 1 (net/bridge/br_netfilter_hooks.c);
            # keys already in the input keep their value (the module was loaded and someone set them).
            made = [k for k in BR_NETFILTER_KEYS if k not in node.sysctls]
            for k in made:
                node.sysctls[k] = Setting("1", src)
            kept = [f"{k} = {node.sysctls[k].value.strip()}" for k in BR_NETFILTER_KEYS[:2] if k not in made]
            if made:
                effect += f": {', '.join(k + ' = 1' for k in made[:2])} (the module's default)"
            if kept:
                effect += f"; {', '.join(kept)} stays as the input shows it"
        effects.append(effect)
    return "; ".join(effects)


# --- iptables ------------------------------------------------------------------------------------------

def _ruleset(node: Node, c: Change, own: Own) -> tuple[dict[int, Ruleset], Ruleset]:
    """The ruleset the change is for (the main backend's, else the legacy one's), copied for writing."""
    for store in (node.rulesets, node.legacy_rulesets):
        rs = store.get(c.family)
        if rs is not None and c.table in rs.tables:
            if id(rs) not in own:
                rs = copy.copy(rs)
                rs.tables = dict(rs.tables)
                rs.text = None  # the dump's text no longer says what the rules are: checks read the rules
                store[c.family] = own.keep(rs)
            return store, rs
    fam = "ip6tables" if c.family == 6 else "iptables"
    raise NotApplicable(f"the input has no {fam} {c.table} table")


def _copy_chains(chains: dict[str, Chain] | LazyChains) -> dict[str, Chain] | LazyChains:
    if isinstance(chains, LazyChains):
        new = copy.copy(chains)
        new._made = dict(chains._made)
        return new
    return dict(chains)


def _real(chain: Chain) -> list[int]:
    """Indexes of the chain's rules as the node numbers them (kptrace's assumed kube-proxy jumps are not on it)."""
    return [i for i, r in enumerate(chain.rules) if r.source.file != ASSUMED_FILE]


def _renumber(chain: Chain) -> None:
    rules = chain.rules
    for i, r in enumerate(rules):
        if r.index != i + 1:
            rules[i] = replace(r, index=i + 1)


def _iptables(node: Node, c: Change, own: Own) -> str:
    _, rs = _ruleset(node, c, own)
    t = rs.tables[c.table]
    if c.chain not in t.chains:
        raise NotApplicable(f"no chain {c.chain} in the {c.table} table")
    # Copy the table's chain mapping once per change set.
    chain = _chain_for_write(rs, c.table, c.chain, own)
    where = f"{c.table} {c.chain}"
    if c.op == "P":
        old = chain.policy
        chain.policy = c.policy
        chain.source = c.source
        return f"{where} policy {c.policy} (was {old})"
    real = _real(chain)
    if c.op == "D":
        if c.position is not None:
            if c.position > len(real):
                raise NotApplicable(f"{where} has {len(real)} rule(s): no rule {c.position} to delete "
                                    f"(iptables: Index of deletion too big)")
            k = real[c.position - 1]
        else:
            assert c.rule is not None
            want = rule_key(c.rule, c.family)
            hit = next((k for k in real if rule_key(chain.rules[k], c.family) == want), None)
            if hit is None:
                raise NotApplicable(f"no rule of {where} is `{_spec(c.rule)}` (iptables: Bad rule (does a matching "
                                    f"rule exist in that chain?))")
            k = hit
        dropped = chain.rules.pop(k)
        _renumber(chain)
        return f"deleted {where} rule {real.index(k) + 1} ({dropped.source}: {_spec(dropped)})"
    assert c.rule is not None
    rule = replace(c.rule, table=c.table, chain=c.chain)
    if c.op == "A":
        chain.rules.append(rule)
        _renumber(chain)
        return f"appended to {where} as rule {len(real) + 1}: {_spec(rule)}"
    assert c.position is not None
    if c.op == "I":
        if c.position > len(real) + 1:
            raise NotApplicable(f"{where} has {len(real)} rule(s): cannot insert at {c.position} "
                                f"(iptables: Index of insertion too big)")
        k = real[c.position - 1] if c.position <= len(real) else len(chain.rules)
        chain.rules.insert(k, rule)
        _renumber(chain)
        return f"inserted into {where} as rule {c.position}: {_spec(rule)}"
    if c.position > len(real):
        raise NotApplicable(f"{where} has {len(real)} rule(s): no rule {c.position} to replace")
    k = real[c.position - 1]
    was = chain.rules[k]
    chain.rules[k] = rule
    _renumber(chain)
    return f"replaced {where} rule {c.position} ({was.source}: {_spec(was)}) with {_spec(rule)}"


def _chain_for_write(rs: Ruleset, table: str, name: str, own: Own) -> Chain:
    t = rs.tables[table]
    if id(t) not in own:
        t = own.keep(Table(t.name, t.source, _copy_chains(t.chains)))
        rs.tables[table] = t
    chain = t.chains[name]
    if id(chain) not in own:
        if chain.source.text.startswith("(not in the input"):
            raise NotApplicable(f"{table} {name} is not in the input: its rules are unknown")
        chain = own.keep(Chain(chain.table, chain.name, chain.policy, chain.source, list(chain.rules), chain.counters))
        t.chains[name] = chain
    return chain


def _spec(rule: Rule) -> str:
    from kptrace.parsers.iptables_save import render_rule

    return render_rule(rule).split(" ", 2)[2] if render_rule(rule).count(" ") >= 2 else ""


def rule_key(rule: Rule, family: int = 4) -> tuple[object, ...]:
    """What `iptables -D CHAIN SPEC` compares: the rule's parts, not how they were written
    (`-d 10.0.0.1` and `-d 10.0.0.1/32`, `-p tcp --dport 80` and `-p tcp -m tcp --dport 80` are one rule)."""
    def cond(cnd: object) -> object:
        if cnd is None:
            return None
        value = getattr(cnd, "value")
        if isinstance(value, tuple):
            value = tuple(sorted(str(v) for v in value))
        return (value, getattr(cnd, "negated"))
    matches = tuple((m.module, m.negated, tuple((o.name, o.values, o.negated) for o in m.options)) for m in rule.matches)
    target = None
    if rule.target is not None:
        opts = tuple((o.name, o.values) for o in rule.target.options)
        if rule.target.name == "REJECT" and not opts:
            # iptables fills in the default, and iptables-save prints it (libipt_REJECT.c, libip6t_REJECT.c).
            opts = (("--reject-with", ("icmp6-port-unreachable" if family == 6 else "icmp-port-unreachable",)),)
        target = (rule.target.name, rule.target.goto, opts)
    return (cond(rule.proto), cond(rule.src), cond(rule.dst), cond(rule.in_iface), cond(rule.out_iface),
            cond(rule.fragment), matches, target)


# --- delete FILE:LINE -----------------------------------------------------------------------------------

def _same_file(cited: str, wanted: str) -> bool:
    return cited == wanted or cited.endswith("/" + wanted) or wanted.endswith("/" + cited)


def _delete(node: Node, c: Change, own: Own) -> str:
    for store in (node.rulesets, node.legacy_rulesets):
        for fam, rs in list(store.items()):
            # `delete what-if:N`: a rule an earlier change added (its source is what-if:N), in any ruleset.
            if c.file != FILE and not _same_file(rs.file, c.file) and \
                    not any(_same_file(f, c.file) for f in _rule_files(rs)):
                continue
            for tname, t in rs.tables.items():
                for cname in list(t.chains):
                    chain = t.chains[cname]
                    for i, r in enumerate(chain.rules):
                        if r.source.line == c.line and _same_file(r.source.file, c.file):
                            op = Change(c.n, c.text, "iptables", c.node, c.col, family=fam, table=tname, op="D",
                                        chain=cname, position=_real(chain).index(i) + 1)
                            return _iptables(node, op, own)
    for i, route in enumerate(node.routes):
        if route.source is not None and route.source.line == c.line and _same_file(route.source.file, c.file):
            node.routes.pop(i)
            return f"deleted the route {_route_text(route)} ({route.source})"
    nft = node.nft
    if nft is not None:
        from kptrace.model.nft import NftRuleset

        assert isinstance(nft, NftRuleset)
        for (nfam, ntable), nt in nft.tables.items():
            for ncname in list(nt.chains):
                for nr in nt.chains[ncname].rules:
                    if nr.source.source.line == c.line and _same_file(nr.source.source.file, c.file):
                        return _nft_delete(node, nfam, ntable, ncname, nr, c, own)
    raise NotApplicable(f"no rule or route of the input is at {c.file}:{c.line}")


def _rule_files(rs: Ruleset) -> set[str]:
    return {rs.file}


# --- routes -----------------------------------------------------------------------------------------------

def _route_text(r: Route) -> str:
    dst = "default" if r.dst.prefixlen == 0 else str(r.dst)
    words = ([r.type] if r.type != "unicast" else []) + [dst]
    for h in r.nexthops[:1]:
        if h.gateway is not None:
            words += ["via", str(h.gateway)]
        if h.dev:
            words += ["dev", h.dev]
    if r.table != "main":
        words += ["table", r.table]
    return " ".join(words)


def _route_matches(have: Route, want: Route) -> bool:
    """`ip route del` picks the first route with this destination, table (and type, metric, via, dev when given)."""
    if have.dst != want.dst or have.table != want.table:
        return False
    if want.type != "unicast" and have.type != want.type:
        return False
    if want.metric and have.metric != want.metric:
        return False
    for h in want.nexthops:
        if not any((h.gateway is None or g.gateway == h.gateway) and (h.dev is None or g.dev == h.dev)
                   for g in have.nexthops):
            return False
    return True


def _route(node: Node, c: Change) -> str:
    route = c.route
    assert route is not None
    if node.level("routes") is None and not node.routes:
        raise NotApplicable("the input has no routing table")
    same = [i for i, r in enumerate(node.routes) if r.dst == route.dst and r.table == route.table
            and r.metric == route.metric and r.tos == route.tos]
    if c.op == "del":
        hit = next((i for i, r in enumerate(node.routes) if _route_matches(r, route)), None)
        if hit is None:
            raise NotApplicable(f"no route {_route_text(route)} (RTNETLINK answers: No such process)")
        gone = node.routes.pop(hit)
        return f"deleted the route {_route_text(gone)} ({gone.source})"
    if c.op == "add":
        if same:
            old = node.routes[same[0]]
            raise NotApplicable(f"a route to {_route_text(old)} is already there ({old.source}; RTNETLINK answers: File "
                                f"exists; use ip route replace)")
        node.routes.append(route)
        return f"added the route {_route_text(route)}"
    if same:
        old = node.routes[same[0]]
        node.routes[same[0]] = route
        return f"replaced the route {_route_text(old)} ({old.source}) with {_route_text(route)}"
    node.routes.append(route)
    return f"added the route {_route_text(route)}"


# --- hairpin ----------------------------------------------------------------------------------------------

def _hairpin(node: Node, c: Change) -> str:
    mode = "on" if c.on else "off"
    for i, p in enumerate(node.bridge_ports):
        if p.name == c.dev:
            node.bridge_ports[i] = replace(p, hairpin=c.on, source=c.source)
            was = "not shown" if p.hairpin is None else ("on" if p.hairpin else "off")
            return f"hairpin {mode} on {c.dev} (port of {p.master}; was {was})"
    link = next((lk for lk in node.links if lk.name == c.dev), None)
    if link is not None and link.master:
        node.bridge_ports.append(BridgePort(c.dev, link.master, None, c.on, c.source))
        return f"hairpin {mode} on {c.dev} (port of {link.master}; its mode was not in the input)"
    if link is not None:
        raise NotApplicable(f"{c.dev} is not a bridge port (no master in the input)")
    raise NotApplicable(f"no device {c.dev} in the input (Cannot find device \"{c.dev}\")")


# --- conntrack --------------------------------------------------------------------------------------------

def _ct_matches(e: ConntrackEntry, filters: tuple[tuple[str, str], ...]) -> bool:
    for key, value in filters:
        o, r = e.original, e.reply
        if key == "proto" and e.proto.lower() != value:
            return False
        if key == "family" and e.family != (6 if value == "ipv6" else 4):
            return False
        if key == "src" and o.src != ip_address(value):
            return False
        if key == "dst" and o.dst != ip_address(value):
            return False
        if key == "sport" and o.sport != int(value):
            return False
        if key == "dport" and o.dport != int(value):
            return False
        if key in ("reply-src", "reply-dst", "reply-sport", "reply-dport"):
            if r is None:
                return False
            got = {"reply-src": r.src, "reply-dst": r.dst, "reply-sport": r.sport, "reply-dport": r.dport}[key]
            want: object = ip_address(value) if key in ("reply-src", "reply-dst") else int(value)
            if got != want:
                return False
        if key == "mark":
            v, _, m = value.partition("/")
            mask = int(m, 0) if m else 0xFFFFFFFF
            if e.mark is None or (e.mark & mask) != (int(v, 0) & mask):
                return False
        if key == "zone" and (e.zone or 0) != int(value):
            return False
    return True


def _conntrack(node: Node, c: Change) -> str:
    if node.conntrack is None:
        raise NotApplicable("the input has no conntrack listing (conntrack -L)")
    before = len(node.conntrack)
    if c.op == "F":
        node.conntrack = []
        return f"flushed the conntrack table ({before} entries)"
    node.conntrack = [e for e in node.conntrack if not _ct_matches(e, c.filters)]
    gone = before - len(node.conntrack)
    if not gone:
        raise NotApplicable("no conntrack entry matches (0 flow entries have been deleted)")
    return f"deleted {gone} conntrack entr{'y' if gone == 1 else 'ies'}"


# --- nft --------------------------------------------------------------------------------------------------

def _nft_chain(node: Node, family: str, table: str, chain: str, own: Own) -> object:
    """The nft chain to change, copied (and the ruleset and table holding it)."""
    from kptrace.model.nft import NftChain, NftRuleset, NftTable

    nft = node.nft
    if not isinstance(nft, NftRuleset):
        raise NotApplicable("the input has no nft ruleset")
    t = nft.tables.get((family, table))
    if t is None:
        raise NotApplicable(f"no table {family} {table} in the nft ruleset")
    ch = t.chains.get(chain)
    if ch is None:
        raise NotApplicable(f"no chain {chain} in table {family} {table}")
    if id(nft) not in own:
        nft = copy.copy(nft)
        nft.tables = dict(nft.tables)
        node.nft = own.keep(nft)
    assert isinstance(nft, NftRuleset)
    t = nft.tables[(family, table)]
    if id(t) not in own:
        t = copy.copy(t)
        t.chains = dict(t.chains.items())
        nft.tables[(family, table)] = own.keep(t)
    assert isinstance(t, NftTable)
    ch = t.chains[chain]
    if id(ch) not in own:
        ch = copy.copy(ch)
        ch.rules = list(ch.rules)
        t.chains[chain] = own.keep(ch)
    assert isinstance(ch, NftChain)
    return ch


def _nft_renumber(ch: object) -> None:
    from kptrace.model.nft import NftChain

    assert isinstance(ch, NftChain)
    for k, r in enumerate(ch.rules):
        if r.index != k + 1:
            ch.rules[k] = replace(r, index=k + 1)


def _nft_delete(node: Node, family: str, table: str, chain: str, rule: object, c: Change, own: Own) -> str:
    from kptrace.model.nft import NftChain, NftRule

    ch = _nft_chain(node, family, table, chain, own)
    assert isinstance(ch, NftChain) and isinstance(rule, NftRule)
    k = next(i for i, r in enumerate(ch.rules) if r.source == rule.source and r.index == rule.index)
    ch.rules.pop(k)
    _nft_renumber(ch)
    return f"deleted the rule `{rule.text}` of {family} {table} {chain} ({rule.source})"


def _nft(node: Node, c: Change, own: Own) -> str:
    from kptrace.model.nft import NftChain, NftRule

    ch = _nft_chain(node, c.nft_family, c.table, c.chain, own)
    assert isinstance(ch, NftChain)
    where = f"{c.nft_family} {c.table} {c.chain}"
    at: int | None = None
    if c.handle is not None and c.handle >= 0:
        at = next((i for i, r in enumerate(ch.rules) if r.handle == c.handle), None)
        if at is None:
            shown = any(r.handle is not None for r in ch.rules)
            raise NotApplicable(f"no rule with handle {c.handle} in {where}" +
                                ("" if shown else " (the input was listed without -a: no handles)"))
    elif c.handle is not None:
        at = -1 - c.handle
        if at > len(ch.rules):
            raise NotApplicable(f"{where} has {len(ch.rules)} rule(s): no index {at}")
    if c.op == "delete":
        assert at is not None
        gone = ch.rules.pop(at)
        _nft_renumber(ch)
        return f"deleted the rule `{gone.text}` of {where} ({gone.source})"
    rule = c.nft_rule
    assert isinstance(rule, NftRule)
    rule = replace(rule, family=c.nft_family, table=c.table, chain=c.chain)
    if c.op == "replace":
        assert at is not None
        old = ch.rules[at]
        ch.rules[at] = rule
        _nft_renumber(ch)
        return f"replaced `{old.text}` ({old.source}) with `{rule.text}` in {where}"
    if c.op == "add":
        k = len(ch.rules) if at is None else (at + 1 if c.handle is not None and c.handle >= 0 else at)
    else:
        k = 0 if at is None else at
    ch.rules.insert(k, rule)
    _nft_renumber(ch)
    return f"{'added' if c.op == 'add' else 'inserted'} `{rule.text}` to {where} as rule {k + 1}"
