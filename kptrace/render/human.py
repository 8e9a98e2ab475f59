"""The trace for people: a one-line answer first, then each branch as a tree read like the packet's life.

Layout (``--detail summary``, the default)::

    FLOW: DISPOSITION: what happened, per endpoint, in one line
    branch 1/2 · 50 % · FORWARDED · DNAT → 10.244.1.9:53 · out cni0
    ├── PREROUTING                                 a hook is a section
    │   └── nat  JUMP  -A PREROUTING … -j KUBE-SERVICES  node-a/iptables-save.txt:91
    │            └── ▶ DNAT  10.96.0.10:53 → 10.244.1.9:53                     an event
    │                        -A KUBE-SEP-… -j DNAT --to-destination 10.244.1.9:53
    │                        node-a/iptables-save.txt:137        (own line when it does not fit)
    ├── routing  ROUTE  10.244.1.9 dev cni0 …
    ├── ⇢ node-b  arrives via flannel.1 …            a cross-node hop
    └── reply  FORWARDED  ◀ UN-DNAT …               the answer packet, briefly
    assumptions: / undetermined: / inputs:

A rule that decided a step matched as a whole, so every condition of it (`-d VIP/32`, `-p udp`,
`--dport 53`, `! -s CIDR`, `--mark`, `--probability`) is highlighted, the comment is dimmed and
the target is coloured by what it did. Without a terminal (a pipe, a file) rich writes plain text;
`NO_COLOR` turns colour off; the width is `--width`, else `COLUMNS`, else the terminal's.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from kptrace.model.trace import Branch, Disposition, Reply, Step, Trace
from kptrace.render.detail import Detail
from kptrace.render.names import service_in
from kptrace.render.safe import printable, safe_console

_STYLE = {
    Disposition.DELIVERED: "bold green", Disposition.FORWARDED: "bold green", Disposition.ACCEPTED: "bold green",
    Disposition.DROPPED: "bold red", Disposition.REJECTED: "bold red", Disposition.NO_ROUTE: "bold red",
    Disposition.NO_SERVICE: "bold red",
    Disposition.UNDETERMINED: "bold yellow", Disposition.MIXED: "bold yellow",
}
# Steps that change the packet or end it are events: a marker in plain text, reverse video in colour.
_EVENTS = {"DNAT", "REDIRECT", "SNAT", "MASQUERADE", "UN-DNAT", "UN-SNAT"}
_FATAL = {"DROP", "REJECT", "POLICY DROP", "POLICY REJECT", "BLACKHOLE", "PROHIBIT", "UNREACHABLE", "NONE", "NO_SERVICE"}
_ACTION_STYLE = {
    "DNAT": "bold reverse magenta", "REDIRECT": "bold reverse magenta", "UN-DNAT": "bold reverse magenta",
    "MASQUERADE": "bold reverse cyan", "SNAT": "bold reverse cyan", "UN-SNAT": "bold reverse cyan",
    "ACCEPT": "bold green", "POLICY ACCEPT": "green", "DROP": "bold reverse red", "REJECT": "bold reverse red",
    "POLICY DROP": "bold reverse red", "POLICY REJECT": "bold reverse red", "UNDETERMINED": "bold reverse yellow",
    "MARK": "cyan", "CONNMARK": "cyan", "RETURN": "dim", "JUMP": "blue", "GOTO": "blue", "ROUTE": "bold",
    "ARRIVE": "bold reverse blue", "REPLY": "bold", "LINK": "", "BRIDGE": "", "NO_SERVICE": "bold reverse red",
    "CONNTRACK": "bold", "ENCAP": "blue", "DECAP": "blue", "OVERLAY": "bold reverse red",
}
_MATCHED = "bold yellow"  # the values of the conditions a deciding rule matched
_COMMENT = "dim italic"
_CITE = "dim"
_GUIDE = 4  # columns rich's Tree indents each level by


NO_WRAP = 10_000  # "columns" without a terminal, COLUMNS or --width: lines are not wrapped, grep sees them whole


def output_width(width: int | None, out: IO[str]) -> int | None:
    """The one width rule of every command: --width, else COLUMNS, else the terminal's; without a
    terminal (a pipe, a file) lines are not wrapped at all. None means: rich asks the terminal."""
    if width is not None:
        return width
    if os.environ.get("COLUMNS", "").isdigit() and int(os.environ["COLUMNS"]) > 0:
        return int(os.environ["COLUMNS"])
    isatty = getattr(out, "isatty", None)
    return None if isatty is not None and isatty() else NO_WRAP


class Unpadded:
    """A text stream that drops the spaces rich pads lines with (table cells, tree rows) before each
    newline, colour codes kept: what is pasted or piped has no trailing blanks."""

    _TRAIL = re.compile(r" +((?:\x1b\[[0-9;]*m)*)$")

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._partial = ""

    def write(self, text: str) -> int:
        data = self._partial + text
        lines = data.split("\n")
        self._partial = lines.pop()
        if lines:
            self._out.write("".join(self._TRAIL.sub(r"\1", line) + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self._out.write(self._partial)
            self._partial = ""
        self._out.flush()

    def isatty(self) -> bool:
        return bool(self._out.isatty())

    def fileno(self) -> int:
        return self._out.fileno()

    @property
    def encoding(self) -> str:
        return str(getattr(self._out, "encoding", "utf-8") or "utf-8")


def make_console(width: int | None = None, file: IO[str] | None = None, stderr: bool = False) -> Console:
    """The console a command prints with, to stdout (or stderr): the width is `output_width`'s; rich
    writes plain text when the output is not a terminal and honours NO_COLOR; no trailing padding."""
    out = file if file is not None else (sys.stderr if stderr else sys.stdout)
    return safe_console(file=Unpadded(out), width=output_width(width, out),
                        no_color=bool(os.environ.get("NO_COLOR")) or None, highlight=False)


def _text(text: str, style: str = "") -> Text:
    """Input text (a rule, a name, a message) as rich Text, control characters escaped."""
    return Text(printable(text), style=style)


# --- the one-line answer -----------------------------------------------------------------------------


def _pct(p: float) -> str:
    return f"{p * 100:.4g} %"


def _shares(t: Trace) -> dict[str, float]:
    """Each endpoint's share of the packets, in the order of t.endpoints (one pass over the branches)."""
    shares = dict.fromkeys(t.endpoints, 0.0)
    for b in t.branches:
        if b.dnat:
            shares[b.dnat] += b.probability
    return shares


def _endpoint_text(t: Trace) -> str:
    return " or ".join(f"{ep} ({_pct(p)})" for ep, p in _shares(t).items())


MANY_ENDPOINTS = 3  # past this the first line gives the endpoints' count and shares, not the list


def _endpoints_many(t: Trace) -> str:
    """`one of 12 endpoints (8.333 % each)`, or with their share range when kube-proxy weighs them unevenly."""
    shares = list(_shares(t).values())
    lo, hi = min(shares), max(shares)
    each = f"{_pct(lo)} each" if abs(hi - lo) < 1e-9 else f"{_pct(lo)} to {_pct(hi)}"
    return f"one of {len(t.endpoints)} endpoints ({each})"


_RULE_COMMENT = re.compile(r'(?:--comment |(?<!-m )\bcomment )("(?:[^"\\]|\\.)*"|\S+)')


def _service_of(s: Step) -> str | None:
    return service_in(s.text)


def service_name(t: Trace) -> str | None:
    """The Service port the packet was sent to, read from the first step of each branch that names one
    (kube-proxy's rule comments, nft element comments and chain names); None when the branches disagree."""
    names: list[str] = []
    for b in t.branches:
        for s in b.steps:
            if s.encapsulated:
                continue
            if s.action in ("DNAT", "ARRIVE"):
                break  # after the translation a name belongs to another hop
            name = _service_of(s)
            if name:
                names.append(name)
                break
    distinct = set(names)
    return names[0] if len(distinct) == 1 else None


def _flow_text(t: Trace, service: str | None = None) -> str:
    f = t.flow
    dst = f"[{f.dst}]" if f.dst.version == 6 and f.dport is not None else str(f.dst)
    port = f":{f.dport}" if f.dport is not None else ""
    extra = [f.state] if f.state != "new" else []
    extra += [f"mark {f.mark:#x}"] if f.mark else []
    svc = service_name(t) or service
    if svc:
        return f"{f.src} → {svc} ({', '.join([f'{dst}{port}/{f.proto}', *extra])})"
    return f"{f.src} → {dst}{port}/{f.proto}" + (f" ({', '.join(extra)})" if extra else "")


_ARRIVE = re.compile(r"arrives on (\S+) via (\S+)")
_DEV = re.compile(r"\bdev (\S+)")


def _crossings(steps: tuple[Step, ...]) -> list[tuple[str, str | None]]:
    """(node, interface it was sent through) for every hop to another node, in order."""
    out: list[tuple[str, str | None]] = []
    for s in steps:
        if s.action == "ARRIVE":
            m = _ARRIVE.search(s.text)
            if m:
                out.append((m.group(1), m.group(2)))
            elif s.node:
                out.append((s.node, None))
    return out


def _outcome(b: Branch) -> str:
    """What became of one branch, in a few words: `forwarded via flannel.1 to node-b`, or for a branch that
    fails, why and where: `no endpoints (filter/KUBE-SERVICES, node-a/iptables-save.txt:49)`."""
    if b.disposition == Disposition.NO_SERVICE:
        # The reason is the answer: which Service address, which ports it has, where the packet goes.
        reason: str = next((s.text for s in reversed(b.steps) if s.action == "NO_SERVICE"), "no Service port matches")
        return reason
    hops = _crossings(b.steps)
    if b.disposition in (Disposition.DROPPED, Disposition.REJECTED, Disposition.UNDETERMINED,
                         Disposition.NO_ROUTE):
        word = _reason(b)
        if hops:
            word += f" on {hops[-1][0]}"
        overlay = next((s for s in b.steps if s.action == "OVERLAY"), None)
        if overlay is not None:
            m = re.search(r"packet of (VXLAN \(.*?\) from \S+ to \S+)", overlay.text)
            what = str(m.group(1)) if m else "the overlay"
            word += f": the encapsulated packet of {what}"
        return word
    word = str(b.disposition.value).lower()
    if b.disposition == Disposition.FORWARDED:
        if hops:
            node, iface = hops[-1]
            first_iface = hops[0][1]
            word += (f" via {first_iface}" if first_iface else "") + f" to {node}"
            if b.egress and b.egress.iface:
                word += f", out {b.egress.iface}"
        elif b.egress and b.egress.iface:
            word += f" via {b.egress.iface}"
    elif hops:
        word += f" on {hops[-1][0]}"
    if b.masquerade:
        word = "masqueraded, " + word
    elif b.snat:
        word = f"SNAT to {b.snat}, " + word
    return word


def _reason(b: Branch) -> str:
    """Why a branch ends where it does, and the deciding place: `no endpoints (filter/KUBE-SERVICES, f:49)`,
    `policy DROP (filter/FORWARD, f:16)`, `no route to 10.9.9.9 (routing, ip-route.txt:1)`."""
    s, at = _deciding_step(b.steps)
    if s is None:
        return b.unknowns[0] if b.unknowns else b.disposition.value.lower()
    where = f"{s.table}/{s.chain}" if s.table and s.chain else (s.hook or "")
    place = f"{where}, {s.source}" if s.source else where
    m = _RULE_COMMENT.search(s.text) if s.rule is not None or s.text.startswith("-A ") else None
    comment = m.group(1).strip('"') if m else ""
    lookup = next((x for x in reversed(b.steps[:at]) if x.action == "LOOKUP" and "@no-endpoint" in x.text), None)
    if "has no local endpoints" in comment:
        why = "no local endpoints"
    elif "has no endpoints" in comment:
        why = "no endpoints"
    elif lookup is not None:
        nft_set = re.search(r"@(no-endpoint-\S+?):", lookup.text)
        why = "no endpoints"
        if nft_set and s.table:
            place = f"{s.table}/@{nft_set.group(1)} → {s.chain}" + (f", {s.source}" if s.source else "")
    elif s.action.startswith("POLICY"):
        why = f"policy {s.action.split()[-1]}"
    elif s.action == "UNDETERMINED":
        why = b.unknowns[0].split(": ", 1)[-1] if b.unknowns else "not decidable from the input"
        why = why if len(why) <= 90 else why[:87] + "..."
    elif s.hook == "routing":
        why = s.text
    elif comment:
        why = f'"{comment}"'
    else:
        why = f"a {s.action} rule"
    return f"{why} ({place})" if place else why


def summary_line(t: Trace, service: str | None = None) -> str:
    """The whole answer on one line: `SRC → ns/svc:port (DST:PORT/PROTO): VERDICT — reason (where, file:line)`,
    for a Service: the endpoints and what becomes of the packet at each, or their count and shares."""
    outcomes = [(b, _outcome(b)) for b in t.branches]
    distinct = list(dict.fromkeys(o for _, o in outcomes))
    many = len(t.endpoints) > MANY_ENDPOINTS
    per_endpoint = (not many and len(distinct) > 1 and all(b.dnat for b in t.branches)
                    and len({b.dnat for b in t.branches}) == len(t.branches))
    parts = []
    failed = t.disposition.failed or t.disposition == Disposition.UNDETERMINED
    if per_endpoint:
        parts.append("DNAT to " + " or ".join(
            f"{b.dnat} ({_pct(b.probability)}, " + (f"{b.disposition.value}: {o}" if
                                                    b.disposition != t.disposition and (
                                                        b.disposition.failed or
                                                        b.disposition == Disposition.UNDETERMINED) else o) + ")"
            for b, o in outcomes))
    else:
        shown: list[str] = []
        if len(distinct) == 1:
            shown.append(distinct[0])
        elif distinct:
            shares = {o: sum(b.probability for b, x in outcomes if x == o) for o in distinct}
            shown.append(" / ".join(f"{o} ({_pct(p)})" for o, p in shares.items()))
        dnat = ""
        if t.endpoints:
            dnat = f"DNAT to {_endpoints_many(t) if many else _endpoint_text(t)}"
        # A failure's reason comes first (the answer), the translation it happened after follows.
        if failed and dnat:
            parts += [*shown, f"after {dnat}"]
        else:
            parts += ([dnat] if dnat else []) + shown
    broken = sum(b.probability for b in t.branches if b.reply_failed)
    if broken:
        parts.append(f"but the REPLY fails ({_pct(broken)})")
    nxt = what_decides_next(t)
    if nxt:
        return f"{_flow_text(t, service)}: {t.disposition.value} — {nxt}"
    return f"{_flow_text(t, service)}: {t.disposition.value} — " + ", ".join(parts)


def what_decides_next(t: Trace) -> str:
    """The first line of an UNDETERMINED trace that went past its unknowns: "depends on filter/KUBE-FORWARD (not
    in the input); if it does not decide it: REJECTED — a REJECT rule (filter/FORWARD, file:14)" (conditions,
    not shares)."""
    if not t.conditional or t.disposition != Disposition.UNDETERMINED:
        return ""
    determined = [b for b in t.conditional if b.disposition != Disposition.UNDETERMINED]
    if not determined:
        deepest = max(t.conditional, key=lambda b: len(b.conditions))
        return f"depends on {_subjects(deepest)}"
    fewest = min(len(b.conditions) for b in determined)
    first = [b for b in determined if len(b.conditions) == fewest]
    pronoun = "none of them decides it" if fewest > 1 else first[0].conditions[0].rsplit(": ", 1)[-1]
    outcomes = list(dict.fromkeys(_verdict(b) for b in first))
    more = len(t.conditional) - len(first)
    tail = f" (+{more} more what-if branch{'es' if more != 1 else ''}: -o json or the tree)" if more > 0 else ""
    return f"depends on {_subjects(first[0])}; if {pronoun}: {' or '.join(outcomes[:2])}{tail}"


def _verdict(b: Branch) -> str:
    """`REJECTED — a REJECT rule (filter/FORWARD, f:14)`, `FORWARDED via eth0`: the verdict word once."""
    o = _outcome(b)
    word = b.disposition.value
    if o.lower().startswith(word.lower()):
        return word + o[len(word):]
    return f"{word} — {o}"


def _subjects(b: Branch) -> str:
    return " and ".join(c.rsplit(": ", 1)[0] for c in b.conditions)


def _deciding_step(steps: tuple[Step, ...] | list[Step]) -> tuple[Step | None, int]:
    for i in range(len(steps) - 1, -1, -1):
        s = steps[i]
        if s.action in _FATAL or s.action == "UNDETERMINED" or s.action.startswith("POLICY D"):
            return s, i
    return None, len(steps)


def _deciding(steps: tuple[Step, ...] | list[Step]) -> str:
    s, _ = _deciding_step(steps)
    if s is None:
        return ""
    where = f"{s.table}/{s.chain}" if s.table else s.hook
    if s.action.startswith("POLICY"):
        where += " policy"
    return f"{where} ({s.source})" if s.source else where


# --- one rule, highlighted ----------------------------------------------------------------------------


def _tokens(text: str) -> list[tuple[int, int]]:
    """Spans of the words of an iptables-save line; a quoted string (with \\" inside) is one word."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        j = i
        while j < n and not text[j].isspace():
            if text[j] == '"':
                j += 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
            j += 1
        spans.append((i, min(j, n)))
        i = j
    return spans


def highlight_rule(text: str, action: str, matched: bool = True) -> Text:
    """The rule as written, with the parts that matched, the comment and the target styled apart."""
    text = printable(text)
    out = Text(text)
    spans = _tokens(text)
    words = [text[a:b] for a, b in spans]
    if text.startswith(":"):  # a chain declaration: the policy decided
        if len(spans) >= 2:
            out.stylize("bold", *spans[0])
            out.stylize(_ACTION_STYLE.get(action, "bold"), *spans[1])
        return out
    k = 0
    target_style = _ACTION_STYLE.get(action, "bold")
    while k < len(words):
        w = words[k]
        a, b = spans[k]
        if w in ("-A", "-I") and k + 1 < len(words):
            out.stylize("dim", a, b)
            out.stylize("bold", *spans[k + 1])
            k += 2
            continue
        if w == "-m" and k + 1 < len(words) and words[k + 1] == "comment":
            end = k + 2
            while end < len(words) and words[end] not in ("-m", "-j", "-g") and not _generic(words[end]):
                end += 1
            out.stylize(_COMMENT, a, spans[end - 1][1])
            k = end
            continue
        if w in ("-j", "-g") and k + 1 < len(words):
            out.stylize("bold", a, b)
            out.stylize(target_style.replace("reverse ", "") or "bold", *spans[k + 1])
            for j in range(k + 2, len(words)):
                if not words[j].startswith("-"):
                    out.stylize(target_style.replace("reverse ", "") or "bold", *spans[j])
            break
        if w == "-m":
            out.stylize("dim", a, b)
            if k + 1 < len(words):
                out.stylize("dim", *spans[k + 1])
            k += 2
            continue
        if w == "!" or w.startswith("-"):
            if matched:
                out.stylize("bold", a, b)
            k += 1
            while k < len(words) and not words[k].startswith("-") and words[k] != "!":
                if matched:
                    out.stylize(_MATCHED, *spans[k])
                k += 1
            continue
        k += 1
    return out


def _generic(word: str) -> bool:
    return word in ("!", "-p", "-s", "-d", "-i", "-o", "-f", "--protocol", "--source", "--destination",
                    "--in-interface", "--out-interface", "--fragment")


def _to_destination(text: str) -> str | None:
    """The DNAT target as the rule spells it: iptables `--to-destination X`, nft `dnat [ip|ip6] to X`."""
    m = (re.search(r"--to-destination\s+(\S+)", text) or re.search(r"\bdnat (?:ip6? )?to (\S+)", text)
         or re.search(r"\bto:(\S+)", text))  # `iptables -L` prints `DNAT ... to:10.244.1.5:8080`
    return m.group(1).rstrip(",;") if m else None


# --- the tree -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Ctx:
    """What the renderer tracks while reading a branch's steps in order."""

    width: int
    detail: Detail
    dst: str  # the destination before the next DNAT
    src: str
    multi_node: bool
    out_iface: str | None = None
    shared: int = 0
    dimmed: set[int] = field(default_factory=set)


def _badge(action: str) -> Text:
    style = _ACTION_STYLE.get(action, "bold")
    label = action
    if action in _EVENTS:
        label = ("◀ " if action.startswith("UN-") else "▶ ") + action
    elif action in _FATAL:
        label = "✖ " + action
    elif action == "UNDETERMINED":
        label = "? " + action
    return Text(label, style=style)


def _row(level: int, prefix: str, action: str, body: list[Text], cite: str | None, ctx: _Ctx,
         dim: bool = False) -> RenderableType:
    """A step: [table] [action] body…, with its citation at the end of the line if it fits, else below."""
    badge = _badge(action)
    avail = ctx.width - _GUIDE * level - (len(prefix) + 2 if prefix else 0) - badge.cell_len - 2
    lines = [t.copy() for t in body]
    if cite:
        c = _text(cite, _CITE)
        if len(lines) == 1 and lines[0].cell_len + 2 + c.cell_len <= avail:
            lines[0].append("  ")
            lines[0].append_text(c)
        else:
            lines.append(c)
    grid = Table.grid(padding=(0, 2))
    if prefix:
        grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    cells: list[RenderableType] = [_text(prefix, "bold")] if prefix else []
    cells += [badge, Text("\n").join(lines)]
    grid.add_row(*cells)
    return _Dim(grid) if dim else grid


class _Dim:
    """Render something dimmed (the steps a branch shares with an earlier one)."""

    def __init__(self, inner: RenderableType) -> None:
        self.inner = inner

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from Segment.apply_style(console.render(self.inner, options), post_style=Style(dim=True))


def _step_body(s: Step, ctx: _Ctx) -> tuple[str, list[Text]]:
    """(action shown, body lines) for one step; events get a line saying what changed."""
    action = s.action
    if s.rule is not None or s.text.startswith(":") or s.text.startswith("-A "):
        rule = highlight_rule(s.text, action, matched=action != "UNDETERMINED")
    else:
        rule = _text(s.text)
    if action in ("DNAT", "REDIRECT"):
        new = _to_destination(s.text) or "a local address"
        event = _text(f"{ctx.dst} → {new}", "bold magenta")
        ctx.dst = new
        return action, [event, rule]
    if action == "MASQUERADE":
        via = f"the address of {ctx.out_iface}" if ctx.out_iface else "the outgoing interface's address"
        return action, [Text(f"source {ctx.src} → {via}", style="bold cyan"), rule]
    if action == "SNAT":
        m = re.search(r"--to-source\s+(\S+)", s.text)
        return action, [_text(f"source {ctx.src} → {m.group(1) if m else '?'}", "bold cyan"), rule]
    if action in ("UN-DNAT", "UN-SNAT"):
        return action, [_text(s.text, "bold")]
    if action == "ROUTE":
        m = _DEV.search(s.text)
        if m:
            ctx.out_iface = m.group(1)
    return action, [rule]


def _keep(steps: list[Step], i: int, detail: Detail) -> bool:
    if detail == Detail.full:
        return True
    s = steps[i]
    # The overlay's own packet passing the underlay's chains is one line (ENCAP … DECAP) unless it
    # is stopped there; --detail full shows its walk.
    if s.encapsulated:
        # summary: the hop's ⇢ line says it arrived; full shows ENCAP … DECAP and the walk between.
        return s.action in ("OVERLAY", "UNDETERMINED") or s.action in _FATAL or s.action.startswith("POLICY D")
    if s.action == "POLICY ACCEPT" and s.rule is None and s.depth == 0:
        return False
    # A RETURN changes nothing; a jump is shown only when something in the chain it enters acts
    # (a mark, a translation, a verdict): a jump that came back without one does not change the fate.
    if s.action == "RETURN":
        return False
    # Of the link-layer steps in a row (device, neighbour, fdb), the last says where the frame goes.
    if s.action == "LINK" and i + 1 < len(steps) and steps[i + 1].action == "LINK" and steps[i + 1].node == s.node:
        return False
    if s.action in ("JUMP", "GOTO"):
        for nxt in steps[i + 1:]:
            if nxt.depth <= s.depth or nxt.hook != s.hook or nxt.node != s.node:
                return False
            if nxt.action not in ("JUMP", "GOTO", "RETURN"):
                return True
        return False
    return True


def _section(s: Step, ctx: _Ctx) -> str:
    hook = f"{s.hook} (encapsulated)" if s.encapsulated else s.hook
    return f"{hook} · {s.node}" if ctx.multi_node and s.node else hook


def _add_steps(parent: Tree, steps: list[Step], ctx: _Ctx, level: int) -> None:
    """Steps grouped by hook (a section each), rules nested by jump depth, hops and routing on their own."""
    hook_node: Tree | None = None
    hook_key: str | None = None
    stack: list[Tree] = []
    for i, s in enumerate(steps):
        if not _keep(steps, i, ctx.detail):
            continue
        dim = i in ctx.dimmed
        if dim and ctx.detail != Detail.full:
            continue  # the steps an earlier branch showed: "= same path as branch N up to …" says so
        if s.action == "ARRIVE":
            label = Text.assemble(("⇢ ", "bold"), (printable(s.node or "another node"), "bold reverse blue"), "  ")
            label.append_text(_text(s.text))
            parent.add(_Dim(label) if dim else label)
            hook_node, hook_key, stack = None, None, []
            ctx.out_iface = None
            continue
        if s.hook == "routing":
            action, body = _step_body(s, ctx)
            prefix = _section(s, ctx)
            parent.add(_row(level, prefix, action, body, s.source, ctx, dim))
            hook_node, hook_key, stack = None, None, []
            continue
        key = _section(s, ctx)
        if hook_node is None or key != hook_key:
            head = _text(key, "bold underline")
            hook_node = parent.add(_Dim(head) if dim else head)
            hook_key, stack = key, []
        action, body = _step_body(s, ctx)
        depth = min(s.depth, len(stack))
        node_parent = hook_node if depth == 0 else stack[depth - 1]
        prefix = (s.table or "") if depth == 0 else ""
        node = node_parent.add(_row(level + 1 + depth, prefix, action, body, s.source, ctx, dim))
        stack = stack[:depth] + [node]


def _branch_head(b: Branch, n: int, total: int) -> Text:
    head = Text(f"branch {n}/{total}", style="bold")
    head.append(f" · {_pct(b.probability)} · ")
    head.append(b.disposition.value, style=_STYLE[b.disposition])
    if b.dnat:
        head.append(" · DNAT → ")
        head.append(printable(b.dnat), style="bold magenta")
    if b.masquerade:
        head.append(" · masquerade", style="cyan")
    elif b.snat:
        head.append(printable(f" · SNAT → {b.snat}"), style="cyan")
    hops = _crossings(b.steps)
    if hops:
        head.append(printable(" · via " + " → ".join(n for n, _ in hops)), style="blue")
    if b.egress and b.egress.iface:
        head.append(printable(f" · out {b.egress.iface}"))
    if b.reply is not None:
        head.append(" · reply ")
        head.append("fails" if b.reply.problem else b.reply.disposition.value,
                    style="bold red" if b.reply.problem else _STYLE[b.reply.disposition])
    return head


def _reply(tree: Tree, r: Reply, ctx: _Ctx) -> None:
    head = Text("reply", style="bold underline")
    head.append("  ")
    head.append(r.disposition.value, style=_STYLE[r.disposition])
    first = next((s for s in r.steps if s.action == "REPLY"), None)
    if first is not None:
        head.append(printable("  " + first.text.removeprefix("reply ")))
    if r.problem:
        head.append("\n")
        head.append(printable(f"✖ {r.problem}"), style="bold red")
    rt = tree.add(head)
    steps = [s for s in r.steps if s.action != "REPLY"]
    if ctx.detail == Detail.full:
        rctx = _Ctx(ctx.width, ctx.detail, ctx.dst, ctx.src, ctx.multi_node)
        _add_steps(rt, steps, rctx, 2)
        return
    # Briefly: what changes the answer (un-NAT), what ends it, and the nodes it crosses.
    brief = [s for s in steps if s.action in _EVENTS or s.action in _FATAL or s.action in ("ARRIVE", "UNDETERMINED")]
    for s in brief:
        if s.action == "ARRIVE":
            rt.add(Text.assemble(("⇢ ", "bold"), (printable(s.node or "another node"), "bold reverse blue"), "  ",
                                 printable(s.text)))
            continue
        body = [_text(s.text, "bold")] if s.rule is None else [highlight_rule(s.text, s.action)]
        prefix = f"{s.hook} · {s.node}" if ctx.multi_node and s.node else s.hook
        rt.add(_row(2, prefix, s.action, body, s.source, ctx))


def _common_prefix(a: tuple[Step, ...], b: tuple[Step, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def branch_tree(t: Trace, b: Branch, n: int, width: int, detail: Detail,
                prefix_from: tuple[int, int] | None = None) -> Tree:
    tree = Tree(_branch_head(b, n, len(t.branches)), guide_style="dim")
    multi = len({s.node for s in b.steps if s.node}) > 1 or any(s.action == "ARRIVE" for s in b.steps)
    dport = f":{t.flow.dport}" if t.flow.dport is not None else ""
    host = f"[{t.flow.dst}]" if t.flow.dst.version == 6 and dport else str(t.flow.dst)
    ctx = _Ctx(width, detail, f"{host}{dport}", str(t.flow.src), multi)
    steps = list(b.steps)
    if prefix_from:
        shared, other = prefix_from
        ctx.dimmed = set(range(shared))
        last = next((s for s in reversed(steps[:shared]) if s.source), None)
        upto = f" up to {last.source}" if last else f" for {shared} steps"
        tree.add(_text(f"= same path as branch {other}{upto}", "dim italic"))
    _add_steps(tree, steps, ctx, 1)
    if b.reply is not None:
        _reply(tree, b.reply, ctx)
    if detail == Detail.full:
        for a in b.assumptions:
            tree.add(_text(f"assumed: {a}", "italic"))
    for u in b.unknowns:
        tree.add(_text(f"? undetermined: {u}", "yellow"))
    return tree


def _minimal(t: Trace, console: Console) -> None:
    for n, b in enumerate(t.branches, start=1):
        line = Text(f"  branch {n}: {_pct(b.probability)} ")
        line.append(b.disposition.value, style=_STYLE[b.disposition])
        if b.dnat:
            line.append(printable(f"  DNAT → {b.dnat}"))
        hops = _crossings(b.steps)
        if hops:
            line.append(printable("  via " + " → ".join(h for h, _ in hops)))
        if b.egress and b.egress.iface:
            line.append(printable(f"  out {b.egress.iface}"))
        if b.disposition.failed or b.disposition == Disposition.UNDETERMINED:
            why = _deciding(b.steps)
            if why:
                line.append(printable(f"  at {why}"))
        if b.reply is not None and b.reply.problem:
            line.append(printable(f"  reply fails: {b.reply.problem}"), style="red")
        console.print(line, soft_wrap=True)  # one line per branch, whatever the width


def _bullets(console: Console, title: str, items: list[str], title_style: str, style: str) -> None:
    """A titled list; a long item wraps under its own text, not under the dash."""
    if not items:
        return
    console.print(Text(title, style=title_style))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for item in items:
        grid.add_row(Text("  -"), _text(item, style))
    console.print(grid)


def render_trace(t: Trace, console: Console, detail: Detail = Detail.summary, service: str | None = None) -> None:
    """`service`: the Service port the destination is, when the caller knows it from elsewhere (the input's
    Service table) and the trace's own steps do not name it (it was decided before kube-proxy's rules)."""
    # The answer is one line whatever the width: a pipe, a ticket and grep get it whole (a terminal wraps it).
    console.print(_text(summary_line(t, service), _STYLE[t.disposition]), soft_wrap=True)
    if detail == Detail.minimal:
        _minimal(t, console)
        return
    trees: list[RenderableType] = []
    for n, b in enumerate(t.branches, start=1):
        best = None
        if detail != Detail.full:
            for k in range(n - 1):
                c = _common_prefix(t.branches[k].steps, b.steps)
                if c and (best is None or c > best[0]):
                    best = (c, k + 1)
        trees.append(branch_tree(t, b, n, console.width, detail, best))
    for n, b in enumerate(t.conditional, start=1):
        tree = branch_tree(t, b, n, console.width, detail)
        tree.label = Text(printable(f"what-if {n}: if " + "; and if ".join(b.conditions)), style="italic") + \
            Text(" → ") + Text(b.disposition.value, style=_STYLE[b.disposition])
        trees.append(tree)
    console.print(Group(*trees))
    branch_assumptions = {a for b in t.branches for a in b.assumptions}
    assumptions = list(dict.fromkeys(list(t.assumptions) + sorted(branch_assumptions)))
    _bullets(console, "assumptions:", assumptions, "bold", "italic")
    unknowns = [f"branch {n}: {u}" for n, b in enumerate(t.branches, start=1) for u in b.unknowns]
    _bullets(console, "undetermined:", unknowns, "bold yellow", "yellow")
    problems = [f"branch {n}: {b.reply.problem}" for n, b in enumerate(t.branches, start=1)
                if b.reply and b.reply.problem]
    _bullets(console, "reply problems:", problems, "bold red", "red")
    if t.inputs:
        dirs = sorted({i.file.rsplit("/", 1)[0] + "/" if "/" in i.file else i.file for i in t.inputs})
        console.print(_text(f"inputs: {len(t.inputs)} files from {', '.join(dirs)} (-o json lists them with sha256)",
                            "dim"))
