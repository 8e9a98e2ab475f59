"""Evaluate nftables expressions against the walked packet, the way nf_tables' expressions do.

Reading a field gives a typed value (`TV`), NOMATCH when the field is not in this packet (nft's
implicit dependencies: `tcp dport` on a UDP packet, `ip daddr` on IPv6 in an inet table; the rule
does not match), a `Dist` for random sources (`numgen random`, `meta random`), or an Unknown with
the reason kptrace cannot read it. Comparisons give True, False, a Chance or an Unknown, as
kptrace/walkers/matches.py does for iptables.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from kptrace.model.nft import (
    AnonSet,
    Binop,
    Concat,
    Const,
    Ct,
    Element,
    Expr,
    Fib,
    Flags,
    Hash,
    MapLookup,
    Meta,
    NftSet,
    NftTable,
    Numgen,
    Payload,
    Prefix,
    Range,
    SetRef,
    UnknownExpr,
)
from kptrace.walkers.matches import Chance, MatchContext, Unknown, addr_type
from kptrace.walkers.packet import Packet

Result = bool | Chance | Unknown

PORT_PROTOS = ("tcp", "udp", "udplite", "sctp", "dccp")
PROTO_NUMBERS = {"icmp": 1, "igmp": 2, "ipip": 4, "tcp": 6, "egp": 8, "udp": 17, "ipv6": 41, "gre": 47, "esp": 50,
                 "ah": 51, "icmpv6": 58, "ipv6-icmp": 58, "icmp6": 58, "sctp": 132, "udplite": 136, "dccp": 33,
                 "comp": 108, "vrrp": 112, "ospf": 89, "pim": 103}
SERVICE_PORTS = {"ssh": 22, "http": 80, "https": 443, "domain": 53, "ntp": 123, "bgp": 179, "smtp": 25, "ftp": 21,
                 "telnet": 23, "dhcp": 67, "bootps": 67, "bootpc": 68, "snmp": 161, "ldap": 389, "http-alt": 8080}
BITS: dict[str, dict[str, int]] = {
    "ctstate": {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64},
    "ctstatus": {"expected": 1, "seen-reply": 2, "assured": 4, "confirmed": 8, "snat": 16, "dnat": 32, "dying": 512},
    "tcpflags": {"fin": 1, "syn": 2, "rst": 4, "psh": 8, "ack": 16, "urg": 32, "ecn": 64, "cwr": 128},
}
ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "redirect": 5, "echo-request": 8, "time-exceeded": 11,
              "parameter-problem": 12, "timestamp-request": 13, "timestamp-reply": 14}
ICMPV6_TYPES = {"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
                "echo-request": 128, "echo-reply": 129, "nd-router-solicit": 133, "nd-router-advert": 134,
                "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137}
MEMBERSHIP_OPS = ("==", "in")


class _NoMatch:
    def __repr__(self) -> str:
        return "NOMATCH"


NOMATCH = _NoMatch()


@dataclass(frozen=True, slots=True)
class TV:
    """A value read from the packet; kind says how constants compare with it."""

    kind: str  # addr port proto int iface bits:<name> sym:<name> concat
    value: Any


@dataclass(frozen=True, slots=True)
class Dist:
    """A random source: `numgen random mod N offset O` (values) or `meta random` under a mask."""

    values: range = range(0)  # numgen random mod N offset O: range(O, O + N), never a list of 2^32 values
    random_mask: int | None = None  # meta random & mask: uniform over 0..mask when mask = 2^k - 1


Read = TV | Dist | Unknown | _NoMatch


@dataclass(slots=True)
class Env:
    pkt: Packet
    ctx: MatchContext
    hook: str  # PREROUTING … POSTROUTING
    table: NftTable
    ct_seen: bool = True  # conntrack (priority -200) has run before this base chain
    assumptions: list[str] = field(default_factory=list)


def proto_number(pkt: Packet) -> int:
    if pkt.proto in ("icmp6", "icmpv6"):
        return 58
    if pkt.proto == "icmp" and pkt.dst.version == 6:
        return 58
    return PROTO_NUMBERS.get(pkt.proto, -1)


# ---------------------------------------------------------------------------------------------
# Reading packet fields


def read(e: Expr, env: Env) -> Read:
    if isinstance(e, Payload):
        return _payload(e, env)
    if isinstance(e, Meta):
        return _meta(e, env)
    if isinstance(e, Ct):
        return _ct(e, env)
    if isinstance(e, Fib):
        return _fib(e, env)
    if isinstance(e, Numgen):
        if e.mode != "random":
            return Unknown(f"numgen {e.mode} counts packets; no dump holds its counter")
        return Dist(range(e.offset, e.offset + e.mod))
    if isinstance(e, Hash):
        return Unknown(f"'{e.text}' picks by a hash of the flow that kptrace does not compute")
    if isinstance(e, Concat):
        parts: list[Any] = []
        for x in e.items:
            v = read(x, env)
            if isinstance(v, _NoMatch):
                return NOMATCH
            if isinstance(v, Dist):
                return Unknown("a random value inside a concatenation")
            parts.append(v)  # TV or Unknown: a lookup may still decide without the unknown part
        return TV("concat", tuple(parts))
    if isinstance(e, Binop):
        return _binop(e, env)
    if isinstance(e, UnknownExpr):
        return Unknown(f"'{e.text}' is not modelled")
    return Unknown(f"'{type(e).__name__}' cannot be read from a packet")


def _payload(p: Payload, env: Env) -> Read:
    pkt = env.pkt
    v = pkt.dst.version
    f = p.field
    if p.proto == "ip" or p.proto == "ip6":
        if (p.proto == "ip") != (v == 4):
            return NOMATCH  # an inet table's `ip daddr` only reads IPv4 packets
        if f == "saddr":
            return TV("addr", pkt.src)
        if f == "daddr":
            return TV("addr", pkt.dst)
        if f in ("protocol", "nexthdr"):
            if f == "nexthdr":
                env.assumptions.append("the IPv6 packet has no extension headers (ip6 nexthdr is its transport)")
            return TV("proto", proto_number(pkt))
        if f == "version":
            return TV("int", v)
        return Unknown(f"{p.proto} {f} is not part of the flow kptrace traces")
    if p.proto in PORT_PROTOS:
        if pkt.proto != p.proto:
            return NOMATCH  # `tcp dport` implies `meta l4proto tcp`
        return _port_field(p, env)
    if p.proto == "th":
        if pkt.proto not in PORT_PROTOS:
            return Unknown(f"th {f} of a {pkt.proto} packet reads bytes that are not a port")
        return _port_field(p, env)
    if p.proto in ("icmp", "icmpv6"):
        want = "icmp" if p.proto == "icmp" else "icmp6"
        got = "icmp6" if pkt.proto in ("icmp6", "icmpv6") or (pkt.proto == "icmp" and v == 6) else pkt.proto
        if got != want:
            return NOMATCH
        if f == "type":
            env.assumptions.append("an ICMP flow is an echo request")
            return TV("sym:icmptype", "echo-request")
        if f == "code":
            return TV("int", 0)
        return Unknown(f"{p.proto} {f} is not part of the flow")
    if p.proto == "raw":
        return Unknown(f"raw payload {p.field} is not modelled")
    return Unknown(f"{p.proto} {f} is not modelled")


def _port_field(p: Payload, env: Env) -> Read:
    pkt = env.pkt
    if p.field == "dport":
        if pkt.dport is None:
            return Unknown(f"the flow has no destination port (rule tests {p.proto} dport)")
        return TV("port", pkt.dport)
    if p.field == "sport":
        if pkt.sport is None:
            return Unknown(f"the flow has no source port (rule tests {p.proto} sport); pass --sport")
        return TV("port", pkt.sport)
    if p.proto == "tcp" and p.field == "flags":
        # The first packet of a connection carries SYN alone; its reply SYN and ACK.
        return TV("bits:tcpflags", 2 | (16 if pkt.reply else 0))
    return Unknown(f"{p.proto} {p.field} is not part of the flow")


def _meta(m: Meta, env: Env) -> Read:
    pkt, k = env.pkt, m.key
    if k == "l4proto":
        return TV("proto", proto_number(pkt))
    if k == "nfproto" or k == "l3proto":
        return TV("sym:nfproto", "ipv4" if pkt.dst.version == 4 else "ipv6")
    if k == "protocol":
        return TV("sym:ethertype", "ip" if pkt.dst.version == 4 else "ip6")
    if k == "mark":
        return TV("int", pkt.mark)
    if k in ("iifname", "iif"):
        if pkt.in_iface is None:
            if pkt.local_origin and env.hook in ("OUTPUT", "POSTROUTING"):
                return NOMATCH  # a packet the node sends has no input interface
            return Unknown(f"the input interface is not known here (rule tests {k}); pass --in-iface")
        return TV("iface", pkt.in_iface)
    if k in ("oifname", "oif"):
        if env.hook in ("PREROUTING", "INPUT"):
            return NOMATCH  # no output interface before the routing decision / for local delivery
        if pkt.out_iface is None:
            return Unknown(f"the output interface is not known here (rule tests {k})")
        return TV("iface", pkt.out_iface)
    if k == "pkttype":
        kind = addr_type(pkt.dst, env.ctx)
        return TV("sym:pkttype", {"MULTICAST": "multicast", "BROADCAST": "broadcast"}.get(kind or "", "host"))
    if k in ("skuid", "skgid", "cgroup"):
        if not pkt.local_origin:
            return NOMATCH  # only a locally generated packet has a socket
        return Unknown(f"meta {k} depends on the sending process, which a dump does not show")
    if k == "random":
        return Dist(random_mask=0xFFFFFFFF)
    return Unknown(f"meta {k} is not modelled")


def _ct(c: Ct, env: Env) -> Read:
    pkt = env.pkt
    if c.key == "state":
        if pkt.untracked:
            return TV("bits:ctstate", 64)
        if not env.ct_seen:
            # Before conntrack (priority -200) the packet has no entry: nft reads that as invalid.
            return TV("bits:ctstate", 1)
        return TV("bits:ctstate", 2 if pkt.reply else 8)
    if pkt.untracked or not env.ct_seen:
        return NOMATCH  # no conntrack entry: every other ct key breaks the rule
    if c.key == "status":
        bits = (32 if pkt.dnat else 0) | (16 if (pkt.snat or pkt.masquerade) else 0)
        if pkt.reply:
            bits |= 8 | 2
        return TV("bits:ctstatus", bits)
    if c.key == "direction":
        return TV("sym:ctdir", "reply" if pkt.reply else "original")
    if c.key == "mark":
        return TV("int", pkt.ctmark)
    if c.key == "l3proto":
        return TV("sym:nfproto", "ipv4" if pkt.dst.version == 4 else "ipv6")
    if c.key == "protocol":
        return TV("proto", proto_number(pkt))
    if c.key in ("saddr", "daddr", "proto-src", "proto-dst"):
        if c.dir != "original" or pkt.reply:
            return Unknown(f"ct {c.dir or ''} {c.key} of this packet's connection is not modelled".replace("  ", " "))
        if c.key == "saddr":
            return TV("addr", pkt.orig_src or pkt.src)
        if c.key == "daddr":
            return TV("addr", pkt.orig_dst or pkt.dst)
        port = pkt.orig_dport if pkt.orig_dst is not None else pkt.dport
        if c.key == "proto-src":
            port = pkt.orig_sport if pkt.orig_src is not None else pkt.sport
        if port is None:
            return Unknown(f"the flow has no port for ct original {c.key}")
        return TV("port", port)
    return Unknown(f"ct {c.key} depends on conntrack state no dump holds")


def _fib(f: Fib, env: Env) -> Read:
    if f.result != "type":
        return Unknown(f"fib {' . '.join(f.flags)} {f.result} depends on a route lookup kptrace does not make here")
    addr = env.pkt.src if "saddr" in f.flags else env.pkt.dst
    if "iif" in f.flags or "oif" in f.flags:
        env.assumptions.append(f"fib {' . '.join(f.flags)} type evaluated against all node addresses")
    kind = addr_type(addr, env.ctx)
    if kind is None:
        return Unknown(f"whether {addr} is a node address is not known: pass --node-ip or an ip-addr dump")
    return TV("sym:addrtype", kind.lower())


def _binop(b: Binop, env: Env) -> Read:
    left = read(b.left, env)
    if isinstance(left, (Unknown, _NoMatch)):
        return left
    if isinstance(left, Dist):
        mask = const_int(b.right, "int")
        if b.op == "&" and isinstance(mask, int) and left.random_mask is not None:
            return Dist(random_mask=left.random_mask & mask)
        return Unknown(f"'{b.op}' on a random value is not modelled")
    if not isinstance(left, TV) or not (left.kind in ("int", "port", "proto") or left.kind.startswith("bits:")):
        return Unknown(f"'{b.op}' on a {getattr(left, 'kind', '?')} value")
    right = const_int(b.right, left.kind)
    if isinstance(right, Unknown):
        return right
    r = int_op(b.op, int(left.value), right)
    return r if isinstance(r, Unknown) else TV(left.kind, r & 0xFFFFFFFF)


def int_op(op: str, a: int, b: int) -> int | Unknown:
    """A 32-bit register operation of nft's bitwise expression, computed only for the operator asked (a shift
    by 2^31 would otherwise build a number of 2^31 bits); the kernel refuses shifts of 32 or more."""
    if op in ("<<", ">>"):
        if not 0 <= b < 32:
            return Unknown(f"a shift by {b} (nft shifts a 32-bit register by less than 32)")
        return (a << b) & 0xFFFFFFFF if op == "<<" else a >> b
    if op == "&":
        return a & b
    if op == "|":
        return a | b
    if op == "^":
        return a ^ b
    return Unknown(f"operator '{op}'")


# ---------------------------------------------------------------------------------------------
# Constants


def const_int(e: Expr, kind: str) -> int | Unknown:
    """An integer constant, or a bit mask of flag names (`fin,syn` / `(fin|syn)`) for bits kinds."""
    if isinstance(e, Const):
        if isinstance(e.value, int):
            return e.value
        names = BITS.get(kind[5:]) if kind.startswith("bits:") else None
        if names and e.value in names:
            return names[e.value]
        try:
            return int(str(e.value), 0)
        except ValueError:
            return Unknown(f"'{e.value}' is not a number")
    if isinstance(e, Flags):
        total = 0
        for x in e.items:
            v = const_int(x, kind)
            if isinstance(v, Unknown):
                return v
            total |= v
        return total
    if isinstance(e, Binop):
        a, b = const_int(e.left, kind), const_int(e.right, kind)
        if isinstance(a, Unknown):
            return a
        if isinstance(b, Unknown):
            return b
        return int_op(e.op, a, b)
    return Unknown(f"'{type(e).__name__}' is not a number")


def convert(kind: str, e: Const) -> Any:
    """A constant as a value of `kind`, or Unknown when it cannot be one."""
    v = e.value
    if kind == "addr":
        try:
            return ip_address(str(v))
        except ValueError:
            return Unknown(f"'{v}' is not an IP address (names are not resolved)")
    if kind == "port":
        if isinstance(v, int):
            return v
        if v in SERVICE_PORTS:
            return SERVICE_PORTS[str(v)]
        return Unknown(f"port '{v}' is a service name kptrace does not know")
    if kind == "proto":
        if isinstance(v, int):
            return v
        n = PROTO_NUMBERS.get(str(v).lower())
        return n if n is not None else Unknown(f"protocol '{v}' is not known")
    if kind == "int" or kind.startswith("bits:"):
        return const_int(e, kind)
    if kind == "iface":
        return str(v)
    if kind == "sym:icmptype":
        if isinstance(v, int):
            return {8: "echo-request", 128: "echo-request"}.get(v, f"type-{v}")
        return str(v)
    if kind.startswith("sym:"):
        return str(v).lower()
    return Unknown(f"constant '{v}' for a {kind} value")


def _scalar_match(tv: TV, key: Expr) -> bool | Unknown:
    """One value against one element key: a constant, a prefix, a range, or a wildcard name."""
    if isinstance(key, Prefix):
        if tv.kind != "addr":
            return Unknown(f"prefix {key.addr}/{key.length} against a {tv.kind} value")
        try:
            net = ip_address(key.addr)
        except ValueError:
            return Unknown(f"'{key.addr}' is not an address")
        if net.version != tv.value.version:
            return False
        from ipaddress import ip_network

        return bool(tv.value in ip_network(f"{key.addr}/{key.length}", strict=False))
    if isinstance(key, Range):
        if not isinstance(key.lo, Const) or not isinstance(key.hi, Const):
            return Unknown("a range of expressions")
        lo, hi = convert(tv.kind, key.lo), convert(tv.kind, key.hi)
        if isinstance(lo, Unknown):
            return lo
        if isinstance(hi, Unknown):
            return hi
        if tv.kind == "addr" and (lo.version != tv.value.version):
            return False
        try:
            return bool(lo <= tv.value <= hi)
        except TypeError:
            return Unknown(f"range {lo}-{hi} against {tv.value}")
    if isinstance(key, Const):
        c = convert(tv.kind, key)
        if isinstance(c, Unknown):
            return c
        if tv.kind == "iface" and isinstance(c, str) and c.endswith("*"):
            return bool(tv.value.startswith(c[:-1]))
        if tv.kind.startswith("bits:"):
            return bool(tv.value == c)
        return bool(tv.value == c)
    if isinstance(key, Flags):
        c = const_int(key, tv.kind) if tv.kind.startswith("bits:") else None
        if isinstance(c, int):
            return bool(tv.value == c)
        return Unknown("a flag list against a non-flag value")
    return Unknown(f"'{type(key).__name__}' as a set element")


def element_matches(v: TV | Unknown, key: Expr) -> bool | Unknown:
    if isinstance(v, Unknown):
        return v
    if v.kind == "concat":
        parts = key.items if isinstance(key, Concat) else None
        if parts is None or len(parts) != len(v.value):
            return Unknown("a concatenation against an element of another shape")
        unknown: Unknown | None = None
        for part_value, part_key in zip(v.value, parts):
            r = element_matches(part_value, part_key)
            if r is False:
                return False
            if isinstance(r, Unknown):
                unknown = unknown or r
        return unknown if unknown is not None else True
    return _scalar_match(v, key)


@dataclass(frozen=True, slots=True)
class Lookup:
    """The result of looking a value up in a set or map."""

    element: Element | None  # the element that matched; None: no element matched
    set: NftSet | None = None  # the named set (None for an anonymous one)


def lookup(v: TV, data: SetRef | AnonSet, env: Env) -> Lookup | Unknown:
    if isinstance(data, SetRef):
        s = env.table.sets.get(data.name)
        if s is None:
            return Unknown(f"set @{data.name} is not in table {env.table.label}")
        elements, named = _candidates(s, v), s
    else:
        elements, named = list(data.elements), None
    unknown: Unknown | None = None
    for el in elements:
        r = element_matches(v, el.key)
        if r is True:
            if named is not None and named.dynamic:
                env.assumptions.append(f"the entry for this packet in dynamic set @{named.name} (from the dump) is still live")
            return Lookup(el, named)
        if isinstance(r, Unknown):
            unknown = unknown or r
    if unknown is not None:
        return unknown
    if named is not None and named.dynamic:
        env.assumptions.append(f"no entry for this packet in dynamic set @{named.name} (e.g. no session affinity yet)")
    return Lookup(None, named)


class _ElementIndex:
    """A named set's constant elements by their value, for one shape of looked-up value, so a
    lookup in kube-proxy's 10k-element maps tests the elements it can match (a hash lookup, as the
    kernel does). Elements that are not plain constants (prefixes, ranges, wildcards, values that
    do not convert) stay in `rest`, tested in order with the hits."""

    def __init__(self, s: NftSet, kinds: tuple[str, ...]) -> None:
        self.exact: dict[tuple[object, ...], list[int]] = {}
        self.rest: list[int] = []
        for i, el in enumerate(s.elements):
            key = _constant_key(el.key, kinds)
            if key is None:
                self.rest.append(i)
            else:
                self.exact.setdefault(key, []).append(i)


def _constant_key(key: Expr, kinds: tuple[str, ...]) -> tuple[object, ...] | None:
    if isinstance(key, Concat) != (len(kinds) > 1):
        return None  # another shape: element_matches says Unknown, so it stays in `rest`
    parts = key.items if isinstance(key, Concat) else (key,)
    if len(parts) != len(kinds):
        return None
    out: list[object] = []
    for part, kind in zip(parts, kinds):
        if not isinstance(part, Const):
            return None
        c = convert(kind, part)
        if isinstance(c, Unknown) or (kind == "iface" and isinstance(c, str) and c.endswith("*")):
            return None
        out.append(c)
    return tuple(out)


_INDEXES: dict[tuple[int, tuple[str, ...]], tuple[NftSet, int, _ElementIndex]] = {}  # the set is kept: its id stays its own


def _candidates(s: NftSet, v: TV | Unknown) -> list[Element]:
    if len(s.elements) < 16 or isinstance(v, Unknown):
        return s.elements
    if v.kind == "concat":
        if len(v.value) < 2 or not all(isinstance(p, TV) and p.kind != "concat" for p in v.value):
            return s.elements
        kinds = tuple(p.kind for p in v.value)
        value = tuple(p.value for p in v.value)
    else:
        kinds, value = (v.kind,), (v.value,)
    held = _INDEXES.get((id(s), kinds))
    if held is None or held[0] is not s or held[1] != len(s.elements):
        held = _INDEXES[(id(s), kinds)] = (s, len(s.elements), _ElementIndex(s, kinds))
    index = held[2]
    try:
        hits = index.exact.get(value, [])
    except TypeError:  # an unhashable value: test every element
        return s.elements
    return [s.elements[i] for i in sorted({*hits, *index.rest})]


# ---------------------------------------------------------------------------------------------
# Relational expressions


def compare(left: Expr, op: str, right: Expr, env: Env) -> Result:
    v = read(left, env)
    if isinstance(v, _NoMatch):
        return False
    if isinstance(v, Unknown):
        return v
    if isinstance(v, Dist):
        return _chance(v, op, right, env)
    if isinstance(right, (SetRef, AnonSet)):
        if op not in ("==", "!=", "in"):
            return Unknown(f"'{op}' against a set")
        found = lookup(v, right, env)
        if isinstance(found, Unknown):
            return found
        return (found.element is not None) == (op != "!=")
    if v.kind.startswith("bits:"):
        mask = const_int(right, v.kind)
        if isinstance(mask, Unknown):
            return mask
        if op == "in":
            return bool(v.value & mask)
        if op == "==":
            return bool(v.value == mask)
        if op == "!=":
            # `ct state != established`: none of the flags (nft negates the implicit bit test).
            return not (v.value & mask) if not isinstance(left, Binop) else bool(v.value != mask)
        return _ordered(v.value, op, mask)
    if isinstance(right, Flags):
        results = [element_matches(v, x) for x in right.items]
        hit: Result = True if any(r is True for r in results) else next((r for r in results if isinstance(r, Unknown)), False)
        if isinstance(hit, Unknown):
            return hit
        return hit if op in MEMBERSHIP_OPS else (not hit if op == "!=" else Unknown(f"'{op}' against a list"))
    if op in MEMBERSHIP_OPS or op == "!=":
        r = element_matches(v, right)
        if isinstance(r, Unknown):
            return r
        return r if op != "!=" else not r
    if isinstance(right, Const):
        c = convert(v.kind, right)
        if isinstance(c, Unknown):
            return c
        try:
            return _ordered(v.value, op, c)
        except TypeError:
            return Unknown(f"'{op}' between {v.kind} and '{right.value}'")
    return Unknown(f"'{op}' against '{type(right).__name__}'")


_ORDER_OPS: dict[str, Any] = {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge,
                              "==": operator.eq, "!=": operator.ne}


def _ordered(a: Any, op: str, b: Any) -> bool:
    return bool(_ORDER_OPS[op](a, b))


def _chance(d: Dist, op: str, right: Expr, env: Env) -> Result:
    if d.random_mask is not None:
        m = d.random_mask
        if m & (m + 1):
            return Unknown(f"meta random under mask 0x{m:x} is not a uniform range")
        c = const_int(right, "int")
        if isinstance(c, Unknown):
            return c
        hits = {"<": min(max(c, 0), m + 1), "<=": min(max(c + 1, 0), m + 1), ">": max(m - c, 0),
                ">=": max(m + 1 - c, 0), "==": 1 if 0 <= c <= m else 0, "!=": m + (0 if 0 <= c <= m else 1)}.get(op)
        if hits is None:
            return Unknown(f"'{op}' on meta random")
        return Chance(hits / (m + 1))
    if not d.values:
        return False
    if len(d.values) > ENUMERATE_MAX:
        # `numgen random mod 4294967295`: counted from the constant or the set's elements, not value by value.
        counted = count_values(d.values, op, right, env)
        return counted if isinstance(counted, Unknown) else Chance(counted / len(d.values))
    matched = 0
    for x in d.values:
        r = compare_value(TV("int", x), op, right, env)
        if isinstance(r, Unknown):
            return r
        matched += 1 if r else 0
    return Chance(matched / len(d.values))


ENUMERATE_MAX = 65536  # a random source of more values than this is counted, never enumerated


def count_values(values: range, op: str, right: Expr, env: Env) -> int | Unknown:
    """How many of `values` (a numgen's) satisfy `op right`, without visiting them one by one."""
    if isinstance(right, (SetRef, AnonSet)):
        elements = element_counts(values, right, env)
        if isinstance(elements, Unknown):
            return elements
        hits = sum(n for _, n in elements)
        return hits if op in MEMBERSHIP_OPS else (len(values) - hits if op == "!=" else Unknown(f"'{op}' against a set"))
    if op in MEMBERSHIP_OPS or op == "!=":
        hits_or_unknown = _key_count(values, right)
        if isinstance(hits_or_unknown, Unknown):
            return hits_or_unknown
        return hits_or_unknown if op != "!=" else len(values) - hits_or_unknown
    c = const_int(right, "int")
    if isinstance(c, Unknown):
        return c
    lo, hi = values.start, values.stop - 1
    below = min(max(c - lo, 0), len(values))  # values < c
    at = 1 if lo <= c <= hi else 0
    return {"<": below, "<=": below + at, ">": len(values) - below - at, ">=": len(values) - below,
            "==": at, "!=": len(values) - at}.get(op, Unknown(f"'{op}' on a random value"))


def _key_count(values: range, key: Expr) -> int | Unknown:
    """How many of `values` one element key (an integer or an integer range) holds."""
    if isinstance(key, Const):
        c = const_int(key, "int")
        return c if isinstance(c, Unknown) else (1 if c in values else 0)
    if isinstance(key, Range):
        lo, hi = const_int(key.lo, "int"), const_int(key.hi, "int")
        if isinstance(lo, Unknown):
            return lo
        if isinstance(hi, Unknown):
            return hi
        return max(0, min(hi, values.stop - 1) - max(lo, values.start) + 1)
    return Unknown(f"'{type(key).__name__}' as a key of a random value's map")


def element_counts(values: range, data: SetRef | AnonSet, env: Env) -> list[tuple[Element, int]] | Unknown:
    """Each element of a set or map with how many of `values` it holds (elements that hold none left out),
    in the set's order; each value counts for the first element that holds it, as a lookup finds it."""
    if len(values) <= ENUMERATE_MAX:
        counts: dict[int, int] = {}
        by_id: dict[int, Element] = {}
        for v in values:
            found = lookup(TV("int", v), data, env)
            if isinstance(found, Unknown):
                return found
            if found.element is not None:
                counts[id(found.element)] = counts.get(id(found.element), 0) + 1
                by_id[id(found.element)] = found.element
        return [(by_id[k], n) for k, n in counts.items()]
    if isinstance(data, SetRef):
        named = env.table.sets.get(data.name)
        if named is None:
            return Unknown(f"set @{data.name} is not in table {env.table.label}")
        elements = list(named.elements)
    else:
        elements = list(data.elements)
    out: list[tuple[Element, int]] = []
    total = 0
    for el in elements:
        n = _key_count(values, el.key)
        if isinstance(n, Unknown):
            return n
        if n:
            out.append((el, n))
            total += n
    if total > len(values):
        return Unknown(f"elements of a map keyed by a random value of {len(values)} values overlap")
    return out


def compare_value(v: TV, op: str, right: Expr, env: Env) -> Result:
    if isinstance(right, (SetRef, AnonSet)):
        found = lookup(v, right, env)
        if isinstance(found, Unknown):
            return found
        return (found.element is not None) == (op != "!=")
    if op in MEMBERSHIP_OPS or op == "!=":
        r = element_matches(v, right)
        if isinstance(r, Unknown):
            return r
        return r if op != "!=" else not r
    if isinstance(right, Const):
        c = convert(v.kind, right)
        if isinstance(c, Unknown):
            return c
        return _ordered(v.value, op, c)
    return Unknown(f"'{op}' against '{type(right).__name__}'")


def eval_int(e: Expr, env: Env) -> int | Unknown:
    """The value of `meta mark set <e>`: a constant, a mark, or bit operations on them."""
    if isinstance(e, Const):
        return const_int(e, "int")
    if isinstance(e, (Meta, Ct, Binop)):
        v = read(e, env)
        if isinstance(v, TV) and isinstance(v.value, int):
            return v.value
        if isinstance(v, Unknown):
            return v
        return Unknown(f"'{type(e).__name__}' has no value for this packet")
    if isinstance(e, MapLookup):
        return Unknown("a mark from a map lookup is not modelled")
    return Unknown(f"'{type(e).__name__}' as a mark value")


def address_text(a: IPv4Address | IPv6Address) -> str:
    return f"[{a}]" if a.version == 6 else str(a)
