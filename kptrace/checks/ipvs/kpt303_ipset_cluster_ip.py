from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.ipvs.facts import (
    CLUSTER_IP,
    EXTERNAL_SETS,
    IPVS_IPS,
    ServiceKey,
    capped,
    ip_entries,
    ip_port_entries,
    ipvs_filter_reject,
    ipvs_gate,
    own_addresses,
    service_key,
    set_name,
    show,
    vip_addresses,
)
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.model.flow import IPAddress
from kptrace.model.ipvs import IpvsService


@check(id="KPT303", name="ipset-cluster-ip-mismatch", severity=Severity.MEDIUM, needs=("ipsets", "ipvs"),
       remediation="Restart kube-proxy on this node (kubectl -n kube-system delete pod -l k8s-app=kube-proxy "
                   "--field-selector spec.nodeName=<node>) and read its log for ipset errors (\"Failed to add entry\"); "
                   "compare `ipset list KUBE-CLUSTER-IP` with `ipvsadm -Ln` again. "
                   "Nothing is made permanent by hand: kube-proxy rewrites the set and the services on every sync.")
def ipset_cluster_ip(ctx: CheckContext) -> Iterator[Outcome]:
    """ipset KUBE-CLUSTER-IP and the IPVS virtual services disagree: an entry without a service, or a service without one."""
    node = ctx.node
    assert node is not None
    sets = node.ipsets
    _, stop = ipvs_gate(ctx, {"ipvsadm.txt": node.ipvs is not None, "ipset-save.txt": sets is not None})
    if stop is not None:
        yield stop
        return
    assert sets is not None
    if any(not s.members_listed for s in sets.values()):
        yield missing("ipset-save.txt", why="the ipset listing has no members (`ipset list -t`): collect `ipset save`")
        return
    # Service addresses: kube-ipvs0's, or (no ip-addr.txt) KUBE-IPVS-IPS, which kube-proxy fills with them.
    vips: set[IPAddress] = {a.address.ip for a in vip_addresses(node)}
    if not node.addresses:
        vips = {ip for fam in (4, 6) for ip in ip_entries(sets.get(set_name(IPVS_IPS, fam)))}
        if not vips:
            yield missing("ip-addr.txt", why="it tells ClusterIP virtual services from NodePort ones")
            return
    own = own_addresses(node)
    external: set[ServiceKey] = {k for base in EXTERNAL_SETS for fam in (4, 6)
                                 for k in ip_port_entries(sets.get(set_name(base, fam)))}
    # ClusterIP virtual services: on a Service address, not an external or load-balancer IP, not a node address.
    cluster: dict[ServiceKey, IpvsService] = {}
    every: set[ServiceKey] = set()  # all address:port virtual services (NodePort ones too)
    for vs in node.ipvs or []:
        key = service_key(vs)
        if key is not None:
            every.add(key)
            if key[0] in vips and key[0] not in own and key not in external:
                cluster.setdefault(key, vs)
    reject = ipvs_filter_reject(ctx)
    effect = ("KUBE-IPVS-FILTER rejects new connections (the address is in KUBE-IPVS-IPS, the port in no Service "
              "set)" if reject else "kube-proxy's KUBE-SERVICES rules do not accept the traffic")
    missing_set: list[Outcome] = []
    orphans: list[Outcome] = []  # entries without a virtual service
    unlisted: list[Outcome] = []  # ClusterIP virtual services without an entry
    compared = 0
    for fam in (4, 6):
        name = set_name(CLUSTER_IP, fam)
        s = sets.get(name)
        mine = {k: vs for k, vs in cluster.items() if k[0].version == fam}
        if s is None:
            if mine:
                shown = ", ".join(show(k) for k in list(mine)[:5]) + (", …" if len(mine) > 5 else "")
                missing_set.append(fail(
                    f"there is no {name} set, yet {len(mine)} ClusterIP virtual service(s) exist ({shown}): kube-proxy's "
                    f"rules that accept and masquerade ClusterIP traffic match nothing, so {effect}",
                    *(vs.source for vs in list(mine.values())[:5]), reject))
            continue
        entries = ip_port_entries(s)
        compared += len(entries)
        for key, member in entries.items():
            if key not in every and key not in external:
                orphans.append(fail(
                    f"{name} holds {member.text} but IPVS has no virtual service {show(key)}: kube-proxy's rules accept "
                    f"the traffic because the set matches it, then no virtual service takes it, so it reaches whatever "
                    f"listens on the node at that port, or is refused", member.source))
        for key, vs in mine.items():
            if key not in entries:
                unlisted.append(fail(
                    f"virtual service {show(key)} has no {name} entry: {effect}, and clients off the pod network are "
                    f"not masqueraded (KUBE-SERVICES marks only what the set matches)", vs.source, reject))
    yield from missing_set
    yield from capped(orphans, f"{CLUSTER_IP} entries without a virtual service")
    yield from capped(unlisted, f"ClusterIP virtual services without a {CLUSTER_IP} entry")
    if not missing_set and not orphans and not unlisted:
        yield passed(f"{compared} {CLUSTER_IP} entr{'y' if compared == 1 else 'ies'} and {len(cluster)} ClusterIP "
                     f"virtual service(s) match one to one")

