from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.registry import Outcome, check, passed
from kptrace.model.finding import Severity, Status

# How to collect each file (docs/bundle.md, "Collecting").
COLLECT = {
    "iptables-save.txt": "iptables-save > iptables-save.txt",
    "ip6tables-save.txt": "ip6tables-save > ip6tables-save.txt",
    "iptables-nft-save.txt": "iptables-nft-save > iptables-nft-save.txt",
    "iptables-legacy-save.txt": "iptables-legacy-save > iptables-legacy-save.txt",
    "ip-addr.txt": "ip addr show > ip-addr.txt",
    "ip-link.txt": "ip -d link show > ip-link.txt",
    "ip-route.txt": "ip route show table all > ip-route.txt",
    "ip-neigh.txt": "ip neigh show > ip-neigh.txt",
    "bridge-fdb.txt": "bridge fdb show > bridge-fdb.txt",
    "bridge-link.txt": "bridge -d link show > bridge-link.txt",
    "sysctl.txt": "sysctl -a 2>/dev/null | grep -E '^net\\.' > sysctl.txt",
    "modules.txt": "cat /proc/modules > modules.txt",
    "flannel-subnet.env": "cp /run/flannel/subnet.env flannel-subnet.env",
    "conntrack.txt": "conntrack -L > conntrack.txt",
    "services.txt": "systemctl list-units --type=service --all --no-pager > services.txt",
    "node.yaml": "write node.yaml (name, node_ips, pod_cidr, cluster_cidr; docs/bundle.md)",
    "resolv.conf": "cat /etc/resolv.conf > resolv.conf",
    "systemd-resolved-resolv.conf": "cat /run/systemd/resolve/resolv.conf > systemd-resolved-resolv.conf",
    "kubelet-config.yaml": "cat /var/lib/kubelet/config.yaml > kubelet-config.yaml",
    "kubelet-cmdline.txt": "tr '\\0' '\\n' < /proc/$(pidof kubelet)/cmdline > kubelet-cmdline.txt",
}


@check(id="KPT002", name="input-missing", severity=Severity.MEDIUM, late=True,
       remediation="Collect the missing output on the node with the command shown (docs/bundle.md, \"Collecting\") "
                   "and add it to the bundle.")
def input_missing(ctx: CheckContext) -> Iterator[Outcome]:
    """Some checks cannot tell without an output the input lacks: how to collect each one."""
    for file, ids in sorted(ctx.missing_inputs.items()):
        base = file.split(" (", 1)[0]
        why = ctx.node.not_collected.get(base)
        how = f"it was not collected ({why})" if why else f"collect it with `{COLLECT.get(base, base)}`"
        yield Outcome(Status.INFO, f"{base}: {how}; {', '.join(sorted(set(ids)))} cannot tell without it")
    if not ctx.missing_inputs:
        yield passed("every output the checks read is in the input")
