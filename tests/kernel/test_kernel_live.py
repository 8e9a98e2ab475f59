"""The live node in the netns lab: `why` live equals `why --dump` on what `collect` wrote, both agree
with the kernel, and collecting (as root, as nobody, with tools missing) changes nothing.

Every namespace here is called kpt-live-<pid>-…, holds only lab addresses, and is deleted in a
finally block. No packet leaves the namespaces.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import require_kernel, skip_or_fail
from tests.lab import netns
from tests.lab.netns import EXTERNAL_CLIENT_IP, LOCAL_PODS, NODE_IP, Flow, KptraceAnswer
from tests.lab.rulesets import Endpoint, NodeRuleset, Service, UserRule

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
PREFIX = "kpt-live-"
POD_A, POD_B, POD_C = LOCAL_PODS["pod-a"], LOCAL_PODS["pod-b"], LOCAL_PODS["pod-c"]
PROBE_SPORT = "45000"  # inside the lab's TRACE range (40000-59999), which the live ruleset shows too


def kptrace(*args: str, ns: str | None = None, env: dict[str, str] | None = None, user: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kptrace", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all", *cmd]
    if ns is not None:
        # The absolute path: `env` may hold a PATH without `ip` (that is what is being tested).
        cmd = [shutil.which("ip") or "ip", "netns", "exec", ns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, check=False)


def _prefix() -> str:
    return f"{PREFIX}{os.getpid()}-{random.Random().randrange(16**4):04x}-"


def _cleanup_stale() -> None:
    """Remove kpt-live-<pid>-* namespaces whose test process is gone."""
    listing = netns.sh(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{PREFIX}(\d+)-", name)
        if m and not netns._pid_alive(int(m.group(1))):
            netns.sh(["ip", "netns", "del", name], check=False)


def _require_lab() -> None:
    reason = netns.unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    _cleanup_stale()


# --- 1. live == bundle == kernel -----------------------------------------------------------------

WEB = Service("default", "web", "10.96.0.10", 80, [Endpoint(POD_B, 8080)], node_port=30080)
RULESET = NodeRuleset(services=[WEB], user_rules=[
    UserRule("filter", f"-I FORWARD 1 -d {POD_C}/32 -p tcp -m tcp --dport 9090 -j DROP")])
PROBES = {
    "cluster-ip": Flow("pod-a", POD_A, WEB.cluster_ip, WEB.port),
    "node-port": Flow("world", EXTERNAL_CLIENT_IP, NODE_IP, 30080),
    "pod-to-pod": Flow("pod-a", POD_A, POD_C, 8080),
    "pod-to-pod-dropped": Flow("pod-a", POD_A, POD_C, 9090),
}


@pytest.fixture(scope="module")
def live_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[netns.Lab, Path]]:
    _require_lab()
    lab = netns.Lab(prefix=_prefix(), seed=netns.lab_seed(), dump_dir=tmp_path_factory.mktemp("live-lab"))
    try:
        lab.build()
        dump = lab.load(RULESET.render(), name="live")
        yield lab, dump
    finally:
        lab.close()


def why_args(flow: Flow) -> list[str]:
    args = ["why", f"{flow.dst}:{flow.dport}", "--from", flow.src, "--proto", flow.proto, "--sport", PROBE_SPORT,
            "-o", "json"]
    return args + (["--in-iface", flow.in_iface] if flow.in_iface else [])


def normalised(doc: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The report without `inputs`, each input's label replaced by its bundle file name, and packet
    counters blanked: the kernel's own packets (an ARP-triggered reply, an IGMP report) can move a
    chain's counters between the two captures."""
    text = json.dumps({k: v for k, v in doc.items() if k != "inputs"})
    for label in sorted(names, key=len, reverse=True):
        text = text.replace(json.dumps(label)[1:-1], names[label])
    out = json.loads(re.sub(r"\[\d+:\d+\]", "[p:b]", text))
    for f in out.get("findings", []):
        f.pop("fingerprint", None)  # a hash over the cited file's label, which differs by design (live: vs bundle)
    return out  # type: ignore[no-any-return]


def bundle_names(bundle: Path) -> tuple[dict[str, str], dict[str, str]]:
    """label -> bundle file name, for the live labels (from the manifest) and the bundle's own labels."""
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/manifest.json"))
        man = json.load(tar.extractfile(member))  # type: ignore[arg-type]
        top = member.name.rsplit("/", 1)[0]
    live = {e["live_label"]: e["file"] for e in man["commands"] if e["file"]}
    dump = {f"{bundle}:{top}/{e['file']}": e["file"] for e in man["commands"] if e["file"]}
    return live, dump


@pytest.mark.parametrize("probe", list(PROBES))
def test_live_why_equals_the_bundle_and_the_kernel(live_lab: tuple[netns.Lab, Path], tmp_path: Path,
                                                   probe: str) -> None:
    lab, dump = live_lab
    flow = PROBES[probe]
    lab.warm_up_neighbours()
    bundle = tmp_path / "node.tar.gz"
    made = kptrace("collect", "-o", str(bundle), "-q", ns=lab.node)
    assert made.returncode in (0, 4) and bundle.is_file(), made.stderr
    live = kptrace(*why_args(flow), ns=lab.node)
    offline = kptrace(*why_args(flow), "--dump", str(bundle))
    assert live.returncode not in (2, 3), live.stderr
    live_doc, dump_doc = json.loads(live.stdout), json.loads(offline.stdout)
    live_names, dump_names = bundle_names(bundle)
    assert [i["file"] for i in live_doc["inputs"]] and all(i["file"].startswith("live:") for i in live_doc["inputs"])
    # The bundle's manifest is an input of the bundle's own, not of the node: the live node has none.
    read = [i for i in dump_doc["inputs"] if i["kind"] != "manifest"]
    assert [live_names[i["file"]] for i in live_doc["inputs"]] == [dump_names[i["file"]] for i in read]
    assert normalised(live_doc, live_names) == normalised(dump_doc, dump_names)
    assert live.returncode == offline.returncode

    # One real packet: the kernel's verdict, DNAT, masquerade and matched rules against the live answer.
    kernel = lab.probe(flow)
    answer = KptraceAnswer(live.returncode, live_doc, live.args, live.stderr)
    problems = netns.disagreements(kernel, answer, dump, exact_endpoint=False)
    assert not problems, netns.format_report(kernel, answer, problems)
    expected = {"cluster-ip": "pass", "node-port": "pass", "pod-to-pod": "pass", "pod-to-pod-dropped": "drop"}
    assert netns.disposition_class(live_doc["disposition"]) == expected[probe], kernel.describe()


# --- 2. read-only, as root, as nobody, with tools missing --------------------------------------

QUIET_SETUP = [
    # IPv6 off first, so no router solicitation or DAD packet ever moves a counter here.
    "sysctl -qw net.ipv6.conf.all.disable_ipv6=1", "sysctl -qw net.ipv6.conf.default.disable_ipv6=1",
    "ip link set lo up",
    # Snooping off: a snooping bridge joins 224.0.0.106 (all-snoopers) and sends IGMP reports for it,
    # which would move counters and conntrack while the test compares snapshots.
    "ip link add br0 type bridge mcast_snooping 0", "ip link add va type veth peer name vb", "ip link set va master br0",
    "ip link add vx0 type vxlan id 42 local 192.168.77.1 dstport 8472 nolearning",
    "ip addr add 10.244.7.1/24 dev br0", "ip addr add 192.168.77.1/24 dev vx0",
    "ip link set br0 up", "ip link set va up", "ip link set vb up", "ip link set vx0 up",
    "ip route add 10.9.0.0/16 via 10.244.7.2 table 100", "ip route add blackhole 10.66.0.0/16",
    "ip rule add fwmark 0x10/0xff lookup 100 pref 1000",
    "ip neigh add 10.244.7.5 lladdr 02:00:00:00:07:05 dev br0",
    "bridge fdb append 00:00:00:00:00:00 dev vx0 dst 192.168.77.2",
    "sysctl -qw net.ipv4.ip_forward=1", "sysctl -qw net.ipv4.conf.all.rp_filter=2",
    "ipset create kpt-live-set hash:ip,port", "ipset add kpt-live-set 10.96.0.1,tcp:443",
    "nft add table inet kptlive",
    "nft add chain inet kptlive c { type filter hook input priority 10 ; }",
    "nft add rule inet kptlive c counter packets 7 bytes 700 accept",
    "conntrack -I -p tcp -s 10.244.7.5 -d 10.96.0.1 --sport 40000 --dport 443 --state ESTABLISHED -t 3600 -u ASSURED",
]
# Counters set on purpose: a run that zeroed them would show.
COUNTED_RULES = """*filter
:INPUT ACCEPT [11:1100]
:FORWARD DROP [3:300]
:OUTPUT ACCEPT [12:1200]
:KUBE-FORWARD - [0:0]
[5:300] -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
[2:120] -A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [9:900]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [4:400]
:POSTROUTING ACCEPT [4:400]
:KUBE-SERVICES - [0:0]
[8:480] -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[1:60] -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 10.244.7.5:6443
COMMIT
"""
LEGACY_RULES = "*filter\n:INPUT ACCEPT [6:600]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
               "[4:240] -A INPUT -s 10.0.0.0/8 -j ACCEPT\nCOMMIT\n"
V6_RULES = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
           "[3:180] -A INPUT -s fd00::/8 -j ACCEPT\nCOMMIT\n"

SNAPSHOT = {
    "iptables": ["iptables-save", "-c"], "ip6tables": ["ip6tables-save", "-c"],
    "iptables-legacy": ["iptables-legacy-save", "-c"], "ip6tables-legacy": ["ip6tables-legacy-save", "-c"],
    "nft": ["nft", "-a", "list", "ruleset"], "ipset": ["ipset", "save"],
    "routes": ["ip", "route", "show", "table", "all"], "routes6": ["ip", "-6", "route", "show", "table", "all"],
    "rules": ["ip", "rule", "show"], "rules6": ["ip", "-6", "rule", "show"],
    "neigh": ["ip", "neigh", "show", "nud", "permanent"], "fdb": ["bridge", "fdb", "show"],
    "links": ["ip", "-d", "link", "show"], "addrs": ["ip", "addr", "show"],
    "conntrack": ["conntrack", "-L"], "sysctl": ["sysctl", "-a", "--pattern", r"^net\.(ipv4|ipv6|bridge|netfilter)\."],
}
_VOLATILE = re.compile(r"^# (Generated|Completed)|^net\.netfilter\.nf_conntrack_(count|expect_max)|"
                       r"^net\.ipv6\.route\.gc|^net\.ipv4\.route\.gc")


def snapshot(ns: str) -> dict[str, str]:
    """Everything kptrace reads, as the kernel's own tools print it (timestamps and timers aside)."""
    out = {}
    for key, argv in SNAPSHOT.items():
        text = netns.sh(argv, ns=ns, check=False).stdout
        lines = [ln for ln in text.splitlines() if not _VOLATILE.match(ln)]
        if key == "links":
            lines = [re.sub(r"\b\w+_timer\s+[\d.]+", "", ln) for ln in lines]  # bridge STP timers tick
        if key == "conntrack":
            lines = [re.sub(r"^(\S+\s+\d+\s+)\d+ ", r"\1", ln) for ln in lines]  # the remaining timeout ticks
        out[key] = "\n".join(lines)
    out["modules"] = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
    return out


@pytest.fixture(scope="module")
def quiet_ns() -> Iterator[str]:
    _require_lab()
    ns = f"{_prefix()}ro"
    netns.sh(["ip", "netns", "add", ns])
    try:
        for step in QUIET_SETUP:
            netns.sh(step.split(" ") if "{" not in step else ["nft", *_nft_words(step)], ns=ns)
        netns.sh(["iptables-restore", "-c"], ns=ns, stdin=COUNTED_RULES)
        netns.sh(["ip6tables-restore", "-c"], ns=ns, stdin=V6_RULES)
        if shutil.which("iptables-legacy-restore"):
            netns.sh(["iptables-legacy-restore", "-c"], ns=ns, stdin=LEGACY_RULES)
        yield ns
    finally:
        netns.sh(["ip", "netns", "del", ns], check=False)


def _nft_words(step: str) -> list[str]:
    head, _, body = step.partition("{")
    return [*head.split()[1:], "{", *body.replace("}", " }").split()]


@pytest.fixture(scope="module")
def nobody_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[str], dict[str, str], Path]]:
    """A Python nobody can run kptrace with: the system interpreter and a world-readable copy of the deps."""
    system = Path("/usr/bin/python3")
    probe = subprocess.run([str(system), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                           text=True, check=False) if system.exists() else None
    if probe is None or probe.stdout.strip() != str(tuple(sys.version_info[:2])):
        skip_or_fail(f"no /usr/bin/python3 of version {sys.version_info[:2]} to run kptrace as nobody")
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-nobody-"))
    try:
        root.chmod(0o755)
        site = root / "site"
        site.mkdir()
        # The modules a real run imports (typer pulls in some only when a command runs).
        listing = root / "modules.json"
        names: set[str] = set()
        for argv in (["collect", "-o", str(root / "probe.tar.gz"), "-q"], ["why", "10.96.0.10:53", "-p", "udp",
                                                                         "--demo", "-o", "json"]):
            code = ("import atexit, json, sys\n"
                    f"atexit.register(lambda: open({str(listing)!r}, 'w').write(json.dumps(sorted({{m.split('.')[0] "
                    "for m in sys.modules}))))\n"
                    f"sys.argv = ['kptrace', *{argv!r}]\n"
                    "from kptrace.cli.app import main\nmain()\n")
            # No tool on PATH: the probe run imports what a run imports without reading the host.
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False,
                           env={**os.environ, "PATH": "/nonexistent"})
            names |= set(json.loads(listing.read_text()))
        for name in sorted(names):
            origin = _origin(name)
            if origin is None or "site-packages" not in str(origin) or name == "kptrace":
                continue
            src = origin.parent if origin.name == "__init__.py" else origin
            dst = site / src.name
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)
        # kptrace itself too: the checkout may sit below a directory nobody cannot enter (mktemp -d is 0700).
        shutil.copytree(REPO / "kptrace", site / "kptrace", ignore=shutil.ignore_patterns("__pycache__"))
        out = root / "out"
        out.mkdir()
        out.chmod(0o777)
        for p in root.rglob("*"):
            p.chmod(0o777 if p == out else (0o755 if p.is_dir() else 0o644))
        env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(site), "HOME": str(out),
               "LC_ALL": "C"}
        yield [str(system)], env, out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _origin(name: str) -> Path | None:
    """Where a top-level module lives (None: built in, or not a file)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a module imported here without a spec (__main__, test helpers)
        spec = None
    origin = spec.origin if spec is not None else getattr(sys.modules.get(name), "__file__", None)
    return Path(origin) if origin not in (None, "built-in", "frozen") else None


def as_nobody(ns: str, python: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
           "--inh-caps=-all", "env", *[f"{k}={v}" for k, v in env.items()], *python, "-m", "kptrace", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd="/", check=False)


def path_without(tmp: Path, *missing: str) -> dict[str, str]:
    """PATH holding every tool collect uses except `missing` (links to the real ones)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save",
                 "iptables-nft-save", "ip6tables-nft-save", "nft", "ip", "bridge", "ipset", "ipvsadm",
                 "conntrack", "systemctl"):
        real = shutil.which(tool)
        if real and tool not in missing and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(real)
    return {**os.environ, "PATH": str(bin_dir)}


LIVE_EXTRA = "pyroute2 and python-iptables are optional (pip install 'kptrace[live]')"


def live_extra() -> bool:
    """Whether the optional readers are importable. CI installs the `live` extra, so there
    (KPTRACE_REQUIRE_KERNEL=1) their absence is a failure, not a quiet skip of what they read."""
    if importlib.util.find_spec("pyroute2") and importlib.util.find_spec("iptc"):
        return True
    if require_kernel():
        pytest.fail(f"KPTRACE_REQUIRE_KERNEL=1 but {LIVE_EXTRA}: not installed", pytrace=False)
    return False


def test_collect_and_live_why_change_nothing(quiet_ns: str, tmp_path: Path,
                                             nobody_python: tuple[list[str], dict[str, str], Path]) -> None:
    before = snapshot(quiet_ns)
    assert snapshot(quiet_ns) == before, "the lab namespace itself is not quiet"
    assert "[5:300]" in before["iptables"] and "packets 7 bytes 700" in before["nft"]
    assert "kpt-live-set" in before["ipset"] and "10.96.0.1" in before["conntrack"]

    runs = [
        kptrace("collect", "-o", str(tmp_path / "root.tar.gz"), "--include", "conntrack", "-q", ns=quiet_ns),
        kptrace("why", "10.96.0.1:443", "--from", "10.244.7.5", "-o", "json", ns=quiet_ns),
        kptrace("collect", "-o", str(tmp_path / "no-nft.tar.gz"), "-q", ns=quiet_ns,
                env=path_without(tmp_path / "a", "nft", "ipvsadm")),
        as_nobody(quiet_ns, *nobody_python[:2], "collect", "-o", str(nobody_python[2] / "nobody.tar.gz"),
                  "--include", "conntrack", "-q"),
        as_nobody(quiet_ns, *nobody_python[:2], "why", "10.96.0.1:443", "-o", "json"),
    ]
    if live_extra():
        runs.append(kptrace("collect", "-o", str(tmp_path / "fallbacks.tar.gz"), "-q", ns=quiet_ns,
                            env=path_without(tmp_path / "b", "ip", "bridge", "ipset", "iptables-legacy-save",
                                             "ip6tables-legacy-save")))
    for r in runs:
        assert r.returncode in (0, 1, 2, 4), r.stderr  # 2: nobody's live why cannot read the rules
    assert snapshot(quiet_ns) == before

    fallbacks = tmp_path / "fallbacks.tar.gz"
    if fallbacks.exists():
        with tarfile.open(fallbacks) as tar:
            man = json.load(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("manifest.json"))))  # type: ignore[arg-type]
        via = {e["file"]: e["via"] for e in man["commands"] if e["file"]}
        assert via["ip-addr.json"] == via["bridge-fdb.json"] == via["ipset-save.txt"] == "pyroute2", via
        assert via["iptables-legacy-save.txt"] == "python-iptables", via
    root = runs[0]
    assert root.returncode == 0, root.stderr
    with tarfile.open(tmp_path / "root.tar.gz") as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
    assert {"iptables-save.txt", "iptables-legacy-save.txt", "nft-ruleset.json", "ipset-save.txt",
            "conntrack.txt", "ip-route.json", "bridge-fdb.json", "sysctl.txt"} <= names


def test_live_why_reads_what_the_kernel_has(quiet_ns: str) -> None:
    r = kptrace("why", "10.96.0.1:443", "--from", "10.244.7.5", "--in-iface", "br0", "-o", "json", ns=quiet_ns)
    doc = json.loads(r.stdout)
    assert doc["endpoints"] == ["10.244.7.5:6443"], doc
    kinds = {i["kind"] for i in doc["inputs"]}
    assert {"iptables-save", "iptables-legacy-save", "ip-addr", "ip-route", "ip-rule", "sysctl"} <= kinds
    assert any(i["file"] == "live:iptables-legacy-save" for i in doc["inputs"])


def test_missing_nft_and_ipvsadm_are_reported_not_fatal(quiet_ns: str, tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    r = kptrace("collect", "-o", str(out), ns=quiet_ns, env=path_without(tmp_path, "nft", "ipvsadm"))
    assert r.returncode == 4 and out.is_file(), r.stderr
    assert "warning: nft-ruleset.json: nft: not found on PATH" in r.stderr
    with tarfile.open(out) as tar:
        man = json.load(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("manifest.json"))))  # type: ignore[arg-type]
    status = {" ".join(e["command"]): e["status"] for e in man["commands"]}
    assert status["nft -j list ruleset"] == "missing" and status["iptables-save"] == "ok"
    # Without IPVS in the kernel ipvsadm is never needed: absent, not a warning.
    assert status["ipvsadm -Ln"] in ("absent", "missing")
    w = kptrace("why", "10.96.0.1:443", "--from", "10.244.7.5", "--dump", str(out), "-o", "json")
    assert json.loads(w.stdout)["endpoints"] == ["10.244.7.5:6443"]


def test_collect_as_nobody(quiet_ns: str, nobody_python: tuple[list[str], dict[str, str], Path]) -> None:
    python, env, out_dir = nobody_python
    out = out_dir / "as-nobody.tar.gz"
    r = as_nobody(quiet_ns, python, env, "collect", "-o", str(out))
    assert r.returncode == 4 and out.is_file(), r.stderr
    assert "iptables-save" in r.stderr and "root" in r.stderr
    with tarfile.open(out) as tar:
        man = json.load(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("manifest.json"))))  # type: ignore[arg-type]
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
    status = {e["file"] or " ".join(e["command"]): e["status"] for e in man["commands"]}
    assert man["uid"] == 65534
    assert status["iptables-save"] == "denied" and status["nft -j list ruleset"] == "denied"
    # What netlink and /proc give any user is still there.
    assert {"ip-addr.json", "ip-link.json", "ip-route.json", "ip-neigh.json", "sysctl.txt"} <= names
    why = as_nobody(quiet_ns, python, env, "why", "10.96.0.1:443", "-o", "json")
    assert why.returncode == 2 and "cannot read this node's iptables rules" in why.stderr


def test_pyroute2_fallbacks_match_iproute2(quiet_ns: str) -> None:
    """Without ip/bridge/ipset, pyroute2 must give the loader the same model as the commands."""
    if not live_extra():
        skip_or_fail(LIVE_EXTRA)
    code = (
        "import dataclasses, json, subprocess\n"
        "from kptrace.collect import netlink, live, legacy\n"
        "from kptrace.load import BUNDLE_NAMES, _LIST_KINDS\n"
        "from kptrace.parsers.ip_addr import parse_ip_addr\n"
        "P = {k: v[0] for k, v in _LIST_KINDS.items()}; P['ip-addr'] = parse_ip_addr\n"
        "def s(xs): return [{k: v for k, v in dataclasses.asdict(x).items() if k != 'source'} for x in xs]\n"
        "bad = []\n"
        "for name, argv, what in live.IPROUTE:\n"
        "    if what == 'route4': continue  # iproute2 6.x also prints IPv6 routes there\n"
        "    a = subprocess.run(list(argv), capture_output=True, text=True).stdout\n"
        "    b = netlink.capture(name, what).data.decode()\n"
        "    p = P[BUNDLE_NAMES[name]]\n"
        "    if s(p(a, name)) != s(p(b, name)): bad.append(name)\n"
        "ipset = subprocess.run(['ipset', 'save'], capture_output=True, text=True).stdout\n"
        "import re\n"
        "if re.sub(r' bucketsize \\d+ initval 0x[0-9a-f]+', '', ipset) != netlink.ipset_capture('x').data.decode():\n"
        "    bad.append('ipset')\n"
        "tables = open('/proc/net/ip_tables_names').read().split()\n"
        "a = subprocess.run(['iptables-legacy-save'], capture_output=True, text=True).stdout\n"
        "b = legacy.capture(4, tables, 'x').data.decode()\n"
        "strip = lambda t: [l for l in t.splitlines() if not l.startswith('#')]\n"
        "if strip(a) != strip(b): bad.append('iptables-legacy')\n"
        "print(json.dumps(bad))\n")
    r = subprocess.run(["ip", "netns", "exec", quiet_ns, sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []
