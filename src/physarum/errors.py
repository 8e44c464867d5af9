"""The exception tree: everything physarum raises on purpose is a PhysarumError.

Errors carry attributes (peer id, reason) so callers never match on message strings.
Failures of a lower layer surface as ``trio.BrokenResourceError`` raised ``from`` the cause.

"The peer failed" is one tuple, :data:`PEER_FAILURES`: what any exchange with a peer (a dial, a
stream, a request) may raise because of the peer or the path to it; anything else is a bug and
propagates. :func:`failure_kind` says which of a few kinds a failure is (the peer is gone, it broke
the protocol, we gave up at a deadline, a limit was hit, it is outside our private network), for
callers that act on the kind, such as the monitor's ``physarum_ping_failures_total{reason}``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator

import trio


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


class StreamEndedError(ProtocolError):
    """The peer ended a stream where the protocol wanted more (half an answer, no answer)."""


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


class ConfigError(PhysarumError, ValueError):
    """An option or argument out of its range or malformed (a negative limit, an empty token, a
    key of the wrong size): the caller must change it. Also a ``ValueError``, as Python's own
    range errors are."""


class EncodeError(PhysarumError, ValueError):
    """A value we were asked to send that its format cannot carry (a varint over 2**64, a
    multistream message with a newline, a protobuf field number out of range)."""


class StateError(PhysarumError, RuntimeError):
    """A call made when the object cannot take it (a Noise message out of turn, a host that is
    not running): a bug in the calling code, not something a peer did."""


class NotRunningError(StateError):
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


#: What an exchange with a peer may raise when the peer, or the path to it, fails.
PEER_FAILURES: tuple[type[BaseException], ...] = (
    PhysarumError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
)


class FailureKind(enum.StrEnum):
    """Which kind of failure an exception of :data:`PEER_FAILURES` is."""

    GONE = "gone"
    """The connection or stream broke or was closed, or the peer refused or could not be reached."""
    PROTOCOL = "protocol"
    """The peer broke a protocol's rules (including speaking none of ours)."""
    DEADLINE = "deadline"
    """We gave up waiting."""
    LIMIT = "limit"
    """A configured limit was hit (ours, or the peer's reset of a stream over its own)."""
    NOT_IN_NETWORK = "not_in_network"
    """The peer is in another private network, or in none."""


def failure_kind(e: BaseException) -> FailureKind:
    """The kind of ``e`` (one of :data:`PEER_FAILURES`; anything else counts as GONE).

    A :class:`DialError` is the kind of its first cause that is not the deadline itself.
    """
    from physarum.psk import PskMismatchError  # psk imports this module

    if isinstance(e, DialError) and e.errors:
        causes = [v for k, v in e.errors.items() if k != "(deadline)"] or list(e.errors.values())
        return failure_kind(causes[0])
    if isinstance(e, PskMismatchError):
        return FailureKind.NOT_IN_NETWORK
    if isinstance(e, trio.TooSlowError | TimeoutError):
        return FailureKind.DEADLINE
    if isinstance(e, LimitError):
        return FailureKind.LIMIT
    if isinstance(e, ProtocolError | DecodeError):
        return FailureKind.PROTOCOL
    return FailureKind.GONE
