"""One captured input: which command or file produced a bundle file, how it went, and its bytes.

Running a command never raises: a missing tool, a permission error, a timeout or a non-zero exit
becomes a Capture with a status and a one-line message, so one failing part is a WARN and the
rest of the collection goes on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Status of a capture. WARN_STATUSES are parts of the node kptrace could not read.
OK = "ok"
ABSENT = "absent"  # the kernel or node has no such thing (no IPVS, no flannel): nothing to read
SKIPPED = "skipped"  # not asked for (conntrack without --include conntrack)
MISSING = "missing"  # the tool is not installed (not on PATH)
DENIED = "denied"  # permission (not root, no CAP_NET_ADMIN)
TIMEOUT = "timeout"
FAILED = "failed"  # non-zero exit for another reason
WARN_STATUSES = frozenset({MISSING, DENIED, TIMEOUT, FAILED})

DEFAULT_TIMEOUT = 60.0
_DENIED_RE = re.compile(r"permission denied|operation not permitted|must be root|not permitted|EPERM|EACCES",
                        re.IGNORECASE)


@dataclass(slots=True)
class Capture:
    """A bundle file (`name`) and how it was produced; `data` is None when nothing was written."""

    name: str
    command: tuple[str, ...]  # argv as run, or a description: ("read", "/proc/modules"), ("pyroute2", ...)
    via: str  # command | host (the host's own binary, chroot) | file | pyroute2 | python-iptables | kptrace
    status: str = OK
    exit_code: int | None = None
    duration: float = 0.0
    stderr: str = ""
    message: str = ""  # why it is not OK, for people
    data: bytes | None = None
    notes: list[str] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)  # top-level manifest entries (iptables_versions)

    @property
    def warn(self) -> bool:
        return self.status in WARN_STATUSES

    @property
    def label(self) -> str:
        """How the live node's inputs are cited: `live:iptables-save`, `live:/proc/modules`."""
        if self.via == "file":
            return f"live:{self.command[-1]}"
        if self.via == "kptrace":
            return f"live:{self.name}"
        return "live:" + " ".join(self.command)


def tool_env(path: str | None = None) -> dict[str, str]:
    """The environment commands run with: the caller's PATH, C locale so the output parses the same."""
    env = {"PATH": path if path is not None else os.environ.get("PATH", os.defpath), "LC_ALL": "C", "LANG": "C"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


def which(tool: str, env: dict[str, str]) -> str | None:
    return shutil.which(tool, path=env.get("PATH"))


def run_command(name: str, argv: list[str], env: dict[str, str], timeout: float = DEFAULT_TIMEOUT) -> Capture:
    """Run argv (no shell) with a timeout; stdout becomes the file's bytes when it exits 0."""
    cap = Capture(name, tuple(argv), "command")
    exe = which(argv[0], env)
    if exe is None:
        cap.status, cap.message = MISSING, f"{argv[0]}: not found on PATH"
        return cap
    start = time.monotonic()
    try:
        proc = subprocess.run([exe, *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True, env=env,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        cap.duration = time.monotonic() - start
        cap.status, cap.message = TIMEOUT, f"{' '.join(argv)}: no answer within {timeout:g}s (killed)"
        cap.stderr = _text(e.stderr)
        return cap
    except PermissionError as e:
        cap.duration = time.monotonic() - start
        cap.status, cap.message = DENIED, f"{argv[0]}: {e.strerror}"
        return cap
    except OSError as e:
        cap.duration = time.monotonic() - start
        cap.status, cap.message = FAILED, f"{argv[0]}: {e.strerror or e}"
        return cap
    cap.duration = time.monotonic() - start
    cap.exit_code = proc.returncode
    cap.stderr = _text(proc.stderr)
    if proc.returncode == 0:
        cap.data = proc.stdout
        return cap
    first = next((ln.strip() for ln in cap.stderr.splitlines() if ln.strip()), f"exit code {proc.returncode}")
    cap.status = DENIED if _DENIED_RE.search(cap.stderr) else FAILED
    cap.message = first if first.startswith(argv[0]) else f"{' '.join(argv)}: {first}"
    if cap.status == DENIED and os.geteuid() != 0 and "root" not in cap.message:
        cap.message += " (not root)"
    return cap


def read_file(name: str, path: str | Path, optional: bool = True) -> Capture:
    """A file read directly (/proc/modules, /run/flannel/subnet.env); absent is not a warning."""
    cap = Capture(name, ("read", str(path)), "file")
    start = time.monotonic()
    try:
        cap.data = Path(path).read_bytes()
    except FileNotFoundError:
        cap.status = ABSENT if optional else FAILED
        cap.message = f"{path}: not present"
    except PermissionError:
        cap.status, cap.message = DENIED, f"{path}: permission denied"
    except OSError as e:
        cap.status, cap.message = FAILED, f"{path}: {e.strerror or e}"
    cap.duration = time.monotonic() - start
    return cap


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")
