"""Hostile and broken --dump inputs (issue 20, items 2, 3 and 6): every one ends as one located line
(exit 2 when it is the only input, else a KPT001 note and the run goes on), within bounded time and
memory, each limit named in the error. Every input is generated here: nothing large is in git.
"""

from __future__ import annotations

import gzip
import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kptrace import load
from kptrace.errors import InputError, KptraceError, ParseError
from kptrace.load import _read_entries, _read_stream, load_cluster

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "kptrace" / "demo" / "cluster" / "node-a"
WHY = ["why", "10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5"]


def kptrace(*args: str, stdin: bytes | int | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """The real CLI in a subprocess (exit codes, stdin, FIFOs as users meet them)."""
    r = subprocess.run([sys.executable, "-m", "kptrace", *args], input=stdin if isinstance(stdin, bytes) else None,
                       stdin=stdin if isinstance(stdin, int) else None, capture_output=True, timeout=timeout,
                       cwd=ROOT)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def bundle_tgz(src: Path = DEMO, top: str = "node-a") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, top)
    return buf.getvalue()


def sparse_tar_gz(name: str, realsize: int) -> bytes:
    """A GNU sparse member (typeflag S) that says `realsize` bytes and stores none: what `tar -S` writes for
    a file of holes. 87 bytes gzipped for 2 GiB."""
    h = bytearray(512)

    def put(off: int, value: bytes) -> None:
        h[off:off + len(value)] = value

    put(0, name.encode())
    put(100, b"0000644\0")
    put(108, b"0000000\0")
    put(116, b"0000000\0")
    put(124, b"%011o\0" % 0)
    put(136, b"%011o\0" % 0)
    put(156, b"S")
    put(257, b"ustar  \0")
    put(386, b"%011o\0" % realsize)  # one sparse entry: offset realsize, 0 bytes of data
    put(398, b"%011o\0" % 0)
    put(483, b"%011o\0" % realsize)  # the real size
    put(148, b" " * 8)
    put(148, b"%06o\0 " % sum(h))
    return gzip.compress(bytes(h) + b"\0" * 1024)


def entries(path: Path) -> list[tuple[str, bytes | KptraceError]]:
    return [(label, data if not isinstance(data, load.MappedFile) else data.mm[:]) for label, data in _read_entries(path)]


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


@pytest.fixture
def rss() -> Iterator[list[int]]:
    """Peak RSS growth (KiB) of this process over the test (ru_maxrss never shrinks: a bound, not a measure)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: list[int] = []
    yield out
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)


# --- streams: a pipe, /dev/stdin, `-`, <(…), devices ----------------------------------------------------


def test_dump_dash_reads_stdin() -> None:
    code, out, err = kptrace(*WHY, "--dump", "-", stdin=(DEMO / "iptables-save.txt").read_bytes())
    assert code in (0, 1, 4), err
    assert "10.244.1.9:53" in out and "<stdin>" in out


def test_dev_stdin_from_a_pipe_is_read_once() -> None:
    data = (DEMO / "iptables-save.txt").read_bytes()
    p = subprocess.Popen([sys.executable, "-m", "kptrace", *WHY, "--dump", "/dev/stdin"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out, err = p.communicate(data, timeout=60)
    assert p.returncode in (0, 1, 4), err
    assert b"10.244.1.9:53" in out


def test_a_fifo_holding_a_bundle_tarball(tmp_path: Path) -> None:
    """`--dump <(kubectl exec … kptrace collect -o -)`: the tarball is recognised by its gzip magic."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = bundle_tgz()

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    code, out, err = kptrace(*WHY, "--dump", str(fifo), "-o", "json")
    t.join(10)
    assert code in (0, 1, 4), err
    assert '"node-a/iptables-save.txt"' in out or "node-a/iptables-save.txt" in out


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_devices_are_refused_at_once_as_binary(device: str) -> None:
    start = time.monotonic()
    code, out, err = kptrace(*WHY, "--dump", device, timeout=30)
    assert code == 2 and one_line(err), err
    assert f"{device}:1:1: binary data (NUL bytes)" in err
    assert time.monotonic() - start < 20


class Endless(io.RawIOBase):
    """A stream that never ends (a FIFO fed by `yes`), of lines or of one line."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = len(b)
        reps = self.chunk * (n // len(self.chunk) + 1)
        b[:n] = reps[:n]
        self.served += n
        return n


def test_an_endless_stream_stops_at_the_limit_and_names_it() -> None:
    f = io.BufferedReader(Endless(b"-A INPUT -j ACCEPT\n"))
    with pytest.raises(InputError, match=r"fifo: it went on past 4194304 bytes, more than the 4 MiB input limit"):
        _read_stream(f, "fifo", 4 * 1024 * 1024)


def test_an_endless_line_stops_at_the_line_limit() -> None:
    raw = Endless(b"x" * 4096)
    with pytest.raises(ParseError, match=r"fifo:1:1: line 1 is more than 1048576 bytes long"):
        _read_stream(io.BufferedReader(raw), "fifo", 64 * 1024 * 1024)
    assert raw.served < 4 * 1024 * 1024  # stopped after the first chunks, not at the 64 MiB limit


def test_an_endless_stdin_ends_with_one_line() -> None:
    """`yes … | kptrace why --dump -`: read up to the 512 MiB limit, then one line, exit 2 (no hang)."""
    yes = shutil.which("yes")
    if yes is None:
        pytest.skip("no `yes` here")
    producer = subprocess.Popen([yes, "--", "-A INPUT -j ACCEPT"], stdout=subprocess.PIPE)
    try:
        assert producer.stdout is not None
        code, _, err = kptrace(*WHY, "--dump", "-", stdin=producer.stdout.fileno(), timeout=120)
    finally:
        producer.kill()
        producer.wait()
    assert code == 2 and one_line(err), err
    assert "more than the 512 MiB input limit" in err


def test_a_terminal_is_not_read() -> None:
    code, _, err = kptrace(*WHY, "--dump", "/dev/null")
    assert code == 2 and one_line(err)  # /dev/null: a character device holding nothing kptrace can read


# --- archives ---------------------------------------------------------------------------------------------


def test_a_sparse_member_is_refused_before_a_byte_is_read(tmp_path: Path, rss: list[int]) -> None:
    """87 bytes that say 2 GiB: refused by the member's size, before reading, naming the limit."""
    p = tmp_path / "sparse.tar.gz"
    p.write_bytes(sparse_tar_gz("iptables-save.txt", 2**31))
    start = time.monotonic()
    with pytest.raises(InputError) as e:
        load_cluster([p])
    assert "the archive member is 2147483648 bytes, more than the 512 MiB input limit" in str(e.value)
    assert time.monotonic() - start < 5


def test_a_sparse_member_under_the_limit_stops_at_its_first_chunk(tmp_path: Path, rss: list[int]) -> None:
    """500 MB of holes: under the member limit, so it is read, as a stream: refused at the first NUL."""
    p = tmp_path / "sparse.tar.gz"
    p.write_bytes(sparse_tar_gz("ip-route.txt", 500 * 1000 * 1000))
    got = entries(p)
    assert len(got) == 1 and isinstance(got[0][1], InputError) and "binary data" in str(got[0][1])
    del got
    # (checked after the fixture: the read was one chunk, so the peak grew by far less than 500 MB)


def test_sparse_members_keep_memory_small(tmp_path: Path) -> None:
    p = tmp_path / "sparse.tar.gz"
    p.write_bytes(sparse_tar_gz("ip-route.txt", 500 * 1000 * 1000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    entries(p)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB


def tar_of(members: list[tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_member_count_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "MAX_ARCHIVE_MEMBERS", 5)
    p = tmp_path / "many.tar.gz"
    p.write_bytes(tar_of([(f"f{i}.txt", b"x\n") for i in range(9)]))
    got = entries(p)
    assert isinstance(got[-1][1], InputError) and "more than 5 members" in str(got[-1][1])
    assert len(got) == 6  # five members, then the one line


def test_total_size_limit_of_an_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "MAX_INPUT_BYTES", 1000)
    p = tmp_path / "big.tar.gz"
    p.write_bytes(tar_of([(f"f{i}.txt", b"y" * 399 + b"\n") for i in range(4)]))
    got = entries(p)
    assert [isinstance(d, bytes) for _, d in got] == [True, True, False]
    assert "the archive's files add up to more than 1000 bytes" in str(got[-1][1])


def test_truncated_and_corrupt_archives(tmp_path: Path) -> None:
    data = bundle_tgz()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data[:40] + bytes(b ^ 0x55 for b in data[40:400]) + data[400:])
    for p in (cut, bad):
        said = [str(e) for _, e in entries(p) if isinstance(e, KptraceError)]
        assert any("truncated or corrupt" in s for s in said), said
        assert all("\n" not in s for s in said)
    with pytest.raises(InputError, match=r"bad.tar.gz:1:1: the archive is truncated or corrupt \(ReadError: "
                                         r"method gz: ReadError\('zlib error"):
        load_cluster([bad])


def test_an_archive_on_stdin(tmp_path: Path) -> None:
    code, out, err = kptrace(*WHY, "--dump", "-", "-o", "json", stdin=bundle_tgz())
    assert code in (0, 1, 4), err
    assert "<stdin>:node-a/iptables-save.txt" in out


# --- bundle directories -------------------------------------------------------------------------------------


def copy_bundle(tmp_path: Path, name: str = "node-a") -> Path:
    d = tmp_path / name
    shutil.copytree(DEMO, d)
    return d


def test_the_input_limit_holds_inside_a_directory(tmp_path: Path) -> None:
    """Two 300 MiB files of holes (sparse: nothing on the disk) add up past 512 MiB: the second is not read."""
    d = copy_bundle(tmp_path)
    for name in ("conntrack.txt", "ipset-save.txt"):
        with open(d / name, "wb") as f:
            f.truncate(300 * 1024 * 1024)
    got = entries(d)
    said = [str(v) for _, v in got if isinstance(v, KptraceError)]
    assert any("the bundle directory's files add up to" in s and "512 MiB input limit" in s for s in said), said


def test_a_link_out_of_the_bundle_is_not_followed_nor_echoed(tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$SECRET-HASH-do-not-echo:19000:0:99999:7:::\n")
    d = copy_bundle(tmp_path)
    (d / "iptables-save.txt").unlink()
    (d / "iptables-save.txt").symlink_to(secret)
    (d / "etc").symlink_to(tmp_path)  # a link to a directory outside: not walked into either
    code, out, err = kptrace(*WHY, "--dump", str(d))
    assert "SECRET-HASH" not in out + err and "root:" not in out + err
    assert "a link out of the bundle directory; not followed" in out + err
    code, out, err = kptrace(*WHY, "--dump", str(d), "-o", "json")
    assert "SECRET-HASH" not in out + err


def test_a_link_inside_the_bundle_is_read(tmp_path: Path) -> None:
    d = copy_bundle(tmp_path)
    (d / "rules").mkdir()
    (d / "iptables-save.txt").rename(d / "rules" / "saved.txt")
    (d / "iptables-save.txt").symlink_to(Path("rules") / "saved.txt")
    labels = [label for label, v in entries(d) if not isinstance(v, KptraceError)]
    assert str(d / "iptables-save.txt") in labels


def test_a_file_swapped_for_a_link_after_listing_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("SECRET\n")
    d = copy_bundle(tmp_path)
    victim = d / "ip-route.txt"
    it = _read_entries(d)
    seen = []
    for label, data in it:  # the directory is listed at the first step; swap a file that comes later
        if not seen:
            victim.unlink()
            victim.symlink_to(secret)
        seen.append((label, data))
    got = dict(seen)
    assert isinstance(got[str(victim)], InputError) and "not followed" in str(got[str(victim)])


def test_paths_with_newlines_keep_errors_on_one_line(tmp_path: Path) -> None:
    d = tmp_path / "bad\nname"
    d.mkdir()
    (d / "iptables-save.txt\nfake: line").write_bytes(b"\x00not text")
    code, out, err = kptrace(*WHY, "--dump", str(d / "iptables-save.txt\nfake: line"))
    assert code == 2 and one_line(err), err
    assert "\\n" in err
    code, out, err = kptrace(*WHY, "--dump", str(d))
    assert code == 2 and one_line(err), err
    b = copy_bundle(tmp_path, "node\nx")
    (b / "iptables-save.txt\nfake: line").write_bytes(b"\x00not text")
    code, out, err = kptrace(*WHY, "--dump", str(b))
    assert code in (0, 1, 4), err
    assert "fake: line" in out and not any(ln.startswith("fake: line") for ln in (out + err).splitlines())


def test_an_empty_dump_path_is_an_error() -> None:
    code, _, err = kptrace(*WHY, "--dump", "")
    assert code == 2 and one_line(err) and "empty path" in err


# --- node.yaml ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,where,message", [
    ("name: a\nnode_ips: [1.2.3.4/24]\n", "2:12", "node_ips: '1.2.3.4/24' is not an IP address"),
    ("name: a\nnode_ips:\n  - 10.0.0.1\n  - nope\n", "4:5", "node_ips: 'nope' is not an IP address"),
    ("name: [a, b]\n", "1:7", "name: expected one value, not a list"),
    ("pod_cidr: 10.244.1.0/33\n", "1:11", "pod_cidr: '10.244.1.0/33' is not a CIDR"),
    ("cluster_cidr: {a: 1}\n", "1:15", "cluster_cidr: expected one value, not a mapping"),
    ("node_ips: {a: 1}\n", "1:11", "node_ips: expected a list of IP addresses"),
    ("a: &a [x, x]\nb: [*a, *a]\n", "1:4", "YAML anchors and aliases"),
    ("a: " + "[" * 30 + "]" * 30 + "\n", "1:", "nested deeper than 20 levels"),
    ("- just\n- a list\n", "1:1", "expected a mapping"),
])
def test_node_yaml_values_that_are_not_what_they_claim(tmp_path: Path, text: str, where: str, message: str) -> None:
    p = tmp_path / "node.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_cluster([p])
    assert f"node.yaml:{where}" in str(e.value) and message in str(e.value), str(e.value)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    """The billion laughs: nine levels of nine aliases (387M strings) under node_ips, refused before it is built."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    lines.append("node_ips: *i")
    d = copy_bundle(tmp_path)
    (d / "node.yaml").write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    nodes = load_cluster([d])
    assert time.monotonic() - start < 5
    assert any("YAML anchors and aliases" in str(e) for e in nodes[0].errors)


def test_a_bad_node_yaml_in_a_bundle_is_a_note_and_the_run_goes_on(tmp_path: Path) -> None:
    d = copy_bundle(tmp_path)
    (d / "node.yaml").write_text("name: node-a\nnode_ips: [1.2.3.4/24]\n")
    code, out, err = kptrace(*WHY, "--dump", str(d))
    assert code in (0, 1, 4), err
    assert "node.yaml:2:12: node_ips: '1.2.3.4/24' is not an IP address" in " ".join(out.split())


def test_a_link_to_a_directory_in_a_cluster_directory_is_not_a_node(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "iptables-save.txt").write_text("*filter\nroot:$6$SECRET-HASH-do-not-echo:19000\n")
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    copy_bundle(cluster)
    (cluster / "evil").symlink_to(outside)
    code, out, err = kptrace(*WHY, "--dump", str(cluster), "-o", "json")
    assert code in (0, 1, 4), err
    assert "SECRET-HASH" not in out + err and "evil/" not in out


# --- the other YAML a bundle may hold: kubectl's node listing, a KubeletConfiguration ---------------------

def _laughs(indent: str = "") -> list[str]:
    """Nine levels of nine aliases: 387M addresses when expanded."""
    lines = [f'{indent}a0: &a0 ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", '
             f'"10.0.0.7", "10.0.0.8", "10.0.0.9"]']
    lines += [f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return lines


YAML_BOMBS = {
    # kubectl get nodes -o yaml with the bomb under the fields kptrace reads (the name once hung, unbounded)
    "nodes.yaml": ["apiVersion: v1", "kind: Node", "x:", *_laughs("  "), "metadata: {name: *a9}", "status:",
                   "  addresses:", "  - {type: InternalIP, address: *a9}"],
    "kubelet-config.yaml": ["kind: KubeletConfiguration", *_laughs(), "clusterDNS: *a9", "clusterDomain: *a9"],
}
DEEP = {  # PyYAML's composer and Python's JSON decoder recurse: 20,000 levels once ended in a RecursionError
    "nodes.yaml": "apiVersion: v1\nkind: Node\nmetadata: " + "[" * 20000 + "]" * 20000 + "\n",
    "nodes.json": '{"apiVersion": "v1", "kind": "Node", "x": ' + "[" * 100000 + "]" * 100000 + "}\n",
    "kubelet-config.yaml": "kind: KubeletConfiguration\nclusterDNS: " + "[" * 20000 + "]" * 20000 + "\n",
}


@pytest.mark.parametrize("name", list(YAML_BOMBS))
def test_alias_bombs_in_other_yaml_are_a_located_note(tmp_path: Path, name: str) -> None:
    d = copy_bundle(tmp_path)
    (d / name).write_text("\n".join(YAML_BOMBS[name]) + "\n")
    start = time.monotonic()
    nodes = load_cluster([d])
    assert time.monotonic() - start < 10
    errors = [str(e) for e in nodes[0].errors if name in str(e)]
    assert len(errors) == 1 and f"{name}:" in errors[0] and "YAML anchors and aliases" in errors[0], nodes[0].errors
    assert nodes[0].rulesets, "the rest of the bundle still loads"


@pytest.mark.parametrize("name", list(DEEP))
def test_deeply_nested_yaml_and_json_is_a_located_note(tmp_path: Path, name: str) -> None:
    d = copy_bundle(tmp_path)
    (d / name).write_text(DEEP[name])
    nodes = load_cluster([d])
    errors = [str(e) for e in nodes[0].errors if name in str(e)]
    assert len(errors) == 1 and ("nested deeper than 64 levels" in errors[0] or "nested too deeply" in errors[0]), \
        nodes[0].errors
    assert "\n" not in errors[0] and nodes[0].rulesets
