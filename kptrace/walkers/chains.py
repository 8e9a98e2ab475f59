"""Walk one table's chain with netfilter semantics: rules in order, jumps, goto, RETURN, policies.

A chain walk returns every way the packet can leave the chain, as (Path, verdict) pairs, because a
`-m statistic --mode random` rule splits the packet into a matching and a non-matching branch.
"""

from __future__ import annotations

import heapq
import re
import sys
from collections.abc import Callable
from ipaddress import ip_address

from kptrace.model.flow import IPAddress
from kptrace.model.netfilter import Chain, Rule, Ruleset, Target
from kptrace.model.trace import Step
from kptrace.walkers.matches import Chance, MatchContext, Unknown, eval_rule, parse_mark
from kptrace.walkers.packet import Path
from kptrace.walkers.rule_index import candidates

# Verdicts a chain walk can end with.
CONTINUE = "CONTINUE"  # fell off a user chain or RETURNed: the caller goes on
ACCEPT, DROP, REJECT, UNDETERMINED = "ACCEPT", "DROP", "REJECT", "UNDETERMINED"
NAT_TARGETS = {"DNAT", "SNAT", "MASQUERADE", "REDIRECT"}
# Targets that record or tweak the packet and let it go on to the next rule.
CONTINUING_TARGETS = {"LOG", "NFLOG", "TRACE", "CHECKSUM", "TCPMSS", "NOTRACK", "CT", "MARK", "CONNMARK"}
GROUP_SEP = ": unknown chain "  # absent.py / paste.py: "<what is missing>: unknown chain <table>/<chain>"
MAX_CONDITIONS = 6  # unknowns one what-if branch may go past; more and only the UNDETERMINED branch is kept
MAX_DEPTH = 64  # the kernel refuses deeper jump stacks; a loop in a dump is reported, not followed
# Random branches are followed down to this share of the packets (a Service of 4096 endpoints is shown whole);
# smaller shares are one UNDETERMINED branch that says so. Probabilities add up to 1, so a trace never
# follows more than 4096 random branches at once, however many statistic rules split it.
MIN_BRANCH_SHARE = 1 / 4096
# The reply shows its first way back (netfilter._reply); random splits of a reply are followed down to 1/4.
MIN_REPLY_SHARE = 1 / 4
# Rule evaluations the random branches of one hook's walk may take in all (Pending.floor bounds how many there
# are at once; this, how far they go): well under a second of walking.
MAX_SPLIT_STEPS = 50_000
SPENT = f"random branches took more than {MAX_SPLIT_STEPS} rule evaluations"
MAX_SMALL_ENDS = 64  # shares under the floor that end at once (a rare DROP) are kept as branches, up to this many
ENDS = (DROP, REJECT, UNDETERMINED)
_RESUME = "RESUME"  # a jump's sub-walk fell off its chain: the caller goes on at its next rule

Outcome = tuple[Path, str]
# The step a rule (or a chain's policy) makes, made once and shared by every branch that passes it: steps are
# values (frozen), a function of the key (100k IPVS real servers pass POSTROUTING's rules, and their replies
# theirs, 100k times). A rule's step is keyed by the rule's identity (rules are frozen), its action, depth, hook
# and node label, and the rule is kept alive in _KEPT while its step is cached (so an id is never another
# rule's); a policy's step by everything it shows (a what-if edits a chain in place). Cleared past
# MAX_SHARED_STEPS.
MAX_SHARED_STEPS = 16_384
_STEPS: dict[tuple[object, ...], Step] = {}
_KEPT: list[object] = []


def _shared_step(owner: object, key: tuple[object, ...], make: Callable[[], Step]) -> Step:
    s = _STEPS.get(key)
    if s is None:
        if len(_STEPS) >= MAX_SHARED_STEPS:
            _STEPS.clear()
            _KEPT.clear()
        s = _STEPS[key] = make()
        _KEPT.append(owner)
    return s


def _condition(rule: Rule, why: str) -> str:
    """What a branch walked past an unknown rule assumes, as "<subject>: <clause>". Rules standing for one
    missing part of the input (a whole ruleset: absent.py) share one condition, so it is assumed once."""
    if GROUP_SEP in why:
        subject = why.split(GROUP_SEP, 1)[0]
        subject = re.sub(r" are not in the input.*", " (not in the input)", subject)
        subject = re.sub(r" was not collected \((.*?)\)(: .*)?$", r" (not collected: \1)", subject)
        return f"{subject}: they do not decide it"
    m = re.search(r"only some rules of (\S+)", why)
    if m:
        return f"the rest of {m.group(1)} (not in the input): it does not decide it"
    m = re.search(r"chain (\S+) is not in the input", why)
    if m:
        return f"{m.group(1)} (not in the input): it does not decide it"
    return f"{rule.source} ({why.rstrip('.')}): it does not match"


class SplitBudget:
    """Rule evaluations spent on the random branches of one hook's walk (a path split off the one that
    entered it). The floor bounds how many branches live at once; this bounds how far they go, so a
    ruleset of thousands of random rules in series ends, UNDETERMINED and said, instead of running for
    minutes. The path that entered the walk is never counted: a chain of a million rules is read whole."""

    __slots__ = ("root", "steps")

    def __init__(self, path: Path) -> None:
        self.root, self.steps = path.probability, 0

    def spend(self, path: Path) -> bool:
        """Count one rule for this path; False once the budget is spent."""
        if path.probability >= self.root:
            return True
        self.steps += 1
        return self.steps <= MAX_SPLIT_STEPS


class ChainWalker:
    def __init__(self, ruleset: Ruleset, ctx: MatchContext, hook: str, node: str | None = None) -> None:
        self.ruleset, self.ctx, self.hook, self.node = ruleset, ctx, hook, node
        self.budget: SplitBudget | None = None

    def walk(self, table: str, chain_name: str, path: Path, depth: int = 0, ref: object = None) -> list[Outcome]:
        if depth == 0 or self.budget is None:
            self.budget = SplitBudget(path)
        chain = self.ruleset.chain(table, chain_name)
        if chain is None:
            reason = f"chain {table}/{chain_name} is not in the input" + (f" (referenced at {ref})" if ref else "")
            s = Step(self.hook, table, chain_name, None, None, UNDETERMINED, reason, depth, self.node)
            out: list[Outcome] = [(path.step(s).unknown(reason), UNDETERMINED)]
            # Go past it: what decides the packet if the chain returns without a verdict.
            return out + self._past(path.step(s), f"{table}/{chain_name} (not in the input): it does not decide it",
                                    lambda p: [(p, CONTINUE)])
        return self._rules(chain, 0, path, depth)

    def _past(self, path: Path, condition: str, go_on: Callable[[Path], list[Outcome]]) -> list[Outcome]:
        """The walk on past an unknown, as a what-if branch (bounded: each unknown passed is one condition)."""
        if len(path.conditions) >= MAX_CONDITIONS:
            return []
        return go_on(path.given(condition))

    def _step(self, rule: Rule, action: str, depth: int) -> Step:
        key = (id(rule), action, depth, self.hook, self.node)
        s = _STEPS.get(key)
        if s is None:
            s = _shared_step(rule, key, lambda: Step(self.hook, rule.table, rule.chain, rule.index, str(rule.source),
                                                     action, rule.text, depth, self.node))
        return s

    def _rules(self, chain: Chain, start: int, path: Path, depth: int) -> list[Outcome]:
        """Every way `path` leaves `chain` from rule `start` on. The paths a random rule or a returning jump
        leaves to go on in this chain wait in `pending`, walked in rule order: a loop, not a recursion (a
        Service of 1,000 endpoints is a cascade of 1,000 random rules), and paths that meet at one rule with
        the same packet go on as one."""
        pending = Pending(path)
        out: list[Outcome] = []
        pending.push(start, path)
        while pending:
            i0, paths = pending.pop()
            for p in (paths if len(paths) == 1 else merged(paths, _at(chain, i0))):
                out.extend(self._from(chain, i0, p, depth, pending))
                pending.flush()
        return out + pending.lumped()

    def _from(self, chain: Chain, start: int, path: Path, depth: int, pending: Pending) -> list[Outcome]:
        out: list[Outcome] = []
        # A large chain (KUBE-SERVICES, KUBE-EXTERNAL-SERVICES) is indexed by destination and port: rules for
        # other addresses and ports are never parsed.
        for i in candidates(chain, path.packet, start):
            rule = chain.rule_at(i)
            if self.budget is not None and not self.budget.spend(path):
                pending.lump(path, self._step(rule, UNDETERMINED, depth), str(rule.source), SPENT)
                return out
            self.ctx.assumptions.clear()
            result = eval_rule(rule, path.packet, self.ctx)
            for a in self.ctx.assumptions:
                path = path.assume(a)
            if result is False:
                continue
            if isinstance(result, Unknown):
                if _condition(rule, result.reason) in path.conditions:
                    continue  # the same unknown this what-if branch already assumes does not decide
                reason = f"{rule.source}: {result.reason}"
                stepped = path.step(self._step(rule, UNDETERMINED, depth))
                out.append((stepped.unknown(reason), UNDETERMINED))
                nxt = i + 1

                def go_on(p: Path) -> list[Outcome]:
                    return self._rules(chain, nxt, p, depth)

                return out + self._past(stepped, _condition(rule, result.reason), go_on)
            if isinstance(result, Chance):
                if result.p <= 0.0:
                    continue
                if result.p < 1.0:
                    # The non-matching share goes on with the next rule (after the matching one's outcomes).
                    rest, path = path.scaled(1.0 - result.p), path.scaled(result.p)
                    cut = self._step(rule, UNDETERMINED, depth)
                    if path.probability < pending.floor:
                        # Too small a share to follow on; one that ends here (DROP, REJECT) is said as it is.
                        done, _, ends = self._target(rule, i, chain, path, depth)
                        if done and all(v in ENDS for _, v in ends) and pending.keep_small():
                            out.extend(ends)
                        else:
                            pending.lump(path, cut, str(rule.source))
                        path = rest
                        if rest.probability < pending.floor:
                            pending.lump(rest, cut, str(rule.source))
                            return out
                        continue
                    if rest.probability < pending.floor:
                        pending.lump(rest, cut, str(rule.source))
                    else:
                        pending.defer(i + 1, rest)
            done, path, results = self._target(rule, i, chain, path, depth)
            for p, verdict in results:
                if verdict == _RESUME:
                    pending.push(i + 1, p)  # a jump returned: this chain goes on at its next rule
                else:
                    out.append((p, verdict))
            if done or pending.deferred:
                # A split path that goes on waits at the next rule with the other share: equal ones go on as one.
                if not done:
                    pending.push(i + 1, path)
                return out
        if chain.policy is not None:
            # By value: a what-if edits a chain's policy and source in place (whatif/apply.py).
            key = (self.hook, self.node, chain.source, chain.source.text, chain.table, chain.name, None, chain.policy,
                   depth)
            s = _STEPS.get(key)
            if s is None:
                s = _shared_step(chain, key, lambda: Step(self.hook, chain.table, chain.name, None, str(chain.source),
                                                          f"POLICY {chain.policy}", chain.source.text, depth,
                                                          self.node))
            out.append((path.step(s), chain.policy))
        elif chain.builtin and path.conditions:
            # A built-in chain whose policy the input does not show, on a what-if branch that assumes what is
            # not shown does not decide the packet: it goes on.
            out.append((path, ACCEPT))
        else:
            out.append((path, CONTINUE))
        return out

    def _target(self, rule: Rule, i: int, chain: Chain, path: Path, depth: int) -> tuple[bool, Path, list[Outcome]]:
        """Apply a matched rule's target; returns (chain is done, path to go on with, outcomes)."""
        t = rule.target
        if t is None:
            return False, path, []
        if not t.known:
            reason = f"{rule.source}: target '{t.name}' with these options is not modelled"
            stepped = path.step(self._step(rule, UNDETERMINED, depth))
            past = self._past(stepped, f"{rule.source} (target {t.name}, not modelled): it does not decide it",
                              lambda p: self._rules(chain, i + 1, p, depth))
            return True, path, [(stepped.unknown(reason), UNDETERMINED), *past]
        if t.name in (ACCEPT, DROP, REJECT):
            return True, path, [(path.step(self._step(rule, t.name, depth)), t.name)]
        if t.name == "RETURN":
            verdict = CONTINUE
            if chain.policy is not None:
                # RETURN in a built-in chain applies the chain's policy.
                verdict = chain.policy
            return True, path, [(path.step(self._step(rule, "RETURN", depth)), verdict)]
        if t.name in NAT_TARGETS:
            if path.packet.ct_confirmed:
                # nf_nat_setup_info() sets up nothing for a connection conntrack already confirmed
                # (an entry made before these rules): the target accepts, the packet keeps its addresses.
                why = (f"conntrack: this packet's connection was confirmed before, so {t.name} sets up no "
                       f"translation; the packet keeps {path.packet.dst}" +
                       (f":{path.packet.dport}" if path.packet.dport is not None else ""))
                done = path.step(self._step(rule, ACCEPT, depth))
                return True, done, [(done.step(Step(self.hook, rule.table, rule.chain, None, None, "CONNTRACK", why,
                                                    depth, self.node)), ACCEPT)]
            path = apply_nat(t, path, self.ctx)
            return True, path, [(path.step(self._step(rule, t.name, depth)), ACCEPT)]
        if t.name in CONTINUING_TARGETS:
            path = apply_continuing(t, path)
            return False, path.step(self._step(rule, t.name, depth)), []
        return self._jump(rule, i, chain, path, depth)

    def _jump(self, rule: Rule, i: int, chain: Chain, path: Path, depth: int) -> tuple[bool, Path, list[Outcome]]:
        t = rule.target
        assert t is not None
        action = "GOTO" if t.goto else "JUMP"
        path = path.step(self._step(rule, action, depth))
        if depth >= MAX_DEPTH:
            reason = f"{rule.source}: jump depth over {MAX_DEPTH} (a loop between chains?)"
            return True, path, [(path.unknown(reason), UNDETERMINED)]
        out: list[Outcome] = []
        for sub_path, verdict in self.walk(rule.table, t.name, path, depth + 1, rule.source):
            if verdict != CONTINUE:
                out.append((sub_path, verdict))
            elif t.goto:
                # After a goto, falling off the target returns to this chain's caller.
                out.append(self._fall_off(chain, sub_path, depth))
            else:
                out.append((sub_path, _RESUME))
        return True, path, out

    def _fall_off(self, chain: Chain, path: Path, depth: int) -> Outcome:
        if chain.policy is None:
            return path, CONTINUE
        s = Step(self.hook, chain.table, chain.name, None, str(chain.source), f"POLICY {chain.policy}", chain.source.text,
                 depth, self.node)
        return path.step(s), chain.policy


class Pending:
    """Paths waiting to go on in one chain, by the rule they go on at, taken in rule order (iptables and
    nft chains alike); and the share of the packets not followed because a random split made it smaller
    than `floor`, said as one UNDETERMINED branch."""

    def __init__(self, path: Path) -> None:
        self.floor = MIN_REPLY_SHARE if path.packet.reply else MIN_BRANCH_SHARE
        self.at: dict[int, list[Path]] = {}
        self.order: list[int] = []
        self.deferred: tuple[int, Path] | None = None  # a random rule's non-matching share, pushed after the matching one
        self.cut: tuple[Path, Step, str] | None = None  # the first share cut: its path, the step and source cited
        self.cut_p = 0.0
        self.why: str | None = None  # SPENT when the budget ended it, else the floor
        self.small_ends = 0

    def __bool__(self) -> bool:
        return bool(self.order)

    def push(self, i: int, path: Path) -> None:
        waiting = self.at.get(i)
        if waiting is None:
            self.at[i] = [path]
            heapq.heappush(self.order, i)
        else:
            waiting.append(path)

    def defer(self, i: int, path: Path) -> None:
        self.deferred = (i, path)

    def flush(self) -> None:
        if self.deferred is not None:
            self.push(*self.deferred)
            self.deferred = None

    def pop(self) -> tuple[int, list[Path]]:
        i = heapq.heappop(self.order)
        return i, self.at.pop(i)

    def keep_small(self) -> bool:
        """Whether one more share under the floor that ends at once may be a branch of its own."""
        self.small_ends += 1
        return self.small_ends <= MAX_SMALL_ENDS

    def lump(self, path: Path, step: Step, source: str, why: str | None = None) -> None:
        """Leave this share of the packets out (it is said by `lumped`, with the rule that split it first)."""
        if self.cut is None:
            self.cut = (path, step, source)
        self.why = self.why or why
        self.cut_p += path.probability

    def lumped(self) -> list[Outcome]:
        if self.cut is None:
            return []
        path, step, source = self.cut
        n = round(1 / self.floor)
        why = self.why or f"random rules split the packets into more than {n} branches (each under 1/{n} of them)"
        reason = f"{source}: {why}; {self.cut_p:.4%} of the packets, in those branches, are not followed further"
        whole = Path(self.cut_p, path.packet, path.steps, path.assumptions, path.unknowns, path.conditions)
        return [(whole.step(step).unknown(reason), UNDETERMINED)]


def merged(paths: list[Path], where: str) -> list[Path]:
    """Paths that reach one rule (`where`) with the same packet go on the same way from there: one path,
    with their probabilities added (the steps shown are the first one's, and the merge is said)."""
    if len(paths) == 1:
        return paths
    groups: dict[object, list[Path]] = {}
    for p in paths:
        groups.setdefault((p.packet, p.unknowns, p.conditions), []).append(p)
    if len(groups) == len(paths):
        return paths
    out = []
    for same in groups.values():
        first = same[0]
        if len(same) > 1:
            total = sum(p.probability for p in same)
            assumptions = tuple(dict.fromkeys(a for p in same for a in p.assumptions))
            first = Path(total, first.packet, first.steps, assumptions, first.unknowns, first.conditions)
            first = first.assume(f"{len(same)} random branches reach {where} with the same packet and go on as one "
                                 f"({total:.2%} of the packets; the rules shown are the first branch's)")
        out.append(first)
    return out


def _at(chain: Chain, i: int) -> str:
    return f"rule {i + 1} of {chain.table}/{chain.name}" if i < len(chain) else f"the end of {chain.table}/{chain.name}"


def apply_continuing(t: Target, path: Path) -> Path:
    pkt = path.packet
    if t.name == "MARK":
        return path.with_packet(mark=apply_mark_op(t, pkt.mark))
    if t.name == "CONNMARK":
        if t.opt("--save-mark"):
            return path.with_packet(ctmark=pkt.mark)
        if t.opt("--restore-mark"):
            return path.with_packet(mark=pkt.ctmark)
        return path.with_packet(ctmark=apply_mark_op(t, pkt.ctmark))
    if t.name == "NOTRACK" or (t.name == "CT" and t.opt("--notrack")):
        return path.with_packet(untracked=True)
    return path


def apply_mark_op(t: Target, mark: int) -> int:
    """xt_MARK: mark = (mark & ~mask) ^ value; the other spellings are shorthands for it."""
    for o in t.options:
        v = o.value()
        if o.name == "--set-xmark":
            value, mask = parse_mark(v)
            return ((mark & ~mask) ^ value) & 0xFFFFFFFF
        if o.name == "--set-mark":
            value, mask = parse_mark(v)
            return ((mark & ~mask) | value) & 0xFFFFFFFF
        if o.name == "--or-mark":
            return (mark | int(v, 0)) & 0xFFFFFFFF
        if o.name == "--and-mark":
            return mark & int(v, 0)
        if o.name == "--xor-mark":
            return (mark ^ int(v, 0)) & 0xFFFFFFFF
    return mark


def split_hostport(text: str) -> tuple[str, str | None]:
    """`10.0.0.1:80`, `10.0.0.1`, `[fd00::1]:80`, `10.0.0.1-10.0.0.9:80-90` -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


_ADDRESSES: dict[str, IPAddress] = {}  # DNAT targets' addresses, parsed once (addresses are values)


def _address(text: str) -> IPAddress:
    a = _ADDRESSES.get(text)
    if a is None:
        if len(_ADDRESSES) >= MAX_SHARED_STEPS:
            _ADDRESSES.clear()
        a = _ADDRESSES[text] = ip_address(text)  # ValueError: not cached, raised each time as before
    return a


def apply_nat(t: Target, path: Path, ctx: MatchContext) -> Path:
    pkt = path.packet
    if t.name == "DNAT" or t.name == "REDIRECT":
        if t.name == "DNAT":
            to = t.opt("--to-destination")
            host, port = split_hostport(to.value() if to else "")
        else:
            host = "127.0.0.1" if pkt.local_origin else ""
            if not host:
                path = path.assume("REDIRECT goes to the primary address of the input interface")
                host = str(pkt.dst)
            tp = t.opt("--to-ports")
            port = tp.value() if tp else None
        changes: dict[str, object] = {"orig_dst": pkt.dst, "orig_dport": pkt.dport, "dnat_node": pkt.node}
        try:
            changes["dst"] = _address(host)
        except ValueError:
            path = path.assume(f"DNAT to the range {host}: the kernel picks one address of it")
        if port is not None and port.isdigit():
            changes["dport"] = int(port)
        elif port:
            path = path.assume(f"DNAT to the port range {port}: the kernel picks one port of it")
        new_dport = changes.get("dport", pkt.dport)
        shown = f"[{host}]" if ":" in host else host
        # Interned: every branch and row that reaches the endpoint keeps this text (200k rows at 10k Services).
        changes["dnat"] = sys.intern(f"{shown}:{new_dport}" if new_dport is not None else shown)
        return path.with_packet(**changes)
    if t.name == "SNAT":
        to = t.opt("--to-source")
        return path.with_packet(snat=to.value() if to else None, snat_node=pkt.node)
    return path.with_packet(masquerade=True, snat_node=pkt.node)
