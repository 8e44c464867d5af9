"""``/ipfs/id/1.0.0`` and ``/ipfs/id/push/1.0.0``: who a peer is, what it speaks, where it listens.

``Identify{publicKey=1, listenAddrs=2, protocols=3, observedAddr=4, protocolVersion=5,
agentVersion=6, signedPeerRecord=8}``, sent uvarint-length-prefixed by the answering side,
which then closes the stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from multiaddr import Multiaddr

from physarum.errors import DecodeError, IncompleteError, PhysarumError
from physarum.overlay import pb, varint
from physarum.overlay.envelope import EnvelopeError, open_peer_record
from physarum.overlay.identity import PeerId, PublicKey

log = logging.getLogger(__name__)

PROTOCOL_ID = "/ipfs/id/1.0.0"
PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"
MAX_MESSAGE = 64 * 1024


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
    except Exception:  # one unparseable address must not void the rest
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
            log.info("identify: ignoring bad signed peer record from %s: %s", peer_id, e)
            info.signed_peer_record = None
    return info
