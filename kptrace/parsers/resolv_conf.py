"""Parse /etc/resolv.conf (resolv.conf(5), as glibc reads it) into a ResolvConf.

Forms accepted:

    nameserver 10.96.0.10
    nameserver fe80::1%eth0                       an IPv6 address, with its zone
    search default.svc.cluster.local svc.cluster.local cluster.local
    domain cluster.local                          the last `search` or `domain` line wins
    options ndots:5 timeout:2 attempts:2 rotate   options add up, line after line
    sortlist 130.155.160.0/255.255.240.0
    # comments and ; comments

Every nameserver is kept (glibc uses only the first 3, kubelet drops the rest: KPT602 says so), each
with the line it was read from. A line that is not one of these, a nameserver that is not an address
and an option value that is not a number are ParseErrors at their `file:line:col`; glibc skips such a
line, so the loader reports it (KPT001) and reads the others.

`whose` says whose file it is when the command that printed it said (`kubectl exec busybox cat
/etc/resolv.conf` is the pod's, not the node's); `path` which file it is (/etc/resolv.conf,
/run/systemd/resolve/resolv.conf) when the bundle name or the command says.
"""

from __future__ import annotations

import re
from ipaddress import ip_address

from kptrace.errors import ParseError
from kptrace.model.observed import ResolvConf
from kptrace.model.source import Source

DIRECTIVES = frozenset({"nameserver", "search", "domain", "options", "sortlist"})
# glibc's options taking a number (resolv/res_init.c); the others are flags.
NUMERIC_OPTIONS = frozenset({"ndots", "timeout", "attempts"})
_WORD_RE = re.compile(r"\S+")


def parse_resolv_conf(text: str, file: str = "resolv.conf", whose: str | None = None, path: str | None = None,
                      empty_ok: bool = False) -> list[ResolvConf]:
    """The file's settings: one ResolvConf, or none when the text holds no directive (unless `empty_ok`:
    a node's file that says nothing is a file without nameservers, which glibc reads as 127.0.0.1)."""
    servers: list[tuple[str, Source]] = []
    search: tuple[str, ...] = ()
    search_source: Source | None = None
    options: list[tuple[str, Source]] = []
    first: Source | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        words = [(m.group(0), m.start() + 1) for m in _WORD_RE.finditer(line)]
        if not words or words[0][0].startswith(("#", ";")):
            continue
        key, col = words[0]
        src = Source(file, lineno, col, line)
        if key not in DIRECTIVES:
            raise ParseError(file, lineno, col, f"'{key[:40]}' is not a resolv.conf directive (nameserver, search, "
                                                f"domain, options, sortlist)", line)
        if len(words) < 2:
            raise ParseError(file, lineno, col + len(key), f"'{key}' without a value", line)
        first = first or src
        if key == "nameserver":
            value, vcol = words[1]
            try:
                ip_address(value.split("%", 1)[0])
            except ValueError:
                raise ParseError(file, lineno, vcol, f"nameserver '{value[:60]}' is not an IP address (glibc skips "
                                                     f"this line)", line) from None
            servers.append((value, src))
        elif key in ("search", "domain"):
            # The last search or domain line wins (resolv.conf(5)); `domain` takes one name.
            # systemd-resolved writes `search .` for "no search domain": the root is no domain to append.
            search = tuple(w for w, _ in (words[1:] if key == "search" else words[1:2]) if w != ".")
            search_source = src
        elif key == "options":
            for opt, ocol in words[1:]:
                name, sep, value = opt.partition(":")
                if name in NUMERIC_OPTIONS and (not sep or not value.isascii() or not value.isdigit() or len(value) > 6):
                    raise ParseError(file, lineno, ocol + len(name) + len(sep),
                                     f"option '{opt[:40]}': {name} takes a number ({name}:N)", line)
                options.append((opt, src))
    if first is None:
        if not empty_ok:
            return []
        first = Source(file, 1, 1, text.splitlines()[0] if text.splitlines() else "")
    return [ResolvConf(tuple(s for s, _ in servers), search, tuple(o for o, _ in options), first, whose, path,
                       tuple(src for _, src in servers), search_source, tuple(src for _, src in options))]


def option_value(rc: ResolvConf, name: str) -> tuple[int, Source | None] | None:
    """A numeric option's value as glibc takes it (the last one given wins), with the line that set it."""
    found: tuple[int, Source | None] | None = None
    for i, opt in enumerate(rc.options):
        key, sep, value = opt.partition(":")
        if key == name and sep and value.isdigit():
            found = (int(value), rc.options_sources[i] if i < len(rc.options_sources) else None)
    return found
