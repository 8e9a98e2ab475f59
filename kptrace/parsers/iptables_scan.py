"""Large `iptables-save` dumps: read the structure, parse a rule when a walk reads it.

A 10,000-service node's dump is 430k lines (34 MB). Splitting it into lines costs more than the
whole answer, so the scan works on offsets into the file's bytes (mapped, not read), and decodes
only what a walk reads:

- tables are `*name` … `COMMIT` blocks found with `find`;
- a table's chain declarations come first, one per line. iptables-save prints the built-in chains,
  then the user chains sorted by name: once neighbouring declaration lines have been compared to
  check that order (the cache keeps the verdict), a chain's declaration is found by bisection, and
  no list of 100k names is built. Other orders rank every name (a dict);
- `iptables-save` prints every chain's rules together, in declaration order, so the rules of chain X
  are found by bisection over offsets (the order of the chain named at a line never decreases);
- line numbers (for `file:line` citations) come from newline counts per 64 KiB (one pass, cached).

A located block is checked line by line before use. A line the bisection cannot read as a plain
`-A CHAIN` rule (counters, comments, `-I` …) makes that table fall back to the full parser. Dumps
not written by iptables-save (restore files may interleave chains) group their rule lines in one
pass instead of bisecting.
"""

from __future__ import annotations

import mmap
import os
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from itertools import groupby, islice
from operator import lt
from ipaddress import ip_address
from typing import Any

from kptrace.errors import ParseError
from kptrace.model.netfilter import BUILTIN_CHAINS, Chain, LazyChains, Rule, Ruleset, Table
from kptrace.model.source import Source
from kptrace.parsers.iptables_fast import FastParser
from kptrace.parsers.iptables_save import POLICIES, _reindex, parse_iptables_save, parse_rule_line
from kptrace.parsers.numbers import is_num

# Below this many lines a full parse costs less than 0.2 s: validate everything. KPTRACE_LAZY_MIN_LINES
# moves the line (0: read every dump lazily, as the kernel lab does to compare both paths).
LAZY_MIN_LINES = int(os.environ.get("KPTRACE_LAZY_MIN_LINES") or 5000)
INDEX_MIN_RULES = 64  # chains this long get a destination index (KUBE-SERVICES, KUBE-NODEPORTS)
HINTS_FORMAT = 5  # bump when the cached structure changes meaning
_DECL_RE = re.compile(r"^:(\S+)[ \t]+(\S+)(?:[ \t]+\[([0-9]{1,20}):([0-9]{1,20})\])?[ \t\r]*$")
_DECL_NAME_RE = re.compile(r"\n:([^ \t\r\n]+)")
_NOT_DECL_RE = re.compile(rb"\n[^:]")
_V6_RULE_RE = re.compile(rb" -[sd] [0-9a-fA-F]*:[0-9a-fA-F:]*[/ ]")
Buffer = bytes | mmap.mmap


class _Irregular(Exception):
    """The bisection met a line iptables-save does not print: read the table with the full parser."""


class _Text:
    """The dump's bytes (a bytes object or a read-only mmap of the file), decoded a slice at a
    time, and 1-based line numbers of offsets from running newline counts per STEP bytes (the
    scan counts them once; the cache keeps them)."""

    STEP = 1 << 16

    def __init__(self, data: Buffer, file: str, newlines: list[int] | None = None) -> None:
        self.data, self.file = data, file
        blocks = len(data) // self.STEP + 1
        if newlines is None or len(newlines) != blocks:
            newlines, n = [], 0
            for i in range(blocks):
                newlines.append(n)
                n += self.count_newlines(i * self.STEP, (i + 1) * self.STEP)
        self.newlines = newlines  # newlines before offset i * STEP

    def count_newlines(self, a: int, b: int) -> int:
        if isinstance(self.data, bytes):
            return self.data.count(b"\n", a, b)
        return self.data[a:b].count(b"\n")  # an mmap has no count(): copy at most STEP bytes

    def lineno(self, pos: int) -> int:
        block = pos // self.STEP
        return self.newlines[block] + self.count_newlines(block * self.STEP, pos) + 1

    def decode(self, a: int, b: int) -> str:
        try:
            return self.data[a:b].decode("utf-8")
        except UnicodeDecodeError as e:
            bad = a + e.start
            line_start = self.data.rfind(b"\n", 0, bad) + 1
            raise ParseError(self.file, self.lineno(bad), bad - line_start + 1,
                             f"invalid UTF-8 byte 0x{self.data[bad]:02x}") from None

    def line(self, pos: int) -> str:
        end = self.data.find(b"\n", pos)
        return self.decode(pos, end if end >= 0 else len(self.data)).rstrip("\r")


def scan_iptables_save(data: str | Buffer, file: str = "iptables-save", family: int | None = None,
                       hints: dict[str, Any] | None = None) -> Ruleset:
    """Read a dump's structure (tables, chains, where each chain's rules are) without tokenizing rules.

    `data` is the text, or its UTF-8 bytes (an mmap of the file works: only the parts a walk reads
    are decoded). Falls back to the full parse for small dumps and for anything but `iptables-save`
    layout (comment lines only outside tables, declarations before rules). `hints` are the
    `Ruleset.scan_hints` of an earlier scan of the same bytes by this HINTS_FORMAT (kptrace's cache,
    which load.py checks): they skip the scan.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) < 50 * LAZY_MIN_LINES and raw[:].count(b"\n") < LAZY_MIN_LINES:
        return parse_iptables_save(_Text(raw, file).decode(0, len(raw)), file, family).ruleset
    if hints is not None and not _hints_fit(hints, raw):
        hints = None  # made for other bytes: scan these
    t = _Text(raw, file, hints["newlines"] if hints else None)
    sections = [tuple(s) for s in hints["sections"]] if hints else _sections(t)
    if sections is None:
        return parse_iptables_save(t.decode(0, len(raw)), file, family).ruleset
    rs = Ruleset(file=file, family=family or 4)
    # iptables-save prints each chain's rules together in declaration order; a restore file need not.
    head = raw[:300]
    in_order = b"# Generated by iptables-save" in head or b"# Generated by ip6tables-save" in head
    tables: dict[str, dict[str, Any]] = {}
    for h, c in sections:
        name = t.line(h).strip()[1:]
        known = hints["tables"].get(name) if hints else None
        sec = _Section.scan(t, rs, name, h, c, family, in_order, known)
        if sec is None:
            return parse_iptables_save(t.decode(0, len(raw)), file, family).ruleset
        tables[name] = sec.decls.hint()
        rs.tables[name] = sec.table()
    rs.scan_hints = {"format": HINTS_FORMAT, "bytes": len(raw), "sections": [list(s) for s in sections],
                     "tables": tables, "newlines": t.newlines}
    if family is None and b":" in raw[:200000] and _V6_RULE_RE.search(raw[:2000000]):
        rs.family = 6
    rs.assumptions.append(
        f"{file} is large ({len(raw) // 1024:,} KiB): rules are parsed when the trace reads them, so a "
        "syntax error in a rule it never reads is not reported (kptrace why --strict checks every rule)"
    )
    return rs


def _hints_fit(hints: dict[str, Any], raw: Buffer) -> bool:
    """Whether hints describe these bytes: their size, a newline count per block, and a `*table` line
    and a `COMMIT` line at each section's offsets. A few bytes per table: the cache verifies that an
    entry is the one kptrace wrote for this sha256; this checks it could describe these bytes at all."""
    n = len(raw)
    try:
        sections = [(int(h), int(c)) for h, c in hints["sections"]]
        ok = (hints.get("bytes") == n and isinstance(hints.get("tables"), dict)
              and isinstance(hints.get("newlines"), list) and len(hints["newlines"]) == n // _Text.STEP + 1)
    except (KeyError, TypeError, ValueError):
        return False
    return ok and all(0 <= h < c < n and raw[h:h + 1] == b"*" and (h == 0 or raw[h - 1:h] == b"\n")
                      and raw[c - 1:c + 6] == b"\nCOMMIT" for h, c in sections)


def _sections(t: _Text) -> list[tuple[int, int]] | None:
    """(offset of `*table`, offset of its `COMMIT`) for each table; None for anything unusual."""
    data = t.data
    out: list[tuple[int, int]] = []
    pos = 0
    while True:
        if pos == 0 and data[:1] == b"*":
            h = 0
        else:
            h = data.find(b"\n*", pos)
            if h < 0:
                break
            h += 1
        # One forward pass over the text in all: a `*table` line inside a table (no COMMIT before
        # it) is not looked for here; the bisection stops at it if it ever reads that line.
        c = data.find(b"\nCOMMIT", h)
        if c < 0:
            return None
        c += 1
        if t.line(c) != "COMMIT":
            return None
        out.append((h, c))
        pos = c
    if not out or any(line.strip() and not line.startswith("#") for line in t.decode(0, out[0][0]).split("\n")):
        return None
    return out


class _RankedDecls:
    """A table's declared chains by rank (declaration order), from the list of their names."""

    def __init__(self, t: _Text, table: str, body: int, decl_text: str, names: list[str]) -> None:
        self.t, self.table = t, table
        self.names = names
        self.rank: dict[str, int] = dict(zip(names, range(len(names))))
        self.lines = decl_text.split("\n")[:-1]
        self.first = t.lineno(body)
        self.ok = len(self.rank) == len(names) == len(self.lines)  # no duplicate or malformed line

    def __contains__(self, name: object) -> bool:
        return name in self.rank

    def __iter__(self) -> Iterator[str]:
        return iter(self.rank)

    def __len__(self) -> int:
        return len(self.rank)

    def setdefault(self, name: str, default: object = None) -> object:
        # A chain kptrace adds (assumed kube-proxy jumps) ranks after every declared one.
        return self.rank.setdefault(name, len(self.rank))

    def hint(self) -> dict[str, Any]:
        return {"layout": "ranked", "names": self.names}

    def line(self, name: str) -> tuple[int, str]:
        k = self.rank[name]
        return self.first + k, self.lines[k]

    def key(self, name: str, pos: int, text: str) -> tuple[int, int | str]:
        k = self.rank.get(name)
        if k is None:
            if name in BUILTIN_CHAINS[self.table]:
                return (-1, 0)
            raise ParseError(self.t.file, self.t.lineno(pos), 4, f"chain '{name}' is not declared in table '{self.table}'", text)
        return (0, k)


class _SortedDecls:
    """A table's declared chains when iptables-save's order is checked: built-in chains first, then
    user chains sorted by name. A name is then found by bisection over the declaration lines, so a
    query needs no list of a 10k-service node's 100k names (the cache keeps only "sorted")."""

    def __init__(self, t: _Text, table: str, body: int, rules: int) -> None:
        self.t, self.table, self.body, self.rules = t, table, body, rules
        self.builtins: dict[str, int] = {}  # declared built-in chain -> offset of its line
        pos = body
        while pos < rules:
            name = self._name_at(pos)
            if name not in BUILTIN_CHAINS[table] or name in self.builtins:
                break
            self.builtins[name] = pos
            pos = t.data.find(b"\n", pos, rules) + 1
        self.user_start = pos
        self.added: dict[str, None] = {}  # chains kptrace adds (assumed kube-proxy jumps)
        self._names: list[str] | None = None

    @classmethod
    def check(cls, t: _Text, table: str, body: int, rules: int, lines: list[str]) -> _SortedDecls | None:
        """The sorted view, if the declaration `lines` really are in that order. Whole lines compare
        as their names do: a name ends at a space, which sorts before any character of a name."""
        decls = cls(t, table, body, rules)
        nb = len(decls.builtins)
        if not all(map(lt, islice(lines, nb, None), islice(lines, nb + 1, None))):
            return None
        users = lines[nb:]
        for b in BUILTIN_CHAINS[table]:
            i = bisect_left(users, f":{b} ")
            if i < len(users) and users[i].startswith((f":{b} ", f":{b}\t")):
                return None  # a built-in chain declared among the user chains
        return decls

    def _name_at(self, pos: int) -> str:
        line = self.t.line(pos)
        return line[1:].split(None, 1)[0] if len(line) > 1 else ""

    def offset(self, name: str) -> int | None:
        if name in self.builtins:
            return self.builtins[name]
        pos = _first_line(self.t.data, self.user_start, self.rules, lambda at: self._name_at(at) < name)
        return pos if pos < self.rules and self._name_at(pos) == name else None

    def names(self) -> list[str]:
        if self._names is None:
            self._names = _DECL_NAME_RE.findall("\n" + self.t.decode(self.body, self.rules))
        return self._names

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.added or self.offset(name) is not None)

    def __iter__(self) -> Iterator[str]:
        yield from self.names()
        yield from self.added

    def __len__(self) -> int:
        return len(self.names()) + len(self.added)

    def setdefault(self, name: str, default: object = None) -> object:
        if name not in self:
            self.added[name] = None
        return default

    def hint(self) -> dict[str, Any]:
        return {"layout": "sorted"}

    def line(self, name: str) -> tuple[int, str]:
        pos = self.offset(name)
        if pos is None:
            raise KeyError(name)
        return self.t.lineno(pos), self.t.line(pos)

    def key(self, name: str, pos: int, text: str) -> tuple[int, int | str]:
        # Ordering only: whether a chain named in an unread rule is declared is not checked here.
        if name in BUILTIN_CHAINS[self.table]:
            return (0, list(self.builtins).index(name)) if name in self.builtins else (-1, 0)
        return (1, name)


def _present(names: list[str], name: str) -> bool:
    i = bisect_left(names, name)
    return i < len(names) and names[i] == name


Decls = _RankedDecls | _SortedDecls


class _Section:
    """One `*table` … `COMMIT` block: its declarations, and where each chain's rules are."""

    def __init__(self, t: _Text, name: str, head: int, rules: int, commit: int, decls: Decls,
                 family: int | None) -> None:
        self.t, self.name, self.file, self.family = t, name, t.file, family
        self.head, self.rules, self.commit = head, rules, commit
        self.decls = decls
        self.blocks: _Blocks | None = None
        self._full: Table | None = None
        self.fast: FastParser | None = None  # kube-proxy's rule shapes, read by one regex (shared sub-objects)

    @classmethod
    def scan(cls, t: _Text, rs: Ruleset, name: str, head: int, commit: int, family: int | None,
             in_order: bool, known: dict[str, Any] | None) -> _Section | None:
        file = t.file
        if name not in BUILTIN_CHAINS:
            raise ParseError(file, t.lineno(head), 2, f"unknown table '{name}'", t.line(head))
        body = t.data.find(b"\n", head) + 1
        m = _NOT_DECL_RE.search(t.data, body - 1, commit)
        rules = m.start() + 1 if m else commit
        decls: Decls | None = None
        if known is not None and known.get("layout") == "sorted":
            decls = _SortedDecls(t, name, body, rules)
        elif known is not None and isinstance(known.get("names"), list):
            decls = _RankedDecls(t, name, body, t.decode(body, rules), known["names"])
        else:
            text = t.decode(body, rules)
            if in_order:
                decls = _SortedDecls.check(t, name, body, rules, text.split("\n")[:-1])
            if decls is None:
                names = _DECL_NAME_RE.findall("\n" + text)
                if len(names) != text.count("\n"):
                    return None  # a malformed declaration: the full parser says which
                decls = _RankedDecls(t, name, body, text, names)
        if isinstance(decls, _RankedDecls) and not decls.ok:
            return None  # a duplicate or malformed declaration: the full parser says which
        sec = cls(t, name, head, rules, commit, decls, family)
        if not in_order:
            sec.blocks = _Blocks.group(sec)
            if sec.blocks is None:
                return None
        for cname in BUILTIN_CHAINS[name]:
            if cname in decls and sec.declaration(cname)[0] == "-":
                rs.assumptions.append(f"{file}:{decls.line(cname)[0]}: built-in chain {name}/{cname} has policy '-' "
                                      "(kept by restore); assumed ACCEPT, the kernel default")
        return sec

    def declaration(self, cname: str) -> tuple[str, str | None, str | None]:
        # Declarations are read when their chain is: a 10k-service node has 100k+ of them.
        row, line = self.decls.line(cname)
        m = _DECL_RE.match(line)
        if m is None:
            raise ParseError(self.file, row, 1, "malformed chain line, expected ':NAME POLICY [packets:bytes]'", line)
        policy = m.group(2)
        if policy not in POLICIES:
            raise ParseError(self.file, row, len(cname) + 3, f"invalid policy '{policy}'", line)
        if cname not in BUILTIN_CHAINS[self.name] and policy != "-":
            raise ParseError(self.file, row, len(cname) + 3, f"user chain '{cname}' cannot have policy '{policy}'", line)
        return policy, m.group(3), m.group(4)

    def table(self) -> Table:
        table = Table(self.name, Source(self.file, self.t.lineno(self.head), 1, self.t.line(self.head)))
        table.chains = LazyChains(self.decls, self.make)
        return table

    def make(self, cname: str) -> Chain:
        try:
            lines, linenos = self.rows(cname)
        except _Irregular:
            return self.full().chains[cname]
        policy, pk, by = self.declaration(cname)
        builtin = cname in BUILTIN_CHAINS[self.name]
        if builtin and policy == "-":
            policy = "ACCEPT"
        row, line = self.decls.line(cname)
        src = Source(self.file, row, 1, line.rstrip("\r"))
        counters = (int(pk), int(by)) if pk and by else None
        if self.fast is None:
            self.fast = FastParser(self.name, self.file)
        raw = _LazyRules(lines, linenos, self.name, cname, self.file, self.fast)
        return Chain(self.name, cname, policy if builtin else None, src, None, counters, raw)

    def full(self) -> Table:
        """This table read by the full parser, numbered as in the file."""
        if self._full is None:
            end = self.t.data.find(b"\n", self.commit)
            text = "\n" * (self.t.lineno(self.head) - 1) + self.t.decode(self.head, end if end >= 0 else len(self.t.data))
            self._full = parse_iptables_save(text, self.file, self.family).ruleset.tables[self.name]
        return self._full

    # --- where a chain's rules are -------------------------------------------------------------

    def rows(self, cname: str) -> tuple[list[str], Sequence[int]]:
        if self.blocks is not None:
            return self.blocks.rows(cname)
        k = self._name_key(cname)
        start = self._first(k, after=False)
        end = self._first(k, after=True)
        block = self.t.data[start:end]
        prefix = f"-A {cname} "
        n = block.count(b"\n")
        if (b"\n" + block).count(b"\n" + prefix.encode()) == n:
            lines = self.t.decode(start, end).split("\n")[:-1]
        else:
            # A rule without any match or target prints as a bare "-A NAME"; anything else is irregular.
            lines = self.t.decode(start, end).split("\n")[:-1]
            if not all(line.startswith(prefix) or line.rstrip("\r") == prefix[:-1] for line in lines):
                raise _Irregular(cname)
        first = self.t.lineno(start)
        return lines, range(first, first + len(lines))

    def _name_key(self, name: str) -> tuple[int, int | str]:
        return self.decls.key(name, self.rules, name)

    def _key(self, pos: int) -> tuple[int, int | str]:
        text = self.t.line(pos)
        if not text.startswith("-A "):
            raise _Irregular(pos)
        return self.decls.key(text[3:].split(" ", 1)[0].rstrip("\r"), pos, text)

    def _first(self, k: tuple[int, int | str], after: bool) -> int:
        """Offset of the first rule line whose chain sorts at k or later (after: later than k), by
        bisection over offsets."""
        if after:
            return _first_line(self.t.data, self.rules, self.commit, lambda at: self._key(at) <= k)
        return _first_line(self.t.data, self.rules, self.commit, lambda at: self._key(at) < k)


def _first_line(data: Buffer, lo: int, hi: int, before: Callable[[int], bool]) -> int:
    """Offset of the first line in [lo, hi) (both line starts) for which `before(offset)` is false,
    by bisection over byte offsets: `before` must hold for a prefix of the lines and no further."""
    while lo < hi:
        mid = (lo + hi) // 2
        nl = data.rfind(b"\n", lo, mid)
        start = nl + 1 if nl >= 0 else lo  # the line holding mid
        if before(start):
            lo = data.find(b"\n", start, hi) + 1
        else:
            hi = start
    return lo


class _Blocks:
    """Chain -> its rule lines from one pass, for dumps not known to come from iptables-save
    (restore files may interleave chains)."""

    def __init__(self, lines: list[str], first: int, spans: dict[str, list[tuple[int, int]]]) -> None:
        self.lines, self.first, self.spans = lines, first, spans

    @classmethod
    def group(cls, sec: _Section) -> _Blocks | None:
        lines = sec.t.decode(sec.rules, sec.commit).split("\n")[:-1]
        if lines and ("\n" + "\n".join(lines)).count("\n-A ") != len(lines):
            return None  # comments, blank lines, -I or [counters] among the rules: the full parser
        first = sec.t.lineno(sec.rules)
        names = [line[3 : line.find(" ", 3) % (len(line) + 1)].rstrip("\r") for line in lines]
        spans: dict[str, list[tuple[int, int]]] = {}
        pos = 0
        for chain, grp in groupby(names):
            n = len(list(grp))
            spans.setdefault(chain, []).append((pos, n))
            pos += n
        for chain, where in spans.items():
            if chain not in sec.decls and chain not in BUILTIN_CHAINS[sec.name]:
                row = where[0][0]
                raise ParseError(sec.file, first + row, 4, f"chain '{chain}' is not declared in table '{sec.name}'",
                                 lines[row])
        return cls(lines, first, spans)

    def rows(self, name: str) -> tuple[list[str], Sequence[int]]:
        rows = [r for a, n in self.spans.get(name, []) for r in range(a, a + n)]
        return [self.lines[r] for r in rows], [self.first + r for r in rows]


class _LazyRules:
    """Rule lines of one chain; `parse(i)` tokenizes line i on first use."""

    __slots__ = ("lines", "linenos", "table", "chain", "file", "fast", "_parsed", "_hosts_of", "_ports", "_others",
                 "_sources")

    def __init__(self, lines: list[str], linenos: Sequence[int], table: str, chain: str, file: str,
                 fast: FastParser | None = None) -> None:
        self.lines, self.linenos = lines, linenos
        self.table, self.chain, self.file, self.fast = table, chain, file, fast
        self._parsed: dict[int, Rule] = {}
        self._hosts_of: list[str | None] | None = None
        self._ports: dict[int, list[int]] = {}
        self._others: list[int] = []
        self._sources: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.lines)

    def parse(self, i: int) -> Rule:
        r = self._parsed.get(i)
        if r is None:
            line = self.lines[i]
            fast = self.fast.rule(line, self.linenos[i], i + 1) if self.fast is not None else None
            if fast is not None:
                r = fast
            else:
                r = parse_rule_line(self.table, line, self.file, self.linenos[i])
                r = _reindex(r, i + 1, r.tokens)
            self._parsed[i] = r
        return r

    def candidates(self, dst: str, start: int, dport: int | None = None, src: str | None = None) -> list[int] | range:
        if len(self.lines) < INDEX_MIN_RULES:
            return range(start, len(self.lines))
        if self._hosts_of is None:
            self._build_index()
        assert self._hosts_of is not None
        hits = [*self._others]
        if dport is None:
            hits += [i for rows in self._ports.values() for i in rows]
        else:
            hits += self._ports.get(dport, ())
        if src is None:
            hits += [i for rows in self._sources.values() for i in rows]
        else:
            hits += self._sources.get(src, ())
        # The lines for dst by list.index (a C loop): a query reads one or two hosts of thousands.
        i = start - 1
        try:
            while True:
                i = self._hosts_of.index(dst, i + 1)
                hits.append(i)
        except ValueError:
            pass
        return sorted(i for i in hits if i >= start)

    def _build_index(self) -> None:
        """Rules with a plain `-d HOST` can only match that host; of the others, rules with one plain
        `--dport N` only match port N (kube-proxy's NodePort rules), rules with one plain `-s HOST` only
        packets from HOST (a block list of a million sources); every other rule stays a candidate."""
        hosts = self._hosts()
        ports: dict[int, list[int]] = {}
        sources: dict[str, list[int]] = {}
        others: list[int] = []
        for i in [i for i, h in enumerate(hosts) if not h]:
            line = self.lines[i]
            port = _plain_dport(line)
            if port is not None:
                ports.setdefault(port, []).append(i)
                continue
            host = _plain_src(line)
            if host is not None:
                sources.setdefault(host, []).append(i)
            else:
                others.append(i)
        self._hosts_of, self._ports, self._others, self._sources = hosts, ports, others, sources

    def _hosts(self) -> list[str | None]:
        """Per line, its one plain destination host, else '' or None."""
        block = "\n".join(self.lines) + "\n"
        # kube-proxy's own shape, `-A CHAIN -d 10.96.0.10/32 …`, read by one regex pass in C. It is
        # the answer when no line can hold a second destination: the chain has as many " -d " as
        # lines of that shape, and no --dst / --destination spelling.
        hosts: list[str | None] = list(_PLAIN_DST_RE.findall(block))
        shaped = len(hosts) - hosts.count("")
        if len(hosts) == len(self.lines) and block.count(" -d ") == shaped \
                and " --dst " not in block and " --destination " not in block:
            return hosts
        return [_general_host(line) for line in self.lines]


_PLAIN_DST_RE = re.compile(r"^(?:-A [^ \n]+ -d ([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})(?:/32)? )?[^\n]*\n", re.M)


def _general_host(line: str) -> str | None:
    p = line.find(" -d ")
    if p >= 0 and line[p - 2 : p] != " !" and '"' not in line[:p] and line.find(" -d ", p + 1) < 0 \
            and " --dst " not in line and " --destination " not in line:
        end = line.find(" ", p + 4)
        return _host_key(line[p + 4 : end if end >= 0 else len(line)].rstrip("\r"))
    return None


def _plain_src(line: str) -> str | None:
    """HOST of the rule's one plain `-s HOST` (or HOST/32, /128), not negated, outside quotes; else None."""
    p = line.find(" -s ")
    if p < 0 or line[p - 2 : p] == " !" or '"' in line[:p] or line.find(" -s ", p + 1) >= 0 \
            or " --src " in line or " --source " in line:
        return None
    end = line.find(" ", p + 4)
    return _host_key(line[p + 4 : end if end >= 0 else len(line)].rstrip("\r"))


def _plain_dport(line: str) -> int | None:
    """N of the rule's one `--dport N` outside quotes and not negated; None for anything else."""
    p = line.find(" --dport ")
    if p < 0 or line.find(" --dport ", p + 1) >= 0 or line[p - 2 : p] == " !" or line.count('"', 0, p) % 2:
        return None
    end = line.find(" ", p + 9)
    value = line[p + 9 : end if end >= 0 else len(line)].rstrip("\r")
    return int(value) if is_num(value) and len(value) <= 5 else None


def _host_key(value: str) -> str | None:
    addr, _, plen = value.partition("/")
    if ":" not in addr:
        # iptables-save prints IPv4 in canonical dotted form, so the text is the key.
        return addr if plen in ("", "32") else None
    if plen not in ("", "128"):
        return None
    try:
        return str(ip_address(addr))
    except ValueError:
        return None
