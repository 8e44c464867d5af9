"""The schema-free protobuf codec: hand-verified bytes, round trips, skipping, truncation and fuzzing."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from physarum.errors import DecodeError
from physarum.overlay import pb, varint

FIELD_NUMBERS = st.integers(min_value=1, max_value=2**29 - 1)
VALUES = st.one_of(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=200))
FIELDS = st.lists(st.tuples(FIELD_NUMBERS, VALUES), max_size=12)


def _expected(pairs: Sequence[tuple[int, int | bytes | str | None]]) -> pb.Fields:
    out: pb.Fields = {}
    for number, value in pairs:
        if value is None:
            continue
        if isinstance(value, str):
            value = value.encode()
        out.setdefault(number, []).append(int(value) if isinstance(value, int) else value)
    return out


# ---- hand-verified vectors (protobuf encoding guide) ----


def test_vector_varint_150() -> None:
    # The protobuf docs' first example: message Test1 { int32 a = 1; } with a = 150.
    assert pb.encode([(1, 150)]) == bytes.fromhex("089601")
    assert pb.decode(bytes.fromhex("089601")) == {1: [150]}


def test_vector_string_testing() -> None:
    # message Test2 { string b = 2; } with b = "testing".
    assert pb.encode([(2, "testing")]) == bytes.fromhex("120774657374696e67")
    assert pb.decode(bytes.fromhex("120774657374696e67")) == {2: [b"testing"]}


def test_vector_nested_message() -> None:
    # message Test3 { Test1 c = 3; } with c.a = 150.
    assert pb.encode([(3, pb.encode([(1, 150)]))]) == bytes.fromhex("1a03089601")
    outer = pb.decode(bytes.fromhex("1a03089601"))
    assert outer == {3: [b"\x08\x96\x01"]}
    assert pb.decode(pb.get_bytes(outer, 3) or b"") == {1: [150]}


def test_vector_libp2p_public_key() -> None:
    # PublicKey{Type=Ed25519(1), Data=32 bytes}: the 36 bytes inside every 12D3KooW... peer id.
    key = bytes(range(32))
    encoded = pb.encode([(1, 1), (2, key)])
    assert encoded == b"\x08\x01\x12\x20" + key


def test_vector_large_field_number_and_bool() -> None:
    # Field 16 needs a two-byte key: (16 << 3 | 0) = 128 = 80 01.
    assert pb.encode([(16, 1)]) == b"\x80\x01\x01"
    assert pb.decode(b"\x80\x01\x01") == {16: [1]}
    # Largest field number 2**29 - 1 with wire type 2: key 0xFFFFFFFA as a varint.
    assert pb.encode([(2**29 - 1, b"")]) == b"\xfa\xff\xff\xff\x0f\x00"
    # bool is an int
    assert pb.encode([(1, True), (2, False)]) == b"\x08\x01\x10\x00"


def test_vector_uint64_max_and_zero_values() -> None:
    assert pb.encode([(1, 2**64 - 1)]) == b"\x08" + b"\xff" * 9 + b"\x01"
    assert pb.decode(b"\x08" + b"\xff" * 9 + b"\x01") == {1: [2**64 - 1]}
    # Explicit zero / empty values are encoded (only None is skipped).
    assert pb.encode([(1, 0), (2, b""), (3, "")]) == b"\x08\x00\x12\x00\x1a\x00"


# ---- round trips ----


@given(FIELDS)
def test_roundtrip(pairs: list[tuple[int, int | bytes]]) -> None:
    encoded = pb.encode(pairs)
    assert pb.decode(encoded) == _expected(list(pairs))
    assert pb.decode(bytearray(encoded)) == _expected(list(pairs))
    assert pb.decode(memoryview(encoded)) == _expected(list(pairs))


@given(
    st.lists(st.tuples(st.integers(1, 20), st.one_of(st.none(), st.text(max_size=30), VALUES)), max_size=12)
)
def test_roundtrip_str_and_none(pairs: list[tuple[int, int | bytes | str | None]]) -> None:
    encoded = pb.encode(pairs)
    assert pb.decode(encoded) == _expected(pairs)
    # None contributes nothing at all.
    assert encoded == pb.encode([p for p in pairs if p[1] is not None])


def test_none_and_empty() -> None:
    assert pb.encode([(1, None)]) == b""
    assert pb.encode([]) == b""
    assert pb.decode(b"") == {}


def test_repeated_fields_keep_order_and_getters() -> None:
    encoded = pb.encode([(3, b"a"), (1, 5), (3, b"b"), (1, 7), (3, "c")])
    fields = pb.decode(encoded)
    assert fields == {3: [b"a", b"b", b"c"], 1: [5, 7]}
    assert pb.get_repeated_bytes(fields, 3) == [b"a", b"b", b"c"]
    assert pb.get_repeated_bytes(fields, 9) == []
    # Singular getters take the last value, as protobuf does.
    assert pb.get_bytes(fields, 3) == b"c"
    assert pb.get_int(fields, 1) == 7
    assert pb.get_bytes(fields, 9) is None
    assert pb.get_bytes(fields, 9, b"dflt") == b"dflt"
    assert pb.get_int(fields, 9) is None
    assert pb.get_int(fields, 9, 42) == 42


def test_getters_reject_wrong_wire_type() -> None:
    fields = pb.decode(pb.encode([(1, 5), (2, b"x")]))
    with pytest.raises(DecodeError):
        pb.get_bytes(fields, 1)
    with pytest.raises(DecodeError):
        pb.get_int(fields, 2)
    with pytest.raises(DecodeError):
        pb.get_repeated_bytes(fields, 1)


@pytest.mark.parametrize("number", [0, -1, 2**29, 2**40])
def test_encode_bad_field_number(number: int) -> None:
    with pytest.raises(ValueError):
        pb.encode([(number, 1)])
    with pytest.raises(ValueError):
        pb.encode([(number, b"x")])


@pytest.mark.parametrize("value", [-1, 2**64])
def test_encode_int_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        pb.encode([(1, value)])


# ---- skipping ----


def test_fixed_width_fields_are_skipped() -> None:
    i64 = varint.encode(5 << 3 | pb.I64) + bytes(range(8))
    i32 = varint.encode(6 << 3 | pb.I32) + b"\xff\xfe\xfd\xfc"
    # A fixed64 whose payload looks like a varint key and a fixed32 that looks like a LEN field.
    data = pb.encode([(1, 150)]) + i64 + pb.encode([(2, b"keep")]) + i32 + pb.encode([(1, 3)])
    assert pb.decode(data) == {1: [150, 3], 2: [b"keep"]}
    # double 1.0 as field 1 (protobuf docs: 09 00 00 00 00 00 00 f0 3f), then float 1.0 as field 2.
    assert pb.decode(bytes.fromhex("09000000000000f03f") + bytes.fromhex("150000803f")) == {}


@given(FIELDS, FIELDS, st.lists(st.tuples(st.integers(100, 2**29 - 1), VALUES), max_size=6))
def test_unknown_fields_do_not_disturb_known_ones(
    before: list[tuple[int, int | bytes]],
    after: list[tuple[int, int | bytes]],
    unknown: list[tuple[int, int | bytes]],
) -> None:
    # A reader that knows only some fields still gets them exactly, whatever surrounds them.
    known = [(n % 99 + 1, v) for n, v in before + after]
    data = pb.encode(unknown) + pb.encode(known) + pb.encode(unknown)
    fields = pb.decode(data)
    for number, values in _expected(known).items():
        assert fields[number] == values


@pytest.mark.parametrize("wire", [3, 4, 6, 7])
def test_unsupported_wire_types(wire: int) -> None:
    # 3/4 are the deprecated groups, 6/7 do not exist.
    with pytest.raises(DecodeError):
        pb.decode(varint.encode(1 << 3 | wire) + b"\x00" * 16)


def test_field_number_zero_is_rejected() -> None:
    with pytest.raises(DecodeError):
        pb.decode(b"\x00\x01")
    with pytest.raises(DecodeError):
        pb.decode(b"\x02\x00")


def test_malformed_varints_inside_messages() -> None:
    with pytest.raises(DecodeError):
        pb.decode(b"\x08" + b"\x80" * 11)  # value longer than 10 bytes
    with pytest.raises(DecodeError):
        pb.decode(b"\x08" + b"\xff" * 9 + b"\x02")  # value over 64 bits
    with pytest.raises(DecodeError):
        pb.decode(b"\x12" + b"\xff" * 9 + b"\x01")  # length of 2**64 - 1
    with pytest.raises(DecodeError):
        pb.decode(b"\x12\x05abc")  # length runs past the end


# ---- truncation ----


def _boundaries(pairs: list[tuple[int, int | bytes]]) -> dict[int, pb.Fields]:
    """Cut position -> expected decoding, for the cuts that fall between two fields."""
    out: dict[int, pb.Fields] = {0: {}}
    pos = 0
    for i, pair in enumerate(pairs):
        pos += len(pb.encode([pair]))
        out[pos] = _expected(pairs[: i + 1])
    return out


@given(FIELDS)
def test_every_truncation_is_a_decode_error_or_a_field_prefix(pairs: list[tuple[int, int | bytes]]) -> None:
    encoded = pb.encode(pairs)
    boundaries = _boundaries(pairs)
    for cut in range(len(encoded)):
        if cut in boundaries:
            # A cut between fields is itself a valid (shorter) message.
            assert pb.decode(encoded[:cut]) == boundaries[cut]
        else:
            with pytest.raises(DecodeError):
                pb.decode(encoded[:cut])


@given(FIELD_NUMBERS, VALUES)
def test_every_truncation_of_one_field_is_a_decode_error(number: int, value: int | bytes) -> None:
    encoded = pb.encode([(number, value)])
    assert pb.decode(encoded[:0]) == {}
    for cut in range(1, len(encoded)):
        with pytest.raises(DecodeError):
            pb.decode(encoded[:cut])


def test_truncated_fixed_width_fields() -> None:
    for wire, width in ((pb.I64, 8), (pb.I32, 4)):
        field = varint.encode(1 << 3 | wire) + b"\x01" * width
        assert pb.decode(field) == {}
        for cut in range(1, len(field)):
            with pytest.raises(DecodeError):
                pb.decode(field[:cut])


# ---- fuzzing ----


@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        fields = pb.decode(data)
    except DecodeError:
        return
    assert isinstance(fields, dict)
    for number, values in fields.items():
        assert number >= 1
        assert values
        for value in values:
            assert isinstance(value, int | bytes)
            if isinstance(value, int):
                assert 0 <= value < 2**64
            else:
                assert len(value) <= len(data)


@given(FIELDS, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_fuzz_mutated_valid_messages(pairs: list[tuple[int, int | bytes]], where: int, byte: int) -> None:
    encoded = bytearray(pb.encode(pairs))
    if not encoded:
        return
    encoded[where % len(encoded)] = byte
    try:
        fields = pb.decode(bytes(encoded))
    except DecodeError:
        return
    assert isinstance(fields, dict)


def test_field_number_past_protobuf_range_is_refused() -> None:
    # Found by tests/fuzz/fuzz_pb.py: a key varint may carry a field number of 2**29 or more, which
    # encode() refuses and protobuf's decoders reject; decoding it made a message that could not be
    # re-encoded.
    assert pb.decode(b"\xfa\xff\xff\xff\x0f\x00") == {2**29 - 1: [b""]}
    with pytest.raises(DecodeError):
        pb.decode(varint.encode(2**29 << 3 | pb.LEN) + b"\x00")
    with pytest.raises(DecodeError):
        pb.decode(bytes.fromhex("b89e9ec216bfbfbf0a"))
