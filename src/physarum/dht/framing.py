"""Reading kad messages off a stream within a size cap and the peer's memory budget.

A kad message is a uvarint length and that many protobuf bytes. Whoever reads one decides from
the length alone, before buffering the body, whether it may: :class:`MessageReader` refuses a
length over the caller's cap (:class:`MessageTooLargeError`) and reserves the length from the
peer's memory budget for as long as the message is buffered and decoded, refusing it when the
budget has no room (:class:`MemoryRefusedError`). So a peer that opens many streams and leaves a
large message unfinished on each holds at most its budget, not ``streams x cap``.

The budget is ``stream.memory``: a :class:`~physarum.overlay.resources.MemoryBudget`
(anything with ``try_reserve``/``release``), the one the host gives each peer's connections. Streams
without one (memory streams in tests, hosts that do not account) are bounded by the cap alone.

Reads are sized to what is needed: at most :data:`PREFIX_READ` bytes before the length is known,
then no more than the rest of the body, so little is read ahead of what has been reserved.

Decoding costs about 0.4 us per protobuf field, so a 4 MiB answer packed with empty fields takes
most of a second: a message over :data:`INLINE_DECODE_MAX` (64 KiB, more than any request we
accept) is decoded in a worker thread, at most :data:`DECODE_THREADS` at a time, so the event
loop keeps running (the interpreter switches threads every few milliseconds) while it is.
"""

from __future__ import annotations

from typing import Protocol

import trio

from physarum.dht.messages import Message, decode_message
from physarum.errors import IncompleteError, LimitError
from physarum.overlay import varint

#: Most bytes read while the length prefix is not known yet (a small request arrives whole).
PREFIX_READ = 512
#: Most bytes asked of the stream at once while reading a body.
BODY_READ = 65536
#: Largest message decoded on the event loop; larger ones go to a worker thread.
INLINE_DECODE_MAX = 64 * 1024
#: Worker threads decoding large messages at once (per trio run).
DECODE_THREADS = 2

_decode_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("kad_decode_limiter")


def _limiter() -> trio.CapacityLimiter:
    try:
        return _decode_limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(DECODE_THREADS)
        _decode_limiter.set(limiter)
        return limiter


class MessageTooLargeError(LimitError):
    """The length prefix announces more than the reader's cap (``size``, ``limit``)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"kad message of {size} bytes exceeds the limit of {limit}", limit=limit)
        self.size = size


class MemoryRefusedError(LimitError):
    """The peer's memory budget had no room for a message of ``size`` bytes."""

    def __init__(self, size: int) -> None:
        super().__init__(f"no memory left in the peer's budget for a kad message of {size} bytes")
        self.size = size


class Budget(Protocol):
    """What the reader uses of a :class:`~physarum.overlay.resources.MemoryBudget`."""

    def try_reserve(self, n: int) -> bool: ...

    def release(self, n: int) -> None: ...


def stream_budget(stream: object) -> Budget | None:
    """The memory budget of the peer ``stream`` is with (``stream.memory``, as a yamux stream has), or None."""
    budget = getattr(stream, "memory", None)
    if budget is None or not (hasattr(budget, "try_reserve") and hasattr(budget, "release")):
        return None
    return budget  # type: ignore[no-any-return]


class ReceiveStream(Protocol):
    """What the reader uses of a stream (any ``trio.abc.ReceiveStream`` fits)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...


class MessageReader:
    """Length-prefixed kad messages from ``stream``, one at a time, within ``budget`` when given."""

    def __init__(self, stream: ReceiveStream, *, budget: Budget | None = None) -> None:
        self.stream = stream
        self.budget = budget
        self._buf = bytearray()

    async def _fill(self, max_bytes: int) -> bool:
        data = await self.stream.receive_some(max_bytes)
        if not data:
            return False
        self._buf += data
        return True

    async def wait_message(self) -> bool:
        """Wait for the first byte of the next message: True once it is there, False when the
        stream ended cleanly first.

        Raises:
            trio.BrokenResourceError: the stream broke (reset, connection lost).
        """
        return bool(self._buf) or await self._fill(PREFIX_READ)

    async def receive(self, max_size: int) -> Message:
        """The next message, decoded, of at most ``max_size`` bytes.

        Raises:
            MessageTooLargeError: the length prefix announces more than ``max_size``.
            MemoryRefusedError: the peer's budget has no room for it.
            DecodeError: a malformed length prefix or message.
            trio.BrokenResourceError: the stream ended or broke mid-message.
        """
        while True:
            try:
                length, pos = varint.decode(self._buf)
                break
            except IncompleteError:
                if not await self._fill(PREFIX_READ):
                    raise trio.BrokenResourceError("stream ended mid-message") from None
        if length > max_size:
            raise MessageTooLargeError(length, max_size)
        budget = self.budget
        if budget is not None and not budget.try_reserve(length):
            raise MemoryRefusedError(length)
        try:
            del self._buf[:pos]
            while len(self._buf) < length:
                if not await self._fill(min(BODY_READ, length - len(self._buf))):
                    raise trio.BrokenResourceError("stream ended mid-message")
            body = bytes(self._buf[:length])
            del self._buf[:length]
            if length > INLINE_DECODE_MAX:
                return await trio.to_thread.run_sync(decode_message, body, limiter=_limiter())
            return decode_message(body)
        finally:
            if budget is not None:
                budget.release(length)


__all__ = [
    "BODY_READ",
    "DECODE_THREADS",
    "INLINE_DECODE_MAX",
    "PREFIX_READ",
    "Budget",
    "MemoryRefusedError",
    "MessageReader",
    "MessageTooLargeError",
    "ReceiveStream",
    "stream_budget",
]
