"""`kptrace services`' table is the same whichever parser read the rules (the fast path for kube-proxy's rule
shapes, or the general parser), in large cluster mode (no endpoint comments) and out of it, and with the lazy
scan (rules parsed as read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kptrace import load
from kptrace.parsers import iptables_fast, iptables_scan
from kptrace.services import collect, service_ports
from kptrace.testing.generator import generate_iptables


def _table(dump: Path, general: bool, lazy: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    with monkeypatch.context() as m:
        if general:
            m.setattr(iptables_fast, "shape", lambda line: None)
            m.setattr(iptables_scan.FastParser, "rule", lambda self, line, lineno, index, mm=None: None)
        m.setattr(iptables_scan, "LAZY_MIN_LINES", 0 if lazy else 10**9)
        node = load.load_node([dump], ["192.168.0.2"], options=load.LoadOptions(strict=not lazy))
        return service_ports([node]), collect([node])


@pytest.mark.parametrize("large", [True, False])
@pytest.mark.parametrize("lazy", [False, True])
def test_same_service_table(large: bool, lazy: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generate_iptables(400, 10, seed=11, large_cluster_mode=large, affinity_fraction=0.05, lb_fraction=0.05,
                            local_policy_fraction=0.1, udp_fraction=0.1)
    dump = tmp_path / "iptables-save.txt"
    dump.write_text(gen.text)
    ports, services = _table(dump, general=False, lazy=lazy, monkeypatch=monkeypatch)
    ports_g, services_g = _table(dump, general=True, lazy=lazy, monkeypatch=monkeypatch)
    assert ports == ports_g and services == services_g
    assert len(services) >= 400  # type: ignore[arg-type]
    with_eps = [s for s in services if s.endpoints]  # type: ignore[attr-defined]
    assert with_eps and all(e.source and ":" in e.source for s in with_eps for e in s.endpoints)
