"""Parse `kubectl get node NAME -o yaml` (or `-o json`, or a List of nodes) into KubeNodes.

Forms accepted:

    apiVersion: v1
    kind: Node                                    (or kind: List / NodeList with items: [...])
    metadata:
      annotations:
        flannel.alpha.coreos.com/backend-data: '{"VNI":1,"VtepMAC":"5a:f0:83:27:c4:9e"}'
        flannel.alpha.coreos.com/backend-type: vxlan
        flannel.alpha.coreos.com/public-ip: 192.168.56.12
      name: node-b
    spec:
      podCIDR: 10.244.2.0/24
      podCIDRs: [10.244.2.0/24]
    status:
      addresses:
      - {address: 192.168.56.12, type: InternalIP}
      - {address: node-b, type: Hostname}

Only what kptrace uses is read: the name, addresses, pod CIDRs and flannel's annotations (the VTEP MAC
and underlay address every other node's flannel.1 neighbour and fdb entry must carry for this node).

`kubectl get nodes` (`-o wide`) prints a table instead (parse_kube_node_table); it shows that the
nodes are Kubernetes nodes, their names and, with `-o wide`, their addresses:

    NAME     STATUS   ROLES    AGE   VERSION   INTERNAL-IP    EXTERNAL-IP   OS-IMAGE   KERNEL-VERSION   CONTAINER-RUNTIME
    node85   Ready    master   8d    v1.15.6   10.99.212.85   <none>        CentOS 7   3.10.0-957.el7   docker://18.9.6
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from kptrace.errors import ParseError
from kptrace.model.observed import KubeNode
from kptrace.model.source import Source

FLANNEL = "flannel.alpha.coreos.com/"


def parse_kube_nodes(text: str, file: str = "node.yaml") -> list[KubeNode]:
    doc = _load(text, file)
    items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") in ("List", "NodeList") else [doc]
    if not isinstance(items, list):
        raise ParseError(file, 1, 1, "expected a Node or a List of Nodes")
    lines = text.splitlines()
    out: list[KubeNode] = []
    start = 0
    for item in items:
        if not isinstance(item, dict) or item.get("kind", "Node") != "Node":
            continue
        meta = item.get("metadata") if isinstance(item.get("metadata"), dict) else {}
        assert isinstance(meta, dict)
        name = str(meta.get("name") or "")
        if not name:
            raise ParseError(file, 1, 1, "a Node without metadata.name")
        lineno = _line_of(lines, name, start)
        start = lineno
        ann = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
        assert isinstance(ann, dict)
        spec = item.get("spec") if isinstance(item.get("spec"), dict) else {}
        status = item.get("status") if isinstance(item.get("status"), dict) else {}
        assert isinstance(spec, dict) and isinstance(status, dict)
        cidrs = [str(c) for c in spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])]
        addrs = tuple((str(a.get("type", "")), str(a.get("address", ""))) for a in status.get("addresses") or []
                      if isinstance(a, dict) and a.get("address"))
        vtep = None
        data = ann.get(FLANNEL + "backend-data")
        if isinstance(data, str) and data.strip():
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("VtepMAC"), str):
                vtep = parsed["VtepMAC"].lower()
        public = ann.get(FLANNEL + "public-ip")
        btype = ann.get(FLANNEL + "backend-type")
        out.append(KubeNode(name, Source(file, lineno, 1, lines[lineno - 1] if lines else ""), addrs, tuple(cidrs),
                            str(btype) if btype else None, vtep, str(public) if public else None))
    return out


TABLE_HEADER_RE = re.compile(r"^\s*NAME\s+STATUS\s+ROLES\s+AGE\s+VERSION\b")
_TABLE_ADDRESSES = (("INTERNAL-IP", "InternalIP"), ("EXTERNAL-IP", "ExternalIP"))


def parse_kube_node_table(text: str, file: str = "kubectl-get-nodes.txt") -> list[KubeNode]:
    """`kubectl get nodes [-o wide]`: one KubeNode per row (its name; with -o wide its addresses).

    Columns are found by the header's word positions (OS-IMAGE holds spaces); a row whose first
    word is not a node name raises ParseError."""
    lines = text.splitlines()
    head = next((i for i, ln in enumerate(lines) if TABLE_HEADER_RE.match(ln)), None)
    if head is None:
        raise ParseError(file, 1, 1, "expected the header of `kubectl get nodes` (NAME STATUS ROLES AGE VERSION …)")
    header = lines[head]
    cols = {m.group(0): m.start() for m in re.finditer(r"\S+", header)}
    out: list[KubeNode] = []
    for n, line in enumerate(lines[head + 1:], start=head + 2):
        if not line.strip():
            continue
        words = line.split()
        if len(words) < 5 or not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", words[0]):
            raise ParseError(file, n, 1, "expected a node row (NAME STATUS ROLES AGE VERSION …)", line)
        addrs: list[tuple[str, str]] = []
        for col, typ in _TABLE_ADDRESSES:
            start = cols.get(col)
            if start is None or len(words) < 7:
                continue
            value = line[start:].split(None, 1)[0] if line[start:start + 1].strip() else ""
            if value and value != "<none>":
                addrs.append((typ, value))
        out.append(KubeNode(words[0], Source(file, n, 1, line), tuple(addrs)))
    return out


def _load(text: str, file: str) -> Any:
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except RecursionError as e:  # absurd nesting
            from kptrace.parsers.json_limits import recursion_message

            raise ParseError(file, 1, 1, recursion_message(e)) from None
        except ValueError as e:
            raise ParseError(file, getattr(e, "lineno", 1), getattr(e, "colno", 1), "invalid JSON") from None
    import yaml

    from kptrace.parsers.yaml_limits import check_yaml

    check_yaml(text, file, "kubectl's node listing")
    try:
        return yaml.safe_load(io.StringIO(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = (mark.line + 1) if mark else 1
        lines = text.splitlines()
        raise ParseError(file, line, (mark.column + 1) if mark else 1, "invalid YAML",
                         lines[line - 1] if 0 < line <= len(lines) else "") from None


def _line_of(lines: list[str], name: str, start: int) -> int:
    rx = re.compile(rf"^\s*\"?name\"?\s*:\s*[\"']?{re.escape(name)}[\"']?,?\s*$")
    for i in range(start, len(lines)):
        if rx.match(lines[i]):
            return i + 1
    return 1
