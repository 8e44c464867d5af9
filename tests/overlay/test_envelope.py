"""Signed envelopes and peer records (physarum.overlay.envelope, libp2p RFC 0002 / 0003)."""

from __future__ import annotations

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.errors import DecodeError, PhysarumError
from physarum.overlay import pb, varint
from physarum.overlay.envelope import (
    PEER_RECORD_DOMAIN,
    PEER_RECORD_TYPE,
    Envelope,
    EnvelopeError,
    open_envelope,
    open_peer_record,
    seal,
    seal_peer_record,
    signing_bytes,
)
from physarum.overlay.identity import KEY_RSA, KEY_SECP256K1, KeyPair, PublicKey
from physarum.overlay.multiaddr import Multiaddr

ALICE = KeyPair(bytes([1]) * 32)
BOB = KeyPair(bytes([2]) * 32)
DOMAIN = b"physarum-test"
TYPE = b"\x2a\x01"
ADDRS = [Multiaddr("/ip4/10.0.0.1/tcp/4001"), Multiaddr("/ip6/::1/tcp/4002/ws")]


def _fields(data: bytes) -> dict[int, bytes]:
    return {n: v[0] for n, v in pb.decode(data).items() if isinstance(v[0], bytes)}


def _envelope(key: bytes, ptype: bytes, payload: bytes, signature: bytes) -> bytes:
    return pb.encode([(1, key), (2, ptype), (3, payload), (5, signature)])


def test_the_error_is_a_decode_error() -> None:
    # Callers that handle "a peer sent bytes that do not decode" catch envelopes too.
    assert issubclass(EnvelopeError, DecodeError) and issubclass(EnvelopeError, PhysarumError)


def test_signing_bytes_are_each_part_length_prefixed() -> None:
    assert signing_bytes(b"d", b"\x01", b"") == b"\x01d\x01\x01\x00"
    payload = b"p" * 200
    assert signing_bytes(DOMAIN, TYPE, payload) == (
        bytes([len(DOMAIN)]) + DOMAIN + b"\x02" + TYPE + varint.encode(200) + payload
    )
    # moving a byte from one part to the next changes what is signed
    assert signing_bytes(b"ab", b"c", b"") != signing_bytes(b"a", b"bc", b"")


def test_seal_writes_the_libp2p_wire_format() -> None:
    env = seal(ALICE, DOMAIN, TYPE, b"hello")
    fields = _fields(env)
    assert fields[1] == ALICE.public_key.to_protobuf()
    assert (fields[2], fields[3]) == (TYPE, b"hello")
    # an Ed25519 signature over signing_bytes, checkable by any Ed25519 library
    nacl.signing.VerifyKey(ALICE.public_key.data).verify(signing_bytes(DOMAIN, TYPE, b"hello"), fields[5])


def test_open_returns_what_was_sealed() -> None:
    env = open_envelope(seal(ALICE, DOMAIN, TYPE, b"hello"), DOMAIN, TYPE)
    assert isinstance(env, Envelope)
    assert (env.public_key, env.payload_type, env.payload) == (ALICE.public_key, TYPE, b"hello")
    assert env.signer == ALICE.peer_id
    assert len(env.signature) == 64
    # without an expected type, any type opens
    assert open_envelope(seal(ALICE, DOMAIN, b"\x07", b""), DOMAIN).payload_type == b"\x07"


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=8), st.binary(max_size=300), st.integers(0, 2))
def test_round_trip(domain: bytes, ptype: bytes, payload: bytes, who: int) -> None:
    key_pair = (ALICE, BOB, KeyPair(bytes([who + 7]) * 32))[who]
    env = open_envelope(seal(key_pair, domain, ptype, payload), domain, ptype)
    assert (env.payload_type, env.payload, env.signer) == (ptype, payload, key_pair.peer_id)


def test_another_domain_is_rejected() -> None:
    env = seal(ALICE, DOMAIN, TYPE, b"hello")
    with pytest.raises(EnvelopeError):
        open_envelope(env, DOMAIN + b"x", TYPE)
    with pytest.raises(EnvelopeError):
        open_envelope(env, PEER_RECORD_DOMAIN)


def test_another_payload_type_is_rejected() -> None:
    env = seal(ALICE, DOMAIN, TYPE, b"hello")
    with pytest.raises(EnvelopeError, match="payload type"):
        open_envelope(env, DOMAIN, PEER_RECORD_TYPE)


def test_a_relabelled_payload_type_breaks_the_signature() -> None:
    fields = _fields(seal(ALICE, DOMAIN, TYPE, b"hello"))
    relabelled = _envelope(fields[1], PEER_RECORD_TYPE, fields[3], fields[5])
    with pytest.raises(EnvelopeError, match="signature"):
        open_envelope(relabelled, DOMAIN)


def test_a_tampered_payload_is_rejected() -> None:
    fields = _fields(seal(ALICE, DOMAIN, TYPE, b"hello"))
    with pytest.raises(EnvelopeError, match="signature"):
        open_envelope(_envelope(fields[1], TYPE, b"hellO", fields[5]), DOMAIN, TYPE)
    with pytest.raises(EnvelopeError, match="signature"):
        open_envelope(_envelope(fields[1], TYPE, b"hello!", fields[5]), DOMAIN, TYPE)


@pytest.mark.parametrize("signature", [b"", bytes(64), b"\x01" * 63, b"\x01" * 65])
def test_a_tampered_signature_is_rejected(signature: bytes) -> None:
    fields = _fields(seal(ALICE, DOMAIN, TYPE, b"hello"))
    with pytest.raises(EnvelopeError):
        open_envelope(_envelope(fields[1], TYPE, b"hello", signature), DOMAIN, TYPE)
    flipped = bytes([fields[5][0] ^ 1]) + fields[5][1:]
    with pytest.raises(EnvelopeError):
        open_envelope(_envelope(fields[1], TYPE, b"hello", flipped), DOMAIN, TYPE)


def test_a_swapped_public_key_is_rejected() -> None:
    fields = _fields(seal(ALICE, DOMAIN, TYPE, b"hello"))
    with pytest.raises(EnvelopeError):
        open_envelope(_envelope(BOB.public_key.to_protobuf(), TYPE, b"hello", fields[5]), DOMAIN, TYPE)


@pytest.mark.parametrize("key_type", [KEY_RSA, KEY_SECP256K1, 99])
def test_keys_physarum_cannot_verify_are_envelope_errors(key_type: int) -> None:
    fields = _fields(seal(ALICE, DOMAIN, TYPE, b"hello"))
    key = PublicKey(key_type, b"\x30" * 40).to_protobuf()
    with pytest.raises(EnvelopeError):
        open_envelope(_envelope(key, TYPE, b"hello", fields[5]), DOMAIN, TYPE)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x0a",  # field 1 cut short
        b"\x0a\x05abc",  # length past the end
        b"\x08\x01",  # public key as a varint
        pb.encode([(2, TYPE), (3, b"x"), (5, bytes(64))]),  # no public key
        pb.encode([(1, b"\x08\x01\x12\x03abc"), (3, b"x"), (5, bytes(64))]),  # a 3-byte Ed25519 key
        b"\x0b\x00",  # a group wire type
    ],
)
def test_malformed_envelopes_are_envelope_errors(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        open_envelope(data, DOMAIN)


def test_every_truncation_and_every_single_byte_change_is_caught() -> None:
    env = seal(ALICE, DOMAIN, TYPE, b"payload bytes")
    for n in range(len(env)):
        with pytest.raises(EnvelopeError):
            open_envelope(env[:n], DOMAIN, TYPE)
    for i in range(len(env)):
        for delta in (1, 0x80):
            changed = env[:i] + bytes([env[i] ^ delta]) + env[i + 1 :]
            try:
                opened = open_envelope(changed, DOMAIN, TYPE)
            except EnvelopeError:
                continue
            # Still opening means the change touched nothing signed (say, a field number now
            # unknown, skipped): what comes out is exactly what was sealed.
            assert (opened.public_key, opened.payload_type, opened.payload) == (
                ALICE.public_key,
                TYPE,
                b"payload bytes",
            )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_only_ever_envelope_errors(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        open_envelope(data, DOMAIN)
    with pytest.raises(EnvelopeError):
        open_peer_record(data)


_VALUES = st.one_of(st.binary(max_size=80), st.integers(0, 2**64 - 1))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), _VALUES), max_size=8), st.booleans())
def test_random_protobufs_are_only_ever_envelope_errors(
    fields: list[tuple[int, bytes | int]], with_real_key: bool
) -> None:
    if with_real_key:
        fields = [(1, ALICE.public_key.to_protobuf()), *fields]
    data = pb.encode(fields)
    try:
        env = open_envelope(data, DOMAIN)
    except EnvelopeError:
        return
    pytest.fail(f"an unsigned message opened: {env}")  # nothing here carries a valid signature


# ---- peer records ----


def test_peer_record_round_trip() -> None:
    record = open_peer_record(seal_peer_record(ALICE, 7, ADDRS))
    assert (record.peer_id, record.seq, record.addrs) == (ALICE.peer_id, 7, ADDRS)
    empty = open_peer_record(seal_peer_record(BOB, 0, []))
    assert (empty.peer_id, empty.seq, empty.addrs) == (BOB.peer_id, 0, [])


def test_a_peer_record_is_a_libp2p_envelope() -> None:
    env = open_envelope(seal_peer_record(ALICE, 3, ADDRS[:1]), PEER_RECORD_DOMAIN, PEER_RECORD_TYPE)
    assert PEER_RECORD_DOMAIN == b"libp2p-peer-record" and PEER_RECORD_TYPE == b"\x03\x01"
    body = pb.decode(env.payload)
    assert body[1] == [ALICE.peer_id.to_bytes()] and body[2] == [3]
    assert body[3] == [pb.encode([(1, ADDRS[0].to_bytes())])]


def _record_payload(fields: list[tuple[int, int | bytes | str | None]]) -> bytes:
    return pb.encode(fields)


def test_a_record_naming_another_peer_is_rejected() -> None:
    payload = _record_payload([(1, ALICE.peer_id.to_bytes()), (2, 1)])
    forged = seal(BOB, PEER_RECORD_DOMAIN, PEER_RECORD_TYPE, payload)
    with pytest.raises(EnvelopeError, match="signed by"):
        open_peer_record(forged)


def test_a_record_sealed_for_another_domain_or_type_is_rejected() -> None:
    payload = _record_payload([(1, ALICE.peer_id.to_bytes()), (2, 1)])
    with pytest.raises(EnvelopeError):
        open_peer_record(seal(ALICE, b"libp2p-routing-state", PEER_RECORD_TYPE, payload))
    with pytest.raises(EnvelopeError):
        open_peer_record(seal(ALICE, PEER_RECORD_DOMAIN, b"\x03\x02", payload))


def test_one_bad_address_does_not_void_the_record() -> None:
    payload = _record_payload(
        [
            (1, ALICE.peer_id.to_bytes()),
            (2, 5),
            (3, pb.encode([(1, b"\x04\x01\x02")])),  # ip4 cut short
            (3, pb.encode([(1, ADDRS[0].to_bytes())])),
            (3, b""),  # an AddressInfo without an address
        ]
    )
    record = open_peer_record(seal(ALICE, PEER_RECORD_DOMAIN, PEER_RECORD_TYPE, payload))
    assert record.addrs == [ADDRS[0]] and record.seq == 5


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",  # not a protobuf
        _record_payload([(2, 1)]),  # no peer id
        _record_payload([(1, b"\x12\x03abc")]),  # a sha2-256 multihash that is not 32 bytes
        _record_payload([(1, 5)]),  # peer id as a varint
        _record_payload([(1, ALICE.peer_id.to_bytes()), (2, b"seq")]),  # seq as bytes
        _record_payload(
            [(1, ALICE.peer_id.to_bytes()), (3, b"\xff")]
        ),  # an AddressInfo that is not a protobuf
        _record_payload([(1, ALICE.peer_id.to_bytes()), (3, 7)]),  # an AddressInfo as a varint
    ],
)
def test_malformed_record_payloads_are_envelope_errors(payload: bytes) -> None:
    with pytest.raises(EnvelopeError):
        open_peer_record(seal(ALICE, PEER_RECORD_DOMAIN, PEER_RECORD_TYPE, payload))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), _VALUES), max_size=6), st.booleans())
def test_random_signed_payloads_are_only_ever_envelope_errors_or_alice(
    fields: list[tuple[int, bytes | int]], names_alice: bool
) -> None:
    # Validly signed by Alice, so only the payload's checks stand between it and a record.
    if names_alice:
        fields = [(1, ALICE.peer_id.to_bytes()), *fields]
    env = seal(ALICE, PEER_RECORD_DOMAIN, PEER_RECORD_TYPE, pb.encode(fields))
    try:
        record = open_peer_record(env)
    except EnvelopeError:
        return
    assert record.peer_id == ALICE.peer_id  # only ever the signer's own record
