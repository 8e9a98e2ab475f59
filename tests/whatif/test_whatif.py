"""The what-if grammar, its application to a copy of the model, and `why --what-if` on the demo's broken node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.load import load_cluster
from kptrace.whatif.apply import apply_changes
from kptrace.whatif.grammar import WhatIfError, parse_change, parse_changes

BROKEN = Path(__file__).resolve().parents[2] / "kptrace" / "demo" / "broken-node"


@pytest.mark.parametrize("text", [
    "sysctl net.ipv4.ip_forward=1", "sysctl -w net.ipv4.ip_forward = 1", "modprobe br_netfilter",
    "iptables -P FORWARD ACCEPT", "iptables -t filter -D FORWARD 5", "iptables -D FORWARD -s 10.0.0.0/8 -j REJECT",
    "iptables -I FORWARD 1 -s 10.244.0.0/16 -j ACCEPT", "iptables -A FORWARD -d 10.244.0.0/16 -j ACCEPT",
    "ip6tables -t filter -R FORWARD 2 -j ACCEPT", "delete iptables-save.txt:12",
    "ip route add default via 192.168.0.1 dev eth0", "ip route del default",
    "ip link set veth1 type bridge_slave hairpin on", "bridge link set dev veth1 hairpin off",
    "conntrack -D -p udp -d 10.96.0.10 --dport 53", "conntrack -F",
    "nft add rule ip filter FORWARD ip saddr 10.244.0.0/16 accept", "nft delete rule inet filter forward handle 7",
    "@node-a sysctl -w net.ipv4.ip_forward=1",
])
def test_forms_parse(text: str) -> None:
    c = parse_change(text, 3)
    assert c.n == 3 and c.text == text and c.kind


@pytest.mark.parametrize(("text", "where"), [
    ("iptables -I FORWARD 1 -s 10.244.0.0/16 --bogus -j ACCEPT", "what-if:1:40: unknown option '--bogus'"),
    ("iptables -P FORWARD REJECT", "what-if:1:21: policy 'REJECT'"),
    ("sysctl net.ipv4.ip_forward", "what-if:1:8: 'net.ipv4.ip_forward' has no value"),
    ("ip route add default via 192.168.0.x", "what-if:1:26:"),
    ("frob it", "what-if:1:1: unknown command 'frob'"),
    ("iptables -A FORWARD 3 -j ACCEPT", "what-if:1:21: -A appends"),
    ("conntrack -D -d nowhere", "what-if:1:17: 'nowhere' is not an IP address"),
])
def test_errors_say_where(text: str, where: str) -> None:
    with pytest.raises(WhatIfError) as e:
        parse_change(text, 1)
    assert str(e.value).startswith(where), str(e.value)
    assert "\n" not in str(e.value)


def test_sysctl_slash_form_names_an_interface_with_a_dot() -> None:
    assert parse_change("sysctl -w net/ipv4/conf/flannel.1/forwarding=1").settings[0][0] == \
        "net.ipv4.conf.flannel/1.forwarding"


def test_changes_apply_to_a_copy_and_cite_what_if() -> None:
    [node] = load_cluster([BROKEN], [], [])
    policy = node.rulesets[4].chain("filter", "FORWARD").policy  # type: ignore[union-attr]
    w = apply_changes([node], parse_changes([
        "iptables -P FORWARD ACCEPT", "iptables -I FORWARD 2 -s 10.244.0.0/16 -j ACCEPT", "iptables -D FORWARD 1",
        "sysctl -w net.ipv4.ip_forward=0", "ip route del default", "modprobe -r br_netfilter"]))
    new = w.cluster[0]
    assert new is not node
    chain = new.rulesets[4].chain("filter", "FORWARD")
    assert chain is not None and chain.policy == "ACCEPT" and str(chain.source) == "what-if:1"
    assert str(chain.rules[0].source) == "what-if:2" and [r.index for r in chain.rules] == list(range(1, len(chain)+1))
    assert new.sysctls["net.ipv4.conf.cni0.forwarding"].value == "0"  # ip_forward sets every interface's
    assert not any(r.dst.prefixlen == 0 and r.dst.version == 4 for r in new.routes)
    assert "net.bridge.bridge-nf-call-iptables" not in new.sysctls
    # The input's model is untouched.
    old = node.rulesets[4].chain("filter", "FORWARD")
    assert old is not None and old.policy == policy and str(old.rules[0].source).endswith("iptables-save.txt:34")
    assert node.sysctls["net.ipv4.conf.cni0.forwarding"].value == "1"
    assert [i.file for i in new.inputs if i.kind == "what-if"] == [f"what-if:{n}" for n in range(1, 7)]


def test_delete_by_citation_and_by_spec() -> None:
    [node] = load_cluster([BROKEN], [], [])
    w = apply_changes([node], parse_changes(["delete broken-node/iptables-save.txt:42",
                                             "iptables -D FORWARD -i docker0 -o docker0 -j ACCEPT"]))
    texts = [r.text for r in w.cluster[0].rulesets[4].chain("filter", "FORWARD").rules]  # type: ignore[union-attr]
    assert not any("docker0" in t and "-j ACCEPT" in t and ("! -o" in t or "-o docker0 -j" in t) for t in texts)
    assert [a.effect.split(" (")[0] for a in w.applied] == ["deleted filter FORWARD rule 9",
                                                           "deleted filter FORWARD rule 9"]


def test_a_change_that_does_not_apply_is_an_error() -> None:
    [node] = load_cluster([BROKEN], [], [])
    with pytest.raises(WhatIfError, match=r"no rule 99 to delete"):
        apply_changes([node], parse_changes(["iptables -D FORWARD 99"]))
    with pytest.raises(WhatIfError, match=r"no such node"):
        apply_changes([node], parse_changes(["@elsewhere modprobe br_netfilter"]))


def _run(*args: str) -> tuple[int, str]:
    _register(list(args))
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_why_what_if_changes_the_fate_and_records_the_change() -> None:
    base = ["why", "10.244.2.5:8080", "--from", "10.244.1.5", "--dump", str(BROKEN), "-o", "json"]
    code, out = _run(*base)
    assert code == 1 and json.loads(out)["disposition"] == "DROPPED"
    code, out = _run(*base, "--what-if", "iptables -I FORWARD 1 -s 10.244.0.0/16 -j ACCEPT")
    doc = json.loads(out)
    assert code == 0 and doc["disposition"] == "FORWARDED" and doc["without_what_if"] == {"disposition": "DROPPED"}
    assert "what-if:1" in [s["source"] for s in doc["branches"][0]["steps"]]
    [rec] = [i for i in doc["inputs"] if i["kind"] == "what-if"]
    assert rec["change"].startswith("iptables -I FORWARD 1") and rec["applied"][0]["node"] == "node-a"


def test_why_what_if_parse_error_exits_2() -> None:
    from kptrace.errors import KptraceError

    _register(["why"])
    r = CliRunner().invoke(app, ["why", "10.244.2.5:8080", "--dump", str(BROKEN), "--what-if", "iptables -P X"])
    assert isinstance(r.exception, KptraceError) and int(r.exception.exit_code) == 2
    assert str(r.exception).startswith("what-if:1:")


def test_check_verifies_remediations_in_json() -> None:
    code, out = _run("check", "--dump", str(BROKEN), "-o", "json")
    doc = json.loads(out)
    fixes = {r["id"]: r["fix"] for r in doc["results"] if "fix" in r}
    assert set(fixes) == {"KPT101", "KPT201"}
    assert fixes["KPT201"]["status"] == "verified" and fixes["KPT201"]["flows_concerned"] > 0
    assert all(f["arrives"] or f["still_fails_for"] == ["KPT101"] for f in fixes["KPT201"]["flows"])


def test_diff_what_if_lists_what_the_change_opens() -> None:
    code, out = _run("diff", str(BROKEN), "--what-if", "iptables -P FORWARD ACCEPT", "-o", "json")
    doc = json.loads(out)
    assert code == 1 and doc["changes"]
    assert any(i.get("change") == "iptables -P FORWARD ACCEPT" for i in doc["inputs"])
