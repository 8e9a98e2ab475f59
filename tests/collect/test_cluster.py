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
    for name in ("node-a", "node-b"):
        shutil.copytree(demo_path() / name, d / name)
    bundle.write_bundle(live.collect(fake_node.options()), d / "kptrace-live.tar.gz",
                        bundle.Meta(HOSTNAME, HOSTNAME, 0.0, 0.1))
    (d / ".hidden").mkdir()
    return d


def test_bundle_paths_expands_a_directory_of_bundles(cluster_dir: Path) -> None:
    assert [p.name for p in bundle_paths([cluster_dir])] == ["kptrace-live.tar.gz", "node-a", "node-b"]
    # A bundle directory (plain files inside) is one node, a file is itself.
    assert bundle_paths([cluster_dir / "node-a"]) == [cluster_dir / "node-a"]
    assert bundle_paths([cluster_dir / "kptrace-live.tar.gz"]) == [cluster_dir / "kptrace-live.tar.gz"]


def test_parallel_equals_sequential(cluster_dir: Path) -> None:
    par = load_bundles_parallel([cluster_dir], workers=3, progress=True)
    seq = load_bundles_parallel([cluster_dir], workers=1, progress=False)
    # Two bundles both called node-a: the live one is named after its file.
    assert [n.name for n in par] == [n.name for n in seq] == ["kptrace-live", "node-a", "node-b"]
    assert [[i.sha256 for i in n.inputs] for n in par] == [[i.sha256 for i in n.inputs] for n in seq]
    assert all(n.rulesets for n in par)


def test_a_broken_bundle(cluster_dir: Path) -> None:
    bad = cluster_dir / "node-c"
    bad.mkdir()
    (bad / "notes.txt").write_text("it broke after the upgrade\n")  # nothing kptrace can read
    with pytest.raises(KptraceError, match="cannot tell what command produced this file"):
        load_bundles_parallel([cluster_dir], workers=2, progress=False)
    errors: list[tuple[Path, KptraceError]] = []
    nodes = load_bundles_parallel([cluster_dir], workers=2, progress=False, errors=errors)
    assert [n.name for n in nodes] == ["kptrace-live", "node-a", "node-b"]
    assert [p.name for p, _ in errors] == ["node-c"]


def test_no_bundles(tmp_path: Path) -> None:
    with pytest.raises(KptraceError, match="no input"):
        load_bundles_parallel([], progress=False)
