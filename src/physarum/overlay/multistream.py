"""multistream-select 1.0.0: agree on a protocol for a connection or stream.

Each message is a uvarint length (counting the trailing newline), the text, and ``\\n``.
The codec functions are pure; :func:`select` (the dialer's side) and :func:`handle` (the
listener's side) run the exchange over a :class:`BufferedStream`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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
) -> str:
    """Answer proposals until one is supported; return it. ``greeted``: our header already went out.

    Raises:
        NegotiationError: the dialer does not speak multistream or gave up.
        DecodeError: garbage from the dialer.
        trio.BrokenResourceError: the stream broke (also when the dialer gives up and closes).
    """
    if not greeted:
        await stream.send_all(encode(PROTOCOL_ID))
    await _read_header(stream)
    while True:
        proposal = await _read(stream)
        if proposal == LS:
            body = b"".join(encode(p) for p in listing()) + b"\n"
            await stream.send_all(varint.encode(len(body)) + body)
        elif supports(proposal):
            await stream.send_all(encode(proposal))
            return proposal
        else:
            await stream.send_all(encode(NA))


__all__ = ["LS", "MAX_MESSAGE", "NA", "PROTOCOL_ID", "IncompleteError", "decode", "encode", "handle", "select"]
