from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext, dumped, iptables_rulesets
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.model.source import Source

FIREWALLS = {
    "firewalld": "it rewrites netfilter on every reload and rejects what its zones do not allow",
    "ufw": "its default policy drops forwarded traffic and it reloads its rules over kube-proxy's",
}


# Chains each firewall writes into the filter table (firewalld's iptables backend, ufw): seeing them
# means the firewall manages netfilter on this node, whatever the service list says.
FIREWALL_CHAINS = {
    "firewalld": ("INPUT_ZONES", "FORWARD_IN_ZONES", "FORWARD_OUT_ZONES", "INPUT_direct", "FORWARD_direct",
                  "IN_public", "FWDI_public", "FWDO_public"),
    "ufw": ("ufw-before-input", "ufw-before-forward", "ufw-user-input", "ufw-user-forward"),
}


def firewall_in_rules(ctx: CheckContext) -> list[tuple[str, Source]]:
    """(firewall, the first rule or chain that shows it) for each host firewall whose chains the rules hold."""
    found: list[tuple[str, Source]] = []
    for fw, names in FIREWALL_CHAINS.items():
        for rs in iptables_rulesets(ctx.node):
            filt = rs.tables.get("filter")
            if filt is None:
                continue
            hit = next((c.source for n in names if (c := filt.chains.get(n)) is not None), None)
            if hit is None:
                hit = next((r.source for c in ("INPUT", "FORWARD") for r in dumped(filt.chains.get(c))
                            if r.target is not None and r.target.name in names), None)
            if hit is not None:
                found.append((fw, hit))
                break
    return found


@check(id="KPT501", name="host-firewall-running", severity=Severity.MEDIUM, needs=("services",),
       remediation="systemctl disable --now firewalld (or ufw), or keep it and allow the pod and Service networks "
                   "and the node ports (firewalld: firewall-cmd --permanent --zone=trusted --add-source=<pod CIDR>; "
                   "ufw: DEFAULT_FORWARD_POLICY=\"ACCEPT\" in /etc/default/ufw).")
def host_firewall(ctx: CheckContext) -> Iterator[Outcome]:
    """firewalld or ufw is running: a host firewall manages netfilter beside kube-proxy and the CNI."""
    in_rules = firewall_in_rules(ctx)
    for fw, src in in_rules:
        yield fail(f"{fw}'s chains are in the filter table ({src}): {fw} manages netfilter on this node and "
                   f"{FIREWALLS[fw]}", src)
    if ctx.node.services is None:
        if not in_rules:
            yield missing("services.txt")
        return
    if in_rules:
        return
    running = [u for u in ctx.node.services if u.name in FIREWALLS and u.active == "active"]
    for u in running:
        yield fail(f"{u.name}.service is {u.active} ({u.sub}): {FIREWALLS[u.name]}", u.source)
    if not running:
        yield passed(f"neither firewalld nor ufw is active ({len(ctx.node.services)} services listed)")
