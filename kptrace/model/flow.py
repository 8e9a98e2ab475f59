"""The hypothetical packet a trace follows."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class Flow:
    src: IPAddress
    dst: IPAddress
    proto: str = "tcp"
    sport: int | None = None
    dport: int | None = None
    in_iface: str | None = None  # None: kptrace picks one and says so

    def __str__(self) -> str:
        def ep(a: IPAddress, p: int | None) -> str:
            host = f"[{a}]" if a.version == 6 and p is not None else str(a)
            return f"{host}:{p}" if p is not None else host

        s = f"{ep(self.src, self.sport)}->{ep(self.dst, self.dport)} {self.proto.upper()}"
        return s + (f" in={self.in_iface}" if self.in_iface else "")
