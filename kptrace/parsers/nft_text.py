"""Parse `nft list ruleset` output (and `nft -f` transaction files) into an NftRuleset.

Forms accepted:

    # Warning: table ip nat is managed by iptables-nft, do not touch!    iptables-nft's table
    table ip kube-proxy {                                                 table block
        comment "rules for kube-proxy"
        flags dormant
        set cluster-ips {                                                 named set
            type ipv4_addr                                                (or `typeof ip daddr`)
            flags interval,timeout
            elements = { 172.30.0.41, 10.0.0.0/8,                         elements, over lines
                         172.30.0.43 }
        }
        map service-ips {                                                 named map
            type ipv4_addr . inet_proto . inet_service : verdict
            elements = { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
        }
        counter cnt { packets 0 bytes 0 }                                 kept as an object
        chain filter-input {                                              chain
            type filter hook input priority filter; policy accept;        base chain
            ct state new jump nodeport-endpoints-check                    rule
            meta l4proto tcp dnat to 10.180.0.1:80 # handle 12            rule (`nft -a`)
        }
    }
    add table ip kube-proxy { comment "rules for kube-proxy" ; }          transaction (`nft -f`)
    add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
    add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
    insert rule ip t c position 4 drop                                    also replace, handle N
    add set ip kube-proxy nodeport-ips { type ipv4_addr ; }
    add element ip kube-proxy nodeport-ips { 192.168.0.2 }
    flush ruleset / flush chain ip t c / delete rule ip t c handle 4     applied in order

Each rule keeps its Source (file, line, col, line text) and its text as nft prints it. A
statement kptrace does not model is kept as UnknownStmt (with the rest of the rule); words
nft itself would reject raise ParseError(file:line:col).
"""

from __future__ import annotations

import gc
import re
from typing import NamedTuple

from kptrace.errors import ParseError
from kptrace.model.nft import (
    BRIDGE_PRIORITY_NAMES,
    FAMILIES,
    PRIORITY_NAMES,
    AnonSet,
    Binop,
    Concat,
    Const,
    Counter,
    Ct,
    Diagnostic,
    Element,
    Expr,
    Fib,
    Flags,
    Hash,
    Mangle,
    MapLookup,
    Match,
    Meta,
    Nat,
    NftChain,
    NftObject,
    NftRule,
    NftRuleset,
    NftSet,
    NftSource,
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
    Stmt,
    UnknownStmt,
    Verdict,
    VerdictExpr,
    Vmap,
    Xt,
)
from kptrace.model.source import Source
from kptrace.parsers.numbers import is_num

_TOKEN = re.compile(
    r"[ \t\r\f\v]*(?:(?P<nl>\n)|(?P<cont>\\\r?\n)|(?P<comment>#[^\n]*)"
    r'|(?P<str>"(?:[^"\\\n]|\\.)*")'
    r"|(?P<raw>@(?:ll|nh|th|ih),[0-9]{1,20},[0-9]{1,20})"
    r'|(?P<ref>@[^\s{};,()"&|^=<>!#]+)'
    r"|(?P<op>==|!=|<=|>=|<<|>>|<|>|!)"
    r"|(?P<punct>[{};,()&|^=])"
    r'|(?P<word>[^\s{};,()"&|^=<>!#@]+)'
    r"|(?P<bad>.)|(?P<end>$))"
)
_HANDLE_RE = re.compile(r"#\s*handle\s+([0-9]{1,20})")
_WARNING_RE = re.compile(r"#\s*Warning: table (\S+) (\S+) is managed by iptables-nft")

VERDICTS = ("accept", "drop", "continue", "return", "jump", "goto", "queue")
# Payload protocols and the fields nft knows for them; a protocol word not followed by one of
# its fields is a constant (`meta l4proto tcp`).
PAYLOAD_FIELDS: dict[str, frozenset[str]] = {
    "ip": frozenset({"saddr", "daddr", "protocol", "version", "hdrlength", "dscp", "ecn", "length", "id", "frag-off",
                     "ttl", "checksum"}),
    "ip6": frozenset({"saddr", "daddr", "nexthdr", "version", "dscp", "ecn", "flowlabel", "length", "hoplimit"}),
    "tcp": frozenset({"sport", "dport", "sequence", "ackseq", "doff", "reserved", "flags", "window", "checksum",
                      "urgptr"}),
    "udp": frozenset({"sport", "dport", "length", "checksum"}),
    "udplite": frozenset({"sport", "dport", "csumcov", "checksum"}),
    "sctp": frozenset({"sport", "dport", "vtag", "checksum"}),
    "dccp": frozenset({"sport", "dport", "type"}),
    "th": frozenset({"sport", "dport"}),
    "icmp": frozenset({"type", "code", "checksum", "id", "sequence", "gateway", "mtu"}),
    "icmpv6": frozenset({"type", "code", "checksum", "parameter-problem", "packet-too-big", "id", "sequence",
                         "max-delay"}),
    "ether": frozenset({"saddr", "daddr", "type"}),
    "vlan": frozenset({"id", "cfi", "dei", "pcp", "type"}),
    "arp": frozenset({"htype", "ptype", "hlen", "plen", "operation", "saddr", "daddr"}),
    "ah": frozenset({"nexthdr", "hdrlength", "reserved", "spi", "sequence"}),
    "esp": frozenset({"spi", "sequence"}),
    "comp": frozenset({"nexthdr", "flags", "cpi"}),
    "igmp": frozenset({"type", "mrt", "checksum", "group"}),
    "gre": frozenset({"flags", "version", "protocol"}),
}
# Meta keys nft accepts without the `meta` word.
BARE_META = frozenset({"mark", "iif", "iifname", "iiftype", "oif", "oifname", "oiftype", "skuid", "skgid", "nftrace",
                       "rtclassid", "ibriport", "obriport", "ibrname", "obrname", "pkttype", "cpu", "iifgroup",
                       "oifgroup", "cgroup", "random", "ipsec", "iifkind", "oifkind", "time", "day", "hour"})
CT_KEYS = frozenset({"state", "direction", "status", "mark", "expiration", "helper", "label", "l3proto", "protocol",
                     "bytes", "packets", "avgpkt", "zone", "id", "saddr", "daddr", "proto-src", "proto-dst", "event",
                     "secmark"})
# Expressions kptrace reads but cannot evaluate: the rest of the rule is kept as UnknownStmt.
UNMODELLED_EXPRS = frozenset({"rt", "ipsec", "socket", "osf", "exthdr", "tunnel", "frag", "hbh", "rt0", "rt2", "rt4",
                              "mh", "dst", "srh", "dccp", "ip6", "sctp", "tcp", "xfrm"})
_BINOPS = {"&": "&", "|": "|", "^": "^", "<<": "<<", ">>": ">>", "and": "&", "or": "|", "xor": "^",
           "lshift": "<<", "rshift": ">>"}
_RELOPS = {"==": "==", "!=": "!=", "<": "<", ">": ">", "<=": "<=", ">=": ">=", "eq": "==", "ne": "!=", "lt": "<",
           "gt": ">", "le": "<=", "ge": ">="}
# Flag-typed expressions: nft tests `ct state new` as a bit test (JSON writes op "in").
FLAG_KEYS = {("ct", "state"), ("ct", "status"), ("ct", "event"), ("tcp", "flags")}
_PASSIVE_OPTIONS = {
    "log": {"prefix": 1, "level": 1, "flags": 1, "group": 1, "snaplen": 1, "queue-threshold": 1},
}
_NUM = re.compile(r"^(?:0x[0-9a-fA-F]+|[0-9]{1,20})$")
_ADDR4 = re.compile(r"^[0-9]{1,3}(?:\.[0-9]{1,3}){3}$")
_OLD_NAT_ADDR = re.compile(r"^(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:-[0-9]{1,3}(?:\.[0-9]{1,3}){3})?(?::[0-9]{1,20}(?:-[0-9]{1,20})?)?|\[[0-9a-fA-F:.]+\](?::[0-9]{1,20})?|:[0-9]{1,20})$")


class Tok(NamedTuple):
    kind: str  # word str ref raw op punct nl eof handle warning
    text: str
    start: int
    end: int
    line: int
    col: int


class _Unparsable(Exception):
    """An expression or statement kptrace does not model: the rest of the rule is kept as UnknownStmt."""


class BadValue(ValueError):
    """A value nft itself refuses (`10.244.0.0/33`): no listing nft printed holds one, so it is an error, not an
    unknown kept (`file:line:col: …`, exit 2)."""


def prefix_length(addr: str, length: int) -> int:
    """The prefix length, or BadValue past the address's bits (nft: "Prefix length 33 is invalid for type of 32
    bits maximum")."""
    bits = 128 if ":" in addr else 32
    if length > bits:
        raise BadValue(f"'{addr}/{length}': prefix length {length} is more than the {bits} bits of an "
                       f"IPv{4 if bits == 32 else 6} address")
    return length


def tokenize(text: str, file: str, first_line: int = 1) -> list[Tok]:
    toks: list[Tok] = []
    line, line_start = first_line, 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup or "end"
        if kind == "end":
            continue
        start = m.start(kind)
        s = m.group(kind)
        col = start - line_start + 1
        if kind == "nl":
            toks.append(Tok("nl", "\n", start, m.end(), line, col))
            line, line_start = line + 1, m.end()
        elif kind == "cont":
            line, line_start = line + 1, m.end()
        elif kind == "comment":
            h = _HANDLE_RE.match(s)
            w = _WARNING_RE.match(s)
            if h:
                toks.append(Tok("handle", h.group(1), start, m.end(), line, col))
            elif w:
                toks.append(Tok("warning", f"{w.group(1)} {w.group(2)}", start, m.end(), line, col))
        elif kind == "bad":
            if s == '"':
                raise ParseError(file, line, col, "unterminated string", _line_text(text, line_start))
            raise ParseError(file, line, col, f"unexpected character {s!r}", _line_text(text, line_start))
        else:
            toks.append(Tok(kind, s, start, m.end(), line, col))
    toks.append(Tok("eof", "", len(text), len(text), line, len(text) - line_start + 1))
    return toks


def _line_text(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def _unquote(s: str) -> str:
    return s[1:-1].replace('\\"', '"') if s.startswith('"') else s


def _int(s: str) -> int:
    """nft's numbers: decimal (zero-padded, as in `0004000`) or 0x hex; absurd lengths are not numbers."""
    if len(s) > 40:
        raise _Unparsable(f"number '{s[:20]}…' is too long")
    if not s.isascii():
        raise _Unparsable(f"'{s}' is not a number")  # int() reads '٣' (and int(s, 0) '٣' too)
    try:
        return int(s, 0)
    except ValueError:
        try:
            return int(s, 10)
        except ValueError:
            raise _Unparsable(f"'{s}' is not a number") from None


def value_word(s: str) -> Expr:
    """A constant as nft prints it: numbers become ints, `a/n` a Prefix, `a-b` a Range of two values."""
    if _NUM.match(s):
        return Const(_int(s))
    if "/" in s:
        addr, _, length = s.rpartition("/")
        if is_num(length) and (_ADDR4.match(addr) or ":" in addr):
            return Prefix(addr, prefix_length(addr, int(length)))
    if "-" in s and not s.startswith("-"):
        lo, _, hi = s.partition("-")
        if (_NUM.match(lo) and _NUM.match(hi)) or (_ADDR4.match(lo) and _ADDR4.match(hi)) or (
                ":" in lo and ":" in hi and re.fullmatch(r"[0-9a-fA-F:.]+", lo + hi)):
            return Range(value_word(lo), value_word(hi))
    return Const(s)


class _Parser:
    def __init__(self, text: str, file: str, first_line: int = 1) -> None:
        # first_line: where `text` starts in the file (nft_scan parses one block of a large dump at a time).
        self.text, self.file, self.first_line = text, file, first_line
        self.toks = tokenize(text, file, first_line)
        self.i = 0
        self.rs = NftRuleset(file)
        self._declared: set[tuple[str, str, str]] = set()  # chains declared by `chain`/`add chain`
        self._warnings: set[tuple[str, str]] = set()
        self._lines = text.split("\n")
        self._nest = 0  # sets and parentheses open around the value being read (at most MAX_NEST)

    # -- token helpers --------------------------------------------------------------------------

    def peek(self, k: int = 0) -> Tok:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else self.toks[-1]

    def next(self) -> Tok:
        t = self.toks[self.i]
        if t.kind != "eof":
            self.i += 1
        return t

    def at(self, *texts: str) -> bool:
        t = self.peek()
        return t.kind in ("word", "punct", "op") and t.text in texts

    def skip_nl(self) -> None:
        while self.peek().kind in ("nl", "handle") or self.at(";"):
            self.next()

    def skip_nl_only(self) -> None:
        while self.peek().kind in ("nl", "handle"):
            self.next()

    def error(self, tok: Tok, msg: str) -> ParseError:
        return ParseError(self.file, tok.line, tok.col, msg, self.line_text(tok.line))

    def _hostport_at(self, tok: Tok) -> tuple[Expr | None, Expr | None]:
        try:
            return _hostport(tok.text)
        except BadValue as e:
            raise self.error(tok, str(e)) from None

    def line_text(self, line: int) -> str:
        k = line - self.first_line
        return self._lines[k] if 0 <= k < len(self._lines) else ""

    def src(self, tok: Tok) -> NftSource:
        return NftSource(Source(self.file, tok.line, tok.col, self.line_text(tok.line).strip()))

    def expect(self, text: str) -> Tok:
        t = self.next()
        if t.text != text or t.kind not in ("word", "punct", "op"):
            raise self.error(t, f"expected '{text}', got '{t.text or 'end of input'}'")
        return t

    def name(self) -> Tok:
        t = self.next()
        if t.kind == "str":
            return Tok("word", _unquote(t.text), t.start, t.end, t.line, t.col)
        if t.kind != "word":
            raise self.error(t, f"expected a name, got '{t.text or 'end of input'}'")
        return t

    def end_of_line(self) -> bool:
        t = self.peek()
        return t.kind in ("nl", "eof", "handle") or (t.kind == "punct" and t.text in (";", "}"))

    def skip_line(self) -> None:
        depth = 0
        while True:
            t = self.peek()
            if t.kind == "eof":
                return
            if t.kind == "punct" and t.text == "{":
                depth += 1
            elif t.kind == "punct" and t.text == "}":
                if depth == 0:
                    return
                depth -= 1
            elif depth == 0 and (t.kind in ("nl", "handle") or (t.kind == "punct" and t.text == ";")):
                return
            self.next()

    def skip_block(self) -> None:
        """Skip `{ … }` with nesting, the opening brace not yet read."""
        self.expect("{")
        depth = 1
        while depth:
            t = self.next()
            if t.kind == "eof":
                raise self.error(t, "unterminated block: '}' missing")
            if t.kind == "punct" and t.text == "{":
                depth += 1
            elif t.kind == "punct" and t.text == "}":
                depth -= 1

    # -- top level ------------------------------------------------------------------------------

    def parse(self) -> NftRuleset:
        while True:
            self.skip_nl()
            t = self.peek()
            if t.kind == "eof":
                break
            if t.kind == "warning":
                fam, name = self.next().text.split(" ", 1)
                self._warnings.add((fam, name))
                tbl = self.rs.tables.get((fam, name))
                if tbl is not None:
                    tbl.iptables_warning = True
                continue
            if t.kind != "word":
                raise self.error(t, f"unexpected '{t.text}' at the start of a command")
            word = t.text
            if word == "table":
                self.next()
                self.table_cmd(block_required=False)
            elif word in ("add", "create", "insert", "replace"):
                self.next()
                self.add_cmd(word)
            elif word in ("flush", "delete", "destroy"):
                self.next()
                self.remove_cmd(word)
            elif word in ("list", "reset", "monitor", "describe", "export", "import"):
                self.rs.diagnostics.append(Diagnostic(self.src(t).source, f"'{word}' command ignored"))
                self.skip_line()
            elif word in ("define", "redefine", "undefine", "include"):
                self.rs.diagnostics.append(Diagnostic(self.src(t).source, f"'{word}' is not supported; line ignored"))
                self.skip_line()
            else:
                raise self.error(t, f"unknown command '{word}'")
        for (fam, tname, cname) in self._undeclared():
            c = self.rs.tables[(fam, tname)].chains[cname]
            self.rs.diagnostics.append(Diagnostic(c.source.source, f"chain {fam} {tname} {cname} has rules but is never declared"))
        return self.rs

    def _undeclared(self) -> list[tuple[str, str, str]]:
        return [(t.family, t.name, c) for t in self.rs.tables.values() for c in t.chains if (t.family, t.name, c) not in self._declared]

    def family_and_name(self) -> tuple[str, Tok]:
        t = self.name()
        if t.text in FAMILIES and (self.peek().kind in ("word", "str")):
            return t.text, self.name()
        return "ip", t

    def get_table(self, family: str, tok: Tok) -> NftTable:
        key = (family, tok.text)
        tbl = self.rs.tables.get(key)
        if tbl is None:
            tbl = NftTable(family, tok.text, self.src(tok), iptables_warning=key in self._warnings)
            self.rs.tables[key] = tbl
        return tbl

    def table_cmd(self, block_required: bool) -> None:
        fam, tok = self.family_and_name()
        tbl = self.get_table(fam, tok)
        if self.at("{"):
            self.next()
            self.table_body(tbl)
        elif block_required:
            raise self.error(self.peek(), "expected '{' after the table name")

    def table_body(self, tbl: NftTable) -> None:
        while True:
            self.skip_nl()
            t = self.peek()
            if t.kind == "punct" and t.text == "}":
                self.next()
                return
            if t.kind == "eof":
                raise self.error(t, f"table {tbl.label}: '}}' missing")
            if t.kind != "word":
                raise self.error(t, f"unexpected '{t.text}' in table {tbl.label}")
            self.next()
            if t.text == "chain":
                ntok = self.name()
                chain = self.get_chain(tbl, ntok, declare=True)
                if self.at("{"):
                    self.next()
                    self.chain_body(chain, block=True)
            elif t.text in ("set", "map"):
                ntok = self.name()
                s = self.get_set(tbl, ntok, t.text == "map", declare=True)
                self.set_block(s)
            elif t.text == "comment":
                tbl.comment = _unquote(self.next().text)
            elif t.text == "flags":
                tbl.flags = tuple(self.word_list())
            elif t.text in ("counter", "quota", "limit", "flowtable", "secmark", "synproxy", "ct"):
                kind = t.text
                if kind == "ct":
                    kind = "ct " + self.name().text
                ntok = self.name()
                tbl.objects.append(NftObject(kind, ntok.text, self.src(t)))
                if self.at("{"):
                    self.skip_block()
            else:
                raise self.error(t, f"unknown object '{t.text}' in table {tbl.label}")

    def word_list(self) -> list[str]:
        words = [self.name().text]
        while self.at(","):
            self.next()
            words.append(self.name().text)
        return words

    def get_chain(self, tbl: NftTable, tok: Tok, declare: bool) -> NftChain:
        c = tbl.chains.get(tok.text)
        if c is None:
            c = NftChain(tbl.family, tbl.name, tok.text, self.src(tok))
            tbl.chains[tok.text] = c
        if declare:
            key = (tbl.family, tbl.name, tok.text)
            if key not in self._declared:
                c.source = self.src(tok)
                self._declared.add(key)
        return c

    def get_set(self, tbl: NftTable, tok: Tok, is_map: bool, declare: bool) -> NftSet:
        s = tbl.sets.get(tok.text)
        if s is None:
            s = NftSet(tbl.family, tbl.name, tok.text, self.src(tok), is_map=is_map)
            tbl.sets[tok.text] = s
        elif declare:
            s.is_map = s.is_map or is_map
        return s

    # -- chains ---------------------------------------------------------------------------------

    def chain_body(self, chain: NftChain, block: bool) -> None:
        """The inside of `chain x { … }` (block) or of `add chain … { type …; }`."""
        while True:
            self.skip_nl()
            t = self.peek()
            if t.kind == "punct" and t.text == "}":
                self.next()
                return
            if t.kind == "eof":
                raise self.error(t, f"chain {chain.name}: '}}' missing")
            if t.kind == "word" and t.text == "type":
                self.chain_type(chain)
            elif t.kind == "word" and t.text == "policy":
                self.next()
                chain.policy = self.name().text
                chain.policy_source = self.src(t)
            elif t.kind == "word" and t.text == "comment" and self.peek(1).kind == "str":
                self.next()
                chain.comment = _unquote(self.next().text)
            elif t.kind == "word" and t.text in ("flags", "devices", "device"):
                self.skip_line()
            elif not block:
                raise self.error(t, f"unexpected '{t.text}' in a chain declaration")
            else:
                self.rule_into(chain, self.rule_stmts(), t)

    def chain_type(self, chain: NftChain) -> None:
        tok = self.expect("type")
        chain.type = self.name().text
        chain.policy_source = self.src(tok)
        self.expect("hook")
        chain.hook = self.name().text
        while self.at("device", "devices"):
            kw = self.next().text
            if kw == "devices":
                self.expect("=")
                if self.at("{"):
                    self.next()
                    devs = []
                    while not self.at("}"):
                        t = self.next()
                        if t.kind == "eof":
                            raise self.error(t, "devices: '}' missing")
                        if t.kind in ("word", "str"):
                            devs.append(_unquote(t.text))
                    self.next()
                    chain.devices = tuple(devs)
                else:
                    chain.devices = (_unquote(self.next().text),)
            else:
                chain.devices = (_unquote(self.next().text),)
        self.expect("priority")
        chain.priority_text, chain.priority = self.priority(chain)
        if self.at(";"):
            self.next()
        if self.at("policy"):
            self.next()
            chain.policy = self.name().text
            if self.at(";"):
                self.next()

    def priority(self, chain: NftChain) -> tuple[str, int]:
        t = self.next()
        words = [t.text]
        names = BRIDGE_PRIORITY_NAMES if chain.family == "bridge" else PRIORITY_NAMES
        if re.fullmatch(r"[+-]?[0-9]{1,10}", t.text):
            base = int(t.text)
        elif t.text in names:
            base = names[t.text]
        else:
            raise self.error(t, f"unknown chain priority '{t.text}'")
        if self.at("+", "-") or (self.peek().kind == "word" and re.fullmatch(r"[+-][0-9]{0,10}", self.peek().text)):
            sign = self.next().text
            words.append(sign)
            if len(sign) > 1:
                base += int(sign)
            else:
                n = self.next()
                words.append(n.text)
                if not is_num(n.text):
                    raise self.error(n, f"priority offset '{n.text}' is not a number")
                base += int(n.text) if sign == "+" else -int(n.text)
        return " ".join(words), base

    # -- sets -----------------------------------------------------------------------------------

    def set_block(self, s: NftSet) -> None:
        if not self.at("{"):
            return
        self.next()
        while True:
            self.skip_nl()
            t = self.peek()
            if t.kind == "punct" and t.text == "}":
                self.next()
                return
            if t.kind == "eof":
                raise self.error(t, f"set {s.name}: '}}' missing")
            kw = self.name()
            if kw.text == "type":
                key, data = self.type_spec()
                s.key_type, s.data_type = key, data
            elif kw.text == "typeof":
                start = self.i
                s.typeof = self.lhs_expr()
                if self.at(":"):
                    self.next()
                    s.data_type = " ".join(x.text for x in self._until_eol())
                del start
            elif kw.text == "flags":
                s.flags = tuple(self.word_list())
            elif kw.text == "comment":
                s.comment = _unquote(self.next().text)
            elif kw.text == "timeout":
                s.timeout = self.next().text
            elif kw.text == "elements":
                self.expect("=")
                s.elements.extend(self.elements())
            elif kw.text in ("size", "gc-interval", "policy"):
                self.next()
            elif kw.text in ("auto-merge", "counter"):
                pass
            else:
                raise self.error(kw, f"unknown set property '{kw.text}'")
            if self.at(";"):
                self.next()

    def _until_eol(self) -> list[Tok]:
        out = []
        while not self.end_of_line():
            out.append(self.next())
        return out

    def type_spec(self) -> tuple[tuple[str, ...], str | None]:
        key = [self.name().text]
        while self.at("."):
            self.next()
            key.append(self.name().text)
        data = None
        if self.at(":"):
            self.next()
            parts = [self.name().text]
            while self.at("."):
                self.next()
                parts.append(self.name().text)
            data = " . ".join(parts)
        return tuple(key), data

    def elements(self) -> list[Element]:
        """`{ e, e : v, … }` (the brace not yet read); newlines inside are not separators."""
        open_tok = self.expect("{")
        out: list[Element] = []
        while True:
            self.skip_nl_only()
            if self.at("}"):
                self.next()
                return out
            if self.peek().kind == "eof":
                raise self.error(open_tok, "'}' missing after the elements")
            out.append(self.element())
            self.skip_nl_only()
            if self.at(","):
                self.next()
            elif not self.at("}"):
                t = self.peek()
                raise self.error(t, f"expected ',' or '}}' after an element, got '{t.text}'")

    def element(self) -> Element:
        first = self.peek()
        key = self.value_expr(in_set=True)
        comment = None
        while self.peek().kind == "word" and self.peek().text in ("timeout", "expires", "comment", "counter"):
            kw = self.next().text
            if kw == "comment":
                comment = _unquote(self.next().text)
            elif kw == "counter":
                while self.at("packets", "bytes"):
                    self.next()
                    self.next()
            else:
                self.next()
        value: Expr | None = None
        if self.at(":"):
            self.next()
            value = self.map_value()
        last = self.toks[self.i - 1]
        text = " ".join(self.text[first.start:last.end].split())
        return Element(key, value, comment, self.src(first), text)

    def map_value(self) -> Expr:
        t = self.peek()
        if t.kind == "word" and t.text in VERDICTS:
            self.next()
            if t.text in ("jump", "goto"):
                return VerdictExpr(t.text, self.name().text)
            return VerdictExpr(t.text)
        return self.value_expr(in_set=True)

    # -- commands -------------------------------------------------------------------------------

    def add_cmd(self, verb: str) -> None:
        obj = self.name()
        if obj.text == "table":
            self.table_cmd(block_required=False)
        elif obj.text == "chain":
            fam, ttok = self.family_and_name()
            tbl = self.get_table(fam, ttok)
            chain = self.get_chain(tbl, self.name(), declare=True)
            if self.at("{"):
                self.next()
                self.chain_body(chain, block=False)
        elif obj.text in ("set", "map"):
            fam, ttok = self.family_and_name()
            tbl = self.get_table(fam, ttok)
            s = self.get_set(tbl, self.name(), obj.text == "map", declare=True)
            self.set_block(s)
        elif obj.text == "element":
            fam, ttok = self.family_and_name()
            tbl = self.get_table(fam, ttok)
            s = self.get_set(tbl, self.name(), False, declare=False)
            s.elements.extend(self.elements())
        elif obj.text == "rule":
            fam, ttok = self.family_and_name()
            tbl = self.get_table(fam, ttok)
            chain = self.get_chain(tbl, self.name(), declare=False)
            where: tuple[str, int] | None = None
            if self.at("position", "handle", "index"):
                kw = self.next().text
                where = (kw, int(self.next().text))
            start = self.peek()
            stmts = self.rule_stmts()
            self.rule_into(chain, stmts, start, insert=verb == "insert", where=where, replace=verb == "replace")
        elif obj.text in ("counter", "quota", "limit", "flowtable", "secmark", "synproxy", "ct"):
            self.skip_line()
        else:
            raise self.error(obj, f"cannot {verb} '{obj.text}'")

    def remove_cmd(self, verb: str) -> None:
        obj = self.name()
        if obj.text == "ruleset":
            fam = self.name().text if not self.end_of_line() else None
            for key in [k for k in self.rs.tables if fam is None or k[0] == fam]:
                if verb == "flush":
                    del self.rs.tables[key]
            if verb != "flush":
                raise self.error(obj, f"cannot {verb} the ruleset")
            return
        fam, ttok = self.family_and_name()
        key = (fam, ttok.text)
        tbl = self.rs.tables.get(key)
        if obj.text == "table":
            if tbl is not None:
                if verb == "flush":
                    for c in tbl.chains.values():
                        c.rules.clear()
                    for s in tbl.sets.values():
                        s.elements.clear()
                else:
                    del self.rs.tables[key]
            return
        if tbl is None:
            if verb == "destroy":
                self.skip_line()
                return
            raise self.error(ttok, f"table {fam} {ttok.text} does not exist")
        if obj.text == "chain":
            ntok = self.name()
            if verb == "flush":
                if ntok.text in tbl.chains:
                    tbl.chains[ntok.text].rules.clear()
            else:
                tbl.chains.pop(ntok.text, None)
                self._declared.discard((fam, ttok.text, ntok.text))
        elif obj.text in ("set", "map"):
            ntok = self.name()
            if verb == "flush":
                if ntok.text in tbl.sets:
                    tbl.sets[ntok.text].elements.clear()
            else:
                tbl.sets.pop(ntok.text, None)
        elif obj.text == "rule":
            ntok = self.name()
            self.expect("handle")
            h = int(self.next().text)
            target = tbl.chains.get(ntok.text)
            if target is not None:
                target.rules[:] = [r for r in target.rules if r.handle != h]
                _renumber(target)
        elif obj.text == "element":
            ntok = self.name()
            gone = self.elements()
            named = tbl.sets.get(ntok.text)
            if named is not None:
                keys = {e.key for e in gone}
                named.elements[:] = [e for e in named.elements if e.key not in keys]
        else:
            self.skip_line()

    # -- rules ----------------------------------------------------------------------------------

    def rule_into(self, chain: NftChain, parsed: tuple[list[Stmt], str | None, int | None, Tok, Tok | None],
                  start: Tok, insert: bool = False, where: tuple[str, int] | None = None, replace: bool = False) -> None:
        stmts, comment, handle, first, last = parsed
        text = " ".join(self.text[first.start:last.end].split()) if last is not None else ""
        src = self.src(first)
        rule = NftRule(chain.family, chain.table, chain.name, 0, src, tuple(stmts), text, comment, handle)
        pos = len(chain.rules)
        if where is not None:
            kw, n = where
            if kw == "index":
                pos = n + (0 if insert else 1)
            else:
                at = next((k for k, r in enumerate(chain.rules) if r.handle == n), None)
                if at is None:
                    raise self.error(first, f"no rule with handle {n} in chain {chain.name}")
                pos = at if insert or replace else at + 1
                if replace:
                    chain.rules.pop(at)
        elif insert:
            pos = 0
        chain.rules.insert(min(pos, len(chain.rules)), rule)
        _renumber(chain)

    def rule_stmts(self) -> tuple[list[Stmt], str | None, int | None, Tok, Tok | None]:
        """Statements up to the end of the rule (newline, ';', or the chain's '}')."""
        first = self.peek()
        stmts: list[Stmt] = []
        comment: str | None = None
        last: Tok | None = None
        while not self.end_of_line():
            start = self.i
            try:
                if self.at("comment") and self.peek(1).kind == "str":
                    self.next()
                    comment = _unquote(self.next().text)
                else:
                    stmts.append(self.stmt())
            except _Unparsable as e:
                self.i = start
                rest_first = self.peek()
                self.skip_line()
                rest_last = self.toks[self.i - 1]
                rest = " ".join(self.text[rest_first.start:rest_last.end].split())
                # A trailing comment still names the rule.
                m = re.search(r'\bcomment "((?:[^"\\]|\\.)*)"\s*$', rest)
                if m:
                    comment = m.group(1)
                stmts.append(UnknownStmt(rest, str(e)))
                self.rs.diagnostics.append(Diagnostic(self.src(rest_first).source, f"not modelled: {e}"))
            last = self.toks[self.i - 1]
        handle = int(self.next().text) if self.peek().kind == "handle" else None
        if self.at(";"):
            self.next()
        return stmts, comment, handle, first, last

    def stmt(self) -> Stmt:
        t = self.peek()
        w = t.text if t.kind == "word" else None
        if w in VERDICTS:
            self.next()
            if w in ("jump", "goto"):
                return Verdict(w, self.name().text)
            if w == "queue":
                raise _Unparsable("queue hands the packet to a userspace program")
            return Verdict(w)
        if w == "counter":
            self.next()
            if self.at("name"):
                self.next()
                return Counter(name=_unquote(self.next().text))
            packets = bytes_ = None
            while self.at("packets", "bytes"):
                kw = self.next().text
                n = self.next()
                if not is_num(n.text):
                    raise self.error(n, f"counter {kw} '{n.text}' is not a number")
                if kw == "packets":
                    packets = int(n.text)
                else:
                    bytes_ = int(n.text)
            return Counter(packets, bytes_)
        if w == "log":
            return self.passive("log", _PASSIVE_OPTIONS["log"])
        if w in ("limit", "quota"):
            return self.limit(w)
        if w == "reject":
            return self.reject()
        if w in ("dnat", "snat", "masquerade", "redirect"):
            return self.nat()
        if w == "notrack":
            self.next()
            return Notrack()
        if w == "xt":
            self.next()
            kind = self.name().text
            return Xt(kind, self.name().text)
        if w in ("update", "add", "delete") and self.peek(1).kind == "ref":
            set_op = self.next().text
            ref = self.next().text[1:]
            self.expect("{")
            elem = self.lhs_expr()
            while not self.at("}"):
                if self.end_of_line() and not self.at("}"):
                    raise _Unparsable(f"{set_op} @{ref}: '}}' missing")
                self.next()
            self.next()
            return SetUpdate(set_op, ref, elem)
        if w == "flow" and self.peek(1).text in ("add", "offload"):
            self.next()
            self.next()
            ref = self.next().text
            return Passive("flow", f"flow add {ref}")
        if w in ("tproxy", "dup", "fwd", "synproxy", "meter", "queue", "set", "last"):
            raise _Unparsable(f"'{w}' statement")
        if w == "ct" and self.peek(1).text == "count":
            raise _Unparsable("ct count (connlimit) depends on the connections the node has open")
        lhs = self.lhs_expr()
        if self.at("set"):
            self.next()
            return Mangle(lhs, self.value_or_lhs())
        if self.at("vmap"):
            self.next()
            return Vmap(lhs, self.map_ref())
        op: str | None = None
        if self.peek().kind in ("op", "word") and self.peek().text in _RELOPS:
            op = _RELOPS[self.next().text]
        elif self.at("!"):
            raise _Unparsable("'!' negation")
        if self.end_of_line():
            raise _Unparsable(f"'{self._text_of(lhs)}' without a value to compare")
        rhs = self.rhs_expr()
        if self.at("/"):
            # `tcp flags syn / fin,syn,rst,ack`: the flags under the mask must equal the value.
            self.next()
            mask = self.rhs_expr()
            return Match(Binop("&", lhs, mask), op or "==", rhs)
        if op is None:
            # JSON writes a set lookup as `==` and a bare flag test as `in`.
            op = "in" if _flag_typed(lhs) and not isinstance(rhs, (AnonSet, SetRef)) else "=="
        return Match(lhs, op, rhs)

    def _text_of(self, e: Expr) -> str:
        return render_expr(e)

    def passive(self, kind: str, options: dict[str, int]) -> Stmt:
        first = self.next()
        while self.peek().kind == "word" and self.peek().text in options:
            self.next()
            for _ in range(options[self.toks[self.i - 1].text]):
                self.next()
                while self.at(","):
                    self.next()
                    self.next()
        last = self.toks[self.i - 1]
        return Passive(kind, " ".join(self.text[first.start:last.end].split()))

    def limit(self, kind: str) -> Stmt:
        first = self.next()
        while not self.end_of_line():
            t = self.peek()
            if t.kind == "word" and (t.text in ("rate", "over", "until", "burst", "packets", "bytes", "used", "name")
                                     or re.fullmatch(r"[0-9]{1,20}(/\w+)?|[kmg]?bytes(/\w+)?", t.text)) or t.kind == "str" and self.toks[self.i - 1].text == "name":
                self.next()
            else:
                break
        last = self.toks[self.i - 1]
        return Passive(kind, " ".join(self.text[first.start:last.end].split()))

    def reject(self) -> Stmt:
        self.next()
        if not self.at("with"):
            return Reject()
        self.next()
        kind = self.name().text
        if kind == "tcp":
            self.expect("reset")
            return Reject("tcp reset")
        if self.at("type"):
            self.next()
        return Reject(kind, self.name().text)

    def nat(self) -> Stmt:
        kind = self.next().text
        family = None
        if self.at("ip", "ip6") and kind in ("dnat", "snat"):
            family = self.next().text
        addr: Expr | None = None
        port: Expr | None = None
        if self.at("addr", "prefix", "interval"):
            raise _Unparsable(f"{kind} with a mapped address and port")
        if self.at("to"):
            self.next()
            t = self.peek()
            if t.kind == "word" and (t.text in BARE_META or t.text in PAYLOAD_FIELDS or t.text in ("meta", "ct",
                                                                                                  "numgen", "jhash",
                                                                                                  "symhash")):
                key = self.lhs_expr()
                if not self.at("map"):
                    raise _Unparsable(f"{kind} to an expression")
                self.next()
                addr = MapLookup(key, self.map_ref())
            else:
                addr, port = self._hostport_at(self.next())
        elif self.peek().kind == "word" and _OLD_NAT_ADDR.match(self.peek().text):
            # nft before 0.9 printed `dnat 10.0.0.1:80` without `to`
            addr, port = self._hostport_at(self.next())
        flags: list[str] = []
        while self.peek().kind == "word" and self.peek().text in ("random", "fully-random", "persistent", "netmap"):
            flags.append(self.next().text)
            while self.at(","):
                self.next()
                flags.append(self.next().text)
        return Nat(kind, family, addr, port, tuple(flags))

    def map_ref(self) -> SetRef | AnonSet:
        t = self.peek()
        if t.kind == "ref":
            self.next()
            return SetRef(t.text[1:])
        if self.at("{"):
            return AnonSet(tuple(self.elements()))
        raise _Unparsable(f"expected @map or {{ … }} after 'vmap'/'map', got '{t.text}'")

    # -- expressions ----------------------------------------------------------------------------

    def lhs_expr(self) -> Expr:
        items = [self.lhs_binop()]
        while self.at("."):
            self.next()
            items.append(self.lhs_binop())
        return items[0] if len(items) == 1 else Concat(tuple(items))

    def lhs_binop(self) -> Expr:
        e = self.lhs_primary()
        n = 0
        while self.peek().kind in ("punct", "op", "word") and self.peek().text in _BINOPS:
            n = _operator_count(n)
            op = _BINOPS[self.next().text]
            e = Binop(op, e, self.value_primary(in_set=False))
        return e

    def lhs_primary(self) -> Expr:
        t = self.peek()
        if t.kind == "raw":
            self.next()
            return Payload("raw", t.text)
        if t.kind != "word":
            raise _Unparsable(f"'{t.text}' where a packet field was expected")
        w = t.text
        nxt = self.peek(1)
        if w in PAYLOAD_FIELDS and nxt.kind == "word" and nxt.text in PAYLOAD_FIELDS[w]:
            self.next()
            self.next()
            return Payload(w, nxt.text)
        if w == "meta":
            self.next()
            return Meta(self.name().text)
        if w in BARE_META:
            self.next()
            return Meta(w)
        if w == "ct":
            self.next()
            direction = family = None
            if self.at("original", "reply"):
                direction = self.next().text
            if self.at("ip", "ip6"):
                family = self.next().text
            key = self.name().text
            if key not in CT_KEYS:
                raise _Unparsable(f"ct {key}")
            return Ct(key, direction, family)
        if w == "fib":
            self.next()
            flags = [self.name().text]
            while self.at("."):
                self.next()
                flags.append(self.name().text)
            result = self.name().text
            if result not in ("type", "oif", "oifname"):
                raise _Unparsable(f"fib result '{result}'")
            return Fib(tuple(flags), result)
        if w == "numgen":
            self.next()
            mode = self.name().text
            self.expect("mod")
            mod = _int(self.next().text)
            offset = 0
            if self.at("offset"):
                self.next()
                offset = _int(self.next().text)
            if not 0 < mod <= 2**32 or not 0 <= offset < 2**32:
                raise _Unparsable(f"numgen mod {mod} offset {offset}: not a 32-bit register's range")
            return Numgen(mode, mod, offset)
        if w in ("jhash", "symhash"):
            first = self.next()
            if w == "jhash":
                self.lhs_expr()
            self.expect("mod")
            self.next()
            while self.at("seed", "offset"):
                self.next()
                self.next()
            last = self.toks[self.i - 1]
            return Hash(w, " ".join(self.text[first.start:last.end].split()))
        if w in UNMODELLED_EXPRS or w in PAYLOAD_FIELDS:
            raise _Unparsable(f"'{w} {nxt.text}'")
        raise _Unparsable(f"unknown expression '{w}'")

    def rhs_expr(self) -> Expr:
        return self.value_expr(in_set=False)

    def value_expr(self, in_set: bool) -> Expr:
        """A constant: `10.0.0.1`, `tcp . 80`, `established,related`, `{ … }`, `@set`, `(syn|ack)`."""
        items = [self.value_binop(in_set)]
        while self.at("."):
            self.next()
            items.append(self.value_binop(in_set))
        e = items[0] if len(items) == 1 else Concat(tuple(items))
        if not in_set and self.at(","):
            flags = [e]
            while self.at(","):
                self.next()
                flags.append(self.value_binop(in_set))
            return Flags(tuple(flags))
        return e

    def value_binop(self, in_set: bool) -> Expr:
        e = self.value_primary(in_set)
        n = 0
        while self.peek().kind in ("punct", "op") and self.peek().text in ("&", "|", "^", "<<", ">>"):
            n = _operator_count(n)
            op = self.next().text
            e = Binop(op, e, self.value_primary(in_set))
        return e

    def value_primary(self, in_set: bool) -> Expr:
        t = self.peek()
        if t.kind == "punct" and t.text in ("{", "("):
            # nft nests a set or a parenthesis a level or two deep; a reader of thousands would only recurse.
            if self._nest >= MAX_NEST:
                raise self.error(t, f"sets or parentheses nested deeper than {MAX_NEST} levels")
            self._nest += 1
            try:
                if t.text == "{":
                    return AnonSet(tuple(self.elements()))
                self.next()
                e = self.value_expr(in_set=True)
                if not self.at(")"):
                    raise _Unparsable("')' missing")
                self.next()
                return e
            finally:
                self._nest -= 1
        if t.kind == "ref":
            self.next()
            return SetRef(t.text[1:])
        if t.kind == "str":
            self.next()
            return Const(_unquote(t.text), quoted=True)
        if t.kind == "word":
            if t.text.startswith("$"):
                raise _Unparsable(f"variable {t.text}")
            self.next()
            try:
                return value_word(t.text)
            except BadValue as e:
                raise self.error(t, str(e)) from None
        raise _Unparsable(f"'{t.text or 'end of rule'}' where a value was expected")

    def value_or_lhs(self) -> Expr:
        """The value of `… set X`: an expression on packet fields (`meta mark | 0x4000`) or a constant."""
        t = self.peek()
        if t.kind == "word" and (t.text in ("meta", "ct", "numgen", "jhash", "symhash", "fib") or t.text in BARE_META
                                 or (t.text in PAYLOAD_FIELDS and self.peek(1).text in PAYLOAD_FIELDS[t.text])):
            e = self.lhs_expr()
            if self.at("map"):
                self.next()
                return MapLookup(e, self.map_ref())
            return e
        return self.value_expr(in_set=False)


MAX_NEST = 16  # sets and parentheses inside one another in one value
MAX_OPERATORS = 32  # `&`, `|`, `^`, `<<`, `>>` in one expression: each nests the expression one level deeper


def _operator_count(n: int) -> int:
    if n >= MAX_OPERATORS:
        raise _Unparsable(f"more than {MAX_OPERATORS} operators in one expression")
    return n + 1


def _flag_typed(e: Expr) -> bool:
    if isinstance(e, Ct):
        return ("ct", e.key) in FLAG_KEYS
    if isinstance(e, Payload):
        return (e.proto, e.field) in FLAG_KEYS
    return False


def _hostport(s: str) -> tuple[Expr | None, Expr | None]:
    """`10.0.0.1:80`, `10.0.0.1`, `[fd00::1]:80`, `fd00::1`, `:8080`, `10.0.0.1-10.0.0.9:80-90`."""
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        return value_word(host), (value_word(rest[1:]) if rest.startswith(":") else None)
    if s.startswith(":"):
        return None, value_word(s[1:])
    if s.count(":") == 1:
        host, _, port = s.partition(":")
        return value_word(host), value_word(port)
    return value_word(s), None


def _renumber(chain: NftChain) -> None:
    for k, r in enumerate(chain.rules):
        if r.index != k + 1:
            chain.rules[k] = NftRule(r.family, r.table, r.chain, k + 1, r.source, r.stmts, r.text, r.comment, r.handle)


def parse_nft_text(text: str, file: str = "nft-ruleset.txt", first_line: int = 1) -> NftRuleset:
    """Read `nft list ruleset` (or an `nft -f` file of `add …` commands) into an NftRuleset, every block.

    A large ruleset is better read with kptrace.parsers.nft_scan.read_nft_text, which parses blocks
    when a walk reads them (a 10k-service kube-proxy node prints 580k lines)."""
    # Millions of small objects and no cycles among them: the cyclic GC would only rescan them.
    enabled = gc.isenabled()
    gc.disable()
    parser = _Parser(text, file, first_line)
    try:
        return parser.parse()
    except _Unparsable as e:
        # Outside a rule's statements (set elements, chain headers) nothing can be kept as unknown.
        raise parser.error(parser.peek(), str(e)) from None
    finally:
        if enabled:
            gc.enable()


# ---------------------------------------------------------------------------------------------
# Rendering: the model back to nft's syntax (for rules read from JSON, and round-trip tests)

# Meta keys whose values are strings nft prints quoted.
STRING_META = frozenset({"iifname", "oifname", "iif", "oif", "iifkind", "oifkind", "ibrname", "obrname"})
# Meta keys nft prints without `meta` (everything else gets it: `meta mark`, `meta l4proto`).
_BARE_PRINTED = frozenset({"iif", "oif", "iifname", "oifname", "iifgroup", "oifgroup"})


def render_expr(e: Expr | None, hexmark: bool = False) -> str:
    if e is None:
        return ""
    if isinstance(e, Payload):
        return e.field if e.proto == "raw" else f"{e.proto} {e.field}"
    if isinstance(e, Meta):
        return e.key if e.key in _BARE_PRINTED else f"meta {e.key}"
    if isinstance(e, Ct):
        parts = ["ct"] + ([e.dir] if e.dir else []) + ([e.family] if e.family else []) + [e.key]
        return " ".join(parts)
    if isinstance(e, Fib):
        return f"fib {' . '.join(e.flags)} {e.result}"
    if isinstance(e, Numgen):
        return f"numgen {e.mode} mod {e.mod}" + (f" offset {e.offset}" if e.offset else "")
    if isinstance(e, Hash):
        return e.text
    if isinstance(e, Concat):
        return " . ".join(render_expr(x, hexmark) for x in e.items)
    if isinstance(e, Binop):
        mark = _is_mark(e.left)
        return f"{render_expr(e.left, hexmark)} {e.op} {render_expr(e.right, hexmark or mark)}"
    if isinstance(e, Const):
        if e.quoted:
            return f'"{e.value}"'
        if isinstance(e.value, int) and hexmark:
            return f"0x{e.value:08x}"
        return str(e.value)
    if isinstance(e, Prefix):
        return f"{e.addr}/{e.length}"
    if isinstance(e, Range):
        return f"{render_expr(e.lo, hexmark)}-{render_expr(e.hi, hexmark)}"
    if isinstance(e, Flags):
        return ",".join(render_expr(x, hexmark) for x in e.items)
    if isinstance(e, SetRef):
        return f"@{e.name}"
    if isinstance(e, VerdictExpr):
        return str(e)
    if isinstance(e, AnonSet):
        return "{ " + ", ".join(render_element(x, hexmark) for x in e.elements) + " }"
    if isinstance(e, MapLookup):
        return f"{render_expr(e.key)} map {render_expr(e.data)}"
    return e.text


def render_element(el: Element, hexmark: bool = False) -> str:
    s = render_expr(el.key, hexmark)
    if el.comment is not None:
        s += f' comment "{el.comment}"'
    if el.value is not None:
        s += f" : {render_expr(el.value)}"
    return s


def _is_mark(e: Expr) -> bool:
    if isinstance(e, Meta):
        return e.key == "mark"
    if isinstance(e, Ct):
        return e.key == "mark"
    if isinstance(e, Binop):
        return _is_mark(e.left)
    return False


def render_stmt(s: Stmt) -> str:
    if isinstance(s, Match):
        mark = _is_mark(s.left)
        left = s.left
        if isinstance(left, Binop) and left.op == "&" and _flag_typed(left.left) and s.op == "==":
            return f"{render_expr(left.left)} {render_expr(s.right)} / {render_expr(left.right)}"
        # nft writes `==` only after a bit operation: `meta mark & 0x00004000 == 0x00000000`.
        op = "" if s.op == "in" or (s.op == "==" and not isinstance(left, Binop)) else f"{s.op} "
        right = s.right
        if isinstance(left, Meta) and left.key in STRING_META and isinstance(right, Const) and isinstance(right.value, str):
            right = Const(right.value, quoted=True)  # JSON does not say an interface name was quoted
        return f"{render_expr(s.left)} {op}{render_expr(right, mark)}"
    if isinstance(s, Verdict):
        return f"{s.kind} {s.target}" if s.target else s.kind
    if isinstance(s, Vmap):
        return f"{render_expr(s.key)} vmap {render_expr(s.data)}"
    if isinstance(s, Nat):
        out = s.kind + (f" {s.family}" if s.family else "")
        if s.addr is not None or s.port is not None:
            host = render_expr(s.addr)
            if s.port is not None and ":" in host and not isinstance(s.addr, MapLookup):
                host = f"[{host}]"
            out += " to " + host + (f":{render_expr(s.port)}" if s.port is not None else "")
        if s.flags:
            out += " " + ",".join(s.flags)
        return out
    if isinstance(s, Reject):
        if s.type is None:
            return "reject"
        if s.type == "tcp reset":
            return "reject with tcp reset"
        return f"reject with {s.type} {s.code}" if s.code else f"reject with {s.type}"
    if isinstance(s, Mangle):
        return f"{render_expr(s.key)} set {render_expr(s.value, _is_mark(s.key))}"
    if isinstance(s, Counter):
        if s.name:
            return f'counter name "{s.name}"'
        if s.packets is None:
            return "counter"
        return f"counter packets {s.packets} bytes {s.bytes or 0}"
    if isinstance(s, Notrack):
        return "notrack"
    if isinstance(s, Passive):
        return s.text
    if isinstance(s, SetUpdate):
        return f"{s.op} @{s.set} {{ {render_expr(s.elem)} }}"
    if isinstance(s, Xt):
        return f"xt {s.type} {s.name}"
    return s.text


def render_rule(stmts: tuple[Stmt, ...] | list[Stmt], comment: str | None = None) -> str:
    out = " ".join(render_stmt(s) for s in stmts)
    if comment is not None:
        out += f' comment "{comment}"'
    return out
