"""A ruleset as the lines `iptables-save` would print, each citing the input line it came from.

A whole dump is its own text. A ruleset built from `iptables -L` listings, `-S` output or a grep is
written out from its rules, so what reads iptables-save lines (the checks' one pass over
kube-proxy's rules) reads every form of input alike, and cites the listing row, not a made-up line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kptrace.model.netfilter import Ruleset
from kptrace.model.source import ASSUMED_FILE, Source
from kptrace.parsers.placeholders import NOT_SHOWN
from kptrace.parsers.iptables_save import render_rule


@dataclass(slots=True)
class RuleText:
    ruleset: Ruleset
    label: str
    text: str
    # None: `text` is the input itself (line n is the file's line n); else the source of each line.
    sources: list[Source] | None = field(default=None)

    def source(self, n: int, line: str) -> Source:
        """The input line that line n of the text stands for."""
        if self.sources is None:
            return Source(self.label, n, 1, line)
        return self.sources[n - 1]

    def find(self, prefixes: tuple[str, ...]) -> int | None:
        """Line number of the first line starting with one of prefixes (str.find: dumps run to 50 MB)."""
        text = self.text
        found = [0 if text.startswith(p) else (i + 1 if (i := text.find("\n" + p)) >= 0 else -1) for p in prefixes]
        starts = [i for i in found if i >= 0]
        return text.count("\n", 0, min(starts)) + 1 if starts else None


def rule_text(rs: Ruleset) -> RuleText:
    if rs.text is not None:
        text = rs.text if isinstance(rs.text, str) else bytes(rs.text[:]).decode("utf-8", "replace")
        return RuleText(rs, rs.file, text)
    lines: list[str] = []
    sources: list[Source] = []
    for c in rs.comments:
        lines.append(c.text)
        sources.append(c)
    for tname, table in rs.tables.items():
        lines.append(f"*{tname}")
        sources.append(table.source)
        chains = [table.chains[n] for n in table.chains]
        for chain in chains:
            if chain.source.file == ASSUMED_FILE or chain.source.text.startswith("(not in the input"):
                continue
            lines.append(f":{chain.name} {chain.policy or '-'} [0:0]")
            sources.append(chain.source)
        for chain in chains:
            for r in chain.rules:
                if r.source.file == ASSUMED_FILE or any(m.module == NOT_SHOWN for m in r.matches):
                    continue
                lines.append(render_rule(r))
                sources.append(r.source)
        lines.append("COMMIT")
        sources.append(table.source)
    return RuleText(rs, rs.file, "\n".join(lines), sources)
