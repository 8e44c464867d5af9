"""Unsigned varints: hand-checked vectors, round trips, truncation and every way to be malformed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from physarum.errors import DecodeError, IncompleteError, PhysarumError
from physarum.overlay import varint

U64 = st.integers(min_value=0, max_value=2**64 - 1)

# (value, encoding), checked by hand against the LEB128 definition / protobuf docs.
VECTORS = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (150, b"\x96\x01"),
    (255, b"\xff\x01"),
    (300, b"\xac\x02"),
    (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"),
    (2**32 - 1, b"\xff\xff\xff\xff\x0f"),
    (2**63, b"\x80" * 9 + b"\x01"),
    (2**64 - 1, b"\xff" * 9 + b"\x01"),
]


@pytest.mark.parametrize(("value", "encoded"), VECTORS)
def test_vectors(value: int, encoded: bytes) -> None:
    assert varint.encode(value) == encoded
    assert varint.decode(encoded) == (value, len(encoded))


def test_errors_are_physarum_errors() -> None:
    assert issubclass(DecodeError, PhysarumError)
    assert issubclass(IncompleteError, PhysarumError)
    # Incomplete input is not malformed input: callers must be able to tell them apart.
    assert not issubclass(IncompleteError, DecodeError)


@given(U64)
def test_roundtrip(value: int) -> None:
    encoded = varint.encode(value)
    assert 1 <= len(encoded) <= varint.MAX_VARINT_BYTES
    assert varint.decode(encoded) == (value, len(encoded))
    # Minimal: only the last byte lacks the continuation bit, and it is non-zero unless the value is 0.
    assert all(b & 0x80 for b in encoded[:-1])
    assert not encoded[-1] & 0x80
    assert encoded[-1] != 0 or value == 0


@given(U64, st.binary(max_size=16), st.binary(max_size=16))
def test_decode_at_offset_ignores_surroundings(value: int, before: bytes, after: bytes) -> None:
    encoded = varint.encode(value)
    buf = before + encoded + after
    assert varint.decode(buf, len(before)) == (value, len(before) + len(encoded))
    assert varint.decode(bytearray(buf), len(before)) == (value, len(before) + len(encoded))
    assert varint.decode(memoryview(buf), len(before)) == (value, len(before) + len(encoded))


@given(U64)
def test_every_strict_prefix_is_incomplete(value: int) -> None:
    encoded = varint.encode(value)
    for cut in range(len(encoded)):
        with pytest.raises(IncompleteError):
            varint.decode(encoded[:cut])
        # Same at an offset, and with the cut landing exactly at the end of a larger buffer.
        with pytest.raises(IncompleteError):
            varint.decode(b"\x05\x06" + encoded[:cut], 2)


def test_decode_past_the_end_is_incomplete() -> None:
    with pytest.raises(IncompleteError):
        varint.decode(b"\x01", 1)
    with pytest.raises(IncompleteError):
        varint.decode(b"")


@given(U64)
def test_reference_implementation_agrees(value: int) -> None:
    import varint as ref  # the PyPI `varint` package, a reference implementation
    assert varint.encode(value) == ref.encode(value)
    assert ref.decode_bytes(varint.encode(value)) == value


@pytest.mark.parametrize("value", [-1, -(2**70), 2**64, 2**64 + 1, 2**100])
def test_encode_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        varint.encode(value)


@pytest.mark.parametrize(
    "encoded",
    [
        b"\x80\x00",  # 0 in two bytes
        b"\x81\x00",  # 1 in two bytes
        b"\xff\x80\x00",  # 127 in three bytes
        b"\x80\x80\x80\x00",
        b"\x80" * 9 + b"\x00",  # ten bytes, value 0
        b"\xff" * 8 + b"\xff\x00",  # ten bytes, trailing zero
    ],
)
def test_non_minimal_is_rejected(encoded: bytes) -> None:
    with pytest.raises(DecodeError):
        varint.decode(encoded)


@given(st.integers(min_value=0, max_value=2**56 - 1), st.integers(min_value=1, max_value=3))
def test_non_minimal_padding_of_any_value_is_rejected(value: int, pad: int) -> None:
    encoded = bytearray(varint.encode(value))
    encoded[-1] |= 0x80
    padded = bytes(encoded) + b"\x80" * (pad - 1) + b"\x00"  # (over 10 bytes is an error too)
    with pytest.raises(DecodeError):
        varint.decode(padded)


@pytest.mark.parametrize(
    "encoded",
    [
        b"\x80" * 10 + b"\x01",  # eleven bytes
        b"\xff" * 10 + b"\x01",
        b"\x80" * 10,  # ten continuation bytes: can never end within the limit
        b"\x80" * 20,
        b"\xff" * 9 + b"\x02",  # 2**64
        b"\xff" * 9 + b"\x7f",  # far over 64 bits
        b"\x80" * 9 + b"\x02",  # 2**64 exactly
    ],
)
def test_too_long_or_too_large_is_rejected(encoded: bytes) -> None:
    with pytest.raises(DecodeError):
        varint.decode(encoded)
    # Trailing bytes change nothing: these can never become valid.
    with pytest.raises(DecodeError):
        varint.decode(encoded + b"\x01\x02\x03")


def test_nine_continuation_bytes_still_ask_for_more() -> None:
    # 9 continuation bytes can still be completed by a 10th byte of 0x01.
    with pytest.raises(IncompleteError):
        varint.decode(b"\xff" * 9)
    assert varint.decode(b"\xff" * 9 + b"\x01") == (2**64 - 1, 10)


@given(st.binary(max_size=24), st.integers(min_value=0, max_value=30))
def test_fuzz_decode_only_raises_our_errors(data: bytes, pos: int) -> None:
    try:
        value, end = varint.decode(data, pos)
    except (DecodeError, IncompleteError):
        return
    assert 0 <= value < 2**64
    assert pos < end <= len(data)
    assert end - pos <= varint.MAX_VARINT_BYTES
    # A successful decode is exactly the canonical encoding of the value.
    assert data[pos:end] == varint.encode(value)


# ---- split_length_prefixed ----


@given(st.binary(max_size=600), st.binary(max_size=16))
def test_split_roundtrip(message: bytes, trailer: bytes) -> None:
    framed = varint.encode(len(message)) + message
    assert varint.split_length_prefixed(framed + trailer, 1000) == (message, len(framed))
    assert varint.split_length_prefixed(bytearray(framed + trailer), 1000) == (message, len(framed))


@given(st.lists(st.binary(max_size=300), max_size=6))
def test_split_consecutive_messages(messages: list[bytes]) -> None:
    buf = b"".join(varint.encode(len(m)) + m for m in messages)
    pos = 0
    out = []
    while pos < len(buf):
        message, pos = varint.split_length_prefixed(buf, 300, pos)
        assert isinstance(message, bytes)
        out.append(message)
    assert out == messages
    assert pos == len(buf)


@given(st.binary(max_size=300))
def test_split_every_truncation_is_incomplete(message: bytes) -> None:
    framed = varint.encode(len(message)) + message
    for cut in range(len(framed)):
        with pytest.raises(IncompleteError):
            varint.split_length_prefixed(framed[:cut], 1000)


def test_split_max_size() -> None:
    msg = b"x" * 100
    framed = varint.encode(len(msg)) + msg
    assert varint.split_length_prefixed(framed, 100) == (msg, len(framed))
    with pytest.raises(DecodeError):
        varint.split_length_prefixed(framed, 99)
    # The limit is enforced from the prefix alone, before the body arrives (no waiting for 4 GiB).
    with pytest.raises(DecodeError):
        varint.split_length_prefixed(varint.encode(2**32), 1 << 20)
    with pytest.raises(DecodeError):
        varint.split_length_prefixed(varint.encode(101), 100)
    assert varint.split_length_prefixed(b"\x00", 0) == (b"", 1)


def test_split_malformed_prefix() -> None:
    with pytest.raises(DecodeError):
        varint.split_length_prefixed(b"\x80\x00", 100)
    with pytest.raises(DecodeError):
        varint.split_length_prefixed(b"\x80" * 11, 100)
    with pytest.raises(IncompleteError):
        varint.split_length_prefixed(b"", 100)
    with pytest.raises(IncompleteError):
        varint.split_length_prefixed(b"\x80", 2**20)
