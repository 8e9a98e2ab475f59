"""Replace public IP addresses and the node's host names in a bundle, consistently, so it can be shared.

Private, cluster and special ranges (RFC 1918, 100.64/10, loopback, link-local, ULA, documentation)
are kept: they are what a trace is about and say nothing about who runs the node. A public address
keeps its last 16 bits (IPv4) or its last 80 bits (IPv6) and gets a replacement prefix: the first
/16 seen becomes 240.0.0.0/16 (the reserved class E range, never on a real node), the next
240.1.0.0/16, and so on; IPv6 /48s become 2001:db8:N::/48. So the same address always maps to the
same replacement, and addresses in one /16 (or /48) stay in one replaced /16 (/48): prefixes of
those lengths or longer still contain the same hosts. The mapping lives only in this object; it is
written nowhere.
"""

from __future__ import annotations

import ipaddress
import re

_V4_RE = re.compile(r"(?<![\w.])([0-9]{1,3}(?:\.[0-9]{1,3}){3})(?![\w]|\.[0-9])")
_V6_RE = re.compile(r"(?<![\w:.])((?:[0-9A-Fa-f]{1,4}|:)?:(?:[0-9A-Fa-f]{0,4}:){1,7}(?:[0-9A-Fa-f]{1,4})?)(?![\w:]|\.\d)")
V4_BASE = int(ipaddress.IPv4Address("240.0.0.0"))
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))
MAX_V4 = 4096  # /16s in 240.0.0.0/4
MAX_V6 = 65536  # /48s in 2001:db8::/32
# Past MAX_V4 - 2 public /16s (a full BGP table on the node), the others share one replacement /16, 255.254.0.0/16
# (255.255.0.0/16 holds the broadcast address): still consistent and never an original address, but no longer
# one replacement per address. Likewise the last /48 of 2001:db8::/32.
SHARED_V4 = MAX_V4 - 2
SHARED_V6 = MAX_V6 - 1
GENERIC_WORDS = frozenset({"localhost", "localhost.localdomain", "filter", "nat", "mangle", "raw", "security",
                           "local", "main", "default", "all", "node", "host", "master", "bridge", "inet", "link"})


class Redactor:
    def __init__(self, hostnames: list[str] | None = None) -> None:
        self._v4: dict[int, int] = {}  # public /16 (top 16 bits) -> replacement index
        self._v6: dict[int, int] = {}  # public /48 (top 48 bits) -> replacement index
        self._names: dict[str, str] = {}  # every host name (an FQDN and its first label) -> its replacement
        self._hosts: dict[str, str] = {}  # those of them replaced inside the dumps' text too
        self.unreplaceable = False  # a host name is too short or too common a word to replace in text
        self.crowded: list[str] = []  # said when addresses of too many public networks share one replacement
        self.replaced = 0
        for h in hostnames or []:
            self.add_hostname(h)

    def add_hostname(self, name: str) -> None:
        """A host name to hide; an FQDN also hides its first label (the same host, the same replacement)."""
        full = name.strip().rstrip(".").lower()
        short = full.split(".", 1)[0]
        if not full or full in self._names:
            return
        repl = self._names.get(short) or f"redacted-host-{len(set(self._names.values())) + 1}"
        for n in (full, short):
            if not n:
                continue
            self._names[n] = repl
            # A name that is also a word of the dumps (a table, a route table) would break them.
            if len(n) >= 3 and n not in GENERIC_WORDS:
                self._hosts[n] = repl
            else:
                self.unreplaceable = True

    def host(self, name: str) -> str:
        """The replacement for a whole host-name value (the bundle's file name, node.yaml's `name`, the
        manifest): always replaced, even a name too short or too common to replace inside the dumps."""
        self.add_hostname(name)
        full = name.strip().rstrip(".").lower()
        return self._names.get(full) or self._names.get(full.split(".", 1)[0]) or "redacted-host"

    def address(self, text: str) -> str:
        """The replacement for one address (unchanged when it is not public)."""
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return text
        if not ip.is_global or (ip.version == 6 and ip.ipv4_mapped is not None):
            return text
        value = int(ip)
        if ip.version == 4:
            top = value >> 16
            idx = self._v4.setdefault(top, min(len(self._v4), SHARED_V4))
            if idx == SHARED_V4 and not any(c.startswith("IPv4") for c in self.crowded):
                self.crowded.append(f"IPv4 addresses of more than {SHARED_V4} public /16 networks: the others share "
                                    f"255.254.0.0/16 (two of their addresses may then look alike)")
            return str(ipaddress.IPv4Address(V4_BASE + (idx << 16) + (value & 0xFFFF)))
        top = value >> 80
        idx = self._v6.setdefault(top, min(len(self._v6), SHARED_V6))
        if idx == SHARED_V6 and not any(c.startswith("IPv6") for c in self.crowded):
            self.crowded.append(f"IPv6 addresses of more than {SHARED_V6} public /48 networks: the others share "
                                f"2001:db8:ffff::/48 (two of their addresses may then look alike)")
        return str(ipaddress.IPv6Address(V6_BASE + (idx << 80) + (value & ((1 << 80) - 1))))

    def text(self, text: str) -> str:
        def v6(m: re.Match[str]) -> str:
            new = self.address(m.group(1))
            if new != m.group(1):
                self.replaced += 1
            return new

        def v4(m: re.Match[str]) -> str:
            new = self.address(m.group(1))
            if new != m.group(1):
                self.replaced += 1
            return new

        out = _V6_RE.sub(v6, text) if ":" in text else text
        out = _V4_RE.sub(v4, out)
        if self._hosts:
            # Longest first, so an FQDN is replaced whole before its first label.
            names = sorted(self._hosts, key=len, reverse=True)
            rx = re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in names) + r")(?![\w-])", re.IGNORECASE)
            out = rx.sub(lambda m: self._hosts[m.group(1).lower()], out)
        return out

    def data(self, data: bytes) -> bytes:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return data  # not text: kptrace does not read it either
        return self.text(text).encode("utf-8")
