"""Less evidence may make an answer less determined, never different (issue "Reasoning on partial evidence").

For every shipped demo bundle and subsets of its files (each one left out, each one alone, random
subsets), and for random excerpts of its iptables dump (what a `grep` of it prints): every check's
status is the whole bundle's or CANNOT_TELL, and every trace branch is one of the whole bundle's
branches (same fate, same endpoint) or UNDETERMINED. This is the property that would have caught
each false PASS of a check that never saw what it needs.
"""

from __future__ import annotations

import random
import shutil
from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace.checks.facts import contexts, service_vips
from kptrace.checks.run import run_all
from kptrace.load import load_cluster
from kptrace.model.finding import Status
from kptrace.model.flow import Flow
from kptrace.model.node import Node
from kptrace.model.trace import Disposition
from kptrace.walkers.netfilter import trace_flow

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "kptrace" / "demo"
BUNDLES = [DEMO / "cluster" / "node-a", DEMO / "cluster" / "node-b", DEMO / "broken-node", DEMO / "ipvs-node"]
# Statuses a check may turn into when evidence goes: CANNOT_TELL always; KPT001/KPT002 report on the
# input itself (what was not read or not given), so theirs change with it by design.
INPUT_CHECKS = {"KPT001", "KPT002"}
EXTERNAL = ip_address("203.0.113.9")  # TEST-NET-3: a client outside the cluster (modelled, never sent to)


def _statuses(paths: list[Path]) -> dict[str, set[str]]:
    nodes = load_cluster(paths, keep_unusable=True)
    out: dict[str, set[str]] = {}
    for f in run_all(contexts(nodes[:1])):
        out.setdefault(f.id, set()).add(f.status.value)
    return out


def _flows(node: Node) -> list[Flow]:
    """Every Service port of the node from a pod and from outside, plus pod-to-pod."""
    ctx = contexts([node])[0]
    flows = []
    pod = ip_address("10.244.1.5")
    for rs in node.rulesets.values():
        for vip, _, rule in service_vips(ctx, rs)[:6]:
            words = rule.text.split()
            port = int(words[words.index("--dport") + 1]) if "--dport" in words else 80
            proto = words[words.index("-p") + 1] if "-p" in words else "tcp"
            if vip.version == 4:
                flows.append(Flow(pod, vip, proto, None, port))
                flows.append(Flow(EXTERNAL, vip, proto, None, port))
    flows.append(Flow(pod, ip_address("10.244.2.7"), "tcp", None, 80))
    return flows


def _branches(paths: list[Path], flows: list[Flow]) -> list[set[tuple[str, str | None]]]:
    node = load_cluster(paths, keep_unusable=True)[0]
    return [{(b.disposition.value, b.dnat) for b in trace_flow(node, f).branches} for f in flows]


def _assert_less_determined(full: dict[str, set[str]], part: dict[str, set[str]], what: str) -> None:
    for cid, statuses in part.items():
        if cid in INPUT_CHECKS:
            continue
        extra = statuses - full.get(cid, set()) - {Status.CANNOT_TELL.value}
        assert not extra, f"{what}: {cid} says {sorted(statuses)} where the whole bundle says {sorted(full.get(cid, set()))}"


def _assert_branches(full: list[set[tuple[str, str | None]]], part: list[set[tuple[str, str | None]]],
                     flows: list[Flow], what: str) -> None:
    for f, whole, some in zip(flows, full, part, strict=True):
        for disposition, dnat in some:
            if disposition == Disposition.UNDETERMINED.value:
                continue
            assert (disposition, dnat) in whole, (
                f"{what}: {f.src} → {f.dst}:{f.dport}/{f.proto} gives {disposition} {dnat or ''} where the whole "
                f"bundle gives only {sorted(whole, key=str)}")


def _subsets(files: list[Path], rng: random.Random) -> list[list[Path]]:
    out = [[f for f in files if f != drop] for drop in files]  # each file left out
    out += [[f] for f in files]  # each file alone
    for _ in range(6):
        k = rng.randint(2, max(2, len(files) - 2))
        out.append(sorted(rng.sample(files, k)))
    return out


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_fewer_files_never_change_an_answer(bundle: Path, tmp_path: Path) -> None:
    files = sorted(p for p in bundle.iterdir() if p.is_file() and p.suffix != ".md")
    node = load_cluster([bundle])[0]
    flows = _flows(node)
    full = _statuses([bundle])
    full_branches = _branches([bundle], flows)
    rng = random.Random(bundle.name)
    for i, subset in enumerate(_subsets(files, rng)):
        # The files keep their bundle names, in a directory of their own (one node).
        d = tmp_path / f"s{i}" / bundle.name
        d.mkdir(parents=True)
        for f in subset:
            shutil.copy(f, d / f.name)
        what = f"{bundle.name} with only {', '.join(f.name for f in subset)}"
        try:
            part = _statuses([d])
        except Exception as e:  # noqa: BLE001 - any evidence must run: say which subset did not
            raise AssertionError(f"{what}: {type(e).__name__}: {e}") from None
        _assert_less_determined(full, part, what)
        _assert_branches(full_branches, _branches([d], flows), flows, what)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_a_grep_of_the_dump_never_changes_an_answer(bundle: Path, tmp_path: Path) -> None:
    """Random lines of iptables-save (what `iptables-save | grep …` prints), with the rest of the bundle."""
    dump = (bundle / "iptables-save.txt").read_text().splitlines()
    rules = [line for line in dump if line.startswith("-A ")]
    node = load_cluster([bundle])[0]
    flows = _flows(node)
    full = _statuses([bundle])
    full_branches = _branches([bundle], flows)
    rng = random.Random(f"grep-{bundle.name}")
    for i in range(5):
        kept = [line for line in rules if rng.random() < 0.6]
        d = tmp_path / f"g{i}" / bundle.name
        d.mkdir(parents=True)
        for f in bundle.iterdir():
            if f.is_file() and not f.name.startswith(("iptables-save", "ip6tables-save")) and f.suffix != ".md":
                shutil.copy(f, d / f.name)
        (d / "grep.txt").write_text("$ sudo iptables-save | grep -e '-A'\n" + "\n".join(kept) + "\n")
        what = f"{bundle.name} with {len(kept)} of {len(rules)} rules (a grep)"
        _assert_less_determined(full, _statuses([d]), what)
        _assert_branches(full_branches, _branches([d], flows), flows, what)


def test_the_kernel_labs_thinning_finds_a_changed_answer(tmp_path: Path) -> None:
    """tests/lab/thinning.py (what every kernel-lab scenario runs after its comparison): a bundle less one file
    or one chain, run again, is held to the whole bundle's answer. On a demo bundle the real answers pass, and
    an answer doctored to something the thinned bundles never say is caught, for `why` and for `check`."""
    import json
    import subprocess
    import sys

    from tests.lab import thinning

    bundle = tmp_path / "node-a"
    shutil.copytree(DEMO / "cluster" / "node-a", bundle)
    chains = thinning._chains(bundle)
    assert chains, "the demo bundle declares user chains"
    assert ("iptables-save.txt", "nat", "KUBE-SERVICES") in chains
    thinning._without_chain(bundle / "iptables-save.txt", "nat", "KUBE-SERVICES")
    left = thinning._chains(bundle)
    assert ("iptables-save.txt", "nat", "KUBE-SERVICES") not in left and len(left) == len(chains) - 1
    assert "-j KUBE-SERVICES" in (bundle / "iptables-save.txt").read_text()  # the jumps to it stay
    whole = DEMO / "cluster" / "node-a"
    for args in (["why", "10.244.2.7:80", "--from", "10.244.1.5", "--dump", str(whole), "-o", "json"],
                 ["check", "--dump", str(whole), "-o", "json"]):
        argv = [sys.executable, "-m", "kptrace", *args]
        doc = json.loads(subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False).stdout)
        assert thinning.thinned_disagreements(argv, doc, count=2) == []
        if args[0] == "why":
            doctored = {**doc, "branches": [{**b, "disposition": "REJECTED"} for b in doc["branches"]]}
        else:
            doctored = {**doc, "results": [{**r, "status": "INFO"} for r in doc["results"]]}
        assert thinning.thinned_disagreements(argv, doctored, count=2), f"{args[0]}: a changed answer went unnoticed"
    # A known gap that no longer shows fails, as xfail(strict=True) does.
    with pytest.raises(AssertionError, match="no longer shows"):
        thinning.assert_thinned(argv, doc, known_gaps={"without no-such-file.txt": "a gap"})
