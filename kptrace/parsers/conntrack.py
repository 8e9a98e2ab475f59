"""Parse `conntrack -L` (conntrack-tools) and /proc/net/nf_conntrack into ConntrackEntries.

Forms accepted (one entry per line):

    tcp      6 431999 ESTABLISHED src=10.244.1.5 dst=10.96.0.20 sport=40000 dport=80 src=10.244.1.2 dst=10.244.1.5 sport=8080 dport=40000 [ASSURED] mark=0 use=1
    udp      17 29 src=10.244.1.5 dst=10.96.0.10 sport=53271 dport=53 [UNREPLIED] src=10.96.0.10 dst=10.244.1.5 sport=53 dport=53271 mark=0 use=1
    icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=7 mark=0 use=1
    ipv4     2 tcp      6 117 TIME_WAIT src=… dst=… sport=… dport=… src=… … [ASSURED] mark=0 zone=0 use=2   /proc, `-o extended`
    [1700000000.123456]  tcp 6 …                                      `-o timestamp` prefix
    conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.   footer, ignored

Words the model has no field for (`secctx=`, `labels=`, `delta-time=`, `id=`, `use=`, …) are kept
in `unknown`; they never decide a trace.
"""

from __future__ import annotations

import mmap
import re
from array import array
from collections.abc import Iterator, Sequence
from ipaddress import ip_address
from typing import Any, overload

from kptrace.errors import ParseError
from kptrace.parsers.numbers import ascii_int
from kptrace.model.flow import IPAddress
from kptrace.model.node import ConntrackEntry, ConntrackTuple
from kptrace.model.source import Source

HEAD_RE = re.compile(r"^\s*(?:\[[0-9.]{1,40}\]\s+)?(?:(ipv[46])\s+([0-9]{1,3})\s+)?([a-z][a-z0-9-]{0,30}|[0-9]{1,3})\s+"
                     r"([0-9]{1,3})\s+([0-9]{1,20})\s+(?:([A-Z_]{1,30})\s+)?(?=src=)")
FOOTER_RE = re.compile(r"^\s*conntrack v[0-9.]+ \(conntrack-tools\):")
_IGNORED = frozenset({"use", "id", "delta-time", "secctx", "labels", "timestamp", "portid", "helper", "ctlabels"})


# The shape `conntrack -L` prints for TCP, UDP and SCTP (and /proc/net/nf_conntrack, with its family prefix),
# read in one match; any other line takes the general path below, which reads it into the same entry.
FAST_RE = re.compile(
    r"(?:(ipv[46]) +([0-9]{1,3}) +)?(tcp|udp|sctp|udplite|dccp) +([0-9]{1,3}) +([0-9]{1,20}) +(?:([A-Z_]{1,30}) +)?"
    r"src=([0-9a-f.:]{2,45}) dst=([0-9a-f.:]{2,45}) sport=([0-9]{1,5}) dport=([0-9]{1,5}) (?:\[(UNREPLIED)\] )?"
    r"src=([0-9a-f.:]{2,45}) dst=([0-9a-f.:]{2,45}) sport=([0-9]{1,5}) dport=([0-9]{1,5})(?: \[(ASSURED)\])?"
    r"(?: mark=([0-9]{1,10}))?(?: zone=([0-9]{1,5}))?( use=[0-9]{1,10})? *$")


FAST_AT = re.compile(r" *" + FAST_RE.pattern)  # the same, from a line's start in the whole text
MAX_KEPT_ERRORS = 1000  # unreadable lines kept (the caller says the first few); the others are only counted


class _Shared:
    """Values a million entries repeat (addresses, ports, flags, words), made once: the table's memory is
    its entries, not a million copies of `10.96.0.10` and `use=1`."""

    def __init__(self) -> None:
        self.addrs: dict[str, IPAddress | None] = {}
        self.ints: dict[str, int] = {}
        self.words: dict[object, object] = {}

    def addr(self, text: str) -> IPAddress | None:
        try:
            return self.addrs[text]
        except KeyError:
            pass
        try:
            a: IPAddress | None = ip_address(text)
        except ValueError:
            a = None
        self.addrs[text] = a
        return a

    def int(self, text: str) -> int:
        v = self.ints.get(text)
        if v is None:
            v = self.ints[text] = int(text)
        return v

    def same(self, value: Any) -> Any:
        return self.words.setdefault(value, value)


def parse_conntrack(text: str, file: str = "conntrack.txt", errors: list[ParseError] | None = None,
                    first_line: int = 1) -> list[ConntrackEntry]:
    """Every entry of the table, in order. Lines of the usual shape are matched in place in `text` (a line's
    string is made only for the others), and their entries cite file:line without a copy of the line: a
    million-entry table costs its entries, not the text twice (docs/performance.md)."""
    out: list[ConntrackEntry] = []
    shared = _Shared()
    n = len(text)
    pos = 0
    lineno = first_line - 1
    while pos <= n:
        end = text.find("\n", pos)
        if end < 0:
            end = n
        lineno += 1
        m = FAST_AT.match(text, pos, end - 1 if end > pos and text[end - 1] == "\r" else end)
        e = _fast(m, lineno, file, shared) if m is not None else None
        if e is not None:
            out.append(e)
        else:
            line = text[pos:end].rstrip("\r")
            if line.strip() and not FOOTER_RE.match(line):
                try:
                    out.append(_entry(line, lineno, file))
                except ParseError as err:
                    if errors is None:
                        raise
                    if len(errors) < MAX_KEPT_ERRORS:
                        errors.append(err)
        pos = end + 1
    return out


def _fast(m: re.Match[str], lineno: int, file: str, shared: _Shared) -> ConntrackEntry | None:
    """The entry of a line of the usual shape (FAST_AT matched it), as _entry reads it, or None (the general
    path reads it, and says what is wrong, where)."""
    (fam, _, proto, _, timeout, state, s1, d1, sp1, dp1, unreplied, s2, d2, sp2, dp2, assured, mark, zone,
     use) = m.groups()
    addr, num, same = shared.addr, shared.int, shared.same
    a1, b1, a2, b2 = addr(s1), addr(d1), addr(s2), addr(d2)
    if a1 is None or b1 is None or a2 is None or b2 is None:
        return None
    p1, q1, p2, q2 = num(sp1), num(dp1), num(sp2), num(dp2)
    if p1 > 65535 or q1 > 65535 or p2 > 65535 or q2 > 65535:
        return None
    flags = same((unreplied, assured) if unreplied and assured else (unreplied,) if unreplied else
                 (assured,) if assured else ())
    family = 6 if fam == "ipv6" or a1.version == 6 else 4
    return ConntrackEntry(
        same(proto), ConntrackTuple(a1, b1, p1, q1), ConntrackTuple(a2, b2, p2, q2), num(timeout), same(state),
        flags, num(mark) if mark is not None else None, num(zone) if zone is not None else None, family,
        Source(file, lineno, 1), same((use.strip(),) if use else ()),
    )


def _entry(line: str, lineno: int, file: str) -> ConntrackEntry:
    m = HEAD_RE.match(line)
    if m is None:
        raise ParseError(file, lineno, 1, "expected a conntrack entry: PROTO NUMBER TIMEOUT [STATE] src=… dst=…", line)
    tuples: list[dict[str, str]] = []
    flags: list[str] = []
    unknown: list[str] = []
    mark = zone = None
    for w in re.finditer(r"\S+", line[m.end():]):
        word, col = w.group(), m.end() + w.start() + 1
        if word.startswith("[") and word.endswith("]") and len(word) > 2:
            flags.append(word[1:-1])
            continue
        key, eq, value = word.partition("=")
        if not eq:
            unknown.append(word)
            continue
        if key == "src" and (not tuples or "src" in tuples[-1]):
            if len(tuples) == 2:
                raise ParseError(file, lineno, col, "a third src=: expected an original and a reply tuple", line)
            tuples.append({})
        if key in ("src", "dst", "sport", "dport", "type", "code") and tuples and key not in tuples[-1]:
            tuples[-1][key] = value
        elif key == "mark":
            mark = _int(value, col, file, lineno, line)
        elif key == "zone":
            zone = _int(value, col, file, lineno, line)
        elif key in _IGNORED or key.startswith(("orig-", "reply-")):
            unknown.append(word)
        else:
            unknown.append(word)
    if not tuples or "dst" not in tuples[0]:
        raise ParseError(file, lineno, m.end() + 1, "expected src= and dst= of the original direction", line)
    family = 6 if m.group(1) == "ipv6" else 4
    orig = _tuple(tuples[0], file, lineno, line)
    reply = _tuple(tuples[1], file, lineno, line) if len(tuples) > 1 and "dst" in tuples[1] else None
    if orig.src.version == 6:
        family = 6
    return ConntrackEntry(
        proto=m.group(3), original=orig, reply=reply, timeout=int(m.group(5)), state=m.group(6),
        flags=tuple(flags), mark=mark, zone=zone, family=family, source=Source(file, lineno, 1, line),
        unknown=tuple(unknown),
    )


def _tuple(t: dict[str, str], file: str, lineno: int, line: str) -> ConntrackTuple:
    def addr(key: str) -> IPAddress:
        try:
            return ip_address(t[key])
        except (KeyError, ValueError):
            raise ParseError(file, lineno, max(line.find(f"{key}="), 0) + 1,
                             f"invalid address {key}={t.get(key, '')!r}", line) from None

    def port(key: str) -> int | None:
        v = t.get(key)
        if v is None:
            return None
        if not re.fullmatch(r"[0-9]{1,5}", v) or int(v) > 65535:
            raise ParseError(file, lineno, max(line.find(f"{key}="), 0) + 1, f"invalid port {key}={v}", line)
        return int(v)

    extra = tuple(f"{k}={t[k]}" for k in ("type", "code") if k in t)
    return ConntrackTuple(addr("src"), addr("dst"), port("sport"), port("dport"), extra)


def _int(v: str, col: int, file: str, lineno: int, line: str) -> int:
    try:
        return ascii_int(v)
    except ValueError:
        raise ParseError(file, lineno, col, f"expected a number, got '{v}'", line) from None


# --- a large table, read in place ----------------------------------------------------------------------

LARGE_TABLE_BYTES = 8 * 1024 * 1024  # past this a table is read in place (ConntrackTable), not into objects
_FAST_AT_B = re.compile(FAST_AT.pattern.encode("ascii"))
_FOOTER_B = re.compile(FOOTER_RE.pattern.encode("ascii"))
_CHUNK = 16 * 1024 * 1024  # bytes of a mapped file read before its pages are given back (madvise)
_CACHE_MAX = 1 << 16  # addresses and numbers remembered while entries are made


class ConntrackTable(Sequence[ConntrackEntry]):
    """A large `conntrack -L` as a sequence of entries, read in place from the file's bytes (mapped, or as
    read): an entry is made when it is looked at, from the offset of its line. A million entries cost 12 bytes
    each here (offset and line number) instead of ~350 as objects, and the text is not decoded into a second
    copy; a walk over the table makes its entries again (a few seconds for a million). Lines of the usual
    shape are checked on the first pass (addresses, ports), the others are read by the general path then and
    kept as entries. Entries are the ones parse_conntrack makes, in the same order; they cite file:line."""

    def __init__(self, buf: bytes | mmap.mmap, file: str, errors: list[ParseError] | None = None,
                 first_line: int = 1) -> None:
        self._buf = buf
        self._file = file
        self._first_line = first_line
        self._offsets = array("Q")  # where each entry's line starts
        self._lines = array("L")  # its line number
        self._slow: dict[int, ConntrackEntry] = {}  # entries read by the general path, by position
        self._shared = _Shared()
        self._checked: dict[bytes, bool] = {}  # addresses seen on the first pass: whether they read
        self._scan(errors)

    def __reduce__(self) -> tuple[Any, ...]:
        # A mapped file does not cross processes (check's workers): its bytes do, and are read again there.
        return (ConntrackTable, (bytes(self._buf[:]), self._file, [], self._first_line))  # its errors were said

    def _give_back(self, upto: int) -> None:
        """Pages of a mapped file read so far leave this process's memory (the page cache keeps them)."""
        if isinstance(self._buf, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            end = upto - upto % mmap.PAGESIZE
            if end > 0:
                self._buf.madvise(mmap.MADV_DONTNEED, 0, end)

    def _scan(self, errors: list[ParseError] | None) -> None:
        buf, match = self._buf, _FAST_AT_B.match
        valid = self._checked
        n = len(buf)
        pos, lineno, given_back = 0, self._first_line - 1, 0
        while pos <= n:
            end = buf.find(b"\n", pos)
            if end < 0:
                end = n
            lineno += 1
            stop = end - 1 if end > pos and buf[end - 1] == 13 else end
            m = match(buf, pos, stop)
            if m is not None and self._valid(m):
                self._offsets.append(pos)
                self._lines.append(lineno)
            else:
                self._general(pos, stop, lineno, errors)
            pos = end + 1
            if pos - given_back > _CHUNK:
                self._give_back(pos)
                given_back = pos
            if len(valid) > _CACHE_MAX:
                valid.clear()
        self._give_back(n)
        self._checked = {}

    def _valid(self, m: re.Match[bytes]) -> bool:
        """Whether _fast makes an entry of this line (its addresses read, its ports are ports): checked once."""
        g = m.group
        checked = self._checked
        for k in (7, 8, 12, 13):
            a = g(k)
            ok = checked.get(a)
            if ok is None:
                try:
                    ip_address(a.decode("ascii"))
                    ok = True
                except ValueError:
                    ok = False
                checked[a] = ok
            if not ok:
                return False
        return int(g(9)) <= 65535 and int(g(10)) <= 65535 and int(g(14)) <= 65535 and int(g(15)) <= 65535

    def _general(self, pos: int, stop: int, lineno: int, errors: list[ParseError] | None) -> None:
        raw = bytes(self._buf[pos:stop])
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            err = ParseError(self._file, lineno, e.start + 1, f"invalid UTF-8 byte 0x{raw[e.start]:02x}")
        else:
            if not line.strip() or FOOTER_RE.match(line):
                return
            try:
                self._slow[len(self._offsets)] = _entry(line, lineno, self._file)
                self._offsets.append(pos)
                self._lines.append(lineno)
                return
            except ParseError as e:
                err = e
        if errors is None:
            raise err
        if len(errors) < MAX_KEPT_ERRORS:
            errors.append(err)

    def __len__(self) -> int:
        return len(self._offsets)

    def _make(self, i: int) -> ConntrackEntry:
        slow = self._slow.get(i)
        if slow is not None:
            return slow
        pos = self._offsets[i]
        end = self._buf.find(b"\n", pos)
        end = len(self._buf) if end < 0 else end
        stop = end - 1 if end > pos and self._buf[end - 1] == 13 else end
        line = self._buf[pos:stop].decode("ascii")
        m = FAST_AT.match(line)
        e = _fast(m, self._lines[i], self._file, self._shared) if m is not None else None
        if e is None:  # checked on the first pass: only a file changed under the mapping gets here
            raise ParseError(self._file, self._lines[i], 1, "the conntrack table changed while it was read")
        return e

    @overload
    def __getitem__(self, i: int) -> ConntrackEntry: ...

    @overload
    def __getitem__(self, i: slice) -> list[ConntrackEntry]: ...

    def __getitem__(self, i: int | slice) -> ConntrackEntry | list[ConntrackEntry]:
        if isinstance(i, slice):
            return [self._make(k) for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._make(i)

    def __iter__(self) -> Iterator[ConntrackEntry]:
        shared = self._shared
        given_back = 0
        for i in range(len(self)):
            yield self._make(i)
            if self._offsets[i] - given_back > _CHUNK:
                self._give_back(self._offsets[i])
                given_back = self._offsets[i]
            if len(shared.addrs) > _CACHE_MAX or len(shared.ints) > _CACHE_MAX or len(shared.words) > _CACHE_MAX:
                shared.addrs.clear()
                shared.ints.clear()
                shared.words.clear()
        self._give_back(len(self._buf))


def read_conntrack(data: bytes | mmap.mmap, file: str, errors: list[ParseError] | None = None) \
        -> Sequence[ConntrackEntry]:
    """A conntrack table from its bytes: a large one as a ConntrackTable (read in place), else parsed."""
    if len(data) >= LARGE_TABLE_BYTES:
        return ConntrackTable(data, file, errors)
    return parse_conntrack(bytes(data[:]).decode("utf-8"), file, errors)
