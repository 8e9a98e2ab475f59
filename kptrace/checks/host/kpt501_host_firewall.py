from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.inputs import CheckContext
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity

FIREWALLS = {
    "firewalld": "it rewrites netfilter on every reload and rejects what its zones do not allow",
    "ufw": "its default policy drops forwarded traffic and it reloads its rules over kube-proxy's",
}


@check(id="KPT501", name="host-firewall-running", severity=Severity.MEDIUM, needs_node=False,
       remediation="systemctl disable --now firewalld (or ufw), or keep it and allow the pod and Service networks "
                   "and the node ports (firewalld: firewall-cmd --permanent --zone=trusted --add-source=<pod CIDR>; "
                   "ufw: DEFAULT_FORWARD_POLICY=\"ACCEPT\" in /etc/default/ufw).")
def host_firewall(ctx: CheckContext) -> Iterator[Outcome]:
    """firewalld or ufw is running: a host firewall manages netfilter beside kube-proxy and the CNI."""
    if ctx.extra.services is None:
        yield missing("services.txt")
        return
    running = [u for u in ctx.extra.services if u.name in FIREWALLS and u.active == "active"]
    for u in running:
        yield fail(f"{u.name}.service is {u.active} ({u.sub}): {FIREWALLS[u.name]}", u.source)
    if not running:
        yield passed(f"neither firewalld nor ufw is active ({len(ctx.extra.services)} services listed)")
