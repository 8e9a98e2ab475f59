from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import (
    CheckContext,
    conf_key,
    dual_stack,
    node_ifaces,
    overlays,
    pod_bridges,
)
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity


def _fix(keys: list[str]) -> tuple[str, ...]:
    """Writing ip_forward turns forwarding on for every interface; other keys one by one."""
    out = ["sysctl -w net.ipv4.ip_forward=1"] if {"net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"} & set(keys) \
        else [f"sysctl -w {k}=1" for k in keys if k.startswith("net.ipv4.")]
    return tuple(out + [f"sysctl -w {k}=1" for k in keys if k.startswith("net.ipv6.")])


@check(id="KPT103", name="ip-forward-off", severity=Severity.HIGH,
       remediation="sysctl -w net.ipv4.ip_forward=1 (and net.ipv4.conf.<if>.forwarding=1 for each interface "
                   "shown); make it permanent in /etc/sysctl.d/99-kubernetes.conf (net.ipv4.ip_forward = 1).")
def ip_forward(ctx: CheckContext) -> Iterator[Outcome]:
    """The node does not forward packets: net.ipv4.ip_forward, conf.all.forwarding or the pod bridge's forwarding is 0."""
    node = ctx.node
    assert node is not None
    if not node.sysctls:
        yield missing("sysctl.txt")
        return
    # The kernel checks the forwarding flag of the interface a packet arrives on (ip_route_input_slow),
    # so every interface pod or Service traffic comes in by must have it.
    ifaces = sorted(set(pod_bridges(node) + overlays(node) + node_ifaces(node)))
    keys = ["net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"] + [conf_key(4, i, "forwarding") for i in ifaces]
    if dual_stack(node):
        keys.append("net.ipv6.conf.all.forwarding")
    found = [(k, node.sysctls[k]) for k in keys if k in node.sysctls]
    off = [(k, s) for k, s in found if s.value.strip() == "0"]
    if off:
        yield fail(", ".join(f"{k} = 0" for k, _ in off) + ": packets for pods on other nodes, for Service endpoints "
                   "elsewhere and for NodePorts are dropped instead of forwarded", *(s.source for _, s in off),
                   fix=_fix([k for k, _ in off]))
    elif not any(k in node.sysctls for k in keys[:2]):
        yield missing("sysctl.txt", why="net.ipv4.ip_forward is not in it")
    else:
        yield passed(", ".join(f"{k} = {s.value}" for k, s in found), *(s.source for _, s in found))
