"""Write captures as a bundle: a .tar.gz (or a directory) of the files plus manifest.json.

The tarball holds one directory, `kptrace-<host>-<time>/`, so unpacking it never scatters files;
kptrace reads it in memory without unpacking (`--dump bundle.tar.gz`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
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


@dataclass(frozen=True, slots=True)
class Meta:
    hostname: str
    node_name: str
    started: float  # time.time() when collection began
    duration: float
    include: tuple[str, ...] = ()


def default_name(hostname: str, started: float) -> str:
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"kptrace-{hostname}-{stamp}"


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
        if c.notes:
            entry["notes"] = [r(n) for n in c.notes]
        if c.data is not None:
            entry["sha256"] = hashlib.sha256(c.data).hexdigest()
            entry["bytes"] = len(c.data)
        commands.append(entry)
    return {
        "format": MANIFEST_FORMAT,
        "kptrace_version": __version__,
        "hostname": r(meta.hostname),
        "node_name": r(meta.node_name),
        "kernel": {"release": uname.release, "version": uname.version, "machine": uname.machine},
        "created": datetime.fromtimestamp(meta.started, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "duration_s": round(meta.duration, 3),
        "uid": os.geteuid(),
        "include": list(meta.include),
        "redacted": redactor is not None,
        "warnings": [r(c.message) for c in caps if c.warn],
        "commands": commands,
    }


def redact_captures(caps: list[Capture], redactor: Redactor) -> None:
    """Redact every file (in place) before anything is hashed or written."""
    for c in caps:
        if c.data is not None:
            c.data = redactor.data(c.data)


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
    """Write the bundle to `out`: `*.tar.gz`/`*.tgz` is a tarball, anything else a directory."""
    if out.name.endswith((".tar.gz", ".tgz")):
        top = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "xb") as f:
                write_tar(caps, f, top, meta, redactor)
            os.replace(tmp, out)  # a reader never sees half a bundle
        finally:
            tmp.unlink(missing_ok=True)
        return out
    files = _files(caps, meta, redactor)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (out / name).write_bytes(data)
    return out


def now() -> float:
    return time.time()
