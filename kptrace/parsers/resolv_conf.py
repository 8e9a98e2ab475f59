"""Parse /etc/resolv.conf into a ResolvConf.

Forms accepted:

    nameserver 10.96.0.10
    search default.svc.cluster.local svc.cluster.local cluster.local
    domain cluster.local
    options ndots:5 timeout:2
    sortlist 130.155.160.0/255.255.240.0
    # comments and ; comments

`whose` says whose file it is when the command that printed it said (`kubectl exec busybox cat
/etc/resolv.conf` is the pod's, not the node's).
"""

from __future__ import annotations

from kptrace.errors import ParseError
from kptrace.model.observed import ResolvConf
from kptrace.model.source import Source

DIRECTIVES = frozenset({"nameserver", "search", "domain", "options", "sortlist"})


def parse_resolv_conf(text: str, file: str = "resolv.conf", whose: str | None = None) -> list[ResolvConf]:
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    first: Source | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] not in DIRECTIVES or len(words) < 2:
            raise ParseError(file, lineno, 1, "expected a resolv.conf directive (nameserver, search, domain, options)", line)
        first = first or Source(file, lineno, 1, line)
        if words[0] == "nameserver":
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            search[:] = words[1:]  # the last search or domain line wins (resolv.conf(5))
        elif words[0] == "options":
            options.extend(words[1:])
    if first is None:
        return []
    return [ResolvConf(tuple(servers), tuple(search), tuple(options), first, whose)]
