"""The netns lab: a Kubernetes node built from network namespaces, observed in the real kernel.

Topology (all inside namespaces this module creates; nothing touches the host's network):

    world (203.0.113.2 on lo, 192.168.0.1 on eth0) ──veth── node eth0 (192.168.0.2)
      └─ rp0 10.244.2.1 ──veth── rpod (10.244.2.5): a pod "on another node"
    node cni0 bridge (10.244.1.1/24) ──veth── pod-a (.2), pod-b (.3), pod-c (.4)

The node namespace gets a ruleset through iptables-restore, dumps it with iptables-save (the
file kptrace reads), then TRACE rules are added to the raw table and xtables-monitor reports
what the kernel did with each probe packet. conntrack and the listeners' records complete the
picture (DNAT endpoint, masquerade, actual delivery).

Run as a script (``python3 netns.py agent ...``) this file is also the in-namespace agent that
listens on ports and sends probes; that part uses only the standard library.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------
# Addresses of the lab. Every one of them exists only inside namespaces this module creates.

NS_PREFIX = "kpt-"
NODE_IP = "192.168.0.2"
WORLD_UPLINK_IP = "192.168.0.1"
EXTERNAL_CLIENT_IP = "203.0.113.2"
CLUSTER_CIDR = "10.244.0.0/16"
POD_CIDR = "10.244.1.0/24"
BRIDGE_IP = "10.244.1.1"
REMOTE_POD_CIDR = "10.244.2.0/24"
REMOTE_GW_IP = "10.244.2.1"
SERVICE_CIDR = "10.96.0.0/12"
EXTERNAL_VIP_CIDR = "198.51.100.0/24"  # externalIPs and LoadBalancer IPs, routed to the node
UPLINK = "eth0"
BRIDGE = "cni0"

LOCAL_PODS: dict[str, str] = {"pod-a": "10.244.1.2", "pod-b": "10.244.1.3", "pod-c": "10.244.1.4"}
REMOTE_PODS: dict[str, str] = {"rpod": "10.244.2.5"}
POD_PORTS: tuple[tuple[str, int], ...] = (
    ("tcp", 8080), ("tcp", 8443), ("tcp", 9090), ("udp", 5353), ("udp", 8053),
)
NODE_PORTS_LISTENING: tuple[tuple[str, int], ...] = (("tcp", 10250), ("tcp", 10255), ("udp", 10251))

# The node's own addresses: what `-m addrtype --dst-type LOCAL` matches besides 127/8.
NODE_LOCAL_IPS: tuple[str, ...] = (NODE_IP, BRIDGE_IP)

CANARY_PORT = 9  # discard; canaries are UDP 127.0.0.1 -> 127.0.0.1:9 inside the node
CANARY_SPORTS = range(20000, 30000)
PROBE_SPORTS = range(40000, 60000)  # unique per probe; only these (and canaries) are traced
# Upper bound on every process the lab starts, in case the harness dies without cleaning up.
LAB_MAX_LIFETIME_S = 1800
REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_ENV = "KPTRACE_LAB_SEED"
DEFAULT_SEED = 20240601


def lab_seed() -> int:
    """The lab's base seed: source ports and the property test's random nodes derive from it."""
    return int(os.environ.get(SEED_ENV, str(DEFAULT_SEED)))


class LabError(RuntimeError):
    """The lab itself failed (not a kptrace disagreement)."""


# A node bundle (docs/bundle.md) captured inside the node namespace, besides the rules.
BUNDLE_COMMANDS: dict[str, list[str]] = {
    "ip-addr.txt": ["ip", "addr", "show"],
    "ip-addr.json": ["ip", "-j", "addr", "show"],
    "ip-link.txt": ["ip", "-d", "link", "show"],
    "ip-link.json": ["ip", "-j", "-d", "link", "show"],
    "ip-route.txt": ["ip", "route", "show", "table", "all"],
    "ip-route.json": ["ip", "-j", "route", "show", "table", "all"],
    "ip-rule.txt": ["ip", "rule", "show"],
    "ip-neigh.txt": ["ip", "neigh", "show"],
    "bridge-fdb.txt": ["bridge", "fdb", "show"],
    "bridge-link.txt": ["bridge", "-d", "link", "show"],
    "modules.txt": ["cat", "/proc/modules"],
}
BUNDLE_SYSCTL = re.compile(r"^net\.(ipv4\.(ip_forward|ip_local_port_range|conf\.)|ipv6\.conf\.all\.|"
                           r"bridge\.|netfilter\.nf_conntrack_)")


# ---------------------------------------------------------------------------------------------
# Running commands


def sh(
    args: list[str],
    *,
    ns: str | None = None,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + args
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(cmd)}") from exc
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)} -> rc={proc.returncode}: {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why the kernel lab cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "kernel lab needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables", "iptables-restore", "iptables-save", "xtables-monitor",
                 "conntrack", "nft", "stdbuf", "timeout"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    name = f"{NS_PREFIX}{os.getpid()}-check"
    try:
        sh(["ip", "netns", "add", name], timeout=10)
    except (LabError, OSError) as exc:
        return f"ip netns unavailable: {exc}"
    try:
        probe = sh(["iptables", "-t", "raw", "-A", "OUTPUT", "-p", "udp", "-j", "TRACE"],
                   ns=name, check=False)
        if probe.returncode != 0:
            return f"iptables TRACE unavailable in a netns: {probe.stderr.strip()}"
    finally:
        sh(["ip", "netns", "del", name], check=False)
    return None


def cleanup_stale_namespaces() -> None:
    """Remove kpt-<pid>-* namespaces left by lab processes that no longer exist."""
    listing = sh(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{re.escape(NS_PREFIX)}(\d+)-", name)
        if m and not _pid_alive(int(m.group(1))):
            sh(["ip", "netns", "del", name], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Agents: one long-lived process per namespace that listens and, on request, sends probes.


class Agent:
    """Controls one `netns.py agent` process inside a namespace."""

    def __init__(self, ns: str, listen: Iterable[tuple[str, int]], lifetime: float = LAB_MAX_LIFETIME_S):
        self.ns = ns
        spec = ",".join(f"{proto}:{port}" for proto, port in listen)
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-u", str(Path(__file__).resolve()),
               "agent", "--listen", spec, "--lifetime", str(lifetime)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self._cond = threading.Condition()
        self._recv: list[dict[str, Any]] = []
        self._results: dict[int, dict[str, Any]] = {}
        self._ready = False
        self._next_id = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait(lambda: self._ready or self.proc.poll() is not None, 15.0)
        if not self._ready:
            err = self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None else ""
            self.stop()
            raise LabError(f"agent in {ns} did not start: {err.strip()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._cond:
                if ev.get("ev") == "ready":
                    self._ready = True
                elif ev.get("ev") == "recv":
                    self._recv.append(ev)
                elif ev.get("ev") == "result":
                    self._results[int(ev["id"])] = ev
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _wait(self, pred: Any, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(pred, timeout=timeout)

    def send(self, proto: str, src: str, sport: int, dst: str, dport: int,
             timeout: float = 0.9) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise LabError(f"agent in {self.ns} exited")
        with self._cond:
            self._next_id += 1
            cid = self._next_id
        cmd = {"cmd": "send", "id": cid, "proto": proto, "src": src, "sport": sport,
               "dst": dst, "dport": dport, "timeout": timeout}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        if not self._wait(lambda: cid in self._results, timeout + 10.0):
            raise LabError(f"agent in {self.ns} gave no result for {cmd}")
        with self._cond:
            return self._results.pop(cid)

    def recv_count(self) -> int:
        with self._cond:
            return len(self._recv)

    def received_since(self, index: int) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._recv[index:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# ---------------------------------------------------------------------------------------------
# TRACE via xtables-monitor


@dataclass(frozen=True)
class TraceEvent:
    trace_id: str
    table: str
    chain: str
    kind: str  # rule | policy | return
    verdict: str  # ACCEPT, DROP, CONTINUE, JUMP:X, GOTO:X, RETURN
    text: str  # rule text as iptables-save prints it ("-A CHAIN ..."), "" for policies
    hook: str  # base chain whose traversal this event belongs to
    packet: dict[str, str]  # the PACKET line in force (SRC, DST, SPORT, DPORT, ID, IN, OUT, ...)


_TRACE_RULE_PREFIX = re.compile(r"^-4 -t \S+ ")


def _verdict_name(raw: str) -> str:
    # nft prints NFT_RETURN (-5) as an unsigned number.
    return {"0xfffffffb": "RETURN", "0xfffffffd": "RETURN"}.get(raw, raw)


def parse_packet_fields(rest: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for tok in rest.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            fields.setdefault(k, v)
        else:
            fields.setdefault(tok, "1")
    return fields


def parse_trace_lines(lines: Iterable[str]) -> list[TraceEvent]:
    """Turn xtables-monitor --trace output into events, each tied to the PACKET line before it.

    The kernel emits one PACKET line per base-chain traversal and tags every line with a
    trace id; lines of different packets can interleave, so state is kept per trace id.
    """
    packet_of: dict[str, dict[str, str]] = {}
    hook_of: dict[str, str] = {}
    fresh: dict[str, bool] = {}
    events: list[TraceEvent] = []
    for line in lines:
        s = line.rstrip("\n")
        if s.startswith("PACKET:"):
            parts = s.split(None, 3)
            if len(parts) < 3:
                continue
            tid = parts[2]
            packet_of[tid] = parse_packet_fields(parts[3] if len(parts) > 3 else "")
            fresh[tid] = True
            continue
        st = s.strip()
        if not st.startswith("TRACE:"):
            continue
        parts = st.split(None, 3)
        if len(parts) < 4:
            continue
        tid, body = parts[2], parts[3]
        head, _, text = body.partition("  ")
        fields = head.strip().split(":")
        if len(fields) < 3:
            continue
        table, chain, kind = fields[0], fields[1], fields[2]
        if kind == "rule":
            verdict = _verdict_name(":".join(fields[4:]))
        elif kind == "policy":
            verdict = ":".join(fields[3:])
        else:
            verdict = "RETURN"
        if fresh.get(tid, True):
            hook_of[tid] = chain  # first event after a PACKET line is in the base chain
            fresh[tid] = False
        events.append(TraceEvent(
            trace_id=tid, table=table, chain=chain, kind=kind, verdict=verdict,
            text=_TRACE_RULE_PREFIX.sub("", text.strip()), hook=hook_of.get(tid, chain),
            packet=dict(packet_of.get(tid, {})),
        ))
    return events


def events_of_packet(events: list[TraceEvent], src: str, sport: int) -> list[TraceEvent]:
    """Events of the first packet sent from src:sport (later retransmissions are left out).

    The IP ID stays the same while the packet crosses the node, even when its trace id or
    destination (DNAT) changes, so (SRC, SPORT, ID) names one packet.
    """
    mine = [e for e in events if e.packet.get("SRC") == src and e.packet.get("SPORT") == str(sport)]
    if not mine:
        return []
    ip_id = mine[0].packet.get("ID")
    return [e for e in mine if e.packet.get("ID") == ip_id]


class MonitorLost(LabError):
    """xtables-monitor stopped reporting (it exits on netlink ENOBUFS after a burst)."""


class TraceMonitor:
    """xtables-monitor --trace running in the node namespace, restarted if it dies."""

    def __init__(self, ns: str, canary_agent: Agent):
        self.ns = ns
        self.agent = canary_agent
        self._cond = threading.Condition()
        self._lines: list[str] = []
        self._canary_sport = CANARY_SPORTS[0]
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        # Under a pipe xtables-monitor's stdout is block-buffered; stdbuf -oL makes it stream.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "timeout", str(LAB_MAX_LIFETIME_S), "stdbuf", "-oL",
             "xtables-monitor", "--trace"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()

    def ensure_running(self) -> None:
        """Start a fresh monitor if the last one died; line indices before this are void."""
        if self.proc.poll() is None:
            return
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.restarts += 1
        self._start()
        self.wait_ready()

    def install_trace_rules(self) -> None:
        """TRACE only what the lab sends: probes' first packets and canaries.

        Every traced packet costs xtables-monitor a netlink round trip per event; tracing all
        TCP/UDP (replies, FINs, ACKs) can overflow its socket, and then it exits (ENOBUFS).
        """
        probe = f"{PROBE_SPORTS[0]}:{PROBE_SPORTS[-1]}"
        canary = f"{CANARY_SPORTS[0]}:{CANARY_SPORTS[-1]}"
        matches = [
            ["-p", "tcp", "-m", "tcp", "--sport", probe, "--tcp-flags", "SYN,ACK", "SYN"],
            ["-p", "udp", "-m", "udp", "--sport", probe],
            ["-p", "udp", "-m", "udp", "--sport", canary, "--dport", str(CANARY_PORT)],
        ]
        for chain in ("PREROUTING", "OUTPUT"):
            for match in matches:
                sh(["iptables", "-t", "raw", "-I", chain, *match, "-j", "TRACE"], ns=self.ns)

    def mark(self, timeout: float = 2.0) -> int | None:
        """Send a canary through the node and return the line index where it showed up.

        Everything a probe caused is printed before a canary sent after the probe finished.
        """
        span = len(CANARY_SPORTS)
        self._canary_sport = CANARY_SPORTS[0] + (self._canary_sport - CANARY_SPORTS[0] + 1) % span
        sport = self._canary_sport
        needle = f"SPORT={sport} "
        with self._cond:
            start = len(self._lines)
        self.agent.send("udp", "127.0.0.1", sport, "127.0.0.1", CANARY_PORT, timeout=0.05)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self._lines)):
                    if needle in self._lines[i] and self._lines[i].startswith("PACKET:"):
                        return i
                start = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self._cond.wait(timeout=left)

    def wait_ready(self) -> None:
        # The monitor subscribes asynchronously; keep sending canaries until one is reported.
        for _ in range(25):
            if self.mark(timeout=0.4) is not None:
                return
        raise LabError("xtables-monitor never reported a canary packet")

    def health(self) -> str:
        with self._cond:
            tail = "".join(self._lines[-5:])
        return f"xtables-monitor rc={self.proc.poll()}, last lines:\n{tail}"

    def lines(self, start: int, end: int | None = None) -> list[str]:
        with self._cond:
            return list(self._lines[start:end])

    def line_count(self) -> int:
        with self._cond:
            return len(self._lines)

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


# ---------------------------------------------------------------------------------------------
# conntrack


@dataclass(frozen=True)
class ConntrackEntry:
    proto: str
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    flags: frozenset[str]

    @property
    def dnat(self) -> str | None:
        if (self.reply_src, self.reply_sport) != (self.orig_dst, self.orig_dport):
            return f"{self.reply_src}:{self.reply_sport}"
        return None

    @property
    def snat(self) -> str | None:
        if (self.reply_dst, self.reply_dport) != (self.orig_src, self.orig_sport):
            return f"{self.reply_dst}:{self.reply_dport}"
        return None


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    entries = []
    for line in text.splitlines():
        toks = line.split()
        if not toks or toks[0] not in ("tcp", "udp"):
            continue
        kv = [t.split("=", 1) for t in toks if "=" in t]
        addr = [(k, v) for k, v in kv if k in ("src", "dst", "sport", "dport")]
        if len(addr) < 8:
            continue
        o = dict(addr[:4])
        r = dict(addr[4:8])
        entries.append(ConntrackEntry(
            proto=toks[0], orig_src=o["src"], orig_dst=o["dst"], orig_sport=int(o["sport"]),
            orig_dport=int(o["dport"]), reply_src=r["src"], reply_dst=r["dst"],
            reply_sport=int(r["sport"]), reply_dport=int(r["dport"]),
            flags=frozenset(t.strip("[]") for t in toks if t.startswith("[")),
        ))
    return entries


# ---------------------------------------------------------------------------------------------
# Probe results


@dataclass(frozen=True)
class Flow:
    client: str  # namespace role that sends: pod name, "world" or "node"
    src: str
    dst: str
    dport: int
    proto: str = "tcp"

    @property
    def in_iface(self) -> str | None:
        """Where the node sees the packet arrive (None: generated by the node itself)."""
        if self.client == "node":
            return None
        return BRIDGE if self.client in LOCAL_PODS else UPLINK

    def __str__(self) -> str:
        return f"{self.proto} {self.client}({self.src}) -> {self.dst}:{self.dport}"


@dataclass
class Delivery:
    ns_role: str
    src: str
    sport: int
    dst: str
    dport: int


class TracedPacket:
    """What a packet's TRACE events say, for a result holding them as `events` (one node's or one flow's)."""

    events: list[TraceEvent]

    @property
    def rules(self) -> list[TraceEvent]:
        """Rules the packet matched, minus the lab's own TRACE rules."""
        return [e for e in self.events if e.kind == "rule" and not e.text.endswith("-j TRACE")]

    @property
    def egress(self) -> str | None:
        """Interface the packet left by, when netfilter last saw it in POSTROUTING."""
        if self.events and self.events[-1].hook == "POSTROUTING":
            return self.events[-1].packet.get("OUT")
        return None

    @property
    def hooks(self) -> list[str]:
        """The hooks the packet passed, in order (raw's events left out)."""
        seen: list[str] = []
        for e in self.events:
            if e.table != "raw" and (not seen or seen[-1] != e.hook):
                seen.append(e.hook)
        return seen


@dataclass
class KernelResult(TracedPacket):
    flow: Flow
    sport: int
    verdict: str  # ACCEPT | DROP | REJECT | VANISHED | LOST, see verdict_of()
    events: list[TraceEvent]
    conntrack: ConntrackEntry | None
    delivery: Delivery | None
    client_result: str
    trace_dnat: str | None
    attempts: int = 1

    @property
    def dnat(self) -> str | None:
        # A confirmed entry is the truth: a DNAT rule that matched a connection conntrack had already
        # confirmed (an entry made before the rules) translated nothing, whatever TRACE shows.
        if self.conntrack is not None:
            return self.conntrack.dnat
        return self.trace_dnat

    @property
    def masquerade(self) -> bool | None:
        """Whether the source was rewritten; None when the packet never got to POSTROUTING."""
        if self.conntrack is None:
            return None
        return self.conntrack.snat is not None

    @property
    def reply_ok(self) -> bool | None:
        """Did the answer come back? A completed handshake or a UDP echo says yes; a delivered
        probe whose sender still timed out says no; otherwise unknown."""
        if self.client_result in ("connected", "reply"):
            return True
        if self.delivery is not None and self.client_result == "timeout":
            return False
        return None


    def describe(self) -> str:
        lines = [(f"kernel: {self.flow} sport={self.sport} verdict={self.verdict} "
                 f"client={self.client_result} dnat={self.dnat} masquerade={self.masquerade} "
                 f"egress={self.egress} delivery={self.delivery} attempts={self.attempts}")]
        if self.conntrack:
            c = self.conntrack
            lines.append(f"  conntrack: {c.proto} {c.orig_src}:{c.orig_sport}->{c.orig_dst}:"
                         f"{c.orig_dport} reply {c.reply_src}:{c.reply_sport}->{c.reply_dst}:"
                         f"{c.reply_dport}")
        for e in self.events:
            if e.table == "raw":
                continue
            lines.append(f"  [{e.hook}] {e.table}:{e.chain} {e.kind} {e.verdict}  {e.text}")
        return "\n".join(lines)


def verdict_of(events: list[TraceEvent], *, delivered: bool, client_result: str) -> str:
    """What the kernel did with one packet, from its trace events (in order) and the outcome.

    ACCEPT: netfilter let it go (its last hook was INPUT or POSTROUTING), or it never met
    netfilter and still arrived (bridged with br_netfilter off). DROP/REJECT: a rule or policy.
    VANISHED: netfilter's rules raised no verdict, yet it never arrived and the sender got no
    answer: the bridge or routing discarded it (a frame that must leave by a port without
    hairpin, a 127.0.0.1 source rerouted off-host without route_localnet).
    LOST: none of these; the lab cannot tell.
    """
    nf = [e for e in events if e.table != "raw" or e.verdict == "DROP"]
    for e in nf:
        if e.verdict == "DROP":
            return "REJECT" if re.search(r"-j REJECT\b", e.text) else "DROP"
    if nf and nf[-1].hook in ("INPUT", "POSTROUTING"):
        return "ACCEPT"
    if delivered:
        return "ACCEPT"
    if nf and client_result not in ("connected", "reply"):
        return "VANISHED"
    return "LOST"


_DNAT_TARGET = re.compile(r"-j DNAT --to-destination (\d+\.\d+\.\d+\.\d+)(?::(\d+))?")


def dnat_from_trace(events: list[TraceEvent], dst: str, dport: int) -> str | None:
    """Where DNAT sent the packet: a later PACKET line shows it; failing that (the packet was
    lost right after nat PREROUTING), the DNAT rule that took it says it."""
    for e in reversed(events):
        d, p = e.packet.get("DST"), e.packet.get("DPORT")
        if d and p and (d, p) != (dst, str(dport)):
            return f"{d}:{p}"
    for e in reversed(events):
        m = _DNAT_TARGET.search(e.text)
        if m and e.kind == "rule" and e.verdict == "ACCEPT":
            return f"{m.group(1)}:{m.group(2) or dport}"
    return None


# ---------------------------------------------------------------------------------------------
# The lab


@dataclass
class Lab:
    prefix: str
    seed: int = 1
    node: str = ""
    world: str = ""
    pods: dict[str, str] = field(default_factory=dict)  # pod name -> namespace
    agents: dict[str, Agent] = field(default_factory=dict)  # role -> agent
    monitor: TraceMonitor | None = None
    dump_dir: Path | None = None
    _namespaces: list[str] = field(default_factory=list)
    _used_sports: set[int] = field(default_factory=set)
    _rng: random.Random = field(default_factory=random.Random)
    _dumps: int = 0

    # -- topology -------------------------------------------------------------------------------

    def build(self) -> Lab:
        self._rng = random.Random(self.seed)
        self.node = self._add_ns("node")
        self.world = self._add_ns("world")
        self._build_uplink()
        self._build_bridge()
        for i, (pod, ip) in enumerate(LOCAL_PODS.items()):
            self._add_local_pod(pod, ip, i)
        for pod, ip in REMOTE_PODS.items():
            self._add_remote_pod(pod, ip)
        self._node_sysctls()
        self._start_agents()
        return self

    def _add_ns(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        sh(["ip", "netns", "add", name])
        self._namespaces.append(name)
        sh(["ip", "link", "set", "lo", "up"], ns=name)
        return name

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        # Created directly inside the namespaces: no interface ever exists in the host netns.
        sh(["ip", "link", "add", "kpttmp0", "netns", ns_a, "type", "veth",
            "peer", "name", "kpttmp1", "netns", ns_b])
        sh(["ip", "-n", ns_a, "link", "set", "kpttmp0", "name", name_a])
        sh(["ip", "-n", ns_b, "link", "set", "kpttmp1", "name", name_b])
        sh(["ip", "-n", ns_a, "link", "set", name_a, "up"])
        sh(["ip", "-n", ns_b, "link", "set", name_b, "up"])

    def _build_uplink(self) -> None:
        n, w = self.node, self.world
        self._veth(n, UPLINK, w, "eth0")
        sh(["ip", "-n", n, "addr", "add", f"{NODE_IP}/24", "dev", UPLINK])
        sh(["ip", "-n", w, "addr", "add", f"{WORLD_UPLINK_IP}/24", "dev", "eth0"])
        sh(["ip", "-n", w, "addr", "add", f"{EXTERNAL_CLIENT_IP}/32", "dev", "lo"])
        sh(["ip", "-n", n, "route", "add", "default", "via", WORLD_UPLINK_IP])
        # The service range too: an off-cluster client with a static route to the ClusterIPs.
        for cidr in (POD_CIDR, EXTERNAL_VIP_CIDR, SERVICE_CIDR):
            sh(["ip", "-n", w, "route", "add", cidr, "via", NODE_IP])
        # Packets the node forwards to the world without translating them must die there, not
        # bounce back to the node until their TTL runs out.
        for cidr in (EXTERNAL_VIP_CIDR, SERVICE_CIDR):
            sh(["ip", "-n", w, "rule", "add", "iif", "eth0", "to", cidr, "unreachable"])
        sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=w)

    def _build_bridge(self) -> None:
        sh(["ip", "-n", self.node, "link", "add", BRIDGE, "type", "bridge"])
        sh(["ip", "-n", self.node, "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE])
        sh(["ip", "-n", self.node, "link", "set", BRIDGE, "up"])

    def _add_local_pod(self, pod: str, ip: str, index: int) -> None:
        ns = self._add_ns(pod)
        host_if = self.host_veth(pod)
        self._veth(ns, "eth0", self.node, host_if)
        sh(["ip", "-n", self.node, "link", "set", host_if, "master", BRIDGE])
        sh(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "route", "add", "default", "via", BRIDGE_IP])
        self.pods[pod] = ns

    def _add_remote_pod(self, pod: str, ip: str) -> None:
        # Stands for a pod on another node; the world namespace plays that node's router.
        ns = self._add_ns(pod)
        self._veth(ns, "eth0", self.world, "rp0")
        sh(["ip", "-n", self.world, "addr", "add", f"{REMOTE_GW_IP}/24", "dev", "rp0"])
        sh(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "route", "add", "default", "via", REMOTE_GW_IP])
        self.pods[pod] = ns

    @staticmethod
    def host_veth(pod: str) -> str:
        return "veth" + pod.replace("-", "")[:10]

    def _node_sysctls(self) -> None:
        n = self.node
        sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=n)
        # kube-proxy sets route_localnet so that 127.0.0.1:nodePort can be DNATed off-host.
        sh(["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"], ns=n)
        self.set_bridge_nf_call_iptables(True)

    def set_bridge_nf_call_iptables(self, on: bool) -> None:
        """br_netfilter: bridged IPv4 frames traverse iptables (per-netns on recent kernels)."""
        path = "/proc/sys/net/bridge/bridge-nf-call-iptables"
        sh(["sh", "-c", f"echo {1 if on else 0} > {path}"], ns=self.node)
        got = sh(["cat", path], ns=self.node).stdout.strip()
        if got != ("1" if on else "0"):
            raise LabError(f"bridge-nf-call-iptables is {got} in {self.node}")

    def set_route_localnet(self, on: bool) -> None:
        sh(["sysctl", "-qw", f"net.ipv4.conf.all.route_localnet={1 if on else 0}"], ns=self.node)

    def set_hairpin(self, pod: str, on: bool) -> None:
        """A bridge sends a frame back out of the port it came in on only in hairpin mode."""
        sh(["ip", "-n", self.node, "link", "set", self.host_veth(pod), "type", "bridge_slave",
            "hairpin", "on" if on else "off"])

    def _start_agents(self) -> None:
        for pod, ns in self.pods.items():
            self.agents[pod] = Agent(ns, POD_PORTS)
        self.agents["node"] = Agent(self.node, NODE_PORTS_LISTENING)
        self.agents["world"] = Agent(self.world, ())
        self.monitor = TraceMonitor(self.node, self.agents["node"])

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        for agent in self.agents.values():
            agent.stop()
        for ns in reversed(self._namespaces):
            sh(["ip", "netns", "del", ns], check=False)
        self._namespaces.clear()

    def ns_of(self, role: str) -> str:
        if role == "node":
            return self.node
        if role == "world":
            return self.world
        return self.pods[role]

    # -- rulesets -------------------------------------------------------------------------------

    def load(self, ruleset: str, *, name: str = "ruleset",
             conntrack_before: Iterable[list[str]] = ()) -> Path:
        """Replace the node's whole netfilter state, dump it for kptrace, then arm TRACE.

        The dump is taken before the TRACE rules go in, so kptrace sees the ruleset as the
        node would have it. `conntrack_before`: `conntrack -I` argument lists run on an empty
        conntrack table before the rules are loaded (entries made before kube-proxy's rules); the
        bundle then holds `conntrack -L` as conntrack.txt.
        """
        assert self.monitor is not None and self.dump_dir is not None
        sh(["nft", "flush", "ruleset"], ns=self.node)
        sh(["conntrack", "-F"], ns=self.node, check=False)
        entries = [list(args) for args in conntrack_before]
        for args in entries:
            sh(["conntrack", "-I", *args], ns=self.node)
        sh(["iptables-restore"], ns=self.node, stdin=ruleset)
        if not entries:
            sh(["conntrack", "-F"], ns=self.node, check=False)
        self._dumps += 1
        dump = self.dump_dir / f"{self._dumps:03d}-{name}.iptables-save"
        dump.write_text(sh(["iptables-save"], ns=self.node).stdout)
        self.collect_bundle(dump)
        if entries:
            table = sh(["conntrack", "-L"], ns=self.node, check=False).stdout
            (bundle_of(dump) / "conntrack.txt").write_text(table)
        self.monitor.install_trace_rules()
        self.monitor.wait_ready()
        return dump

    def collect_bundle(self, dump: Path) -> Path:
        """Write the node bundle for `dump` (same rules, plus links, routes, sysctls...).

        Call it again after changing link state or sysctls so the bundle tells the truth.
        """
        self.warm_up_neighbours()
        bundle = bundle_of(dump)
        bundle.mkdir(exist_ok=True)
        (bundle / "iptables-save.txt").write_text(dump.read_text())
        for name, cmd in BUNDLE_COMMANDS.items():
            (bundle / name).write_text(sh(cmd, ns=self.node, check=False).stdout)
        sysctls = sh(["sysctl", "-a"], ns=self.node, check=False).stdout.splitlines()
        (bundle / "sysctl.txt").write_text(
            "".join(line + "\n" for line in sysctls if BUNDLE_SYSCTL.match(line)))
        (bundle / "hostname.txt").write_text("lab-node\n")
        (bundle / "node.yaml").write_text(
            f"name: lab-node\nnode_ips: [{NODE_IP}]\npod_cidr: {POD_CIDR}\n"
            f"cluster_cidr: {CLUSTER_CIDR}\nservice_cidr: {SERVICE_CIDR}\n"
            "proxy_mode: iptables\ncni: bridge\n")
        return bundle

    def warm_up_neighbours(self) -> None:
        """Make every local pod talk to the bridge, so the node's ARP table and the bridge's FDB
        know which port each pod sits behind, as on a node whose pods are running."""
        for pod, ip in LOCAL_PODS.items():
            self.agents[pod].send("udp", ip, 0, BRIDGE_IP, CANARY_PORT, timeout=0.05)

    def reset_link_state(self) -> None:
        for pod in LOCAL_PODS:
            self.set_hairpin(pod, False)
        self.set_bridge_nf_call_iptables(True)
        self.set_route_localnet(True)

    # -- probing --------------------------------------------------------------------------------

    def _next_sport(self) -> int:
        while True:
            port = self._rng.choice(PROBE_SPORTS)
            if port not in self._used_sports:
                self._used_sports.add(port)
                return port

    def conntrack_entry(self, proto: str, src: str, sport: int) -> ConntrackEntry | None:
        out = sh(["conntrack", "-L", "-p", proto], ns=self.node, check=False).stdout
        for entry in parse_conntrack(out):
            if entry.orig_src == src and entry.orig_sport == sport:
                return entry
        return None

    def probe(self, flow: Flow, *, timeout: float = 0.9, sport: int | None = None,
              retry: bool = True) -> KernelResult:
        """Send one packet (a TCP SYN or a UDP datagram) and report what the kernel did.

        `sport`: this source port (a conntrack entry made for it), not a fresh one."""
        result = self._attempt(flow, timeout, sport)
        if retry and result.verdict == "ACCEPT" and result.delivery is None and result.client_result in (
                "refused", "timeout") and self._expects_listener(result):
            # A listener that was not ready yet looks like a lost packet: try once more.
            again = self._attempt(flow, timeout, sport)
            again.attempts = 2
            return again
        return result

    def _attempt(self, flow: Flow, timeout: float, sport: int | None = None) -> KernelResult:
        assert self.monitor is not None
        try:
            return self._probe_once(flow, timeout, sport)
        except MonitorLost:
            self.monitor.ensure_running()
            return self._probe_once(flow, timeout, sport)

    def _expects_listener(self, result: KernelResult) -> bool:
        target = result.dnat or f"{result.flow.dst}:{result.flow.dport}"
        port = target.rpartition(":")[2]
        ports = {p for _, p in POD_PORTS} | {p for _, p in NODE_PORTS_LISTENING}
        return int(port) in ports

    def _probe_once(self, flow: Flow, timeout: float, sport: int | None = None) -> KernelResult:
        assert self.monitor is not None
        self.monitor.ensure_running()
        sport = sport if sport is not None else self._next_sport()
        start = self.monitor.mark()
        if start is None:
            raise MonitorLost(f"trace monitor lost its canary before the probe {flow}: "
                           f"{self.monitor.health()}")
        counts = {role: a.recv_count() for role, a in self.agents.items()}
        res = self.agents[flow.client].send(flow.proto, flow.src, sport, flow.dst, flow.dport,
                                            timeout=timeout)
        delivery = self._await_delivery(counts, flow, sport,
                                        res.get("result") in ("connected", "reply"))
        end = self.monitor.mark()
        if end is None:
            raise MonitorLost(f"trace monitor lost its canary after the probe {flow}: "
                           f"{self.monitor.health()}")
        events = events_of_packet(parse_trace_lines(self.monitor.lines(start, end)),
                                  flow.src, sport)
        entry = self.conntrack_entry(flow.proto, flow.src, sport)
        if delivery is None:
            delivery = self._find_delivery(counts, flow, sport, entry)
        verdict = verdict_of(events, delivered=delivery is not None,
                             client_result=str(res.get("result")))
        return KernelResult(
            flow=flow, sport=sport, verdict=verdict, events=events, conntrack=entry,
            delivery=delivery, client_result=str(res.get("result")),
            trace_dnat=dnat_from_trace(events, flow.dst, flow.dport),
        )

    def _await_delivery(self, counts: dict[str, int], flow: Flow, sport: int,
                        expected: bool) -> Delivery | None:
        deadline = time.monotonic() + (1.0 if expected else 0.15)
        while time.monotonic() < deadline:
            found = self._find_delivery(counts, flow, sport, None)
            if found is not None:
                return found
            time.sleep(0.01)
        return None

    def _find_delivery(self, counts: dict[str, int], flow: Flow, sport: int,
                       entry: ConntrackEntry | None) -> Delivery | None:
        candidates: list[Delivery] = []
        for role, agent in self.agents.items():
            for ev in agent.received_since(counts[role]):
                if ev.get("proto") != flow.proto:
                    continue
                candidates.append(Delivery(role, ev["src"], int(ev["sport"]), ev["dst"],
                                           int(ev["dport"])))
        for d in candidates:
            if entry is not None and (d.src, d.sport) == (entry.reply_dst, entry.reply_dport):
                return d
            if (d.src, d.sport) == (flow.src, sport):
                return d
        # Masquerade --random-fully rewrote the port and conntrack is not known yet: the lab is
        # quiet, so one new arrival of this protocol is this probe.
        return candidates[0] if len(candidates) == 1 and entry is None else None


def bundle_of(dump: Path) -> Path:
    return dump.with_suffix(".bundle")


def lab_prefix() -> str:
    """Namespace names of one lab: the project's prefix, this process, a random tag."""
    return f"{NS_PREFIX}{os.getpid()}-{random.Random().randrange(16**4):04x}-"


def built(lab: Any) -> Any:
    """The lab, built; a half-built lab is torn down before the error goes on."""
    try:
        lab.build()
    except BaseException:
        lab.close()
        raise
    return lab


def make_lab(dump_dir: Path, seed: int = 1) -> Lab:
    return built(Lab(prefix=lab_prefix(), seed=seed, dump_dir=dump_dir))  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# kptrace, the prediction under test


@dataclass
class KptraceAnswer:
    exit_code: int
    report: dict[str, Any]
    argv: list[str]
    stderr: str

    @property
    def disposition(self) -> str:
        return str(self.report.get("disposition"))

    @property
    def branches(self) -> list[dict[str, Any]]:
        return list(self.report.get("branches") or [])

    @property
    def endpoints(self) -> list[str]:
        return list(self.report.get("endpoints") or [])


def run_kptrace(source: Path, flow: Flow, *, node_ips: Iterable[str] = NODE_LOCAL_IPS,
                env: dict[str, str] | None = None, extra: Iterable[str] = ()) -> KptraceAnswer:
    """kptrace's answer for `flow`; `source` is an iptables-save file or a bundle directory;
    `extra`: more `why` options (--sport, --service-cidr)."""
    argv = [sys.executable, "-m", "kptrace", "why", f"{flow.dst}:{flow.dport}", "--from", flow.src,
            "--proto", flow.proto, "--dump", str(source), *extra]
    for ip in node_ips:
        argv += ["--node-ip", ip]
    if flow.in_iface:
        argv += ["--in-iface", flow.in_iface]
    argv += ["-o", "json"]
    return answer_of(argv, env)


def answer_of(argv: list[str], env: dict[str, str] | None = None) -> KptraceAnswer:
    """Run a `kptrace why … -o json` command line; its report, or an AssertionError saying why not."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          check=False, env={**os.environ, **(env or {})})
    if proc.returncode in (2, 3) or not proc.stdout.strip():
        raise AssertionError(f"kptrace failed (rc={proc.returncode}): {' '.join(argv)}\n"
                             f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}")
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"kptrace printed no JSON: {proc.stdout[:2000]}") from exc
    return KptraceAnswer(proc.returncode, report, argv, proc.stderr)


PASS_DISPOSITIONS = {"ACCEPTED", "DELIVERED", "FORWARDED"}
# kptrace disposition classes that describe each kernel outcome.
_KERNEL_TO_CLASSES = {"ACCEPT": {"pass"}, "DROP": {"drop"}, "REJECT": {"reject"},
                      "VANISHED": {"drop", "no_route"}}


def disposition_class(disposition: str) -> str:
    if disposition in PASS_DISPOSITIONS:
        return "pass"
    return {"DROPPED": "drop", "REJECTED": "reject"}.get(disposition, disposition.lower())


def normalize_rule(text: str) -> str:
    return " ".join(text.split())


def dump_tables(dump: Path) -> set[str]:
    return {line[1:].strip() for line in dump.read_text().splitlines() if line.startswith("*")}


def _branch_texts(branch: dict[str, Any]) -> set[str]:
    return {normalize_rule(s.get("text") or "") for s in branch.get("steps") or []}


def _branch_masquerades(branch: dict[str, Any]) -> bool:
    return bool(branch.get("masquerade")) or branch.get("snat") not in (None, "", False)


def disagreements(kernel: KernelResult, answer: KptraceAnswer, dump: Path, *,
                  exact_endpoint: bool) -> list[str]:
    """Every way kptrace's answer differs from what the kernel did; empty when they agree."""
    problems: list[str] = []
    kclasses = _KERNEL_TO_CLASSES.get(kernel.verdict)
    if kclasses is None:
        return [f"kernel outcome {kernel.verdict} is not comparable (lab problem)"]

    top = answer.disposition
    if top == "NO_SERVICE" or (top == "MIXED" and all(b.get("disposition") == "NO_SERVICE" for b in answer.branches)):
        return _no_service_disagreements(kernel, answer)
    if top != "MIXED" and disposition_class(top) not in kclasses:
        problems.append(f"disposition: kptrace {top}, kernel {kernel.verdict}")
    expected_rc = 0 if kclasses == {"pass"} else 1
    if top != "MIXED" and answer.exit_code != expected_rc:
        problems.append(f"exit code: kptrace {answer.exit_code}, expected {expected_rc} "
                        f"for kernel {kernel.verdict}")

    kdnat = kernel.dnat
    same_dnat = [b for b in answer.branches if (b.get("dnat") or None) == kdnat]
    if kdnat is not None:
        if kdnat not in answer.endpoints:
            problems.append(f"endpoint: kernel DNAT to {kdnat}, kptrace endpoints {answer.endpoints}")
        if exact_endpoint and answer.endpoints != [kdnat]:
            problems.append(f"endpoint set: kptrace {answer.endpoints}, kernel's only endpoint {kdnat}")
    if not same_dnat:
        problems.append(f"no kptrace branch with dnat={kdnat}; branches have "
                        f"{[b.get('dnat') for b in answer.branches]}")
        return problems

    tables = dump_tables(dump)
    kernel_rules = [normalize_rule(e.text) for e in kernel.rules if e.table in tables]
    scored = sorted(same_dnat, key=lambda b: (
        disposition_class(str(b.get("disposition"))) not in kclasses,
        len([r for r in kernel_rules if r not in _branch_texts(b)])))
    branch = scored[0]
    bclass = disposition_class(str(branch.get("disposition")))
    if bclass not in kclasses:
        problems.append(f"branch dnat={kdnat}: kptrace {branch.get('disposition')}, "
                        f"kernel {kernel.verdict}")
    if kernel.masquerade is not None and _branch_masquerades(branch) != kernel.masquerade:
        problems.append(f"masquerade: kptrace {_branch_masquerades(branch)} "
                        f"(snat={branch.get('snat')}), kernel {kernel.masquerade} "
                        f"(conntrack snat {kernel.conntrack.snat if kernel.conntrack else None})")
    problems += _reply_disagreements(kernel, branch)
    predicted_egress = (branch.get("egress") or {}).get("iface")
    if predicted_egress and kernel.egress and predicted_egress != kernel.egress:
        problems.append(f"egress: kptrace {predicted_egress}, kernel {kernel.egress}")
    missing = [r for r in kernel_rules if r not in _branch_texts(branch)]
    for rule in missing:
        problems.append(f"rule the kernel matched is not among kptrace's steps: {rule}")
    if not missing and not _is_subsequence(kernel_rules, _branch_sequence(branch)):
        problems.append("kptrace's steps hold the kernel's rules in another order")
    for e in kernel.events:
        if e.kind == "policy" and e.table in tables and not _has_policy_step(branch, e):
            problems.append(f"kernel applied the {e.table} {e.chain} policy ({e.verdict}); "
                            "kptrace has no step for it")
    return problems


def _no_service_disagreements(kernel: KernelResult, answer: KptraceAnswer) -> list[str]:
    """NO_SERVICE: the node sends the packet on untranslated (the kernel: accepted through
    POSTROUTING, no DNAT, out of the interface kptrace names) and it reaches no listener."""
    problems = []
    if kernel.verdict != "ACCEPT":
        problems.append(f"NO_SERVICE: kptrace says the node forwards it untranslated, kernel {kernel.verdict}")
    if kernel.dnat is not None:
        problems.append(f"NO_SERVICE: the kernel translated it to {kernel.dnat}")
    if kernel.delivery is not None or kernel.client_result in ("connected", "reply"):
        problems.append(f"NO_SERVICE: the kernel delivered it ({kernel.delivery}, client {kernel.client_result})")
    if answer.exit_code != 1:
        problems.append(f"exit code: kptrace {answer.exit_code}, expected 1 for NO_SERVICE")
    kernel_rules = [normalize_rule(e.text) for e in kernel.rules]
    for b in answer.branches:
        missing = [r for r in kernel_rules if r not in _branch_texts(b)]
        problems += [f"rule the kernel matched is not among kptrace's steps: {r}" for r in missing]
        egress = (b.get("egress") or {}).get("iface")
        if egress and kernel.egress and egress != kernel.egress:
            problems.append(f"egress: kptrace {egress}, kernel {kernel.egress}")
        if b.get("dnat") or b.get("reply"):
            problems.append(f"NO_SERVICE branch with dnat={b.get('dnat')} reply={b.get('reply')}")
    return problems


def _reply_disagreements(kernel: KernelResult, branch: dict[str, Any]) -> list[str]:
    reply = branch.get("reply")
    if not isinstance(reply, dict) or kernel.reply_ok is None:
        return []
    predicted = disposition_class(str(reply.get("disposition")))
    if kernel.reply_ok and predicted in ("drop", "reject", "no_route"):
        return [(f"reply: kptrace says {reply.get('disposition')} ({reply.get('problem')}), but the "
                f"kernel delivered it (client {kernel.client_result})")]
    if not kernel.reply_ok and predicted == "pass":
        return [(f"reply: kptrace says {reply.get('disposition')}, but the kernel lost it "
                "(probe delivered, client timed out)")]
    return []


def _branch_sequence(branch: dict[str, Any]) -> list[str]:
    return [normalize_rule(s.get("text") or "") for s in branch.get("steps") or []]


def _is_subsequence(needles: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(n == h for h in it) for n in needles)


def _has_policy_step(branch: dict[str, Any], event: TraceEvent) -> bool:
    return any(s.get("table") == event.table and s.get("chain") == event.chain
               and s.get("rule") is None for s in branch.get("steps") or [])


def format_report(kernel: KernelResult, answer: KptraceAnswer, problems: list[str]) -> str:
    return "\n".join([
        "kptrace disagrees with the kernel:",
        *[f"  - {p}" for p in problems],
        kernel.describe(),
        "kptrace: " + " ".join(answer.argv[2:]),
        f"  exit={answer.exit_code}",
        json.dumps(answer.report, indent=1)[:6000],
    ])


# "dump": the iptables-save file alone, node addresses given with --node-ip (kptrace assumes
# defaults for everything else). "bundle": the node bundle (docs/bundle.md) of the same moment,
# so kptrace also knows addresses, routes, links, bridge ports and sysctls. "lazy": the dump read
# the way a large one is (mapped, rules parsed when read); its answer must equal the dump mode's.
MODES = ("dump", "bundle", "lazy")
_LAZY_NOTE = "parsed when the trace reads them"  # iptables-save's and nft's lazy readers both say it


def _without_lazy_note(report: dict[str, Any]) -> str:
    """The answer without the lazy scan's own note and the findings (`why` runs the checks only on
    dumps it reads whole; `kptrace check` covers the large ones)."""
    doc = json.loads(json.dumps(report))
    doc.pop("findings", None)
    doc["assumptions"] = [a for a in doc.get("assumptions", []) if _LAZY_NOTE not in a]
    for b in doc.get("branches", []):
        b["assumptions"] = [a for a in b.get("assumptions", []) if _LAZY_NOTE not in a]
    return json.dumps(doc, sort_keys=True)


def compare(kernel: KernelResult, dump: Path, *, exact_endpoint: bool = False,
            modes: Iterable[str] = MODES, extra: Iterable[str] = (),
            answers: dict[str, KptraceAnswer] | None = None) -> list[str]:
    """Ask kptrace in each input mode; one report per mode that disagrees with the kernel.
    `answers`, when given, receives kptrace's answer in each mode."""
    reports = []
    answers = {} if answers is None else answers
    extra = tuple(extra)
    for mode in modes:
        if mode == "dump":
            answer = run_kptrace(dump, kernel.flow, extra=extra)
        elif mode == "lazy":
            answer = run_kptrace(dump, kernel.flow, env={"KPTRACE_LAZY_MIN_LINES": "0"}, extra=extra)
            full = answers.get("dump") or run_kptrace(dump, kernel.flow, extra=extra)
            if _without_lazy_note(answer.report) != _without_lazy_note(full.report):
                reports.append(f"[lazy mode] the lazy scan answers differently from the full parse: {' '.join(answer.argv)}")
        else:
            answer = run_kptrace(bundle_of(dump), kernel.flow, node_ips=(), extra=extra)
        answers[mode] = answer
        problems = disagreements(kernel, answer, dump, exact_endpoint=exact_endpoint)
        if problems:
            reports.append(f"[{mode} mode] " + format_report(kernel, answer, problems))
    return reports


# ---------------------------------------------------------------------------------------------
# Agent process (runs inside a namespace; standard library only)

_IN_PKTINFO = struct.Struct("I4s4s")
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python < 3.12 lacks the name


def _agent_listen(specs: list[tuple[str, int]], emit: Any) -> None:
    import selectors

    sel = selectors.DefaultSelector()
    for proto, port in specs:
        if proto == "tcp":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(128)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_IP, _IP_PKTINFO, 1)
            s.bind(("0.0.0.0", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, proto)
    emit({"ev": "ready"})
    while True:
        for key, _ in sel.select(timeout=1.0):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                if key.data == "tcp":
                    conn, peer = sock.accept()
                    local = conn.getsockname()
                    conn.close()
                    emit({"ev": "recv", "proto": "tcp", "src": peer[0], "sport": peer[1],
                          "dst": local[0], "dport": local[1]})
                else:
                    _, anc, _, peer = sock.recvmsg(2048, socket.CMSG_SPACE(_IN_PKTINFO.size))
                    dst = "0.0.0.0"
                    for level, ctype, cdata in anc:
                        if level == socket.SOL_IP and ctype == _IP_PKTINFO:
                            dst = socket.inet_ntoa(_IN_PKTINFO.unpack(cdata[:_IN_PKTINFO.size])[2])
                    emit({"ev": "recv", "proto": "udp", "src": peer[0], "sport": peer[1],
                          "dst": dst, "dport": sock.getsockname()[1]})
                    # Reply from the address the datagram was sent to, so conntrack can un-NAT.
                    pkt = _IN_PKTINFO.pack(0, socket.inet_aton(dst), b"\0\0\0\0")
                    sock.sendmsg([b"ok"], [(socket.SOL_IP, _IP_PKTINFO, pkt)], 0, peer)
            except OSError:
                continue


def _agent_send(cmd: dict[str, Any]) -> str:
    proto, timeout = cmd["proto"], float(cmd["timeout"])
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(timeout)
        try:
            s.bind((cmd["src"], int(cmd["sport"])))
            s.connect((cmd["dst"], int(cmd["dport"])))
            if proto == "tcp":
                return "connected"
            s.send(b"kptrace-probe")
            s.recv(64)
            return "reply"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError as exc:
            return f"oserror:{exc.errno}"


def _agent_main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="netns.py agent")
    parser.add_argument("--listen", default="")
    parser.add_argument("--lifetime", type=float, default=LAB_MAX_LIFETIME_S)
    args = parser.parse_args(argv)
    lock = threading.Lock()

    def emit(obj: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    specs = [(p, int(n)) for p, n in (s.split(":") for s in args.listen.split(",") if s)]
    # Bounded life even if the harness dies without closing our stdin.
    threading.Timer(args.lifetime, lambda: os._exit(0)).start()

    def listen() -> None:
        try:
            _agent_listen(specs, emit)
        except Exception as exc:  # noqa: BLE001 - tell the harness instead of dying silently
            sys.stderr.write(f"listener failed: {exc!r}\n")
            sys.stderr.flush()
            os._exit(1)

    threading.Thread(target=listen, daemon=True).start()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "send":
            emit({"ev": "result", "id": cmd["id"], "result": _agent_send(cmd)})
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "agent":
        raise SystemExit(_agent_main(sys.argv[2:]))
    raise SystemExit("usage: netns.py agent --listen tcp:8080,udp:5353 [--lifetime S]")
