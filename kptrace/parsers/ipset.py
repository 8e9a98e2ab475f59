"""Parse `ipset save` or `ipset list` output into IpsetSets, each member parsed per dimension.

Forms accepted (ipset 6.x and 7.x; both commands print the same element syntax):

    create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x…   ipset save
    add KUBE-CLUSTER-IP 10.96.0.10,udp:53
    add KUBE-LOOP-BACK 10.244.1.12,tcp:8080,10.244.1.12
    add ALLOW 10.0.0.0/8 timeout 299 packets 5 bytes 300 comment "kept verbatim"
    add EXCEPT 10.1.0.0/16 nomatch
    create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
    add KUBE-NODE-PORT-TCP 30080
    Name: KUBE-CLUSTER-IP                                        ipset list (a block per set)
    Type: hash:ip,port
    Revision: 7
    Header: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x…
    Size in memory: 264
    References: 2
    Number of entries: 1                                          (ipset 7; absent in 6.x)
    Members:                                                      (absent with `ipset list -t`)
    10.96.0.10,udp:53

Dimensions kptrace evaluates: ip, net, port. Others (mac, iface, mark, and the member sets of
list:set) are kept as their text. Element ports are `proto:port` (`icmp:echo-request` for ICMP
type/code, `gre:0` for protocols without ports); bitmap:port elements are bare numbers.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Network, IPv6Network, ip_network

from kptrace.errors import ParseError
from kptrace.model.ipvs import IPNetwork, IpsetMember, IpsetSet, SetPort
from kptrace.model.source import Source
from kptrace.parsers.numbers import is_num

# Header words that stand alone; every other known one takes one value.
_HEADER_FLAGS = {"counters", "comment", "skbinfo", "forceadd", "nomatch"}
_HEADER_VALUES = {"family", "hashsize", "maxelem", "bucketsize", "initval", "timeout", "netmask", "range", "size",
                  "markmask", "probes", "resize", "bitmask"}
_MEMBER_VALUES = {"timeout", "packets", "bytes", "comment", "skbmark", "skbprio", "skbqueue"}
_TOKEN_RE = re.compile(r'"[^"]*"|\S+')
_PORT_PROTOS = {"tcp", "udp", "sctp", "udplite"}
# ipset's ICMP names (lib/icmp.c, lib/icmpv6.c): name -> (type, code).
ICMP_NAMES = {
    "echo-reply": (0, 0), "network-unreachable": (3, 0), "host-unreachable": (3, 1), "protocol-unreachable": (3, 2),
    "port-unreachable": (3, 3), "fragmentation-needed": (3, 4), "source-route-failed": (3, 5),
    "network-unknown": (3, 6), "host-unknown": (3, 7), "network-prohibited": (3, 9), "host-prohibited": (3, 10),
    "TOS-network-unreachable": (3, 11), "TOS-host-unreachable": (3, 12), "communication-prohibited": (3, 13),
    "host-precedence-violation": (3, 14), "precedence-cutoff": (3, 15), "source-quench": (4, 0),
    "network-redirect": (5, 0), "host-redirect": (5, 1), "TOS-network-redirect": (5, 2), "TOS-host-redirect": (5, 3),
    "echo-request": (8, 0), "router-advertisement": (9, 0), "router-solicitation": (10, 0),
    "ttl-zero-during-transit": (11, 0), "ttl-zero-during-reassembly": (11, 1), "ip-header-bad": (12, 0),
    "required-option-missing": (12, 1), "timestamp-request": (13, 0), "timestamp-reply": (14, 0),
    "address-mask-request": (17, 0), "address-mask-reply": (18, 0),
}
ICMPV6_NAMES = {
    "no-route": (1, 0), "communication-prohibited": (1, 1), "address-unreachable": (1, 3), "port-unreachable": (1, 4),
    "packet-too-big": (2, 0), "ttl-zero-during-transit": (3, 0), "ttl-zero-during-reassembly": (3, 1),
    "bad-header": (4, 0), "unknown-header-type": (4, 1), "unknown-option": (4, 2),
    "echo-request": (128, 0), "echo-reply": (129, 0),
}
_ICMP6_PROTOS = {"ipv6-icmp", "icmpv6", "icmp6"}


def parse_ipset(text: str, file: str = "ipset-save.txt") -> dict[str, IpsetSet]:
    """`ipset save` or `ipset list` output, told apart by its first meaningful line."""
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        return parse_ipset_list(text, file) if s.startswith("Name:") else parse_ipset_save(text, file)
    return {}


def parse_ipset_save(text: str, file: str = "ipset-save.txt") -> dict[str, IpsetSet]:
    sets: dict[str, IpsetSet] = {}
    members: dict[str, list[IpsetMember]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        src = Source(file, lineno, 1, line)
        if words[0] == "create":
            if len(words) < 3:
                raise ParseError(file, lineno, len(line) + 1, "expected 'create NAME TYPE [options]'", line)
            name, stype = words[1], words[2]
            if name in sets:
                raise ParseError(file, lineno, line.find(name) + 1, f"set '{name}' is created twice", line)
            opts = _header(words[3:], file, lineno, line)
            sets[name] = IpsetSet(name, stype, src, _family(stype, opts), options=opts)
            members[name] = []
        elif words[0] == "add":
            if len(words) < 3:
                raise ParseError(file, lineno, len(line) + 1, "expected 'add NAME ELEMENT [options]'", line)
            name = words[1]
            if name not in sets:
                raise ParseError(file, lineno, line.find(name) + 1, f"'add' to set '{name}' before its 'create'", line)
            rest = line[line.find(name, line.find("add") + 3) + len(name):]
            col = len(line) - len(rest) + 1
            members[name].append(_member(sets[name], rest, src, col))
        else:
            raise ParseError(file, lineno, 1, f"unknown ipset save command '{words[0]}' (expected create or add)", line)
    return {n: _with_members(s, members[n]) for n, s in sets.items()}


def parse_ipset_list(text: str, file: str = "ipset-list.txt") -> dict[str, IpsetSet]:
    sets: dict[str, IpsetSet] = {}
    block: dict[str, object] = {}  # the fields of the set being read
    members: list[IpsetMember] = []
    current: IpsetSet | None = None  # made once Type/Header are read, to parse members against
    in_members = False

    def finish() -> None:
        if block:
            s = current or _list_set(block, file)
            sets[s.name] = _with_members(s, members, listed=bool(block.get("listed")))

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        src = Source(file, lineno, 1, line)
        if not line.strip():
            in_members = False
            continue
        if in_members and not line.startswith("Name: "):
            if current is None:
                current = _list_set(block, file)
            members.append(_member(current, " " + line, src, 0))
            continue
        key, sep, value = line.partition(":")
        value = value.strip()
        if key == "Name" and sep:
            finish()
            if not value:
                raise ParseError(file, lineno, len(line) + 1, "a set name after 'Name:'", line)
            block, members, current, in_members = {"name": value, "src": src}, [], None, False
            continue
        if not block:
            raise ParseError(file, lineno, 1, "expected 'Name: SET' to start an ipset list block", line)
        if key == "Type" and sep:
            block["type"] = value
        elif key == "Header" and sep:
            block["header"] = _header(value.split(), file, lineno, line)
        elif key in ("Revision", "References", "Number of entries", "Size in memory") and sep:
            if not is_num(value):
                raise ParseError(file, lineno, len(key) + 3, f"'{key}:' takes a number", line)
            block[key] = int(value)
        elif key == "Members" and sep and not value:
            block["listed"] = True
            in_members = True
            current = _list_set(block, file)
        else:
            raise ParseError(file, lineno, 1, f"unexpected line in the block of set '{block['name']}'", line)
    finish()
    return sets


def _list_set(block: dict[str, object], file: str) -> IpsetSet:
    src = block["src"]
    assert isinstance(src, Source)
    if "type" not in block:
        raise ParseError(file, src.line, 1, f"set '{block['name']}' has no 'Type:' line", src.text)
    stype = str(block["type"])
    opts = block.get("header", ())
    assert isinstance(opts, tuple)

    def num(key: str) -> int | None:
        v = block.get(key)
        return v if isinstance(v, int) else None

    return IpsetSet(str(block["name"]), stype, src, _family(stype, opts), options=opts, revision=num("Revision"),
                    references=num("References"), entries=num("Number of entries"))


def _with_members(s: IpsetSet, members: list[IpsetMember], listed: bool = True) -> IpsetSet:
    from dataclasses import replace

    return replace(s, members=tuple(members), members_listed=listed)


def _header(words: list[str], file: str, lineno: int, line: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in _HEADER_FLAGS:
            out.append((w, ""))
            i += 1
        elif w in _HEADER_VALUES:
            if i + 1 >= len(words):
                raise ParseError(file, lineno, len(line) + 1, f"'{w}' needs a value", line)
            out.append((w, words[i + 1]))
            i += 2
        elif i + 1 < len(words) and re.fullmatch(r"(0x)?[0-9a-fA-F./:-]+", words[i + 1]):
            # An option of a newer ipset: kept with its value, never dropped.
            out.append((w, words[i + 1]))
            i += 2
        else:
            out.append((w, ""))
            i += 1
    return tuple(out)


def _family(stype: str, opts: tuple[tuple[str, str], ...]) -> int | None:
    fam = dict(opts).get("family")
    if fam == "inet6":
        return 6
    if fam == "inet" or stype.startswith("hash:"):
        return 4  # hash types default to inet
    if stype == "bitmap:ip" or stype == "bitmap:ip,mac":
        return 4  # bitmap:ip is IPv4 only
    return None


def _member(s: IpsetSet, rest: str, src: Source, col0: int) -> IpsetMember:
    line = src.text
    tokens = [(m.group(0), m.start()) for m in _TOKEN_RE.finditer(rest)]
    if not tokens:
        raise ParseError(src.file, src.line, len(line) + 1, f"an element of set '{s.name}'", line)
    elem, epos = tokens[0]
    col = col0 + epos
    parts = _parts(s, elem, src, max(col, 1))
    kw: dict[str, object] = {}
    opts: list[tuple[str, str]] = []
    i = 1
    while i < len(tokens):
        w, pos = tokens[i]
        if w == "nomatch":
            kw["nomatch"] = True
            i += 1
            continue
        if w not in _MEMBER_VALUES:
            raise ParseError(src.file, src.line, max(col0 + pos, 1), f"unknown element option '{w}'", line)
        if i + 1 >= len(tokens):
            raise ParseError(src.file, src.line, len(line) + 1, f"'{w}' needs a value", line)
        v = tokens[i + 1][0]
        if w in ("timeout", "packets", "bytes"):
            if not is_num(v) or len(v) > 20:
                raise ParseError(src.file, src.line, max(col0 + tokens[i + 1][1], 1), f"'{w}' takes a number", line)
            kw[w] = int(v)
        elif w == "comment":
            kw["comment"] = v[1:-1] if len(v) >= 2 and v.startswith('"') and v.endswith('"') else v
        else:
            opts.append((w, v))
        i += 2
    return IpsetMember(elem, src, parts, options=tuple(opts), **kw)  # type: ignore[arg-type]


def _parts(s: IpsetSet, elem: str, src: Source, col: int) -> tuple[IPNetwork | SetPort | str, ...]:
    dims = s.dimensions
    if s.type == "list:set":
        return (elem,)
    values = elem.split(",")
    if len(values) != len(dims):
        raise ParseError(src.file, src.line, col, f"element '{elem}' does not have the {len(dims)} parts of {s.type}",
                         src.text)
    out: list[IPNetwork | SetPort | str] = []
    for dim, v in zip(dims, values):
        if dim in ("ip", "net"):
            out.append(_net(s, dim, v, src, col))
        elif dim == "port":
            out.append(_port(s, v, src, col))
        else:
            out.append(v)  # mac, iface, mark: kept, not evaluated
    return tuple(out)


def _net(s: IpsetSet, dim: str, v: str, src: Source, col: int) -> IPNetwork:
    try:
        net: IPv4Network | IPv6Network = ip_network(v, strict=False)
    except ValueError:
        raise ParseError(src.file, src.line, col, f"'{v}' is not an address or network ({s.type})", src.text) from None
    if s.family is not None and net.version != s.family:
        raise ParseError(src.file, src.line, col, f"'{v}' is not an IPv{s.family} address (set family)", src.text)
    mask = s.option("netmask")
    if dim == "ip" and mask and is_num(mask) and "/" not in v:
        # hash:ip netmask N stores (and prints) the network address; a packet matches the whole network.
        net = ip_network(f"{net.network_address}/{mask}", strict=False)
    return net


def _port(s: IpsetSet, v: str, src: Source, col: int) -> SetPort | str:
    proto, sep, port = v.rpartition(":")
    if not sep:
        proto, port = "", v
    if not proto:
        if is_num(port):
            # bitmap:port stores no protocol; `ipset add` defaults a bare hash port to tcp.
            return SetPort(None if s.type == "bitmap:port" else "tcp", int(port), v)
        raise ParseError(src.file, src.line, col, f"'{v}' is not a port", src.text)
    proto = proto.lower()
    if proto == "icmp" or proto in _ICMP6_PROTOS:
        names = ICMP_NAMES if proto == "icmp" else ICMPV6_NAMES
        norm = "icmp" if proto == "icmp" else "icmpv6"
        if port in names:
            t, c = names[port]
            return SetPort(norm, t << 8 | c, v)
        m = re.fullmatch(r"([0-9]{1,20})/([0-9]{1,20})", port)
        if m:
            return SetPort(norm, int(m.group(1)) << 8 | int(m.group(2)), v)
        return v  # an ICMP name kptrace does not know: kept, evaluated as unknown
    if is_num(port):
        return SetPort(proto, int(port), v)
    return v  # a service name (ipset prints numbers; a hand-written dump may not)
