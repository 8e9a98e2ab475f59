#!/usr/bin/env python3
"""Coverage-guided fuzzing of every kptrace parser with atheris (libFuzzer): `pip install atheris`.

    python tests/fuzz/fuzz_parsers.py CORPUS_DIR [SEED_DIR] -max_total_time=600
    python -m tests.fuzz.run --seconds 600          # the same, in several jobs, seeded from the fixtures

The first input byte picks the target (tests/fuzz/targets.py); anything but a KptraceError is a
crash and libFuzzer writes the input as crash-<sha1> (see -artifact_prefix) and stops.

libFuzzer stops at the first crash, so a bug already reported would end every run at once: the
exceptions in targets.OPEN (module, exception type), each with a reproducer in tests/fuzz/corpus/open/,
are written to crashers/open-* and counted instead. KPTRACE_FUZZ_STRICT=1 makes them crashes again.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["kptrace"]):
    from tests.fuzz.targets import CORPUS, open_bug, run_one, time_limit

def test_one_input(data: bytes) -> None:
    try:
        with time_limit(10.0):
            run_one(data)
    except Exception as e:  # noqa: BLE001
        bug = open_bug(e)
        if bug is None:
            raise
        out = CORPUS / "crashers"
        out.mkdir(parents=True, exist_ok=True)
        name = bug.split(":")[0].replace("/", "_")
        (out / f"open-{name}-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
