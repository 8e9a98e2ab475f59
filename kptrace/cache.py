"""A small on-disk cache for large dumps: the lazy scan's structure, keyed by the dump's sha256, and
each file's sha256, keyed by the file's identity.

A second `kptrace why` on the same 400k-line dump then skips hashing its 34 MB (when the file's
device, inode, size, mtime and ctime are what they were when it was hashed: git's index makes the
same bet) and skips finding the tables and reading 100k chain declarations. Like git, a record made
less than RACY_NS after the file last changed is not trusted: a second change within the clock's
granularity could keep the same times. `--no-cache` or KPTRACE_NO_CACHE=1 turns it off,
KPTRACE_CACHE_DIR moves it.

It is a cache, so it can only ever save time, never change an answer or fail a run:

- each entry names what it describes (its key: the dump's sha256, or the file's path hash) and
  carries an HMAC-SHA256 of that name and its contents under a random key kept in the directory.
  An entry that does not verify (hand-edited, cut short, copied under another name, written by
  anything but kptrace) is discarded and written anew; `marshal` data is only read once verified.
  A plain checksum would not do: whoever edits an entry by hand can recompute one.
- the directory is created 0700, must be owned by this user, and is opened without following a
  symlink; an entry that is a symlink is discarded, never followed. Files are created O_EXCL and
  renamed into place inside the directory (through its descriptor), so nothing else is written.
- it is bounded: beyond MAX_ENTRIES entries or MAX_BYTES in all, the least recently used go.
- any error (a read-only home, a full disk, an odd directory) just means no cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import marshal
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kptrace import __version__

def enabled_by_default() -> bool:
    """KPTRACE_NO_CACHE=1 turns the cache off; `--no-cache` does for one run (LoadOptions.cache)."""
    return os.environ.get("KPTRACE_NO_CACHE", "") in ("", "0")
RACY_NS = 100_000_000  # 0.1 s: well above any kernel's file-time granularity (a jiffy)
MAX_ENTRIES = 256
MAX_BYTES = 64 << 20  # all entries together; a 10k-service node's scan entry is a few MB
MAX_ENTRY = 32 << 20
KEY = "key"
_MAGIC = b"kptrace-cache 1"
_KEY_BYTES = 32


def cache_dir() -> Path:
    root = os.environ.get("KPTRACE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kptrace")
    return Path(root)


@contextlib.contextmanager
def _opened(create: bool) -> Iterator[int | None]:
    """The cache directory's descriptor, or None when there is no usable one (absent, a symlink,
    not a directory, someone else's)."""
    path = cache_dir()
    fd = None
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.close(fd)
            fd = None
        elif st.st_mode & 0o077:
            os.fchmod(fd, 0o700)  # made by an older kptrace with the umask's permissions
    except OSError:
        if fd is not None:
            os.close(fd)
        fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _read(dir_fd: int, name: str, limit: int) -> bytes | None:
    """A regular file of the directory, never through a symlink; None if absent, odd or too large."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not (st.st_mode & 0o170000 == 0o100000 and st.st_size <= limit):
            return None
        return f.read(limit + 1)


def _write(dir_fd: int, name: str, data: bytes) -> None:
    """Atomically: a new file (O_EXCL, never through a link) renamed over the entry inside the directory."""
    tmp = f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # replaces a symlink itself, never its target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _discard(dir_fd: int, name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


def _key(dir_fd: int, create: bool) -> bytes | None:
    """The directory's secret: entries made with another key (or none) do not verify."""
    key = _read(dir_fd, KEY, _KEY_BYTES)
    if key is not None and len(key) == _KEY_BYTES:
        return key
    if not create:
        return None
    key = secrets.token_bytes(_KEY_BYTES)
    _write(dir_fd, KEY, key)
    return key


def _head(name: str, size: int) -> bytes:
    return _MAGIC + b" " + name.encode() + b" " + str(size).encode() + b"\n"


def _mac(key: bytes, head: bytes, payload: bytes) -> bytes:
    return hmac.digest(key, head + payload, "sha256").hex().encode()


def _seal(key: bytes, name: str, payload: bytes) -> bytes:
    """`kptrace-cache 1 NAME SIZE`, the HMAC of that line and the payload, then the payload."""
    head = _head(name, len(payload))
    return head + _mac(key, head, payload) + b"\n" + payload


def _unseal(key: bytes, name: str, data: bytes) -> Any:
    """The value an entry holds, if it is the entry `name` sealed with this key; None for anything else."""
    head, _, rest = data.partition(b"\n")
    mac, _, payload = rest.partition(b"\n")
    want = _head(name, len(payload))
    if head + b"\n" != want or not hmac.compare_digest(mac, _mac(key, want, payload)):
        return None
    try:
        return marshal.loads(payload)
    except (ValueError, EOFError, TypeError):
        return None


def _get(name: str) -> Any:
    with _opened(create=False) as fd:
        if fd is None:
            return None
        data = _read(fd, name, MAX_ENTRY)
        key = _key(fd, create=False) if data is not None else None
        value = _unseal(key, name, data) if data is not None and key is not None else None
        if value is None:
            # Absent, a symlink (never followed: the link goes, not its target), an odd file or not what
            # it says it is: the caller computes the value and puts it anew.
            _discard(fd, name)
            return None
        with contextlib.suppress(OSError):
            os.utime(name, dir_fd=fd, follow_symlinks=False)  # recently used: evicted last
        return value


def _put(name: str, value: Any) -> None:
    """Best effort: a read-only home or a full disk just means no cache."""
    try:
        payload = marshal.dumps(value)
    except ValueError:
        return
    if len(payload) > MAX_ENTRY:
        return
    with _opened(create=True) as fd:
        if fd is None:
            return
        try:
            key = _key(fd, create=True)
            if key is not None:
                _write(fd, name, _seal(key, name, payload))
                _evict(fd, keep=name)
        except OSError:
            pass


def _evict(dir_fd: int, keep: str) -> None:
    """Oldest first (by last use), until at most MAX_ENTRIES entries and MAX_BYTES remain."""
    entries = []
    with os.scandir(dir_fd) as it:
        for e in it:
            if e.name == KEY or not e.is_file(follow_symlinks=False):
                continue
            st = e.stat(follow_symlinks=False)
            entries.append((st.st_mtime_ns, st.st_size, e.name))
    entries.sort()
    total = sum(size for _, size, _ in entries)
    count = len(entries)
    for _, size, name in entries:
        if count <= MAX_ENTRIES and total <= MAX_BYTES:
            break
        if name == keep:
            continue
        _discard(dir_fd, name)
        count -= 1
        total -= size


def _scan_name(digest: str) -> str:
    return f"scan-{__version__}-{digest}.cache"


def get(digest: str, use: bool = True) -> dict[str, Any] | None:
    """The scan structure cached for the dump whose sha256 is `digest`, if a verified entry holds one."""
    if not use:
        return None
    data = _get(_scan_name(digest))
    return data if isinstance(data, dict) else None


def put(digest: str, hints: dict[str, Any], use: bool = True) -> None:
    if use:
        _put(_scan_name(digest), hints)


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_digest(path: str, st: os.stat_result, data: Any, use: bool = True) -> str:
    """sha256 of a file's bytes (`data`, as read from `path` after `st` was taken)."""
    record = f"file-{hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:40]}.cache"
    if use:
        known = _get(record)
        if isinstance(known, list) and len(known) == 2 and known[0] == _identity(st) and isinstance(known[1], str):
            return known[1]
    digest = hashlib.sha256(data).hexdigest()
    if use and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
        _put(record, [_identity(st), digest])
    return digest
