"""Evaluate one rule's conditions against a packet, the way the kernel's xt matches do.

A condition gives True, False, a Chance (statistic random: match with probability p), or an
Unknown with the reason kptrace cannot decide it; the walker turns Unknown into UNDETERMINED.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, ip_address

from kptrace.model.netfilter import Cond, Match, Option, Rule
from kptrace.walkers.ipset import set_match
from kptrace.walkers.packet import Packet
from kptrace.walkers.results import (  # the shared types; walkers import them from here too
    _FIRST_PACKET_FLAGS,
    _MULTICAST4,
    _MULTICAST6,
    _TCP_FLAGS,
    Chance,
    MatchContext,
    Result,
    Unknown,
    iface_matches,
    neg,
)

__all__ = ["Chance", "MatchContext", "Result", "Unknown", "eval_match", "eval_rule", "iface_matches", "neg"]


def eval_generic(rule: Rule, pkt: Packet) -> Result:
    """-p -s -d -i -o -f; all must hold."""
    if rule.proto is not None:
        want = rule.proto.value
        ok = want in ("all", "0") or want == pkt.proto or (want in ("icmpv6", "ipv6-icmp") and pkt.proto == "icmp6")
        if ok == rule.proto.negated:
            return False
    for cond, addr in ((rule.src, pkt.src), (rule.dst, pkt.dst)):
        if cond is not None:
            inside = any(addr.version == n.version and addr in n for n in cond.value)
            if inside == cond.negated:
                return False
    if rule.fragment is not None and not rule.fragment.negated:
        return False  # the first packet of a connection is never a non-first fragment
    ifaces: tuple[tuple[Cond[str] | None, str | None, str], ...] = (
        (rule.in_iface, pkt.in_iface, "in"), (rule.out_iface, pkt.out_iface, "out"))
    for icond, iface, which in ifaces:
        if icond is None:
            continue
        if iface is None:
            return Unknown(f"the {which}put interface is not known here (rule tests -{which[0]} {icond.value})")
        if iface_matches(icond.value, iface) == icond.negated:
            return False
    return True


def parse_ports(spec: str) -> list[tuple[int, int]]:
    ranges = []
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        a = int(lo) if lo else 0
        b = int(hi) if hi else (65535 if _ else a)
        ranges.append((a, b))
    return ranges


def _port_in(port: int | None, spec: str, what: str) -> Result:
    if port is None:
        return Unknown(f"the flow has no {what} port (rule tests it: {spec}); pass --sport" if what == "source"
                       else f"the flow has no destination port (rule tests {spec})")
    try:
        return any(a <= port <= b for a, b in parse_ports(spec))
    except ValueError:
        return Unknown(f"port '{spec}' is a service name kptrace cannot resolve")


def _ports(m: Match, pkt: Packet) -> Result:
    result: Result = True
    for o in m.options:
        if o.name in ("--dport", "--dports"):
            r = neg(_port_in(pkt.dport, o.value(), "destination"), o.negated)
        elif o.name in ("--sport", "--sports"):
            r = neg(_port_in(pkt.sport, o.value(), "source"), o.negated)
        elif o.name == "--ports":
            r = neg(_either(_port_in(pkt.sport, o.value(), "source"), _port_in(pkt.dport, o.value(), "destination")), o.negated)
        elif o.name == "--syn":
            r = neg(_tcp_flags(pkt) == _FIRST_PACKET_FLAGS, o.negated)
        elif o.name == "--tcp-flags":
            mask, comp = (_flags(v) for v in o.values)
            r = neg((_tcp_flags(pkt) & mask) == comp, o.negated)
        else:
            r = Unknown(f"{m.module} option {o.name} is not modelled")
        result = _and(result, r)
    return result


def _tcp_flags(pkt: Packet) -> int:
    """SYN alone on a connection's first packet, SYN-ACK on the answer to it, ACK on a later packet."""
    if pkt.reply and pkt.ctstate is None:
        return _TCP_FLAGS["SYN"] | _TCP_FLAGS["ACK"]
    if pkt.ctstate in ("ESTABLISHED", "RELATED") or pkt.reply:
        return _TCP_FLAGS["ACK"]
    return _FIRST_PACKET_FLAGS


def _flags(text: str) -> int:
    if text == "ALL":
        return 255
    if text == "NONE":
        return 0
    return sum(_TCP_FLAGS.get(f, 0) for f in text.split(","))


def _either(a: Result, b: Result) -> Result:
    if a is True or b is True:
        return True
    if isinstance(a, Unknown):
        return a
    if isinstance(b, Unknown):
        return b
    return False


def _and(a: Result, b: Result) -> Result:
    if a is False or b is False:
        return False
    if isinstance(a, Unknown):
        return a
    if isinstance(b, Unknown):
        return b
    if isinstance(a, Chance) and isinstance(b, Chance):
        return Chance(a.p * b.p)
    if isinstance(a, Chance):
        return a
    return b


def parse_mark(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return int(value, 0), (int(mask, 0) if mask else 0xFFFFFFFF)


def _mark(m: Match, pkt: Packet) -> Result:
    o = m.opt("--mark")
    if o is None:
        return True
    value, mask = parse_mark(o.value())
    current = pkt.mark if m.module == "mark" else pkt.ctmark
    return neg((current & mask) == value, o.negated)


def ct_states(pkt: Packet) -> set[str]:
    if pkt.untracked:
        return {"UNTRACKED"}
    states = {pkt.ctstate} if pkt.ctstate else ({"ESTABLISHED"} if pkt.reply else {"NEW"})
    if pkt.dnat is not None:
        states.add("DNAT")
    if pkt.snat is not None or pkt.masquerade:
        states.add("SNAT")
    return states


def _conntrack(m: Match, pkt: Packet) -> Result:
    result: Result = True
    for o in m.options:
        if o.name in ("--ctstate", "--state"):
            r: Result = neg(bool(set(o.value().split(",")) & ct_states(pkt)), o.negated)
        elif o.name == "--ctproto":
            r = neg(o.value().lower() == pkt.proto, o.negated)
        elif o.name == "--ctorigdst":
            orig = pkt.orig_dst or pkt.dst
            r = neg(_addr_in(orig, o.value()), o.negated)
        elif o.name == "--ctorigdstport":
            r = neg(_port_in(pkt.orig_dport if pkt.orig_dst else pkt.dport, o.value(), "destination"), o.negated)
        elif o.name == "--ctorigsrc":
            r = neg(_addr_in(pkt.src, o.value()), o.negated)
        elif o.name == "--ctdir":
            r = neg(o.value().upper() == ("REPLY" if pkt.reply else "ORIGINAL"), o.negated)
        else:
            r = Unknown(f"conntrack option {o.name} depends on conntrack state not in the dump")
        result = _and(result, r)
    return result


def _addr_in(addr: object, spec: str) -> bool:
    from ipaddress import ip_network

    try:
        net = ip_network(spec, strict=False)
    except ValueError:
        return False
    return getattr(addr, "version", 0) == net.version and addr in net


def addr_type(addr: object, ctx: MatchContext) -> str | None:
    local = ctx.is_local(addr)
    if local:
        return "LOCAL"
    if isinstance(addr, IPv4Address):
        if addr in _MULTICAST4:
            return "MULTICAST"
        if str(addr) == "255.255.255.255":
            return "BROADCAST"
    elif addr in _MULTICAST6:
        return "MULTICAST"
    if local is None:
        return None
    return "UNICAST"


def _addrtype(m: Match, pkt: Packet, ctx: MatchContext) -> Result:
    result: Result = True
    for o in m.options:
        if o.name in ("--limit-iface-in", "--limit-iface-out"):
            # Only addresses of the in/out interface count; kptrace treats the node's addresses as one
            # set, which is exact for LOCAL on a node that owns each address once.
            ctx.assumptions.append(f"addrtype {o.name} evaluated against all node addresses")
            continue
        addr = pkt.src if o.name == "--src-type" else pkt.dst
        kind = addr_type(addr, ctx)
        wanted = set(o.value().split(","))
        if kind is None:
            r: Result = Unknown(f"whether {addr} is a node address is not known: pass --node-ip or an ip-addr dump")
        else:
            r = neg(kind in wanted, o.negated)
        result = _and(result, r)
    return result


def _statistic(m: Match, pkt: Packet) -> Result:
    mode = m.opt("--mode")
    if mode and mode.value() == "random":
        p = m.opt("--probability")
        prob = float(p.value()) if p else 0.5
        return neg(Chance(min(max(prob, 0.0), 1.0)), bool(p and p.negated))
    return Unknown("statistic --mode nth depends on a packet counter that no dump holds")


def _recent(m: Match, pkt: Packet, ctx: MatchContext) -> Result:
    name = m.opt("--name")
    list_name = name.value() if name else "DEFAULT"
    for o in m.options:
        if o.name == "--set":
            return True
        if o.name in ("--rcheck", "--update", "--remove"):
            # kube-proxy's session affinity: a new client has no entry yet.
            ctx.assumptions.append(f"no earlier entry for this client in recent list '{list_name}' (no session affinity yet)")
            return neg(False, o.negated)
    return True


def _iprange(m: Match, pkt: Packet) -> Result:
    result: Result = True
    for o in m.options:
        addr = pkt.src if o.name == "--src-range" else pkt.dst
        lo, _, hi = o.value().partition("-")
        try:
            a, b = ip_address(lo), ip_address(hi or lo)
        except ValueError:
            return Unknown(f"iprange '{o.value()}' is not an address range")
        inside = addr.version == a.version and a <= addr <= b  # type: ignore[operator]
        result = _and(result, neg(inside, o.negated))
    return result


def _icmp(m: Match, pkt: Packet, ctx: MatchContext) -> Result:
    if pkt.proto not in ("icmp", "icmp6"):
        return False
    o = m.opt("--icmp-type", "--icmpv6-type")
    if o is None:
        return True
    ctx.assumptions.append("an ICMP flow is an echo request")
    want = o.value()
    echo = want in ("echo-request", "8", "128", "8/0", "any")
    return neg(echo, o.negated)


def _proto_module(m: Match, pkt: Packet) -> Result:
    want = "icmp6" if m.module == "icmp6" else m.module
    if pkt.proto != want:
        return False
    return _ports(m, pkt)


def _limit(m: Match, pkt: Packet, ctx: MatchContext) -> Result:
    ctx.assumptions.append("rate limits (-m limit) are not exceeded")
    return True


def _owner(m: Match, pkt: Packet, ctx: MatchContext) -> Result:
    if not pkt.local_origin:
        return False  # only locally generated packets have a socket owner
    return Unknown("-m owner depends on the sending process, which a dump does not show")


def _pkttype(m: Match, pkt: Packet, ctx: MatchContext) -> Result:
    o = m.opt("--pkt-type")
    kind = "multicast" if addr_type(pkt.dst, ctx) == "MULTICAST" else "unicast"
    return neg(o is not None and o.value() == kind, bool(o and o.negated))


Evaluator = Callable[[Match, Packet, MatchContext], Result]

EVALUATORS: dict[str, Evaluator] = {
    "tcp": lambda m, p, c: _proto_module(m, p),
    "udp": lambda m, p, c: _proto_module(m, p),
    "udplite": lambda m, p, c: _proto_module(m, p),
    "sctp": lambda m, p, c: _proto_module(m, p),
    "multiport": lambda m, p, c: _ports(m, p),
    "comment": lambda m, p, c: True,
    "nfacct": lambda m, p, c: True,
    "mark": lambda m, p, c: _mark(m, p),
    "connmark": lambda m, p, c: _mark(m, p),
    "conntrack": lambda m, p, c: _conntrack(m, p),
    "state": lambda m, p, c: _conntrack(m, p),
    "addrtype": _addrtype,
    "statistic": lambda m, p, c: _statistic(m, p),
    "recent": _recent,
    "iprange": lambda m, p, c: _iprange(m, p),
    "icmp": _icmp,
    "icmp6": _icmp,
    "limit": _limit,
    "owner": _owner,
    "pkttype": _pkttype,
    "set": lambda m, p, c: _set_match(m, p, c),
    "physdev": lambda m, p, c: Unknown("-m physdev depends on the bridge port the frame used"),
    "mac": lambda m, p, c: Unknown("-m mac depends on the sender's MAC address"),
}


def _set_name(m: Match) -> str:
    o = m.opt("--match-set")
    return o.values[0] if o and o.values else "?"


def _set_match(m: Match, pkt: Packet, ctx: MatchContext) -> Result:
    return set_match(m, pkt, ctx)


def eval_match(m: Match, pkt: Packet, ctx: MatchContext) -> Result:
    if not m.known:
        return Unknown(m.why_unknown or f"match module '{m.module}' is not modelled")
    fn = EVALUATORS.get(m.module)
    if fn is None:
        return Unknown(f"match module '{m.module}' is not modelled")
    return fn(m, pkt, ctx)


def eval_rule(rule: Rule, pkt: Packet, ctx: MatchContext) -> Result:
    result = eval_generic(rule, pkt)
    for m in rule.matches:
        if result is False:
            return False
        result = _and(result, eval_match(m, pkt, ctx))
    return result


def describe_option(o: Option) -> str:
    return ("! " if o.negated else "") + " ".join((o.name, *o.values))
