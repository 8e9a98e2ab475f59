"""Parse `iptables -L` listings (any of -n, -v, -x, --line-numbers, one table or one chain) into a Ruleset.

Forms accepted (one per line; columns as iptables 1.4 to 1.8 print them, legacy or nf_tables):

    Chain INPUT (policy ACCEPT)                                     built-in chain (`-L`)
    Chain FORWARD (policy DROP 12 packets, 720 bytes)               built-in chain (`-L -v`)
    Chain KUBE-SERVICES (2 references)                              user chain
    target     prot opt source               destination            column header, `-L [-n]`
    num   pkts bytes target     prot opt in     out     source               destination
    KUBE-SVC-X  tcp  --  anywhere             10.96.0.20           /* default/web:http cluster IP */ tcp dpt:http
    KUBE-SVC-X  6    --  0.0.0.0/0            10.96.0.20           /* default/web:http cluster IP */ tcp dpt:80
        0     0 DROP       0    --  !lo    *       127.0.0.0/8          0.0.0.0/0
    1        0        0 DNAT       6    --  *      *       0.0.0.0/0            0.0.0.0/0            tcp to:10.244.1.5:8080
               all  --  anywhere             anywhere                   a rule without a target
    ...                                                             an elision: rules left out here

A listing is lossy and this parser says where, never guessing what was lost:

- without `-v` there are no in/out columns, so any rule may test `-i`/`-o`: each rule gets a
  `Match(known=False)` saying so, and a walk that reaches a rule the rest of it does not rule out
  is UNDETERMINED;
- without `-n` addresses and ports may be names (`loopback/8`, `dpt:http`): a name is kept as
  unknown, never resolved (`anywhere` is 0.0.0.0/0, which is exact);
- the free-text match column (`tcp dpt:80`, `mark match 0x4000/0x4000`, `ctstate NEW`,
  `statistic mode random probability 0.5`, `match-set KUBE-CLUSTER-IP dst,dst`,
  `ADDRTYPE match dst-type LOCAL`, `DNAT to:10.244.1.5:8080`, …) is read back into the same
  matches and target options `iptables-save` would give; text it does not know makes the rule's
  rest unknown (`Match(known=False)`) rather than being dropped;
- counters with K/M/G suffixes (no `-x`) are not kept.

Rules read completely render to `iptables-save` form with `render_rule`. The table is the one the
caller passes (from `-t` in a pasted command line), else the one whose built-in chains the listing
shows, else inferred and stated (see kptrace/parsers/iptables_s.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from kptrace.errors import ParseError
from kptrace.model._compiled import dataclass
from kptrace.model.netfilter import Cond, Match, Option, Rule, Target
from kptrace.model.source import Source
from kptrace.parsers.iptables_s import ListingResult, PartialBuilder, _ChainInfo, checked
from kptrace.parsers.placeholders import not_shown_rule, unreadable_rule
from kptrace.parsers.iptables_save import POLICIES, PROTO_NUMBERS, parse_network
from kptrace.parsers.numbers import is_num

# `(policy DROP 3 packets, 188 bytes)`: what the policy itself decided; kept only when both are exact (no K/M/G).
_POLICY_COUNTERS_RE = re.compile(r"\(policy \S+ ([0-9]{1,20}) packets, ([0-9]{1,20}) bytes\)")
CHAIN_RE = re.compile(r"^Chain (\S+) \((?:policy (\S+)[^)]*|([0-9]{1,20}) references?)\)\s*$")
HEADER_RE = re.compile(r"^\s*(num\s+)?(pkts\s+bytes\s+)?target\s+prot\s+opt\s+(in\s+out\s+)?source\s+destination\s*$")
ELISION_RE = re.compile(
    r"^\s*(\.{3,}|…+|\[\s*\.\.\.\s*\]|\(\s*\.\.\.\s*\)|<\s*snip\s*>|\[\s*snip\s*\]|--\s*snip\s*--|"
    r"\[?\(?\s*(output\s+)?(truncated|omitted|trimmed)\b[^\n]{0,60}|\.\.\.\s*\(?[0-9]{1,20}\s+more[^\n]{0,40}|--More--.*)\s*$",
    re.I,
)
OPTS = frozenset({"--", "-f", "!f", "!-f"})
NO_IFACE = ("the listing has no in/out columns (iptables -L without -v), so the rule may also test -i/-o; "
            "list with -v to know")
_COUNT_RE = re.compile(r"^[0-9]{1,20}[KMGTP]?$")
_NUM_RE = re.compile(r"^[0-9]{1,9}$")
_PORT_RE = re.compile(r"^[0-9]{1,20}(?::[0-9]{1,20})?$")
_PORTS_RE = re.compile(r"^[0-9]{1,20}(?::[0-9]{1,20})?(?:,[0-9]{1,20}(?::[0-9]{1,20})?)*$")
_NAME_RE = re.compile(r"^[A-Za-z][\w.+-]*$")
_TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
_CT_WORDS = frozenset({"ctstate", "ctproto", "ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst", "ctorigsrcport",
                       "ctorigdstport", "ctreplsrcport", "ctrepldstport", "ctstatus", "ctexpire", "ctdir"})
_LOG_FLAGS = ((1, "--log-tcp-sequence"), (2, "--log-tcp-options"), (4, "--log-ip-options"), (8, "--log-uid"),
              (32, "--log-macdecode"))
_LOG_WORDS = {"tcp-sequence": "--log-tcp-sequence", "tcp-options": "--log-tcp-options", "ip-options": "--log-ip-options",
              "uid": "--log-uid", "macdecode": "--log-macdecode"}


@dataclass(frozen=True, slots=True)
class Header:
    """What the column header says the listing has: rule numbers, counters (-v), in/out (-v)."""

    num: bool
    verbose: bool
    target_col: int  # 0-based column where `target` starts, to tell an empty target from a missing one
    guessed: bool = False

    @classmethod
    def parse(cls, line: str) -> Header | None:
        m = HEADER_RE.match(line)
        if not m:
            return None
        return cls(bool(m.group(1)), bool(m.group(2)) or bool(m.group(3)), line.find("target"))


def parse_iptables_list(text: str, file: str = "iptables-L", table: str | None = None, family: int | None = None,
                        excerpt: bool = False, first_line: int = 1) -> ListingResult:
    """Parse `iptables [-t T] -L [CHAIN] [-n] [-v] [-x] [--line-numbers]`; never raises for a line it cannot read.

    `excerpt`: the output was filtered (`| grep`, `| head`), so chains may be missing rules.
    `first_line`: the line number of text's first line in the file it came from.
    """
    b = PartialBuilder(file, table, family, "list")
    res = b.result
    res.first_line = first_line
    header: Header | None = None
    cur: _ChainInfo | None = None
    last: list[object] | None = None  # [chain, item index or None, line text, lineno]: the last row, for wraps
    expect = 1  # the next --line-numbers number
    for n, raw in enumerate(text.split("\n")):
        lineno = first_line + n
        line = raw.rstrip("\r")
        s = line.strip()
        if not s:
            continue
        res.last_line = lineno
        src = Source(file, lineno, 1, line)
        m = CHAIN_RE.match(s)
        if m:
            cur = b.chain(m.group(1), src, table)
            cur.declared = True
            cur.source = src
            policy = m.group(2)
            if policy is not None:
                if policy in POLICIES and policy != "-":
                    cur.policy = policy
                    counted = _POLICY_COUNTERS_RE.search(s)
                    if counted is not None:
                        cur.counters = (int(counted.group(1)), int(counted.group(2)))
                else:
                    cur.policy_unknown = f"{src}: policy '{policy}' of {m.group(1)} is not understood"
            header, last, expect = None, None, 1
            continue
        h = Header.parse(line)
        if h is not None:
            header = h
            continue
        if ELISION_RE.match(s):
            if cur is not None:
                b.rule(cur, not_shown_rule(table or "filter", cur.name, src, f"{src}: rules of {cur.name} are left out here (an elision in the paste)"))
                b.notes.append(f"{src}: an elision ('{s[:20]}'): the rules left out of {cur.name} there are UNDETERMINED")
            last = None
            expect = 0  # the elision already stands for the rules the numbering skips
            continue
        if cur is None:
            b.unparsed(src, "a listing row before any 'Chain NAME (...)' line")
            continue
        hdr = header or _guess_header(line)
        if hdr is None:
            if last is not None and _join(b, last, line, lineno, hdr or header, table):
                continue
            b.unparsed(src, "not a listing row")
            continue
        if header is None:
            header = hdr
            b.notes.append(f"{src}: no column header before the rows; read as `iptables -L{' -v' if hdr.verbose else ''}"
                           f"{' --line-numbers' if hdr.num else ''}` from their shape")
        try:
            rule, num = parse_row(line, lineno, file, cur.name, table or "filter", hdr)
        except ParseError as e:
            if last is not None and _join(b, last, line, lineno, hdr, table):
                continue
            if _looks_like_row(line, hdr):
                b.rule(cur, unreadable_rule(table or "filter", cur.name, src, f"listing row not understood: {e.message}"))
                b.unparsed(src, e.message)
                last = [cur, len(cur.items) - 1, line, lineno]
            else:
                b.unparsed(src, "not a listing row")
                last = None
            continue
        if num is not None:
            if expect and num > expect:
                b.rule(cur, not_shown_rule(table or "filter", cur.name, src,
                                           f"{src}: rules {expect}-{num - 1} of {cur.name} are not in the input (numbering skips)"))
            expect = num + 1
        b.rule(cur, rule)
        last = [cur, len(cur.items) - 1, line, lineno]
    if excerpt:
        for info in b.chains.values():
            info.fragment = True
    return b.finish()


def _guess_header(line: str) -> Header | None:
    """Rows pasted without their column header: count the numbers before the target column."""
    words = line.split()
    for p in range(1, min(len(words), 7)):
        if words[p] in OPTS:
            prot_at = p - 1
            has_target = prot_at >= 1 and not _COUNT_RE.match(words[prot_at - 1])
            k = prot_at - (1 if has_target else 0)  # numbers before: 1 --line-numbers, 2 -v, 3 both
            return Header(num=k in (1, 3), verbose=k in (2, 3), target_col=-1, guessed=True)
    return None


def _looks_like_row(line: str, hdr: Header) -> bool:
    words = line.split()
    return any(w in OPTS for w in words[:7])


def _join(b: PartialBuilder, last: list[object], line: str, lineno: int, hdr: Header | None, table: str | None) -> bool:
    """A row a terminal wrapped: join the continuation to it when the joined row reads without loss."""
    info, idx, prev, first = last
    assert isinstance(info, _ChainInfo) and isinstance(prev, str) and isinstance(first, int)
    hdr = hdr or _guess_header(prev)
    if hdr is None:
        return False
    cont = line.strip()
    glue = ["", " "] if len(prev) >= 79 else [" ", ""]
    best: tuple[Rule, str] | None = None
    for g in glue:
        joined = prev + g + cont
        try:
            rule, _ = parse_row(joined, first, b.file, info.name, table or "filter", hdr)
        except ParseError:
            continue
        if best is None or _unknowns(rule) < _unknowns(best[0]):
            best = (rule, joined)
    if best is None:
        return False
    rule, joined = best
    rule = checked(replace(rule, source=Source(b.file, first, 1, joined)))
    if isinstance(idx, int):
        info.items[idx] = (rule, info.items[idx][1])
    else:
        b.rule(info, rule)
        last[1] = len(info.items) - 1
    b.result.unparsed[:] = [u for u in b.result.unparsed if u.source.line != first]
    last[2] = joined
    b.notes.append(f"{b.file}:{lineno}: read as the continuation of line {first} (a wrapped line)")
    return True


def _unknowns(rule: Rule) -> int:
    return sum(1 for m in rule.matches if not m.known) + (1 if rule.target is not None and not rule.target.known else 0)


# --- one row ----------------------------------------------------------------------------------------


def parse_row(line: str, lineno: int, file: str, chain: str, table: str, hdr: Header) -> tuple[Rule, int | None]:
    """One listing row as a Rule (its Source is the row); raises ParseError when the fixed columns do not read."""
    words = [(m.group(), m.start()) for m in _first_words(line, 12)]

    def err(i: int, msg: str) -> ParseError:
        col = words[i][1] + 1 if i < len(words) else len(line) + 1
        return ParseError(file, lineno, col, msg, line)

    i = 0
    num: int | None = None
    if hdr.num:
        if i >= len(words) or not _NUM_RE.match(words[i][0]):
            raise err(i, "expected the rule number (--line-numbers)")
        num = int(words[i][0])
        i += 1
    counters: tuple[int, int] | None = None
    if hdr.verbose:
        if i + 1 >= len(words) or not _COUNT_RE.match(words[i][0]) or not _COUNT_RE.match(words[i + 1][0]):
            raise err(i, "expected packet and byte counters (-v)")
        if is_num(words[i][0][-1:]) and is_num(words[i + 1][0][-1:]):
            counters = (int(words[i][0]), int(words[i + 1][0]))
        i += 2
    target_word: tuple[str, int] | None
    if i + 1 < len(words) and words[i + 1][0] in OPTS:
        target_word, prot, opt = None, words[i], words[i + 1]
        i += 2
    elif i + 2 < len(words) and words[i + 2][0] in OPTS:
        target_word, prot, opt = words[i], words[i + 1], words[i + 2]
        i += 3
    elif hdr.target_col >= 0 and i + 1 < len(words):
        # Old ip6tables leaves the opt column blank; the header tells whether the target column is.
        if len(line) > hdr.target_col and line[hdr.target_col] == " " and words[i][1] > hdr.target_col:
            target_word, prot = None, words[i]
            i += 1
        else:
            target_word, prot = words[i], words[i + 1]
            i += 2
        opt = ("--", prot[1])
    else:
        raise err(i, "expected 'target prot opt' columns")
    conds: dict[str, Cond] = {}  # type: ignore[type-arg]
    lossy: list[tuple[int, str]] = []
    _proto(prot, conds)
    if opt[0] in ("-f", "!f", "!-f"):
        conds["fragment"] = Cond(True, opt[0] != "-f", opt[1] + 1)
    if hdr.verbose:
        if i + 1 >= len(words):
            raise err(i, "expected the in and out columns (-v)")
        for key, (w, c) in (("in", words[i]), ("out", words[i + 1])):
            neg = w.startswith("!")
            v = w[1:] if neg else w
            if v not in ("*", "any"):
                conds[key] = Cond(v, neg, c + 1, v)
            elif neg:
                conds[key] = Cond("+", True, c + 1, "+")  # `! -i +`: no interface at all
        i += 2
    if i + 1 >= len(words):
        raise err(i, "expected the source and destination columns")
    goto = False
    if words[i + 1][0].endswith("[goto]") and words[i + 1][0] != "[goto]":
        # `%-20s` leaves no space before "[goto]" after a destination of 20 characters or more.
        words[i + 1] = (words[i + 1][0][:-6], words[i + 1][1])
        goto = True
    for key, (w, c) in (("src", words[i]), ("dst", words[i + 1])):
        cond, why = _address(w, c, file, lineno, line)
        if cond is not None:
            conds[key] = cond
        if why:
            lossy.append((c + 1, why))
    rest_at = words[i + 1][1] + len(words[i + 1][0])
    target_name = target_word[0] if target_word else None
    rest = _Rest(line[rest_at:], rest_at + 1, target_name)
    rest.run()
    rest.goto = rest.goto or goto
    matches = list(rest.matches)
    for col, why in lossy:
        matches.append(Match("listing", (), known=False, col=col, why_unknown=why))
    if not hdr.verbose:
        matches.append(Match("listing", (), known=False, col=len(line) + 2, why_unknown=NO_IFACE))
    target: Target | None = None
    if target_name is not None:
        tcol = rest.target_col if rest.target_col is not None else len(line) + 1
        known = rest.target_known
        if target_name in ("DNAT", "SNAT") and not any(o.name.startswith("--to-") for o in rest.target_opts):
            known = False  # the listing lost the address it translates to
        target = Target(target_name, tuple(rest.target_opts), rest.goto, known, tcol)
    elif rest.target_opts or rest.goto:
        matches.append(Match("unparsed", (), known=False, col=len(line) + 1,
                             why_unknown="target options without a target in the listing"))
    rule = Rule(table=table, chain=chain, index=0, source=Source(file, lineno, 1, line),
                proto=conds.get("proto"), src=conds.get("src"), dst=conds.get("dst"), in_iface=conds.get("in"),
                out_iface=conds.get("out"), fragment=conds.get("fragment"), matches=tuple(matches), target=target,
                counters=counters)
    return rule, num


def _first_words(line: str, n: int) -> list[re.Match[str]]:
    out = []
    for m in re.finditer(r"\S+", line):
        out.append(m)
        if len(out) >= n:
            break
    return out


def _proto(word: tuple[str, int], conds: dict[str, Cond]) -> None:  # type: ignore[type-arg]
    w, c = word
    neg = w.startswith("!")
    v = (w[1:] if neg else w).lower()
    if v in ("0", "all") and not neg:
        return
    name = PROTO_NUMBERS.get(v, v)
    conds["proto"] = Cond("all" if name == "0" else name, neg, c + 1, name)


def _address(word: str, col: int, file: str, lineno: int, line: str) -> tuple[Cond | None, str | None]:  # type: ignore[type-arg]
    neg = word.startswith("!")
    v = word[1:] if neg else word
    if v in ("0.0.0.0/0", "::/0", "anywhere", "0.0.0.0/0.0.0.0"):
        if not neg:
            return None, None
        v = "0.0.0.0/0" if v != "::/0" else "::/0"
    try:
        return Cond(parse_network(v, file, lineno, col + 1, line), neg, col + 1, v), None
    except ParseError:
        pass
    return None, (f"address '{word}' is shown as a name (iptables -L without -n); kptrace does not resolve it, "
                  f"list with -n")


# --- the match and target text -----------------------------------------------------------------------


class _Rest:
    """The free text after the destination column: matches, then the target's options."""

    def __init__(self, text: str, col0: int, target: str | None) -> None:
        self.text, self.col0, self.target = text, col0, target
        self.matches: list[Match] = []
        self.target_opts: list[Option] = []
        self.target_known = True
        self.target_col: int | None = None
        self.goto = False

    def run(self) -> None:
        best: tuple[int, list[Match], list[Option], bool, int | None, bool] | None = None
        for mode in ("short", "long"):
            self.matches, self.target_opts, self.target_known, self.target_col, self.goto = [], [], True, None, False
            self._parse(_words(self.text, mode))
            bad = sum(1 for m in self.matches if not m.known) + (0 if self.target_known else 1)
            if best is None or bad < best[0]:
                best = (bad, self.matches, self.target_opts, self.target_known, self.target_col, self.goto)
            if bad == 0 or "*/" not in self.text:
                break
        assert best is not None
        _, self.matches, self.target_opts, self.target_known, self.target_col, self.goto = best

    def _parse(self, words: list[tuple[str, int]]) -> None:
        i = 0
        while i < len(words):
            w = words[i][0]
            if w == "[goto]":
                self.goto = True
                i += 1
                continue
            nxt = self._match(words, i)
            if nxt is None:
                nxt = self._target(words, i)
            if nxt is None:
                self._unknown(words, i)
                return
            i = nxt

    def col(self, words: list[tuple[str, int]], i: int) -> int:
        return self.col0 + words[i][1] if i < len(words) else self.col0 + len(self.text)

    def _unknown(self, words: list[tuple[str, int]], i: int) -> None:
        text = " ".join(w for w, _ in words[i:])
        shown = text if len(text) <= 80 else text[:77] + "..."
        why = f"listing text '{shown}' is not understood (a match or target kptrace cannot read back from -L)"
        if self.target_col is not None:
            self.target_known = False
            self.target_opts.append(Option("--unparsed", (text,), False, self.col(words, i)))
            return
        self.matches.append(Match("unparsed", (Option("--text", (text,), False, self.col(words, i)),), known=False,
                                  col=self.col(words, i), why_unknown=why))

    # -- matches --

    def _match(self, words: list[tuple[str, int]], i: int) -> int | None:
        w = words[i][0]
        neg = False
        j = i
        if w == "!" and i + 1 < len(words):
            neg, j = True, i + 1
            w = words[j][0]
        fn = _MATCHERS.get(w)
        if fn is None:
            if w.startswith("/*") and not neg:
                return self._comment(words, i)
            return None
        return fn(self, words, j, neg, self.col(words, i))

    def _comment(self, words: list[tuple[str, int]], i: int) -> int | None:
        w = words[i][0]
        if not (w.startswith("/* ") and w.endswith(" */")) and w != "/*  */":
            return None
        body = w[3:-3] if len(w) >= 6 else ""
        self.matches.append(Match("comment", (Option("--comment", (body,), False, self.col(words, i)),), True,
                                  self.col(words, i)))
        return i + 1

    def add(self, module: str, opts: list[Option], col: int, why: str = "") -> None:
        self.matches.append(Match(module, tuple(opts), not why, col, why_unknown=why))

    # -- target options --

    def _target(self, words: list[tuple[str, int]], i: int) -> int | None:
        fn = _TARGETS.get(self.target) if self.target is not None else None
        if fn is None:
            return None
        before = len(self.target_opts)
        nxt = fn(self, words, i)
        if nxt is None or nxt <= i:
            del self.target_opts[before:]
            return None
        if self.target_col is None:
            self.target_col = self.col(words, i)
        return nxt

    def topt(self, name: str, values: tuple[str, ...], words: list[tuple[str, int]], i: int) -> None:
        self.target_opts.append(Option(name, values, False, self.col(words, i)))


def _words(text: str, mode: str) -> list[tuple[str, int]]:
    """Split the free text: `/* comment */` and `"quoted"` are one word each."""
    out: list[tuple[str, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
            continue
        if text.startswith("/* ", i) or text.startswith("/*  */", i):
            if mode == "short":
                end = text.find(" */", i + 2)
            else:
                nxt = text.find("/* ", i + 3)
                limit = nxt if nxt >= 0 else n
                end = text.rfind(" */", i + 2, limit + 3 if nxt >= 0 else n)
            if end < 0:
                out.append((text[i:], i))
                return out
            out.append((text[i : end + 3], i))
            i = end + 3
            continue
        if c == '"':
            end = text.find('"', i + 1)
            end = n - 1 if end < 0 else end
            out.append((text[i : end + 1], i))
            i = end + 1
            continue
        j = i
        while j < n and text[j] not in " \t":
            j += 1
        out.append((text[i:j], i))
        i = j
    return out


def _port_value(v: str, many: bool = False) -> str:
    """'' for a numeric port (range, list), else why it is unknown."""
    if (_PORTS_RE if many else _PORT_RE).match(v):
        return ""
    return f"port '{v}' is shown as a service name (iptables -L without -n); kptrace does not resolve it, list with -n"


def _m_proto(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    module = words[i][0]
    if neg:
        return None
    opts: list[Option] = []
    why = ""
    j = i + 1
    while j < len(words):
        w, _ = words[j]
        m = re.match(r"^(spts?|dpts?):(!?)(.+)$", w)
        if m:
            name = "--sport" if m.group(1).startswith("s") else "--dport"
            why = why or _port_value(m.group(3))
            opts.append(Option(name, (m.group(3),), m.group(2) == "!", r.col(words, j)))
            j += 1
            continue
        m = re.match(r"^flags:(!?)([^/]+)/(.+)$", w)
        if m and module == "tcp":
            mask, comp = _tcp_flags(m.group(2)), _tcp_flags(m.group(3))
            if mask is None or comp is None:
                return None
            opts.append(Option("--tcp-flags", (mask, comp), m.group(1) == "!", r.col(words, j)))
            j += 1
            continue
        m = re.match(r"^option=(!?)([0-9]{1,20})$", w)
        if m and module == "tcp":
            opts.append(Option("--tcp-option", (m.group(2),), m.group(1) == "!", r.col(words, j)))
            j += 1
            continue
        break
    r.add(module, opts, col, why)
    return j


def _tcp_flags(text: str) -> str | None:
    if text.startswith("0x"):
        try:
            v = int(text, 16)
        except ValueError:
            return None
        if v == 0:
            return "NONE"
        names = [n for k, n in enumerate(_TCP_FLAGS) if v & (1 << k)]
        return ",".join(names) if v < 256 else None
    parts = text.split(",")
    if all(p in _TCP_FLAGS or p in ("ALL", "NONE") for p in parts):
        return text
    return None


def _m_multiport(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if neg or i + 1 >= len(words):
        return None
    kind = words[i + 1][0]
    names = {"dports": "--dports", "sports": "--sports", "ports": "--ports"}
    if kind not in names:
        return None
    j = i + 2
    oneg = False
    if j < len(words) and words[j][0] == "!":
        oneg, j = True, j + 1
    if j >= len(words):
        return None
    v = words[j][0]
    if v.startswith("!"):
        oneg, v = True, v[1:]
    r.add("multiport", [Option(names[kind], (v,), oneg, r.col(words, i + 1))], col, _port_value(v, many=True))
    return j + 1


def _m_mark(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    module = words[i][0]
    if neg or i + 1 >= len(words) or words[i + 1][0] != "match":
        return None
    j = i + 2
    oneg = False
    if j < len(words) and words[j][0] == "!":
        oneg, j = True, j + 1
    if j >= len(words) or not re.match(r"^0x[0-9a-fA-F]+(/0x[0-9a-fA-F]+)?$", words[j][0]):
        return None
    r.add(module, [Option("--mark", (words[j][0],), oneg, r.col(words, j))], col)
    return j + 1


def _m_conntrack(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    """`ctstate NEW`, `! ctstate INVALID`, `ctproto 6 ctorigdst 10.0.0.1` …: one -m conntrack."""
    opts: list[Option] = []
    j, oneg, end = i, neg, i
    while j + 1 < len(words) and words[j][0] in _CT_WORDS:
        opts.append(Option("--" + words[j][0], (words[j + 1][0],), oneg, r.col(words, j)))
        j = end = j + 2
        if j + 1 < len(words) and words[j][0] == "!" and words[j + 1][0] in _CT_WORDS:
            oneg, j = True, j + 1
        else:
            oneg = False
    if not opts:
        return None
    r.add("conntrack", opts, col)
    return end


def _m_state(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if i + 1 >= len(words):
        return None
    r.add("state", [Option("--state", (words[i + 1][0],), neg, r.col(words, i))], col)
    return i + 2


def _m_addrtype(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if neg or i + 1 >= len(words) or words[i + 1][0] != "match":
        return None
    opts: list[Option] = []
    j = i + 2
    while j < len(words):
        w = words[j][0]
        if w in ("src-type", "dst-type") and j + 1 < len(words):
            v, k, oneg = words[j + 1][0], j + 1, False
            if v == "!" and j + 2 < len(words):
                oneg, k, v = True, j + 2, words[j + 2][0]
            elif v.startswith("!"):
                oneg, v = True, v[1:]
            opts.append(Option("--" + w, (v,), oneg, r.col(words, j)))
            j = k + 1
        elif w in ("limit-in", "limit-out"):
            opts.append(Option("--limit-iface-" + w[6:], (), False, r.col(words, j)))
            j += 1
        else:
            break
    if not opts:
        return None
    r.add("addrtype", opts, col)
    return j


def _m_statistic(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if neg or i + 2 >= len(words) or words[i + 1][0] != "mode":
        return None
    mode = words[i + 2][0]
    opts = [Option("--mode", (mode,), False, r.col(words, i + 1))]
    j = i + 3
    while j < len(words):
        oneg, k = False, j
        if words[k][0] == "!" and k + 1 < len(words):
            oneg, k = True, k + 1
        w = words[k][0]
        if w in ("probability", "every", "packet") and k + 1 < len(words):
            opts.append(Option("--" + w, (words[k + 1][0],), oneg, r.col(words, k)))
            j = k + 2
        else:
            break
    if mode == "random" and not any(o.name == "--probability" for o in opts):
        return None
    r.add("statistic", opts, col)
    return j


_RECENT_MODES = {"CHECK": "--rcheck", "SET": "--set", "UPDATE": "--update", "REMOVE": "--remove"}


def _m_recent(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    j = i + 1
    oneg = neg
    if j < len(words) and words[j][0] == "!":
        oneg, j = True, j + 1
    if j >= len(words) or words[j][0] not in _RECENT_MODES:
        return None
    opts = [Option(_RECENT_MODES[words[j][0]], (), oneg, r.col(words, j))]
    j += 1
    valued = {"seconds:": "--seconds", "hit_count:": "--hitcount", "name:": "--name", "mask:": "--mask"}
    while j < len(words):
        w = words[j][0]
        if w in valued and j + 1 < len(words):
            opts.append(Option(valued[w], (words[j + 1][0],), False, r.col(words, j)))
            j += 2
        elif w == "reap":
            opts.append(Option("--reap", (), False, r.col(words, j)))
            j += 1
        elif w == "TTL-Match":
            opts.append(Option("--rttl", (), False, r.col(words, j)))
            j += 1
        elif w == "side:" and j + 1 < len(words) and words[j + 1][0] in ("source", "dest"):
            opts.append(Option("--rsource" if words[j + 1][0] == "source" else "--rdest", (), False, r.col(words, j)))
            j += 2
        else:
            break
    r.add("recent", opts, col)
    return j


def _m_set(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if i + 2 >= len(words):
        return None
    opts = [Option("--match-set", (words[i + 1][0], words[i + 2][0]), neg, r.col(words, i))]
    j = i + 3
    flags = {"return-nomatch": 0, "update-counters": 0, "update-subcounters": 0, "packets-eq": 1, "packets-lt": 1,
             "packets-gt": 1, "bytes-eq": 1, "bytes-lt": 1, "bytes-gt": 1}
    while j < len(words):
        oneg, k = False, j
        if words[k][0] == "!" and k + 1 < len(words):
            oneg, k = True, k + 1
        w = words[k][0]
        if w not in flags or k + flags[w] >= len(words):
            break
        opts.append(Option("--" + w, tuple(words[x][0] for x in range(k + 1, k + 1 + flags[w])), oneg, r.col(words, k)))
        j = k + 1 + flags[w]
    r.add("set", opts, col)
    return j


def _m_iprange(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if neg or i + 3 >= len(words) or words[i + 1][0] != "IP" or words[i + 2][0] != "range":
        return None
    j, oneg = i + 3, False
    if words[j][0] == "!" and j + 1 < len(words):
        oneg, j = True, j + 1
    name = "--src-range" if words[i][0] == "source" else "--dst-range"
    r.add("iprange", [Option(name, (words[j][0],), oneg, r.col(words, i))], col)
    return j + 1


def _m_limit(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if neg or i + 4 >= len(words) or words[i + 1][0] != "avg" or words[i + 3][0] != "burst":
        return None
    r.add("limit", [Option("--limit", (words[i + 2][0],), False, r.col(words, i + 1)),
                    Option("--limit-burst", (words[i + 4][0],), False, r.col(words, i + 3))], col)
    return i + 5


def _m_icmptype(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    """`icmptype 8`, `icmptype 3 code 4` (-n); `ipv6-icmptype 128`."""
    if neg or i + 1 >= len(words):
        return None
    v = words[i + 1][0]
    j = i + 2
    if j + 1 < len(words) and words[j][0] == "code":
        v, j = f"{v}/{words[j + 1][0]}", j + 2
    v6 = words[i][0].startswith("ipv6")
    r.add("icmp6" if v6 else "icmp", [Option("--icmpv6-type" if v6 else "--icmp-type", (v,), False, r.col(words, i))], col)
    return j


def _m_icmp(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    """`icmp echo-request`, `icmp !any`, `icmp !type 255` (names or negated forms); bare `icmp`."""
    v6 = words[i][0].startswith("ipv6")
    name = "--icmpv6-type" if v6 else "--icmp-type"
    module = "icmp6" if v6 else "icmp"
    if neg:
        return None
    if i + 1 >= len(words):
        r.add(module, [], col)
        return i + 1
    w = words[i + 1][0]
    oneg = False
    j = i + 1
    if w.startswith("!"):
        oneg, w = True, w[1:]
    if w == "type" and j + 1 < len(words):
        v = words[j + 1][0]
        k = j + 2
        if k + 1 < len(words) and words[k][0] == "code":
            v, k = f"{v}/{words[k + 1][0]}", k + 2
        r.add(module, [Option(name, ("any" if v == "255" else v,), oneg, r.col(words, j))], col)
        return k
    if re.match(r"^[a-z][a-z0-9-]*$", w) and w not in _MATCHERS:
        r.add(module, [Option(name, (w,), oneg, r.col(words, j))], col)
        return j + 1
    r.add(module, [], col)
    return i + 1


def _m_pkttype(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if neg or i + 2 >= len(words) or words[i + 1][0] not in ("=", "!="):
        return None
    r.add("pkttype", [Option("--pkt-type", (words[i + 2][0],), words[i + 1][0] == "!=", r.col(words, i))], col)
    return i + 3


def _m_mac(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if i + 1 >= len(words):
        return None
    j, oneg = i + 1, neg
    if words[j][0] == "!" and j + 1 < len(words):
        oneg, j = True, j + 1
    if not re.match(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$", words[j][0]):
        return None
    r.add("mac", [Option("--mac-source", (words[j][0],), oneg, r.col(words, j))], col)
    return j + 1


def _m_physdev(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if neg or i + 1 >= len(words) or words[i + 1][0] != "match":
        return None
    opts: list[Option] = []
    j = i + 2
    while j < len(words):
        oneg, k = False, j
        if words[k][0] == "!" and k + 1 < len(words):
            oneg, k = True, k + 1
        w = words[k][0]
        if w in ("--physdev-in", "--physdev-out") and k + 1 < len(words):
            opts.append(Option(w, (words[k + 1][0],), oneg, r.col(words, k)))
            j = k + 2
        elif w in ("--physdev-is-in", "--physdev-is-out", "--physdev-is-bridged"):
            opts.append(Option(w, (), oneg, r.col(words, k)))
            j = k + 1
        else:
            break
    if not opts:
        return None
    r.add("physdev", opts, col)
    return j


def _m_owner(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if neg or i + 1 >= len(words):
        return None
    kind = words[i + 1][0]
    if kind in ("UID", "GID") and i + 3 < len(words) and words[i + 2][0] == "match":
        j, oneg = i + 3, False
        if words[j][0] == "!" and j + 1 < len(words):
            oneg, j = True, j + 1
        v = words[j][0]
        why = "" if re.match(r"^[0-9]{1,20}(-[0-9]{1,20})?$", v) else f"owner '{v}' is shown as a name (iptables -L without -n)"
        r.add("owner", [Option("--uid-owner" if kind == "UID" else "--gid-owner", (v,), oneg, r.col(words, i + 1))], col, why)
        return j + 1
    if kind == "socket" and i + 2 < len(words) and words[i + 2][0] == "exists":
        r.add("owner", [Option("--socket-exists", (), False, r.col(words, i + 1))], col)
        return i + 3
    return None


def _m_nfacct(r: _Rest, words: list[tuple[str, int]], i: int, neg: bool, col: int) -> int | None:
    if neg or i + 1 >= len(words):
        return None
    r.add("nfacct", [Option("--nfacct-name", (words[i + 1][0],), False, r.col(words, i))], col)
    return i + 2


Matcher = Callable[[_Rest, list[tuple[str, int]], int, bool, int], "int | None"]
_MATCHERS: dict[str, Matcher] = {
    "tcp": _m_proto, "udp": _m_proto, "udplite": _m_proto, "sctp": _m_proto,
    "multiport": _m_multiport, "mark": _m_mark, "connmark": _m_mark,
    **{w: _m_conntrack for w in _CT_WORDS},
    "state": _m_state, "ADDRTYPE": _m_addrtype, "statistic": _m_statistic, "recent:": _m_recent,
    "match-set": _m_set, "source": _m_iprange, "destination": _m_iprange, "limit:": _m_limit,
    "icmptype": _m_icmptype, "ipv6-icmptype": _m_icmptype, "icmp": _m_icmp, "ipv6-icmp": _m_icmp,
    "PKTTYPE": _m_pkttype, "MAC": _m_mac, "PHYSDEV": _m_physdev, "owner": _m_owner, "nfacct-name": _m_nfacct,
}


# --- targets ---------------------------------------------------------------------------------------


def _t_nat(r: _Rest, words: list[tuple[str, int]], i: int) -> int | None:
    name = "--to-destination" if r.target == "DNAT" else "--to-source"
    j = i
    while j < len(words):
        w = words[j][0]
        if w.startswith("to:") and not any(o.name == name for o in r.target_opts):
            r.topt(name, (w[3:],), words, j)
        elif w in ("random", "persistent", "random-fully"):
            r.topt("--" + w, (), words, j)
        else:
            break
        j += 1
    return j if j > i else None


def _t_ports(r: _Rest, words: list[tuple[str, int]], i: int) -> int | None:
    """MASQUERADE `masq ports: 1024-2000`, REDIRECT `redir ports 8080`, and `random`/`random-fully`."""
    j = i
    while j < len(words):
        w = words[j][0]
        if w in ("masq", "redir") and j + 2 < len(words) and words[j + 1][0] in ("ports:", "ports"):
            r.topt("--to-ports", (words[j + 2][0],), words, j)
            j += 3
        elif w in ("random", "random-fully"):
            r.topt("--" + w, (), words, j)
            j += 1
        else:
            break
    return j if j > i else None


def _t_reject(r: _Rest, words: list[tuple[str, int]], i: int) -> int | None:
    if words[i][0] == "reject-with" and i + 1 < len(words):
        r.topt("--reject-with", (words[i + 1][0],), words, i)
        return i + 2
    return None


def _t_mark(r: _Rest, words: list[tuple[str, int]], i: int) -> int | None:
    """xt_MARK and xt_CONNMARK print the operation kptrace's MARK evaluator takes (`MARK or 0x4000`)."""
    head = r.target or ""
    if words[i][0] != head or i + 1 >= len(words):
        return None
    op = words[i + 1][0]
    if head == "CONNMARK" and op in ("save", "restore"):
        r.topt("--save-mark" if op == "save" else "--restore-mark", (), words, i)
        j = i + 2
        while j + 1 < len(words) and words[j][0] in ("nfmask", "ctmask"):
            v = words[j + 1][0]
            if v.startswith("~"):
                try:
                    v = hex(~int(v[1:], 16) & 0xFFFFFFFF)
                except ValueError:
                    return None
            r.topt("--" + words[j][0], (v,), words, j)
            j += 2
        return j
    ops = {"or": "--or-mark", "xor": "--xor-mark", "and": "--and-mark", "set": "--set-mark", "xset": "--set-xmark"}
    if op not in ops or i + 2 >= len(words) or not re.match(r"^0x[0-9a-fA-F]+(/0x[0-9a-fA-F]+)?$", words[i + 2][0]):
        return None
    r.topt(ops[op], (words[i + 2][0],), words, i)
    return i + 3


def _t_log(r: _Rest, words: list[tuple[str, int]], i: int) -> int | None:
    if words[i][0] != "LOG":
        return None
    j = i + 1
    while j < len(words):
        w = words[j][0]
        if w == "flags" and j + 1 < len(words) and _NUM_RE.match(words[j + 1][0]):
            bits = int(words[j + 1][0])
            for bit, name in _LOG_FLAGS:
                if bits & bit:
                    r.topt(name, (), words, j)
            j += 2
        elif w == "level" and j + 1 < len(words):
            if words[j + 1][0] not in ("4", "warning", "warn"):  # the default, which iptables-save leaves out
                r.topt("--log-level", (words[j + 1][0],), words, j)
            j += 2
        elif w == "prefix" and j + 1 < len(words) and words[j + 1][0].startswith('"'):
            r.topt("--log-prefix", (words[j + 1][0][1:-1],), words, j)
            j += 2
        elif w in _LOG_WORDS:
            r.topt(_LOG_WORDS[w], (), words, j)
            j += 1
        else:
            break
    return j


def _t_nflog(r: _Rest, words: list[tuple[str, int]], i: int) -> int | None:
    j = i
    while j + 1 < len(words) and words[j][0] in ("nflog-prefix", "nflog-group", "nflog-range", "nflog-size",
                                                 "nflog-threshold"):
        v = words[j + 1][0]
        r.topt("--" + words[j][0], (v[1:-1] if v.startswith('"') and len(v) > 1 else v,), words, j)
        j += 2
    return j if j > i else None


def _t_ct(r: _Rest, words: list[tuple[str, int]], i: int) -> int | None:
    if words[i][0] == "NOTRACK":
        r.topt("--notrack", (), words, i)
        return i + 1
    if words[i][0] != "CT":
        return None
    j = i + 1
    one = {"helper", "ctevents", "expevents", "zone", "zone-orig", "zone-reply", "timeout"}
    while j < len(words):
        w = words[j][0]
        if w == "notrack":
            r.topt("--notrack", (), words, j)
            j += 1
        elif w in one and j + 1 < len(words):
            r.topt("--" + w, (words[j + 1][0].strip('"'),), words, j)
            j += 2
        else:
            break
    return j


def _t_tcpmss(r: _Rest, words: list[tuple[str, int]], i: int) -> int | None:
    if words[i][0] != "TCPMSS" or i + 1 >= len(words):
        return None
    if [w for w, _ in words[i + 1 : i + 4]] == ["clamp", "to", "PMTU"]:
        r.topt("--clamp-mss-to-pmtu", (), words, i)
        return i + 4
    if words[i + 1][0] == "set" and i + 2 < len(words):
        r.topt("--set-mss", (words[i + 2][0],), words, i)
        return i + 3
    return None


def _t_checksum(r: _Rest, words: list[tuple[str, int]], i: int) -> int | None:
    if words[i][0] == "CHECKSUM" and i + 1 < len(words) and words[i + 1][0] == "fill":
        r.topt("--checksum-fill", (), words, i)
        return i + 2
    return None


_TARGETS: dict[str, Callable[[_Rest, list[tuple[str, int]], int], "int | None"]] = {
    "DNAT": _t_nat, "SNAT": _t_nat, "MASQUERADE": _t_ports, "REDIRECT": _t_ports, "REJECT": _t_reject,
    "MARK": _t_mark, "CONNMARK": _t_mark, "LOG": _t_log, "NFLOG": _t_nflog, "CT": _t_ct, "NOTRACK": _t_ct,
    "TCPMSS": _t_tcpmss, "CHECKSUM": _t_checksum,
}
