from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, dual_stack
from kptrace.checks.kernel.kpt101_br_netfilter import bridge_nf
from kptrace.checks.registry import Outcome, check, passed
from kptrace.model.finding import Severity


@check(id="KPT102", name="br-netfilter-ipv6-missing", severity=Severity.HIGH,
       remediation="modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-ip6tables=1; make it permanent in "
                   "/etc/modules-load.d/br_netfilter.conf and /etc/sysctl.d/99-kubernetes.conf "
                   "(net.bridge.bridge-nf-call-ip6tables = 1).")
def br_netfilter_ipv6(ctx: CheckContext) -> Iterator[Outcome]:
    """On a dual-stack node, net.bridge.bridge-nf-call-ip6tables is not 1: bridged IPv6 pod traffic skips ip6tables."""
    assert ctx.node is not None
    if not dual_stack(ctx.node):
        yield passed("not dual-stack (no IPv6 pod CIDR and no IPv6 KUBE-SVC chains): IPv6 Services are not used")
        return
    yield from bridge_nf(ctx.node, "net.bridge.bridge-nf-call-ip6tables", "ip6tables")
