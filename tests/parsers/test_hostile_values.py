"""Values that are not what they claim (issue 20, item 2): Unicode digits, numbers of thousands of digits,
JSON with a key missing or nested a thousand deep, nft sets nested in sets. Each is a located ParseError or a
kept unknown, never another exception; a port is ASCII digits only (`٥٣` is not 53)."""

from __future__ import annotations

import json

import pytest

from kptrace.errors import ParseError
from kptrace.model.nft import UnknownStmt
from kptrace.parsers.ip_addr import parse_ip_addr
from kptrace.parsers.ip_link import parse_ip_link
from kptrace.parsers.ip_route import parse_ip_route
from kptrace.parsers.iptables_save import parse_iptables_save
from kptrace.parsers.ipvsadm import parse_ipvsadm
from kptrace.parsers.nft_json import parse_nft_json
from kptrace.parsers.nft_text import parse_nft_text
from kptrace.parsers.numbers import is_num

DIGITS = ["5²", "٥٣", "5" * 5000, "５３"]  # superscript, Arabic-Indic, 5,000 digits, fullwidth


def test_is_num_takes_ascii_digits_only() -> None:
    assert is_num("53") and is_num("0") and is_num("9" * 20)
    assert not any(is_num(s) for s in ["", "²", "٥٣", "５３", "9" * 21, "-1", " 1", "1.0"])


@pytest.mark.parametrize("port", DIGITS)
def test_nat_ports_are_ascii_digits(port: str) -> None:
    dump = f"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j DNAT --to-destination 10.0.0.1:{port}\nCOMMIT\n"
    with pytest.raises(ParseError) as e:
        parse_iptables_save(dump, "save.txt")
    assert (e.value.line, e.value.message[:15]) == (3, "invalid value '")
    redirect = f"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j REDIRECT --to-ports {port}\nCOMMIT\n"
    with pytest.raises(ParseError):
        parse_iptables_save(redirect, "save.txt")


@pytest.mark.parametrize("value", ["10.0.0.1:53", "10.0.0.1-10.0.0.9:80-90", "[fd00::1]:80", "fd00::1", ":80",
                                   "10.0.0.1:1000-2000/3000"])
def test_nat_targets_iptables_prints_still_read(value: str) -> None:
    dump = f"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j DNAT --to-destination {value}\nCOMMIT\n"
    assert parse_iptables_save(dump, "save.txt").ruleset.tables["nat"].chains["PREROUTING"].rules


@pytest.mark.parametrize("port", DIGITS)
def test_ipvsadm_ports_are_ascii_digits(port: str) -> None:
    text = f"IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n" \
           f"  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\nTCP  10.96.0.1:{port} rr\n" \
           f"  -> 10.244.1.9:{port}               Masq    1      0          0\n"
    try:
        table = parse_ipvsadm(text, "ipvsadm.txt")
    except ParseError:
        return
    assert all(s.port != 53 and s.port != 5 for s in table.services)


@pytest.mark.parametrize("line", ["IP Virtual Server version 1.2.1 (size=" + "9" * 5000 + ")",
                                  "-A -t 10.96.0.1:443 -s rr\n-a -t 10.96.0.1:443 -r 10.0.0.1:6443 -m -w " + "9" * 5000])
def test_ipvsadm_huge_numbers(line: str) -> None:
    try:
        parse_ipvsadm(line + "\n", "ipvsadm.txt")
    except ParseError:
        pass


def test_ip_link_index_of_5000_digits() -> None:
    with pytest.raises(ParseError):
        parse_ip_link("9" * 5000 + ": eth0: <UP> mtu 1500 state UP\n", "ip-link.txt")


@pytest.mark.parametrize("rule", ["numgen random mod ² vmap { 0 : accept }", "numgen random mod " + "9" * 5000 + " == 1 drop",
                                  "numgen random mod ٣ == 1 drop", "meta mark " + "& 1 " * 200 + "== 1 drop"])
def test_nft_text_rules_with_hostile_numbers_are_kept_unknown(rule: str) -> None:
    rs = parse_nft_text("table ip t {\n chain c {\n  type filter hook prerouting priority 0;\n  " + rule + "\n }\n}\n",
                        "nft.txt")
    stmts = rs.tables[("ip", "t")].chains["c"].rules[0].stmts
    assert any(isinstance(s, UnknownStmt) for s in stmts)


def test_nft_text_priority_of_5000_digits() -> None:
    with pytest.raises(ParseError):
        parse_nft_text("table ip t {\n chain c {\n  type filter hook prerouting priority " + "9" * 5000 + ";\n }\n}\n",
                       "nft.txt")


def test_nft_sets_nested_in_sets() -> None:
    nested = "{ " * 5000 + "1.2.3.4" + " }" * 5000
    text = f"table ip t {{\n set s {{\n  type ipv4_addr\n  elements = {nested}\n }}\n}}\n"
    with pytest.raises(ParseError) as e:
        parse_nft_text(text, "nft.txt")
    assert e.value.line == 4 and "nested deeper than 16 levels" in e.value.message


def nft_doc(*objs: object) -> str:
    return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *objs]})


TABLE = {"table": {"family": "ip", "name": "t"}}
CHAIN = {"chain": {"family": "ip", "table": "t", "name": "c", "type": "filter", "hook": "prerouting", "prio": 0}}


def test_nft_json_expression_with_a_key_missing_is_kept_unknown() -> None:
    rule = {"rule": {"family": "ip", "table": "t", "chain": "c",
                     "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp"}}, "right": 80}}]}}
    rs = parse_nft_json(nft_doc(TABLE, CHAIN, rule), "nft.json")
    stmt = rs.tables[("ip", "t")].chains["c"].rules[0].stmts[0]
    assert isinstance(stmt, UnknownStmt) and "the key 'field' is missing" in (stmt.why or "")
    assert any("$.nftables[3].rule.expr[0]" in d.message for d in rs.diagnostics)


@pytest.mark.parametrize("obj,message", [
    ({"chain": {"family": "ip", "table": "t", "hook": "prerouting"}}, "'name' should be a string"),
    ({"chain": {"family": "ip", "table": "t", "name": "c", "hook": ["x"]}}, "'hook' should be a string"),
    ({"set": {"family": "ip", "table": "t", "name": "s", "elem": [{"elem": 5}]}}, None),
    ({"rule": {"family": "ip", "table": "t", "chain": "c", "expr": [{"jump": 5}]}}, None),
])
def test_nft_json_malformed_objects(obj: dict[str, object], message: str | None) -> None:
    try:
        parse_nft_json(nft_doc(TABLE, CHAIN, obj), "nft.json")
    except ParseError as e:
        assert e.file == "nft.json" and e.line == 1 and (message is None or message in e.message), str(e)


def test_deeply_nested_json_is_one_located_line() -> None:
    for depth in (100, 100_000):
        deep = "[" * depth + "]" * depth
        with pytest.raises(ParseError) as e:
            parse_ip_addr(deep, "ip-addr.json")
        assert "nested" in e.value.message
        with pytest.raises(ParseError) as e:
            parse_ip_route("[" + "{\"dst\": " * 1 + deep + "}]", "ip-route.json")
        assert "nested" in e.value.message
        with pytest.raises(ParseError) as e:
            parse_nft_json('{"nftables": [{"x": ' + deep + "}]}", "nft.json")
        assert "nested" in e.value.message
