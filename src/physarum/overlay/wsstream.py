"""The WebSocket byte stream and its HTTP upgrade, on wsproto (see :mod:`physarum.overlay.websocket`
for what the transport is and its limits).

Apart from the transport so that importing a host does not import wsproto and h11 (about 30 ms):
the transport imports this module on its first dial or listen.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from physarum.errors import ConfigError, LimitError, PhysarumError, ProtocolError, RefusedError
from physarum.overlay.websocket import DEFAULT_WEBSOCKET_OPTIONS, WebSocketOptions

__all__ = ["WebSocketStream", "client_handshake", "server_handshake"]

log = logging.getLogger("physarum.overlay.websocket")

#: Close codes that end the stream cleanly: normal, going away, and a Close without a code
#: (js-libp2p closes with none).
_CLEAN_CLOSE_CODES = frozenset({CloseReason.NORMAL_CLOSURE, CloseReason.GOING_AWAY, CloseReason.NO_STATUS_RCVD})


class WebSocketStream(trio.abc.Stream):
    """The byte stream carried by a WebSocket's binary messages, over ``transport_stream``.

    Made by :func:`client_handshake` or :func:`server_handshake` once the HTTP upgrade is done.
    ``receive_some`` returns b"" after a clean Close from the peer and raises
    ``trio.BrokenResourceError`` after an abrupt end (see the module docstring); ``aclose``
    sends a Close (code 1000) and closes the transport.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        connection: WSConnection,
        options: WebSocketOptions = DEFAULT_WEBSOCKET_OPTIONS,
    ) -> None:
        self.transport_stream = transport_stream
        self.options = options
        self._ws = connection
        self._received = bytearray()
        self._message_size = 0
        self._eof = False
        self._failure: PhysarumError | trio.BrokenResourceError | None = None
        self._closed = False
        # Frames go out whole and one at a time: send_all's messages and the receive side's
        # answers (pong, Close) share the transport.
        self._send_lock = trio.StrictFIFOLock()
        # A frame cut short (a cancelled send) leaves the peer mid-frame: nothing more can go out.
        self._send_broken = False
        self._sending = False
        self._receiving = False

    # -- sending -----------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as one binary message, or several of at most ``send_message_size``.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: after :meth:`aclose`.
            trio.BrokenResourceError: the connection is closing or lost.
        """
        self._start_sending()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            step = self.options.send_message_size
            for start in range(0, len(view), step):
                await self._send_event(BytesMessage(data=bytes(view[start : start + step])))
            if not view:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport can take more.

        Raises:
            trio.BusyResourceError: another task is sending or waiting.
            trio.ClosedResourceError: after :meth:`aclose`.
            trio.BrokenResourceError: the connection is lost.
        """
        self._start_sending()
        try:
            async with self._send_lock:
                await self.transport_stream.wait_send_all_might_not_block()
        finally:
            self._sending = False

    def _start_sending(self) -> None:
        """Claim the sending side for the caller, who releases it by clearing ``_sending``.

        Raises:
            trio.BusyResourceError: another task holds it.
            trio.ClosedResourceError: after :meth:`aclose` (the side is then not claimed).
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this WebSocket")
        if self._closed:
            raise trio.ClosedResourceError("the WebSocket is closed")
        self._sending = True

    async def _send_event(self, event: Event) -> None:
        # Uncontended, the lock is taken without a trip through the scheduler (the transport's
        # send_all is the checkpoint): a ping is a handful of small messages each way.
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            if self._closed:
                raise trio.ClosedResourceError("the WebSocket is closed")
            if self._send_broken:
                raise trio.BrokenResourceError("an earlier send on this WebSocket was cut short")
            try:
                frame = self._ws.send(event)
            except LocalProtocolError as e:
                raise trio.BrokenResourceError("the WebSocket is closing") from e
            try:
                await self.transport_stream.send_all(frame)
            except BaseException:
                self._send_broken = True
                raise
        finally:
            self._send_lock.release()

    # -- receiving ---------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes of the stream (at most ``max_bytes``), or b"" after a clean close.

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: after :meth:`aclose`.
            trio.BrokenResourceError: the connection ended abruptly or the peer broke the
                protocol (a text or oversized message, a bad frame); the cause says which.
        """
        if max_bytes is not None and operator.index(max_bytes) < 1:
            raise ConfigError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this WebSocket")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            # A read of the transport is a checkpoint; without one, this call makes its own.
            read = False
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the WebSocket is closed")
                if self._received:
                    n = len(self._received) if max_bytes is None else max_bytes
                    chunk = bytes(self._received[:n])
                    del self._received[:n]
                    if not read:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return chunk
                if self._failure is not None:
                    raise trio.BrokenResourceError(str(self._failure)) from self._failure
                if self._eof:
                    if not read:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                # Events already parsed come first (bytes may have come with the 101 response).
                answers = self._absorb(self._ws.events())
                if answers:
                    await self._answer(answers)
                if not (self._received or self._failure is not None or self._eof):
                    await self._read_transport()
                    read = True
        finally:
            self._receiving = False

    async def _read_transport(self) -> None:
        try:
            data = await self.transport_stream.receive_some(self.options.receive_size)
        except trio.BrokenResourceError as e:
            self._failure = e
            raise
        except trio.ClosedResourceError:
            if self._closed:
                raise
            raise trio.BrokenResourceError("the WebSocket's transport was closed") from None
        # An empty read is TCP's end: wsproto reports it as code 1006 (lost without a Close).
        self._ws.receive_data(bytes(data) if data else None)

    def _absorb(self, events: Iterable[Event]) -> list[Event]:
        """Take in what the peer sent: message bytes join the stream, a Close or a protocol error
        ends it. Returns the frames to send back (pongs, a Close). Never waits, so a cancelled
        receive loses nothing."""
        answers: list[Event] = []
        for event in events:
            if isinstance(event, BytesMessage):
                self._message_size += len(event.data)
                if self._message_size > self.options.max_message_size:
                    limit = self.options.max_message_size
                    answers.append(self._fail(LimitError(f"WebSocket message over {limit} bytes", limit=limit),
                                              CloseReason.MESSAGE_TOO_BIG))
                    break
                self._received += event.data
                if event.message_finished:
                    self._message_size = 0
            elif isinstance(event, TextMessage):
                answers.append(self._fail(ProtocolError("text WebSocket message"), CloseReason.UNSUPPORTED_DATA))
                break
            elif isinstance(event, Ping):
                answers.append(event.response())
            elif isinstance(event, CloseConnection):
                answers.extend(self._on_close(event))
                break
        return answers

    def _on_close(self, event: CloseConnection) -> list[Event]:
        state = self._ws.state
        if state is ConnectionState.OPEN:
            # wsproto's verdict on a bad frame comes as a CloseConnection: we are the one closing.
            return [self._fail(ProtocolError(f"bad WebSocket frame: {event.reason}"), event.code)]
        if event.code in _CLEAN_CLOSE_CODES:
            self._eof = True
        elif event.code == CloseReason.ABNORMAL_CLOSURE:
            self._failure = trio.BrokenResourceError("connection lost without a WebSocket Close")
        else:
            detail = f": {event.reason}" if event.reason else ""
            self._failure = ProtocolError(f"peer closed the WebSocket with code {event.code}{detail}")
        return [event.response()] if state is ConnectionState.REMOTE_CLOSING else []

    def _fail(self, reason: PhysarumError, code: int) -> CloseConnection:
        """The peer broke the protocol: record why; the Close frame returned tells it."""
        self._failure = reason
        log.debug("closing WebSocket: %s", reason)
        return CloseConnection(code=code)

    async def _answer(self, answers: list[Event]) -> None:
        """Send pongs and Close frames from the receive side. Shielded, so that cancelling a
        receive never cuts a frame short, and bounded by ``close_timeout``: an answer the peer
        cannot take in time is dropped (pongs are a courtesy, and a Close ends things anyway);
        a transport that broke shows on the next read."""
        with trio.CancelScope(shield=True), trio.move_on_after(self.options.close_timeout):
            for event in answers:
                try:
                    await self._send_event(event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    # -- closing -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send a Close (code 1000, within ``close_timeout``) and close the transport. Idempotent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            # A send in progress holds the lock: it will fail as the transport closes, and the
            # peer sees the connection end without a Close (it was mid-message anyway).
            if self._ws.state is ConnectionState.OPEN and not self._send_broken and not self._send_lock.locked():
                with trio.move_on_after(self.options.close_timeout):
                    async with self._send_lock:
                        frame = self._ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
                        await self.transport_stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport_stream.aclose()


# -- handshakes ----------------------------------------------------------------------------------


async def client_handshake(
    stream: trio.abc.Stream,
    host: str,
    *,
    path: str = "/",
    options: WebSocketOptions = DEFAULT_WEBSOCKET_OPTIONS,
) -> WebSocketStream:
    """Upgrade ``stream`` to a WebSocket as the client, asking for ``path`` with ``host`` in the
    ``Host`` header. The caller bounds the time it takes.

    Raises:
        trio.BrokenResourceError: the server answered something else than an upgrade (the cause
            is a :class:`~physarum.errors.ProtocolError`), closed the connection before answering
            (:class:`~physarum.errors.RefusedError`), or the connection failed.
    """
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=host, target=path)))
    heard = False
    while True:
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return WebSocketStream(stream, ws, options)
            if isinstance(event, RejectConnection):
                reason = ProtocolError(f"the server refused the WebSocket upgrade: HTTP {event.status_code}")
                raise trio.BrokenResourceError(str(reason)) from reason
        data = await stream.receive_some(options.receive_size)
        if not data:
            # Closed without a word: a refusal (a server at capacity), as at the host's level.
            # Cut short after some bytes: whatever answered is not a WebSocket server.
            cause: PhysarumError = (
                ProtocolError("the answer to the WebSocket upgrade was cut short")
                if heard
                else RefusedError("the server closed the connection before answering the WebSocket upgrade")
            )
            raise trio.BrokenResourceError(str(cause)) from cause
        heard = True
        try:
            ws.receive_data(bytes(data))
        except (RemoteProtocolError, ValueError) as e:
            reason = ProtocolError(f"bad answer to the WebSocket upgrade: {e}")
            raise trio.BrokenResourceError(str(reason)) from reason


async def server_handshake(
    stream: trio.abc.Stream, *, options: WebSocketOptions = DEFAULT_WEBSOCKET_OPTIONS
) -> WebSocketStream:
    """Read an HTTP upgrade request from ``stream`` and accept it, whatever its path and ``Host``.
    A request that is not a WebSocket upgrade is answered with HTTP 400 (best effort). The
    caller bounds the time it takes.

    Raises:
        trio.BrokenResourceError: not a WebSocket upgrade request (the cause is a
            :class:`~physarum.errors.ProtocolError`), or the connection ended first.
    """
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = await stream.receive_some(options.receive_size)
        if not data:
            raise trio.BrokenResourceError("connection closed before the WebSocket upgrade")
        try:
            ws.receive_data(bytes(data))
            requests = [event for event in ws.events() if isinstance(event, Request)]
        except (RemoteProtocolError, ValueError) as e:
            # ValueError: wsproto decodes the Host header and the target itself (UnicodeError).
            hint = e.event_hint if isinstance(e, RemoteProtocolError) else None
            await _refuse(stream, ws, hint if isinstance(hint, RejectConnection) else RejectConnection())
            reason = ProtocolError(f"not a WebSocket upgrade request: {e}")
            raise trio.BrokenResourceError(str(reason)) from reason
        if requests:
            await stream.send_all(ws.send(AcceptConnection()))
            return WebSocketStream(stream, ws, options)


async def _refuse(stream: trio.abc.Stream, ws: WSConnection, answer: RejectConnection) -> None:
    """Answer a bad request with an HTTP error, if the state machine and the peer allow."""
    try:
        await stream.send_all(ws.send(answer))
    except (LocalProtocolError, h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
