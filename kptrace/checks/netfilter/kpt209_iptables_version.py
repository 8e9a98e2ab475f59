from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.inputs import CheckContext
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Location, Severity

UNSUPPORTED = "[unsupported revision]"
MARKED_DROP = "kubernetes firewall for dropping marked packets"


@check(id="KPT209", name="iptables-version-mismatch", severity=Severity.HIGH, needs_node=False,
       remediation="Run one iptables version on the node and in the containers that write rules: upgrade kube-proxy "
                   "and the CNI to images whose iptables is at least the host's (kubernetes issue 112477: host 1.8.8, "
                   "kube-proxy 1.8.7), or install the host's matching version; then restart them so the rules are "
                   "rewritten.")
def iptables_version(ctx: CheckContext) -> Iterator[Outcome]:
    """Rule text shows iptables versions disagree: `[unsupported revision]`, or KUBE-FIREWALL's DROP without its mark."""
    if not ctx.extra.iptables_text:
        yield missing("iptables-save.txt")
        return
    found = False
    for label, text in ctx.extra.iptables_text.items():
        if UNSUPPORTED not in text and MARKED_DROP not in text:
            continue  # the common case: skip the line loop over a large dump
        for n, line in enumerate(text.splitlines(), start=1):
            if UNSUPPORTED in line:
                found = True
                yield fail(f"`{line.strip()}`: the iptables that saved this rule cannot read a match or target "
                           f"revision the writer used, so what it shows (and rewrites) is not what the kernel runs",
                           Location(label, n, line.index(UNSUPPORTED) + 1))
            elif line.startswith("-A KUBE-FIREWALL") and MARKED_DROP in line and "-j DROP" in line and "--mark" not in line:
                # kubelet writes `-m mark --mark 0x8000/0x8000 -j DROP`; an older iptables reading a newer one's
                # nft rule loses the mark match and rewrites it as an unconditional DROP (kubernetes #112477).
                found = True
                yield fail(f"`{line.strip()}` has lost its `-m mark --mark 0x8000/0x8000` match: every packet through "
                           f"KUBE-FIREWALL is dropped (two iptables versions rewrote each other's rules)",
                           Location(label, n))
    if not found:
        yield passed(f"no unreadable rule revisions in {', '.join(ctx.extra.iptables_text)}")
