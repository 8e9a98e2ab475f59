from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.walkers.conntrack import stale_service_entries

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
    # An entry made before the Service had endpoints (or before kube-proxy's rules) was never DNATed. Until it
    # times out, every packet of that flow (DNS retries from one source port) goes nowhere: the same finding
    # `kptrace why --sport` shows on the packet itself (walkers/conntrack.py).
    stale = stale_service_entries(node, tuple(net for net, _ in node.service_cidrs)) if node.conntrack else []
    if stale:
        shown = "; ".join(f"{s.entry.original.src} → {s.entry.original.dst}:{s.entry.original.dport} ({s.service})"
                          for s in stale[:MAX_CITED])
        one = len(stale) == 1
        yield fail(f"{len(stale)} UDP conntrack entr{'y' if one else 'ies'} to a Service address never translated "
                   f"({shown}{', …' if len(stale) > MAX_CITED else ''}): those flows keep going to no endpoint until "
                   f"the entries expire; clear {'it' if one else 'them'} with "
                   + "; ".join(f"`{s.command}`" for s in stale[:MAX_CITED]),
                   *(s.entry.source for s in stale[:MAX_CITED]))
    full = [m for m in node.kernel_log or [] if m.kind == "conntrack-full"]
    if full:
        # The kernel said so itself: "nf_conntrack: table full, dropping packet".
        when = f" ({full[0].time} … {full[-1].time})" if full[0].time and full[-1].time else ""
        yield fail(f"the kernel log says the conntrack table was full and it dropped packets {len(full)} time(s){when}: "
                   f"new connections (Service traffic included) are dropped while it is", *(m.source for m in full[:3]))
        if count is None or limit is None:
            return
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
