"""The exception tree: everything physarum raises on purpose is a PhysarumError.

Errors carry attributes (peer id, reason) so callers never match on message strings.
Failures of a lower layer surface as ``trio.BrokenResourceError`` raised ``from`` the cause.
"""

from __future__ import annotations

from collections.abc import Iterator


class PhysarumError(Exception):
    """Root of physarum's exceptions."""


class DecodeError(PhysarumError, ValueError):
    """Bytes that do not decode: a malformed varint, protobuf, frame or message.

    ``reason`` says what was wrong, in words fit for a log line.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IncompleteError(PhysarumError):
    """A decoder needs more bytes than it was given (not an error in the data)."""


class ProtocolError(PhysarumError):
    """A peer broke a protocol's rules; the connection or stream it came on is closed."""

    def __init__(self, reason: str, *, peer_id: object | None = None) -> None:
        super().__init__(reason if peer_id is None else f"{reason} (peer {peer_id})")
        self.reason = reason
        self.peer_id = peer_id


class NegotiationError(ProtocolError):
    """multistream-select found no protocol both sides speak."""


class NotMultistreamError(NegotiationError):
    """The first bytes were not the multistream-select header: with a pre-shared key, the usual
    sign that the peer uses another key or none."""


class HandshakeError(ProtocolError):
    """The secure-channel handshake failed (bad signature, wrong peer, garbage)."""


class PeerIdMismatchError(HandshakeError):
    """We dialed ``/p2p/<expected>`` and the remote proved to be someone else."""

    def __init__(self, expected: object, actual: object) -> None:
        super().__init__(f"dialed peer {expected} but the remote is {actual}", peer_id=actual)
        self.expected = expected
        self.actual = actual


class LimitError(PhysarumError):
    """A configured limit (connections, streams, message size) was reached."""

    def __init__(self, reason: str, *, limit: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit


class DialError(PhysarumError):
    """Every address of a peer failed; ``errors`` maps address text to its exception."""

    def __init__(self, peer_id: object | None, errors: dict[str, BaseException]) -> None:
        detail = "; ".join(f"{a}: {e!r}" for a, e in errors.items()) or "no addresses"
        super().__init__(f"cannot reach {peer_id or 'peer'}: {detail}")
        self.peer_id = peer_id
        self.errors = errors


class RefusedError(PhysarumError):
    """The peer closed the connection before sending a single byte: it is at capacity or limiting
    connections from us (its resource manager refuses before any crypto), or it is not a libp2p node.
    Not a sign of another pre-shared key: a peer with another key sends its pnet nonce first.

    Found in a :class:`DialError`'s ``errors``; ``address`` is what was dialed, when known.
    """

    def __init__(self, reason: str, *, address: str | None = None) -> None:
        super().__init__(reason if address is None else f"{reason} ({address})")
        self.reason = reason
        self.address = address


class NotRunningError(PhysarumError, RuntimeError):
    """The object (a host) must be running for this call: start it first.

    Also a ``RuntimeError``, so code written before this class existed still catches it.
    """


class SelfDialError(PhysarumError):
    """A dial that would reach ourselves: our own peer id, or an address where we answered.

    Found in a :class:`DialError`'s ``errors``; ``address`` is what was dialed, when known.
    """

    def __init__(self, reason: str, *, address: str | None = None) -> None:
        super().__init__(reason if address is None else f"{reason} ({address})")
        self.reason = reason
        self.address = address


def exception_leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside ``exc``, depth first, with exception groups opened (``exc`` itself if
    it is not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from exception_leaves(inner)
    else:
        yield exc
