"""A read-ahead buffer in front of a trio stream, for codecs that need whole messages.

Handshake layers (multistream, Noise) read a few framed messages and then hand the stream on; any
bytes read past their last message must reach the next layer, so the buffer *is* the stream the
next layer wraps. Once the buffer is drained, calls go straight through to the transport.
"""

from __future__ import annotations

import json
import operator
from typing import Any

import trio

from physarum.errors import ConfigError, DecodeError, IncompleteError
from physarum.overlay import varint

_READ_SIZE = 65536


def check_receive(receiving: bool, max_bytes: int | None) -> int | None:
    """What a ``receive_some`` checks before it starts, in trio's order: that no other task is
    ``receiving`` on the stream, then ``max_bytes`` (returned as an ``int``, or None).

    One call serves both checks, so a stream's hot receive path pays a single function call.

    Raises:
        trio.BusyResourceError: ``receiving``: another task is inside ``receive_some``.
        TypeError: ``max_bytes`` is not an integer.
        ConfigError: ``max_bytes`` is below 1.
    """
    if receiving:
        raise trio.BusyResourceError("another task is receiving on this stream")
    if max_bytes is None:
        return None
    max_bytes = operator.index(max_bytes)
    if max_bytes < 1:
        raise ConfigError("max_bytes must be >= 1")
    return max_bytes


def check_max_bytes(max_bytes: int | None) -> int | None:
    """``receive_some``'s argument checked as trio streams do (:func:`check_receive` without the
    busy check).

    Raises:
        TypeError: not an integer.
        ConfigError: below 1.
    """
    return check_receive(False, max_bytes)


class StreamEnded(trio.BrokenResourceError):
    """The stream ended (the peer closed its side) before the bytes a read needed: a
    BrokenResourceError, so callers that only care that it broke need not know it, but told apart
    from a reset or a broken connection by those to whom an end between messages is a clean end."""


class BufferedStream(trio.abc.HalfCloseableStream):
    """``transport_stream`` with a read-ahead buffer and exact-size reads. ``received`` counts the
    bytes that came in (``initial`` included): 0 after a failure means the peer never sent any."""

    def __init__(self, transport_stream: trio.abc.Stream, initial: bytes = b"") -> None:
        self.transport_stream = transport_stream
        self._buf = bytearray(initial)
        self._closed = False
        self.received = len(initial)

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")

    async def _fill(self) -> None:
        data = await self.transport_stream.receive_some(_READ_SIZE)
        if not data:
            raise StreamEnded("peer closed the connection mid-message")
        self.received += len(data)
        self._buf += data

    async def receive_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes.

        Raises:
            trio.BrokenResourceError: the stream ended first.
        """
        self._check_open()
        while len(self._buf) < n:
            await self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def receive_length_prefixed(self, max_size: int) -> bytes:
        """One uvarint-length-prefixed message of at most ``max_size`` bytes.

        Raises:
            DecodeError: a malformed or over-long length prefix.
            trio.BrokenResourceError: the stream ended first.
        """
        self._check_open()
        while True:
            try:
                length, pos = varint.decode(self._buf)
            except IncompleteError:
                if len(self._buf) >= varint.MAX_VARINT_BYTES:
                    raise DecodeError("length prefix longer than a varint") from None
                await self._fill()
                continue
            break
        if length > max_size:
            raise DecodeError(f"message of {length} bytes exceeds the limit of {max_size}")
        del self._buf[:pos]
        return await self.receive_exactly(length)

    def has_buffered(self) -> bool:
        """Whether bytes are here to read without waiting (read ahead, or in a transport stream
        that says so through a ``buffered`` attribute, as a yamux stream does)."""
        return bool(self._buf) or bool(getattr(self.transport_stream, "buffered", 0))

    def take_buffer(self) -> bytes:
        """Remove and return whatever has been read ahead."""
        out = bytes(self._buf)
        self._buf.clear()
        return out

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._buf:
            # Serve read-ahead bytes under the same rules as the transport: valid max_bytes,
            # ClosedResourceError once closed, and always a checkpoint.
            max_bytes = check_max_bytes(max_bytes)
            self._check_open()
            await trio.lowlevel.checkpoint()
            if self._buf:
                n = len(self._buf) if max_bytes is None else min(max_bytes, len(self._buf))
                out = bytes(self._buf[:n])
                del self._buf[:n]
                return out
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            await self.transport_stream.send_eof()
        else:
            raise trio.ClosedResourceError("transport stream cannot half-close")

    async def aclose(self) -> None:
        self._closed = True
        await self.transport_stream.aclose()


# -- uvarint-length-prefixed JSON objects: the framing of physarum's own protocols --


def json_frame(obj: dict[str, Any]) -> bytes:
    """``obj`` as one message: its compact JSON's length as a uvarint, then the JSON."""
    data = json.dumps(obj, separators=(",", ":")).encode()
    return varint.encode(len(data)) + data


async def read_json(stream: BufferedStream, max_size: int) -> dict[str, Any] | None:
    """The next :func:`json_frame` message on ``stream``, None at a clean end of the stream.

    Raises:
        DecodeError: larger than ``max_size``, cut short, or not a JSON object; or one of
            :data:`~physarum.errors.PEER_FAILURES`.
    """
    # The length prefix is read a byte at a time so that an end of stream after it (a message cut
    # short, even when its prefix was already read ahead) is told apart from one between messages.
    prefix = b""
    try:
        while True:
            prefix += await stream.receive_exactly(1)
            try:
                length = varint.decode(prefix)[0]
                break
            except IncompleteError:
                continue
        if length > max_size:
            raise DecodeError(f"message of {length} bytes exceeds the limit of {max_size}")
        data = await stream.receive_exactly(length)
    except StreamEnded:
        if prefix:
            raise DecodeError("message cut short") from None
        return None
    # Any other BrokenResourceError (a reset stream, a broken connection) is no end of the messages:
    # it goes to the caller, which must not take a refused or broken exchange for a finished one.
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than the parser goes
        raise DecodeError(f"message is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DecodeError("message is not a JSON object")
    return obj
