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


@pytest.fixture(scope="session")
def vm_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> VmLab:
    kept = os.environ.get(RESULTS_ENV)
    if kept:
        # Judge an earlier run again (its directory: results.json and the states' bundles), no boot.
        root = Path(kept)
        return VmLab(root, json.loads((root / "results.json").read_text()), 0.0)
    reason = vm.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    cache = Path(request.config.cache.mkdir("kptrace-vm")) if request.config.cache else REPO_ROOT / ".pytest_cache"
    try:
        image = vm.build_image(cache)
    except vm.VmError as exc:
        skip_or_fail(f"the VM image cannot be built: {exc}")
        raise
    out = tmp_path_factory.mktemp("vm-lab")
    run = vm.Vm(image, out).run([sys.executable, "-m", "tests.lab.ipvs_vm", "run", f"{vm.GUEST_OUT}/lab"],
                                timeout=VM_TIMEOUT_S)
    problem = run.failure()
    results = out / "lab" / "results.json"
    if problem is not None or not results.is_file():
        pytest.fail(f"the VM lab did not finish ({image.package.name} {image.package.version}):\n{problem}",
                    pytrace=False)
    return VmLab(out / "lab", json.loads(results.read_text()), run.seconds)
