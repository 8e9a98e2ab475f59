"""Routing and the link layer on the demo cluster and variations of it (issue 3)."""

from __future__ import annotations

import json
import shutil
from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace.load import demo_path, load_cluster
from kptrace.model.flow import Flow
from kptrace.model.trace import Disposition, Trace
from kptrace.render.jsonout import trace_json
from kptrace.walkers.netfilter import trace_flow


@pytest.fixture()
def cluster_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cluster"
    shutil.copytree(demo_path(), d)
    return d


def trace(root: Path, src: str, dst: str, dport: int | None = 80, proto: str = "tcp", in_iface: str | None = None) -> Trace:
    nodes = load_cluster([root])
    start = next((n for n in nodes if ip_address(src) in n.local_addresses()), None)
    if start is None:
        start = next((n for n in nodes if n.pod_subnet and ip_address(src) in n.pod_subnet), nodes[0])
    return trace_flow(start, Flow(ip_address(src), ip_address(dst), proto, None, dport, in_iface), nodes)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_remote_endpoint_crosses_vxlan_to_node_b(cluster_dir: Path) -> None:
    t = trace(cluster_dir, "10.244.1.5", "10.96.0.10", 53, "udp")
    remote = next(b for b in t.branches if b.dnat == "10.244.2.7:53")
    assert remote.disposition == Disposition.FORWARDED
    assert remote.egress is not None and remote.egress.iface == "cni0" and remote.egress.node == "node-b"
    texts = [s.text for s in remote.steps]
    assert any("encapsulated to 192.168.56.12, node node-b" in x for x in texts)
    assert any(s.node == "node-b" and s.hook == "FORWARD" for s in remote.steps)
    local = next(b for b in t.branches if b.dnat == "10.244.1.9:53")
    assert local.egress is not None and local.egress.node == "node-a"
    assert any("port vethaa5fcf1f" in s.text for s in local.steps)


def test_node_to_cluster_ip_without_default_route_fails_before_dnat(cluster_dir: Path) -> None:
    edit(cluster_dir / "node-a" / "ip-route.txt", "default via 192.168.56.1 dev eth0 proto static \n", "")
    (cluster_dir / "node-a" / "ip-route.json").unlink()
    t = trace(cluster_dir, "192.168.56.11", "10.96.12.34", 80)
    assert t.disposition == Disposition.NO_ROUTE
    # k8s issue 110659: the socket gets ENETUNREACH, nat OUTPUT (and its DNAT) never runs.
    assert not any(s.hook == "OUTPUT" for s in t.branches[0].steps)


def test_text_and_json_dumps_give_the_same_trace(cluster_dir: Path, tmp_path: Path) -> None:
    only_text = tmp_path / "text"
    only_json = tmp_path / "json"
    for target, drop in ((only_text, ".json"), (only_json, ".txt")):
        shutil.copytree(cluster_dir, target)
        for node in ("node-a", "node-b"):
            for f in (target / node).iterdir():
                twin = f.with_suffix(".json" if f.suffix == ".txt" else ".txt")
                if f.suffix == drop and twin.exists():
                    f.unlink()
    a = trace_json(trace(only_text, "10.244.1.5", "10.96.0.10", 53, "udp"))
    b = trace_json(trace(only_json, "10.244.1.5", "10.96.0.10", 53, "udp"))
    for doc in (a, b):
        doc["inputs"] = []
        for br in doc["branches"]:
            for s in br["steps"] + (br["reply"]["steps"] if br["reply"] else []):
                s["source"] = s["source"].split(":")[0].rsplit(".", 1)[0] if s["source"] else None
                if s["hook"] in ("routing", "link"):
                    s["text"] = s["text"]
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_missing_vxlan_neighbour_is_a_named_stop(cluster_dir: Path) -> None:
    neigh = cluster_dir / "node-a" / "ip-neigh.txt"
    neigh.write_text("".join(line for line in neigh.read_text().splitlines(keepends=True) if not line.startswith("10.244.2.0 ")))
    t = trace(cluster_dir, "10.244.1.5", "10.244.2.15", 8080)
    assert t.disposition == Disposition.DROPPED
    assert "no neighbour entry for next hop 10.244.2.0 on flannel.1" in t.branches[0].steps[-1].text


def test_ip_forward_off_and_per_interface_forwarding(cluster_dir: Path) -> None:
    edit(cluster_dir / "node-a" / "sysctl.txt", "net.ipv4.conf.cni0.forwarding = 1", "net.ipv4.conf.cni0.forwarding = 0")
    t = trace(cluster_dir, "10.244.1.5", "10.244.2.15", 8080)
    assert t.disposition == Disposition.DROPPED
    assert t.branches[0].steps[-1].source == "node-a/sysctl.txt:5"


def test_strict_rp_filter_drops_asymmetric_source(cluster_dir: Path) -> None:
    # 203.0.113.7 is routed back via eth0 (default route); arriving on cni0 it fails strict rp_filter.
    edit(cluster_dir / "node-a" / "sysctl.txt", "net.ipv4.conf.cni0.rp_filter = 2", "net.ipv4.conf.cni0.rp_filter = 1")
    edit(cluster_dir / "node-a" / "sysctl.txt", "net.ipv4.conf.all.rp_filter = 2", "net.ipv4.conf.all.rp_filter = 0")
    t = trace(cluster_dir, "203.0.113.7", "10.244.1.12", 8080, in_iface="cni0")
    assert t.disposition == Disposition.DROPPED and "rp_filter=1" in t.branches[0].steps[-1].text
    ok = trace(cluster_dir, "203.0.113.7", "10.244.1.12", 8080, in_iface="eth0")
    assert ok.disposition == Disposition.FORWARDED


@pytest.mark.parametrize(("kind", "disposition"), [("blackhole", Disposition.DROPPED), ("unreachable", Disposition.NO_ROUTE),
                                                    ("prohibit", Disposition.REJECTED)])
def test_failing_route_types(cluster_dir: Path, kind: str, disposition: Disposition) -> None:
    (cluster_dir / "node-a" / "ip-route.json").unlink()
    with (cluster_dir / "node-a" / "ip-route.txt").open("a") as f:
        f.write(f"{kind} 10.244.2.15\n")
    t = trace(cluster_dir, "10.244.1.5", "10.244.2.15", 8080)
    assert t.disposition == disposition
    assert t.branches[0].steps[-1].source is not None and "ip-route.txt" in t.branches[0].steps[-1].source


def test_policy_rule_and_ecmp_weights(cluster_dir: Path) -> None:
    (cluster_dir / "node-a" / "ip-route.json").unlink()
    (cluster_dir / "node-a" / "ip-rule.json").unlink(missing_ok=True)
    with (cluster_dir / "node-a" / "ip-route.txt").open("a") as f:
        f.write("198.51.100.0/24 table 100 \n\tnexthop via 192.168.56.1 dev eth0 weight 1 \n\tnexthop via 192.168.56.2 dev eth0 weight 3 \n")
    edit(cluster_dir / "node-a" / "ip-rule.txt", "32766:", "100:\tfrom 10.244.1.5 lookup 100\n32766:")
    t = trace(cluster_dir, "10.244.1.5", "198.51.100.9", 443)
    shares = sorted(round(b.probability, 3) for b in t.branches)
    assert shares == [0.25, 0.75]
    assert {b.egress.next_hop for b in t.branches if b.egress} == {"192.168.56.1", "192.168.56.2"}


def test_hairpin_off_drops_pod_calling_itself(cluster_dir: Path) -> None:
    link = cluster_dir / "node-a" / "bridge-link.txt"
    text = link.read_text()
    # `bridge -d link show` adds the port flags on a second line; hairpin off on the web pod's port.
    lines = []
    for ln in text.splitlines():
        lines.append(ln)
        lines.append(f"    hairpin {'off' if 'veth3a7a0273' in ln else 'on'} guard off learning on flood on")
    link.write_text("\n".join(lines) + "\n")
    (cluster_dir / "node-a" / "bridge-link.json").unlink(missing_ok=True)
    t = trace(cluster_dir, "10.244.1.12", "10.96.12.34", 80)
    self_branch = next(b for b in t.branches if b.dnat == "10.244.1.12:8080")
    assert self_branch.disposition == Disposition.DROPPED
    assert "hairpin" in self_branch.steps[-1].text


def test_replies_are_un_natted_on_the_healthy_demo(cluster_dir: Path) -> None:
    t = trace(cluster_dir, "10.244.1.5", "10.96.0.10", 53, "udp")
    for b in t.branches:
        assert b.reply is not None and b.reply.problem is None
        assert b.reply.disposition == Disposition.FORWARDED
        assert any(s.action == "UN-DNAT" and "10.96.0.10:53" in s.text for s in b.reply.steps)


def test_bridge_nf_call_iptables_off_breaks_same_node_replies(cluster_dir: Path) -> None:
    # KPT101: the endpoint answers the client directly over cni0; without br_netfilter conntrack
    # never sees that frame, so the source is never turned back into the Service address.
    edit(cluster_dir / "node-a" / "sysctl.txt", "net.bridge.bridge-nf-call-iptables = 1", "net.bridge.bridge-nf-call-iptables = 0")
    t = trace(cluster_dir, "10.244.1.5", "10.96.0.10", 53, "udp")
    local = next(b for b in t.branches if b.dnat == "10.244.1.9:53")
    assert local.disposition == Disposition.FORWARDED  # the request does arrive
    assert local.reply is not None and local.reply.problem is not None
    assert "from 10.244.1.9:53 but the client sent to 10.96.0.10:53" in local.reply.problem
    assert any(s.action == "BRIDGE" and "iptables never sees it" in s.text for s in local.reply.steps)
    remote = next(b for b in t.branches if b.dnat == "10.244.2.7:53")
    assert remote.reply is not None and remote.reply.problem is None  # routed back through flannel.1: un-NATed


def test_pod_to_pod_same_bridge_is_switched(cluster_dir: Path) -> None:
    t = trace(cluster_dir, "10.244.1.5", "10.244.1.9", 53, "udp")
    assert t.disposition == Disposition.FORWARDED
    assert t.branches[0].steps[0].action == "BRIDGE"
    assert any(s.hook == "FORWARD" for s in t.branches[0].steps)  # br_netfilter on: iptables FORWARD sees it
    edit(cluster_dir / "node-a" / "sysctl.txt", "net.bridge.bridge-nf-call-iptables = 1", "net.bridge.bridge-nf-call-iptables = 0")
    t = trace(cluster_dir, "10.244.1.5", "10.244.1.9", 53, "udp")
    assert not any(s.hook == "FORWARD" for s in t.branches[0].steps)


def test_pod_mtu_larger_than_overlay_is_reported(cluster_dir: Path) -> None:
    (cluster_dir / "node-a" / "ip-link.json").unlink()
    link = cluster_dir / "node-a" / "ip-link.txt"
    text = link.read_text()
    i = text.index("cni0: <")
    j = text.index("mtu 1450", i)
    link.write_text(text[:j] + "mtu 1500" + text[j + 8:])
    t = trace(cluster_dir, "10.244.1.5", "10.244.2.15", 8080)
    assert any(s.text.startswith("MTU: cni0 has mtu 1500 but flannel.1 only 1450") for s in t.branches[0].steps)
