"""The text and `-j` JSON captures of the same state parse to equal models (sources aside)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from kptrace.parsers.bridge import (
    parse_brctl_show,
    parse_brctl_showmacs,
    parse_bridge_fdb,
    parse_bridge_link,
)
from kptrace.parsers.ip_link import parse_ip_link
from kptrace.parsers.ip_neigh import parse_ip_neigh
from kptrace.parsers.ip_route import parse_ip_route
from kptrace.parsers.ip_rule import parse_ip_rule
from tests.parsers.test_bridge import PORT_NAMES
from tests.parsers.test_ip_route import fixture, strip

PAIRS: list[tuple[Callable[[str, str], list[Any]], str, str]] = [
    (parse_ip_route, "ip-route.txt", "ip-route.json"),
    (parse_ip_route, "ip-route.txt", "ip-route.pretty.json"),
    (parse_ip_route, "ip-6-route.txt", "ip-6-route.json"),
    (parse_ip_rule, "ip-rule.txt", "ip-rule.json"),
    (parse_ip_rule, "ip-6-rule.txt", "ip-6-rule.json"),
    (parse_ip_neigh, "ip-neigh.txt", "ip-neigh.json"),
    (parse_bridge_fdb, "bridge-fdb.txt", "bridge-fdb.json"),
    (parse_bridge_link, "bridge-link.txt", "bridge-link.json"),
]


@pytest.mark.parametrize(("parse", "text_file", "json_file"), PAIRS, ids=[p[2] for p in PAIRS])
def test_text_and_json_agree(parse: Callable[[str, str], list[Any]], text_file: str, json_file: str) -> None:
    from_text = parse(fixture(text_file), text_file)
    from_json = parse(fixture(json_file), json_file)
    assert from_text and strip(from_text) == strip(from_json)


@pytest.mark.parametrize("json_file", ["ip-link.json", "ip-link.pretty.json"])
def test_links_agree_except_how_the_peer_namespace_is_named(json_file: str) -> None:
    # Text names a named namespace (`link-netns kpt-fx-pod-a`); `ip -j` gives its id instead.
    from_text = parse_ip_link(fixture("ip-link.txt"), "ip-link.txt")
    from_json = parse_ip_link(fixture(json_file), json_file)
    assert [(t.netns is not None or t.netns_id is not None) for t in from_text] == [
        (j.netns is not None or j.netns_id is not None) for j in from_json]
    assert [j.netns_id for j in from_json if j.master == "cni0"] == [1, 2, 3]
    assert [replace(x, source=None, netns=None, netns_id=None) for x in from_text] == [
        replace(x, source=None, netns=None, netns_id=None) for x in from_json]


def test_brctl_show_lists_the_ports_bridge_link_shows() -> None:
    ports = parse_bridge_link(fixture("bridge-link.txt"))
    assert sorted((p.name, p.master) for p in parse_brctl_show(fixture("brctl-show.txt"))) == sorted(
        (p.name, p.master) for p in ports)


def test_brctl_showmacs_agrees_with_bridge_fdb() -> None:
    macs = parse_brctl_showmacs(fixture("brctl-showmacs-cni0.txt"), bridge="cni0", port_names=PORT_NAMES)
    fdb = [e for e in parse_bridge_fdb(fixture("bridge-fdb.txt")) if e.master == "cni0" and e.dev != "cni0"]
    assert sorted(strip(macs), key=lambda e: e.mac) == sorted(strip(fdb), key=lambda e: e.mac)
