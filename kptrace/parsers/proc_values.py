"""Parse values read from files under /proc and /sys into SysValues.

Forms accepted:

    /proc/sys/net/ipv4/ip_forward = 1                       `for f in …; do echo "$f = $(cat $f)"; done`
    /sys/devices/virtual/net/cni0/brif/veth4bfbfe74/hairpin_mode = 0
    /proc/sys/net/ipv4/conf/all/rp_filter:1                 `grep . /proc/sys/net/ipv4/conf/*/rp_filter`
    1                                                       `cat /proc/sys/net/ipv4/ip_forward` (the path is the command's)

A bare value needs the path from the command that printed it (`path`); with a glob path
(`for i in /sys/…/brif/*; do cat $i/hairpin_mode; done`) each value keeps the glob: which file it
came from is not in the input.
"""

from __future__ import annotations

import re

from kptrace.errors import ParseError
from kptrace.model.observed import SysValue
from kptrace.model.source import Source

PATH_LINE_RE = re.compile(r"^(/(?:proc|sys)/[^\s=]+?)(?:\s*=\s*|:)(\S.*)?$")


def parse_proc_values(text: str, file: str = "proc.txt", path: str | None = None) -> list[SysValue]:
    out: list[SysValue] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        s = line.strip()
        if not s:
            continue
        src = Source(file, lineno, 1, line)
        if s.startswith(("/proc/", "/sys/")):
            if " = " in s:
                p, _, v = s.partition(" = ")
            elif "=" in s:
                p, _, v = s.partition("=")
            else:
                p, _, v = s.rpartition(":")
            if not p or not v.strip():
                raise ParseError(file, lineno, 1, "expected 'PATH = value' or 'PATH:value'", line)
            out.append(SysValue(p.strip(), v.strip(), src))
        elif path is not None and re.fullmatch(r"-?[\w.:/-]{1,64}|[0-9]{1,20}(\s+[0-9]{1,20}){1,7}", s):
            out.append(SysValue(path, s, src))
        else:
            raise ParseError(file, lineno, 1, "a value without the file it was read from", line)
    return out


def sysctl_path(key: str) -> str:
    """/proc/sys/net/ipv4/conf/flannel.1/rp_filter for net.ipv4.conf.flannel/1.rp_filter."""
    return "/proc/sys/" + "/".join(p.replace("/", ".") for p in key.split("."))


# /sys/devices/virtual/net/cni0/brif/veth1/hairpin_mode, /sys/class/net/cni0/brif/veth1/hairpin_mode
BRIF_RE = re.compile(r"^/sys/(?:devices/virtual/net|class/net)/([^/\s*?]+)/brif/([^/\s*?]+)/(hairpin_mode|state)$")
# /sys/class/net/veth1/brport/hairpin_mode: the port's own directory (its bridge is not in the path)
BRPORT_RE = re.compile(r"^/sys/(?:devices/virtual/net|class/net)/([^/\s*?]+)/brport/(hairpin_mode|state)$")
