"""`collect --redact` keeps its promise everywhere: the whole produced bundle (its file name, every tar
header and member, every file of a directory bundle, the `-o -` stream) holds none of the node's host
names (full and short) and none of its public addresses."""

from __future__ import annotations

import gzip
import json
import re
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.collect import bundle, live

from .conftest import DEMO, FakeNode

_register()
FQDN = "Secret-Node-7.corp.example.com"
NODE_NAME = "prod-node-7.example.net"
PUBLIC = ["34.117.59.81", "8.8.8.8", "2a00:1450:4001:82a::200e"]
SECRETS = ["secret-node-7.corp.example.com", "secret-node-7", "prod-node-7.example.net", "prod-node-7", *PUBLIC]


@pytest.fixture
def exposed(fake_node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> FakeNode:
    """The fake node with an FQDN host name, and names and public addresses in its dumps and tool messages."""
    monkeypatch.setattr(live, "hostname", lambda: FQDN)
    rules = (DEMO / "iptables-save.txt").read_text().replace(
        "\n-A KUBE-SERVICES ", "\n-A KUBE-SERVICES -d 34.117.59.81/32 -m comment --comment \"secret-node-7 api\" "
        "-p tcp -m tcp --dport 443 -j DROP\n-A KUBE-SERVICES ", 1)
    fake_node.tools["iptables-save"] = {"": (0, rules, "", 0.0)}
    fake_node.tools["nft"] = {"-j list ruleset": (1, "", "nft: secret-node-7: cannot reach 8.8.8.8 "
                                                  "or 2a00:1450:4001:82a::200e\n", 0.0)}
    fake_node.tools["systemctl"] = {"list-units --type=service --all --no-pager": (
        0, f"  kubelet.service loaded active running kubelet on {FQDN} (Secret-Node-7)\n", "", 0.0)}
    fake_node.install()
    return fake_node


def _grep(blob: bytes, where: str) -> list[str]:
    low = blob.lower()
    return [f"{where}: {s}" for s in SECRETS if s.encode() in low]


def _tar_bytes(path_or_bytes: Path | bytes) -> bytes:
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return gzip.decompress(raw)  # every header (member names, the top directory) and every member


def _run(*args: str) -> tuple[int, bytes, str]:
    res = CliRunner().invoke(app, ["collect", "--redact", "--node-name", NODE_NAME, "-q", *args])
    return res.exit_code, res.stdout_bytes, res.stderr


def test_the_default_tarball_holds_no_name_and_no_public_address(exposed: FakeNode, tmp_path: Path) -> None:
    code, stdout, stderr = _run("-o", str(tmp_path))
    assert code == 4, stderr  # nft failed: a warning, redacted too
    out = Path(stdout.decode().strip())
    assert out.parent == tmp_path and re.fullmatch(r"kptrace-redacted-host-1-\d{8}T\d{6}Z\.tar\.gz", out.name)
    found = _grep(out.name.encode(), "file name") + _grep(_tar_bytes(out), "tarball") + _grep(stderr.encode(), "stderr")
    assert found == []
    with tarfile.open(out) as tar:
        top = {m.name.split("/", 1)[0] for m in tar.getmembers()}
        man = json.load(tar.extractfile(f"{out.name.removesuffix('.tar.gz')}/manifest.json"))  # type: ignore[arg-type]
    assert top == {out.name.removesuffix(".tar.gz")}
    assert man["redacted"] is True and man["hostname"] == "redacted-host-1" and man["node_name"] == "redacted-host-2"
    # The addresses are replaced, not dropped (240.0.0.0/4 and 2001:db8::/32 hold the replacements).
    assert re.search(r"reach 240\.\d+\.8\.8 or 2001:db8:\w*:82a::200e", json.dumps(man))


def test_the_stream_holds_no_name_and_no_public_address(exposed: FakeNode) -> None:
    code, stdout, _ = _run("-o", "-")
    assert code == 4
    assert _grep(stdout, "gzip stream") == [] and _grep(_tar_bytes(stdout), "tar stream") == []
    assert b"kptrace-redacted-host-1-" in _tar_bytes(stdout)


def test_a_directory_bundle_holds_no_name_and_no_public_address(exposed: FakeNode, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    code, _, _ = _run("-o", str(out))
    assert code == 4
    found = [f for p in sorted(out.iterdir()) for f in _grep(p.name.encode() + b"\n" + p.read_bytes(), p.name)]
    assert found == []
    assert (out / "hostname.txt").read_text() == "redacted-host-1\n"
    assert 'name: "redacted-host-2"' in (out / "node.yaml").read_text()


def test_a_short_or_generic_host_name_still_leaves_the_names_kptrace_writes(
        fake_node: FakeNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "n1" is too short to replace inside the dumps without breaking them; the whole values still go.
    monkeypatch.setattr(live, "hostname", lambda: "n1")
    res = CliRunner().invoke(app, ["collect", "--redact", "-q", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.stderr
    assert "warning: --redact: a host name too short or too common" in res.stderr
    out = Path(res.stdout.strip())
    assert "-n1-" not in out.name and out.name.startswith("kptrace-redacted-host-1-")
    top = out.name.removesuffix(".tar.gz")
    with tarfile.open(out) as tar:
        hostname = tar.extractfile(f"{top}/hostname.txt").read()  # type: ignore[union-attr]
        node_yaml = tar.extractfile(f"{top}/node.yaml").read().decode()  # type: ignore[union-attr]
        man = json.load(tar.extractfile(f"{top}/manifest.json"))  # type: ignore[arg-type]
    assert hostname == b"redacted-host-1\n"
    assert 'name: "redacted-host-1"' in node_yaml and 'hostname: "redacted-host-1"' in node_yaml
    assert man["hostname"] == man["node_name"] == "redacted-host-1"


def test_without_redact_the_names_stay(exposed: FakeNode, tmp_path: Path) -> None:
    # The same run without --redact shows every secret: the greps above can find them.
    res = CliRunner().invoke(app, ["collect", "--node-name", NODE_NAME, "-q", "-o", str(tmp_path)])
    out = Path(res.stdout.strip())
    found = {f.split(": ", 1)[1] for f in _grep(out.name.encode(), "") + _grep(_tar_bytes(out), "")}
    assert found == set(SECRETS)
    assert out.name.startswith(f"kptrace-{FQDN}-")


def test_manifest_identity_fields_are_whole_values(tmp_path: Path) -> None:
    from kptrace.collect.capture import Capture
    from kptrace.collect.redact import Redactor

    caps = [Capture("hostname.txt", ("hostname",), "kptrace", data=b"main\n"),
            Capture("node.yaml", ("node.yaml",), "kptrace",
                    data=b'name: "main"\nhostname: "main"\nnode_ips: ["34.117.59.81"]\n')]
    out = bundle.write_bundle(caps, tmp_path / "d", bundle.Meta("main", "main", 0.0, 0.1), Redactor(["main"]))
    assert (out / "hostname.txt").read_text() == "redacted-host-1\n"
    assert (out / "node.yaml").read_text() == ('name: "redacted-host-1"\nhostname: "redacted-host-1"\n'
                                               'node_ips: ["240.0.59.81"]\n')
