"""The human renderer on small traces: exact strings, the highlighted parts of a rule, widths, colour."""

from __future__ import annotations

import io
from ipaddress import ip_address

import pytest
from rich.console import Console

from kptrace.model.flow import Flow
from kptrace.model.trace import Branch, Disposition, Egress, Reply, Step, Trace
from kptrace.render.human import NO_WRAP, Detail, highlight_rule, make_console, render_trace, summary_line

SVC = ('-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" '
       "-m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU")
SEP = ('-A KUBE-SEP-X -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp '
       "-j DNAT --to-destination 10.244.1.9:53")


def _styled(text: str, action: str, style_part: str) -> list[str]:
    t = highlight_rule(text, action)
    return [text[s.start:s.end] for s in t.spans if style_part in str(s.style)]


def test_highlight_marks_matched_values_dims_the_comment_and_colours_the_target() -> None:
    assert _styled(SVC, "JUMP", "yellow") == ["10.96.0.10/32", "udp", "53"]
    assert _styled(SVC, "JUMP", "italic") == ['-m comment --comment "kube-system/kube-dns:dns cluster IP"']
    assert "KUBE-SVC-TCOU7JCQXEZGVUNU" in _styled(SVC, "JUMP", "blue")
    assert _styled(SEP, "DNAT", "magenta") == ["DNAT", "10.244.1.9:53"]
    neg = "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
    assert "0x4000/0x4000" in _styled(neg, "RETURN", "yellow")
    assert highlight_rule(SVC, "JUMP").plain == SVC  # the rule is shown as written


def test_highlight_keeps_a_quoted_comment_with_escaped_quotes_whole() -> None:
    rule = r'-A X -m comment --comment "a \"b\" -j c" -j ACCEPT'
    assert _styled(rule, "ACCEPT", "italic") == [r'-m comment --comment "a \"b\" -j c"']
    assert _styled(rule, "ACCEPT", "green") == ["ACCEPT"]


def test_policy_line_styles_the_policy() -> None:
    assert _styled(":FORWARD DROP [0:0]", "POLICY DROP", "red") == ["DROP"]


def _step(action: str, text: str, source: str | None = "f:1", depth: int = 0, hook: str = "PREROUTING",
          table: str | None = "nat", chain: str | None = "KUBE-SERVICES", node: str | None = None) -> Step:
    return Step(hook, table, chain, 1 if text.startswith("-A") else None, source, action, text, depth, node)


def _trace(*branches: Branch, dport: int | None = 53) -> Trace:
    return Trace(Flow(ip_address("10.244.1.5"), ip_address("10.96.0.10"), "udp", None, dport), "pod", "cni0",
                 branches)


def test_summary_line_one_outcome() -> None:
    b = Branch(1.0, Disposition.DROPPED, (_step("POLICY DROP", ":FORWARD DROP [0:0]", "d:16", hook="FORWARD",
                                                 table="filter", chain="FORWARD"),))
    # The verdict word once, then the reason and the deciding place (issue 19: no "DROPPED: dropped by").
    assert summary_line(_trace(b)) == "10.244.1.5 → 10.96.0.10:53/udp: DROPPED — policy DROP (filter/FORWARD, d:16)"


def test_summary_line_gives_each_endpoint_its_fate() -> None:
    arrive = _step("ARRIVE", "arrives on node-b via flannel.1 (src a, dst b)", None, hook="link", table=None,
                   chain=None, node="node-b")
    a = Branch(0.5, Disposition.FORWARDED, (), dnat="10.244.1.9:53", egress=Egress("cni0", None, "node-a"))
    b = Branch(0.5, Disposition.FORWARDED, (arrive,), dnat="10.244.2.7:53", egress=Egress("cni0", None, "node-b"))
    assert summary_line(_trace(a, b)) == (
        "10.244.1.5 → 10.96.0.10:53/udp: FORWARDED — DNAT to 10.244.1.9:53 (50 %, forwarded via cni0) "
        "or 10.244.2.7:53 (50 %, forwarded via flannel.1 to node-b, out cni0)")


def test_summary_line_same_outcome_and_failed_reply() -> None:
    reply = Reply(Disposition.FORWARDED, (), problem="answered from the pod IP")
    a = Branch(0.25, Disposition.FORWARDED, (), dnat="10.0.0.1:53", egress=Egress("eth0"), masquerade=True)
    b = Branch(0.75, Disposition.FORWARDED, (), dnat="10.0.0.2:53", egress=Egress("eth0"), masquerade=True,
               reply=reply)
    assert summary_line(_trace(a, b)) == (
        "10.244.1.5 → 10.96.0.10:53/udp: FORWARDED — DNAT to 10.0.0.1:53 (25 %) or 10.0.0.2:53 (75 %), "
        "masqueraded, forwarded via eth0, but the REPLY fails (75 %)")


def _render(t: Trace, width: int, detail: Detail = Detail.summary, colour: bool = False) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=colour, color_system="standard" if colour else None)
    render_trace(t, console, detail)
    return buf.getvalue()


def _dns_branch() -> Branch:
    return Branch(1.0, Disposition.FORWARDED, (
        _step("JUMP", "-A PREROUTING -j KUBE-SERVICES", "n/iptables-save.txt:91", chain="PREROUTING"),
        _step("JUMP", SVC, "n/iptables-save.txt:148", depth=1),
        _step("DNAT", SEP, "n/iptables-save.txt:137", depth=2, chain="KUBE-SEP-X"),
        _step("ROUTE", "10.244.1.9 dev cni0: forward", "n/ip-route.txt:3", hook="routing", table=None, chain=None),
    ), dnat="10.244.1.9:53", egress=Egress("cni0"))


def test_citation_at_the_end_when_it_fits_else_on_its_own_line() -> None:
    wide = _render(_trace(_dns_branch()), 200).splitlines()
    assert any(line.endswith("-j KUBE-SERVICES  n/iptables-save.txt:91") for line in wide)
    narrow = [line.rstrip() for line in _render(_trace(_dns_branch()), 80).splitlines()]
    i = next(k for k, line in enumerate(narrow) if "-A KUBE-SERVICES" in line)
    cite = next(line for line in narrow[i:] if "n/iptables-save.txt:148" in line)
    assert cite.strip().startswith("│") or cite.split("n/iptables-save.txt:148")[0].strip(" │") == ""
    assert all(len(line) <= 80 for line in narrow[1:])  # the answer line is never wrapped


def test_tree_shows_sections_events_and_nesting() -> None:
    out = _render(_trace(_dns_branch()), 120)
    lines = out.splitlines()
    assert lines[0].startswith("10.244.1.5 → kube-system/kube-dns:dns (10.96.0.10:53/udp): FORWARDED — "
                               "DNAT to 10.244.1.9:53 (100 %)")
    assert lines[1] == "branch 1/1 · 100 % · FORWARDED · DNAT → 10.244.1.9:53 · out cni0"
    assert lines[2] == "├── PREROUTING"
    assert lines[3].startswith("│   └── nat  JUMP  -A PREROUTING -j KUBE-SERVICES")
    assert "▶ DNAT  10.96.0.10:53 → 10.244.1.9:53" in out
    assert lines[-1].startswith("└── routing  ROUTE  10.244.1.9 dev cni0: forward")


def test_minimal_is_one_line_per_branch() -> None:
    out = _render(_trace(_dns_branch()), 120, Detail.minimal)
    assert out.splitlines()[1:] == ["  branch 1: 100 % FORWARDED  DNAT → 10.244.1.9:53  out cni0"]


def test_colour_only_on_a_terminal() -> None:
    plain = _render(_trace(_dns_branch()), 120)
    coloured = _render(_trace(_dns_branch()), 120, colour=True)
    assert "\x1b[" not in plain
    assert "\x1b[" in coloured and "\x1b[1;33m10.96.0.10/32" in coloured  # a matched value, bold yellow


def test_make_console_width_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    # Not a terminal and no COLUMNS (a pipe, a file): nothing is wrapped, grep sees every line whole.
    assert make_console(file=io.StringIO()).width == NO_WRAP
    assert make_console(132, file=io.StringIO()).width == 132
    monkeypatch.setenv("COLUMNS", "90")
    assert make_console(file=io.StringIO()).width == 90
    monkeypatch.setenv("NO_COLOR", "1")
    assert make_console(file=io.StringIO()).no_color


def _svc_step(comment: str, action: str, text_tail: str, source: str, chain: str = "KUBE-SERVICES") -> Step:
    return _step(action, f'-A {chain} -d 10.96.0.10/32 -p udp -m comment --comment "{comment}" {text_tail}', source,
                 hook="FORWARD", table="filter", chain=chain)


def test_first_line_names_the_service_reason_and_place_once() -> None:
    reject = _svc_step("kube-system/kube-dns:dns has no endpoints", "REJECT",
                       "-m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable", "node-a/iptables-save.txt:23")
    line = summary_line(_trace(Branch(1.0, Disposition.REJECTED, (reject,))))
    assert line == ("10.244.1.5 → kube-system/kube-dns:dns (10.96.0.10:53/udp): REJECTED — no endpoints "
                    "(filter/KUBE-SERVICES, node-a/iptables-save.txt:23)")
    words = line.lower().replace("—", " ").split()
    assert not any(a == b for a, b in zip(words, words[1:]))  # no doubled words
    assert "rejected by" not in line.lower()


def test_first_line_names_an_nft_service_from_its_chain_name() -> None:
    lookup = _step("LOOKUP", "@service-ips: 10.96.0.53 . udp . 53 : goto service-2YY5BS5C-kube-system/dns/udp/dns",
                   "n:32", table="ip kube-proxy", chain="services")
    b = Branch(1.0, Disposition.FORWARDED, (lookup,), dnat="10.244.1.3:5353", egress=Egress("cni0"))
    assert summary_line(_trace(b)).startswith("10.244.1.5 → kube-system/dns:dns (10.96.0.10:53/udp): FORWARDED — ")


def test_many_endpoints_are_a_count_and_shares_not_a_list() -> None:
    branches = tuple(Branch(0.1, Disposition.FORWARDED, (), dnat=f"10.244.{i % 2 + 1}.{i}:53",
                            egress=Egress("cni0" if i % 2 else "flannel.1")) for i in range(10))
    line = summary_line(_trace(*branches))
    assert "DNAT to one of 10 endpoints (10 % each)" in line
    assert "forwarded via flannel.1 (50 %) / forwarded via cni0 (50 %)" in line
    assert "10.244.1.1:53" not in line


def test_first_line_is_never_wrapped_and_lines_have_no_trailing_blanks() -> None:
    buf = io.StringIO()
    console = make_console(width=60, file=buf)
    render_trace(_trace(_dns_branch()), console)
    out = buf.getvalue()
    assert out.splitlines()[0].endswith("(100 %), forwarded via cni0") and len(out.splitlines()[0]) > 60
    assert not any(line.endswith(" ") for line in out.splitlines())
    assert "(dimmed)" not in out
