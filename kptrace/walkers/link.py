"""After POSTROUTING: which bridge port, which VXLAN peer, which node the packet really goes to.

A bridge (cni0, docker0, cbr0) hands the frame to the port that holds the destination's MAC
(neighbour entry -> fdb entry). A VXLAN device (flannel.1) resolves the next hop's MAC from its
neighbour table and the MAC's remote (underlay) address from its fdb, both programmed by flanneld;
the device is NOARP, so a missing entry means the packet is dropped, not resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kptrace.model.flow import IPAddress
from kptrace.model.node import Node
from kptrace.model.routing import FdbEntry, Link, Neighbor
from kptrace.walkers.packet import Packet, Path
from kptrace.walkers.routing import lookup


@dataclass(slots=True)
class LinkOutcome:
    steps: list[tuple[str, str | None]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    failure: str | None = None
    undetermined: bool = False
    remote_node: Node | None = None
    remote_iface: str | None = None
    remote_label: str | None = None  # the underlay address when no bundle of that node was given
    # The encapsulated packet a VXLAN device sends: (underlay destination, UDP port, underlay device, local address).
    underlay: tuple[IPAddress, int, str | None, IPAddress | None] | None = None


def _cite(obj: object) -> str | None:
    src = getattr(obj, "source", None)
    return str(src) if src is not None else None


def find_link(node: Node, name: str | None) -> Link | None:
    return next((link for link in node.links if link.name == name), None)


def ingress_iface(node: Node, src: IPAddress) -> str | None:
    """The interface a packet from src arrives on: where the route back to src points."""
    res = lookup(node, src)
    if res.kind == "unicast" and res.nexthops and res.nexthops[0].dev:
        return res.nexthops[0].dev
    return None


def snat_source(node: Node, pkt: Packet) -> IPAddress | None:
    """MASQUERADE uses the egress interface's primary address."""
    for a in node.addresses:
        if a.iface == pkt.out_iface and a.address.version == pkt.dst.version and a.scope != "link":
            return a.address.ip
    return None


def _neigh(node: Node, addr: IPAddress, dev: str) -> Neighbor | None:
    return next((n for n in node.neighbors if n.dst == addr and n.dev == dev and n.state != "FAILED"), None)


def _fdb(node: Node, mac: str, dev: str) -> list[FdbEntry]:
    mac = mac.lower()
    return [f for f in node.fdb if f.mac.lower() == mac and (f.dev == dev or f.master == dev)]


def node_owning(cluster: list[Node], addr: IPAddress, exclude: Node) -> tuple[Node | None, str | None]:
    for n in cluster:
        if n is exclude:
            continue
        for a in n.addresses:
            if a.address.ip == addr:
                return n, a.iface
        if addr in n.node_ips:
            return n, None
    return None, None


def egress(node: Node, cluster: list[Node], path: Path) -> LinkOutcome:
    pkt = path.packet
    out = LinkOutcome()
    dev = pkt.out_iface
    if dev is None:
        return out
    lk = find_link(node, dev)
    if lk is None:
        if node.links:
            out.assumptions.append(f"{dev} is not in the ip-link dump")
        return _plain(node, cluster, pkt, out, dev)
    if not lk.up:
        out.failure = f"{dev} is down ({_cite(lk) or 'ip-link'}): the packet is dropped"
        out.steps.append((out.failure, _cite(lk)))
        return out
    if lk.kind == "vxlan":
        return _vxlan(node, cluster, pkt, out, lk)
    if lk.kind == "bridge":
        return _bridge(node, pkt, out, lk)
    return _plain(node, cluster, pkt, out, dev)


def _vxlan(node: Node, cluster: list[Node], pkt: Packet, out: LinkOutcome, lk: Link) -> LinkOutcome:
    hop = pkt.next_hop or pkt.dst
    vx = lk.vxlan
    desc = f"{lk.name} is a VXLAN device" + (f" (VNI {vx.vni}, UDP {vx.dstport}, underlay {vx.dev})" if vx else "")
    out.steps.append((desc, _cite(lk)))
    if not node.neighbors:
        out.assumptions.append("no ip-neigh dump: the VXLAN peer of the next hop is not known")
        out.failure, out.undetermined = f"no ip-neigh dump: cannot tell which node {lk.name} sends {hop} to", True
        return out
    n = _neigh(node, hop, lk.name)
    if n is None or not n.lladdr:
        out.failure = (f"no neighbour entry for next hop {hop} on {lk.name}: flanneld programs one per remote node "
                       f"and the device is NOARP, so the kernel drops the packet")
        out.steps.append((out.failure, None))
        return out
    out.steps.append((f"next hop {hop} has MAC {n.lladdr}", _cite(n)))
    if not node.fdb:
        out.failure, out.undetermined = f"no bridge-fdb dump: the underlay address for MAC {n.lladdr} is not known", True
        return out
    entries = [f for f in _fdb(node, n.lladdr, lk.name) if f.dst is not None]
    if not entries:
        out.failure = f"no fdb entry with a dst for MAC {n.lladdr} on {lk.name}: the VXLAN device has nowhere to send it; dropped"
        out.steps.append((out.failure, None))
        return out
    dst = entries[0].dst
    assert dst is not None
    remote, _ = node_owning(cluster, dst, node)
    out.underlay = (dst, vx.dstport if vx else 8472, vx.dev if vx else None, vx.local if vx else None)
    if remote is None:
        out.remote_label = str(dst)
        out.steps.append((f"encapsulated to {dst} (UDP {vx.dstport if vx else 8472}); no bundle of that node in the input", _cite(entries[0])))
        return out
    _mtu_note(node, pkt, lk, out)
    rlink = next((x for x in remote.links if x.kind == "vxlan" and vx and x.vxlan and x.vxlan.vni == vx.vni), None)
    rif = rlink.name if rlink is not None else lk.name
    if rlink is not None and rlink.mac and n.lladdr and rlink.mac.lower() != n.lladdr.lower():
        # A VTEP recreated with a new MAC (flanneld restarted) while the peer still has the old one.
        out.failure = (f"{remote.name}'s {rlink.name} has MAC {rlink.mac}, but {node.name} sends to {n.lladdr}: "
                       f"{remote.name} drops the frame as not addressed to it")
        out.steps.append((out.failure, _cite(rlink)))
        return out
    out.steps.append((f"encapsulated to {dst}, node {remote.name} (UDP {vx.dstport if vx else 8472})", _cite(entries[0])))
    out.remote_node, out.remote_iface = remote, rif
    return out


def _mtu_note(node: Node, pkt: Packet, lk: Link, out: LinkOutcome) -> None:
    """A pod interface with a larger MTU than the overlay: full-size packets cannot cross it."""
    src_link = find_link(node, pkt.in_iface)
    if src_link is None or src_link.mtu is None or lk.mtu is None or src_link.mtu <= lk.mtu:
        return
    text = (f"MTU: {pkt.in_iface} has mtu {src_link.mtu} but {lk.name} only {lk.mtu}: packets over {lk.mtu} bytes "
            f"with DF set are dropped (ICMP frag-needed), large transfers stall")
    out.steps.append((text, _cite(src_link)))
    out.assumptions.append(f"the traced packet is at most {lk.mtu} bytes (smaller than {lk.name}'s MTU)")


def _bridge(node: Node, pkt: Packet, out: LinkOutcome, lk: Link) -> LinkOutcome:
    hop = pkt.next_hop or pkt.dst
    n = _neigh(node, hop, lk.name) if node.neighbors else None
    if n is None or not n.lladdr:
        out.steps.append((f"{lk.name} is a bridge; no neighbour entry for {hop}: the kernel ARPs for it on the bridge", _cite(lk)))
        return out
    ports = [f for f in _fdb(node, n.lladdr, lk.name) if f.dev != lk.name]
    if not ports:
        out.steps.append((f"{lk.name} is a bridge; {hop} is {n.lladdr} ({_cite(n)}), not in the fdb dump: the bridge floods it", _cite(lk)))
        return out
    port = ports[0].dev
    out.steps.append((f"{lk.name} is a bridge; {hop} is {n.lladdr} → port {port}", _cite(ports[0])))
    return out


def _plain(node: Node, cluster: list[Node], pkt: Packet, out: LinkOutcome, dev: str) -> LinkOutcome:
    hop = pkt.next_hop or pkt.dst
    remote, rif = node_owning(cluster, hop, node)
    if remote is None and pkt.next_hop is not None:
        return out
    if remote is None:
        remote, rif = node_owning(cluster, pkt.dst, node)
    if remote is not None:
        out.steps.append((f"next hop {hop} is node {remote.name}" + (f" ({rif})" if rif else ""), None))
        out.remote_node, out.remote_iface = remote, rif
    return out


def sender_hairpin(node: Node, bridge: str, sender: IPAddress) -> tuple[str | None, bool | None, str | None, str | None]:
    """Hairpin mode of the bridge port a sender's frames come in by: (port, hairpin, citation, why not known).

    The port comes from the sender's neighbour and fdb entries; without them, when every port of the
    bridge has the same hairpin mode, that mode is the port's whatever it is. hairpin None with no
    reason: the input shows no hairpin modes at all (the caller assumes the kubelet's default, on)."""
    ports = [b for b in node.bridge_ports if b.master == bridge]
    n = _neigh(node, sender, bridge) if node.neighbors else None
    if n is not None and n.lladdr:
        fdb = [f for f in _fdb(node, n.lladdr, bridge) if f.dev != bridge]
        if fdb:
            port = fdb[0].dev
            bp = next((b for b in ports if b.name == port), None)
            if bp is not None and bp.hairpin is not None:
                return port, bp.hairpin, _cite(bp), None
            known = {b.hairpin for b in ports if b.hairpin is not None}
            if not known:
                return port, None, _cite(fdb[0]), None
            return port, None, _cite(fdb[0]), f"hairpin mode of {port} is not in the bridge-link dump"
    modes = {b.hairpin for b in ports}
    if not ports or modes == {None}:
        return None, None, None, None
    if len(modes) == 1:
        return (ports[0].name if len(ports) == 1 else None), next(iter(modes)), _cite(ports[0]), None
    return None, None, None, (f"the ports of {bridge} differ in hairpin mode and no neighbour/fdb entry says which "
                              f"one {sender} is behind")


def is_bridge(node: Node, iface: str | None) -> bool:
    lk = find_link(node, iface)
    return lk is not None and lk.kind == "bridge"


def bridged(node: Node, in_iface: str | None, src: IPAddress, dst: IPAddress) -> bool:
    """A host on the bridge's subnet talks to another one directly (ARP, its MAC): the bridge switches
    the frame, the node does not route it."""
    if in_iface is None or not is_bridge(node, in_iface):
        return False
    for a in node.addresses:
        net = a.address.network
        if a.iface == in_iface and net.version == dst.version and dst in net and src in net and a.address.ip not in (src, dst):
            return True
    return False


def br_netfilter(node: Node, version: int) -> tuple[bool | None, str | None, str]:
    """Whether bridged frames pass iptables: (on?, citation, how kptrace knows); None: the walk assumes
    it does (kubeadm requires it) and says so. The same fact KPT101/KPT102 report (model/kernel_facts.py)."""
    from kptrace.model.kernel_facts import br_netfilter as fact

    on, cite, how = fact(node, version)
    if on is None:
        how += ": bridge-nf-call assumed 1 (kubeadm requires it)"
    return on, cite, how
