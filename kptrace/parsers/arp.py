"""Parse `arp -n` and `arp -a` / `arp -na` (net-tools) into Neighbors.

Forms accepted:

    Address                  HWtype  HWaddress           Flags Mask            Iface     header (`arp -n`)
    10.244.1.5               ether   da:ef:07:04:db:cc   C                     cni0
    10.244.2.0               ether   5a:f0:83:27:c4:9e   CM                    flannel.1
    10.244.1.77                      (incomplete)                              cni0
    ? (10.244.1.5) at da:ef:07:04:db:cc [ether] on cni0                           `arp -a` / `arp -na`
    ? (10.244.2.0) at 5a:f0:83:27:c4:9e [ether] PERM on flannel.1
    gateway (192.168.56.1) at 0a:00:27:00:00:00 [ether] on eth0                   a resolved name is dropped
    ? (10.244.1.77) at <incomplete> on cni0
    arp: in 4 entries no match found.                                             footer, ignored

`arp` shows `C` (complete) without the kernel's NUD state (REACHABLE, STALE, …): such entries get
state None. `M`/`PERM` is PERMANENT; `(incomplete)` is INCOMPLETE. `arp -n` cuts a long
address column; a host name in the Address column (arp without -n) is refused: it is not resolved.
"""

from __future__ import annotations

import re
from ipaddress import ip_address

from kptrace.errors import ParseError
from kptrace.model.routing import Neighbor
from kptrace.model.source import Source

HEADER_RE = re.compile(r"^\s*Address\s+HWtype\s+HWaddress\s+Flags\s+Mask\s+Iface\s*$")
BSD_RE = re.compile(r"^\s*(\S+) \(([^)\s]+)\) at (\S+)(?: \[(\w+)\])?((?: [A-Z]+)*) on (\S+)\s*$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")
_FOOTER_RE = re.compile(r"^\s*(arp: |Entries: |no match found)")


def parse_arp(text: str, file: str = "arp.txt", errors: list[ParseError] | None = None,
              first_line: int = 1) -> list[Neighbor]:
    out: list[Neighbor] = []
    for n, raw in enumerate(text.split("\n")):
        lineno = first_line + n
        line = raw.rstrip("\r")
        if not line.strip() or HEADER_RE.match(line) or _FOOTER_RE.match(line):
            continue
        try:
            out.append(_entry(line, lineno, file))
        except ParseError as e:
            if errors is None:
                raise
            errors.append(e)
    return out


def _entry(line: str, lineno: int, file: str) -> Neighbor:
    src = Source(file, lineno, 1, line)
    m = BSD_RE.match(line)
    if m:
        addr, mac, flags, dev = m.group(2), m.group(3), m.group(5).split(), m.group(6)
        dst = _addr(addr, line.find("(") + 2, file, lineno, line)
        if mac == "<incomplete>":
            return Neighbor(dst, dev, None, "INCOMPLETE", source=src)
        _mac(mac, line.find(" at ") + 5, file, lineno, line)
        return Neighbor(dst, dev, mac.lower(), "PERMANENT" if "PERM" in flags else None, source=src)
    words = [(w.group(), w.start() + 1) for w in re.finditer(r"\S+", line)]
    if len(words) >= 3 and words[1][0] == "(incomplete)":
        return Neighbor(_addr(words[0][0], 1, file, lineno, line), words[-1][0], None, "INCOMPLETE", source=src)
    if len(words) not in (4, 5, 6):
        raise ParseError(file, lineno, 1, "expected 'Address HWtype HWaddress Flags [Mask] Iface' or "
                                          "'? (ADDRESS) at MAC [ether] on IFACE'", line)
    dst = _addr(words[0][0], words[0][1], file, lineno, line)
    mac, mcol = words[2]
    _mac(mac, mcol, file, lineno, line)
    flags = words[3][0] if len(words) >= 5 else ""
    return Neighbor(dst, words[-1][0], mac.lower(), "PERMANENT" if "M" in flags else None, source=src)


def _addr(text: str, col: int, file: str, lineno: int, line: str):  # type: ignore[no-untyped-def]
    try:
        return ip_address(text)
    except ValueError:
        raise ParseError(file, lineno, col, f"'{text}' is not an address (a name? run arp -n)", line) from None


def _mac(text: str, col: int, file: str, lineno: int, line: str) -> None:
    if not MAC_RE.match(text):
        raise ParseError(file, lineno, col, f"'{text}' is not a MAC address", line)
