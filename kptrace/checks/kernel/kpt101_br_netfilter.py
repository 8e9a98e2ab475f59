from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.model.kernel_facts import br_netfilter as bridge_fact
from kptrace.model.node import Node


def bridge_nf(node: Node, key: str, tool: str) -> Iterator[Outcome]:
    """Shared by KPT101 (iptables) and KPT102 (ip6tables): the same fact the walk uses (model/kernel_facts.py)."""
    on, cite, how = bridge_fact(node, 4 if tool == "iptables" else 6)
    s = node.sysctls.get(key)
    if on is True and s is not None:
        yield passed(f"{key} = 1: bridged pod traffic goes through {tool}", s.source)
    elif on is False and s is not None:
        yield fail(f"{key} = {s.value}: packets between pods on the same bridge skip {tool}, so a reply from a "
                   f"Service endpoint on this node's bridge is not un-DNATed and the client drops it "
                   f"(pods on one bridge cannot reach each other through a ClusterIP)", s.source,
                   fix=(f"sysctl -w {key}=1",))
    elif on is False:
        yield fail(f"{how}: {key} does not exist and bridged pod traffic skips {tool}; pods on one bridge cannot "
                   f"reach each other through a ClusterIP", fix=("modprobe br_netfilter",))
    elif not node.sysctls and node.modules is None:
        yield missing("sysctl.txt")
    else:
        yield missing("sysctl.txt", why=how)


@check(id="KPT101", name="br-netfilter-missing", severity=Severity.HIGH,
       remediation="modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1; make it permanent in "
                   "/etc/modules-load.d/br_netfilter.conf (br_netfilter) and /etc/sysctl.d/99-kubernetes.conf "
                   "(net.bridge.bridge-nf-call-iptables = 1).")
def br_netfilter(ctx: CheckContext) -> Iterator[Outcome]:
    """br_netfilter is not loaded or net.bridge.bridge-nf-call-iptables is not 1: bridged pod traffic skips iptables."""
    yield from bridge_nf(ctx.node, "net.bridge.bridge-nf-call-iptables", "iptables")
