"""Write captures as a bundle: a .tar.gz (or a directory) of the files plus manifest.json.

The tarball holds one directory, `kptrace-<host>-<time>/`, so unpacking it never scatters files;
kptrace reads it in memory without unpacking (`--dump bundle.tar.gz`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from kptrace import __version__
from kptrace.collect.capture import Capture
from kptrace.collect.redact import Redactor

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
_RENAME_NOREPLACE = 1  # <linux/fs.h>: renameat2 fails with EEXIST instead of replacing


@dataclass(frozen=True, slots=True)
class Meta:
    hostname: str
    node_name: str
    started: float  # time.time() when collection began
    duration: float
    include: tuple[str, ...] = ()


def default_name(hostname: str, started: float) -> str:
    """`kptrace-HOST-TIME`; a host name is any bytes the kernel was given, so only [A-Za-z0-9._-] of it
    reaches a file name (never a `/`, `..` or a control character)."""
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
    host = re.sub(r"[^A-Za-z0-9._-]", "_", hostname)[:64] or "host"
    return f"kptrace-{host}-{stamp}"


def manifest(caps: list[Capture], meta: Meta, redactor: Redactor | None = None) -> dict[str, Any]:
    """What produced each file: command, exit code, duration, stderr, sha256 (of the file as written)."""
    r = redactor.text if redactor is not None else (lambda s: s)
    uname = os.uname()
    commands = []
    for c in caps:
        entry: dict[str, Any] = {
            "file": c.name if c.data is not None else None,
            "command": [r(x) for x in c.command],
            "via": c.via,
            "live_label": r(c.label),  # how `kptrace why` without --dump cites this input
            "status": c.status,
            "exit_code": c.exit_code,
            "duration_s": round(c.duration, 4),
            "stderr": r(c.stderr),
        }
        if c.message:
            entry["message"] = r(c.message)
        if c.status == "absent":
            entry["absent_file"] = c.name  # the bundle file the node has nothing for (no such file)
        if c.notes:
            entry["notes"] = [r(n) for n in c.notes]
        if c.data is not None:
            entry["sha256"] = hashlib.sha256(c.data).hexdigest()
            entry["bytes"] = len(c.data)
        commands.append(entry)
    return {
        "format": MANIFEST_FORMAT,
        "kptrace_version": __version__,
        "hostname": redactor.host(meta.hostname) if redactor is not None else meta.hostname,
        "node_name": redactor.host(meta.node_name) if redactor is not None else meta.node_name,
        "kernel": {"release": uname.release, "version": uname.version, "machine": uname.machine},
        "created": datetime.fromtimestamp(meta.started, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": round(meta.duration, 3),
        "uid": os.geteuid(),
        "include": list(meta.include),
        "redacted": redactor is not None,
        "warnings": [r(c.message) for c in caps if c.warn],
        **{k: _redacted(v, r) for c in caps for k, v in c.facts.items()},
        "commands": commands,
    }


def _redacted(value: Any, r: Any) -> Any:
    """A manifest fact (strings, lists and mappings of them) with its text redacted."""
    if isinstance(value, str):
        return r(value)
    if isinstance(value, dict):
        return {k: _redacted(v, r) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, r) for v in value]
    return value


def redact_captures(caps: list[Capture], redactor: Redactor) -> None:
    """Redact every file (in place) before anything is hashed or written."""
    for c in caps:
        if c.data is None:
            continue
        if c.via == "kptrace" and c.name in IDENTITY_FILES:
            c.data = _redact_identity(c.data, redactor)
        c.data = redactor.data(c.data)


IDENTITY_FILES = ("hostname.txt", "node.yaml")
_IDENTITY_KEYS = ("name", "hostname")  # node.yaml's keys holding a host name (live.node_meta writes them)


def _redact_identity(data: bytes, redactor: Redactor) -> bytes:
    """The host name in the files kptrace writes itself, replaced as a whole value: a name too short or
    too common to replace inside the dumps' text is still replaced here."""
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines:
        return data
    if len(lines) == 1 and ":" not in lines[0]:  # hostname.txt: the name alone
        return (redactor.host(lines[0]) + "\n").encode()
    out = []
    for line in lines:
        key, sep, value = line.partition(": ")
        if sep and key in _IDENTITY_KEYS:
            try:
                name = json.loads(value)
            except ValueError:
                name = None
            if isinstance(name, str):
                line = f"{key}: {json.dumps(redactor.host(name))}"
        out.append(line)
    return ("\n".join(out) + "\n").encode()


def _files(caps: list[Capture], meta: Meta, redactor: Redactor | None) -> list[tuple[str, bytes]]:
    if redactor is not None:
        redact_captures(caps, redactor)
    files: list[tuple[str, bytes]] = [(c.name, c.data) for c in caps if c.data is not None]
    man = json.dumps(manifest(caps, meta, redactor), indent=2, ensure_ascii=False).encode() + b"\n"
    return [(MANIFEST, man), *files]


def write_tar(caps: list[Capture], fileobj: BinaryIO, top: str, meta: Meta, redactor: Redactor | None = None) -> None:
    """The bundle as a gzipped tar stream (`kptrace collect -o -`), every file under `top/`."""
    with tarfile.open(fileobj=fileobj, mode="w|gz") as tar:
        for name, data in _files(caps, meta, redactor):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mtime, info.mode = len(data), int(meta.started), 0o644
            info.uname = info.gname = "kptrace"
            tar.addfile(info, io.BytesIO(data))


def write_bundle(caps: list[Capture], out: Path, meta: Meta, redactor: Redactor | None = None) -> Path:
    """Write the bundle to `out`: `*.tar.gz`/`*.tgz` is a tarball, anything else a directory.

    `out` must not exist, and nothing that exists is ever written through or replaced: collect runs
    as root, often in a directory others can write, for seconds, so anything could appear at `out`
    meanwhile (`out/manifest.json` -> /etc/shadow). The bundle is built in a fresh private directory
    beside `out` (mkdtemp: 0700, a new name), each file created there with O_EXCL|O_NOFOLLOW, then
    moved to `out` with a rename that refuses an existing name (FileExistsError). So a reader never
    sees half a bundle either.
    """
    if os.path.lexists(out):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out))
    tarball = out.name.endswith((".tar.gz", ".tgz"))
    files = [] if tarball else _files(caps, meta, redactor)
    stage = tempfile.mkdtemp(prefix=".kptrace-", suffix=".tmp", dir=out.parent)
    try:
        fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        os.rmdir(stage)
        raise
    made: list[str] = []
    placed = False
    try:
        if tarball:
            top = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
            with _create(fd, out.name, made) as f:
                write_tar(caps, f, top, meta, redactor)
            _place(os.path.join(stage, out.name), str(out))
        else:
            for name, data in files:
                with _create(fd, name, made) as f:
                    f.write(data)
            # mkdtemp made it 0700; a bundle directory gets the permissions mkdir would give it.
            os.fchmod(fd, 0o777 & ~_umask())
            _place(stage, str(out))
            placed = True
    finally:
        if not placed:
            _clean(fd, stage, made)
        os.close(fd)
    return out


def _create(dir_fd: int, name: str, made: list[str]) -> BinaryIO:
    """A new file in the staging directory: never an existing one, never through a link."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bundle file name {name!r}")
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
    made.append(name)
    return os.fdopen(fd, "wb")


def _place(src: str, dst: str) -> None:
    """Move `src` (made by kptrace) to `dst`, which must not exist: an existing path is never replaced."""
    if _rename_noreplace(src, dst):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)
    if not os.path.isdir(src):
        os.link(src, dst)  # fails with EEXIST, atomically, whatever appeared at dst meanwhile
        os.unlink(src)
        return
    # Without renameat2 (an old kernel or a file system without RENAME_NOREPLACE): rename(2) moves a
    # directory onto nothing but an empty directory, never onto a file, a link or anything with content.
    os.rename(src, dst)


def _rename_noreplace(src: str, dst: str) -> bool:
    """rename(src, dst) with RENAME_NOREPLACE; False when this system cannot do that (use another way)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), dst)
    raise OSError(err, os.strerror(err), dst)


def _clean(dir_fd: int, stage: str, made: list[str]) -> None:
    """Remove what kptrace made in the staging directory (through its descriptor), then the directory."""
    for name in made:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
    with contextlib.suppress(OSError):
        os.rmdir(stage)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def now() -> float:
    return time.time()
