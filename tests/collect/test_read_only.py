"""The live path is read-only by construction: no call in kptrace/collect can change the node.

A static check over the source (AST, not only grep): every command collect runs is a literal
argument list of a listing/saving tool with no mutating option; pyroute2 requests are dumps;
python-iptables tables are opened with autocommit off and only read; nothing is written except the
bundle itself (kptrace/collect/bundle.py, which never names /proc or /sys). The checker is tested
on mutants too, so a green run means it looked. tests/kernel/test_kernel_live.py proves the same
on a real kernel (state byte-identical before and after).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "kptrace" / "collect").glob("*.py")) + [ROOT / "kptrace" / "cli" / "collect.py"]
WRITER = "bundle.py"  # writes the bundle, and only the bundle

# Tools collect may run, and nothing else.
TOOLS = {"iptables-save", "ip6tables-save", "iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save",
         "ip6tables-legacy-save", "nft", "ip", "bridge", "ipset", "ipvsadm", "conntrack", "systemctl"}
# Tools that change the node; only ever allowed when listed in TOOLS (none of these are).
OTHER_TOOLS = {"iptables", "ip6tables", "ebtables", "arptables", "sysctl", "modprobe", "insmod", "rmmod", "tc",
               "ethtool", "brctl", "ifconfig", "route", "arp", "kubectl", "crictl", "sh", "bash"}
DESCRIPTIONS = {"read", "pyroute2", "python-iptables", "hostname", "node.yaml"}  # Capture.command, not argv
# Options or words that change state in any of those tools (iptables, ip, nft, ipset, ipvsadm, conntrack, sysctl).
MUTATING_ARGS = {"-F", "-X", "-Z", "-A", "-I", "-D", "-P", "-R", "-N", "-E", "-C", "-w", "--flush", "--zero",
                 "--append", "--insert", "--delete", "--delete-chain", "--new-chain", "--policy", "--replace",
                 "add", "del", "delete", "flush", "set", "change", "replace", "append", "prepend", "insert",
                 "create", "destroy", "swap", "rename", "restore", "reset", "-U", "--update", "zero", "-S1",
                 "start", "stop", "restart", "reload", "enable", "disable", "mask", "kill", "load", "-f"}
READ_VERBS = {"list", "show", "save", "dump", "get", "-j", "-d", "-6", "-Ln", "-Sn", "-L", "addr", "link",
              "route", "rule", "neigh", "fdb", "table", "all", "ruleset", "list-units", "--type=service",
              "--all", "--no-pager"}
# Method names that mutate through pyroute2 (first argument a command) or python-iptables.
PYROUTE2_REQUESTS = {"link", "addr", "route", "rule", "neigh", "fdb", "tc", "brport", "vlan_filter", "service",
                     "dest", "nexthop"}
MUTATING_METHODS = {"commit", "flush_entries", "zero_entries", "set_policy", "append_rule", "insert_rule",
                    "delete_rule", "replace_rule", "create_chain", "delete_chain", "rename_chain", "flush",
                    "destroy", "swap", "set_counters", "create", "delete", "add", "write_text", "write_bytes",
                    "unlink", "rmdir", "mkdir", "chmod", "chown", "symlink_to", "rename", "setns",
                    "sendto", "put", "send", "system", "popen", "Popen", "call", "check_call", "execv", "execvp"}
# The writer builds the bundle in a staging directory it made and moves it into place (never replacing
# anything): it creates, links, renames and removes only its own files. os.replace is not among them.
ALLOWED_IN_WRITER = {"unlink", "rmdir", "link", "rename", "fchmod"}
OS_WRITES = {"replace", "rename", "remove", "unlink", "rmdir", "mkdir", "makedirs", "chmod", "fchmod", "chown", "write",
             "truncate", "symlink", "link"}  # os.<name>: str.replace and friends are not writes
TEXT_PATTERNS = [r"RTM_NEW", r"RTM_DEL", r"RTM_SET", r"IPVS_CMD_(NEW|SET|DEL|ZERO|FLUSH)",
                 r"IPSET_CMD_(CREATE|DESTROY|FLUSH|RENAME|SWAP|ADD|DEL)", r"NFT_MSG_(NEW|DEL)", r"\.set\(", r"shell\s*=\s*True",
                 r"os\.system", r"autocommit\s*=\s*True", r"/proc/sys[^\"']*[\"']\s*,\s*[\"'][wa+]"]


def violations(source: str, filename: str) -> list[str]:
    """Every mutating call in `source` (empty for read-only code)."""
    out: list[str] = []
    for pattern in TEXT_PATTERNS:
        for m in re.finditer(pattern, source):
            out.append(f"{filename}:{source.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}")
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{filename}:{node.lineno}"
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        on_os = isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "os"
        if (name in MUTATING_METHODS or on_os and name in OS_WRITES) \
                and not (filename.endswith(WRITER) and name in ALLOWED_IN_WRITER):
            out.append(f"{where}: .{name}()")
        if name == "open" and _open_mode(node) not in ("r", "rb", "rt") and not filename.endswith(WRITER):
            out.append(f"{where}: open(..., {_open_mode(node)!r})")
        if name in PYROUTE2_REQUESTS and node.args and isinstance(node.args[0], ast.Constant) \
                and node.args[0].value not in ("dump", "get", "show", "list"):
            out.append(f"{where}: .{name}({node.args[0].value!r}, ...)")
        if name in ("run_command", "run", "check_output", "Capture") or name == "Popen":
            for argv in node.args:
                out += _argv_violations(argv, where)
    # Every argv literal (lists/tuples of strings starting with a tool name), wherever it appears.
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)):
            out += _argv_violations(node, f"{filename}:{node.lineno}")
    return sorted(set(out))


def _open_mode(node: ast.Call) -> str:
    mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
    return mode.value if isinstance(mode, ast.Constant) else "r" if mode is None else "?"


def _argv_violations(argv: ast.AST, where: str) -> list[str]:
    if not isinstance(argv, (ast.List, ast.Tuple)):
        return []
    words = [e.value for e in argv.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    if not words or words[0] in DESCRIPTIONS or not (words[0] in TOOLS or words[0] in OTHER_TOOLS
                                                     or "tables" in words[0]):
        return []
    bad = [w for w in words[1:] if w in MUTATING_ARGS or "restore" in w]
    if words[0] not in TOOLS:
        bad.insert(0, f"{words[0]} is not a listing tool")
    return [f"{where}: {' '.join(words)!r} mutates ({', '.join(bad)})"] if bad else []


def test_the_collect_package_is_read_only() -> None:
    found = [v for f in FILES for v in violations(f.read_text(), str(f.relative_to(ROOT)))]
    assert found == []


def test_every_command_collect_runs_is_a_known_lister() -> None:
    from kptrace.collect import live

    for _name, argv, _what in live.IPROUTE:
        assert argv[0] in TOOLS and all(w in READ_VERBS for w in argv[1:]), argv


def test_the_writer_never_touches_proc_or_sys() -> None:
    text = (ROOT / "kptrace" / "collect" / WRITER).read_text()
    assert "/proc" not in text and "/sys" not in text


@pytest.mark.parametrize("mutant", [
    'run_command("x", ["iptables", "-F"], env)',
    'run_command("x", ["iptables-save", "-Z"], env)',
    'subprocess.run(["iptables-restore"], input=b"")',
    'subprocess.run(["ipset", "flush"])',
    'run_command("x", ["nft", "flush", "ruleset"], env)',
    'run_command("x", ["conntrack", "-D"], env)',
    'run_command("x", ["ipvsadm", "-C"], env)',
    'ipr.route("add", dst="10.0.0.0/8")',
    'ipr.link("set", index=1, state="down")',
    'ipvs.service("del", service=s)',
    'table.commit()',
    'chain.flush()',
    'iptc.Table("filter", autocommit=True)',
    'open("/proc/sys/net/ipv4/ip_forward", "w").write("0")',
    'Path("/proc/sys/net/ipv4/ip_forward").write_text("0")',
    'msg["header"]["type"] = RTM_NEWROUTE',
    'ipset.add("KUBE-CLUSTER-IP", "10.0.0.1")',
    'subprocess.run("iptables-save", shell=True)',
    'os.system("iptables -F")',
    'rule.set("x")',
    'x = ["sysctl", "-w", "net.ipv4.ip_forward=0"]',
])
def test_the_checker_catches_mutations(mutant: str) -> None:
    assert violations(mutant + "\n", "mutant.py"), mutant


def test_the_checker_passes_reads() -> None:
    code = "\n".join([
        'run_command("x", ["iptables-save"], env)', 'run_command("x", ["nft", "-j", "list", "ruleset"], env)',
        'ipr.route("dump", family=2)', 'ipvs.service("dump")', 'open(p).read()', 'Path(p).read_text()',
        'iptc.Table("filter", autocommit=False)', 'ips.list()', 'x = ("ipvsadm", "-Ln")',
    ]) + "\n"
    assert violations(code, "reader.py") == []
