"""libp2p signed envelopes (RFC 0002) and peer records (RFC 0003).

``Envelope{public_key=1, payload_type=2, payload=3, signature=5}``; the signature covers
``varint-prefixed(domain) || varint-prefixed(payload_type) || varint-prefixed(payload)``, so a
record signed for one purpose cannot be replayed as another.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from physarum.errors import DecodeError, PhysarumError
from physarum.overlay import pb, varint
from physarum.overlay.identity import KeyPair, PeerId, PublicKey
from physarum.overlay.multiaddr import AddressError, Multiaddr

PEER_RECORD_DOMAIN = b"libp2p-peer-record"
PEER_RECORD_TYPE = b"\x03\x01"


class EnvelopeFault(enum.StrEnum):
    """What was wrong with an envelope (:attr:`EnvelopeError.fault`)."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    """Not an envelope, a field missing, another payload type, or an undecodable key."""
    UNSUPPORTED_KEY = "unsupported_key"
    """A key type the caller does not take, or that cannot be checked."""
    BAD_SIGNATURE = "bad_signature"
    """The signature does not verify (for this domain)."""


class EnvelopeError(DecodeError):
    """An envelope that is malformed, signed for another domain, or badly signed. ``fault`` says
    which; ``signer`` is the key's peer id when the key decoded."""

    def __init__(
        self, reason: str, *, fault: EnvelopeFault = EnvelopeFault.MALFORMED, signer: PeerId | None = None
    ) -> None:
        super().__init__(reason)
        self.fault = fault
        self.signer = signer


@dataclass(frozen=True)
class Envelope:
    public_key: PublicKey
    payload_type: bytes
    payload: bytes
    signature: bytes

    @property
    def signer(self) -> PeerId:
        return self.public_key.peer_id()


def signing_bytes(domain: bytes, payload_type: bytes, payload: bytes) -> bytes:
    """What an envelope's signature covers: each part uvarint-length-prefixed."""
    return b"".join(varint.encode(len(p)) + p for p in (domain, payload_type, payload))


def seal(key_pair: KeyPair, domain: bytes, payload_type: bytes, payload: bytes) -> bytes:
    """Sign ``payload`` and return the encoded envelope."""
    signature = key_pair.sign(signing_bytes(domain, payload_type, payload))
    return pb.encode(
        [(1, key_pair.public_key.to_protobuf()), (2, payload_type), (3, payload), (5, signature)]
    )


def open_envelope(
    data: bytes,
    domain: bytes,
    payload_type: bytes | None = None,
    *,
    max_size: int | None = None,
    key_types: Collection[int] | None = None,
) -> Envelope:
    """Decode and verify an envelope signed for ``domain``: the one place physarum opens envelopes
    a peer sent (identify's peer records, the DHT's contact records).

    ``payload_type``: the type it must carry (None: any). ``max_size``: refuse larger ``data``
    before decoding it. ``key_types``: the key types taken (None: every type physarum can check).

    Raises:
        EnvelopeError: with ``fault`` TOO_LARGE, MALFORMED (not an envelope, a field missing,
            another payload type), UNSUPPORTED_KEY or BAD_SIGNATURE.
    """
    if max_size is not None and len(data) > max_size:
        raise EnvelopeError(f"envelope of {len(data)} bytes exceeds {max_size}", fault=EnvelopeFault.TOO_LARGE)
    try:
        fields = pb.decode(data)
        raw_key = pb.get_bytes(fields, 1)
        ptype = pb.get_bytes(fields, 2)
        payload = pb.get_bytes(fields, 3)
        signature = pb.get_bytes(fields, 5)
        if raw_key is None or ptype is None or payload is None or signature is None:
            raise DecodeError("envelope lacks public_key, payload_type, payload or signature")
        key = PublicKey.from_protobuf(raw_key)
    except DecodeError as e:
        raise EnvelopeError(f"malformed envelope: {e.reason}") from e
    if payload_type is not None and ptype != payload_type:
        raise EnvelopeError(f"envelope payload type {ptype.hex()} is not {payload_type.hex()}")
    signer = key.peer_id()
    if key_types is not None and key.key_type not in key_types:
        raise EnvelopeError(
            f"envelope signed with key type {key.key_type}, not one of {sorted(key_types)}",
            fault=EnvelopeFault.UNSUPPORTED_KEY,
            signer=signer,
        )
    try:
        ok = key.verify(signing_bytes(domain, ptype, payload), signature)
    except PhysarumError as e:
        raise EnvelopeError(str(e), fault=EnvelopeFault.UNSUPPORTED_KEY, signer=signer) from e
    if not ok:
        raise EnvelopeError("envelope signature is invalid", fault=EnvelopeFault.BAD_SIGNATURE, signer=signer)
    return Envelope(key, ptype, payload, signature)


def seal_peer_record(key_pair: KeyPair, seq: int, addrs: list[Multiaddr]) -> bytes:
    """A signed ``PeerRecord{peer_id=1, seq=2, addresses=3 {multiaddr=1}}`` envelope."""
    fields: list[tuple[int, int | bytes | str | None]] = [(1, key_pair.peer_id.to_bytes()), (2, seq)]
    fields += [(3, pb.encode([(1, a.to_bytes())])) for a in addrs]
    return seal(key_pair, PEER_RECORD_DOMAIN, PEER_RECORD_TYPE, pb.encode(fields))


@dataclass(frozen=True)
class PeerRecord:
    peer_id: PeerId
    seq: int
    addrs: list[Multiaddr]


def open_peer_record(data: bytes) -> PeerRecord:
    """Verify a signed peer record; its signer must be the peer it names.

    Raises:
        EnvelopeError: malformed, badly signed, or signed by someone else.
    """
    env = open_envelope(data, PEER_RECORD_DOMAIN, PEER_RECORD_TYPE)
    try:
        fields = pb.decode(env.payload)
        peer = PeerId.from_bytes(pb.get_bytes(fields, 1) or b"")
        seq = pb.get_int(fields, 2, 0) or 0
        addrs = []
        for info in pb.get_repeated_bytes(fields, 3):
            raw = pb.get_bytes(pb.decode(info), 1)
            if raw:
                try:
                    addrs.append(Multiaddr(raw))
                except AddressError:  # one bad address must not void the record
                    continue
    except DecodeError as e:
        raise EnvelopeError(f"malformed peer record: {e.reason}") from e
    if peer != env.signer:
        raise EnvelopeError(f"peer record for {peer} is signed by {env.signer}")
    return PeerRecord(peer, seq, addrs)
