"""Bundles `kptrace collect` writes: layout, manifest, read back in memory by --dump."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from kptrace.collect import bundle, live
from kptrace.collect.capture import Capture
from kptrace.load import load_cluster

from .conftest import HOSTNAME, FakeNode

META = bundle.Meta(HOSTNAME, HOSTNAME, 1700000000.0, 0.5)


def test_tarball_has_one_top_directory_and_a_manifest(fake_node: FakeNode, tmp_path: Path) -> None:
    caps = live.collect(fake_node.options())
    out = bundle.write_bundle(caps, tmp_path / "node-a.tar.gz", META)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        man = json.load(tar.extractfile("node-a/manifest.json"))  # type: ignore[arg-type]
        data = tar.extractfile("node-a/iptables-save.txt").read()  # type: ignore[union-attr]
    assert names[0] == "node-a/manifest.json" and all(n.startswith("node-a/") for n in names)
    assert [n.split("/", 1)[1] for n in names[1:]] == [c.name for c in caps if c.data is not None]
    entry = next(e for e in man["commands"] if e["file"] == "iptables-save.txt")
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary name, then renamed


def test_dump_reads_the_tarball_in_memory(fake_node: FakeNode, tmp_path: Path) -> None:
    out = bundle.write_bundle(live.collect(fake_node.options()), tmp_path / "b.tar.gz", META)
    before = sorted(p.name for p in tmp_path.iterdir())
    [node] = load_cluster([out])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing unpacked
    assert node.name == HOSTNAME and node.rulesets and node.addresses and node.routes and node.sysctls
    kinds = {i.file.rsplit("/", 1)[-1]: i.kind for i in node.inputs}
    assert kinds["iptables-save.txt"] == "iptables-save" and kinds["ip-6-rule.json"] == "ip-rule"
    # Every file of the bundle is read, the manifest too (what was not collected, and by whom).
    assert kinds["manifest.json"] == "manifest" and node.not_collected.get("<collector>") == "kptrace"
    assert not node.errors and not any("not read" in a for a in node.assumptions)


def test_directory_bundle_loads_like_the_tarball(fake_node: FakeNode, tmp_path: Path) -> None:
    caps = live.collect(fake_node.options())
    tar = bundle.write_bundle(caps, tmp_path / "b.tar.gz", META)
    d = bundle.write_bundle(caps, tmp_path / "b", META)
    assert (d / "manifest.json").is_file() and (d / "ip-addr.json").is_file()
    [a], [b] = load_cluster([tar]), load_cluster([d])
    assert sorted(i.sha256 for i in a.inputs) == sorted(i.sha256 for i in b.inputs)  # a directory is read sorted


def test_default_name() -> None:
    assert bundle.default_name("node-a", 1700000000.0) == "kptrace-node-a-20231114T221320Z"


def test_failed_capture_has_no_file_but_a_manifest_entry(tmp_path: Path) -> None:
    caps = [Capture("iptables-save.txt", ("iptables-save",), "command", data=b""),
            Capture("nft-ruleset.json", ("nft", "-j", "list", "ruleset"), "command", "denied", exit_code=1,
                    stderr="Operation not permitted\n", message="nft -j list ruleset: Operation not permitted")]
    out = bundle.write_bundle(caps, tmp_path / "d", META)
    assert sorted(p.name for p in out.iterdir()) == ["iptables-save.txt", "manifest.json"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["commands"][1] | {"duration_s": 0} == {
        "file": None, "command": ["nft", "-j", "list", "ruleset"], "via": "command",
        "live_label": "live:nft -j list ruleset", "status": "denied",
        "exit_code": 1, "duration_s": 0, "stderr": "Operation not permitted\n",
        "message": "nft -j list ruleset: Operation not permitted"}
    assert man["warnings"] == ["nft -j list ruleset: Operation not permitted"]
