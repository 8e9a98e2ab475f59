#!/usr/bin/env python3
"""Regenerate tests/fixtures/iproute2/<scenario>/ from real iproute2 and bridge-utils output.

Scenario `flannel-node`: a flannel (VXLAN) Kubernetes node built in network namespaces.

    kpt-fx-node     eth0 (veth) 192.168.56.11/24, fd00:56::11/64, default via .1 / fd00:56::1
                    cni0 bridge 10.244.1.1/24 (fd00:244:1::1/64) with three pod veths
                    flannel.1 vxlan id 1 local 192.168.56.11 dev eth0 dstport 8472, 10.244.1.0/32
                    routes, neighbours and fdb entries for two other nodes (.10 and .12), the way
                    flannel's vxlan backend installs them; policy rules and table 100 with every
                    route type and a multipath route; a nexthop object; a linkdown and a dead nexthop
    kpt-fx-pod-a/b/c  one pod each (named, as CNI names them: the node shows `link-netns NAME`)
    (anonymous)       the LAN side of eth0 (192.168.56.1), shown as `link-netnsid 0`

Every address lives only inside these namespaces. No packet is sent: neighbours and fdb entries
are installed statically. Everything is deleted at the end, also on failure.

Each command is captured as text and, where iproute2 has it, as `-j` JSON (and `-j -p` for two,
to test line citations in pretty-printed JSON). The file names follow docs/bundle.md; SOURCE.md
in the scenario directory records the tool versions and the command behind each file.
flannel-subnet.env is the file flannel writes (rendered here with flannel's format).

Needs root, iproute2, bridge (iproute2), brctl (bridge-utils), unshare, nsenter.

    sudo python3 tests/lab_tools/make_iproute2_fixtures.py
    sudo python3 tests/lab_tools/make_iproute2_fixtures.py --out DIR
"""

from __future__ import annotations

import argparse
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "kpt-fx-"
NODE_NS = PREFIX + "node"
SCENARIO = "flannel-node"
OUT_DEFAULT = Path(__file__).resolve().parents[1] / "fixtures" / "iproute2" / SCENARIO

NODE_IP, GATEWAY_IP, GATEWAY_MAC = "192.168.56.11", "192.168.56.1", "0a:00:27:00:00:00"
NODE_IP6, GATEWAY_IP6 = "fd00:56::11", "fd00:56::1"
ETH0_MAC, CNI0_MAC, VTEP_MAC = "08:00:27:8a:41:11", "9e:41:c7:2d:80:1a", "42:9d:6e:b1:3a:05"
# Other flannel nodes: (node IP, VTEP IP, VTEP MAC, pod CIDR, node MAC)
PEERS = [
    ("192.168.56.10", "10.244.0.0", "e6:1c:a4:0f:7b:21", "10.244.0.0/24", "08:00:27:3c:5e:10"),
    ("192.168.56.12", "10.244.2.0", "5a:f0:83:27:c4:9e", "10.244.2.0/24", "08:00:27:d2:19:12"),
]
# Pods: (netns, host veth, veth MAC, pod MAC, IPv4, IPv6, hairpin)
PODS = [
    (PREFIX + "pod-a", "veth44184a66", "52:32:f1:e1:c7:ae", "da:ef:07:04:db:cc", "10.244.1.5", "fd00:244:1::5", "on"),
    (PREFIX + "pod-b", "vethaa5fcf1f", "3e:28:7b:66:6c:6e", "8e:3a:4b:12:52:7f", "10.244.1.9", "fd00:244:1::9", "on"),
    (PREFIX + "pod-c", "veth3a7a0273", "5e:55:4b:b3:df:14", "06:6a:93:a1:64:b2", "10.244.1.12", "fd00:244:1::c", "off"),
]

# The node: (command, family-neutral) in the order a node boots and its agents run.
NODE_SETUP = [
    "ip link set lo up",
    "sysctl -q -w net.ipv4.ip_forward=1",
    # forwarding makes the kernel add IPv6 subnet-router anycast routes to the local table
    "sysctl -q -w net.ipv6.conf.all.forwarding=1",
    f"ip link set eth0 address {ETH0_MAC} up",
    f"ip addr add {NODE_IP}/24 brd 192.168.56.255 dev eth0",
    f"ip addr add {NODE_IP6}/64 dev eth0 nodad",
    f"ip route add default via {GATEWAY_IP} dev eth0 proto static",
    f"ip -6 route add default via {GATEWAY_IP6} dev eth0 proto static metric 1024",
    # flannel.1, as flannel's vxlan backend creates it
    "ip link add flannel.1 index 3 type vxlan id 1 local 192.168.56.11 dev eth0 dstport 8472 nolearning",
    f"ip link set flannel.1 address {VTEP_MAC} mtu 1450 up",
    "ip addr add 10.244.1.0/32 dev flannel.1",
    # cni0, as the CNI bridge plugin creates it
    "ip link add cni0 index 4 type bridge",
    f"ip link set cni0 address {CNI0_MAC} mtu 1450 up",
    "ip addr add 10.244.1.1/24 brd 10.244.1.255 dev cni0",
    "ip addr add fd00:244:1::1/64 dev cni0 nodad",
]
POLICY = [
    # kube-proxy/flannel-style mark rule plus one of each selector and action
    "ip rule add fwmark 0x4000/0x4000 lookup 100 pref 1000",
    "ip rule add from 10.244.1.0/24 to 10.96.0.0/12 iif cni0 lookup 100 pref 1001",
    "ip rule add not from 10.244.0.0/16 lookup main suppress_prefixlength 0 pref 1002",
    "ip rule add to 203.0.113.0/24 blackhole pref 1003",
    "ip rule add oif flannel.1 unreachable pref 1004",
    "ip rule add fwmark 0x1 prohibit pref 1005",
    "ip rule add iif eth0 goto 32766 pref 1006",
    "ip rule add ipproto tcp dport 8080 lookup 100 pref 1007",
    "ip -6 rule add fwmark 0x4000/0x4000 lookup 100 pref 1000",
    "ip -6 rule add from fd00:244:1::/64 lookup 100 pref 1001",
]
TABLE_100 = [
    f"ip route add default via {GATEWAY_IP} dev eth0 table 100",
    "ip route add blackhole 10.99.0.0/16 table 100",
    "ip route add unreachable 10.98.0.0/16 table 100",
    "ip route add prohibit 10.97.0.0/16 table 100",
    "ip route add throw 10.96.0.0/12 table 100",
    ("ip route add 172.16.0.0/16 table 100 proto static"
     " nexthop via 192.168.56.21 dev eth0 weight 1 nexthop via 192.168.56.22 dev eth0 weight 3"),
    "ip -6 route add blackhole fd00:99::/64 table 100",
    ("ip -6 route add fd00:98::/64 table 100"
     f" nexthop via {GATEWAY_IP6} dev eth0 weight 1 nexthop via fd00:56::2 dev eth0 weight 2"),
]
MAIN_EXTRA = [
    f"ip route add 198.51.100.0/24 via 192.168.56.30 dev eth0 proto static metric 100 mtu 1400 src {NODE_IP}",
    "ip nexthop add id 10 via 192.168.56.40 dev eth0",
    "ip route add 198.18.0.0/15 nhid 10",
    # down0/down1: a veth pair whose far end is down, so routes over down0 are `linkdown`;
    # then a multipath nexthop over down2 whose device goes down becomes `dead linkdown`.
    "ip link add down0 index 20 type veth peer name down1 index 21",
    "ip link set down0 address 02:00:00:00:00:20 up",
    "ip link set down1 address 02:00:00:00:00:21",
    "ip addr add 10.250.0.1/24 dev down0",
    "ip link add down2 index 22 type veth peer name down3 index 23",
    "ip link set down2 address 02:00:00:00:00:22 up",
    "ip link set down3 address 02:00:00:00:00:23 up",
    "ip addr add 10.251.0.1/24 dev down2",
    "ip route add 10.252.0.0/16 nexthop via 10.251.0.2 dev down2 nexthop via 192.168.56.23 dev eth0",
    "ip link set down2 down",
]


def run(cmd: list[str], *, check: bool = True) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


class NetNS:
    def __init__(self, name: str) -> None:
        self.name = name
        run(["ip", "netns", "add", name])

    def sh(self, line: str) -> str:
        return run(["ip", "netns", "exec", self.name, *shlex.split(line)])

    def delete(self) -> None:
        run(["ip", "netns", "del", self.name], check=False)


class AnonNS:
    """A namespace without a name, held by a sleep: the node shows its peer as `link-netnsid N`."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
        time.sleep(0.3)
        self.pid = self.proc.pid

    def sh(self, line: str) -> str:
        return run(["nsenter", "-t", str(self.pid), "-n", *shlex.split(line)])

    def delete(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def build(node: NetNS, lan: AnonNS, pods: list[NetNS]) -> None:
    node.sh(f"ip link add eth0 index 2 type veth peer name lan0 netns {lan.pid}")
    # No link-local address on the far ends: they would send neighbour discovery, and entries learned
    # between the text and the JSON capture would make the two disagree.
    lan.sh("ip link set lan0 address 0a:00:27:00:00:00 addrgenmode none up")
    lan.sh(f"ip addr add {GATEWAY_IP}/24 dev lan0")
    for line in NODE_SETUP:
        node.sh(line)
    for i, (pns, (ns_name, veth, veth_mac, mac, ip4, ip6, hairpin)) in enumerate(zip(pods, PODS, strict=True)):
        pns.sh("ip link set lo up")
        node.sh(f"ip link add {veth} index {5 + i} type veth peer name eth0 index 2 netns {ns_name}")
        node.sh(f"ip link set {veth} address {veth_mac} mtu 1450 master cni0")
        node.sh(f"bridge link set dev {veth} hairpin {hairpin}")
        node.sh(f"ip link set {veth} up")
        pns.sh(f"ip link set eth0 address {mac} mtu 1450 addrgenmode none up")
        pns.sh(f"ip addr add {ip4}/24 brd 10.244.1.255 dev eth0")
        pns.sh(f"ip addr add {ip6}/64 dev eth0 nodad")
        pns.sh("ip route add default via 10.244.1.1 dev eth0")
    for node_ip, vtep_ip, vtep_mac, pod_cidr, node_mac in PEERS:
        # flannel's vxlan backend: route onlink via the VTEP address, a permanent ARP entry, an fdb entry
        node.sh(f"ip route add {pod_cidr} via {vtep_ip} dev flannel.1 onlink")
        node.sh(f"ip neigh add {vtep_ip} lladdr {vtep_mac} dev flannel.1 nud permanent")
        node.sh(f"bridge fdb append {vtep_mac} dev flannel.1 dst {node_ip}")
        node.sh(f"ip neigh add {node_ip} lladdr {node_mac} dev eth0 nud stale")
    node.sh("ip -6 route add fd00:244:2::/64 via fd00:244:2:: dev flannel.1 onlink")
    for line in POLICY + TABLE_100 + MAIN_EXTRA:
        node.sh(line)
    time.sleep(2.5)  # DAD: the node's link-local addresses (and their anycast routes) are then final
    node.sh(f"ip neigh add {GATEWAY_IP} lladdr {GATEWAY_MAC} dev eth0 nud reachable")
    node.sh(f"ip -6 neigh add {GATEWAY_IP6} lladdr {GATEWAY_MAC} dev eth0 router nud stale")
    node.sh("ip neigh add 10.250.0.9 lladdr 02:00:00:00:00:21 dev down0 nud noarp")
    for _, veth, _, mac, ip4, ip6, _ in PODS:
        node.sh(f"ip neigh add {ip4} lladdr {mac} dev cni0 nud reachable")
        node.sh(f"ip -6 neigh add {ip6} lladdr {mac} dev cni0 nud stale")
        node.sh(f"bridge fdb replace {mac} dev {veth} master dynamic")


# (file, command, what SOURCE.md says about it)
CAPTURES: list[tuple[str, str]] = [
    ("ip-route.txt", "ip route show table all"),
    ("ip-route.json", "ip -j route show table all"),
    ("ip-route.pretty.json", "ip -j -p route show table all"),
    ("ip-r.txt", "ip r"),
    ("ip-6-route.txt", "ip -6 route show table all"),
    ("ip-6-route.json", "ip -6 -j route show table all"),
    ("ip-rule.txt", "ip rule"),
    ("ip-rule.json", "ip -j rule"),
    ("ip-6-rule.txt", "ip -6 rule"),
    ("ip-6-rule.json", "ip -6 -j rule"),
    ("ip-link.txt", "ip -d link"),
    ("ip-link.json", "ip -j -d link"),
    ("ip-link.pretty.json", "ip -j -p -d link"),
    ("ip-link-plain.txt", "ip link"),
    ("ip-neigh.txt", "ip neigh"),
    ("ip-neigh.json", "ip -j neigh"),
    ("bridge-fdb.txt", "bridge fdb show"),
    ("bridge-fdb.json", "bridge -j fdb show"),
    ("bridge-link.txt", "bridge -d link show"),
    ("bridge-link.json", "bridge -j -d link show"),
    ("bridge-link-plain.txt", "bridge link show"),
    ("brctl-show.txt", "brctl show"),
    ("brctl-showmacs-cni0.txt", "brctl showmacs cni0"),
]

FLANNEL_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


def capture(node: NetNS, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, cmd in CAPTURES:
        text = node.sh(cmd)
        if not text.endswith("\n"):
            text += "\n"
        (out / name).write_text(text)
    (out / "flannel-subnet.env").write_text(FLANNEL_ENV)
    versions = {
        "ip": run(["ip", "-V"]).strip(),
        "bridge": run(["bridge", "-V"]).strip(),
        "brctl": run(["brctl", "--version"], check=False).strip() or "brctl (bridge-utils)",
        "kernel": platform.release(),
    }
    lines = [
        f"# {SCENARIO}",
        "",
        "Real output captured in network namespaces by `tests/lab_tools/make_iproute2_fixtures.py`",
        "(see its docstring for the topology). Do not edit by hand; rerun the script.",
        "",
        *(f"- {k}: {v}" for k, v in versions.items()),
        "",
        "| file | command (run inside the node namespace) |",
        "|---|---|",
        *(f"| {name} | `{cmd}` |" for name, cmd in CAPTURES),
        "| flannel-subnet.env | written by the script in flannel's format (flanneld writes it) |",
        "",
    ]
    (out / "SOURCE.md").write_text("\n".join(lines))


def cleanup_stale() -> None:
    for line in run(["ip", "netns", "list"]).splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            run(["ip", "netns", "del", name], check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = ap.parse_args()
    cleanup_stale()  # names are fixed (they appear in the output); a crashed run may have left them
    made: list[NetNS | AnonNS] = []
    try:
        lan = AnonNS()
        made.append(lan)
        node = NetNS(NODE_NS)
        made.append(node)
        pods = [NetNS(p[0]) for p in PODS]
        made.extend(pods)
        build(node, lan, pods)
        capture(node, args.out)
    finally:
        for ns in reversed(made):
            ns.delete()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
