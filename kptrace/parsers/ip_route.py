"""Parse `ip route show table all`, `ip -6 route show table all`, `ip r` and their `ip -j` JSON.

Forms accepted (text; trailing spaces as iproute2 prints them are fine):

    default via 192.168.56.1 dev eth0 proto static                        main table, no `table`
    10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink                     flannel's VXLAN route
    10.250.0.0/24 dev down0 proto kernel scope link src 10.250.0.1 linkdown
    198.51.100.0/24 via 192.168.56.30 dev eth0 proto static src 192.168.56.11 metric 100 mtu 1400
    198.18.0.0/15 nhid 10 via 192.168.56.40 dev eth0                      nexthop object, resolved
    local 10.244.1.1 dev cni0 table local proto kernel scope host src 10.244.1.1
    broadcast 10.244.1.255 dev cni0 table local proto kernel scope link src 10.244.1.1
    blackhole 10.99.0.0/16 table 100                                      also unreachable prohibit throw
    172.16.0.0/16 table 100 proto static                                  multipath, then one line
    \tnexthop via 192.168.56.21 dev eth0 weight 1                          per nexthop (tab-indented)
    \tnexthop via 10.251.0.2 dev down2 weight 1 dead linkdown
    fd00:244:2::/64 via fd00:244:2:: dev flannel.1 metric 1024 onlink pref medium
    anycast fe80:: dev eth0 table local proto kernel metric 0 pref medium
    multicast ff00::/8 dev eth0 table local proto kernel metric 256 pref medium

JSON (`ip -j route show table all`, compact or `-p`):

    [{"dst":"10.244.2.0/24","gateway":"10.244.2.0","dev":"flannel.1","flags":["onlink"]},
     {"dst":"172.16.0.0/16","table":"100","nexthops":[{"gateway":"192.168.56.21","dev":"eth0","weight":1,"flags":[]}]}]

Each JSON entry cites the line and column where its object starts (line 1 for compact output).
Route metrics that never change the routing decision (hoplimit, advmss, rtt, expires, …) are
read and dropped; any other word is kept verbatim in Route.unknown.

This module also holds `json_entries`, the reader the other iproute2 JSON parsers share.
"""

from __future__ import annotations

import json
import re
from dataclasses import field
from ipaddress import IPv6Address, ip_address, ip_network
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from kptrace.errors import ParseError
from kptrace.model._compiled import dataclass
from kptrace.parsers.numbers import ascii_int
from kptrace.parsers.json_limits import MALFORMED, malformed, recursion_message, too_deep
from kptrace.model.flow import IPAddress
from kptrace.model.netfilter import IPNetwork
from kptrace.model.routing import Nexthop, Route
from kptrace.model.source import Source

T = TypeVar("T")
ROUTE_TYPES = frozenset(
    {"unicast", "local", "broadcast", "anycast", "multicast", "blackhole", "unreachable", "prohibit", "throw", "nat",
     "xresolve"}
)
# RTNH_F_* and RTM_F_* words iproute2 prints bare, after the route or a nexthop.
NEXTHOP_FLAGS = frozenset(
    {"onlink", "dead", "linkdown", "pervasive", "offload", "trap", "notify", "unresolved", "rt_offload", "rt_trap",
     "rt_offload_failed"}
)
# Keywords followed by one value that the model keeps.
KEPT = frozenset({"via", "dev", "table", "proto", "scope", "src", "metric", "tos", "dsfield", "nhid", "pref", "mtu", "weight"})
# Route metrics and bookkeeping that do not change which route is chosen or where it sends:
# read with their value and dropped. `expires` also differs between two captures.
IGNORED = frozenset(
    {"advmss", "rtt", "rttvar", "reordering", "window", "cwnd", "initcwnd", "initrwnd", "ssthresh", "hoplimit",
     "features", "quickack", "congctl", "rto_min", "fastopen_no_cookie", "expires", "realms", "error", "age", "used", "users"}
)
METRICS_WITH_LOCK = frozenset(
    {"mtu", "advmss", "rtt", "rttvar", "reordering", "window", "cwnd", "initcwnd", "initrwnd", "ssthresh", "hoplimit", "rto_min"}
)
JSON_TEXT_MAX = 240  # the Source text of a JSON entry is its compact JSON, cut to this length


class Tok(NamedTuple):
    text: str
    col: int  # 1-based


def tokens(line: str) -> list[Tok]:
    return [Tok(m.group(), m.start() + 1) for m in re.finditer(r"\S+", line)]


# ---------------------------------------------------------------------------------------------
# JSON shared by the iproute2 parsers


def json_entries(text: str, file: str, what: str) -> list[tuple[int, dict[str, Any], Source]]:
    """The objects of the JSON list(s) `what` printed, each with the Source of where it starts.

    Several lists one after the other (`ip -j route; ip -6 -j route` into one file) are read
    as one; the index keeps counting.
    """
    dec = json.JSONDecoder()
    out: list[tuple[int, dict[str, Any], Source]] = []
    pos = _skip_ws(text, 0)
    while pos < len(text):
        if text[pos] != "[":
            raise _error_at(text, pos, file, f"expected the JSON list that `{what}` prints")
        pos = _skip_ws(text, pos + 1)
        if pos < len(text) and text[pos] == "]":
            pos = _skip_ws(text, pos + 1)
            continue
        while True:
            try:
                obj, end = dec.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise ParseError(file, e.lineno, e.colno, f"invalid JSON: {e.msg}") from None
            except (ValueError, RecursionError) as e:  # huge numbers, absurd nesting
                raise _error_at(text, pos, file, recursion_message(e)) from None
            index = len(out)
            line, col = _line_col(text, pos)
            if not isinstance(obj, dict):
                raise ParseError(file, line, col, f"entry [{index}] is not a JSON object")
            deep = too_deep(obj)
            if deep:
                raise ParseError(file, line, col, f"entry [{index}]: {deep}")
            compact = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
            if len(compact) > JSON_TEXT_MAX:
                compact = compact[: JSON_TEXT_MAX - 1] + "…"
            out.append((index, obj, Source(file, line, col, f"[{index}] {compact}")))
            pos = _skip_ws(text, end)
            if pos < len(text) and text[pos] == ",":
                pos = _skip_ws(text, pos + 1)
                continue
            if pos < len(text) and text[pos] == "]":
                pos = _skip_ws(text, pos + 1)
                break
            raise _error_at(text, pos, file, "expected ',' or ']' after a JSON entry")
    return out


def json_each(text: str, file: str, what: str, read: Callable[[int, dict[str, Any], Source], T]) -> list[T]:
    """`read` of every entry json_entries gives; an entry whose shape is not what `what` prints (a key
    missing, a number where a list belongs) is one located error: `ip-link.json:3:5: entry [2]: …`."""
    out: list[T] = []
    for i, e, src in json_entries(text, file, what):
        try:
            out.append(read(i, e, src))
        except MALFORMED as err:
            raise ParseError(src.file, src.line, src.col, f"entry [{i}]: {malformed(err)}", src.text) from None
    return out


def is_json(text: str) -> bool:
    return text.lstrip().startswith("[")


def jstr(entry: dict[str, Any], key: str, src: Source) -> str | None:
    """entry[key] as text (iproute2 prints some ids as numbers, some as strings); None if absent."""
    v = entry.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise ParseError(src.file, src.line, src.col, f"'{key}' should be a string, got {json.dumps(v)[:40]}", src.text)
    return str(v)


def jint(entry: dict[str, Any], key: str, src: Source) -> int | None:
    v = entry.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ParseError(src.file, src.line, src.col, f"'{key}' should be a number, got {json.dumps(v)[:40]}", src.text)
    try:
        return ascii_int(v) if isinstance(v, str) else v
    except ValueError:
        raise ParseError(src.file, src.line, src.col, f"'{key}' should be a number, got '{v}'", src.text) from None


def jlist(entry: dict[str, Any], key: str, src: Source) -> list[Any]:
    v = entry.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise ParseError(src.file, src.line, src.col, f"'{key}' should be a list", src.text)
    return v


def jwords(entry: dict[str, Any], key: str, src: Source) -> list[str]:
    words = jlist(entry, key, src)
    if not all(isinstance(w, str) for w in words):
        raise ParseError(src.file, src.line, src.col, f"'{key}' should be a list of words", src.text)
    return words


def jaddr(entry: dict[str, Any], key: str, src: Source) -> IPAddress | None:
    s = jstr(entry, key, src)
    if s is None:
        return None
    try:
        return ip_address(s)
    except ValueError:
        raise ParseError(src.file, src.line, src.col, f"'{key}': invalid address '{s}'", src.text) from None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _error_at(text: str, pos: int, file: str, message: str) -> ParseError:
    line, col = _line_col(text, pos)
    lines = text.splitlines()
    return ParseError(file, line, col, message, lines[line - 1] if line <= len(lines) else "")


# ---------------------------------------------------------------------------------------------
# Text


@dataclass(slots=True)
class _Words:
    """One line's keywords after the destination: kept values, bare flags and unknown words."""

    values: dict[str, Tok] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Draft:
    lineno: int
    line: str
    type: str
    dst: Tok
    words: _Words
    nexthops: list[Nexthop] = field(default_factory=list)


def parse_ip_route(text: str, file: str = "ip-route.txt") -> list[Route]:
    if is_json(text):
        return _parse_json(text, file)
    out: list[Route] = []
    draft: _Draft | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        toks = tokens(line)
        if not toks:
            continue
        if line[0] in " \t":
            if draft is None:
                raise ParseError(file, lineno, toks[0].col, "continuation line before any route", line)
            _continuation(draft, toks, file, lineno, line)
            continue
        if draft is not None:
            out.append(_finish(draft, file))
        draft = _head(toks, file, lineno, line)
    if draft is not None:
        out.append(_finish(draft, file))
    return out


def _head(toks: list[Tok], file: str, lineno: int, line: str) -> _Draft:
    i = 0
    rtype = "unicast"
    if toks[0].text in ROUTE_TYPES:
        rtype, i = toks[0].text, 1
    if i >= len(toks):
        raise ParseError(file, lineno, len(line.rstrip()) + 1, "expected a destination after the route type", line)
    dst = toks[i]
    if dst.text != "default" and not re.match(r"^[0-9a-fA-F:.]+(/[0-9]{1,20})?$", dst.text):
        raise ParseError(file, lineno, dst.col, f"expected a route destination, got '{dst.text}'", line)
    return _Draft(lineno, line, rtype, dst, _scan(toks[i + 1 :], file, lineno, line))


def _continuation(draft: _Draft, toks: list[Tok], file: str, lineno: int, line: str) -> None:
    if toks[0].text != "nexthop":
        # `cache` lines and anything newer: keep the words, never drop them silently.
        draft.words.unknown.extend(t.text for t in toks)
        return
    words = _scan(toks[1:], file, lineno, line)
    draft.words.unknown.extend(words.unknown)
    draft.nexthops.append(_nexthop(words, file, lineno, line))


def _scan(toks: list[Tok], file: str, lineno: int, line: str) -> _Words:
    w = _Words()
    i = 0
    while i < len(toks):
        word = toks[i].text
        if word in NEXTHOP_FLAGS:
            w.flags.append(word)
            i += 1
            continue
        if word not in KEPT and word not in IGNORED:
            w.unknown.append(word)
            i += 1
            continue
        j = i + 1
        # `via inet6 fe80::1` (an IPv4 route via an IPv6 gateway); `mtu lock 1400`.
        if word == "via" and j < len(toks) - 1 and toks[j].text in ("inet", "inet6"):
            j += 1
        if word in METRICS_WITH_LOCK and j < len(toks) - 1 and toks[j].text == "lock":
            j += 1
        if j >= len(toks):
            raise ParseError(file, lineno, toks[i].col, f"'{word}' needs a value", line)
        if word in KEPT:
            w.values["tos" if word == "dsfield" else word] = toks[j]
        i = j + 1
    return w


def _nexthop(w: _Words, file: str, lineno: int, line: str) -> Nexthop:
    via, dev, weight = w.values.get("via"), w.values.get("dev"), w.values.get("weight")
    return Nexthop(
        gateway=tok_addr(via, file, lineno, line) if via else None,
        dev=dev.text if dev else None,
        weight=tok_int(weight, file, lineno, line) if weight else 1,
        onlink="onlink" in w.flags,
        flags=tuple(f for f in w.flags if f != "onlink"),
    )


def _finish(d: _Draft, file: str) -> Route:
    v = d.words.values
    unknown = list(d.words.unknown)
    nexthops = list(d.nexthops)
    if "via" in v or "dev" in v:
        nexthops.insert(0, _nexthop(d.words, file, d.lineno, d.line))
    else:
        unknown.extend(d.words.flags)  # flags with no nexthop to carry them
        if "weight" in v:
            unknown.extend(("weight", v["weight"].text))
    gateways = [n.gateway for n in nexthops if n.gateway is not None]
    src = tok_addr(v["src"], file, d.lineno, d.line) if "src" in v else None
    return Route(
        dst=_dst(d, gateways + ([src] if src else []), "pref" in v, file),
        table=v["table"].text if "table" in v else "main",
        type=d.type,
        nexthops=tuple(nexthops),
        proto=v["proto"].text if "proto" in v else None,
        scope=v["scope"].text if "scope" in v else None,
        src=src,
        metric=tok_int(v["metric"], file, d.lineno, d.line) if "metric" in v else 0,
        tos=v["tos"].text if "tos" in v else None,
        source=Source(file, d.lineno, 1, d.line),
        nhid=tok_int(v["nhid"], file, d.lineno, d.line) if "nhid" in v else None,
        mtu=tok_int(v["mtu"], file, d.lineno, d.line) if "mtu" in v else None,
        pref=v["pref"].text if "pref" in v else None,
        unknown=tuple(unknown),
    )


def _dst(d: _Draft, addrs: list[IPAddress], ipv6_only_word: bool, file: str) -> IPNetwork:
    if d.dst.text != "default":
        try:
            return ip_network(d.dst.text, strict=False)
        except ValueError:
            raise ParseError(file, d.lineno, d.dst.col, f"invalid destination '{d.dst.text}'", d.line) from None
    return ip_network("::/0" if _is_v6(addrs, ipv6_only_word) else "0.0.0.0/0")


def _is_v6(addrs: list[IPAddress], ipv6_only_word: bool) -> bool:
    # `default` does not say its family. An address on the route does; so does `pref`, which
    # iproute2 prints for every IPv6 route and never for IPv4. Otherwise IPv4, ip's own default.
    if addrs:
        return isinstance(addrs[0], IPv6Address)
    return ipv6_only_word


def tok_addr(tok: Tok, file: str, lineno: int, line: str) -> IPAddress:
    try:
        return ip_address(tok.text)
    except ValueError:
        raise ParseError(file, lineno, tok.col, f"invalid address '{tok.text}'", line) from None


def tok_int(tok: Tok, file: str, lineno: int, line: str) -> int:
    try:
        return ascii_int(tok.text)
    except ValueError:
        raise ParseError(file, lineno, tok.col, f"expected a number, got '{tok.text[:40]}'", line) from None


# ---------------------------------------------------------------------------------------------
# JSON

# JSON keys read into the model, or deliberately dropped (see IGNORED).
_JSON_KEYS = frozenset(
    {"type", "dst", "gateway", "via", "dev", "table", "protocol", "scope", "prefsrc", "metric", "tos", "dsfield",
     "nhid", "pref", "flags", "nexthops", "multipath", "metrics", "expires", "realms", "realm", "weight"}
)
# JSON key -> the word text output uses, so unknown words read the same from either form.
_JSON_TEXT_WORD = {"src": "from"}


def _parse_json(text: str, file: str) -> list[Route]:
    return json_each(text, file, "ip -j route", _json_route)


def _json_route(i: int, e: dict[str, Any], src: Source) -> Route:
    dst_text = jstr(e, "dst", src)
    if dst_text is None:
        raise ParseError(src.file, src.line, src.col, f"entry [{i}] has no 'dst'", src.text)
    unknown: list[str] = []
    for key, value in e.items():
        if key not in _JSON_KEYS:
            unknown.append(_JSON_TEXT_WORD.get(key, key))
            if value is not None:
                unknown.append(value if isinstance(value, str) else json.dumps(value))
    nexthops = [_json_nexthop(n, src) for n in jlist(e, "nexthops", src) + jlist(e, "multipath", src)]
    flags = jwords(e, "flags", src)
    if "gateway" in e or "via" in e or "dev" in e:
        nexthops.insert(0, _json_nexthop(e, src))
    else:
        unknown.extend(flags)
    prefsrc = jaddr(e, "prefsrc", src)
    addrs = [n.gateway for n in nexthops if n.gateway is not None] + ([prefsrc] if prefsrc else [])
    if dst_text == "default":
        dst: IPNetwork = ip_network("::/0" if _is_v6(addrs, "pref" in e) else "0.0.0.0/0")
    else:
        try:
            dst = ip_network(dst_text, strict=False)
        except ValueError:
            raise ParseError(src.file, src.line, src.col, f"invalid destination '{dst_text}'", src.text) from None
    return Route(
        dst=dst,
        table=jstr(e, "table", src) or "main",
        type=jstr(e, "type", src) or "unicast",
        nexthops=tuple(nexthops),
        proto=jstr(e, "protocol", src),
        scope=jstr(e, "scope", src),
        src=prefsrc,
        metric=jint(e, "metric", src) or 0,
        tos=jstr(e, "tos", src) or jstr(e, "dsfield", src),
        source=src,
        nhid=jint(e, "nhid", src),
        mtu=_json_mtu(e, src),
        pref=jstr(e, "pref", src),
        unknown=tuple(unknown),
    )


def _json_nexthop(n: Any, src: Source) -> Nexthop:
    if not isinstance(n, dict):
        raise ParseError(src.file, src.line, src.col, "a nexthop is not a JSON object", src.text)
    gateway = jaddr(n, "gateway", src)
    via = n.get("via")
    if gateway is None and isinstance(via, dict):  # {"family": "inet6", "host": "fe80::1"}
        gateway = jaddr(via, "host", src)
    flags = jwords(n, "flags", src)
    return Nexthop(
        gateway=gateway,
        dev=jstr(n, "dev", src),
        weight=jint(n, "weight", src) or 1,
        onlink="onlink" in flags,
        flags=tuple(f for f in flags if f != "onlink"),
    )


def _json_mtu(e: dict[str, Any], src: Source) -> int | None:
    for m in jlist(e, "metrics", src):
        if isinstance(m, dict) and "mtu" in m:
            v = m["mtu"]
            if isinstance(v, list):  # ["lock", 1400] in some iproute2 versions
                v = next((x for x in v if isinstance(x, int) and not isinstance(x, bool)), None)
            return jint({"mtu": v}, "mtu", src)
    return None
