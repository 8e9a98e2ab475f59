"""The DNS path (kptrace/walkers/dns.py) on the demo cluster with the node's DNS files added."""

from __future__ import annotations

import shutil
from ipaddress import ip_address
from pathlib import Path

import pytest

from kptrace.load import demo_path, load_cluster
from kptrace.walkers.dns import FAIL, LOCAL, OK, UNKNOWN, kubelet_resolv, trace_dns

STUB = "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\nnameserver 127.0.0.53\n"
RESOLVED = "nameserver 192.168.56.1\nsearch corp.example\n"


def kubelet(resolv: str | None) -> str:
    return ("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nclusterDNS:\n- 10.96.0.10\n"
            + (f"resolvConf: {resolv}\n" if resolv is not None else ""))


def cluster(tmp_path: Path, a: dict[str, str], b: dict[str, str] | None = None) -> list:  # type: ignore[type-arg]
    root = tmp_path / "c"
    shutil.copytree(demo_path(), root)
    for node, files in (("node-a", a), ("node-b", b or {})):
        for name, text in files.items():
            (root / node / name).write_text(text)
    return load_cluster([root])


def hops(d):  # type: ignore[no-untyped-def]
    return [(h.kind, h.status, h.fate) for h in d.hops]


def test_stub_upstream_fails_in_the_coredns_pod(tmp_path: Path) -> None:
    c = cluster(tmp_path, {"resolv.conf": STUB, "kubelet-config.yaml": kubelet("/etc/resolv.conf")},
                {"resolv.conf": RESOLVED, "kubelet-config.yaml": kubelet(None)})
    d = trace_dns(c, c[0], ip_address("10.244.1.5"))
    assert hops(d) == [("service", OK, None), ("service", OK, None), ("endpoint", OK, None),
                       ("upstream", FAIL, "loopback-pod"), ("endpoint", OK, None), ("upstream", OK, "routed-out")]
    assert d.status == FAIL and d.failing is d.hops[3]
    assert d.hops[3].cites == ("node-a/resolv.conf:2",) and d.hops[3].node == "node-a"
    assert d.hops[0].trace is not None and d.hops[0].trace.flow.proto == "udp" and d.hops[1].trace.flow.proto == "tcp"
    routed = d.hops[5].trace
    assert routed is not None and {b.egress.iface for b in routed.branches if b.egress} == {"eth0"}


def test_unknown_kubelet_setting_is_an_unknown_hop(tmp_path: Path) -> None:
    c = cluster(tmp_path, {"resolv.conf": STUB})
    d = trace_dns(c, c[0], ip_address("10.244.1.5"))
    ups = [h for h in d.hops if h.kind == "upstream"]
    assert [h.status for h in ups] == [UNKNOWN, UNKNOWN] and d.status == UNKNOWN
    assert "systemd-resolved-resolv.conf" in ups[0].summary  # what would settle it


def test_upstream_that_is_the_dns_service_loops(tmp_path: Path) -> None:
    files = {"resolv.conf": "nameserver 10.96.0.10\n", "kubelet-config.yaml": kubelet(None)}
    c = cluster(tmp_path, files, files)
    d = trace_dns(c, c[0], ip_address("10.244.1.5"))
    assert [h.fate for h in d.hops if h.kind == "upstream"] == ["coredns-loop", "coredns-loop"]


def test_node_address_upstream_ends_on_the_node(tmp_path: Path) -> None:
    files = {"resolv.conf": "nameserver 192.168.56.11\n", "kubelet-config.yaml": kubelet(None)}
    c = cluster(tmp_path, files, {"resolv.conf": RESOLVED, "kubelet-config.yaml": kubelet(None)})
    d = trace_dns(c, c[0], ip_address("10.244.1.5"))
    up = [h for h in d.hops if h.kind == "upstream"][0]
    assert (up.status, up.fate) == (LOCAL, "node-local")
    assert up.trace is not None and up.trace.disposition.value == "DELIVERED"


@pytest.mark.parametrize(("name", "first", "last"), [
    ("example.com", ("example.com.default.svc.cluster.local", "CoreDNS"), ("example.com", "upstream")),
    ("a.b.c.d.e.example.com", ("a.b.c.d.e.example.com", "upstream"), ("a.b.c.d.e.example.com.corp.example", "upstream")),
    ("kubernetes.default.svc.cluster.local.", ("kubernetes.default.svc.cluster.local", "CoreDNS"),
     ("kubernetes.default.svc.cluster.local", "CoreDNS")),
])
def test_names_tried(tmp_path: Path, name: str, first: tuple[str, str], last: tuple[str, str]) -> None:
    c = cluster(tmp_path, {"resolv.conf": RESOLVED, "kubelet-config.yaml": kubelet(None)})
    d = trace_dns(c, c[0], ip_address("10.244.1.5"), name=name)
    assert d.queries[0] == first and d.queries[-1] == last


def test_which_file_kubelet_reads(tmp_path: Path) -> None:
    c = cluster(tmp_path, {"resolv.conf": STUB, "systemd-resolved-resolv.conf": RESOLVED,
                           "kubelet-cmdline.txt": "/usr/bin/kubelet\n--resolv-conf=/run/systemd/resolve/resolv.conf\n",
                           "kubelet-config.yaml": kubelet("/etc/resolv.conf")})
    kr = kubelet_resolv(c[0])
    assert kr.known and kr.path == "/run/systemd/resolve/resolv.conf" and not kr.default
    assert kr.setting is not None and kr.setting.file.endswith("kubelet-cmdline.txt")  # the flag wins
    assert kr.servers()[0][0] == "192.168.56.1"
