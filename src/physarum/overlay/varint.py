"""Unsigned LEB128 varints, as multiformats and protobuf use them.

Pure functions over bytes. Decoders raise :class:`IncompleteError` when the buffer ends inside a
varint (the caller should read more) and :class:`DecodeError` when the bytes can never be a valid one.
"""

from __future__ import annotations

from physarum.errors import DecodeError, EncodeError, IncompleteError

#: multiformats caps unsigned varints at 9 bytes (63 bits); protobuf at 10 (64 bits).
MAX_VARINT_BYTES = 10


def encode(value: int) -> bytes:
    """Encode a non-negative integer below 2**64.

    Raises:
        EncodeError: ``value`` is negative or does not fit in 64 bits.
    """
    if value < 0 or value >= 1 << 64:
        raise EncodeError(f"varint out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Decode one varint at ``buf[pos:]``; return ``(value, position after it)``.

    Raises:
        IncompleteError: the buffer ends before the varint does.
        DecodeError: more than 10 bytes, a value over 64 bits, or a non-minimal encoding.
    """
    result = 0
    shift = 0
    end = len(buf)
    start = pos
    while True:
        if pos >= end:
            raise IncompleteError("varint truncated")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and pos - start > 1:
                raise DecodeError("non-minimal varint")
            if result >= 1 << 64:
                raise DecodeError("varint over 64 bits")
            return result, pos
        shift += 7
        if pos - start >= MAX_VARINT_BYTES:
            raise DecodeError("varint longer than 10 bytes")


def split_length_prefixed(buf: bytes | bytearray, max_size: int, pos: int = 0) -> tuple[bytes, int]:
    """Split one uvarint-length-prefixed message off ``buf[pos:]``: ``(message, next position)``.

    Raises:
        IncompleteError: more bytes are needed.
        DecodeError: the length is malformed or over ``max_size``.
    """
    length, body = decode(buf, pos)
    if length > max_size:
        raise DecodeError(f"message of {length} bytes exceeds the limit of {max_size}")
    if len(buf) - body < length:
        raise IncompleteError("message truncated")
    return bytes(buf[body : body + length]), body + length
