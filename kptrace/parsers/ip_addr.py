"""Parse `ip addr` (text) and `ip -j addr` (JSON) into Address entries.

Forms accepted:

    2: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP group default qlen 1000
        inet 192.168.56.11/24 brd 192.168.56.255 scope global eth0
        inet6 fe80::1/64 scope link
    [{"ifindex": 2, "ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.168.56.11", "prefixlen": 24, "scope": "global"}]}]
"""

from __future__ import annotations

import json
import re
from ipaddress import ip_interface

from kptrace.errors import ParseError
from kptrace.model.routing import Link
from kptrace.parsers.json_limits import recursion_message, too_deep
from kptrace.model.node import Address
from kptrace.model.source import Source

_LINK_RE = re.compile(r"^([0-9]{1,20}):\s+([^:@\s]+)(?:@\S+)?:\s+<")
_ADDR_RE = re.compile(r"^\s+(inet6?)\s+(\S+)(.*)$")


def parse_ip_addr(text: str, file: str = "ip-addr.txt") -> list[Address]:
    if text.lstrip().startswith("["):
        return _parse_json(text, file)
    out: list[Address] = []
    iface: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        m = _LINK_RE.match(line)
        if m:
            iface = m.group(2)
            continue
        m = _ADDR_RE.match(line)
        if not m:
            continue
        if iface is None:
            raise ParseError(file, lineno, 1, "address line before any interface line", line)
        try:
            addr = ip_interface(m.group(2))
        except ValueError:
            raise ParseError(file, lineno, line.find(m.group(2)) + 1, f"invalid address '{m.group(2)}'", line) from None
        scope = re.search(r"scope (\S+)", m.group(3))
        out.append(Address(iface, addr, Source(file, lineno, 1, line), scope.group(1) if scope else "global"))
    return out


def _parse_json(text: str, file: str) -> list[Address]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(file, e.lineno, e.colno, f"invalid JSON: {e.msg}") from None
    except (ValueError, RecursionError) as e:  # a number of thousands of digits, absurd nesting
        raise ParseError(file, 1, 1, recursion_message(e)) from None
    if not isinstance(data, list):
        raise ParseError(file, 1, 1, "expected the list that `ip -j addr` prints")
    deep = too_deep(data)
    if deep:
        raise ParseError(file, 1, 1, deep)
    out: list[Address] = []
    for i, link in enumerate(data):
        if not isinstance(link, dict):
            raise ParseError(file, 1, 1, f"entry [{i}] is not an object")
        name = str(link.get("ifname", "?"))
        infos = link.get("addr_info", []) or []
        if not isinstance(infos, list):
            raise ParseError(file, 1, 1, f"entry [{i}]: addr_info is not a list")
        for j, a in enumerate(infos):
            if not isinstance(a, dict) or "local" not in a or "prefixlen" not in a:
                continue
            try:
                addr = ip_interface(f"{a['local']}/{a['prefixlen']}")
            except ValueError:
                raise ParseError(file, 1, 1, f"[{i}].addr_info[{j}]: invalid address '{a.get('local')}'") from None
            # JSON has no lines; cite the entry's path so the finding still points somewhere exact.
            src = Source(file, 1, 1, f"[{i}].addr_info[{j}] {name} {addr}")
            out.append(Address(name, addr, src, str(a.get("scope", "global"))))
    return out


def links_of_ip_addr(text: str, file: str) -> list[Link]:
    """The devices `ip addr` shows (name, MAC, MTU, state, flags), as links without kind or bridge: that is
    `ip -d link`'s to say. A VTEP's MAC from `ip addr show flannel.1` is what a peer's neighbour entry needs."""
    from dataclasses import replace

    from kptrace.parsers.ip_link import parse_ip_link

    if text.lstrip().startswith("["):
        return []
    # Address lines blanked, not removed: every device line keeps its line number.
    heads = "\n".join("" if ln.lstrip().startswith(("inet", "valid_lft", "altname")) else ln for ln in text.split("\n"))
    try:
        return [replace(lk, kind=None, vxlan=None) for lk in parse_ip_link(heads, file)]
    except ParseError:
        return []  # what `ip addr` says of addresses was read; its device lines are only a bonus
