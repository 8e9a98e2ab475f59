from __future__ import annotations

from ipaddress import ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kptrace.errors import ParseError
from kptrace.model.routing import FlannelSubnet
from kptrace.parsers.flannel import parse_flannel_subnet
from tests.parsers.test_ip_route import fixture, junk_text


def test_fixture() -> None:
    s = parse_flannel_subnet(fixture("flannel-subnet.env"), "flannel-subnet.env")
    assert s.network == ip_network("10.244.0.0/16")
    assert s.subnet == ip_network("10.244.1.0/24")  # written with the bridge address, 10.244.1.1/24
    assert (s.mtu, s.ipmasq) == (1450, True)
    assert str(s.source) == "flannel-subnet.env:2" and s.source is not None and s.source.text == "FLANNEL_SUBNET=10.244.1.1/24"


def test_missing_keys_quotes_comments_and_other_keys() -> None:
    s = parse_flannel_subnet(
        '# written by flanneld\nFLANNEL_NETWORK="10.244.0.0/16"\nFLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPMASQ=False\n'
    )
    assert s.network == ip_network("10.244.0.0/16") and s.subnet is None and s.mtu is None and s.ipmasq is False
    assert s.source is not None and s.source.line == 1  # no FLANNEL_SUBNET: the file is cited
    empty = parse_flannel_subnet("")
    assert (empty.network, empty.subnet, empty.mtu, empty.ipmasq) == (None, None, None, None)


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.300/24\n", 2, 16, "invalid network"),
        ("FLANNEL_MTU=1450b\n", 1, 13, "invalid MTU"),
        ("FLANNEL_IPMASQ=yes\n", 1, 16, "expected true or false"),
        ("FLANNEL_MTU 1450\n", 1, 1, "expected KEY=value"),
    ],
)
def test_errors_are_located(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_flannel_subnet(text, "subnet.env")
    assert (e.value.line, e.value.col) == (line, col) and message in e.value.message


VOCAB = ["FLANNEL_NETWORK=", "FLANNEL_SUBNET=", "FLANNEL_MTU=", "FLANNEL_IPMASQ=", "true", "1450", "=", "#", "export", '"']


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), junk_text(VOCAB)))
def test_junk_gives_a_subnet_or_parse_error(text: str) -> None:
    try:
        result = parse_flannel_subnet(text, "junk")
    except ParseError:
        return
    assert isinstance(result, FlannelSubnet)
