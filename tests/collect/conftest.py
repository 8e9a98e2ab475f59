"""A fake node for the collector: stub tools on a private PATH and a fake /proc, /sys and /run.

Each stub is a tiny Python program that prints canned output for the exact argument list it is
given (and exits 2 for any other), so the tests also pin down which commands collect runs. The
outputs are real dumps from the fixtures and the demo cluster.
"""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kptrace.collect import live
from kptrace.collect.capture import tool_env

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "kptrace" / "demo" / "cluster" / "node-a"
IPROUTE = ROOT / "tests" / "fixtures" / "iproute2" / "flannel-node"
IPSET = ROOT / "tests" / "fixtures" / "ipset" / "kube-proxy.save.txt"
IPVS = ROOT / "tests" / "fixtures" / "ipvs" / "features.Ln.txt"
HOSTNAME = "node-a"

STUB = """#!{python} -S
import json, sys, time
spec = json.load(open({spec!r}))
key = " ".join(sys.argv[1:])
if key not in spec:
    sys.stderr.write("stub {tool}: unexpected arguments: " + key + "\\n")
    sys.exit(2)
rc, out, err, delay = spec[key]
if delay:
    time.sleep(delay)
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(rc)
"""


def _read(p: Path) -> str:
    return p.read_text()


def default_tools() -> dict[str, dict[str, tuple[int, str, str, float]]]:
    """tool -> {argument string -> (exit code, stdout, stderr, delay)} for a healthy root node."""
    ok = lambda text: (0, text, "", 0.0)
    return {
        "iptables-save": {"": ok(_read(DEMO / "iptables-save.txt"))},
        "ip6tables-save": {"": ok(_read(DEMO / "ip6tables-save.txt"))},
        "nft": {"-j list ruleset": ok('{"nftables": [{"metainfo": {"version": "1.0.6"}}]}\n')},
        "ip": {
            "-j addr show": ok(_read(DEMO / "ip-addr.json")),
            "-j -d link show": ok(_read(IPROUTE / "ip-link.json")),
            "-j route show table all": ok(_read(IPROUTE / "ip-route.json")),
            "-j -6 route show table all": ok(_read(IPROUTE / "ip-6-route.json")),
            "-j rule show": ok(_read(IPROUTE / "ip-rule.json")),
            "-j -6 rule show": ok(_read(IPROUTE / "ip-6-rule.json")),
            "-j neigh show": ok(_read(IPROUTE / "ip-neigh.json")),
        },
        "bridge": {
            "-j fdb show": ok(_read(IPROUTE / "bridge-fdb.json")),
            "-j -d link show": ok(_read(IPROUTE / "bridge-link.json")),
        },
        "ipset": {"save": ok(_read(IPSET))},
        "ipvsadm": {"-Ln": ok(_read(IPVS)), "-Sn": ok("-A -t 10.96.0.1:443 -s rr\n")},
        "conntrack": {"-L": (0, ("tcp      6 431999 ESTABLISHED src=10.244.1.5 dst=10.96.0.1 sport=40000 "
                                 "dport=443 src=192.168.56.11 dst=10.244.1.5 sport=6443 dport=40000 [ASSURED] "
                                 "mark=0 use=1\n"),
                             "conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n", 0.0)},
        "systemctl": {"list-units --type=service --all --no-pager": ok(
            "  UNIT            LOAD   ACTIVE SUB     DESCRIPTION\n"
            "  kubelet.service loaded active running kubelet: The Kubernetes Node Agent\n")},
    }


@dataclass
class FakeNode:
    root: Path
    tools: dict[str, dict[str, tuple[int, str, str, float]]] = field(default_factory=default_tools)

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        return tool_env(str(self.bin))

    def options(self, **kw: object) -> live.Options:
        return live.Options(env=self.env, **kw)  # type: ignore[arg-type]

    def install(self) -> None:
        """(Re)write the stubs for `tools`; a tool set to None is removed from PATH."""
        if self.bin.exists():
            for p in self.bin.iterdir():
                p.unlink()
        self.bin.mkdir(parents=True, exist_ok=True)
        for tool, answers in self.tools.items():
            if answers is None:
                continue
            spec = self.root / f"{tool}.spec.json"
            spec.write_text(json.dumps(answers))
            path = self.bin / tool
            path.write_text(STUB.format(python=sys.executable, spec=str(spec), tool=tool))
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def set_proc(self, rel: str, text: str) -> None:
        p = self.root / "proc" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _fake_proc(root: Path) -> None:
    sysctl = {
        "net/ipv4/ip_forward": "1",
        "net/ipv4/ip_local_port_range": "32768\t60999",
        "net/ipv4/conf/all/rp_filter": "0",
        "net/ipv4/conf/all/route_localnet": "1",
        "net/ipv4/conf/flannel.1/rp_filter": "0",
        "net/ipv4/conf/cni0/forwarding": "1",
        "net/ipv4/tcp_syncookies": "1",  # outside the bundle's subset: not collected
        "net/ipv6/conf/all/forwarding": "0",
        "net/bridge/bridge-nf-call-iptables": "1",
        "net/netfilter/nf_conntrack_max": "131072",
        "net/netfilter/nf_conntrack_count": "42",
        "kernel/hostname": HOSTNAME,
    }
    for rel, value in sysctl.items():
        p = root / "proc" / "sys" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value + "\n")
    (root / "proc" / "modules").write_text(_read(DEMO / "modules.txt"))
    (root / "proc" / "net").mkdir(parents=True, exist_ok=True)
    (root / "proc" / "net" / "ip_vs").write_text("IP Virtual Server version 1.2.1 (size=4096)\n")
    (root / "sys" / "module" / "ip_set").mkdir(parents=True)
    (root / "run" / "systemd" / "system").mkdir(parents=True)
    (root / "run" / "flannel").mkdir(parents=True)
    (root / "run" / "flannel" / "subnet.env").write_text(_read(DEMO / "flannel-subnet.env"))


@pytest.fixture
def fake_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNode]:
    root = tmp_path / "node"
    root.mkdir()
    _fake_proc(root)
    node = FakeNode(root)
    node.install()
    monkeypatch.setattr(live, "PROC", root / "proc")
    monkeypatch.setattr(live, "SYS", root / "sys")
    monkeypatch.setattr(live, "SYSTEMD_RUN", root / "run" / "systemd" / "system")
    monkeypatch.setattr(live, "FLANNEL_SUBNET", root / "run" / "flannel" / "subnet.env")
    monkeypatch.setattr(live, "DNS_ROOT", root)  # the fake node's /etc/resolv.conf, not this machine's
    monkeypatch.setattr(live, "hostname", lambda: HOSTNAME)
    monkeypatch.setenv("PATH", str(node.bin))
    # The optional fallbacks must not kick in unless a test asks for them.
    monkeypatch.setattr("kptrace.collect.netlink._pyroute2", lambda: False)
    monkeypatch.setattr("kptrace.collect.legacy.capture", lambda *a, **k: None)
    yield node
