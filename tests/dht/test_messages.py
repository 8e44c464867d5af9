"""The kad message codec: vectors, round trips, framing, limits, lenient peer lists, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.dht import messages
from physarum.dht.messages import (
    MAX_MESSAGE_SIZE,
    ConnectionType,
    Message,
    MessageType,
    Peer,
    Record,
    decode_framed,
    decode_message,
    encode_framed,
    encode_message,
    frame,
    unframe,
)
from physarum.errors import DecodeError, IncompleteError, LimitError
from physarum.overlay import pb, varint
from physarum.overlay.identity import KeyPair, PeerId

from ._util import ma

ADDRS = [
    ma("/ip4/127.0.0.1/tcp/4001"),
    ma("/ip6/::1/tcp/4001"),
    ma("/dns4/example.com/tcp/443/wss"),
    ma("/ip4/1.2.3.4/udp/4001/quic-v1"),
]
PID = KeyPair(bytes(range(32))).peer_id

peer_ids = st.builds(lambda b: PeerId(b"\x12\x20" + b), st.binary(min_size=32, max_size=32)) | st.just(PID)
peers = st.builds(
    Peer,
    peer_ids,
    st.lists(st.sampled_from(ADDRS), max_size=4).map(tuple),
    st.sampled_from(list(ConnectionType)),
)
records = st.builds(Record, st.binary(max_size=40), st.binary(max_size=200), st.text(max_size=30))
messages_st = st.builds(
    Message,
    st.sampled_from(list(MessageType)),
    st.binary(max_size=60),
    st.none() | records,
    st.lists(peers, max_size=5).map(tuple),
    st.lists(peers, max_size=3).map(tuple),
    st.integers(-(2**31), 2**31 - 1),
)


# ---- vectors ----


def test_ping_vector() -> None:
    assert encode_message(Message(MessageType.PING)) == b"\x08\x05"
    assert encode_framed(Message(MessageType.PING)) == b"\x02\x08\x05"
    assert decode_framed(b"\x02\x08\x05") == Message(MessageType.PING)


def test_put_value_type_zero_is_left_out_and_read_back() -> None:
    # proto3 omits the default enum value; an empty message is a PUT_VALUE with no key
    assert encode_message(Message(MessageType.PUT_VALUE)) == b""
    assert decode_message(b"") == Message(MessageType.PUT_VALUE)
    assert decode_message(b"\x08\x00") == Message(MessageType.PUT_VALUE)


def test_find_node_vector() -> None:
    addr = ma("/ip4/1.2.3.4/tcp/1")
    peer_bytes = (
        b"\x0a" + bytes([len(PID.to_bytes())]) + PID.to_bytes() + b"\x12\x08" + addr.to_bytes() + b"\x18\x01"
    )
    want = b"\x08\x04" + b"\x12\x03abc" + b"\x42" + bytes([len(peer_bytes)]) + peer_bytes
    msg = Message(MessageType.FIND_NODE, b"abc", closer_peers=(Peer(PID, (addr,), ConnectionType.CONNECTED),))
    assert encode_message(msg) == want
    assert decode_message(want) == msg


def test_record_fields() -> None:
    msg = Message(MessageType.GET_VALUE, b"k", Record(b"k", b"v", "2024-01-01T00:00:00Z"))
    fields = pb.decode(encode_message(msg))
    record = pb.decode(pb.get_bytes(fields, 3))  # type: ignore[arg-type]
    assert record == {1: [b"k"], 2: [b"v"], 5: [b"2024-01-01T00:00:00Z"]}


# ---- round trips ----


@given(messages_st)
def test_round_trip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg
    assert decode_framed(encode_framed(msg)) == msg


@given(messages_st)
def test_every_truncated_frame_asks_for_more(msg: Message) -> None:
    framed = encode_framed(msg)
    for cut in range(len(framed)):
        with pytest.raises(IncompleteError):
            unframe(framed[:cut])
    body, end = unframe(framed + b"\x00extra")
    assert end == len(framed) and decode_message(body) == msg


def test_unframe_several_in_one_buffer() -> None:
    a, b = Message(MessageType.PING), Message(MessageType.FIND_NODE, b"x")
    buf = encode_framed(a) + encode_framed(b)
    first, pos = unframe(buf)
    second, end = unframe(buf, pos)
    assert (decode_message(first), decode_message(second), end) == (a, b, len(buf))


def test_negative_cluster_level_round_trips() -> None:
    msg = Message(MessageType.PING, cluster_level_raw=-1)
    assert pb.decode(encode_message(msg))[10] == [2**64 - 1]
    assert decode_message(encode_message(msg)).cluster_level_raw == -1
    with pytest.raises(ValueError):
        encode_message(Message(MessageType.PING, cluster_level_raw=2**31))
    with pytest.raises(DecodeError):
        decode_message(pb.encode([(10, 2**40)]))


# ---- limits ----


def test_oversized_messages_are_refused() -> None:
    big = Message(MessageType.PUT_VALUE, b"k", Record(b"k", bytes(MAX_MESSAGE_SIZE)))
    with pytest.raises(LimitError):
        encode_message(big)
    with pytest.raises(LimitError):
        frame(bytes(MAX_MESSAGE_SIZE + 1))
    assert frame(bytes(10))[:1] == b"\x0a"
    with pytest.raises(DecodeError):
        decode_message(bytes(MAX_MESSAGE_SIZE + 1))


def test_oversized_length_prefix_is_refused_before_the_body_arrives() -> None:
    header = varint.encode(MAX_MESSAGE_SIZE + 1)
    with pytest.raises(DecodeError):
        unframe(header)
    with pytest.raises(DecodeError):
        decode_framed(header + b"\x00" * 10)
    # exactly the limit is allowed: it only waits for the body
    with pytest.raises(IncompleteError):
        unframe(varint.encode(MAX_MESSAGE_SIZE))


def test_decode_framed_wants_exactly_one_message() -> None:
    with pytest.raises(DecodeError):
        decode_framed(b"\x02\x08\x05\x00")
    with pytest.raises(DecodeError):
        decode_framed(b"\x05\x08\x05")


# ---- lenient peer lists, strict messages ----


def _peer_entry(raw_id: bytes | None, addrs: list[bytes] = (), conn: int | None = None) -> bytes:  # type: ignore[assignment]
    fields: list[tuple[int, int | bytes | None]] = [(1, raw_id)]
    fields += [(2, a) for a in addrs]
    fields.append((3, conn))
    return pb.encode(fields)


def test_bad_peer_entries_are_skipped() -> None:
    good = _peer_entry(PID.to_bytes(), [ADDRS[0].to_bytes()])
    entries = [
        _peer_entry(b"\x12\x20" + b"\x00" * 5),  # digest too short
        good,
        _peer_entry(None, [ADDRS[0].to_bytes()]),  # no id
        b"\x0a\x50",  # not a protobuf
        _peer_entry(b"\xff\xff\xff"),  # not a multihash
        pb.encode([(1, 7)]),  # id with the wrong wire type
    ]
    data = pb.encode([(1, 4), *((8, e) for e in entries), (9, entries[0]), (9, good)])
    msg = decode_message(data)
    assert [p.peer_id for p in msg.closer_peers] == [PID]
    assert [p.peer_id for p in msg.provider_peers] == [PID]
    assert msg.invalid_peers == 6


def test_bad_addresses_are_dropped_from_their_peer() -> None:
    entry = _peer_entry(PID.to_bytes(), [b"\x04\x01\x02", ADDRS[1].to_bytes(), b"", b"\xff\xff\xff\xff"])
    msg = decode_message(pb.encode([(1, 4), (8, entry)]))
    assert msg.closer_peers == (Peer(PID, (ADDRS[1],)),)
    assert msg.invalid_peers == 0


def test_unknown_connection_type_reads_as_not_connected() -> None:
    msg = decode_message(pb.encode([(1, 4), (8, _peer_entry(PID.to_bytes(), conn=9))]))
    assert msg.closer_peers[0].connection is ConnectionType.NOT_CONNECTED


@pytest.mark.parametrize(
    "data",
    [
        pb.encode([(1, 6)]),  # unknown type
        pb.encode([(1, b"x")]),  # type with the wrong wire type
        pb.encode([(2, 5)]),  # key with the wrong wire type
        pb.encode([(3, b"\x0a\x50")]),  # malformed record
        pb.encode([(3, pb.encode([(5, b"\xff")]))]),  # timeReceived not UTF-8
        b"\x08",  # truncated
        b"\x0b\x00",  # group wire type
    ],
)
def test_malformed_messages_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data)


def test_unknown_fields_are_ignored() -> None:
    data = encode_message(Message(MessageType.FIND_NODE, b"k")) + pb.encode([(15, b"future"), (16, 3)])
    assert decode_message(data) == Message(MessageType.FIND_NODE, b"k")


# ---- fuzzing: nothing but DecodeError, ever ----


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_decode_message(data: bytes) -> None:
    try:
        decode_message(data)
    except DecodeError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_decode_framed(data: bytes) -> None:
    try:
        decode_framed(data)
    except DecodeError:
        pass
    try:
        unframe(data)
    except (DecodeError, IncompleteError):
        pass


@settings(max_examples=300)
@given(messages_st, st.data())
def test_fuzz_mutated_valid_messages(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[i:]
        else:
            raw.insert(i, data.draw(st.integers(0, 255)))
    try:
        decoded = decode_message(bytes(raw))
    except DecodeError:
        return
    # whatever decodes must encode again
    encode_message(decoded)


def test_protocol_constants() -> None:
    assert messages.PROTOCOL_ID == "/ipfs/kad/1.0.0"
    assert MAX_MESSAGE_SIZE == 4 * 1024 * 1024
    assert [t.value for t in MessageType] == [0, 1, 2, 3, 4, 5]


# ---- bounds on what a decoded message holds ----


def test_decoding_keeps_256_peers_of_32_addresses() -> None:
    many = tuple(ma(f"/ip4/10.0.{i >> 8}.{i & 255}/tcp/1") for i in range(200))
    msg = Message(MessageType.FIND_NODE, closer_peers=(Peer(PID, many),) * 300, provider_peers=(Peer(PID, many),) * 3)
    got = decode_message(encode_message(msg))
    assert len(got.closer_peers) == messages.MAX_PEERS_PER_LIST == 256
    assert all(p.addrs == many[:32] for p in got.closer_peers + got.provider_peers)
    assert len(got.provider_peers) == 3 and got.invalid_peers == 0


def test_a_peer_looks_at_128_addresses_and_drops_oversized_ones_unparsed() -> None:
    garbage = [b"\xff" * 3] * 200
    oversized = ma("/dns4/" + "a" * 251 + "/tcp/1").to_bytes()
    good = ADDRS[0].to_bytes()
    raw = pb.encode([(1, PID.to_bytes()), *((2, a) for a in [oversized, *garbage, good])])
    # the good address comes after 201 unusable ones: past what is looked at
    assert messages.decode_peer(raw).addrs == ()
    raw = pb.encode([(1, PID.to_bytes()), *((2, a) for a in [oversized, *garbage[:100], good])])
    assert messages.decode_peer(raw).addrs == (ADDRS[0],)


def test_a_capped_field_past_its_cap_is_still_checked() -> None:
    entry = encode_message(Message(MessageType.FIND_NODE, closer_peers=(Peer(PID),) * 256))
    with pytest.raises(DecodeError):
        decode_message(entry + b"\x40\x01")  # a 257th closerPeers as a varint
    with pytest.raises(DecodeError):
        decode_message(entry + b"\x42\x05ab")  # a 257th running past the end


def _wire_types(data: bytes, number: int) -> set[int]:
    """The wire types field ``number`` has in ``data``, a message ``pb.decode`` accepts (it skips
    fixed-width fields, so its result alone does not show them)."""
    found: set[int] = set()
    pos = 0
    while pos < len(data):
        key, pos = varint.decode(data, pos)
        wire = key & 7
        if key >> 3 == number:
            found.add(wire)
        if wire == 0:
            _, pos = varint.decode(data, pos)
        elif wire == 2:
            length, pos = varint.decode(data, pos)
            pos += length
        else:
            pos += 8 if wire == 1 else 4
    return found


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_a_capped_decode_keeps_the_first_values_of_a_capped_field(data: bytes) -> None:
    try:
        expected = pb.decode(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            pb.decode(data, {1: 2})
        return
    if _wire_types(data, 1) - {2}:
        with pytest.raises(DecodeError):  # a capped field must be length-delimited
            pb.decode(data, {1: 2})
        return
    if 1 in expected:
        expected[1] = expected[1][:2]
    assert pb.decode(data, {1: 2}) == expected
