"""``/ipfs/id/1.0.0`` and ``/ipfs/id/push/1.0.0``: who a peer is, what it speaks, where it listens.

``Identify{publicKey=1, listenAddrs=2, protocols=3, observedAddr=4, protocolVersion=5,
agentVersion=6, signedPeerRecord=8}``, sent uvarint-length-prefixed by the answering side,
which then closes the stream.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from physarum.errors import DecodeError, IncompleteError, PhysarumError
from physarum.overlay import pb, varint
from physarum.overlay.envelope import EnvelopeError, open_peer_record
from physarum.overlay.identity import PeerId, PublicKey
from physarum.overlay.multiaddr import AddressError, Multiaddr

log = logging.getLogger(__name__)

PROTOCOL_ID = "/ipfs/id/1.0.0"
PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"
MAX_MESSAGE = 64 * 1024
#: Distinct observed addresses :class:`ObservedAddrs` keeps by default.
MAX_OBSERVED_ADDRS = 32
#: Distinct peers that must report an address before :meth:`ObservedAddrs.confirmed` lists it
#: (go-libp2p's activation threshold is 4 too): one or two peers, mistaken or lying, are not enough.
OBSERVED_ADDR_THRESHOLD = 4


@dataclass
class IdentifyInfo:
    public_key: PublicKey | None = None
    listen_addrs: list[Multiaddr] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    observed_addr: Multiaddr | None = None
    protocol_version: str | None = None
    agent_version: str | None = None
    signed_peer_record: bytes | None = None


def encode(info: IdentifyInfo) -> bytes:
    """The protobuf body (without length prefix)."""
    fields: list[tuple[int, int | bytes | str | None]] = []
    if info.public_key is not None:
        fields.append((1, info.public_key.to_protobuf()))
    fields += [(2, a.to_bytes()) for a in info.listen_addrs]
    fields += [(3, p) for p in info.protocols]
    if info.observed_addr is not None:
        fields.append((4, info.observed_addr.to_bytes()))
    fields += [(5, info.protocol_version), (6, info.agent_version), (8, info.signed_peer_record)]
    return pb.encode(fields)


def _addr(raw: bytes) -> Multiaddr | None:
    try:
        return Multiaddr(raw)
    except AddressError:  # one unparseable address must not void the rest
        return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def decode(body: bytes) -> IdentifyInfo:
    """Parse an Identify protobuf; unparseable addresses are skipped.

    Raises:
        DecodeError: malformed protobuf or public key.
    """
    fields = pb.decode(body)
    info = IdentifyInfo()
    key = pb.get_bytes(fields, 1)
    if key:
        info.public_key = PublicKey.from_protobuf(key)
    info.listen_addrs = [a for a in map(_addr, pb.get_repeated_bytes(fields, 2)) if a is not None]
    info.protocols = [_text(p) for p in pb.get_repeated_bytes(fields, 3)]
    observed = pb.get_bytes(fields, 4)
    info.observed_addr = _addr(observed) if observed else None
    pv, av = pb.get_bytes(fields, 5), pb.get_bytes(fields, 6)
    info.protocol_version = _text(pv) if pv is not None else None
    info.agent_version = _text(av) if av is not None else None
    info.signed_peer_record = pb.get_bytes(fields, 8)
    return info


def decode_message(data: bytes) -> IdentifyInfo:
    """Parse what a peer sent on an identify stream: length-prefixed, or (older peers) bare.

    Raises:
        DecodeError: neither form parses.
    """
    try:
        length, pos = varint.decode(data)
        if pos + length == len(data):
            return decode(data[pos:])
    except (DecodeError, IncompleteError):
        pass
    return decode(data)


def check_against(info: IdentifyInfo, peer_id: PeerId) -> IdentifyInfo:
    """Drop what ``peer_id`` could not have said: a key not its own, a peer record not its own.

    Raises:
        DecodeError: the public key is not the connection's peer.
    """
    if info.public_key is not None and info.public_key.peer_id() != peer_id:
        raise DecodeError(f"identify public key belongs to {info.public_key.peer_id()}, not {peer_id}")
    if info.signed_peer_record is not None:
        try:
            record = open_peer_record(info.signed_peer_record)
            if record.peer_id != peer_id:
                raise EnvelopeError("peer record names another peer")
        except (EnvelopeError, PhysarumError) as e:
            log.info("identify: ignoring a bad signed peer record from %s: %s", peer_id, type(e).__name__)
            info.signed_peer_record = None
    return info


class ObservedAddrs:
    """The addresses peers say they see us at (identify's ``observedAddr``), counted per peer.

    A pure data structure: one entry per observer (its latest report replaces the previous one),
    at most ``max_addrs`` distinct addresses. A new address beyond that evicts the one with the
    fewest observers (the least recently reported among equals), with its observers' entries, so
    a flood of distinct reports cannot grow it or displace an address many peers agree on.
    """

    def __init__(self, max_addrs: int = MAX_OBSERVED_ADDRS) -> None:
        self.max_addrs = max_addrs
        self._by_peer: dict[PeerId, Multiaddr] = {}
        # address -> its observers; the address order is recency of the last report
        self._observers: OrderedDict[Multiaddr, dict[PeerId, None]] = OrderedDict()

    def record(self, observer: PeerId, addr: Multiaddr) -> None:
        """``observer`` says it sees us at ``addr``."""
        self.forget(observer)
        observers = self._observers.get(addr)
        if observers is None:
            while self._observers and len(self._observers) >= self.max_addrs:
                self._evict()
            observers = self._observers[addr] = {}
        self._observers.move_to_end(addr)
        observers[observer] = None
        self._by_peer[observer] = addr

    def forget(self, observer: PeerId) -> None:
        """Drop ``observer``'s report (it disconnected)."""
        old = self._by_peer.pop(observer, None)
        if old is None:
            return
        observers = self._observers.get(old)
        if observers is not None:
            observers.pop(observer, None)
            if not observers:
                del self._observers[old]

    def _evict(self) -> None:
        fewest = min(self._observers, key=lambda a: len(self._observers[a]))  # first among equals: oldest
        for peer in self._observers.pop(fewest):
            self._by_peer.pop(peer, None)

    def counts(self) -> dict[Multiaddr, int]:
        """Every recorded address and how many distinct peers report it, most reported first."""
        ranked = sorted(self._observers.items(), key=lambda item: -len(item[1]))
        return {addr: len(observers) for addr, observers in ranked}

    def confirmed(self, min_observers: int = OBSERVED_ADDR_THRESHOLD) -> list[Multiaddr]:
        """Addresses reported by at least ``min_observers`` distinct peers, most reported first."""
        return [a for a, n in self.counts().items() if n >= min_observers]

    def __len__(self) -> int:
        return len(self._observers)
