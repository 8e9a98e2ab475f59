from __future__ import annotations

from collections.abc import Iterator

from kptrace import __version__
from kptrace.checks.inputs import CheckContext
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
}


@check(id="KPT002", name="input-missing", severity=Severity.MEDIUM, needs_node=False, late=True,
       remediation="Collect the missing file on the node with the command shown (docs/bundle.md, \"Collecting\") "
                   "and add it to the bundle.")
def input_missing(ctx: CheckContext) -> Iterator[Outcome]:
    """A file some checks need is not in the bundle, so those checks could only WARN."""
    for file, ids in sorted(ctx.missing_inputs.items()):
        if ctx.unread(file):
            why = f"{file} is in the bundle, but kptrace {__version__} does not read it yet"
        elif file in ctx.extra.present:
            why = f"{file} is in the bundle but lacks what they need (see their messages)"
        else:
            why = f"{file} is not in the bundle; collect it with `{COLLECT.get(file, file)}`"
        yield Outcome(Status.WARN, f"{why}: {', '.join(sorted(set(ids)))} could not run")
    if not ctx.missing_inputs:
        yield passed("every file the checks read is in the bundle")
