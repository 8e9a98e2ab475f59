"""`kptrace check` end to end: exit codes 0/1/2/3/4, --fail-on, --verbose, the JSON document and its schema."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from kptrace.checks import facts, registry
from kptrace.cli.app import _register, app
from kptrace import load as load_module
from kptrace.load import load_cluster
from kptrace.render.jsonout import schema
from tests.checks.cases import FIXTURES, apply_model, write_bundle

_register()
runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "kptrace" / "demo" / "broken-node"
NO_ENDPOINTS = ('-A KUBE-SERVICES -d 10.96.77.7/32 -p tcp -m comment --comment "default/broken has no endpoints" '
                '-m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable')


def _healthy() -> dict[str, Any]:
    """node-a of the demo, every file the checks read (tests/fixtures/checks/KPT002.yml, pass case)."""
    doc = yaml.safe_load((FIXTURES / "KPT002.yml").read_text())
    return copy.deepcopy(next(c for c in doc["cases"] if c["name"] == "pass_every_input_present"))


@pytest.fixture()
def healthy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, Any]]:
    """A complete bundle; the routing fields its files will fill once load.py reads them come from the case."""
    case = _healthy()
    models: dict[str, dict[str, Any]] = {"node-a": case["model"]}

    def load_with_routing(paths: list[Path], *args: Any, **kwargs: Any) -> list[Any]:
        nodes = load_cluster(paths, *args, **kwargs)
        for n in nodes:
            apply_model(n, "node-a", models.get(n.name, {}))
        return nodes

    monkeypatch.setattr(load_module, "load_cluster", load_with_routing)
    return tmp_path / "node-a", case


def check(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["check", *args])
    return r.exit_code, r.stdout


def check_json(*args: str) -> tuple[int, dict[str, Any]]:
    code, out = check(*args, "-o", "json")
    doc = json.loads(out)  # stdout holds the document and nothing else
    jsonschema.validate(doc, schema())
    return code, doc


def statuses(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["id"], r["status"]) for r in doc["results"]]


def test_exit_0_on_a_healthy_node(healthy: tuple[Path, dict[str, Any]]) -> None:
    bundle, case = healthy
    write_bundle(bundle, case["bundle"])
    code, doc = check_json("--dump", str(bundle))
    assert code == 0, [r for r in doc["results"] if r["status"] != "PASS"]
    assert doc["summary"] == {"total": len(doc["results"]), "fail": 0, "warn": 0, "info": 0, "pass": len(doc["results"]),
                              "cannot_tell": 0}
    assert {r["id"] for r in doc["results"]} == {s.id for s in registry.all_checks()}
    kinds = {i["file"]: i["kind"] for i in doc["inputs"]}
    assert kinds["node-a/services.txt"] == "services" and kinds["node-a/conntrack.txt"] == "conntrack"


def test_fail_on_decides_whether_a_medium_fail_exits_1(healthy: tuple[Path, dict[str, Any]]) -> None:
    bundle, case = healthy
    dump = case["bundle"]["iptables-save.txt"]
    filter_end = ":OUTPUT ACCEPT [0:0]\nCOMMIT"  # the end of the filter table only
    assert dump.count(filter_end) == 1
    case["bundle"]["iptables-save.txt"] = dump.replace(
        filter_end, f":OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A FORWARD -j KUBE-SERVICES\n{NO_ENDPOINTS}\nCOMMIT")
    write_bundle(bundle, case["bundle"])
    code, doc = check_json("--dump", str(bundle))
    assert ("KPT204", "FAIL") in statuses(doc)
    # A FAIL below --fail-on does not fail the run, and with no WARN there is nothing inconclusive.
    assert code == 0
    assert check("--dump", str(bundle), "--fail-on", "medium")[0] == 1
    assert check("--dump", str(bundle), "--fail-on", "low")[0] == 1
    assert check("--dump", str(bundle), "--fail-on", "high")[0] == 0


def test_broken_node_fails_with_kpt101_and_kpt201() -> None:
    code, doc = check_json("--dump", str(BROKEN))
    assert code == 1
    fails = {r["id"]: r for r in doc["results"] if r["status"] == "FAIL"}
    assert fails["KPT101"]["severity"] == "HIGH"
    assert fails["KPT101"]["locations"] == [{"file": "broken-node/sysctl.txt", "line": 20}]
    assert fails["KPT201"]["locations"][0] == {"file": "broken-node/iptables-save.txt", "line": 16}
    r = fails["KPT101"]
    first = r["locations"][0]
    expected = hashlib.sha256("\0".join([r["id"], first["file"], str(first["line"]), r["message"]]).encode()).hexdigest()
    assert r["fingerprint"] == expected
    assert r["docs_url"] == "docs/checks/KPT101.md" and "modprobe br_netfilter" in r["remediation"]


def test_demo_cluster_has_no_high_fail() -> None:
    code, doc = check_json("--demo")
    high = [r for r in doc["results"] if r["status"] == "FAIL" and r["severity"] == "HIGH"]
    assert not high, high
    assert code in (0, 4)
    assert {r["node"] for r in doc["results"]} == {"node-a", "node-b"}
    # default/broken has no endpoints on both nodes: MEDIUM, so only --fail-on medium turns it into exit 1.
    assert ("KPT204", "FAIL") in statuses(doc)
    assert check("--demo", "--fail-on", "medium")[0] == 1


def test_exit_4_when_checks_cannot_tell(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "node", {"sysctl.txt": "net.bridge.bridge-nf-call-iptables = 1\n"})
    code, doc = check_json("--dump", str(bundle))
    assert code == 4
    assert not [r for r in doc["results"] if r["status"] == "FAIL"]
    unknown = {r["id"]: r for r in doc["results"] if r["status"] == "CANNOT_TELL"}
    assert "cannot tell: give ip-route.txt" in unknown["KPT401"]["message"]
    assert unknown["KPT401"]["settle"] == ["ip-route.txt"]
    assert "cannot tell: give services.txt" in unknown["KPT501"]["message"]
    # The human view says it in one line, not a row per check.
    code, out = check("--dump", str(bundle))
    assert code == 4 and "checks cannot tell: give " in out and "ip-route.txt (KPT" in out
    assert not [line for line in out.splitlines() if line.startswith("CANNOT_TELL")]


def test_an_unreadable_line_is_kpt001_and_the_rest_is_checked(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "node", {"sysctl.txt": "net.ipv4.ip_forward = 1\nnet.ipv4.conf.all.rp_filter\n"})
    code, doc = check_json("--dump", str(bundle))
    assert code == 4  # not 2: the rest of the input was read and checked
    kpt001 = [r for r in doc["results"] if r["id"] == "KPT001"]
    assert kpt001[0]["status"] == "WARN" and kpt001[0]["locations"] == [{"file": "node/sysctl.txt", "line": 2, "col": 1}]
    assert ("KPT103", "PASS") in statuses(doc), "line 1 of the same file was read"


def test_nothing_readable_is_exit_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("the service does not answer, please help\n")
    p = subprocess.run([sys.executable, "-m", "kptrace", "check", "--dump", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"{bad}:1:1: cannot tell what command produced this file" in p.stderr


def test_a_crashing_check_is_kpt003_and_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = registry.get_check("KPT103")
    assert spec is not None

    def boom(ctx: object) -> list[registry.Outcome]:
        raise ZeroDivisionError("division by zero")

    import dataclasses

    monkeypatch.setitem(registry._REGISTRY, "KPT103", dataclasses.replace(spec, func=boom))
    code, doc = check_json("--dump", str(BROKEN))
    assert code == 3
    crash = [r for r in doc["results"] if r["id"] == "KPT003" and r["status"] == "FAIL"]
    assert len(crash) == 1 and "KPT103 (ip-forward-off) crashed: ZeroDivisionError" in crash[0]["message"]
    assert ("KPT101", "FAIL") in statuses(doc), "the other checks still ran"


def test_human_output_hides_pass_unless_verbose() -> None:
    code, out = check("--dump", str(BROKEN))
    assert code == 1
    assert "KPT101" in out and "broken-node/sysctl.txt:20" in out and "how to fix:" in out
    rows = [line.split() for line in out.splitlines()]
    assert not [r for r in rows if r and r[0] == "PASS"] and "PASS (shown with --verbose)" in out
    code, out = check("--dump", str(BROKEN), "--verbose")
    assert code == 1 and ["PASS", "HIGH", "KPT103"] in [line.split()[:3] for line in out.splitlines()]


def test_bundle_with_both_backends_and_service_list(tmp_path: Path) -> None:
    """Files load.py does not read (services.txt, a second IPv4 dump) are read by the checks instead."""
    dump = (BROKEN / "iptables-save.txt").read_text()
    bundle = write_bundle(tmp_path / "node", {
        "iptables-save.txt": dump,
        "iptables-nft-save.txt": dump,
        "iptables-legacy-save.txt": "# Generated by iptables-save v1.8.9 (legacy)\n*filter\n:INPUT ACCEPT [0:0]\n"
                                    ":FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n",
        "services.txt": "firewalld.service loaded active running firewalld - dynamic firewall daemon\n",
        "sysctl.txt": (BROKEN / "sysctl.txt").read_text(),
    })
    code, doc = check_json("--dump", str(bundle))
    assert code == 1
    assert ("KPT202", "FAIL") in statuses(doc) and ("KPT501", "FAIL") in statuses(doc)
    kinds = {i["file"]: i["kind"] for i in doc["inputs"]}
    assert kinds["node/iptables-save.txt"] == "iptables-save"
    assert kinds["node/iptables-legacy-save.txt"] == "iptables-legacy-save"
    assert kinds["node/iptables-nft-save.txt"] == "iptables-save"  # identical to iptables-save.txt: read once


def test_no_input_is_a_usage_error() -> None:
    p = subprocess.run([sys.executable, "-m", "kptrace", "check"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no input" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "kptrace", "check", "--demo", "--fail-on", "urgent"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr


# --- IPVS mode (KPT301-KPT305) ------------------------------------------------------------------

IPVS_DEMO = ROOT / "kptrace" / "demo" / "ipvs-node"
IPVS_CHECKS = {"KPT301", "KPT302", "KPT303", "KPT304", "KPT305"}


def test_ipvs_demo_fails_no_ipvs_check() -> None:
    code, doc = check_json("--dump", str(IPVS_DEMO))
    mine = {(r["id"], r["status"]) for r in doc["results"] if r["id"] in IPVS_CHECKS}
    # default/broken (10.96.77.7:80, no endpoints) is a ClusterIP virtual service without real servers: the
    # same finding as in iptables mode (KPT204, MEDIUM), not an IPVS fault.
    assert mine == {("KPT301", "PASS"), ("KPT302", "PASS"), ("KPT303", "PASS"), ("KPT304", "INFO"),
                    ("KPT305", "PASS")}
    fails = [r for r in doc["results"] if r["status"] == "FAIL"]
    assert [(r["id"], r["severity"]) for r in fails] == [("KPT204", "MEDIUM")]
    assert "ipvs/TCP 10.96.77.7:80" in fails[0]["message"] or "10.96.77.7:80" in fails[0]["message"]
    assert code in (0, 4)


def test_ipvs_checks_pass_on_an_iptables_mode_node() -> None:
    _, doc = check_json("--demo")
    mine = [r for r in doc["results"] if r["id"] in IPVS_CHECKS]
    assert len(mine) == 10 and all(r["status"] == "PASS" and "not in IPVS mode" in r["message"] for r in mine)


def test_ipvs_demo_with_a_node_ip_on_kube_ipvs0(tmp_path: Path) -> None:
    """The IPVS demo with a Service whose externalIPs name the node's own address, and ip_vs built in."""
    import shutil

    bundle = tmp_path / "ipvs-node"
    shutil.copytree(IPVS_DEMO, bundle)
    mods = bundle / "modules.txt"
    mods.write_text("".join(line for line in mods.read_text().splitlines(keepends=True) if not line.startswith("ip_vs ")))
    addr = bundle / "ip-addr.txt"
    addr.write_text(addr.read_text() + "    inet 192.168.56.11/32 scope global kube-ipvs0\n"
                                       "       valid_lft forever preferred_lft forever\n")
    code, doc = check_json("--dump", str(bundle))
    assert code == 1
    by_id = {r["id"]: r for r in doc["results"] if r["id"] in IPVS_CHECKS}
    # ip_vs is not in /proc/modules, but ipvsadm lists virtual services: built in, not missing.
    assert by_id["KPT301"]["status"] == "PASS" and "ip_vs is built in" in by_id["KPT301"]["message"]
    assert by_id["KPT305"]["status"] == "FAIL"
    assert by_id["KPT305"]["locations"][:2] == [{"file": "ipvs-node/ip-addr.txt", "line": 49},
                                                {"file": "ipvs-node/ip-addr.txt", "line": 9}]
    # 192.168.56.11 has its NodePort virtual service, so KPT302 has nothing to say.
    assert by_id["KPT302"]["status"] == "PASS"


# --- a cluster: several bundles, loaded in parallel, one summary row per node --------------------------


def test_cluster_summary_table_in_human_output() -> None:
    _, out = check("--demo")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "per node")
    rows = [line.split() for line in lines[start + 1:]]
    assert rows[0] == ["node", "FAIL", "WARN", "INFO", "failing", "checks"]
    by_node = {r[0]: r for r in rows if r and r[0] in ("node-a", "node-b")}
    assert by_node["node-a"][1] == "1" and by_node["node-a"][-1] == "KPT204"
    assert by_node["node-b"][1] == "1" and by_node["node-b"][-1] == "KPT204"
    # One node: no per-node table.
    assert "per node" not in check("--dump", str(BROKEN))[1]


def test_cluster_json_adds_a_nodes_list() -> None:
    _, doc = check_json("--demo")
    assert [n["node"] for n in doc["nodes"]] == ["node-a", "node-b"]
    for n in doc["nodes"]:
        mine = [r for r in doc["results"] if r["node"] == n["node"]]
        assert n["total"] == len(mine) and n["fail"] == sum(r["status"] == "FAIL" for r in mine)
        assert n["failing"] == sorted({r["id"] for r in mine if r["status"] == "FAIL"}) == ["KPT204"]
    assert sum(n["total"] for n in doc["nodes"]) == doc["summary"]["total"]
    _, single = check_json("--dump", str(BROKEN))
    assert "nodes" not in single  # one node: the document is as before


def test_parallel_load_equals_sequential() -> None:
    from kptrace.checks.run import run_all, run_checks
    from kptrace.cli.check import load_contexts
    from kptrace.load import demo_path

    seq = run_all(facts.contexts(load_cluster([demo_path()])))
    named = load_contexts([demo_path()], [], [], workers=2)
    assert [name for name, _ in named] == ["node-a", "node-b"]
    assert [p.name for p in named[0][1].peers] == ["node-b"]
    par = [f for name, ctx in named for f in run_checks(ctx, node_name=name)]
    assert par == seq


def test_a_directory_of_bundles_with_a_tarball_and_a_broken_one(tmp_path: Path) -> None:
    """DaemonSet output: bundle directories and .tar.gz side by side; an unparsable bundle spoils only itself."""
    import shutil
    import tarfile

    d = tmp_path / "bundles"
    d.mkdir()
    shutil.copytree(ROOT / "kptrace" / "demo" / "cluster" / "node-a", d / "node-a")
    with tarfile.open(d / "node-b.tar.gz", "w:gz") as tar:
        tar.add(ROOT / "kptrace" / "demo" / "cluster" / "node-b", arcname="node-b")
    write_bundle(d / "bad", {"iptables-save.txt": (BROKEN / "iptables-save.txt").read_text(),
                             "sysctl.txt": "net.ipv4.ip_forward = 1\nnet.ipv4.conf.all.rp_filter\n"})
    code, doc = check_json("--dump", str(d))
    # The bad bundle is read around its bad line (KPT001 WARN) and checked like the others: the broken
    # node's own FAILs (HIGH) decide the exit code.
    assert code == 1
    assert [n["node"] for n in doc["nodes"]] == ["bad", "node-a", "node-b"]
    failing = {n["node"]: n["failing"] for n in doc["nodes"]}
    assert failing["node-a"] == ["KPT204"] and failing["node-b"] == ["KPT204"]
    assert "KPT201" in failing["bad"]
    kpt001 = [r for r in doc["results"] if r["id"] == "KPT001" and r["status"] == "WARN"]
    assert kpt001 == [r for r in kpt001 if r["node"] == "bad"] and kpt001[0]["locations"] == [
        {"file": "bad/sysctl.txt", "line": 2, "col": 1}]
