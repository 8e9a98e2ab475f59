"""Parse `sysctl -a` output (or a subset of it) into settings.

Forms accepted:

    net.ipv4.ip_forward = 1
    net.bridge.bridge-nf-call-iptables=0
    # comments and blank lines
"""

from __future__ import annotations

from kptrace.errors import ParseError
from kptrace.model.node import Setting
from kptrace.model.source import Source


def parse_sysctl(text: str, file: str = "sysctl.txt") -> dict[str, Setting]:
    out: dict[str, Setting] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if "=" not in s:
            if s.startswith("sysctl: "):
                continue  # permission notes sysctl -a prints for unreadable keys
            raise ParseError(file, lineno, 1, "expected 'key = value'", line)
        key, _, value = s.partition("=")
        key = key.strip()
        out[key] = Setting(value.strip(), Source(file, lineno, 1, line))
    return out
