"""The node's DNS files in a bundle: which is which, by name and by content, and what each adds to the Node.

| bundle file | what it is |
| --- | --- |
| `resolv.conf` (or `etc-resolv.conf`) | the node's `/etc/resolv.conf` |
| `systemd-resolved-resolv.conf` | `/run/systemd/resolve/resolv.conf`: systemd-resolved's upstream servers |
| `kubelet-config.yaml` | kubelet's config file (`/var/lib/kubelet/config.yaml`, or its `--config`) |
| `kubelet-cmdline.txt` | kubelet's command line, one argument per line (`/proc/PID/cmdline`) |

A file with another name is recognised by its content: a KubeletConfiguration, a command line
starting with `kubelet`; resolv.conf lines are read by the paste reader (kptrace.parsers.paste).
"""

from __future__ import annotations

import re

from kptrace.model.node import Node
from kptrace.parsers.kubelet import is_kubelet_cmdline, is_kubelet_config, parse_kubelet_cmdline, parse_kubelet_config
from kptrace.parsers.resolv_conf import DIRECTIVES, parse_resolv_conf

ETC_RESOLV = "/etc/resolv.conf"
SYSTEMD_RESOLV = "/run/systemd/resolve/resolv.conf"
SYSTEMD_STUB = "/run/systemd/resolve/stub-resolv.conf"
# Bundle file -> the node's file it is a copy of.
RESOLV_FILES = {"resolv.conf": ETC_RESOLV, "etc-resolv.conf": ETC_RESOLV,
                "systemd-resolved-resolv.conf": SYSTEMD_RESOLV}
KUBELET_FILES = {"kubelet-config.yaml": "kubelet-config", "kubelet-cmdline.txt": "kubelet-cmdline"}
BUNDLE_NAMES = {**{n: "resolv-conf" for n in RESOLV_FILES}, **KUBELET_FILES}
KINDS = frozenset({"resolv-conf", "kubelet-config", "kubelet-cmdline"})
_DIRECTIVE_RE = re.compile(rf"^\s*({'|'.join(sorted(DIRECTIVES))})(\s|$)")


def sniff_dns(bundle: str | None, text: str) -> str | None:
    """The kind of a DNS input, or None when it is not one (the other sniffers decide then)."""
    head = text[:65536]
    if bundle == "kubelet-config" or is_kubelet_config(head):
        return "kubelet-config"
    if bundle == "kubelet-cmdline" or (bundle is None and is_kubelet_cmdline(head)):
        return "kubelet-cmdline"
    if bundle == "resolv-conf":
        lines = [ln for ln in head.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", ";"))]
        # Its own file: read as resolv.conf when most of it is (one odd line is said, not a reason to sniff).
        if sum(1 for ln in lines if _DIRECTIVE_RE.match(ln)) * 2 >= len(lines):
            return "resolv-conf"
    return None


def load_dns_file(node: Node, kind: str, text: str, label: str, base: str) -> None:
    """Parse one DNS input into the node (the loader has checked the kind)."""
    from kptrace.load import _tolerant

    if kind == "resolv-conf":
        path = RESOLV_FILES.get(base)
        node.resolv_conf.extend(_tolerant(node, lambda t, f: parse_resolv_conf(t, f, path=path, empty_ok=True),
                                          text, label))
    elif kind == "kubelet-config":
        node.kubelet_dns = (node.kubelet_dns or []) + [parse_kubelet_config(text, label)]
    elif kind == "kubelet-cmdline":
        node.kubelet_dns = (node.kubelet_dns or []) + [_tolerant(node, parse_kubelet_cmdline, text, label)]
