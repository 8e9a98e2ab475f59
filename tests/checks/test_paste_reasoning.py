"""What a paste shows, reasoned on (issue "Reasoning on partial evidence"): the facts behind the real-paste
diagnoses of tests/fixtures/pastes, each on a small paste of its own, with the case that must not fire.

- `kubectl get nodes` (a table, `-o wide` too) says the node is a Kubernetes node: a nat PREROUTING listed
  whole without kube-proxy's jump is then a finding (KPT206), not a node without kube-proxy;
- a FORWARD policy's own counter (`policy DROP 3 packets, 188 bytes`) shows it dropped packets (KPT201), and
  a jump to a chain the listing does not hold (a CNI's), or an elision, leaves "no rule accepts" unproven;
- `iptables -L FORWARD` and `iptables-legacy -L FORWARD` with different policies are two backends (KPT202);
- `iptables-save | grep WORD` pasted whole prints every rule holding WORD: a Service whose KUBE-SVC chain
  shows no rule there has no endpoint jump (KPT204), as kube-proxy comments those with the Service's name.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kptrace.checks.facts import contexts
from kptrace.checks.run import run_all
from kptrace.load import load_cluster
from kptrace.model.finding import Finding
from kptrace.parsers.kube_node import parse_kube_node_table
from kptrace.parsers.paste import parse_command

WIDE = """\
[root@node85 ~]# kubectl get no -owide
NAME     STATUS   ROLES    AGE   VERSION   INTERNAL-IP    EXTERNAL-IP   OS-IMAGE                KERNEL-VERSION               CONTAINER-RUNTIME
node85   Ready    master   8d    v1.15.6   10.99.212.85   <none>        H3Linux Release 1.1.1   3.10.0-957.21.3.el7.x86_64   docker://18.9.6
node86   Ready    <none>   8d    v1.15.6   10.99.212.86   192.0.2.86    H3Linux Release 1.1.1   3.10.0-957.21.3.el7.x86_64   docker://18.9.6
"""
PREROUTING = """\
[root@node85 ~]# iptables -nvL PREROUTING -t nat
Chain PREROUTING (policy ACCEPT 3 packets, 180 bytes)
 pkts bytes target     prot opt in     out     source               destination
 2151  182K PREROUTING_direct  all  --  *      *       0.0.0.0/0            0.0.0.0/0
 2151  182K PREROUTING_ZONES  all  --  *      *       0.0.0.0/0            0.0.0.0/0
"""


def _findings(files: dict[str, str], check: str) -> list[Finding]:
    """The check's findings on these pasted files, loaded as `kptrace check --dump a --dump b` loads them."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            paths.append(Path(tmp) / name)
        nodes = load_cluster(paths, keep_unusable=True)
        return [f for f in run_all(contexts(nodes)) if f.id == check]


def _statuses(files: dict[str, str], check: str) -> list[str]:
    return [f.status.value for f in _findings(files, check)]


# --- kubectl get nodes ----------------------------------------------------------------------------------


def test_kubectl_get_nodes_table_is_read() -> None:
    nodes = parse_kube_node_table(WIDE.split("\n", 1)[1], "no.txt")
    assert [n.name for n in nodes] == ["node85", "node86"]
    assert nodes[0].addresses == (("InternalIP", "10.99.212.85"),)  # <none> is no address
    assert nodes[1].addresses == (("InternalIP", "10.99.212.86"), ("ExternalIP", "192.0.2.86"))
    plain = parse_kube_node_table("NAME     STATUS   ROLES    AGE   VERSION\nnode85   Ready    master   8d    v1.15.6\n")
    assert [(n.name, n.addresses) for n in plain] == [("node85", ())]


def test_kubectl_get_nodes_command_kinds() -> None:
    assert parse_command("kubectl get no -owide").kind == "kube-node-table"
    assert parse_command("kubectl get nodes").kind == "kube-node-table"
    assert parse_command("kubectl get nodes -o wide").kind == "kube-node-table"
    assert parse_command("kubectl get node n1 -o yaml").kind == "kube-node"
    assert parse_command("kubectl get nodes -o jsonpath='{.items}'").kind is None


def test_prerouting_without_kube_jump_on_a_kubernetes_node_is_a_finding() -> None:
    assert _statuses({"nat.txt": PREROUTING}, "KPT206") == ["CANNOT_TELL"]  # a node without kube-proxy, maybe
    assert _statuses({"nat.txt": PREROUTING, "no.txt": WIDE}, "KPT206") == ["WARN"]


# --- KPT201: the policy's counter, chains the listing does not hold ------------------------------------

RKE = """\
$ sudo iptables -t filter -v --line-numbers -L FORWARD
Chain FORWARD (policy DROP 3 packets, 188 bytes)
num   pkts bytes target     prot opt in     out     source               destination
1    76887  119M cali-FORWARD  all  --  any    any     anywhere             anywhere             /* cali:wUHhoiAYhphO9Mso */
2       15   936 KUBE-FORWARD  all  --  any    any     anywhere             anywhere             /* kubernetes forward rules */
"""


def test_forward_policy_counter_and_an_unlisted_cni_chain() -> None:
    found = _findings({"fwd.txt": RKE}, "KPT201")
    assert sorted(f.status.value for f in found) == ["CANNOT_TELL", "WARN"]
    warn = next(f for f in found if f.status.value == "WARN")
    assert "dropped 3 packets" in warn.message and warn.locations[0].line == 2
    cannot = next(f for f in found if f.status.value == "CANNOT_TELL")
    assert "cali-FORWARD" in cannot.message  # what decides next
    # No packet counted by the policy: nothing to warn of; the unlisted chain still leaves it open.
    quiet = RKE.replace("policy DROP 3 packets, 188 bytes", "policy DROP 0 packets, 0 bytes")
    assert _statuses({"fwd.txt": quiet}, "KPT201") == ["CANNOT_TELL"]
    # Without the CNI's chain in it, the listing proves there is no accept (kube-proxy's KUBE-FORWARD is known).
    alone = "\n".join(line if not line.startswith("2 ") else "1" + line[1:] for line in quiet.splitlines()
                      if "cali-FORWARD" not in line) + "\n"
    assert _statuses({"fwd.txt": alone}, "KPT201") == ["FAIL"]


def test_an_elided_forward_chain_is_no_proof_that_nothing_accepts() -> None:
    elided = "$ iptables -t filter -L FORWARD\nChain FORWARD (policy DROP)\n...\n"
    assert _statuses({"fwd.txt": elided}, "KPT201") == ["CANNOT_TELL"]
    assert _statuses({"fwd.txt": elided.replace("...\n", "")}, "KPT201") == ["FAIL"]


# --- KPT202: two backends told apart by their policies -------------------------------------------------


def test_two_backends_with_different_forward_policies() -> None:
    nft = "$ iptables -t filter -L FORWARD\nChain FORWARD (policy DROP)\n"
    legacy = "$ iptables-legacy -t filter -L FORWARD\nChain FORWARD (policy ACCEPT)\n"
    assert _statuses({"a.txt": nft, "b.txt": legacy}, "KPT202") == ["WARN"]
    same = legacy.replace("ACCEPT", "DROP")
    assert _statuses({"a.txt": nft, "b.txt": same}, "KPT202") == ["CANNOT_TELL"]  # may be one backend, twice
    assert _statuses({"a.txt": nft}, "KPT202") == ["CANNOT_TELL"]


# --- KPT204: what a grep of the dump would have printed -------------------------------------------------

GREP = """\
# iptables-save | grep my_svc
-A KUBE-SERVICES -d 10.100.200.6/32 -p udp -m comment --comment "xyz/my_svc:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-FKYB3VE56PGE3NL6
"""
SEP = ('-A KUBE-SVC-FKYB3VE56PGE3NL6 -m comment --comment "xyz/my_svc:dns -> 10.244.1.5:53" '
       '-j KUBE-SEP-AAAAAAAAAAAAAAAA\n')


def test_grep_that_shows_no_endpoint_jump() -> None:
    found = _findings({"grep.txt": GREP}, "KPT204")
    assert [f.status.value for f in found] == ["WARN"]
    assert "xyz/my_svc:dns" in found[0].message and [loc.line for loc in found[0].locations] == [2, 1]
    assert _statuses({"grep.txt": GREP + SEP}, "KPT204") == ["CANNOT_TELL"]  # an endpoint jump: nothing to say
    # Output that is not all of what the grep printed, or a grep that leaves lines out, proves nothing.
    for cmd in ("iptables-save | grep my_svc | head", "iptables-save | grep -v my_svc", "iptables-save | grep -w x"):
        assert _statuses({"grep.txt": GREP.replace("iptables-save | grep my_svc", cmd)}, "KPT204") == ["CANNOT_TELL"]
    assert _statuses({"grep.txt": GREP + "...\n"}, "KPT204") == ["CANNOT_TELL"]  # elided
    # A grep for a word that is not in the Service's name would not have printed its endpoint jumps.
    other = GREP.replace("grep my_svc", "grep 10.100.200.6")
    assert _statuses({"grep.txt": other}, "KPT204") == ["CANNOT_TELL"]
