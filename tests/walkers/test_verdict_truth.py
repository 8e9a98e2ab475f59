"""Issue 16: the packets kptrace got wrong on a complete bundle, and packets after the first.

Each case is a variation of the demo cluster (node-a, node-b, flannel VXLAN) or the IPVS demo node;
the kernel lab (tests/kernel/test_kernel_verdicts.py) holds the same behaviours to the real kernel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from kptrace.cli.why import choose_start, exit_code
from kptrace.load import demo_path, load_cluster, load_node
from kptrace.model.flow import Flow
from kptrace.model.node import Node
from kptrace.model.trace import Disposition, Trace
from kptrace.render.jsonout import trace_json
from kptrace.walkers.conntrack import stale_service_entries
from kptrace.walkers.netfilter import trace_flow

SERVICE_CIDR = (ip_network("10.96.0.0/12"),)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cluster_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cluster"
    shutil.copytree(demo_path(), d)
    return d


def trace(root: Path, src: str, dst: str, dport: int | None = 80, proto: str = "tcp", *, sport: int | None = None,
          in_iface: str | None = None, state: str = "new", mark: int = 0, cidrs: tuple = ()) -> Trace:
    nodes = load_cluster([root])
    start, notes = choose_start(nodes, ip_address(src), ip_address(dst), None)
    flow = Flow(ip_address(src), ip_address(dst), proto, sport, dport, in_iface, state, mark)
    return trace_flow(start, flow, nodes, tuple(notes), cidrs)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def actions(t: Trace, n: int = 0) -> list[str]:
    return [s.action for s in t.branches[n].steps]


# --- 2. A Service address nobody owns ----------------------------------------------------------------

def test_unallocated_cluster_ip_is_no_service(cluster_dir: Path) -> None:
    t = trace(cluster_dir, "10.244.1.5", "10.96.99.99", 80, cidrs=SERVICE_CIDR)
    assert t.disposition == Disposition.NO_SERVICE and exit_code(t) == 1
    b = t.branches[0]
    assert b.reply is None and b.dnat is None
    assert b.egress is not None and b.egress.iface == "eth0"
    last = b.steps[-1]
    assert last.action == "NO_SERVICE" and "Service range 10.96.0.0/12" in last.text and "no reply" in last.text
    doc = trace_json(t)
    assert doc["disposition"] == "NO_SERVICE" and doc["branches"][0]["reply"] is None


def test_cluster_ip_on_a_port_it_does_not_have(cluster_dir: Path) -> None:
    """No Service range needed: kube-proxy's rules name 10.96.0.10's ports, and 80 is not one."""
    t = trace(cluster_dir, "10.244.1.5", "10.96.0.10", 80)
    assert t.disposition == Disposition.NO_SERVICE
    text = t.branches[0].steps[-1].text
    assert "kube-system/kube-dns:dns" in text and "53/udp" in text and "9153/tcp" in text


def test_service_port_and_outside_range_are_unchanged(cluster_dir: Path) -> None:
    assert trace(cluster_dir, "10.244.1.5", "10.96.0.10", 53, "udp", cidrs=SERVICE_CIDR).disposition == Disposition.FORWARDED
    # An address outside the Service range, untranslated, is an ordinary forwarded packet.
    assert trace(cluster_dir, "10.244.1.5", "8.8.8.8", 53, "udp", cidrs=SERVICE_CIDR).disposition == Disposition.FORWARDED


def test_why_cli_no_service_first_line_and_exit() -> None:
    p = subprocess.run([sys.executable, "-m", "kptrace", "why", "10.96.99.99:80", "--from", "10.244.1.5", "--demo",
                        "--service-cidr", "10.96.0.0/12", "--no-checks"], capture_output=True, text=True, timeout=60,
                       cwd=REPO, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 1, p.stderr
    first = p.stdout.splitlines()[0]
    assert "NO_SERVICE" in first and "no Service has it" in first and "reply FORWARDED" not in p.stdout


def test_demo_node_yaml_service_range() -> None:
    """node.yaml's service_cidr, once the loader keeps it on the Node (Node.service_cidrs)."""
    if "service_cidrs" not in Node.__dataclass_fields__:
        pytest.skip("Node.service_cidrs (node.yaml service_cidr) is not loaded yet: --service-cidr only")
    t = trace(demo_path(), "10.244.1.5", "10.96.99.99", 80)
    assert t.disposition == Disposition.NO_SERVICE


# --- 7. Broadcast, multicast and martians ------------------------------------------------------------

@pytest.mark.parametrize("dst", ["255.255.255.255", "224.0.0.1"])
def test_pod_broadcast_and_all_hosts_are_delivered_locally(cluster_dir: Path, dst: str) -> None:
    t = trace(cluster_dir, "10.244.1.5", dst, 67, "udp")
    assert t.disposition == Disposition.DELIVERED
    b = t.branches[0]
    assert not any(s.hook == "FORWARD" for s in b.steps) and b.reply is None
    assert any(s.hook == "routing" and "deliver" in s.text for s in b.steps)


def test_other_multicast_group_is_undetermined(cluster_dir: Path) -> None:
    t = trace(cluster_dir, "10.244.1.5", "239.1.2.3", 5000, "udp")
    assert t.disposition == Disposition.UNDETERMINED and "ip maddr" in t.branches[0].unknowns[0]


@pytest.mark.parametrize(("src", "dst", "word"), [
    ("10.244.1.5", "0.0.0.0", "martian destination"),
    ("224.0.0.5", "10.96.0.10", "martian source"),
    ("255.255.255.255", "10.96.0.10", "martian source"),
    ("0.0.0.0", "10.96.0.10", "martian source"),
])
def test_martians_are_dropped(cluster_dir: Path, src: str, dst: str, word: str) -> None:
    t = trace(cluster_dir, src, dst, 53, "udp", in_iface="eth0")
    assert t.disposition == Disposition.DROPPED
    assert all(word in b.steps[-1].text and not any(s.hook == "FORWARD" for s in b.steps) for b in t.branches)


def test_dhcp_discover_from_zero_is_delivered(cluster_dir: Path) -> None:
    assert trace(cluster_dir, "0.0.0.0", "255.255.255.255", 67, "udp", in_iface="cni0").disposition == Disposition.DELIVERED


def test_node_broadcast_leaves_without_gateway(cluster_dir: Path) -> None:
    t = trace(cluster_dir, "192.168.56.11", "255.255.255.255", 67, "udp")
    b = t.branches[0]
    assert b.disposition == Disposition.FORWARDED and b.egress is not None
    assert (b.egress.iface, b.egress.next_hop) == ("eth0", None) and b.reply is None


# --- 1. Hairpin to oneself ----------------------------------------------------------------------------

def _hairpin_bundle(cluster_dir: Path, mode: str) -> Path:
    node = cluster_dir / "node-a"
    lines = [ln for ln in (node / "bridge-link.txt").read_text().splitlines() if ln.strip()]
    (node / "bridge-link.txt").write_text("".join(f"{ln.rstrip()} hairpin {mode}\n" for ln in lines))
    # No neighbour entry for the pod itself: the port is still the one its frame came in by.
    neigh = node / "ip-neigh.txt"
    neigh.write_text("".join(ln + "\n" for ln in neigh.read_text().splitlines() if not ln.startswith("10.244.1.9 ")))
    return cluster_dir


def test_hairpin_off_without_neighbour_entry_drops_before_forward(cluster_dir: Path) -> None:
    t = trace(_hairpin_bundle(cluster_dir, "off"), "10.244.1.9", "10.96.0.10", 53, "udp")
    own = next(b for b in t.branches if b.dnat == "10.244.1.9:53")
    assert own.disposition == Disposition.DROPPED
    assert "hairpin mode is off" in own.steps[-1].text and not any(s.hook == "FORWARD" for s in own.steps)
    other = next(b for b in t.branches if b.dnat == "10.244.2.7:53")
    assert other.disposition == Disposition.FORWARDED


def test_hairpin_on_without_neighbour_entry_masquerades_and_answers(cluster_dir: Path) -> None:
    t = trace(_hairpin_bundle(cluster_dir, "on"), "10.244.1.9", "10.96.0.10", 53, "udp")
    own = next(b for b in t.branches if b.dnat == "10.244.1.9:53")
    assert own.disposition == Disposition.FORWARDED and own.masquerade
    assert any(s.action == "BRIDGE" and "hairpin" in s.text for s in own.steps)
    assert own.reply is not None and own.reply.problem is None


def test_hairpin_needs_no_mode_without_br_netfilter(cluster_dir: Path) -> None:
    _hairpin_bundle(cluster_dir, "off")
    edit(cluster_dir / "node-a" / "sysctl.txt", "net.bridge.bridge-nf-call-iptables = 1", "net.bridge.bridge-nf-call-iptables = 0")
    t = trace(cluster_dir, "10.244.1.9", "10.96.0.10", 53, "udp")
    own = next(b for b in t.branches if b.dnat == "10.244.1.9:53")
    assert own.disposition == Disposition.FORWARDED


# --- 4. Where an outside client's packet enters ------------------------------------------------------

def test_external_client_starts_on_the_node_owning_the_destination() -> None:
    nodes = load_cluster([demo_path()])
    node, notes = choose_start(nodes, ip_address("203.0.113.7"), ip_address("192.168.56.12"), None)
    assert node.name == "node-b" and "owns 192.168.56.12" in notes[0]
    node, notes = choose_start(nodes, ip_address("192.168.56.1"), ip_address("10.96.0.10"), None)
    assert node.name == "node-a" and "on its subnet" not in notes[0]  # both nodes share it: the first, said
    t = trace(demo_path(), "203.0.113.7", "192.168.56.12", 30080)
    assert not any(s.action == "ARRIVE" and s.node == "node-b" and "from node-a" in s.text for b in t.branches for s in b.steps)
    assert all(b.steps[0].node in (None, "node-b") for b in t.branches)


# --- 3. IPVS: a real server on the node itself -------------------------------------------------------

def test_ipvs_local_real_server_from_the_node(tmp_path: Path) -> None:
    d = tmp_path / "ipvs-node"
    shutil.copytree(demo_path().parent / "ipvs-node", d)
    edit(d / "ipvsadm.txt", "192.168.56.10:6443 ", "192.168.56.11:6443 ")
    node = load_node([d])
    t = trace_flow(node, Flow(ip_address("192.168.56.11"), ip_address("10.96.0.1"), "tcp", None, 443))
    b = t.branches[0]
    assert b.disposition == Disposition.DELIVERED and b.dnat == "192.168.56.11:6443" and b.masquerade
    hooks = [s.hook for s in b.steps]
    assert hooks.index("IPVS") < hooks.index("POSTROUTING")
    assert any(s.action == "MASQUERADE" for s in b.steps)
    assert any("looped back through lo" in s.text for s in b.steps) and b.steps[-1].hook == "INPUT"


# --- 5. Connection state and the conntrack table ----------------------------------------------------

CONNTRACK = """\
udp      17 29 src=10.244.1.5 dst=10.96.0.10 sport=41000 dport=53 [UNREPLIED] src=10.96.0.10 dst=10.244.1.5 sport=53 dport=41000 mark=0 use=1
udp      17 29 src=10.244.1.5 dst=10.96.0.10 sport=41001 dport=53 src=10.244.1.9 dst=10.244.1.5 sport=53 dport=41001 mark=0 use=1
tcp      6 86390 ESTABLISHED src=10.244.1.5 dst=10.96.0.10 sport=41002 dport=53 src=10.244.1.9 dst=10.244.1.5 sport=53 dport=41002 [ASSURED] mark=0 use=1
"""


def test_stale_udp_entry_keeps_the_packet_untranslated(cluster_dir: Path) -> None:
    (cluster_dir / "node-a" / "conntrack.txt").write_text(CONNTRACK)
    t = trace(cluster_dir, "10.244.1.5", "10.96.0.10", 53, "udp", sport=41000)
    assert t.disposition == Disposition.NO_SERVICE and not t.endpoints
    b = t.branches[0]
    assert b.steps[0].action == "CONNTRACK" and "conntrack.txt:1" in (b.steps[0].source or "")
    assert any(s.action == "CONNTRACK" and "sets up no translation" in s.text for s in b.steps)
    assert "conntrack -D -p udp --orig-src 10.244.1.5 --orig-dst 10.96.0.10 --orig-port-src 41000" in b.steps[-1].text


def test_established_entry_follows_its_dnat(cluster_dir: Path) -> None:
    (cluster_dir / "node-a" / "conntrack.txt").write_text(CONNTRACK)
    t = trace(cluster_dir, "10.244.1.5", "10.96.0.10", 53, "udp", sport=41001)
    assert t.endpoints == ["10.244.1.9:53"] and t.disposition == Disposition.FORWARDED
    b = t.branches[0]
    assert any(s.action == "SKIP" and "ESTABLISHED" in s.text for s in b.steps)
    assert any("KUBE-FORWARD" in s.text and "RELATED,ESTABLISHED" in s.text for s in b.steps if s.action == "ACCEPT")


def test_reply_tuple_is_the_answer(cluster_dir: Path) -> None:
    (cluster_dir / "node-a" / "conntrack.txt").write_text(CONNTRACK)
    t = trace(cluster_dir, "10.244.1.9", "10.244.1.5", 41001, "udp", sport=53, in_iface="cni0")
    b = t.branches[0]
    assert "its reply" in b.steps[0].text
    assert any(s.action == "UN-DNAT" for s in b.steps)


def test_state_established_without_entry(cluster_dir: Path) -> None:
    t = trace(cluster_dir, "10.244.1.5", "10.96.0.10", 53, "udp", state="established")
    assert any("later packet" in a for a in t.assumptions)
    assert all(any("RELATED,ESTABLISHED" in s.text and s.action == "ACCEPT" for s in b.steps) for b in t.branches)


def test_mark_is_the_starting_mark(cluster_dir: Path) -> None:
    t = trace(cluster_dir, "10.244.1.5", "10.96.0.10", 53, "udp", mark=0x4000)
    assert all(b.masquerade for b in t.branches) and t.flow.mark == 0x4000
    assert trace_json(t)["flow"]["mark"] == 0x4000


def test_stale_service_entries(cluster_dir: Path) -> None:
    (cluster_dir / "node-a" / "conntrack.txt").write_text(CONNTRACK)
    node = next(n for n in load_cluster([cluster_dir]) if n.name == "node-a")
    stale = stale_service_entries(node)
    assert [s.entry.original.sport for s in stale] == [41000]
    s = stale[0]
    assert s.command == "conntrack -D -p udp --orig-src 10.244.1.5 --orig-dst 10.96.0.10 --orig-port-src 41000 --orig-port-dst 53"
    assert s.service == "kube-system/kube-dns:dns" and s.rule and s.source and s.source.endswith("conntrack.txt:1")
    assert stale_service_entries(next(n for n in load_cluster([demo_path()]) if n.name == "node-a")) == []


# --- 6. The overlay's own packet -----------------------------------------------------------------

def test_vxlan_packet_passes_both_nodes(cluster_dir: Path) -> None:
    t = trace(cluster_dir, "10.244.1.5", "10.244.2.7", 53, "udp")
    b = t.branches[0]
    assert b.disposition == Disposition.FORWARDED
    enc = [s for s in b.steps if s.encapsulated]
    assert enc[0].action == "ENCAP" and enc[-1].action == "DECAP"
    assert {(s.node, s.hook) for s in enc} >= {("node-a", "POSTROUTING"), ("node-b", "PREROUTING")}
    assert trace_json(t)["branches"][0]["steps"][[s.action for s in b.steps].index("ENCAP")]["encapsulated"] is True


@pytest.mark.parametrize(("node", "chain"), [("node-b", "INPUT"), ("node-a", "OUTPUT")])
def test_vxlan_packet_dropped_on_the_underlay(cluster_dir: Path, node: str, chain: str) -> None:
    rs = cluster_dir / node / "iptables-save.txt"
    text = rs.read_text()
    marker = "*filter\n"
    head, _, tail = text.partition(marker)
    lines = tail.split("\n")
    at = next(i for i, ln in enumerate(lines) if ln.startswith("-A ") or ln == "COMMIT")
    lines.insert(at, f"-A {chain} -p udp -m udp --dport 8472 -j DROP")
    rs.write_text(head + marker + "\n".join(lines))
    t = trace(cluster_dir, "10.244.1.5", "10.244.2.7", 53, "udp")
    b = t.branches[0]
    assert b.disposition == Disposition.DROPPED and exit_code(t) == 1
    drop = next(s for s in b.steps if s.action == "DROP")
    assert drop.node == node and drop.chain == chain and drop.encapsulated
    assert b.steps[-1].action == "OVERLAY" and "flannel.1, UDP 8472" in b.steps[-1].text
    assert b.dnat is None and b.egress is None


def test_hairpin_ports_that_differ_without_neighbour_entry_are_undetermined(cluster_dir: Path) -> None:
    _hairpin_bundle(cluster_dir, "on")
    link = cluster_dir / "node-a" / "bridge-link.txt"
    lines = link.read_text().splitlines()
    lines[0] = lines[0].replace("hairpin on", "hairpin off")
    link.write_text("\n".join(lines) + "\n")
    t = trace(cluster_dir, "10.244.1.9", "10.96.0.10", 53, "udp")
    own = next(b for b in t.branches if b.dnat == "10.244.1.9:53")
    assert own.disposition == Disposition.UNDETERMINED and "differ in hairpin mode" in own.unknowns[0]


@pytest.mark.parametrize(("args", "message"), [
    (["--state", "half-open"], "--state 'half-open'"),
    (["--mark", "x"], "--mark 'x'"),
    (["--service-cidr", "10.96/x"], "--service-cidr '10.96/x'"),
])
def test_why_cli_rejects_bad_state_mark_cidr(args: list[str], message: str) -> None:
    p = subprocess.run([sys.executable, "-m", "kptrace", "why", "10.96.0.10:53", "-p", "udp", "--demo", *args],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_why_cli_state_and_mark_in_json() -> None:
    import json

    p = subprocess.run([sys.executable, "-m", "kptrace", "why", "10.96.0.10:53", "-p", "udp", "--from", "10.244.1.5",
                        "--demo", "--state", "established", "--mark", "0x4000", "-o", "json", "--no-checks"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    doc = json.loads(p.stdout)
    assert doc["flow"]["state"] == "established" and doc["flow"]["mark"] == 0x4000
    assert any("later packet" in a for a in doc["assumptions"])


def test_new_fields_validate_against_the_schema(cluster_dir: Path) -> None:
    import jsonschema

    from kptrace.render.jsonout import schema

    (cluster_dir / "node-a" / "conntrack.txt").write_text(CONNTRACK)
    docs = [trace_json(trace(cluster_dir, "10.244.1.5", "10.96.99.99", 80, cidrs=SERVICE_CIDR)),
            trace_json(trace(cluster_dir, "10.244.1.5", "10.244.2.7", 53, "udp")),
            trace_json(trace(cluster_dir, "10.244.1.5", "10.96.0.10", 53, "udp", sport=41000, mark=1))]
    for doc in docs:
        jsonschema.Draft202012Validator(schema()).validate(doc)
    assert docs[0]["disposition"] == "NO_SERVICE" and docs[2]["disposition"] == "NO_SERVICE"
