"""A large conntrack table is read in place (ConntrackTable, issue 20 item 4): the same entries, errors and
order as parse_conntrack, from bytes or a mapped file, across processes (pickle), through the loader."""

from __future__ import annotations

import mmap
import pickle
from pathlib import Path

import pytest

from kptrace.errors import ParseError
from kptrace.load import load_cluster
from kptrace.model.node import ConntrackEntry
from kptrace.parsers import conntrack as C

DEMO = Path(__file__).resolve().parents[2] / "kptrace" / "demo" / "cluster" / "node-a"


def table_text(n: int = 3000, bad: bool = True) -> str:
    lines = []
    for i in range(n):
        lines.append(f"tcp      6 431999 ESTABLISHED src=10.244.1.{i % 250} dst=10.96.0.{i % 7} sport={40000 + i} "
                     f"dport=80 src=10.244.2.5 dst=10.244.1.{i % 250} sport=8080 dport={40000 + i} [ASSURED] mark=0 use=1")
        if i % 500 == 0:  # the shapes the general path reads, and lines it refuses
            lines += ["icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 src=10.0.0.2 dst=10.0.0.1 type=0 "
                      "code=0 id=7 mark=0 use=1",
                      "ipv4     2 tcp      6 117 TIME_WAIT src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 src=10.0.0.2 "
                      "dst=10.0.0.1 sport=2 dport=1 [ASSURED] mark=0 zone=0 use=2\r",
                      "udp      17 29 src=fd00::5 dst=fd00::1 sport=5353 dport=53 [UNREPLIED] src=fd00::1 dst=fd00::5 "
                      "sport=53 dport=5353 mark=0 use=1",
                      "tcp 6 1 ESTABLISHED src=10.0.0.300 dst=1.1.1.1 sport=1 dport=2 src=1.1.1.1 dst=10.0.0.1 sport=2 "
                      "dport=1 mark=0 use=1",
                      "tcp 6 1 ESTABLISHED src=10.0.0.3 dst=1.1.1.1 sport=99999 dport=2 src=1.1.1.1 dst=10.0.0.1 "
                      "sport=2 dport=1 mark=0 use=1",
                      "", "garbage here"][:None if bad else 3]
    lines.append("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.")
    return "\n".join(lines) + "\n"


def fields(e: ConntrackEntry) -> tuple[object, ...]:
    assert e.source is not None
    return (e.proto, e.original, e.reply, e.timeout, e.state, e.flags, e.mark, e.zone, e.family, e.source.file,
            e.source.line, e.unknown)


def test_the_table_reads_what_parse_conntrack_reads(tmp_path: Path) -> None:
    text = table_text()
    errors: list[ParseError] = []
    want = [fields(e) for e in C.parse_conntrack(text, "ct.txt", errors)]
    got_errors: list[ParseError] = []
    table = C.ConntrackTable(text.encode(), "ct.txt", got_errors)
    assert len(table) == len(want) and [fields(e) for e in table] == want
    assert [str(e) for e in got_errors] == [str(e) for e in errors] and len(errors) == 18
    assert fields(table[-1]) == want[-1] and [fields(e) for e in table[3:9]] == want[3:9]
    with pytest.raises(IndexError):
        table[len(table)]
    # Across processes (check's workers) and from a mapped file, the same.
    assert [fields(e) for e in pickle.loads(pickle.dumps(table))] == want
    p = tmp_path / "conntrack.txt"
    p.write_text(text)
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    assert [fields(e) for e in C.ConntrackTable(mm, "ct.txt", [])] == want


def test_without_an_error_list_the_first_bad_line_raises() -> None:
    with pytest.raises(ParseError, match=r"ct.txt:5:21: invalid address src='10.0.0.300'"):
        C.ConntrackTable(table_text(1).encode(), "ct.txt")


def test_a_large_table_in_a_bundle_is_read_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past LARGE_TABLE_BYTES the loader keeps a ConntrackTable; the node's entries are the same."""
    bundle = tmp_path / "node-a"
    bundle.mkdir()
    for f in ("iptables-save.txt", "node.yaml", "ip-route.txt", "ip-addr.txt"):
        (bundle / f).write_bytes((DEMO / f).read_bytes())
    (bundle / "conntrack.txt").write_text(table_text(bad=False))  # (lines it cannot read make it a paste)
    small = load_cluster([bundle])[0]
    monkeypatch.setattr(C, "LARGE_TABLE_BYTES", 1024)
    large = load_cluster([bundle])[0]
    assert isinstance(large.conntrack, C.ConntrackTable) and isinstance(small.conntrack, list)
    assert [fields(e) for e in large.conntrack] == [fields(e) for e in small.conntrack]
    assert [str(e) for e in large.errors] == [str(e) for e in small.errors]
    assert large.level("conntrack") == small.level("conntrack")
