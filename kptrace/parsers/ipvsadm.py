"""Parse `ipvsadm` listings (and `ipvsadm-save` rules) into IPVS virtual services and real servers.

Forms accepted (ipvsadm 1.26 to 1.31; column layouts are ipvsadm.c's print_title/print_service_entry):

    IP Virtual Server version 1.2.1 (size=4096)                         -L / -Ln header
    Prot LocalAddress:Port Scheduler Flags                               title lines (any listing)
      -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
    TCP  10.96.0.1:443 rr                                                -Ln service
    UDP  10.96.0.10:53 wlc persistent 10800 mask 255.255.255.0 pe sip ops
    TCP  [fd00:96::1]:443 sh (sh-fallback,sh-port)
    FWM  100 wlc   /   FWM  100 IPv6 rr                                  firewall-mark services
      -> 192.168.56.10:6443           Masq    1      0          0        -Ln real server
    TCP  10.96.0.1:443                       5      120       80     9600     8000   --stats
      -> 10.244.1.5:8080                     5      120       80    1234K      12M   (scaled unless --exact)
    TCP  10.96.0.1:443                       0        2        1      160       80   --rate (CPS InPPS …)
      -> 10.244.1.5:8080              1          0          1          0             --persistent-conn
      -> 10.244.1.5:8080              0          0          0          0             --thresholds
      -> 10.0.0.5:0                   Tunnel  gue:6080,+c   1      0          0      --tun-info
    TCP  kubernetes.default.svc.clus rr                                  -L: names, cut at 33 / 28 chars
    -A -t 10.96.0.1:443 -s rr -p 10800 -M 255.255.255.0 --pe sip -o -b sh-port   -Sn / ipvsadm-save
    -a -t 10.96.0.1:443 -r 192.168.56.10:6443 -m -w 1
    -a -f 100 -r 10.0.0.5:0 -i -w 1 --tun-type gue --tun-port 6080 --tun-csum
    IPVS connection entries                                              -Lnc
    pro expire state       source             virtual            destination
    TCP 14:59  ESTABLISHED 10.244.1.5:40000   10.96.0.1:443      192.168.56.10:6443
    Timeout (tcp tcpfin udp): 900 120 300                                --timeout (kept as a note)

`ipvsadm -S` prints a Local real server with `-g`, so it reads back as Route (ipvsadm.c fwd_switch).
Names printed by `ipvsadm -L` (no -n) are kept as unresolved names, never looked up: the node's
/etc/hosts and /etc/services are not in the input. A service or real server with a name has
`address`/`port` None, and the table says so in `notes`.
"""

from __future__ import annotations

import re
import socket
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address

from kptrace.errors import ParseError
from kptrace.model.ipvs import (
    FORWARD_METHODS,
    FORWARD_SWITCHES,
    Counters,
    IpvsConnection,
    IpvsDest,
    IpvsService,
    IpvsTable,
)
from kptrace.model.source import Source
from kptrace.parsers.numbers import is_num

_PROTOS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_SAVE_PROTO = {"-t": "tcp", "--tcp-service": "tcp", "-u": "udp", "--udp-service": "udp", "--sctp-service": "sctp"}
_SCALE = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_NUM_RE = re.compile(r"^([0-9]{1,20})([KMGT]?)$")
_VERSION_RE = re.compile(r"^IP Virtual Server version (\S+) \(size=([0-9]{1,20})\)$")
_TITLES = {
    ("Forward", "Weight", "ActiveConn", "InActConn"): "list",
    ("Forward", "TunnelInfo", "Weight", "ActiveConn", "InActConn"): "tun-info",
    ("Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"): "stats",
    ("CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"): "rate",
    ("Uthreshold", "Lthreshold", "ActiveConn", "InActConn"): "thresholds",
    ("Weight", "PersistConn", "ActiveConn", "InActConn"): "persistent-conn",
}


def parse_ipvsadm(text: str, file: str = "ipvsadm.txt") -> IpvsTable:
    table = IpvsTable(file)
    layout = "list"  # from the title lines; a listing without them is read as -Ln
    services: list[IpvsService] = []
    dests: list[IpvsDest] = []
    conns = False
    names = 0

    def flush() -> None:
        if services and dests:
            services[-1] = replace(services[-1], dests=services[-1].dests + tuple(dests))
        dests.clear()

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        src = Source(file, lineno, 1, line)
        m = _VERSION_RE.match(s)
        if m:
            table.version, table.conn_table_size = m.group(1), int(m.group(2))
            continue
        if s.startswith("Prot LocalAddress:Port"):
            title = tuple(s.split()[2:])
            layout = _TITLES.get(title, "list") if title != ("Scheduler", "Flags") else layout
            continue
        if s.startswith("-> RemoteAddress:Port"):
            title = tuple(s.split()[2:])
            if title:
                layout = _TITLES.get(title, layout)
            continue
        if s == "IPVS connection entries":
            conns = True
            continue
        if conns and s.startswith("pro expire"):
            continue
        if s.startswith("Timeout (tcp tcpfin udp):") or re.match(r"^(master|backup) sync daemon", s):
            table.notes.append(f"{src}: {s}")
            continue
        if s.startswith(("-A ", "--add-service")):
            flush()
            svc = _save_service(s, src)
            services.append(svc)
            names += not svc.resolved
            continue
        if s.startswith(("-a ", "--add-server")):
            flush()
            d, key = _save_dest(s, src)
            target = next((i for i in range(len(services) - 1, -1, -1) if _key(services[i]) == key), None)
            if target is None:
                raise ParseError(file, lineno, 1, "real server for a virtual service not added before it (-A)", line)
            services[target] = replace(services[target], dests=services[target].dests + (d,))
            names += not d.resolved
            continue
        if s.startswith("->"):
            if not services:
                raise ParseError(file, lineno, 1, "real server line before any virtual service", line)
            d = _list_dest(s, src, layout)
            dests.append(d)
            names += not d.resolved
            continue
        words = s.split()
        # A connection line says it is one (an expiry in mm:ss), with or without the -Lnc title (`-lnc | grep`).
        if conns and words[0] in _PROTOS | {"IP": "ip"} or (len(words) >= 6 and re.match(r"[0-9]{1,20}:[0-9][0-9]$", words[1])):
            table.connections.append(_conn(words, src))
            continue
        if words[0] in _PROTOS or words[0] == "FWM":
            flush()
            svc = _list_service(line, src, layout)
            services.append(svc)
            names += not svc.resolved
            continue
        raise ParseError(file, lineno, 1, "not an ipvsadm line (service, '  -> ' real server, -A/-a rule or title)", line)
    flush()
    table.services = services
    if names:
        table.numeric = False
        table.notes.append(f"{file}: ipvsadm printed {names} host or service names (run without -n); kptrace does not resolve "
                           "them, so a service or real server named here is not matched against addresses")
    return table


def _key(svc: IpvsService) -> tuple[object, ...]:
    return (svc.fwmark, svc.family) if svc.fwmark is not None else (svc.protocol, svc.host, svc.port, svc.port_name)


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zeros: inet_aton reads them as octal
_V4_PORT = re.compile(rf"({_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}):([0-9]{{1,5}})")


def _hostport(text: str, src: Source, col: int,
              cut: bool = False) -> tuple[str, IPv4Address | IPv6Address | None, int | None, str | None, int]:
    """`10.0.0.1:80`, `[fd00::1]:80`, `name:http` -> (host, address|None, port|None, port name|None, family)."""
    m = _V4_PORT.fullmatch(text)
    if m is not None:
        # The common `-n` form, without ipaddress's per-octet parse (a 10k-service node lists 130k).
        host = m.group(1)
        return host, IPv4Address(int.from_bytes(socket.inet_aton(host), "big")), int(m.group(2)), None, 4
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            if not cut or not re.fullmatch(r"[A-Za-z0-9_.\-]+", text):
                raise ParseError(src.file, src.line, col, f"expected ADDRESS:PORT, got '{text}'", src.text)
            # ipvsadm cut a long name before its port: the host name (maybe cut too), no port.
            return text, None, None, None, 4
    addr: IPv4Address | IPv6Address | None
    try:
        addr = ip_address(host)
    except ValueError:
        addr = None
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", host or "?"):
            raise ParseError(src.file, src.line, col, f"'{host}' is neither an address nor a host name", src.text) from None
    family = addr.version if addr is not None else (6 if text.startswith("[") else 4)
    if is_num(port) and len(port) <= 5:
        return host, addr, int(port), None, family
    return host, addr, None, (port or None), family


def _num(word: str, src: Source, col: int) -> tuple[int, bool]:
    m = _NUM_RE.match(word)
    if not m or len(m.group(1)) > 20:
        raise ParseError(src.file, src.line, col, f"expected a number, got '{word}'", src.text)
    return int(m.group(1)) * _SCALE.get(m.group(2), 1), bool(m.group(2))


def _counters(words: list[str], src: Source) -> Counters:
    vals = []
    scaled = False
    for w in words:
        v, sc = _num(w, src, max(src.text.find(w), 0) + 1)
        vals.append(v)
        scaled |= sc
    c, ip, op, ib, ob = vals
    return Counters(c, ip, op, ib, ob, scaled=scaled)


def _list_service(line: str, src: Source, layout: str) -> IpvsService:
    words = line.split()
    def col(w: str) -> int:
        return max(line.find(w), 0) + 1
    if words[0] == "FWM":
        if len(words) < 2 or not is_num(words[1]):
            raise ParseError(src.file, src.line, col(words[0]) + 5, "expected 'FWM  MARK'", line)
        fam = 6 if len(words) > 2 and words[2] == "IPv6" else 4
        rest = words[3:] if fam == 6 else words[2:]
        base = IpvsService("fwmark", None, None, None, src, fwmark=int(words[1]), family=fam, listing=layout)
    else:
        if len(words) < 2:
            raise ParseError(src.file, src.line, len(line) + 1, "expected 'PROTO  ADDRESS:PORT'", line)
        host, addr, port, pname, fam = _hostport(words[1], src, col(words[1]), cut=True)
        # print_service_entry cuts "PROTO  name:port" at 33 characters (not for IPv6).
        shown = line[: line.find(words[1]) + len(words[1])]
        truncated = fam == 4 and addr is None and len(shown) >= 33
        base = IpvsService(_PROTOS[words[0]], host, port, None, src, address=addr, port_name=pname, family=fam,
                           truncated=truncated, listing=layout)
        rest = words[2:]
    if layout in ("stats", "rate"):
        if len(rest) != 5:
            raise ParseError(src.file, src.line, len(line) + 1, f"expected 5 {layout} columns", line)
        c = _counters(rest, src)
        return replace(base, stats=c) if layout == "stats" else replace(base, rate=c)
    if not rest:
        raise ParseError(src.file, src.line, len(line) + 1, "expected the scheduler after the service", line)
    kw: dict[str, object] = {"scheduler": rest[0]}
    i = 1
    while i < len(rest):
        w = rest[i]
        if w.startswith("(") and w.endswith(")"):
            kw["sched_flags"] = tuple(f for f in w[1:-1].split(",") if f)
            i += 1
        elif w in ("persistent", "mask", "pe") and i + 1 < len(rest):
            key = {"persistent": "persistent", "mask": "netmask", "pe": "pe"}[w]
            val = rest[i + 1]
            if key == "persistent":
                if not is_num(val):
                    raise ParseError(src.file, src.line, col(val), "persistent takes seconds", line)
                kw[key] = int(val)
            else:
                kw[key] = val
            i += 2
        elif w == "ops":
            kw["one_packet"] = True
            i += 1
        else:
            raise ParseError(src.file, src.line, col(w), f"unknown service flag '{w}'", line)
    return replace(base, **kw)  # type: ignore[arg-type]


def _list_dest(s: str, src: Source, layout: str) -> IpvsDest:
    line = src.text
    words = s.split()[1:]
    def col(w: str) -> int:
        return max(line.find(w), 0) + 1
    if not words:
        raise ParseError(src.file, src.line, len(line) + 1, "expected '-> ADDRESS:PORT …'", line)
    host, addr, port, pname, fam = _hostport(words[0], src, col(words[0]), cut=True)
    truncated = fam == 4 and addr is None and len(words[0]) >= 28  # dname[28] = '\0' in ipvsadm.c
    rest = words[1:]
    if layout == "list" and len(rest) == 4 and rest[0] in FORWARD_METHODS and (rest[1] + rest[2] + rest[3]).isascii() \
            and is_num(rest[1]) and is_num(rest[2]) and is_num(rest[3]):
        # The common `-Ln` line in one construction (a 10k-service node lists 100k+ of them).
        return IpvsDest(host, port, src, address=addr, port_name=pname, truncated=truncated, forward=rest[0],
                        weight=int(rest[1]), active_conns=int(rest[2]), inactive_conns=int(rest[3]))
    d = IpvsDest(host, port, src, address=addr, port_name=pname, truncated=truncated)
    expect = {"list": 4, "tun-info": 5, "stats": 5, "rate": 5, "thresholds": 4, "persistent-conn": 4}[layout]
    if len(rest) != expect:
        raise ParseError(src.file, src.line, len(line) + 1, f"expected {expect} columns after the real server ({layout} listing)", line)
    if layout in ("stats", "rate"):
        c = _counters(rest, src)
        return replace(d, stats=c) if layout == "stats" else replace(d, rate=c)
    if layout in ("list", "tun-info"):
        fwd = rest[0]
        if fwd not in FORWARD_METHODS:
            raise ParseError(src.file, src.line, col(fwd), f"unknown forward method '{fwd}' (Masq Local Tunnel Route)", line)
        nums = rest[1:]
        tun = None
        if layout == "tun-info":
            tun, nums = rest[1], rest[2:]
        w, a, i = (_int(x, src) for x in nums)
        return replace(d, forward=fwd, tunnel_info=tun, weight=w, active_conns=a, inactive_conns=i)
    a1, a2, a3, a4 = (_int(x, src) for x in rest)
    if layout == "thresholds":
        return replace(d, upper_threshold=a1, lower_threshold=a2, active_conns=a3, inactive_conns=a4)
    return replace(d, weight=a1, persist_conns=a2, active_conns=a3, inactive_conns=a4)


_NUM = re.compile(r"-?[0-9]{1,20}")


def _int(word: str, src: Source) -> int:
    if not _NUM.fullmatch(word):
        raise ParseError(src.file, src.line, max(src.text.find(word), 0) + 1, f"expected a number, got '{word}'", src.text)
    return int(word)


def _save_words(s: str) -> list[str]:
    return s.split()


def _save_target(words: list[str], src: Source) -> tuple[tuple[object, ...], dict[str, object], int]:
    """The virtual service a -A/-a line names; returns (key, service fields, index after it)."""
    line = src.text
    def col(w: str) -> int:
        return max(line.find(w), 0) + 1
    i = 1
    kw: dict[str, object] = {}
    while i < len(words):
        w = words[i]
        if w in _SAVE_PROTO:
            if i + 1 >= len(words):
                raise ParseError(src.file, src.line, len(line) + 1, f"'{w}' needs ADDRESS:PORT", line)
            host, addr, port, pname, fam = _hostport(words[i + 1], src, col(words[i + 1]))
            kw.update(protocol=_SAVE_PROTO[w], host=host, address=addr, port=port, port_name=pname, family=fam)
            i += 2
        elif w in ("-f", "--fwmark-service"):
            if i + 1 >= len(words) or not is_num(words[i + 1]):
                raise ParseError(src.file, src.line, col(w), "'-f' needs a mark number", line)
            kw.update(protocol="fwmark", host=None, port=None, fwmark=int(words[i + 1]), family=kw.get("family", 4))
            i += 2
        elif w in ("-6", "--ipv6"):
            kw["family"] = 6
            i += 1
        else:
            break
    if "protocol" not in kw:
        raise ParseError(src.file, src.line, len(line) + 1, "expected -t/-u/--sctp-service ADDRESS:PORT or -f MARK", line)
    key = (kw["fwmark"], kw["family"]) if kw["protocol"] == "fwmark" else (kw["protocol"], kw["host"], kw["port"], kw.get("port_name"))
    return key, kw, i


def _save_service(s: str, src: Source) -> IpvsService:
    words = _save_words(s)
    line = src.text
    def col(w: str) -> int:
        return max(line.find(w), 0) + 1
    _, kw, i = _save_target(words, src)
    svc = IpvsService(str(kw.pop("protocol")), kw.pop("host"), kw.pop("port"), None, src, listing="save")  # type: ignore[arg-type]
    fields: dict[str, object] = dict(kw)
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w in ("-s", "--scheduler") and nxt:
            fields["scheduler"] = nxt
            i += 2
        elif w in ("-p", "--persistent"):
            # `-p` alone means the default persistence timeout (360 s, libipvs.h IPVS_SVC_PERSISTENT_TIMEOUT).
            if nxt and is_num(nxt):
                fields["persistent"] = int(nxt)
                i += 2
            else:
                fields["persistent"] = 360
                i += 1
        elif w in ("-M", "--netmask") and nxt:
            fields["netmask"] = nxt
            i += 2
        elif w in ("--pe", "pe") and nxt:
            fields["pe"] = nxt
            i += 2
        elif w in ("-o", "--ops", "ops"):
            fields["one_packet"] = True
            i += 1
        elif w in ("-b", "--sched-flags") and nxt:
            fields["sched_flags"] = tuple(nxt.split(","))
            i += 2
        else:
            raise ParseError(src.file, src.line, col(w), f"unknown virtual service option '{w}'", line)
    if "scheduler" not in fields:
        # ipvsadm's default scheduler when -s is not given.
        fields["scheduler"] = "wlc"
    return replace(svc, **fields)  # type: ignore[arg-type]


def _save_dest(s: str, src: Source) -> tuple[IpvsDest, tuple[object, ...]]:
    words = _save_words(s)
    line = src.text
    def col(w: str) -> int:
        return max(line.find(w), 0) + 1
    key, _, i = _save_target(words, src)
    d: IpvsDest | None = None
    fields: dict[str, object] = {"forward": "Route", "weight": 1}  # ipvsadm's defaults: -g, weight 1
    tunnel: list[str] = []
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if w in ("-r", "--real-server") and nxt:
            host, addr, port, pname, _fam = _hostport(nxt, src, col(nxt)) if (":" in nxt) else (nxt, _addr(nxt), None, None, 4)
            d = IpvsDest(host, port, src, address=addr, port_name=pname)
            i += 2
        elif w in FORWARD_SWITCHES:
            fields["forward"] = FORWARD_SWITCHES[w]
            i += 1
        elif w in ("-w", "--weight") and nxt and re.fullmatch(r"-?[0-9]{1,10}", nxt):
            fields["weight"] = int(nxt)
            i += 2
        elif w in ("-x", "--u-threshold") and nxt and is_num(nxt):
            fields["upper_threshold"] = int(nxt)
            i += 2
        elif w in ("-y", "--l-threshold") and nxt and is_num(nxt):
            fields["lower_threshold"] = int(nxt)
            i += 2
        elif w in ("--tun-type", "--tun-port") and nxt:
            tunnel += [w, nxt]
            i += 2
        elif w in ("--tun-nocsum", "--tun-csum", "--tun-remcsum"):
            tunnel.append(w)
            i += 1
        else:
            raise ParseError(src.file, src.line, col(w), f"unknown real server option '{w}'", line)
    if d is None:
        raise ParseError(src.file, src.line, len(line) + 1, "expected '-r ADDRESS:PORT'", line)
    return replace(d, tunnel=tuple(tunnel), **fields), key  # type: ignore[arg-type]


def _addr(text: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(text)
    except ValueError:
        return None


def _conn(words: list[str], src: Source) -> IpvsConnection:
    if len(words) < 6:
        raise ParseError(src.file, src.line, len(src.text) + 1, "expected 'pro expire state source virtual destination'", src.text)
    mins, _, secs = words[1].partition(":")
    if not (is_num(mins) and is_num(secs)):
        raise ParseError(src.file, src.line, max(src.text.find(words[1]), 0) + 1, "expire is MM:SS", src.text)
    pe = words[6:8] + [None, None]
    return IpvsConnection(words[0], int(mins) * 60 + int(secs), words[2], words[3], words[4], words[5], src,
                          pe[0], pe[1])
