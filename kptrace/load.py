"""Read --dump inputs (files, bundle directories, .tar.gz bundles) into a Node.

A bundle names each file after the command that produced it (docs/bundle.md); a file with any
other name is recognised by its content. Every input is listed with its sha256 in the output.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from importlib import resources
from itertools import islice
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, Literal, overload

from kptrace import cache
from kptrace.errors import InputError, ParseError
from kptrace.model.netfilter import Ruleset, Table
from kptrace.model.node import Node
from kptrace.model.trace import InputFile
from kptrace.model.routing import Route
from kptrace.parsers.bridge import parse_brctl_show, parse_bridge_fdb, parse_bridge_link
from kptrace.parsers.flannel import parse_flannel_subnet
from kptrace.parsers.ip_addr import parse_ip_addr
from kptrace.parsers.ip_link import parse_ip_link
from kptrace.parsers.ip_neigh import parse_ip_neigh
from kptrace.parsers.ip_route import parse_ip_route
from kptrace.parsers.ip_rule import parse_ip_rule
from kptrace.parsers.modules import parse_modules
from kptrace.parsers.iptables_save import parse_iptables_save
from kptrace.parsers.iptables_scan import HINTS_FORMAT, scan_iptables_save
from kptrace.parsers.sysctl import parse_sysctl
from kptrace.walkers.kube_jumps import add_kube_proxy_jumps

# Parsers for pastes, nftables and IPVS are imported when a file of theirs turns up: most dumps are
# iptables-save plus iproute2, and a query's start-up time is part of what an SRE waits for.


def sniff_paste(text: str) -> str | None:
    from kptrace.parsers.paste import sniff_paste as sniff

    return sniff(text)


def is_nft_json(text: str) -> bool:
    from kptrace.parsers.nft_json import is_nft_json as check

    return check(text)


STRICT = [False]  # --strict: parse every rule of every dump, whatever its size
MAX_INPUT_BYTES = 512 * 1024 * 1024  # past this a "dump" is not one; refuse rather than exhaust memory
MAX_LINE_BYTES = 1024 * 1024  # no command prints a longer line; one would only make every parser slow
# Plain files this large are mapped, not read (MappedFile); all of them when every dump is read lazily.
MAP_MIN_BYTES = 4 * 1024 * 1024 if os.environ.get("KPTRACE_LAZY_MIN_LINES", "") != "0" else 0
DUMP_KINDS = ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save")

# Bundle file name -> kind. Names not listed are sniffed.
BUNDLE_NAMES = {
    "iptables-save.txt": "iptables-save",
    "iptables-nft-save.txt": "iptables-save",
    "iptables-legacy-save.txt": "iptables-legacy-save",
    "ip6tables-legacy-save.txt": "ip6tables-legacy-save",
    "ip6tables-nft-save.txt": "ip6tables-save",
    "ip6tables-save.txt": "ip6tables-save",
    "ip-addr.txt": "ip-addr", "ip-addr.json": "ip-addr",
    "ip-route.txt": "ip-route", "ip-route.json": "ip-route",
    "ip-6-route.txt": "ip-route", "ip-6-route.json": "ip-route",
    "ip-rule.txt": "ip-rule", "ip-rule.json": "ip-rule", "ip-6-rule.txt": "ip-rule", "ip-6-rule.json": "ip-rule",
    "ip-link.txt": "ip-link", "ip-link.json": "ip-link",
    "ip-neigh.txt": "ip-neigh", "ip-neigh.json": "ip-neigh",
    "bridge-fdb.txt": "bridge-fdb", "bridge-fdb.json": "bridge-fdb",
    "bridge-link.txt": "bridge-link", "bridge-link.json": "bridge-link",
    "brctl-show.txt": "brctl-show",
    "flannel-subnet.env": "flannel-subnet", "subnet.env": "flannel-subnet",
    "modules.txt": "modules", "lsmod.txt": "modules",
    "sysctl.txt": "sysctl",
    "node.yaml": "node-meta",
    "nft-ruleset.txt": "nft-ruleset", "nft-ruleset.json": "nft-ruleset",
    "ipset-save.txt": "ipset", "ipset-list.txt": "ipset",
    "ipvsadm.txt": "ipvsadm", "ipvsadm-save.txt": "ipvsadm",
}
# Files a bundle may hold that `why` does not read (checks read some of them); listed, not parsed.
PASSIVE_KINDS = {
    "hostname": re.compile(r"^hostname"), "manifest": re.compile(r"^manifest"), "services": re.compile(r"^services"),
    "conntrack": re.compile(r"^conntrack"),
    "readme": re.compile(r"(?i)^(readme|source)"),
}


def demo_path() -> Path:
    """The demo cluster (node-a and node-b); traces start on node-a unless the source says otherwise."""
    return Path(str(resources.files("kptrace") / "demo" / "cluster"))


def decode(data: bytes | MappedFile, label: str) -> str:
    if isinstance(data, MappedFile):
        data = data.mm[:]
    _check_bytes(data, label)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        col = e.start - (before.rfind(b"\n") + 1) + 1
        raise ParseError(label, line, col, f"invalid UTF-8 byte 0x{data[e.start]:02x}") from None


def _check_bytes(data: bytes | mmap.mmap, label: str) -> None:
    if b"\x00" in data[:65536] or b"\x00" in data[-65536:]:
        raise InputError(f"{label}:1:1: binary data (NUL bytes), not a command's text output")
    _check_line_length(data, label)


def _check_line_length(data: bytes | mmap.mmap, label: str) -> None:
    if len(data) <= MAX_LINE_BYTES:
        return
    # Every half-limit window holding a newline means no line reaches the limit: ~70 C-level finds for
    # 34 MB instead of a Python step per line. Only a window without one is looked at line by line.
    half = MAX_LINE_BYTES // 2
    for w in range(0, len(data), half):
        if data.find(b"\n", w, w + half) < 0 and len(data) - w > half:
            start = data.rfind(b"\n", 0, w) + 1
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end
            if stop - start > MAX_LINE_BYTES:
                line = data[:start].count(b"\n") + 1
                raise ParseError(label, line, 1, f"line {line} is {stop - start} bytes long, more than any command "
                                                 f"prints ({MAX_LINE_BYTES // 1024} KiB max): not a command's text output")


def _is_dump_header(first: str) -> bool:
    return first.startswith(("# Generated by iptables-save", "# Generated by ip6tables-save")) or \
        re.fullmatch(r"\*(filter|nat|mangle|raw|security)\s*", first) is not None


def _large_dump_kind(name: str, label: str, f: MappedFile) -> str | None:
    """The kind of a large file when its head alone tells it is an iptables-save dump (read lazily,
    from the mapped bytes); None sends it through the full decode and sniff."""
    if STRICT[0]:
        return None
    _check_bytes(f.mm, label)
    head = f.mm[:262144].decode("utf-8", "ignore")
    if "\n*" not in "\n" + head[:200000]:
        return None
    if name.rsplit("/", 1)[-1] not in BUNDLE_NAMES and not _is_dump_header(head.lstrip().split("\n", 1)[0]):
        return None
    kind = sniff(name, head)
    return kind if kind in DUMP_KINDS else None


def sniff(name: str, text: str) -> str | None:
    base = name.rsplit("/", 1)[-1]
    if base in BUNDLE_NAMES:
        kind = BUNDLE_NAMES[base]
        # iptables-save.txt holding `iptables -L`/`-S` output or a grep (no `*table` line): read it as a paste.
        if "tables" in kind and "\n*" not in "\n" + text[:200000] and sniff_paste(text):
            return "paste"
        return kind
    head = text.lstrip()[:4096]
    # A plain iptables-save dump (what most inputs are) is known by its first line; the paste
    # sniffer below reads line by line, which a 400k-line dump should not pay for.
    first = head.split("\n", 1)[0]
    if _is_dump_header(first):
        return "ip6tables-save" if "ip6tables" in base or "ip6tables-save" in first else "iptables-save"
    # Listings, -S output, excerpts, route -n/arp/conntrack output, shell prompts, mixed pastes.
    if sniff_paste(text):
        return "paste"
    # `nft list ruleset` (or an `nft -f` file of `add …` commands) and `nft -j list ruleset`.
    if is_nft_json(head) or re.search(r"^\s*(table|add table|add chain|add rule) (ip|ip6|inet|arp|bridge|netdev) \S+", head, re.M):
        return "nft-ruleset"
    if head.startswith("["):
        for key, kind in (('"addr_info"', "ip-addr"), ('"linkinfo"', "ip-link"), ('"link_type"', "ip-link"),
                          ('"priority"', "ip-rule"), ('"lladdr"', "ip-neigh"), ('"mac"', "bridge-fdb"),
                          ('"dst"', "ip-route")):
            if key in head:
                return kind
    if re.search(r"^\*(filter|nat|mangle|raw|security)\s*$", text[:200000], re.M) or "iptables-save v" in head[:200]:
        return "ip6tables-save" if "ip6tables" in base or "ip6tables-save" in head[:200] else "iptables-save"
    if re.search(r"^\d+: [^:]+: <", head, re.M) and re.search(r"^\s+inet6? ", head, re.M):
        return "ip-addr"
    if re.match(r"^(net|kernel|vm|fs)\.[\w.\-/]+\s*=", head):
        return "sysctl"
    if re.search(r"^\d+: [^:]+: <", head, re.M):
        return "ip-link"
    if re.search(r"^\d+:\s+(not )?from ", head, re.M):
        return "ip-rule"
    if re.search(r"^(default|[0-9a-f.:]+(/\d+)?) (via|dev) ", head, re.M):
        return "ip-route"
    if re.search(r"^\S+ dev \S+ lladdr ", head, re.M):
        return "ip-neigh"
    if re.search(r"^FLANNEL_(NETWORK|SUBNET)=", head, re.M):
        return "flannel-subnet"
    # Pasted `ipvsadm -Ln` / `ipvsadm -Sn` / `ipset save` / `ipset list` output.
    if re.search(r"^(IP Virtual Server version |Prot LocalAddress:Port|-A (-t|-u|-f|--sctp-service) )", head, re.M):
        return "ipvsadm"
    if re.search(r"^create \S+ (hash|bitmap|list):", head, re.M) or re.search(r"^Name: \S+\nType: (hash|bitmap|list):", head, re.M):
        return "ipset"
    return None


class MappedFile:
    """A large plain input file, mapped read-only instead of read: the lazy iptables-save scan decodes
    only the parts a walk reads, and the page cache holds the bytes once."""

    __slots__ = ("path", "stat", "mm")

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            self.stat = os.fstat(f.fileno())
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.path = str(path)


def _read_file(p: Path, mapped: bool) -> bytes | MappedFile:
    if mapped and p.stat().st_size >= max(MAP_MIN_BYTES, 1):
        return MappedFile(p)
    return p.read_bytes()


@overload
def _read_entries(path: Path, mapped: Literal[False] = False) -> Iterator[tuple[str, bytes]]: ...


@overload
def _read_entries(path: Path, mapped: Literal[True]) -> Iterator[tuple[str, bytes | MappedFile]]: ...


def _read_entries(path: Path, mapped: bool = False) -> Iterator[tuple[str, bytes | MappedFile]]:
    """(label, bytes) of every file in path; with `mapped`, large plain files come as a MappedFile."""
    if path.is_dir():
        # Text before JSON of the same command, so steps cite the form people read.
        for p in sorted(path.rglob("*"), key=lambda q: (str(q.parent), q.stem, q.suffix != ".txt", q.name)):
            if p.is_file():
                yield str(p), _read_file(p, mapped)
        return
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise InputError(f"{path}: {path.stat().st_size} bytes is larger than any node dump ({MAX_INPUT_BYTES} max)")
    if tarfile.is_tarfile(path):
        # Read members in memory: a bundle is never unpacked onto the disk.
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.isfile():
                    f = tar.extractfile(m)
                    if f is not None:
                        yield f"{path}:{m.name}", f.read()
        return
    yield str(path), _read_file(path, mapped)


def _node_dirs(path: Path) -> list[Path]:
    """A bundle directory is one node; a directory holding only bundle directories is a cluster."""
    if not path.is_dir():
        return [path]
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if files or not subdirs:
        return [path]
    return subdirs


def load_cluster(paths: list[Path], node_ips: list[str] | None = None, pod_cidrs: list[str] | None = None) -> list[Node]:
    """One Node per bundle directory; loose files (pasted dumps) together make one more node."""
    groups: list[list[Path]] = []
    loose: list[Path] = []
    for p in paths:
        if p.is_dir():
            groups.extend([d] for d in _node_dirs(p))
        else:
            loose.append(p)
    if loose:
        # Pasted files and --node-ip describe the node the user is asking about: trace starts there.
        groups.insert(0, loose)
    if not groups:
        raise InputError("no input: give --dump PATH (a file, a bundle directory or .tar.gz)")
    nodes = []
    for i, group in enumerate(groups):
        ips = node_ips if i == 0 else None
        nodes.append(load_node(group, ips, pod_cidrs))
    names = [n.name for n in nodes]
    for i, n in enumerate(nodes):
        if names.count(n.name) > 1 or n.name == "node":
            n.name = _name_from(groups[i], i)
    return nodes


def _name_from(group: list[Path], i: int) -> str:
    return group[0].name.removesuffix(".tar.gz").removesuffix(".tgz") if group[0].is_dir() or group[0].suffix in (".gz", ".tgz") else f"node{i + 1}"


def load_node(paths: list[Path], node_ips: list[str] | None = None, pod_cidrs: list[str] | None = None) -> Node:
    node = _new_node(node_ips, pod_cidrs)
    for p in paths:
        for label, data in _read_entries(p, mapped=True):
            _load_one(node, _short(label, p), data, in_bundle=p.is_dir() or label != str(p))
    return _finish_node(node, ", ".join(str(p) for p in paths))


def load_node_from_texts(files: dict[str, bytes], node_ips: list[str] | None = None,
                         pod_cidrs: list[str] | None = None, labels: dict[str, str] | None = None) -> Node:
    """A Node from bundle files held in memory (bundle file name -> bytes), in the order given.

    `kptrace collect` and the live `why` capture the same texts a bundle holds and hand them here,
    so a live node and its bundle go through one parse path. `labels` gives the name each file is
    cited by (default: its bundle name); the bundle name still decides its kind.
    """
    node = _new_node(node_ips, pod_cidrs)
    labels = labels or {}
    for name, data in files.items():
        _load_one(node, labels.get(name, name), data, in_bundle=True, name=name)
    return _finish_node(node, ", ".join(labels.get(n, n) for n in files) or "no files")


def _new_node(node_ips: list[str] | None, pod_cidrs: list[str] | None) -> Node:
    node = Node()
    for raw in node_ips or []:
        try:
            node.node_ips.append(ip_address(raw))
        except ValueError:
            raise InputError(f"--node-ip: '{raw}' is not an IP address") from None
    for raw in pod_cidrs or []:
        try:
            node.pod_cidrs.append(ip_network(raw, strict=False))
        except ValueError:
            raise InputError(f"--pod-cidr: '{raw}' is not a CIDR") from None
    return node


def _finish_node(node: Node, where: str) -> Node:
    for fam, legacy in list(node.legacy_rulesets.items()):
        if not legacy.tables:
            del node.legacy_rulesets[fam]
        elif fam not in node.rulesets:
            # Only the legacy backend holds rules: it is the node's iptables.
            node.rulesets[fam] = node.legacy_rulesets.pop(fam)
    if node.nft is not None:
        for fam in (4, 6):
            if fam not in node.rulesets:
                # The nft ruleset lists every nf_tables table, iptables-nft's included.
                node.rulesets[fam] = Ruleset(getattr(node.nft, "file", "nft"), fam)
    if not node.rulesets:
        raise InputError(f"no iptables-save dump in the input ({where}); give --dump FILE or a bundle directory")
    for rs in [*node.rulesets.values(), *node.legacy_rulesets.values()]:
        add_kube_proxy_jumps(rs)
    if not node.pod_cidrs:
        _infer_pod_cidrs(node)
    if node.nft is not None:
        from kptrace.walkers.nft import reconcile

        reconcile(node)
    return node


def _short(label: str, root: Path) -> str:
    """Cite bundle files by their path inside the bundle, as users see them in a listing."""
    if root.is_dir():
        try:
            return str(Path(label).relative_to(root.parent))
        except ValueError:
            return label
    return label


def _load_one(node: Node, label: str, data: bytes | MappedFile, in_bundle: bool = False, name: str | None = None) -> None:
    if isinstance(data, MappedFile):
        digest = cache.file_digest(data.path, data.stat, data.mm)
    else:
        digest = hashlib.sha256(data).hexdigest()
    base = (name or label).rsplit("/", 1)[-1]
    if any(rx.match(base) for rx in PASSIVE_KINDS.values()):
        return
    if isinstance(data, MappedFile):
        kind = _large_dump_kind(name or label, label, data)
        if kind is not None:
            if _load_dump(node, label, kind, data.mm, digest):
                node.inputs.append(InputFile(label, kind, digest))
            return
    text = decode(data, label)
    kind = sniff(name or label, text)
    if kind is None:
        if not text.strip():
            return
        if in_bundle:
            # A bundle may carry extra files (notes, outputs of later versions): say so, go on.
            node.assumptions.append(f"{label} was not recognised and is not used")
            return
        raise InputError(f"{label}:1:1: cannot tell what command produced this file (see docs/bundle.md for names)")
    if kind in DUMP_KINDS:
        if not _load_dump(node, label, kind, text, digest):
            return
    elif kind == "ip-addr":
        # A bundle may hold `ip addr` both as text and as JSON: the same address counts once.
        seen = {(a.iface, a.address) for a in node.addresses}
        node.addresses.extend(a for a in parse_ip_addr(text, label) if (a.iface, a.address) not in seen)
    elif kind in _LIST_KINDS:
        parse, attr, key = _LIST_KINDS[kind]
        current = getattr(node, attr)
        seen_keys = {key(x) for x in current}
        # Text and JSON of one command, or `ip route show table all` and `ip -6 route` (which overlap):
        # the same entry counts once, cited where it was first read.
        current.extend(x for x in parse(text, label) if key(x) not in seen_keys)
    elif kind == "flannel-subnet":
        node.flannel = parse_flannel_subnet(text, label)
    elif kind == "modules":
        node.modules = (node.modules or []) + parse_modules(text, label)
    elif kind == "sysctl":
        node.sysctls.update(parse_sysctl(text, label))
    elif kind == "node-meta":
        _node_meta(node, text, label)
    elif kind == "paste":
        from kptrace.parsers.paste import apply_to_node, parse_paste, paste_kind

        pasted = parse_paste(text, label)
        apply_to_node(node, pasted)
        kind = paste_kind(pasted)
    elif kind == "nft-ruleset":
        if node.nft is not None:
            # nft-ruleset.txt and .json are the same command's output: the text (read first) is cited.
            node.assumptions.append(f"{label} was not read: the nft ruleset is read from {getattr(node.nft, 'file', '?')}")
            return
        from kptrace.parsers.nft_json import parse_nft_json
        from kptrace.parsers.nft_text import parse_nft_text

        node.nft = parse_nft_json(text, label) if is_nft_json(text) else parse_nft_text(text, label, lazy=not STRICT[0])
        node.assumptions.extend(node.nft.assumptions)  # a large dump read lazily says so
    elif kind == "ipset":
        # `ipset save` and `ipset list` of the same node name the same sets: the first read wins.
        from kptrace.parsers.ipset import parse_ipset

        sets = parse_ipset(text, label)
        node.ipsets = {**sets, **(node.ipsets or {})}
    elif kind == "ipvsadm":
        from kptrace.parsers.ipvsadm import parse_ipvsadm

        table = parse_ipvsadm(text, label)
        if table.services or not table.connections:  # a connection list alone (-Lnc) says nothing of the services
            known = {str(s) for s in node.ipvs or []}
            node.ipvs = (node.ipvs or []) + [s for s in table.services if str(s) not in known]
        node.assumptions.extend(table.notes)
    node.inputs.append(InputFile(label, kind, digest))


def _load_dump(node: Node, label: str, kind: str, data: str | mmap.mmap, digest: str) -> bool:
    """An iptables-save dump into node.rulesets (or legacy_rulesets); False if it adds nothing."""
    if digest in {i.sha256 for i in node.inputs}:
        # iptables-save.txt is whichever backend the node's iptables points at: a copy of one we read.
        node.assumptions.append(f"{label} is identical to another dump in the input and was read once")
        return False
    family = 6 if kind.startswith("ip6") else None
    if STRICT[0]:
        rs = parse_iptables_save(data if isinstance(data, str) else decode(data[:], label), label, family).ruleset
    else:
        hints = cache.get(digest)
        if hints is not None and hints.get("format") != HINTS_FORMAT:
            hints = None  # written by another version of the scanner: scan again, and replace it
        rs = scan_iptables_save(data, label, family, hints)
        if rs.scan_hints is not None and hints is None:
            cache.put(digest, rs.scan_hints)
    if "legacy" not in kind and rs.family in node.coverage:
        from kptrace.parsers.paste import drop_partial

        drop_partial(node, rs.family, label)  # a whole dump supersedes listings and excerpts read before it
    slot = node.legacy_rulesets if "legacy" in kind else node.rulesets
    if rs.family in slot and slot[rs.family].tables:
        if not rs.tables:
            return False
        raise InputError(f"{label}: a second IPv{rs.family} ruleset (already read {slot[rs.family].file}); "
                         "name the backends iptables-nft-save.txt and iptables-legacy-save.txt")
    if rs.tables or rs.family not in slot:
        slot[rs.family] = rs
    return True


def _route_key(r: Route) -> object:
    return (r.table, r.type, r.dst, r.nexthops, r.metric, r.src, r.proto, r.scope)


_LIST_KINDS: dict[str, tuple[Callable[[str, str], list[Any]], str, Callable[[Any], object]]] = {
    "ip-route": (parse_ip_route, "routes", _route_key),
    "ip-rule": (parse_ip_rule, "policy_rules", lambda r: (r.priority, r.action, r.table, r.src, r.dst, r.iif, r.oif, r.fwmark, r.invert)),
    "ip-link": (parse_ip_link, "links", lambda x: x.name),
    "ip-neigh": (parse_ip_neigh, "neighbors", lambda n: (n.dst, n.dev, n.lladdr)),
    "bridge-fdb": (parse_bridge_fdb, "fdb", lambda f: (f.mac, f.dev, f.master, f.dst, f.vlan)),
    "bridge-link": (parse_bridge_link, "bridge_ports", lambda b: b.name),
    "brctl-show": (parse_brctl_show, "bridge_ports", lambda b: b.name),
}


def _node_meta(node: Node, text: str, label: str) -> None:
    import yaml

    try:
        meta = yaml.safe_load(io.StringIO(text)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ParseError(label, (mark.line + 1) if mark else 1, (mark.column + 1) if mark else 1, "invalid YAML") from None
    if not isinstance(meta, dict):
        raise ParseError(label, 1, 1, "expected a mapping (name, node_ips, pod_cidr)")
    node.name = str(meta.get("name", meta.get("node_name", node.name)))
    for ip in meta.get("node_ips", []) or []:
        a = ip_address(str(ip))
        if a not in node.node_ips:
            node.node_ips.append(a)
    # `pod_cidr` is the node's own /24 (kubectl get node); `cluster_cidr` is the whole pod network.
    if meta.get("pod_cidr"):
        node.pod_subnet = ip_network(str(meta["pod_cidr"]), strict=False)
    if meta.get("cluster_cidr") and not node.pod_cidrs:
        node.pod_cidrs.append(ip_network(str(meta["cluster_cidr"]), strict=False))


_MASQ_RE = re.compile(r"! -s (\S+) .*-j KUBE-MARK-MASQ")


def _sample_service_chains(nat: Table, n: int = 50) -> list[str]:
    """Up to n KUBE-SVC-* chains: the targets of KUBE-SERVICES' first rules (on a 10k-service dump
    the declarations list 100k KUBE-SEP-* chains before the first KUBE-SVC-*)."""
    services = nat.chains.get("KUBE-SERVICES")
    if services is None:
        return list(islice((name for name in nat.chains if name.startswith("KUBE-SVC-")), n))
    out: list[str] = []
    for i in range(min(len(services), 4 * n)):
        target = services.rule_at(i).target
        if target is not None and target.name.startswith("KUBE-SVC-") and target.name in nat.chains \
                and target.name not in out:
            out.append(target.name)
            if len(out) == n:
                break
    return out


def _infer_pod_cidrs(node: Node) -> None:
    """kube-proxy's local-traffic detector writes the cluster CIDR into every KUBE-SVC masquerade rule."""
    for rs in node.rulesets.values():
        nat = rs.tables.get("nat")
        if nat is None:
            continue
        # Reading a few KUBE-SVC chains is enough; a large dump's other chains stay unparsed.
        svc = _sample_service_chains(nat)
        for name in svc:
            for r in nat.chains[name].rules:
                if r.src is not None and r.src.negated and r.target and r.target.name == "KUBE-MARK-MASQ":
                    net = r.src.value[0]
                    node.pod_cidrs.append(net)
                    node.assumptions.append(f"pod CIDR {net}, read from kube-proxy's masquerade rule at {r.source}")
                    return


