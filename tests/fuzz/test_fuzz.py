"""The fuzzing corpus and a bounded fuzz budget, on every test run (atheris is not needed here).

- every input in tests/fuzz/corpus/regressions/ once crashed something; none may raise anything but
  a KptraceError now;
- tests/fuzz/corpus/open/ holds reproducers of bugs still open in other modules: xfail until fixed;
- a few thousand mutated fixtures through every target (the Python engine of run.py, fixed seed),
  and hypothesis-generated junk per target.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.run import mutate
from tests.fuzz.targets import CORPUS, NAMES, corpus_files, encode, open_bug, run_one, seeds, time_limit

REGRESSIONS = [p for p in corpus_files() if "regressions" in p.parts]
OPEN = [p for p in corpus_files() if "open" in p.parts]


def replay(data: bytes) -> None:
    with time_limit(20.0):
        run_one(data)


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_regressions_do_not_crash(path) -> None:  # type: ignore[no-untyped-def]
    replay(path.read_bytes())


def test_open_bugs_still_crash() -> None:
    """Each reproducer in open/ still crashes (else it belongs in regressions/); none is open now."""
    for path in OPEN:
        with pytest.raises(Exception):  # noqa: B017 - any crash but a KptraceError keeps it open
            replay(path.read_bytes())


def test_corpus_is_there() -> None:
    assert len(REGRESSIONS) >= 10 and (CORPUS / "README.md").exists()


def _run_tolerating_open(data: bytes) -> None:
    try:
        replay(data)
    except Exception as e:  # noqa: BLE001
        if open_bug(e) is None:
            raise


def test_mutated_fixtures_budget() -> None:
    """3000 mutations of the fixtures across all targets: nothing but KptraceError (or a known open bug)."""
    rng = random.Random(20240601)
    pool = [d for _, d in seeds()]
    assert pool
    for _ in range(3000):
        _run_tolerating_open(mutate(rng, rng.choice(pool), pool))


_WORDS = st.sampled_from(["-A", "-P", "-N", "-j", "!", "--dport", "Chain", "(policy", "ACCEPT)", "target", "prot", "opt",
                          "--", "0.0.0.0/0", "/*", "*/", "tcp", "dpt:80", "ctstate", "to:1.2.3.4:5", "...", "$",
                          "root@h:~#", "iptables", "-L", "-S", "route", "-n", "Kernel", "IP", "routing", "table",
                          "Destination", "Gateway", "Genmask", "src=1.1.1.1", "dst=::1", "?", "(1.2.3.4)", "at", "on",
                          "*nat", "COMMIT", ":X", "-", "[0:0]", "²", "9" * 30])
_TEXT = st.one_of(
    st.text(max_size=400),
    st.lists(st.tuples(_WORDS | st.text(max_size=5), st.sampled_from([" ", "  ", "\n", "\r\n", "\t"])), max_size=80)
    .map(lambda parts: "".join(w + s for w, s in parts)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NAMES), _TEXT)
def test_generated_junk_every_target(name: str, text: str) -> None:
    _run_tolerating_open(encode(name, text))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _run_tolerating_open(data)


@pytest.mark.parametrize("target", ["archive", "node-yaml", "json", "branch"])
def test_structured_mutators(target: str) -> None:
    """A few dozen inputs of each structured mutator (tests/fuzz/mutators.py): tarballs that lie, YAML alias
    bombs, JSON of the wrong shape or nested thousands deep, rulesets built to branch. Nothing but a
    KptraceError, each within the time limit."""
    from tests.fuzz.mutators import MUTATORS, SEEDS

    rng = random.Random(f"structured-{target}")
    pool = SEEDS[target]()
    for _ in range(12 if target == "branch" else 40):
        body = MUTATORS[target](rng, rng.choice(pool))
        with time_limit(10.0):
            run_one(encode(target, body))


def test_the_time_limit_counts_the_inputs_own_cpu_time() -> None:
    """On a shared machine wall time measures the neighbours: by default the limit counts CPU time (ITIMER_PROF),
    so waiting does not time out and work does."""
    import time

    with time_limit(0.2):
        time.sleep(0.5)  # no CPU spent: not a timeout
    with pytest.raises(TimeoutError, match=r"longer than 0.2 s \(cpu time\)"):
        with time_limit(0.2):
            while True:
                pass
    with pytest.raises(TimeoutError, match=r"\(wall time\)"):
        with time_limit(0.2, clock="wall"):
            time.sleep(1)
