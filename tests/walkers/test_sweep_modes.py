"""Property: a sweep row is what `why` answers for that flow, on generated 1k-Service nodes in iptables,
nftables and IPVS mode.

The sweep shares its work between flows (one load, the Service table read once, long chains dispatched by
destination through an index, hook entries per trace, traces memoised per start node and flow); `why` has
none of that. Each row of a random sample, taken from a sweep over a few hundred Service ports (so the
shared state is warm and varied), is compared with a trace of the same flow on the same files loaded
afresh: the whole trace (every branch, step, cited line, assumption and reply) and the row built from it.
"""

from __future__ import annotations

import random
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from kptrace.load import LoadOptions, load_cluster
from kptrace.model.flow import Flow
from kptrace.model.node import Node
from kptrace.walkers.netfilter import trace_flow
from kptrace.walkers.sweep import Row, Sweeper

SERVICES, ENDPOINTS, SEED = 1000, 10, 23
SWEPT = 80  # Service ports swept per mode
SAMPLE = 10  # rows compared per mode


def _load(path: Path, strict: bool) -> list[Node]:
    cluster = load_cluster([path], ["192.168.0.2"], options=LoadOptions(strict=strict))
    if cluster[0].pod_subnet is None:
        cluster[0].pod_subnet = ip_network("10.244.1.0/24")  # the generators' node; a bare dump does not say it
    return cluster


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from kptrace.testing.generator import generate_iptables
    from kptrace.testing.generator_ipvs import generate_ipvs
    from kptrace.testing.generator_nft import generate_nftables

    root = tmp_path_factory.mktemp("modes")
    ipt = root / "iptables-save.txt"
    generate_iptables(SERVICES, ENDPOINTS, seed=SEED).write(str(ipt))
    return {"iptables": ipt,
            "nftables": generate_nftables(SERVICES, ENDPOINTS, seed=SEED).write_bundle(root / "nft"),
            "ipvs": generate_ipvs(SERVICES, ENDPOINTS, seed=SEED).write(root / "ipvs")}


def _sample(cluster: list[Node], mode: str) -> list[Row]:
    sw = Sweeper(cluster, checks=False)
    node = cluster[0]
    ports = sw.service_ports(node)
    assert len(ports) > 900, mode
    rng = random.Random(f"{mode}-{SEED}")
    sw._ports[node.name] = sorted(rng.sample(ports, SWEPT), key=lambda s: (s.namespace, s.name, s.port_name))
    rows = sw.sweep().rows
    kinds = {r.source_kind for r in rows}
    assert {"pod", "node", "external"} <= kinds, (mode, kinds)
    # every source kind and every fate the sweep found is in the sample, then random rows
    picked = {(r.source_kind, r.status): r for r in rows}
    out = list(picked.values())
    out += rng.sample([r for r in rows if r not in out], SAMPLE - min(SAMPLE, len(out)))
    return out


@pytest.mark.parametrize("mode,strict", [("iptables", True), ("iptables", False), ("nftables", False),
                                         ("ipvs", False)])
def test_sampled_rows_equal_a_fresh_why(inputs: dict[str, Path], mode: str, strict: bool) -> None:
    rows = _sample(_load(inputs[mode], strict), mode)
    fresh = _load(inputs[mode], strict)
    again = Sweeper(fresh, checks=False, keep_traces=False)  # the fresh input's Service table, read once
    ports = {(s.namespace, s.name, s.port_name, s.protocol): s for s in again.service_ports(fresh[0])}
    for r in rows:
        flow = Flow(ip_address(r.src), ip_address(r.dst), r.protocol, None, r.dport)
        t = trace_flow(next(n for n in fresh if n.name == r.start), flow, fresh)
        assert r.trace == t, r
        svc = ports[(r.namespace, r.name, r.port_name, r.protocol)]
        assert again.row(fresh[0], svc, r.source_kind, r.entry, fresh[0], flow) == r
