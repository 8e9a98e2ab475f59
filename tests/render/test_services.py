"""Service ports read from kube-proxy's iptables rules (kptrace/services) and their table/JSON views."""

from __future__ import annotations

import io

import jsonschema
import pytest
from rich.console import Console

from kptrace.load import demo_path, load_cluster
from kptrace.model.node import Node
from kptrace.parsers.iptables_save import parse_iptables_save
from kptrace.render.jsonout import schema
from kptrace.render.services import render_services, services_json
from kptrace.services import SOURCES, Service, collect

# Forms the demo does not have: an external IP, session affinity, internalTrafficPolicy Local, a
# KUBE-SVC chain left empty, the older "nodePort" comment, and a three-way random split.
DUMP = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SVC-AAA - [0:0]
:KUBE-SVL-BBB - [0:0]
:KUBE-SVC-EMPTY - [0:0]
:KUBE-SEP-1 - [0:0]
:KUBE-SEP-2 - [0:0]
:KUBE-SEP-3 - [0:0]
:KUBE-SEP-4 - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.1.1/32 -p tcp -m comment --comment "shop/cart:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAA
-A KUBE-SERVICES -d 203.0.113.10/32 -p tcp -m comment --comment "shop/cart:http external IP" -m tcp --dport 80 -j KUBE-SVC-AAA
-A KUBE-SERVICES -d 10.96.2.2/32 -p udp -m comment --comment "shop/cache cluster IP" -m udp --dport 11211 -j KUBE-SVL-BBB
-A KUBE-SERVICES -d 10.96.3.3/32 -p tcp -m comment --comment "shop/empty cluster IP" -m tcp --dport 81 -j KUBE-SVC-EMPTY
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-NODEPORTS -p tcp -m comment --comment "shop/cart:http nodePort" -m tcp --dport 30001 -j KUBE-SVC-AAA
-A KUBE-SVC-AAA -m comment --comment "shop/cart:http -> 10.244.0.1:8080" -m recent --name KUBE-SEP-1 --rcheck --seconds 10800 --reap -j KUBE-SEP-1
-A KUBE-SVC-AAA -m comment --comment "shop/cart:http -> 10.244.0.1:8080" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-1
-A KUBE-SVC-AAA -m comment --comment "shop/cart:http -> 10.244.0.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-2
-A KUBE-SVC-AAA -m comment --comment "shop/cart:http -> 10.244.0.3:8080" -j KUBE-SEP-3
-A KUBE-SVL-BBB -m comment --comment "shop/cache -> 10.244.0.4:11211" -j KUBE-SEP-4
-A KUBE-SEP-1 -p tcp -m comment --comment "shop/cart:http" -m recent --set --name KUBE-SEP-1 --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.0.1:8080
-A KUBE-SEP-2 -p tcp -m comment --comment "shop/cart:http" -m tcp -j DNAT --to-destination 10.244.0.2:8080
-A KUBE-SEP-4 -p udp -m comment --comment "shop/cache" -m udp -j DNAT --to-destination 10.244.0.4:11211
COMMIT
"""


def _node(text: str, name: str = "n1") -> Node:
    node = Node(name=name)
    node.rulesets[4] = parse_iptables_save(text, "iptables-save.txt").ruleset
    return node


def _by_name(services: list[Service]) -> dict[str, Service]:
    return {s.display_name + "/" + s.protocol: s for s in services}


def test_synthetic_forms() -> None:
    s = _by_name(collect([_node(DUMP)]))
    cart = s["shop/cart:http/tcp"]
    assert (cart.type, cart.cluster_ips, cart.external_ips, cart.port, cart.node_port) == (
        "NodePort", ("10.96.1.1",), ("203.0.113.10",), 80, 30001)
    assert [(e.address, e.probability) for e in cart.endpoints] == [
        ("10.244.0.1:8080", pytest.approx(1 / 3)), ("10.244.0.2:8080", pytest.approx(1 / 3)),
        ("10.244.0.3:8080", pytest.approx(1 / 3))]
    # KUBE-SEP-3 has no DNAT in the dump: the address comes from the comment, cited there.
    assert cart.endpoints[0].source == "iptables-save.txt:25" and cart.endpoints[2].source == "iptables-save.txt:23"
    assert cart.session_affinity and cart.status == "ok"
    cache = s["shop/cache/udp"]
    assert cache.internal_policy == "Local" and cache.port_name == ""
    assert [(n, [e.address for e in eps]) for n, eps in cache.local_endpoints] == [("n1", ["10.244.0.4:11211"])]
    empty = s["shop/empty/tcp"]
    assert empty.status == "no endpoints" and empty.health[0].source == "KUBE-SVC-EMPTY"


def test_demo_services_merge_both_nodes() -> None:
    s = _by_name(collect(load_cluster([demo_path()])))
    assert sorted(s) == ["default/api-local:http/tcp", "default/broken/tcp", "default/kubernetes:https/tcp",
                         "default/web/tcp", "ingress-nginx/ingress-nginx-controller:http/tcp",
                         "ingress-nginx/ingress-nginx-controller:https/tcp", "kube-system/kube-dns:dns-tcp/tcp",
                         "kube-system/kube-dns:dns/udp", "kube-system/kube-dns:metrics/tcp"]
    api = s["default/api-local:http/tcp"]
    assert api.external_policy == "Local" and api.health_check_node_port == 32012 and api.node_port == 31234
    assert api.status == "no local endpoints on node-a"
    assert [(n, [e.address for e in eps]) for n, eps in api.local_endpoints] == [("node-a", []), ("node-b", ["10.244.2.20:8080"])]
    assert s["default/broken/tcp"].status == "no endpoints" and s["default/broken/tcp"].cluster_ips == ("10.96.77.7",)
    lb = s["ingress-nginx/ingress-nginx-controller:http/tcp"]
    assert (lb.type, lb.load_balancer_ips, lb.load_balancer_source_ranges, lb.node_port) == (
        "LoadBalancer", ("192.168.56.200",), ("192.168.56.0/24",), 31080)
    dns = s["kube-system/kube-dns:dns/udp"]
    assert [(e.address, e.probability) for e in dns.endpoints] == [("10.244.1.9:53", 0.5), ("10.244.2.7:53", 0.5)]
    assert dns.nodes == ("node-a", "node-b") and dns.source_kinds == ("iptables",)


def test_a_source_per_function() -> None:
    assert list(SOURCES) == ["iptables", "nftables", "ipvs"]
    assert all(callable(f) for f in SOURCES.values())


def _table(services: list[Service], wide: bool = False, width: int = 10_000) -> list[str]:
    buf = io.StringIO()
    render_services(services, Console(file=buf, width=width), wide)
    return buf.getvalue().splitlines()


def test_table_is_kubectl_style_and_wraps_only_its_lists_within_a_width() -> None:
    lines = _table(collect(load_cluster([demo_path()])))
    assert lines[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS", "STATUS"]
    assert lines[1].split() == ["default", "api-local", "NodePort", "10.96.45.6", "<none>", "8080:31234/TCP",
                                "10.244.2.20:8080", "no", "local", "endpoints", "on", "node-a"]
    assert len(lines) == 10  # without a width (a pipe): a header and one line per port
    assert not any(line.endswith(" ") for line in lines)
    narrow = _table(collect(load_cluster([demo_path()])), width=120)
    web = next(i for i, line in enumerate(narrow) if line.split()[:2] == ["default", "web"])
    # --width 120: the endpoints wrap at the comma in their own column; the other columns stay whole.
    assert narrow[web].split()[-2:] == ["10.244.1.12:8080,", "ok"]
    assert narrow[web + 1].strip() == "10.244.2.15:8080"
    assert narrow[web + 1].index("10.244.2.15") == narrow[web].index("10.244.1.12")
    wide = _table(collect(load_cluster([demo_path()])), wide=True)
    dns = next(line for line in wide if line.split()[:3] == ["kube-system", "kube-dns", "dns"])
    assert "10.244.1.9:53(50%),10.244.2.7:53(50%)" in dns.split()
    assert wide[wide.index("health:") + 1] == \
        "  - node-a: default/api-local:http has no local endpoints (node-a/iptables-save.txt:41)"


def test_json_validates_and_carries_the_fields() -> None:
    cluster = load_cluster([demo_path()])
    doc = services_json(collect(cluster), [i for n in cluster for i in n.inputs])
    jsonschema.validate(doc, schema())
    assert doc["kind"] == "services"
    web = next(s for s in doc["services"] if s["name"] == "web")
    assert web["node_port"] == 30080 and web["type"] == "NodePort" and web["status"] == "ok"
    assert web["endpoints"][0] == {"address": "10.244.1.12:8080", "probability": 0.5,
                                   "source": "node-a/iptables-save.txt:127"}
