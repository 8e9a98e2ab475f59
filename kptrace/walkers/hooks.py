"""One base chain registered at a netfilter hook, for the walk of that hook: iptables tables (either
backend) and nft base chains alike (walkers/netfilter.py builds the iptables ones, walkers/nft.py the nft ones)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kptrace.walkers.packet import Path


@dataclass(frozen=True, slots=True)
class HookEntry:
    priority: int
    label: str
    nat: bool  # a nat chain: consulted only for a connection's first packet
    walk: Callable[[Path], list[tuple[Path, str]]]
