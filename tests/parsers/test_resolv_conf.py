"""resolv.conf as glibc reads it: every nameserver with its line, the last search line, options; errors at file:line:col."""

from __future__ import annotations

import pytest

from kptrace.errors import ParseError
from kptrace.parsers.resolv_conf import option_value, parse_resolv_conf

STUB = """# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).
nameserver 127.0.0.53
options edns0 trust-ad
search .
"""


def test_systemd_stub_file() -> None:
    [rc] = parse_resolv_conf(STUB, "resolv.conf", path="/etc/resolv.conf")
    assert rc.nameservers == ("127.0.0.53",) and rc.search == () and rc.options == ("edns0", "trust-ad")
    assert rc.path == "/etc/resolv.conf" and rc.whose is None
    assert [(s.line, s.col) for s in rc.nameserver_sources] == [(2, 1)]
    assert rc.search_source is not None and rc.search_source.line == 4


def test_every_nameserver_kept_with_its_line_and_the_last_search_wins() -> None:
    text = ("nameserver 10.0.0.1\n; comment\nnameserver fe80::1%eth0\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n"
            "search a.example b.example\ndomain c.example\noptions ndots:5 timeout:2\noptions ndots:2\n")
    [rc] = parse_resolv_conf(text, "f")
    assert rc.nameservers == ("10.0.0.1", "fe80::1%eth0", "10.0.0.3", "10.0.0.4")
    assert [s.line for s in rc.nameserver_sources] == [1, 3, 4, 5]
    assert rc.search == ("c.example",) and rc.search_source is not None and rc.search_source.line == 7
    nd = option_value(rc, "ndots")
    assert nd is not None and nd[0] == 2 and nd[1] is not None and nd[1].line == 9


@pytest.mark.parametrize(("text", "line", "col", "what"), [
    ("nameserver 10.0.0.1\nnamesever 10.0.0.2\n", 2, 1, "not a resolv.conf directive"),
    ("  nameserver\n", 1, 13, "without a value"),
    ("nameserver 10.0.0.1\nnameserver dns.example\n", 2, 12, "not an IP address"),
    ("options rotate ndots:five\n", 1, 22, "takes a number"),
])
def test_errors_point_at_line_and_column(text: str, line: int, col: int, what: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_resolv_conf(text, "bundle/resolv.conf")
    assert (e.value.file, e.value.line, e.value.col) == ("bundle/resolv.conf", line, col)
    assert what in e.value.message


def test_nothing_but_comments() -> None:
    assert parse_resolv_conf("# empty\n", "f") == []
    [rc] = parse_resolv_conf("# empty\n", "f", empty_ok=True)
    assert rc.nameservers == () and rc.source.line == 1
