"""A small protobuf (proto2/proto3 wire format) codec for libp2p's few message types.

Messages are plain dicts ``{field number: [values]}``: varint fields hold ints, length-delimited
fields hold bytes. Callers know their schema, so a schema-free codec keeps the import cost and the
dependency list small while still skipping unknown fields the way protobuf requires.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from physarum.errors import DecodeError, EncodeError, IncompleteError
from physarum.overlay import varint

VARINT = 0
I64 = 1
LEN = 2
I32 = 5

Fields = dict[int, list[int | bytes]]


def encode(fields: Iterable[tuple[int, int | bytes | str | None]]) -> bytes:
    """Encode ``(field number, value)`` pairs in order; ``None`` values are left out.

    ints become varint fields, bytes/str length-delimited ones (str as UTF-8). bool is an int.

    Raises:
        EncodeError: a negative int or a field number out of range.
    """
    out = bytearray()
    for number, value in fields:
        if value is None:
            continue
        if not 0 < number < 1 << 29:
            raise EncodeError(f"bad field number {number}")
        if isinstance(value, int):
            out += varint.encode(number << 3 | VARINT)
            out += varint.encode(int(value))
        else:
            data = value.encode() if isinstance(value, str) else value
            out += varint.encode(number << 3 | LEN)
            out += varint.encode(len(data))
            out += data
    return bytes(out)


def decode(data: bytes | bytearray | memoryview, caps: Mapping[int, int] | None = None) -> Fields:
    """Decode a whole message into ``{field number: [values]}``; fixed-width fields are skipped.

    ``caps``: keep at most ``caps[n]`` values of the length-delimited field ``n``; the rest are
    checked (wire type, bounds) but never copied, so a peer's oversized list costs one pass.
    One-byte varints (nearly every tag and length) are read inline: this runs once per field of
    whatever a peer sent.

    Raises:
        DecodeError: truncated or malformed input, a field number outside 1..2**29-1, a group
            wire type, or a capped field that is not length-delimited.
    """
    fields: Fields = {}
    pos = 0
    end = len(data)
    read = varint.decode
    try:
        while pos < end:
            key = data[pos]
            if key < 0x80:
                pos += 1
            else:
                key, pos = read(data, pos)
            number, wire = key >> 3, key & 7
            if not 0 < number < 1 << 29:
                # What encode() refuses to write, and protobuf's own decoders refuse to read.
                raise DecodeError(f"protobuf field number {number} out of range")
            cap = None if caps is None else caps.get(number)
            if cap is not None and wire != LEN:
                raise DecodeError(f"field {number} should be length-delimited")
            value: int | bytes
            if wire == LEN:
                if pos < end and data[pos] < 0x80:
                    length = data[pos]
                    pos += 1
                else:
                    length, pos = read(data, pos)
                if pos + length > end:
                    raise DecodeError("protobuf length-delimited field runs past the end")
                start, pos = pos, pos + length
                if cap is not None:
                    held = fields.get(number)
                    if held is not None and len(held) >= cap:
                        continue
                value = bytes(data[start:pos])
            elif wire == VARINT:
                value, pos = read(data, pos)
            elif wire in (I64, I32):
                pos += 8 if wire == I64 else 4
                if pos > end:
                    raise DecodeError("protobuf fixed-width field runs past the end")
                continue
            else:
                raise DecodeError(f"unsupported protobuf wire type {wire}")
            fields.setdefault(number, []).append(value)
    except IncompleteError as e:
        raise DecodeError("protobuf truncated inside a varint") from e
    return fields


def get_bytes(fields: Fields, number: int, default: bytes | None = None) -> bytes | None:
    """The last bytes value of a field (protobuf's rule for repeated singular fields)."""
    values = fields.get(number)
    if not values:
        return default
    value = values[-1]
    if not isinstance(value, bytes):
        raise DecodeError(f"field {number} should be length-delimited")
    return value


def get_int(fields: Fields, number: int, default: int | None = None) -> int | None:
    """The last varint value of a field."""
    values = fields.get(number)
    if not values:
        return default
    value = values[-1]
    if not isinstance(value, int):
        raise DecodeError(f"field {number} should be a varint")
    return value


def get_repeated_bytes(fields: Fields, number: int) -> list[bytes]:
    """All bytes values of a repeated field."""
    out = []
    for value in fields.get(number, ()):
        if not isinstance(value, bytes):
            raise DecodeError(f"field {number} should be length-delimited")
        out.append(value)
    return out
