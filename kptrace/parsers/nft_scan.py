"""Large `nft list ruleset` dumps: find the blocks, parse one when a walk reads it.

A 10k-service node in kube-proxy's nftables mode lists 580k lines: 110k chains and maps of 10k
elements. `nft list ruleset` prints a table as `table FAMILY NAME {` … `}` and each chain, set or
map inside it as a block from `\\tchain NAME {` to `\\t}`, so one regex pass finds every block
without tokenizing it. A block is parsed by the ordinary parser (nft_text.py) when the walk looks
its chain or set up; base chains are found by their `type … hook …` line. Anything else at table
level than a comment or flags (counters, flowtables, `add …` commands, quoted names) sends the
dump to the full parser.
"""

from __future__ import annotations

import os
import re
from typing import cast

from kptrace.model.nft import Diagnostic, LazyNftMap, NftChain, NftRuleset, NftSet, NftTable
from kptrace.parsers.nft_text import _Parser, _Unparsable, parse_nft_text

# Below this many lines the whole dump is parsed (KPTRACE_LAZY_MIN_LINES, shared with iptables-save).
LAZY_MIN_LINES = int(os.environ.get("KPTRACE_LAZY_MIN_LINES") or 5000)
_MARK = re.compile(r"^(?:table ([a-z0-9]+) ([^\s{}\"]+) \{|\}|\t(chain|set|map) ([^\s{}\"]+) \{|\t\})$", re.M)
_WARNING = re.compile(r"^#\s*Warning: table (\S+) (\S+) is managed by iptables-nft", re.M)
_XT = re.compile(r"[ \t]xt (?:match|target) ")
_TABLE_LEVEL = re.compile(r"\t(?:comment \"(?:[^\"\\]|\\.)*\"|flags [\w, ]+)")
LAZY_NOTE = "blocks are parsed when the trace reads them"


class _Block:
    __slots__ = ("kind", "name", "start", "end", "line")

    def __init__(self, kind: str, name: str, start: int, line: int) -> None:
        self.kind, self.name, self.start, self.end, self.line = kind, name, start, start, line


class _TableText:
    __slots__ = ("family", "name", "start", "end", "line", "blocks", "level")

    def __init__(self, family: str, name: str, start: int, line: int) -> None:
        self.family, self.name, self.start, self.end, self.line = family, name, start, start, line
        self.blocks: list[_Block] = []
        self.level: list[str] = []  # table-level lines outside the blocks (comment, flags)


def scan_nft_text(text: str, file: str) -> NftRuleset | None:
    """The dump with its blocks unparsed, or None when it is small or not in `nft list ruleset` layout."""
    if text.count("\n", 0, 64 * LAZY_MIN_LINES) < LAZY_MIN_LINES:
        return None
    tables = _find_blocks(text)
    if tables is None:
        return None
    rs = NftRuleset(file)
    warned = set(_WARNING.findall(text))
    for tt in tables:
        tbl = _table(text, file, tt)
        if tbl is None:
            return None
        tbl.iptables_warning = (tt.family, tt.name) in warned
        rs.tables[tbl.key] = tbl
        _fill(text, file, rs, tbl, tt)
    rs.assumptions.append(f"{file} is large ({len(text) // 1024:,} KiB): its {LAZY_NOTE}, so an error in a chain "
                          "or set the trace never reads is not reported (kptrace why --strict reads it all)")
    return rs


def _find_blocks(text: str) -> list[_TableText] | None:
    tables: list[_TableText] = []
    table: _TableText | None = None
    block: _Block | None = None
    line, counted, prev = 1, 0, 0  # line number of offset `counted`; end of the last structure line
    for m in _MARK.finditer(text):
        line += text.count("\n", counted, m.start())
        counted = m.start()
        if block is None and m.start() > prev + 1 and text[prev:m.start()].strip():
            # Between structure lines outside a block: only comments, or a table's comment and flags.
            for g in text[prev:m.start()].split("\n"):
                if table is not None and _TABLE_LEVEL.fullmatch(g):
                    table.level.append(g)
                elif g.strip() and not (table is None and g.startswith("#")):
                    return None
        if m.group(1) is not None:
            if table is not None:
                return None
            table = _TableText(m.group(1), m.group(2), m.start(), line)
        elif m.group(0) == "}":
            if table is None or block is not None:
                return None
            table.end = m.end()
            tables.append(table)
            table = None
        elif m.group(3) is not None:
            if table is None or block is not None:
                return None
            block = _Block(m.group(3), m.group(4), m.start(), line)
        else:
            if block is None or table is None:
                return None
            block.end = m.end()
            table.blocks.append(block)
            block = None
        prev = m.end()
    if table is not None or block is not None or not tables:
        return None
    if any(g.strip() and not g.startswith("#") for g in text[prev:].split("\n")):
        return None
    return tables


def _parse(text: str, file: str, first_line: int) -> NftRuleset:
    parser = _Parser(text, file, first_line)
    try:
        return parser.parse()
    except _Unparsable as e:
        raise parser.error(parser.peek(), str(e)) from None


def _table(text: str, file: str, tt: _TableText) -> NftTable | None:
    """The table itself (its name's place, comment, flags), from its header and table-level lines."""
    header = text[tt.start:text.find("\n", tt.start)]
    rs = _parse("\n".join([header, *tt.level, "}"]) + "\n", file, tt.line)
    return rs.tables.get((tt.family, tt.name))


def _fill(text: str, file: str, rs: NftRuleset, tbl: NftTable, tt: _TableText) -> None:
    header = f"table {tt.family} {tt.name} {{\n"
    blocks = {(b.kind == "chain", b.name): b for b in tt.blocks}

    def block_table(b: _Block) -> NftTable:
        # The block inside its table's braces, numbered as in the file (the header line is not).
        one = _parse(header + text[b.start:b.end] + "\n}\n", file, b.line - 1)
        _keep_diagnostics(rs, one)
        return one.tables[(tt.family, tt.name)]

    def whole_table() -> NftTable:
        one = _parse(text[tt.start:tt.end] + "\n", file, tt.line)
        _keep_diagnostics(rs, one)
        return one.tables[(tt.family, tt.name)]

    def chain(name: str) -> NftChain:
        return block_table(blocks[(True, name)]).chains[name]

    def named_set(name: str) -> NftSet:
        return block_table(blocks[(False, name)]).sets[name]

    chains = LazyNftMap([b.name for b in tt.blocks if b.kind == "chain"], chain, lambda: dict(whole_table().chains))
    chains.has_xt = _XT.search(text, tt.start, tt.end) is not None
    chains.hooked = [(i, b.name) for i, b in enumerate(b for b in tt.blocks if b.kind == "chain")
                     if text.find("\n\t\ttype ", b.start, b.end) >= 0]
    sets = LazyNftMap([b.name for b in tt.blocks if b.kind != "chain"], named_set, lambda: dict(whole_table().sets))
    tbl.chains = cast(dict[str, NftChain], chains)
    tbl.sets = cast(dict[str, NftSet], sets)


def _keep_diagnostics(rs: NftRuleset, one: NftRuleset) -> None:
    seen = {(d.source, d.message) for d in rs.diagnostics}
    for d in one.diagnostics:
        # A block parsed alone names chains it jumps to that its own small table does not declare.
        if "is never declared" not in d.message and (d.source, d.message) not in seen:
            rs.diagnostics.append(Diagnostic(d.source, d.message))


def read_nft_text(text: str, file: str = "nft-ruleset.txt", lazy: bool = True) -> NftRuleset:
    """`nft list ruleset`: a large one read lazily (scan_nft_text), any other parsed whole."""
    if lazy:
        scanned = scan_nft_text(text, file)
        if scanned is not None:
            return scanned
    return parse_nft_text(text, file)
