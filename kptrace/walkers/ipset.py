"""`-m set`: a packet tested against the node's ipsets as xt_set does (kube-proxy's IPVS mode matches
KUBE-CLUSTER-IP, KUBE-LOOP-BACK, KUBE-NODE-PORT-* this way), with an index for large sets."""

from __future__ import annotations


from kptrace.model.ipvs import IpsetMember, IpsetSet, SetPort
from kptrace.walkers.packet import Packet
from kptrace.walkers.results import MatchContext, Result, Unknown, neg

# ---------------------------------------------------------------------------------------------
# -m set

# Set types whose elements may carry `nomatch` (IPSET_TYPE_NOMATCH): --return-nomatch applies only to them.
_NOMATCH_TYPES = {"hash:net", "hash:net,net", "hash:net,port", "hash:net,port,net", "hash:ip,port,net", "hash:net,iface"}
_PORT_PROTOS = {"tcp", "udp", "sctp", "udplite"}


def set_match(m: object, pkt: Packet, ctx: MatchContext) -> Result:
    """xt_set: `[!] --match-set NAME src|dst[,src|dst…] [--return-nomatch] [! --update-counters] …`."""
    from kptrace.model.netfilter import Match

    assert isinstance(m, Match)
    opt = m.opt("--match-set")
    if opt is None or len(opt.values) < 2:
        return Unknown("-m set without --match-set NAME FLAGS")
    name, flags = opt.values[0], opt.values[1].split(",")
    for o in m.options:
        if o.name.startswith(("--packets-", "--bytes-")):
            return Unknown(f"set match {o.name} compares the element's packet counters at the time of the packet, which no dump holds")
    sets = ctx.sets
    if sets is None:
        return Unknown(f"ipset '{name}' is referenced but the input has no ipset dump (ipset-save.txt: `ipset save`)")
    s = sets.get(name)
    if s is None:
        return Unknown(f"ipset '{name}' is referenced but not in the input's ipset dump")
    return_nomatch = m.opt("--return-nomatch") is not None
    result = _test(s, flags, pkt, ctx, return_nomatch, sets, 0)
    return neg(result, opt.negated)


def _test(s: IpsetSet, flags: list[str], pkt: Packet, ctx: MatchContext, return_nomatch: bool,
          sets: dict[str, IpsetSet], depth: int) -> Result:
    if not s.members_listed:
        return Unknown(f"ipset '{s.name}' was listed without its members (`ipset list -t`)")
    if s.type == "list:set":
        # A list:set matches when one of its member sets does (in order), with the same flags.
        if depth > 8:
            return Unknown(f"list:set '{s.name}' nests too deeply")
        unknown: Unknown | None = None
        for mem in s.members:
            inner = sets.get(mem.text)
            if inner is None:
                unknown = unknown or Unknown(f"list:set '{s.name}' holds set '{mem.text}', which is not in the dump")
                continue
            r = _test(inner, flags, pkt, ctx, return_nomatch, sets, depth + 1)
            if r is True:
                return True
            if isinstance(r, Unknown):
                unknown = unknown or r
        return unknown or False
    dims = s.dimensions
    # xt_set: a rule with fewer direction flags than the set has dimensions never matches
    # (ip_set_test: opt->dim < set->type->dimension), and the family must agree.
    if len(flags) < len(dims):
        return False
    if s.family is not None and s.family != pkt.dst.version:
        return False
    if s.type == "bitmap:port" and pkt.proto not in ("tcp", "udp"):
        # bitmap:port reads ports of TCP and UDP only (ip_set_bitmap_port.c, ip_set_get_ip_port).
        return False
    values: list[object] = []
    for dim, flag in zip(dims, flags):
        src = flag == "src"
        if dim in ("ip", "net"):
            values.append(pkt.src if src else pkt.dst)
        elif dim == "port":
            pv = _packet_port(pkt, src, ctx)
            if isinstance(pv, Unknown):
                # The port is not known, but a set with no element that matches the other parts (an
                # empty KUBE-LOAD-BALANCER) matches nothing whatever the port: test those first.
                values.append(_UnknownPort(pkt.proto, pv))
                continue
            values.append(pv)
        else:
            return Unknown(f"ipset '{s.name}' ({s.type}) tests the packet's {dim}, which kptrace does not model")
    best: IpsetMember | None = None
    best_key: tuple[int, ...] = ()
    unknown = None
    some_unknown = any(isinstance(v, _UnknownPort) for v in values)
    for mem in (s.members if some_unknown else _candidates(s, values)):
        r = _member_matches(s, mem, values)
        if isinstance(r, Unknown):
            unknown = unknown or r
            continue
        if not r:
            continue
        # The kernel tries the most specific prefixes first (mtype_test_cidrs): that element decides.
        key = tuple(p.prefixlen for p in mem.parts if hasattr(p, "prefixlen"))
        if best is None or key > best_key:
            best, best_key = mem, key
    if best is None:
        return unknown or False
    if best.timeout is not None and best.timeout > 0:
        ctx.assumptions.append(f"ipset '{s.name}' element {best.text} ({best.timeout} s left at {best.source}) "
                               "has not expired when the packet arrives")
    matched = not best.nomatch
    if return_nomatch and s.type in _NOMATCH_TYPES:
        # --return-nomatch reverses the answer for these types: a nomatch element matches, a plain one does not.
        matched = not matched
    return matched


class _SetIndex:
    """A set's single-value elements (host addresses, ports) by value, so a packet is tested against
    the elements it can match (a hash lookup, as the kernel does), not against all 10k of a
    KUBE-CLUSTER-IP. Elements with networks or unmodelled parts stay in `rest`, tested one by one.
    Member order is kept: among equally specific matches the first listed decides."""

    def __init__(self, s: IpsetSet) -> None:
        self.exact: dict[tuple[object, ...], list[int]] = {}
        self.rest: list[int] = []
        for i, mem in enumerate(s.members):
            key = _member_key(mem)
            if key is None:
                self.rest.append(i)
            else:
                self.exact.setdefault(key, []).append(i)


def _member_key(mem: IpsetMember) -> tuple[object, ...] | None:
    key: list[object] = []
    for part in mem.parts:
        if isinstance(part, SetPort):
            key.append((part.proto, part.port))
        elif isinstance(part, str) or part.prefixlen != part.max_prefixlen:
            return None
        else:
            key.append(part.network_address)
    return tuple(key)


_INDEXES: dict[int, tuple[IpsetSet, _SetIndex]] = {}  # by id(set); the set is kept so its id stays its own


def _candidates(s: IpsetSet, values: list[object]) -> list[IpsetMember]:
    if len(s.members) < 16:
        return list(s.members)
    held = _INDEXES.get(id(s))
    if held is None or held[0] is not s:
        held = _INDEXES[id(s)] = (s, _SetIndex(s))
    index = held[1]
    # A port element without a protocol (bitmap:port) matches every protocol: try both keys.
    keys: list[tuple[object, ...]] = [()]
    for v in values:
        if isinstance(v, tuple):
            keys = [(*k, p) for k in keys for p in {v, (None, v[1])}]
        else:
            keys = [(*k, v) for k in keys]
    hits = [i for k in keys for i in index.exact.get(k, ())]
    return [s.members[i] for i in sorted({*hits, *index.rest})]


def _packet_port(pkt: Packet, src: bool, ctx: MatchContext) -> tuple[str, int | None] | Unknown:
    if pkt.proto in _PORT_PROTOS:
        port = pkt.sport if src else pkt.dport
        if port is None:
            return Unknown(f"the flow has no {'source' if src else 'destination'} port and an ipset tests it"
                           + (" (pass --sport)" if src else ""))
        return pkt.proto, port
    if pkt.proto in ("icmp", "icmp6"):
        ctx.assumptions.append("an ICMP flow is an echo request")
        return ("icmp" if pkt.proto == "icmp" else "icmpv6"), (128 << 8 if pkt.proto == "icmp6" else 8 << 8)
    return pkt.proto, 0  # protocols without ports match `proto:0`


class _UnknownPort:
    """A port the flow does not give (a reply's destination port without --sport)."""

    def __init__(self, proto: str, why: Unknown) -> None:
        self.proto = proto
        self.why = why


def _member_matches(s: IpsetSet, mem: IpsetMember, values: list[object]) -> bool | Unknown:
    pending: Unknown | None = None
    for part, value in zip(mem.parts, values):
        if isinstance(part, str):
            return Unknown(f"ipset '{s.name}' element '{mem.text}' at {mem.source}: '{part}' is not modelled")
        if isinstance(value, _UnknownPort):
            if not isinstance(part, SetPort) or (part.proto is not None and part.proto != value.proto):
                return False
            pending = value.why  # matches only if the port is the element's: not known
            continue
        if isinstance(part, SetPort):
            assert isinstance(value, tuple)
            proto, port = value
            if part.proto is not None and part.proto != proto:
                return False
            if part.port != port:
                return False
            continue
        if getattr(value, "version", None) != part.version or value not in part:
            return False
    return pending if pending is not None else True


