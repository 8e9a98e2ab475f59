"""Fuzz every parser for a fixed budget: `python -m tests.fuzz.run --seconds N` (or `--inputs N`).

Engines:
  atheris  coverage-guided (libFuzzer), when `pip install atheris` is there: runs fuzz_parsers.py
           in --jobs processes, each for the budget, seeded with the fixtures and the corpus;
  python   a mutation fuzzer in this process (byte flips, splices of fixture lines, iptables and
           listing words, CRLF, long and unicode words, truncation), deterministic for a --seed.
`auto` (the default) uses atheris when installed, else python.

Every input that raises anything but a KptraceError, or runs longer than --timeout seconds, is a
crash: it is written to tests/fuzz/corpus/crashers/ (commit it to regressions/ once fixed) and the
run exits 1. The summary gives the number of inputs per target; docs/robustness.md records a run.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from tests.fuzz.targets import CORPUS, NAMES, STATS, open_bug, run_one, seeds, target_of, time_limit

HERE = Path(__file__).resolve().parent
CRASHERS = CORPUS / "crashers"
OPEN_HITS: dict[str, int] = {}  # known open bugs (targets.OPEN) the run hit, by where they raise
WORDS = [
    b"-A", b"-I", b"-P", b"-N", b"-j", b"-g", b"-m", b"-p", b"-s", b"-d", b"-i", b"-o", b"!", b"--dport", b"--sport",
    b"--comment", b'"', b"\\", b"KUBE-SERVICES", b"KUBE-SVC-X", b"DNAT", b"--to-destination", b"*nat", b"*filter",
    b"COMMIT", b":INPUT ACCEPT [0:0]", b"Chain", b"(policy", b"ACCEPT)", b"(1 references)", b"target", b"prot",
    b"opt", b"--", b"-f", b"!f", b"0.0.0.0/0", b"::/0", b"anywhere", b"/*", b"*/", b"tcp", b"dpt:80", b"dpt:!",
    b"spts:1:2", b"flags:0x17/0x02", b"ctstate", b"mark match", b"0x4000/0x4000", b"statistic mode random probability",
    b"match-set", b"ADDRTYPE match dst-type", b"to:10.0.0.1:80", b"[goto]", b"...", b"$ ", b"# ", b"root@h:~# ",
    b"iptables -t nat -L -n -v", b"iptables-save | grep", b"route -n", b"arp -na", b"conntrack -L",
    b"Kernel IP routing table", b"Destination Gateway Genmask Flags Metric Ref Use Iface", b"UG", b"!",
    b"Address HWtype HWaddress Flags Mask Iface", b"? (10.0.0.1) at", b"[ether]", b"on", b"src=", b"dst=", b"sport=",
    b"ipv4     2", b"[ASSURED]", b"dev", b"via", b"lladdr", b"\r\n", b"\n", b"\t", b" ", b"\x1b[0m", b"\xc2\xb2",
    b"9" * 40, b"1" * 5000, b"0x", b"-1", b"65536", b"4294967296", b"fe80::1%eth0", b"10.0.0.0/33", b"10.0.0.300",
    b"\xef\xbb\xbf", b"\xe2\x80\xa6", b"[1:2]", b"-c 1 2", b"1K", b"99999999999999999999M",
]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to eight random edits: the first byte (the target) is kept unless the edit picks it. Inputs of the
    structured targets (archive, node-yaml, json, branch) mostly get their own mutator (tests/fuzz/mutators.py)."""
    from tests.fuzz.mutators import MUTATORS

    name = target_of(data) if data else ""
    if name in MUTATORS and rng.random() < 0.7:
        return (data[:1] + MUTATORS[name](rng, data[1:]))[: 64 * 1024]
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        pos = rng.randint(1, max(1, len(out)))
        if op < 0.15 and len(out) > 1:
            # Mostly printable ASCII: invalid UTF-8 only tests decode(), which one flip in five is enough for.
            out[rng.randrange(1, len(out))] = rng.randrange(256) if rng.random() < 0.2 else rng.randrange(32, 127)
        elif op < 0.40:
            out[pos:pos] = rng.choice(WORDS) + rng.choice([b" ", b"", b"\n"])
        elif op < 0.55 and len(out) > 2:
            a = rng.randrange(1, len(out))
            del out[a: a + rng.randint(1, 64)]
        elif op < 0.70:
            other = rng.choice(pool)
            lines = other[1:].split(b"\n")
            k = rng.randrange(len(lines))
            out[pos:pos] = b"\n".join(lines[k: k + rng.randint(1, 4)]) + b"\n"
        elif op < 0.80 and len(out) > 2:
            lines = bytes(out[1:]).split(b"\n")
            k = rng.randrange(len(lines))
            lines.insert(k, lines[k])
            out[1:] = b"\n".join(lines)
        elif op < 0.85:
            out[1:] = bytes(out[1:]).replace(b"\n", b"\r\n")
        elif op < 0.92 and len(out) > 2:
            del out[rng.randrange(1, len(out)):]
        else:
            out[0] = rng.randrange(len(NAMES))
    return bytes(out[: 64 * 1024])


def save_crasher(data: bytes, exc: BaseException) -> Path:
    CRASHERS.mkdir(parents=True, exist_ok=True)
    p = CRASHERS / f"{target_of(data)}-{hashlib.sha256(data).hexdigest()[:16]}"
    p.write_bytes(data)
    p.with_suffix(".txt").write_text("".join(traceback.format_exception(exc)))
    return p


SLOWEST: list[tuple[float, str]] = []  # the slowest inputs of the run: (CPU seconds, target)
STOP: list[int] = []  # a signal asked the run to stop: the inputs so far are summed up (kill -TERM, Ctrl-C)
WALLS: list[float] = [0.0]  # the longest wall time of one input (on a shared machine, mostly the neighbours' load)
RSS_JUMPS: list[tuple[int, str]] = []  # inputs that raised the peak RSS by more than 50 MB: (MB, target)


def python_engine(seconds: float, inputs: int | None, seed: int, timeout: float) -> tuple[int, list[Path]]:
    rng = random.Random(seed)
    pool = [d for _, d in seeds()] or [bytes([0])]
    crashes: list[Path] = []
    done = 0
    end = time.monotonic() + seconds
    # The seeds themselves first, unmodified.
    queue = list(pool)
    while ((inputs is None and time.monotonic() < end) or (inputs is not None and done < inputs)) and not STOP:
        data = queue.pop() if queue else mutate(rng, rng.choice(pool), pool)
        started, wall = time.process_time(), time.monotonic()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            with time_limit(timeout):
                run_one(data)
        except Exception as e:  # noqa: BLE001 - anything but KptraceError is what we look for
            bug = open_bug(e)
            if bug is not None:
                OPEN_HITS[bug] = OPEN_HITS.get(bug, 0) + 1
                done += 1
                continue
            crashes.append(save_crasher(data, e))
            print(f"CRASH {target_of(data)}: {type(e).__name__}: {str(e)[:200]} -> {crashes[-1]}", file=sys.stderr)
        took = time.process_time() - started  # the input's own CPU time (what the time limit counts by default)
        WALLS[0] = max(WALLS[0], time.monotonic() - wall)
        if done % 200 == 0:
            # ParseErrors keep their frames (and the input) in reference cycles, which the cyclic collector's
            # last generation reaches only now and then: collected here, the peak RSS is one input's.
            gc.collect()
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
        if grew > 50 * 1024:  # KiB: an input that raised the process's peak by more than 50 MB is kept to look at
            RSS_JUMPS.append((round(grew / 1024), target_of(data)))
            CRASHERS.mkdir(parents=True, exist_ok=True)
            (CRASHERS / f"rss-{target_of(data)}-{hashlib.sha256(data).hexdigest()[:16]}").write_bytes(data)
        if took > timeout / 3:  # a third of the limit: kept to look at (crashers/slow-*)
            CRASHERS.mkdir(parents=True, exist_ok=True)
            (CRASHERS / f"slow-{target_of(data)}-{hashlib.sha256(data).hexdigest()[:16]}").write_bytes(data)
        if len(SLOWEST) < 5 or took > SLOWEST[-1][0]:
            SLOWEST.append((took, target_of(data)))
            SLOWEST.sort(reverse=True)
            del SLOWEST[5:]
        done += 1
    return done, crashes


def atheris_engine(seconds: float, jobs: int, timeout: float) -> tuple[int, list[Path]]:
    """libFuzzer in `jobs` processes, each with its own corpus, all seeded from the fixtures, for the budget."""
    seed_dir = CORPUS / ".seeds"
    seed_dir.mkdir(parents=True, exist_ok=True)
    for i, (_, data) in enumerate(seeds()):
        (seed_dir / f"s{i:05d}").write_bytes(data)
    CRASHERS.mkdir(parents=True, exist_ok=True)
    procs = []
    for j in range(jobs):
        work = CORPUS / ".work" / f"job{j}"
        work.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(HERE / "fuzz_parsers.py"), str(work), str(seed_dir),
               f"-max_total_time={int(seconds)}", "-max_len=65536", f"-timeout={int(timeout)}", "-rss_limit_mb=4096",
               f"-artifact_prefix={CRASHERS}/", "-print_final_stats=1", f"-seed={1000 + j}"]
        env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
        log = (CORPUS / ".work" / f"job{j}.log").open("w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env), log))
    total = 0
    for j, (p, log) in enumerate(procs):
        p.wait()
        log.close()
        out = (CORPUS / ".work" / f"job{j}.log").read_text(errors="replace")
        m = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
        total += int(m.group(1)) if m else 0
        if p.returncode != 0:
            print(out[-3000:], file=sys.stderr)
    crashes = sorted(CRASHERS.glob("crash-*")) + sorted(CRASHERS.glob("timeout-*"))
    return total, crashes


def classify_crash(data: bytes) -> str:
    """module:line ExceptionType of a crasher, replayed here (for the summary)."""
    try:
        with time_limit(10.0):
            run_one(data)
    except Exception as e:  # noqa: BLE001
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "/kptrace/" in f.filename]
        where = f"{frames[-1].filename.split('/kptrace/')[-1]}:{frames[-1].lineno}" if frames else "?"
        return f"{type(e).__name__} at kptrace/{where}"
    return "no longer crashes"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--inputs", type=int, default=None, help="stop after this many inputs (python engine)")
    ap.add_argument("--engine", choices=["auto", "atheris", "python"], default="auto")
    ap.add_argument("--jobs", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)))
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take")
    ap.add_argument("--json", type=Path, help="write the summary here")
    args = ap.parse_args(argv)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "python"
    start = time.monotonic()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: STOP.append(signum))
    if engine == "atheris":
        total, crashes = atheris_engine(args.seconds, args.jobs, args.timeout)
    else:
        total, crashes = python_engine(args.seconds, args.inputs, args.seed, args.timeout)
    kinds: dict[str, int] = {}
    for c in crashes:
        k = classify_crash(c.read_bytes())
        kinds[k] = kinds.get(k, 0) + 1
    summary = {"engine": engine, "seconds": round(time.monotonic() - start, 1), "inputs": total,
               "stopped_by_signal": bool(STOP),
               "crashes": len(crashes), "crash_kinds": kinds, "targets": len(NAMES),
               # Every input runs in this process: its peak RSS bounds each input's (python engine).
               "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "clock": os.environ.get("KPTRACE_FUZZ_CLOCK", "cpu"),
               "slowest_inputs_s": [(round(t, 2), n) for t, n in SLOWEST],  # CPU seconds
               "longest_wall_s": round(WALLS[0], 2),
               "rss_jumps_mb": RSS_JUMPS[:20],
               "open_bugs_hit": OPEN_HITS if engine == "python" else
               dict(Counter(p.name.split("-")[1] for p in CRASHERS.glob("open-*"))),
               "per_target": {k: v for k, v in sorted(STATS.items())} if engine == "python" else None}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if any(k != "no longer crashes" for k in kinds) else 0


if __name__ == "__main__":
    sys.exit(main())
