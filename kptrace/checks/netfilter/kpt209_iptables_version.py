from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, rule_texts
from kptrace.checks.registry import Outcome, check, fail, missing, passed, warn
from kptrace.model.finding import Location, Severity

UNSUPPORTED = "[unsupported revision]"
MARKED_DROP = "kubernetes firewall for dropping marked packets"
GARBLED = "--to-destination  --"  # `-j DNAT --to-destination  --random --to-destination 0.0.0.0:0`


@check(id="KPT209", name="iptables-version-mismatch", severity=Severity.HIGH, needs=("rules",),
       remediation="Run one iptables version on the node and in the containers that write rules: upgrade kube-proxy "
                   "and the CNI to images whose iptables is at least the host's (kubernetes issue 112477: host 1.8.8, "
                   "kube-proxy 1.8.7), or install the host's matching version; then restart them so the rules are "
                   "rewritten.")
def iptables_version(ctx: CheckContext) -> Iterator[Outcome]:
    """Rule text shows iptables versions disagree: `[unsupported revision]`, or KUBE-FIREWALL's DROP without its mark."""
    texts = rule_texts(ctx)
    if not texts:
        yield missing("iptables-save.txt")
        return
    found = False
    for t in texts:
        if UNSUPPORTED not in t.text and MARKED_DROP not in t.text and GARBLED not in t.text:
            continue  # the common case: skip the line loop over a large dump
        for n, line in enumerate(t.text.splitlines(), start=1):
            src = t.source(n, line)
            if UNSUPPORTED in line:
                found = True
                yield fail(f"`{line.strip()}`: the iptables that saved this rule cannot read a match or target "
                           f"revision the writer used, so what it shows (and rewrites) is not what the kernel runs",
                           Location(src.file, src.line, (line.index(UNSUPPORTED) + 1) if t.sources is None else None))
            elif GARBLED in line:
                found = True
                yield fail(f"`{line.strip()}`: a DNAT target printed without its address (an iptables older than the "
                           f"one that wrote the rule), so the rule shown is not the rule the kernel runs", src)
            elif line.startswith("-A KUBE-FIREWALL") and MARKED_DROP in line and "-j DROP" in line and "--mark" not in line:
                # kubelet writes `-m mark --mark 0x8000/0x8000 -j DROP`; an older iptables reading a newer one's
                # nft rule loses the mark match and rewrites it as an unconditional DROP (kubernetes #112477).
                found = True
                yield fail(f"`{line.strip()}` has lost its `-m mark --mark 0x8000/0x8000` match: every packet through "
                           f"KUBE-FIREWALL is dropped (two iptables versions rewrote each other's rules)", src)
    versions = ctx.node.iptables_versions or {}
    if versions.get("mismatch") is True and versions.get("used") != "host":
        # kptrace collect saw two versions and could not run the host's own (manifest.json: iptables_versions).
        found = True
        yield warn(f"manifest.json: the rules were read with the iptables beside kptrace "
                   f"({str(versions.get('container'))[:80]}), the host's is {str(versions.get('host'))[:80]}: rules one of "
                   f"them cannot represent may be printed wrongly; collect with the host's root mounted (--host-root) "
                   f"to read them with the host's own", Location(_manifest_label(ctx), 1))
    if not found:
        yield passed(f"no unreadable rule revisions in {', '.join(t.label for t in texts)}")


def _manifest_label(ctx: CheckContext) -> str:
    return next((i.file for i in ctx.node.inputs if i.kind == "manifest"), "manifest.json")
