"""Property: on random kube-proxy-like nodes, kptrace predicts what the kernel does.

Each seed builds a random node (services with 0-3 endpoints on this node or another, NodePorts,
externalTrafficPolicy=Local, FORWARD policy DROP, user DROP rules), loads it into the lab, and
sends a few random probes. For every probe the kernel's verdict, DNAT endpoint and masquerade
must match kptrace's answer on the node's iptables-save. Seeds are fixed (KPTRACE_LAB_SEED
shifts them) so a failure replays exactly.
"""

from __future__ import annotations

import pytest

from tests.lab import netns
from tests.lab.rulesets import RandomCase, random_case

pytestmark = pytest.mark.kernel

CASES = 5
PROBES_PER_CASE = 4  # 20 probes in all keeps the suite well inside its time budget


def describe_case(case: RandomCase) -> str:
    lines = [(f"FORWARD policy {case.ruleset.forward_policy}; user rules: "
             f"{[r.line for r in case.ruleset.user_rules]}")]
    for s in case.ruleset.services:
        lines.append(f"  {s.port_name_string} {s.protocol} {s.cluster_ip}:{s.port} "
                     f"nodePort={s.node_port} eTP={'Local' if s.external_policy_local else 'Cluster'} "
                     f"endpoints={[str(e) + ('' if e.local else ' (other node)') for e in s.endpoints]}")
    return "\n".join(lines)


def case_params() -> list[object]:
    return list(range(CASES))


@pytest.mark.parametrize("case_index", case_params())
def test_random_node_agrees_with_kernel(lab: netns.Lab, kptrace, case_index: int) -> None:
    seed = netns.lab_seed() + case_index
    case = random_case(seed, n_probes=PROBES_PER_CASE)
    dump = lab.load(case.ruleset.render(), name=f"random-{seed}")
    reports: list[str] = []
    for flow in case.probes:
        kernel = lab.probe(flow)
        assert kernel.verdict not in ("LOST", "VANISHED"), "lab could not observe the probe\n" + kernel.describe()
        kptrace.require()
        reports += netns.compare(kernel, dump)
    assert not reports, (f"seed {seed} (dump {dump}):\n{describe_case(case)}\n\n"
                         + "\n\n".join(reports))
