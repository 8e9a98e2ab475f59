"""Inputs the shell gives (issue 19 item 5, issue 20 item 2): `--dump -`, `--dump /dev/stdin` and
`--dump <(cmd)` (a FIFO) read once, in memory, through the one loader, by every command that reads a
dump; so `kptrace collect -o - | kptrace check --dump -` works.

Every command's answer on a piped bundle is the answer on the same bundle as a file: the tarball is
written to a file named `<stdin>` (the label a pipe gets), so even the column widths agree.
The kernel-lab case collects a real network namespace (kpt-A<pid>-pipe, no address outside it) into
a pipe.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "kptrace" / "demo" / "cluster"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "KPTRACE_NO_CACHE": "1"}

# Every command that reads --dump (diff's are arguments), with the bundle's place marked {}.
COMMANDS = {
    "why": ["why", "10.96.77.7:80", "--from", "10.244.1.5", "--dump", "{}", "-o", "json"],
    "check": ["check", "--dump", "{}", "-o", "json"],
    "services": ["services", "--dump", "{}", "-o", "json"],
    "graph": ["graph", "--dump", "{}", "-o", "json"],
    "parse": ["parse", "{}", "-o", "json"],
    "sweep": ["sweep", "--dump", "{}", "-o", "json"],
    "diff": ["diff", "{}", str(DEMO / "node-b"), "-o", "json"],
}


def tarball(node: str = "node-a") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(DEMO / node, node)
    return buf.getvalue()


def run(argv: list[str], cwd: Path, stdin: bytes | None = None, pass_fds: tuple[int, ...] = ()) \
        -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "kptrace", *argv], input=stdin, capture_output=True, cwd=cwd,
                          env=ENV, timeout=600, pass_fds=pass_fds, check=False)


def argv_for(name: str, where: str) -> list[str]:
    return [where if a == "{}" else a for a in COMMANDS[name]]


def unprinted(v: object) -> object:
    """A JSON answer without its findings' fingerprints (a hash of the location's label)."""
    if isinstance(v, dict):
        return {k: unprinted(x) for k, x in v.items() if k != "fingerprint"}
    if isinstance(v, list):
        return [unprinted(x) for x in v]
    return v


@pytest.fixture(scope="module")
def as_file(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[bytes]]:
    """Each command's answer on the tarball as a file named `<stdin>`."""
    d = tmp_path_factory.mktemp("stdin")
    (d / "<stdin>").write_bytes(tarball())
    return {name: run(argv_for(name, "<stdin>"), d) for name in COMMANDS}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_dash_reads_a_bundle_tarball_from_stdin(name: str, tmp_path: Path,
                                                as_file: dict[str, subprocess.CompletedProcess[bytes]]) -> None:
    ref = as_file[name]
    assert ref.returncode in (0, 1, 4), ref.stderr.decode()
    r = run(argv_for(name, "-"), tmp_path, stdin=tarball())
    assert r.returncode == ref.returncode, r.stderr.decode()
    if name == "diff":  # diff labels its sides as given: `-` for A
        got, want = json.loads(r.stdout), json.loads(ref.stdout)
        assert (got["a"].pop("label"), want["a"].pop("label")) == ("-", "<stdin>")
        assert got == want
        return
    assert r.stdout == ref.stdout
    assert b"<stdin>:node-a/iptables-save.txt" in r.stdout or name in ("services", "graph")


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_fifo_is_read_like_the_file(name: str, tmp_path: Path,
                                      as_file: dict[str, subprocess.CompletedProcess[bytes]]) -> None:
    """`--dump <(cat bundle.tar.gz)`: the shell passes /dev/fd/N, a pipe that cannot seek."""
    r_fd, w_fd = os.pipe()
    data = tarball()

    def feed() -> None:
        with os.fdopen(w_fd, "wb") as w:
            w.write(data)

    t = threading.Thread(target=feed)
    t.start()
    try:
        r = run(argv_for(name, f"/dev/fd/{r_fd}"), tmp_path, pass_fds=(r_fd,))
    finally:
        os.close(r_fd)
        t.join()
    ref = as_file[name]
    assert r.returncode == ref.returncode, r.stderr.decode()
    # The label is longer than `<stdin>`: JSON has no padding, so only the label (and the findings' fingerprints,
    # which hash it) differ.
    got = json.loads(r.stdout.replace(f"/dev/fd/{r_fd}".encode(), b"<stdin>"))
    assert unprinted(got) == unprinted(json.loads(ref.stdout))


def test_a_plain_dump_on_dev_stdin(tmp_path: Path) -> None:
    """One dump (not a bundle) on /dev/stdin: the same answer as the file, labelled /dev/stdin."""
    dump = DEMO / "node-a" / "iptables-save.txt"
    argv = ["why", "10.96.77.7:80", "--from", "10.244.1.5", "-o", "json", "--dump"]
    r = run([*argv, "/dev/stdin"], tmp_path, stdin=dump.read_bytes())
    ref = run([*argv, str(dump)], tmp_path)
    assert r.returncode == ref.returncode == 4, r.stderr.decode()  # UNDETERMINED: no routes in one dump
    out = json.loads(r.stdout)
    assert [i["file"] for i in out["inputs"]] == ["/dev/stdin"]
    assert unprinted(json.loads(r.stdout.replace(b"/dev/stdin", str(dump).encode()))) == unprinted(json.loads(ref.stdout))


def test_stdin_beside_another_bundle_is_a_node_of_its_own(tmp_path: Path) -> None:
    """Several bundles load in worker processes, whose standard input is closed: `-` is read here."""
    (tmp_path / "node-b.tar.gz").write_bytes(tarball("node-b"))
    r = run(["check", "--dump", "-", "--dump", "node-b.tar.gz", "-o", "json"], tmp_path, stdin=tarball())
    assert r.returncode == 4, r.stderr.decode()
    files = {i["file"] for i in json.loads(r.stdout)["inputs"]}
    assert {"<stdin>:node-a/iptables-save.txt", "node-b.tar.gz:node-b/iptables-save.txt"} <= files


@pytest.mark.parametrize("argv", [["check", "--dump", "-", "--dump", "-"], ["diff", "-", "-"],
                                  ["why", "10.96.0.10:53", "--dump", "-", "--dump", "/dev/stdin"]])
def test_stdin_given_twice_is_an_error(argv: list[str], tmp_path: Path) -> None:
    r = run(argv, tmp_path, stdin=tarball())
    assert r.returncode == 2
    assert r.stderr.decode().strip() == \
        "error: - (standard input) given twice: it can be read once (give the other input as a file)"


@pytest.mark.kernel
def test_collect_to_stdout_piped_into_check(tmp_path: Path) -> None:
    """`kptrace collect -o - | kptrace check --dump -` on a real (namespaced) node holding kube-proxy's rules."""
    from tests.lab import netns

    reason = netns.unavailable_reason()
    if reason is not None or not shutil.which("iptables-restore"):
        from tests.kernel.conftest import skip_or_fail

        skip_or_fail(reason or "no iptables-restore")
    ns = f"kpt-A{os.getpid()}-pipe"
    netns.sh(["ip", "netns", "add", ns])
    try:
        netns.sh(["ip", "link", "set", "lo", "up"], ns=ns)
        rules = "".join(line for line in (DEMO / "node-a" / "iptables-save.txt").read_text().splitlines(True)
                        if not line.startswith("#"))
        netns.sh(["iptables-restore"], ns=ns, stdin=rules)
        collect = subprocess.Popen([shutil.which("ip") or "ip", "netns", "exec", ns, sys.executable, "-m", "kptrace",
                                    "collect", "-o", "-", "-q"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   env=ENV)
        assert collect.stdout is not None
        check = subprocess.run([sys.executable, "-m", "kptrace", "check", "--dump", "-", "-o", "json"],
                               stdin=collect.stdout, capture_output=True, env=ENV, cwd=tmp_path, timeout=180,
                               check=False)
        collect.stdout.close()
        assert collect.wait(timeout=180) == 0
    finally:
        netns.sh(["ip", "netns", "del", ns], check=False)
    assert check.returncode == 1, check.stderr.decode()  # a new namespace forwards nothing: KPT103 (HIGH) fails
    out = json.loads(check.stdout)
    assert any(r["id"] == "KPT103" and r["status"] == "FAIL" for r in out["results"])
    kpt204 = [r for r in out["results"] if r["id"] == "KPT204" and r["status"] == "FAIL"]
    assert kpt204, "the demo's Service without endpoints, restored in the namespace, is found through the pipe"
    assert out["inputs"] and all(i["file"].startswith("<stdin>:") for i in out["inputs"])
