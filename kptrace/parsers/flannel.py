"""Parse flannel's `/run/flannel/subnet.env` into a FlannelSubnet.

Forms accepted (one per line, as flanneld writes them):

    FLANNEL_NETWORK=10.244.0.0/16        the cluster's pod network
    FLANNEL_SUBNET=10.244.1.1/24         this node's pod subnet, written with the bridge's address
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=true
    FLANNEL_IPV6_NETWORK=fd00:244::/56   other keys (IPv6, …) are read past
    # comments and blank lines

A missing key is None. The FlannelSubnet cites the FLANNEL_SUBNET line (or line 1 without one):
that is the value checks compare with cni0 and the routes.
"""

from __future__ import annotations

import re
from ipaddress import ip_network

from kptrace.errors import ParseError
from kptrace.model.netfilter import IPNetwork
from kptrace.model.routing import FlannelSubnet
from kptrace.model.source import Source

_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
# Go's strconv.ParseBool, which flanneld's readers use.
_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def parse_flannel_subnet(text: str, file: str = "flannel-subnet.env") -> FlannelSubnet:
    values: dict[str, tuple[str, int, int, str]] = {}  # key -> (value, line, col, raw line)
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LINE_RE.match(line)
        if not m:
            raise ParseError(file, lineno, 1, "expected KEY=value", line)
        values[m.group(1)] = (_unquote(m.group(2).strip()), lineno, m.start(2) + 1, line)
    cited = values.get("FLANNEL_SUBNET")
    first = text.splitlines()[0].rstrip("\r") if text.strip() else ""
    return FlannelSubnet(
        network=_net(values.get("FLANNEL_NETWORK"), file),
        subnet=_net(cited, file),
        mtu=_mtu(values.get("FLANNEL_MTU"), file),
        ipmasq=_bool(values.get("FLANNEL_IPMASQ"), file),
        source=Source(file, cited[1], 1, cited[3]) if cited else Source(file, 1, 1, first),
    )


def _unquote(v: str) -> str:
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"" else v


def _net(v: tuple[str, int, int, str] | None, file: str) -> IPNetwork | None:
    if v is None or not v[0]:
        return None
    try:
        return ip_network(v[0], strict=False)  # FLANNEL_SUBNET carries host bits (10.244.1.1/24)
    except ValueError:
        raise ParseError(file, v[1], v[2], f"invalid network '{v[0]}'", v[3]) from None


def _mtu(v: tuple[str, int, int, str] | None, file: str) -> int | None:
    if v is None or not v[0]:
        return None
    if not re.fullmatch(r"[0-9]{1,20}", v[0]):
        raise ParseError(file, v[1], v[2], f"invalid MTU '{v[0]}'", v[3])
    return int(v[0])


def _bool(v: tuple[str, int, int, str] | None, file: str) -> bool | None:
    if v is None or not v[0]:
        return None
    if v[0] not in _BOOLS:
        raise ParseError(file, v[1], v[2], f"expected true or false, got '{v[0]}'", v[3])
    return _BOOLS[v[0]]
