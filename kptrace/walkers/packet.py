"""The packet as it is while being walked, and the partial branch that carries it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter

from kptrace.model.flow import IPAddress
from kptrace.model.trace import Step


# Packet and Path are values: never assigned to after they are made (with_packet, step, ... make new ones).
# They are not frozen=True only for speed: a frozen dataclass's __init__ sets each field through
# object.__setattr__ (5.5 µs for a Packet against 1.1 µs), and a sweep makes a million of them.
@dataclass(slots=True, unsafe_hash=True)
class Packet:
    src: IPAddress
    dst: IPAddress
    proto: str
    sport: int | None
    dport: int | None
    in_iface: str | None
    out_iface: str | None = None
    mark: int = 0
    ctmark: int = 0
    orig_dst: IPAddress | None = None
    orig_dport: int | None = None
    dnat: str | None = None  # "ip:port" after a DNAT/REDIRECT
    snat: str | None = None
    masquerade: bool = False
    untracked: bool = False  # NOTRACK / CT --notrack: conntrack (and so NAT) skips it
    local_origin: bool = False
    next_hop: IPAddress | None = None  # the route's gateway (`via`), None when directly connected
    egress_node: str | None = None  # where the packet finally goes, when kptrace can name it
    node: str | None = None  # the node walking it now
    dnat_node: str | None = None  # which node's conntrack holds the DNAT (to undo on the reply)
    snat_node: str | None = None
    orig_src: IPAddress | None = None  # the source before SNAT/MASQUERADE
    orig_sport: int | None = None
    reply: bool = False  # the reply direction: conntrack ESTABLISHED, nat tables not consulted
    # The conntrack state of a packet that is not its connection's first (--state, or an entry of the
    # input's conntrack table): ESTABLISHED, RELATED or NEW (an entry that has seen no reply yet).
    ctstate: str | None = None
    ct_dnat: tuple[IPAddress, int | None, str | None] | None = None  # an entry's DNAT, applied at nat PREROUTING/OUTPUT
    group: bool = False
    inner: Packet | None = None  # set on an encapsulated (VXLAN) packet: the packet it carries  # sent as a link-layer broadcast (a broadcast or multicast destination)
    ct_confirmed: bool = False  # the connection's entry already exists: a NAT target sets up nothing now


@dataclass(slots=True, unsafe_hash=True)
class Path:
    """A branch being walked: its probability, packet and the story so far."""

    probability: float
    packet: Packet
    steps: tuple[Step, ...] = ()
    assumptions: tuple[str, ...] = ()
    unknowns: tuple[str, ...] = ()
    # What this branch takes for granted about something the input does not show ("if filter/KUBE-FORWARD,
    # not in the input, does not decide the packet"): a what-if branch, walked past the unknown.
    conditions: tuple[str, ...] = ()

    # Built directly, not by dataclasses.replace (a sweep makes about a million of these).
    def step(self, s: Step) -> Path:
        return Path(self.probability, self.packet, self.steps + (s,), self.assumptions, self.unknowns, self.conditions)

    def assume(self, text: str) -> Path:
        if text in self.assumptions:
            return self
        return Path(self.probability, self.packet, self.steps, self.assumptions + (text,), self.unknowns,
                    self.conditions)

    def unknown(self, text: str) -> Path:
        return Path(self.probability, self.packet, self.steps, self.assumptions, self.unknowns + (text,),
                    self.conditions)

    def given(self, condition: str) -> Path:
        """This path, walked on as if the unknown it met did not decide the packet."""
        return Path(self.probability, self.packet, self.steps, self.assumptions, self.unknowns,
                    self.conditions + (condition,))

    def with_packet(self, **changes: object) -> Path:
        values = list(_packet_values(self.packet))
        for name, value in changes.items():
            values[_PACKET_AT[name]] = value
        return Path(self.probability, Packet(*values), self.steps, self.assumptions, self.unknowns,
                    self.conditions)

    def scaled(self, p: float) -> Path:
        return Path(self.probability * p, self.packet, self.steps, self.assumptions, self.unknowns, self.conditions)


_PACKET_FIELDS = tuple(f.name for f in fields(Packet))
_PACKET_AT = {name: i for i, name in enumerate(_PACKET_FIELDS)}
_packet_values = attrgetter(*_PACKET_FIELDS)
