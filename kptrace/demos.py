"""The demo bundles shipped in the package, by name: `--demo` (the cluster), `--demo broken`,
`--demo ipvs`, `--demo nft`. Every command's `--demo` flag reads `path()`; the command line
(cli/app.py) turns `--demo NAME` into the flag and `select(NAME)`, so a name never takes the place
of a positional argument (`kptrace why --demo 10.96.0.10:53` still traces 10.96.0.10:53)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kptrace.errors import KptraceError

DEMOS = {
    "cluster": "cluster",  # node-a and node-b, iptables mode, flannel VXLAN
    "broken": "broken-node",  # node-a after a bad change: FORWARD policy DROP
    "ipvs": "ipvs-node",  # kube-proxy in IPVS mode
    "nft": "nft-node",  # kube-proxy in nftables mode
}
_selected = {"name": "cluster"}


def select(name: str) -> None:
    key = name.lower()
    if key not in DEMOS:
        raise KptraceError(f"--demo {name}: no such demo (one of {', '.join(DEMOS)})")
    _selected["name"] = key


def selected() -> str:
    return _selected["name"]


def path(name: str | None = None) -> Path:
    """The bundle directory of a demo (the selected one by default)."""
    return Path(str(resources.files("kptrace") / "demo" / DEMOS[name or _selected["name"]]))


def hoist(argv: list[str]) -> list[str]:
    """`--demo NAME` and `--demo=NAME` become `--demo`, with NAME selected (before `--`)."""
    _selected["name"] = "cluster"  # each command line selects afresh (tests run many in one process)
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out += argv[i:]
            break
        if a.startswith("--demo="):
            select(a.split("=", 1)[1])
            out.append("--demo")
        elif a == "--demo" and i + 1 < len(argv) and argv[i + 1].lower() in DEMOS:
            select(argv[i + 1])
            out.append("--demo")
            i += 1
        else:
            out.append(a)
        i += 1
    return out
