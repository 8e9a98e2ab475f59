"""A small on-disk cache of the lazy scan of large dumps, keyed by the dump's sha256.

A second `kptrace why` on the same 400k-line dump then skips finding the tables and reading 100k
chain declarations. Entries are `marshal` data (plain lists and dicts, never code), written
atomically; `--no-cache` or KPTRACE_NO_CACHE=1 turns it off, KPTRACE_CACHE_DIR moves it.
"""

from __future__ import annotations

import marshal
import os
import tempfile
from pathlib import Path
from typing import Any

from kptrace import __version__

ENABLED = [os.environ.get("KPTRACE_NO_CACHE", "") in ("", "0")]


def cache_dir() -> Path:
    root = os.environ.get("KPTRACE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kptrace")
    return Path(root)


def _path(digest: str) -> Path:
    return cache_dir() / f"scan-{__version__}-{digest}.marshal"


def get(digest: str) -> dict[str, Any] | None:
    if not ENABLED[0]:
        return None
    try:
        data = marshal.loads(_path(digest).read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def put(digest: str, hints: dict[str, Any]) -> None:
    """Best effort: a read-only home or a full disk just means no cache."""
    if not ENABLED[0]:
        return
    try:
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".scan-")
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps(hints))
        os.replace(tmp, _path(digest))
    except OSError:
        pass
