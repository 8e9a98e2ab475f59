"""What evaluating a match gives (True, False, a Chance, or Unknown with the reason) and what the walker
knows while it evaluates: shared by the match evaluators (matches.py) and `-m set` (ipset.py)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network

@dataclass(frozen=True, slots=True)
class Chance:
    p: float


@dataclass(frozen=True, slots=True)
class Unknown:
    reason: str


Result = bool | Chance | Unknown

_LOOPBACK4 = IPv4Network("127.0.0.0/8")
_MULTICAST4 = IPv4Network("224.0.0.0/4")
_MULTICAST6 = IPv6Network("ff00::/8")
# The first packet of a new TCP connection carries SYN alone.
_TCP_FLAGS = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16, "URG": 32, "ECE": 64, "CWR": 128}
_FIRST_PACKET_FLAGS = _TCP_FLAGS["SYN"]


@dataclass(slots=True)
class MatchContext:
    """What the walker knows at this point: the node's addresses, the hook, the assumptions made."""

    local: set[IPv4Address] | set  # type: ignore[type-arg]
    knows_local: bool
    hook: str
    assumptions: list[str]
    sets: dict | None = None  # type: ignore[type-arg]  # the node's ipsets by name; None: no ipset dump in the input

    def is_local(self, addr: object) -> bool | None:
        if isinstance(addr, IPv4Address) and addr in _LOOPBACK4:
            return True
        if str(addr) == "::1":
            return True
        if addr in self.local:
            return True
        return False if self.knows_local else None


def iface_matches(pattern: str, iface: str) -> bool:
    # `cni+` in iptables matches any interface whose name starts with `cni`.
    if pattern.endswith("+"):
        return iface.startswith(pattern[:-1])
    return iface == pattern


def neg(result: Result, negated: bool) -> Result:
    if not negated:
        return result
    if isinstance(result, bool):
        return not result
    if isinstance(result, Chance):
        return Chance(1.0 - result.p)
    return result


