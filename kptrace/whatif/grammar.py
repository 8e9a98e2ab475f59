"""The what-if grammar: a fix written the way an SRE would type it on the node.

One change per `--what-if`, numbered from 1 in the order given; whatever it adds cites `what-if:N`.
Forms accepted (an optional `@NODE ` first limits a change to one node of the input):

    sysctl net.ipv4.ip_forward=1                      also `sysctl -w K=V [K=V …]`, `sysctl -w K = V`
    modprobe br_netfilter                             also `modprobe -a m1 m2`, `modprobe -r m`
    iptables -P FORWARD ACCEPT                        ip6tables alike; `-t TABLE` anywhere before the command
    iptables -t filter -D FORWARD 5                   by number, as `iptables -L --line-numbers` shows it
    iptables -D FORWARD -s 10.0.0.0/8 -j REJECT       by rule spec (the first rule equal to it)
    iptables -I FORWARD 1 -s 10.244.0.0/16 -j ACCEPT  `-I CHAIN [N] SPEC`, `-A CHAIN SPEC`, `-R CHAIN N SPEC`
    delete iptables-save.txt:12                       a rule, route or nft rule of the input, by its citation
    ip route add default via 192.168.0.1 dev eth0     also `del`, `replace`; `ip -6 route …`
    ip link set veth1 type bridge_slave hairpin on    also `bridge link set dev veth1 hairpin on`
    conntrack -D -p udp -d 10.96.0.10 --dport 53      `-F` flushes; -s -d -r -q -p --sport --dport --reply-port-src|dst
    nft add rule ip filter FORWARD ip saddr 10.244.0.0/16 accept
    nft insert rule inet filter forward position 7 drop
    nft delete rule inet filter forward handle 7

Rule specs go through the iptables-save parser (kptrace/parsers/iptables_save.py) and nft rules through
the nft parser (kptrace/parsers/nft_text.py): there is no second grammar. A change that cannot be read
raises WhatIfError, `what-if:N:col: what is wrong` (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from kptrace.errors import ParseError
from kptrace.model.netfilter import BUILTIN_CHAINS, Rule
from kptrace.model.routing import Route
from kptrace.model.source import Source

FILE = "what-if"
POLICY_TARGETS = ("ACCEPT", "DROP")


class WhatIfError(ParseError):
    """A --what-if change that cannot be read or applied: `what-if:N:col: …`, exit 2."""

    def __init__(self, n: int, col: int, message: str, text: str = "") -> None:
        super().__init__(FILE, n, col, message, text)


@dataclass(frozen=True, slots=True)
class Change:
    """One --what-if change: its number, its text and what it does (`kind` and the fields of that kind)."""

    n: int
    text: str
    kind: str  # sysctl modprobe iptables delete route hairpin conntrack nft
    node: str | None = None  # `@NODE`: only this node of the input
    col: int = 1  # where the command starts (after `@NODE`)
    # sysctl: ((key, value, col), …); modprobe: module names, remove
    settings: tuple[tuple[str, str, int], ...] = ()
    modules: tuple[str, ...] = ()
    remove: bool = False
    # iptables: family, table, op (P D I A R), chain, position (1-based, None: by spec or append), rule, policy
    family: int = 4
    table: str = "filter"
    op: str = ""
    chain: str = ""
    position: int | None = None
    rule: Rule | None = None
    policy: str | None = None
    # delete FILE:LINE
    file: str = ""
    line: int = 0
    # ip route: op add|del|replace, the route as written
    route: Route | None = None
    # hairpin: the port and the mode
    dev: str = ""
    on: bool = True
    # conntrack: filters (option, value); op D or F
    filters: tuple[tuple[str, str], ...] = ()
    # nft: op add|insert|delete, family, table, chain, handle/position, the parsed rule (kptrace.model.nft.NftRule)
    nft_family: str = "ip"
    nft_rule: object | None = None
    handle: int | None = None

    @property
    def source(self) -> Source:
        return Source(FILE, self.n, self.col, self.text)

    @property
    def cite(self) -> str:
        return f"{FILE}:{self.n}"


def parse_changes(texts: list[str] | tuple[str, ...]) -> list[Change]:
    """Every --what-if, numbered from 1; the first one that cannot be read raises WhatIfError."""
    return [parse_change(t, i) for i, t in enumerate(texts, start=1)]


def _words(text: str, n: int) -> list[tuple[str, int]]:
    from kptrace.parsers.iptables_save import tokenize

    try:
        return tokenize(text, FILE, n)
    except ParseError as e:
        raise WhatIfError(n, e.col, e.message, text) from None


def parse_change(text: str, n: int = 1) -> Change:
    if "\n" in text or "\r" in text:
        raise WhatIfError(n, text.find("\n") + 1 if "\n" in text else text.find("\r") + 1,
                          "one change per --what-if (no newline)", text.splitlines()[0] if text.splitlines() else "")
    words = _words(text, n)
    if not words:
        raise WhatIfError(n, 1, "empty change (expected e.g. 'sysctl -w net.ipv4.ip_forward=1')", text)
    node = None
    if words[0][0].startswith("@"):
        node = words[0][0][1:]
        if not node:
            raise WhatIfError(n, words[0][1], "'@' needs a node name: @NODE CHANGE", text)
        words = words[1:]
        if not words:
            raise WhatIfError(n, len(text) + 1, f"nothing to change on {node}", text)
    cmd, col = words[0]
    base = Change(n, text, "", node, col)
    if cmd == "sudo" and len(words) > 1:
        words = words[1:]
        cmd, col = words[0]
        base = replace(base, col=col)
    if cmd == "sysctl":
        return _sysctl(base, words[1:])
    if cmd == "modprobe":
        return _modprobe(base, words[1:])
    if cmd in ("iptables", "ip6tables", "iptables-nft", "iptables-legacy", "ip6tables-nft", "ip6tables-legacy"):
        return _iptables(base, words, 6 if cmd.startswith("ip6") else 4)
    if cmd == "delete":
        return _delete(base, words[1:])
    if cmd == "ip":
        return _ip(base, words[1:])
    if cmd == "bridge":
        return _bridge(base, words[1:])
    if cmd == "conntrack":
        return _conntrack(base, words[1:])
    if cmd == "nft":
        return _nft(base, words[1:])
    raise WhatIfError(n, col, f"unknown command '{cmd}' (expected sysctl, modprobe, iptables, ip6tables, delete, ip, "
                              f"bridge, conntrack or nft)", text)


def _err(c: Change, col: int, msg: str) -> WhatIfError:
    return WhatIfError(c.n, col, msg, c.text)


# --- sysctl ----------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")


def _dotted(key: str) -> str:
    """sysctl's two spellings: `net/ipv4/conf/flannel.1/forwarding` is `net.ipv4.conf.flannel/1.forwarding`."""
    if "/" in key and "." not in key.split("/", 1)[0]:
        return key.translate(str.maketrans("/.", "./"))
    return key


def _sysctl(c: Change, words: list[tuple[str, int]]) -> Change:
    args: list[tuple[str, int]] = []
    for w, col in words:
        if w.startswith("-") and not args and w.lstrip("-") and set(w.lstrip("-")) <= set("wqe"):
            continue  # -w writes, -q quiet, -e ignore unknown keys: the same change on the model
        if w.startswith("-") and w != "-":
            raise _err(c, col, f"sysctl option '{w}' is not a change (expected sysctl -w KEY=VALUE)")
        args.append((w, col))
    settings: list[tuple[str, str, int]] = []
    i = 0
    while i < len(args):
        w, col = args[i]
        if "=" in w:
            key, _, value = w.partition("=")
            if not value and i + 1 < len(args) and "=" not in args[i + 1][0]:
                value = args[i + 1][0]  # `KEY= VALUE`
                i += 1
        elif i + 2 < len(args) + 1 and i + 1 < len(args) and args[i + 1][0] == "=":
            if i + 2 >= len(args):
                raise _err(c, args[i + 1][1], f"'{w} =' needs a value")
            key, value = w, args[i + 2][0]  # `KEY = VALUE`, as sysctl.conf writes it
            i += 2
        elif i + 1 < len(args) and args[i + 1][0].startswith("="):
            key, value = w, args[i + 1][0][1:]
            i += 1
        else:
            raise _err(c, col, f"'{w}' has no value: sysctl -w KEY=VALUE (reading a key changes nothing)")
        key = _dotted(key.strip())
        if not key or not _KEY_RE.match(key):
            raise _err(c, col, f"'{key}' is not a sysctl key (e.g. net.ipv4.ip_forward)")
        if not value.strip():
            raise _err(c, col, f"{key} needs a value")
        settings.append((key, value.strip(), col))
        i += 1
    if not settings:
        raise _err(c, len(c.text) + 1, "sysctl needs KEY=VALUE, e.g. sysctl -w net.ipv4.ip_forward=1")
    return replace(c, kind="sysctl", settings=tuple(settings))


# --- modprobe --------------------------------------------------------------------------------------

def _modprobe(c: Change, words: list[tuple[str, int]]) -> Change:
    remove = False
    names: list[str] = []
    for w, col in words:
        if w in ("-r", "--remove"):
            remove = True
        elif w in ("-a", "--all", "-v", "--verbose", "-q", "--quiet", "-b", "--use-blacklist"):
            continue
        elif w.startswith("-"):
            raise _err(c, col, f"modprobe option '{w}' is not modelled (expected modprobe [-a|-r] MODULE…)")
        elif "=" in w:
            raise _err(c, col, f"module parameters ('{w}') are not modelled")
        elif not re.fullmatch(r"[A-Za-z0-9_-]+", w):
            raise _err(c, col, f"'{w}' is not a module name")
        else:
            names.append(w.replace("-", "_"))
    if not names:
        raise _err(c, len(c.text) + 1, "modprobe needs a module name, e.g. modprobe br_netfilter")
    # modprobe without -a takes one module and the rest as its parameters; kptrace refused those above.
    return replace(c, kind="modprobe", modules=tuple(names), remove=remove)


# --- iptables --------------------------------------------------------------------------------------

_COMMANDS = {"-P": "P", "--policy": "P", "-D": "D", "--delete": "D", "-I": "I", "--insert": "I",
             "-A": "A", "--append": "A", "-R": "R", "--replace": "R"}


def _iptables(c: Change, words: list[tuple[str, int]], family: int) -> Change:
    from kptrace.parsers.iptables_save import parse_rule_line
    from kptrace.parsers.numbers import is_num

    text = c.text
    table = "filter"
    i = 1
    cmd_at = None
    while i < len(words):
        w, col = words[i]
        if w in ("-t", "--table"):
            if i + 1 >= len(words):
                raise _err(c, col, "-t needs a table name")
            table = words[i + 1][0]
            if table not in BUILTIN_CHAINS:
                raise _err(c, words[i + 1][1], f"unknown table '{table}' (expected {', '.join(BUILTIN_CHAINS)})")
            i += 2
            continue
        if w.startswith("--table="):
            table = w.split("=", 1)[1]
            i += 1
            continue
        if w in ("-w", "--wait", "-v", "--verbose", "-n", "--numeric", "-4", "-6"):
            i += 1
            if w in ("-w", "--wait") and i < len(words) and is_num(words[i][0]):
                i += 1
            continue
        if w in _COMMANDS:
            cmd_at = i
            break
        raise _err(c, col, f"'{w}': expected a command (-P, -D, -I, -A or -R) — listing or flushing changes "
                           f"nothing a trace can test")
    if cmd_at is None:
        raise _err(c, len(text) + 1, "iptables needs a command: -P CHAIN POLICY, -D CHAIN N|SPEC, -I CHAIN [N] SPEC, "
                                     "-A CHAIN SPEC or -R CHAIN N SPEC")
    w, col = words[cmd_at]
    op = _COMMANDS[w]
    rest = words[cmd_at + 1:]
    if not rest:
        raise _err(c, len(text) + 1, f"'{w}' needs a chain name")
    chain, chain_col = rest[0]
    base = replace(c, kind="iptables", family=family, table=table, op=op, chain=chain)
    after = rest[1:]
    if op == "P":
        if len(after) != 1:
            raise _err(c, after[1][1] if len(after) > 1 else len(text) + 1,
                       "-P CHAIN POLICY takes a policy (ACCEPT or DROP) and nothing else")
        pol, pcol = after[0]
        if pol not in POLICY_TARGETS:
            raise _err(c, pcol, f"policy '{pol}': a built-in chain's policy is ACCEPT or DROP")
        if chain not in BUILTIN_CHAINS[table]:
            raise _err(c, chain_col, f"{table} {chain} is not a built-in chain: only those have a policy")
        return replace(base, policy=pol)
    position: int | None = None
    blank: list[tuple[int, int]] = []  # columns (1-based, inclusive start, length) to blank before parsing
    if after and is_num(after[0][0]):
        position = int(after[0][0])
        if position < 1:
            raise _err(c, after[0][1], f"rule number {position}: rules are numbered from 1")
        blank.append((after[0][1], len(after[0][0])))
        after = after[1:]
    if op == "R" and position is None:
        raise _err(c, chain_col + len(chain) + 1, "-R CHAIN N SPEC needs the number of the rule to replace")
    if op == "A" and position is not None:
        raise _err(c, blank[0][0], "-A appends: it takes no rule number (use -I CHAIN N)")
    if op == "D" and position is not None:
        if after:
            raise _err(c, after[0][1], "-D CHAIN N takes nothing after the number")
        return replace(base, position=position)
    if not after:
        raise _err(c, len(text) + 1, f"'{w} {chain}' needs a rule spec (e.g. -s 10.244.0.0/16 -j ACCEPT)")
    if op == "I" and position is None:
        position = 1
    # The spec goes through the iptables-save parser as `-A CHAIN SPEC`, with the change's own columns: the
    # words before it are blanked, so an error points into what the user typed.
    chars = list(text)
    for k in range(0, col - 1):
        chars[k] = " "
    for k in range(col - 1, col - 1 + len(w)):
        chars[k] = " "
    chars[col - 1] = "-"
    chars[col] = "A"
    for start, length in blank:
        for k in range(start - 1, start - 1 + length):
            chars[k] = " "
    try:
        rule = parse_rule_line(table, "".join(chars), FILE, c.n)
    except ParseError as e:
        raise WhatIfError(c.n, e.col, e.message, text) from None
    rule = replace(rule, source=Source(FILE, c.n, c.col, text), index=0)
    return replace(base, position=position, rule=rule)


# --- delete FILE:LINE ------------------------------------------------------------------------------

def _delete(c: Change, words: list[tuple[str, int]]) -> Change:
    if len(words) != 1:
        raise _err(c, words[1][1] if len(words) > 1 else len(c.text) + 1,
                   "delete takes one citation, FILE:LINE, as kptrace prints it (e.g. delete iptables-save.txt:12)")
    w, col = words[0]
    file, _, line = w.rpartition(":")
    if not file or not (line.isascii() and line.isdigit()) or len(line) > 9 or int(line) < 1:
        raise _err(c, col, f"'{w}' is not FILE:LINE (e.g. iptables-save.txt:12)")
    return replace(c, kind="delete", file=file, line=int(line))


# --- ip route / ip link / bridge link ----------------------------------------------------------------

def _ip(c: Change, words: list[tuple[str, int]]) -> Change:
    family = 0
    while words and words[0][0] in ("-4", "-6"):
        family = int(words[0][0][1])
        words = words[1:]
    if not words:
        raise _err(c, len(c.text) + 1, "ip needs an object: route or link")
    obj, ocol = words[0]
    if obj in ("route", "r", "ro", "rou", "rout"):
        return _route(c, words[1:], family)
    if obj in ("link", "l", "li", "lin"):
        return _link(c, words[1:])
    raise _err(c, ocol, f"'ip {obj}' is not modelled (expected ip route add|del|replace … or ip link set … hairpin)")


def _route(c: Change, words: list[tuple[str, int]], family: int) -> Change:
    from kptrace.parsers.ip_route import parse_ip_route

    if not words:
        raise _err(c, len(c.text) + 1, "ip route needs add, del or replace")
    op, ocol = words[0]
    ops = {"add": "add", "a": "add", "del": "del", "delete": "del", "d": "del", "replace": "replace",
           "change": "replace", "append": "add"}
    if op not in ops:
        raise _err(c, ocol, f"'ip route {op}': expected add, del or replace (show and get change nothing)")
    rest = words[1:]
    if not rest:
        raise _err(c, len(c.text) + 1, f"ip route {op} needs a destination (e.g. default via 192.168.0.1)")
    start = rest[0][1]
    spec = c.text[start - 1:]
    if family == 6 and spec.split()[0] == "default":
        spec = "default" + spec[len("default"):]
    try:
        routes = parse_ip_route(spec, FILE)
    except ParseError as e:
        raise WhatIfError(c.n, start - 1 + e.col, e.message, c.text) from None
    if len(routes) != 1:
        raise _err(c, start, "one route per change")
    route = routes[0]
    if family == 6 and route.dst.version == 4 and str(route.dst) == "0.0.0.0/0":
        from ipaddress import ip_network
        route = replace(route, dst=ip_network("::/0"))
    if ops[op] in ("add", "replace") and route.type == "unicast" and not route.nexthops:
        raise _err(c, start, "the route needs a via or dev (where the packets go)")
    return replace(c, kind="route", op=ops[op], route=replace(route, source=Source(FILE, c.n, c.col, c.text)))


def _link(c: Change, words: list[tuple[str, int]]) -> Change:
    # ip link set [dev] DEV type bridge_slave hairpin on|off
    if not words or words[0][0] != "set":
        raise _err(c, words[0][1] if words else len(c.text) + 1,
                   "expected ip link set DEV type bridge_slave hairpin on|off")
    rest = words[1:]
    if rest and rest[0][0] == "dev":
        rest = rest[1:]
    if not rest:
        raise _err(c, len(c.text) + 1, "ip link set needs a device")
    dev = rest[0][0]
    opts = rest[1:]
    if opts and opts[0][0] == "type":
        if len(opts) < 2 or opts[1][0] not in ("bridge_slave", "bridge-slave"):
            raise _err(c, opts[1][1] if len(opts) > 1 else len(c.text) + 1, "expected type bridge_slave")
        opts = opts[2:]
    return _hairpin(c, dev, opts)


def _bridge(c: Change, words: list[tuple[str, int]]) -> Change:
    # bridge link set dev DEV hairpin on|off
    if len(words) < 2 or words[0][0] not in ("link", "l") or words[1][0] != "set":
        raise _err(c, words[0][1] if words else len(c.text) + 1, "expected bridge link set dev DEV hairpin on|off")
    rest = words[2:]
    if not rest or rest[0][0] != "dev" or len(rest) < 2:
        raise _err(c, rest[0][1] if rest else len(c.text) + 1, "bridge link set needs dev DEV")
    return _hairpin(c, rest[1][0], rest[2:])


def _hairpin(c: Change, dev: str, opts: list[tuple[str, int]]) -> Change:
    if len(opts) != 2 or opts[0][0] != "hairpin" or opts[1][0] not in ("on", "off"):
        where = next((col for w, col in opts if w != "hairpin" and w not in ("on", "off")), None)
        raise _err(c, where or (opts[0][1] if opts else len(c.text) + 1),
                   "only the hairpin mode of a bridge port is modelled: … hairpin on|off")
    return replace(c, kind="hairpin", dev=dev, on=opts[1][0] == "on")


# --- conntrack -------------------------------------------------------------------------------------

CONNTRACK_FILTERS = {
    "-s": "src", "--src": "src", "--orig-src": "src", "-d": "dst", "--dst": "dst", "--orig-dst": "dst",
    "-r": "reply-src", "--reply-src": "reply-src", "-q": "reply-dst", "--reply-dst": "reply-dst",
    "-p": "proto", "--proto": "proto", "--sport": "sport", "--orig-port-src": "sport",
    "--dport": "dport", "--orig-port-dst": "dport", "--reply-port-src": "reply-sport",
    "--reply-port-dst": "reply-dport", "-m": "mark", "--mark": "mark", "-f": "family", "--family": "family",
    "-w": "zone", "--zone": "zone",
}


def _conntrack(c: Change, words: list[tuple[str, int]]) -> Change:
    from ipaddress import ip_address

    if not words or words[0][0] not in ("-D", "--delete", "-F", "--flush"):
        raise _err(c, words[0][1] if words else len(c.text) + 1,
                   "expected conntrack -D [FILTER…] or conntrack -F (listing changes nothing)")
    op = "F" if words[0][0] in ("-F", "--flush") else "D"
    filters: list[tuple[str, str]] = []
    rest = words[1:]
    i = 0
    while i < len(rest):
        w, col = rest[i]
        key = CONNTRACK_FILTERS.get(w)
        if key is None:
            raise _err(c, col, f"conntrack option '{w}' is not modelled (filters: -s -d -r -q -p --sport --dport "
                               f"--reply-port-src --reply-port-dst --mark -f --zone)")
        if i + 1 >= len(rest):
            raise _err(c, col, f"'{w}' needs a value")
        value, vcol = rest[i + 1]
        if key in ("src", "dst", "reply-src", "reply-dst"):
            try:
                ip_address(value)
            except ValueError:
                raise _err(c, vcol, f"'{value}' is not an IP address") from None
        elif key in ("sport", "dport", "reply-sport", "reply-dport", "zone"):
            if not (value.isascii() and value.isdigit() and len(value) <= 5 and int(value) <= 65535):
                raise _err(c, vcol, f"'{value}' is not a port number")
        elif key == "mark":
            try:
                int(value.split("/")[0], 0)
            except ValueError:
                raise _err(c, vcol, f"'{value}' is not a mark") from None
        elif key == "family" and value not in ("ipv4", "ipv6"):
            raise _err(c, vcol, "-f is ipv4 or ipv6")
        filters.append((key, value.lower() if key == "proto" else value))
        i += 2
    if op == "F" and filters:
        raise _err(c, rest[0][1], "conntrack -F flushes everything: use -D with filters to delete some entries")
    return replace(c, kind="conntrack", op=op, filters=tuple(filters))


# --- nft -------------------------------------------------------------------------------------------

_NFT_FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")


def _nft(c: Change, words: list[tuple[str, int]]) -> Change:
    from kptrace.parsers.nft_text import parse_nft_text

    if len(words) < 2 or words[0][0] not in ("add", "insert", "delete", "replace") or words[1][0] != "rule":
        raise _err(c, words[0][1] if words else len(c.text) + 1,
                   "expected nft add|insert|replace rule [FAMILY] TABLE CHAIN … or nft delete rule [FAMILY] TABLE "
                   "CHAIN handle N")
    op = words[0][0]
    rest = words[2:]
    family = "ip"
    if rest and rest[0][0] in _NFT_FAMILIES:
        family = rest[0][0]
        rest = rest[1:]
    if len(rest) < 2:
        raise _err(c, len(c.text) + 1, f"nft {op} rule needs a table and a chain")
    table, chain = rest[0][0], rest[1][0]
    rest = rest[2:]
    base = replace(c, kind="nft", op=op, nft_family=family, table=table, chain=chain)
    position = None
    if rest and rest[0][0] in ("position", "handle", "index"):
        if len(rest) < 2 or not (rest[1][0].isascii() and rest[1][0].isdigit() and len(rest[1][0]) <= 9):
            raise _err(c, rest[0][1], f"'{rest[0][0]}' needs a number")
        if rest[0][0] == "index":
            position = -1 - int(rest[1][0])  # index N: the N-th rule (0-based) — told apart from a handle
        else:
            position = int(rest[1][0])
        rest = rest[2:]
    if op == "delete":
        if position is None or position < 0 or rest:
            raise _err(c, rest[0][1] if rest else len(c.text) + 1, "nft delete rule … handle N")
        return replace(base, handle=position)
    if op == "replace" and (position is None or position < 0):
        raise _err(c, len(c.text) + 1, "nft replace rule … handle N STATEMENTS")
    if not rest:
        raise _err(c, len(c.text) + 1, f"nft {op} rule needs statements (e.g. ip saddr 10.244.0.0/16 accept)")
    start = rest[0][1]
    # The rule goes through the nft parser as an `add rule` line with the change's own columns.
    prefix = f"add rule {family} {table} {chain} "
    pad = start - 1 - len(prefix)
    line = (" " * pad + prefix if pad >= 0 else prefix) + c.text[start - 1:]
    shift = 0 if pad >= 0 else -pad
    try:
        rs = parse_nft_text(line, FILE, c.n)
    except ParseError as e:
        raise WhatIfError(c.n, max(1, e.col - shift), e.message, c.text) from None
    rules = [r for t in rs.tables.values() for ch in t.chains.values() for r in ch.rules]
    if len(rules) != 1:
        raise _err(c, start, "one rule per change")
    from kptrace.model.nft import NftSource

    rule = replace(rules[0], source=NftSource(Source(FILE, c.n, c.col, c.text)))
    return replace(base, nft_rule=rule, handle=position)
