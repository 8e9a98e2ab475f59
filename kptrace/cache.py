"""A small on-disk cache for large dumps: the lazy scan's structure, keyed by the dump's sha256, and
each file's sha256, keyed by the file's identity.

A second `kptrace why` on the same 400k-line dump then skips hashing its 34 MB (when the file's
device, inode, size, mtime and ctime are what they were when it was hashed: git's index makes the
same bet) and skips finding the tables and reading 100k chain declarations. Like git, a record made
less than RACY_NS after the file last changed is not trusted: a second change within the clock's
granularity could keep the same times. Entries are `marshal` data (plain lists, dicts and numbers,
never code), written atomically; `--no-cache` or KPTRACE_NO_CACHE=1 turns it off,
KPTRACE_CACHE_DIR moves it.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from kptrace import __version__

ENABLED = [os.environ.get("KPTRACE_NO_CACHE", "") in ("", "0")]


def cache_dir() -> Path:
    root = os.environ.get("KPTRACE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kptrace")
    return Path(root)


RACY_NS = 100_000_000  # 0.1 s: well above any kernel's file-time granularity (a jiffy)


def _path(digest: str) -> Path:
    return cache_dir() / f"scan-{__version__}-{digest}.marshal"


def _load(path: Path) -> Any:
    try:
        return marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None


def _store(path: Path, value: Any) -> None:
    """Best effort: a read-only home or a full disk just means no cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps(value))
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass


def get(digest: str) -> dict[str, Any] | None:
    if not ENABLED[0]:
        return None
    data = _load(_path(digest))
    return data if isinstance(data, dict) else None


def put(digest: str, hints: dict[str, Any]) -> None:
    if ENABLED[0]:
        _store(_path(digest), hints)


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_digest(path: str, st: os.stat_result, data: Any) -> str:
    """sha256 of a file's bytes (`data`, as read from `path` after `st` was taken)."""
    record = cache_dir() / f"file-{hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:40]}.marshal"
    if ENABLED[0]:
        known = _load(record)
        if isinstance(known, list) and len(known) == 2 and known[0] == _identity(st) and isinstance(known[1], str):
            return known[1]
    digest = hashlib.sha256(data).hexdigest()
    if ENABLED[0] and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
        _store(record, [_identity(st), digest])
    return digest
