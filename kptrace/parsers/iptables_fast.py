"""The few rule shapes kube-proxy prints hundreds of thousands of times, read by one regular expression.

A 10,000-service node's dump holds ~320k rules and nearly all of them have one of these forms
(`[...]` optional, in this order):

    -A CHAIN [[!] -s ADDR] [[!] -d ADDR] [-p tcp|udp|sctp] [-m comment --comment "TEXT"]
       [-m statistic --mode random --probability P] [-m addrtype --src-type|--dst-type TYPE]
       [-m tcp|udp|sctp [--dport N]] [-j TARGET [--to-destination IP[:PORT] | --reject-with TYPE]]

e.g. `-A KUBE-SEP-X -s 10.244.1.9/32 -j KUBE-MARK-MASQ`, `-A KUBE-SEP-X -p tcp -m tcp -j DNAT
--to-destination 10.244.1.9:80`, `-A KUBE-SVC-X -m statistic --mode random --probability 0.1 -j
KUBE-SEP-Y`, `-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns
cluster IP" -m udp --dport 53 -j KUBE-SVC-Z`.

`fast_rule` returns exactly the Rule the general parser (`parse_rule_line`) returns for such a line:
the same fields, columns, tokens (a quoted comment stays `Quoted`) and Source. Anything else (other
spellings, counters, `-I`, tabs or double spaces, quotes with escapes, values the general parser would
check and might refuse) returns None and goes to the general parser, which also owns every error
message. Equal sub-objects are shared between rules (addresses, protocol conditions, common targets,
statistic matches) and names are interned: the model is the same, in a third of the memory.
`tests/parsers/test_iptables_fast.py` compares both parsers rule for rule on generated dumps, the
conformance dumps and every fixture dump.
"""

from __future__ import annotations

import re
import sys
from typing import Any
from ipaddress import IPv4Network, ip_address, ip_network

from kptrace.model.netfilter import LAZY_TOKENS, Cond, IPNetwork, Match, Option, Rule, Target
from kptrace.model.source import Source
from kptrace.parsers.iptables_save import Quoted, tokenize

_NAME = r"[A-Za-z0-9_][^\s\"'\[\]\\!]*"
_ADDR = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?:/[0-9]{1,2})?"
_SHAPE = re.compile(
    rf"-A (?P<chain>{_NAME})"
    rf"(?:(?P<sneg> !)? -s (?P<s>{_ADDR}))?"
    rf"(?:(?P<dneg> !)? -d (?P<d>{_ADDR}))?"
    r"(?: -p (?P<p>tcp|udp|sctp))?"
    r"(?: -m comment --comment \"(?P<c>[^\"\\]*)\")?"
    r"(?: -m statistic --mode random --probability (?P<prob>[0-9]{0,3}(?:\.[0-9]{1,20})?))?"
    r"(?: -m addrtype --(?P<atype>src|dst)-type (?P<atv>[A-Z]+))?"
    r"(?: -m (?P<pm>tcp|udp|sctp)(?: --dport (?P<dport>[0-9]{1,5}))?)?"
    rf"(?: (?P<j>-j|-g) (?P<t>{_NAME})(?: --to-destination (?P<to>[0-9.]{{7,15}}(?::[0-9]{{1,5}})?)"
    r"| --reject-with (?P<rw>[a-z0-9-]+))?)?"
)
_MARK_TARGETS = ("KUBE-MARK-MASQ", "KUBE-MARK-DROP")
_CACHE_MAX = 400_000  # shared sub-objects kept for reuse (a 10k-Service dump needs ~150k)
_WORDS = {w: w for w in ("tcp", "udp", "sctp", "-j", "-g")}  # one object for each, not one per rule


class FastParser:
    """One dump's fast path; its caches (shared sub-objects) live as long as the parse."""

    __slots__ = ("table", "file", "nets", "shared")

    def __init__(self, table: str, file: str) -> None:
        self.table, self.file = sys.intern(table), file
        self.nets: dict[str, tuple[IPNetwork, ...] | None] = {}
        self.shared: dict[tuple[object, ...], Any] = {}

    def _net(self, text: str) -> tuple[IPNetwork, ...] | None:
        if text in self.nets:
            return self.nets[text]
        nets = self.nets[text] = _network(text)
        return nets

    def _address(self, flag: str, text: str, negated: bool, col: int) -> Cond[tuple[IPNetwork, ...]] | None:
        """`-s`/`-d TEXT` as a shared Cond; None: an address only the general parser may answer (or refuse)."""
        key = (flag, text, negated, col)
        cond: Cond[tuple[IPNetwork, ...]] | None = self.shared.get(key)
        if cond is None:
            nets = self._net(text)
            if nets is None:
                return None
            cond = self.shared[key] = Cond(nets, negated, col, text)
        return cond

    def _one(self, key: tuple[object, ...], match: Match) -> tuple[Match, ...]:
        """A shared match alone in its rule's matches: that tuple is shared too."""
        one: tuple[Match, ...] | None = self.shared.get(key + ("1",))
        if one is None:
            one = self.shared[key + ("1",)] = (match,)
        return one

    def rule(self, line: str, lineno: int, index: int, m: re.Match[str] | None = None) -> Rule | None:
        """The Rule of `line` (index: its position in its chain), or None: not one of these shapes."""
        if m is None:
            m = _SHAPE.fullmatch(line)
            if m is None:
                return None
        chain, sneg, s, dneg, d, p, c, prob, atype, atv, pm, dport, j, t, to, rw = m.groups()
        words = _WORDS
        shared = self.shared
        if len(shared) > _CACHE_MAX or len(self.nets) > _CACHE_MAX:
            shared.clear()  # (a lazy scan's parser lives as long as its dump: sharing is worth this much, no more)
            self.nets.clear()
        key: tuple[object, ...]
        src: Cond[tuple[IPNetwork, ...]] | None = None
        dst: Cond[tuple[IPNetwork, ...]] | None = None
        proto: Cond[str] | None = None
        if s is not None:
            src = self._address("s", s, sneg is not None, m.start("s") - 2)
            if src is None:
                return None
        if d is not None:
            dst = self._address("d", d, dneg is not None, m.start("d") - 2)
            if dst is None:
                return None
        if p is not None:
            p = words[p]
            col = m.start("p") - 2
            key = ("p", p, col)
            proto = shared.get(key)
            if proto is None:
                proto = shared[key] = Cond(p, False, col, p)
        matches: list[Match] = []
        one: tuple[Match, ...] = ()  # the last shared match, alone in a tuple
        if c is not None:
            q = Quoted(c)
            at = m.start("c")  # the opening quote
            matches.append(Match("comment", (Option("--comment", (q,), False, at - 10),), True, at - 21))
        if prob is not None:
            if not prob:
                return None
            at = m.start("prob") + 1  # its column
            key = ("statistic", prob, at)
            st = shared.get(key)
            if st is None:
                prob = sys.intern(prob)
                st = shared[key] = Match("statistic", (
                    Option("--mode", ("random",), False, at - 28), Option("--probability", (prob,), False, at - 14),
                ), True, at - 41)
            matches.append(st)
            one = self._one(key, st)
        if atype is not None:
            atv = sys.intern(atv)
            at = m.start("atv") + 1
            name = "--src-type" if atype == "src" else "--dst-type"
            key = ("addrtype", name, atv, at)
            am = shared.get(key)
            if am is None:
                am = shared[key] = Match("addrtype", (Option(name, (atv,), False, at - 11),), True, at - 23)
            matches.append(am)
            one = self._one(key, am)
        if pm is not None:
            if p is not None and pm != p:
                return None
            pm = words[pm]
            mcol = m.start("pm") - 2
            if dport is None:
                key = ("m", pm, mcol)
                pmatch = shared.get(key)
                if pmatch is None:
                    pmatch = shared[key] = Match(pm, (), True, mcol)
                matches.append(pmatch)
                one = self._one(key, pmatch)
            else:
                matches.append(Match(pm, (Option("--dport", (dport,), False, m.start("dport") - 7),), True, mcol))
        target: Target | None = None
        if t is not None:
            goto = j == "-g"
            t = sys.intern(t)
            tcol = m.start("t") + 1
            if to is not None:
                if t != "DNAT":
                    return None  # (the general parser's checks of this form of value, _NAT_TO_RE and is_redacted, pass)
                key = ("dnat", to, tcol, goto)  # (one endpoint behind several Services or ports: one object)
                target = shared.get(key)
                if target is None:
                    target = shared[key] = Target(t, (Option("--to-destination", (to,), False, tcol + 5),), goto,
                                                  True, tcol)
            elif rw is not None:
                if t != "REJECT":
                    return None
                rw = sys.intern(rw)
                key = ("reject", rw, tcol, goto)
                target = shared.get(key)
                if target is None:
                    target = shared[key] = Target(t, (Option("--reject-with", (rw,), False, m.start("rw") - 13),),
                                                  goto, True, tcol)
            elif t in _MARK_TARGETS or len(t) < 10:
                key = ("t", t, tcol, goto)
                target = shared.get(key)
                if target is None:
                    target = shared[key] = Target(t, (), goto, True, tcol)
            else:
                target = Target(t, (), goto, True, tcol)
        if not (len(matches) == 1 and one and one[0] is matches[0]):
            one = tuple(matches)
        rule = Rule(self.table, sys.intern(chain), index, Source(self.file, lineno, 1, line), proto, src, dst,
                    None, None, None, one, target, None, ())
        object.__delattr__(rule, "tokens")  # made from the line when read (Rule.__getattr__): see _tokens
        return rule


def _tokens(rule: Rule) -> tuple[str, ...]:
    """The words after `-A CHAIN` of a fast-path rule's line, as the general parser keeps them."""
    return tuple(w for w, _ in tokenize(rule.source.text, rule.source.file, rule.source.line)[2:])


LAZY_TOKENS[:] = [_tokens]


def shape(line: str) -> re.Match[str] | None:
    """The line read as one of the fast shapes, or None."""
    return _SHAPE.fullmatch(line)


def _network(text: str) -> tuple[IPNetwork, ...] | None:
    """parse_network's answer for one IPv4 address or CIDR (None where it would raise)."""
    try:
        if "/" in text:
            return (ip_network(text, strict=False),)
        a = ip_address(text)
        return (IPv4Network(f"{a}/32"),)
    except ValueError:
        return None

