from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import (
    CheckContext,
    evidence_gaps_of,
    dnat_targets,
    local_pod_subnets,
    pod_bridges,
)
from kptrace.checks.registry import Outcome, check, fail, missing, passed, warn
from kptrace.model.finding import Severity
from kptrace.model.flow import IPAddress


@check(id="KPT404", name="hairpin-off", severity=Severity.MEDIUM, needs=("bridge_ports|links",),
       remediation="Turn hairpin on for the port (bridge link set dev <veth> hairpin on, or "
                   "echo 1 > /sys/class/net/<veth>/brport/hairpin_mode); for new pods set the kubelet's "
                   "--hairpin-mode=hairpin-veth (hairpinMode in /var/lib/kubelet/config.yaml) or \"hairpinMode\": "
                   "true in the CNI bridge config (/etc/cni/net.d/).")
def hairpin(ctx: CheckContext) -> Iterator[Outcome]:
    """A pod bridge port has hairpin mode off while its pod is a Service endpoint: the pod cannot reach itself via the Service."""
    node = ctx.node
    assert node is not None
    bridges = pod_bridges(node)
    # Without addresses the pod bridge is the CNI's usual one; a /sys brport value may not name its bridge.
    masters = set(bridges) if bridges else {"cni0", "cbr0", ""}
    ports = [p for p in node.bridge_ports if p.master in masters]
    if not ports or all(p.hairpin is None for p in ports):
        # `cat /sys/…/brif/*/hairpin_mode` prints the values without the ports' names.
        values = [v for v in node.sys_values or [] if v.path.endswith("/hairpin_mode")]
        if values and all(v.value.strip() == "0" for v in values):
            yield warn(f"hairpin_mode is 0 on all {len(values)} bridge port(s) read ({values[0].path}): a pod that is "
                       f"a Service endpoint cannot reach itself through the Service (the kubelet's --hairpin-mode "
                       f"decides this for new pods)", *(v.source for v in values[:4]))
            return
        yield missing("bridge-link.txt", why="hairpin is shown by `bridge -d link show` or `ip -d link show`")
        return
    subnets = local_pod_subnets(node)
    endpoints: dict[IPAddress, str] = {}
    for ip, r in dnat_targets(ctx).items():
        if any(ip.version == n.version and ip in n for n in subnets):
            endpoints.setdefault(ip, r.comment() or r.chain)
    off = {p.name: p for p in ports if p.hairpin is False}
    if off and not endpoints and "rules" in evidence_gaps_of(node):
        # Which pods are endpoints is in kube-proxy's rules, which the input does not show whole: the whole rules
        # settle it (FAIL or PASS), so this is a CANNOT_TELL that says what the input does show.
        yield missing("iptables-save.txt", why=f"hairpin is off on {len(off)} of {len(ports)} pod bridge port(s) "
                      f"({', '.join(sorted(off)[:4])}{', …' if len(off) > 4 else ''}); whether a Service endpoint sits "
                      f"behind one of them is in kube-proxy's rules, which the input does not show whole")
        return
    if not off or not endpoints:
        yield passed(f"hairpin is on for all {len(ports)} pod ports" if not off else
                     f"hairpin is off on {', '.join(sorted(off))}, but no Service endpoint runs on this node")
        return
    if not node.neighbors or not node.fdb:
        yield missing(*[f for f, have in (("ip-neigh.txt", node.neighbors), ("bridge-fdb.txt", node.fdb)) if not have],
                      why="to tell which bridge port holds which endpoint")
        return
    found = False
    for ip, svc in sorted(endpoints.items(), key=lambda kv: (kv[0].version, kv[0])):
        # endpoint IP -> MAC (neighbour on the bridge) -> port (fdb entry learned on that port)
        n = next((n for n in node.neighbors if n.dst == ip and n.dev in bridges and n.lladdr), None)
        f = next((f for f in node.fdb if n and n.lladdr and f.mac.lower() == n.lladdr.lower()
                  and f.master in bridges and f.dev in off), None) if n else None
        if n is not None and f is not None:
            found = True
            yield fail(f"{ip} ({svc}) sits on {f.dev}, whose hairpin mode is off: when that pod connects to its own "
                       f"Service and is picked as the endpoint, the bridge will not send the packet back out the port "
                       f"it came in on, so the connection times out", off[f.dev].source, n.source, f.source,
                       fix=(f"ip link set {f.dev} type bridge_slave hairpin on",))
    if not found:
        yield passed(f"hairpin is off on {', '.join(sorted(off))}, but no Service endpoint sits on those ports")
