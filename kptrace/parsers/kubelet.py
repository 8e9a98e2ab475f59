"""kubelet's DNS settings: its config file (KubeletConfiguration) and its command line.

Forms accepted:

    resolvConf: /run/systemd/resolve/resolv.conf          kubelet-config.yaml (/var/lib/kubelet/config.yaml)
    clusterDNS:                                           a block list, or clusterDNS: [10.96.0.10]
    - 10.96.0.10
    clusterDomain: cluster.local
    /usr/bin/kubelet                                      kubelet-cmdline.txt: one argument per line
    --resolv-conf=/run/systemd/resolve/resolv.conf        (/proc/PID/cmdline), or on one line as ps prints it
    --cluster-dns 10.96.0.10,fd00::a   --cluster-domain=cluster.local   --config=/var/lib/kubelet/config.yaml

Only these keys are read; the rest of the file is kubelet's business. On the command line a flag
overrides the config file (kubelet's own precedence), which `effective` applies.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from kptrace.errors import ParseError
from kptrace.model.observed import KubeletDNS
from kptrace.model.source import Source

_KEYS = ("resolvConf", "clusterDNS", "clusterDomain")
_FLAGS = {"--resolv-conf": "resolv_conf", "--cluster-dns": "cluster_dns", "--cluster-domain": "cluster_domain",
          "--config": "config_path"}


def is_kubelet_config(text: str) -> bool:
    return re.search(r"^kind:\s*KubeletConfiguration\s*$", text[:65536], re.M) is not None or \
        re.search(r'"kind":\s*"KubeletConfiguration"', text[:65536]) is not None


def is_kubelet_cmdline(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0].replace("\0", " ").split(" ", 1)[0]
    return re.fullmatch(r"(\S*/)?kubelet", first) is not None


def parse_kubelet_config(text: str, file: str = "kubelet-config.yaml") -> KubeletDNS:
    """The DNS keys of a KubeletConfiguration (YAML or JSON), each with the line it is on."""
    import yaml

    from kptrace.parsers.yaml_limits import check_yaml

    check_yaml(text, file, "a KubeletConfiguration")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise ParseError(file, line, col, f"not YAML: {getattr(e, 'problem', None) or e}") from None
    whole = Source(file, 1, 1, text.split("\n", 1)[0])
    if root is None:
        return KubeletDNS(source=whole)
    if not isinstance(root, yaml.MappingNode):
        raise ParseError(file, root.start_mark.line + 1, root.start_mark.column + 1,
                         "a kubelet config file is a mapping (kind: KubeletConfiguration)")
    lines = text.splitlines()

    def src(node: Any) -> Source:
        ln = node.start_mark.line
        return Source(file, ln + 1, node.start_mark.column + 1, lines[ln] if ln < len(lines) else "")

    found: dict[str, Any] = {}
    for key_node, value in root.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key not in _KEYS:
            continue
        if key == "clusterDNS":
            if not isinstance(value, yaml.SequenceNode):
                raise ParseError(file, value.start_mark.line + 1, value.start_mark.column + 1,
                                 "clusterDNS is a list of addresses")
            found[key] = tuple((str(v.value), src(v)) for v in value.value if isinstance(v, yaml.ScalarNode))
        elif isinstance(value, yaml.ScalarNode):
            found[key] = (str(value.value) if value.value is not None else "", src(key_node))
        else:
            raise ParseError(file, value.start_mark.line + 1, value.start_mark.column + 1, f"{key} is a string")
    return KubeletDNS(found.get("resolvConf"), found.get("clusterDNS", ()), found.get("clusterDomain"), source=whole)


def parse_kubelet_cmdline(text: str, file: str = "kubelet-cmdline.txt") -> KubeletDNS:
    """kubelet's DNS flags from its command line (one argument per line, NUL-separated, or ps's one line)."""
    found: dict[str, Any] = {}
    for lineno, raw in enumerate(text.replace("\0", "\n").splitlines(), start=1):
        line = raw.rstrip("\r")
        try:
            words = shlex.split(line) if ("'" in line or '"' in line) else line.split()
        except ValueError as e:
            raise ParseError(file, lineno, 1, f"unbalanced quotes: {e}", line) from None
        i = 0
        while i < len(words):
            w = words[i]
            name, eq, value = w.partition("=")
            attr = _FLAGS.get(name)
            if attr is not None:
                if not eq:
                    if i + 1 >= len(words) and lineno == len(text.splitlines()):
                        raise ParseError(file, lineno, line.find(w) + 1, f"{name} without a value", line)
                    value = words[i + 1] if i + 1 < len(words) else _next_arg(text, lineno)
                    i += 1
                src = Source(file, lineno, max(line.find(name), 0) + 1, line)
                if attr == "cluster_dns":
                    found[attr] = tuple((v, src) for v in value.split(",") if v)
                else:
                    found[attr] = (value, src)
            i += 1
    return KubeletDNS(found.get("resolv_conf"), found.get("cluster_dns", ()), found.get("cluster_domain"),
                      found.get("config_path"), "flags", Source(file, 1, 1, text.replace("\0", "\n").split("\n", 1)[0]))


def _next_arg(text: str, lineno: int) -> str:
    """`--resolv-conf` on one line and its value on the next (the one-argument-per-line form)."""
    rest = text.replace("\0", "\n").splitlines()[lineno:lineno + 1]
    return rest[0].strip() if rest else ""


def effective(settings: list[KubeletDNS]) -> KubeletDNS:
    """What kubelet uses: a flag on its command line overrides the config file's key (kubelet's precedence),
    whatever order the inputs came in."""
    out = KubeletDNS()
    for s in sorted(settings, key=lambda s: s.origin == "flags"):
        out = KubeletDNS(s.resolv_conf or out.resolv_conf, s.cluster_dns or out.cluster_dns,
                         s.cluster_domain or out.cluster_domain, s.config_path or out.config_path, s.origin,
                         out.source or s.source)
    return out
