"""`kptrace dns` end to end: the failing hop named, JSON valid against the kptrace/v1 schema, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.errors import KptraceError
from kptrace.load import demo_path
from kptrace.render.jsonout import schema

_register()
runner = CliRunner()

STUB = "nameserver 127.0.0.53\noptions edns0 trust-ad\n"
KUBELET = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nresolvConf: /etc/resolv.conf\n"


def bundle(tmp_path: Path, resolv: str) -> Path:
    root = tmp_path / "c"
    shutil.copytree(demo_path(), root)
    for node in ("node-a", "node-b"):
        (root / node / "resolv.conf").write_text(resolv)
        (root / node / "kubelet-config.yaml").write_text(KUBELET)
    return root


def test_human_names_the_failing_hop(tmp_path: Path) -> None:
    r = runner.invoke(app, ["dns", "example.com", "--from", "10.244.1.5", "--dump", str(bundle(tmp_path, STUB))])
    assert r.exit_code == 1, r.output
    assert "failing hop: 4 (CoreDNS 10.244.1.9 -> upstream 127.0.0.53:53/udp): loopback-pod" in r.output
    assert "example.com.default.svc.cluster.local  -> CoreDNS" in r.output
    assert "[node-a/resolv.conf:1]" in r.output


def test_json_is_a_valid_dns_document(tmp_path: Path) -> None:
    r = runner.invoke(app, ["dns", "--from", "10.244.1.5", "--dump", str(bundle(tmp_path, "nameserver 192.168.56.1\n")),
                            "-o", "json"])
    doc = json.loads(r.output)
    jsonschema.Draft202012Validator(schema()).validate(doc)
    assert doc["kind"] == "dns" and doc["status"] == "ok" and r.exit_code == 0
    assert doc["dns_service"]["service"] == "kube-system/kube-dns"
    assert [h["kind"] for h in doc["hops"]] == ["service", "service", "endpoint", "upstream", "endpoint", "upstream"]
    assert all(h["fate"] == "routed-out" for h in doc["hops"] if h["kind"] == "upstream")
    assert doc["resolv_conf"]["servers"] == [{"server": "192.168.56.1", "source": "node-a/resolv.conf:1"}]


def test_demo_without_dns_files_is_inconclusive() -> None:
    r = runner.invoke(app, ["dns", "--demo", "-o", "json"])
    doc = json.loads(r.output)
    jsonschema.Draft202012Validator(schema()).validate(doc)
    assert r.exit_code == 4 and doc["status"] == "unknown" and doc["failing_hop"] is None


def test_bad_dns_ip_is_a_usage_error() -> None:
    r = runner.invoke(app, ["dns", "--demo", "--dns-ip", "kube-dns"])
    assert isinstance(r.exception, KptraceError) and "--dns-ip 'kube-dns'" in str(r.exception)
