"""Structured mutators for the fuzz targets whose inputs are not lines of text (issue 20, "How it is checked").

Each takes a random generator and an input body (the bytes after the target byte) and returns a new body:

- `archive`: bundle tarballs cut short, bit-flipped, recompressed (gzip, bzip2, xz, none), with members
  that lie (sizes, sparse maps of gigabytes, links out of the bundle, names with `..`, newlines, control
  characters), thousands of members, nested tarballs, members of zeros;
- `yaml`: node.yaml with anchors and alias bombs, deep nesting, tags, values of the wrong type (a CIDR
  in node_ips, a list as a name), Unicode and 5,000-digit numbers;
- `json`: `ip -j` / `nft -j` documents with keys deleted, types swapped, values nested thousands deep,
  huge and Unicode numbers (the first body byte picks the file name, so the bundle name decides the parser);
- `branch`: rulesets built to explode: statistic splits in series (alike and distinct packets), cascades
  of hundreds of endpoints, jumps to returning chains, `numgen random mod 4294967295` maps and matches.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import random
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "kptrace" / "demo"
JSON_NAMES = ("ip-addr.json", "ip-route.json", "ip-link.json", "ip-rule.json", "ip-neigh.json", "bridge-fdb.json",
              "bridge-link.json", "nft-ruleset.json", "manifest.json")
CUT = 3000  # bytes of each demo file a seed keeps: a bundle seed stays far under the 64 KiB input cap


# --- archives ----------------------------------------------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], compress: str = "gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "none": lambda b: b}[compress](raw)


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def archive_seeds() -> list[bytes]:
    out = []
    for node in (DEMO / "cluster" / "node-a", DEMO / "ipvs-node"):
        members = [_file(f"{node.name}/{p.name}", p.read_bytes()[:CUT]) for p in sorted(node.iterdir()) if p.is_file()]
        out.append(_tar(members))
    return out


def _members(body: bytes) -> list[tuple[str, bytes]]:
    """The files of a tarball (any compression), as far as it reads."""
    out: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            for m in tar:
                if m.isfile() and m.size < 100_000:
                    f = tar.extractfile(m)
                    out.append((m.name, f.read() if f is not None else b""))
    except Exception:  # noqa: BLE001 - a mutated archive reads as far as it reads
        pass
    return out


def _sparse_header(name: str, realsize: int) -> bytes:
    """A GNU sparse member that says realsize bytes and stores none (what `tar -S` writes for holes)."""
    h = bytearray(512)

    def put(off: int, value: bytes) -> None:
        h[off:off + len(value)] = value

    put(0, name.encode()[:99])
    for off, v in ((100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"), (124, b"%011o\0" % 0),
                   (136, b"%011o\0" % 0), (156, b"S"), (257, b"ustar  \0"), (386, b"%011o\0" % (realsize % 8**11)),
                   (398, b"%011o\0" % 0), (483, b"%011o\0" % (realsize % 8**11))):
        put(off, v)
    put(148, b" " * 8)
    put(148, b"%06o\0 " % sum(h))
    return bytes(h)


def mutate_archive(rng: random.Random, body: bytes) -> bytes:
    files = _members(body) or [("node-a/iptables-save.txt", (DEMO / "cluster" / "node-a" / "iptables-save.txt").read_bytes()[:CUT])]
    op = rng.randrange(12)
    compress = rng.choice(["gz", "gz", "gz", "bz2", "xz", "none"])
    if op == 0:  # cut short
        return body[: rng.randrange(max(1, len(body)))]
    if op == 1:  # flip bytes of the compressed stream
        out = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            if out:
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [_file(n, d) for n, d in files]
    if op == 2:  # a member whose header says more than it holds, or a huge size
        info, data = rng.choice(members)
        info.size = rng.choice([len(data or b"") + 1, 2**31, 600 * 1024 * 1024, 8**11 - 1])
        raw = b"".join(info.tobuf(tarfile.GNU_FORMAT) + (d or b"") + b"\0" * (-len(d or b"") % 512)
                       for info, d in members) + b"\0" * 1024
        return gzip.compress(raw)
    if op == 3:  # sparse members of gigabytes (87 bytes each)
        raw = b"".join(_sparse_header(rng.choice(["iptables-save.txt", "ip-route.txt", "node.yaml", "x"]),
                                      rng.choice([2**31, 500 * 1000 * 1000, 2**33])) for _ in range(rng.randint(1, 5)))
        return gzip.compress(raw + b"\0" * 1024)
    if op == 4:  # links and devices
        for kind in rng.sample([tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.DIRTYPE], 2):
            info = tarfile.TarInfo(rng.choice(["node-a/iptables-save.txt", "node-a/ip-route.txt", "node-a/etc"]))
            info.type = kind
            info.linkname = rng.choice(["/etc/shadow", "../../etc/passwd", "node-a/ip-route.txt", "/dev/zero"])
            members.append((info, None))
    elif op == 5:  # names that are paths out, control characters, newlines
        for i, (info, _) in enumerate(members):
            if rng.random() < 0.5:
                info.name = rng.choice(["../" * 3 + info.name, "/" + info.name, info.name + "\nfake: line",
                                        info.name.replace("/", "/\x1b]52;c;aGk=\x07"), info.name + "\x00x"])
    elif op == 6:  # thousands of tiny members
        members += [_file(f"node-a/f{i}.txt", b"x\n") for i in range(rng.randint(100, 3000))]
    elif op == 7:  # a tarball in the tarball
        members.append(_file("node-a/inner.tar.gz", _tar([_file(n, d) for n, d in files[:3]])))
    elif op == 8:  # a member of zeros or of one endless line (compresses to little)
        data = rng.choice([b"\0" * (1 << 20), b"a" * (2 << 20), b"-A INPUT -j ACCEPT\n" * 50_000])
        members.append(_file(rng.choice(["node-a/iptables-save.txt", "node-a/conntrack.txt"]), data))
    elif op == 9:  # the same file twice, different contents
        name, data = rng.choice(files)
        members.append(_file(name, data[::-1]))
    elif op == 10:  # mutate a member's text
        i = rng.randrange(len(members))
        info, data = members[i]
        raw = bytearray(data or b"")
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(raw) + 1)
            raw[pos:pos] = rng.choice([b"\xc2\xb2", b"9" * 5000, b"\n", b"\x00", b"\xff", b"[" * 200])
        members[i] = _file(info.name, bytes(raw))
    else:  # another compression, or none
        pass
    return _tar(members, compress)


# --- node.yaml -----------------------------------------------------------------------------------------------


def yaml_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted(DEMO.rglob("node.yaml"))]


def mutate_yaml(rng: random.Random, body: bytes) -> bytes:
    text = body.decode("utf-8", "replace")
    op = rng.randrange(8)
    if op == 0:  # the billion laughs, under a key kptrace reads
        levels = rng.randint(2, 9)
        lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
        for i in range(1, levels):
            prev, cur = chr(96 + i), chr(97 + i)
            lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
        key = rng.choice(["node_ips", "name", "pod_cidr", "cluster_cidr", "service_cidr"])
        return ("\n".join(lines) + f"\n{key}: *{chr(96 + levels)}\n").encode()
    if op == 1:  # deep nesting
        d = rng.choice([25, 200, 5000])
        return f"node_ips: {'[' * d}1.2.3.4{']' * d}\n".encode()
    if op == 2:  # wrong types
        key = rng.choice(["name", "node_ips", "pod_cidr", "cluster_cidr", "service_cidr", "node_name"])
        value = rng.choice(["[a, b]", "{a: 1}", "5", "true", "null", "~", "''", "[1.2.3.4/24]", "[[1.2.3.4]]",
                            "10.244.1.0/33", "10.244.1.0/٢٤", "1.2.3.４", "9" * 5000, "-1", "!!binary aGk=",
                            "!!python/object:os.system [id]", "'\\x1b]52;c;aGk=\\x07'"])
        return (text + f"\n{key}: {value}\n").encode()
    if op == 3:  # several documents, a tab, a BOM
        return rng.choice(["---\n" + text + "\n---\n" + text, text.replace("  ", "\t"), "\ufeff" + text]).encode()
    if op == 4:  # a key repeated, or a huge mapping
        return (text + "".join(f"k{i}: {i}\n" for i in range(rng.randint(10, 5000)))).encode()
    if op == 5:  # anchors alone (no bomb)
        return (text + "\nx: &x 1\ny: *x\n").encode()
    if op == 6:  # flow style of everything
        return ("{" + ", ".join(f"{k}: {v}" for k, v in [("name", "n"), ("node_ips", "[10.0.0.1, fd00::1]"),
                                                          ("pod_cidr", "10.244.1.0/24")]) + "}").encode()
    cut = rng.randrange(len(text) + 1)
    return (text[:cut] + rng.choice(["&", "*", "!", "|", ">", "{", "[", ":", "- ", "\x00"]) + text[cut:]).encode()


# --- JSON ------------------------------------------------------------------------------------------------------


def json_seeds() -> list[bytes]:
    out = []
    fixtures = sorted((ROOT / "tests" / "fixtures").rglob("*.json"))
    for p in fixtures + sorted(DEMO.rglob("*.json")):
        name = p.name if p.name in JSON_NAMES else ("nft-ruleset.json" if "nft" in str(p) else None)
        if name is None:
            continue
        data = p.read_bytes()
        if len(data) > 60_000:
            continue
        out.append(bytes([JSON_NAMES.index(name)]) + data)
    return out


def _swap(rng: random.Random, v: Any) -> Any:
    return rng.choice([None, True, 0, -1, 2**70, 1e308, "", "²", "٥٣", "9" * 5000, [], {}, [v], {"x": v},
                       type(v).__name__])


def _nest(v: Any, depth: int) -> Any:
    for _ in range(depth):
        v = [v]
    return v


def _edit(rng: random.Random, doc: Any, budget: list[int]) -> Any:
    """One random structural edit somewhere in doc (a key deleted, a type swapped, a value nested)."""
    if budget[0] <= 0:
        return doc
    if isinstance(doc, dict) and doc:
        k = rng.choice(list(doc))
        r = rng.random()
        if r < 0.3:
            budget[0] -= 1
            return {kk: vv for kk, vv in doc.items() if kk != k}
        if r < 0.45:
            budget[0] -= 1
            return {**doc, k: _swap(rng, doc[k])}
        return {**doc, k: _edit(rng, doc[k], budget)}
    if isinstance(doc, list) and doc:
        i = rng.randrange(len(doc))
        r = rng.random()
        if r < 0.15:
            budget[0] -= 1
            return doc[:i] + doc[i + 1:]
        if r < 0.25:
            budget[0] -= 1
            return doc + [doc[i]] * rng.randint(1, 3)
        return doc[:i] + [_edit(rng, doc[i], budget)] + doc[i + 1:]
    budget[0] -= 1
    return _swap(rng, doc) if rng.random() < 0.7 else _nest(doc, rng.choice([10, 70, 3000]))


def mutate_json(rng: random.Random, body: bytes) -> bytes:
    if not body:
        return bytes([rng.randrange(len(JSON_NAMES))]) + b"[]"
    sel, raw = body[:1], body[1:]
    if rng.random() < 0.1:
        sel = bytes([rng.randrange(len(JSON_NAMES))])  # the same document under another bundle name
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        doc = None
    if doc is None or rng.random() < 0.1:
        d = rng.choice([100, 5000, 200_000])
        return sel + rng.choice([b"[" * d + b"]" * d, b'{"nftables": [' + b"{" * 0 + b"[" * d + b"]" * d + b"]}",
                                 raw[: len(raw) // 2]])
    for _ in range(rng.randint(1, 4)):
        doc = _edit(rng, doc, [1])
    try:
        return sel + json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()
    except (ValueError, RecursionError):
        return sel + raw


# --- branch explosions -----------------------------------------------------------------------------------------


def branch_seeds() -> list[bytes]:
    return [(DEMO / "cluster" / "node-a" / "iptables-save.txt").read_bytes(),
            (ROOT / "tests" / "fixtures" / "nft" / "kube-proxy" / "nft-ruleset.txt").read_bytes()[:20_000]]


def _iptables_explosion(rng: random.Random, text: str) -> str:
    table = rng.choice(["*mangle", "*filter", "*nat", "*raw"])
    if table not in text:
        return text
    i = text.index(table)
    j = text.find("COMMIT", i)
    if j < 0:
        return text
    chain = {"*mangle": "PREROUTING", "*filter": "FORWARD", "*nat": "PREROUTING", "*raw": "PREROUTING"}[table]
    n = rng.choice([5, 12, 20, 40, 300])
    kind = rng.randrange(5)
    rules: list[str] = []
    decl = ""
    for k in range(n):
        p = rng.choice(["0.5", "0.50000000000", f"{1 / max(1, n - k):.11f}", "0.00001", "0.99999"])
        target = [f"-j LOG --log-prefix s{k}", f"-j MARK --set-xmark {1 << (k % 32):#x}/{1 << (k % 32):#x}",
                  "-j KPT-RET", "-j DROP", f"-j MARK --set-xmark {k:#x}/0xffffffff"][kind]
        rules.append(f"-A {chain} -m statistic --mode random --probability {p} {target}\n")
    if kind == 2:
        decl = ":KPT-RET - [0:0]\n"
        rules.append("-A KPT-RET -m statistic --mode random --probability 0.5 -j RETURN\n")
    k = text.index("\n", i) + 1
    return text[:k] + decl + text[k:j] + "".join(rules) + text[j:]


def _nft_explosion(rng: random.Random) -> str:
    mod = rng.choice([2, 3, 1000, 65537, 4294967295, 4294967296])
    body = []
    for k in range(rng.choice([1, 10, 20, 40])):
        form = rng.randrange(4)
        if form == 0:
            body.append(f"numgen random mod {mod} vmap {{ 0-{mod // 2} : jump a, {mod // 2 + 1}-{mod - 1} : jump b }}")
        elif form == 1:
            body.append(f"numgen random mod {mod} < {rng.randrange(mod)} meta mark set meta mark | {1 << (k % 32):#x}")
        elif form == 2:
            body.append(f"numgen random mod {mod} {{ {', '.join(str(rng.randrange(mod)) for _ in range(5))} }} drop")
        else:
            body.append("jump r")
    rules = "".join(f"\t\t{r}\n" for r in body)
    return ("table ip t {\n\tchain a { accept }\n\tchain b { meta mark set 7 }\n\tchain r { numgen random mod 2 == 0 return }\n"
            "\tchain pre {\n\t\ttype filter hook prerouting priority 0; policy accept;\n" + rules + "\t}\n}\n")


def mutate_branch(rng: random.Random, body: bytes) -> bytes:
    text = body.decode("utf-8", "replace")
    if text.lstrip().startswith("table") or rng.random() < 0.3:
        return _nft_explosion(rng).encode()
    for _ in range(rng.randint(1, 3)):
        text = _iptables_explosion(rng, text)
    return text.encode()


MUTATORS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "archive": mutate_archive, "node-yaml": mutate_yaml, "json": mutate_json, "branch": mutate_branch,
}
SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "archive": archive_seeds, "node-yaml": yaml_seeds, "json": json_seeds, "branch": branch_seeds,
}
