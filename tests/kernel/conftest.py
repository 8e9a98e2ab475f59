"""Fixtures for the kernel lab: one lab (namespaces, agents, trace monitor) per session.

Without root or `ip netns` the kernel tests skip, unless KPTRACE_REQUIRE_KERNEL=1 (set by CI),
in which case a would-be skip is a failure: CI must not go green on a lab that never ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `tests.lab` must import however pytest was started

from tests.lab import cluster, netns, thinning
from tests.lab.cluster import ClusterLab

REQUIRE_ENV = "KPTRACE_REQUIRE_KERNEL"


def require_kernel() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def skip_or_fail(reason: str) -> None:
    if require_kernel():
        pytest.fail(f"{REQUIRE_ENV}=1 but the kernel lab cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kernel_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netns.Lab]:
    reason = netns.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    netns.cleanup_stale_namespaces()
    lab = netns.make_lab(tmp_path_factory.mktemp("kernel-lab"), seed=netns.lab_seed())
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab(kernel_lab: netns.Lab) -> Iterator[netns.Lab]:
    """The session lab with per-test link state (hairpin, br_netfilter) reset around the test."""
    kernel_lab.reset_link_state()
    try:
        yield kernel_lab
    finally:
        kernel_lab.reset_link_state()


@pytest.fixture(scope="module")
def cluster_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    """The two-node cluster lab (tests/lab/cluster.py), one per test module that asks for it."""
    reason = cluster.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    cluster.cleanup_stale_namespaces()
    made = cluster.make_cluster(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]),
                                seed=netns.lab_seed())
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def clean_cluster(cluster_lab: ClusterLab) -> Iterator[ClusterLab]:
    """The module's cluster, back to the baseline (forwarding on, rp_filter 0, br_netfilter on,
    default routes) before and after each test."""
    cluster_lab.reset()
    try:
        yield cluster_lab
    finally:
        cluster_lab.reset()


class Oracle:
    """Runs kptrace on a lab dump and asserts it agrees with what the kernel did."""

    def __init__(self) -> None:
        self._problem: str | None = None
        self._checked = False

    def require(self) -> None:
        if not self._checked:
            proc = subprocess.run([sys.executable, "-m", "kptrace", "why", "--help"],
                                  cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                                  check=False)
            if proc.returncode != 0:
                self._problem = (f"`python -m kptrace why --help` failed (rc={proc.returncode}): "
                                 f"{proc.stderr.strip()[-500:]}")
            self._checked = True
        if self._problem is not None:
            skip_or_fail(self._problem)

    def check(self, dump: Path, kernel: netns.KernelResult, *, exact_endpoint: bool = False,
              modes: tuple[str, ...] = netns.MODES, extra: tuple[str, ...] = ()) -> None:
        """Assert kptrace agrees with the kernel, from the dump alone and from the bundle."""
        self.require()
        answers: dict[str, netns.KptraceAnswer] = {}
        reports = netns.compare(kernel, dump, exact_endpoint=exact_endpoint, modes=modes, extra=extra, answers=answers)
        if reports:
            raise AssertionError("\n\n".join(reports))
        if "bundle" in answers:  # less evidence (a file or a chain fewer) never changes what it determined
            bundle = answers["bundle"]
            thinning.assert_thinned(bundle.argv, bundle.report, what=str(kernel.flow),
                                    kernel_classes=thinning.kernel_classes(kernel.verdict))


@pytest.fixture(scope="session")
def kptrace() -> Oracle:
    """Checked only when a test gets to the comparison, after its kernel-side assertions."""
    return Oracle()
