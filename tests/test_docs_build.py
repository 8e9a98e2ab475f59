"""The documentation site builds with `mkdocs build --strict`, and the krew manifest has krew's shape.

CI installs the docs extra (`pip install -e '.[test,docs]'`); without mkdocs and mkdocs-material the
build test skips. Pages other changes are still writing may be named in mkdocs.yml's nav: docs/hooks.py
leaves them out until they exist.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HAVE_MKDOCS = importlib.util.find_spec("mkdocs") is not None and importlib.util.find_spec("material") is not None


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kptrace_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not HAVE_MKDOCS, reason="mkdocs and mkdocs-material are not installed: pip install -e '.[docs]'")
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    for page in ("index.html", "getting-started/index.html", "runbook/index.html", "kubectl/index.html",
                 "checks/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert not (tmp_path / "site" / "hooks.py").exists()


def test_nav_names_only_pages_that_exist_or_may_come() -> None:
    """Every nav page exists, except the ones other changes are writing (the hook leaves those out)."""
    coming = {"collect.md", "robustness.md", "ipvs.md", "nftables.md", "lab.md"}
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!ENV", ""))["nav"]

    def pages(items: list) -> list[str]:  # type: ignore[type-arg]
        out: list[str] = []
        for item in items:
            for value in item.values():
                out += pages(value) if isinstance(value, list) else [value]
        return out

    missing = [p for p in pages(nav) if not (ROOT / "docs" / p).is_file() and p not in coming]
    assert missing == []
    pruned = _hooks()._prune([{"A": "index.md"}, {"B": [{"C": "not-yet.md"}]}, {"D": [{"E": "bundle.md"}]}],
                             ROOT / "docs")
    assert pruned == [{"A": "index.md"}, {"D": [{"E": "bundle.md"}]}]


def test_repository_links_are_checked_and_rewritten(caplog: pytest.LogCaptureFixture) -> None:
    hooks = _hooks()

    class F:
        src_uri = "bundle.md"

    class P:
        file = F()

    md = "see [the demo](../kptrace/demo/README.md) and [gone](../kptrace/nope.md) and [x](how-it-works.md)"
    out = hooks.on_page_markdown(md, P(), {"docs_dir": str(ROOT / "docs")}, None)
    assert "the demo (`kptrace/demo/README.md` in the repository)" in out
    assert "[x](how-it-works.md)" in out and "[gone](../kptrace/nope.md)" in out
    assert "kptrace/nope.md" in caplog.text
    out = hooks.on_page_markdown(md, P(), {"docs_dir": str(ROOT / "docs"), "repo_url": "https://example.org/r"}, None)
    assert "[the demo](https://example.org/r/blob/main/kptrace/demo/README.md)" in out


def test_krew_manifest_shape() -> None:
    m = yaml.safe_load((ROOT / "docs" / "krew" / "kptrace.yaml").read_text())
    assert m["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2" and m["kind"] == "Plugin"
    assert m["metadata"]["name"] == "kptrace"
    spec = m["spec"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", spec["version"])
    for key in ("homepage", "shortDescription", "description", "platforms"):
        assert spec[key], key
    assert len(spec["shortDescription"]) <= 80
    seen = set()
    for p in spec["platforms"]:
        labels = p["selector"]["matchLabels"]
        seen.add((labels["os"], labels["arch"]))
        assert p["bin"] == "kubectl-kptrace"
        assert re.fullmatch(r"[0-9a-f]{64}", p["sha256"])
        assert p["uri"].startswith("https://") and spec["version"] in p["uri"]
    assert seen == {("linux", "amd64"), ("linux", "arm64"), ("darwin", "amd64"), ("darwin", "arm64")}


def test_kubectl_entry_point_is_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'kubectl-kptrace = "kptrace.cli.app:main"' in text
    assert re.search(r'docs = \["mkdocs>=1\.5", "mkdocs-material>=9"\]', text)
