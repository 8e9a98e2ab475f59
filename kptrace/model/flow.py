"""The hypothetical packet a trace follows."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from kptrace.model._compiled import dataclass

IPAddress = IPv4Address | IPv6Address
STATES = ("new", "established", "related", "reply")


@dataclass(frozen=True, slots=True)
class Flow:
    src: IPAddress
    dst: IPAddress
    proto: str = "tcp"
    sport: int | None = None
    dport: int | None = None
    in_iface: str | None = None  # None: kptrace picks one and says so
    # The packet's conntrack state (`--state`): new (a connection's first packet), established (a later
    # packet of the connection), related, or reply (a packet of the answer direction).
    state: str = "new"
    mark: int = 0  # the packet's mark when it enters (`--mark`)

    def __str__(self) -> str:
        def ep(a: IPAddress, p: int | None) -> str:
            host = f"[{a}]" if a.version == 6 and p is not None else str(a)
            return f"{host}:{p}" if p is not None else host

        s = f"{ep(self.src, self.sport)}->{ep(self.dst, self.dport)} {self.proto.upper()}"
        s += f" in={self.in_iface}" if self.in_iface else ""
        s += f" state={self.state}" if self.state != "new" else ""
        return s + (f" mark={self.mark:#x}" if self.mark else "")
