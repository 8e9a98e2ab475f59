"""The sweep's memo of hook walks (kptrace/walkers/memo.py) is exact: with it on, every trace is the trace
without it (every branch's steps, cited lines, assumptions, unknowns, conditions, probabilities, reply), on
every bundle of kptrace/demo and tests/fixtures and on generated 1k dumps read whole and lazily; it does
share walks; and its key separates packets whose difference a rule can see (a host, a network, a port, the
original destination, a masquerade)."""

from __future__ import annotations

import random
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from kptrace.errors import InputError
from kptrace.load import LoadOptions, load_cluster, load_node
from kptrace.model.flow import Flow
from kptrace.model.node import Node
from kptrace.model.trace import Disposition, Trace
from kptrace.walkers.memo import WalkMemo, using
from kptrace.walkers.netfilter import trace_flow
from kptrace.walkers.sweep import Sweeper

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = sorted({p.parent for base in (ROOT / "kptrace" / "demo", ROOT / "tests" / "fixtures")
                  for name in ("iptables-save.txt", "nft-ruleset.txt", "ipvsadm-Ln.txt", "ip6tables-save.txt")
                  for p in base.rglob(name)})
CLUSTERS = [ROOT / "kptrace" / "demo" / "cluster"] + [b for b in BUNDLES if b.parent.name != "cluster"]


def _load(path: Path) -> list[Node]:
    try:
        return load_cluster([path])
    except InputError as e:
        pytest.skip(f"{path}: not a cluster ({e})")


def _flows(sw: Sweeper, cluster: list[Node]) -> list[tuple[Node, Flow]]:
    """Every flow a sweep asks, and more: each node to each endpoint and Service port, a pod of each node to
    each endpoint, and from an outside client, so memoised walks meet varied packets."""
    out: list[tuple[Node, Flow]] = []
    for node in cluster:
        for svc in sw.service_ports(node):
            for _, _, start, flow in sw.flows(node, svc, ("pod", "remote", "node", "external"), []):
                out.append((start, flow))
        dsts = sorted(sw.endpoint_addresses(), key=str)[:12] + [a for a in sorted(node.local_addresses(), key=str)][:3]
        dsts += [ip_address(a) for a in ("10.96.0.1", "10.96.0.10", "10.244.2.5", "8.8.8.8", "172.17.0.2")]
        srcs = [a for a in (sw.pod_source(node, 4), ip_address("203.0.113.10"), ip_address("10.244.9.9"),
                            ip_address("10.244.1.5"), ip_address("10.42.0.9")) if a]
        srcs += [a for a in sorted(node.local_addresses(), key=str) if a.version == 4][:1]
        for dst in dsts:
            for src in srcs:
                if src.version == dst.version and src != dst:
                    for proto, port in (("tcp", 80), ("udp", 53), ("tcp", 30080)):
                        out.append((node, Flow(src, dst, proto, None, port)))
    return out


def _compare(cluster: list[Node], flows: list[tuple[Node, Flow]]) -> WalkMemo:
    memo = WalkMemo()
    with using(memo):
        shared = [trace_flow(start, flow, cluster) for start, flow in flows]
        again = [trace_flow(start, flow, cluster) for start, flow in flows]  # all of them hits, or re-recorded
    for (start, flow), a, b in zip(flows, shared, again):
        alone = trace_flow(start, flow, cluster)
        _same(alone, a, f"{start.name} {flow}")
        _same(alone, b, f"{start.name} {flow} (second)")
    return memo


def _same(want: Trace, got: Trace, what: str) -> None:
    assert len(want.branches) == len(got.branches), what
    for x, y in zip(want.branches, got.branches):
        assert x.steps == y.steps, what
        assert (x.probability, x.disposition, x.assumptions, x.unknowns, x.conditions) == \
            (y.probability, y.disposition, y.assumptions, y.unknowns, y.conditions), what
        assert x.reply == y.reply, what
    assert want == got, what


@pytest.mark.parametrize("bundle", CLUSTERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_memo_on_and_off_give_the_same_traces_on_every_bundle(bundle: Path) -> None:
    cluster = _load(bundle)
    sw = Sweeper(cluster, checks=False)
    flows = _flows(sw, cluster)
    if not flows:
        pytest.skip(f"{bundle}: no flows")
    _compare(cluster, flows)


@pytest.mark.parametrize("bundle", CLUSTERS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_sweep_with_and_without_the_memo_is_the_same(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = _load(bundle)
    on = Sweeper(cluster, checks=False)
    assert on.memo is not None
    rows_on = on.sweep().rows
    monkeypatch.setenv("KPTRACE_NO_MEMO", "1")
    off = Sweeper(cluster, checks=False)
    assert off.memo is None
    rows_off = off.sweep().rows
    assert rows_on == rows_off
    assert [r.trace for r in rows_on] == [r.trace for r in rows_off]


# --- generated dumps (400 Services) ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kptrace.testing.generator import generate_iptables

    path = tmp_path_factory.mktemp("memo") / "iptables-save.txt"
    generate_iptables(400, 10, seed=31).write(str(path))
    return path


def _generated(path: Path, strict: bool) -> list[Node]:
    cluster = load_cluster([path], ["192.168.0.2"], options=LoadOptions(strict=strict))
    cluster[0].pod_subnet = ip_network("10.244.1.0/24")
    return cluster


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lazy"])
def test_generated_sweep_is_the_same_with_the_memo(generated: Path, strict: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = _generated(generated, strict)
    on = Sweeper(cluster, checks=False, keep_traces=False)
    rng = random.Random(5)
    ports = on.service_ports(cluster[0])
    on._ports[cluster[0].name] = picked = sorted(rng.sample(ports, 150), key=lambda s: (s.namespace, s.name, s.port_name))
    rows_on = on.sweep().rows
    assert on.memo is not None
    if strict:
        m = on.memo
        assert m.hits + m.hook_hits > 5 * m.misses, (m.hits, m.hook_hits, m.misses)  # walks are shared
    monkeypatch.setenv("KPTRACE_NO_MEMO", "1")
    fresh = _generated(generated, strict)
    off = Sweeper(fresh, checks=False, keep_traces=False)
    off._ports[fresh[0].name] = [s for s in off.service_ports(fresh[0]) if s in picked] or picked
    rows_off = off.sweep().rows
    assert rows_on == rows_off
    for a, b in zip(rows_on[::7], rows_off[::7]):  # the whole traces, walked again from each side
        monkeypatch.delenv("KPTRACE_NO_MEMO")
        with using(on.memo):
            ta = trace_flow(cluster[0], Flow(ip_address(a.src), ip_address(a.dst), a.protocol, None, a.dport), cluster)
        monkeypatch.setenv("KPTRACE_NO_MEMO", "1")
        _same(b.trace, ta, a.display_name)


@pytest.fixture(params=["whole hooks", "base chains only"])
def level(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both levels of the memo: whole hooks (HookMemo) over base chains (EntryMemo), and base chains alone."""
    if request.param == "base chains only":
        from kptrace.walkers import memo

        monkeypatch.setattr(memo.HookMemo, "run", lambda self, path, skip_nat, finals, walk: walk([path]))
    return str(request.param)


def test_generated_flows_memo_on_and_off(generated: Path, level: str) -> None:
    cluster = _generated(generated, True)
    sw = Sweeper(cluster, checks=False)
    rng = random.Random(9)
    sw._ports[cluster[0].name] = rng.sample(sw.service_ports(cluster[0]), 60)
    memo = _compare(cluster, _flows(sw, cluster))
    if level == "whole hooks":
        assert memo.hook_hits > memo.hook_misses > 0 and memo.hits > 0
    else:
        assert memo.hits > memo.misses > 0
    assert memo.unrecorded == 0


# --- the key separates what a rule can see ----------------------------------------------------------------

NODE_IP = "192.168.0.2"
ROUTES = """default via 192.168.0.1 dev eth0
10.244.1.0/24 dev cni0 proto kernel scope link src 10.244.1.1
10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink
192.168.0.0/24 dev eth0 proto kernel scope link src 192.168.0.2
"""
ADDRS = """1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN group default qlen 1000
    inet 127.0.0.1/8 scope host lo
2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UP group default qlen 1000
    inet 192.168.0.2/24 brd 192.168.0.255 scope global eth0
3: cni0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UP group default qlen 1000
    inet 10.244.1.1/24 brd 10.244.1.255 scope global cni0
"""
CRAFTED = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:SVC - [0:0]
-A PREROUTING -d 10.96.0.10/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.2.7:8080
-A PREROUTING -d 10.96.0.11/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.2.7:8080
-A PREROUTING -d 10.96.0.12/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.2.8:8080
-A POSTROUTING -d 10.244.2.9/32 -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CHECKS - [0:0]
-A FORWARD -j CHECKS
-A CHECKS -d 10.244.2.66/32 -j DROP
-A CHECKS -d 10.244.3.0/24 -j REJECT
-A CHECKS -p tcp -m tcp --dport 8081 -j DROP
-A CHECKS -p tcp -m multiport --dports 9000:9100 -j DROP
-A CHECKS -m conntrack --ctorigdst 10.96.0.11 -j DROP
-A CHECKS -m conntrack --ctstate SNAT -p tcp --dport 8080 -j REJECT
COMMIT
"""


@pytest.fixture()
def crafted(tmp_path: Path) -> Node:
    d = tmp_path / "crafted"
    d.mkdir()
    (d / "iptables-save.txt").write_text(CRAFTED)
    (d / "ip-route.txt").write_text(ROUTES)
    (d / "ip-addr.txt").write_text(ADDRS)
    node = load_node([d], [NODE_IP])
    return node


# Pairs that differ only in what the memo abstracts or keys, and that the rules above tell apart.
PAIRS = [
    (("10.244.2.65", 80), ("10.244.2.66", 80)),  # a FORWARD rule names one host
    (("10.244.2.65", 80), ("10.244.3.65", 80)),  # a non-host network
    (("10.244.2.65", 80), ("10.244.2.65", 8081)),  # a port named alone
    (("10.244.2.65", 80), ("10.244.2.65", 9050)),  # a port range
    (("10.96.0.10", 80), ("10.96.0.11", 80)),  # the same endpoint, DNATed from another original destination
    (("10.96.0.10", 80), ("10.96.0.12", 80)),  # two endpoints
    (("10.244.2.7", 8080), ("10.244.2.9", 8080)),  # MASQUERADE (ctstate SNAT) on one host only
]


@pytest.mark.parametrize("a,b", PAIRS)
def test_the_key_separates_what_a_rule_can_see(crafted: Node, a: tuple[str, int], b: tuple[str, int],
                                               level: str) -> None:
    src = ip_address("10.244.1.5")
    fa, fb = (Flow(src, ip_address(x), "tcp", None, port, "cni0") for x, port in (a, b))
    want_a, want_b = trace_flow(crafted, fa), trace_flow(crafted, fb)
    def seen(t: Trace) -> list[object]:
        return [(x.disposition, x.dnat, x.masquerade, x.reply and x.reply.disposition) for x in t.branches]

    assert seen(want_a) != seen(want_b), "the pair must differ for this test to mean anything"
    for first, second in ((fa, fb), (fb, fa)):
        memo = WalkMemo()
        with using(memo):
            got = [trace_flow(crafted, f) for f in (first, second, first, second)]
        assert memo.hits + memo.hook_hits > 0
        want = {fa: want_a, fb: want_b}
        for f, t in zip((first, second, first, second), got):
            _same(want[f], t, f"{f}")


def test_the_crafted_node_shares_walks_it_may(crafted: Node) -> None:
    """Two pods behind one unnamed subnet reach one unnamed host: the second's FORWARD walk is a hit."""
    memo = WalkMemo()
    flows = [Flow(ip_address(s), ip_address("10.244.2.40"), "tcp", None, 80, "cni0") for s in ("10.244.1.5", "10.244.1.6")]
    with using(memo):
        a, b = (trace_flow(crafted, f) for f in flows)
    assert a.disposition == b.disposition == Disposition.FORWARDED
    assert memo.hook_hits >= 3, (memo.hook_hits, memo.hook_misses)
    assert _same(trace_flow(crafted, flows[1]), b, "b") is None


def test_memo_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KPTRACE_NO_MEMO", "1")
    assert Sweeper([], checks=False).memo is None
    memo = WalkMemo()
    with using(memo):
        from kptrace.walkers.memo import active

        assert active() is None


# --- the bounds on what a sweep keeps ----------------------------------------------------------------------

def test_bounded_stores_stay_exact_when_they_forget(generated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store a sweep keeps to save memory (WalkMemo.share's tuples, the chains' facts, the step cache,
    the endpoint shares) forgets past its bound; with tiny bounds, so that each forgets thousands of times, the
    rows and the whole traces are those of a sweep without the memo, and walks are still shared."""
    from kptrace.walkers import chains, memo, sweep

    monkeypatch.setattr(memo, "MAX_SHARED", 7)
    monkeypatch.setattr(memo, "FACTS_IDLE", 3)
    monkeypatch.setattr(memo, "WARMUP", 5)
    monkeypatch.setattr(chains, "MAX_SHARED_STEPS", 5)
    monkeypatch.setattr(sweep, "MAX_SHARED_SHARES", 3)
    cluster = _generated(generated, True)
    on = Sweeper(cluster, checks=False, keep_traces=False)
    on._ports[cluster[0].name] = picked = on.service_ports(cluster[0])[:60]
    rows_on = on.sweep().rows
    assert on.memo is not None and not on.memo.facts  # forgotten after FACTS_IDLE hooks made before
    assert on.memo.hits + on.memo.hook_hits > on.memo.misses
    assert len(on.memo._shared) <= 7 and len(chains._STEPS) <= 5 and len(chains._KEPT) <= 5
    monkeypatch.setenv("KPTRACE_NO_MEMO", "1")
    fresh = _generated(generated, True)
    off = Sweeper(fresh, checks=False, keep_traces=False)
    off._ports[fresh[0].name] = [s for s in off.service_ports(fresh[0]) if s in picked]
    rows_off = off.sweep().rows
    assert rows_on == rows_off
    for a, b in zip(rows_on[::5], rows_off[::5]):
        monkeypatch.delenv("KPTRACE_NO_MEMO")
        with using(on.memo):
            ta = trace_flow(cluster[0], Flow(ip_address(a.src), ip_address(a.dst), a.protocol, None, a.dport), cluster)
        monkeypatch.setenv("KPTRACE_NO_MEMO", "1")
        _same(b.trace, ta, a.display_name)


def test_a_step_is_never_another_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step cache is keyed by a rule's id: the rules it keys are kept alive, so a rule made after another
    died (the same id, possibly) never gets the dead one's step."""
    import gc

    from kptrace.model.netfilter import Rule
    from kptrace.model.source import Source
    from kptrace.walkers import chains
    from kptrace.walkers.chains import ChainWalker

    w = ChainWalker.__new__(ChainWalker)
    w.hook, w.node = "FORWARD", None
    seen = []
    for i in range(50):
        rule = Rule("filter", "FORWARD", 1, Source("f", i + 1, 1, f"-A FORWARD -j ACCEPT -m comment {i}"))
        s = w._step(rule, "ACCEPT", 0)
        assert (s.source, s.text) == (f"f:{i + 1}", rule.text)
        seen.append(s.source)
        del rule
        gc.collect()
    assert len(set(seen)) == 50
    assert len(chains._KEPT) == len(chains._STEPS)  # each cached step's rule, alive
