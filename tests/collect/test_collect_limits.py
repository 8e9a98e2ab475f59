"""collect on hostile values (issue 20, item 2): a --pod-cidr that is not one is refused with one line before
anything runs; --redact on a node with more public networks than its replacement range holds still writes a
bundle that keeps its promise (no original address), and says the addresses now share a network."""

from __future__ import annotations

import ipaddress
import re
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kptrace.cli.app import _register, app
from kptrace.collect import bundle
from kptrace.collect.capture import Capture
from kptrace.collect.redact import SHARED_V4, Redactor
from kptrace.errors import KptraceError

from .conftest import FakeNode

_register()


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, KptraceError):
        return int(res.exception.exit_code), res.stdout, res.stderr + f"error: {res.exception}\n"
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize("cidr", ["10.244.1.0/33", "10.244.1.0/٢٤", "10.244.1.0", "fd00::/129", "x"])
def test_a_pod_cidr_that_is_not_one_is_refused(fake_node: FakeNode, tmp_path: Path, cidr: str) -> None:
    out = tmp_path / "x.tar.gz"
    code, _, err = run("collect", "-q", "-o", str(out), "--pod-cidr", cidr)
    assert code == 2 and "is not a CIDR" in err and not out.exists()


def public_v4(n: int) -> list[str]:
    """One address in each of n public /16s (1.0/16 … ): more than 240.0.0.0/4 holds when n > 4094."""
    out = []
    top = 1 << 8  # start at 1.0.0.0
    while len(out) < n:
        a = ipaddress.IPv4Address(top << 16 | 0x0305)
        if a.is_global:
            out.append(str(a))
        top += 1
    return out


def test_more_public_networks_than_the_redaction_range(tmp_path: Path) -> None:
    addrs = public_v4(SHARED_V4 + 900)
    r = Redactor()
    mapped = {a: r.address(a) for a in addrs}
    assert all(not ipaddress.ip_address(m).is_global for m in mapped.values())
    assert set(addrs).isdisjoint(mapped.values())
    assert all(r.address(a) == m for a, m in mapped.items())  # consistent
    assert r.crowded and "255.254.0.0/16" in r.crowded[0]
    # The bundle: written, every original address gone.
    routes = "".join(f"{a}/32 via 10.0.0.1 dev eth0\n" for a in addrs).encode()
    cap = Capture("ip-route.txt", ("ip", "route"), "command", data=routes)
    meta = bundle.Meta("host-x", "host-x", 1700000000.0, 1.0)
    out = tmp_path / "b.tar.gz"
    with open(out, "wb") as f:
        bundle.write_tar([cap], f, "b", meta, Redactor())
    with tarfile.open(out) as tar:
        text = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())  # type: ignore[union-attr]
    found = set(re.findall(rb"(?<![0-9.])([0-9]{1,3}(?:\.[0-9]{1,3}){3})/32", text))
    assert found and found.isdisjoint(a.encode() for a in addrs)
