"""Less evidence never changes a determined answer (issue "Reasoning on partial evidence"), with the kernel as judge.

On random kube-proxy-like nodes the kernel's answer to each probe is first checked against kptrace on
the whole bundle (as test_kernel_property does). Then a random file of the bundle, or a random chain
of its iptables-save, is taken away: kptrace's answer may become UNDETERMINED, but every determined
branch it still gives must be one the whole bundle gives, which is what the kernel did.

Every other scenario of the lab gets the same treatment where it is compared with the kernel
(tests/lab/thinning.py): the single-node scenarios through the kernel oracle (conftest `kptrace.check`:
test_kernel_iptables, test_kernel_verdicts), the two-node cluster (test_kernel_cluster), the nftables
labs (test_kernel_nft), and here, the broken and fixed node states of test_kernel_checks (tests/lab/broken.py),
whose `kptrace check` statuses and `why` answers are held to those on the whole bundle. The observations
are the ones test_kernel_checks made (shared, made once); run alone, this module makes them itself.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from tests.kernel.test_kernel_checks import (  # noqa: F401 - fixtures (and the scenarios' names) reused
    BROKEN,
    HEALTHY,
    checks_lab,
    kpt202_runs,
    kpt402_runs,
    observe,
)
from tests.lab import netns, thinning
from tests.lab.broken import Observation
from tests.lab.rulesets import random_case

pytestmark = pytest.mark.kernel

CASES = 3
PROBES_PER_CASE = 3


def _branches(answer: netns.KptraceAnswer) -> set[tuple[str, str | None]]:
    return {(str(b["disposition"]), b.get("dnat")) for b in answer.report.get("branches", [])}


def _without_file(bundle: Path, into: Path, rng: random.Random) -> tuple[Path, str]:
    shutil.copytree(bundle, into)
    files = sorted(p for p in into.iterdir() if p.is_file())
    gone = rng.choice(files)
    gone.unlink()
    return into, f"without {gone.name}"


def _without_chain(bundle: Path, into: Path, rng: random.Random) -> tuple[Path, str]:
    shutil.copytree(bundle, into)
    dump = into / "iptables-save.txt"
    lines = dump.read_text().splitlines()
    chains = sorted({m.group(1) for line in lines if (m := re.match(r":(\S+) - ", line))})
    if not chains:
        return into, "unchanged (no user chain)"
    chain = rng.choice(chains)
    # The chain's declaration and rules go; the jumps to it stay: a chain the input does not hold.
    kept = [line for line in lines if not line.startswith((f":{chain} ", f"-A {chain} "))]
    dump.write_text("\n".join(kept) + "\n")
    return into, f"without chain {chain}"


@pytest.mark.parametrize("case_index", list(range(CASES)))
def test_less_evidence_never_changes_what_the_kernel_decided(lab: netns.Lab, kptrace, case_index: int,
                                                              tmp_path: Path) -> None:
    seed = netns.lab_seed() + 100 + case_index
    case = random_case(seed, n_probes=PROBES_PER_CASE)
    dump = lab.load(case.ruleset.render(), name=f"mono-{seed}")
    bundle = netns.bundle_of(dump)
    rng = random.Random(seed)
    reports: list[str] = []
    for i, flow in enumerate(case.probes):
        kernel = lab.probe(flow)
        assert kernel.verdict not in ("LOST", "VANISHED"), "lab could not observe the probe\n" + kernel.describe()
        kptrace.require()
        whole = netns.run_kptrace(bundle, kernel.flow, node_ips=())
        problems = netns.disagreements(kernel, whole, dump, exact_endpoint=False)
        assert not problems, f"seed {seed}: the whole bundle already disagrees with the kernel: {problems}"
        for k, thin in enumerate((_without_file, _without_chain)):
            where, what = thin(bundle, tmp_path / f"p{i}-{k}", rng)
            part = netns.run_kptrace(where, kernel.flow, node_ips=())
            for disposition, dnat in _branches(part) - _branches(whole):
                if disposition != "UNDETERMINED":
                    reports.append(f"seed {seed}, {kernel.flow}, bundle {what}: {disposition} {dnat or ''} where "
                                   f"the whole bundle (and the kernel: {kernel.verdict}) gives {sorted(_branches(whole), key=str)}")
    assert not reports, "\n".join(reports)


# Every node state of tests/kernel/test_kernel_checks.py: (key, broken).
OBSERVED = [(k, True) for k in BROKEN] + [(k, False) for k in HEALTHY] + [("KPT205-by-design", True)]


@pytest.mark.parametrize(("key", "bad"), OBSERVED, ids=[f"{k}-{'broken' if b else 'fixed'}" for k, b in OBSERVED])
def test_less_evidence_on_every_checks_lab_state(observe, key: str, bad: bool) -> None:  # noqa: F811
    """`kptrace check` and `kptrace why` on each broken (and fixed) node state, with one file or one chain of the
    bundle taken away: no status a whole bundle does not give (CANNOT_TELL aside), no branch it does not give;
    and where the whole answer agrees with the kernel, a thinned answer determined as a whole agrees too."""
    obs: Observation = observe(key, bad)
    why = obs.why
    classes = thinning.kernel_classes(obs.kernel.verdict) if obs.kernel is not None else None
    top = str(why.doc.get("disposition"))
    if classes is not None and top not in ("UNDETERMINED", "MIXED") and netns.disposition_class(top) not in classes:
        classes = None  # the whole bundle already misses what the kernel did (an xfail of test_kernel_checks)
    thinning.assert_thinned(why.argv, why.doc, kernel_classes=classes, what=f"{key} why")
    thinning.assert_thinned(obs.check.argv, obs.check.doc, what=f"{key} check")
