"""`kptrace collect` and the live `kptrace why` through the CLI, on the fake node."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.errors import KptraceError
from kptrace.load import load_cluster

from .conftest import HOSTNAME, FakeNode

_register()


def run(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout, stderr; a KptraceError ends as main() ends it (its exit code, one line)."""
    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, KptraceError):
        return int(res.exception.exit_code), res.stdout, res.stderr + f"error: {res.exception}\n"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def test_collect_writes_a_tarball(fake_node: FakeNode, tmp_path: Path) -> None:
    out = tmp_path / "node-a.tar.gz"
    code, stdout, stderr = run("collect", "-o", str(out))
    assert code == 0, stderr
    assert stdout.strip() == str(out) and "wrote" in stderr and "warning" not in stderr
    with tarfile.open(out) as tar:
        assert "node-a/iptables-save.txt" in tar.getnames()


def test_collect_into_a_directory_uses_the_default_name(fake_node: FakeNode, tmp_path: Path) -> None:
    code, stdout, _ = run("collect", "-o", str(tmp_path), "-q")
    assert code == 0
    written = Path(stdout.strip())
    assert written.parent == tmp_path and written.name.startswith(f"kptrace-{HOSTNAME}-")
    assert written.name.endswith(".tar.gz")


def test_collect_to_a_new_directory_bundle(fake_node: FakeNode, tmp_path: Path) -> None:
    code, _, _ = run("collect", "-o", str(tmp_path / "bundle"), "--include", "conntrack", "-q")
    assert code == 0
    assert (tmp_path / "bundle" / "conntrack.txt").is_file()
    man = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert man["include"] == ["conntrack"]


def test_missing_parts_exit_4_and_are_named(fake_node: FakeNode, tmp_path: Path) -> None:
    fake_node.tools["nft"] = None  # type: ignore[assignment]
    fake_node.tools["ipvsadm"] = None  # type: ignore[assignment]
    fake_node.install()
    out = tmp_path / "b.tar.gz"
    code, _, stderr = run("collect", "-o", str(out), "-q")
    assert code == 4 and out.is_file()
    assert "warning: nft-ruleset.json: nft: not found on PATH" in stderr
    assert "ipvsadm: not found on PATH" in stderr and "2 parts not collected" in stderr
    code, stdout, _ = run("why", "10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "--dump", str(out),
                          "-o", "json")
    assert code in (0, 1, 4) and json.loads(stdout)["disposition"]


def test_collect_refuses_to_overwrite(fake_node: FakeNode, tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    out.write_text("keep me")
    code, _, stderr = run("collect", "-o", str(out))
    assert code == 2 and "does not overwrite" in stderr and out.read_text() == "keep me"


@pytest.mark.parametrize("args,message", [
    (["--include", "everything"], "expected one of conntrack"),
    (["--node-ip", "node-a"], "is not an IP address"),
])
def test_collect_usage_errors(fake_node: FakeNode, tmp_path: Path, args: list[str], message: str) -> None:
    code, _, stderr = run("collect", "-o", str(tmp_path / "x.tar.gz"), *args)
    assert code == 2 and message in stderr


def test_collect_redact(fake_node: FakeNode, tmp_path: Path) -> None:
    out = tmp_path / "r.tar.gz"
    code, _, _ = run("collect", "-o", str(out), "--redact", "--node-name", "prod-node-7", "-q")
    assert code == 0
    with tarfile.open(out) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert all(HOSTNAME.encode() not in b and b"prod-node-7" not in b for n, b in blobs.items() if "/" in n)
    assert json.loads(blobs["r/manifest.json"])["redacted"] is True


def test_live_why_reads_the_node(fake_node: FakeNode) -> None:
    code, stdout, stderr = run("why", "10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "-o", "json")
    doc = json.loads(stdout)
    assert code in (0, 1, 4), stderr
    files = [i["file"] for i in doc["inputs"]]
    assert "live:iptables-save" in files and "live:ip -j addr show" in files
    assert all(f.startswith("live:") for f in files)


def test_live_why_names_parts_it_could_not_read(fake_node: FakeNode) -> None:
    fake_node.tools["ip"] = None  # type: ignore[assignment]
    fake_node.install()
    _, stdout, stderr = run("why", "10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "-o", "json")
    assert json.loads(stdout)["inputs"] and "warning: live: ip: not found on PATH" in stderr


def test_live_why_without_rules_is_a_usage_error(fake_node: FakeNode) -> None:
    fake_node.tools["iptables-save"] = {"": (1, "", "iptables-save: Permission denied (you must be root)\n", 0.0)}
    fake_node.install()
    code, _, stderr = run("why", "10.96.0.10:53", "--proto", "udp")
    assert code == 2 and "cannot read this node's iptables rules" in stderr and "Permission denied" in stderr


def test_collect_to_stdout(fake_node: FakeNode, tmp_path: Path) -> None:
    """`kubectl exec … -- kptrace collect -o - > node.tar.gz`: the tarball is all stdout holds."""
    res = CliRunner().invoke(app, ["collect", "-o", "-", "-q"])
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "node.tar.gz"
    out.write_bytes(res.stdout_bytes)
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0].endswith("/manifest.json") and names[0].startswith(f"kptrace-{HOSTNAME}-")
    [node] = load_cluster([out])
    assert node.name == HOSTNAME
