"""`kptrace collect`'s DNS step: the node's resolv.conf files (through their links, inside the node's root),
kubelet's command line and config file; what the node does not have is absent, never an error."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kptrace.collect import bundle, live
from kptrace.collect.capture import ABSENT, OK
from kptrace.load import load_cluster

from .conftest import HOSTNAME, FakeNode

DNS_FILES = ("resolv.conf", "systemd-resolved-resolv.conf", "kubelet-cmdline.txt", "kubelet-config.yaml")


def by_name(caps: list[live.Capture]) -> dict[str, live.Capture]:
    return {c.name: c for c in caps}


def _systemd_node(root: Path, absolute_link: bool) -> None:
    run = root / "run" / "systemd" / "resolve"
    run.mkdir(parents=True)
    (run / "stub-resolv.conf").write_text("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n")
    (run / "resolv.conf").write_text("nameserver 192.168.56.1\n")
    (root / "etc").mkdir(exist_ok=True)
    # An absolute link names the node's own /run, which must be read inside the node's root, not here.
    os.symlink("/run/systemd/resolve/stub-resolv.conf" if absolute_link else "../run/systemd/resolve/stub-resolv.conf",
               root / "etc" / "resolv.conf")
    pid = root / "proc" / "4242"
    pid.mkdir(parents=True)
    (pid / "comm").write_text("kubelet\n")
    (pid / "cmdline").write_bytes(b"/usr/bin/kubelet\0--config=/etc/kubernetes/kubelet.yaml\0"
                                  b"--resolv-conf=/run/systemd/resolve/resolv.conf\0")
    (root / "etc" / "kubernetes").mkdir()
    (root / "etc" / "kubernetes" / "kubelet.yaml").write_text(
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- 10.96.0.10\n")


def test_a_node_without_dns_files_has_them_absent(fake_node: FakeNode) -> None:
    caps = by_name(live.collect(fake_node.options()))
    for name in DNS_FILES:
        assert caps[name].status == ABSENT and not caps[name].warn and caps[name].data is None, caps[name]
    assert caps["resolv.conf"].message == "/etc/resolv.conf: not present on this node"


def test_systemd_resolved_node(fake_node: FakeNode, tmp_path: Path) -> None:
    _systemd_node(fake_node.root, absolute_link=True)
    caps = live.collect(fake_node.options())
    got = by_name(caps)
    assert all(got[n].status == OK for n in DNS_FILES), [(n, got[n].message) for n in DNS_FILES]
    assert got["resolv.conf"].data == b"nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
    assert got["resolv.conf"].command == ("read", "/etc/resolv.conf")
    assert got["resolv.conf"].notes == ["symlink: /etc/resolv.conf -> /run/systemd/resolve/stub-resolv.conf"]
    assert got["kubelet-cmdline.txt"].data == (b"/usr/bin/kubelet\n--config=/etc/kubernetes/kubelet.yaml\n"
                                               b"--resolv-conf=/run/systemd/resolve/resolv.conf\n")
    assert got["kubelet-config.yaml"].command == ("read", "/etc/kubernetes/kubelet.yaml")  # kubelet's --config
    out = bundle.write_bundle(caps, tmp_path / "b", bundle.Meta(HOSTNAME, HOSTNAME, 0.0, 1.0))
    [node] = load_cluster([out])
    from kptrace.walkers.dns import kubelet_resolv

    kr = kubelet_resolv(node)
    assert kr.known and kr.path == "/run/systemd/resolve/resolv.conf" and kr.servers()[0][0] == "192.168.56.1"


def test_relative_link_and_the_host_root(fake_node: FakeNode, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    _systemd_node(host, absolute_link=False)
    caps = by_name(live.collect(fake_node.options(host_root=str(host))))
    assert caps["resolv.conf"].data is not None and caps["resolv.conf"].data.startswith(b"nameserver 127.0.0.53")
    assert caps["systemd-resolved-resolv.conf"].data == b"nameserver 192.168.56.1\n"


def test_manifest_names_absent_files(fake_node: FakeNode, tmp_path: Path) -> None:
    out = bundle.write_bundle(live.collect(fake_node.options()), tmp_path / "d",
                              bundle.Meta(HOSTNAME, HOSTNAME, 0.0, 1.0))
    man = json.loads((out / "manifest.json").read_text())
    absent = {e["absent_file"] for e in man["commands"] if e["status"] == "absent" and "absent_file" in e}
    assert set(DNS_FILES) <= absent
    [node] = load_cluster([out])
    assert set(DNS_FILES) <= set(node.absent)
