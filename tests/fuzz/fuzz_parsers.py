#!/usr/bin/env python3
"""Coverage-guided fuzzing of every kptrace parser with atheris (libFuzzer): `pip install atheris`.

    python tests/fuzz/fuzz_parsers.py CORPUS_DIR [SEED_DIR] -max_total_time=600
    python -m tests.fuzz.run --seconds 600          # the same, in several jobs, seeded from the fixtures

The first input byte picks the target (tests/fuzz/targets.py); anything but a KptraceError is a
crash and libFuzzer writes the input as crash-<sha1> (see -artifact_prefix).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["kptrace"]):
    from tests.fuzz.targets import run_one, time_limit


def test_one_input(data: bytes) -> None:
    with time_limit(10.0):
        run_one(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
