"""Parse `route -n` / `netstat -rn` (net-tools) into Routes of the main table.

Forms accepted:

    Kernel IP routing table                                                  title (IPv4)
    Destination     Gateway         Genmask         Flags Metric Ref    Use Iface
    0.0.0.0         192.168.56.1    0.0.0.0         UG    100    0        0 eth0
    10.244.2.0      10.244.2.0      255.255.255.0   UG    0      0        0 flannel.1
    10.99.0.0       0.0.0.0         255.255.0.0     !     0      -        0 -       reject route
    Destination     Gateway         Genmask         Flags   MSS Window  irtt Iface     `netstat -rn` columns
    default         _gateway        0.0.0.0         UG    100    0        0 eth0       `route` without -n
    Kernel IPv6 routing table                                                title (IPv6, `route -n -A inet6`)
    Destination                    Next Hop                   Flag Met Ref Use If
    fd00::/64                      ::                         U    256 1     0 eth0

What the format loses, stated rather than guessed: `route` shows the main table only (no local
table, no policy rules), and no `src`, `proto` or `scope`; without `-n` a destination or gateway
may be a name (`default` and `*` are exact; any other name is kept unknown on the route, so a
lookup that picks it is UNDETERMINED). A reject route (`!`) may be unreachable, prohibit or
blackhole: kept as unknown. IPv6 entries flagged `n` belong to other tables (local, or the
catch-all `!n` entries); they are listed in the result but marked unknown. A route on no
interface (`*`) is how net-tools prints a blackhole route: kept as unknown.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network

from kptrace.errors import ParseError
from kptrace.model.routing import Nexthop, Route
from kptrace.model.source import Source

TITLE_RE = re.compile(r"^\s*Kernel IP(v6)? routing table\s*$")
HEADER_RE = re.compile(r"^\s*Destination\s+(Gateway\s+Genmask|Next Hop)\s+Flags?\s+(.*)$")
_KNOWN_FLAGS = set("UGHDMAC")


def parse_route_n(text: str, file: str = "route-n.txt", errors: list[ParseError] | None = None,
                  first_line: int = 1) -> list[Route]:
    """Routes of `route -n`; a malformed line raises ParseError, or is appended to `errors` when given."""
    out: list[Route] = []
    cols: list[str] | None = None
    v6 = False
    for n, raw in enumerate(text.split("\n")):
        lineno = first_line + n
        line = raw.rstrip("\r")
        s = line.strip()
        if not s:
            continue
        t = TITLE_RE.match(s)
        if t:
            v6, cols = bool(t.group(1)), None
            continue
        h = HEADER_RE.match(s)
        if h:
            v6 = h.group(1).startswith("Next")
            cols = ["Destination", "Next Hop" if v6 else "Gateway"] + ([] if v6 else ["Genmask"]) + \
                ["Flags"] + h.group(2).split()
            continue
        try:
            if cols is None:
                raise ParseError(file, lineno, 1, "a route before the 'Destination Gateway Genmask ...' header", line)
            out.append(_route(line, lineno, file, cols, v6))
        except ParseError as e:
            if errors is None:
                raise
            errors.append(e)
    return out


def _route(line: str, lineno: int, file: str, cols: list[str], v6: bool) -> Route:
    words = [(m.group(), m.start() + 1) for m in re.finditer(r"\S+", line)]
    if len(words) != len(cols):
        raise ParseError(file, lineno, 1, f"expected {len(cols)} columns ({' '.join(cols)}), got {len(words)}", line)
    f = {c: w for c, w in zip(cols, words)}
    unknown: list[str] = []
    dst_w, dcol = f["Destination"]
    gw_w, gcol = f["Next Hop" if v6 else "Gateway"]
    flags = f.get("Flags", f.get("Flag", ("", 1)))[0]
    if v6:
        try:
            dst = ip_network(dst_w, strict=False)
        except ValueError:
            raise ParseError(file, lineno, dcol, f"invalid IPv6 destination '{dst_w}'", line) from None
    else:
        mask_w, mcol = f["Genmask"]
        dst = _v4_dest(dst_w, mask_w, file, lineno, dcol, mcol, line)
    gateway = None
    if gw_w not in ("0.0.0.0", "*", "::", "-"):
        try:
            gateway = ip_address(gw_w)
        except ValueError:
            unknown.append(f"gateway '{gw_w}' is shown as a name (route without -n)")
    iface_w = (f.get("Iface") or f.get("If") or ("-", 1))[0]
    metric_w = (f.get("Metric") or f.get("Met") or ("0", 1))[0]
    metric = int(metric_w) if re.fullmatch(r"-?[0-9]{1,10}", metric_w) else 0
    route_type = "unicast"
    odd = set(flags) - _KNOWN_FLAGS
    if "!" in flags:
        route_type = "unreachable"
        unknown.append("reject route ('!'): route -n does not say whether it is unreachable, prohibit or blackhole")
    if "n" in flags and v6:
        unknown.append("flag 'n': an entry of another routing table (local or a catch-all) that route -A inet6 mixes in")
    elif odd - {"!"}:
        unknown.append(f"flags '{''.join(sorted(odd - {'!'}))}' are not modelled")
    dev = None if iface_w in ("-", "*") else iface_w
    if iface_w == "*" and "!" not in flags:
        # net-tools prints a blackhole route as an up route on no interface.
        unknown.append("no interface ('*'): a blackhole route, or one route -n cannot place")
    hops = (Nexthop(gateway, dev),) if route_type == "unicast" else ()
    return Route(dst=dst, table="main", type=route_type, nexthops=hops, metric=max(metric, 0),
                 source=Source(file, lineno, 1, line), unknown=tuple(unknown))


def _v4_dest(dst_w: str, mask_w: str, file: str, lineno: int, dcol: int, mcol: int, line: str) -> IPv4Network:
    addr = "0.0.0.0" if dst_w == "default" else dst_w
    try:
        IPv4Address(addr)
    except ValueError:
        raise ParseError(file, lineno, dcol, f"destination '{dst_w}' is not an address (a name? run route -n)",
                         line) from None
    try:
        return IPv4Network(f"{addr}/{mask_w}", strict=False)
    except ValueError:
        raise ParseError(file, lineno, mcol, f"invalid netmask '{mask_w}'", line) from None
