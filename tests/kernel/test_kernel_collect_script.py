"""`kptrace collect --script` in the netns lab: the POSIX sh collector, run under dash and under busybox
sh (with busybox's own applets for every tool but the node's networking ones), writes a bundle that
kptrace loads and answers exactly as it answers `kptrace collect`'s bundle of the same node.

Namespaces are named kpt-g-script-<pid>-…, hold only lab addresses and are deleted in a finally block.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import skip_or_fail
from tests.lab import netns
from tests.lab.netns import EXTERNAL_CLIENT_IP, LOCAL_PODS, NODE_IP, Flow
from tests.lab.rulesets import Endpoint, NodeRuleset, Service, UserRule

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
PREFIX = "kpt-g-script-"
POD_A, POD_B, POD_C = LOCAL_PODS["pod-a"], LOCAL_PODS["pod-b"], LOCAL_PODS["pod-c"]
WEB = Service("default", "web", "10.96.0.10", 80, [Endpoint(POD_B, 8080)], node_port=30080)
EMPTY = Service("default", "empty", "10.96.0.20", 80, [])
RULESET = NodeRuleset(services=[WEB, EMPTY], user_rules=[
    UserRule("filter", f"-I FORWARD 1 -d {POD_C}/32 -p tcp -m tcp --dport 9090 -j DROP")])
SPORT = "45000"  # inside the lab's TRACE range (40000-59999), which the collected ruleset shows too
PROBES = [
    Flow("pod-a", POD_A, WEB.cluster_ip, WEB.port),
    Flow("world", EXTERNAL_CLIENT_IP, NODE_IP, 30080),
    Flow("pod-a", POD_A, EMPTY.cluster_ip, EMPTY.port),
    Flow("pod-a", POD_A, POD_C, 9090),
]
# The tools the script uses besides the node's networking ones: under busybox they are its applets.
APPLETS = ("sh", "cat", "tr", "sed", "grep", "head", "cut", "sort", "find", "date", "uname", "wc", "sha256sum",
           "timeout", "tar", "paste", "readlink", "basename", "dirname", "mkdir", "rm", "mv", "id", "printf")


def _run(cmd: list[str], ns: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if ns is not None:
        cmd = [shutil.which("ip") or "ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env, check=False)


def kptrace(*args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "kptrace", *args], ns=ns)


@pytest.fixture(scope="module")
def script_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[netns.Lab, Path]]:
    reason = netns.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    for shell in ("dash", "busybox"):
        if shutil.which(shell) is None:
            skip_or_fail(f"{shell} is not installed (apt-get install dash busybox-static)")
    prefix = f"{PREFIX}{os.getpid()}-{random.Random().randrange(16**4):04x}-"
    lab = netns.Lab(prefix=prefix, seed=netns.lab_seed(), dump_dir=tmp_path_factory.mktemp("script-lab"))
    try:
        lab.build()
        lab.load(RULESET.render(), name="script")
        lab.warm_up_neighbours()
        yield lab, tmp_path_factory.mktemp("bundles")
    finally:
        lab.close()


def _busybox_path(tmp: Path) -> str:
    """A PATH whose coreutils are busybox applets; ip, iptables, nft and the like stay the node's."""
    bindir = tmp / "busybox-bin"
    bindir.mkdir(exist_ok=True)
    busybox = shutil.which("busybox")
    assert busybox is not None
    for applet in APPLETS:
        link = bindir / applet
        if not link.exists():
            link.symlink_to(busybox)
    return f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"


def _collect_all(lab: netns.Lab, base: Path) -> dict[str, Path]:
    """The same node three times: kptrace collect, the script under dash, under busybox sh. Each bundle
    directory is called `node` (in its own parent), so the inputs are cited alike in every answer."""
    script = base / "collect.sh"
    made = kptrace("collect", "--script")
    assert made.returncode == 0 and made.stdout.startswith("#!/bin/sh"), made.stderr
    script.write_text(made.stdout)
    out: dict[str, Path] = {}
    for name in ("kptrace", "dash", "busybox"):
        (base / name).mkdir(exist_ok=True)
        out[name] = base / name / "node"
        shutil.rmtree(out[name], ignore_errors=True)
    # Neighbour entries age (REACHABLE → STALE) between captures: each collector gets them fresh.
    lab.warm_up_neighbours()
    r = kptrace("collect", "-q", "-o", str(out["kptrace"]), ns=lab.node)
    assert r.returncode in (0, 4), r.stderr
    lab.warm_up_neighbours()
    r = _run(["dash", str(script), "-o", str(out["dash"])], ns=lab.node)
    assert r.returncode in (0, 4), r.stderr
    env = {**os.environ, "PATH": _busybox_path(base)}
    lab.warm_up_neighbours()
    r = _run(["busybox", "sh", str(script), "-o", str(out["busybox"])], ns=lab.node, env=env)
    assert r.returncode in (0, 4), r.stderr
    return out


def _answer(doc: dict[str, Any]) -> dict[str, Any]:
    """A report without its inputs (their sha256 differ: node.yaml says who collected it), packet counters
    blanked (the kernel's own packets move them between two captures), fingerprints dropped."""
    text = re.sub(r"\[\d+:\d+\]", "[p:b]", json.dumps({k: v for k, v in doc.items() if k != "inputs"}))
    text = re.sub(r"conntrack table \d+/", "conntrack table N/", text)  # nf_conntrack_count: a live counter
    out: dict[str, Any] = json.loads(text)
    for f in out.get("findings", out.get("results", [])):
        f.pop("fingerprint", None)
    return out


def _differences(a: Any, b: Any, at: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{at}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{at}[{i}]")]
    return [] if a == b else [f"{at}: {str(a)[:200]} != {str(b)[:200]}"]


def test_script_bundles_answer_like_kptrace_collects(script_lab: tuple[netns.Lab, Path]) -> None:
    lab, base = script_lab
    bundles = _collect_all(lab, base)
    files = {name: sorted(p.name for p in b.iterdir()) for name, b in bundles.items()}
    assert files["dash"] == files["kptrace"] and files["busybox"] == files["kptrace"], files
    # The sysctl subset is read the same way, key for key, in the same order (values too, but for the
    # live counter nf_conntrack_count, which moves between two captures).
    def sysctl(b: Path) -> list[str]:
        return [re.sub(r"^(net\.netfilter\.nf_conntrack_count) = .*", r"\1 = N", line)
                for line in (b / "sysctl.txt").read_text().splitlines()]

    assert len(sysctl(bundles["kptrace"])) > 50
    assert sysctl(bundles["dash"]) == sysctl(bundles["kptrace"])
    assert sysctl(bundles["busybox"]) == sysctl(bundles["kptrace"])
    man = json.loads((bundles["busybox"] / "manifest.json").read_text())
    ours = {(c["file"] or c.get("absent_file"), c["status"]) for c in man["commands"]}
    theirs = {(c["file"] or c.get("absent_file"), c["status"])
              for c in json.loads((bundles["kptrace"] / "manifest.json").read_text())["commands"]}
    assert ours == theirs
    for flow in PROBES:
        args = ["why", f"{flow.dst}:{flow.dport}", "--from", flow.src, "--proto", flow.proto, "--sport", SPORT,
                "-o", "json", *(["--in-iface", flow.in_iface] if flow.in_iface else [])]
        answers = {name: kptrace(*args, "--dump", str(b)) for name, b in bundles.items()}
        for name, r in answers.items():
            assert r.returncode not in (2, 3), (name, r.stderr)
        want = _answer(json.loads(answers["kptrace"].stdout))
        for name in ("dash", "busybox"):
            assert answers[name].returncode == answers["kptrace"].returncode, (name, flow)
            got = _answer(json.loads(answers[name].stdout))
            assert got == want, (name, flow, _differences(got, want))
    checks = {name: kptrace("check", "--dump", str(b), "-o", "json") for name, b in bundles.items()}
    want = _answer(json.loads(checks["kptrace"].stdout))
    for name in ("dash", "busybox"):
        assert checks[name].returncode == checks["kptrace"].returncode
        got = _answer(json.loads(checks[name].stdout))
        assert got == want, (name, _differences(got, want))


def test_script_refuses_an_existing_path_and_changes_nothing(script_lab: tuple[netns.Lab, Path]) -> None:
    lab, base = script_lab
    script = base / "collect.sh"
    script.write_text(kptrace("collect", "--script").stdout)
    target = base / "exists"
    target.mkdir(exist_ok=True)
    (target / "keep").write_text("mine")
    before = _run(["iptables-save"], ns=lab.node).stdout
    r = _run(["dash", str(script), "-o", str(target)], ns=lab.node)
    assert r.returncode == 2 and "exists" in r.stderr
    assert sorted(p.name for p in target.iterdir()) == ["keep"]
    tarball = base / "node.tar.gz"
    tarball.unlink(missing_ok=True)
    r = _run(["dash", str(script), "-o", str(tarball)], ns=lab.node)
    assert r.returncode in (0, 4) and tarball.is_file(), r.stderr
    loaded = kptrace("why", f"{WEB.cluster_ip}:{WEB.port}", "--from", POD_A, "--sport", SPORT, "--dump", str(tarball))
    assert loaded.returncode == 0 and "default/web" in loaded.stdout.splitlines()[0]
    after = _run(["iptables-save"], ns=lab.node).stdout
    strip = re.compile(r"^#.*$|\[\d+:\d+\]", re.MULTILINE)
    assert strip.sub("", before) == strip.sub("", after)
