"""Minimal fix search (`why --suggest-fix`): the smallest sets of candidate changes that make a flow arrive.

The broken fixtures are copies of the demo's bundles, broken two ways at once: a flow then needs two fixes,
and the search must return exactly the minimal sets (no single candidate works, each set it returns does,
verified again here through `why --what-if`). The JSON it writes, and the what-if and fix keys, are checked
against the shipped schema, which must also refuse them with a wrong type.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.load import load_cluster
from kptrace.model.flow import Flow
from kptrace.whatif.search import BOUNDED, FOUND, NONE, NOT_NEEDED, search_fix, search_lines

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "kptrace" / "demo" / "broken-node"
NODE_A = ROOT / "kptrace" / "demo" / "cluster" / "node-a"
SCHEMA = ROOT / "kptrace" / "render" / "schema" / "kptrace-output.v1.json"

WEB = Flow(ip_address("10.244.1.5"), ip_address("10.96.12.34"), "tcp", None, 80)  # default/web, an endpoint on cni0
FORWARD_PAIR = ("iptables -I FORWARD 1 -s 10.244.0.0/16 -j ACCEPT", "iptables -I FORWARD 1 -d 10.244.0.0/16 -j ACCEPT")


def _copy(src: Path, tmp: Path, name: str) -> Path:
    dst = tmp / name
    shutil.copytree(src, dst)
    return dst


def _edit(path: Path, fn: Any) -> None:
    path.write_text(fn(path.read_text()))


def _search(bundle: Path, flow: Flow, **kw: Any) -> Any:
    [node] = load_cluster([bundle], [], [])
    return search_fix([node], node, flow, **kw)


def _sets(s: Any) -> set[tuple[str, ...]]:
    return {tuple(s.changes(t)) for t in s.fixes}


def _run(*args: str) -> tuple[int, str]:
    _register(list(args))
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_forward_drop_and_bridge_nf_off_need_exactly_the_pair() -> None:
    # broken-node: FORWARD policy DROP (KPT201) and bridge-nf-call-iptables = 0 (KPT101). The Service's endpoint
    # 10.244.1.12 sits on the client's bridge: past FORWARD, the reply is not un-DNATed.
    s = _search(BROKEN, WEB)
    assert s.status == FOUND and s.size_searched == 2 and s.bound_hit is None
    bridge = "sysctl -w net.bridge.bridge-nf-call-iptables=1"
    assert _sets(s) == {(*FORWARD_PAIR, bridge), ("iptables -P FORWARD ACCEPT", bridge)}
    # No candidate alone makes it arrive: the FORWARD fixes leave a reply that fails, the sysctl a DROP.
    assert len(s.alone) == len(s.candidates) and not any(t.arrives for t in s.alone.values())
    assert any(t.fate == "FORWARDED, but the reply fails" for t in s.alone.values())
    origins = {s.candidates[i].origin for t in s.fixes for i in t.members}
    assert origins == {"KPT201", "KPT101", "generic"}  # the policy ACCEPT is implied, not the check's own fix
    # Each set, given to `why --what-if`, makes kptrace's answer FORWARDED (exit 0).
    for changes in _sets(s):
        args = ["why", "10.96.12.34:80", "--from", "10.244.1.5", "--dump", str(BROKEN), "-o", "json", "--no-checks"]
        for c in changes:
            args += ["--what-if", c]
        code, out = _run(*args)
        assert code == 0 and json.loads(out)["disposition"] == "FORWARDED", out


def test_br_netfilter_not_loaded_gives_modprobe(tmp_path: Path) -> None:
    b = _copy(BROKEN, tmp_path, "no-br-netfilter")
    _edit(b / "modules.txt", lambda t: "".join(ln + "\n" for ln in t.splitlines()
                                              if not ln.startswith("br_netfilter")).replace("br_netfilter,", "-"))
    _edit(b / "sysctl.txt", lambda t: "".join(ln + "\n" for ln in t.splitlines() if "net.bridge." not in ln))
    s = _search(b, WEB)
    assert s.status == FOUND
    assert _sets(s) == {(*FORWARD_PAIR, "modprobe br_netfilter"),
                        ("iptables -P FORWARD ACCEPT", "modprobe br_netfilter")}


def test_reject_before_kube_and_ip_forward_off(tmp_path: Path) -> None:
    # The healthy demo node, broken twice: a REJECT of the pod network before kube-proxy's jumps, forwarding off.
    b = _copy(NODE_A, tmp_path, "reject-no-forward")
    _edit(b / "iptables-save.txt", lambda t: t.replace(
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall"',
        '-A FORWARD -d 10.244.0.0/16 -j REJECT --reject-with icmp-port-unreachable\n'
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall"', 1))
    _edit(b / "sysctl.txt", lambda t: re.sub(r"(net\.ipv4\.(ip_forward|conf\.\S+\.forwarding)) = 1", r"\1 = 0", t))
    line = next(i for i, ln in enumerate((b / "iptables-save.txt").read_text().splitlines(), 1) if "-j REJECT" in ln)
    flow = Flow(ip_address("10.244.1.5"), ip_address("10.244.2.5"), "tcp", None, 8080)
    s = _search(b, flow)
    assert s.before == "DROPPED" and s.status == FOUND
    move = (f"delete reject-no-forward/iptables-save.txt:{line}",
            "iptables -t filter -A FORWARD -d 10.244.0.0/16 -j REJECT --reject-with icmp-port-unreachable")
    assert _sets(s) == {("sysctl -w net.ipv4.ip_forward=1", *move)}
    assert not any(t.arrives for t in s.alone.values())
    # Without KPT203 (no checks run), the move is the generic candidate once the trace stops at the REJECT.
    from kptrace.walkers.netfilter import trace_flow
    from kptrace.whatif.apply import apply_changes
    from kptrace.whatif.grammar import parse_changes
    from kptrace.whatif.search import candidates

    [fwd] = apply_changes(load_cluster([b], [], []), parse_changes(["sysctl -w net.ipv4.ip_forward=1"])).cluster
    t = trace_flow(fwd, flow, [fwd])
    assert t.disposition.value == "REJECTED"
    assert [c.changes for c in candidates([fwd], fwd, t, findings=[])] == [move]


def test_default_route_only_via_a_gateway_the_input_names(tmp_path: Path) -> None:
    b = _copy(NODE_A, tmp_path, "no-default")
    (b / "ip-route.json").unlink()
    _edit(b / "ip-route.txt", lambda t: "".join(ln + "\n" for ln in t.splitlines() if not ln.startswith("default")))
    out = Flow(ip_address("192.168.56.11"), ip_address("1.1.1.1"), "tcp", None, 443)
    s = _search(b, out)
    # flannel's onlink next hops are no gateway out: no default route is guessed.
    assert s.status == NONE and not any("default" in c for cand in s.candidates for c in cand.changes)
    assert any("no set of up to" in ln for ln in search_lines(s))
    _edit(b / "ip-route.txt", lambda t: t + "10.0.0.0/8 via 192.168.56.1 dev eth0\n")
    s = _search(b, out)
    assert s.status == FOUND and _sets(s) == {("ip route add default via 192.168.56.1 dev eth0",)}


def test_a_fix_that_gets_the_packet_further_brings_the_next_nodes_candidates(tmp_path: Path) -> None:
    # The demo cluster: node-a does not forward, node-b's filter FORWARD drops and flannel's accept is gone.
    # The first trace stops on node-a; node-b's policy shows only once node-a forwards: its generic candidate
    # joins then, and the search starts again from sets of one.
    c = _copy(ROOT / "kptrace" / "demo" / "cluster", tmp_path, "cluster")
    _edit(c / "node-a" / "sysctl.txt", lambda t: re.sub(r"(net\.ipv4\.(ip_forward|conf\.\S+\.forwarding)) = 1",
                                                       r"\1 = 0", t))
    _edit(c / "node-b" / "iptables-save.txt", lambda t: t.replace(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]", 1)
        .replace('-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD\n', ""))
    cluster = load_cluster([c], [], [])
    assert [n.name for n in cluster] == ["node-a", "node-b"]
    s = search_fix(cluster, cluster[0], Flow(ip_address("10.244.1.5"), ip_address("10.244.2.7"), "udp", None, 53))
    assert s.status == FOUND and s.before == "DROPPED"
    forward = "@node-a sysctl -w net.ipv4.ip_forward=1"
    assert _sets(s) == {(forward, "@node-b iptables -P FORWARD ACCEPT"),
                        (forward, *(f"@node-b {c}" for c in FORWARD_PAIR))}
    # node-b's policy was no candidate at first: the node-a trace does not reach it.
    [node_a] = [n for n in cluster if n.name == "node-a"]
    from kptrace.walkers.netfilter import trace_flow
    from kptrace.whatif.search import candidates

    first = candidates(cluster, node_a, trace_flow(node_a, s.flow, cluster))
    assert ("@node-b iptables -P FORWARD ACCEPT",) not in [x.changes for x in first]


def test_a_large_dump_read_lazily_gets_the_generic_candidates() -> None:
    # As a 10k-Service dump is read (KPTRACE_LAZY_MIN_LINES=0: every dump): the checks are not run, so the
    # candidates are the generic ones, and they still find the pair; the output says the catalogue was left out.
    import os
    import subprocess
    import sys

    env = {**os.environ, "KPTRACE_LAZY_MIN_LINES": "0"}
    r = subprocess.run([sys.executable, "-m", "kptrace", "why", "10.96.12.34:80", "--from", "10.244.1.5", "--dump",
                        str(BROKEN), "--no-cache", "--suggest-fix", "-o", "json"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=300, check=False)
    doc = json.loads(r.stdout)
    assert any("parsed when the trace reads them" in a for a in doc["assumptions"]), doc["assumptions"]
    search = doc["suggest_fix"]
    assert search["catalogue"] is False and {c["origin"] for c in search["candidates"]} == {"generic"}
    assert [f["changes"] for f in search["fixes"]] == [
        ["iptables -P FORWARD ACCEPT", "sysctl -w net.bridge.bridge-nf-call-iptables=1"]]


def test_hairpin_off_on_the_sources_port(tmp_path: Path) -> None:
    # kube-dns's pod 10.244.1.9 sits on vethaa5fcf1f (neighbour MAC, learned on that port): hairpin off there.
    b = _copy(NODE_A, tmp_path, "hairpin")
    _edit(b / "bridge-link.txt", lambda t: "".join(
        f"{ln}\n    hairpin {'off' if 'vethaa5fcf1f' in ln else 'on'} guard off learning on flood on\n"
        for ln in t.splitlines()))
    [node] = load_cluster([b], [], [])
    flow = Flow(ip_address("10.244.1.9"), ip_address("10.96.0.10"), "udp", None, 53)
    s = search_fix([node], node, flow)
    assert s.status == FOUND and _sets(s) == {("ip link set vethaa5fcf1f type bridge_slave hairpin on",)}
    assert s.candidates[s.fixes[0].members[0]].origin == "KPT404"
    # Without the checks (a large dump), the same change is the generic candidate for the source's port.
    from kptrace.walkers.netfilter import trace_flow
    from kptrace.whatif.search import candidates

    generic = candidates([node], node, trace_flow(node, flow, [node]), findings=[])
    assert [c.changes for c in generic] == [("ip link set vethaa5fcf1f type bridge_slave hairpin on",)]


def test_a_flow_that_arrives_needs_nothing() -> None:
    s = _search(BROKEN, Flow(ip_address("10.244.1.5"), ip_address("10.244.1.12"), "tcp", None, 8080))
    assert s.status == NOT_NEEDED and not s.candidates and s.sets_tried == 0


def test_bounds_are_said() -> None:
    s = _search(BROKEN, WEB, max_sets=2)
    assert s.status == BOUNDED and s.sets_tried == 2 and "stopped after 2 sets" in (s.bound_hit or "")
    assert any("search bound hit" in ln for ln in search_lines(s))
    s = _search(BROKEN, WEB, max_candidates=1)
    assert s.dropped >= 2 and "the first 1" in (s.bound_hit or "") and s.status == BOUNDED
    s = _search(BROKEN, WEB, max_size=1)
    assert s.status == BOUNDED and "sets of at most 1" in (s.bound_hit or "")


def test_why_suggest_fix_human_output() -> None:
    code, out = _run("why", "10.96.12.34:80", "--from", "10.244.1.5", "--dump", str(BROKEN), "--suggest-fix",
                     "--width", "200")
    assert code == 1
    assert "smallest fix: 2 of the candidates (2 ways), verified by re-tracing; no smaller set of them works" in out
    assert "try it: --what-if 'iptables -I FORWARD 1 -s 10.244.0.0/16 -j ACCEPT'" in out


# --- the schema: what-if and fix keys --------------------------------------------------------------------

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def validator() -> Any:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def why_doc() -> dict[str, Any]:
    code, out = _run("why", "10.96.12.34:80", "--from", "10.244.1.5", "--dump", str(BROKEN), "-o", "json",
                     "--what-if", "iptables -P FORWARD ACCEPT", "--suggest-fix")
    doc: dict[str, Any] = json.loads(out)
    assert doc["suggest_fix"]["status"] == "found" and doc["without_what_if"] == {"disposition": "DROPPED"}
    return doc


@pytest.fixture(scope="module")
def check_doc() -> dict[str, Any]:
    _, out = _run("check", "--dump", str(BROKEN), "-o", "json")
    doc: dict[str, Any] = json.loads(out)
    assert any("fix" in r for r in doc["results"])
    return doc


def test_what_if_and_fix_outputs_validate(validator: Any, why_doc: dict[str, Any], check_doc: dict[str, Any]) -> None:
    assert not list(validator.iter_errors(why_doc))
    assert not list(validator.iter_errors(check_doc))
    # With FORWARD ACCEPT tried, only the bridge sysctl is left to find.
    assert [f["changes"] for f in why_doc["suggest_fix"]["fixes"]] == [
        ["sysctl -w net.bridge.bridge-nf-call-iptables=1"]]


def test_check_suggest_fix_searches_what_the_fix_leaves(validator: Any) -> None:
    code, out = _run("check", "--dump", str(BROKEN), "--suggest-fix", "-o", "json")
    doc = json.loads(out)
    assert not list(validator.iter_errors(doc))
    fix = next(r["fix"] for r in doc["results"] if r["id"] == "KPT201")
    # KPT201's fix leaves flows that still fail for KPT101: the search pairs the two.
    search = fix["search"]
    assert search["status"] == "found" and search["size"] == 2
    assert ["sysctl -w net.bridge.bridge-nf-call-iptables=1"] in [
        [c for c in f["changes"] if c.startswith("sysctl")] for f in search["fixes"]]
    assert not any("search" in r.get("fix", {}) for r in doc["results"] if r["id"] == "KPT101")
    assert list(validator.iter_errors(_set(doc, ["results", doc["results"].index(
        next(r for r in doc["results"] if r["id"] == "KPT201")), "fix", "search", "flow"], "10.244.1.5")))


def _set(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    where: Any = doc
    for k in path[:-1]:
        where = where[k]
    where[path[-1]] = value
    return doc


def _what_if_input(doc: dict[str, Any]) -> int:
    return next(i for i, r in enumerate(doc["inputs"]) if r["kind"] == "what-if")


@pytest.mark.parametrize(("path", "value"), [
    (["inputs", "WI", "change"], 7),
    (["inputs", "WI", "applied"], "node-a"),
    (["inputs", "WI", "applied", 0, "effect"], None),
    (["without_what_if"], "DROPPED"),
    (["without_what_if", "disposition"], "SOMEWHERE"),
    (["suggest_fix", "status"], "maybe"),
    (["suggest_fix", "fixes", 0, "changes"], "sysctl -w net.bridge.bridge-nf-call-iptables=1"),
    (["suggest_fix", "fixes", 0, "arrives"], "yes"),
    (["suggest_fix", "size"], "2"),
    (["suggest_fix", "bound_hit"], 3),
    (["suggest_fix", "candidates", 0, "alone"], 1),
])
def test_schema_refuses_a_wrong_type_in_what_if_keys(validator: Any, why_doc: dict[str, Any], path: list[Any],
                                                    value: Any) -> None:
    path = [_what_if_input(why_doc) if p == "WI" else p for p in path]
    assert list(validator.iter_errors(_set(why_doc, path, value)))


@pytest.mark.parametrize(("key", "value"), [
    ("changes", "iptables -P FORWARD ACCEPT"), ("status", "fixed"), ("flows_concerned", "12"),
    ("flows", [{"src": "10.244.1.5"}]), ("check_after", 1),
])
def test_schema_refuses_a_wrong_type_in_fix(validator: Any, check_doc: dict[str, Any], key: str, value: Any) -> None:
    i = next(i for i, r in enumerate(check_doc["results"]) if "fix" in r)
    assert list(validator.iter_errors(_set(check_doc, ["results", i, "fix", key], value)))
