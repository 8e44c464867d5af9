"""multistream-select 1.0.0: agree on a protocol for a connection or stream.

Each message is a uvarint length (counting the trailing newline), the text, and ``\\n``.
The codec functions are pure; :func:`select` (the dialer's side) and :func:`handle` (the
listener's side) run the exchange over a :class:`BufferedStream`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import trio

from physarum.errors import (
    ConfigError,
    DecodeError,
    EncodeError,
    IncompleteError,
    NegotiationError,
    NotMultistreamError,
)
from physarum.overlay import varint
from physarum.overlay.streamio import BufferedStream

PROTOCOL_ID = "/multistream/1.0.0"
NA = "na"
LS = "ls"
#: The spec bounds a message at 64 KiB; protocol ids are tiny, `ls` answers may be longer.
MAX_MESSAGE = 65535


def encode(text: str) -> bytes:
    """Frame one message.

    Raises:
        EncodeError: the text contains a newline or is too long.
    """
    if "\n" in text:
        raise EncodeError("multistream messages cannot contain a newline")
    body = text.encode() + b"\n"
    if len(body) > MAX_MESSAGE:
        raise EncodeError("multistream message too long")
    return varint.encode(len(body)) + body


def decode(buf: bytes | bytearray, pos: int = 0) -> tuple[str, int]:
    """Parse one message at ``buf[pos:]``: ``(text, next position)``.

    Raises:
        IncompleteError: more bytes are needed.
        DecodeError: bad length, missing newline, or not UTF-8.
    """
    body, end = varint.split_length_prefixed(buf, MAX_MESSAGE, pos)
    return _text(body), end


def _text(body: bytes) -> str:
    if not body.endswith(b"\n"):
        raise DecodeError("multistream message does not end in a newline")
    try:
        return body[:-1].decode()
    except UnicodeDecodeError:
        raise DecodeError("multistream message is not UTF-8") from None


async def _read(stream: BufferedStream) -> str:
    return _text(await stream.receive_length_prefixed(MAX_MESSAGE))


_HEADER = encode(PROTOCOL_ID)


async def _read_header(stream: BufferedStream) -> None:
    # The header has a fixed encoding, so compare bytes instead of parsing a length: garbage
    # (a peer with another pre-shared key) fails after 20 bytes instead of waiting for a
    # length that random bytes announce and never deliver.
    header = await stream.receive_exactly(len(_HEADER))
    if header != _HEADER:
        raise NotMultistreamError(f"peer does not speak {PROTOCOL_ID} (got {header[:20].hex()})")


async def select(stream: BufferedStream, protocols: Iterable[str]) -> str:
    """Propose ``protocols`` in order; return the first the listener accepts.

    The header and the first proposal go out in one write, so a successful negotiation costs
    the dialer one round trip.

    Raises:
        NegotiationError: the listener accepts none of them or does not speak multistream.
        DecodeError: the listener sent garbage (with a PSK, typically a different key).
        trio.BrokenResourceError: the stream broke.
    """
    candidates = list(protocols)
    if not candidates:
        raise ConfigError("no protocols to propose")
    await stream.send_all(encode(PROTOCOL_ID) + encode(candidates[0]))
    await _read_header(stream)
    for i, proto in enumerate(candidates):
        if i:
            await stream.send_all(encode(proto))
        answer = await _read(stream)
        if answer == proto:
            return proto
        if answer != NA:
            raise NegotiationError(f"listener answered {answer[:64]!r} to {proto!r}")
    raise NegotiationError(f"listener supports none of {candidates}")


async def handle(
    stream: BufferedStream,
    supports: Callable[[str], bool],
    listing: Callable[[], list[str]],
    *,
    greeted: bool = False,
    defer: Callable[[bytes], None] | None = None,
) -> str:
    """Answer proposals until one is supported; return it. ``greeted``: our header already went out.
    ``defer``: takes the accepting answer to send later (a yamux stream's ``defer``: with the
    protocol's first write, or before it first waits to read) instead of sending it now, when the
    dialer already sent data behind its proposal (it did not wait for the answer).

    Raises:
        NegotiationError: the dialer does not speak multistream or gave up.
        DecodeError: garbage from the dialer.
        trio.BrokenResourceError: the stream broke (also when the dialer gives up and closes).
    """
    # Our header goes out at once unless the dialer's header and proposal are already here (a
    # dialer that proposes without waiting, as every libp2p does): then it leaves with the answer,
    # one write instead of two.
    # Some dialers (py-libp2p) wait for our header before they propose: it goes out whenever we
    # would otherwise wait for the dialer with nothing of it at hand.
    header = b"" if greeted else encode(PROTOCOL_ID)
    if header and not stream.has_buffered():
        await stream.send_all(header)
        header = b""
    await _read_header(stream)
    while True:
        if header and not stream.has_buffered():
            await stream.send_all(header)
            header = b""
        proposal = await _read(stream)
        if proposal == LS:
            body = b"".join(encode(p) for p in listing()) + b"\n"
            answer = varint.encode(len(body)) + body
        elif supports(proposal):
            # Deferred only when the dialer sent more right behind its proposal (a lazy dialer,
            # which does not wait for the answer); a dialer with nothing more here may be waiting
            # for it, and the protocol's handler need not send or read soon (one that stalls).
            if defer is not None and stream.has_buffered():
                defer(header + encode(proposal))
            else:
                await stream.send_all(header + encode(proposal))
            return proposal
        else:
            answer = encode(NA)
        await stream.send_all(header + answer)
        header = b""


@runtime_checkable
class Unreading(Protocol):
    """A stream that can take back bytes read ahead (a yamux stream)."""

    def unread(self, data: bytes) -> None: ...


class LazyStream(trio.abc.HalfCloseableStream):
    """A stream whose single protocol is proposed but not yet confirmed: multistream-select's lazy
    dialer (go-libp2p's for one protocol). The header and proposal go out with the first data
    sent, and the first receive reads and checks the listener's answer before any data, so a
    request-response protocol costs no round trip for negotiation.

    Receiving raises NegotiationError when the listener refused the protocol (it then reads our
    data as garbage proposals and closes), DecodeError when it sent garbage.
    """

    def __init__(self, transport_stream: trio.abc.HalfCloseableStream, protocol: str) -> None:
        self.transport_stream = transport_stream
        self.protocol = protocol
        self._proposal: bytes | None = encode(PROTOCOL_ID) + encode(protocol)
        self._confirmed = False
        # A receive may have to send the proposal while a task sends: only until it is out.
        self._proposing = trio.Lock()

    async def _flush_proposal(self, data: bytes | bytearray | memoryview = b"") -> None:
        # acquire_nowait when free: an await here would let the yamux session flush the stream's
        # SYN on its own before the proposal, two frames instead of one.
        if self._proposing.locked():
            await self._proposing.acquire()
        else:
            self._proposing.acquire_nowait()
        try:
            proposal = self._proposal
            if proposal is not None:
                await self.transport_stream.send_all(proposal + bytes(data))
                self._proposal = None
                return
        finally:
            self._proposing.release()
        if data:
            await self.transport_stream.send_all(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._proposal is not None or self._proposing.locked():
            await self._flush_proposal(data)
        else:
            await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if self._proposal is not None or self._proposing.locked():
            await self._flush_proposal()
        await self.transport_stream.send_eof()

    async def send_final(self, data: bytes | bytearray | memoryview) -> None:
        """``send_all(data)`` then ``send_eof()``, in one frame when the transport stream can
        (a yamux stream's ``send_final``), the proposal too if it is still here."""
        send_final = getattr(self.transport_stream, "send_final", None)
        if send_final is None or self._proposing.locked():
            await self.send_all(data)
            await self.send_eof()
            return
        proposal, self._proposal = self._proposal, None
        await send_final((proposal or b"") + bytes(data))

    async def _confirm(self) -> None:
        if self._proposal is not None:
            await self._flush_proposal()
        buffered = BufferedStream(self.transport_stream)
        await _read_header(buffered)
        answer = await _read(buffered)
        if answer != self.protocol:
            raise NegotiationError(f"listener answered {answer[:64]!r} to {self.protocol!r}")
        rest = buffered.take_buffer()
        if rest:
            if not isinstance(self.transport_stream, Unreading):
                raise ConfigError("a lazy stream needs a transport stream with unread()")
            self.transport_stream.unread(rest)
        self._confirmed = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._confirmed:
            await self._confirm()
        return await self.transport_stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


__all__ = [
    "LS",
    "MAX_MESSAGE",
    "NA",
    "PROTOCOL_ID",
    "IncompleteError",
    "LazyStream",
    "decode",
    "encode",
    "handle",
    "select",
]
