"""mkdocs hooks for kptrace's docs (mkdocs.yml `hooks:`).

1. Pages in `nav` that do not exist yet are dropped (a section left empty goes too), so the nav can
   name pages other changes are still writing and `mkdocs build --strict` still passes.
2. A link from a page to a repository file outside docs/ (`../kptrace/demo/README.md`) must point to
   a file that exists; it becomes a link to `repo_url` when one is configured, else the file's path
   in the repository as code. A missing target is a warning, which fails the strict build.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.kptrace")
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<url>\.\./[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def _prune(items: list[Any], docs: Path) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, str):
            if item.startswith(("http://", "https://")) or (docs / item).is_file():
                out.append(item)
            continue
        if isinstance(item, dict):
            kept: dict[str, Any] = {}
            for title, value in item.items():
                if isinstance(value, list):
                    sub = _prune(value, docs)
                    if sub:
                        kept[title] = sub
                elif isinstance(value, str) and (value.startswith(("http://", "https://")) or (docs / value).is_file()):
                    kept[title] = value
                elif isinstance(value, str):
                    log.info("nav: %s is not written yet, left out", value)
            if kept:
                out.append(kept)
    return out


def on_config(config: Any) -> Any:
    if config.get("nav"):
        config["nav"] = _prune(config["nav"], Path(config["docs_dir"]))
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    page_dir = posixpath.dirname(page.file.src_uri)

    def repl(m: re.Match[str]) -> str:
        rel = posixpath.normpath(posixpath.join("docs", page_dir, m.group("url")))
        if rel.startswith("docs/") or rel.startswith(".."):
            return m.group(0)  # inside docs/ (mkdocs checks it) or outside the repository (left alone)
        if not (root / rel).exists():
            log.warning("Doc file '%s' links to '%s', which is not in the repository", page.file.src_uri, rel)
            return m.group(0)
        repo = config.get("repo_url")
        if repo:
            return f"[{m.group('text')}]({repo.rstrip('/')}/blob/main/{rel}{m.group('anchor') or ''})"
        text = m.group("text")
        return text if text.strip("`") == rel else f"{text} (`{rel}` in the repository)"

    return _LINK.sub(repl, markdown)
