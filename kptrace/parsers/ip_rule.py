"""Parse `ip rule` / `ip -6 rule` (text) and `ip -j rule` (JSON) into PolicyRules.

Forms accepted (text):

    0:	from all lookup local
    1000:	from all fwmark 0x4000/0x4000 lookup 100
    1001:	from 10.244.1.0/24 to 10.96.0.0/12 iif cni0 lookup 100
    1002:	not from 10.244.0.0/16 lookup main suppress_prefixlength 0
    1003:	from all to 203.0.113.0/24 blackhole                 also unreachable, prohibit, nop
    1004:	from all oif flannel.1 unreachable
    1006:	from all iif eth0 goto 32766
    1007:	from all ipproto tcp dport 8080 lookup 100             selectors not modelled -> unknown
    32766:	from all lookup main

JSON (`ip -j rule`):

    [{"priority":1000,"src":"all","fwmark":"0x4000","fwmask":"0x4000","table":"100"},
     {"priority":1002,"not":null,"src":"10.244.0.0","srclen":16,"table":"main","suppress_prefixlen":0},
     {"priority":1003,"src":"all","dst":"203.0.113.0","dstlen":24,"action":"blackhole"},
     {"priority":1006,"src":"all","iif":"eth0","goto":32766}]

A selector the model has no field for (ipproto, sport, dport, uidrange, tos, l3mdev, a
`[detached]` device, …) is kept verbatim in PolicyRule.unknown: whether such a rule matches is
unknown, never assumed.
"""

from __future__ import annotations

import json
import re
from ipaddress import ip_network
from typing import Any

from kptrace.errors import ParseError
from kptrace.parsers.numbers import ascii_int
from kptrace.model.netfilter import IPNetwork
from kptrace.model.routing import PolicyRule
from kptrace.model.source import Source
from kptrace.parsers.ip_route import Tok, is_json, jint, json_each, jstr, tokens

ACTIONS = frozenset({"blackhole", "unreachable", "prohibit", "nop"})
ONE_VALUE = frozenset({"from", "to", "iif", "oif", "fwmark", "lookup", "table", "goto", "suppress_prefixlength"})
FULL_MASK = 0xFFFFFFFF  # `fwmark V` without a mask compares all 32 bits
_PRIO_RE = re.compile(r"^([0-9]{1,20}):$")


def parse_ip_rule(text: str, file: str = "ip-rule.txt") -> list[PolicyRule]:
    if is_json(text):
        return json_each(text, file, "ip -j rule", _json_rule)
    out: list[PolicyRule] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        toks = tokens(line)
        if toks:
            out.append(_text_rule(toks, file, lineno, line))
    return out


def _text_rule(toks: list[Tok], file: str, lineno: int, line: str) -> PolicyRule:
    m = _PRIO_RE.match(toks[0].text)
    if not m:
        raise ParseError(file, lineno, toks[0].col, f"expected 'PRIORITY:', got '{toks[0].text}'", line)
    values: dict[str, Tok] = {}
    action, invert, unknown = "lookup", False, []
    i = 1
    while i < len(toks):
        word = toks[i].text
        if word == "not":
            invert = True
        elif word in ACTIONS:
            action = word
        elif word in ONE_VALUE:
            if i + 1 >= len(toks):
                raise ParseError(file, lineno, toks[i].col, f"'{word}' needs a value", line)
            values["lookup" if word == "table" else word] = toks[i + 1]
            i += 1
        else:
            unknown.append(word)
        i += 1
    if "goto" in values:
        action = "goto"
    fwmark = values.get("fwmark")
    return PolicyRule(
        priority=_priority(m.group(1), file, lineno, line),
        action=action,
        table=values["lookup"].text if "lookup" in values else None,
        src=_prefix(values.get("from"), file, lineno, line),
        dst=_prefix(values.get("to"), file, lineno, line),
        iif=values["iif"].text if "iif" in values else None,
        oif=values["oif"].text if "oif" in values else None,
        fwmark=_fwmark(fwmark.text, Source(file, lineno, fwmark.col, line)) if fwmark else None,
        invert=invert,
        source=Source(file, lineno, 1, line),
        goto=_number(values.get("goto"), file, lineno, line),
        suppress_prefixlength=_number(values.get("suppress_prefixlength"), file, lineno, line),
        unknown=tuple(unknown),
    )


def _prefix(tok: Tok | None, file: str, lineno: int, line: str) -> IPNetwork | None:
    if tok is None or tok.text == "all":
        return None
    try:
        return ip_network(tok.text, strict=False)
    except ValueError:
        raise ParseError(file, lineno, tok.col, f"invalid prefix '{tok.text}'", line) from None


def _number(tok: Tok | None, file: str, lineno: int, line: str) -> int | None:
    if tok is None:
        return None
    try:
        return ascii_int(tok.text)
    except ValueError:
        raise ParseError(file, lineno, tok.col, f"expected a number, got '{tok.text[:40]}'", line) from None


def _fwmark(text: str, src: Source) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    try:
        return ascii_int(value), ascii_int(mask) if mask else FULL_MASK
    except ValueError:
        raise ParseError(src.file, src.line, src.col, f"invalid fwmark '{text}'", src.text) from None


# JSON keys read into the model; any other key is an unknown selector, written as text prints it.
_JSON_KEYS = frozenset(
    {"priority", "not", "src", "srclen", "dst", "dstlen", "iif", "oif", "fwmark", "fwmask", "table", "action",
     "goto", "suppress_prefixlen"}
)
_JSON_TEXT_WORD = {"iif_detached": "[detached]", "oif_detached": "[detached]"}


def _json_rule(i: int, e: dict[str, Any], src: Source) -> PolicyRule:
    priority = jint(e, "priority", src)
    if priority is None:
        raise ParseError(src.file, src.line, src.col, f"entry [{i}] has no 'priority'", src.text)
    goto = jint(e, "goto", src)
    action = jstr(e, "action", src) or ("goto" if goto is not None else "lookup")
    fwmark = jstr(e, "fwmark", src)
    fwmask = jstr(e, "fwmask", src)
    unknown: list[str] = []
    for key, value in e.items():
        if key not in _JSON_KEYS:
            unknown.append(_JSON_TEXT_WORD.get(key, key))
            if value is not None and value is not True:
                unknown.append(value if isinstance(value, str) else json.dumps(value))
    return PolicyRule(
        priority=priority,
        action=action,
        table=jstr(e, "table", src),
        src=_json_prefix(e, "src", "srclen", src),
        dst=_json_prefix(e, "dst", "dstlen", src),
        iif=jstr(e, "iif", src),
        oif=jstr(e, "oif", src),
        fwmark=_fwmark(f"{fwmark}/{fwmask}" if fwmask else fwmark, src) if fwmark else None,
        invert="not" in e,  # printed as "not": null
        source=src,
        goto=goto,
        suppress_prefixlength=jint(e, "suppress_prefixlen", src),
        unknown=tuple(unknown),
    )


def _json_prefix(e: dict[str, Any], key: str, len_key: str, src: Source) -> IPNetwork | None:
    addr = jstr(e, key, src)
    if addr is None or addr == "all":
        return None
    plen = jint(e, len_key, src)
    try:
        return ip_network(addr if plen is None else f"{addr}/{plen}", strict=False)
    except ValueError:
        raise ParseError(src.file, src.line, src.col, f"'{key}': invalid prefix '{addr}/{plen}'", src.text) from None


def _priority(text: str, file: str, lineno: int, line: str) -> int:
    # Priorities are 32-bit; anything longer is not `ip rule` output.
    if len(text) > 10 or int(text) > 0xFFFFFFFF:
        raise ParseError(file, lineno, 1, f"rule priority '{text[:20]}' is out of range", line)
    return int(text)
