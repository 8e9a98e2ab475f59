"""/proc/modules lines of modules whose names start with a digit (8021q, 9p, 9pnet_virtio: every kernel
with VLANs or 9p loaded, the VM lab's among them) are modules, not unrecognised input (issue 21)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kptrace.load import load_node

# /proc/modules as `kptrace collect` wrote it inside the VM lab (Debian 6.1, tests/lab/vm.py).
RECORDED = Path(__file__).resolve().parents[1] / "fixtures" / "ipvs" / "vm" / "base" / "modules.txt"


def test_digit_led_module_names_are_read(tmp_path: Path) -> None:
    shutil.copyfile(RECORDED, tmp_path / "modules.txt")
    names = {line.split()[0] for line in RECORDED.read_text().splitlines() if line.strip()}
    assert {"8021q", "9p", "9pnet", "9pnet_virtio"} <= names
    node = load_node([tmp_path])
    assert {m.name for m in node.modules or []} == names
    assert not node.errors, node.errors
