"""What `kptrace collect` runs, how each failure is reported, and that live and bundle load alike."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from kptrace.collect import bundle, live
from kptrace.collect.capture import (
    ABSENT,
    DENIED,
    FAILED,
    MISSING,
    OK,
    SKIPPED,
    TIMEOUT,
    read_file,
    run_command,
)
from kptrace.load import load_cluster, load_node_from_texts
from kptrace.model.node import Node

from .conftest import DEMO, HOSTNAME, FakeNode

EXPECTED_FILES = [
    "iptables-save.txt", "ip6tables-save.txt", "nft-ruleset.json", "ip-addr.json", "ip-link.json",
    "ip-route.json", "ip-6-route.json", "ip-rule.json", "ip-6-rule.json", "ip-neigh.json", "bridge-fdb.json",
    "bridge-link.json", "ipset-save.txt", "ipvsadm.txt", "ipvsadm-save.txt", "services.txt", "sysctl.txt",
    "modules.txt", "flannel-subnet.env", "hostname.txt", "node.yaml",
]


def by_name(caps: list[live.Capture]) -> dict[str, live.Capture]:
    return {c.name: c for c in caps}


def test_collects_every_bundle_file_in_order(fake_node: FakeNode) -> None:
    caps = live.collect(fake_node.options())
    assert [c.name for c in caps if c.data is not None] == EXPECTED_FILES
    assert [c for c in caps if c.warn] == []
    got = by_name(caps)
    assert got["iptables-save.txt"].data == (DEMO / "iptables-save.txt").read_bytes()
    assert got["ip-route.json"].command == ("ip", "-j", "route", "show", "table", "all")
    assert got["conntrack.txt"].status == SKIPPED and got["conntrack.txt"].data is None


def test_labels_name_the_command(fake_node: FakeNode) -> None:
    labels = {c.name: c.label for c in live.collect(fake_node.options()) if c.data is not None}
    assert labels["iptables-save.txt"] == "live:iptables-save"
    assert labels["ip-addr.json"] == "live:ip -j addr show"
    assert labels["sysctl.txt"].startswith("live:") and labels["sysctl.txt"].endswith("/sys")
    assert labels["modules.txt"].endswith("/modules")
    assert labels["node.yaml"] == "live:node.yaml"


def test_sysctl_subset_read_from_proc(fake_node: FakeNode) -> None:
    text = by_name(live.collect(fake_node.options()))["sysctl.txt"].data.decode()  # type: ignore[union-attr]
    assert text.splitlines() == [
        "net.bridge.bridge-nf-call-iptables = 1",
        "net.ipv4.conf.all.route_localnet = 1",
        "net.ipv4.conf.all.rp_filter = 0",
        "net.ipv4.conf.cni0.forwarding = 1",
        "net.ipv4.conf.flannel/1.rp_filter = 0",  # a dot in an interface name is a slash, as sysctl prints it
        "net.ipv4.ip_forward = 1",
        "net.ipv4.ip_local_port_range = 32768\t60999",
        "net.ipv6.conf.all.forwarding = 0",
        "net.netfilter.nf_conntrack_count = 42",
        "net.netfilter.nf_conntrack_max = 131072",
    ]


def test_node_yaml_carries_identity(fake_node: FakeNode) -> None:
    caps = live.collect(fake_node.options(node_name="k8s-node-a", node_ips=("192.168.56.11",),
                                          pod_cidr="10.244.1.0/24"))
    text = by_name(caps)["node.yaml"].data.decode()  # type: ignore[union-attr]
    assert 'name: "k8s-node-a"' in text and f'hostname: "{HOSTNAME}"' in text
    assert 'node_ips: ["192.168.56.11"]' in text and 'pod_cidr: "10.244.1.0/24"' in text


def test_include_conntrack(fake_node: FakeNode) -> None:
    cap = by_name(live.collect(fake_node.options(include=frozenset({"conntrack"}))))["conntrack.txt"]
    assert cap.status == OK and b"ESTABLISHED" in (cap.data or b"")
    assert "1 flow entries" in cap.stderr


@pytest.mark.parametrize("tool,name", [("nft", "nft-ruleset.json"), ("ipvsadm", "ipvsadm.txt"),
                                       ("ipset", "ipset-save.txt"), ("systemctl", "services.txt")])
def test_missing_tool_is_a_warning_and_the_rest_is_collected(fake_node: FakeNode, tool: str, name: str) -> None:
    fake_node.tools[tool] = None  # type: ignore[assignment]
    fake_node.install()
    caps = by_name(live.collect(fake_node.options()))
    assert caps[name].status == MISSING and caps[name].data is None
    assert tool in caps[name].message and "not found" in caps[name].message
    assert caps["iptables-save.txt"].status == OK and caps["ip-addr.json"].status == OK


def test_absent_kernel_parts_are_not_warnings(fake_node: FakeNode) -> None:
    (fake_node.root / "proc" / "net" / "ip_vs").unlink()
    (fake_node.root / "sys" / "module" / "ip_set").rmdir()
    modules = (fake_node.root / "proc" / "modules").read_text().splitlines()
    fake_node.set_proc("modules", "".join(m + "\n" for m in modules if not m.startswith("ip_set")))
    (fake_node.root / "run" / "flannel" / "subnet.env").unlink()
    (fake_node.root / "run" / "systemd" / "system").rmdir()
    caps = by_name(live.collect(fake_node.options(include=frozenset({"conntrack"}))))
    for name in ("ipvsadm.txt", "ipset-save.txt", "flannel-subnet.env", "services.txt"):
        assert caps[name].status == ABSENT and not caps[name].warn, caps[name]
    assert "ip_vs" in caps["ipvsadm.txt"].message and "ip_set" in caps["ipset-save.txt"].message


def test_denied_and_failed_commands(fake_node: FakeNode) -> None:
    denied = ("iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied "
              "(you must be root)\n")
    fake_node.tools["iptables-save"] = {"": (4, "", denied, 0.0)}
    fake_node.tools["nft"] = {"-j list ruleset": (1, "", "Error: syntax error\n", 0.0)}
    fake_node.install()
    caps = by_name(live.collect(fake_node.options()))
    assert caps["iptables-save.txt"].status == DENIED and caps["iptables-save.txt"].exit_code == 4
    assert "Permission denied" in caps["iptables-save.txt"].message
    assert caps["nft-ruleset.json"].status == FAILED and "syntax error" in caps["nft-ruleset.json"].message


def test_timeout_is_reported(fake_node: FakeNode) -> None:
    fake_node.tools["nft"] = {"-j list ruleset": (0, "{}", "", 5.0)}
    fake_node.install()
    cap = by_name(live.collect(fake_node.options(timeout=0.5)))["nft-ruleset.json"]
    assert cap.status == TIMEOUT and "0.5s" in cap.message and cap.data is None


def test_run_command_never_uses_a_shell(fake_node: FakeNode) -> None:
    cap = run_command("x", ["ip", "-j", "addr", "show;", "rm", "-rf", "/"], fake_node.env)
    assert cap.status == FAILED and "unexpected arguments" in cap.stderr  # one argv, passed verbatim


def test_read_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x\n")
    assert read_file("f.txt", tmp_path / "f").data == b"x\n"
    assert read_file("g.txt", tmp_path / "g").status == ABSENT


# --- iptables backends --------------------------------------------------------------------------

NFT_HEADER = "# Generated by iptables-save v1.8.9 (nf_tables) on Sat Nov 22 00:00:00 2025\n"
LEGACY_HEADER = "# Generated by iptables-save v1.8.9 (legacy) on Sat Nov 22 00:00:00 2025\n"
RULES = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n"


def _backends(fake_node: FakeNode, main: str, other: str | None, other_tool: str) -> dict[str, live.Capture]:
    fake_node.tools["iptables-save"] = {"": (0, main, "", 0.0)}
    if other is not None:
        fake_node.tools[other_tool] = {"": (0, other, "", 0.0)}
    fake_node.install()
    return by_name(live.iptables(4)(fake_node.options()))


def test_nft_backend_with_legacy_tables(fake_node: FakeNode) -> None:
    fake_node.set_proc("net/ip_tables_names", "filter\n")
    caps = _backends(fake_node, NFT_HEADER + RULES, "# legacy\n" + RULES, "iptables-legacy-save")
    assert list(caps) == ["iptables-save.txt", "iptables-legacy-save.txt"]
    assert caps["iptables-legacy-save.txt"].command == ("iptables-legacy-save",)


def test_nft_backend_legacy_module_not_loaded(fake_node: FakeNode) -> None:
    caps = _backends(fake_node, NFT_HEADER + RULES, RULES, "iptables-legacy-save")
    # Without /proc/net/ip_tables_names the legacy backend is not even asked (that would load it).
    assert caps["iptables-legacy-save.txt"].status == ABSENT and caps["iptables-legacy-save.txt"].data is None


def test_legacy_backend_nft_empty(fake_node: FakeNode) -> None:
    caps = _backends(fake_node, LEGACY_HEADER + RULES, "", "iptables-nft-save")
    assert list(caps) == ["iptables-save.txt", "iptables-nft-save.txt"]


def test_both_backends_hold_rules_named_after_each(fake_node: FakeNode) -> None:
    caps = _backends(fake_node, LEGACY_HEADER + RULES, NFT_HEADER + RULES, "iptables-nft-save")
    assert list(caps) == ["iptables-legacy-save.txt", "iptables-nft-save.txt"]
    assert caps["iptables-legacy-save.txt"].command == ("iptables-save",)
    node = load_node_from_texts({k: v.data for k, v in caps.items() if v.data is not None})
    assert 4 in node.rulesets and 4 in node.legacy_rulesets


def test_no_iptables_at_all(fake_node: FakeNode) -> None:
    for tool in ("iptables-save", "ip6tables-save"):
        fake_node.tools[tool] = None  # type: ignore[assignment]
    fake_node.install()
    caps = by_name(live.collect(fake_node.options()))
    assert caps["iptables-save.txt"].status == MISSING
    with pytest.raises(live.InputError, match="cannot read this node's iptables rules"):
        live.live_node(options=fake_node.options())


# --- one model for live and bundle ----------------------------------------------------------


def _model(node: Node) -> dict[str, object]:
    """Everything but where it was read from (labels differ: live:<command> vs bundle paths)."""
    def strip(x: object) -> object:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: strip(getattr(x, f.name)) for f in dataclasses.fields(x)
                    if f.name not in ("source", "file", "files", "sha256")}
        if isinstance(x, (list, tuple)):
            return [strip(v) for v in x]
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()}
        return x

    d = {f.name: strip(getattr(node, f.name)) for f in dataclasses.fields(node)
         if f.name not in ("inputs", "assumptions", "rulesets", "legacy_rulesets")}
    d["rules"] = {fam: [(t, c, [r.source.text for r in ch.rules]) for t, tab in rs.tables.items()
                        for c, ch in tab.chains.items()] for fam, rs in node.rulesets.items()}
    d["inputs"] = [i.kind for i in node.inputs if i.kind != "manifest"]  # a bundle's own record, not the node's
    return d


def test_live_node_equals_its_bundle(fake_node: FakeNode, tmp_path: Path) -> None:
    node, caps = live.live_node(["192.168.56.11"], options=fake_node.options())
    assert {i.file for i in node.inputs} >= {"live:iptables-save", "live:ip -j addr show"}
    out = bundle.write_bundle(caps, tmp_path / "b.tar.gz", bundle.Meta(HOSTNAME, HOSTNAME, 0.0, 1.0))
    [from_bundle] = load_cluster([out], ["192.168.56.11"])
    assert node.name == from_bundle.name == HOSTNAME
    assert _model(node) == _model(from_bundle)
    assert [i.file.rsplit("/", 1)[-1] for i in from_bundle.inputs if i.kind != "manifest"] == [
        c.name for c in caps if c.label in {i.file for i in node.inputs}]


def test_manifest_records_every_command(fake_node: FakeNode, tmp_path: Path) -> None:
    fake_node.tools["nft"] = None  # type: ignore[assignment]
    fake_node.install()
    caps = live.collect(fake_node.options())
    out = bundle.write_bundle(caps, tmp_path / "d", bundle.Meta(HOSTNAME, "k8s-a", 1700000000.0, 1.5))
    man = json.loads((out / "manifest.json").read_text())
    assert man["hostname"] == HOSTNAME and man["node_name"] == "k8s-a" and man["created"] == "2023-11-14T22:13:20Z"
    assert man["kptrace_version"] and man["kernel"]["release"]
    entries = {tuple(e["command"]): e for e in man["commands"]}
    ok = entries[("iptables-save",)]
    assert ok["status"] == "ok" and ok["exit_code"] == 0 and ok["file"] == "iptables-save.txt"
    assert ok["sha256"] and ok["bytes"] == len((out / "iptables-save.txt").read_bytes())
    assert isinstance(ok["duration_s"], float) and ok["stderr"] == ""
    nft = entries[("nft", "-j", "list", "ruleset")]
    assert nft["status"] == "missing" and nft["file"] is None and "not found" in nft["message"]
    assert man["warnings"] == [nft["message"]]
