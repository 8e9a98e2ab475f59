"""Issue 21's disagreements, replayed from what the VM lab recorded (no root, no VM needed).

tests/fixtures/ipvs/vm/ holds bundles `kptrace collect` wrote inside the VM lab (tests/lab/ipvs_vm.py,
Debian's kernel with IPVS) and, in kernel.json, what that kernel did with the probes below (TRACE
events, conntrack, the endpoint that answered). kptrace must keep agreeing with those recordings:
hairpin without hairpin mode loses the reply at the bridge; a node reaching a real server on itself
is masqueraded; a reply is not UNDETERMINED on an empty KUBE-LOAD-BALANCER; tunl0 (the ipip
module's fallback device) is not an overlay for KPT403; KPT201 on FORWARD DROP does not claim IPVS
Service traffic is dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.lab import ipvs_vm, netns

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "ipvs" / "vm"
REPO = Path(__file__).resolve().parents[2]


def _recorded() -> list[dict[str, Any]]:
    return list(json.loads((ROOT / "kernel.json").read_text())["probes"])


def _by_name(name: str, state: str) -> dict[str, Any]:
    return next(r for r in _recorded() if r["probe"]["name"] == name and r["probe"]["state"] == state)


@pytest.mark.parametrize("rec", _recorded(), ids=lambda r: f"{r['probe']['state']}:{r['probe']['name']}".replace(" ", "_"))
def test_kptrace_agrees_with_the_recorded_kernel(rec: dict[str, Any]) -> None:
    kernel = ipvs_vm.kernel_from_json(rec["kernel"])
    state = ROOT / rec["probe"]["state"]
    answer = netns.run_kptrace(state, kernel.flow, node_ips=())
    problems = ipvs_vm.disagreements(kernel, answer, state / "iptables-save.txt")
    assert not problems, netns.format_report(kernel, answer, problems)


def test_hairpin_off_reply_is_dropped_by_the_bridge() -> None:
    kernel = ipvs_vm.kernel_from_json(_by_name("hairpin", "base")["kernel"])
    assert kernel.reply_ok is False and kernel.masquerade  # the SYN arrived masqueraded; no SYN-ACK came back
    answer = netns.run_kptrace(ROOT / "base", kernel.flow, node_ips=())
    branch = next(b for b in answer.branches if b.get("dnat") == kernel.dnat)
    assert branch["reply"]["disposition"] == "DROPPED" and "hairpin" in json.dumps(branch["reply"]), branch["reply"]


def test_node_to_its_own_real_server_is_masqueraded() -> None:
    kernel = ipvs_vm.kernel_from_json(_by_name("node->local real server", "base")["kernel"])
    assert kernel.masquerade and kernel.delivery is not None and kernel.delivery.ns_role == "node"
    answer = netns.run_kptrace(ROOT / "base", kernel.flow, node_ips=())
    assert answer.disposition == "DELIVERED" and answer.branches[0]["masquerade"], answer.report


def test_reply_through_an_empty_load_balancer_set_is_decided() -> None:
    """KUBE-IPVS-FILTER tests KUBE-LOAD-BALANCER dst,dst on the reply, whose port is unknown without --sport:
    the set is empty, so it matches nothing."""
    kernel = ipvs_vm.kernel_from_json(_by_name("node->ClusterIP", "base")["kernel"])
    answer = netns.run_kptrace(ROOT / "base", kernel.flow, node_ips=())
    for b in answer.branches:
        assert b["reply"] is not None and b["reply"]["disposition"] != "UNDETERMINED", b["reply"]


def _check(state: str) -> dict[str, list[dict[str, Any]]]:
    proc = subprocess.run([sys.executable, "-m", "kptrace", "check", "--dump", str(ROOT / state), "-o", "json"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode in (0, 1, 4), proc.stderr  # 4: some check FAILed
    out: dict[str, list[dict[str, Any]]] = {}
    for r in json.loads(proc.stdout)["results"]:
        out.setdefault(r["id"], []).append(r)
    return out


def test_kpt403_ignores_the_ipip_fallback_device() -> None:
    links = json.loads((ROOT / "base" / "ip-link.json").read_text())
    tunl0 = next(lk for lk in links if lk["ifname"] == "tunl0")
    assert "UP" not in tunl0["flags"]  # the fallback device: DOWN, no address
    assert [r["status"] for r in _check("base")["KPT403"]] == ["PASS"]


def test_kpt201_does_not_claim_ipvs_service_traffic_is_dropped() -> None:
    remote = ipvs_vm.kernel_from_json(_by_name("pod->ClusterIP, remote endpoint", "forward-drop")["kernel"])
    assert remote.delivery is not None and remote.delivery.ns_role == "rpod"  # delivered despite FORWARD DROP
    pod_to_pod = ipvs_vm.kernel_from_json(_by_name("pod->remote pod", "forward-drop")["kernel"])
    assert pod_to_pod.verdict == "DROP"
    (result,) = [r for r in _check("forward-drop")["KPT201"] if r["status"] == "FAIL"]
    assert "pod-to-pod connections across nodes are dropped" in result["message"]
    assert "ClusterIP connections to endpoints on other nodes are dropped" not in result["message"]
