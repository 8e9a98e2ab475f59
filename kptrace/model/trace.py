"""A trace: the flow, and one branch per way the packet can go, each a list of steps."""

from __future__ import annotations

from dataclasses import field
from enum import Enum

from kptrace.model._compiled import dataclass
from kptrace.model.flow import Flow


class Disposition(str, Enum):
    ACCEPTED = "ACCEPTED"
    DELIVERED = "DELIVERED"  # to a local socket: INPUT accepted
    FORWARDED = "FORWARDED"  # leaves the node through an interface
    DROPPED = "DROPPED"
    REJECTED = "REJECTED"
    NO_ROUTE = "NO_ROUTE"
    # The destination is a Service address (in the Service range, or a ClusterIP with other ports)
    # that no Service port matches: nothing translates it, and nobody will answer.
    NO_SERVICE = "NO_SERVICE"
    UNDETERMINED = "UNDETERMINED"
    MIXED = "MIXED"  # branches end differently

    @property
    def failed(self) -> bool:
        return self in (Disposition.DROPPED, Disposition.REJECTED, Disposition.NO_ROUTE, Disposition.NO_SERVICE)


@dataclass(frozen=True, slots=True)
class Step:
    hook: str  # PREROUTING … POSTROUTING, or "routing"
    table: str | None
    chain: str | None
    rule: int | None  # 1-based index in its chain; None for policies and routing
    source: str | None  # "file:line"
    action: str  # JUMP, GOTO, DNAT, MARK, ACCEPT, DROP, REJECT, RETURN, POLICY, ROUTE, UNDETERMINED …
    text: str
    depth: int = 0  # nesting of user-chain jumps, for the tree view
    node: str | None = None  # set when a trace crosses nodes
    encapsulated: bool = False  # a step of the overlay's own packet (VXLAN UDP) carrying the traced one


@dataclass(frozen=True, slots=True)
class Egress:
    iface: str | None
    next_hop: str | None = None
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer packet of a branch's connection, walked back with conntrack ESTABLISHED."""

    disposition: Disposition
    steps: tuple[Step, ...]
    problem: str | None = None  # why the connection fails although the first packet arrives


@dataclass(frozen=True, slots=True)
class Branch:
    probability: float
    disposition: Disposition
    steps: tuple[Step, ...]
    dnat: str | None = None
    masquerade: bool = False
    snat: str | None = None
    egress: Egress | None = None
    assumptions: tuple[str, ...] = ()
    unknowns: tuple[str, ...] = ()
    reply: Reply | None = None
    conditions: tuple[str, ...] = ()  # a what-if branch: what it assumes of the unknowns it went past

    @property
    def reply_failed(self) -> bool:
        return self.reply is not None and self.reply.problem is not None


@dataclass(frozen=True, slots=True)
class InputFile:
    file: str
    kind: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Trace:
    flow: Flow
    origin: str  # local | pod | external
    in_iface: str | None
    branches: tuple[Branch, ...]
    inputs: tuple[InputFile, ...] = ()
    assumptions: tuple[str, ...] = field(default=())
    # Where a branch is UNDETERMINED, the walk goes on past the unknown: these branches say what decides
    # the packet next if the unknown does not. Conditions, not probabilities: never in `branches`'
    # shares, the disposition or the exit code.
    conditional: tuple[Branch, ...] = field(default=())

    @property
    def disposition(self) -> Disposition:
        kinds = {b.disposition for b in self.branches}
        if len(kinds) == 1:
            return next(iter(kinds))
        return Disposition.MIXED if kinds else Disposition.UNDETERMINED

    @property
    def endpoints(self) -> list[str]:
        # In order, each once (a dict: 100k IPVS real servers are not looked up in a list 100k times).
        return list(dict.fromkeys(b.dnat for b in self.branches if b.dnat))
