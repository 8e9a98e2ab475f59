"""Parse `ip link` / `ip -d link` (text) and `ip -j -d link` (JSON) into Links.

Forms accepted (text):

    2: eth0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000
        link/ether 08:00:27:8a:41:11 brd ff:ff:ff:ff:ff:ff link-netnsid 0
    5: veth44184a66@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue master cni0 state UP …
        link/ether 52:32:f1:e1:c7:ae brd ff:ff:ff:ff:ff:ff link-netns kpt-fx-pod-a promiscuity 1 …
        veth                                                    `-d`: the kind, then its data
        bridge_slave state forwarding priority 32 cost 2 hairpin on …    `-d`: the port's data
    3: flannel.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN …
        vxlan id 1 local 192.168.56.11 dev eth0 srcport 0 0 dstport 8472 nolearning ttl auto …
    4: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 …
        bridge forward_delay 1500 hello_time 200 …
    20: down0@down1: <NO-CARRIER,BROADCAST,MULTICAST,UP,M-DOWN> … state LOWERLAYERDOWN …   peer here
        altname enp0s3                                          ignored

JSON (`ip -j -d link`):

    [{"ifindex":2,"link_index":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,
      "operstate":"UP","link_type":"ether","address":"08:00:27:8a:41:11","link_netnsid":0,"linkinfo":{"info_kind":"veth"}},
     {"ifindex":3,"ifname":"flannel.1",…,"linkinfo":{"info_kind":"vxlan","info_data":{"id":1,"local":"192.168.56.11","link":"eth0","port":8472}}}]

`peer` is what follows `@`: `if2` (an ifindex in the peer's namespace) or a name in this one.
`mac` is set for `link/ether` devices only. Without `-d` there is no kind and no vxlan data.
"""

from __future__ import annotations

import re
from typing import Any

from kptrace.errors import ParseError
from kptrace.model.routing import Link, Vxlan
from kptrace.model.source import Source
from kptrace.parsers.ip_route import (
    Tok,
    is_json,
    jaddr,
    jint,
    json_each,
    jstr,
    jwords,
    tok_addr,
    tok_int,
    tokens,
)

# `2: eth0@if2: <FLAGS> rest`; a name never holds ':', '/' or whitespace (dev_valid_name).
HEADER_RE = re.compile(r"^([0-9]{1,10}):\s+([^\s:@]+)(?:@([^\s:]+))?:\s+<([^>]*)>(.*)$")
# First words of continuation lines that are not a kind (`ip -d` prints the kind first).
NOT_A_KIND = frozenset({"altname", "alias", "vf", "prop", "addrgenmode", "inet", "inet6"})
KIND_RE = re.compile(r"^[a-z][a-z0-9_]*$")  # not `RX:` or the numbers `ip -s link` adds
DEFAULT_VXLAN_PORT = 8472  # what Linux uses when no dstport is given


def parse_ip_link(text: str, file: str = "ip-link.txt") -> list[Link]:
    if is_json(text):
        return json_each(text, file, "ip -j -d link", _json_link)
    out: list[Link] = []
    current: _Draft | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line[0] not in " \t":
            if current is not None:
                out.append(current.finish())
            current = _Draft.start(line, file, lineno)
            continue
        if current is None:
            raise ParseError(file, lineno, 1, "continuation line before any link", line)
        current.add(tokens(line), file, lineno, line)
    if current is not None:
        out.append(current.finish())
    return out


class _Draft:
    """One link while its continuation lines are read."""

    def __init__(self, fields: dict[str, Any], source: Source) -> None:
        self.fields = fields
        self.source = source
        self.kind_seen = False

    @classmethod
    def start(cls, line: str, file: str, lineno: int) -> _Draft:
        m = HEADER_RE.match(line)
        if not m:
            raise ParseError(file, lineno, 1, "expected 'N: name: <FLAGS> …'", line)
        rest = tokens(line)
        offset = m.start(5)
        words = [Tok(t.text, t.col) for t in rest if t.col > offset]
        values = _pairs(words, {"mtu", "master", "state", "qdisc", "mode", "group", "qlen"}, file, lineno, line)
        fields: dict[str, Any] = {
            "name": m.group(2),
            "index": int(m.group(1)),
            "peer": m.group(3),
            "flags": tuple(f for f in m.group(4).split(",") if f),
            "master": values["master"].text if "master" in values else None,
            "mtu": tok_int(values["mtu"], file, lineno, line) if "mtu" in values else None,
            "state": values["state"].text if "state" in values else None,
        }
        return cls(fields, Source(file, lineno, 1, line))

    def add(self, toks: list[Tok], file: str, lineno: int, line: str) -> None:
        first = toks[0].text
        if first.startswith("link/"):
            values = _pairs(toks[1:], {"link-netnsid", "link-netns"}, file, lineno, line)
            if first == "link/ether" and len(toks) > 1:
                self.fields["mac"] = toks[1].text
            if "link-netnsid" in values:
                self.fields["netns_id"] = tok_int(values["link-netnsid"], file, lineno, line)
            if "link-netns" in values:
                self.fields["netns"] = values["link-netns"].text
            return
        if first in NOT_A_KIND or first.endswith("_slave") or not KIND_RE.match(first) or self.kind_seen:
            return
        self.kind_seen = True
        self.fields["kind"] = first
        if first == "vxlan":
            self.fields["vxlan"] = _text_vxlan(toks[1:], file, lineno, line)

    def finish(self) -> Link:
        return Link(source=self.source, **self.fields)


def _pairs(toks: list[Tok], keys: set[str], file: str, lineno: int, line: str) -> dict[str, Tok]:
    """The value after each of `keys`; other words are skipped (the link line has dozens)."""
    out: dict[str, Tok] = {}
    for i, t in enumerate(toks):
        if t.text in keys and t.text not in out:
            if i + 1 >= len(toks):
                raise ParseError(file, lineno, t.col, f"'{t.text}' needs a value", line)
            out[t.text] = toks[i + 1]
    return out


def _text_vxlan(toks: list[Tok], file: str, lineno: int, line: str) -> Vxlan | None:
    v = _pairs(toks, {"id", "local", "dev", "dstport"}, file, lineno, line)
    if "id" not in v:
        return None  # no VNI shown: the vxlan details are unknown, not defaulted
    return Vxlan(
        vni=tok_int(v["id"], file, lineno, line),
        local=tok_addr(v["local"], file, lineno, line) if "local" in v else None,
        dev=v["dev"].text if "dev" in v else None,
        dstport=tok_int(v["dstport"], file, lineno, line) if "dstport" in v else DEFAULT_VXLAN_PORT,
    )


def _json_link(i: int, e: dict[str, Any], src: Source) -> Link:
    name = jstr(e, "ifname", src)
    if name is None:
        raise ParseError(src.file, src.line, src.col, f"entry [{i}] has no 'ifname'", src.text)
    info = e.get("linkinfo")
    if info is not None and not isinstance(info, dict):
        raise ParseError(src.file, src.line, src.col, "'linkinfo' should be an object", src.text)
    kind = jstr(info, "info_kind", src) if info else None
    # Text prints `@ifN` when the peer is in another namespace and its name when it is here.
    peer = jstr(e, "link", src)
    link_index = jint(e, "link_index", src)
    if peer is None and link_index is not None:
        peer = f"if{link_index}"
    return Link(
        name=name,
        index=jint(e, "ifindex", src),
        kind=kind,
        master=jstr(e, "master", src),
        mtu=jint(e, "mtu", src),
        state=jstr(e, "operstate", src),
        flags=tuple(jwords(e, "flags", src)),
        mac=jstr(e, "address", src) if e.get("link_type") == "ether" else None,
        peer=peer,
        vxlan=_json_vxlan(info, src) if info and kind == "vxlan" else None,
        netns_id=jint(e, "link_netnsid", src),
        source=src,
        netns=jstr(e, "link_netns", src),
    )


def _json_vxlan(info: dict[str, Any], src: Source) -> Vxlan | None:
    data = info.get("info_data")
    if not isinstance(data, dict) or "id" not in data:
        return None
    vni = jint(data, "id", src)
    if vni is None:
        return None
    port = jint(data, "port", src)
    return Vxlan(
        vni=vni,
        local=jaddr(data, "local", src) or jaddr(data, "local6", src),
        dev=jstr(data, "link", src),
        dstport=port if port is not None else DEFAULT_VXLAN_PORT,
    )
