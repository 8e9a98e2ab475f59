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
    assert _sets(s) == {(*FORWARD_PAIR, "modprobe br_netfilter"), ("iptables -P FORWARD ACCEPT", "modprobe br_netfilter")}


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
    assert [f["changes"] for f in why_doc["suggest_fix"]["fixes"]] == [["sysctl -w net.bridge.bridge-nf-call-iptables=1"]]


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
