from __future__ import annotations

from collections.abc import Iterator

from kptrace.checks.facts import CheckContext
from kptrace.checks.registry import Outcome, check, fail, missing, passed
from kptrace.model.finding import Severity
from kptrace.parsers.dns_files import SYSTEMD_RESOLV
from kptrace.walkers.dns import STUB, file_at, kubelet_resolv, kubelet_setting, server_ip


@check(id="KPT603", name="kubelet-resolv-conf-stub", severity=Severity.HIGH, needs=("kubelet_dns",),
       remediation="Point kubelet at systemd-resolved's own file: `resolvConf: /run/systemd/resolve/resolv.conf` in "
                   "/var/lib/kubelet/config.yaml (or --resolv-conf=/run/systemd/resolve/resolv.conf), restart kubelet "
                   "and recreate the CoreDNS pods.")
def kubelet_resolv_conf_stub(ctx: CheckContext) -> Iterator[Outcome]:
    """kubelet's resolvConf is systemd-resolved's stub (127.0.0.53), not /run/systemd/resolve/resolv.conf."""
    node = ctx.node
    if kubelet_setting(node) is None:
        yield missing("kubelet-config.yaml", why="kubelet's resolvConf, or kubelet-cmdline.txt for --resolv-conf")
        return
    kr = kubelet_resolv(node)
    if not kr.known:
        yield missing("resolv.conf" if kr.path == "/etc/resolv.conf" else "kubelet-config.yaml", why=kr.unknown or "")
        return
    if kr.path == "":
        yield passed("kubelet's resolvConf is empty: it passes no node resolver to pods", kr.setting)
        return
    servers = kr.servers()
    setting = kr.setting
    where = f"{kr.path}" + (" (kubelet's default: its config does not set resolvConf)" if kr.default else "")
    stub = kr.stub or (bool(servers) and all(server_ip(s) == STUB for s, _ in servers))
    if not stub:
        yield passed(f"kubelet reads {where}, whose servers are not systemd-resolved's stub: "
                     f"{', '.join(s for s, _ in servers) or 'none'}" + "".join(f" ({n})" for n in kr.notes),
                     setting, *(src for _, src in servers[:1]))
        return
    real = file_at(node, SYSTEMD_RESOLV)
    line = servers[0][1]
    if real is not None:
        yield fail(f"kubelet reads {where}, systemd-resolved's stub (nameserver 127.0.0.53), while "
                   f"{SYSTEMD_RESOLV} lists the real upstream servers ({', '.join(real.nameservers) or 'none'}): pods "
                   f"with dnsPolicy: Default and CoreDNS get 127.0.0.53, their own loopback", setting, line, real.source)
    else:
        absent = node.absent.get("systemd-resolved-resolv.conf")
        yield fail(f"kubelet reads {where}, systemd-resolved's stub (nameserver 127.0.0.53): pods with dnsPolicy: "
                   f"Default and CoreDNS get 127.0.0.53, their own loopback"
                   + (f"; {SYSTEMD_RESOLV} is not on this node ({absent}): give kubelet a file with real servers"
                      if absent else ""), setting, line)
