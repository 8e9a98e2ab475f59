"""Parse `/proc/modules` or `lsmod` output into the loaded KernelModules.

Forms accepted:

    br_netfilter 32768 0 - Live 0x0000000000000000                 /proc/modules
    nf_nat 61440 4 xt_nat,xt_MASQUERADE,nft_chain_nat, Live 0x0000000000000000
    Module                  Size  Used by                          lsmod header, skipped
    vxlan                 118784  0
    bridge                421888  1 br_netfilter

Only loaded modules are listed: a feature built into the kernel (CONFIG_BRIDGE=y, see
/lib/modules/$(uname -r)/modules.builtin) is absent here and still present.
"""

from __future__ import annotations

import re

from kptrace.errors import ParseError
from kptrace.model.routing import KernelModule
from kptrace.model.source import Source

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_modules(text: str, file: str = "modules.txt") -> list[KernelModule]:
    out: list[KernelModule] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        words = line.split()
        if not words or (words[0] == "Module" and "Size" in words):
            continue
        if not _NAME_RE.match(words[0]):
            raise ParseError(file, lineno, 1, f"invalid module name '{words[0]}'", line)
        if len(words) < 2 or not re.fullmatch(r"[0-9]{1,20}", words[1]):
            col = line.find(words[1], line.find(words[0]) + len(words[0])) + 1 if len(words) > 1 else len(line) + 1
            raise ParseError(file, lineno, col, "expected 'name size …' (the size is a number)", line)
        out.append(KernelModule(words[0], Source(file, lineno, 1, line)))
    return out
