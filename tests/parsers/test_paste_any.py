"""Pastes of every format kptrace reads (issue 14): prompts, recognition by content, what each adds to the Node."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace.errors import InputError, ParseError
from kptrace.load import _load_one, load_node, sniff
from kptrace.model.node import COMPLETE, EXCERPT, Node
from kptrace.model.nft import NftRuleset
from kptrace.parsers.iptables_save import parse_iptables_save
from kptrace.parsers.nft_text import parse_nft_text
from kptrace.parsers.paste import bare_command, parse_command, prompt, split_sections

PASTES = Path(__file__).resolve().parents[1] / "fixtures" / "pastes"
DEMO_A = Path(__file__).resolve().parents[2] / "kptrace" / "demo" / "cluster" / "node-a"


def load(text: str, name: str = "paste.txt") -> Node:
    node = Node()
    _load_one(node, name, text.encode())
    return node


@pytest.mark.parametrize(("line", "cmd"), [
    ("clear@clr-01 ~ $ ip neigh", "ip neigh"),
    ("clear@clr-01 ~/clr-k8s-examples $ arp -n", "arp -n"),
    ("[root@minion:~]$ iptables -t nat -nL PREROUTING", "iptables -t nat -nL PREROUTING"),
    ("> iptables -t filter --list-rules", "iptables -t filter --list-rules"),
    ("!20 $ brctl show", "brctl show"),
    ("/ # cat /etc/resolv.conf", "cat /etc/resolv.conf"),
    ("k8s/08ea6ac6-9e85-44d6-81be-0dc94c73ddd7:~# sysctl -a | grep nf-call", "sysctl -a | grep nf-call"),
    ("⇒  kubectl exec busybox cat /etc/resolv.conf", "kubectl exec busybox cat /etc/resolv.conf"),
    ("#ip route", "ip route"),
    ("#  iptables -vL -t filter", "iptables -vL -t filter"),
])
def test_more_prompts(line: str, cmd: str) -> None:
    c = prompt(line)
    assert c is not None and c.text == cmd


@pytest.mark.parametrize("line", ["> some quoted text", "/ is the root", "## kubernetes service network",
                                  "#comment without a command", "# Added my rules"])
def test_not_prompts(line: str) -> None:
    assert prompt(line) is None


@pytest.mark.parametrize(("line", "kind"), [
    ("sudo iptables-save ", "iptables-rules"),
    ("sudo ipvsadm -ln", "ipvsadm"),
    ("for d in /sys/devices/virtual/net/cni0/brif/veth*/hairpin_mode; do echo \"$d = $(cat $d)\"; done", "proc-value"),
    ("for intf in /sys/devices/virtual/net/cni0/brif/*; do cat $intf/hairpin_mode; done", "proc-value"),
    ("iptables -I FORWARD  -j ACCEPT", None),
])
def test_bare_commands(line: str, kind: str | None) -> None:
    c = bare_command(line)
    assert c is not None and c.kind == kind


@pytest.mark.parametrize(("cmd", "kind", "extra"), [
    ("kubectl exec busybox cat /etc/resolv.conf", "resolv-conf", ("whose", "pod busybox")),
    ("cat /proc/sys/net/ipv4/ip_forward", "proc-value", ("path", "/proc/sys/net/ipv4/ip_forward")),
    ("sysctl -n net.ipv4.conf.flannel/1.rp_filter", "proc-value", ("path", "/proc/sys/net/ipv4/conf/flannel.1/rp_filter")),
    ("bridge fdb show dev flannel.1", "bridge-fdb", ("dev", "flannel.1")),
    ("ip neigh show dev cni0", "ip-neigh", ("dev", "cni0")),
    ("ip route show table local", "ip-route", ("table", "local")),
    ("lsmod | grep br_netfilter", "modules", ("pattern", "br_netfilter")),
    ("iptables-legacy -t filter -L FORWARD", "iptables-list", ("backend", "legacy")),
    ("iptables-nft -S", "iptables-rules", ("backend", "nft")),
    ("ansible 'all' -a 'ipvsadm --list -n -t 10.109.131.66:6379'", "ipvsadm", ("excerpt", False)),
    ("kubectl get node node-b -o yaml", "kube-node", ("excerpt", False)),
    ("dmesg -T", "kernel-log", ("excerpt", False)),
    ("iptables -L -v -n | grep KUBE | wc -l", None, ("excerpt", True)),
])
def test_commands_say_what_they_print(cmd: str, kind: str | None, extra: tuple[str, object]) -> None:
    c = parse_command(cmd)
    assert c.kind == kind and getattr(c, extra[0]) == extra[1]


# --- recognised by content ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind"), [
    ("abi.vsyscall32 = 1\ncrypto.fips_enabled = 0\nnet.ipv4.ip_forward = 1\n", "sysctl"),  # any first key
    ("br_netfilter 32768 0 - Live 0x0000000000000000\nbridge 421888 1 br_netfilter, Live 0x0000000000000000\n", "modules"),
    ("Module                  Size  Used by\nbr_netfilter           32768  0\n", "modules"),
    ("33:33:00:00:00:01 dev eth0 self permanent\n5a:f0:83:27:c4:9e dev flannel.1 dst 192.168.56.12 self permanent\n",
     "bridge-fdb"),  # not `ip route` (a MAC is no route destination)
    ("10.244.2.0 dev flannel.1 lladdr 5a:f0:83:27:c4:9e PERMANENT\n", "ip-neigh"),  # never read as a /32 route
    ("5: veth1@eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 master cni0 state forwarding priority 32 cost 2\n",
     "bridge-link"),
    ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n", "flannel-subnet"),
    ("Mar 12 17:26:36 node04 kernel: [ 3774.7] TRACE: raw:PREROUTING:policy:2 IN=flannel.1 OUT= SRC=1.1.1.1\n", "paste"),
    ("nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n", "paste"),
    ("the node was rebooted at noon\n", None),
])
def test_sniffed_by_content(text: str, kind: str | None) -> None:
    assert sniff("x7f3q.txt", text) == kind


def test_a_bundle_name_does_not_override_what_the_content_is() -> None:
    neigh = "10.244.2.0 dev flannel.1 lladdr 5a:f0:83:27:c4:9e PERMANENT\n"
    assert sniff("b/ip-route.txt", neigh) == "ip-neigh"
    assert sniff("b/sysctl.txt", "$ sysctl net.ipv4.ip_forward\nnet.ipv4.ip_forward = 0\n") == "paste"
    assert sniff("b/iptables-legacy-save.txt", (DEMO_A / "iptables-save.txt").read_text()) == "iptables-legacy-save"
    assert sniff("b/sysctl.txt", "") == "sysctl"  # an empty file: only its name says what it is


def test_a_bare_trailing_prompt_is_not_glued_to_the_output() -> None:
    res = split_sections((PASTES / "k3s-1719-flannel-fdb-two-nodes" / "master.txt").read_text(), "m")
    assert [(s.kind, s.first, s.last) for s in res.sections] == [("ip-addr", 2, 7), ("bridge-fdb", 9, 9)]
    assert not res.unrecognised


# --- what each format adds to the Node --------------------------------------------------------------------


def test_hairpin_values_become_bridge_ports() -> None:
    node = load_node([PASTES / "k8s-43966-kubelet16-hairpin-off" / "hairpin_mode.txt"])
    assert sorted((p.name, p.master, p.hairpin) for p in node.bridge_ports) == [
        ("veth4bfbfe74", "cni0", False), ("vethfc2a18c5", "cni0", False)]
    assert node.level("bridge_ports") == EXCERPT and node.sys_values is not None
    node = load("$ cat /sys/class/net/veth1/brport/hairpin_mode\n0\n")
    assert [(p.name, p.master, p.hairpin) for p in node.bridge_ports] == [("veth1", "", False)]  # its bridge: not shown


def test_a_glob_of_values_is_kept_without_naming_ports() -> None:
    node = load_node([PASTES / "zalando-1470-flannel-hairpin-off" / "hairpin_mode.txt"])
    assert not node.bridge_ports and node.sys_values is not None
    assert {v.path for v in node.sys_values} == {"/sys/devices/virtual/net/cni0/brif/*/hairpin_mode"}
    assert [v.value for v in node.sys_values] == ["0", "0", "0"]


def test_proc_sys_values_are_sysctls() -> None:
    node = load("root@n:~# cat /proc/sys/net/ipv4/ip_forward\n0\n$ grep . /proc/sys/net/ipv4/conf/*/rp_filter\n"
                "/proc/sys/net/ipv4/conf/all/rp_filter:2\n/proc/sys/net/ipv4/conf/flannel.1/rp_filter:1\n")
    assert {k: s.value for k, s in node.sysctls.items()} == {
        "net.ipv4.ip_forward": "0", "net.ipv4.conf.all.rp_filter": "2", "net.ipv4.conf.flannel/1.rp_filter": "1"}
    assert node.level("sysctls") == EXCERPT and node.sysctls["net.ipv4.ip_forward"].source.line == 2


def test_sysctl_a_with_a_prompt_glued_on_and_two_states_in_one_paste() -> None:
    node = load_node([PASTES / "kubespray-2067-centos-bridge-nf-call-zero" / "sysctl.txt"])
    assert node.sysctls["net.bridge.bridge-nf-call-iptables"].value == "0"
    assert {m.name for m in node.modules or []} >= {"br_netfilter", "bridge"}  # modprobe -v's insmod lines
    node = load_node([PASTES / "k8s-33798-kubeadm-centos-bridge-nf-zero" / "slack-transcript.txt"])
    assert "net.bridge.bridge-nf-call-iptables" not in node.sysctls  # 0, then 1 after the fix: which is now?
    assert any("two states of the node" in str(e) for e in node.errors)


def test_an_empty_grep_of_lsmod_says_the_module_is_not_loaded() -> None:
    node = load_node([PASTES / "nemoclaw-2418-br-netfilter-not-loaded" / "lsmod-grep.txt"])
    assert node.modules == [] and node.level("modules") == EXCERPT
    assert set(node.modules_not_loaded) == {"br_netfilter"}


def test_dmesg_conntrack_full_is_a_note_and_trace_lines_are_events() -> None:
    node = load_node([PASTES / "k8s-71261-conntrack-table-full"])
    assert node.kernel_log is not None and {m.kind for m in node.kernel_log} == {"conntrack-full"}
    assert any("conntrack table was full" in a for a in node.assumptions)
    node = load_node([PASTES / "k8s-107965-legacy-tables-present-trace" / "paste.txt"])
    assert node.trace_events is not None and [e.chain for e in node.trace_events] == ["PREROUTING", "KUBE-SERVICES"]
    assert node.trace_events[0].get("SRC") == "110.110.110.108"  # the spaces a web page put in are not the value


def test_legacy_warning_makes_the_listing_nft_and_legacy_unknown() -> None:
    node = load_node([PASTES / "k8s-107965-legacy-tables-present-trace" / "paste.txt"])
    assert node.rulesets[4].backend == "nft"
    assert "legacy tables are present" in node.not_collected["iptables-legacy-save.txt"]
    assert 4 in node.legacy_rulesets and node.legacy_rulesets[4].file == "<not in the input>"  # unknown, walked


def test_resolv_conf_is_the_pods_when_read_through_kubectl_exec() -> None:
    node = load_node([PASTES / "k8s-50129-busybox-resolv-conf" / "paste.txt"])
    [rc] = node.resolv_conf
    assert (rc.nameservers, rc.options, rc.whose) == (("10.0.0.2",), ("ndots:5",), "pod busybox")
    assert rc.search[0] == "default.svc.cluster.local"


def test_kubectl_node_yaml_names_the_node_and_its_vtep() -> None:
    text = ("apiVersion: v1\nkind: Node\nmetadata:\n  annotations:\n"
            "    flannel.alpha.coreos.com/backend-data: '{\"VNI\":1,\"VtepMAC\":\"5A:F0:83:27:C4:9E\"}'\n"
            "    flannel.alpha.coreos.com/backend-type: vxlan\n    flannel.alpha.coreos.com/public-ip: 192.168.56.12\n"
            "  name: node-b\nspec:\n  podCIDR: 10.244.2.0/24\nstatus:\n  addresses:\n  - address: 192.168.56.12\n"
            "    type: InternalIP\n")
    node = load(text, "n.yaml")
    [kn] = node.kube_nodes
    assert (kn.name, kn.flannel_vtep_mac, kn.flannel_public_ip, kn.source.line) == (
        "node-b", "5a:f0:83:27:c4:9e", "192.168.56.12", 8)
    assert node.name == "node-b" and node.node_ips == [ip_address("192.168.56.12")]
    assert str(node.pod_subnet) == "10.244.2.0/24" and node.level("node_meta") == COMPLETE
    assert [i.kind for i in node.inputs] == ["kube-node"]


def test_ipvsadm_connections_without_their_title() -> None:
    node = load_node([PASTES / "calico-4851-ipvs-syn-recv" / "paste.txt"])
    assert node.ipvs_connections is not None and len(node.ipvs_connections) == 6
    assert {c.state for c in node.ipvs_connections} == {"ESTABLISHED", "SYN_RECV"}
    assert node.level("ipvs_connections") == EXCERPT and node.level("ipvs") == EXCERPT


def test_fdb_and_neigh_take_the_device_from_the_command() -> None:
    node = load_node([PASTES / "k3s-1719-flannel-fdb-two-nodes" / "worker.txt"])
    [f] = node.fdb
    assert (f.mac, f.dev, str(f.dst)) == ("ca:a3:3a:8f:57:36", "flannel.1", "192.168.1.72")
    assert f.source is not None and f.source.text == "ca:a3:3a:8f:57:36 dst 192.168.1.72 self permanent"
    node = load("$ ip neigh show dev flannel.1\n10.244.1.0 lladdr 5e:89:db:49:c6:a4 PERMANENT\n")
    assert [(str(n.dst), n.dev) for n in node.neighbors] == [("10.244.1.0", "flannel.1")]


def test_ip_route_show_table_local_takes_the_table_from_the_command() -> None:
    node = load("$ ip route show table local\nlocal 10.0.0.1 dev eth0 proto kernel scope host src 10.0.0.1\n")
    assert [(r.table, r.type) for r in node.routes] == [("local", "local")] and node.level("routes") == EXCERPT


def test_an_ansible_run_on_many_hosts_is_not_merged_into_one_node() -> None:
    node = load_node([PASTES / "k8s-70493-ipvs-missing-realserver-some-nodes" / "ansible-ipvsadm.txt"])
    assert node.ipvs is not None and [len(s.dests) for s in node.ipvs] == [1]  # the first host's, only


def test_nft_chains_without_their_table_are_read_apart() -> None:
    node = load_node([PASTES / "saifsust-nft-kube-services-two-nodes" / "nft-chain-fragments.txt"])
    assert node.nft is None and len(node.nft_fragments) == 2  # two nodes' KUBE-SERVICES: never merged
    frag = node.nft_fragments[0]
    assert isinstance(frag, NftRuleset) and frag.skipped and len(frag.all_rules()) == 5
    assert frag.all_rules()[0].source.source.line == 4 and node.level("nft") == EXCERPT


def test_old_nft_dnat_without_to() -> None:
    rs = parse_nft_text("table ip nat {\n chain x {\n  ip daddr 10.96.0.1 dnat 10.0.0.1:80\n }\n}\n", "n")
    [rule] = rs.all_rules()
    assert "Nat(kind='dnat'" in repr(rule.stmts) and "10.0.0.1" in repr(rule.stmts)


# --- iptables text as pastes and old iptables print it -------------------------------------------------------


def test_redacted_garbled_and_getopt_prefixes_are_read() -> None:
    text = ("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            "-A PREROUTING -d 10.x.x.x/32 -j ACCEPT\n"
            "-A PREROUTING -s [PUBLIC IP HERE] -p tcp -m mac --mac 00:11:22:33:44:55 -j ACCEPT\n"
            "-A OUTPUT -p tcp -j DNAT --to-destination  --random --to-destination 0.0.0.0:0\n"
            "-A OUTPUT -p tcp -m tcp -j DNAT [unsupported revision]\n"
            "-A OUTPUT -d fe80::2XX:XXXX -p tcp --dp 80 -j DNAT --to 10.0.0.1:80\nCOMMIT\n")
    rs = parse_iptables_save(text, "x").ruleset
    pre, out = rs.chain("nat", "PREROUTING"), rs.chain("nat", "OUTPUT")
    assert pre is not None and out is not None
    redacted = [m for r in pre.rules for m in r.matches if m.module == "redacted"]
    assert [m.known for m in redacted] == [False, False] and "not shown" in redacted[0].why_unknown
    mac = pre.rules[1].matches[-1]
    assert (mac.module, mac.known, mac.options[0].name) == ("mac", True, "--mac-source")
    assert [r.target.known for r in out.rules if r.target] == [False, False, True]
    assert out.rules[2].matches[0].module == "redacted"
    assert out.rules[2].target is not None and out.rules[2].target.options[0].name == "--to-destination"
    with pytest.raises(ParseError, match="invalid address"):
        parse_iptables_save("*filter\n-A INPUT -s 10.0.0.300 -j ACCEPT\nCOMMIT\n", "x")


def test_numbered_and_joined_rules_from_a_web_page() -> None:
    node = load_node([PASTES / "k8s-44516-externalip-no-endpoints-numbered" / "iptables-save-grep.txt"])
    rules = node.rulesets[4].chain("nat", "KUBE-SERVICES")
    assert rules is not None
    shown = [(r.source.line, r.target.name) for r in rules.rules if r.target is not None]
    assert shown == [(2, "KUBE-SVC-FKYB3VE56PGE3NL6"), (3, "KUBE-MARK-MASQ"), (4, "KUBE-SVC-FKYB3VE56PGE3NL6"),
                     (4, "KUBE-SVC-FKYB3VE56PGE3NL6"), (5, "KUBE-SVC-ACSYPHD3G44RMCBY"), (5, "KUBE-MARK-MASQ")]


def test_a_whole_dump_in_a_paste_cut_before_commit_keeps_its_chains() -> None:
    dump = (PASTES / "k3s-977-reject-host-prohibited-working-config" / "iptables-save.txt").read_text()
    node = load("$ sudo iptables-save\n" + dump)
    fwd = node.legacy_rulesets[4].chain("filter", "FORWARD")  # iptables-save v1.4: the legacy backend
    assert fwd is not None and fwd.rules[0].source.line == 18  # line 17 of the dump, after the prompt
    assert node.level("iptables-legacy") == EXCERPT


def test_two_different_whole_dumps_of_one_backend_in_one_node_are_refused() -> None:
    dump = (DEMO_A / "iptables-save.txt").read_text()
    other = dump.replace("-A FORWARD -m comment", "-A FORWARD -j DROP\n-A FORWARD -m comment", 1)
    node = load("$ iptables-save\n" + dump)
    with pytest.raises(InputError, match="claim the same node"):
        _load_one(node, "second.txt", ("$ iptables-save\n" + other).encode())
    _load_one(node, "same.txt", ("$ iptables-save\n" + dump).encode())  # the same dump twice: read once
