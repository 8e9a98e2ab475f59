from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.registry import Outcome, check, fail, missing, passed, warn
from kptrace.model.finding import Severity
from kptrace.parsers.dns_files import SYSTEMD_RESOLV
from kptrace.walkers.dns import MAX_NAMESERVERS, coredns_on, is_loopback, kubelet_resolv, node_files


@check(id="KPT601", name="dns-upstream-loopback", severity=Severity.HIGH, needs=("resolv_conf",),
       remediation="Give kubelet a resolv.conf with reachable upstream servers: on systemd-resolved nodes set "
                   "`resolvConf: /run/systemd/resolve/resolv.conf` in /var/lib/kubelet/config.yaml (or --resolv-conf) "
                   "and restart kubelet, then delete the CoreDNS pods; or forward CoreDNS to explicit servers "
                   "(`forward . 192.0.2.53` in the Corefile).")
def upstream_loopback(ctx: CheckContext) -> Iterator[Outcome]:
    """The resolv.conf kubelet gives CoreDNS lists a loopback server (127.0.0.53): CoreDNS forwards to itself."""
    node = ctx.node
    kr = kubelet_resolv(node)
    if not node_files(node) and not kr.stub:
        yield missing("resolv.conf", why="the node's /etc/resolv.conf")
        return
    if kr.known:
        servers = kr.servers()[:MAX_NAMESERVERS]
        where = f"{kr.path}" + (" (kubelet's default)" if kr.default else "") + \
                (f" (kubelet's resolvConf, {kr.setting.file}:{kr.setting.line})" if kr.setting and not kr.default else "")
        loops = [(s, src) for s, src in servers if is_loopback(s)]
        if not loops:
            yield passed(f"the servers kubelet gives CoreDNS from {where} are not loopback: "
                         f"{', '.join(s for s, _ in servers) or 'none'}" + "".join(f" ({n})" for n in kr.notes),
                         *(src for _, src in servers[:1]), kr.setting)
            return
        server, src = loops[0]
        on, host_network, why = coredns_on(node, [node, *ctx.peers])
        message = (f"{where} lists nameserver {server}, a loopback address: CoreDNS (dnsPolicy: Default) gets it as its "
                   f"upstream and, in its own network namespace, forwards to itself")
        if on and not host_network:
            yield fail(f"{message}; {why}", src, kr.setting)
        elif on:
            yield warn(f"{where} lists nameserver {server}, a loopback address; {why}: CoreDNS shares the node's "
                       f"namespace, so its queries end on the node itself and are answered only while a resolver listens "
                       f"on {server}:53 there (and does not forward back to CoreDNS); a pod-network CoreDNS or dnsPolicy: "
                       f"Default pod on this node would forward to its own loopback", src, kr.setting)
        else:
            yield warn(f"{message}; {why}, so it breaks when CoreDNS (or any dnsPolicy: Default pod) runs here",
                       src, kr.setting)
        return
    # Which file kubelet reads is not in the input: answer only when every file it may read agrees.
    looping = [rc for rc in kr.candidates if any(is_loopback(s) for s in rc.nameservers[:MAX_NAMESERVERS])]
    systemd_known = any(rc.path == SYSTEMD_RESOLV for rc in kr.candidates) or "systemd-resolved-resolv.conf" in node.absent
    if kr.candidates and len(looping) == len(kr.candidates) and systemd_known:
        rc = looping[0]
        i = next(i for i, s in enumerate(rc.nameservers) if is_loopback(s))
        src = rc.nameserver_sources[i] if i < len(rc.nameservers) and i < len(rc.nameserver_sources) else rc.source
        yield warn(f"{rc.path or rc.source.file} lists nameserver {rc.nameservers[i]}, a loopback address, and so does "
                   f"every file kubelet may read ({kr.unknown}): if kubelet gives it to CoreDNS, CoreDNS forwards to "
                   f"itself", src)
        return
    yield missing("kubelet-config.yaml", why=kr.unknown or "kubelet's resolvConf")
