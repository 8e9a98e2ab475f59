"""The node's DNS files through the one loader: bundle names, content, pastes, the manifest's absent files."""

from __future__ import annotations

import json
from pathlib import Path

from kptrace.load import load_node, sniff


def test_bundle_names_and_content(tmp_path: Path) -> None:
    b = tmp_path / "b"
    b.mkdir()
    (b / "resolv.conf").write_text("nameserver 127.0.0.53\nsearch lan\nnameserver bogus\n")
    (b / "systemd-resolved-resolv.conf").write_text("nameserver 192.168.56.1\n")
    (b / "kubelet.conf").write_text("kind: KubeletConfiguration\nresolvConf: /etc/resolv.conf\n")  # by content
    (b / "ps.txt").write_text("/usr/bin/kubelet --resolv-conf=/run/systemd/resolve/resolv.conf\n")  # by content
    node = load_node([b], must_be_usable=False)
    by_path = {rc.path: rc for rc in node.resolv_conf}
    assert by_path["/etc/resolv.conf"].nameservers == ("127.0.0.53",)
    assert by_path["/etc/resolv.conf"].search == ("lan",)  # a one-label domain: read from its own file
    assert by_path["/run/systemd/resolve/resolv.conf"].nameservers == ("192.168.56.1",)
    assert [(e.file, e.line, e.col) for e in node.errors] == [("b/resolv.conf", 3, 12)]  # the rest is read
    assert node.level("resolv_conf") == "complete" and node.level("kubelet_dns") == "complete"
    assert {k.origin for k in node.kubelet_dns or []} == {"config", "flags"}
    assert {i.kind for i in node.inputs} >= {"resolv-conf", "kubelet-config", "kubelet-cmdline"}


def test_sniff() -> None:
    assert sniff("resolv.conf", "nameserver 10.0.0.1\n") == "resolv-conf"
    assert sniff("kubelet-config.yaml", "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n") == \
        "kubelet-config"
    assert sniff("x.txt", "/usr/local/bin/kubelet\n--config=/var/lib/kubelet/config.yaml\n") == "kubelet-cmdline"
    # A file named resolv.conf that holds something else is read as what it is.
    assert sniff("resolv.conf", "default via 10.0.0.1 dev eth0\n10.0.0.0/24 dev eth0\n") == "ip-route"


def test_paste_of_cat_says_which_file(tmp_path: Path) -> None:
    p = tmp_path / "paste.txt"
    p.write_text("$ cat /run/systemd/resolve/resolv.conf\nnameserver 10.0.2.3\n$ cat /etc/resolv.conf\n"
                 "nameserver 127.0.0.53\n")
    node = load_node([p], must_be_usable=False)
    assert [(rc.path, rc.nameservers, rc.nameserver_sources[0].line) for rc in node.resolv_conf] == [
        ("/run/systemd/resolve/resolv.conf", ("10.0.2.3",), 2), ("/etc/resolv.conf", ("127.0.0.53",), 4)]


def test_manifest_absent_files_are_known_absent(tmp_path: Path) -> None:
    b = tmp_path / "b"
    b.mkdir()
    (b / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    (b / "manifest.json").write_text(json.dumps({"format": 1, "kptrace_version": "0", "commands": [
        {"file": None, "command": ["read", "/run/systemd/resolve/resolv.conf"], "status": "absent",
         "message": "/run/systemd/resolve/resolv.conf: not present on this node",
         "absent_file": "systemd-resolved-resolv.conf"}]}))
    node = load_node([b], must_be_usable=False)
    assert node.absent == {"systemd-resolved-resolv.conf": "/run/systemd/resolve/resolv.conf: not present on this node"}
    assert "systemd-resolved-resolv.conf" not in node.not_collected


def test_paste_keeps_a_one_label_search_domain(tmp_path: Path) -> None:
    p = tmp_path / "paste.txt"
    p.write_text("$ cat /etc/resolv.conf\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n"
                 "$ ip route\ndefault via 10.0.0.1 dev eth0\n")
    node = load_node([p], must_be_usable=False)
    [rc] = node.resolv_conf
    assert rc.search == ("lan",) and rc.search_source is not None and rc.search_source.line == 4
    assert node.errors == [] and len(node.routes) == 1
