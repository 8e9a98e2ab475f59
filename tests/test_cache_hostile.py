"""The cache is a cache (issue 20, item 7): an entry that is not what kptrace wrote for that key is
discarded and written anew, never followed through a symlink, never reported against a valid dump,
and never able to change an answer; the directory is 0700 and bounded."""

from __future__ import annotations

import copy
import hashlib
import hmac
import marshal
import os
import secrets
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from kptrace import cache, load
from kptrace.load import load_node
from kptrace.model.flow import Flow
from kptrace.model.trace import Disposition
from kptrace.parsers import iptables_scan
from kptrace.testing.generator import generate_iptables
from kptrace.walkers.netfilter import trace_flow

NODE_IP = "192.168.0.2"


@pytest.fixture()
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("KPTRACE_CACHE_DIR", str(root))
    monkeypatch.setattr(iptables_scan, "LAZY_MIN_LINES", 0)
    monkeypatch.setattr(load, "MAP_MIN_BYTES", 0)  # read as a large file is: mapped, scanned, cached
    monkeypatch.delenv("KPTRACE_NO_CACHE", raising=False)
    return root


@pytest.fixture()
def rejecting(tmp_path: Path, cache_root: Path) -> tuple[Path, Flow]:
    """A kube-proxy dump whose FORWARD chain rejects TCP first, and a flow to a Service on another node."""
    gen = generate_iptables(60, 3, seed=3)
    text = gen.text.replace("\n-A FORWARD ", "\n-A FORWARD -p tcp -j REJECT --reject-with icmp-port-unreachable"
                                             "\n-A FORWARD ", 1)
    p = tmp_path / "iptables-save.txt"
    p.write_text(text)
    svc = next(s for s in gen.services if s.protocol == "TCP" and s.endpoints and not any(e.local for e in s.endpoints))
    return p, Flow(ip_address("10.244.1.5"), ip_address(svc.cluster_ip), "tcp", None, svc.port)


def _answer(p: Path, flow: Flow) -> tuple[Disposition, tuple[str, ...], int]:
    node = load_node([p], [NODE_IP])
    return trace_flow(node, flow).disposition, tuple(a for a in node.assumptions if "cache" in a), len(node.errors)


def _entry(root: Path) -> Path:
    [entry] = root.glob("scan-*")
    return entry


def _split(entry: Path) -> tuple[bytes, bytes, Any]:
    head, mac, payload = entry.read_bytes().split(b"\n", 2)
    return head, mac, marshal.loads(payload)


def _without_filter(hints: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """The hand edit: the filter table (and its REJECT) left out of the structure."""
    edited = copy.deepcopy(hints)
    edited["sections"] = [s for s in edited["sections"] if raw[s[0]:s[0] + 7] != b"*filter"]
    del edited["tables"]["filter"]
    return edited


def _forge(entry: Path, payload: bytes, how: str) -> None:
    head, mac, _ = entry.read_bytes().split(b"\n", 2)
    name, _ = head.rsplit(b" ", 1)
    head = name + b" " + str(len(payload)).encode()
    if how == "checksum":  # whoever edits by hand can recompute a plain checksum
        mac = hashlib.sha256(head + b"\n" + payload).hexdigest().encode()
    elif how == "other key":  # an entry from another cache (another machine, another user)
        mac = hmac.digest(secrets.token_bytes(32), head + b"\n" + payload, "sha256").hex().encode()
    entry.write_bytes(head + b"\n" + mac + b"\n" + payload)


def test_the_edit_would_flip_the_answer(rejecting: tuple[Path, Flow], cache_root: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without verification the hand edit below turns REJECTED into FORWARDED: the tests that follow
    would see it."""
    p, flow = rejecting
    assert _answer(p, flow)[0] is Disposition.REJECTED
    _, _, hints = _split(_entry(cache_root))
    edited = _without_filter(hints, p.read_bytes())
    assert iptables_scan._hints_fit(edited, p.read_bytes())  # it still fits the file's bytes
    monkeypatch.setattr(cache, "get", lambda digest, use=True: edited)
    assert _answer(p, flow)[0] is Disposition.FORWARDED


@pytest.mark.parametrize("how", ["mac kept", "checksum", "other key"])
def test_a_hand_edited_entry_cannot_change_the_answer(rejecting: tuple[Path, Flow], cache_root: Path,
                                                      how: str) -> None:
    p, flow = rejecting
    first = _answer(p, flow)
    assert first[0] is Disposition.REJECTED
    entry = _entry(cache_root)
    _, _, hints = _split(entry)
    _forge(entry, marshal.dumps(_without_filter(hints, p.read_bytes())), how)
    assert _answer(p, flow) == first
    assert _split(entry)[2] == hints  # discarded and written anew, as it was
    assert cache.get(_digest(p)) == hints


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("junk", [b"", b"kptrace-cache 1\n", b"\x00" * 100, b"junk\njunk\njunk",
                                  b"kptrace-cache 1 scan-x 3\nabc\n\x93"])
def test_a_corrupt_entry_is_not_an_error(rejecting: tuple[Path, Flow], cache_root: Path, junk: bytes) -> None:
    p, flow = rejecting
    first = _answer(p, flow)
    entry = _entry(cache_root)
    good = entry.read_bytes()
    entry.write_bytes(junk)
    assert _answer(p, flow) == first and first[2] == 0
    assert entry.read_bytes() == good  # rewritten: the same scan, the same key


def test_an_entry_copied_under_another_dumps_name_is_discarded(rejecting: tuple[Path, Flow], cache_root: Path,
                                                               tmp_path: Path) -> None:
    p, flow = rejecting
    first = _answer(p, flow)
    other = tmp_path / "other" / "iptables-save.txt"
    other.parent.mkdir()
    other.write_text(p.read_text().replace("-j REJECT --reject-with icmp-port-unreachable", "-j ACCEPT"))
    theirs = _answer(other, flow)
    assert theirs[0] is Disposition.FORWARDED
    entries = {e.name: e.read_bytes() for e in cache_root.glob("scan-*")}
    mine = cache.get(_digest(p))
    for name in entries:  # each dump's entry under the other's name
        (cache_root / name).write_bytes(entries[next(n for n in entries if n != name)])
    assert _answer(p, flow) == first and _answer(other, flow) == theirs
    assert cache.get(_digest(p)) == mine


def test_a_symlinked_entry_is_never_followed(rejecting: tuple[Path, Flow], cache_root: Path, tmp_path: Path) -> None:
    p, flow = rejecting
    first = _answer(p, flow)
    entry = _entry(cache_root)
    target = tmp_path / "not-the-cache"
    target.write_bytes(entry.read_bytes())  # even a valid entry: a link is not used
    entry.unlink()
    entry.symlink_to(target)
    before = target.read_bytes()
    assert _answer(p, flow) == first
    assert not entry.is_symlink() and target.read_bytes() == before  # the link replaced, the target untouched


def test_a_symlinked_cache_directory_is_not_used(rejecting: tuple[Path, Flow], cache_root: Path,
                                                 tmp_path: Path) -> None:
    p, flow = rejecting
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache_root.symlink_to(elsewhere)
    assert _answer(p, flow)[0] is Disposition.REJECTED
    assert list(elsewhere.iterdir()) == []


def test_the_directory_is_private(rejecting: tuple[Path, Flow], cache_root: Path) -> None:
    p, flow = rejecting
    _answer(p, flow)
    assert cache_root.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o077 == 0 for f in cache_root.iterdir())
    cache_root.chmod(0o755)  # as an older kptrace left it
    _answer(p, flow)
    assert cache_root.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_someone_elses_directory_is_not_used(rejecting: tuple[Path, Flow], cache_root: Path) -> None:
    p, flow = rejecting
    cache_root.mkdir(mode=0o700)
    os.chown(cache_root, 65534, 65534)
    assert _answer(p, flow)[0] is Disposition.REJECTED
    assert list(cache_root.iterdir()) == []


def test_a_broken_key_discards_every_entry(rejecting: tuple[Path, Flow], cache_root: Path) -> None:
    p, flow = rejecting
    first = _answer(p, flow)
    (cache_root / cache.KEY).write_bytes(b"short")
    assert _answer(p, flow) == first
    assert len((cache_root / cache.KEY).read_bytes()) == 32 and cache.get(_digest(p)) is not None


def test_a_hand_edited_file_record_cannot_change_a_digest(rejecting: tuple[Path, Flow], cache_root: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "RACY_NS", 0)
    p, _ = rejecting
    st = p.stat()
    right = cache.file_digest(str(p), st, p.read_bytes())
    [record] = cache_root.glob("file-*")
    _forge(record, marshal.dumps([[st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns], "0" * 64]),
           "checksum")
    assert cache.file_digest(str(p), st, p.read_bytes()) == right == _digest(p)


def test_the_cache_is_bounded(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MAX_ENTRIES", 4)
    for i in range(10):
        cache.put(f"{i:064x}", {"n": i})
        os.utime(cache_root / cache._scan_name(f"{i:064x}"), ns=(i * 10**9, i * 10**9))  # distinct ages
    assert cache.get(f"{6:064x}") == {"n": 6}  # used: now the most recent
    cache.put(f"{10:064x}", {"n": 10})
    assert [i for i in range(11) if cache.get(f"{i:064x}") is not None] == [6, 8, 9, 10]
    monkeypatch.setattr(cache, "MAX_BYTES", 3000)
    for i in range(20, 30):
        cache.put(f"{i:064x}", {"blob": "x" * 1000})
    assert sum(f.stat().st_size for f in cache_root.glob("scan-*")) <= 3000
    assert cache.get(f"{29:064x}") is not None  # the newest stays


def test_an_entry_larger_than_the_bound_is_not_kept(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MAX_ENTRY", 100)
    cache.put("a" * 64, {"blob": "x" * 1000})
    assert cache.get("a" * 64) is None and not list(cache_root.glob("scan-*"))
