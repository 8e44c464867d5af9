"""The libp2p private-network connection protector (pnet, PSK v1) as a trio stream.

Each direction of a connection starts with the sender's fresh random 24-byte nonce; every byte after it
is XORed with XSalsa20(psk, that nonce). The two directions are independent, so neither side waits for
the other: a side sends its nonce as soon as it likes and reads the peer's before the first data.

There is no MAC and no handshake, so this layer cannot tell that a peer holds a different key: the
bytes simply decrypt to garbage, and the first to notice is multistream-select above, which should
raise :class:`PskMismatchError`. Nor does pnet protect integrity: it only keeps outsiders out of the
private network; Noise, on top, authenticates and encrypts for real.
"""

from __future__ import annotations

import operator
import secrets
from typing import Final, NoReturn, overload

import trio

from physarum.errors import ConfigError, PhysarumError
from physarum.nowait import DirectSocket, direct_socket
from physarum.psk.keyfile import PSK_SIZE
from physarum.psk.xsalsa20 import NONCE_SIZE, XSalsa20

__all__ = [
    "NONCE_SIZE",
    "HalfCloseablePskStream",
    "PskMismatchError",
    "PskStream",
    "TruncatedNonceError",
    "protect",
]

# Bounds the ciphertext held in memory at once for a large send_all, at no cost in copies.
_SEND_CHUNK: Final = 256 * 1024
# What receive_some(None) reads at most (trio's default).
_RECEIVE_SIZE: Final = 65536


class PskMismatchError(PhysarumError):
    """The peer is not in this private network (pre-shared keys differ) or is not using a PSK.

    pnet cannot detect this itself (it has no MAC), so a mismatch shows up as garbage where the
    multistream-select header should be; the host raises this error then. ``peer_id`` and ``address``
    say who it was, when known; ``no_psk`` is True when the peer was seen to use no key at all.
    """

    def __init__(
        self,
        message: str = "the peer is not in this private network (pre-shared keys differ) or is not using a PSK",
        *,
        peer_id: object | None = None,
        address: str | None = None,
        no_psk: bool = False,
    ) -> None:
        where = ", ".join(f"{k} {v}" for k, v in (("peer", peer_id), ("address", address)) if v is not None)
        super().__init__(f"{message} ({where})" if where else message)
        self.peer_id = peer_id
        self.address = address
        self.no_psk = no_psk


class TruncatedNonceError(PhysarumError):
    """The peer ended the connection before sending its whole 24-byte pnet nonce.

    Raised as the ``__cause__`` of the ``trio.BrokenResourceError`` that :meth:`PskStream.receive_some`
    raises. ``received`` is how many nonce bytes did arrive: 0 usually means the peer dropped the
    connection at once, perhaps because it does not run pnet or rejected us.
    """

    def __init__(self, received: int) -> None:
        super().__init__(f"peer closed the connection after {received} of the {NONCE_SIZE} pnet nonce bytes")
        self.received = received


class _Guard:
    """Makes a second task entering the same operation fail with BusyResourceError, as trio streams do."""

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._busy = False
        self._message = message

    @property
    def busy(self) -> bool:
        return self._busy

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._busy = False


class PskStream(trio.abc.Stream):
    """A :class:`trio.abc.Stream` that pnet-protects ``transport_stream`` with a 32-byte pre-shared key.

    Use :func:`protect`, which also sends the nonce at once. Constructing the stream directly does no I/O:
    the nonce then goes out in the same write as the first data (or before ``send_eof``), which suits
    transports without buffering such as ``trio.testing.lockstep_stream_pair``; a stream closed before
    writing anything then never sends a nonce, which its peer reports as :class:`TruncatedNonceError`.

    A ``send_all`` that fails or is cancelled after it began writing leaves the outgoing keystream out of
    step with what the peer received, so later sends raise ``trio.BrokenResourceError``: close the stream.
    """

    transport_stream: trio.abc.Stream

    def __init__(self, transport_stream: trio.abc.Stream, psk: bytes, *, received: bytes = b"") -> None:
        """Wrap ``transport_stream``; no I/O happens here. ``received``: the first bytes of the peer's
        nonce, already read from the transport by the caller (a listener looking at them before it
        commits to a handshake).

        Raises:
            ConfigError: if ``psk`` is not 32 bytes, or ``received`` is longer than a nonce.
        """
        if len(psk) != PSK_SIZE:
            raise ConfigError(f"a pre-shared key is {PSK_SIZE} bytes, got {len(psk)}")
        if len(received) > NONCE_SIZE:
            raise ConfigError(f"received holds {len(received)} bytes, more than a {NONCE_SIZE}-byte nonce")
        self.transport_stream = transport_stream
        self._direct = direct_socket(transport_stream)
        self._psk: bytes | None = bytes(psk)
        nonce = secrets.token_bytes(NONCE_SIZE)
        self._encryptor = XSalsa20(psk, nonce)
        self._unsent_nonce: bytes | None = nonce
        self._decryptor: XSalsa20 | None = None
        self._peer_nonce = bytearray(received)
        self._closed = False
        self._eof_sent = False
        self._send_broken = False
        self._receive_error: TruncatedNonceError | None = None
        self._send_guard = _Guard("another task is already sending on this PskStream")
        self._receive_guard = _Guard("another task is already receiving on this PskStream")

    @property
    def direct_socket(self) -> DirectSocket | None:
        """The TCP socket under this stream, read and written directly (None over other streams)."""
        return self._direct

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and send it (preceded by our nonce if it has not gone out yet).

        Raises:
            trio.BusyResourceError: if another task is sending, waiting to send or sending EOF.
            trio.ClosedResourceError: after :meth:`aclose` or ``send_eof``.
            trio.BrokenResourceError: if the transport broke, or an earlier send was interrupted.
        """
        with self._send_guard:
            await self._check_sendable()
            # Take a pending cancellation while it is free: once the keystream has advanced, a cancelled
            # write breaks the stream.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                with memoryview(data) as raw, raw.cast("B") as view:
                    if len(view) <= _SEND_CHUNK:
                        await self._write(self._encryptor.process(view))
                    else:
                        for start in range(0, len(view), _SEND_CHUNK):
                            await self._write(self._encryptor.process(view[start : start + _SEND_CHUNK]))
            except BaseException:
                self._send_broken = True
                raise

    def can_send_nowait(self) -> bool:
        """Whether :meth:`send_nowait` can send now: the transport is a TCP socket, no other send is
        in progress or left bytes unsent, and the stream is open."""
        direct = self._direct
        return (
            direct is not None
            and not direct.unsent
            and not self._send_guard.busy
            and not (self._closed or self._eof_sent or self._send_broken)
        )

    def send_nowait(self, data: bytes) -> None:
        """Encrypt ``data`` and hand it to the kernel without waiting (see :mod:`physarum.nowait`);
        what the kernel does not take goes out first with the next ``send_all`` or :meth:`flush`.

        Raises:
            trio.WouldBlock: :meth:`can_send_nowait` is false; nothing was encrypted or sent.
            trio.BrokenResourceError: the transport broke (the stream cannot send any more).
        """
        direct = self._direct
        if direct is None or not self.can_send_nowait():
            raise trio.WouldBlock
        ciphertext = self._encryptor.process(data)
        nonce = self._unsent_nonce
        if nonce is not None:
            self._unsent_nonce = None
            ciphertext = nonce + ciphertext
        try:
            direct.write(ciphertext)
        except BaseException:
            self._send_broken = True
            raise

    @property
    def unsent(self) -> int:
        """Bytes :meth:`send_nowait` left for the next write."""
        return 0 if self._direct is None else self._direct.unsent

    async def flush(self) -> None:
        """Send what has not gone out yet: our nonce (if nothing was sent so far) and what
        :meth:`send_nowait` left unsent."""
        with self._send_guard:
            await self._check_sendable()
            if self._unsent_nonce is None and not self.unsent:
                await trio.lowlevel.checkpoint()
                return
            try:
                await self._write(b"")
            except BaseException:
                self._send_broken = True
                raise

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport might accept data without blocking.

        Raises:
            trio.BusyResourceError: if another task is sending, waiting to send or sending EOF.
            trio.ClosedResourceError: after :meth:`aclose`.
            trio.BrokenResourceError: if the transport broke.
        """
        with self._send_guard:
            if self._closed:
                await self._raise_closed()
            await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive and decrypt up to ``max_bytes`` bytes; ``b""`` means the peer closed its side cleanly.

        The first call reads the peer's nonce before any data.

        Raises:
            TypeError: if ``max_bytes`` is not an integer (or None).
            ConfigError: if ``max_bytes`` is less than 1.
            trio.BusyResourceError: if another task is receiving.
            trio.ClosedResourceError: after :meth:`aclose`.
            trio.BrokenResourceError: if the transport broke, or (``from`` a :class:`TruncatedNonceError`)
                the peer closed before sending its whole nonce.
        """
        with self._receive_guard:
            if max_bytes is not None:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ConfigError("max_bytes must be at least 1")
            if self._closed:
                await self._raise_closed()
            decryptor = self._decryptor
            if decryptor is None:
                decryptor = await self._receive_nonce()
            direct = self._direct
            if direct is not None:
                return decryptor.process(await direct.receive(max_bytes or _RECEIVE_SIZE))
            return decryptor.process(await self.transport_stream.receive_some(max_bytes))

    @property
    def nonce_bytes_received(self) -> int:
        """How many bytes of the peer's nonce arrived (0: the peer has sent nothing yet)."""
        return len(self._peer_nonce) if self._decryptor is None else NONCE_SIZE

    async def aclose(self) -> None:
        """Close the transport stream (without sending our nonce if it never went out)."""
        self._closed = True
        await self.transport_stream.aclose()

    async def _check_sendable(self) -> None:
        if self._closed:
            await self._raise_closed()
        if self._eof_sent:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("cannot send after send_eof")
        if self._send_broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError(
                "an earlier send on this PskStream failed part-way; its keystream no longer matches the peer's"
            )

    async def _raise_closed(self) -> NoReturn:
        # Every operation on a closed stream fails the same way, after a checkpoint as trio's do.
        await trio.lowlevel.checkpoint()
        raise trio.ClosedResourceError("this PskStream is closed")

    async def _write(self, ciphertext: bytes) -> None:
        nonce = self._unsent_nonce
        if nonce is not None:
            self._unsent_nonce = None
            # One write, so the nonce and the first data usually share a packet.
            ciphertext = nonce + ciphertext
        if self._direct is not None:
            ciphertext = self._direct.after_unsent(ciphertext)
        await self.transport_stream.send_all(ciphertext)

    async def _receive_nonce(self) -> XSalsa20:
        if self._receive_error is not None:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError(str(self._receive_error)) from self._receive_error
        # Ask for no more than the nonce so the data behind it stays in the transport: nothing to buffer.
        while len(self._peer_nonce) < NONCE_SIZE:
            chunk = await self.transport_stream.receive_some(NONCE_SIZE - len(self._peer_nonce))
            if not chunk:
                self._receive_error = TruncatedNonceError(len(self._peer_nonce))
                raise trio.BrokenResourceError(str(self._receive_error)) from self._receive_error
            self._peer_nonce += chunk
        assert self._psk is not None
        decryptor = XSalsa20(self._psk, bytes(self._peer_nonce))
        self._decryptor = decryptor
        # Both ciphers are keyed now; drop our reference to the key.
        self._psk = None
        return decryptor


class HalfCloseablePskStream(PskStream, trio.abc.HalfCloseableStream):
    """A :class:`PskStream` over a half-closeable transport (such as TCP), adding ``send_eof``."""

    transport_stream: trio.abc.HalfCloseableStream

    def __init__(
        self, transport_stream: trio.abc.HalfCloseableStream, psk: bytes, *, received: bytes = b""
    ) -> None:
        """Wrap ``transport_stream``; no I/O happens here (``received``: see :class:`PskStream`).

        Raises:
            ConfigError: if ``psk`` is not 32 bytes, or ``received`` is longer than a nonce.
        """
        super().__init__(transport_stream, psk, received=received)

    async def send_eof(self) -> None:
        """Close our sending side; the peer's ``receive_some`` returns ``b""`` after the data sent so far.

        If no data was ever sent, the nonce goes out first so the peer sees a clean end of stream.

        Raises:
            trio.BusyResourceError: if another task is sending, waiting to send or sending EOF.
            trio.ClosedResourceError: after :meth:`aclose`.
            trio.BrokenResourceError: if the transport broke while the nonce or the EOF went out
                (later sends then raise it too).
        """
        with self._send_guard:
            if self._closed:
                await self._raise_closed()
            if self._eof_sent:
                await trio.lowlevel.checkpoint()
                return
            try:
                if self._unsent_nonce is not None or self.unsent:
                    await self._write(b"")
                await self.transport_stream.send_eof()
            except BaseException:
                self._send_broken = True
                raise
            self._eof_sent = True


@overload
async def protect(
    transport_stream: trio.abc.HalfCloseableStream, psk: bytes, *, received: bytes = b""
) -> HalfCloseablePskStream: ...
@overload
async def protect(transport_stream: trio.abc.Stream, psk: bytes, *, received: bytes = b"") -> PskStream: ...
async def protect(transport_stream: trio.abc.Stream, psk: bytes, *, received: bytes = b"") -> PskStream:
    """Wrap ``transport_stream`` in pnet protection under ``psk`` and send our nonce straight away.

    Only our nonce is sent; the peer's is read by the first ``receive_some``, so both sides can call
    this at once without waiting for each other, and the dialer's first data costs no extra round trip.
    The result is a :class:`HalfCloseablePskStream` when the transport can half-close.
    ``received``: the start of the peer's nonce when the caller already read it (at most 24 bytes).

    On failure the transport is left open for the caller to close.

    Raises:
        ConfigError: if ``psk`` is not 32 bytes, or ``received`` is longer than a nonce.
        trio.BrokenResourceError: if the transport broke while sending the nonce.
        trio.ClosedResourceError: if the transport was already closed.
    """
    stream: PskStream
    if isinstance(transport_stream, trio.abc.HalfCloseableStream):
        stream = HalfCloseablePskStream(transport_stream, psk, received=received)
    else:
        stream = PskStream(transport_stream, psk, received=received)
    await stream.flush()
    return stream
