"""The ``/ipfs/kad/1.0.0`` wire messages: pure encode/decode and length-prefix framing.

Schema (libp2p kad-dht, proto3)::

    Message { MessageType type = 1; bytes key = 2; Record record = 3;
              repeated Peer closerPeers = 8; repeated Peer providerPeers = 9; int32 clusterLevelRaw = 10; }
    Record  { bytes key = 1; bytes value = 2; string timeReceived = 5; }
    Peer    { bytes id = 1; repeated bytes addrs = 2; ConnectionType connection = 3; }

On a stream each message is a uvarint length followed by the protobuf; messages over
:data:`MAX_MESSAGE_SIZE` (4 MiB) are refused both ways. ``PING`` (5) is deprecated: answer it,
never send it.

Decoding is strict about the message itself and lenient about peer lists, because a lookup should
use whatever a slightly broken or newer peer sends: a ``Peer`` entry with a malformed protobuf, a
missing id, or an id that is not a valid peer id is skipped (the rest of the list is kept, and
:attr:`Message.invalid_peers` counts the skipped ones so the caller can score the sender); an
address that is not a valid multiaddr is dropped from its peer (:func:`physarum.dht.addrs.parse_multiaddr_bytes`
decides); an unknown connection type reads as ``NOT_CONNECTED``. A malformed top-level message or
record, or an unknown message type, raises :class:`DecodeError`, and only that.

What a decoded message may hold is bounded, whatever the sender put in it: a peer list keeps its
first :data:`MAX_PEERS_PER_LIST` (256) entries (libp2p sends ``k`` = 20 closer peers); a peer
looks at its first :data:`MAX_ADDRS_EXAMINED` (128) addresses and keeps the first
:data:`~physarum.dht.addrs.MAX_ADDRS_PER_PEER` (32) valid ones, an address over
:data:`~physarum.dht.addrs.MAX_ADDR_SIZE` bytes being dropped before it is parsed. Entries past
these caps are still checked to be well-formed protobuf (a malformed message is refused
whole) but never copied or parsed. So decoding a 4 MiB answer costs one scan of it, and what it
allocates is bounded by the caps rather than by the number of fields the sender packed in.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from physarum.dht.addrs import MAX_ADDR_SIZE, MAX_ADDRS_PER_PEER, addr_allowed, parse_multiaddr_bytes
from physarum.errors import DecodeError, EncodeError, IncompleteError, LimitError
from physarum.overlay import pb, varint
from physarum.overlay.identity import PeerId

PROTOCOL_ID = "/ipfs/kad/1.0.0"
#: Largest kad message, sent or received (libp2p's limit).
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Entries of one peer list (``closerPeers``, ``providerPeers``) that are decoded; later ones are ignored.
MAX_PEERS_PER_LIST = 256
#: Addresses of one peer entry that are looked at; later ones are ignored.
MAX_ADDRS_EXAMINED = 4 * MAX_ADDRS_PER_PEER


class MessageType(enum.IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(enum.IntEnum):
    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True, slots=True)
class Record:
    """A kad record: for physarum, ``key`` is a contact record key and ``value`` its envelopes."""

    key: bytes
    value: bytes
    time_received: str = ""


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer in ``closerPeers`` / ``providerPeers``: id, ``Multiaddr`` addresses, connectedness."""

    peer_id: PeerId
    addrs: tuple[Any, ...] = ()
    connection: ConnectionType = ConnectionType.NOT_CONNECTED


@dataclass(frozen=True, slots=True)
class Message:
    """One kad message. ``invalid_peers`` is filled by :func:`decode_message` only (never encoded)."""

    type: MessageType
    key: bytes = b""
    record: Record | None = None
    closer_peers: tuple[Peer, ...] = ()
    provider_peers: tuple[Peer, ...] = ()
    cluster_level_raw: int = 0
    invalid_peers: int = field(default=0, compare=False)


def encode_record(record: Record) -> bytes:
    """The ``Record`` protobuf."""
    return pb.encode([(1, record.key), (2, record.value), (5, record.time_received or None)])


def decode_record(data: bytes) -> Record:
    """Parse a ``Record`` protobuf.

    Raises:
        DecodeError: malformed protobuf, wrong wire types, or a ``timeReceived`` that is not UTF-8.
    """
    fields = pb.decode(data)
    key = pb.get_bytes(fields, 1, b"")
    value = pb.get_bytes(fields, 2, b"")
    raw_time = pb.get_bytes(fields, 5, b"")
    assert key is not None and value is not None and raw_time is not None
    try:
        time_received = raw_time.decode()
    except UnicodeDecodeError:
        raise DecodeError("record timeReceived is not UTF-8") from None
    return Record(key, value, time_received)


def encode_peer(peer: Peer) -> bytes:
    """The ``Peer`` protobuf (proto3: a NOT_CONNECTED connection is left out)."""
    fields: list[tuple[int, int | bytes | None]] = [(1, peer.peer_id.to_bytes())]
    fields.extend((2, addr.to_bytes()) for addr in peer.addrs)
    fields.append((3, int(peer.connection) or None))
    return pb.encode(fields)


def decode_peer(data: bytes) -> Peer:
    """Parse a ``Peer`` protobuf, dropping addresses that are not valid multiaddrs or over the
    size and component bounds, and keeping at most :data:`~physarum.dht.addrs.MAX_ADDRS_PER_PEER`.

    Raises:
        DecodeError: malformed protobuf, a missing or invalid peer id, wrong wire types.
    """
    fields = pb.decode(data, {2: MAX_ADDRS_EXAMINED})
    raw_id = pb.get_bytes(fields, 1)
    if raw_id is None:
        raise DecodeError("peer entry without an id")
    peer_id = PeerId.from_bytes(raw_id)
    addrs = []
    for raw in pb.get_repeated_bytes(fields, 2):
        if len(raw) > MAX_ADDR_SIZE:
            continue  # dropped unparsed: cheap, whatever the peer sent
        try:
            addr = parse_multiaddr_bytes(raw)
        except DecodeError:
            continue
        if addr_allowed(addr):
            addrs.append(addr)
            if len(addrs) >= MAX_ADDRS_PER_PEER:
                break
    raw_conn = pb.get_int(fields, 3, 0)
    assert raw_conn is not None
    try:
        connection = ConnectionType(raw_conn)
    except ValueError:
        connection = ConnectionType.NOT_CONNECTED
    return Peer(peer_id, tuple(addrs), connection)


def encode_message(msg: Message) -> bytes:
    """The ``Message`` protobuf, without the length prefix (proto3: default values left out).

    Raises:
        LimitError: the encoding exceeds :data:`MAX_MESSAGE_SIZE`.
        EncodeError: ``cluster_level_raw`` is outside int32.
    """
    fields: list[tuple[int, int | bytes | None]] = [
        (1, int(msg.type) or None),
        (2, msg.key or None),
        (3, encode_record(msg.record) if msg.record is not None else None),
    ]
    fields.extend((8, encode_peer(p)) for p in msg.closer_peers)
    fields.extend((9, encode_peer(p)) for p in msg.provider_peers)
    level = msg.cluster_level_raw
    if not -(1 << 31) <= level < 1 << 31:
        raise EncodeError(f"clusterLevelRaw {level} is outside int32")
    # protobuf writes a negative int32 as its 64-bit two's complement
    fields.append((10, (level & ((1 << 64) - 1)) or None))
    data = pb.encode(fields)
    if len(data) > MAX_MESSAGE_SIZE:
        raise LimitError(
            f"kad message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}", limit=MAX_MESSAGE_SIZE
        )
    return data


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Parse a ``Message`` protobuf (no length prefix). Bad peer entries are skipped, see the module doc.

    Raises:
        DecodeError: over :data:`MAX_MESSAGE_SIZE`, malformed protobuf or record, wrong wire types,
            an unknown message type, or a ``clusterLevelRaw`` outside int32.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"kad message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    fields = pb.decode(data, {8: MAX_PEERS_PER_LIST, 9: MAX_PEERS_PER_LIST})
    raw_type = pb.get_int(fields, 1, 0)
    assert raw_type is not None
    try:
        msg_type = MessageType(raw_type)
    except ValueError:
        raise DecodeError(f"unknown kad message type {raw_type}") from None
    key = pb.get_bytes(fields, 2, b"")
    assert key is not None
    raw_record = pb.get_bytes(fields, 3)
    record = decode_record(raw_record) if raw_record is not None else None
    closer, bad_closer = _decode_peers(pb.get_repeated_bytes(fields, 8))
    providers, bad_providers = _decode_peers(pb.get_repeated_bytes(fields, 9))
    level = pb.get_int(fields, 10, 0)
    assert level is not None
    if level >= 1 << 31:
        # int32 on the wire: negative values are sign-extended to 64 bits
        level -= 1 << 64
        if level < -(1 << 31):
            raise DecodeError("clusterLevelRaw out of int32 range")
    return Message(msg_type, key, record, closer, providers, level, bad_closer + bad_providers)


def _decode_peers(entries: Sequence[bytes]) -> tuple[tuple[Peer, ...], int]:
    peers = []
    bad = 0
    for entry in entries:
        try:
            peers.append(decode_peer(entry))
        except DecodeError:
            bad += 1
    return tuple(peers), bad


def frame(msg_bytes: bytes) -> bytes:
    """Prefix an encoded message with its uvarint length, ready to write to a stream.

    Raises:
        LimitError: the message exceeds :data:`MAX_MESSAGE_SIZE`.
    """
    if len(msg_bytes) > MAX_MESSAGE_SIZE:
        raise LimitError(
            f"kad message of {len(msg_bytes)} bytes exceeds {MAX_MESSAGE_SIZE}", limit=MAX_MESSAGE_SIZE
        )
    return varint.encode(len(msg_bytes)) + msg_bytes


def unframe(buf: bytes | bytearray, pos: int = 0) -> tuple[bytes, int]:
    """Split one length-prefixed message off ``buf[pos:]``: ``(message bytes, position after it)``.

    Raises:
        IncompleteError: more bytes are needed (read more and call again).
        DecodeError: the length prefix is malformed or announces more than :data:`MAX_MESSAGE_SIZE`.
    """
    return varint.split_length_prefixed(buf, MAX_MESSAGE_SIZE, pos)


def encode_framed(msg: Message) -> bytes:
    """:func:`encode_message` then :func:`frame`.

    Raises:
        LimitError: the message exceeds :data:`MAX_MESSAGE_SIZE`.
    """
    return frame(encode_message(msg))


def decode_framed(buf: bytes | bytearray) -> Message:
    """Decode exactly one framed message filling ``buf``.

    Raises:
        DecodeError: malformed, oversized, truncated, or followed by extra bytes.
    """
    try:
        body, end = unframe(buf)
    except IncompleteError:
        raise DecodeError("kad message truncated") from None
    if end != len(buf):
        raise DecodeError(f"{len(buf) - end} bytes after the kad message")
    return decode_message(body)
