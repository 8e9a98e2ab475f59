"""Suite-wide settings: tests never write to the user's real cache."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("KPTRACE_CACHE_DIR", tempfile.mkdtemp(prefix="kptrace-test-cache-"))
