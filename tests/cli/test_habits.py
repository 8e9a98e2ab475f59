"""Issue 19: a CLI that behaves like the ones SREs know (kubectl's habits), and output made for pipes
and tickets. These run the real entry point (`python -m kptrace`) where main() is what is tested:
`--debug` after the subcommand, `--demo NAME`, usage errors, a reader that closes the pipe early."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DNS = ["why", "10.96.0.10:53", "--proto", "udp", "--from", "10.244.1.5", "--demo"]


def _kptrace(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    e = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "KPTRACE_DEBUG")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "kptrace", *args], capture_output=True, text=True, timeout=180,
                          cwd=ROOT, env=e, check=False)


def test_first_line_is_the_whole_answer_on_one_line_on_a_pipe() -> None:
    r = _kptrace(*DNS)
    first = r.stdout.splitlines()[0]
    assert first == ("10.244.1.5 → kube-system/kube-dns:dns (10.96.0.10:53/udp): FORWARDED — DNAT to 10.244.1.9:53 "
                     "(50 %, forwarded via cni0) or 10.244.2.7:53 (50 %, forwarded via flannel.1 to node-b, out cni0)")
    assert not [line for line in r.stdout.splitlines() if line.endswith(" ")], "no trailing padding"
    assert "(dimmed)" not in r.stdout


def test_a_reader_that_closes_the_pipe_does_not_change_the_exit_code() -> None:
    # `kptrace why … | head -1`: the FORWARDED answer still exits 0 (a closed pipe is not DROPPED), nothing on stderr.
    for args in (DNS, [*DNS, "-o", "json"], ["check", "--demo", "-v"]):
        p = subprocess.Popen([sys.executable, "-m", "kptrace", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        assert p.stdout is not None and p.stderr is not None
        p.stdout.readline()
        p.stdout.close()
        err = p.stderr.read().decode()
        code = p.wait(timeout=180)
        whole = _kptrace(*args).returncode
        assert code == whole, (args, code, err)
        assert "Traceback" not in err and "BrokenPipe" not in err and "KPT003" not in err


def test_dash_h_debug_after_the_subcommand_and_one_line_usage_errors() -> None:
    assert "Usage" in _kptrace("why", "-h").stdout and _kptrace("check", "-h").returncode == 0
    r = _kptrace("why", "10.96.0.10:53", "--frm", "10.244.1.5", "--demo")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: No such option: --frm (Possible options: --from) (kptrace why --help)"]
    r = _kptrace("why", "10.96.0.10:53", "--from", "nonsense", "--demo", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "KptraceError" in r.stderr
    assert "Traceback" not in _kptrace("why", "10.96.0.10:53", "--from", "nonsense", "--demo").stderr


def test_exit_codes_are_in_each_commands_help() -> None:
    for cmd in ("why", "check", "services", "graph", "parse", "explain", "collect"):
        out = " ".join(_kptrace(cmd, "--help", env={"COLUMNS": "200"}).stdout.split())
        assert "Exit codes:" in out, cmd


@pytest.mark.parametrize(("name", "first"), [
    ("", "10.244.1.5 → kube-system/kube-dns:dns (10.96.0.10:53/udp): FORWARDED"),
    ("broken", "10.244.1.5 → kube-system/kube-dns:dns (10.96.0.10:53/udp): DROPPED — policy DROP (filter/FORWARD, "
               "broken-node/iptables-save.txt:16)"),
    ("ipvs", "10.244.1.5 → 10.96.0.10:53/udp: FORWARDED"),
    # One file, nft-ruleset.txt: nothing shows the node's addresses, so whether 10.96.0.10 is one is unknown.
    ("nft", "10.244.1.5 → 10.96.0.10:53/udp: UNDETERMINED — depends on the node's addresses (not in the input; give "
            "`ip addr`); if 10.96.0.10 is not one of them: FORWARDED"),
])
def test_demos_by_name(name: str, first: str) -> None:
    args = ["why", "--demo", *([name] if name else []), "10.96.0.10:53/udp", "--from", "10.244.1.5"]
    assert _kptrace(*args).stdout.splitlines()[0].startswith(first)
    bad = _kptrace("why", "10.96.0.10:53", "--demo=nosuch")
    assert bad.returncode == 2 and "no such demo" in bad.stderr


def test_destinations_by_service_name_and_with_a_protocol() -> None:
    first = _kptrace("why", "svc/kube-system/kube-dns:dns", "--from", "10.244.1.5", "--demo").stdout.splitlines()[0]
    assert first.startswith("10.244.1.5 → kube-system/kube-dns:dns (10.96.0.10:53/udp): FORWARDED")
    tcp = _kptrace("why", "kube-system/kube-dns:dns-tcp", "--from", "10.244.1.5", "--demo").stdout.splitlines()[0]
    assert "(10.96.0.10:53/tcp)" in tcp
    nft = _kptrace("why", "default/empty:p80", "--from", "10.244.1.5", "--demo", "nft")
    assert nft.returncode == 4 and nft.stdout.startswith(
        "10.244.1.5 → default/empty:p80 (10.96.0.20:80/tcp): UNDETERMINED — depends on the node's addresses")
    assert "if 10.96.0.20 is not one of them: REJECTED — no endpoints" in nft.stdout.splitlines()[0]
    several = _kptrace("why", "kube-system/kube-dns", "--demo")
    assert several.returncode == 2 and "names 3 Service ports" in several.stderr
    clash = _kptrace("why", "10.96.0.10:53/udp", "--proto", "tcp", "--demo")
    assert clash.returncode == 2 and "disagree" in clash.stderr


def test_yaml_wherever_json() -> None:
    for args in (DNS, ["check", "--demo"], ["services", "--demo"], ["graph", "--demo", "--service",
                                                                    "kube-system/kube-dns"]):
        j = _kptrace(*args, "-o", "json")
        y = _kptrace(*args, "-o", "yaml")
        assert j.returncode == y.returncode, args
        assert yaml.safe_load(y.stdout) == json.loads(j.stdout), args


def test_fail_on_is_case_insensitive_and_takes_info() -> None:
    assert _kptrace("check", "--demo", "--fail-on", "MEDIUM").returncode == 1
    assert _kptrace("check", "--demo", "--fail-on", "info").returncode == 1
    assert _kptrace("check", "--demo", "--fail-on", "High").returncode != 1


def test_width_is_honoured_by_services() -> None:
    wide = _kptrace("services", "--demo").stdout.splitlines()
    narrow = _kptrace("services", "--demo", "--width", "120").stdout.splitlines()
    assert len(wide) == 10 and len(narrow) > len(wide)


def test_the_shipped_demos_are_clean() -> None:
    """`check --demo` cannot-tells only what the demo has no file for; `kptrace parse` reads every demo whole."""
    from kptrace import demos

    r = _kptrace("check", "--demo", "-o", "json")
    doc = json.loads(r.stdout)
    unknown = {f["id"]: f.get("settle", []) for f in doc["results"] if f["status"] == "CANNOT_TELL"}
    assert "KPT404" not in unknown  # hairpin: the demo's `ip -d link` shows it (bridge_slave … hairpin on)
    have = {p.name for node in ("node-a", "node-b") for p in (demos.path() / node).iterdir()}
    for check, files in unknown.items():
        assert not set(files) & have, (check, files)
    for name in demos.DEMOS:
        assert _kptrace("parse", str(demos.path(name))).returncode == 0, name


def test_hairpin_is_read_from_ip_d_link() -> None:
    from kptrace.parsers.bridge import ports_of_ip_link

    text = ("5: veth44184a66@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue master cni0 state UP\n"
            "    link/ether 52:32:f1:e1:c7:ae brd ff:ff:ff:ff:ff:ff link-netnsid 1\n"
            "    veth\n"
            "    bridge_slave state forwarding priority 32 cost 2 hairpin off guard off\n"
            "6: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP\n")
    (port,) = ports_of_ip_link(text, "ip-link.txt")
    assert (port.name, port.master, port.state, port.hairpin) == ("veth44184a66", "cni0", "forwarding", False)
    assert port.source is not None and port.source.line == 4
    js = ('[{"ifname":"veth1","master":"cni0","linkinfo":{"info_kind":"veth","info_slave_kind":"bridge",'
          '"info_slave_data":{"state":"forwarding","hairpin":true}}},{"ifname":"eth0"}]')
    assert [(p.name, p.hairpin) for p in ports_of_ip_link(js, "ip-link.json")] == [("veth1", True)]


def test_the_first_line_names_the_service_even_when_the_trace_stops_before_its_rules(tmp_path: Path) -> None:
    """A packet dropped before kube-proxy's chains: the name comes from the input's Service table."""
    from typer.testing import CliRunner

    from kptrace import demos
    from kptrace.cli.app import _register, app

    bundle = tmp_path / "node-a"
    shutil.copytree(demos.path() / "node-a", bundle)
    rules = (bundle / "iptables-save.txt").read_text()
    at = rules.index("COMMIT", rules.index("*mangle"))
    (bundle / "iptables-save.txt").write_text(rules[:at] + "-A PREROUTING -d 10.96.0.10/32 -p udp -j DROP\n" + rules[at:])
    _register()
    r = CliRunner().invoke(app, ["why", "10.96.0.10:53", "-p", "udp", "--from", "10.244.1.5", "--dump", str(bundle)])
    assert r.exit_code == 1
    assert r.stdout.splitlines()[0] == ("10.244.1.5 → kube-system/kube-dns:dns (10.96.0.10:53/udp): DROPPED — a DROP "
                                        "rule (mangle/PREROUTING, node-a/iptables-save.txt:11)")
