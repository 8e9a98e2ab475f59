"""A prefix longer than its address (`10.244.0.0/33`) is no value nft prints or takes: a one-line error
`file:line:col`, in the text and JSON forms alike, and in a --what-if nft rule."""

from __future__ import annotations

import json

import pytest

from kptrace.errors import ParseError
from kptrace.parsers.nft_json import parse_nft_json
from kptrace.parsers.nft_text import parse_nft_text
from kptrace.whatif.grammar import WhatIfError, parse_change

HEAD = "table ip filter {\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n"


@pytest.mark.parametrize(("rule", "col", "value"), [
    ("ip saddr 10.244.0.0/33 accept", 12, "'10.244.0.0/33': prefix length 33 is more than the 32 bits"),
    ("ip daddr { 10.0.0.0/8, 10.96.0.0/99 } drop", 26, "'10.96.0.0/99'"),
    ("ip6 saddr fd00::/129 accept", 13, "'fd00::/129': prefix length 129 is more than the 128 bits of an IPv6"),
    ("ip daddr 10.96.0.10 dnat to 10.0.0.0/40", 31, "'10.0.0.0/40'"),
])
def test_text_prefix_too_long_is_an_error_at_its_column(rule: str, col: int, value: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_nft_text(HEAD + f"\t\t{rule}\n\t}}\n}}\n", "bad.nft")
    msg = str(e.value)
    assert msg.startswith(f"bad.nft:4:{col}: {value}"), msg
    assert "\n" not in msg


def test_longest_prefixes_are_fine() -> None:
    rs = parse_nft_text(HEAD + "\t\tip saddr 10.244.0.1/32 accept\n\t\tip6 saddr fd00::1/128 accept\n\t}\n}\n",
                        "ok.nft")
    rules = rs.tables[("ip", "filter")].chains["forward"].rules
    assert [r.text for r in rules] == ["ip saddr 10.244.0.1/32 accept", "ip6 saddr fd00::1/128 accept"]


def test_json_prefix_too_long_is_an_error() -> None:
    doc = {"nftables": [
        {"table": {"family": "ip", "name": "filter", "handle": 1}},
        {"chain": {"family": "ip", "table": "filter", "name": "forward", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "filter", "chain": "forward", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "10.0.0.0", "len": 33}}}}, {"accept": None}]}}]}
    with pytest.raises(ParseError, match=r"^x\.json:1:\d+: '10\.0\.0\.0/33': prefix length 33 .*\$\.nftables\[2\]"):
        parse_nft_json(json.dumps(doc), "x.json")


def test_what_if_nft_rule_with_a_prefix_too_long() -> None:
    with pytest.raises(WhatIfError) as e:
        parse_change("nft add rule ip filter FORWARD ip saddr 10.244.0.0/33 accept", 2)
    assert str(e.value).startswith("what-if:2:41: '10.244.0.0/33': prefix length 33")
