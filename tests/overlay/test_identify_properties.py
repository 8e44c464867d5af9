"""identify's codec against what a peer can send (physarum.overlay.identify): random and garbled
protobufs raise only DecodeError, encode/decode round-trip, and whatever decodes is within the limits;
plus check_against, which drops what the connection's peer could not have said."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.errors import DecodeError
from physarum.overlay import identify, pb, varint
from physarum.overlay.envelope import seal_peer_record
from physarum.overlay.identify import DEFAULT_LIMITS, IdentifyInfo, IdentifyLimits
from physarum.overlay.identity import KEY_ED25519, KEY_RSA, KeyPair, PublicKey
from physarum.overlay.multiaddr import Multiaddr

ALICE = KeyPair(bytes([5]) * 32)
MALLORY = KeyPair(bytes([6]) * 32)


def _dns_addr(name_len: int, tcp_components: int = 1) -> Multiaddr:
    return Multiaddr(b"\x36" + varint.encode(name_len) + b"a" * name_len + b"\x06\x0f\xa1" * tcp_components)


# A pool with duplicates to be found, and addresses over each bound (length, components).
_ADDRS = st.one_of(
    st.integers(0, 12).map(lambda i: Multiaddr(f"/ip4/10.0.0.{i}/tcp/4001")),
    st.sampled_from([_dns_addr(250), _dns_addr(251), _dns_addr(4, 15), _dns_addr(4, 16)]),
    st.just(Multiaddr("/ip6/::1/tcp/4002/ws")),
)
_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20) | st.sampled_from(
    ["", "/ipfs/ping/1.0.0", "/p/" + "x" * 300, "\U0001f600" * 100]
)
_KEYS = st.one_of(
    st.none(),
    st.binary(min_size=32, max_size=32).map(lambda b: PublicKey(KEY_ED25519, b)),
    st.sampled_from([2048, 2049, 1]).map(lambda n: PublicKey(KEY_RSA, b"r" * n)),
)
_RECORDS = st.one_of(st.none(), st.sampled_from([0, 10, 8192, 8193]).map(lambda n: b"s" * n))


@st.composite
def infos(draw: st.DrawFn) -> IdentifyInfo:
    return IdentifyInfo(
        public_key=draw(_KEYS),
        listen_addrs=draw(st.lists(_ADDRS, max_size=10)),
        protocols=draw(st.lists(_TEXT, max_size=10)),
        observed_addr=draw(st.none() | _ADDRS),
        protocol_version=draw(st.none() | _TEXT),
        agent_version=draw(st.none() | _TEXT),
        signed_peer_record=draw(_RECORDS),
    )


_LIMITS = st.builds(
    IdentifyLimits,
    max_protocols=st.integers(0, 6),
    max_protocol_length=st.integers(1, 40),
    max_listen_addrs=st.integers(0, 6),
    max_addr_length=st.sampled_from([8, 256]),
    max_addr_components=st.sampled_from([2, 16]),
    max_version_length=st.integers(0, 30),
    max_public_key_length=st.sampled_from([32, 2048]),
    max_signed_record=st.sampled_from([10, 8192]),
)


def assert_within(info: IdentifyInfo, limits: IdentifyLimits) -> None:
    """Everything ``limits`` promises of a decoded message, checked without identify's own predicates."""

    def addr_ok(a: Multiaddr) -> bool:
        return (
            len(a.to_bytes()) <= limits.max_addr_length and len(a.protocols()) <= limits.max_addr_components
        )

    assert len(info.protocols) <= limits.max_protocols
    assert len(set(info.protocols)) == len(info.protocols)
    assert all(0 < len(p.encode("utf-8")) <= limits.max_protocol_length for p in info.protocols)
    assert len(info.listen_addrs) <= limits.max_listen_addrs
    assert len(set(info.listen_addrs)) == len(info.listen_addrs)
    assert all(addr_ok(a) for a in info.listen_addrs)
    assert info.observed_addr is None or addr_ok(info.observed_addr)
    for text in (info.protocol_version, info.agent_version):
        assert text is None or len(text) <= limits.max_version_length
    assert info.public_key is None or len(info.public_key.data) <= limits.max_public_key_length
    assert info.signed_peer_record is None or len(info.signed_peer_record) <= limits.max_signed_record


@settings(max_examples=100, deadline=None)
@given(infos())
def test_encode_decode_round_trip(info: IdentifyInfo) -> None:
    body = identify.encode(info)
    assert identify.decode(body, limits=None) == info
    # both framings a peer may use
    assert identify.decode_message(body, limits=None) == info
    assert identify.decode_message(varint.encode(len(body)) + body, limits=None) == info


@settings(max_examples=100, deadline=None)
@given(infos(), _LIMITS)
def test_decode_with_limits_is_trim_of_the_whole_message(info: IdentifyInfo, limits: IdentifyLimits) -> None:
    body = identify.encode(info)
    decoded = identify.decode(body, limits)
    assert_within(decoded, limits)
    if (
        len(info.protocols) <= 2 * limits.max_protocols
        and len(info.listen_addrs) <= 2 * limits.max_listen_addrs
    ):
        # Within twice the caps every entry is parsed: exactly what trimming the whole message keeps.
        assert decoded == identify.trim(identify.decode(body, limits=None), limits)


@settings(max_examples=60, deadline=None)
@given(infos())
def test_the_default_limits_keep_an_ordinary_message_whole(info: IdentifyInfo) -> None:
    decoded = identify.decode(identify.encode(info))
    assert_within(decoded, DEFAULT_LIMITS)
    # what the strategy draws is only ever cut for the values past a default bound
    assert decoded.protocols == list(dict.fromkeys(p for p in info.protocols if 0 < len(p.encode()) <= 256))
    assert decoded.agent_version == (None if info.agent_version is None else info.agent_version[:256])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), _LIMITS)
def test_random_bytes_raise_only_decode_error(data: bytes, limits: IdentifyLimits) -> None:
    for decoder in (identify.decode, identify.decode_message):
        try:
            info = decoder(data, limits)
        except DecodeError:
            continue
        assert_within(info, limits)


_FIELD_VALUES = st.one_of(
    st.binary(max_size=60),
    st.integers(0, 2**64 - 1),
    _ADDRS.map(Multiaddr.to_bytes),
    st.just(ALICE.public_key.to_protobuf()),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), _FIELD_VALUES), max_size=12), _LIMITS)
def test_random_protobufs_raise_only_decode_error(
    fields: list[tuple[int, bytes | int]], limits: IdentifyLimits
) -> None:
    try:
        info = identify.decode(pb.encode(fields), limits)
    except DecodeError:
        return
    assert_within(info, limits)


@settings(max_examples=100, deadline=None)
@given(infos(), st.data())
def test_garbled_messages_raise_only_decode_error(info: IdentifyInfo, data: st.DataObject) -> None:
    body = bytearray(identify.encode(info))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip" and pos < len(body):
            body[pos] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del body[pos : pos + data.draw(st.integers(1, 4))]
        else:
            del body[pos:]
    try:
        decoded = identify.decode_message(bytes(body))
    except DecodeError:
        return
    assert_within(decoded, DEFAULT_LIMITS)


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x05ab",  # public key field past the end
        pb.encode([(1, b"\x08\x01\x12\x02ab")]),  # a 2-byte Ed25519 key
        pb.encode([(1, b"\x12\x02ab")]),  # a key without a type
        pb.encode([(2, 7)]),  # a listen address as a varint
        pb.encode([(4, 7)]),  # the observed address as a varint
        b"\x1b",  # a group wire type
        b"\x80" * 11,  # a tag longer than a varint
    ],
)
def test_malformed_messages_are_decode_errors(body: bytes) -> None:
    with pytest.raises(DecodeError):
        identify.decode(body)


def test_bad_addresses_are_skipped_not_fatal() -> None:
    good = Multiaddr("/ip4/10.0.0.1/tcp/1")
    body = pb.encode([(2, b"\x04\x01"), (2, good.to_bytes()), (4, b"\xff\xff")])
    info = identify.decode(body)
    assert info.listen_addrs == [good] and info.observed_addr is None


# ---- check_against: what the connection's peer could have said ----


def test_a_key_of_another_peer_is_refused() -> None:
    info = IdentifyInfo(public_key=MALLORY.public_key)
    with pytest.raises(DecodeError):
        identify.check_against(info, ALICE.peer_id)
    mine = IdentifyInfo(public_key=ALICE.public_key)
    assert identify.check_against(mine, ALICE.peer_id).public_key == ALICE.public_key
    assert identify.check_against(IdentifyInfo(), ALICE.peer_id).public_key is None


@pytest.mark.parametrize(
    ("record", "kept"),
    [
        (seal_peer_record(ALICE, 1, [Multiaddr("/ip4/1.2.3.4/tcp/1")]), True),
        (seal_peer_record(MALLORY, 1, [Multiaddr("/ip4/6.6.6.6/tcp/1")]), False),  # Mallory's own record
        (b"garbage", False),
        (b"", False),
    ],
)
def test_only_the_peers_own_signed_record_is_kept(record: bytes, kept: bool) -> None:
    info = identify.check_against(IdentifyInfo(signed_peer_record=record), ALICE.peer_id)
    assert info.signed_peer_record == (record if kept else None)
