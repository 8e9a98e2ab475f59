"""kube-proxy's IPVS mode judged by a kernel that has IPVS (issue 21).

Every probe of tests/lab/ipvs_vm.py was sent in the VM; here each one is checked twice: first what
the kernel did is asserted (so a broken lab fails as a lab problem), then kptrace's offline answer
on the bundle `kptrace collect` wrote inside the VM, and the answer `kptrace why` gave live in the
VM's node namespace, must both agree with it (tests/lab/netns.py's `disagreements`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_vm.conftest import REPO_ROOT, VmLab
from tests.lab import ipvs_vm, netns
from tests.lab.ipvs_vm import PROBES, SERVICE, SHARES, kernel_from_json

pytestmark = pytest.mark.vm

# What the kernel must have done with each probe (lab sanity, checked before kptrace is asked).
# "deliver:ROLE[s]": the endpoint that answered; "reject": IPVS or a rule refused it; "no-reply": delivered,
# but the answer never came back; "forward": routed on (the world or a tunnel), no listener.
EXPECT: dict[tuple[str, str], str] = {
    ("pod->ClusterIP", "base"): "deliver:pod-a,pod-b,rpod",
    ("pod->ClusterIP udp", "base"): "deliver:pod-b,pod-c",
    ("pod->ClusterIP, remote endpoint", "base"): "deliver:rpod",
    ("pod->ClusterIP sh", "base"): "deliver:pod-a,pod-b,pod-c",
    ("node->ClusterIP", "base"): "deliver:pod-a,pod-b,rpod",
    ("node->ClusterIP udp", "base"): "deliver:pod-b,pod-c",
    ("outside->NodePort", "base"): "deliver:pod-a,pod-b,rpod",
    ("pod->NodePort", "base"): "deliver:pod-a,pod-b,rpod",
    ("remote pod->NodePort", "base"): "deliver:pod-a,pod-b,rpod",
    ("pod->local real server", "base"): "deliver:node",
    ("node->local real server", "base"): "deliver:node",
    ("hairpin", "base"): "no-reply",
    ("no real server", "base"): "reject",
    ("weight 0, another server", "base"): "deliver:pod-c",
    ("quiesced service", "base"): "deliver:pod-a",
    ("wrong port", "base"): "reject",
    ("pod->remote pod", "base"): "deliver:rpod",
    ("outside->node port 10250", "base"): "deliver:node",
    ("hairpin", "hairpin"): "deliver:pod-a",
    ("pod->ClusterIP", "hairpin"): "deliver:pod-a,pod-b,rpod",
    ("vlan uplink", "hairpin"): "forward:eth0.100",
    ("ipip (calico)", "hairpin"): "forward:tunl0",
    ("vxlan (calico)", "hairpin"): "forward:vxlan.calico",
    ("pod->ClusterIP, remote endpoint", "forward-drop"): "deliver:rpod",
    ("node->ClusterIP", "forward-drop"): "deliver:pod-a,pod-b,rpod",
    ("outside->NodePort", "forward-drop"): "deliver:pod-a,pod-b,rpod",
    ("pod->NodePort", "forward-drop"): "deliver:pod-a,pod-b,rpod",
    ("pod->remote pod", "forward-drop"): "drop",
    ("KPT302: VIP not on kube-ipvs0", "broken"): "not-delivered",
    ("KPT303: no KUBE-CLUSTER-IP entry", "broken"): "reject",
    ("KPT304: every real server weight 0", "broken"): "reject",
    ("KPT305: node address on kube-ipvs0", "broken"): "reject",
    ("KPT301: no ip_vs", "kpt301-broken"): "refused-locally",
}


def _id(p: ipvs_vm.Probe) -> str:
    return f"{p.state}:{p.name}".replace(" ", "_")


def _record(vm_lab: VmLab, probe: ipvs_vm.Probe) -> dict[str, Any]:
    error = vm_lab.doc["states"].get(probe.state, {}).get("error")
    assert error is None, f"lab: the VM could not make state {probe.state}: {error}"
    found = vm_lab.probes(probe.name, probe.state)
    assert found, f"the VM lab has no result for {probe.state}/{probe.name}"
    return found[0]


def _assert_kernel(kernel: netns.KernelResult, what: str, rec: dict[str, Any]) -> None:
    kind, _, arg = what.partition(":")
    d = kernel.describe() + f"\n  ipvsadm -Lnc: {rec.get('ipvs_conn')}"
    if kind == "deliver":
        assert kernel.delivery is not None and kernel.delivery.ns_role in arg.split(","), f"lab: expected {what}\n{d}"
        if kernel.delivery.ns_role != kernel.flow.client:  # (IPVS may pick the client itself: a hairpin)
            assert kernel.client_result in ("connected", "reply"), f"lab: the client got no answer\n{d}"
    elif kind == "drop":
        assert kernel.verdict == "DROP" and kernel.delivery is None, f"lab: expected a drop\n{d}"
    elif kind == "reject":
        assert kernel.verdict == "REJECT" and kernel.delivery is None, f"lab: expected a refusal\n{d}"
    elif kind == "no-reply":
        assert kernel.delivery is not None and kernel.client_result == "timeout", f"lab: expected a lost reply\n{d}"
        assert kernel.reply_ok is False, d
    elif kind == "refused-locally":
        assert kernel.delivery is None and kernel.client_result == "refused" and kernel.verdict == "ACCEPT", d
        assert rec.get("ipvs_conn") is None, d
    elif kind == "not-delivered":
        assert kernel.delivery is None and kernel.client_result != "connected", f"lab: expected no delivery\n{d}"
    elif kind == "forward":
        assert kernel.verdict == "ACCEPT" and kernel.egress == arg, f"lab: expected forwarding by {arg}\n{d}"
    else:
        raise AssertionError(f"unknown expectation {what}")


def _offline(vm_lab: VmLab, kernel: netns.KernelResult, state: str) -> list[str]:
    """kptrace on the bundle collected in the VM, as a user would run it."""
    answer = netns.run_kptrace(vm_lab.bundle(state), kernel.flow, node_ips=())
    problems = ipvs_vm.disagreements(kernel, answer, vm_lab.dump(state))
    return [netns.format_report(kernel, answer, problems)] if problems else []


def _live(vm_lab: VmLab, kernel: netns.KernelResult, rec: dict[str, Any], state: str) -> list[str]:
    live = rec.get("live")
    if live is None:
        return []  # not one of the probes asked live (tests/lab/ipvs_vm.py: Probe.live)
    if live["exit_code"] in (2, 3) or not live["report"]:
        return [f"live kptrace failed (rc={live['exit_code']}): {live['stderr']}"]
    answer = netns.KptraceAnswer(live["exit_code"], live["report"], live["argv"], live["stderr"])
    problems = ipvs_vm.disagreements(kernel, answer, vm_lab.dump(state))
    return [netns.format_report(kernel, answer, problems)] if problems else []


@pytest.mark.parametrize("probe", PROBES, ids=_id)
def test_probe_agrees(vm_lab: VmLab, probe: ipvs_vm.Probe) -> None:
    rec = _record(vm_lab, probe)
    kernel = kernel_from_json(rec["kernel"])
    _assert_kernel(kernel, EXPECT[(probe.name, probe.state)], rec)
    reports = [f"[offline, bundle] {r}" for r in _offline(vm_lab, kernel, probe.state)]
    reports += [f"[live, in the VM] {r}" for r in _live(vm_lab, kernel, rec, probe.state)]
    assert not reports, "\n\n".join(reports)


# ---------------------------------------------------------------------------------------------
# Shares: many connections to one virtual service


def _why_offline(vm_lab: VmLab, client: str, svc: ipvs_vm.Service) -> dict[str, float]:
    flow = ipvs_vm.Probe("share", "base", client, svc.vip, svc.port, svc.proto).flow()
    answer = netns.run_kptrace(vm_lab.bundle("base"), flow, node_ips=())
    shares: dict[str, float] = {}
    for b in answer.branches:
        if b.get("dnat"):
            shares[b["dnat"]] = shares.get(b["dnat"], 0.0) + float(b.get("probability") or 0)
    return shares


@pytest.mark.parametrize("share", SHARES, ids=lambda s: f"{s[0]}-{s[1]}")
def test_scheduler_shares(vm_lab: VmLab, share: tuple[str, str, str, int]) -> None:
    kind, client, svc_name, count = share
    svc = SERVICE[svc_name]
    rec = next(r for r in vm_lab.doc["shares"] if r["client"] == client and r["service"] == svc_name)
    answered = rec["answered"]
    assert None not in answered and len(answered) == count, f"lab: some connections got no answer: {rec}"
    assert answered == rec["ipvsadm"], f"lab: the endpoint that answered is not ipvsadm -Lnc's: {rec}"
    seen = Counter(answered)
    predicted = _why_offline(vm_lab, client, svc)
    assert set(seen) <= set(predicted), f"kernel used {sorted(seen)}, kptrace's endpoints {sorted(predicted)}"
    if kind in ("rr", "wrr"):
        # rr and wrr take turns: over a multiple of the cycle every server's share is exact.
        got = {ep: n / count for ep, n in seen.items()}
        assert got == pytest.approx(predicted), f"{kind}: kernel {dict(seen)} of {count}, kptrace {predicted}"
    else:
        # sh hashes the client address: one client always lands on the same real server.
        assert len(seen) == 1, f"sh: one client went to {dict(seen)}"


# ---------------------------------------------------------------------------------------------
# KPT301-305: FAIL on a broken state that breaks the packet in the VM, PASS once fixed


def _check(bundle: Path) -> dict[str, dict[str, Any]]:
    """`kptrace check` on a bundle: per check ID its worst outcome (FAIL before WARN before the rest)."""
    proc = subprocess.run([sys.executable, "-m", "kptrace", "check", "--dump", str(bundle), "-o", "json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode in (0, 1, 4), proc.stderr[-3000:]  # 4: some check FAILed (docs/exit-codes.md)
    rank = {"FAIL": 0, "WARN": 1, "CANNOT_TELL": 2, "INFO": 3, "PASS": 4}
    out: dict[str, dict[str, Any]] = {}
    for r in json.loads(proc.stdout)["results"]:
        held = out.get(r["id"])
        if held is None or rank.get(r["status"], 5) < rank.get(held["status"], 5):
            out[r["id"]] = r
    return out


# (check, its broken probe in its state, the same packet on the fixed node, what the FAIL must name)
CHECK_CASES = (
    ("KPT301", ("KPT301: no ip_vs", "kpt301-broken"), ("pod->ClusterIP", "base"), "ip_vs"),
    ("KPT302", ("KPT302: VIP not on kube-ipvs0", "broken"), ("pod->ClusterIP", "base"), SERVICE["web"].vip),
    ("KPT303", ("KPT303: no KUBE-CLUSTER-IP entry", "broken"), ("pod->ClusterIP sh", "base"), SERVICE["hashed"].vip),
    ("KPT304", ("KPT304: every real server weight 0", "broken"), ("quiesced service", "base"),
     SERVICE["quiesced"].vip),
    ("KPT305", ("KPT305: node address on kube-ipvs0", "broken"), ("outside->node port 10250", "base"),
     netns.NODE_IP),
)


@pytest.mark.parametrize("case", CHECK_CASES, ids=lambda c: c[0])
def test_ipvs_check_on_broken_state(vm_lab: VmLab, case: tuple[str, tuple[str, str], tuple[str, str], str]) -> None:
    check_id, (probe_name, state), (fixed_name, fixed_state), names = case
    broken = vm_lab.probes(probe_name, state)[0]
    fixed = vm_lab.probes(fixed_name, fixed_state)[0]
    kb, kf = kernel_from_json(broken["kernel"]), kernel_from_json(fixed["kernel"])
    assert kb.client_result not in ("connected", "reply"), f"lab: the broken state did not break it\n{kb.describe()}"
    assert kf.client_result in ("connected", "reply"), f"lab: the fixed state did not fix it\n{kf.describe()}"
    got_broken = _check(vm_lab.bundle(state))[check_id]
    got_fixed = _check(vm_lab.bundle(fixed_state))[check_id]
    assert got_broken["status"] == "FAIL" and names in got_broken["message"], f"{check_id} on {state}: {got_broken}"
    # Fixed: no FAIL (KPT304 stays INFO about the deliberately empty Service, a different VIP).
    assert got_fixed["status"] == "PASS" or (got_fixed["status"] == "INFO" and names not in got_fixed["message"]), \
        f"{check_id} on {fixed_state}: {got_fixed}"


def test_no_check_fails_on_a_healthy_ipvs_node(vm_lab: VmLab) -> None:
    """KPT403 on tunl0 (the ipip fallback device every namespace gets), KPT201 and the rest: the base node is sound."""
    results = _check(vm_lab.bundle("base"))
    failing = {i: r["message"] for i, r in results.items() if r["status"] == "FAIL"}
    # The deliberate faults: a Service without endpoints (its probe is refused: "no real server"), and
    # hairpin mode off (the kernel loses the hairpin probe's reply): checks may rightly name them.
    assert SERVICE["empty"].vip in failing.pop("KPT204", SERVICE["empty"].vip), results.get("KPT204")
    assert "hairpin" in failing.pop("KPT404", "hairpin"), results.get("KPT404")
    assert not failing, failing
    assert results["KPT403"]["status"] in ("PASS", "INFO"), results["KPT403"]


def test_kpt201_forward_drop_message_matches_the_kernel(vm_lab: VmLab) -> None:
    """On FORWARD DROP, kube-proxy's KUBE-FORWARD mark rule still accepts ClusterIP traffic to remote endpoints:
    the kernel delivered it, so KPT201 must not say it is dropped."""
    remote = kernel_from_json(vm_lab.probes("pod->ClusterIP, remote endpoint", "forward-drop")[0]["kernel"])
    assert remote.delivery is not None and remote.delivery.ns_role == "rpod", f"lab: not delivered\n{remote.describe()}"
    pod_to_pod = vm_lab.probes("pod->remote pod", "forward-drop")[0]
    assert kernel_from_json(pod_to_pod["kernel"]).verdict == "DROP", "lab: pod-to-pod across nodes was not dropped"
    got = _check(vm_lab.bundle("forward-drop")).get("KPT201")
    assert got is not None and got["status"] == "FAIL", got
    assert "pod-to-pod connections across nodes" in got["message"], got
    assert "ClusterIP connections to endpoints on other nodes are dropped" not in got["message"], got


# ---------------------------------------------------------------------------------------------
# Links this machine's kernel lacks


def test_links_read_from_the_vm(vm_lab: VmLab) -> None:
    from kptrace.load import load_node

    node = load_node([vm_lab.bundle("hairpin")])
    kinds = {link.name: link.kind for link in node.links}
    assert kinds.get("kube-ipvs0") == "dummy", kinds
    assert kinds.get("eth0.100") == "vlan", kinds
    assert kinds.get("tunl0") == "ipip", kinds
    assert kinds.get("vxlan.calico") == "vxlan", kinds
