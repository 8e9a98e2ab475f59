#!/usr/bin/env python3
"""Regenerate tests/fixtures/listings/<scenario>/ from real iptables: one ruleset, every way users list it.

The ruleset is a kube-proxy (iptables mode) node from tests/lab/rulesets.py (three Services: one
with endpoints, a NodePort and an external IP, a UDP DNS service, one without endpoints) plus
admin rules that exercise the listing formats: interfaces, multiport, conntrack and state, ICMP,
LOG with a quoted prefix, mark and connmark, ipset, addrtype, statistic, recent, a goto, raw and
mangle rules. It is loaded with iptables-restore into a network namespace (prefix `kpt-lst-`,
deleted at the end, also on failure; no packet is sent) and then printed:

    iptables-save.txt            iptables-save (the reference)
    <table>-L-n-v.txt            iptables -t <table> -L -n -v   (no prompt: the table is read from its chains)
    <table>-S.txt                iptables -t <table> -S         (no prompt)
    all-L-n-v-x-lines.txt        every table, `-L -n -v -x --line-numbers`, pasted with root prompts
    all-L-n.txt                  every table, `-L -n` (no -v: interfaces are lost), with `$ sudo` prompts
    all-L.txt                    every table, `-L` (names for ports and networks), with prompts
    all-S.txt                    every table, `-S`, with prompts
    grep-30001.txt               `iptables-save | grep 30001`, with its prompt
    grep-clusterip.txt           `iptables-save | grep 10.96.0.20` (no prompt)
    ip6tables-save.txt, ip6-L-n-v.txt   a small IPv6 filter table both ways
    route-n.txt, arp-n.txt, arp-na.txt, conntrack-L.txt   the node's routes, neighbours, two conntrack entries
    mixed-paste.txt              one CRLF paste: `-t nat -L KUBE-SERVICES`, an elision, route -n, netstat -rn,
                                 arp, ip neigh, conntrack -L, ip route and the grep, each after its prompt

SOURCE.md records the iptables version and the commands. Needs root, iproute2, iptables, ipset.

    sudo python3 tests/lab_tools/make_listing_fixtures.py
    sudo python3 tests/lab_tools/make_listing_fixtures.py --out DIR
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.lab.rulesets import Endpoint, NodeRuleset, Service, UserRule  # noqa: E402

PREFIX = "kpt-lst-"
SCENARIO = "kube-node"
OUT_DEFAULT = ROOT / "tests" / "fixtures" / "listings" / SCENARIO
TABLES = ("filter", "nat", "mangle", "raw")
PROMPT = "root@node-a:~# "

# Admin and CNI rules on top of kube-proxy's: each exercises a column or a match text form.
USER_RULES = [
    UserRule("filter", "-I FORWARD 1 -d 10.244.1.4/32 -j DROP"),
    UserRule("filter", "-I INPUT 1 -p tcp -m tcp --dport 10250 -j DROP"),
    UserRule("filter", "-A INPUT -i eth0 -p tcp -m multiport --dports 22,80:90 -m state --state NEW -j ACCEPT"),
    UserRule("filter", '-A INPUT -p tcp -m tcp --dport 22 -m conntrack --ctstate RELATED,ESTABLISHED -j LOG --log-prefix "ssh in " --log-level 6'),
    UserRule("filter", "-A INPUT -s 10.0.0.0/8 -p icmp -m icmp --icmp-type 8 -j ACCEPT"),
    UserRule("filter", "-A INPUT -s 127.0.0.0/8 ! -i lo -j REJECT --reject-with icmp-port-unreachable"),
    UserRule("filter", "-A INPUT -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"),
    UserRule("filter", "-A INPUT -p udp -m udp --sport 53 --dport 1024:65535 -m connmark --mark 0x1/0xff -j ACCEPT"),
    UserRule("filter", "-A FORWARD -i cni0 -o eth0 -s 10.244.0.0/16 -j ACCEPT"),
    UserRule("filter", "-A FORWARD -m addrtype --dst-type LOCAL ! --src-type LOCAL -g ADMIN-LOG"),
    UserRule("filter", "-A ADMIN-LOG -m limit --limit 5/min --limit-burst 10 -j NFLOG --nflog-group 2 --nflog-prefix admin"),
    UserRule("filter", "-A ADMIN-LOG -m recent --set --name admin --mask 255.255.255.255 --rsource"),
    UserRule("filter", "-A ADMIN-LOG -j RETURN"),
    UserRule("mangle", "-A PREROUTING -i eth0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss 1400"),
    UserRule("mangle", "-A PREROUTING -m mark --mark 0x8000/0x8000 -j CONNMARK --save-mark"),
    UserRule("mangle", "-A POSTROUTING -o flannel.1 -p udp -m udp --dport 8472 -j MARK --set-xmark 0x1/0xffffffff"),
    UserRule("raw", "-A PREROUTING -i eth0 -p udp -m udp --dport 6081 -j CT --notrack"),
    UserRule("raw", "-A OUTPUT -o lo -m statistic --mode random --probability 0.25000000000 -j TRACE"),
]
USER_CHAINS = [("filter", "ADMIN-LOG")]
# NodeRuleset renders mangle, filter and nat; the raw table's rules come with the admin rules.
RAW_TABLE = "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" + "".join(
    r.line + "\n" for r in USER_RULES if r.table == "raw") + "COMMIT\n"
IP6_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s fd00:244::/48 -i cni0 -p tcp -m tcp --dport 8080 -j ACCEPT
-A INPUT ! -s fd00::1/128 -p udp -j DROP
-A FORWARD -d fd00:244:1::/64 -o cni0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT
COMMIT
"""


def ruleset() -> NodeRuleset:
    web = Service("default", "web", "10.96.0.20", 80,
                  [Endpoint("10.244.1.2", 8080), Endpoint("10.244.2.5", 8080, local=False)],
                  node_port=30001, external_ips=["198.51.100.10"])
    dns = Service("kube-system", "kube-dns", "10.96.0.10", 53, [Endpoint("10.244.1.3", 5353)], protocol="udp",
                  port_name="dns")
    empty = Service("shop", "empty", "10.96.0.30", 443, [], node_port=30002)
    return NodeRuleset(services=[web, dns, empty], forward_policy="DROP", user_rules=list(USER_RULES),
                       user_chains=list(USER_CHAINS))


def run(args: list[str], ns: str, stdin: str | None = None) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, *args], input=stdin, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: rc={p.returncode}: {p.stderr.strip()}")
    return p.stdout


def capture(ns: str) -> dict[str, str]:
    out: dict[str, str] = {}
    ipt = lambda *a: run(["iptables", *a], ns)  # noqa: E731
    out["iptables-save.txt"] = run(["iptables-save"], ns)
    for t in TABLES:
        out[f"{t}-L-n-v.txt"] = ipt("-t", t, "-L", "-n", "-v")
        out[f"{t}-S.txt"] = ipt("-t", t, "-S")

    def pasted(flags: list[str], prompt: str) -> str:
        parts = []
        for t in TABLES:
            cmd = ["iptables", *(["-t", t] if t != "filter" else []), *flags]
            parts.append(f"{prompt}{' '.join(cmd)}\n{ipt(*cmd[1:])}")
        return "\n".join(parts)

    out["all-L-n-v-x-lines.txt"] = pasted(["-L", "-n", "-v", "-x", "--line-numbers"], PROMPT)
    out["all-L-n.txt"] = pasted(["-L", "-n"], "$ sudo ")
    out["all-L.txt"] = pasted(["-L"], PROMPT)
    out["all-S.txt"] = pasted(["-S"], "$ sudo ")
    save = out["iptables-save.txt"]
    out["grep-30001.txt"] = f"{PROMPT}iptables-save | grep 30001\n" + "".join(
        ln + "\n" for ln in save.splitlines() if "30001" in ln)
    out["grep-clusterip.txt"] = "".join(ln + "\n" for ln in save.splitlines() if "10.96.0.20" in ln)
    run(["ip6tables-restore"], ns, IP6_RULES)
    out["ip6tables-save.txt"] = run(["ip6tables-save"], ns)
    out["ip6-L-n-v.txt"] = run(["ip6tables", "-L", "-n", "-v"], ns)
    return out


# The node's network for the route/arp/conntrack listings (all inside the namespace; nothing is sent).
NET_SETUP = [
    "ip link add eth0 type veth peer name uplink0",
    "ip link set eth0 up", "ip link set uplink0 up",
    "ip addr add 192.168.0.2/24 dev eth0",
    "ip link add cni0 type bridge", "ip link set cni0 up", "ip addr add 10.244.1.1/24 dev cni0",
    "ip route add default via 192.168.0.1 dev eth0 metric 100",
    "ip route add 10.244.2.0/24 via 192.168.0.12 dev eth0",
    "ip route add unreachable 10.99.0.0/16",
    "ip route add blackhole 10.98.0.0/16",
    "ip neigh replace 192.168.0.1 lladdr 0a:00:27:00:00:01 dev eth0 nud reachable",
    "ip neigh replace 192.168.0.12 lladdr 08:00:27:d2:19:12 dev eth0 nud stale",
    "ip neigh replace 10.244.1.5 lladdr da:ef:07:04:db:cc dev cni0 nud permanent",
    "conntrack -I -p tcp -s 10.244.1.5 -d 10.96.0.20 --sport 40000 --dport 80 --reply-src 10.244.1.2 "
    "--reply-dst 10.244.1.5 --reply-port-src 8080 --reply-port-dst 40000 --state ESTABLISHED -t 300 -u ASSURED",
    "conntrack -I -p udp -s 10.244.1.5 -d 10.96.0.10 --sport 53271 --dport 53 --reply-src 10.244.1.3 "
    "--reply-dst 10.244.1.5 --reply-port-src 5353 --reply-port-dst 53271 -t 29",
]
NET_COMMANDS = [("route -n", "route-n.txt"), ("netstat -rn", None), ("arp -n", "arp-n.txt"), ("arp -na", "arp-na.txt"),
                ("ip neigh", None), ("conntrack -L", "conntrack-L.txt"), ("ip route", None)]


def capture_net(ns: str) -> dict[str, str]:
    """route -n, arp, conntrack -L on their own, and all of them pasted together (CRLF) with an -L and a grep."""
    for cmd in NET_SETUP:
        run(cmd.split(), ns)
    out: dict[str, str] = {}
    parts = []
    for cmd, name in NET_COMMANDS:
        text = run(["sh", "-c", cmd + " 2>&1"], ns)
        if name:
            out[name] = text
        parts.append(f"{PROMPT}{cmd}\n{text}")
    out["mixed-paste.txt"] = "".join(parts)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    ns = f"{PREFIX}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        run(["ip", "link", "set", "lo", "up"], ns)
        run(["ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port"], ns)
        run(["iptables-restore"], ns, ruleset().render() + RAW_TABLE)
        files = capture(ns)
        files.update(capture_net(ns))
        mixed = (f"{PROMPT}iptables -t nat -L KUBE-SERVICES -n -v\n"
                 + run(["iptables", "-t", "nat", "-L", "KUBE-SERVICES", "-n", "-v"], ns)
                 + "...\n" + files["mixed-paste.txt"] + files["grep-30001.txt"])
        # Pasted from a Windows machine: CRLF line ends.
        files["mixed-paste.txt"] = mixed.replace("\n", "\r\n")
        version = run(["iptables", "--version"], ns).strip()
        ip6_version = run(["ip6tables", "--version"], ns).strip()
    finally:
        # ipset sets live in the namespace and go with it.
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    (args.out / "SOURCE.md").write_text(
        f"# {SCENARIO}: one ruleset, every listing format\n\n"
        f"Generated by `tests/lab_tools/make_listing_fixtures.py` in a network namespace ({PREFIX}*, deleted "
        f"afterwards); no packet was sent.\n\n"
        f"- {version}; {ip6_version}\n- kernel {platform.release()}\n"
        "- ruleset: `tests/lab/rulesets.py` NodeRuleset (kube-proxy iptables mode, three Services) plus the admin "
        "rules in USER_RULES, loaded with iptables-restore\n"
        "- files: see the generator's docstring for the command behind each\n"
    )
    print(f"wrote {len(files) + 1} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
