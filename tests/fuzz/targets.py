"""What the fuzzers drive: every parser, and the path a user's file takes (decode, sniff, parse, load, trace).

An input is bytes. Its first byte picks the target; the rest is the file. A target may return anything
or raise a KptraceError (ParseError, InputError: the one-line `file:line:col: message`, exit 2).
Any other exception is a crash: `run_one` lets it through, so atheris, the Python fuzzer in
run.py, hypothesis and the corpus replay all see it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Iterator

from kptrace.errors import KptraceError
from kptrace.load import _load_one, decode
from kptrace.model.flow import Flow
from kptrace.model.node import Node
from kptrace.parsers.arp import parse_arp
from kptrace.parsers.bridge import parse_bridge_fdb, parse_bridge_link, parse_brctl_show
from kptrace.parsers.conntrack import parse_conntrack
from kptrace.parsers.flannel import parse_flannel_subnet
from kptrace.parsers.ip_addr import parse_ip_addr
from kptrace.parsers.ip_link import parse_ip_link
from kptrace.parsers.ip_neigh import parse_ip_neigh
from kptrace.parsers.ip_route import parse_ip_route
from kptrace.parsers.ip_rule import parse_ip_rule
from kptrace.parsers.iptables_list import parse_iptables_list
from kptrace.parsers.iptables_s import parse_iptables_s
from kptrace.parsers.iptables_save import parse_iptables_save
from kptrace.parsers.iptables_scan import scan_iptables_save
from kptrace.parsers.modules import parse_modules
from kptrace.parsers.paste import parse_paste, sniff_paste
from kptrace.parsers.route_n import parse_route_n
from kptrace.parsers.sysctl import parse_sysctl

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
MAX_INPUT = 64 * 1024  # inputs past this are cut: the fuzzers look for wrong code paths, not slow ones
ALLOWED = (KptraceError,)
FLOWS = (
    Flow(ip_address("10.244.1.3"), ip_address("10.96.0.20"), "tcp", 40000, 80, "cni0"),
    Flow(ip_address("203.0.113.7"), ip_address("192.168.0.2"), "udp", 40000, 30001, "eth0"),
    Flow(ip_address("192.168.0.2"), ip_address("10.96.0.10"), "icmp"),
    Flow(ip_address("fd00::5"), ip_address("fd00::1"), "tcp", 40000, 443, "eth0"),
)


def _load(text: str, data: bytes) -> object:
    """A file as `kptrace why --dump FILE` reads it, then the traces a user would ask for."""
    from kptrace.load import _finish_node
    from kptrace.walkers.netfilter import trace_flow

    node = Node(node_ips=[ip_address("192.168.0.2")])
    _load_one(node, "fuzz.txt", data)
    try:
        node = _finish_node(node, "fuzz.txt")
    except KptraceError:
        return node
    for flow in FLOWS:
        try:
            trace_flow(node, flow)
        except KptraceError:
            pass
    return node


def _traced(node: Node, label: str) -> Node:
    from kptrace.load import _finish_node
    from kptrace.walkers.netfilter import trace_flow

    try:
        node = _finish_node(node, label)
    except KptraceError:
        return node
    for flow in FLOWS:
        try:
            trace_flow(node, flow)
        except KptraceError:
            pass
    return node


def _safely(node: Node, label: str, data: object, name: str | None = None) -> None:
    """One input as the CLI loads it (load._load_safely: an input that hits a parser's limit, a RecursionError
    or a ValueError, is a KPT001 note and the run goes on); such notes are counted in STATS as `noted:<Type>`,
    so a run still shows where parsers gave up."""
    from kptrace.load import _load_safely

    before = len(node.errors)
    _load_safely(node, label, data, in_bundle=True, name=name)  # type: ignore[arg-type]
    for e in node.errors[before:]:
        if e.message.startswith("cannot read this input ("):
            STATS["noted:" + e.message[len("cannot read this input ("):].split(":", 1)[0]] += 1


def _archive(body: bytes) -> object:
    """A bundle tarball as `--dump bundle.tar.gz` (or a pipe holding one) reads it: every member within the
    limits, loaded into one node as the CLI loads it, then traced."""
    from kptrace.load import _tar_entries

    node = Node(node_ips=[ip_address("192.168.0.2")])
    for label, data in _tar_entries(Path("fuzz.tar.gz"), body):
        _safely(node, label, data)
    return _traced(node, "fuzz.tar.gz")


def _node_yaml(text: str) -> object:
    node = Node()
    _load_one(node, "node.yaml", text.encode())
    return node


def _json(body: bytes) -> object:
    """An `ip -j` / `nft -j` document (or a manifest) under the bundle name body[0] picks, loaded as the CLI
    loads it, and traced."""
    from tests.fuzz.mutators import JSON_NAMES

    if not body:
        return None
    name = JSON_NAMES[body[0] % len(JSON_NAMES)]
    node = Node(node_ips=[ip_address("192.168.0.2")])
    _safely(node, name, body[1:])
    return _traced(node, name)


def _scan(text: str) -> object:
    from kptrace.parsers import iptables_scan as iptables_save

    old = iptables_save.LAZY_MIN_LINES
    iptables_save.LAZY_MIN_LINES = 0  # the lazy scanner, on inputs of any size
    try:
        rs = scan_iptables_save(text, "f")
        for t in rs.tables.values():
            for c in t.chains.values():
                for i in list(c.candidates("10.96.0.20"))[:50]:
                    c.rule_at(i)
        return rs
    finally:
        iptables_save.LAZY_MIN_LINES = old


def _optional(module: str, name: str) -> Callable[[str], Any] | None:
    try:
        mod = __import__(module, fromlist=[name])
    except ImportError:
        return None
    fn = getattr(mod, name, None)
    return (lambda t: fn(t, "f")) if fn is not None else None


# Target name -> function of the decoded text (`load` also gets the bytes). Order matters: the first
# input byte indexes it, so append new targets at the end to keep the corpus meaning the same.
TARGETS: dict[str, Callable[[str], Any]] = {
    "load": lambda t: None,  # replaced below; takes bytes
    "paste": lambda t: parse_paste(t, "f"),
    "iptables-list": lambda t: parse_iptables_list(t, "f"),
    "iptables-s": lambda t: parse_iptables_s(t, "f"),
    "iptables-excerpt": lambda t: parse_iptables_s(t, "f", table=None, excerpt=True),
    "iptables-save": lambda t: parse_iptables_save(t, "f"),
    "route-n": lambda t: parse_route_n(t, "f"),
    "arp": lambda t: parse_arp(t, "f"),
    "conntrack": lambda t: parse_conntrack(t, "f"),
    "ip-route": lambda t: parse_ip_route(t, "f"),
    "ip-neigh": lambda t: parse_ip_neigh(t, "f"),
    "ip-addr": lambda t: parse_ip_addr(t, "f"),
    "ip-link": lambda t: parse_ip_link(t, "f"),
    "ip-rule": lambda t: parse_ip_rule(t, "f"),
    "sysctl": lambda t: parse_sysctl(t, "f"),
    "bridge": lambda t: (parse_bridge_fdb(t, "f"), parse_bridge_link(t, "f"), parse_brctl_show(t, "f")),
    "flannel": lambda t: parse_flannel_subnet(t, "f"),
    "modules": lambda t: parse_modules(t, "f"),
    "sniff": lambda t: sniff_paste(t),
    "iptables-scan": _scan,
}
for _name, (_mod, _fn) in {"ipvsadm": ("kptrace.parsers.ipvsadm", "parse_ipvsadm"),
                           "ipset": ("kptrace.parsers.ipset", "parse_ipset"),
                           "nft-text": ("kptrace.parsers.nft_text", "parse_nft_text"),
                           "nft-json": ("kptrace.parsers.nft_json", "parse_nft_json")}.items():
    _f = _optional(_mod, _fn)
    if _f is not None:
        TARGETS[_name] = _f
# Structured targets (tests/fuzz/mutators.py): their inputs are tarballs, YAML, JSON, rulesets built to branch.
TARGETS["archive"] = lambda t: None  # takes bytes: run_one calls _archive
TARGETS["node-yaml"] = _node_yaml
TARGETS["json"] = lambda t: None  # takes bytes: run_one calls _json
TARGETS["branch"] = lambda t: _load(t, t.encode())
BYTE_TARGETS = {"archive": _archive, "json": _json}
NAMES = list(TARGETS)

# Exceptions still raised by modules outside the listing/paste parsers, as (module, exception type):
# reported to their owners (docs/robustness.md, "Open"); reproducers in tests/fuzz/corpus/open/.
# The fuzzers count these instead of stopping on them; KPTRACE_FUZZ_STRICT=1 stops on them too.
OPEN = frozenset({
    ("parsers/nft_text.py", "_Unparsable"), ("parsers/nft_text.py", "ValueError"),
    ("parsers/ipvsadm.py", "ValueError"), ("walkers/matches.py", "ValueError"), ("walkers/chains.py", "ValueError"),
    ("parsers/ip_addr.py", "ValueError"), ("parsers/ip_rule.py", "ValueError"),
    ("parsers/iptables_save.py", "ValueError"), ("walkers/netfilter.py", "ValueError"), ("parsers/ipset.py", "ValueError"),
})


def open_bug(exc: BaseException) -> str | None:
    """'module:line Type' when exc is one of the OPEN bugs, else None."""
    import traceback

    if os.environ.get("KPTRACE_FUZZ_STRICT") == "1":
        return None
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/kptrace/" in f.filename]
    where = frames[-1].filename.split("/kptrace/")[-1] if frames else ""
    return f"{where}:{frames[-1].lineno} {type(exc).__name__}" if (where, type(exc).__name__) in OPEN else None
STATS: Counter[str] = Counter()


# KPTRACE_FUZZ_TARGETS=paste,iptables-list,…: fuzz only these (an input for another target goes to one of them).
ONLY = [n for n in os.environ.get("KPTRACE_FUZZ_TARGETS", "").split(",") if n in TARGETS]


def target_of(data: bytes) -> str:
    name = NAMES[data[0] % len(NAMES)] if data else "load"
    if ONLY and name not in ONLY:
        name = ONLY[data[0] % len(ONLY)] if data else ONLY[0]
    return name


def _forget() -> None:
    """Drop what kptrace keeps between traces in one process, so every input starts alike and the run's peak
    RSS is one input's: walkers/ipvs.py's index of virtual services (`_SERVICES`, keyed by the id of a node's
    list) is never emptied, and grows by every IPVS input (reported; a long `kptrace check` pays it too)."""
    import sys

    ipvs = sys.modules.get("kptrace.walkers.ipvs")
    held = getattr(ipvs, "_SERVICES", None)
    if isinstance(held, dict):
        held.clear()


def run_one(data: bytes) -> str:
    """Run one input; returns the target's name. Raises whatever is not a KptraceError."""
    _forget()
    name = target_of(data)
    body = data[1:MAX_INPUT + 1]
    STATS[name] += 1
    try:
        if name in BYTE_TARGETS:
            BYTE_TARGETS[name](body)
            return name
        text = decode(body, "fuzz.txt")
        if name == "load":
            _load(text, body)
        else:
            TARGETS[name](text)
    except ALLOWED:
        STATS[name + ":error"] += 1
    return name


def encode(name: str, text: str | bytes) -> bytes:
    """An input for target `name` (for seeds and regression files)."""
    body = text.encode() if isinstance(text, str) else text
    return bytes([NAMES.index(name)]) + body


def seeds() -> Iterator[tuple[str, bytes]]:
    """Valid inputs to mutate: every fixture, each sent to the targets that read its kind, cut to 4 KiB."""
    fixtures = sorted((ROOT / "tests" / "fixtures").rglob("*.txt")) + sorted((ROOT / "tests" / "fixtures").rglob("*.json"))
    fixtures += sorted((ROOT / "kptrace" / "demo" / "cluster" / "node-a").glob("*"))
    for p in fixtures:
        if not p.is_file():
            continue
        data = p.read_bytes()[:4096]
        for name in NAMES:
            if name in ("load", "paste", "sniff") or name in p.name or name.split("-")[0] in p.name:
                yield name, encode(name, data)
    from tests.fuzz.mutators import SEEDS

    for name, make in SEEDS.items():
        for data in make():
            yield name, encode(name, data)
    for p in corpus_files():
        if "open" not in p.parts:  # inputs that still crash (in other modules) would stop libFuzzer at once
            yield target_of(p.read_bytes()), p.read_bytes()


@contextmanager
def time_limit(seconds: float, clock: str | None = None) -> Iterator[None]:
    """Fail an input that runs too long (a hang is a bug too); only in the main thread, on POSIX.

    `clock` "cpu" (the default, KPTRACE_FUZZ_CLOCK) counts the process's own CPU time (ITIMER_PROF): on a
    shared machine (two cores, a load of 10) wall time measures the neighbours, not the input. "wall" counts
    wall time (ITIMER_REAL)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return
    clock = clock or os.environ.get("KPTRACE_FUZZ_CLOCK", "cpu")
    which, sig = (signal.ITIMER_REAL, signal.SIGALRM) if clock == "wall" else (signal.ITIMER_PROF, signal.SIGPROF)

    def boom(signum: int, frame: object) -> None:
        raise TimeoutError(f"input ran longer than {seconds} s ({clock} time)")

    old = signal.signal(sig, boom)
    signal.setitimer(which, seconds)
    try:
        yield
    finally:
        signal.setitimer(which, 0)
        signal.signal(sig, old)


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.parts)
                  and p.suffix not in (".md", ".txt") and "crashers" not in p.parts)


if os.environ.get("KPTRACE_FUZZ_DEBUG"):
    print("fuzz targets:", ", ".join(NAMES))
