from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, service_vips
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity

FULL = 0.9  # past this share new connections start to be dropped under bursts ("nf_conntrack: table full")
MAX_CITED = 5


@check(id="KPT105", name="conntrack-table-full", severity=Severity.HIGH, needs=("conntrack",),
       remediation="sysctl -w net.netfilter.nf_conntrack_max=<2-4x the current count> (kube-proxy sets it from "
                   "--conntrack-max-per-core); make it permanent in /etc/sysctl.d/99-kubernetes.conf. Delete stale UDP "
                   "entries of a Service with `conntrack -D -p udp --orig-dst <VIP>`.")
def conntrack_full(ctx: CheckContext) -> Iterator[Outcome]:
    """The conntrack table is (nearly) full, or stale UNREPLIED UDP entries pin a Service VIP to no endpoint."""
    node = ctx.node
    assert node is not None
    count, limit = node.sysctls.get("net.netfilter.nf_conntrack_count"), node.sysctls.get("net.netfilter.nf_conntrack_max")
    stale = []
    if node.conntrack is not None:
        vips = {vip for rs in node.rulesets.values() for vip, _, _ in service_vips(ctx, rs)}
        # An entry made before the Service had endpoints was never DNATed: its reply comes from the VIP
        # itself. Until it times out, every packet of that flow (DNS retries from one source port) goes nowhere.
        stale = [e for e in node.conntrack if e.proto == "udp" and "UNREPLIED" in e.flags and e.reply is not None
                 and e.original.dst in vips and e.reply.src == e.original.dst]
    if stale:
        shown = ", ".join(f"{e.original.src} → {e.original.dst}:{e.original.dport}" for e in stale[:MAX_CITED])
        one = len(stale) == 1
        yield fail(f"{len(stale)} UNREPLIED UDP conntrack entr{'y' if one else 'ies'} to a Service VIP "
                   f"that {'was' if one else 'were'} never DNATed ({shown}{', …' if len(stale) > MAX_CITED else ''}): those flows keep "
                   f"going to no endpoint until the entries expire", *(e.source for e in stale[:MAX_CITED]))
    if count is None or limit is None or not count.value.isdigit() or not limit.value.isdigit() or int(limit.value) == 0:
        yield missing("sysctl.txt", why="net.netfilter.nf_conntrack_count and nf_conntrack_max are not both in it")
        return
    used = int(count.value) / int(limit.value)
    text = f"conntrack table {count.value}/{limit.value} ({used:.0%})"
    if used >= FULL:
        yield fail(f"{text}: new connections (Service traffic included) are dropped when it is full "
                   f"(kernel log \"nf_conntrack: table full, dropping packet\")", count.source, limit.source)
    elif not stale:
        note = "" if node.conntrack is not None else "; stale UDP entries not checked (no conntrack.txt)"
        yield passed(f"{text}{note}", count.source, limit.source)
