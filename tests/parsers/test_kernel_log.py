"""Kernel log lines: TRACE steps (dmesg, syslog, journal, xtables-monitor) and the messages kptrace knows."""

from __future__ import annotations

import pytest

from kptrace.errors import ParseError
from kptrace.model.observed import KernelMessage, TraceEvent
from kptrace.parsers.kernel_log import parse_kernel_log


def test_trace_lines_from_the_journal_with_web_spaces() -> None:
    text = ("Jan 18 14:57:18 minion kernel: [448136.197740] TRACE: nat:PREROUTING:rule:1 IN=ens5 OUT= "
            "MAC=fa:16:3e:2a:85:74:fa:16:3e:70:51:cc:08:00 SRC=     110.110.110.108 DST=110.110.110.111 LEN=60 "
            "TOS=0x00 PREC=0x00 TTL=64 ID=23727 DF PROTO=TCP SPT=45847 DPT=8089 SEQ=1 ACK=0 WINDOW=29200 RES=0x00 "
            "SYN URGP=0 OPT (0204     05B40402080A)\n")
    [ev] = parse_kernel_log(text, "t.log")
    assert isinstance(ev, TraceEvent)
    assert (ev.table, ev.chain, ev.kind, ev.number, ev.family) == ("nat", "PREROUTING", "rule", 1, 4)
    assert (ev.get("IN"), ev.get("OUT"), ev.get("SRC"), ev.get("DPT"), ev.get("OPT")) == (
        "ens5", "", "110.110.110.108", "8089", "020405B40402080A")
    assert ev.get("DF") == "" and ev.source.line == 1


@pytest.mark.parametrize("prefix", ["[ 3774.709092] ", "Apr  9 17:02:08 node32 kernel: ",
                                    "2021-04-09T17:02:08.123+00:00 node32 kernel: ", ""])
def test_trace_prefixes(prefix: str) -> None:
    [ev] = parse_kernel_log(prefix + "TRACE: raw:PREROUTING:policy:2 IN=flannel.1 OUT= SRC=fd00::1 DST=fd00::2\n", "t")
    assert isinstance(ev, TraceEvent) and (ev.kind, ev.number, ev.family) == ("policy", 2, 6)


def test_xtables_monitor_trace_takes_the_packet_of_its_id() -> None:
    text = (" TRACE: 2 fc3b4c5d nat:KUBE-SERVICES:rule:0x1c:JUMP:KUBE-SVC-X  -4 -t nat -A KUBE-SERVICES -d 10.96.0.10/32 "
            "-j KUBE-SVC-X\n"
            "PACKET: 2 fc3b4c5d IN=eth0 OUT= SRC=10.244.1.5 DST=10.96.0.10 LEN=60 TOS=0x0 TTL=64 ID=1DF SPORT=1 DPORT=53\n"
            " TRACE: 2 fc3b4c5d filter:INPUT:policy:ACCEPT \n")
    events = parse_kernel_log(text, "xt")
    assert [type(e) for e in events] == [TraceEvent, TraceEvent]
    rule, policy = events
    assert isinstance(rule, TraceEvent) and isinstance(policy, TraceEvent)
    assert (rule.handle, rule.verdict, rule.trace_id, rule.family) == (0x1C, "JUMP:KUBE-SVC-X", "fc3b4c5d", 4)
    assert rule.rule_text is not None and rule.rule_text.startswith("-4 -t nat -A KUBE-SERVICES")
    assert rule.get("DST") == "10.96.0.10" and policy.verdict == "ACCEPT" and policy.get("DPORT") == "53"


def test_messages_kptrace_knows_and_others() -> None:
    text = ("[Tue Nov 20 22:30:22 2018] nf_conntrack: table full, dropping packet\n"
            "[79049.987562] IPVS: rr: UDP 10.96.0.10:53 - no destination available\n"
            "[   12.3] eth0: link up\n")
    kinds = [(m.kind, m.time) for m in parse_kernel_log(text, "dmesg") if isinstance(m, KernelMessage)]
    assert kinds == [("conntrack-full", "[Tue Nov 20 22:30:22 2018]"), ("ipvs-no-destination", "[79049.987562]"),
                     ("other", "[   12.3]")]


def test_a_line_that_is_not_a_kernel_line_is_located() -> None:
    with pytest.raises(ParseError) as e:
        parse_kernel_log("[1.0] ok\nbut then the node rebooted\n", "d")
    assert (e.value.line, e.value.col) == (2, 1)
