"""Suite-wide settings: tests never write to the user's real cache."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("KPTRACE_CACHE_DIR", tempfile.mkdtemp(prefix="kptrace-test-cache-"))


@pytest.hookimpl(trylast=True)  # after -m/-k have deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """VM tests last, their lab started now: the VM's minutes under TCG overlap the rest of the suite."""
    vm_items = [item for item in items if item.get_closest_marker("vm") is not None]
    if not vm_items:
        return
    items[:] = [item for item in items if item.get_closest_marker("vm") is None] + vm_items
    from tests.kernel_vm.conftest import start_in_background

    start_in_background(config)
