"""Signed contact records and the record store (wall-clock ``now`` injected)."""

from __future__ import annotations

import base64
import hashlib
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.dht import records
from physarum.dht.records import (
    DOMAIN,
    MAX_DATA_SIZE,
    MAX_ENVELOPE_SIZE,
    PAYLOAD_TYPE,
    BadSignatureError,
    ContactRecord,
    ExpiredRecordError,
    ExpiryTooFarError,
    InvalidDataError,
    MalformedRecordError,
    RecordError,
    RecordRejected,
    RecordStore,
    RecordTooLargeError,
    StaleRecordError,
    Stored,
    StoreFullError,
    Unchanged,
    UnsupportedKeyError,
    WrongPublisherError,
    open_envelope,
    seal_envelope,
    sign_record,
    verify_record,
)
from physarum.errors import DecodeError
from physarum.overlay import pb, varint
from physarum.overlay.identity import KEY_RSA, KeyPair, PublicKey

from ._util import ma

NOW = 1_700_000_000.0
ALICE = KeyPair(bytes([1]) * 32)
BOB = KeyPair(bytes([2]) * 32)
EP = (ma("/ip4/127.0.0.1/tcp/4001"), ma("/dns4/example.com/tcp/443/wss"))


def rec(record_id: str = "receptionist", *, seq: int = 1, ttl: float = 3600.0, **kw: Any) -> ContactRecord:
    return ContactRecord(
        record_id, kw.pop("endpoints", EP), kw.pop("data", {"role": "r"}), seq, int(NOW + ttl), **kw
    )


def payload(fields: list[tuple[int, int | bytes | str | None]]) -> bytes:
    return pb.encode(fields)


def sealed(key_pair: KeyPair, fields: list[tuple[int, int | bytes | str | None]]) -> bytes:
    return seal_envelope(key_pair, DOMAIN, PAYLOAD_TYPE, payload(fields))


# ---- sign / verify ----


def test_entity_record_round_trip() -> None:
    record = rec(data={"role": "receptionist", "load": 0.5, "tags": ["a", "b"], "nested": {"x": None}})
    env = sign_record(ALICE, record)
    got = verify_record(env, NOW)
    assert got.id == "receptionist"
    assert got.endpoints == EP
    assert got.data == record.data
    assert (got.seq, got.expires, got.publisher) == (1, record.expires, ALICE.peer_id)
    assert got == ContactRecord(record.id, EP, record.data, 1, record.expires, ALICE.peer_id)


def test_peer_id_record_signed_by_that_peer() -> None:
    env = sign_record(ALICE, rec(str(ALICE.peer_id)))
    assert verify_record(env, NOW).publisher == ALICE.peer_id


def test_signature_covers_the_libp2p_envelope_format() -> None:
    env = sign_record(ALICE, rec())
    fields = pb.decode(env)
    key = PublicKey.from_protobuf(pb.get_bytes(fields, 1))  # type: ignore[arg-type]
    body = pb.get_bytes(fields, 3)
    assert body is not None
    assert pb.get_bytes(fields, 2) == PAYLOAD_TYPE == b"/physarum/contact-record/1"
    signed = (
        varint.encode(len(DOMAIN))
        + DOMAIN.encode()
        + varint.encode(len(PAYLOAD_TYPE))
        + PAYLOAD_TYPE
        + varint.encode(len(body))
        + body
    )
    assert key.verify(signed, pb.get_bytes(fields, 5))  # type: ignore[arg-type]
    assert key == ALICE.public_key
    assert set(fields) == {1, 2, 3, 5}


def test_empty_data_and_seq_zero() -> None:
    env = sign_record(ALICE, rec(data={}, seq=0, endpoints=()))
    got = verify_record(env, NOW)
    assert (got.data, got.seq, got.endpoints) == ({}, 0, ())
    env = sealed(ALICE, [(1, "x"), (5, int(NOW) + 10)])  # no data field at all
    assert verify_record(env, NOW).data == {}


def test_record_keys() -> None:
    assert records.record_key("receptionist") == b"/physarum/contact/receptionist"
    assert records.record_kad_key("receptionist") == int.from_bytes(
        hashlib.sha256(b"/physarum/contact/receptionist").digest(), "big"
    )
    assert records.record_id_from_key(records.record_key("réception")) == "réception"
    for bad in (b"/other/x", b"/physarum/contact/", b"/physarum/contact/\xff", records.record_key("x" * 300)):
        with pytest.raises(DecodeError):
            records.record_id_from_key(bad)


# ---- rejections ----


def test_tampered_signature() -> None:
    env = bytearray(sign_record(ALICE, rec()))
    env[-1] ^= 1
    with pytest.raises(BadSignatureError):
        verify_record(bytes(env), NOW)


def test_tampered_payload() -> None:
    env = sign_record(ALICE, rec(seq=1))
    fields = pb.decode(env)
    body = pb.decode(pb.get_bytes(fields, 3))  # type: ignore[arg-type]
    body[4] = [999]
    forged = pb.encode(
        [
            (1, pb.get_bytes(fields, 1)),
            (2, PAYLOAD_TYPE),
            (3, pb.encode([(n, v) for n, vs in sorted(body.items()) for v in vs])),
            (5, pb.get_bytes(fields, 5)),
        ]
    )
    with pytest.raises(BadSignatureError):
        verify_record(forged, NOW)


def test_swapped_public_key() -> None:
    env = sign_record(ALICE, rec())
    fields = pb.decode(env)
    forged = pb.encode(
        [
            (1, BOB.public_key.to_protobuf()),
            (2, PAYLOAD_TYPE),
            (3, pb.get_bytes(fields, 3)),
            (5, pb.get_bytes(fields, 5)),
        ]
    )
    with pytest.raises(BadSignatureError):
        verify_record(forged, NOW)


def test_signed_for_another_domain() -> None:
    body = payload([(1, "x"), (5, int(NOW) + 10)])
    env = seal_envelope(ALICE, "libp2p-peer-record", PAYLOAD_TYPE, body)
    with pytest.raises(BadSignatureError):
        verify_record(env, NOW)


def test_foreign_payload_type() -> None:
    env = seal_envelope(ALICE, DOMAIN, b"\x03\x01", payload([(1, "x"), (5, int(NOW) + 10)]))
    with pytest.raises(MalformedRecordError):
        verify_record(env, NOW)


def test_wrong_publisher_for_a_peer_id_record() -> None:
    with pytest.raises(WrongPublisherError):
        sign_record(BOB, rec(str(ALICE.peer_id)))
    env = sealed(BOB, [(1, str(ALICE.peer_id)), (5, int(NOW) + 10)])
    with pytest.raises(WrongPublisherError) as info:
        verify_record(env, NOW)
    assert info.value.publisher == BOB.peer_id and info.value.record_id == str(ALICE.peer_id)


def test_sign_refuses_a_contradicting_publisher() -> None:
    with pytest.raises(WrongPublisherError):
        sign_record(ALICE, rec(publisher=BOB.peer_id))
    sign_record(ALICE, rec(publisher=ALICE.peer_id))


def test_non_canonical_peer_id_spelling() -> None:
    cid = "b" + base64.b32encode(varint.encode(1) + varint.encode(0x72) + ALICE.peer_id.to_bytes()).decode()
    cid = cid.lower().rstrip("=")
    for spelling in (cid, " " + str(ALICE.peer_id)):
        with pytest.raises(MalformedRecordError):
            sign_record(ALICE, rec(spelling))
        with pytest.raises(MalformedRecordError):
            verify_record(sealed(ALICE, [(1, spelling), (5, int(NOW) + 10)]), NOW)


def test_unsupported_key_type() -> None:
    body = payload([(1, "x"), (5, int(NOW) + 10)])
    env = pb.encode(
        [(1, PublicKey(KEY_RSA, b"\x30" * 40).to_protobuf()), (2, PAYLOAD_TYPE), (3, body), (5, b"s" * 64)]
    )
    with pytest.raises(UnsupportedKeyError):
        verify_record(env, NOW)


def test_oversized_data() -> None:
    big = {"blob": "x" * MAX_DATA_SIZE}
    with pytest.raises(RecordTooLargeError):
        sign_record(ALICE, rec(data=big))
    raw = b'{"blob":"' + b"x" * MAX_DATA_SIZE + b'"}'
    env = sealed(ALICE, [(1, "x"), (3, raw), (5, int(NOW) + 10)])
    assert len(env) <= MAX_ENVELOPE_SIZE
    with pytest.raises(RecordTooLargeError) as info:
        verify_record(env, NOW)
    assert info.value.record_id == "x"
    # just under the limit is fine
    ok = {"blob": "x" * (MAX_DATA_SIZE - 20)}
    assert verify_record(sign_record(ALICE, rec(data=ok)), NOW).data == ok


def test_oversized_envelope() -> None:
    env = sealed(ALICE, [(1, "x"), (5, int(NOW) + 10), (9, b"p" * MAX_ENVELOPE_SIZE)])
    with pytest.raises(RecordTooLargeError):
        verify_record(env, NOW)
    # each part within its own limit, the whole over MAX_ENVELOPE_SIZE
    long_addr = ma("/dns4/" + ".".join(["a" * 60] * 4) + f"/tcp/1/p2p/{ALICE.peer_id}")
    endpoints = [long_addr] * records.MAX_ENDPOINTS
    data = {"d": "x" * (MAX_DATA_SIZE - 10)}
    assert sum(len(e.to_bytes()) for e in endpoints) + MAX_DATA_SIZE > MAX_ENVELOPE_SIZE
    with pytest.raises(RecordTooLargeError):
        sign_record(ALICE, rec(endpoints=endpoints, data=data))


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2]",
        b'"text"',
        b"42",
        b"null",
        b"{not json",
        b"\xff\xfe{}",
        b'{"x": NaN}',
        b'{"x": Infinity}',
        # found by tests/fuzz/fuzz_records.py: valid JSON that parses to inf, so the record verified
        # but its data could never be written as JSON again (sign_record refused it)
        b'{"x": 1e400}',
        b'{"x": [-1E+309]}',
        b"[" * 5000,
    ],
)
def test_data_must_be_a_json_object(raw: bytes) -> None:
    env = sealed(ALICE, [(1, "x"), (3, raw), (5, int(NOW) + 10)])
    with pytest.raises(InvalidDataError) as info:
        verify_record(env, NOW)
    assert isinstance(info.value, DecodeError)


@pytest.mark.parametrize("data", [[1, 2], {"x": float("nan")}, {"x": {1, 2}}, {"x": object()}])
def test_sign_refuses_non_json_data(data: Any) -> None:
    with pytest.raises(InvalidDataError):
        sign_record(ALICE, rec(data=data))


def test_expired_and_too_far() -> None:
    env = sign_record(ALICE, rec(ttl=60))
    verify_record(env, NOW + 59)
    with pytest.raises(ExpiredRecordError):
        verify_record(env, NOW + 60)
    far = sign_record(ALICE, rec(ttl=records.MAX_RECORD_TTL + 10))
    with pytest.raises(ExpiryTooFarError):
        verify_record(far, NOW)
    verify_record(far, NOW, max_ttl=records.MAX_RECORD_TTL + 20)


@pytest.mark.parametrize(
    "fields",
    [
        [(5, int(NOW) + 10)],  # no id
        [(1, ""), (5, int(NOW) + 10)],  # empty id
        [(1, b"\xff"), (5, int(NOW) + 10)],  # id not UTF-8
        [(1, "x" * 300), (5, int(NOW) + 10)],  # id too long
        [(1, "x")],  # no expiry
        [(1, 5), (5, int(NOW) + 10)],  # id with the wrong wire type
        [(1, "x"), (5, b"soon")],  # expiry with the wrong wire type
        [(1, "x"), (5, int(NOW) + 10), *[(2, b"\x04\x01\x02\x03\x04")] * 40],  # too many endpoints
    ],
)
def test_malformed_payloads(fields: list[tuple[int, int | bytes | str | None]]) -> None:
    with pytest.raises(MalformedRecordError):
        verify_record(sealed(ALICE, fields), NOW)


def test_malformed_envelopes() -> None:
    for env in (
        b"",
        b"\x0a\x50",
        pb.encode([(1, b"k"), (2, PAYLOAD_TYPE)]),
        pb.encode([(1, b"bad key"), (2, PAYLOAD_TYPE), (3, b""), (5, b"")]),
    ):
        with pytest.raises(MalformedRecordError):
            verify_record(env, NOW)


def test_invalid_endpoints_are_left_out_but_the_record_verifies() -> None:
    env = sealed(ALICE, [(1, "x"), (2, b"\x04\x01\x02"), (2, EP[0].to_bytes()), (5, int(NOW) + 10)])
    assert verify_record(env, NOW).endpoints == (EP[0],)


def test_sign_checks_numbers() -> None:
    with pytest.raises(ValueError):
        sign_record(ALICE, rec(seq=-1))
    with pytest.raises(ValueError):
        sign_record(ALICE, ContactRecord("x", expires=0))


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_verify_raises_only_record_errors(data: bytes) -> None:
    try:
        verify_record(data, NOW)
    except RecordError:
        pass


def test_open_envelope_generic() -> None:
    env = seal_envelope(BOB, "some-domain", b"\x01", b"hello")
    key, body = open_envelope(env, "some-domain", b"\x01")
    assert (key, body) == (BOB.public_key, b"hello")


def test_record_sets() -> None:
    envs = [sign_record(ALICE, rec()), sign_record(BOB, rec())]
    assert records.decode_record_set(records.encode_record_set(envs)) == envs
    assert records.decode_record_set(b"") == []
    with pytest.raises(DecodeError):
        records.decode_record_set(records.encode_record_set([b"x"] * 3), max_count=2)
    with pytest.raises(DecodeError):
        records.decode_record_set(b"\x08\x01")


# ---- the record store ----


def test_store_put_get() -> None:
    store = RecordStore()
    env = sign_record(ALICE, rec())
    result = store.put(env, NOW)
    assert isinstance(result, Stored) and not result.replaced
    assert result.stored.publisher == ALICE.peer_id and result.stored.stored_at == NOW
    assert store.get("receptionist", NOW) == [env]
    assert store.get("nobody", NOW) == []
    assert len(store) == 1 and store.total_bytes == len(env)
    assert store.get_from("receptionist", ALICE.peer_id, NOW) == result.stored
    assert store.get_from("receptionist", BOB.peer_id, NOW) is None


def test_store_same_envelope_is_unchanged() -> None:
    store = RecordStore()
    env = sign_record(ALICE, rec())
    store.put(env, NOW)
    assert isinstance(store.put(env, NOW + 5), Unchanged)
    assert len(store) == 1


def test_store_higher_seq_replaces() -> None:
    store = RecordStore()
    store.put(sign_record(ALICE, rec(seq=1)), NOW)
    newer = sign_record(ALICE, rec(seq=2, data={"v": 2}))
    result = store.put(newer, NOW)
    assert isinstance(result, Stored) and result.replaced
    assert store.get("receptionist", NOW) == [newer]
    assert len(store) == 1 and store.total_bytes == len(newer)


def test_store_stale_seq_rejected() -> None:
    store = RecordStore()
    store.put(sign_record(ALICE, rec(seq=5)), NOW)
    for env in (sign_record(ALICE, rec(seq=4)), sign_record(ALICE, rec(seq=5, data={"other": 1}))):
        result = store.put(env, NOW)
        assert isinstance(result, RecordRejected) and isinstance(result.error, StaleRecordError)
        assert result.reason
    assert verify_record(store.get("receptionist", NOW)[0], NOW).seq == 5


def test_store_rejects_invalid_records_and_does_not_store_them() -> None:
    store = RecordStore()
    env = bytearray(sign_record(ALICE, rec()))
    env[-3] ^= 0xFF
    result = store.put(bytes(env), NOW)
    assert isinstance(result, RecordRejected) and isinstance(result.error, BadSignatureError)
    expired = store.put(sign_record(ALICE, rec(ttl=10)), NOW + 20)
    assert isinstance(expired, RecordRejected) and isinstance(expired.error, ExpiredRecordError)
    assert len(store) == 0


def test_store_keeps_every_publisher_of_an_entity_newest_first() -> None:
    store = RecordStore()
    a = sign_record(ALICE, rec(ttl=100))
    b = sign_record(BOB, rec(ttl=200))
    store.put(a, NOW)
    store.put(b, NOW)
    assert store.get("receptionist", NOW) == [b, a]
    assert store.get("receptionist", NOW, limit=1) == [b]
    assert store.get("receptionist", NOW + 150) == [b]
    assert [s.publisher for s in store.records("receptionist", NOW)] == [BOB.peer_id, ALICE.peer_id]


def test_store_expire() -> None:
    store = RecordStore()
    store.put(sign_record(ALICE, rec(ttl=100)), NOW)
    store.put(sign_record(BOB, rec("other", ttl=300)), NOW)
    assert store.expire(NOW + 100) == 1
    assert store.ids() == ["other"] and len(store) == 1
    assert store.expire(NOW + 1000) == 1
    assert len(store) == 0 and store.total_bytes == 0


def test_store_lower_seq_accepted_after_the_old_one_expired() -> None:
    store = RecordStore()
    store.put(sign_record(ALICE, rec(seq=9, ttl=10)), NOW)
    later = sign_record(ALICE, rec(seq=1, ttl=1000))
    assert isinstance(store.put(later, NOW + 11), Stored)


def test_store_bounds() -> None:
    keys = [KeyPair(bytes([i + 10]) * 32) for i in range(4)]
    per_id = RecordStore(max_per_id=2)
    per_id.put(sign_record(keys[0], rec()), NOW)
    per_id.put(sign_record(keys[1], rec()), NOW)
    full = per_id.put(sign_record(keys[2], rec()), NOW)
    assert isinstance(full, RecordRejected) and isinstance(full.error, StoreFullError)
    # an existing publisher may still update its record
    assert isinstance(per_id.put(sign_record(keys[0], rec(seq=2)), NOW), Stored)

    count = RecordStore(max_records=2)
    count.put(sign_record(keys[0], rec("a", ttl=10)), NOW)
    count.put(sign_record(keys[0], rec("b")), NOW)
    assert isinstance(count.put(sign_record(keys[0], rec("c")), NOW), RecordRejected)
    # an expired record makes room
    assert isinstance(count.put(sign_record(keys[0], rec("c", ttl=100)), NOW + 20), Stored)
    assert sorted(count.ids()) == ["b", "c"]

    env = sign_record(keys[0], rec("a"))
    by_bytes = RecordStore(max_bytes=len(env) + 10)
    assert isinstance(by_bytes.put(env, NOW), Stored)
    result = by_bytes.put(sign_record(keys[1], rec("b")), NOW)
    assert isinstance(result, RecordRejected) and isinstance(result.error, StoreFullError)
    grown = by_bytes.put(sign_record(keys[0], rec("a", seq=2, data={"much": "x" * 100})), NOW)
    assert isinstance(grown, RecordRejected) and isinstance(grown.error, StoreFullError)


def test_own_records_ignore_bounds_and_are_republished() -> None:
    store = RecordStore(max_records=1)
    store.put(sign_record(BOB, rec("someone-else")), NOW)
    mine = sign_record(ALICE, rec(str(ALICE.peer_id), ttl=3 * 3600))
    assert isinstance(store.put(mine, NOW, own=True), Stored)
    assert [s.envelope for s in store.own_records()] == [mine]
    assert store.due_for_republish(NOW + 1800, 3600) == []
    due = store.due_for_republish(NOW + 3600, 3600)
    assert [s.envelope for s in due] == [mine]
    assert store.mark_republished(str(ALICE.peer_id), ALICE.peer_id, NOW + 3600)
    assert store.due_for_republish(NOW + 3601, 3600) == []
    assert not store.mark_republished("someone-else", BOB.peer_id, NOW)
    assert store.expiring_own(NOW + 3600, 3600) == []
    assert [s.envelope for s in store.expiring_own(NOW + 2 * 3600, 3600)] == [mine]
    # expired own records are not offered for republishing
    assert store.due_for_republish(NOW + 4 * 3600, 3600) == []


def test_storing_a_record_again_as_own_marks_it() -> None:
    store = RecordStore()
    env = sign_record(ALICE, rec())
    store.put(env, NOW)
    assert store.own_records() == []
    assert isinstance(store.put(env, NOW, own=True), Unchanged)
    assert len(store.own_records()) == 1


def test_store_remove() -> None:
    store = RecordStore()
    store.put(sign_record(ALICE, rec()), NOW)
    store.put(sign_record(BOB, rec()), NOW)
    assert store.remove("receptionist", ALICE.peer_id) == 1
    assert store.remove("receptionist", ALICE.peer_id) == 0
    assert store.remove("receptionist") == 1
    assert len(store) == 0 and store.ids() == []


# ---- quotas and standing (issue 11) ----


def keys(n: int, seed: int = 0) -> list[KeyPair]:
    rng = Random(seed)
    return [KeyPair(rng.randbytes(32)) for _ in range(n)]


def test_store_a_name_full_of_strangers_is_first_come_first_served_but_history_wins() -> None:
    since: dict[Any, float] = {}
    store = RecordStore(max_per_id=3, standing=since.get)
    k = keys(6)
    for kp in k[:3]:
        assert isinstance(store.put(sign_record(kp, rec()), NOW), Stored)
    late = store.put(sign_record(k[3], rec()), NOW)
    assert isinstance(late, RecordRejected) and isinstance(late.error, records.NameFullError)
    # k[4] has been in the routing table since t=100, k[5] since t=50: both outrank strangers.
    since[k[4].peer_id], since[k[5].peer_id] = 100.0, 50.0
    assert isinstance(store.put(sign_record(k[4], rec()), NOW), Stored)
    assert isinstance(store.put(sign_record(k[5], rec()), NOW), Stored)
    # The strangers stored last gave way; the first one stays.
    held = {s.publisher for s in store.records("receptionist", NOW)}
    assert held == {k[0].peer_id, k[4].peer_id, k[5].peer_id}
    # k[3] joined the table at 75: it takes the last stranger's place, and k[0] cannot come back.
    since[k[3].peer_id] = 75.0
    assert isinstance(store.put(sign_record(k[3], rec()), NOW), Stored)
    assert isinstance(store.put(sign_record(k[0], rec()), NOW), RecordRejected)
    held = {s.publisher for s in store.records("receptionist", NOW)}
    assert held == {k[3].peer_id, k[4].peer_id, k[5].peer_id}
    # Among the known, the longer history wins: k[0], in the table since 60, displaces k[4] (100).
    since[k[0].peer_id] = 60.0
    assert isinstance(store.put(sign_record(k[0], rec()), NOW), Stored)
    held = {s.publisher for s in store.records("receptionist", NOW)}
    assert held == {k[0].peer_id, k[3].peer_id, k[5].peer_id}
    # ...and a newcomer with less history than all of them is refused.
    since[k[4].peer_id] = 100.0
    assert isinstance(store.put(sign_record(k[4], rec(seq=2)), NOW), RecordRejected)


def test_store_publisher_quota_and_separate_pools() -> None:
    k = keys(3, seed=1)
    store = RecordStore(max_per_publisher=2, max_records=3, max_peer_records=1)
    assert isinstance(store.put(sign_record(k[0], rec("a")), NOW), Stored)
    assert isinstance(store.put(sign_record(k[0], rec("b")), NOW), Stored)
    over = store.put(sign_record(k[0], rec("c")), NOW)
    assert isinstance(over, RecordRejected) and isinstance(over.error, records.PublisherQuotaError)
    assert store.held_for(k[0].peer_id) == 2
    # Updating a held record does not count twice.
    assert isinstance(store.put(sign_record(k[0], rec("a", seq=2)), NOW), Stored)
    assert isinstance(store.put(sign_record(k[1], rec("c")), NOW), Stored)
    full = store.put(sign_record(k[1], rec("d")), NOW)
    assert isinstance(full, RecordRejected) and type(full.error) is StoreFullError
    # Peer-id records have their own room.
    assert isinstance(store.put(sign_record(k[2], rec(str(k[2].peer_id))), NOW), Stored)
    second = store.put(sign_record(k[1], rec(str(k[1].peer_id))), NOW)
    assert isinstance(second, RecordRejected) and isinstance(second.error, StoreFullError)
    # Removing frees the quota.
    store.remove("a", k[0].peer_id)
    assert store.held_for(k[0].peer_id) == 1
    assert len(store) == 3 and isinstance(store.put(sign_record(k[0], rec("c")), NOW), Stored)


def test_store_pool_eviction_takes_strangers_stored_last_and_fits_the_bytes() -> None:
    since: dict[Any, float] = {}
    k = keys(6, seed=2)
    small = [sign_record(kp, rec(f"n{i}", data={})) for i, kp in enumerate(k[:4])]
    big_kp = k[4]
    since[big_kp.peer_id] = 1.0
    big = sign_record(big_kp, rec("big", data={"x": "y" * 2000}))
    assert len(big) > 3 * len(small[0])
    # Room for the four small ones, and for the big one once two of them are gone.
    store = RecordStore(max_bytes=len(big) + len(small[0]) + len(small[1]), standing=since.get)
    for env in small:
        assert isinstance(store.put(env, NOW), Stored)
    # The big one needs the room of several strangers' records: the ones stored last go.
    assert isinstance(store.put(big, NOW), Stored)
    assert [i for i in range(4) if store.get(f"n{i}", NOW)] == [0, 1]
    assert store.total_bytes <= store.max_bytes
    # A stranger cannot evict.
    stranger = store.put(sign_record(k[5], rec("z", data={"x": "y" * 2000})), NOW)
    assert isinstance(stranger, RecordRejected)


def test_store_wrong_key_and_summaries() -> None:
    store = RecordStore()
    env = sign_record(ALICE, rec(data={"big": "x" * 1000}))
    wrong = store.put(env, NOW, record_id="other")
    assert isinstance(wrong, RecordRejected) and isinstance(wrong.error, records.WrongKeyError)
    assert len(store) == 0
    held = store.put(env, NOW, record_id="receptionist")
    assert isinstance(held, Stored)
    # Others' records are held as envelope plus summary; the envelope still has everything.
    assert held.stored.record.data == {} and held.stored.record.endpoints == ()
    assert held.stored.record.seq == 1 and held.stored.publisher == ALICE.peer_id
    assert verify_record(store.get("receptionist", NOW)[0], NOW).data == {"big": "x" * 1000}
    mine = store.put(sign_record(BOB, rec("mine")), NOW, own=True)
    assert isinstance(mine, Stored) and mine.stored.record.data == {"role": "r"}


def test_store_expiry_costs_what_it_drops_and_updates_do_not_pile_up() -> None:
    store = RecordStore()
    for i in range(200):
        store.put(sign_record(ALICE, rec("x", seq=i + 1, ttl=100.0 + i)), NOW)
    assert len(store) == 1 and len(store._expiry) <= 2 * len(store) + 64
    store.put(sign_record(BOB, rec("y", ttl=50.0)), NOW)
    assert store.expire(NOW + 60) == 1 and store.ids() == ["x"]
    assert store.expire(NOW + 1000) == 1 and len(store) == 0 and store.total_bytes == 0
