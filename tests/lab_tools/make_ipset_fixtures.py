#!/usr/bin/env python3
"""Regenerate the ipset fixtures and the IPVS demo node's ipset/iptables half from the real tools.

Everything runs inside one network namespace, `kpt-ipvs-fx-<pid>`, deleted at the end (also on
failure); no packet is sent. ipset and iptables-nft are the real tools on the real kernel:

  tests/fixtures/ipset/all-types.{save,list,terse}.txt   every set type the kernel offers here (not
        hash:ip,mark, hash:mac, hash:net,net, hash:net,port,net, bitmap:ip,mac: not built),
        families inet/inet6, timeouts, counters, comments, nomatch, skbinfo, netmask, list:set
        (`ipset save`, `ipset list`, `ipset list -t`)
  tests/fixtures/ipset/kube-proxy.{save,list}.txt         kube-proxy's IPVS-mode sets of the demo node
  kptrace/demo/ipvs-node/ipset-save.txt                   the same `ipset save`
  kptrace/demo/ipvs-node/iptables-save.txt                kube-proxy (IPVS mode), kubelet and flannel
        rules loaded with iptables-restore, then `iptables-save`
  kptrace/demo/ipvs-node/ip-route.txt, ip-addr.txt, ip-link.txt   node-a's files (kptrace/demo/cluster/node-a)
        with the kube-ipvs0 lines added (see below)

kube-ipvs0 is a dummy device on a real node, and this kernel has no dummy driver. The script
makes a stand-in (a bridge, left down, as kube-proxy leaves kube-ipvs0 down), adds the Service
VIPs as /32, and takes the kernel's own `table local` routes for them from `ip route show table
all`; the `ip addr`/`ip -d link` entries are rewritten to what iproute2 prints for a dummy device
(`<BROADCAST,NOARP> … qdisc noop state DOWN`, detail line `dummy`).

Needs root, ip (iproute2), ipset, iptables-nft.   sudo python3 tests/lab_tools/make_ipset_fixtures.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "ipset"
DEMO = ROOT / "kptrace" / "demo" / "ipvs-node"
NODE_A = ROOT / "kptrace" / "demo" / "cluster" / "node-a"
NS = f"kpt-ipvs-fx-{os.getpid()}"

ALL_TYPES = """\
create allow-ip hash:ip family inet timeout 600 counters comment
add allow-ip 10.0.0.1 timeout 300 packets 5 bytes 300 comment "client one"
add allow-ip 10.0.0.2 timeout 0
create allow-ip6 hash:ip family inet6
add allow-ip6 fd00::1
create masked hash:ip netmask 24
add masked 10.1.2.3
create svc hash:ip,port
add svc 10.96.0.10,udp:53
add svc 10.96.0.10,tcp:53
add svc 10.96.0.1,tcp:443
add svc 10.96.0.10,sctp:9
add svc 10.96.0.10,icmp:echo-request
add svc 10.96.0.10,gre:0
add svc 10.96.0.10,icmp:3/3
create svc6 hash:ip,port family inet6
add svc6 fd00:96::a,tcp:80
add svc6 fd00:96::a,icmpv6:echo-request
create loop hash:ip,port,ip
add loop 10.244.1.12,tcp:8080,10.244.1.12
create srcnet hash:ip,port,net
add srcnet 198.51.100.20,tcp:80,203.0.113.0/24
add srcnet 198.51.100.20,tcp:80,203.0.113.128/25 nomatch
create nets hash:net
add nets 10.0.0.0/8
add nets 10.1.0.0/16 nomatch
add nets 10.1.1.0/24
add nets 192.0.2.7
create nets6 hash:net family inet6
add nets6 fd00::/64
add nets6 fd00::5 nomatch
create netport hash:net,port
add netport 10.244.0.0/16,tcp:8080
add netport 10.244.9.0/24,tcp:8080 nomatch
create ports bitmap:port range 0-65535
add ports 30080
add ports 31000-31002
create ports-timeout bitmap:port range 1024-2048 timeout 100
add ports-timeout 1500 timeout 50
create range bitmap:ip range 10.0.0.0/24
add range 10.0.0.5
create iface hash:net,iface
add iface 10.0.0.0/8,eth0
create skb hash:ip skbinfo
add skb 10.0.0.9 skbmark 0x10/0xff skbprio 1:10 skbqueue 2
create members list:set size 8
add members allow-ip
add members masked
"""

# kube-proxy's IPVS sets (pkg/proxy/ipvs/ipset.go ipsetInfo) for the demo services, created as
# pkg/util/ipset creates them (`family inet hashsize 1024 maxelem 65536`, bitmaps `range 0-65535`).
KUBE_SETS = [
    ("KUBE-LOOP-BACK", "hash:ip,port,ip", ["10.244.1.9,udp:53,10.244.1.9", "10.244.1.9,tcp:53,10.244.1.9",
                                           "10.244.1.9,tcp:9153,10.244.1.9", "10.244.1.12,tcp:8080,10.244.1.12"]),
    ("KUBE-CLUSTER-IP", "hash:ip,port", ["10.96.0.1,tcp:443", "10.96.0.10,udp:53", "10.96.0.10,tcp:53",
                                         "10.96.0.10,tcp:9153", "10.96.12.34,tcp:80", "10.96.33.3,tcp:80",
                                         "10.96.77.7,tcp:80"]),
    ("KUBE-EXTERNAL-IP", "hash:ip,port", []),
    ("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port", []),
    ("KUBE-LOAD-BALANCER", "hash:ip,port", []),
    ("KUBE-LOAD-BALANCER-FW", "hash:ip,port", []),
    ("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port", []),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip", []),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net", []),
    ("KUBE-NODE-PORT-TCP", "bitmap:port", ["30080"]),
    ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port", []),
    ("KUBE-NODE-PORT-UDP", "bitmap:port", []),
    ("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port", []),
    ("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port", []),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port", []),
    ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", []),
    ("KUBE-IPVS-IPS", "hash:ip", ["10.96.0.1", "10.96.0.10", "10.96.12.34", "10.96.33.3", "10.96.77.7"]),
]
VIPS = ["10.96.0.1", "10.96.0.10", "10.96.12.34", "10.96.33.3", "10.96.77.7"]


def kube_ipset_script() -> str:
    out = []
    for name, stype, entries in KUBE_SETS:
        opts = "range 0-65535" if stype == "bitmap:port" else "family inet hashsize 1024 maxelem 65536"
        out.append(f"create {name} {stype} {opts}")
        out.extend(f"add {name} {e}" for e in entries)
    return "\n".join(out) + "\n"


# kube-proxy v1.30 IPVS mode (pkg/proxy/ipvs/proxier.go writeIptablesRules, iptablesJumpChain,
# ipsetWithIptablesChain, acceptIPVSTraffic) with --cluster-cidr 10.244.0.0/16, plus the kubelet's
# KUBE-FIREWALL and flannel's chains as on node-a. Rules for empty sets are not written, as
# kube-proxy skips them.
KUBE_RULES = """\
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-PROXY-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
:KUBE-IPVS-OUT-FILTER - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SOURCE-RANGES-FIREWALL - [0:0]
-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER
-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER
-A OUTPUT -j KUBE-FIREWALL
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT
-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT
-A KUBE-SOURCE-RANGES-FIREWALL -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ
-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
"""


def sh(*args: str, stdin: str | None = None, ns: bool = True) -> str:
    cmd = (["ip", "netns", "exec", NS] if ns else []) + list(args)
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: rc={p.returncode}: {p.stderr.strip()}")
    return p.stdout


def flush_sets() -> None:
    sh("ipset", "flush")
    sh("ipset", "destroy")


def strip_initval(text: str) -> str:
    # initval is a random hash seed chosen at create time: fixed here so reruns give identical files.
    return re.sub(r"initval 0x[0-9a-f]+", "initval 0x1c7d4a2b", text)


def kube_ipvs0() -> tuple[str, str, str]:
    """(ip-addr block, ip -d link block, local routes) for kube-ipvs0, from the stand-in."""
    sh("ip", "link", "add", "kube-ipvs0", "type", "bridge")
    sh("ip", "link", "set", "kube-ipvs0", "address", "6e:12:9a:3c:b7:40")
    for vip in VIPS:
        sh("ip", "addr", "add", f"{vip}/32", "dev", "kube-ipvs0")
    routes = [ln for ln in sh("ip", "route", "show", "table", "all").splitlines() if "dev kube-ipvs0" in ln]
    addr = sh("ip", "addr", "show", "dev", "kube-ipvs0").splitlines()
    # iproute2's first line for a dummy device that kube-proxy created and never set up.
    head = re.sub(r"^\d+: kube-ipvs0: .*$", "8: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default ",
                  addr[0])
    addr_block = "\n".join([head, *addr[1:]]) + "\n"
    link_block = ("8: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN mode DEFAULT group default \n"
                  "    link/ether 6e:12:9a:3c:b7:40 brd ff:ff:ff:ff:ff:ff promiscuity 0  allmulti 0 minmtu 0 maxmtu 0 \n"
                  "    dummy addrgenmode eui64 numtxqueues 1 numrxqueues 1 gso_max_size 65536 gso_max_segs 65535 "
                  "tso_max_size 524280 tso_max_segs 65535 gro_max_size 65536 \n")
    return addr_block, link_block, "\n".join(routes) + "\n"


def splice_routes(base: str, routes: str) -> str:
    """Insert the kube-ipvs0 local routes into node-a's `ip route show table all`, in the kernel's order."""
    lines = base.splitlines()
    new = routes.splitlines()

    def key(ln: str) -> tuple[int, ...]:
        m = re.match(r"^(?:local|broadcast) (\d+)\.(\d+)\.(\d+)\.(\d+)", ln)
        return tuple(int(x) for x in m.groups()) if m else (999,)

    out: list[str] = []
    for ln in lines:
        while new and " table local " in ln and ln.startswith(("local ", "broadcast ")) and key(ln) > key(new[0]) \
                and key(ln) != (999,):
            out.append(new.pop(0))
        out.append(ln)
    return "\n".join(out + new) + "\n"


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespace, ipset, iptables)")
    FIX.mkdir(parents=True, exist_ok=True)
    DEMO.mkdir(parents=True, exist_ok=True)
    sh("ip", "netns", "add", NS, ns=False)
    try:
        sh("ip", "link", "set", "lo", "up")
        sh("ipset", "restore", stdin=ALL_TYPES)
        (FIX / "all-types.save.txt").write_text(strip_initval(sh("ipset", "save")))
        (FIX / "all-types.list.txt").write_text(strip_initval(sh("ipset", "list")))
        (FIX / "all-types.terse.txt").write_text(strip_initval(sh("ipset", "list", "-t")))
        flush_sets()

        sh("ipset", "restore", stdin=kube_ipset_script())
        sh("iptables-restore", stdin=KUBE_RULES)
        save = strip_initval(sh("ipset", "save"))
        (FIX / "kube-proxy.save.txt").write_text(save)
        (FIX / "kube-proxy.list.txt").write_text(strip_initval(sh("ipset", "list")))
        (DEMO / "ipset-save.txt").write_text(save)
        rules = sh("iptables-save")
        sh("iptables-restore", "--test", stdin=rules)
        (DEMO / "iptables-save.txt").write_text(rules)

        addr_block, link_block, routes = kube_ipvs0()
        (DEMO / "ip-addr.txt").write_text((NODE_A / "ip-addr.txt").read_text() + addr_block)
        (DEMO / "ip-link.txt").write_text((NODE_A / "ip-link.txt").read_text() + link_block)
        (DEMO / "ip-route.txt").write_text(splice_routes((NODE_A / "ip-route.txt").read_text(), routes))
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)
    print(f"wrote {FIX} and {DEMO}", file=sys.stderr)


if __name__ == "__main__":
    main()
