#!/usr/bin/env python3
"""kptrace scale benchmark ("Performance at real cluster scale").

For each size (default 1k x 10 and 10k x 10 service ports x endpoints) this
generates a kube-proxy iptables-save dump with kptrace.testing.generator and
measures, in one run on the same file, pinned to one CPU:

* ``kptrace why VIP:PORT --dump FILE ... -o json`` cold: a fresh process on a
  file nobody has seen (each repetition gets a copy with a unique trailing
  comment line, so a cache keyed by the file's sha256 cannot hit);
* warm: a second ``kptrace why`` process for another service on the same
  file right after a priming run (a persistent cache would show here), and
  the second query inside one Python process (in-memory reuse);
* ``kptrace check --dump FILE`` if the command exists;
* peak RSS of each (os.wait4 rusage of that very child);
* references on the same file: ``iptables-restore --test`` in a throwaway
  network namespace (root only) and ``grep -c VIP FILE``;
* the start-up floor: ``python -c pass`` and ``kptrace why`` on a four-line
  dump, which every query pays whatever the dump.

kptrace is run as the ``kptrace`` script installed next to this interpreter
(``--kptrace CMD`` to choose), with its bytecode compiled first as ``pip
install`` would.

Then it prints a table with the targets next to the numbers and the 1k->10k
scaling ratio.  ``--profile`` adds a cProfile of one cold ``why``.

    python benchmarks/run.py                      # both default sizes
    python benchmarks/run.py --sizes 2000x10 -n 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from kptrace.testing.generator import GeneratedRuleset, ServicePort, generate_iptables  # noqa: E402

TARGETS = {
    "cold_s": 0.5,          # and <= 0.1 x iptables-restore --test
    "cold_vs_restore": 0.1,
    "warm_s": 0.050,
    "check_s": 3.0,
    "rss_mb": 400.0,
    "scaling": 11.0,
}


# --------------------------------------------------------------------------
# Running one child and measuring it
# --------------------------------------------------------------------------

@dataclass
class Run:
    wall: float
    rss_mb: float
    rc: int
    stdout: str
    stderr: str
    cpu: float = 0.0  # user + system seconds of the command (and its children): what a loaded machine does not inflate


def _pin_prefix() -> list[str]:
    # taskset keeps the measured process on CPU 0 whatever it forks; without
    # it we pin via sched_setaffinity in the child before exec.
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def _pin_in_child() -> None:
    if not shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})


def _gnu_time() -> str | None:
    """GNU time, which reports the peak RSS of its own (small) child."""
    for path in ("/usr/bin/time", shutil.which("time") or ""):
        if path and os.access(path, os.X_OK):
            probe = subprocess.run([path, "-f", "%M", "true"], capture_output=True, text=True)
            if probe.returncode == 0 and probe.stderr.strip().isdigit():
                return path
    return None


_TIME = _gnu_time()


def run_measured(cmd: Sequence[str], *, stdin_path: Path | None = None, pin: bool = True,
                 timeout: float = 900) -> Run:
    """Wall time and peak RSS of this command alone.

    Why not wait4/RUSAGE_CHILDREN on our own child: Linux carries the
    pre-exec high-water RSS of the forked parent into the child's
    ru_maxrss, so every child of this (large) benchmark process would look
    as big as the benchmark itself.  GNU time is a tiny parent, so its
    report is the command's own peak; without it we fall back to wait4.
    """
    with tempfile.NamedTemporaryFile("w+") as rss_file, \
            tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        timer = [_TIME, "-f", "%M", "-o", rss_file.name] if _TIME else []
        argv = [*timer, *(_pin_prefix() if pin else []), *cmd]
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        try:
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err,
                                    preexec_fn=_pin_in_child if pin and not _pin_prefix() else None)
            _, status, usage = _wait4(proc, timeout)
            wall = time.perf_counter() - start
        finally:
            if stdin_path:
                stdin.close()  # type: ignore[union-attr]
        proc.returncode = os.waitstatus_to_exitcode(status)
        rss_kb = float(usage.ru_maxrss)
        if _TIME:
            rss_file.seek(0)
            last = (rss_file.read().strip().splitlines() or ["0"])[-1]
            rss_kb = float(last) if last.isdigit() else rss_kb
        out.seek(0)
        err.seek(0)
        return Run(wall, rss_kb / 1024.0, proc.returncode, out.read(), err.read(), usage.ru_utime + usage.ru_stime)


def _wait4(proc: subprocess.Popen, timeout: float) -> tuple[int, int, Any]:
    # Blocking wait4 is exact; a watchdog thread enforces the timeout.
    import threading

    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        return os.wait4(proc.pid, 0)
    finally:
        timer.cancel()


def median_runs(runs: list[Run]) -> tuple[float, float]:
    return statistics.median(r.wall for r in runs), max(r.rss_mb for r in runs)


# --------------------------------------------------------------------------
# What the kptrace CLI offers (the core is developed in parallel)
# --------------------------------------------------------------------------

@dataclass
class Cli:
    base: list[str]
    why_help: str | None = None
    check_help: str | None = None

    @classmethod
    def probe(cls, base: list[str]) -> "Cli":
        cli = cls(base)
        cli.why_help = cls._help(base + ["why", "--help"])
        cli.check_help = cls._help(base + ["check", "--help"])
        return cli

    @staticmethod
    def _help(cmd: list[str]) -> str | None:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout if res.returncode == 0 else None

    def has(self, flag: str) -> bool:
        return bool(self.why_help) and flag in self.why_help  # type: ignore[operator]

    def why(self, svc: ServicePort, dump: Path, src: str, node_ip: str | None) -> list[str]:
        cmd = [*self.base, "why", f"{svc.cluster_ip}:{svc.port}"]
        if self.has("--from"):
            cmd += ["--from", src]
        cmd += ["--dump", str(dump)]
        if node_ip is not None and self.has("--node-ip"):
            cmd += ["--node-ip", node_ip]
        if svc.protocol == "UDP" and self.has("--proto"):
            cmd += ["--proto", "udp"]
        if self.has("--output") or self.has("-o"):
            cmd += ["-o", "json"]
        return cmd

    def check(self, dump: Path) -> list[str]:
        return [*self.base, "check", "--dump", str(dump)]


# --------------------------------------------------------------------------
# One size
# --------------------------------------------------------------------------

@dataclass
class SizeResult:
    label: str
    services: int
    endpoints: int
    lines: int = 0
    mb: float = 0.0
    gen_s: float = 0.0
    cold: tuple[float, float] | None = None
    warm_proc: tuple[float, float] | None = None
    warm_inproc: float | None = None
    first_inproc: float | None = None
    check: tuple[float, float] | None = None
    restore: tuple[float, float] | None = None
    grep: tuple[float, float] | None = None
    cache_detected: bool | None = None
    notes: list[str] = field(default_factory=list)


def _nonced_copy(src: Path, dst: Path, nonce: str) -> Path:
    # Same ruleset, different sha256: a trailing comment is legal
    # iptables-save syntax and defeats any content-keyed cache.
    shutil.copyfile(src, dst)
    with dst.open("a") as fh:
        fh.write(f"# kptrace-bench nonce {nonce}\n")
    return dst


def _probes(rs: GeneratedRuleset) -> tuple[ServicePort, ServicePort, str]:
    first = rs.pick(verdict="DNAT", index=0.5)
    second = rs.pick(verdict="DNAT", index=0.8)
    # A pod on this node as the source: the ordinary "why can't my pod
    # reach this service" question.
    src = rs.params["local_node_pod_prefix"] + "200"
    return first, second, src


def _answer_ok(run: Run, svc: ServicePort) -> bool:
    return run.rc == 0 and any(ep.ip in run.stdout for ep in svc.endpoints)


def measure_kptrace(res: SizeResult, cli: Cli, rs: GeneratedRuleset, dump: Path, work: Path,
                    repeat: int) -> None:
    first, second, src = _probes(rs)
    node_ip = rs.node_ips[0]
    cold_runs = []
    for i in range(repeat):
        copy = _nonced_copy(dump, work / f"cold-{i}.txt", f"{time.time_ns()}-{i}")
        cold_runs.append(run_measured(cli.why(first, copy, src, node_ip)))
        copy.unlink()
    res.cold = median_runs(cold_runs)
    if not _answer_ok(cold_runs[0], first):
        res.notes.append(f"why rc={cold_runs[0].rc}; expected endpoint not in output: "
                         f"{(cold_runs[0].stderr or cold_runs[0].stdout)[-300:]!r}")

    run_measured(cli.why(first, dump, src, node_ip))  # prime any cache
    warm_runs = [run_measured(cli.why(second, dump, src, node_ip)) for _ in range(repeat)]
    res.warm_proc = median_runs(warm_runs)
    res.cache_detected = res.warm_proc[0] < 0.5 * res.cold[0]
    _measure_in_process(res, cli, first, second, dump, src, node_ip)

    if cli.check_help is not None:
        res.check = median_runs([run_measured(cli.check(dump)) for _ in range(max(1, repeat // 2))])


_INPROC = r"""
import contextlib, io, json, sys, time
from kptrace.cli.app import main
def once(argv):
    sys.argv = ["kptrace", *argv]
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main()
        except SystemExit:
            pass
    return time.perf_counter() - t
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps([once(a), once(b), once(b)]))
"""


def _measure_in_process(res: SizeResult, cli: Cli, first: ServicePort, second: ServicePort,
                        dump: Path, src: str, node_ip: str) -> None:
    """Second query in the same interpreter (what a library user or a
    long-running session would see); only meaningful with the default CLI."""
    skip = len(cli.base) + 1  # the command and "why"
    if cli.base not in ([sys.executable, "-m", "kptrace"], default_command()):
        return  # another kptrace (--kptrace): this interpreter may not import the same one
    argv_a = ["why", *cli.why(first, dump, src, node_ip)[skip:]]
    argv_b = ["why", *cli.why(second, dump, src, node_ip)[skip:]]
    run = run_measured([sys.executable, "-c", _INPROC, json.dumps(argv_a), json.dumps(argv_b)])
    try:
        t1, _, t3 = json.loads(run.stdout.strip().splitlines()[-1])
        res.first_inproc, res.warm_inproc = t1, t3
    except (ValueError, IndexError):
        res.notes.append(f"in-process harness failed: {run.stderr[-200:]!r}")


def measure_references(res: SizeResult, rs: GeneratedRuleset, dump: Path, repeat: int,
                       netns: str | None) -> None:
    vip = rs.pick(verdict="DNAT").cluster_ip
    res.grep = median_runs([run_measured(["grep", "-c", vip, str(dump)]) for _ in range(repeat)])
    if netns:
        runs = [run_measured(["ip", "netns", "exec", netns, "iptables-restore", "--test"], stdin_path=dump)
                for _ in range(max(1, min(repeat, 3)))]
        if runs[0].rc != 0:
            res.notes.append(f"iptables-restore --test failed: {runs[0].stderr[-200:]!r}")
        res.restore = median_runs(runs)


def bench_size(spec: str, cli: Cli | None, work: Path, repeat: int, netns: str | None,
               seed: int) -> tuple[SizeResult, Path, GeneratedRuleset]:
    services, endpoints = (int(x) for x in spec.lower().split("x"))
    res = SizeResult(spec, services, endpoints)
    start = time.perf_counter()
    rs = generate_iptables(services, endpoints, seed=seed)
    res.gen_s = time.perf_counter() - start
    dump = work / f"dump-{spec}.txt"
    rs.write(str(dump))
    (work / f"meta-{spec}.json").write_text(json.dumps(rs.to_meta()))
    res.lines, res.mb = rs.lines, rs.nbytes / 1e6
    measure_references(res, rs, dump, repeat, netns)
    if cli is not None:
        measure_kptrace(res, cli, rs, dump, work, repeat)
    return res, dump, rs


# --------------------------------------------------------------------------
# kptrace sweep: every service port x every source kind, one process
# --------------------------------------------------------------------------

_SWEEP = r"""
import json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
from ipaddress import ip_network
from pathlib import Path
from kptrace.load import LoadOptions, load_cluster
from kptrace.walkers.sweep import Sweeper, diff_rows
dumps, node_ip, subnet = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
clusters = [load_cluster([Path(d)], [node_ip], options=LoadOptions(strict=True)) for d in dumps]
for cluster in clusters:
    # A bare iptables-save does not say the node's pod subnet (a bundle's node.yaml does): give the generator's.
    cluster[0].pod_subnet = ip_network(subnet)
t1, c1 = time.perf_counter(), time.process_time()
results = [Sweeper(cluster, checks=False, keep_traces=False).sweep() for cluster in clusters]  # as the CLI
changes = diff_rows(results[0].rows, results[1].rows) if len(results) == 2 else []
t2, c2 = time.perf_counter(), time.process_time()
rows = results[0].rows
print(json.dumps({"load_s": t1 - t0, "sweep_s": t2 - t1, "load_cpu": c1 - c0, "sweep_cpu": c2 - c1,
                  "flows": sum(len(r.rows) for r in results), "ports": sum(n.service_ports for n in results[0].nodes),
                  "broken": sum(r.status == "broken" for r in rows), "changes": len(changes),
                  "changed_services": len({c.key[:2] for c in changes})}))
"""

DIFF_SERVICES = 10  # the Services the second dump of the diff benchmark changes


@dataclass
class SweepResultBench:
    label: str
    services: int
    wall: float = 0.0
    cpu: float = 0.0
    rss_mb: float = 0.0
    load_s: float = 0.0
    load_cpu: float = 0.0
    sweep_s: float = 0.0
    sweep_cpu: float = 0.0
    flows: int = 0
    ports: int = 0
    broken: int = 0
    restore_s: float | None = None
    diff_wall: float = 0.0
    diff_cpu: float = 0.0
    diff_rss_mb: float = 0.0
    diff_changes: int = 0
    diff_services: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def per_flow_ms(self) -> float:
        return 1000 * self.sweep_cpu / self.flows if self.flows else 0.0


def changed_copy(dump: Path, dst: Path, n: int = DIFF_SERVICES) -> Path:
    """The dump with the ClusterIP rules of n Services (spread over KUBE-SERVICES) removed: as if kube-proxy
    had not synced them. Each of those Services' ClusterIP flows then changes fate."""
    lines = dump.read_text().splitlines(keepends=True)
    jumps = [i for i, ln in enumerate(lines) if ln.startswith("-A KUBE-SERVICES ") and " -j KUBE-SVC-" in ln
             and "cluster IP" in ln]
    by_service: dict[str, int] = {}  # one port of each Service: `--comment "ns/name:port cluster IP"`
    for i in jumps:
        name = lines[i].split('--comment "', 1)[-1].split(" ", 1)[0].split(":", 1)[0]
        by_service.setdefault(name, i)
    firsts = list(by_service.values())
    drop = {firsts[k * len(firsts) // n] for k in range(n)} if len(firsts) >= n else set(firsts)
    dst.write_text("".join(ln for i, ln in enumerate(lines) if i not in drop))
    return dst


def _sweep_child(dumps: list[Path], rs: GeneratedRuleset) -> tuple[Run, dict[str, Any] | None]:
    subnet = str(rs.params["local_node_pod_prefix"]) + "0/24"
    run = run_measured([sys.executable, "-c", _SWEEP, ",".join(str(d) for d in dumps), rs.node_ips[0], subnet],
                       timeout=7200)
    try:
        return run, json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return run, None


def bench_sweep(spec: str, dump: Path, rs: GeneratedRuleset, restore: tuple[float, float] | None,
                diff: bool = True) -> SweepResultBench:
    """A full sweep of the dump (every Service port from a pod, the node and an external client; a one-file
    input has no peer, so no remote flows) in a child process: wall and CPU time, peak RSS, the load/sweep
    split; then `diff` of the dump and a copy that changes DIFF_SERVICES Services (both loaded and swept)."""
    res = SweepResultBench(spec, int(spec.lower().split("x")[0]), restore_s=restore[0] if restore else None)
    run, out = _sweep_child([dump], rs)
    res.wall, res.cpu, res.rss_mb = run.wall, run.cpu, run.rss_mb
    if out is None:
        res.notes.append(f"sweep harness failed (rc={run.rc}): {run.stderr[-300:]!r}")
        return res
    res.load_s, res.sweep_s, res.sweep_cpu, res.flows = out["load_s"], out["sweep_s"], out["sweep_cpu"], out["flows"]
    res.ports, res.broken, res.load_cpu = out["ports"], out["broken"], out["load_cpu"]
    if diff:
        other = changed_copy(dump, dump.with_name(dump.stem + "-changed.txt"))
        run, out = _sweep_child([dump, other], rs)
        res.diff_wall, res.diff_cpu, res.diff_rss_mb = run.wall, run.cpu, run.rss_mb
        if out is None:
            res.notes.append(f"diff harness failed (rc={run.rc}): {run.stderr[-300:]!r}")
        else:
            res.diff_changes, res.diff_services = out["changes"], out["changed_services"]
            if res.diff_services != DIFF_SERVICES:
                res.notes.append(f"diff named {res.diff_services} changed Services, {DIFF_SERVICES} were changed")
    return res


def sweep_table(results: list[SweepResultBench], why_inproc: dict[str, float | None]) -> str:
    rows = [("size", "ports", "flows", "wall", "CPU", "load CPU", "sweep CPU", "per flow", "peak RSS", "why loop/flow",
             "vs restore", "diff wall", "diff CPU", "diff RSS", "diff/sweep", "changes")]
    for r in results:
        loop = why_inproc.get(r.label)
        rows.append((r.label, f"{r.ports:,}", f"{r.flows:,}", fmt_s(r.wall), fmt_s(r.cpu), fmt_s(r.load_cpu),
                     fmt_s(r.sweep_cpu), f"{r.per_flow_ms:.2f} ms", f"{r.rss_mb:.0f} MB",
                     "n/a" if loop is None else fmt_s(loop),
                     "n/a" if not r.restore_s else f"{r.wall / r.restore_s:.1f}x",
                     fmt_s(r.diff_wall) if r.diff_wall else "n/a", fmt_s(r.diff_cpu) if r.diff_cpu else "n/a",
                     f"{r.diff_rss_mb:.0f} MB" if r.diff_rss_mb else "n/a",
                     f"{r.diff_cpu / r.cpu:.2f}x" if r.diff_cpu and r.cpu else "n/a",
                     f"{r.diff_changes} ({r.diff_services} Services)" if r.diff_wall else "n/a"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append(f"targets: sweep wall <= 3x iptables-restore --test, peak RSS <= 500 MB, diff <= 2x one sweep, "
                 f"1k -> 10k <= {TARGETS['scaling']:.0f}x")
    if len(results) >= 2 and results[0].wall and results[-1].wall:
        a, b = results[0], results[-1]
        lines.append(f"sweep scaling {a.label} -> {b.label}: wall {b.wall / a.wall:.1f}x, CPU {b.cpu / a.cpu:.1f}x, "
                     f"per flow {b.per_flow_ms / a.per_flow_ms:.1f}x (target <= {TARGETS['scaling']:.0f}x)")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# IPVS and nftables mode: the same services as a node bundle of that mode
# --------------------------------------------------------------------------

@dataclass
class ModeResult:
    label: str
    gen_s: float = 0.0
    lines: int = 0
    mb: float = 0.0
    why: tuple[float, float] | None = None
    check: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)


def bench_mode(mode: str, spec: str, cli: Cli, work: Path, repeat: int, seed: int) -> ModeResult:
    """`kptrace why` (and `check`) on a generated IPVS-mode or nftables-mode node bundle. These
    inputs are not cached: every run is cold."""
    services, endpoints = (int(x) for x in spec.lower().split("x"))
    res = ModeResult(f"{spec} {mode}")
    bundle = work / f"{mode}-{spec}"
    start = time.perf_counter()
    if mode == "ipvs":
        from kptrace.testing.generator_ipvs import generate_ipvs

        gen: Any = generate_ipvs(services, endpoints, seed=seed)
        res.gen_s = time.perf_counter() - start
        gen.write(bundle)
    else:
        from kptrace.testing.generator_nft import generate_nftables

        gen = generate_nftables(services, endpoints, seed=seed)
        res.gen_s = time.perf_counter() - start
        gen.write_bundle(bundle)
    res.lines, res.mb = gen.lines, gen.nbytes / 1e6
    svc = gen.pick(verdict="DNAT", index=0.5)
    src = "10.244.1.200"
    runs = [run_measured(cli.why(svc, bundle, src, None)) for _ in range(repeat)]
    res.why = median_runs(runs)
    if not _answer_ok(runs[0], svc):
        res.notes.append(f"why rc={runs[0].rc}; expected endpoint not in output: {(runs[0].stderr or runs[0].stdout)[-300:]!r}")
    if cli.check_help is not None:
        res.check = median_runs([run_measured(cli.check(bundle))])
    return res


# --------------------------------------------------------------------------
# Plausible large inputs (issue 20, item 4): one huge chain, one huge conntrack table, one Service of
# 100k IPVS real servers, each added to the demo node. Not timed tests: measured here, recorded in
# docs/performance.md (`python benchmarks/run.py --large`).
# --------------------------------------------------------------------------

LARGE_CASES = ("chain-1m", "conntrack-1m", "ipvs-100k")


def _demo(name: str) -> Path:
    return ROOT / "kptrace" / "demo" / name


def make_large(case: str, work: Path, scale: float = 1.0) -> tuple[Path, list[str]]:
    """A node bundle holding one large input, and the `why` arguments that walk through it."""
    dest = work / case
    shutil.rmtree(dest, ignore_errors=True)
    if case == "chain-1m":
        # A block list: 1M `-s HOST/32 -j DROP` rules in one chain FORWARD jumps to first, in iptables-save's
        # order (user chains sorted by name, each chain's rules together).
        shutil.copytree(_demo("cluster") / "node-a", dest)
        n = int(1_000_000 * scale)
        text = (dest / "iptables-save.txt").read_text()
        i = text.index("*filter")
        head, body = text[:i], text[i:]
        body = body.replace(":FLANNEL-FWD - [0:0]\n", ":FLANNEL-FWD - [0:0]\n:KPT-BLOCK - [0:0]\n", 1)
        k = body.index("-A FORWARD")
        body = body[:k] + "-A FORWARD -j KPT-BLOCK\n" + body[k:]
        k = body.index("-A KUBE-EXTERNAL-SERVICES")
        with (dest / "iptables-save.txt").open("w") as f:
            f.write(head + body[:k])
            for m in range(n):
                f.write(f"-A KPT-BLOCK -s 198.{18 + (m >> 16 & 1)}.{m >> 8 & 255}.{m & 255}/32 -j DROP\n")
            f.write(body[k:])
        return dest, ["why", "10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5"]
    if case == "conntrack-1m":
        import random

        shutil.copytree(_demo("cluster") / "node-a", dest)
        rng = random.Random(1)
        with (dest / "conntrack.txt").open("w") as f:
            for _ in range(int(1_000_000 * scale)):
                src, dst = f"10.244.{rng.randrange(1, 3)}.{rng.randrange(2, 250)}", f"10.96.{rng.randrange(4)}.{rng.randrange(1, 250)}"
                ep, sp = f"10.244.{rng.randrange(1, 3)}.{rng.randrange(2, 250)}", rng.randrange(32768, 61000)
                f.write(f"tcp      6 431999 ESTABLISHED src={src} dst={dst} sport={sp} dport=80 src={ep} dst={src} "
                        f"sport=8080 dport={sp} [ASSURED] mark=0 use=1\n")
        return dest, ["why", "10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5"]
    if case == "ipvs-100k":
        # kube-dns's TCP virtual service with 100k real servers (ipvsadm -Ln of the IPVS demo node).
        shutil.copytree(_demo("ipvs-node"), dest)
        p = dest / "ipvsadm.txt"
        lines = p.read_text().split("\n")
        i = next(k for k, line in enumerate(lines) if line.startswith("TCP  10.96.0.10:53"))
        j = i + 1
        while j < len(lines) and lines[j].startswith("  ->"):
            j += 1
        lines[i + 1:j] = [f"  -> 10.{64 + (m >> 16)}.{m >> 8 & 255}.{m & 255}:53{'':12}Masq    1      0          0"
                          for m in range(int(100_000 * scale))]
        p.write_text("\n".join(lines))
        return dest, ["why", "10.96.0.10:53", "--from", "10.244.1.5", "--detail", "minimal"]
    raise ValueError(case)


def bench_large(cli: Cli, work: Path, cases: Sequence[str], scale: float, timeout: float) -> list[tuple[str, Run, float]]:
    out = []
    for case in cases:
        print(f"== large {case}", file=sys.stderr, flush=True)
        bundle, argv = make_large(case, work, scale)
        mb = sum(f.stat().st_size for f in bundle.iterdir()) / 1e6
        run = run_measured([*cli.base, *argv, "--dump", str(bundle)], timeout=timeout)
        out.append((case, run, mb))
        shutil.rmtree(bundle, ignore_errors=True)
    return out


def large_table(results: list[tuple[str, Run, float]]) -> str:
    rows = [("input", "bundle", "kptrace why", "CPU", "peak RSS", "exit", "target")]
    for case, run, mb in results:
        ok = run.rss_mb <= TARGETS["rss_mb"] and run.rc in (0, 1, 4)
        rows.append((case, f"{mb:.1f} MB", fmt_s(run.wall), fmt_s(run.cpu), f"{run.rss_mb:.0f} MB", str(run.rc),
                     f"RSS <= 400 MB {verdict(ok)}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def mode_table(results: list[ModeResult]) -> str:
    rows = [("size / mode", "metric", "time", "peak RSS", "target", "")]
    for r in results:
        rows.append((r.label, f"bundle: {r.lines:,} lines, {r.mb:.1f} MB", fmt_s(r.gen_s), "", "generate", ""))
        for name, pair, limit in (("kptrace why", r.why, TARGETS["cold_s"]), ("kptrace check", r.check, TARGETS["check_s"])):
            ok = None if pair is None else pair[0] <= limit and pair[1] <= TARGETS["rss_mb"]
            rows.append((r.label, name, *fmt_pair(pair), f"<= {fmt_s(limit)}; RSS <= 400 MB", verdict(ok)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Network namespace for iptables-restore --test
# --------------------------------------------------------------------------

def make_netns() -> str | None:
    """A throwaway namespace so the reference never touches the host's
    tables.  None (reference shown as n/a) when not root."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables-restore"):
        return None
    name = f"kpt-bench-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    return name if ok else None


def drop_netns(name: str | None) -> None:
    if name:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


# --------------------------------------------------------------------------
# Profiling and reporting
# --------------------------------------------------------------------------

def profile_cold(cli: Cli, rs: GeneratedRuleset, dump: Path, work: Path, top: int) -> str:
    import pstats

    first, _, src = _probes(rs)
    prof = work / "cold.prof"
    copy = _nonced_copy(dump, work / "profile.txt", str(time.time_ns()))
    argv = ["why", *cli.why(first, copy, src, rs.node_ips[0])[len(cli.base) + 1:]]
    code = ("import sys, cProfile; from kptrace.cli.app import main; sys.argv=['kptrace', *sys.argv[1:]]\n"
            f"cProfile.run('\\ntry:\\n main()\\nexcept SystemExit:\\n pass', {str(prof)!r})")
    subprocess.run([*_pin_prefix(), sys.executable, "-c", code, *argv], capture_output=True)
    if not prof.exists():
        return "profile failed"
    buf = __import__("io").StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def fmt_s(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def fmt_pair(p: tuple[float, float] | None) -> tuple[str, str]:
    return ("n/a", "n/a") if p is None else (fmt_s(p[0]), f"{p[1]:.0f} MB")


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("ok" if ok else "MISS")


def table(results: list[SizeResult], kptrace_ready: bool, floor: dict[str, tuple[float, float]] | None = None) -> str:
    pending = "pending core"
    rows = [("size", "metric", "time", "peak RSS", "target", "")]
    for key, name in (("python", "python -c pass (interpreter start-up)"),
                      ("why_floor", "kptrace why on a 4-line dump (start-up floor)")):
        if floor and key in floor:
            rows.append(("any", name, *fmt_pair(floor[key]), "reference", ""))
    for r in results:
        restore = r.restore[0] if r.restore else None
        cold_ok = None
        if r.cold:
            vs_restore = restore is None or r.cold[0] <= TARGETS["cold_vs_restore"] * restore
            cold_ok = r.cold[0] <= TARGETS["cold_s"] and vs_restore
        rows.append((r.label, f"dump: {r.lines:,} lines, {r.mb:.1f} MB", fmt_s(r.gen_s), "", "generate", ""))
        ratio = f" (now {r.cold[0] / restore:.2f}x)" if r.cold and restore else ""
        for name, pair, target, ok in (
            ("kptrace why (cold)", r.cold, f"<= 0.5 s, <= 0.1x restore{ratio}", cold_ok),
            ("kptrace why (2nd process)", r.warm_proc, "<= 50 ms",
             None if not r.warm_proc else r.warm_proc[0] <= TARGETS["warm_s"]),
            ("kptrace check", r.check, "<= 3 s", None if not r.check else r.check[0] <= TARGETS["check_s"]),
        ):
            t, m = fmt_pair(pair) if kptrace_ready else (pending, pending)
            rss_ok = None if not pair else pair[1] <= TARGETS["rss_mb"]
            mark = verdict(None if ok is None else ok and bool(rss_ok))
            rows.append((r.label, name, t, m, f"{target}; RSS <= 400 MB", mark))
        if kptrace_ready:
            inproc = fmt_s(r.warm_inproc) if r.warm_inproc is not None else "n/a"
            ok = None if r.warm_inproc is None else r.warm_inproc <= TARGETS["warm_s"]
            rows.append((r.label, "kptrace why (2nd query, same process)", inproc, "", "<= 50 ms", verdict(ok)))
        rows.append((r.label, "iptables-restore --test (netns)", *fmt_pair(r.restore), "reference", ""))
        rows.append((r.label, "grep -c VIP", *fmt_pair(r.grep), "reference", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def scaling(results: list[SizeResult]) -> str:
    if len(results) < 2:
        return ""
    a, b = results[0], results[-1]
    parts = [f"scaling {a.label} -> {b.label} (target <= {TARGETS['scaling']:.0f}x):"]
    for name, x, y in (("dump lines", a.lines, b.lines),
                       ("why cold", a.cold and a.cold[0], b.cold and b.cold[0]),
                       ("check", a.check and a.check[0], b.check and b.check[0]),
                       ("iptables-restore --test", a.restore and a.restore[0], b.restore and b.restore[0])):
        parts.append(f"  {name}: " + (f"{y / x:.1f}x" if x and y else "n/a"))
    return "\n".join(parts)


def _as_json(results: list[SizeResult], kptrace_ready: bool) -> dict[str, Any]:
    return {"kptrace_ready": kptrace_ready, "targets": TARGETS,
            "results": [r.__dict__ for r in results],
            "python": sys.version.split()[0], "cpu_pinned": bool(_pin_prefix()) or hasattr(os, "sched_setaffinity")}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000x10,10000x10", help="comma list of SERVICESxENDPOINTS")
    ap.add_argument("-n", "--repeat", type=int, default=5, help="repetitions per measurement (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="iptables,ipvs,nftables",
                    help="kube-proxy modes to measure: iptables (the targets), ipvs, nftables (node bundles)")
    ap.add_argument("--kptrace", default=None,
                    help="command to run kptrace (default: the kptrace script of this python, else python -m kptrace)")
    ap.add_argument("--workdir", help="keep dumps here (default: a temp dir, deleted)")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--sweep", action="store_true", help="also time `kptrace sweep` of each iptables dump (one process)")
    ap.add_argument("--profile", action="store_true", help="cProfile one cold why on the largest size")
    ap.add_argument("--profile-top", type=int, default=20)
    ap.add_argument("--large", nargs="?", const=",".join(LARGE_CASES), default=None,
                    help=f"only the large-input cases ({', '.join(LARGE_CASES)}; comma list to choose)")
    ap.add_argument("--large-scale", type=float, default=1.0, help="scale the large inputs (0.1: a tenth)")
    ap.add_argument("--large-timeout", type=float, default=900.0, help="seconds one large case may take")
    return ap.parse_args(argv)


def default_command() -> list[str]:
    """The `kptrace` script pip installed next to this interpreter (what a user runs), else
    `python -m kptrace`. Never a version-manager shim found on PATH: pyenv's is a bash script that
    adds ~50 ms to every start."""
    script = Path(sys.executable).parent / "kptrace"
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "kptrace"]


def compile_bytecode() -> str:
    """Compile kptrace's modules as `pip install` does. An editable install under
    PYTHONDONTWRITEBYTECODE=1 otherwise recompiles every module on every start (~40 ms)."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("kptrace")
    if spec is None or not spec.submodule_search_locations:
        return "kptrace not importable: bytecode not checked"
    pkg = list(spec.submodule_search_locations)[0]
    ok = compileall.compile_dir(pkg, quiet=1, workers=1)
    return f"bytecode of {pkg} compiled" if ok else f"could not compile all of {pkg}"


def measure_floor(cli: Cli, work: Path, repeat: int) -> dict[str, tuple[float, float]]:
    """What every run pays whatever the dump: the interpreter, and `why` on a four-line dump."""
    tiny = work / "tiny-iptables-save.txt"
    tiny.write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")
    svc = ServicePort(namespace="default", name="probe", port_name="", cluster_ip="10.96.0.10", port=80,
                      protocol="TCP", node_port=None, endpoints=[], policy="Cluster")
    out = {"python": median_runs([run_measured([sys.executable, "-c", "pass"]) for _ in range(repeat)])}
    if cli.why_help is not None:
        out["why_floor"] = median_runs([run_measured(cli.why(svc, tiny, "10.244.1.5", "192.168.0.2"))
                                        for _ in range(repeat)])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.kptrace.split() if args.kptrace else default_command()
    print(compile_bytecode(), file=sys.stderr)
    cli = Cli.probe(base)
    ready = cli.why_help is not None
    if not ready:
        print("kptrace why is not usable yet: kptrace rows are 'pending core'", file=sys.stderr)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kptrace-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.large:
        try:
            res_large = bench_large(cli, work, args.large.split(","), args.large_scale, args.large_timeout)
            print(f"command: {' '.join(cli.base)}")
            print(large_table(res_large))
        finally:
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
        return 0
    netns = make_netns()
    results: list[SizeResult] = []
    last: tuple[Path, GeneratedRuleset] | None = None
    try:
        floor = measure_floor(cli, work, args.repeat)
        modes = args.modes.split(",")
        mode_results: list[ModeResult] = []
        sweeps: list[SweepResultBench] = []
        for spec in args.sizes.split(","):
            if "iptables" in modes:
                print(f"== {spec}", file=sys.stderr, flush=True)
                res, dump, rs = bench_size(spec, cli if ready else None, work, args.repeat, netns, args.seed)
                results.append(res)
                last = (dump, rs)
                if args.sweep:
                    print(f"== {spec} sweep", file=sys.stderr, flush=True)
                    sweeps.append(bench_sweep(spec, dump, rs, res.restore))
            for mode in ("ipvs", "nftables"):
                if mode in modes and ready:
                    print(f"== {spec} {mode}", file=sys.stderr, flush=True)
                    mode_results.append(bench_mode(mode, spec, cli, work, max(1, args.repeat // 2), args.seed))
        print(f"command: {' '.join(cli.base)}")
        print(table(results, ready, floor))
        print(scaling(results))
        for r in results:
            if r.cache_detected is not None and r.cold and r.warm_proc:
                base = floor.get("why_floor", (0.0, 0.0))[0]
                print(f"{r.label}: beyond the start-up floor ({fmt_s(base)}), cold {fmt_s(r.cold[0] - base)}, "
                      f"2nd process {fmt_s(r.warm_proc[0] - base)}; first in-process query {fmt_s(r.first_inproc)}")
            for note in r.notes:
                print(f"{r.label}: NOTE {note}")
        if mode_results:
            print(mode_table(mode_results))
            for m in mode_results:
                for note in m.notes:
                    print(f"{m.label}: NOTE {note}")
        if sweeps:
            print("kptrace sweep (in one process; why loop/flow = the 2nd in-process why of the same run):")
            print(sweep_table(sweeps, {r.label: r.warm_inproc for r in results}))
            py = floor.get("python", (0.0, 0.0))[0]
            for r in results:
                if r.warm_proc and py:
                    print(f"{r.label}: a 2nd `why` from a new process on the cached dump {fmt_s(r.warm_proc[0])} = "
                          f"{r.warm_proc[0] / py:.2f}x `python -c pass` ({fmt_s(py)}; target <= 1.5x)")
            for sw in sweeps:
                for note in sw.notes:
                    print(f"{sw.label} sweep: NOTE {note}")
        if not netns:
            print("iptables-restore --test: n/a (needs root and ip netns)")
        if args.profile and ready and last:
            print(profile_cold(cli, last[1], last[0], work, args.profile_top))
        if args.json:
            Path(args.json).write_text(json.dumps(_as_json(results, ready), indent=1, default=str))
    finally:
        drop_netns(netns)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
