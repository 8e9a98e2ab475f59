"""Read --dump inputs (files, bundle directories, .tar.gz bundles) into a Node.

A bundle names each file after the command that produced it (docs/bundle.md); a file with any
other name is recognised by its content. Every input is listed with its sha256 in the output.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import field
from itertools import islice
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import IO, Any, TypeVar

from kptrace import cache
from kptrace.errors import InputError, KptraceError, ParseError
from kptrace.model._compiled import dataclass
from kptrace.model.netfilter import IPNetwork, Ruleset, Table
from kptrace.model.node import COMPLETE, EXCERPT, Node
from kptrace.model.trace import InputFile
from kptrace.model.routing import Route
from kptrace.parsers.iptables_save import backend_of_header, parse_iptables_save, parse_iptables_save_mapped
from kptrace.parsers.iptables_scan import HINTS_FORMAT, scan_iptables_save
from kptrace.walkers.kube_jumps import add_kube_proxy_jumps

# Parsers for pastes, nftables and IPVS are imported when a file of theirs turns up: most dumps are
# iptables-save plus iproute2, and a query's start-up time is part of what an SRE waits for.


def sniff_paste(text: str) -> str | None:
    from kptrace.parsers.paste import sniff_paste as sniff

    return sniff(text)


def is_nft_json(text: str) -> bool:
    from kptrace.parsers.nft_json import is_nft_json as check

    return check(text)


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How inputs are read, passed down from the command line (no module-level switches)."""

    strict: bool = False  # --strict: parse every rule of every dump, whatever its size
    cache: bool = field(default_factory=cache.enabled_by_default)  # --no-cache / KPTRACE_NO_CACHE=1


DEFAULT = LoadOptions()
MAX_INPUT_BYTES = 512 * 1024 * 1024  # past this a "dump" is not one; refuse rather than exhaust memory
MAX_LINE_BYTES = 1024 * 1024  # no command prints a longer line; one would only make every parser slow
# Plain files this large are mapped, not read (MappedFile); all of them when every dump is read lazily.
MAP_MIN_BYTES = 4 * 1024 * 1024 if os.environ.get("KPTRACE_LAZY_MIN_LINES", "") != "0" else 0
DUMP_KINDS = ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save")

# Bundle file name -> kind. Names not listed are sniffed.
BUNDLE_NAMES = {
    "iptables-save.txt": "iptables-save",
    "iptables-nft-save.txt": "iptables-save",
    "iptables-legacy-save.txt": "iptables-legacy-save",
    "ip6tables-legacy-save.txt": "ip6tables-legacy-save",
    "ip6tables-nft-save.txt": "ip6tables-save",
    "ip6tables-save.txt": "ip6tables-save",
    "ip-addr.txt": "ip-addr", "ip-addr.json": "ip-addr",
    "ip-route.txt": "ip-route", "ip-route.json": "ip-route",
    "ip-6-route.txt": "ip-route", "ip-6-route.json": "ip-route",
    "ip-rule.txt": "ip-rule", "ip-rule.json": "ip-rule", "ip-6-rule.txt": "ip-rule", "ip-6-rule.json": "ip-rule",
    "ip-link.txt": "ip-link", "ip-link.json": "ip-link",
    "ip-neigh.txt": "ip-neigh", "ip-neigh.json": "ip-neigh",
    "bridge-fdb.txt": "bridge-fdb", "bridge-fdb.json": "bridge-fdb",
    "bridge-link.txt": "bridge-link", "bridge-link.json": "bridge-link",
    "brctl-show.txt": "brctl-show",
    "flannel-subnet.env": "flannel-subnet", "subnet.env": "flannel-subnet",
    "modules.txt": "modules", "lsmod.txt": "modules",
    "sysctl.txt": "sysctl",
    "node.yaml": "node-meta",
    "nft-ruleset.txt": "nft-ruleset", "nft-ruleset.json": "nft-ruleset",
    "ipset-save.txt": "ipset", "ipset-list.txt": "ipset",
    "ipvsadm.txt": "ipvsadm", "ipvsadm-save.txt": "ipvsadm",
    "services.txt": "services", "conntrack.txt": "conntrack",
    # The node's DNS: /etc/resolv.conf, systemd-resolved's file, kubelet's resolvConf (kptrace/parsers/dns_files.py).
    "resolv.conf": "resolv-conf", "etc-resolv.conf": "resolv-conf", "systemd-resolved-resolv.conf": "resolv-conf",
    "kubelet-config.yaml": "kubelet-config", "kubelet-cmdline.txt": "kubelet-cmdline",
}
# Files a bundle may hold that `why` does not read (checks read some of them); listed, not parsed.
PASSIVE_KINDS = {
    "readme": re.compile(r"(?i)^(readme|source)"),
}


def demo_path() -> Path:
    """The demo `--demo NAME` selected (kptrace/demos.py): the cluster (node-a and node-b; traces start on
    node-a unless the source says otherwise), broken, ipvs or nft."""
    from kptrace import demos

    return demos.path()


def decode(data: bytes | MappedFile, label: str) -> str:
    if isinstance(data, MappedFile):
        data = data.mm[:]
    _check_bytes(data, label)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise ParseError(label, line, col, f"invalid UTF-8 byte 0x{data[e.start]:02x}") from None


def _decode_mapped(mm: mmap.mmap, label: str) -> str:
    """A mapped file's text, decoded from the mapping (no copy of its bytes first); errors as decode()'s."""
    _check_bytes(mm, label)
    try:
        return str(mm, "utf-8")
    except UnicodeDecodeError as e:
        before = mm[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise ParseError(label, line, col, f"invalid UTF-8 byte 0x{mm[e.start]:02x}") from None


def _drop_pages(mm: mmap.mmap) -> None:
    """Give back the pages of a mapped dump read whole (the page cache keeps them; a later read maps them again)."""
    try:
        mm.madvise(mmap.MADV_DONTNEED)
    except (AttributeError, OSError, ValueError):
        pass


def _check_bytes(data: bytes | mmap.mmap, label: str) -> None:
    if b"\x00" in data[:65536] or b"\x00" in data[-65536:]:
        raise InputError(f"{label}:1:1: binary data (NUL bytes), not a command's text output")
    _check_line_length(data, label)


def _check_line_length(data: bytes | mmap.mmap, label: str) -> None:
    if len(data) <= MAX_LINE_BYTES:
        return
    # Every half-limit window holding a newline means no line reaches the limit: ~70 C-level finds for
    # 34 MB instead of a Python step per line. Only a window without one is looked at line by line.
    half = MAX_LINE_BYTES // 2
    for w in range(0, len(data), half):
        if data.find(b"\n", w, w + half) < 0 and len(data) - w > half:
            start = data.rfind(b"\n", 0, w) + 1
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end
            if stop - start > MAX_LINE_BYTES:
                line = data[:start].count(b"\n") + 1
                raise ParseError(label, line, 1, f"line {line} is {stop - start} bytes long, more than any command "
                                                 f"prints ({MAX_LINE_BYTES // 1024} KiB max): not a command's text output")


def _is_dump_header(first: str) -> bool:
    return first.startswith(("# Generated by iptables-save", "# Generated by ip6tables-save")) or \
        re.fullmatch(r"\*(filter|nat|mangle|raw|security)\s*", first) is not None


def _large_dump_kind(name: str, label: str, f: MappedFile, options: LoadOptions = DEFAULT) -> str | None:
    """The kind of a large file when its head alone tells it is an iptables-save dump (read lazily,
    from the mapped bytes, or parsed whole from them with --strict); None sends it through the full decode and sniff."""
    _check_bytes(f.mm, label)
    head = f.mm[:262144].decode("utf-8", "ignore")
    if "\n*" not in "\n" + head[:200000]:
        return None
    if name.rsplit("/", 1)[-1] not in BUNDLE_NAMES and not _is_dump_header(head.lstrip().split("\n", 1)[0]):
        return None
    kind = sniff(name, head)
    return kind if kind in DUMP_KINDS else None


def sniff(name: str, text: str) -> str | None:
    """The kind of an input: what its content shows, whatever the file is called.

    A bundle's own file name (BUNDLE_NAMES) decides only what its content cannot: an empty file, a
    format the content sniffer does not know (`systemctl list-units`), or which of two kinds that print
    alike it is (iptables-legacy-save vs iptables-save, `ip addr` vs `ip link`). Content that is another
    command's output, a paste with prompts or several commands is read as what it is.
    """
    base = name.rsplit("/", 1)[-1]
    bundle = BUNDLE_NAMES.get(base)
    head = text.lstrip()[:4096]
    # A plain iptables-save dump (what most inputs are) is known by its first line; the paste
    # sniffer below reads line by line, which a 400k-line dump should not pay for.
    first = head.split("\n", 1)[0]
    if first.startswith("# Warning: ip") and "tables-legacy tables present" in first:
        # iptables-nft-save prints this before its dump when legacy tables exist: still a whole dump.
        first = head.split("\n", 2)[1] if head.count("\n") >= 1 else ""
    if _is_dump_header(first):
        dump = "ip6tables-save" if "ip6tables" in base or "ip6tables-save" in first else "iptables-save"
        return bundle if bundle in DUMP_KINDS else dump
    if bundle in ("resolv-conf", "kubelet-config", "kubelet-cmdline", None) and \
            ("ubelet" in head or bundle is not None):  # kubelet's command line, a KubeletConfiguration
        from kptrace.parsers.dns_files import sniff_dns

        dns = sniff_dns(bundle, text)
        if dns is not None:
            return dns
    # `nft list ruleset` (or an `nft -f` file of `add …` commands) and `nft -j list ruleset`.
    if is_nft_json(head) or re.match(r"^(#[^\n]*\n\s*)*(table|add table|add chain|add rule) (ip|ip6|inet|arp|bridge|netdev) \S+", head):
        return "nft-ruleset"
    if re.match(r"^(\{|\[\s*(\{|\]|$))", head):
        for key, kind in (('"addr_info"', "ip-addr"), ('"linkinfo"', "ip-link"), ('"link_type"', "ip-link"),
                          ('"operstate"', "ip-link"), ('"qdisc"', "ip-link"), ('"cost"', "bridge-link"),
                          ('"priority"', "ip-rule"), ('"lladdr"', "ip-neigh"), ('"mac"', "bridge-fdb"),
                          ('"dst"', "ip-route"), ('"apiVersion"', "kube-node")):
            if key in head:
                if kind == "kube-node" and not re.search(r'"kind":\s*"(Node|List|NodeList)"', text[:1048576]):
                    continue
                return kind
        return bundle
    from kptrace.parsers.paste import sniff_content

    # A file a collector named shows its kind in its first lines; a 30k-line `ipvsadm -Ln` need not be read twice.
    content = sniff_content(text, 300 if bundle is not None else 2000)
    if content == "iptables-save" and "ip6tables" in base:
        content = "ip6tables-save"
    if bundle is None or content is None or content == bundle:
        return content or bundle
    if {bundle, content} <= set(DUMP_KINDS) or {bundle, content} <= {"ip-addr", "ip-link"} or \
            {bundle, content} <= {"bridge-link", "brctl-show"}:
        return bundle  # the same command's output; the name says which variant
    return content


class MappedFile:
    """A large plain input file, mapped read-only instead of read: the lazy iptables-save scan decodes
    only the parts a walk reads, and the page cache holds the bytes once."""

    __slots__ = ("path", "stat", "mm")

    def __init__(self, path: Path, fd: int | None = None) -> None:
        if fd is None:
            with open(path, "rb") as f:
                self.stat = os.fstat(f.fileno())
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            self.stat = os.fstat(fd)
            self.mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        self.path = str(path)


STREAM_CHUNK = 1024 * 1024  # a pipe, a device or an archive member is read this much at a time, checked as it comes
MAX_ARCHIVE_MEMBERS = 10_000  # a bundle holds a few dozen files
MAX_ARCHIVE_SCAN = 2 * MAX_INPUT_BYTES  # bytes an archive's members (files or not) may unpack to before it is refused
MAX_DIR_FILES = 10_000  # files looked at in one bundle directory
STDIN_LABEL = "<stdin>"
# gzip, bzip2, xz; a plain tar says `ustar` at 257.
_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def _too_large(label: str, what: str, limit: int) -> InputError:
    return InputError(f"{label}: {what}, more than the {limit // (1024 * 1024)} MiB input limit (no node dump is that "
                      f"large); not read")


def _read_stream(f: IO[bytes], label: str, limit: int, archive_ok: bool = False) -> tuple[bytes, bool]:
    """Read a pipe, /dev/stdin, a device or an archive member once, as it comes: refused as soon as it shows
    NUL bytes (binary data: /dev/zero, /dev/urandom), a line longer than any command prints, or more than
    `limit` bytes (a stream that never ends). With `archive_ok`, data that starts like a tarball (gzip, bzip2,
    xz magic or `ustar`) is read as it is, within the limit, and said to be one: (bytes, is an archive)."""
    buf = io.BytesIO()
    size = line_start = 0
    archive = False
    first = True
    while True:
        chunk = f.read(min(STREAM_CHUNK, limit + 1 - size))
        if not chunk:
            break
        if first:
            first = False
            archive = archive_ok and (chunk.startswith(_ARCHIVE_MAGIC) or chunk[257:262] == b"ustar")
        if not archive:
            if b"\x00" in chunk:
                raise InputError(f"{label}:1:1: binary data (NUL bytes), not a command's text output")
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                line_start = size + nl + 1
            if size + len(chunk) - line_start > MAX_LINE_BYTES:
                line = buf.getbuffer()[:line_start].tobytes().count(b"\n") + 1 if line_start else 1
                raise ParseError(label, line, 1, f"line {line} is more than {MAX_LINE_BYTES} bytes long, more than any "
                                                 f"command prints ({MAX_LINE_BYTES // 1024} KiB max): not a command's text output")
        buf.write(chunk)
        size += len(chunk)
        if size > limit:
            raise _too_large(label, f"it went on past {limit} bytes", limit)
    return buf.getvalue(), archive


def _is_stream(st: os.stat_result) -> bool:
    return stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISSOCK(st.st_mode)


def is_stream_path(path: Path) -> bool:
    """`-`, /dev/stdin, a FIFO (`<(…)`) or a device: read once, in this process (a worker process started
    for it would find its standard input closed and the pipe already read or still to be read)."""
    if str(path) == "-":
        return True
    try:
        return _is_stream(path.stat())
    except OSError:
        return False


def stdin_once(paths: list[Path]) -> None:
    """Standard input can be read once: `--dump -` given twice (or with /dev/stdin) is an error, not an
    empty second input."""
    if sum(str(p) in ("-", "/dev/stdin", "/proc/self/fd/0", "/dev/fd/0") for p in paths) > 1:
        raise InputError("- (standard input) given twice: it can be read once (give the other input as a file)")


def _open_stream(path: Path) -> IO[bytes]:
    if str(path) == "-":
        if sys.stdin.isatty():
            raise InputError("--dump -: standard input is a terminal; pipe a dump into it (`iptables-save | kptrace … --dump -`)")
        return sys.stdin.buffer
    f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    if os.isatty(f.fileno()):
        f.close()
        raise InputError(f"{path}: a terminal, not a dump")
    return f


def _stream_entries(path: Path) -> Iterator[Entry]:
    """A FIFO, `<(…)`, /dev/stdin or `-`: read once, as a tarball or as one dump, within the input limit."""
    label = STDIN_LABEL if str(path) == "-" else str(path)
    try:
        f = _open_stream(path)
        try:
            data, archive = _read_stream(f, label, MAX_INPUT_BYTES, archive_ok=True)
        finally:
            if f is not sys.stdin.buffer:
                f.close()
    except KptraceError as e:
        yield label, e
        return
    except OSError as e:
        yield label, InputError(f"{label}: cannot read: {e.strerror or e}")
        return
    if archive:
        yield from _tar_entries(Path(label), data)
        return
    yield label, data


def _read_file(p: Path, mapped: bool, inside: Path | None = None) -> bytes | MappedFile:
    """A regular file's bytes (or a MappedFile, when large and `mapped`). Inside a bundle directory the file is
    opened without following a link (one swapped in after the directory was listed is not read)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) if inside is not None else os.O_RDONLY
    target = p
    if inside is not None and p.is_symlink():
        # A link inside the bundle to a file of the bundle is read; checked again here, at the open, since the
        # directory was listed before (a file swapped for a link out of it since is not followed).
        target = p.resolve()
        if not target.is_relative_to(inside):
            raise InputError(f"{p}: a link out of the bundle directory; not followed")
    fd = os.open(target, flags | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p}: not a regular file (a FIFO or a device inside a bundle is not read)")
        if st.st_size > MAX_INPUT_BYTES:
            raise _too_large(str(p), f"{st.st_size} bytes", MAX_INPUT_BYTES)
        if mapped and st.st_size >= max(MAP_MIN_BYTES, 1):
            return MappedFile(p, fd)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)  # bounded: a file that grows while it is read stops at the limit
        if len(data) > MAX_INPUT_BYTES:
            raise _too_large(str(p), f"it grew past {MAX_INPUT_BYTES} bytes while read", MAX_INPUT_BYTES)
        return data
    finally:
        os.close(fd)


Entry = tuple[str, "bytes | MappedFile | KptraceError"]


def _read_entries(path: Path, mapped: bool = False) -> Iterator[Entry]:
    """(label, bytes) of every file in path; with `mapped`, large plain files come as a MappedFile.

    A file that cannot be read comes as the error instead of its bytes, so the others still load. A bundle
    directory's files add up to at most MAX_INPUT_BYTES; a link out of it is not followed (nor read: nothing
    of its target is shown). A FIFO, `<(…)`, /dev/stdin or `-` is read once, as a stream (_stream_entries).
    """
    if str(path) == "-":
        yield from _stream_entries(path)
        return
    if path.is_dir():
        yield from _dir_entries(path, mapped)
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file or directory") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if _is_stream(st):
        yield from _stream_entries(path)
        return
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a file, a bundle directory or a pipe")
    if st.st_size > MAX_INPUT_BYTES:
        raise _too_large(str(path), f"{st.st_size} bytes", MAX_INPUT_BYTES)
    if _is_archive(path):
        yield from _tar_entries(path)
        return
    yield str(path), _guarded(path, lambda: _read_file(path, mapped))


def _is_archive(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    if head.startswith(_ARCHIVE_MAGIC):
        return True  # a tarball, or compressed data that is not text: _tar_entries says which
    if head[257:262] == b"ustar":
        return True
    if _surely_not_tar(head):
        return False  # (what tarfile.is_tarfile says, without importing tarfile and trying every compression)
    import tarfile

    return tarfile.is_tarfile(path)


def _surely_not_tar(head: bytes) -> bool:
    """True when tarfile.is_tarfile says no to a file that starts with `head` (its first 512 bytes, not
    starting with _ARCHIVE_MAGIC): a plain tar's first header needs 512 bytes and a valid checksum, and of
    the compressed forms tarfile tries (gzip, bzip2, xz) only xz's decoder reads data without a magic
    number: the old .lzma format (a properties byte below 225, then a dictionary size its decoder checks)
    and .lz (`LZIP`). False whenever it may be an archive (tarfile is asked) and on Pythons whose tarfile
    knows other compressions (3.14: zstd)."""
    if sys.version_info >= (3, 14) or len(head) < 5 or head.startswith(b"LZIP"):
        return False
    if head[0] < 225:
        d = int.from_bytes(head[1:5], "little")  # liblzma's check: 2^n, 2^n + 2^(n-1) or UINT32_MAX
        x = (d - 1) & 0xFFFFFFFF
        for shift in (2, 3, 4, 8, 16):
            x |= x >> shift
        if d == 0xFFFFFFFF or (x + 1) & 0xFFFFFFFF == d:
            return False  # may be .lzma
    if len(head) < 512:
        return True  # a truncated header
    if head[148] in (0o200, 0o377):
        return False  # a base-256 checksum field: tarfile reads it
    field = head[148:156].split(b"\0", 1)[0]
    try:
        chksum = int(field.decode("ascii").strip() or "0", 8)
    except ValueError:
        return True  # tarfile's InvalidHeaderError
    unsigned = 256 + sum(head[:148]) + sum(head[156:512])
    signed = unsigned - 256 * sum(1 for b in (*head[:148], *head[156:512]) if b >= 128)
    return chksum not in (unsigned, signed)


def _dir_entries(path: Path, mapped: bool) -> Iterator[Entry]:
    root = path.resolve()
    files: list[Path] = []
    for n, p in enumerate(path.rglob("*")):
        if n >= MAX_DIR_FILES:
            yield str(path), InputError(f"{path}: more than {MAX_DIR_FILES} entries, not a bundle directory; "
                                        f"the first {MAX_DIR_FILES} are read")
            break
        files.append(p)
    total = 0
    # Text before JSON of the same command, so steps cite the form people read.
    for p in sorted(files, key=lambda q: (str(q.parent), q.stem, q.suffix != ".txt", q.name)):
        if p.is_symlink():
            try:
                inside = p.resolve().is_relative_to(root)
            except (OSError, RuntimeError):
                inside = False
            if not inside:
                yield str(p), InputError(f"{p}: a link out of the bundle directory; not followed")
                continue
        if not p.is_file():
            continue
        try:
            size = p.stat().st_size
        except OSError:
            size = 0
        total += size
        if total > MAX_INPUT_BYTES:
            yield str(p), _too_large(str(path), f"the bundle directory's files add up to {total} bytes", MAX_INPUT_BYTES)
            return
        yield str(p), _guarded(p, lambda q=p: _read_file(q, mapped, root))  # type: ignore[misc]


def _guarded(p: Path, read: Callable[[], bytes | MappedFile]) -> bytes | MappedFile | KptraceError:
    try:
        return read()
    except KptraceError as e:
        return e
    except OSError as e:
        if e.errno == errno.ELOOP:
            return InputError(f"{p}: a link (replaced after the directory was listed); not followed")
        return InputError(f"{p}: cannot read: {e.strerror or e}")


def _tar_entries(path: Path, data: bytes | None = None) -> Iterator[Entry]:
    """Members read in memory (a bundle is never unpacked onto the disk), each checked as it is read, within
    the limits: MAX_INPUT_BYTES per member and for all of them, MAX_ARCHIVE_MEMBERS members, MAX_ARCHIVE_SCAN
    bytes unpacked in all (a member's size is checked before a byte of it is read: a sparse member says
    2 GB in a 160-byte archive)."""
    import lzma
    import tarfile
    import zlib

    total = scanned = members = 0
    last = None
    try:
        with (tarfile.open(path) if data is None else tarfile.open(fileobj=io.BytesIO(data))) as tar:
            while True:
                m = tar.next()
                if m is None:
                    break
                members += 1
                scanned += m.size
                if members > MAX_ARCHIVE_MEMBERS:
                    yield str(path), InputError(f"{path}: more than {MAX_ARCHIVE_MEMBERS} members, not a bundle; "
                                                f"the rest of the archive is not read")
                    return
                if m.isfile() and m.size > MAX_INPUT_BYTES:
                    yield f"{path}:{m.name}", _too_large(f"{path}:{m.name}", f"the archive member is {m.size} bytes",
                                                         MAX_INPUT_BYTES)
                if scanned > MAX_ARCHIVE_SCAN:
                    yield str(path), InputError(f"{path}: its members unpack to more than {MAX_ARCHIVE_SCAN} bytes "
                                                f"(the archive limit); the rest of the archive is not read")
                    return
                getattr(tar, "members").clear()  # tarfile keeps every member it has seen: the archive is read once, in order
                if not m.isfile():
                    continue
                label = f"{path}:{m.name}"
                if m.size > MAX_INPUT_BYTES:
                    continue  # said above
                total += m.size
                if total > MAX_INPUT_BYTES:
                    yield label, InputError(f"{label}: the archive's files add up to more than {MAX_INPUT_BYTES} bytes "
                                            f"(the {MAX_INPUT_BYTES // (1024 * 1024)} MiB input limit); the rest of "
                                            f"the archive is not read")
                    return
                f = tar.extractfile(m)
                if f is not None:
                    try:
                        yield label, _read_stream(f, label, min(m.size, MAX_INPUT_BYTES))[0]
                    except KptraceError as e:
                        yield label, e
                last = m.name
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as e:
        after = f" after member {last}" if last else ""
        # tarfile's message lists every compression it tried, a line each: the one that applies, on one line.
        lines = [ln.strip(" -") for ln in (str(e) or "unexpected end of data").splitlines() if ln.strip()]
        why = next((ln for ln in lines if ln.startswith("method gz") and data is None and str(path).endswith("gz")), None)
        why = " ".join((why or lines[-1] if len(lines) > 1 else lines[0] if lines else "").split())[:200]
        yield f"{path}", InputError(f"{path}: the archive is truncated or corrupt{after} ({type(e).__name__}: "
                                    f"{why}); the members before it are read")


def _node_dirs(path: Path) -> list[Path]:
    """A bundle directory is one node; a directory holding only bundle directories is a cluster."""
    if not path.is_dir():
        return [path]
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    # A link to a directory is not a node of this cluster: followed, it would read whatever it points at.
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    if files or not subdirs:
        return [path]
    return subdirs


def load_cluster(paths: list[Path], node_ips: list[str] | None = None, pod_cidrs: list[str] | None = None,
                 keep_unusable: bool = False, options: LoadOptions = DEFAULT) -> list[Node]:
    """One Node per bundle directory; loose files (pasted dumps) together make one more node.

    A bundle with nothing kptrace can read is left out (kept, with its errors, for `check` with
    keep_unusable) while another one can be read; with none, the first one's reason is the error.
    """
    stdin_once(paths)
    groups: list[list[Path]] = []
    loose: list[Path] = []
    for p in paths:
        if str(p) == "":
            raise InputError("--dump '': an empty path (give a file, a bundle directory or a .tar.gz)")
        if p.is_dir():
            groups.extend([d] for d in _node_dirs(p))
        else:
            loose.append(p)
    if loose:
        # Pasted files and --node-ip describe the node the user is asking about: trace starts there. Files
        # whose shell prompts name different hosts (`clear@clr-01 ~ $`, `[root@node2 ~]#`) are those hosts.
        groups[:0] = _by_prompt_host(loose)
    if not groups:
        raise InputError("no input: give --dump PATH (a file, a bundle directory or .tar.gz)")
    nodes = []
    for i, group in enumerate(groups):
        ips = node_ips if i == 0 else None
        nodes.append(load_node(group, ips, pod_cidrs, must_be_usable=False, options=options))
    same_node(nodes, groups)
    for i, n in enumerate(nodes):
        if n.name == "node":
            host = _prompt_host(groups[i][0]) if len(groups) > 1 and groups[i][0].is_file() else None
            n.name = host or _name_from(groups[i], i)
    usable = [n for n in nodes if n.usable]
    if not usable:
        raise _nothing_usable(nodes[0], ", ".join(str(p) for p in paths))
    return nodes if keep_unusable else usable


_PROMPT_HOST_RES = (re.compile(r"^\s*\[?[\w.-]+@([A-Za-z0-9][\w.-]*)[\s:~\]]"),)


def _prompt_host(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(8192).decode("utf-8", "replace")
    except OSError:
        return None
    for line in head.splitlines()[:40]:
        for rx in _PROMPT_HOST_RES:
            m = rx.match(line)
            if m and ("$" in line or "#" in line):
                return m.group(1)
    return None


def _by_prompt_host(files: list[Path]) -> list[list[Path]]:
    """Loose files, one group per host their prompts name (files naming none go with the first host)."""
    hosts = {f: _prompt_host(f) if f.is_file() else None for f in files}
    named = list(dict.fromkeys(h for h in hosts.values() if h))
    if len(named) < 2:
        return [files]
    groups = [[f for f in files if hosts[f] == h or (hosts[f] is None and h == named[0])] for h in named]
    return groups


def same_node(nodes: list[Node], groups: list[list[Path]]) -> None:
    """Two inputs that claim one node (its name, or one of its addresses) are refused: a before/after pair
    traced as one cluster would answer from whichever came first. `kptrace diff` compares them."""
    seen: dict[tuple[str, object], int] = {}
    for i, n in enumerate(nodes):
        keys: list[tuple[str, object]] = [("name", n.name)] if n.name != "node" else []
        keys += [("address", ip) for ip in n.node_ips]
        for key in keys:
            j = seen.setdefault(key, i)
            if j != i:
                what = f"node {n.name}" if key[0] == "name" else f"address {key[1]}"
                a, b = (", ".join(str(p) for p in groups[k]) for k in (j, i))
                raise InputError(f"{a} and {b} both claim {what}: give one of them (two snapshots of one node are "
                                 f"compared with kptrace diff, not traced together)")


def _nothing_usable(node: Node, where: str) -> InputError:
    if node.errors:
        more = f" (and {len(node.errors) - 1} more input(s) not read)" if len(node.errors) > 1 else ""
        return InputError(f"{node.errors[0]}{more}")
    return InputError(f"nothing kptrace can read in {where}: no command output it knows (docs/bundle.md lists them)")


def _name_from(group: list[Path], i: int) -> str:
    return group[0].name.removesuffix(".tar.gz").removesuffix(".tgz") if group[0].is_dir() or group[0].suffix in (".gz", ".tgz") else f"node{i + 1}"


def load_node(paths: list[Path], node_ips: list[str] | None = None, pod_cidrs: list[str] | None = None,
              must_be_usable: bool = True, options: LoadOptions = DEFAULT) -> Node:
    node = _new_node(node_ips, pod_cidrs)
    for p in paths:
        try:
            for label, data in _read_entries(p, mapped=True):
                _load_safely(node, _short(label, p), data, in_bundle=p.is_dir() or label != str(p), options=options)
        except KptraceError as e:
            node.errors.append(_as_parse_error(e, str(p)))
    node = _finish_node(node, ", ".join(str(p) for p in paths))
    if must_be_usable and not node.usable:
        raise _nothing_usable(node, ", ".join(str(p) for p in paths))
    return node


def load_node_from_texts(files: dict[str, bytes], node_ips: list[str] | None = None,
                         pod_cidrs: list[str] | None = None, labels: dict[str, str] | None = None,
                         options: LoadOptions = DEFAULT) -> Node:
    """A Node from bundle files held in memory (bundle file name -> bytes), in the order given.

    `kptrace collect` and the live `why` capture the same texts a bundle holds and hand them here,
    so a live node and its bundle go through one parse path. `labels` gives the name each file is
    cited by (default: its bundle name); the bundle name still decides its kind.
    """
    node = _new_node(node_ips, pod_cidrs)
    node.not_collected["<collector>"] = "kptrace"  # kptrace's own capture (collect, live), as its manifest says
    labels = labels or {}
    for name, data in files.items():
        _load_safely(node, labels.get(name, name), data, in_bundle=True, name=name, options=options)
    node = _finish_node(node, ", ".join(labels.get(n, n) for n in files) or "no files")
    if not node.usable:
        raise _nothing_usable(node, "the node")
    return node


def _as_parse_error(e: KptraceError, label: str) -> ParseError:
    """Every unread input as `file:line:col: what is wrong`, for KPT001 and parse's notes."""
    if isinstance(e, ParseError):
        return e
    text = str(e)
    first, _, rest = text.partition(": ")
    if rest and first != label and first.endswith("/" + label.rsplit("/", 1)[-1]):
        text = f"{label}: {rest}"  # the full path the reader saw, cited as the bundle cites the file
    if text.startswith(label + ":"):
        rest = text[len(label) + 1:].lstrip()
        m = re.match(r"(\d+):(\d+): (.*)", rest, re.S)
        if m:
            return ParseError(label, int(m.group(1)), int(m.group(2)), m.group(3))
        return ParseError(label, 1, 1, rest)
    return ParseError(label, 1, 1, text)


def _load_safely(node: Node, label: str, data: bytes | MappedFile | KptraceError, in_bundle: bool = False,
                 name: str | None = None, options: LoadOptions = DEFAULT) -> None:
    """Load one input; one that cannot be read is recorded (KPT001) and the others still load."""
    if isinstance(data, KptraceError):
        node.errors.append(_as_parse_error(data, label))
        return
    try:
        _load_one(node, label, data, in_bundle, name, options)
    except KptraceError as e:
        if not isinstance(e, ParseError) and "claim the same node" in str(e):
            raise  # two inputs of one node that contradict each other: the user must say which is which
        node.errors.append(_as_parse_error(e, label))
        node.inputs.append(InputFile(label, "unreadable", _digest(data)))
    except (RecursionError, MemoryError, ValueError) as e:
        # A parser's limit reached on hostile input: this file is not read, the run goes on.
        node.errors.append(ParseError(label, 1, 1, f"cannot read this input ({type(e).__name__}: {str(e)[:120]})"))
        node.inputs.append(InputFile(label, "unreadable", _digest(data)))


def _digest(data: bytes | MappedFile, use_cache: bool = True) -> str:
    if isinstance(data, MappedFile):
        return cache.file_digest(data.path, data.stat, data.mm, use_cache)
    from hashlib import sha256

    return sha256(data).hexdigest()


def _new_node(node_ips: list[str] | None, pod_cidrs: list[str] | None) -> Node:
    node = Node()
    for raw in node_ips or []:
        try:
            node.node_ips.append(ip_address(raw))
        except ValueError:
            raise InputError(f"--node-ip: '{raw}' is not an IP address") from None
    for raw in pod_cidrs or []:
        try:
            node.pod_cidrs.append(ip_network(raw, strict=False))
        except ValueError:
            raise InputError(f"--pod-cidr: '{raw}' is not a CIDR") from None
    return node


def _finish_node(node: Node, where: str) -> Node:
    # What could not be read is said wherever the node's assumptions are shown (trace, JSON, graph).
    node.assumptions.extend(f"not read: {e}" for e in node.errors)
    for fam, legacy in list(node.legacy_rulesets.items()):
        if not legacy.tables:
            del node.legacy_rulesets[fam]
        elif fam not in node.rulesets:
            # Only the legacy backend holds rules: it is the node's iptables.
            node.rulesets[fam] = node.legacy_rulesets.pop(fam)
    if node.nft is not None:
        for fam in (4, 6):
            if fam not in node.rulesets:
                # The nft ruleset lists every nf_tables table, iptables-nft's included.
                node.rulesets[fam] = Ruleset(getattr(node.nft, "file", "nft"), fam)
    _uncollected_legacy(node)
    _unknown_nft(node)
    for rs in [*node.rulesets.values(), *node.legacy_rulesets.values()]:
        add_kube_proxy_jumps(rs)
    if not node.pod_cidrs:
        _infer_pod_cidrs(node)
    _infer_node_addresses(node)
    if node.nft is not None:
        from kptrace.walkers.nft import reconcile

        reconcile(node)
    return node


def _short(label: str, root: Path) -> str:
    """Cite bundle files by their path inside the bundle, as users see them in a listing."""
    if root.is_dir():
        try:
            return str(Path(label).relative_to(root.parent))
        except ValueError:
            return label
    return label


def _large_conntrack(node: Node, name: str, label: str, data: bytes | MappedFile) -> bool:
    """A large conntrack table (a million entries) is read in place from its bytes (ConntrackTable): neither
    decoded into a second copy nor made into a million objects (docs/performance.md)."""
    from kptrace.parsers.conntrack import LARGE_TABLE_BYTES, ConntrackTable

    buf = data.mm if isinstance(data, MappedFile) else data
    if len(buf) < LARGE_TABLE_BYTES:
        return False
    head = bytes(buf[:65536])
    if not head.isascii() or sniff(name, head[:head.rfind(b"\n") + 1].decode("ascii")) != "conntrack":
        return False
    _check_bytes(buf, label)
    errors: list[ParseError] = []
    table = ConntrackTable(buf, label, errors)
    node.conntrack = table if node.conntrack is None else [*node.conntrack, *table]
    node.errors.extend(errors[:20])  # the entries that do read are used; the first few bad lines are said
    _saw(node, "conntrack", label, "", False)
    return True


def _load_one(node: Node, label: str, data: bytes | MappedFile, in_bundle: bool = False, name: str | None = None,
              options: LoadOptions = DEFAULT) -> None:
    digest = _digest(data, options.cache)
    base = (name or label).rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    if base.startswith("manifest"):
        _manifest(node, decode(data, label), label)
        node.inputs.append(InputFile(label, "manifest", digest))
        return
    if any(rx.match(base) for rx in PASSIVE_KINDS.values()):
        return
    if base.startswith("hostname"):
        # The node's name (kptrace collect writes `hostname`'s output): node.yaml's name wins.
        name = decode(data, label).strip()
        if name and " " not in name and node.name == "node":
            node.name = name
        node.saw("node_meta", EXCERPT, label)
        node.inputs.append(InputFile(label, "hostname", digest))
        return
    if isinstance(data, MappedFile):
        kind = _large_dump_kind(name or label, label, data, options)
        if kind is not None:
            _load_dump(node, label, kind, data.mm, digest, options)
            node.inputs.append(InputFile(label, kind, digest))
            return
    if _large_conntrack(node, name or label, label, data):
        node.inputs.append(InputFile(label, "conntrack", digest))
        return
    text = decode(data, label)
    kind = sniff(name or label, text)
    if kind is None:
        if not text.strip():
            return
        # Said once, as one line; whatever else the input holds still loads.
        raise ParseError(label, 1, 1, "cannot tell what command produced this file (docs/bundle.md lists the "
                                      "outputs kptrace reads)")
    if kind in DUMP_KINDS:
        _load_dump(node, label, kind, text, digest, options)
    elif kind == "ip-addr":
        # A bundle may hold `ip addr` both as text and as JSON: the same address counts once.
        from kptrace.parsers.ip_addr import parse_ip_addr

        seen = {(a.iface, a.address) for a in node.addresses}
        node.addresses.extend(a for a in _tolerant(node, parse_ip_addr, text, label) if (a.iface, a.address) not in seen)
        _links_of_ip_addr(node, text, label)
    elif kind in _LIST_KINDS:
        parse, attr, key = _LIST_KINDS[kind]
        if kind == "ip-link" and node.links_from_addr:
            # `ip -d link` says what `ip addr` could not (kind, bridge, VXLAN): its entries replace those.
            node.links[:] = [lk for lk in node.links if lk.name not in node.links_from_addr]
            node.links_from_addr.clear()
        current = getattr(node, attr)
        seen_keys = {key(x) for x in current}
        # Text and JSON of one command, or `ip route show table all` and `ip -6 route` (which overlap):
        # the same entry counts once, cited where it was first read.
        current.extend(x for x in _tolerant(node, parse, text, label) if key(x) not in seen_keys)
        if kind == "ip-link":
            _ports_of_ip_link(node, text, label)
    elif kind == "flannel-subnet":
        from kptrace.parsers.flannel import parse_flannel_subnet

        node.flannel = _tolerant(node, parse_flannel_subnet, text, label)
    elif kind == "modules":
        from kptrace.parsers.modules import parse_modules

        node.modules = (node.modules or []) + _tolerant(node, parse_modules, text, label)
    elif kind == "sysctl":
        from kptrace.parsers.sysctl import parse_sysctl

        node.merge_sysctls(_tolerant(node, parse_sysctl, text, label))
    elif kind == "node-meta":
        _node_meta(node, text, label)
    elif kind == "services":
        from kptrace.parsers.systemctl import parse_services

        node.services = (node.services or ()) + _tolerant(node, parse_services, text, label)
    elif kind == "conntrack":
        from kptrace.parsers.conntrack import parse_conntrack

        errors: list[ParseError] = []
        node.conntrack = [*(node.conntrack or ()), *parse_conntrack(text, label, errors)]
        node.errors.extend(errors[:20])  # the entries that do read are used; the first few bad lines are said
    elif kind == "paste":
        from kptrace.parsers.paste import apply_to_node, parse_paste, paste_kind

        pasted = parse_paste(text, label)
        apply_to_node(node, pasted)
        # Lines of a paste nothing could read are said like any unreadable input (KPT001, "not read:").
        node.errors.extend(ParseError(u.source.file, u.source.line, u.source.col, u.reason, u.source.text)
                           for u in pasted.unrecognised[:MAX_BAD_LINES])
        # A part of it that did not read at all (a node listing refused whole: an alias bomb) is said too.
        node.errors.extend(ParseError(u.source.file, u.source.line, u.source.col, u.reason, u.source.text)
                           for sec in pasted.sections if sec.model is None and sec.used for u in sec.unparsed[:1])
        # The paste recorded what each of its parts shows, and how much (Node.evidence).
        node.inputs.append(InputFile(label, paste_kind(pasted), digest))
        return
    elif kind in ("resolv-conf", "kubelet-config", "kubelet-cmdline"):
        from kptrace.parsers.dns_files import load_dns_file

        load_dns_file(node, kind, text, label, base)
    elif kind == "kube-node":
        from kptrace.parsers.kube_node import parse_kube_nodes
        from kptrace.parsers.paste import apply_observed

        kube = parse_kube_nodes(text, label)
        apply_observed(node, kind, kube)
        if len(kube) == 1:
            node.saw("node_meta", COMPLETE, label)
    elif kind == "nft-ruleset":
        if node.nft is not None:
            # nft-ruleset.txt and .json are the same command's output: the text (read first) is cited.
            node.assumptions.append(f"{label} was not read: the nft ruleset is read from {getattr(node.nft, 'file', '?')}")
            return
        from kptrace.parsers.nft_json import parse_nft_json
        from kptrace.parsers.nft_scan import read_nft_text

        node.nft = parse_nft_json(text, label) if is_nft_json(text) else read_nft_text(text, label, lazy=not options.strict)
        node.assumptions.extend(node.nft.assumptions)  # a large dump read lazily says so
    elif kind == "ipset":
        # `ipset save` and `ipset list` of the same node name the same sets: the first read wins.
        from kptrace.parsers.ipset import parse_ipset

        sets = _tolerant(node, parse_ipset, text, label)
        node.ipsets = {**sets, **(node.ipsets or {})}
    elif kind == "ipvsadm":
        from kptrace.parsers.ipvsadm import parse_ipvsadm

        table = _tolerant(node, parse_ipvsadm, text, label)
        if table.services or not table.connections:  # a connection list alone (-Lnc) says nothing of the services
            known = {str(s) for s in node.ipvs or []}
            node.ipvs = (node.ipvs or []) + [s for s in table.services if str(s) not in known]
        if table.connections:
            node.ipvs_connections = (node.ipvs_connections or []) + list(table.connections)
            node.saw("ipvs_connections", COMPLETE, label)
            if not table.services:
                node.inputs.append(InputFile(label, kind, digest))
                return
        node.assumptions.extend(table.notes)
    if kind != "paste" and kind not in DUMP_KINDS:
        _saw(node, kind, label, text, base in BUNDLE_NAMES)
    node.inputs.append(InputFile(label, kind, digest))


T = TypeVar("T")
MAX_BAD_LINES = 50  # past this many unreadable lines a file is not the output it looked like


def _tolerant(node: Node, parse: Callable[[str, str], T], text: str, label: str) -> T:
    """Parse a line-based output; a line that does not read is said (KPT001) and left out, the rest is used.

    One redacted address or a line a web page wrapped should not throw away a whole `ip route`.
    """
    if text.lstrip().startswith(("[", "{")):
        return parse(text, label)  # JSON: a line is not a unit
    lines: list[str] | None = None
    for _ in range(MAX_BAD_LINES):
        try:
            return parse(text if lines is None else "\n".join(lines), label)
        except ParseError as e:
            lines = lines if lines is not None else text.split("\n")
            if not 1 <= e.line <= len(lines) or not lines[e.line - 1].strip():
                raise
            node.errors.append(e)
            lines[e.line - 1] = ""
    raise ParseError(label, 1, 1, f"more than {MAX_BAD_LINES} lines do not read: not the output it looks like")


# Input kind -> the kind of fact it shows (Node.evidence).
KIND_FACTS = {
    "ip-addr": "addresses", "ip-route": "routes", "ip-rule": "policy_rules", "ip-link": "links",
    "ip-neigh": "neighbors", "bridge-fdb": "fdb", "bridge-link": "bridge_ports", "brctl-show": "bridge_ports",
    "flannel-subnet": "flannel", "modules": "modules", "sysctl": "sysctls", "node-meta": "node_meta",
    "services": "services", "conntrack": "conntrack", "nft-ruleset": "nft", "ipset": "ipsets", "ipvsadm": "ipvs",
    "kube-node": "kube_nodes", "resolv-conf": "resolv_conf", "kubelet-config": "kubelet_dns",
    "kubelet-cmdline": "kubelet_dns",
}


def _saw(node: Node, kind: str, label: str, text: str, bundle_name: bool) -> None:
    fact = KIND_FACTS.get(kind)
    if fact is None:
        return
    level = _level(kind, text, node, bundle_name)
    if fact == "routes":
        # `ip -6 route` shows no IPv4 route, and `ip route` (before iproute2 6.x) no IPv6 one.
        for fam in route_families(text, label):
            node.saw("routes" if fam == 4 else "routes6", level, label)
        return
    node.saw(fact, level, label)


def route_families(text: str, label: str) -> list[int]:
    """Which families a route listing shows: by its name (ip-6-route), else by the destinations in it."""
    if "-6-" in label.rsplit("/", 1)[-1] or " -6 " in f" {text[:200]} ":
        return [6]
    head = text[:65536]
    if head.lstrip().startswith("["):
        v6, v4 = '"dst":"' in head and "::" in head, True
    else:
        firsts = [ln.split()[0] for ln in head.splitlines() if ln.split()]
        v4 = any("." in w or w == "default" for w in firsts)
        v6 = any(":" in w for w in firsts)
    return [f for f, on in ((4, v4), (6, v6)) if on] or [4]


def _level(kind: str, text: str, node: Node, bundle_name: bool = False) -> str:
    """A command's own output file is complete, except where its form shows it is a part."""
    if kind == "sysctl":
        # `sysctl -a` shows every key, so a key it lacks does not exist (net.bridge.* without br_netfilter).
        # The keys a bundle asks for (docs/bundle.md) or a paste of a few: a key not there is unknown.
        whole = _is_sysctl_all(text) or node.not_collected.get("<collector>") == "kptrace"
        return COMPLETE if whole else EXCERPT
    if kind == "modules":
        # lsmod with its header, or /proc/modules: every module. `lsmod | grep x`: only x's lines.
        # A bundle's modules.txt is `cat /proc/modules` (docs/bundle.md).
        lines = [ln for ln in text.splitlines() if ln.strip()]
        whole = bundle_name or (lines and lines[0].split()[:1] == ["Module"]) or len(lines) >= 15
        return COMPLETE if whole else EXCERPT
    if kind == "ipvsadm" and "Prot LocalAddress:Port" not in text and not text.lstrip().startswith("-A"):
        return EXCERPT
    return COMPLETE


def _is_sysctl_all(text: str) -> bool:
    """`sysctl -a`, or its net.* part (`sysctl -a | grep ^net.`, what docs/bundle.md collects)."""
    lines = text.splitlines()
    net = sum(1 for ln in lines if ln.startswith("net.ipv4.conf."))
    return len(lines) >= 200 and net >= 20


def _manifest(node: Node, text: str, label: str) -> None:
    """A bundle's manifest.json: which parts were not collected (timed out, denied), and by what."""
    import json

    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ParseError(label, getattr(e, "lineno", 1), getattr(e, "colno", 1), "invalid JSON") from None
    if not isinstance(doc, dict):
        return
    if "kptrace_version" in doc:
        # kptrace collect reads every key docs/bundle.md lists from /proc/sys: a key it lacks does not exist.
        node.not_collected["<collector>"] = "kptrace"
    versions = doc.get("iptables_versions")
    if isinstance(versions, dict):
        node.iptables_versions = {str(k): v for k, v in versions.items() if isinstance(v, (str, bool, type(None)))}
    entries = doc.get("commands", doc.get("files"))
    if isinstance(entries, dict):  # {file: null | {status: …}}
        entries = [{"file": k, **(v if isinstance(v, dict) else {"status": "missing" if v is None else "ok"})}
                   for k, v in entries.items()]
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("status") == "absent" and isinstance(entry.get("absent_file"), str):
            # The node has no such file (no systemd-resolved): known, and said, not unknown (dns checks).
            node.absent[entry["absent_file"]] = str(entry.get("message") or "absent")[:200]
        if not isinstance(entry, dict) or str(entry.get("status", "ok")) in ("ok", "absent", "skipped"):
            continue  # absent: the node has no such thing (no IPVS); skipped: not asked for
        command = entry.get("command") or [""]
        prog = str(command[0]).rsplit("/", 1)[-1] if isinstance(command, list) and command else ""
        name = entry.get("file") or (f"{prog}.txt" if prog.endswith("-save") else prog)
        if name:
            node.not_collected[str(name)] = str(entry.get("message") or entry.get("status"))[:200]


def _ports_of_ip_link(node: Node, text: str, label: str) -> None:
    """`ip -d link` shows each bridge port's hairpin mode (`bridge_slave … hairpin on`): it completes the ports
    `bridge link` (without -d) listed without it, and adds those it did not list."""
    from kptrace.parsers.bridge import ports_of_ip_link

    try:
        derived = ports_of_ip_link(text, label)
    except (ValueError, IndexError):
        return
    have = {p.name: i for i, p in enumerate(node.bridge_ports)}
    for port in derived:
        i = have.get(port.name)
        if i is None:
            node.bridge_ports.append(port)
            have[port.name] = len(node.bridge_ports) - 1
        elif node.bridge_ports[i].hairpin is None and port.hairpin is not None:
            node.bridge_ports[i] = port


def _links_of_ip_addr(node: Node, text: str, label: str) -> None:
    """`ip addr` shows each device's MAC, MTU and state too: kept as links when the input has no `ip link`."""
    from kptrace.parsers.ip_addr import links_of_ip_addr

    if node.level("links") == COMPLETE:
        return
    known = {lk.name for lk in node.links}
    links = [lk for lk in links_of_ip_addr(text, label) if lk.name not in known]
    node.links.extend(links)
    node.links_from_addr.update(lk.name for lk in links)
    if links:
        node.saw("links", EXCERPT, label)


def _load_dump(node: Node, label: str, kind: str, data: str | mmap.mmap, digest: str,
               options: LoadOptions = DEFAULT) -> bool:
    """An iptables-save dump into node.rulesets (or legacy_rulesets); False if it adds nothing."""
    if digest in {i.sha256 for i in node.inputs}:
        # iptables-save.txt is whichever backend the node's iptables points at: a copy of one we read.
        node.assumptions.append(f"{label} is identical to another dump in the input and was read once")
        return False
    family = 6 if kind.startswith("ip6") else None
    level = COMPLETE
    starts: list[int] | None = None
    try:
        if options.strict:
            if isinstance(data, str):
                rs = parse_iptables_save(data, label, family).ruleset
            else:
                _decode_mapped(data, label)  # (the whole text decodes: errors as decode()'s, before any other)
                rs = parse_iptables_save_mapped(data, label, family).ruleset
        else:
            hints = cache.get(digest, options.cache)
            if hints is not None and hints.get("format") != HINTS_FORMAT:
                hints = None  # written by another version of the scanner: scan again, and replace it
            rs = scan_iptables_save(data, label, family, hints)
            if rs.scan_hints is not None and not isinstance(data, str):
                # Where the `#` lines are (finding them touches every page of the file): kept with the scan.
                starts = _cached_starts(hints, data)
                if starts is None:
                    starts = rs.scan_hints["comments"] = list(islice(_hash_lines(data), 50))
                    hints = None  # (an entry written before they were kept: written anew, with them)
            if rs.scan_hints is not None and hints is None:
                cache.put(digest, rs.scan_hints, options.cache)
    except ParseError:
        # An edited, redacted or cut dump: read what can be read, say what could not (KPT001).
        problems: list[ParseError] = []
        text = data if isinstance(data, str) else decode(data[:], label)
        rs = parse_iptables_save(text, label, family, lenient=problems).ruleset
        node.errors.extend(problems[:50])
        if any("COMMIT" in e.message for e in problems):
            level = EXCERPT
            _unknown_tables(rs, label)
    rs.text = data
    hinted = rs.scan_hints.get("newlines") if rs.scan_hints is not None else None
    rs.comments = _comment_lines(data, label, hinted if isinstance(hinted, list) else None, starts)
    if options.strict and not isinstance(data, str):
        _drop_pages(data)  # every rule is parsed: the pages read for it are given back
    for c in rs.comments:
        if c.text.lstrip("# ").startswith(("Warning: iptables-legacy tables present", "Warning: ip6tables-legacy tables")):
            # iptables-nft says the legacy backend holds tables this dump does not show: unknown, not empty.
            node.legacy_warnings.append(c)
            name = "ip6tables-legacy-save.txt" if "ip6tables" in c.text else "iptables-legacy-save.txt"
            node.not_collected.setdefault(name, f"iptables says legacy tables are present ({c.file}:{c.line}) "
                                                f"and the input does not show them")
    rs.backend = "legacy" if "legacy" in kind else _backend(rs.comments, label)
    if rs.family in node.coverage:
        from kptrace.parsers.paste import drop_partial

        drop_partial(node, rs.family, label)  # a whole dump supersedes listings and excerpts read before it
    # Each backend's rules run in the kernel: the `iptables` command's (node.rulesets) and legacy's.
    main = node.rulesets.get(rs.family)
    if rs.backend == "legacy" and (main is None or main.backend != "legacy"):
        slot = node.legacy_rulesets
    elif rs.backend != "legacy" and main is not None and main.backend == "legacy" and rs.family not in node.legacy_rulesets:
        node.legacy_rulesets[rs.family] = node.rulesets.pop(rs.family)  # the nft one is the node's iptables
        slot = node.rulesets
    else:
        slot = node.rulesets
    if rs.family in slot and slot[rs.family].tables:
        if not rs.tables:
            return False
        other = slot[rs.family]
        raise InputError(f"{label}: {other.file} and {label} are two different IPv{rs.family} iptables-save dumps of "
                         f"the same backend, which claim the same node: give them as two nodes' bundle directories "
                         f"(or name the backends iptables-nft-save.txt and iptables-legacy-save.txt)")
    if rs.tables or rs.family not in slot:
        slot[rs.family] = rs
    fact = "iptables-legacy" if slot is node.legacy_rulesets else ("ip6tables" if rs.family == 6 else "iptables")
    node.saw(fact, level, label)
    return True


def _uncollected_legacy(node: Node) -> None:
    """The manifest says iptables-legacy-save was not collected (timed out, denied): its rules are unknown,
    not absent. Unless a whole module list shows no legacy table module loaded, a walk meets a rule standing
    for them, and the answer says it depends on them."""
    from kptrace.walkers.absent import unknown_ruleset

    for fam, name in ((4, "iptables-legacy-save.txt"), (6, "ip6tables-legacy-save.txt")):
        why = node.not_collected.get(name)
        if why is not None and fam in node.legacy_rulesets and why.startswith("iptables says legacy tables"):
            del node.not_collected[name]  # the warning said they exist, and the input does show them
            continue
        if why is None or fam in node.legacy_rulesets or fam not in node.rulesets:
            continue
        prefix = "iptable_" if fam == 4 else "ip6table_"
        if node.level("modules") == COMPLETE and not any(m.name.startswith(prefix) for m in node.modules or []):
            continue  # legacy tables exist only while an iptable_* module is loaded
        rs = unknown_ruleset(fam, why=f"{name} was not collected ({why}): the legacy backend's rules are unknown")
        node.legacy_rulesets[fam] = rs
        node.assumptions.append(rs.assumptions[0])


# Chains kube-proxy writes in iptables and IPVS mode (kubelet's KUBE-FIREWALL, KUBE-KUBELET-CANARY are not among them).
_KUBE_PROXY_CHAINS = re.compile(r"KUBE-(SERVICES|FORWARD|NODEPORTS|POSTROUTING|PROXY-CANARY|EXTERNAL-SERVICES|"
                                r"PROXY-FIREWALL|(SVC|SEP|FW|XLB|EXT|SVL)-.*)$")


def _unknown_nft(node: Node) -> None:
    """No nft ruleset in the input: are there nft tables of the node's own (kube-proxy's nftables mode, firewalld)?

    Absent is not empty (issue 15): they are unknown, and every walk meets a stand-in for them
    (walkers/absent.py), when a manifest says the ruleset was not collected, or when the input shows a Kubernetes
    node (node.yaml, `kubectl get node`, kubelet's settings, a KUBE-* chain) whose kube-proxy mode it does not
    show as iptables or IPVS: its Service rules may be an nft table. As for legacy tables, an input with no such
    sign (a pasted iptables-save of kube-proxy's iptables mode, a Docker host's) is taken to have none, which
    the answer says."""
    name = "nft-ruleset.txt"
    if node.nft is not None or name in node.absent or "nft-ruleset.json" in node.absent or not node.rulesets:
        return
    why = node.not_collected.get(name) or node.not_collected.get("nft-ruleset.json")
    if why is None and node.not_collected.get("<collector>") == "kptrace":
        return  # kptrace's collector lists the ruleset; with none listed, the node has no nft tables
    shown = [rs for rs in [*node.rulesets.values(), *node.legacy_rulesets.values()] if rs.file != "<not in the input>"]
    kube_proxy = bool(node.ipvs) or any(_KUBE_PROXY_CHAINS.match(c) for rs in shown for t in rs.tables.values()
                                        for c in t.chains)
    kubernetes = (node.level("node_meta") is not None or bool(node.kube_nodes) or bool(node.kubelet_dns)
                  or any(c.startswith("KUBE-") for rs in shown for t in rs.tables.values() for c in t.chains))
    if why is None and (kube_proxy or not kubernetes):
        mode = ("kube-proxy runs in IPVS mode (ipvsadm)" if node.ipvs else
                "kube-proxy runs in iptables mode (its KUBE-* chains)" if kube_proxy else "nothing shows a Kubernetes node")
        node.assumptions.append(f"no nft ruleset in the input (give `nft list ruleset`): {mode}, so kptrace assumes "
                                f"the node has no nft tables of its own (firewalld's, say)")
        return
    node.nft_unknown = (f"the nft ruleset was not collected ({why})" if why else
                        "the node's nft tables are not in the input (give `nft list ruleset`): it is a Kubernetes node "
                        "whose kube-proxy Service rules are neither in iptables nor in IPVS, so they may be in one")
    node.assumptions.append(node.nft_unknown)


def _unknown_tables(rs: Ruleset, label: str) -> None:
    """A dump cut short: the tables after the cut are unknown, not empty."""
    from kptrace.walkers.absent import unknown_ruleset

    stand_in = unknown_ruleset(rs.family)
    for name in ("raw", "mangle", "nat", "filter"):
        if name not in rs.tables:
            rs.tables[name] = stand_in.tables[name]
    rs.assumptions.append(f"{label} is cut short: tables not in it ({', '.join(n for n in stand_in.tables if rs.tables[n] is stand_in.tables[n])}) are unknown")


def _backend(comments: list[Any], label: str) -> str | None:
    """nft or legacy, from `# Generated by iptables-save v1.8.9 (nf_tables)`; before 1.8 only legacy existed."""
    base = label.rsplit("/", 1)[-1]
    if "nft-save" in base:
        return "nft"
    return backend_of_header(comments)


def _comment_lines(data: str | mmap.mmap, label: str, newlines: list[int] | None = None,
                   starts: list[int] | None = None) -> list[Any]:
    """The dump's `#` lines (the first 50), with their line numbers.

    Dumps run to 50 MB. In bytes, a `#` line is found by looking for `#` (a memchr: kube-proxy's rules
    have none) and checking that a newline comes before it; past _STRAY `#` inside lines it looks for
    `\n#` instead. `newlines` are the scan's newline counts per 64 KiB (iptables_scan's _Text.newlines,
    kept in the cache): with them a line number costs a count within one block. `starts`: where the first 50
    `#` lines start, as _hash_lines found them (kept in the cache too)."""
    from kptrace.model.source import Source

    out: list[Source] = []
    if isinstance(data, str):
        pos = 0 if data.startswith("#") else data.find("\n#")
        while pos >= 0 and len(out) < 50:
            start = pos if data.startswith("#", pos) else pos + 1
            end = data.find("\n", start)
            line = data[start: end if end >= 0 else len(data)].rstrip("\r")
            out.append(Source(label, data.count("\n", 0, start) + 1, 1, line))
            pos = data.find("\n#", start)
    else:
        if newlines is not None and len(newlines) != (len(data) >> _BLOCK_BITS) + 1:
            newlines = None
        counted, count = 0, 0  # newlines before offset `counted`, counted a MiB at a time (no copy of the file)
        for start in starts if starts is not None else islice(_hash_lines(data), 50):
            end = data.find(b"\n", start)
            line = data[start: end if end >= 0 else len(data)].decode("utf-8", "replace").rstrip("\r")
            if newlines is not None:
                block = start >> _BLOCK_BITS
                n = newlines[block] + data[block << _BLOCK_BITS:start].count(b"\n")
            else:
                while counted < start:
                    step = min(start, counted + (1 << 20))
                    count += data[counted:step].count(b"\n")
                    counted = step
                n = count
            out.append(Source(label, n + 1, 1, line))
    return out


def _cached_starts(hints: dict[str, Any] | None, data: bytes | mmap.mmap) -> list[int] | None:
    """The `#` lines' offsets kept in a verified cache entry for these bytes (by their sha256), if it holds
    them and they are `#` lines of these bytes (a few bytes checked, as iptables_scan._hints_fit does)."""
    starts = hints.get("comments") if hints is not None else None
    if not (isinstance(starts, list) and len(starts) <= 50 and all(type(o) is int for o in starts)):
        return None
    n, last = len(data), -1
    for o in starts:
        if not (last < o < n and data[o] == 35 and (o == 0 or data[o - 1] == 10)):
            return None
        last = o
    return starts


_BLOCK_BITS = 16  # iptables_scan's _Text.STEP is 1 << 16
_STRAY = 64  # `#` inside lines (a rule's comment text) tolerated before looking for `\n#` instead


def _hash_lines(data: bytes | mmap.mmap) -> Iterator[int]:
    """Offsets of the `#` that start a line, in order."""
    if data[:1] == b"#":
        yield 0
    pos, stray = 1, 0
    while stray < _STRAY:
        p = data.find(b"#", pos)
        if p < 0:
            return
        if data[p - 1] == 10:  # (a newline: an mmap's item is an int, as bytes')
            yield p
        else:
            stray += 1
        pos = p + 1
    while True:
        p = data.find(b"\n#", pos - 1)
        if p < 0:
            return
        yield p + 1
        pos = p + 2


def _route_key(r: Route) -> object:
    return (r.table, r.type, r.dst, r.nexthops, r.metric, r.src, r.proto, r.scope)


def _lazy(module: str, func: str) -> Callable[[str, str], list[Any]]:
    """A parser of kptrace.parsers.<module>, imported when first called (a dump alone needs none of them)."""
    def parse(text: str, label: str) -> list[Any]:
        import importlib

        real: Callable[[str, str], list[Any]] = getattr(importlib.import_module(f"kptrace.parsers.{module}"), func)
        return real(text, label)

    parse.__name__ = parse.__qualname__ = func
    return parse


_LIST_KINDS: dict[str, tuple[Callable[[str, str], list[Any]], str, Callable[[Any], object]]] = {
    "ip-route": (_lazy("ip_route", "parse_ip_route"), "routes", _route_key),
    "ip-rule": (_lazy("ip_rule", "parse_ip_rule"), "policy_rules", lambda r: (r.priority, r.action, r.table, r.src, r.dst, r.iif, r.oif, r.fwmark, r.invert)),
    "ip-link": (_lazy("ip_link", "parse_ip_link"), "links", lambda x: x.name),
    "ip-neigh": (_lazy("ip_neigh", "parse_ip_neigh"), "neighbors", lambda n: (n.dst, n.dev, n.lladdr)),
    "bridge-fdb": (_lazy("bridge", "parse_bridge_fdb"), "fdb", lambda f: (f.mac, f.dev, f.master, f.dst, f.vlan)),
    "bridge-link": (_lazy("bridge", "parse_bridge_link"), "bridge_ports", lambda b: b.name),
    "brctl-show": (_lazy("bridge", "parse_brctl_show"), "bridge_ports", lambda b: b.name),
}


MAX_YAML_DEPTH = 20  # node.yaml is a flat mapping with a list or two
MAX_YAML_BYTES = 256 * 1024  # … of a few lines


def _yaml_mapping(text: str, label: str) -> tuple[dict[Any, Any], dict[str, tuple[int, int]]]:
    """node.yaml as a mapping, and where each top-level key's value starts (line, col). Anchors and aliases
    are refused before anything is built (node.yaml never needs them, and an alias bomb expands to gigabytes
    when read), so is nesting deeper than MAX_YAML_DEPTH."""
    import yaml

    def at(mark: Any) -> tuple[int, int]:
        return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)

    if len(text) > MAX_YAML_BYTES:
        raise ParseError(label, 1, 1, f"{len(text)} characters: node.yaml holds a few lines ({MAX_YAML_BYTES // 1024} KiB max)")
    try:
        depth = 0
        for ev in yaml.parse(io.StringIO(text), Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None):
                raise ParseError(label, *at(ev.start_mark), "YAML anchors and aliases (&x, *x) are not read in node.yaml")
            if isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ParseError(label, *at(ev.start_mark), f"YAML nested deeper than {MAX_YAML_DEPTH} levels")
            elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
            elif isinstance(ev, yaml.ScalarEvent) and ev.style is None and len(ev.value) > 40 \
                    and re.fullmatch(r"[-+]?[0-9a-fA-FxXoObB_:.eE]+", ev.value):
                # YAML makes ints of such words: Python refuses to convert more than 4,300 digits.
                raise ParseError(label, *at(ev.start_mark), f"a number of {len(ev.value)} characters")
        loader = yaml.SafeLoader(io.StringIO(text))
        try:
            root = loader.get_single_node()
            meta = loader.construct_document(root) if root is not None else {}
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ParseError(label, *at(mark), "invalid YAML") from None
    except (ValueError, OverflowError) as e:  # a value the YAML constructors cannot convert
        raise ParseError(label, 1, 1, f"a value YAML cannot convert ({str(e)[:80]})") from None
    if not isinstance(meta, dict) or not isinstance(root, (yaml.MappingNode, type(None))):
        raise ParseError(label, 1, 1, "expected a mapping (name, node_ips, pod_cidr)")
    where: dict[str, tuple[int, int]] = {}
    for k, v in root.value if root is not None else []:
        if isinstance(k, yaml.ScalarNode):
            where[str(k.value)] = at(v.start_mark)
            if isinstance(v, yaml.SequenceNode):  # each item of a list: `node_ips[1]`
                where.update({f"{k.value}[{i}]": at(item.start_mark) for i, item in enumerate(v.value)})
    return meta, where


def _node_meta(node: Node, text: str, label: str) -> None:
    """node.yaml: the node's name, addresses and pod CIDRs. A value that is not what its key says (a CIDR
    in node_ips, a list as a name) is one located error: `node.yaml:3:14: node_ips: '1.2.3.4/24' is not an
    IP address`."""
    meta, where = _yaml_mapping(text, label)

    def bad(key: str, message: str) -> ParseError:
        return ParseError(label, *where.get(key, (1, 1)), f"{key}: {message}")

    def scalar(key: str) -> str | None:
        v = meta.get(key)
        if v is None or v == "":
            return None
        if isinstance(v, (dict, list)):
            raise bad(key, f"expected one value, not a {'mapping' if isinstance(v, dict) else 'list'}")
        return str(v)

    def network(key: str) -> IPNetwork | None:
        v = scalar(key)
        if v is None:
            return None
        try:
            return ip_network(v.strip(), strict=False)
        except ValueError:
            raise bad(key, f"'{v[:80]}' is not a CIDR") from None

    name = scalar("name") if "name" in meta else scalar("node_name")
    if name is not None:
        node.name = name
    ips = meta.get("node_ips") or []
    if isinstance(ips, (str, int)):
        ips = [ips]
    if not isinstance(ips, list):
        raise bad("node_ips", "expected a list of IP addresses")
    for i, ip in enumerate(ips):
        try:
            if isinstance(ip, (dict, list)):
                raise ValueError
            a = ip_address(str(ip).strip())
        except ValueError:
            raise ParseError(label, *where.get(f"node_ips[{i}]", where.get("node_ips", (1, 1))),
                             f"node_ips: '{str(ip)[:80]}' is not an IP address") from None
        if a not in node.node_ips:
            node.node_ips.append(a)
    # `pod_cidr` is the node's own /24 (kubectl get node); `cluster_cidr` is the whole pod network.
    pod = network("pod_cidr")
    if pod is not None:
        node.pod_subnet = pod
    cluster = network("cluster_cidr")
    if cluster is not None and not node.pod_cidrs:
        node.pod_cidrs.append(cluster)
    _service_cidrs(node, meta, text, label)


def _service_cidrs(node: Node, meta: dict[Any, Any], text: str, label: str) -> None:
    """node.yaml `service_cidr` (comma-separated for dual stack): the Service range, for the addresses no
    Service owns (NO_SERVICE) and stale conntrack entries."""
    from kptrace.model.source import Source

    raw = meta.get("service_cidr")
    if not raw:
        return
    line = next((n for n, ln in enumerate(text.splitlines(), start=1) if ln.lstrip().startswith("service_cidr")), 1)
    for part in str(raw).split(","):
        try:
            net = ip_network(part.strip(), strict=False)
        except ValueError:
            raise ParseError(label, line, 1, f"service_cidr: '{part.strip()}' is not a CIDR") from None
        node.service_cidrs.append((net, Source(label, line, 1, f"service_cidr: {raw}")))


_MASQ_RE = re.compile(r"! -s (\S+) .*-j KUBE-MARK-MASQ")


def _sample_service_chains(nat: Table, n: int = 50) -> list[str]:
    """Up to n KUBE-SVC-* chains: the targets of KUBE-SERVICES' first rules (on a 10k-service dump
    the declarations list 100k KUBE-SEP-* chains before the first KUBE-SVC-*)."""
    services = nat.chains.get("KUBE-SERVICES")
    if services is None:
        return list(islice((name for name in nat.chains if name.startswith("KUBE-SVC-")), n))
    out: list[str] = []
    for i in range(min(len(services), 4 * n)):
        target = services.rule_at(i).target
        if target is not None and target.name.startswith("KUBE-SVC-") and target.name in nat.chains \
                and target.name not in out:
            out.append(target.name)
            if len(out) == n:
                break
    return out


def _infer_node_addresses(node: Node) -> None:
    """Without `ip addr`, the node's addresses still show: the `src` of its kernel routes
    (`192.168.0.0/24 dev eth0 proto kernel scope link src 192.168.0.2`), flannel's subnet (cni0 holds
    its first address). Each is stated as an assumption."""
    if node.level("addresses") == COMPLETE:
        return
    known = node.local_addresses()
    for r in node.routes:
        if r.src is not None and r.proto == "kernel" and r.src not in known:
            node.node_ips.append(r.src)
            known = node.local_addresses()
            dev = r.nexthops[0].dev if r.nexthops else None
            node.assumptions.append(f"{r.src} is a local address{f' (on {dev})' if dev else ''}: the kernel route at "
                                    f"{r.source} names it as its source (no `ip addr` in the input)")
    f = node.flannel
    if f is not None and f.subnet is not None and not node.addresses:
        gw = next(iter(f.subnet.hosts()), None)
        if isinstance(gw, (IPv4Address, IPv6Address)) and gw not in known:
            node.node_ips.append(gw)
            node.assumptions.append(f"{gw} is a local address (cni0, the first address of flannel's subnet at "
                                    f"{f.source}; no `ip addr` in the input)")


def _infer_pod_cidrs(node: Node) -> None:
    """kube-proxy's local-traffic detector writes the cluster CIDR into every KUBE-SVC masquerade rule."""
    for rs in node.rulesets.values():
        nat = rs.tables.get("nat")
        if nat is None:
            continue
        # Reading a few KUBE-SVC chains is enough; a large dump's other chains stay unparsed.
        svc = _sample_service_chains(nat)
        for name in svc:
            for r in nat.chains[name].rules:
                if r.src is not None and r.src.negated and r.target and r.target.name == "KUBE-MARK-MASQ":
                    net = r.src.value[0]
                    node.pod_cidrs.append(net)
                    node.assumptions.append(f"pod CIDR {net}, read from kube-proxy's masquerade rule at {r.source}")
                    return


