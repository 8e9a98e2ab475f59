from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.registry import Outcome, check, fail, missing, passed, warn
from kptrace.model.finding import Severity
from kptrace.model.observed import ResolvConf
from kptrace.walkers.dns import MAX_NAMESERVERS, cluster_domain, kubelet_resolv, node_files

# kubelet (validation.MaxDNSSearchPaths / MaxDNSSearchListChars, KEP-2595 GA in 1.28) and the legacy limits
# of kubelet before 1.28, glibc before 2.26 and musl (6 domains, 256 characters).
MAX_SEARCH, MAX_SEARCH_CHARS = 32, 2048
LEGACY_SEARCH, LEGACY_SEARCH_CHARS = 6, 256


@check(id="KPT602", name="dns-resolv-conf-limits", severity=Severity.MEDIUM, needs=("resolv_conf",),
       remediation="Keep at most 3 nameservers and few search domains in the resolv.conf kubelet reads: edit the "
                   "node's DNS settings (netplan, NetworkManager, dhclient.conf, systemd-resolved's DNS=/Domains=) or "
                   "point kubelet's resolvConf at a trimmed file.")
def resolv_conf_limits(ctx: CheckContext) -> Iterator[Outcome]:
    """The node's resolv.conf has more than 3 nameservers or more search domains than pods can use."""
    node = ctx.node
    kr = kubelet_resolv(node)
    files: list[ResolvConf] = [kr.file] if kr.known and kr.file is not None else list(node_files(node))
    if kr.known and kr.file is None:
        yield passed(f"kubelet reads {kr.path}, systemd-resolved's stub (one nameserver, no search list)", kr.setting,
                     needs=("kubelet_dns",))
        return
    if not files:
        yield missing("resolv.conf", why="the node's /etc/resolv.conf")
        return
    say = fail if kr.known else warn
    maybe = "" if kr.known else f" (if kubelet reads it: {kr.unknown})"
    domain = domain_of(ctx)
    found = False
    for rc in files:
        name = rc.path or rc.source.file
        if len(rc.nameservers) > MAX_NAMESERVERS:
            found = True
            extra = rc.nameservers[MAX_NAMESERVERS:]
            src = rc.nameserver_sources[MAX_NAMESERVERS] if len(rc.nameserver_sources) > MAX_NAMESERVERS else rc.source
            yield say(f"{name} lists {len(rc.nameservers)} nameservers: glibc uses the first {MAX_NAMESERVERS} and "
                      f"kubelet drops the rest for dnsPolicy: Default pods and CoreDNS (event \"Nameserver limits were "
                      f"exceeded\"): {', '.join(extra)} never asked{maybe}", src)
        pod_search = [f"default.svc.{domain}", f"svc.{domain}", domain, *rc.search]
        chars = len(" ".join(pod_search))
        where = rc.search_source or rc.source
        if len(pod_search) > MAX_SEARCH or chars > MAX_SEARCH_CHARS:
            found = True
            yield say(f"{name} has {len(rc.search)} search domains: with the 3 cluster domains a pod's search list is "
                      f"{len(pod_search)} domains, {chars} characters, over kubelet's {MAX_SEARCH} / {MAX_SEARCH_CHARS}: "
                      f"kubelet truncates it (event \"Search Line limits were exceeded\"){maybe}", where)
        elif len(pod_search) > LEGACY_SEARCH or chars > LEGACY_SEARCH_CHARS:
            found = True
            yield warn(f"{name} has {len(rc.search)} search domains: with the 3 cluster domains a pod's search list is "
                       f"{len(pod_search)} domains, {chars} characters; kubelet before 1.28 truncates it to "
                       f"{LEGACY_SEARCH} / {LEGACY_SEARCH_CHARS}, and glibc before 2.26 and musl (Alpine) images "
                       f"ignore the rest{maybe}", where)
    if not found:
        rc = files[0]
        yield passed(f"{rc.path or rc.source.file}: {len(rc.nameservers)} nameserver(s), {len(rc.search)} search "
                     f"domain(s): within glibc's and kubelet's limits", rc.source,
                     needs=None if kr.known else ("resolv_conf", "kubelet_dns"))


def domain_of(ctx: CheckContext) -> str:
    return cluster_domain(ctx.node)[0]
