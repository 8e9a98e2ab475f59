"""Graph views and formats: DOT, Mermaid (syntax-checked here), node-link JSON, SVG through Graphviz.

mermaid-cli (npm @mermaid-js/mermaid-cli) needs a headless browser download, which this machine and
CI cannot make, so `check_mermaid` below checks the subset of Mermaid flowchart syntax kptrace emits:
the header, `%%` comments, node shapes `id["…"]`, `id("…")`, `id[["…"]]`, `subgraph id["…"]` … `end`,
edges `a -->|"…"| b` / `-.->` / `==>`, `classDef` and `class`. Labels are quoted and may not hold a
bare double quote; ids are declared once, before any edge uses them; every subgraph is closed.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET

import networkx as nx
import pytest

from kptrace.errors import KptraceError
from kptrace.graph.chains import build_graph
from kptrace.load import demo_path, load_cluster
from kptrace.model.flow import Flow
from kptrace.parsers.iptables_save import parse_iptables_save
from kptrace.render import graph as render
from kptrace.walkers.netfilter import trace_flow

ID = r"[A-Za-z][A-Za-z0-9_]*"
LABEL = r'"[^"]*"'
MERMAID_LINES = {
    "comment": re.compile(r"%%.*"),
    "node": re.compile(rf"(?P<id>{ID})(\[{LABEL}\]|\({LABEL}\)|\[\[{LABEL}\]\])"),
    "subgraph": re.compile(rf"subgraph (?P<id>{ID})\[{LABEL}\]"),
    "end": re.compile(r"end"),
    "edge": re.compile(rf"(?P<a>{ID}) (-->|-\.->|==>)\|{LABEL}\| (?P<b>{ID})"),
    "classDef": re.compile(rf"classDef {ID} [a-z-]+:[^,;]+(,[a-z-]+:[^,;]+)*"),
    "class": re.compile(rf"class {ID}(,{ID})* {ID}"),
}
RESERVED = {"end", "subgraph", "graph", "flowchart", "class", "classDef", "click", "style", "linkStyle"}


def check_mermaid(text: str) -> list[str]:
    """Problems in a Mermaid flowchart of the subset kptrace writes (empty: it parses)."""
    problems: list[str] = []
    lines = text.splitlines()
    header = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("%%")]
    if not header or header[0] != "flowchart LR":
        problems.append("the first statement must be `flowchart LR`")
    declared: set[str] = set()
    classes: set[str] = set()
    depth = 0
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line == "flowchart LR":
            continue
        kind = next((k for k, rx in MERMAID_LINES.items() if rx.fullmatch(line)), None)
        if kind is None:
            problems.append(f"line {n}: not in the emitted subset: {line!r}")
            continue
        m = MERMAID_LINES[kind].fullmatch(line)
        assert m is not None
        if kind in ("node", "subgraph"):
            if m.group("id") in declared or m.group("id") in RESERVED:
                problems.append(f"line {n}: id {m.group('id')!r} declared twice or reserved")
            declared.add(m.group("id"))
            depth += kind == "subgraph"
        elif kind == "end":
            depth -= 1
            if depth < 0:
                problems.append(f"line {n}: `end` without `subgraph`")
        elif kind == "edge":
            for end in (m.group("a"), m.group("b")):
                if end not in declared:
                    problems.append(f"line {n}: edge uses undeclared id {end!r}")
        elif kind == "classDef":
            classes.add(line.split()[1])
        elif kind == "class":
            ids, cls = line.split()[1:]
            if cls not in classes:
                problems.append(f"line {n}: class {cls!r} used before classDef")
            problems += [f"line {n}: class on undeclared id {i!r}" for i in ids.split(",") if i not in declared]
    if depth != 0:
        problems.append("a subgraph is not closed")
    return problems


@pytest.fixture(scope="module")
def demo():  # type: ignore[no-untyped-def]
    cluster = load_cluster([demo_path()])
    rs = cluster[0].rulesets[4]
    return cluster, rs, build_graph(rs)


def test_checker_rejects_what_mermaid_rejects() -> None:
    assert check_mermaid('flowchart LR\n  a["x"]\n  a -->|"r1"| b\n') == ["line 3: edge uses undeclared id 'b'"]
    assert check_mermaid('flowchart LR\n  a["say "hi""]\n')[0].startswith("line 2: not in the emitted subset")
    assert check_mermaid('flowchart LR\n  subgraph s["t"]\n  a["x"]\n') == ["a subgraph is not closed"]
    assert "the first statement must be `flowchart LR`" in check_mermaid('graph TD\n  a["x"]\n')


@pytest.mark.parametrize("view", ["whole", "service", "trace"])
def test_mermaid_output_parses(demo, view: str) -> None:  # type: ignore[no-untyped-def]
    cluster, rs, g = demo
    v = _view(view, cluster, rs, g)
    text = render.to_mermaid(g, v)
    assert check_mermaid(text) == []
    if view == "trace":
        assert "==>" in text and "class " in text


def _view(view, cluster, rs, g):  # type: ignore[no-untyped-def]
    if view == "whole":
        return render.whole_view(g)
    if view == "service":
        return render.service_view(g, rs, "kube-system/kube-dns")
    from ipaddress import ip_address

    t = trace_flow(cluster[0], Flow(ip_address("10.244.1.5"), ip_address("10.96.0.10"), "udp", None, 53), cluster)
    return render.trace_view(g, t, "node-a", rs)


def test_mermaid_escapes_quotes_and_hashes() -> None:
    assert render._mq('say "hi" #1\nnext') == '"say #quot;hi#quot; #35;1<br/>next"'
    dump = "*filter\n:INPUT ACCEPT [0:0]\n:A#B - [0:0]\n-A INPUT -j A#B\nCOMMIT\n"
    g = build_graph(parse_iptables_save(dump, "d").ruleset)
    text = render.to_mermaid(g, render.whole_view(g))
    assert check_mermaid(text) == [] and "A#35;B" in text


def test_service_view_is_the_service_chains_and_the_way_in(demo) -> None:  # type: ignore[no-untyped-def]
    _, rs, g = demo
    v = render.service_view(g, rs, "default/web")
    chains = sorted(n[2] for n in v.nodes)
    assert chains == ["KUBE-EXT-LOLE4ISW44XBNF3G", "KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-SEP-3BCZ6SIOIDV3WMLD",
                      "KUBE-SEP-5OCWPZKODR2CLL6E", "KUBE-SERVICES", "KUBE-SVC-LOLE4ISW44XBNF3G"]
    assert {n[2] for n in v.context} == {"KUBE-NODEPORTS", "KUBE-SERVICES"}
    with pytest.raises(KptraceError, match="no KUBE-SVC"):
        render.service_view(g, rs, "default/we")  # a prefix of a name is not the name
    with pytest.raises(KptraceError, match="NAMESPACE/NAME"):
        render.service_view(g, rs, "web")


def test_trace_view_marks_the_path(demo) -> None:  # type: ignore[no-untyped-def]
    cluster, rs, g = demo
    v = _view("trace", cluster, rs, g)
    names = {n[2] for n in v.visited_nodes if n[0] == "chain"}
    assert {"KUBE-SERVICES", "KUBE-SVC-TCOU7JCQXEZGVUNU", "KUBE-SEP-NWYX6ZRA4HKJWFJ6", "KUBE-SEP-YIYWGYBYC3QAMGMY",
            "KUBE-FORWARD", "FLANNEL-FWD"} <= names
    svc = ("chain", "nat", "KUBE-SVC-TCOU7JCQXEZGVUNU")
    assert {(u[2], v_[2]) for u, v_, _ in v.visited_edges if u == svc} == {
        ("KUBE-SVC-TCOU7JCQXEZGVUNU", "KUBE-SEP-NWYX6ZRA4HKJWFJ6"), ("KUBE-SVC-TCOU7JCQXEZGVUNU", "KUBE-SEP-YIYWGYBYC3QAMGMY")}


def test_json_is_node_link_networkx_reads_back(demo) -> None:  # type: ignore[no-untyped-def]
    _, rs, g = demo
    doc = json.loads(json.dumps(render.to_json(g, render.whole_view(g))))
    back = nx.node_link_graph(doc, edges="links")
    assert back.number_of_nodes() == g.number_of_nodes() and back.number_of_edges() == g.number_of_edges()
    e = next(link for link in doc["links"] if link["source"] == "nat/KUBE-SERVICES"
             and link["target"] == "nat/KUBE-SVC-TCOU7JCQXEZGVUNU")
    assert e["cite"] == "node-a/iptables-save.txt:148" and e["kind"] == "jump"


def test_dot_quotes_names(demo) -> None:  # type: ignore[no-untyped-def]
    _, rs, g = demo
    dot = render.to_dot(g, render.service_view(g, rs, "kube-system/kube-dns"))
    assert dot.startswith("// kptrace ") and "digraph kptrace {" in dot and dot.rstrip().endswith("}")
    assert '"nat/KUBE-SERVICES" -> "nat/KUBE-SVC-TCOU7JCQXEZGVUNU" [label="r1", tooltip="node-a/iptables-save.txt:148"]' in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed (apt-get install graphviz)")
def test_svg_is_valid_xml(demo) -> None:  # type: ignore[no-untyped-def]
    _, rs, g = demo
    svg = render.to_svg(render.to_dot(g, render.service_view(g, rs, "kube-system/kube-dns")))
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
    assert "nat/KUBE-SVC-TCOU7JCQXEZGVUNU" in titles


def test_svg_without_graphviz_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(KptraceError, match="needs Graphviz's `dot`"):
        render.to_svg("digraph {}")


def _broken_drop():  # type: ignore[no-untyped-def]
    from ipaddress import ip_address

    from kptrace import demos

    cluster = load_cluster([demos.path("broken")])
    rs = cluster[0].rulesets[4]
    g = build_graph(rs)
    t = trace_flow(cluster[0], Flow(ip_address("10.244.1.5"), ip_address("10.96.12.34"), "tcp", None, 80), cluster)
    return g, render.trace_view(g, t, None, rs)


def test_trace_view_shows_the_verdict_in_packet_order_with_service_names() -> None:
    """Issue 19 item 9: hooks as the packet meets them, Services instead of chain hashes, the death marked."""
    g, view = _broken_drop()
    assert view.hooks == ["PREROUTING", "routing", "FORWARD"]
    assert "DROPPED" in view.title
    dies = [e for e in view.ends if e.kind == "dies"]
    assert len(dies) == 1 and dies[0].after == ("chain", "filter", "FORWARD") and dies[0].share == 1.0
    assert dies[0].cite == "broken-node/iptables-save.txt:16" and "POLICY DROP" in dies[0].label
    svc = next(n for n in view.names if n[2].startswith("KUBE-SVC-"))
    assert view.names[svc] == "default/web"
    assert sorted(v for n, v in view.names.items() if n[2].startswith("KUBE-SEP-")) == [
        "default/web → 10.244.1.12:8080", "default/web → 10.244.2.15:8080"]
    dot = render.to_dot(g, view)
    # the hook columns in order, joined by the packet's path; the drop an octagon after filter/FORWARD
    order = [dot.index(f'"cluster_{h}"') for h in ("PREROUTING", "FORWARD")]
    assert order == sorted(order)
    assert '"hook:PREROUTING" -> "routing:1"' in dot and '"routing:1" -> "hook:FORWARD"' in dot
    assert re.search(r'"end1" \[label="✖ DROPPED: POLICY DROP \(policy\)\\nbroken-node/iptables-save.txt:16", '
                     r"shape=octagon", dot)
    assert '"filter/FORWARD" -> "end1"' in dot
    assert "nat: default/web\\nKUBE-SVC · 3 rules" in dot
    mermaid = render.to_mermaid(g, view)
    assert check_mermaid(mermaid) == [] and "class end1 dies" in mermaid
    doc = render.to_json(g, view)
    assert doc["hooks"] == view.hooks and doc["ends"][0]["kind"] == "dies"
    assert any(n.get("service") == "default/web" for n in doc["nodes"])


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz's dot")
def test_trace_svg_draws_the_drop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g, view = _broken_drop()
    svg = render.to_svg(render.to_dot(g, view))
    assert "<svg" in svg and "✖ DROPPED: POLICY DROP (policy)" in svg and "default/web → 10.244.1.12:8080" in svg
    assert "#ff4d4d" in svg  # the octagon where the packet dies is filled red
