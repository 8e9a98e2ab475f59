"""The VM lab: one boot of a Debian kernel with IPVS per test session (tests/lab/vm.py).

The VM runs tests/lab/ipvs_vm.py (kube-proxy's IPVS mode in network namespaces, every probe, live
`kptrace why`) and writes results.json and the bundles it collected; the tests here read them.
Without root, qemu or the kernel package the VM tests skip, unless KPTRACE_REQUIRE_KERNEL=1 (CI),
where that is a failure, as for the netns lab.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.kernel.conftest import skip_or_fail  # noqa: E402
from tests.lab import vm  # noqa: E402

# The whole VM-side lab under TCG; the boot itself takes ~15 s.
VM_TIMEOUT_S = float(os.environ.get("KPTRACE_VM_TIMEOUT", "1500"))
RESULTS_ENV = "KPTRACE_VM_RESULTS"  # a kept lab directory (…/vm-lab0/lab) to judge without booting


class VmLab:
    """What the VM measured: results.json and the state directories beside it."""

    def __init__(self, root: Path, doc: dict[str, Any], seconds: float):
        self.root = root
        self.doc = doc
        self.seconds = seconds

    def state_dir(self, state: str) -> Path:
        return self.root / state

    def bundle(self, state: str) -> Path:
        return self.root / state / "bundle"

    def dump(self, state: str) -> Path:
        return self.root / state / "iptables-save.txt"

    def probes(self, name: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        return [p for p in self.doc["probes"] if (name is None or p["probe"]["name"] == name)
                and (state is None or p["probe"]["state"] == state)]


class _Background:
    """The VM lab started at collection time, so its minutes under TCG overlap the rest of the suite.

    qemu is a separate process, so the thread that waits for it costs the suite nothing; the fixture
    joins it when the first VM test (sorted last, see tests/conftest.py) asks for the results.
    """

    def __init__(self, cache: Path):
        self.cache = cache
        self.result: VmLab | None = None
        self.skip: str | None = None
        self.failure: str | None = None
        self.thread = threading.Thread(target=self._run, name="kptrace-vm-lab", daemon=True)

    def _run(self) -> None:
        try:
            reason = vm.unavailable_reason()
            if reason is not None:
                self.skip = reason
                return
            try:
                image = vm.build_image(self.cache)
            except vm.VmError as exc:
                self.skip = f"the VM image cannot be built: {exc}"
                return
            out = Path(tempfile.mkdtemp(prefix="kptrace-vm-lab-"))
            run = vm.Vm(image, out).run([sys.executable, "-m", "tests.lab.ipvs_vm", "run", f"{vm.GUEST_OUT}/lab"],
                                        timeout=VM_TIMEOUT_S)
            problem = run.failure()
            results = out / "lab" / "results.json"
            if problem is not None or not results.is_file():
                self.failure = (f"the VM lab did not finish ({image.package.name} {image.package.version}):\n"
                                f"{problem}")
                return
            self.result = VmLab(out / "lab", json.loads(results.read_text()), run.seconds)
        except Exception as exc:  # reported by the fixture, in the test that needs it
            self.failure = f"the VM lab crashed: {type(exc).__name__}: {exc}"


_STARTED: list[_Background] = []


def start_in_background(config: pytest.Config) -> None:
    """Begin the VM lab now (called once the session knows it will run VM tests)."""
    if _STARTED or os.environ.get(RESULTS_ENV):
        return
    cache = Path(config.cache.mkdir("kptrace-vm")) if config.cache else REPO_ROOT / ".pytest_cache"
    job = _Background(cache)
    _STARTED.append(job)
    job.thread.start()


@pytest.fixture(scope="session")
def vm_lab(request: pytest.FixtureRequest) -> VmLab:
    kept = os.environ.get(RESULTS_ENV)
    if kept:
        # Judge an earlier run again (its directory: results.json and the states' bundles), no boot.
        root = Path(kept)
        return VmLab(root, json.loads((root / "results.json").read_text()), 0.0)
    start_in_background(request.config)
    job = _STARTED[0]
    job.thread.join(VM_TIMEOUT_S + 900)  # the image build and the lab's own timeout, with room
    if job.thread.is_alive():
        pytest.fail("the VM lab is still running after its timeout", pytrace=False)
    if job.skip is not None:
        skip_or_fail(job.skip)
    if job.failure is not None or job.result is None:
        pytest.fail(job.failure or "the VM lab gave no results", pytrace=False)
    assert job.result is not None
    return job.result
