"""Parse kernel log lines: netfilter TRACE steps, `xtables-monitor --trace`, and messages kptrace knows.

Forms accepted (one per line; the time/host prefix is any of dmesg's, `dmesg -T`'s, syslog's or journalctl's):

    [ 3774.709092] TRACE: raw:PREROUTING:policy:2 IN=flannel.1 OUT= MAC=… SRC=172.16.0.0 DST=172.16.3.12 … PROTO=ICMP
    Apr  9 17:02:08 node32 kernel: TRACE: filter:FORWARD:rule:1 IN=cali0 OUT=ens3 SRC=… PROTO=TCP SPT=58976 DPT=8443 …
    Jan 18 14:57:18 minion kernel: [448136.197771] TRACE: nat:KUBE-SERVICES:rule:25 IN=ens5 OUT= …
     TRACE: 2 fc3b4c5d raw:PREROUTING:rule:0x3:CONTINUE  -4 -t raw -A PREROUTING -p tcp -j TRACE     xtables-monitor
     TRACE: 2 fc3b4c5d nat:KUBE-SERVICES:return:                                                        --trace
     TRACE: 2 fc3b4c5d filter:INPUT:policy:ACCEPT
    PACKET: 2 fc3b4c5d IN=eth0 OUT= MACSRC=… SRC=10.0.0.1 DST=10.0.0.2 LEN=60 TOS=0x0 TTL=64 ID=1234DF SPORT=1 DPORT=80 SYN
    [Tue Nov 20 22:30:22 2018] nf_conntrack: table full, dropping packet                            conntrack-full
    [79049.987562] IPVS: rr: UDP 10.96.0.10:53 - no destination available                            ipvs-no-destination
    [  12.345678] any other kernel message                                                          kept as "other"

A log copied from a web page may carry spaces inside a field (`SRC=     110.110.110.108`, `OPT (0204     05B4…)`):
a `KEY=` followed by spaces and a word that is not itself `KEY=` is read as that key's value.
"""

from __future__ import annotations

import re

from kptrace.errors import ParseError
from kptrace.model.observed import KernelMessage, TraceEvent
from kptrace.model.source import Source

_DAYS = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTHS = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
# The time (and host) prefixes a kernel line comes with; each alternative ends where the message starts.
PREFIX_RE = re.compile(
    r"^\s{0,4}(?P<time>"
    rf"(?:{_MONTHS}\s+[0-9]{{1,2}}\s[0-9][0-9]:[0-9][0-9]:[0-9][0-9](?:\.[0-9]{{1,20}})?\s\S+\s(?:kernel|kern\.\w+)(?:\[[0-9]{{1,20}}\])?:\s*)"  # syslog / journal
    r"|(?:[0-9]{4}-[0-9][0-9]-[0-9][0-9][T ][0-9][0-9]:[0-9][0-9]:[0-9][0-9](?:[.,][0-9]{1,20})?(?:Z|[+-][0-9][0-9]:?[0-9][0-9])?\s\S+\s(?:kernel|kern\.\w+):\s*)"  # ISO
    r")?"
    r"(?P<stamp>\[\s*[0-9]{1,10}\.[0-9]{1,9}\]\s*"  # dmesg
    rf"|\[{_DAYS}\s{_MONTHS}\s+[0-9]{{1,2}}\s[0-9][0-9]:[0-9][0-9]:[0-9][0-9]\s[0-9]{{4}}\]\s*"  # dmesg -T
    r")?"
)
KERNEL_TRACE_RE = re.compile(r"(?:^|\s)TRACE: (?P<table>[\w-]+):(?P<chain>[^\s:]+):(?P<kind>rule|return|policy):(?P<num>[0-9]{1,20})(?=\s|$)")
XT_TRACE_RE = re.compile(
    r"^\s*TRACE: (?P<fam>[0-9]{1,20}) (?P<id>[0-9a-f]{8}) (?P<table>[^\s:]+):(?P<chain>[^\s:]+):(?P<kind>rule|return|policy):"
    r"(?P<rest>.*)$"
)
XT_PACKET_RE = re.compile(r"^\s*PACKET: (?P<fam>[0-9]{1,20}) (?P<id>[0-9a-f]{8})\s(?P<rest>.*)$")
CONNTRACK_FULL_RE = re.compile(r"\b(?:nf|ip)_conntrack: (?:(?:nf|ip)_conntrack: )?table full, dropping packet")
IPVS_NO_DEST_RE = re.compile(r"\bIPVS: \w+: (?:TCP|UDP|SCTP) \S+ - no destination available")
_KEY_RE = re.compile(r"([A-Z][A-Z0-9_]*)=")
_NFPROTO = {"2": 4, "10": 6}


def is_kernel_line(line: str) -> bool:
    """Whether a line carries a kernel log prefix (or is a message kptrace knows without one)."""
    m = PREFIX_RE.match(line)
    if m is not None and (m.group("time") or m.group("stamp")):
        return True
    return bool(CONNTRACK_FULL_RE.search(line) or IPVS_NO_DEST_RE.search(line))


def parse_kernel_log(text: str, file: str = "dmesg.txt") -> list[TraceEvent | KernelMessage]:
    """TRACE steps and kernel messages, in the order printed. A line that is neither raises ParseError."""
    out: list[TraceEvent | KernelMessage] = []
    packets: dict[str, tuple[tuple[str, str], ...]] = {}
    pending: list[tuple[int, str, str]] = []  # xtables-monitor events whose PACKET line may come later
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        src = Source(file, lineno, 1, line)
        m = XT_PACKET_RE.match(line)
        if m:
            packets[m.group("id")] = _fields(m.group("rest"))
            continue
        m = XT_TRACE_RE.match(line)
        if m:
            pending.append((len(out), m.group("id"), line))
            out.append(_xt_event(m, src))
            continue
        m = KERNEL_TRACE_RE.search(line)
        if m:
            rest = line[m.end():]
            fields = _fields(rest)
            family = 6 if ":" in dict(fields).get("SRC", "") else (4 if "SRC" in dict(fields) else None)
            out.append(TraceEvent(m.group("table"), m.group("chain"), m.group("kind"), src, number=int(m.group("num")),
                                  family=family, packet=fields))
            continue
        pm = PREFIX_RE.match(line)
        has_prefix = pm is not None and bool(pm.group("time") or pm.group("stamp"))
        msg = line[pm.end():].strip() if pm is not None else s
        if CONNTRACK_FULL_RE.search(line):
            out.append(KernelMessage("conntrack-full", msg, src, _time(pm)))
        elif IPVS_NO_DEST_RE.search(line):
            out.append(KernelMessage("ipvs-no-destination", msg, src, _time(pm)))
        elif has_prefix and msg:
            out.append(KernelMessage("other", msg, src, _time(pm)))
        else:
            raise ParseError(file, lineno, 1, "not a kernel log line (no dmesg/syslog time prefix, no TRACE step)", line)
    for k, trace_id, _ in pending:
        ev = out[k]
        if isinstance(ev, TraceEvent) and trace_id in packets and not ev.packet:
            out[k] = _with_packet(ev, packets[trace_id])
    return out


def _time(m: re.Match[str] | None) -> str | None:
    if m is None:
        return None
    parts = [p.strip() for p in (m.group("time"), m.group("stamp")) if p]
    return " ".join(parts) or None


def _xt_event(m: re.Match[str], src: Source) -> TraceEvent:
    rest = m.group("rest").strip()
    handle: int | None = None
    verdict: str | None = None
    rule_text: str | None = None
    if m.group("kind") == "rule":
        # 0x3:CONTINUE  -4 -t raw -A PREROUTING …   (the handle, the verdict, the rule as iptables prints it)
        hm = re.match(r"(0x[0-9a-fA-F]+|[0-9]{1,20}):(\S*)\s*(.*)$", rest)
        if hm:
            handle = int(hm.group(1), 0)
            verdict = hm.group(2) or None
            rule_text = hm.group(3).strip() or None
    else:
        verdict = rest.split()[0] if rest.split() else None
    return TraceEvent(m.group("table"), m.group("chain"), m.group("kind"), src, handle=handle, verdict=verdict,
                      rule_text=rule_text, trace_id=m.group("id"), family=_NFPROTO.get(m.group("fam")))


def _with_packet(ev: TraceEvent, packet: tuple[tuple[str, str], ...]) -> TraceEvent:
    from dataclasses import replace

    return replace(ev, packet=packet)


def _fields(rest: str) -> tuple[tuple[str, str], ...]:
    """`IN=eth0 OUT= SRC=1.2.3.4 … DF PROTO=TCP … SYN URGP=0 OPT (0204…)` as (key, value) pairs; a flag is (FLAG, "")."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n:
            break
        if rest.startswith("OPT (", i):
            end = rest.find(")", i)
            end = n if end < 0 else end
            out.append(("OPT", "".join(rest[i + 5:end].split())))
            i = end + 1
            continue
        m = _KEY_RE.match(rest, i)
        if m:
            key = m.group(1)
            j = m.end()
            k = j
            while k < n and rest[k] in " \t":
                k += 1
            word_end = k
            while word_end < n and rest[word_end] not in " \t":
                word_end += 1
            word = rest[k:word_end]
            if j == k:
                out.append((key, word))  # `SRC=10.0.0.1`
                i = word_end
            elif word and not _KEY_RE.match(word) and not word.startswith("OPT") and k < n:
                out.append((key, word))  # `SRC=     10.0.0.1`: spaces a web page put in
                i = word_end
            else:
                out.append((key, ""))  # `OUT= MAC=…`: an empty value
                i = j
            continue
        end = i
        while end < n and rest[end] not in " \t":
            end += 1
        out.append((rest[i:end], ""))
        i = end
    return tuple(out)
