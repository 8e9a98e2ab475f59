"""Parse `nft -j list ruleset` (libnftables JSON, compact or pretty-printed) into an NftRuleset.

Forms accepted (the objects of the top-level `nftables` list):

    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}}                         ignored
    {"table": {"family": "ip", "name": "kube-proxy", "handle": 1, "comment": "…"}}
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "nat-prerouting", "type": "nat",
               "hook": "prerouting", "prio": -100, "policy": "accept"}}
    {"set": {"family": "ip", "table": "kube-proxy", "name": "nodeport-ips", "type": "ipv4_addr",
             "flags": ["interval"], "elem": ["192.168.0.2", {"prefix": {"addr": "10.0.0.0", "len": 8}}]}}
    {"map": {…, "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
             "elem": [[{"concat": ["172.30.0.41", "tcp", 80]}, {"goto": {"target": "service-…"}}]]}}
    {"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 9,
              "expr": [{"vmap": {"key": {"concat": […]}, "data": "@service-ips"}}], "comment": "…"}}
    {"element": {"family": "ip", "table": "t", "name": "s", "elem": […]}}                    added to s
    {"counter": {…}}, {"flowtable": {…}}, {"ct helper": {…}}, …                              kept as objects

Every object cites `file:$.nftables[N]` (compact output is one line) or its line when the JSON is
pretty-printed. Rules get their text rendered in nft's syntax. Expressions kptrace does not model
(`{"xt": …}` keeps its name; `{"tcp option": …}`, `{"socket": …}`, …) are kept as Unknown*.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kptrace.errors import ParseError
from kptrace.model.nft import (
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
    UnknownExpr,
    UnknownStmt,
    Verdict,
    VerdictExpr,
    Vmap,
    Xt,
)
from kptrace.model.source import Source
from kptrace.parsers.json_limits import MALFORMED, malformed, recursion_message, too_deep
from kptrace.parsers.nft_text import (
    BadValue,
    prefix_length,
    render_element,
    render_expr,
    render_rule,
    value_word,
)

JSON_TEXT_MAX = 240
_VERDICT_KEYS = ("accept", "drop", "continue", "return", "jump", "goto")
_BINOP_KEYS = ("&", "|", "^", "<<", ">>")
_OBJECT_KINDS = ("counter", "quota", "limit", "flowtable", "secmark", "synproxy", "ct helper", "ct timeout",
                 "ct expectation")


class _Bad(Exception):
    """An expression kptrace does not model."""


def is_nft_json(text: str) -> bool:
    return re.match(r'\s*\{\s*"nftables"\s*:', text) is not None


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _entries(text: str, file: str) -> list[tuple[int, dict[str, Any], Source]]:
    m = re.match(r'\s*\{\s*"nftables"\s*:\s*\[', text)
    if m is None:
        raise ParseError(file, 1, 1, 'expected {"nftables": [ … ]}, the output of `nft -j list ruleset`')
    dec = json.JSONDecoder()
    pos = m.end()
    out: list[tuple[int, dict[str, Any], Source]] = []
    ws = re.compile(r"\s*")
    pos = ws.match(text, pos).end()  # type: ignore[union-attr]
    if pos < len(text) and text[pos] == "]":
        return out
    while True:
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise ParseError(file, e.lineno, e.colno, f"invalid JSON: {e.msg}") from None
        except (ValueError, RecursionError) as e:
            line, col = _line_col(text, pos)
            raise ParseError(file, line, col, recursion_message(e)) from None
        line, col = _line_col(text, pos)
        index = len(out)
        if not isinstance(obj, dict) or len(obj) != 1:
            raise ParseError(file, line, col, f"nftables[{index}] is not an object with one key")
        deep = too_deep(obj)
        if deep:
            raise ParseError(file, line, col, f"nftables[{index}]: {deep}")
        compact = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        if len(compact) > JSON_TEXT_MAX:
            compact = compact[: JSON_TEXT_MAX - 1] + "…"
        out.append((index, obj, Source(file, line, col, f"[{index}] {compact}")))
        pos = ws.match(text, end).end()  # type: ignore[union-attr]
        if pos < len(text) and text[pos] == ",":
            pos = ws.match(text, pos + 1).end()  # type: ignore[union-attr]
            continue
        if pos < len(text) and text[pos] == "]":
            return out
        line, col = _line_col(text, pos)
        raise ParseError(file, line, col, "expected ',' or ']' in the nftables list")


def parse_nft_json(text: str, file: str = "nft-ruleset.json") -> NftRuleset:
    """Read `nft -j list ruleset` into an NftRuleset (the same model as parse_nft_text)."""
    rs = NftRuleset(file)
    pending_rules: list[tuple[int, dict[str, Any], Source]] = []
    for index, obj, src in _entries(text, file):
        try:
            _object(rs, index, obj, src, pending_rules)
        except _MALFORMED as e:
            raise ParseError(file, src.line, src.col, f"$.nftables[{index}]: {_malformed(e)}", src.text) from None
    for index, body, src in pending_rules:
        try:
            _rule(rs, index, body, src)
        except _MALFORMED as e:
            raise ParseError(file, src.line, src.col, f"$.nftables[{index}].rule: {_malformed(e)}", src.text) from None
    return rs


_MALFORMED = MALFORMED


def _malformed(e: Exception) -> str:
    return malformed(e).replace("the command prints", "`nft -j` prints")


def _object(rs: NftRuleset, index: int, obj: dict[str, Any], src: Source,
            pending_rules: list[tuple[int, dict[str, Any], Source]]) -> None:
    file = rs.file
    kind, body = next(iter(obj.items()))
    nsrc = NftSource(src, f"$.nftables[{index}]")
    if kind == "metainfo":
        return
    if not isinstance(body, dict):
        raise ParseError(file, src.line, src.col, f"'{kind}' should hold an object", src.text)
    if kind == "table":
        fam, name = _s(body, "family", src), _s(body, "name", src)
        t = rs.tables.get((fam, name))
        if t is None:
            t = rs.tables[(fam, name)] = NftTable(fam, name, nsrc)
        t.comment = body.get("comment")
        t.handle = body.get("handle")
        flags = body.get("flags")
        t.flags = tuple(flags) if isinstance(flags, list) else ((flags,) if isinstance(flags, str) else ())
    elif kind == "chain":
        t = _table(rs, body, src, nsrc)
        c = NftChain(t.family, t.name, _s(body, "name", src), nsrc, handle=body.get("handle"))
        if "hook" in body:
            c.type, c.hook = str(body.get("type", "filter")), _s(body, "hook", src)
            prio = body.get("prio", 0)
            if not isinstance(prio, int) or isinstance(prio, bool) or abs(prio) > 2**31:
                raise ParseError(file, src.line, src.col, f"chain priority {str(prio)[:40]!r} is not a number", src.text)
            c.priority, c.priority_text = prio, str(prio)
            c.policy = str(body.get("policy", "accept"))
            c.policy_source = nsrc
            dev = body.get("dev")
            c.devices = tuple(dev) if isinstance(dev, list) else ((dev,) if isinstance(dev, str) else ())
        c.comment = body.get("comment")
        t.chains[c.name] = c
    elif kind in ("set", "map"):
        t = _table(rs, body, src, nsrc)
        s = NftSet(t.family, t.name, _s(body, "name", src), nsrc, is_map=kind == "map", handle=body.get("handle"))
        typ = body.get("type")
        s.key_type = tuple(str(x) for x in typ) if isinstance(typ, list) else ((typ,) if isinstance(typ, str) else ())
        data = body.get("map")
        s.data_type = " . ".join(str(x) for x in data) if isinstance(data, list) else (None if data is None else str(data))
        flags = body.get("flags")
        s.flags = tuple(flags) if isinstance(flags, list) else ((flags,) if isinstance(flags, str) else ())
        s.comment = body.get("comment")
        if "timeout" in body:
            s.timeout = f"{body['timeout']}s"
        s.elements = _elements(body.get("elem", []), nsrc, f"$.nftables[{index}].{kind}.elem", rs)
        t.sets[s.name] = s
    elif kind == "element":
        t = _table(rs, body, src, nsrc)
        name = _s(body, "name", src)
        s2 = t.sets.get(name)
        if s2 is None:
            s2 = t.sets[name] = NftSet(t.family, t.name, name, nsrc)
        s2.elements.extend(_elements(body.get("elem", []), nsrc, f"$.nftables[{index}].element.elem", rs))
    elif kind == "rule":
        pending_rules.append((index, body, src))
    elif kind in _OBJECT_KINDS:
        t = _table(rs, body, src, nsrc)
        t.objects.append(NftObject(kind, str(body.get("name", "")), nsrc))
    else:
        rs.diagnostics.append(Diagnostic(src, f"unknown object '{kind}' ignored"))


def _rule(rs: NftRuleset, index: int, body: dict[str, Any], src: Source) -> None:
    file = rs.file
    nsrc = NftSource(src, f"$.nftables[{index}]")
    t = _table(rs, body, src, nsrc)
    cname = _s(body, "chain", src)
    owner = t.chains.get(cname)
    if owner is None:
        rs.diagnostics.append(Diagnostic(src, f"rule for chain {cname}, which is not in the input"))
        owner = t.chains[cname] = NftChain(t.family, t.name, cname, nsrc)
    exprs = body.get("expr", [])
    if not isinstance(exprs, list):
        raise ParseError(file, src.line, src.col, "'expr' should be a list", src.text)
    stmts: list[Stmt] = []
    for k, e in enumerate(exprs):
        try:
            stmts.append(_stmt(e))
        except BadValue as err:  # a value nft refuses (`10.0.0.0/33`): no ruleset nft printed holds one
            raise ParseError(file, src.line, src.col, f"{err} ($.nftables[{index}].rule.expr[{k}])", src.text) from None
        except (_Bad, *_MALFORMED) as err:
            # Not modelled, or malformed (a key missing): kept as an unknown statement, said, and the rule is kept.
            why = str(err) if isinstance(err, _Bad) else _malformed(err)
            stmts.append(UnknownStmt(json.dumps(e, separators=(",", ":"))[:JSON_TEXT_MAX], why))
            rs.diagnostics.append(Diagnostic(src, f"not modelled: {why} ($.nftables[{index}].rule.expr[{k}])"))
    comment = body.get("comment")
    text = render_rule(stmts, comment)
    owner.rules.append(NftRule(t.family, t.name, cname, len(owner.rules) + 1, nsrc, tuple(stmts), text, comment,
                               body.get("handle")))


def _s(body: dict[str, Any], key: str, src: Source) -> str:
    v = body.get(key)
    if not isinstance(v, str):
        raise ParseError(src.file, src.line, src.col, f"'{key}' should be a string", src.text)
    return v


def _table(rs: NftRuleset, body: dict[str, Any], src: Source, nsrc: NftSource) -> NftTable:
    fam, name = _s(body, "family", src), _s(body, "table", src)
    t = rs.tables.get((fam, name))
    if t is None:
        t = rs.tables[(fam, name)] = NftTable(fam, name, nsrc)
    return t


def _elements(raw: Any, nsrc: NftSource, path: str, rs: NftRuleset) -> list[Element]:
    if not isinstance(raw, list):
        raw = [raw]
    out = []
    for j, item in enumerate(raw):
        src = NftSource(nsrc.source, f"{path}[{j}]")
        try:
            out.append(_element(item, src))
        except BadValue as err:
            raise ParseError(nsrc.source.file, nsrc.source.line, nsrc.source.col, f"{err} ({path}[{j}])",
                             nsrc.source.text) from None
        except (_Bad, *_MALFORMED) as err:
            why = str(err) if isinstance(err, _Bad) else _malformed(err)
            rs.diagnostics.append(Diagnostic(nsrc.source, f"element {path}[{j}] not modelled: {why}"))
            raw = json.dumps(item)[:JSON_TEXT_MAX]
            out.append(Element(UnknownExpr(raw, why), None, None, src, raw))
    return out


def _element(item: Any, src: NftSource) -> Element:
    value: Expr | None = None
    if isinstance(item, list) and len(item) == 2:
        item, raw_value = item
        value = _verdict_expr(raw_value) if _is_verdict(raw_value) else _expr(raw_value)
    comment = None
    if isinstance(item, dict) and "elem" in item:
        inner = item["elem"]
        comment = inner.get("comment")
        item = inner.get("val")
    key = _expr(item)
    el = Element(key, value, comment, src)
    return Element(key, value, comment, src, render_element(el))


def _is_verdict(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and next(iter(v)) in _VERDICT_KEYS


def _verdict_expr(v: dict[str, Any]) -> VerdictExpr:
    kind, body = next(iter(v.items()))
    if kind in ("jump", "goto"):
        return VerdictExpr(kind, body["target"])
    return VerdictExpr(kind)


def _expr(e: Any) -> Expr:
    if isinstance(e, bool):
        # `fib … oif missing` is the boolean false in JSON.
        return Const("exists" if e else "missing")
    if isinstance(e, int):
        return Const(e)
    if isinstance(e, str):
        if e.startswith("@"):
            return SetRef(e[1:])
        w = value_word(e)
        # A name such as `tcp` or an address stays a string; `0x…` written as a string is a number.
        return w if isinstance(w, Const) else Const(e)
    if isinstance(e, list):
        return Flags(tuple(_expr(x) for x in e))
    if not isinstance(e, dict) or len(e) != 1:
        raise _Bad(f"expression {json.dumps(e)[:80]}")
    kind, body = next(iter(e.items()))
    if kind == "payload":
        if "protocol" in body:
            return Payload(body["protocol"], body["field"])
        return Payload("raw", f"@{body.get('base', '?')},{body.get('offset', '?')},{body.get('len', '?')}")
    if kind == "meta":
        return Meta(body["key"])
    if kind == "ct":
        key = body["key"]
        family = None
        if " " in key:
            family, key = key.split(" ", 1)
        return Ct(key, body.get("dir"), family or body.get("family"))
    if kind == "fib":
        flags = body.get("flags", [])
        return Fib(tuple(flags) if isinstance(flags, list) else (flags,), body["result"])
    if kind == "numgen":
        return Numgen(body["mode"], int(body["mod"]), int(body.get("offset", 0)))
    if kind in ("jhash", "symhash"):
        inner = f" {render_expr(_expr(body['expr']))}" if "expr" in body else ""
        seed = f" seed 0x{body['seed']:x}" if isinstance(body.get("seed"), int) else ""
        return Hash(kind, f"{kind}{inner} mod {body.get('mod')}{seed}")
    if kind == "concat":
        return Concat(tuple(_expr(x) for x in body))
    if kind in _BINOP_KEYS:
        left, right = body
        return Binop(kind, _expr(left), _expr(right))
    if kind == "prefix":
        return Prefix(str(body["addr"]), prefix_length(str(body["addr"]), int(body["len"])))
    if kind == "range":
        lo, hi = body
        return Range(_expr(lo), _expr(hi))
    if kind == "set":
        items = body if isinstance(body, list) else [body]
        return AnonSet(tuple(_element(x, NftSource(Source("", 1))) for x in items))
    if kind == "map":
        return MapLookup(_expr(body["key"]), _map_data(body["data"]))
    if kind == "elem":
        return _expr(body.get("val"))
    if kind in _VERDICT_KEYS:
        return _verdict_expr(e)
    raise _Bad(f"'{kind}' expression")


def _map_data(d: Any) -> SetRef | AnonSet:
    x = _expr(d)
    if isinstance(x, (SetRef, AnonSet)):
        return x
    raise _Bad("map data is neither @name nor a set")


def _stmt(e: Any) -> Stmt:
    if not isinstance(e, dict) or len(e) != 1:
        raise _Bad(f"statement {json.dumps(e)[:80]}")
    kind, body = next(iter(e.items()))
    if kind == "match":
        return Match(_expr(body["left"]), body["op"], _expr(body["right"]))
    if kind in _VERDICT_KEYS:
        v = _verdict_expr(e)
        return Verdict(v.kind, v.target)
    if kind == "counter":
        if isinstance(body, str):
            return Counter(name=body)
        body = body or {}
        return Counter(body.get("packets"), body.get("bytes"))
    if kind == "vmap":
        return Vmap(_expr(body["key"]), _map_data(body["data"]))
    if kind == "mangle":
        return Mangle(_expr(body["key"]), _expr(body["value"]))
    if kind in ("dnat", "snat", "masquerade", "redirect"):
        body = body or {}
        flags = body.get("flags", [])
        flags = tuple(flags) if isinstance(flags, list) else (flags,)
        addr = _expr(body["addr"]) if "addr" in body else None
        port = _expr(body["port"]) if "port" in body else None
        return Nat(kind, body.get("family"), addr, port, flags)
    if kind == "reject":
        body = body or {}
        if body.get("expr") == "port-unreachable" and body.get("type") in ("icmp", "icmpv6", "icmpx"):
            return Reject()  # the default nft prints as plain `reject`
        return Reject(body.get("type"), body.get("expr"))
    if kind == "notrack":
        return Notrack()
    if kind == "xt":
        return Xt(body.get("type", "match"), str(body.get("name", "?")))
    if kind == "log":
        return Passive("log", "log" + _options(body or {}))
    if kind == "limit":
        b = body or {}
        over = " over" if b.get("inv") else ""
        unit = b.get("rate_unit", "")
        rate = f"{b.get('rate')} {unit}/{b.get('per')}" if unit and unit != "packets" else f"{b.get('rate')}/{b.get('per')}"
        return Passive("limit", f"limit rate{over} {rate}")
    if kind == "quota":
        b = body or {}
        over = " over" if b.get("inv") else ""
        return Passive("quota", f"quota{over} {b.get('val')} {b.get('val_unit', 'bytes')}")
    if kind == "set" and isinstance(body, dict) and "op" in body:
        ref = str(body.get("set", "@?"))
        return SetUpdate(body["op"], ref.lstrip("@"), _expr(body.get("elem")))
    if kind == "flow":
        return Passive("flow", f"flow add {body.get('flowtable', '')}")
    raise _Bad(f"'{kind}' statement")


def _options(body: dict[str, Any]) -> str:
    out = ""
    for k, v in body.items():
        out += f' {k} "{v}"' if k == "prefix" else f" {k} {v}"
    return out


__all__ = ["is_nft_json", "parse_nft_json"]
