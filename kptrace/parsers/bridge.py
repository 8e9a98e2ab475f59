"""Parse the bridge's forwarding database and ports: `bridge fdb show`, `bridge link show`,
`bridge -d link show` (text and `bridge -j`), `brctl show` and `brctl showmacs BR`.

Forms accepted:

    5a:f0:83:27:c4:9e dev flannel.1 dst 192.168.56.12 self permanent      bridge fdb show
    9e:41:c7:2d:80:1a dev cni0 master cni0 permanent
    da:ef:07:04:db:cc dev veth44184a66 master cni0                          learned (no state word)
    33:33:00:00:00:01 dev eth0 vlan 1 self permanent
    [{"mac":"5a:f0:83:27:c4:9e","ifname":"flannel.1","dst":"192.168.56.12","flags":["self"],"state":"permanent"}]

    5: veth44184a66@eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 master cni0 state forwarding priority 32 cost 2
        hairpin on guard off root_block off fastleave off learning on flood on …   `bridge -d link show`
    [{"ifindex":5,"link":"eth0","ifname":"veth44184a66","master":"cni0","state":"forwarding","hairpin":true}]

    bridge name  bridge id          STP enabled  interfaces               brctl show (tab-separated)
    cni0         8000.9e41c72d801a  no           veth3a7a0273
                                                 veth44184a66             continuation: one more port

    port no  mac addr           is local?  ageing timer                 brctl showmacs cni0 (tabs)
      1      52:32:f1:e1:c7:ae  yes           0.00

FdbEntry.flags are the entry's flags as printed (self, master, router, extern_learn, offload,
sticky) followed by its state (permanent, static, stale; none for a learned entry).
`brctl showmacs` prints port numbers, not names, and not the bridge: pass `port_names` (e.g.
from `port_no` in `ip -d link`) and `bridge`, or the entry's dev is `port N` and master None.
Its "is local? yes" is the entry `bridge fdb` shows as `permanent`, so it becomes that flag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from kptrace.errors import ParseError
from kptrace.model.routing import BridgePort, FdbEntry
from kptrace.model.source import Source
from kptrace.parsers.ip_link import HEADER_RE
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

MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
FDB_FLAGS = frozenset({"self", "router", "extern_learn", "offload", "sticky", "locked", "master"})
FDB_STATES = frozenset({"permanent", "static", "stale"})
# Words followed by one value that the model has no field for; read and dropped.
FDB_SKIPPED = frozenset({"port", "vni", "src_vni", "via", "nhid", "link-netnsid", "used", "expires"})


# ---------------------------------------------------------------------------------------------
# bridge fdb show


def parse_bridge_fdb(text: str, file: str = "bridge-fdb.txt") -> list[FdbEntry]:
    if is_json(text):
        return json_each(text, file, "bridge -j fdb show", _json_fdb)
    out: list[FdbEntry] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        toks = tokens(line)
        if toks:
            out.append(_text_fdb(toks, file, lineno, line))
    return out


def _text_fdb(toks: list[Tok], file: str, lineno: int, line: str) -> FdbEntry:
    if not MAC_RE.match(toks[0].text):
        raise ParseError(file, lineno, toks[0].col, f"expected a MAC address, got '{toks[0].text}'", line)
    values: dict[str, Tok] = {}
    flags: list[str] = []
    i = 1
    while i < len(toks):
        word = toks[i].text
        nxt = toks[i + 1].text if i + 1 < len(toks) else None
        # `master cni0` names the bridge; a bare `master` (NTF_MASTER) is a flag.
        if word == "master" and (nxt is None or nxt in FDB_FLAGS or nxt in FDB_STATES):
            flags.append(word)
        elif word in ("dev", "dst", "vlan", "master") or word in FDB_SKIPPED:
            if nxt is None:
                raise ParseError(file, lineno, toks[i].col, f"'{word}' needs a value", line)
            values[word] = toks[i + 1]
            i += 1
        elif word in FDB_FLAGS or word in FDB_STATES:
            flags.append(word)
        i += 1
    if "dev" not in values:
        raise ParseError(file, lineno, 1, "no 'dev': capture `bridge fdb show` without a device filter", line)
    dst, vlan = values.get("dst"), values.get("vlan")
    return FdbEntry(
        mac=toks[0].text.lower(),
        dev=values["dev"].text,
        master=values["master"].text if "master" in values else None,
        dst=tok_addr(dst, file, lineno, line) if dst else None,
        vlan=tok_int(vlan, file, lineno, line) if vlan else None,
        flags=tuple(flags),
        source=Source(file, lineno, 1, line),
    )


def _json_fdb(i: int, e: dict[str, Any], src: Source) -> FdbEntry:
    mac, dev = jstr(e, "mac", src), jstr(e, "ifname", src)
    if mac is None or dev is None:
        raise ParseError(src.file, src.line, src.col, f"entry [{i}] needs 'mac' and 'ifname'", src.text)
    state = jstr(e, "state", src)
    return FdbEntry(
        mac=mac.lower(),
        dev=dev,
        master=jstr(e, "master", src),
        dst=jaddr(e, "dst", src),
        vlan=jint(e, "vlan", src),
        flags=tuple(jwords(e, "flags", src)) + ((state,) if state else ()),
        source=src,
    )


# ---------------------------------------------------------------------------------------------
# bridge link show / bridge -d link show


def parse_bridge_link(text: str, file: str = "bridge-link.txt") -> list[BridgePort]:
    if is_json(text):
        ports = iter(json_each(text, file, "bridge -j link show", lambda _, e, src: _json_port(e, src)))
        return [p for p in ports if p is not None]
    out: list[BridgePort] = []
    draft: tuple[str, dict[str, str], Source] | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        toks = tokens(line)
        if not toks:
            continue
        if line[0] not in " \t":
            _flush(draft, out)
            m = HEADER_RE.match(line)
            if not m:
                raise ParseError(file, lineno, 1, "expected 'N: name: <FLAGS> … master BR …'", line)
            draft = (m.group(2), {}, Source(file, lineno, 1, line))
        elif draft is None:
            raise ParseError(file, lineno, toks[0].col, "continuation line before any port", line)
        _port_words(toks, draft[1], file, lineno, line)
    _flush(draft, out)
    return out


def _port_words(toks: list[Tok], into: dict[str, str], file: str, lineno: int, line: str) -> None:
    for i, t in enumerate(toks):
        if t.text in ("master", "state", "hairpin") and t.text not in into:
            if i + 1 >= len(toks):
                raise ParseError(file, lineno, t.col, f"'{t.text}' needs a value", line)
            into[t.text] = toks[i + 1].text


def _flush(draft: tuple[str, dict[str, str], Source] | None, out: list[BridgePort]) -> None:
    if draft is None:
        return
    name, words, src = draft
    if "master" not in words:
        return  # not a port: `bridge link` can list a bridge itself (vlan filtering, `self`)
    hairpin = words.get("hairpin")
    out.append(BridgePort(name, words["master"], words.get("state"), None if hairpin is None else hairpin == "on", src))


def _json_port(e: dict[str, Any], src: Source) -> BridgePort | None:
    name, master = jstr(e, "ifname", src), jstr(e, "master", src)
    if name is None or master is None:
        return None
    hairpin = e.get("hairpin")
    if hairpin is not None and not isinstance(hairpin, bool):
        raise ParseError(src.file, src.line, src.col, "'hairpin' should be true or false", src.text)
    return BridgePort(name, master, jstr(e, "state", src), hairpin, src)


# ---------------------------------------------------------------------------------------------
# brctl show / brctl showmacs


def parse_brctl_show(text: str, file: str = "brctl-show.txt") -> list[BridgePort]:
    out: list[BridgePort] = []
    bridge: str | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        toks = tokens(line)
        if not toks or line.startswith("bridge name"):
            continue
        if line[0] not in " \t":
            if len(toks) < 3:
                raise ParseError(file, lineno, 1, "expected 'bridge-name bridge-id stp-enabled [interface]'", line)
            bridge = toks[0].text
            ports = toks[3:]
        elif bridge is None:
            raise ParseError(file, lineno, toks[0].col, "interface line before any bridge", line)
        else:
            ports = toks
        out.extend(BridgePort(t.text, bridge, None, None, Source(file, lineno, t.col, line)) for t in ports)
    return out


def parse_brctl_showmacs(
    text: str, file: str = "brctl-showmacs.txt", bridge: str | None = None, port_names: Mapping[int, str] | None = None
) -> list[FdbEntry]:
    names = port_names or {}
    out: list[FdbEntry] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        toks = tokens(line)
        if not toks or line.startswith("port no"):
            continue
        if len(toks) < 3 or not MAC_RE.match(toks[1].text) or toks[2].text not in ("yes", "no"):
            raise ParseError(file, lineno, 1, "expected 'port-no mac is-local ageing-timer'", line)
        port = tok_int(toks[0], file, lineno, line)
        out.append(
            FdbEntry(
                mac=toks[1].text.lower(),
                dev=names.get(port, f"port {port}"),
                master=bridge,
                flags=("permanent",) if toks[2].text == "yes" else (),
                source=Source(file, lineno, 1, line),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# bridge ports as `ip -d link` shows them


def ports_of_ip_link(text: str, file: str = "ip-link.txt") -> list[BridgePort]:
    """The bridge ports `ip -d link show` (text or `ip -j -d link`) describes, with their hairpin mode:

        5: veth44184a66@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue master cni0 state UP …
            bridge_slave state forwarding priority 32 cost 2 hairpin on guard off …
        [{"ifname":"veth44184a66","master":"cni0","linkinfo":{"info_slave_kind":"bridge",
          "info_slave_data":{"state":"forwarding","hairpin":true}}}]

    Only ports whose `bridge_slave` data is shown (`-d`); a listing without it says nothing of hairpin."""
    out: list[BridgePort] = []
    if is_json(text):
        import json

        try:
            doc = json.loads(text)
        except ValueError:
            return []
        for i, e in enumerate(doc if isinstance(doc, list) else []):
            info = e.get("linkinfo") if isinstance(e, dict) else None
            if not isinstance(info, dict) or info.get("info_slave_kind") != "bridge":
                continue
            data = info.get("info_slave_data")
            name, master = e.get("ifname"), e.get("master")
            if not isinstance(data, dict) or not isinstance(name, str) or not isinstance(master, str):
                continue
            hairpin = data.get("hairpin")
            state = data.get("state")
            out.append(BridgePort(name, master, state if isinstance(state, str) else None,
                                  hairpin if isinstance(hairpin, bool) else None, Source(file, 1, 1, name)))
        return out
    name = master = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        m = HEADER_RE.match(line)
        if m:
            name = m.group(2)
            mm = re.search(r"\smaster\s+(\S+)", m.group(5))
            master = mm.group(1) if mm else None
            continue
        words = line.split()
        if name is None or master is None or not words or words[0] != "bridge_slave":
            continue
        hp = words[words.index("hairpin") + 1] if "hairpin" in words[:-1] else None
        st = words[words.index("state") + 1] if "state" in words[:-1] else None
        out.append(BridgePort(name, master, st, None if hp not in ("on", "off") else hp == "on",
                              Source(file, lineno, line.index("bridge_slave") + 1, line.strip())))
    return out
