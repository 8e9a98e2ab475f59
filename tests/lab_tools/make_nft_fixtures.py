#!/usr/bin/env python3
"""Regenerate tests/fixtures/nft/<scenario>/ from real `nft list ruleset` and `nft -j list ruleset`.

Each scenario loads a ruleset into a fresh network namespace (kpt-nft-fx-<pid>) and captures what
nft prints back, so the parser tests read nft's own output, not hand-written text:

  kube-proxy       kube-proxy's nftables mode, dual stack (`table ip kube-proxy`, `table ip6 kube-proxy`):
                   service-ips / service-nodeports maps, endpoint chains, numgen vmaps, masquerade
                   marks, no-endpoint rejects, a firewall (loadBalancerSourceRanges), session affinity,
                   externalTrafficPolicy Local; rendered by `kube_proxy_nft` below after
                   kubernetes/kubernetes pkg/proxy/nftables/proxier.go (syncProxyRules, setupNFTables)
  iptables-mixed   iptables-nft tables (iptables-nft-restore, with extensions nft cannot show: physdev)
                   next to a firewalld-like `table inet filter`; iptables-nft-save.txt of the same moment
  expressions      one rule per expression form kptrace reads (parser coverage, text vs JSON)

Files: nft-ruleset.txt (`nft list ruleset`), nft-ruleset.json (`nft -j list ruleset`),
nft-ruleset.handles.txt (`nft -a list ruleset`), input.nft (what was loaded) and, for
iptables-mixed, iptables-nft-save.txt. SOURCE.md records the tool versions and commands.

Nothing leaves the namespace (no interface, no packet); it is deleted at the end, also on failure.

    sudo python3 tests/lab_tools/make_nft_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "kpt-nft-fx-"
OUT_DEFAULT = Path(__file__).resolve().parents[1] / "fixtures" / "nft"
MASQ_MARK = "0x4000"


# ---------------------------------------------------------------------------------------------
# kube-proxy's nftables ruleset, rendered the way its proxier writes it (an `nft -f` transaction)


@dataclass
class Endpoint:
    ip: str
    port: int
    local: bool = True


@dataclass
class Service:
    namespace: str
    name: str
    cluster_ip: str
    port: int
    endpoints: list[Endpoint]
    protocol: str = "tcp"
    port_name: str = "p80"
    node_port: int | None = None
    external_ips: list[str] = field(default_factory=list)
    lb_ips: list[str] = field(default_factory=list)
    source_ranges: list[str] = field(default_factory=list)
    etp_local: bool = False
    itp_local: bool = False
    affinity_seconds: int | None = None

    @property
    def externally_accessible(self) -> bool:
        return bool(self.node_port or self.external_ips or self.lb_ips)

    @property
    def port_string(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port_name}"


def _hash_name(name: str) -> str:
    # kube-proxy prefixes chain names with 8 base32 characters of the name's sha256.
    return base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8] + "-" + name


def service_base(svc: Service) -> str:
    return _hash_name(f"{svc.namespace}/{svc.name}/{svc.protocol}/{svc.port_name}")


def endpoint_base(svc: Service, ep: Endpoint) -> str:
    return _hash_name(f"{svc.namespace}/{svc.name}/{svc.protocol}/{svc.port_name}__{ep.ip.replace(':', '.')}/{ep.port}")


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def kube_proxy_nft(services: list[Service], *, family: int = 4, cluster_cidr: str | None = "10.244.0.0/16",
                   nodeport_ips: list[str] | None = None) -> str:
    """kube-proxy's nftables ruleset for these services; nodeport_ips None: NodePorts on every local address."""
    fam = "ip" if family == 4 else "ip6"
    ipx = fam
    addr_type = "ipv4_addr" if family == 4 else "ipv6_addr"
    no_localhost = "ip daddr != 127.0.0.0/8" if family == 4 else "ip6 daddr != ::1"
    t = f"{fam} kube-proxy"
    decl: list[str] = [f'add table {t} {{ comment "rules for kube-proxy" ; }}']
    rules: list[str] = []
    elems: list[str] = []
    for name, ctype, hook, prio in (("filter-prerouting", "filter", "prerouting", -110),
                                    ("filter-input", "filter", "input", -110),
                                    ("filter-forward", "filter", "forward", -110),
                                    ("filter-output", "filter", "output", -110),
                                    ("nat-prerouting", "nat", "prerouting", -100),
                                    ("nat-output", "nat", "output", -100),
                                    ("nat-postrouting", "nat", "postrouting", 100)):
        decl.append(f"add chain {t} {name} {{ type {ctype} hook {hook} priority {prio} ; }}")
    for chain in ("endpoints-check", "firewall-check", "services", "masquerading", "mark-for-masquerade"):
        decl.append(f"add chain {t} {chain}")
    decl.append(f'add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}')
    for dst, src, extra in (("endpoints-check", "filter-input", "ct state new "),
                            ("endpoints-check", "filter-forward", "ct state new "),
                            ("endpoints-check", "filter-output", "ct state new "),
                            ("firewall-check", "filter-prerouting", "ct state new "),
                            ("firewall-check", "filter-output", "ct state new "),
                            ("services", "nat-output", ""), ("services", "nat-prerouting", ""),
                            ("masquerading", "nat-postrouting", "")):
        rules.append(f"add rule {t} {src} {extra}jump {dst}")
    rules.append(f"add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}")
    rules.append(f"add rule {t} masquerading mark and {MASQ_MARK} == 0 return")
    rules.append(f"add rule {t} masquerading mark set mark xor {MASQ_MARK}")
    rules.append(f"add rule {t} masquerading masquerade fully-random")
    if nodeport_ips is not None:
        decl.append(f'add set {t} nodeport-ips {{ type {addr_type} ; comment "IPs that accept NodePort traffic" ; }}')
        elems += [f"add element {t} nodeport-ips {{ {ip} }}" for ip in nodeport_ips]
    vmap = f"{addr_type} . inet_proto . inet_service : verdict"
    decl.append(f'add map {t} no-endpoint-services {{ type {vmap} ; comment "vmap to drop or reject packets to services with no endpoints" ; }}')
    decl.append(f'add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}')
    rules.append(f"add rule {t} reject-chain reject")
    rules.append(f"add rule {t} endpoints-check {ipx} daddr . meta l4proto . th dport vmap @no-endpoint-services")
    nodeport_match = "fib daddr type local " + no_localhost if nodeport_ips is None else f"{ipx} daddr @nodeport-ips"
    rules.append(f"add rule {t} endpoints-check {nodeport_match} meta l4proto . th dport vmap @no-endpoint-nodeports")
    decl.append(f'add map {t} firewall-ips {{ type {vmap} ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}')
    rules.append(f"add rule {t} firewall-check {ipx} daddr . meta l4proto . th dport vmap @firewall-ips")
    decl.append(f'add map {t} service-ips {{ type {vmap} ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}')
    decl.append(f'add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}')
    rules.append(f"add rule {t} services {ipx} daddr . meta l4proto . th dport vmap @service-ips")
    rules.append(f"add rule {t} services {nodeport_match} meta l4proto . th dport vmap @service-nodeports")

    for svc in services:
        p = svc.protocol
        base = service_base(svc)
        cluster_chain, local_chain = f"service-{base}", f"local-{base}"
        ext_chain, fw_chain = f"external-{base}", f"firewall-{base}"
        eps = svc.endpoints
        local_eps = [e for e in eps if e.local]
        has_eps = bool(eps)
        uses_cluster = bool(eps) and (not svc.itp_local or (svc.externally_accessible and not svc.etp_local))
        uses_local = bool(local_eps) and (svc.itp_local or (svc.externally_accessible and svc.etp_local))
        internal_chain, has_internal = cluster_chain, has_eps
        if svc.itp_local:
            internal_chain, has_internal = local_chain, bool(local_eps)
        external_policy, has_external = cluster_chain, has_eps
        if svc.etp_local:
            external_policy, has_external = local_chain, bool(local_eps)
        uses_ext = has_eps and svc.externally_accessible
        int_verdict = "goto reject-chain" if not has_eps else "drop"
        ext_verdict = "goto reject-chain" if not has_eps else "drop"
        for chain in sorted({c for c, used in ((cluster_chain, uses_cluster), (local_chain, uses_local),
                                               (ext_chain, uses_ext)) if used}):
            decl.append(f"add chain {t} {chain}")
        for ep in eps if (uses_cluster or uses_local) else []:
            decl.append(f"add chain {t} endpoint-{endpoint_base(svc, ep)}")
        key = f"{svc.cluster_ip} . {p} . {svc.port}"
        if has_internal:
            elems.append(f"add element {t} service-ips {{ {key} : goto {internal_chain} }}")
        else:
            elems.append(f'add element {t} no-endpoint-services {{ {key} comment "{svc.port_string}" : {int_verdict} }}')
        for ip in svc.external_ips + svc.lb_ips:
            k = f"{ip} . {p} . {svc.port}"
            if has_eps:
                elems.append(f"add element {t} service-ips {{ {k} : goto {ext_chain} }}")
            if not has_external:
                elems.append(f'add element {t} no-endpoint-services {{ {k} comment "{svc.port_string}" : {ext_verdict} }}')
        if svc.lb_ips and svc.source_ranges:
            decl.append(f"add chain {t} {fw_chain}")
            rules.append(f"add rule {t} {fw_chain} {ipx} saddr != {{ {', '.join(svc.source_ranges)} }} drop")
            for ip in svc.lb_ips:
                elems.append(f'add element {t} firewall-ips {{ {ip} . {p} . {svc.port} comment "{svc.port_string}" : goto {fw_chain} }}')
        if svc.node_port:
            if has_eps:
                elems.append(f"add element {t} service-nodeports {{ {p} . {svc.node_port} : goto {ext_chain} }}")
            if not has_external:
                elems.append(f'add element {t} no-endpoint-nodeports {{ {p} . {svc.node_port} comment "{svc.port_string}" : {ext_verdict} }}')
        if has_internal and cluster_cidr:
            rules.append(f"add rule {t} {internal_chain} {ipx} daddr {svc.cluster_ip} {p} dport {svc.port} "
                         f"{ipx} saddr != {cluster_cidr} jump mark-for-masquerade")
        if uses_ext:
            if not svc.etp_local:
                rules.append(f"add rule {t} {ext_chain} jump mark-for-masquerade")
            else:
                if cluster_cidr:
                    rules.append(f'add rule {t} {ext_chain} {ipx} saddr {cluster_cidr} goto {cluster_chain} comment "short-circuit pod traffic"')
                rules.append(f'add rule {t} {ext_chain} fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"')
                rules.append(f'add rule {t} {ext_chain} fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"')
            if has_external:
                rules.append(f"add rule {t} {ext_chain} goto {external_policy}")
        if svc.affinity_seconds is not None:
            for ep in eps:
                decl.append(f"add set {t} affinity-{endpoint_base(svc, ep)} {{ type {addr_type} ; flags dynamic,timeout ; "
                            f"timeout {svc.affinity_seconds}s ; }}")
        for chain, chain_eps, used in ((cluster_chain, eps, uses_cluster), (local_chain, local_eps, uses_local)):
            if not used:
                continue
            if svc.affinity_seconds is not None:
                for ep in chain_eps:
                    eb = endpoint_base(svc, ep)
                    rules.append(f"add rule {t} {chain} {ipx} saddr @affinity-{eb} goto endpoint-{eb}")
            vm = " , ".join(f"{i} : goto endpoint-{endpoint_base(svc, ep)}" for i, ep in enumerate(chain_eps))
            rules.append(f"add rule {t} {chain} numgen random mod {len(chain_eps)} vmap {{ {vm} }}")
        for ep in eps if (uses_cluster or uses_local) else []:
            eb = endpoint_base(svc, ep)
            rules.append(f"add rule {t} endpoint-{eb} {ipx} saddr {ep.ip} jump mark-for-masquerade")
            if svc.affinity_seconds is not None:
                rules.append(f"add rule {t} endpoint-{eb} update @affinity-{eb} {{ {ipx} saddr }}")
            rules.append(f"add rule {t} endpoint-{eb} meta l4proto {p} dnat to {_hostport(ep.ip, ep.port)}")
    return "\n".join(decl + rules + elems) + "\n"


def reorder_transaction(text: str) -> str:
    """An `nft -f` transaction in the order nft accepts: table, sets and maps, chains, rules, elements.

    kube-proxy's expected test output lists a service's rules before the chains they `goto`; its
    test sorts before comparing. The order within each kind is kept (rules stay in chain order).
    """
    rank = {"table": 0, "set": 1, "map": 1, "chain": 2, "rule": 3, "element": 4}
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return "\n".join(sorted(lines, key=lambda ln: rank.get(ln.split()[1], 5) if len(ln.split()) > 1 else 5)) + "\n"


# ---------------------------------------------------------------------------------------------
# Scenarios

KUBE_PROXY_V4 = [
    Service("default", "web", "10.96.0.10", 80, [Endpoint("10.244.1.3", 8080), Endpoint("10.244.1.4", 8080)],
            node_port=30080),
    Service("kube-system", "dns", "10.96.0.53", 53, [Endpoint("10.244.1.3", 5353)], protocol="udp", port_name="dns"),
    Service("default", "empty", "10.96.0.20", 80, [], node_port=30020),
    Service("default", "lb", "10.96.0.30", 80, [Endpoint("10.244.1.3", 8080)], lb_ips=["198.51.100.20"],
            source_ranges=["203.0.113.0/25"], node_port=30030),
    Service("default", "local", "10.96.0.40", 80, [Endpoint("10.244.2.5", 8080, local=False)],
            external_ips=["198.51.100.40"], etp_local=True, node_port=30040),
    Service("default", "sticky", "10.96.0.50", 80, [Endpoint("10.244.1.4", 8080)], affinity_seconds=10800),
]
KUBE_PROXY_V6 = [
    Service("default", "web", "fd00:96::10", 80, [Endpoint("fd00:244:1::3", 8080), Endpoint("fd00:244:1::4", 8080)],
            node_port=30080),
    Service("default", "empty", "fd00:96::20", 80, []),
]

IPTABLES_MIXED = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -m physdev --physdev-is-bridged -j ACCEPT
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-WEB - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SVC-WEB ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -p tcp -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.244.1.3:8080
-A KUBE-SVC-WEB -p tcp -j DNAT --to-destination 10.244.1.4:8080
COMMIT
"""

FIREWALLD_LIKE = """table inet filter {
    set allowed { type inet_service ; elements = { 22, 80, 443, 8080 } ; }
    chain input {
        type filter hook input priority filter + 10 ; policy drop ;
        ct state established,related accept
        ct state invalid drop
        iifname "lo" accept
        meta l4proto icmp accept
        tcp dport @allowed counter accept
        log prefix "fw-drop " drop
    }
    chain forward {
        type filter hook forward priority filter + 10 ; policy accept ;
        ip daddr 10.244.1.3 tcp dport 9090 reject with tcp reset
    }
}
"""

EXPRESSIONS = """table inet x {
  set s4 { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 192.168.1.1-192.168.1.9 } ; }
  set sc { type ipv4_addr . inet_service; flags interval; elements = { 127.0.0.0/8 . 1-100 } ; }
  map dm { type ipv4_addr : ipv4_addr; elements = { 10.0.0.1 : 10.0.0.2 } ; }
  counter cnt { }
  chain c { type filter hook forward priority filter + 5; policy drop;
    meta mark 0x4000 accept
    meta pkttype host iifname "eth0" oifname != "cni*" accept
    iif "lo" accept
    ct state established,related accept
    ct state { established, related } accept
    ct state invalid drop
    ct status dnat accept
    ct direction original accept
    ct original ip daddr 10.0.0.1 accept
    ct mark & 0x10 == 0x10 accept
    meta l4proto { tcp, udp } th dport 53 accept
    ip protocol tcp accept
    meta nfproto ipv4 accept
    tcp flags syn accept
    tcp flags & (fin|syn|rst|ack) == syn accept
    icmp type echo-request accept
    icmpv6 type { nd-neighbor-solicit, echo-request } accept
    tcp dport { 22, 80-90 } accept
    tcp dport != 22 accept
    ip saddr . tcp dport { 10.0.0.1 . 22 } accept
    ip daddr . tcp dport @sc accept
    ip saddr @s4 drop
    fib saddr . iif oif missing drop
    fib daddr type { local, broadcast } accept
    meta skuid 0 accept
    limit rate 10/second accept
    limit rate over 100 kbytes/second drop
    log prefix "hello " level info flags all accept
    meta nftrace set 1
    ct mark set meta mark
    meta mark set ct mark
    meta mark set 0x10
    ip dscp set cs1
    udp dport 53 notrack
    ip daddr 10.0.0.1 tcp dport 80 reject with tcp reset
    reject with icmpx admin-prohibited
    ip saddr 10.0.0.1 reject with icmp host-prohibited
    jhash ip saddr mod 2 seed 0x1 vmap { 0 : accept, 1 : drop }
    meta random & 2147483647 < 1073741824 accept
    ip ttl 64 accept
    ip daddr != { 10.0.0.1, 10.0.0.2 } accept
    counter name "cnt" accept
    tcp option maxseg size 1400 accept
    ip saddr 10.0.0.3 counter drop comment "a comment"
  }
  chain n { type nat hook prerouting priority dstnat;
    tcp dport 80 dnat ip to 10.0.0.1:80
    dnat ip to ip daddr map @dm
    dnat ip to ip daddr map { 10.1.1.1 : 10.2.2.2 }
    dnat ip to numgen inc mod 2 map { 0 : 10.0.0.1, 1 : 10.0.0.2 }
    meta nfproto ipv6 tcp dport 80 dnat ip6 to [fd00::1]:80
    tcp dport 80 dnat ip to 10.0.0.1-10.0.0.5:80-90 persistent
    tcp dport 80 redirect to :8080
  }
  chain p { type nat hook postrouting priority srcnat;
    masquerade random,persistent
    meta l4proto tcp masquerade to :1024-2000
    snat ip to 1.2.3.4
    oifname "eth0" snat ip to 1.2.3.4-1.2.3.9
  }
}
"""


def sh(args: list[str], ns: str | None = None, stdin: str | None = None, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + args
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> rc={proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def capture(ns: str, out: Path, loaded: str, iptables: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "input.nft").write_text(loaded)
    (out / "nft-ruleset.txt").write_text(sh(["nft", "list", "ruleset"], ns))
    (out / "nft-ruleset.json").write_text(sh(["nft", "-j", "list", "ruleset"], ns))
    (out / "nft-ruleset.handles.txt").write_text(sh(["nft", "-a", "list", "ruleset"], ns))
    if iptables:
        (out / "iptables-nft-save.txt").write_text(sh(["iptables-nft-save"], ns))


def versions() -> str:
    nft = sh(["nft", "--version"]).strip()
    ipt = sh(["iptables-nft", "--version"]).strip()
    return f"- {nft}\n- {ipt}\n- kernel {platform.release()}\n"


def scenario_kube_proxy(ns: str, out: Path) -> None:
    text = kube_proxy_nft(KUBE_PROXY_V4, nodeport_ips=["192.168.0.2"]) + kube_proxy_nft(
        KUBE_PROXY_V6, family=6, cluster_cidr="fd00:244::/48", nodeport_ips=None)
    sh(["nft", "-f", "-"], ns, stdin=text)
    capture(ns, out, text)


def scenario_iptables_mixed(ns: str, out: Path) -> None:
    sh(["iptables-nft-restore"], ns, stdin=IPTABLES_MIXED)
    sh(["nft", "-f", "-"], ns, stdin=FIREWALLD_LIKE)
    capture(ns, out, "# iptables-nft-restore <<EOF\n" + IPTABLES_MIXED + "EOF\n" + FIREWALLD_LIKE, iptables=True)


def scenario_expressions(ns: str, out: Path) -> None:
    sh(["nft", "-f", "-"], ns, stdin=EXPRESSIONS)
    capture(ns, out, EXPRESSIONS)


SCENARIOS = {"kube-proxy": scenario_kube_proxy, "iptables-mixed": scenario_iptables_mixed,
             "expressions": scenario_expressions}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    ap.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    for name in args.scenarios:
        ns = f"{PREFIX}{os.getpid()}-{name}"
        sh(["ip", "netns", "add", ns])
        try:
            SCENARIOS[name](ns, args.out / name)
        finally:
            sh(["ip", "netns", "del", ns], check=False)
        (args.out / name / "SOURCE.md").write_text(
            f"# {name}\n\nGenerated by `tests/lab_tools/make_nft_fixtures.py {name}` in a fresh network namespace.\n\n"
            f"{versions()}\n"
            "- `input.nft`: what was loaded (`nft -f`; iptables-nft-restore for the iptables part)\n"
            "- `nft-ruleset.txt`: `nft list ruleset`\n- `nft-ruleset.json`: `nft -j list ruleset`\n"
            "- `nft-ruleset.handles.txt`: `nft -a list ruleset`\n"
            + ("- `iptables-nft-save.txt`: `iptables-nft-save`\n" if name == "iptables-mixed" else ""))
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
