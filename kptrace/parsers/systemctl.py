"""Parse `systemctl list-units --type=service` (with or without --plain/--no-legend).

      UNIT                     LOAD   ACTIVE SUB     DESCRIPTION
    ● firewalld.service        loaded active running firewalld - dynamic firewall daemon
      ufw.service              loaded active exited  Uncomplicated firewall
      (blank line, then the LOAD/ACTIVE/SUB legend and "N loaded units listed.")
"""

from __future__ import annotations

import re

from kptrace.errors import ParseError
from kptrace.model.node import ServiceUnit
from kptrace.model.source import Source

UNIT_RE = re.compile(r"^\s*(?:[●*x×]\s+)?(\S+)\.service\s+(\S+)\s+(\S+)\s+(\S+)\s*(.*)$")


def parse_services(text: str, file: str = "services.txt") -> tuple[ServiceUnit, ...]:
    units: list[ServiceUnit] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if units:
                break  # the legend follows the first blank line
            continue
        m = UNIT_RE.match(line)
        if m:
            units.append(ServiceUnit(m.group(1), m.group(2), m.group(3), m.group(4), m.group(5).strip(),
                                     Source(file, n, 1, line)))
        elif not units and line.lstrip().startswith("UNIT "):
            continue
        elif not units:
            raise ParseError(file, n, 1, "expected `systemctl list-units --type=service` output", line)
    return tuple(units)
