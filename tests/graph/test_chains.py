from kptrace.graph.chains import build_graph, chain_node, jump_cycles, unreachable_chains
from kptrace.parsers.iptables_save import parse_iptables_save

DUMP = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-1 - [0:0]
:ORPHAN - [0:0]
:LOOP1 - [0:0]
:LOOP2 - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-A
-A KUBE-SVC-A -g KUBE-SEP-1
-A KUBE-SEP-1 -j DNAT --to-destination 10.0.0.1:80
-A LOOP1 -j LOOP2
-A LOOP2 -j LOOP1
COMMIT
"""


def test_graph_edges_carry_their_rule() -> None:
    g = build_graph(parse_iptables_save(DUMP, "d").ruleset)
    edges = g.get_edge_data(chain_node("nat", "KUBE-SERVICES"), chain_node("nat", "KUBE-SVC-A"))
    assert [e["source"] for e in edges.values()] == ["d:12"]
    goto = g.get_edge_data(chain_node("nat", "KUBE-SVC-A"), chain_node("nat", "KUBE-SEP-1"))
    assert [e["kind"] for e in goto.values()] == ["goto"]
    assert g.has_edge(("hook", "PREROUTING"), chain_node("nat", "PREROUTING"))


def test_unreachable_and_cycles() -> None:
    g = build_graph(parse_iptables_save(DUMP, "d").ruleset)
    assert unreachable_chains(g) == [("nat", "LOOP1"), ("nat", "LOOP2"), ("nat", "ORPHAN")]
    assert sorted(map(sorted, jump_cycles(g))) == [[("nat", "LOOP1"), ("nat", "LOOP2")]]
