"""nftables in the real kernel vs kptrace on the same `nft list ruleset` (text and JSON).

A node built from network namespaces (kpt-nft-<pid>-…) gets a ruleset, its bundle is captured
(nft-ruleset.txt, nft-ruleset.json, iptables-*-save, ip addr/route/link, sysctls), then a trace
table (`meta nftrace set 1` at priority -350) arms `nft monitor trace` for the probes only. Each
probe's kernel outcome (trace verdicts, listener delivery, conntrack DNAT/SNAT, legacy rule
counters) is compared with `kptrace why … -o json` on each bundle form: verdict, endpoint set
(probed until every endpoint the kernel picks has been seen), masquerade, and the rules hit.

Scenarios: kube-proxy's nftables mode (nodeport-ips set, and `fib daddr type local` for
nodePortAddresses unset); iptables-nft tables next to plain nft tables (a drop in a later base
chain, a nat chain that is not run because an earlier one bound the NAT); iptables-legacy and
iptables-nft and nft together; and kube-proxy's own expected ruleset (conformance corpus).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.conformance.test_kube_proxy_nftables import OVERALL_CASES
from tests.kernel.conftest import skip_or_fail
from tests.lab import netns, thinning
from tests.lab.netns import BUNDLE_COMMANDS, BUNDLE_SYSCTL, Agent, parse_conntrack
from tests.lab_tools.make_nft_fixtures import (
    Endpoint,
    Service,
    kube_proxy_nft,
    reorder_transaction,
)

pytestmark = pytest.mark.kernel

NODE_IP, WORLD_IP, BRIDGE_IP = "192.168.0.2", "192.168.0.1", "10.244.1.1"
CLIENT, BLOCKED = "203.0.113.2", "203.0.113.130"
PODS = {"pod-a": "10.244.1.2", "pod-b": "10.244.1.3", "pod-c": "10.244.1.4"}
POD_A, POD_B, POD_C = PODS["pod-a"], PODS["pod-b"], PODS["pod-c"]
POD_LISTEN = (("tcp", 8080), ("udp", 5353))
NODE_LISTEN = (("tcp", 10250), ("tcp", 10255))
CLUSTER_CIDR = "10.244.0.0/16"
PROBE_SPORTS = range(40000, 60000)
CANARY_SPORTS = range(30000, 40000)
TRACE_TABLE = """table inet kpt-trace {
    chain pre { type filter hook prerouting priority -350; policy accept;
        tcp sport 40000-59999 tcp flags & (syn|ack) == syn meta nftrace set 1
        udp sport 30000-59999 meta nftrace set 1
    }
    chain out { type filter hook output priority -350; policy accept;
        tcp sport 40000-59999 tcp flags & (syn|ack) == syn meta nftrace set 1
        udp sport 30000-59999 meta nftrace set 1
    }
}
"""
MAX_ENDPOINT_PROBES = 16
# Agreement tallies for the report (printed with -s at the end of the session).
TALLY: dict[str, int] = {"probes": 0, "kptrace_runs": 0, "rules_compared": 0, "flows": 0}


# ---------------------------------------------------------------------------------------------
# Running commands


def sh(args: list[str], ns: str | None = None, stdin: str | None = None, check: bool = True,
       timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The lab's runner (a failure or timeout is a LabError, a RuntimeError), with this lab's longer timeout."""
    return netns.sh(args, ns=ns, stdin=stdin, check=check, timeout=timeout)


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the nft kernel lab needs root (network namespaces, nft)"
    for tool in ("ip", "nft", "iptables-nft-restore", "iptables-legacy-restore", "iptables-legacy-save",
                 "iptables-nft-save", "conntrack", "stdbuf", "timeout"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    name = f"kpt-nft-{os.getpid()}-check"
    try:
        if sh(["ip", "netns", "add", name], check=False).returncode != 0:
            return "ip netns add failed"
        cmd = ("add table inet t; add chain inet t c { type filter hook output priority 0; }; "
               "add rule inet t c meta nftrace set 1")
        probe = sh(["nft", cmd], ns=name, check=False)
        if probe.returncode != 0:
            return f"nft tracing unavailable in a netns: {probe.stderr.strip()}"
    finally:
        sh(["ip", "netns", "del", name], check=False)
    return None


# ---------------------------------------------------------------------------------------------
# The kernel's side: nft monitor trace


@dataclass(frozen=True)
class Event:
    trace_id: str
    family: str
    table: str
    chain: str
    kind: str  # packet rule policy verdict
    text: str  # rule text or packet fields
    verdict: str  # accept drop continue jump X goto X return …

    @property
    def table_label(self) -> str:
        return f"{self.family} {self.table}"


_EVENT = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (packet:|rule|unknown rule|policy|verdict) ?(.*)$")


def parse_events(lines: list[str]) -> list[Event]:
    out = []
    for line in lines:
        m = _EVENT.match(line.rstrip("\n"))
        if not m:
            continue
        tid, fam, table, chain, kind, rest = m.groups()
        rest = rest.strip()
        verdict = ""
        if kind in ("rule", "unknown rule"):
            rest, _, v = rest.rpartition(" (verdict ")
            verdict = v.rstrip(")")
            if kind == "unknown rule":
                kind, rest = "rule", "unknown rule " + rest
        elif kind in ("policy", "verdict"):
            verdict, rest = rest, ""
        out.append(Event(tid, fam, table, chain, kind.rstrip(":"), rest, verdict))
    return out


def packet_events(events: list[Event], src: str, sport: int, proto: str) -> list[Event]:
    """The events of the probe sent from src:sport (trace ids whose packet lines carry it)."""
    needle = re.compile(rf"\bip saddr {re.escape(src)}\b.*\b{proto} sport {sport}\b")
    ids = {e.trace_id for e in events if e.kind == "packet" and needle.search(e.text)}
    return [e for e in events if e.trace_id in ids and e.table != "kpt-trace"]


class TraceMonitor:
    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "timeout", "1800", "stdbuf", "-oL", "nft", "monitor",
                                      "trace"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def count(self) -> int:
        with self.cond:
            return len(self.lines)

    def wait_for(self, needle: str, start: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.lines)):
                    if needle in self.lines[i]:
                        return i
                start = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.cond.wait(timeout=left)

    def slice(self, start: int, end: int) -> list[str]:
        with self.cond:
            return list(self.lines[start:end])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass(frozen=True)
class Flow:
    client: str  # world, node, pod-a
    src: str
    dst: str
    dport: int
    proto: str = "tcp"

    @property
    def in_iface(self) -> str | None:
        return None if self.client == "node" else ("cni0" if self.client.startswith("pod") else "eth0")

    def __str__(self) -> str:
        return f"{self.proto} {self.client}({self.src}) -> {self.dst}:{self.dport}"


@dataclass
class KernelResult:
    flow: Flow
    sport: int
    verdict: str  # ACCEPT DROP REJECT VANISHED
    events: list[Event]
    dnat: str | None
    masquerade: bool | None
    delivered_to: str | None
    legacy_hits: list[tuple[str, str, int]]  # (table, chain, index) whose counters moved
    legacy_verdict: str | None = None

    def describe(self) -> str:
        head = (f"kernel: {self.flow} sport={self.sport} verdict={self.verdict} dnat={self.dnat} "
                f"masquerade={self.masquerade} delivered_to={self.delivered_to} legacy={self.legacy_hits}")
        lines = [head]
        lines += [f"  {e.table_label} {e.chain} {e.kind} {e.verdict}  {e.text[:150]}" for e in self.events]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The lab


@dataclass(eq=False)
class Loaded:
    """A ruleset a test needs in the kernel, and the bundles captured the last time it was loaded."""

    name: str
    nft: str = ""
    iptables_nft: str = ""
    iptables_legacy: str = ""
    bundles: dict[str, Path] = field(default_factory=dict)
    handles: str = ""  # `nft -a list ruleset` of the same moment: trace events name rules by handle


class NftLab:
    def __init__(self, workdir: Path) -> None:
        self.prefix = f"kpt-nft-{os.getpid()}-{random.Random().randrange(16**4):04x}-"
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.agents: dict[str, Agent] = {}
        self.monitor: TraceMonitor | None = None
        self.rng = random.Random(20240611)
        self.used: set[int] = set()
        self.canary = CANARY_SPORTS[0]
        self.loaded = 0
        self.legacy_used = False
        self.current: Loaded | None = None

    def ns(self, role: str) -> str:
        return self.prefix + role

    def add_ns(self, role: str) -> str:
        name = self.ns(role)
        sh(["ip", "netns", "add", name])
        self.namespaces.append(name)
        sh(["ip", "link", "set", "lo", "up"], ns=name)
        return name

    def veth(self, a: str, name_a: str, b: str, name_b: str) -> None:
        sh(["ip", "link", "add", "kptnft0", "netns", a, "type", "veth", "peer", "name", "kptnft1", "netns", b])
        sh(["ip", "-n", a, "link", "set", "kptnft0", "name", name_a])
        sh(["ip", "-n", b, "link", "set", "kptnft1", "name", name_b])
        sh(["ip", "-n", a, "link", "set", name_a, "up"])
        sh(["ip", "-n", b, "link", "set", name_b, "up"])

    def build(self) -> NftLab:
        node, world = self.add_ns("node"), self.add_ns("world")
        self.veth(node, "eth0", world, "eth0")
        sh(["ip", "-n", node, "addr", "add", f"{NODE_IP}/24", "dev", "eth0"])
        sh(["ip", "-n", node, "route", "add", "default", "via", WORLD_IP])
        sh(["ip", "-n", world, "addr", "add", f"{WORLD_IP}/24", "dev", "eth0"])
        for ip in (CLIENT, BLOCKED):
            sh(["ip", "-n", world, "addr", "add", f"{ip}/32", "dev", "lo"])
        for cidr in ("10.244.1.0/24", "10.96.0.0/12", "198.51.100.0/24"):
            sh(["ip", "-n", world, "route", "add", cidr, "via", NODE_IP])
        sh(["ip", "-n", node, "link", "add", "cni0", "type", "bridge"])
        sh(["ip", "-n", node, "addr", "add", f"{BRIDGE_IP}/24", "dev", "cni0"])
        sh(["ip", "-n", node, "link", "set", "cni0", "up"])
        for pod, ip in PODS.items():
            ns = self.add_ns(pod)
            host = "veth" + pod.replace("-", "")
            self.veth(ns, "eth0", node, host)
            sh(["ip", "-n", node, "link", "set", host, "master", "cni0"])
            sh(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "route", "add", "default", "via", BRIDGE_IP])
            self.agents[pod] = Agent(ns, POD_LISTEN, lifetime=1800)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.route_localnet=1"):
            sh(["sysctl", "-qw", key], ns=node)
        sh(["sh", "-c", "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables"], ns=node)
        self.agents["node"] = Agent(node, NODE_LISTEN, lifetime=1800)
        self.agents["world"] = Agent(world, (), lifetime=1800)
        self.monitor = TraceMonitor(node)
        return self

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        for agent in self.agents.values():
            agent.stop()
        for ns in reversed(self.namespaces):
            sh(["ip", "netns", "del", ns], check=False)

    # -- rulesets -------------------------------------------------------------------------------

    def load(self, name: str, nft: str = "", iptables_nft: str = "", iptables_legacy: str = "") -> Loaded:
        loaded = Loaded(name, nft, iptables_nft, iptables_legacy)
        self.use(loaded)
        return loaded

    def use(self, loaded: Loaded) -> dict[str, Path]:
        """Make `loaded` the node's ruleset (again, if another test replaced it); its bundles."""
        if self.current is not loaded:
            loaded.bundles = self._apply(loaded.name, loaded.nft, loaded.iptables_nft, loaded.iptables_legacy)
            loaded.handles = (loaded.bundles["text"].parent / f"{loaded.bundles['text'].stem}.handles.txt").read_text()
            self.current = loaded
        return loaded.bundles

    def _apply(self, name: str, nft: str, iptables_nft: str, iptables_legacy: str) -> dict[str, Path]:
        """Replace the node's rules, capture its bundles, arm tracing. Returns bundle dirs by form."""
        node = self.ns("node")
        sh(["nft", "flush", "ruleset"], ns=node)
        if self.legacy_used:
            for table in ("filter", "nat", "mangle", "raw"):
                sh(["iptables-legacy", "-t", table, "-F"], ns=node, check=False)
                sh(["iptables-legacy", "-t", table, "-X"], ns=node, check=False)
        # At equal priority the kernel runs the hook registered last first (nf_hook_entries_grow).
        # No dump shows registration order; kptrace assumes iptables-nft, then legacy, then nft
        # tables, which is what loading nft, then legacy, then iptables-nft gives.
        if nft:
            sh(["nft", "-f", "-"], ns=node, stdin=nft)
        if iptables_legacy:
            if self.legacy_used:
                raise RuntimeError("legacy tables stay registered once used: give each legacy ruleset a fresh lab")
            sh(["iptables-legacy-restore"], ns=node, stdin=iptables_legacy)
            self.legacy_used = True
        if iptables_nft:
            sh(["iptables-nft-restore"], ns=node, stdin=iptables_nft)
        sh(["conntrack", "-F"], ns=node, check=False)
        self.warm_up()
        self.loaded += 1
        base = self.workdir / f"{self.loaded:02d}-{name}"
        common: dict[str, str] = {n: sh(cmd, ns=node, check=False).stdout for n, cmd in BUNDLE_COMMANDS.items()}
        sysctls = sh(["sysctl", "-a"], ns=node, check=False).stdout.splitlines()
        common["sysctl.txt"] = "".join(ln + "\n" for ln in sysctls if BUNDLE_SYSCTL.match(ln))
        common["node.yaml"] = (f"name: lab-node\nnode_ips: [{NODE_IP}]\npod_cidr: 10.244.1.0/24\n"
                               f"cluster_cidr: {CLUSTER_CIDR}\n")
        nft_text = sh(["nft", "list", "ruleset"], ns=node).stdout
        nft_json = sh(["nft", "-j", "list", "ruleset"], ns=node).stdout
        base.with_name(base.name + ".handles.txt").write_text(sh(["nft", "-a", "list", "ruleset"], ns=node).stdout)
        ipt_nft = sh(["iptables-nft-save"], ns=node).stdout if iptables_nft else ""
        ipt_legacy = sh(["iptables-legacy-save"], ns=node).stdout if iptables_legacy else ""
        forms = {"text": {"nft-ruleset.txt": nft_text}, "json": {"nft-ruleset.json": nft_json}}
        if iptables_nft:
            # The nft dump alone: iptables-nft's tables are read from it (xt extensions stay unknown).
            forms["nft-only"] = {"nft-ruleset.txt": nft_text}
        bundles = {}
        for form, files in forms.items():
            d = base.with_name(base.name + "." + form)
            d.mkdir(parents=True, exist_ok=True)
            for n, text in {**common, **files}.items():
                (d / n).write_text(text)
            if ipt_nft and form != "nft-only":
                (d / "iptables-nft-save.txt").write_text(ipt_nft)
            if ipt_legacy:
                (d / "iptables-legacy-save.txt").write_text(ipt_legacy)
            bundles[form] = d
        sh(["nft", "-f", "-"], ns=node, stdin=TRACE_TABLE)
        self.wait_ready()
        return bundles

    def warm_up(self) -> None:
        for pod, ip in PODS.items():
            self.agents[pod].send("udp", ip, 0, BRIDGE_IP, 9, timeout=0.05)

    def mark(self, timeout: float = 2.0) -> int | None:
        """A traced canary from the node to itself: every event before it has been printed."""
        assert self.monitor is not None
        self.canary = CANARY_SPORTS[0] + (self.canary - CANARY_SPORTS[0] + 1) % len(CANARY_SPORTS)
        start = self.monitor.count()
        self.agents["node"].send("udp", "127.0.0.1", self.canary, "127.0.0.1", 9, timeout=0.05)
        return self.monitor.wait_for(f"udp sport {self.canary} ", start, timeout)

    def wait_ready(self) -> None:
        for _ in range(30):
            if self.mark(timeout=0.5) is not None:
                return
        raise RuntimeError("nft monitor trace never reported a canary")

    # -- probes ---------------------------------------------------------------------------------

    def legacy_counters(self) -> dict[tuple[str, str, int], int]:
        if not self.legacy_used:
            return {}
        out: dict[tuple[str, str, int], int] = {}
        table, index = "", {}
        for line in sh(["iptables-legacy-save", "-c"], ns=self.ns("node")).stdout.splitlines():
            if line.startswith("*"):
                table, index = line[1:], {}
            m = re.match(r"^\[(\d+):\d+\] -A (\S+)", line)
            if m:
                chain = m.group(2)
                index[chain] = index.get(chain, 0) + 1
                out[(table, chain, index[chain])] = int(m.group(1))
        return out

    def legacy_rule_text(self, key: tuple[str, str, int]) -> str:
        table = ""
        counts: dict[str, int] = {}
        for line in sh(["iptables-legacy-save"], ns=self.ns("node")).stdout.splitlines():
            if line.startswith("*"):
                table, counts = line[1:], {}
            if line.startswith("-A ") and table == key[0]:
                chain = line.split()[1]
                counts[chain] = counts.get(chain, 0) + 1
                if chain == key[1] and counts[chain] == key[2]:
                    return line
        return ""

    def probe(self, flow: Flow) -> KernelResult:
        assert self.monitor is not None
        while True:
            sport = self.rng.choice(PROBE_SPORTS)
            if sport not in self.used:
                self.used.add(sport)
                break
        start = self.mark()
        if start is None:
            raise RuntimeError("trace monitor lost the canary before a probe")
        before = self.legacy_counters()
        counts = {r: a.recv_count() for r, a in self.agents.items()}
        res = self.agents[flow.client].send(flow.proto, flow.src, sport, flow.dst, flow.dport, timeout=0.9)
        delivered = self._delivery(counts, flow, sport, str(res.get("result")) in ("connected", "reply"))
        end = self.mark()
        if end is None:
            raise RuntimeError("trace monitor lost the canary after a probe")
        events = packet_events(parse_events(self.monitor.slice(start, end)), flow.src, sport, flow.proto)
        after = self.legacy_counters()
        hits = sorted(k for k, v in after.items() if v > before.get(k, 0))
        entry = next((e for e in parse_conntrack(sh(["conntrack", "-L", "-p", flow.proto], ns=self.ns("node"),
                                                     check=False).stdout)
                      if e.orig_src == flow.src and e.orig_sport == sport), None)
        dnat = entry.dnat if entry is not None else None
        masq = (entry.snat is not None) if entry is not None else None
        legacy_verdict = None
        for key in hits:
            text = self.legacy_rule_text(key)
            if re.search(r"-j (DROP|REJECT)\b", text):
                legacy_verdict = "REJECT" if "-j REJECT" in text else "DROP"
        verdict = "VANISHED"
        if delivered:
            verdict = "ACCEPT"
        else:
            drops = [e for e in events if e.verdict == "drop"]
            if drops:
                text = drops[-1].text
                if self.current is not None and drops[-1].kind == "rule":
                    text = dump_index(self.current.handles).locate(drops[-1])[1]
                verdict = "REJECT" if re.search(r"\breject\b", text) else "DROP"
            elif legacy_verdict:
                verdict = legacy_verdict
        if dnat is None:
            dnat = _trace_dnat(events, flow)
        return KernelResult(flow, sport, verdict, events, dnat, masq, delivered, hits, legacy_verdict)

    def _delivery(self, counts: dict[str, int], flow: Flow, sport: int, expected: bool) -> str | None:
        deadline = time.monotonic() + (1.0 if expected else 0.2)
        while time.monotonic() < deadline:
            for role, agent in self.agents.items():
                for ev in agent.received_since(counts[role]):
                    if ev.get("proto") == flow.proto and int(ev.get("dport", 0)) not in (9,):
                        return f"{role}:{ev['dport']}"
            time.sleep(0.01)
        return None


def _trace_dnat(events: list[Event], flow: Flow) -> str | None:
    """Where DNAT sent the packet, from the first packet line with another destination."""
    for e in events:
        if e.kind != "packet":
            continue
        d = re.search(r"\bip6? daddr (\S+)", e.text)
        p = re.search(rf"\b{flow.proto} dport (\d+)", e.text)
        if d and p and (d.group(1), int(p.group(1))) != (flow.dst, flow.dport):
            return f"{d.group(1)}:{p.group(1)}"
    return None


# ---------------------------------------------------------------------------------------------
# kptrace's side


def why_argv(bundle: Path, flow: Flow) -> list[str]:
    argv = [sys.executable, "-m", "kptrace", "why", f"{flow.dst}:{flow.dport}", "--from", flow.src, "--proto",
            flow.proto, "--dump", str(bundle), "-o", "json", "--no-checks"]
    return argv + (["--in-iface", flow.in_iface] if flow.in_iface else [])


def run_kptrace(bundle: Path, flow: Flow, lazy: bool = False) -> dict[str, Any]:
    """kptrace's answer; `lazy`: every dump read the way a large one is (blocks parsed when read)."""
    argv = why_argv(bundle, flow)
    env = {**os.environ, "KPTRACE_LAZY_MIN_LINES": "0"} if lazy else None
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT, check=False, env=env)
    TALLY["kptrace_runs"] += 1
    if proc.returncode in (2, 3) or not proc.stdout.strip():
        raise AssertionError(f"kptrace failed (rc={proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    doc["_rc"] = proc.returncode
    return doc


def _without_lazy_note(doc: dict[str, Any]) -> str:
    doc = json.loads(json.dumps(doc))
    doc["assumptions"] = [a for a in doc["assumptions"] if "parsed when the trace reads them" not in a]
    for b in doc["branches"]:
        b["assumptions"] = [a for a in b["assumptions"] if "parsed when the trace reads them" not in a]
    return json.dumps(doc, sort_keys=True)


def _norm(text: str) -> str:
    text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
    text = re.sub(r"\s*# handle \d+\s*$", "", text)
    return " ".join(text.split())


@dataclass
class DumpIndex:
    """Where each rule of `nft -a list ruleset` sits: by handle, and by chain and text."""

    chains: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    handles: dict[tuple[str, int], tuple[str, str, int]] = field(default_factory=dict)

    def locate(self, e: Event) -> tuple[int, str]:
        """(1-based index in its chain, rule text) of a trace event's rule."""
        m = re.match(r"^unknown rule handle (\d+)$", e.text)
        if m:
            # nft monitor's cache predates the ruleset: it names the rule by handle.
            found = self.handles.get((e.table_label, int(m.group(1))))
            if found is None:
                raise AssertionError(f"kernel rule handle {m.group(1)} not in the dump ({e.table_label} {e.chain})")
            return found[1], found[2]
        rules = self.chains.get((e.table_label, e.chain), [])
        text = _norm(e.text)
        if text not in rules:
            raise AssertionError(f"kernel rule not found in the dump: {e.table_label} {e.chain}: {text}")
        return rules.index(text) + 1, text


def dump_index(nft_text: str) -> DumpIndex:
    """Index `nft -a list ruleset` output by (`family table`, chain) and by handle."""
    out = DumpIndex()
    stack: list[tuple[str, str]] = []  # ("table", "ip x") / ("chain", name) / ("other", "")
    for raw in nft_text.splitlines():
        h = re.search(r"\s*# handle (\d+)\s*$", raw)
        line = raw[: h.start()].strip() if h else raw.strip()
        if line.endswith("{") and not line.startswith("elements"):
            m = re.match(r"^table (\S+) (\S+) \{$", line)
            c = re.match(r"^chain (\S+) \{$", line)
            stack.append(("table", f"{m.group(1)} {m.group(2)}") if m else ("chain", c.group(1)) if c else ("other", ""))
            if c and len(stack) >= 2:
                out.chains[(stack[-2][1], c.group(1))] = []
            continue
        if line == "}":
            if stack:
                stack.pop()
            continue
        if not stack or stack[-1][0] != "chain" or not line or line.startswith(("type ", "comment ", "policy ")):
            continue
        table, chain = stack[-2][1], stack[-1][1]
        rules = out.chains[(table, chain)]
        rules.append(_norm(line))
        if h:
            out.handles[(table, int(h.group(1)))] = (chain, len(rules), _norm(line))
    return out


IPTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security"}


def kernel_rule_keys(kernel: KernelResult, index: DumpIndex, iptables_view: bool) -> list[tuple[str, str, str, int]]:
    keys = []
    for e in kernel.events:
        if e.kind != "rule":
            continue
        n, _ = index.locate(e)
        if iptables_view and e.family in ("ip", "ip6") and e.table in IPTABLES_TABLES:
            keys.append(("iptables", e.table, e.chain, n))
        else:
            keys.append(("nft", e.table_label, e.chain, n))
    keys += [("legacy", t, c, n) for t, c, n in kernel.legacy_hits]
    return keys


def step_key(s: dict[str, Any]) -> tuple[str, str, str, int] | None:
    if s.get("rule") is None or not s.get("table"):
        return None
    src = s.get("source") or ""
    if "iptables-legacy-save" in src:
        return ("legacy", s["table"], s["chain"], s["rule"])
    if " " in s["table"]:
        return ("nft", s["table"], s["chain"], s["rule"])
    return ("iptables", s["table"], s["chain"], s["rule"])


PASS = {"ACCEPTED", "DELIVERED", "FORWARDED"}


def disagreements(kernel: KernelResult, doc: dict[str, Any], index: DumpIndex,
                  iptables_view: bool) -> list[str]:
    problems: list[str] = []
    top = doc["disposition"]
    want = {"ACCEPT": PASS, "DROP": {"DROPPED"}, "REJECT": {"REJECTED"}}.get(kernel.verdict)
    if want is None:
        return [f"kernel outcome {kernel.verdict} is not comparable (lab problem)"]
    unknowns = [u for b in doc["branches"] for u in b["unknowns"]]
    if unknowns:
        problems.append(f"kptrace has unknowns: {unknowns}")
    if top != "MIXED" and top not in want:
        problems.append(f"disposition: kptrace {top}, kernel {kernel.verdict}")
    if kernel.dnat is not None and kernel.dnat not in doc["endpoints"]:
        problems.append(f"endpoint: kernel DNAT to {kernel.dnat}, kptrace endpoints {doc['endpoints']}")
    same = [b for b in doc["branches"] if b.get("dnat") == kernel.dnat]
    if not same:
        problems.append(f"no kptrace branch with dnat={kernel.dnat}")
        return problems
    expected = kernel_rule_keys(kernel, index, iptables_view)
    TALLY["rules_compared"] += len(expected)

    def missing(b: dict[str, Any]) -> list[tuple[str, str, str, int]]:
        have = {step_key(s) for s in b["steps"]}
        return [k for k in expected if k not in have]

    branch = min(same, key=lambda b: (b["disposition"] not in want, len(missing(b))))
    if branch["disposition"] not in want:
        problems.append(f"branch dnat={kernel.dnat}: kptrace {branch['disposition']}, kernel {kernel.verdict}")
    if kernel.masquerade is not None and bool(branch["masquerade"] or branch["snat"]) != kernel.masquerade:
        problems.append(f"masquerade: kptrace {branch['masquerade']}, kernel {kernel.masquerade}")
    for k in missing(branch):
        problems.append(f"rule the kernel matched is not among kptrace's steps: {k}")
    seq = [step_key(s) for s in branch["steps"]]
    ordered = [k for k in expected if k[0] != "legacy"]
    it = iter(seq)
    if not missing(branch) and not all(any(k == x for x in it) for k in ordered):
        problems.append("kptrace's steps hold the kernel's rules in another order")
    for e in kernel.events:
        if e.kind == "policy":
            table = e.table if iptables_view and e.table in IPTABLES_TABLES and e.family in ("ip", "ip6") else e.table_label
            if not any(s.get("table") == table and s.get("chain") == e.chain and s["action"].startswith("POLICY")
                       for s in branch["steps"]):
                problems.append(f"kernel applied the policy of {e.table_label} {e.chain}; kptrace has no step for it")
    return problems


def check(lab: NftLab, loaded: Loaded, flow: Flow, expect_verdict: str,
          expect_endpoints: set[str] | None = None, expect_masq: bool | None = None,
          forms: tuple[str, ...] = ("text", "json"), known_gaps: dict[str, str] | None = None) -> None:
    """Probe until the kernel has shown every endpoint it picks, comparing each probe with kptrace."""
    TALLY["flows"] += 1
    bundles = lab.use(loaded)
    docs = {form: run_kptrace(bundles[form], flow) for form in forms}
    if "text" in forms:
        docs["text-lazy"] = run_kptrace(bundles["text"], flow, lazy=True)
        assert _without_lazy_note(docs["text-lazy"]) == _without_lazy_note(docs["text"]), \
            f"the lazy reading of {bundles['text']} answers differently from the full parse"
    index = dump_index(loaded.handles)
    seen: set[str] = set()
    reports: list[str] = []
    for i in range(MAX_ENDPOINT_PROBES):
        kernel = lab.probe(flow)
        TALLY["probes"] += 1
        assert kernel.verdict == expect_verdict, f"the lab itself: expected {expect_verdict}\n{kernel.describe()}"
        if expect_masq is not None and kernel.masquerade is not None:
            assert kernel.masquerade == expect_masq, kernel.describe()
        if kernel.dnat:
            seen.add(kernel.dnat)
        for form, doc in docs.items():
            problems = disagreements(kernel, doc, index, iptables_view=form != "nft-only")
            if problems:
                reports.append(f"[{form}] " + "\n  ".join(problems) + "\n" + kernel.describe() + "\n"
                               + json.dumps(doc["branches"], indent=1)[:5000])
        if reports or expect_endpoints is None or seen >= expect_endpoints or i >= MAX_ENDPOINT_PROBES - 1:
            break
    assert not reports, "\n\n".join(reports)
    if expect_endpoints is not None:
        assert seen == expect_endpoints, f"kernel endpoints {seen}, expected {expect_endpoints}"
        for form, doc in docs.items():
            assert set(doc["endpoints"]) == seen, f"[{form}] kptrace endpoints {doc['endpoints']}, kernel {seen}"
    else:
        for form, doc in docs.items():
            assert not doc["endpoints"] or not seen or set(doc["endpoints"]) == seen, (form, doc["endpoints"], seen)
    # Less evidence (a file or a chain fewer in the bundle) never changes what it determined.
    form = "text" if "text" in docs else forms[0]
    thinning.assert_thinned(why_argv(bundles[form], flow), docs[form], what=f"{flow} [{form}]",
                            kernel_classes=thinning.kernel_classes(kernel.verdict), known_gaps=known_gaps)


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def nftlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NftLab]:
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    lab = NftLab(tmp_path_factory.mktemp("nft-lab"))
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module", autouse=True)
def _tally() -> Iterator[None]:
    yield
    if TALLY["probes"]:
        print(f"\nnft kernel lab: {TALLY}")


def world(dst: str, dport: int, proto: str = "tcp", src: str = CLIENT) -> Flow:
    return Flow("world", src, dst, dport, proto)


B, C = f"{POD_B}:8080", f"{POD_C}:8080"

KUBE_SERVICES = [
    Service("default", "web", "10.96.0.10", 80, [Endpoint(POD_B, 8080), Endpoint(POD_C, 8080)], node_port=30080),
    Service("kube-system", "dns", "10.96.0.53", 53, [Endpoint(POD_B, 5353)], protocol="udp", port_name="dns"),
    Service("default", "empty", "10.96.0.20", 80, [], node_port=30020),
    Service("default", "lb", "10.96.0.30", 80, [Endpoint(POD_B, 8080)], lb_ips=["198.51.100.20"],
            source_ranges=["203.0.113.0/25"]),
    Service("default", "local", "10.96.0.40", 80, [Endpoint("10.244.2.5", 8080, local=False)],
            external_ips=["198.51.100.40"], etp_local=True, node_port=30040),
    Service("default", "sticky", "10.96.0.50", 80, [Endpoint(POD_C, 8080)], affinity_seconds=10800),
]

# (name, flow, kernel verdict, endpoints, masquerade)
KUBE_FLOWS = [
    ("world-clusterip", world("10.96.0.10", 80), "ACCEPT", {B, C}, True),
    ("pod-clusterip", Flow("pod-a", POD_A, "10.96.0.10", 80), "ACCEPT", {B, C}, False),
    ("node-clusterip", Flow("node", NODE_IP, "10.96.0.10", 80), "ACCEPT", {B, C}, True),
    ("world-nodeport", world(NODE_IP, 30080), "ACCEPT", {B, C}, True),
    ("world-udp", world("10.96.0.53", 53, "udp"), "ACCEPT", {f"{POD_B}:5353"}, True),
    ("no-endpoints-clusterip", world("10.96.0.20", 80), "REJECT", None, None),
    ("no-endpoints-nodeport", world(NODE_IP, 30020), "REJECT", None, None),
    ("lb-allowed", world("198.51.100.20", 80), "ACCEPT", {B}, True),
    ("lb-firewalled", world("198.51.100.20", 80, src=BLOCKED), "DROP", None, None),
    ("etp-local-no-local-endpoint", world("198.51.100.40", 80), "DROP", None, None),
    ("etp-local-nodeport", world(NODE_IP, 30040), "DROP", None, None),
    ("affinity", world("10.96.0.50", 80), "ACCEPT", {C}, True),
    ("node-port-not-a-service", world(NODE_IP, 10250), "ACCEPT", None, None),
]


@pytest.fixture(scope="module", params=["nodeport-ips", "fib-local"])
def kube_proxy_bundles(request: pytest.FixtureRequest, nftlab: NftLab) -> Loaded:
    ips = [NODE_IP] if request.param == "nodeport-ips" else None
    return nftlab.load(f"kube-proxy-{request.param}", nft=kube_proxy_nft(KUBE_SERVICES, cluster_cidr=CLUSTER_CIDR,
                                                                         nodeport_ips=ips))


@pytest.mark.parametrize("name,flow,verdict,endpoints,masq", KUBE_FLOWS, ids=[f[0] for f in KUBE_FLOWS])
def test_kube_proxy_nftables(nftlab: NftLab, kube_proxy_bundles: Loaded, name: str, flow: Flow,
                             verdict: str, endpoints: set[str] | None, masq: bool | None) -> None:
    """kube-proxy's nftables mode: services to endpoints, masquerade, no-endpoint rejects, firewall."""
    check(nftlab, kube_proxy_bundles, flow, verdict, endpoints, masq)


# -- iptables-nft tables next to plain nft tables ------------------------------------------------

MIXED_IPTABLES = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -d 10.244.1.0/24 -p tcp -m tcp --dport 8080 -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-WEB - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-WEB
-A KUBE-SVC-WEB ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ
-A KUBE-SVC-WEB -p tcp -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination {B}
-A KUBE-SVC-WEB -p tcp -j DNAT --to-destination {C}
COMMIT
"""
MIXED_NFT = f"""table inet fw {{
    set allowed {{ type inet_service ; elements = {{ 22, 10250 }} ; }}
    chain input {{
        type filter hook input priority filter + 10 ; policy drop ;
        ct state established,related accept
        iifname "lo" accept
        tcp dport @allowed counter accept
    }}
    chain forward {{
        type filter hook forward priority filter + 10 ; policy accept ;
        ip saddr {BLOCKED} counter drop
    }}
}}
table ip portmap {{
    chain pre {{
        type nat hook prerouting priority -90 ; policy accept ;
        ip daddr 10.96.0.10 tcp dport 80 dnat to {C}
        ip daddr {NODE_IP} tcp dport 8081 dnat to {C}
    }}
}}
"""
MIXED_FLOWS = [
    # iptables-nft's nat (-100) binds the NAT first: portmap's rule for the same address never runs.
    ("iptables-nat-first", world("10.96.0.10", 80), "ACCEPT", {B, C}, True),
    ("nft-drop-after-iptables-accept", world("10.96.0.10", 80, src=BLOCKED), "DROP", {B, C}, None),
    ("nft-dnat", world(NODE_IP, 8081), "ACCEPT", {C}, False),
    ("input-allowed", world(NODE_IP, 10250), "ACCEPT", None, None),
    ("input-policy-drop", world(NODE_IP, 10255), "DROP", None, None),
]


@pytest.fixture(scope="module")
def mixed_bundles(nftlab: NftLab) -> Loaded:
    return nftlab.load("mixed", nft=MIXED_NFT, iptables_nft=MIXED_IPTABLES)


@pytest.mark.parametrize("name,flow,verdict,endpoints,masq", MIXED_FLOWS, ids=[f[0] for f in MIXED_FLOWS])
def test_iptables_nft_and_nft_tables(nftlab: NftLab, mixed_bundles: Loaded, name: str, flow: Flow,
                                     verdict: str, endpoints: set[str] | None, masq: bool | None) -> None:
    """iptables-nft and plain nft tables at one hook: a drop in any base chain drops; the first nat
    chain that binds the NAT wins. Bundles: with iptables-nft-save (text, JSON) and nft text alone."""
    check(nftlab, mixed_bundles, flow, verdict, endpoints, masq, forms=("text", "json", "nft-only"))


# -- iptables-legacy, iptables-nft and nft together -----------------------------------------------

LEGACY = f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -s {BLOCKED}/32 -p tcp -m tcp --dport 8080 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d {NODE_IP}/32 -p tcp -m tcp --dport 8082 -j DNAT --to-destination {B}
COMMIT
"""
LEGACY_NFT_IPTABLES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p tcp -m tcp --dport 10255 -j REJECT --reject-with tcp-reset
COMMIT
"""
LEGACY_FLOWS = [
    ("nft-service", world("10.96.0.10", 80), "ACCEPT", {B, C}, True),
    ("legacy-drop-after-nft-dnat", world("10.96.0.10", 80, src=BLOCKED), "DROP", {B, C}, None),
    ("legacy-dnat", world(NODE_IP, 8082), "ACCEPT", {B}, False),
    ("iptables-nft-reject", world(NODE_IP, 10255), "REJECT", None, None),
    ("nothing-matches", world(NODE_IP, 10250), "ACCEPT", None, None),
]


@pytest.fixture(scope="module")
def legacy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NftLab, Loaded]]:
    """A lab of its own: legacy tables stay registered in a namespace once used."""
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    lab = NftLab(tmp_path_factory.mktemp("nft-legacy-lab"))
    try:
        lab.build()
        services = [s for s in KUBE_SERVICES if s.name == "web"]
        loaded = lab.load("legacy", nft=kube_proxy_nft(services, cluster_cidr=CLUSTER_CIDR, nodeport_ips=[NODE_IP]),
                          iptables_nft=LEGACY_NFT_IPTABLES, iptables_legacy=LEGACY)
        yield lab, loaded
    finally:
        lab.close()


@pytest.mark.parametrize("name,flow,verdict,endpoints,masq", LEGACY_FLOWS, ids=[f[0] for f in LEGACY_FLOWS])
def test_legacy_and_nft(legacy_lab: tuple[NftLab, Loaded], name: str, flow: Flow, verdict: str,
                        endpoints: set[str] | None, masq: bool | None) -> None:
    """Rules loaded with iptables-legacy-restore and iptables-nft-restore next to kube-proxy's nft
    table: legacy rules are found by their packet counters (nft monitor trace does not see them)."""
    lab, loaded = legacy_lab
    check(lab, loaded, flow, verdict, endpoints, masq)


# -- kube-proxy's own expected ruleset (conformance corpus), loaded after reordering ----------------

CONFORMANCE = Path(os.environ.get("KPTRACE_CONFORMANCE_DIR", REPO_ROOT.parent / "shared" / "conformance"))
OVERALL = CONFORMANCE / "kube-proxy" / "nftables" / "TestOverallNFTablesRules" / "ruleset.nft"


@pytest.fixture(scope="module")
def overall_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NftLab, Loaded]]:
    """A lab of its own: the corpus's addresses are added to the node, the world and pod-b."""
    if not OVERALL.exists():
        if os.environ.get("KPTRACE_REQUIRE_CONFORMANCE") == "1":
            pytest.fail(f"conformance corpus not found at {OVERALL}", pytrace=False)
        pytest.skip(f"conformance corpus not found at {OVERALL}")
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    nftlab = NftLab(tmp_path_factory.mktemp("nft-overall-lab"))
    try:
        nftlab.build()
        yield nftlab, _load_overall(nftlab)
    finally:
        nftlab.close()


def _load_overall(nftlab: NftLab) -> Loaded:
    node = nftlab.ns("node")
    # The corpus's addresses: node IPs, the endpoints' subnet on the bridge, LB/external IPs routed in.
    sh(["ip", "addr", "add", "192.168.99.11/32", "dev", "eth0"], ns=node, check=False)
    sh(["ip", "addr", "add", "10.180.0.254/24", "dev", "cni0"], ns=node, check=False)
    for ip in ("10.180.0.1", "10.180.0.2", "10.180.0.3", "10.180.0.4", "10.180.0.5"):
        sh(["ip", "-n", nftlab.ns("pod-b"), "addr", "add", f"{ip}/24", "dev", "eth0"], check=False)
    world_ns = nftlab.ns("world")
    for cidr in ("172.30.0.0/16", "10.180.0.0/24", "5.6.7.8/32", "1.2.3.4/32", "192.168.99.0/24"):
        sh(["ip", "-n", world_ns, "route", "add", cidr, "via", NODE_IP], check=False)
    return nftlab.load("overall", nft=reorder_transaction(OVERALL.read_text()))


OVERALL_FLOWS = [(name, Flow(role, src, dst, dport), verdict, endpoints, masq)
                 for name, role, src, dst, dport, verdict, endpoints, masq in OVERALL_CASES]


@pytest.mark.parametrize("name,flow,verdict,endpoints,masq", OVERALL_FLOWS, ids=[f[0] for f in OVERALL_FLOWS])
def test_conformance_overall_ruleset(overall_lab: tuple[NftLab, Loaded], name: str, flow: Flow,
                                     verdict: str, endpoints: set[str] | None, masq: bool | None) -> None:
    """kube-proxy's TestOverallNFTablesRules ruleset in the kernel. Its endpoints listen on no port
    here (the packet reaches pod-b's namespace and is refused), so an accepted packet shows as the
    kernel's DNAT and masquerade only; kptrace must agree on those and on the rules hit."""
    lab, overall_bundles = overall_lab
    TALLY["flows"] += 1
    bundles = lab.use(overall_bundles)
    docs = {form: run_kptrace(bundles[form], flow) for form in ("text", "json")}
    index = dump_index(overall_bundles.handles)
    seen: set[str] = set()
    for _ in range(MAX_ENDPOINT_PROBES):
        kernel = lab.probe(flow)
        TALLY["probes"] += 1
        if verdict == "pass" and kernel.verdict == "VANISHED" and kernel.dnat:
            kernel.verdict = "ACCEPT"  # DNATed, forwarded, refused by the endpoint's namespace
        assert kernel.verdict == ("ACCEPT" if verdict == "pass" else verdict), kernel.describe()
        if kernel.dnat:
            seen.add(kernel.dnat)
        for form, doc in docs.items():
            problems = disagreements(kernel, doc, index, iptables_view=True)
            assert not problems, f"[{form}] " + "\n".join(problems) + "\n" + kernel.describe()
        if endpoints is None or seen >= endpoints:
            break
    if endpoints is not None:
        assert seen == endpoints
        for form, doc in docs.items():
            assert set(doc["endpoints"]) == endpoints, (form, doc["endpoints"])
            assert all(b["masquerade"] == masq for b in doc["branches"])
    thinning.assert_thinned(why_argv(bundles["text"], flow), docs["text"], what=f"{name} [text]",
                            kernel_classes=thinning.kernel_classes("ACCEPT" if verdict == "pass" else verdict))
