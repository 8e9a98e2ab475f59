"""The human and JSON output of the demo's main scenarios match the reviewed goldens in expected/.

Regenerate with `python tests/regen_golden.py` after a deliberate change, and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.regen_golden import EXPECTED, SCENARIOS, digest, golden_name, render_json, render_text, text_header

jsonschema = pytest.importorskip("jsonschema")

TEXT_CASES = [(s, d) for s, (_, extra) in SCENARIOS.items() for d in ("summary", *extra)]
REGEN = "run `python tests/regen_golden.py` and review the diff"


def _read_text(path: Path) -> tuple[str, str]:
    if not path.exists():
        pytest.fail(f"{path.name} is missing: {REGEN}")
    first, _, content = path.read_text(encoding="utf-8").partition("\n")
    assert first.startswith("# _hash: "), f"{path.name} has no _hash line: {REGEN}"
    stored = first.split()[2]
    assert stored == digest(content), f"{path.name} was edited by hand (its _hash does not match): {REGEN}"
    return first, content


@pytest.mark.parametrize(("scenario", "detail"), TEXT_CASES, ids=[golden_name(s, d) for s, d in TEXT_CASES])
def test_human_output_matches_golden(scenario: str, detail: str) -> None:
    _, content = _read_text(EXPECTED / f"{golden_name(scenario, detail)}.txt")
    body, code = render_text(scenario, detail)
    assert "\x1b[" not in body, "no terminal: plain text, no escape codes"
    expected = content.partition("\n")[2]
    assert content.partition("\n")[0] + "\n" == text_header(scenario, detail, code), REGEN
    assert body == expected, f"the output of {scenario} ({detail}) changed: {REGEN}"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_json_output_matches_golden_and_schema(scenario: str) -> None:
    from kptrace.render.jsonout import schema

    path = EXPECTED / f"{scenario}.json"
    stored = json.loads(path.read_text(encoding="utf-8"))
    h = stored.pop("_hash")
    assert h == digest(json.dumps(stored, indent=2, ensure_ascii=False) + "\n"), \
        f"{path.name} was edited by hand: {REGEN}"
    jsonschema.validate(stored["document"], schema())
    doc, code = render_json(scenario)
    assert code == stored["exit_code"]
    assert doc == stored["document"], f"the JSON of {scenario} changed: {REGEN}"


def test_every_golden_file_belongs_to_a_scenario() -> None:
    names = {f"{golden_name(s, d)}.txt" for s, d in TEXT_CASES} | {f"{s}.json" for s in SCENARIOS}
    stray = sorted(p.name for p in EXPECTED.iterdir() if p.name not in names)
    assert not stray, f"golden files no scenario writes: {stray} ({REGEN}, then delete them)"


def test_goldens_show_what_the_issue_asks_for() -> None:
    """The reviewed content, in words: events, cross-node hop, reply, citations at each step."""
    dns = (EXPECTED / "clusterip-dns.txt").read_text(encoding="utf-8")
    assert "▶ DNAT  10.96.0.10:53 → 10.244.1.9:53" in dns
    assert "⇢ node-b  arrives on node-b via flannel.1" in dns
    assert "◀ UN-DNAT" in dns and "reply  FORWARDED" in dns
    assert "10.244.2.7:53 (50 %, forwarded via flannel.1 to node-b, out cni0)" in dns
    web = (EXPECTED / "nodeport-web.txt").read_text(encoding="utf-8")
    assert "▶ MASQUERADE  source 192.168.56.1 → the address of cni0" in web
    drop = (EXPECTED / "forward-drop.txt").read_text(encoding="utf-8")
    assert "✖ POLICY DROP  :FORWARD DROP [0:0]  broken-node/iptables-save.txt:16" in drop
    reject = (EXPECTED / "no-endpoints.txt").read_text(encoding="utf-8")
    assert "REJECTED — no endpoints (filter/KUBE-SERVICES, node-a/iptables-save.txt:49)" in reject and "✖ REJECT" in reject
    assert "10.244.1.5 → default/broken (10.96.77.7:80/tcp)" in reject
    for name in ("clusterip-dns.txt", "nodeport-web.txt", "cross-node.txt"):
        for line in (EXPECTED / name).read_text(encoding="utf-8").splitlines()[3:]:  # after the one-line answer
            assert len(line) <= 100, (name, line)
