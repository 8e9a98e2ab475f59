"""load_bundles_parallel: a directory of node bundles loaded one process per core, in path order."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kptrace.collect import bundle, live
from kptrace.collect.cluster import bundle_paths, load_bundles_parallel
from kptrace.errors import KptraceError
from kptrace.load import demo_path

from .conftest import HOSTNAME, FakeNode


@pytest.fixture
def cluster_dir(fake_node: FakeNode, tmp_path: Path) -> Path:
    d = tmp_path / "bundles"
    d.mkdir()
    # The fake live node is a snapshot of node-a: node-a's own bundle sits beside it as node-a-old, and
    # tests that load them together (two claims on one node) leave one out.
    for name in ("node-a", "node-b"):
        shutil.copytree(demo_path() / name, d / (name if name != "node-a" else "node-a-old"))
    bundle.write_bundle(live.collect(fake_node.options()), d / "kptrace-live.tar.gz",
                        bundle.Meta(HOSTNAME, HOSTNAME, 0.0, 0.1))
    (d / ".hidden").mkdir()
    return d


def test_bundle_paths_expands_a_directory_of_bundles(cluster_dir: Path) -> None:
    assert [p.name for p in bundle_paths([cluster_dir])] == ["kptrace-live.tar.gz", "node-a-old", "node-b"]
    # A bundle directory (plain files inside) is one node, a file is itself.
    assert bundle_paths([cluster_dir / "node-b"]) == [cluster_dir / "node-b"]
    assert bundle_paths([cluster_dir / "kptrace-live.tar.gz"]) == [cluster_dir / "kptrace-live.tar.gz"]


def test_two_snapshots_of_one_node_are_refused(cluster_dir: Path) -> None:
    with pytest.raises(KptraceError, match="both claim node node-a"):
        load_bundles_parallel([cluster_dir], workers=2, progress=False)


def test_parallel_equals_sequential(cluster_dir: Path) -> None:
    shutil.rmtree(cluster_dir / "node-a-old")
    par = load_bundles_parallel([cluster_dir], workers=3, progress=True)
    seq = load_bundles_parallel([cluster_dir], workers=1, progress=False)
    assert [n.name for n in par] == [n.name for n in seq] == ["node-a", "node-b"]
    assert [[i.sha256 for i in n.inputs] for n in par] == [[i.sha256 for i in n.inputs] for n in seq]
    assert all(n.rulesets for n in par)


def test_a_broken_bundle(cluster_dir: Path) -> None:
    shutil.rmtree(cluster_dir / "node-a-old")
    bad = cluster_dir / "node-c"
    bad.mkdir()
    (bad / "notes.txt").write_text("it broke after the upgrade\n")  # nothing kptrace can read
    with pytest.raises(KptraceError, match="cannot tell what command produced this file"):
        load_bundles_parallel([cluster_dir], workers=2, progress=False)
    errors: list[tuple[Path, KptraceError]] = []
    nodes = load_bundles_parallel([cluster_dir], workers=2, progress=False, errors=errors)
    assert [n.name for n in nodes] == ["node-a", "node-b"]
    assert [p.name for p, _ in errors] == ["node-c"]


def test_no_bundles(tmp_path: Path) -> None:
    with pytest.raises(KptraceError, match="no input"):
        load_bundles_parallel([], progress=False)
