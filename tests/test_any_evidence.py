"""Any evidence a user has loads, recognised by its content, whatever the file is called (issue 14).

(a) every real paste of tests/fixtures/pastes loads with nothing refused, and `kptrace parse` says 0 or 4;
(b) every file of the demo bundles and of the pastes, alone and in every pairing of its bundle, loads
    unless it holds no node fact at all, and the same file under a random name is the same kind;
(c) the order of --dump never changes `kptrace check` or `kptrace why`;
(d) the sniffer, fed mutated real samples (lines dropped, a cut, prompts, CRLF, indentation), never
    names a kind other than the one that produced them (it may say it cannot tell).
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.errors import KptraceError
from kptrace.load import PASSIVE_KINDS, demo_path, load_cluster, load_node, sniff
from kptrace.parsers.paste import split_sections

_register()
runner = CliRunner()
PASTES = Path(__file__).resolve().parent / "fixtures" / "pastes"
FIXTURES = sorted(p for p in PASTES.iterdir() if p.is_dir())
BUNDLES = [demo_path() / "node-a", demo_path() / "node-b", demo_path().parent / "broken-node",
           demo_path().parent / "ipvs-node"]


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.name != "meta.yaml")


def _sample_files(d: Path) -> list[Path]:
    """A bundle's files that are some command's output: not its README, not hostname.txt (a bare name says
    nothing of where it came from, so only its bundle name makes it the node's name)."""
    return [p for p in _files(d) if not any(rx.match(p.name) for rx in PASSIVE_KINDS.values())
            and not p.name.startswith("hostname")]


# --- (a) every real paste loads ----------------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_every_paste_loads_with_nothing_refused(fixture: Path) -> None:
    files = _files(fixture)
    nodes = load_cluster(files, keep_unusable=True)
    kinds = {i.file: i.kind for n in nodes for i in n.inputs}
    assert set(kinds) == {str(f) for f in files}, f"inputs not listed: {set(map(str, files)) - set(kinds)}"
    assert "unreadable" not in kinds.values(), kinds
    assert any(n.usable for n in nodes)
    r = runner.invoke(app, ["parse", *map(str, files), "-o", "json"])
    assert r.exit_code in (0, 4), r.output[-500:]
    doc = json.loads(r.stdout)
    assert all(f["kind"] not in (None, "unrecognised") for f in doc["files"]), [(f["file"], f["kind"]) for f in doc["files"]]


def test_the_refused_formats_are_their_own_kinds() -> None:
    """What used to be refused: kernel TRACE logs, dmesg, /sys values, resolv.conf, nft chains, lsmod | grep."""
    expect = {
        "calico-4520-nft-trace-cali-drop/trace.log": "trace-log",
        "flannel-636-trace-good-path/trace.log": "trace-log",
        "k8s-43966-kubelet16-hairpin-off/hairpin_mode.txt": "proc-value",
        "zalando-1470-flannel-hairpin-off/hairpin_mode.txt": "proc-value",
        "k8s-50129-busybox-resolv-conf/paste.txt": "resolv-conf",
        "k8s-71261-conntrack-table-full/dmesg.txt": "kernel-log",
        "k8s-83063-console-iptables-input-drop/console-iptables-L.txt": "iptables-list",
        "k8s-boshrelease-16-br-netfilter-after-modprobe/sysctl-grep.txt": "sysctl",
        "nemoclaw-2418-br-netfilter-not-loaded/lsmod-grep.txt": "modules",
        "saifsust-nft-kube-services-two-nodes/nft-chain-fragments.txt": "nft-ruleset",
        "flannel-1155-systemd-vtep-mac-race/clr-01-ip-neigh.txt": "ip-neigh",  # was read as /32 routes
    }
    for rel, kind in expect.items():
        node = load_node([PASTES / rel], must_be_usable=False)
        assert [i.kind for i in node.inputs] == [kind], rel


# --- (b) alone, in pairs, and renamed -----------------------------------------------------------------


def _groups() -> list[Any]:
    return [pytest.param(_sample_files(b), id=b.name) for b in BUNDLES] + [pytest.param(_files(f), id=f.name)
                                                                           for f in FIXTURES]


@pytest.mark.parametrize("files", _groups())
def test_each_file_and_pair_loads_unless_it_holds_no_fact(files: list[Path]) -> None:
    factless = {f for f in files if not load_node([f], must_be_usable=False).usable}
    # A file whose kind is recognised but that holds nothing about the node (a kube-proxy log, `kubectl get
    # nodes`, `ps`): alone it is "nothing kptrace can read" (exit 2), never a crash.
    assert factless <= {f for f in files if f.suffix == ".log" or f.name.startswith(("kubectl", "ps-"))}, factless
    for group in [[f] for f in files] + [list(p) for p in itertools.combinations(files, 2)]:
        if set(group) <= factless:
            with pytest.raises(KptraceError, match="nothing kptrace can read"):
                load_cluster(group)
        else:
            assert load_cluster(group)


@pytest.mark.parametrize("files", _groups())
def test_a_renamed_file_is_the_same_kind(files: list[Path], tmp_path: Path) -> None:
    for f in files:
        renamed = tmp_path / "x7f3q.txt"
        shutil.copy(f, renamed)
        a = [i.kind for i in load_node([f], must_be_usable=False).inputs]
        b = [i.kind for i in load_node([renamed], must_be_usable=False).inputs]
        assert a == b, f"{f}: {a} as named, {b} as x7f3q.txt"


# --- (c) the order of --dump never changes an answer ------------------------------------------------------


ORDER_CASES = [
    ("k3s-1114-buster-nft-vs-legacy-forward", ["why", "10.244.1.5:80", "--from", "10.244.0.5", "--proto", "tcp"]),
    ("k8s-95149-ipvs-empty-realservers", ["why", "10.96.0.10:53", "--from", "10.244.0.5", "--proto", "udp"]),
    ("clearlinux-904-flannel-wrong-vtep-arp", ["why", "10.244.1.5:80", "--from", "10.244.0.2", "--proto", "tcp"]),
    ("flannel-535-master-flannel1-network-address", ["why", "10.244.1.5:80", "--from", "10.244.0.5", "--proto", "tcp"]),
    ("k8s-71261-conntrack-table-full", ["why", "10.96.0.10:53", "--from", "10.244.0.5", "--proto", "udp"]),
]


def _doc(args: list[str]) -> tuple[int, dict[str, object]]:
    r = runner.invoke(app, [*args, "-o", "json"])
    assert r.stdout.strip(), r.output[-400:]
    doc = json.loads(r.stdout)
    # The inputs are listed in the order given (what the user typed); everything else must not depend on it.
    doc["inputs"] = sorted(doc.get("inputs", []), key=lambda i: str(i["file"]))
    for timing in ("elapsed_s", "timing", "duration_s"):
        doc.pop(timing, None)
    return r.exit_code, doc


@pytest.mark.parametrize(("fixture", "why"), ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_the_order_of_inputs_never_changes_an_answer(fixture: str, why: list[str]) -> None:
    files = [str(f) for f in _files(PASTES / fixture)]
    for cmd in (["check"], why):
        docs = [_doc(cmd + [a for f in perm for a in ("--dump", f)]) for perm in itertools.permutations(files)]
        assert all(d == docs[0] for d in docs[1:]), f"{fixture} {cmd[0]}: the answer depends on the order of --dump"


def test_two_backends_listed_by_two_binaries_are_never_merged() -> None:
    d = PASTES / "k3s-1114-buster-nft-vs-legacy-forward"
    for files in ([d / "paste.txt", d / "paste-legacy.txt"], [d / "paste-legacy.txt", d / "paste.txt"]):
        node = load_node(files)
        main, legacy = node.rulesets[4].chain("filter", "FORWARD"), node.legacy_rulesets[4].chain("filter", "FORWARD")
        assert main is not None and legacy is not None
        assert (main.policy, legacy.policy) == ("DROP", "ACCEPT")


# --- (d) the sniffer never names another kind -----------------------------------------------------------


IPTABLES = {"iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save", "iptables-rules",
            "iptables-list"}
# Kinds one command's output may be read as when part of it is gone: `ip addr` without its inet lines is
# what `ip link` prints; the iptables forms are one family (a dump without its `*table` line is an excerpt).
EQUIVALENT = [IPTABLES, {"ip-addr", "ip-link"}]
NOT_KINDS = {"paste", "other", "component-log"}


def _allowed(kinds: set[str]) -> set[str]:
    out = set(kinds)
    for family in EQUIVALENT:
        if out & family:
            out |= family
    return out


def _kinds_of(text: str, name: str = "x7f3q.txt") -> set[str]:
    """What the sniffer reads this text as: its kind, or the kinds of a paste's parts."""
    kind = sniff(name, text)
    if kind is None:
        return set()
    if kind != "paste":
        return {kind}
    return {s.kind for s in split_sections(text, name).sections} - NOT_KINDS


def _mutations(text: str, rng: random.Random) -> list[str]:
    lines = text.split("\n")
    out = []
    for _ in range(6):
        kept = [ln for ln in lines if rng.random() > 0.3]
        out.append("\n".join(kept))
    # A cut keeps whole lines: a line cut in the middle is a prefix of another format's line
    # (`10.0.0.5 dev eth0` is both a cut neighbour entry and a whole route).
    for _ in range(3):
        out.append("\n".join(lines[: rng.randrange(1, max(len(lines), 2))]))
    for prompt in ("$ cat out.txt", "root@node-a:~# cat out.txt", "[root@node ~]# cat out.txt"):
        out.append(prompt + "\n" + text + "\n" + prompt.split("cat")[0])
    out.append(text.replace("\n", "\r\n"))
    out.append("\n".join("  " + ln if ln else ln for ln in lines))
    out.append("\n".join("\t" + ln if ln else ln for ln in rng.sample(lines, len(lines))))
    return out


def _samples() -> list[Path]:
    return [f for b in BUNDLES for f in _sample_files(b)] + [f for d in FIXTURES for f in _files(d)]


@pytest.mark.parametrize("sample", _samples(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_sniffer_never_names_another_kind(sample: Path) -> None:
    text = sample.read_text()
    produced = _kinds_of(text, sample.name)
    if not produced:
        pytest.skip("a file that holds no command output kptrace reads")
    allowed = _allowed(produced)
    rng = random.Random(sample.name)
    for mutated in _mutations(text, rng):
        got = _kinds_of(mutated)
        assert got <= allowed, f"{sample}: read as {sorted(got - allowed)} after a mutation:\n{mutated[:600]}"
