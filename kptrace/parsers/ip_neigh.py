"""Parse `ip neigh` (text) and `ip -j neigh` (JSON) into Neighbors.

Forms accepted (text):

    10.244.2.0 dev flannel.1 lladdr 5a:f0:83:27:c4:9e PERMANENT      flannel's static VTEP entry
    10.244.1.5 dev cni0 lladdr da:ef:07:04:db:cc REACHABLE
    fd00:56::1 dev eth0 lladdr 0a:00:27:00:00:00 router STALE
    10.244.1.77 dev cni0 FAILED                                       no lladdr
    10.244.1.5 dev cni0 lladdr da:ef:07:04:db:cc used 10/10/7 probes 1 STALE   `ip -s neigh`

JSON (`ip -j neigh`):

    [{"dst":"10.244.2.0","dev":"flannel.1","lladdr":"5a:f0:83:27:c4:9e","state":["PERMANENT"]},
     {"dst":"fd00:56::1","dev":"eth0","lladdr":"0a:00:27:00:00:00","router":null,"state":["STALE"]}]

`ip neigh show dev X` leaves out `dev`; such a dump is refused (the device is not guessed).
Several NUD states on one entry are joined with ','.
"""

from __future__ import annotations

import re
from typing import Any

from kptrace.errors import ParseError
from kptrace.model.routing import Neighbor
from kptrace.model.source import Source
from kptrace.parsers.ip_route import (
    Tok,
    is_json,
    jaddr,
    json_each,
    jstr,
    jwords,
    tok_addr,
    tokens,
)

ONE_VALUE = frozenset({"dev", "lladdr", "used", "probes", "vlan", "vni", "port", "protocol"})
STATE_RE = re.compile(r"^[A-Z_]+$")  # NUD states print in capitals: PERMANENT REACHABLE STALE …


def parse_ip_neigh(text: str, file: str = "ip-neigh.txt") -> list[Neighbor]:
    if is_json(text):
        return json_each(text, file, "ip -j neigh", _json_neigh)
    out: list[Neighbor] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        toks = tokens(line)
        if toks:
            out.append(_text_neigh(toks, file, lineno, line))
    return out


def _text_neigh(toks: list[Tok], file: str, lineno: int, line: str) -> Neighbor:
    dst = tok_addr(toks[0], file, lineno, line)
    values: dict[str, Tok] = {}
    states: list[str] = []
    router = False
    i = 1
    while i < len(toks):
        word = toks[i].text
        if word in ONE_VALUE:
            if i + 1 >= len(toks):
                raise ParseError(file, lineno, toks[i].col, f"'{word}' needs a value", line)
            values[word] = toks[i + 1]
            i += 1
        elif word == "router":
            router = True
        elif STATE_RE.match(word):
            states.append(word)
        # Other flags (proxy, extern_learn, offload, managed) do not change the next hop.
        i += 1
    if "dev" not in values:
        raise ParseError(file, lineno, 1, "no 'dev': capture `ip neigh show` without a device filter", line)
    return Neighbor(
        dst=dst,
        dev=values["dev"].text,
        lladdr=values["lladdr"].text if "lladdr" in values else None,
        state=",".join(states) or None,
        router=router,
        source=Source(file, lineno, 1, line),
    )


def _json_neigh(i: int, e: dict[str, Any], src: Source) -> Neighbor:
    dst = jaddr(e, "dst", src)
    dev = jstr(e, "dev", src)
    if dst is None or dev is None:
        raise ParseError(src.file, src.line, src.col, f"entry [{i}] needs 'dst' and 'dev'", src.text)
    return Neighbor(
        dst=dst,
        dev=dev,
        lladdr=jstr(e, "lladdr", src),
        state=",".join(jwords(e, "state", src)) or None,
        router="router" in e,  # printed as "router": null
        source=src,
    )
