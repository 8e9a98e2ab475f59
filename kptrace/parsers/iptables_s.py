"""Parse `iptables -S` output, and excerpts of `iptables-save` (a grep, a few chains), into a Ruleset.

Forms accepted (one per line):

    -P INPUT ACCEPT                                       built-in chain and its policy
    -P INPUT ACCEPT -c 12 720                             `iptables -S -v`: counters
    -N KUBE-SERVICES                                      user chain
    -A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
    -A INPUT -c 0 0 -j KUBE-FIREWALL                      `-S -v` puts the counters inside the rule
    [0:0] -A FORWARD -j ACCEPT                            `iptables-save -c` line from a grep
    :KUBE-SVC-X - [0:0]                                   `iptables-save` chain line from a grep
    *nat / COMMIT                                         table lines a grep kept (they name the table)
    # comment                                             ignored

`iptables -S` without `-t` lists the filter table; the caller passes the table when it knows it
(`iptables -t nat -S` in a pasted prompt line). Without it the table is read from the built-in
chains the listing declares (`-P PREROUTING` … is nat, mangle or raw) or, for an excerpt of `-A`
lines, inferred from chain names and targets (see `infer_table`), and the inference is stated in
`Ruleset.assumptions`.

Unlike `parse_iptables_save` this parser is tolerant: a line it cannot read is kept, as a rule of
its chain that is UNDETERMINED when a walk reaches it (`Match(known=False)`), or, when not even the
chain can be read, in `ListingResult.unparsed`. A chain declared with `-P`/`-N` is listed in full
(`complete`); a chain that only has `-A` lines is a fragment. This module also holds what the
listing parsers share: `ListingResult`, `PartialBuilder` and `infer_table`.
"""

from __future__ import annotations

import re
from dataclasses import field, replace

from kptrace.errors import ParseError
from kptrace.model._compiled import dataclass
from kptrace.model.netfilter import BUILTIN_CHAINS, Chain, Rule, Ruleset, Table
from kptrace.model.source import Source
from kptrace.parsers.iptables_save import POLICIES, ParseResult, parse_rule_line, render_rule, tokenize
from kptrace.parsers.placeholders import is_not_shown, not_shown_rule, unreadable_rule

# Tables in the order iptables lists built-in chains; used to break ties when inferring a table.
TABLE_ORDER = ("filter", "nat", "mangle", "raw", "security")
_CANON = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

# Targets that exist in one table only (the kernel refuses them elsewhere).
NAT_TARGETS = frozenset({"DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"})
RAW_TARGETS = frozenset({"NOTRACK", "CT"})
MANGLE_TARGETS = frozenset({"TPROXY", "TOS", "TTL", "HL", "DSCP", "ECN", "CLASSIFY", "CHECKSUM", "TEE", "CONNSECMARK"})
FILTER_TARGETS = frozenset({"REJECT", "DROP"})  # DROP is refused in nat; REJECT only makes sense in filter
# Chains kube-proxy, the kubelet, CNI plugins, Docker and flannel create, by table.
_NAT_CHAIN_RE = re.compile(
    r"^(KUBE-(SVC|SEP|EXT|FW|SVL|XLB)-[A-Z0-9]+|KUBE-MARK-(MASQ|DROP)|KUBE-POSTROUTING|KUBE-HOSTPORTS|KUBE-HP-\w+|"
    r"KUBE-LOAD-BALANCER|KUBE-NODE-PORT|CNI-HOSTPORT-\w+|CNI-DN-\w+|CNI-[0-9a-f]{16,}|FLANNEL-POSTRTG|"
    r"DOCKER_OUTPUT|DOCKER_POSTROUTING|cali-nat-\w+|cali-fip-\w+)$"
)
_FILTER_CHAIN_RE = re.compile(
    r"^(KUBE-FORWARD|KUBE-FIREWALL|KUBE-PROXY-FIREWALL|KUBE-EXTERNAL-SERVICES|KUBE-NWPLCY-\w+|KUBE-POD-FW-\w+|"
    r"KUBE-ROUTER-(INPUT|FORWARD|OUTPUT)|DOCKER-USER|DOCKER-ISOLATION-STAGE-[0-9]|DOCKER-FORWARD|FLANNEL-FWD|"
    r"CNI-FORWARD|CNI-ADMIN|cali-(from|to|tw|fw|pri|pro|wl)-\w+)$"
)


@dataclass(slots=True)
class Unparsed:
    """A line kept but not understood, with why."""

    source: Source
    reason: str


@dataclass(slots=True)
class ListingResult(ParseResult):
    """A ruleset read from a listing or an excerpt, with what it covers and what it could not read."""

    complete: set[tuple[str, str]] = field(default_factory=set)  # (table, chain) listed in full
    fragments: set[tuple[str, str]] = field(default_factory=set)  # chains of which only some rules are shown
    unparsed: list[Unparsed] = field(default_factory=list)
    first_line: int = 1
    last_line: int = 0


# --- table inference ------------------------------------------------------------------------------


def table_of_chain_name(name: str) -> str | None:
    """The table a chain of this name lives in, for names that live in one table only."""
    if _NAT_CHAIN_RE.match(name):
        return "nat"
    if _FILTER_CHAIN_RE.match(name):
        return "filter"
    return None


def table_of_target(target: str | None) -> str | None:
    if target is None:
        return None
    if target in NAT_TARGETS:
        return "nat"
    if target in RAW_TARGETS:
        return "raw"
    if target in MANGLE_TARGETS:
        return "mangle"
    if target in FILTER_TARGETS:
        return "filter"
    return table_of_chain_name(target)


def table_of_builtins(names: set[str], evidence: set[str]) -> tuple[str | None, list[str]]:
    """The table whose built-in chains a listing shows; (None, candidates) when several fit equally."""
    fits = [t for t in TABLE_ORDER if names <= set(BUILTIN_CHAINS[t])]
    exact = [t for t in fits if names == set(BUILTIN_CHAINS[t])]
    for group in (exact, fits):
        narrowed = [t for t in group if t in evidence] or group
        narrowed = [t for t in narrowed if t != "security"] or narrowed
        if len(narrowed) == 1:
            return narrowed[0], group
        if narrowed:
            return None, narrowed
    return None, []


def default_table_of(chain: str) -> str:
    """When nothing else tells: built-in PREROUTING/POSTROUTING are nat's, the rest filter's (`-S`/`-L` default)."""
    if chain in ("PREROUTING", "POSTROUTING"):
        return "nat"
    return table_of_chain_name(chain) or "filter"


# --- building a ruleset whose tables may be decided only at the end ----------------------------------


@dataclass(slots=True)
class _ChainInfo:
    name: str
    source: Source
    policy: str | None = None  # built-in chains: the listed policy
    declared: bool = False  # -P/-N/:CHAIN/`Chain X (...)`: the chain is listed in full
    fragment: bool = False  # an elision or a grep: rules are missing
    table: str | None = None  # known from a `*table` line, a command or the caller
    policy_unknown: str | None = None  # why a built-in chain's policy is not known
    counters: tuple[int, int] | None = None  # the policy's packets and bytes (`-L -v`, exact numbers only)
    items: list[tuple[Rule, str | None]] = field(default_factory=list)  # (rule, the table its line fixes)


class PartialBuilder:
    """Chains and rules in listing order; `finish` decides tables and builds the Ruleset."""

    def __init__(self, file: str, table: str | None, family: int | None, kind: str) -> None:
        self.file, self.table, self.family, self.kind = file, table, family, kind
        self.chains: dict[tuple[str | None, str], _ChainInfo] = {}
        self.order: list[tuple[str | None, str]] = []
        self.result = ListingResult(Ruleset(file=file, family=family or 4))
        self.notes: list[str] = []
        self.saw_v6 = False
        self.saw_v4 = False

    def chain(self, name: str, source: Source, table: str | None = None) -> _ChainInfo:
        key = (table or self.table, name)
        info = self.chains.get(key)
        if info is None:
            info = _ChainInfo(name, source, table=table or self.table)
            self.chains[key] = info
            self.order.append(key)
        return info

    def rule(self, info: _ChainInfo, rule: Rule, table: str | None = None) -> None:
        rule = checked(rule)
        info.items.append((rule, table or info.table))
        for cond in (rule.src, rule.dst):
            if cond is not None and cond.value:
                if cond.value[0].version == 6:
                    self.saw_v6 = True
                else:
                    self.saw_v4 = True

    def unparsed(self, source: Source, reason: str) -> None:
        self.result.unparsed.append(Unparsed(source, reason))

    def finish(self) -> ListingResult:
        res = self.result
        rs = res.ruleset
        if self.family is None:
            rs.family = 6 if self.saw_v6 and not self.saw_v4 else 4
        decided = self._decide_tables()
        for key in self.order:
            info = self.chains[key]
            rules_by_table: dict[str, list[Rule]] = {}
            chain_table = decided[key]
            for rule, fixed in info.items:
                t = fixed or self._rule_table(rule, chain_table, decided)
                rules_by_table.setdefault(t, []).append(rule)
            tables = [t for t in rules_by_table if t != chain_table]
            if chain_table in rules_by_table or info.declared or not tables:
                tables.insert(0, chain_table)
            for t in tables:
                self._add_chain(rs, t, info, rules_by_table.get(t, []), primary=t == chain_table)
        for note in dict.fromkeys(self.notes):
            rs.assumptions.append(note)
        return res

    def _add_chain(self, rs: Ruleset, table: str, info: _ChainInfo, rules: list[Rule], primary: bool) -> None:
        t = rs.tables.get(table)
        if t is None:
            t = rs.tables[table] = Table(table, Source(self.file, info.source.line, 1, info.source.text))
        builtin = info.name in BUILTIN_CHAINS[table]
        policy = info.policy if builtin else None
        chain = t.chains.get(info.name)
        if chain is None:
            chain = Chain(table, info.name, policy, info.source, [], counters=info.counters if builtin else None)
            t.chains[info.name] = chain
        elif policy is not None and chain.policy is None:
            chain.policy = policy
        for r in rules:
            chain.rules.append(replace(r, table=table, index=len(chain.rules) + 1))
        if builtin and info.policy_unknown and primary:
            chain.rules.append(replace(not_shown_rule(table, info.name, info.source, info.policy_unknown),
                                       index=len(chain.rules) + 1))
        key = (table, info.name)
        if info.declared and primary and not info.fragment:
            self.result.complete.add(key)
            self.result.fragments.discard(key)
        elif key not in self.result.complete:
            self.result.fragments.add(key)

    def _rule_table(self, rule: Rule, chain_table: str, decided: dict[tuple[str | None, str], str]) -> str:
        return chain_table

    def _decide_tables(self) -> dict[tuple[str | None, str], str]:
        """A table for every chain: the given one, else from built-ins, targets and names (stated)."""
        decided: dict[tuple[str | None, str], str] = {}
        open_keys = [k for k in self.order if self.chains[k].table is None]
        for k in self.order:
            if self.chains[k].table is not None:
                decided[k] = self.chains[k].table  # type: ignore[assignment]
        if not open_keys:
            return decided
        # One `iptables -L`/`-S` shows one table: its built-in chains say which (all of a table's, in order).
        builtins = {self.chains[k].name for k in open_keys if self.chains[k].declared
                    and self.chains[k].name in _CANON}
        evidence = {table_of_target(r.target.name if r.target else None) for k in open_keys
                    for r, _ in self.chains[k].items} - {None}
        evidence |= {table_of_chain_name(self.chains[k].name) for k in open_keys} - {None}
        whole_listing = self.kind in ("list", "s") and any(self.chains[k].declared for k in open_keys)
        if builtins and whole_listing:
            table, candidates = table_of_builtins(builtins, evidence)  # type: ignore[arg-type]
            if table is None:
                table = "filter" if "filter" in candidates else (candidates[0] if candidates else "filter")
                self.notes.append(
                    f"{self.file}: the listing does not name its table; its built-in chains ({', '.join(sorted(builtins))}) "
                    f"fit {' or '.join(candidates) or 'no table'}: read as {table}")
            elif set(BUILTIN_CHAINS[table]) != builtins:
                self.notes.append(f"{self.file}: the listing does not name its table; read as {table} "
                                  f"(built-in chains {', '.join(sorted(builtins))}, targets and chain names)")
            for k in open_keys:
                decided[k] = table
            return decided
        if whole_listing:
            # `iptables -S CHAIN` / `iptables -L CHAIN` of user chains: still one table, from what the rules say.
            table = self._vote(open_keys, evidence)
            for k in open_keys:
                decided[k] = table
            return decided
        # An excerpt (grep) may mix tables: decide chain by chain, following jumps, names and targets.
        for _ in range(4):
            changed = False
            for k in open_keys:
                if k in decided:
                    continue
                t = self._chain_evidence(k, decided)
                if t is not None:
                    decided[k] = t
                    changed = True
            if not changed:
                break
        guessed = []
        for k in open_keys:
            if k not in decided:
                decided[k] = default_table_of(self.chains[k].name)
                guessed.append(f"{self.chains[k].name} in {decided[k]}")
        if guessed:
            self.notes.append(f"{self.file}: no table is named and nothing in the rules tells; read "
                              f"{', '.join(guessed[:8])}{' …' if len(guessed) > 8 else ''} (ambiguous: iptables -S and -L "
                              f"default to filter)")
        inferred = [f"{self.chains[k].name} in {decided[k]}" for k in open_keys if decided[k] and
                    f"{self.chains[k].name} in {decided[k]}" not in guessed]
        if inferred:
            self.notes.append(f"{self.file}: no table is named; inferred from chain names and targets: "
                              f"{', '.join(inferred[:8])}{' …' if len(inferred) > 8 else ''}")
        return decided

    def _vote(self, keys: list[tuple[str | None, str]], evidence: set[str | None]) -> str:
        ev = [t for t in TABLE_ORDER if t in evidence]
        if len(ev) == 1:
            self.notes.append(f"{self.file}: the listing does not name its table; read as {ev[0]} from its chain names and targets")
            return ev[0]
        names = ", ".join(self.chains[k].name for k in keys[:4])
        if ev:
            self.notes.append(f"{self.file}: the listing does not name its table and its rules point at {' and '.join(ev)}; "
                              f"read as {ev[0]} ({names})")
            return ev[0]
        first = default_table_of(self.chains[keys[0]].name)
        self.notes.append(f"{self.file}: the listing does not name its table and nothing in it tells; read as {first} "
                          f"(iptables -S and -L default to filter) ({names})")
        return first

    def _chain_evidence(self, key: tuple[str | None, str], decided: dict[tuple[str | None, str], str]) -> str | None:
        info = self.chains[key]
        by_name = table_of_chain_name(info.name)
        if by_name:
            return by_name
        votes: set[str] = set()
        for r, _ in info.items:
            if r.target is None:
                continue
            t = table_of_target(r.target.name)
            if t is None:
                for k2, t2 in decided.items():
                    if k2[1] == r.target.name:
                        t = t2
            if t is not None:
                votes.add(t)
        if len(votes) == 1:
            return votes.pop()
        # A chain jumped to from a chain of known table is in that table.
        for k2 in self.order:
            if k2 in decided:
                for r, _ in self.chains[k2].items:
                    if r.target is not None and r.target.name == info.name:
                        return decided[k2]
        return None


class _ExcerptBuilder(PartialBuilder):
    """An excerpt's chain may hold rules of two tables (KUBE-SERVICES is in nat and filter): decide per rule."""

    def _rule_table(self, rule: Rule, chain_table: str, decided: dict[tuple[str | None, str], str]) -> str:
        info = self.chains.get((None, rule.chain))
        if info is None or info.declared or table_of_chain_name(rule.chain):
            return chain_table
        t = table_of_target(rule.target.name if rule.target else None)
        if t is None and rule.target is not None:
            t = next((v for k, v in decided.items() if k[1] == rule.target.name), None)
        if t is None or (rule.chain in _CANON and rule.chain not in BUILTIN_CHAINS[t]):
            return chain_table
        if t != chain_table:
            self.notes.append(f"{self.file}: rules of {rule.chain} point at tables {chain_table} and {t}; "
                              f"each is read into the table its target belongs to")
        return t


# --- the -S / excerpt parser -------------------------------------------------------------------------

_DECL_RE = re.compile(r"^:(\S+)\s+(\S+)(?:\s+\[([0-9]{1,20}):([0-9]{1,20})\])?\s*$")
_RULE_HEAD_RE = re.compile(r"^\s*(?:\[[0-9]{1,20}:[0-9]{1,20}\]\s+)?(-A|--append|-I|--insert)\s+(\S+)")
_STARTS = ("-A ", "-I ", "-N ", "-P ", "--append ", "--insert ", "--new-chain ", "--policy ", ":", "*", "[", "#",
           "COMMIT")


def parse_iptables_s(text: str, file: str = "iptables-S", table: str | None = None, family: int | None = None,
                     excerpt: bool = False, first_line: int = 1) -> ListingResult:
    """Parse `iptables -S` (or an excerpt of `iptables-save`); never raises for a line it cannot read.

    `table`: the table the command listed, when known. `excerpt`: the lines were filtered (grep, head),
    so even a chain declared with -N/-P may be missing rules. `first_line`: the line number of text's
    first line in the file it came from.
    """
    lines = text.split("\n")
    has_decl = any(s.startswith(("-P ", "-N ", "--policy ", "--new-chain ")) for s in (x.strip() for x in lines))
    b: PartialBuilder = PartialBuilder(file, table, family, "s") if has_decl and not excerpt else \
        _ExcerptBuilder(file, table, family, "excerpt")
    current_table: str | None = None
    prev: tuple[_ChainInfo, int, str, str | None] | None = None  # the last rule: for wrapped lines
    res = b.result
    res.first_line = first_line
    for n, raw in enumerate(lines):
        lineno = first_line + n
        line = raw.rstrip("\r")
        s = line.strip()
        if not s:
            continue
        res.last_line = lineno
        src = Source(file, lineno, 1, line)
        if s.startswith("#"):
            continue
        if s.startswith("*"):
            name = s[1:].strip()
            if name in BUILTIN_CHAINS:
                current_table = name
            else:
                b.unparsed(src, f"unknown table '{name}'")
            prev = None
            continue
        if s == "COMMIT":
            current_table = None
            prev = None
            continue
        if prev is not None and (not s.startswith(_STARTS) or prev[2].endswith("\\")):
            # A terminal or a mail client wrapped a long rule: join, if the joined line reads.
            joined = _join_wrapped(b, prev, raw, lineno)
            if joined is not None:
                prev = (prev[0], prev[1], joined, prev[3])
                continue
        table_here = current_table or table
        try:
            if s.startswith(":"):
                m = _DECL_RE.match(s)
                if not m:
                    raise ParseError(file, lineno, 1, "malformed chain line, expected ':NAME POLICY [packets:bytes]'", line)
                info = b.chain(m.group(1), src, table_here)
                info.declared = True
                if m.group(2) in POLICIES and m.group(2) != "-":
                    info.policy = m.group(2)
                elif m.group(1) in _CANON and m.group(2) == "-":
                    info.policy_unknown = f"{file}:{lineno}: policy '-' of built-in chain {m.group(1)} is not known"
                prev = None
                continue
            words = [w for w, _ in tokenize(s, file, lineno)]
            if words[0] in ("-P", "--policy", "-N", "--new-chain"):
                _declaration(b, words, src, table_here)
                prev = None
                continue
            rule = _rule(table_here, line, file, lineno)
        except ParseError as e:
            m2 = _RULE_HEAD_RE.match(line)
            if m2:
                info = b.chain(m2.group(2), src, table_here)
                b.rule(info, unreadable_rule(table_here or "filter", m2.group(2), src, f"not understood: {e.message}"))
                b.unparsed(src, e.message)
                prev = (info, len(info.items) - 1, line, table_here)
            else:
                b.unparsed(src, e.message if s.startswith(_STARTS) else "not an iptables -S line")
                prev = None
            continue
        if rule.tokens and rule.tokens[0] == "__insert__":
            rule = replace(rule, tokens=rule.tokens[2:])
        info = b.chain(rule.chain, src, table_here)
        b.rule(info, rule)
        prev = (info, len(info.items) - 1, line, table_here)
    if excerpt:
        for info in b.chains.values():
            info.fragment = True
    return b.finish()


def _rule(table: str | None, line: str, file: str, lineno: int) -> Rule:
    try:
        return parse_rule_line(table or "filter", line, file, lineno)
    except ValueError as e:
        # Counters or an -I position with more digits than int() takes: iptables would refuse them too.
        raise ParseError(file, lineno, 1, f"a number kptrace cannot read ({str(e)[:50]})", line) from None


def _declaration(b: PartialBuilder, words: list[str], src: Source, table: str | None) -> None:
    cmd = words[0]
    if len(words) < 2:
        raise ParseError(src.file, src.line, 1, f"'{cmd}' needs a chain name", src.text)
    info = b.chain(words[1], src, table)
    info.declared = True
    if cmd in ("-P", "--policy"):
        if len(words) < 3 or words[2] not in POLICIES - {"-"}:
            info.policy_unknown = f"{src}: the policy of {words[1]} is not readable"
            raise ParseError(src.file, src.line, 1, f"'-P {words[1]}' needs a policy (ACCEPT or DROP)", src.text)
        info.policy = words[2]
    rest = words[3:] if cmd in ("-P", "--policy") else words[2:]
    if rest and not (rest[0] in ("-c", "--set-counters") and len(rest) == 3):
        b.unparsed(src, f"unexpected words after '{cmd} {words[1]}'")


def _join_wrapped(b: PartialBuilder, prev: tuple[_ChainInfo, int, str, str | None], raw: str, lineno: int) -> str | None:
    """Join a line that is not a rule to the rule before it when the result reads: the joined text, or None."""
    info, idx, prev_line, table = prev
    cont = raw.rstrip("\r").strip()
    if prev_line.endswith("\\"):
        candidates = [prev_line[:-1].rstrip() + " " + cont]  # a shell line continuation
    elif len(prev_line) >= 79:
        # A hard wrap cuts at the terminal width, often inside a word; a soft one is at a space.
        candidates = [prev_line + cont, prev_line + " " + cont]
    else:
        candidates = [prev_line + " " + cont, prev_line + cont]
    first = info.items[idx][0].source.line
    for joined in candidates:
        try:
            rule = _rule(table, joined, b.file, first)
        except ParseError:
            continue
        if rule.tokens and rule.tokens[0] == "__insert__":
            rule = replace(rule, tokens=rule.tokens[2:])
        b.result.unparsed[:] = [u for u in b.result.unparsed if u.source.line != first]
        info.items[idx] = (checked(replace(rule, source=Source(b.file, first, 1, joined))), info.items[idx][1])
        b.notes.append(f"{b.file}:{lineno}: read as the continuation of line {first} (a wrapped line)")
        return joined
    return None


# iptables reads marks with strtoul(…, 0) and prints them in hex; a leading 0 would be octal, which the walk
# (Python's int(…, 0)) does not read: 0x…, 0 or a decimal without a leading zero.
_MARK_RE = re.compile(r"^(0x[0-9a-fA-F]{1,8}|0|[1-9][0-9]{0,9})(/(0x[0-9a-fA-F]{1,8}|0|[1-9][0-9]{0,9}))?$")
_PROB_RE = re.compile(r"^[0-9]{1,3}(\.[0-9]{0,20})?$")
_NTH_RE = re.compile(r"^[0-9]{1,10}$")
_TO_PORT_RE = re.compile(r"^[0-9]{1,5}(-[0-9]{1,5})?$")
_MARK_OPTS = frozenset({"--set-xmark", "--set-mark", "--or-mark", "--and-mark", "--xor-mark", "--mark"})


def checked(rule: Rule) -> Rule:
    """The rule, with any value the walk would compute with but that is not a number of its kind made unknown.

    iptables itself refuses `--mark 0xZZ` or `--probability 0.5x`; a listing or an excerpt that holds
    one (a paste gone wrong) makes that match unknown rather than a number kptrace would misread.
    """
    bad: list[str] = []
    matches = []
    for m in rule.matches:
        why = ""
        for o in m.options:
            v = o.value()
            if (m.module in ("mark", "connmark") and o.name == "--mark" and not _MARK_RE.match(v)) or \
                    (m.module == "statistic" and o.name == "--probability" and not _PROB_RE.match(v)) or \
                    (m.module == "statistic" and o.name in ("--every", "--packet") and not _NTH_RE.match(v)):
                why = f"value '{v[:40]}' of {o.name} is not a number of its kind"
        matches.append(replace(m, known=False, why_unknown=why) if why and m.known else m)
        if why:
            bad.append(why)
    target = rule.target
    if target is not None and target.known:
        for o in target.options:
            v = o.value()
            port = None
            if target.name == "DNAT" and o.name == "--to-destination":
                port = v.rsplit("]", 1)[-1].partition(":")[2] if v.startswith("[") else (v.split(":", 1)[1] if v.count(":") == 1 else None)
            elif target.name in ("REDIRECT", "MASQUERADE") and o.name == "--to-ports":
                port = v
            if (o.name in _MARK_OPTS and target.name in ("MARK", "CONNMARK") and not _MARK_RE.match(v)) or \
                    (port is not None and not _TO_PORT_RE.match(port)):
                target = replace(target, known=False)
                bad.append(f"value '{v[:40]}' of {o.name} is not understood")
    if not bad:
        return rule
    return replace(rule, matches=tuple(matches), target=target)


def rendered(rule: Rule) -> str | None:
    """The rule in iptables-save form, or None when kptrace does not know all of it."""
    if is_not_shown(rule) or any(not m.known for m in rule.matches) or (rule.target is not None and not rule.target.known):
        return None
    return render_rule(rule)
