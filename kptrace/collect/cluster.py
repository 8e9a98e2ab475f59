"""Load many node bundles at once (one per node, as the DaemonSet writes them), one process per core.

`kptrace check --dump DIR_OF_BUNDLES/` calls `load_bundles_parallel(bundle_paths([DIR]))`: every
bundle is parsed in its own worker process, with a progress bar on stderr, and the nodes come back
in the order of the paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Any

from kptrace.errors import KptraceError
from kptrace.model.node import Node

TARBALL_SUFFIXES = (".tar.gz", ".tgz")


def _is_tarball(p: Path) -> bool:
    return p.is_file() and p.name.endswith(TARBALL_SUFFIXES)


def bundle_paths(paths: list[Path]) -> list[Path]:
    """One path per node bundle: a directory of bundles (subdirectories and/or .tar.gz) is expanded.

    A directory holding plain files is one bundle itself; a directory holding only bundles (the
    DaemonSet's output directory) is a cluster. Hidden entries are skipped.
    """
    from kptrace.load import stdin_once

    stdin_once(paths)
    out: list[Path] = []
    for p in paths:
        if not p.is_dir():
            out.append(p)
            continue
        entries = sorted(e for e in p.iterdir() if not e.name.startswith("."))
        plain = [e for e in entries if e.is_file() and not _is_tarball(e)]
        nested = [e for e in entries if e.is_dir() or _is_tarball(e)]
        if plain or not nested:
            out.append(p)
        else:
            out.extend(nested)
    return out


def _load_one(path: Path, node_ips: list[str] | None, pod_cidrs: list[str] | None) -> list[Node]:
    from kptrace.load import load_cluster

    return load_cluster([path], node_ips, pod_cidrs)


def _name_of(path: Path) -> str:
    return path.name.removesuffix(".tar.gz").removesuffix(".tgz")


def load_bundles_parallel(
    paths: list[Path],
    node_ips: list[str] | None = None,
    pod_cidrs: list[str] | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    errors: list[tuple[Path, KptraceError]] | None = None,
) -> list[Node]:
    """Load every bundle in `paths` (see bundle_paths) in parallel; nodes in path order.

    A bundle that fails raises its KptraceError (the first in path order), unless `errors` is given:
    then failures are appended there as (path, error) and the other nodes are still returned.
    Node names come from each bundle's node.yaml; a name two bundles share, or none, becomes the
    bundle's file name, as load_cluster does for directories.
    """
    bundles = bundle_paths(paths)
    if not bundles:
        raise KptraceError("no input: give --dump PATH (a bundle, or a directory of node bundles)")
    results: dict[int, list[Node] | KptraceError] = {}
    n = max(1, min(workers or os.cpu_count() or 1, len(bundles)))
    from kptrace.load import is_stream_path

    if any(is_stream_path(b) for b in bundles):
        n = 1  # `-`, /dev/stdin or a FIFO is read here, once: a worker's standard input is closed
    if n == 1:
        with _bar(progress, len(bundles)) as advance:
            for i, b in enumerate(bundles):
                results[i] = _guard(partial(_load_one, b, node_ips, pod_cidrs))
                advance(b)
    else:
        with ProcessPoolExecutor(max_workers=n) as pool:
            # Submit (and so fork the workers) before the progress bar starts its refresh thread.
            futures: dict[Future[list[Node]], int] = {
                pool.submit(_load_one, b, node_ips, pod_cidrs): i for i, b in enumerate(bundles)}
            with _bar(progress, len(bundles)) as advance:
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = _guard(fut.result)
                    advance(bundles[i])
    nodes: list[Node] = []
    origin: list[Path] = []
    for i, b in enumerate(bundles):
        res = results[i]
        if isinstance(res, KptraceError):
            if errors is None:
                raise res
            errors.append((b, res))
            continue
        nodes.extend(res)
        origin.extend([b] * len(res))
    from kptrace.load import same_node

    same_node(nodes, [[b] for b in origin])
    for nd, b in zip(nodes, origin):
        if nd.name == "node":
            nd.name = _name_of(b)
    return nodes


def _guard(fn: Callable[[], list[Node]]) -> list[Node] | KptraceError:
    try:
        return fn()
    except KptraceError as e:
        return e


class _bar:
    """A rich progress bar on stderr (nothing when `on` is False); calling it advances one bundle."""

    def __init__(self, on: bool, total: int) -> None:
        self.on, self.total = on, total
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Callable[[Path], None]:
        if self.on:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            from kptrace.render.safe import safe_console

            self._progress = Progress(TextColumn("loading bundles"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                                      console=safe_console(stderr=True), transient=True)
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total)
        return self._advance

    def _advance(self, path: Path) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, description=_name_of(path))

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
