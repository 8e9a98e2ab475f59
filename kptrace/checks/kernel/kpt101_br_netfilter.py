from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.inputs import CheckContext
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.model.node import Node


def bridge_nf(node: Node, key: str, tool: str) -> Iterator[Outcome]:
    """Shared by KPT101 (iptables) and KPT102 (ip6tables)."""
    s = node.sysctls.get(key)
    if s is not None:
        if s.value.strip() == "1":
            yield passed(f"{key} = 1: bridged pod traffic goes through {tool}", s.source)
        else:
            yield fail(f"{key} = {s.value}: packets between pods on the same bridge skip {tool}, so a reply from a "
                       f"Service endpoint on this node's bridge is not un-DNATed and the client drops it "
                       f"(pods on one bridge cannot reach each other through a ClusterIP)", s.source)
        return
    loaded = None if node.modules is None else any(m.name == "br_netfilter" for m in node.modules)
    if loaded is False:
        yield fail(f"br_netfilter is not loaded (not in modules.txt), so {key} does not exist and bridged pod "
                   f"traffic skips {tool}: pods on one bridge cannot reach each other through a ClusterIP")
    elif not node.sysctls:
        yield missing("sysctl.txt")
    elif loaded is None and not any(k.startswith("net.bridge.") for k in node.sysctls):
        # net.bridge.* exists only while br_netfilter is loaded; the bundle's sysctl list always asks for it.
        yield fail(f"no net.bridge.* key in sysctl.txt: br_netfilter is not loaded (the keys exist only while it "
                   f"is), so bridged pod traffic skips {tool}")
    else:
        yield missing("sysctl.txt", why=f"{key} is not in it")


@check(id="KPT101", name="br-netfilter-missing", severity=Severity.HIGH,
       remediation="modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1; make it permanent in "
                   "/etc/modules-load.d/br_netfilter.conf (br_netfilter) and /etc/sysctl.d/99-kubernetes.conf "
                   "(net.bridge.bridge-nf-call-iptables = 1).")
def br_netfilter(ctx: CheckContext) -> Iterator[Outcome]:
    """br_netfilter is not loaded or net.bridge.bridge-nf-call-iptables is not 1: bridged pod traffic skips iptables."""
    assert ctx.node is not None
    yield from bridge_nf(ctx.node, "net.bridge.bridge-nf-call-iptables", "iptables")
