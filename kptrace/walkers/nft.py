"""Walk nftables base chains with nf_tables semantics, as entries of kptrace's hook order.

Every base chain registered at a hook, from every table of the packet's family (ip or ip6, and
inet for both), runs in priority order together with the iptables tables
(kptrace/walkers/netfilter.py sorts them): a drop anywhere drops; an accept only ends that base
chain. Inside a chain: rules in order; `jump` returns after the callee falls off its end or
`return`s; `goto` returns to the caller's caller; a base chain's policy applies at its end (or
on `return`). Verdict maps (`vmap @service-ips`, `numgen random mod 2 vmap { … }`) pick the
element's verdict; `numgen random` splits the packet into one branch per value.

NAT chains are not hooks of their own in the kernel: nf_nat registers one hook at -100
(prerouting, output) and 100 (input, postrouting) and runs every nat chain there, ordered by the
chain's priority, until one sets up the connection's NAT (net/netfilter/nf_nat_core.c,
nf_nat_inet_fn). So a nat chain's entry sits at those priorities, and a nat chain after one that
already bound the NAT is not run.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network

from kptrace.model.netfilter import Option, Target
from kptrace.model.nft import (
    AnonSet,
    Concat,
    Const,
    Counter,
    Ct,
    Element,
    Mangle,
    MapLookup,
    Match,
    Meta,
    Nat,
    NftChain,
    NftRule,
    NftRuleset,
    NftTable,
    Notrack,
    Numgen,
    Passive,
    Payload,
    Prefix,
    Range,
    Reject,
    SetRef,
    SetUpdate,
    UnknownStmt,
    Verdict,
    VerdictExpr,
    Vmap,
    Xt,
)
from kptrace.model.trace import Step
from kptrace.walkers.chains import (
    ACCEPT,
    CONTINUE,
    DROP,
    ENDS,
    REJECT,
    SPENT,
    UNDETERMINED,
    Pending,
    SplitBudget,
    apply_nat,
    merged,
)
from kptrace.walkers.matches import Chance, MatchContext, Unknown
from kptrace.walkers.hooks import HookEntry
from kptrace.walkers.nft_expr import (
    NOMATCH,
    TV,
    Dist,
    Env,
    Lookup,
    compare,
    element_counts,
    eval_int,
    lookup,
    read,
)
from kptrace.walkers.packet import Path

HOOK_NAMES = {"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward", "OUTPUT": "output",
              "POSTROUTING": "postrouting"}
# nf_nat's own hooks (NF_IP_PRI_NAT_DST / NF_IP_PRI_NAT_SRC): where every nat chain really runs.
NAT_CORE_PRIORITY = {"PREROUTING": -100, "OUTPUT": -100, "INPUT": 100, "POSTROUTING": 100}
CONNTRACK_PRIORITY = -200  # NF_IP_PRI_CONNTRACK: chains before it see no conntrack entry
MAX_DEPTH = 64

Outcome = tuple[Path, str]
# What one rule did: ("next",) go on with the next rule; ("end", verdict) the packet's verdict;
# ("return",) back to the caller; ("jump"|"goto", chain).
RuleResult = tuple[str, ...]
NEXT: RuleResult = ("next",)


def families(family: int) -> tuple[str, str]:
    return ("ip", "inet") if family == 4 else ("ip6", "inet")


def hook_entries(ruleset: object, hook: str, family: int, ctx_factory: Callable[[], MatchContext],
                 label: str | None) -> list[HookEntry]:
    """One HookEntry per nft base chain at this hook for this IP family, in the kernel's order."""
    if not isinstance(ruleset, NftRuleset) or hook not in HOOK_NAMES:
        return []
    nft_hook = HOOK_NAMES[hook]
    found: list[tuple[tuple[int, int, int], HookEntry]] = []
    before = 0  # chains in the tables before this one: nft lists tables and chains in creation order
    for tbl in ruleset.tables.values():
        for index, chain in tbl.hooked_chains():
            rank = before + index + 1
            if tbl.family not in families(family) or tbl.key in ruleset.skipped or "dormant" in tbl.flags:
                continue
            if chain.hook != nft_hook or chain.priority is None:
                continue
            nat = chain.type == "nat"
            prio = NAT_CORE_PRIORITY[hook] if nat else chain.priority
            walker = ChainWalk(tbl, chain, hook, ctx_factory, label)
            # At equal priority the kernel runs the hook registered last first (nf_hook_entries_grow
            # inserts a new hook before those of the same priority).
            found.append(((prio, chain.priority, -rank), HookEntry(prio, f"nft:{tbl.label}:{chain.name}", nat, walker.walk)))
        before += len(tbl.chains)
    found.sort(key=lambda x: x[0])
    return [e for _, e in found]


def nat_bound(path: Path, hook: str) -> bool:
    """This connection's NAT for the hook's direction is already set up on this node."""
    pkt = path.packet
    if hook in ("PREROUTING", "OUTPUT"):
        return pkt.dnat is not None and pkt.dnat_node == pkt.node
    return bool(pkt.masquerade or pkt.snat) and pkt.snat_node == pkt.node


class ChainWalk:
    """Walks one base chain (and the chains it jumps to) for one packet path."""

    def __init__(self, table: NftTable, chain: NftChain, hook: str, ctx_factory: Callable[[], MatchContext],
                 node: str | None) -> None:
        self.table, self.base, self.hook, self.ctx_factory, self.node = table, chain, hook, ctx_factory, node
        self.label = table.label
        prio = chain.priority if chain.priority is not None else 0
        self.ct_seen = not (hook in ("PREROUTING", "OUTPUT") and prio < CONNTRACK_PRIORITY)
        self.ctx: MatchContext = ctx_factory()
        self.budget: SplitBudget | None = None

    def walk(self, path: Path) -> list[Outcome]:
        if self.base.type == "nat" and nat_bound(path, self.hook):
            text = "the connection's NAT is already set up by an earlier nat chain: the kernel does not run this one"
            path = self._tie(path)
            return [(path.step(self._step(None, self.base, "SKIP", text, 0, self.base.source)), ACCEPT)]
        self.ctx = self.ctx_factory()
        self.budget = SplitBudget(path)
        out: list[Outcome] = []
        for p, v in self.chain(self.base, 0, path, 0):
            if v == CONTINUE:
                policy = self.base.policy.upper()
                src = self.base.policy_source or self.base.source
                p = p.step(self._step(None, self.base, f"POLICY {policy}", src.text, 0, src))
                v = ACCEPT if policy == "ACCEPT" else DROP
            out.append((p, v))
        return out

    def _tie(self, path: Path) -> Path:
        """An iptables nat table at this chain's own priority bound the NAT first: say it was assumed."""
        nat_actions = ("DNAT", "REDIRECT") if self.hook in ("PREROUTING", "OUTPUT") else ("MASQUERADE", "SNAT")
        binder = next((s for s in reversed(path.steps) if s.hook == self.hook and s.action in nat_actions), None)
        if binder is not None and binder.table and " " not in binder.table and self.base.priority == NAT_CORE_PRIORITY[self.hook]:
            path = path.assume(f"iptables' nat {self.hook} and {self.label} {self.base.name} share priority "
                               f"{self.base.priority}: the kernel runs the one registered last first, which no dump "
                               "shows; kptrace runs iptables' first")
        return path

    # -- steps ----------------------------------------------------------------------------------

    def _step(self, rule: NftRule | None, chain: NftChain | None, action: str, text: str, depth: int,
              source: object | None = None) -> Step:
        src = str(rule.source) if rule is not None else (str(source) if source is not None else None)
        return Step(self.hook, self.label, chain.name if chain else None, rule.index if rule else None, src, action,
                    text, depth, self.node)

    def _rule_step(self, rule: NftRule, action: str, depth: int) -> Step:
        return Step(self.hook, self.label, rule.chain, rule.index, str(rule.source), action, rule.text, depth, self.node)

    def _undetermined(self, rule: NftRule, path: Path, depth: int, reason: str) -> tuple[Path, RuleResult]:
        p = path.step(self._rule_step(rule, UNDETERMINED, depth)).unknown(f"{rule.source}: {reason}")
        return p, ("end", UNDETERMINED)

    def env(self, path: Path) -> Env:
        return Env(path.packet, self.ctx, self.hook, self.table, self.ct_seen)

    @staticmethod
    def _assume(path: Path, env: Env) -> Path:
        for a in env.assumptions:
            path = path.assume(a)
        return path

    # -- chains ---------------------------------------------------------------------------------

    def chain(self, chain: NftChain, start: int, path: Path, depth: int) -> list[Outcome]:
        """Every way the packet leaves this chain; CONTINUE: it fell off the end or returned.

        Paths a random choice or a returning jump leaves to go on in this chain wait in `pending`, walked
        in rule order: a loop, not a recursion, and paths that meet at one rule with the same packet go on
        as one; shares of the packets split below Pending.floor are one UNDETERMINED branch (chains.py)."""
        pending = Pending(path)
        pending.push(start, path)
        out: list[Outcome] = []
        while pending:
            i0, paths = pending.pop()
            where = f"rule {i0 + 1} of {self.label} {chain.name}" if i0 < len(chain.rules) else \
                f"the end of {self.label} {chain.name}"
            for p in merged(paths, where):
                out.extend(self._chain_from(chain, i0, p, depth, pending))
        return out + pending.lumped()

    def _chain_from(self, chain: NftChain, start: int, path: Path, depth: int, pending: Pending) -> list[Outcome]:
        out: list[Outcome] = []
        for i in range(start, len(chain.rules)):
            rule = chain.rules[i]
            if self.budget is not None and not self.budget.spend(path):
                pending.lump(path, self._rule_step(rule, UNDETERMINED, depth), str(rule.source), SPENT)
                return out
            results = self.rule(rule, path, depth)
            nexts: list[Path] = []
            for p, rr in results:
                if len(results) > 1 and p.probability < pending.floor and \
                        not (rr[0] == "end" and rr[1] in ENDS and pending.keep_small()):
                    # Too small a share to follow on (one that ends here, a rare drop, is said as it is).
                    pending.lump(p, self._rule_step(rule, UNDETERMINED, depth), str(rule.source))
                elif rr[0] == "next":
                    nexts.append(p)
                elif rr[0] == "end":
                    out.append((p, rr[1]))
                elif rr[0] == "return":
                    out.append((p, CONTINUE))
                else:
                    for sub, verdict in self.call(rr[1], rule, p, depth + 1):
                        if verdict != CONTINUE:
                            out.append((sub, verdict))
                        elif rr[0] == "goto":
                            # After a goto, falling off the target returns to this chain's caller.
                            out.append((sub, CONTINUE))
                        else:
                            pending.push(i + 1, sub)  # the jump returned: this chain goes on at its next rule
            if len(nexts) == 1 and len(results) == 1:
                path = nexts[0]
                continue
            # A split (or a jump that returned): the paths wait at the next rule, where equal ones go on as one.
            for p in nexts:
                pending.push(i + 1, p)
            return out
        out.append((path, CONTINUE))
        return out

    def call(self, target: str, rule: NftRule, path: Path, depth: int) -> list[Outcome]:
        chain = self.table.chains.get(target)
        if chain is None:
            p, _ = self._undetermined(rule, path, depth - 1, f"chain {target} is not in table {self.label}")
            return [(p, UNDETERMINED)]
        if depth > MAX_DEPTH:
            p, _ = self._undetermined(rule, path, depth - 1, f"jump depth over {MAX_DEPTH} (a loop between chains?)")
            return [(p, UNDETERMINED)]
        return self.chain(chain, 0, path, depth)

    # -- rules ----------------------------------------------------------------------------------

    def rule(self, rule: NftRule, path: Path, depth: int) -> list[tuple[Path, RuleResult]]:
        return self._stmts(rule, 0, path, depth, [])

    def _stmts(self, rule: NftRule, k: int, path: Path, depth: int, effects: list[str]) -> list[tuple[Path, RuleResult]]:
        stmts = rule.stmts
        while k < len(stmts):
            s = stmts[k]
            env = self.env(path)
            if isinstance(s, Match):
                r = compare(s.left, s.op, s.right, env)
                path = self._assume(path, env)
                if r is False:
                    return [(path, NEXT)]
                if isinstance(r, Unknown):
                    return [self._undetermined(rule, path, depth, r.reason)]
                if isinstance(r, Chance):
                    if r.p <= 0.0:
                        return [(path, NEXT)]
                    if r.p < 1.0:
                        taken = self._stmts(rule, k + 1, path.scaled(r.p), depth, list(effects))
                        return taken + [(path.scaled(1.0 - r.p), NEXT)]
            elif isinstance(s, Verdict):
                return [self._verdict(rule, VerdictExpr(s.kind, s.target), path, depth)]
            elif isinstance(s, Vmap):
                return self._vmap(rule, s, path, depth, env)
            elif isinstance(s, Nat):
                return self._nat(rule, s, path, depth, env)
            elif isinstance(s, Reject):
                return [(path.step(self._rule_step(rule, REJECT, depth)), ("end", REJECT))]
            elif isinstance(s, Mangle):
                changed = self._mangle(s, path, env)
                if isinstance(changed, Unknown):
                    return [self._undetermined(rule, path, depth, changed.reason)]
                path, effect = changed
                if effect:
                    effects.append(effect)
            elif isinstance(s, Notrack):
                path = path.with_packet(untracked=True)
                effects.append("NOTRACK")
            elif isinstance(s, Passive):
                if s.kind in ("limit", "quota"):
                    path = path.assume(f"{s.kind}s are not exceeded ({s.text})")
                    if " over " in f" {s.text} ":
                        return [(path, NEXT)]  # `limit rate over …` matches only above the rate
                effects.append(s.kind.upper())
            elif isinstance(s, Counter):
                effects.append("COUNTER")
            elif isinstance(s, SetUpdate):
                effects.append("SET")
            elif isinstance(s, Xt):
                if s.type == "match" and s.name.strip('"') == "comment":
                    k += 1
                    continue
                why = (f"iptables-nft extension `xt {s.type} {s.name}` is listed without its options; "
                       "add the iptables-nft-save dump of this table to the input")
                return [self._undetermined(rule, path, depth, why)]
            elif isinstance(s, UnknownStmt):
                return [self._undetermined(rule, path, depth, f"'{s.text}' is not modelled ({s.why})" if s.why
                                           else f"'{s.text}' is not modelled")]
            k += 1
        action = next((e for e in reversed(effects) if e not in ("COUNTER",)), None) or (
            "COUNTER" if "COUNTER" in effects else "CONTINUE")
        return [(path.step(self._rule_step(rule, action, depth)), NEXT)]

    def _verdict(self, rule: NftRule, v: VerdictExpr, path: Path, depth: int,
                 element: tuple[Element, str] | None = None) -> tuple[Path, RuleResult]:
        if element is not None:
            el, set_name = element
            text = f"@{set_name}: {el.text}" if set_name else el.text
            path = path.step(Step(self.hook, self.label, None, None, str(el.source) if el.source else None, "LOOKUP",
                                  text, depth, self.node))
        kind = v.kind
        if kind in ("jump", "goto"):
            return path.step(self._rule_step(rule, kind.upper(), depth)), (kind, v.target or "")
        if kind == "return":
            return path.step(self._rule_step(rule, "RETURN", depth)), ("return",)
        if kind == "continue":
            return path.step(self._rule_step(rule, "CONTINUE", depth)), NEXT
        if kind in ("accept", "drop"):
            return path.step(self._rule_step(rule, kind.upper(), depth)), ("end", kind.upper())
        return self._undetermined(rule, path, depth, f"verdict '{kind}' is not modelled")

    def _vmap(self, rule: NftRule, s: Vmap, path: Path, depth: int, env: Env) -> list[tuple[Path, RuleResult]]:
        set_name = s.data.name if isinstance(s.data, SetRef) else ""
        if isinstance(s.key, Numgen) and s.key.mode == "random":
            return self._numgen_map(rule, s.key, s.data, path, depth, env, lambda p, el: [self._verdict(
                rule, el.value, p, depth, (el, set_name) if set_name else None)] if isinstance(el.value, VerdictExpr)
                else [self._undetermined(rule, p, depth, "a verdict map element without a verdict")])
        v = read(s.key, env)
        path = self._assume(path, env)
        if v is NOMATCH:
            return [(path, NEXT)]
        if isinstance(v, Unknown):
            return [self._undetermined(rule, path, depth, v.reason)]
        if isinstance(v, Dist) or not isinstance(v, TV):
            return [self._undetermined(rule, path, depth, "a random key outside numgen random is not modelled")]
        found = lookup(v, s.data, env)
        path = self._assume(path, env)
        if isinstance(found, Unknown):
            return [self._undetermined(rule, path, depth, found.reason)]
        if found.element is None:
            return [(path, NEXT)]  # no element: the rule does not match
        el = found.element
        if not isinstance(el.value, VerdictExpr):
            return [self._undetermined(rule, path, depth, "a verdict map element without a verdict")]
        return [self._verdict(rule, el.value, path, depth, (el, set_name) if set_name else None)]

    def _numgen_map(self, rule: NftRule, key: Numgen, data: SetRef | AnonSet, path: Path, depth: int, env: Env,
                    then: Callable[[Path, Element], list[tuple[Path, RuleResult]]]) -> list[tuple[Path, RuleResult]]:
        """`numgen random mod N vmap { … }`: each element gets the share of the N values it holds
        (nft_ng_random_eval), one branch per element; values no element holds do not match the rule.
        A numgen of 2^32 values is counted from the elements, never enumerated."""
        if key.mod <= 0:
            return [self._undetermined(rule, path, depth, f"numgen random mod {key.mod} has no value")]
        values = range(key.offset, key.offset + key.mod)
        counts = element_counts(values, data, env)
        path = self._assume(path, env)
        if isinstance(counts, Unknown):
            return [self._undetermined(rule, path, depth, counts.reason)]
        out: list[tuple[Path, RuleResult]] = []
        held = 0
        for element, n in counts:
            held += n
            out.extend(then(path.scaled(n / key.mod) if n < key.mod else path, element))
        if held < key.mod:
            out.append((path.scaled((key.mod - held) / key.mod), NEXT))
        return out

    def _nat(self, rule: NftRule, s: Nat, path: Path, depth: int, env: Env) -> list[tuple[Path, RuleResult]]:
        if isinstance(s.addr, MapLookup):
            lk = s.addr
            if isinstance(lk.key, Numgen) and lk.key.mode == "random":
                return self._numgen_map(rule, lk.key, lk.data, path, depth, env,
                                        lambda p, el: [self._apply_nat(rule, s, el.value, p, depth)])
            v = read(lk.key, env)
            if v is NOMATCH:
                return [(path, NEXT)]
            if not isinstance(v, TV):
                reason = v.reason if isinstance(v, Unknown) else "a random map key outside numgen random"
                return [self._undetermined(rule, path, depth, reason)]
            found = lookup(v, lk.data, env)
            path = self._assume(path, env)
            if isinstance(found, Unknown):
                return [self._undetermined(rule, path, depth, found.reason)]
            if found.element is None:
                return [(path, NEXT)]  # the map has no address for this packet: the rule breaks
            set_name = lk.data.name if isinstance(lk.data, SetRef) else ""
            if set_name:
                el = found.element
                path = path.step(Step(self.hook, self.label, None, None, str(el.source) if el.source else None, "LOOKUP",
                                      f"@{set_name}: {el.text}", depth, self.node))
            return [self._apply_nat(rule, s, found.element.value, path, depth)]
        return [self._apply_nat(rule, s, s.addr, path, depth)]

    def _apply_nat(self, rule: NftRule, s: Nat, addr: object, path: Path, depth: int) -> tuple[Path, RuleResult]:
        host = _const_text(addr) if addr is not None else None
        if addr is not None and host is None:
            return self._undetermined(rule, path, depth, f"{s.kind} to a computed address is not modelled")
        port = _const_text(s.port) if s.port is not None else None
        if s.kind in ("dnat", "snat"):
            if host is None:
                host = str(path.packet.dst) if s.kind == "dnat" else str(path.packet.src)
            shown = f"[{host}]" if ":" in host and port is not None else host
            opt = "--to-destination" if s.kind == "dnat" else "--to-source"
            t = Target(s.kind.upper(), (Option(opt, (f"{shown}:{port}" if port else shown,)),))
        elif s.kind == "redirect":
            t = Target("REDIRECT", (Option("--to-ports", (port,)),) if port else ())
        else:
            t = Target("MASQUERADE")
        path = apply_nat(t, path, self.ctx)
        for a in self.ctx.assumptions:
            path = path.assume(a)
        self.ctx.assumptions.clear()
        return path.step(self._rule_step(rule, t.name, depth)), ("end", ACCEPT)

    def _mangle(self, s: Mangle, path: Path, env: Env) -> tuple[Path, str | None] | Unknown:
        key = s.key
        if isinstance(key, (Meta, Ct)) and key.key == "mark":
            value = eval_int(s.value, env)
            if isinstance(value, Unknown):
                return value
            if isinstance(key, Meta):
                return path.with_packet(mark=value & 0xFFFFFFFF), "MARK"
            return path.with_packet(ctmark=value & 0xFFFFFFFF), "CONNMARK"
        if isinstance(key, Payload) and key.field in ("saddr", "daddr", "sport", "dport"):
            return Unknown(f"stateless rewrite of {key.proto} {key.field} is not modelled")
        # nftrace, priority, dscp, ct zone/helper…: no effect on where the packet goes.
        return path, None


def _const_text(e: object) -> str | None:
    if isinstance(e, Const):
        return str(e.value)
    if isinstance(e, Range) and isinstance(e.lo, Const) and isinstance(e.hi, Const):
        return f"{e.lo.value}-{e.hi.value}"
    if isinstance(e, Prefix):
        return f"{e.addr}/{e.length}"
    return None


# ---------------------------------------------------------------------------------------------
# Loading: what the nft view leaves to the iptables view


def reconcile(node: object) -> None:
    """Tables iptables-nft wrote are walked from iptables-save when the input has it (same rules,
    with all their options); otherwise from the nft dump, where `xt` extensions are UNDETERMINED."""
    from kptrace.model.node import Node

    if not isinstance(node, Node) or not isinstance(node.nft, NftRuleset):
        return
    rs = node.nft
    legacy_files = {i.file for i in node.inputs if "legacy" in i.kind}
    for tbl in rs.tables.values():
        if tbl.family in ("netdev", "bridge", "arp") and any(c.base for c in tbl.chains.values()):
            node.assumptions.append(f"table {tbl.label} ({rs.file}) hooks {tbl.family} traffic, which kptrace does "
                                    "not walk; its chains are not consulted")
            continue
        if not tbl.iptables_nft:
            continue
        fam = {"ip": 4, "ip6": 6}.get(tbl.family)
        ipt = node.rulesets.get(fam) if fam is not None else None
        if ipt is not None and ipt.file not in legacy_files and tbl.name in ipt.tables:
            rs.skipped[tbl.key] = f"read from {ipt.file}"
            node.assumptions.append(f"table {tbl.label} in {rs.file} is iptables-nft's: its rules are read from "
                                    f"{ipt.file} (the iptables view) and skipped in the nft view")
        else:
            node.assumptions.append(f"table {tbl.label} in {rs.file} was written by iptables-nft and no "
                                    "iptables-nft-save of it is in the input: read from the nft dump "
                                    "(extensions listed as `xt …` are UNDETERMINED)")
    if not node.pod_cidrs:
        _infer_pod_cidr(node, rs)


def _infer_pod_cidr(node: object, rs: NftRuleset) -> None:
    """kube-proxy's local-traffic detector: `ip saddr != CIDR jump mark-for-masquerade` in service chains."""
    from kptrace.model.node import Node

    assert isinstance(node, Node)
    for fam in ("ip", "ip6"):
        tbl = rs.table(fam, "kube-proxy")
        if tbl is None:
            continue
        for name in [n for n in tbl.chains if n.startswith("service-")][:50]:
            for r in tbl.chains[name].rules:
                for s in r.stmts:
                    if (isinstance(s, Match) and s.op == "!=" and isinstance(s.left, Payload)
                            and s.left.field == "saddr" and isinstance(s.right, Prefix)
                            and any(isinstance(x, Verdict) and x.target == "mark-for-masquerade" for x in r.stmts)):
                        net = (IPv4Network if fam == "ip" else IPv6Network)(f"{s.right.addr}/{s.right.length}", strict=False)
                        node.pod_cidrs.append(net)
                        node.assumptions.append(f"pod CIDR {net}, read from kube-proxy's masquerade rule at {r.source}")
                        return


__all__ = ["ChainWalk", "Concat", "Lookup", "hook_entries", "nat_bound", "reconcile"]
