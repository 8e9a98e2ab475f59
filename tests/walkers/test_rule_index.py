"""The destination index of a parsed chain (kptrace/walkers/rule_index.py) only leaves out rules that cannot
match: for every packet, every rule it does not offer evaluates to False (never True, a Chance or Unknown),
whatever the rule's other conditions, spellings or modules kptrace does not model."""

from __future__ import annotations

import random
from ipaddress import ip_address

from kptrace.parsers.iptables_save import parse_iptables_save
from kptrace.walkers.matches import MatchContext, eval_rule
from kptrace.walkers.packet import Packet
from kptrace.walkers.rule_index import INDEX_MIN_RULES, candidates

HOSTS = [f"10.96.{i // 200}.{i % 200 + 1}" for i in range(60)]
FORMS = [
    "-d {h}/32 -p tcp -m comment --comment \"ns/svc{n} cluster IP\" -m tcp --dport {p} -j ACCEPT",
    "-d {h} -p udp -m udp --dport {p} -j ACCEPT",
    "! -d {h}/32 -p tcp -m tcp --dport {p} -j MARK --set-xmark 0x4000/0x4000",
    "-d 10.96.0.0/12 -j RETURN",
    "-d {h}/32,10.96.9.9/32 -j ACCEPT",
    "-p tcp -m tcp --dport {p} -j DNAT --to-destination 10.244.1.9:80",
    "-p tcp -m tcp ! --dport {p} -j DROP",
    "-p tcp -m multiport --dports {p},443 -j ACCEPT",
    "-p tcp -m tcp --dport {p}:{q} -j ACCEPT",
    "-p sctp -m sctp --dport {p} -j ACCEPT",
    "-m foo --dport {p} -j ACCEPT",
    "-s {h}/32 -j DROP",
    "-s 10.244.1.5/32 -p tcp -m tcp --dport {p} -j ACCEPT",
    "-m addrtype --dst-type LOCAL -j RETURN",
    "-i eth0 -d {h}/32 -j DROP",
    "-p tcp -m tcp --sport {p} -j ACCEPT",
    "-m statistic --mode random --probability 0.5 -j ACCEPT",
]


def _chain_text(rng: random.Random, n: int) -> str:
    lines = ["*nat", ":KUBE-SERVICES - [0:0]"]
    for i in range(n):
        form = rng.choice(FORMS)
        p = rng.choice([53, 80, 443, 8080, 30080])
        lines.append("-A KUBE-SERVICES " + form.format(h=rng.choice(HOSTS), n=i, p=p, q=p + 10))
    return "\n".join(lines + ["COMMIT", ""])


def test_left_out_rules_never_match() -> None:
    rng = random.Random(7)
    for _ in range(5):
        rs = parse_iptables_save(_chain_text(rng, 120), "iptables-save.txt", 4).ruleset
        chain = rs.chain("nat", "KUBE-SERVICES")
        assert chain is not None and len(chain) >= INDEX_MIN_RULES
        ctx = MatchContext({ip_address("192.168.0.2")}, True, "PREROUTING", [])
        offered_fewer = 0
        for _ in range(40):
            pkt = Packet(ip_address(rng.choice(["10.244.1.5", "203.0.113.10", HOSTS[3]])),
                         ip_address(rng.choice(HOSTS + ["10.96.9.9", "192.168.0.2", "8.8.8.8"])),
                         rng.choice(["tcp", "udp", "sctp", "icmp"]), rng.choice([None, 40000]),
                         rng.choice([None, 53, 80, 443, 8080, 30080, 30085]), rng.choice([None, "eth0", "cni0"]))
            start = rng.choice([0, 0, 17, 70])
            offered = list(candidates(chain, pkt, start))
            assert offered == sorted(set(offered)) and all(i >= start for i in offered)
            for i in set(range(start, len(chain))) - set(offered):
                assert eval_rule(chain.rule_at(i), pkt, ctx) is False, (chain.rule_at(i).text, pkt)
            offered_fewer += len(offered) < len(chain) - start
        assert offered_fewer > 20  # the index does leave rules out
