"""``/ipfs/ping/1.0.0``: 32 random bytes echoed, repeatable on one stream.

The RTT is measured with trio's clock (monotonic, ``perf_counter`` resolution), so tests
with a mock clock see virtual time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import trio

from physarum.errors import ConfigError, ProtocolError, StreamEndedError
from physarum.overlay.events import HandlerHost

log = logging.getLogger(__name__)

PROTOCOL_ID = "/ipfs/ping/1.0.0"
PING_SIZE = 32
#: How long :func:`handle_ping` waits for the next ping on a stream before resetting it (go-libp2p's
#: handler resets after 10 s too). A monitor pinging less often than this loses its stream between
#: pings and opens a fresh one; physarum's monitor does so without counting a failure. Only a
#: stream a peer holds open and idle is ever cut.
DEFAULT_IDLE_TIMEOUT = 10.0


@runtime_checkable
class _Resettable(Protocol):
    def reset(self) -> None: ...


@runtime_checkable
class DrivenStream(Protocol):
    """A stream a protocol can drive from the connection's reader, with no task waiting on it
    (:class:`physarum.overlay.yamux.YamuxStream` is one; see its ``set_watcher``)."""

    def set_watcher(self, watcher: Callable[[], None] | None) -> None: ...
    def receive_nowait(self, max_bytes: int | None = None) -> bytes: ...
    def send_nowait(self, data: bytes) -> None: ...
    def reset(self) -> None: ...


async def _receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


async def handle_ping(
    stream: trio.abc.HalfCloseableStream, *, idle_timeout: float = DEFAULT_IDLE_TIMEOUT
) -> None:
    """Echo 32-byte pings until the peer ends its side.

    Each ping must be whole within ``idle_timeout`` seconds of the previous echo (of the call,
    for the first): a stream held open longer is reset (when the stream can be) and the handler
    returns, so idle ping streams do not pile up. It reads at most 32 bytes at a time.

    js-libp2p half-closes right after its 32 bytes, so the echo must still go out after EOF.

    On a :class:`DrivenStream` the echo is sent from the connection's reader as the ping arrives
    (no wake-up of this task per ping); should the peer stop reading our echoes, it goes on as
    below, waiting for room.

    Raises:
        trio.BrokenResourceError: the stream broke.
    """
    if isinstance(stream, DrivenStream) and not await _echo_driven(stream, idle_timeout):
        return
    # One scope whose deadline moves on after each echo: cheaper than a scope per ping.
    with trio.CancelScope(deadline=trio.current_time() + idle_timeout) as scope:
        while True:
            data = await _receive_exactly(stream, PING_SIZE)
            if len(data) < PING_SIZE:
                return
            await stream.send_all(data)
            scope.deadline = trio.current_time() + idle_timeout
    if scope.cancelled_caught:
        log.debug("ping: resetting a stream idle for %g s", idle_timeout)
        if isinstance(stream, _Resettable):
            stream.reset()


async def _echo_driven(stream: DrivenStream, idle_timeout: float) -> bool:
    """Echo from the stream's watcher until the peer ends the stream (False: done) or no longer
    reads our echoes (True: the caller goes on waiting for room; what was not echoed is put back).

    Raises:
        trio.BrokenResourceError: the stream broke.
    """
    done = trio.Event()
    pending = bytearray()
    failed: list[BaseException] = []
    stalled = False

    def on_ready() -> None:
        nonlocal stalled
        if done.is_set():
            return
        try:
            while True:
                try:
                    data = stream.receive_nowait()
                except trio.WouldBlock:
                    return
                if not data:
                    done.set()
                    return
                pending.extend(data)
                whole = len(pending) - len(pending) % PING_SIZE
                if whole:
                    try:
                        stream.send_nowait(bytes(pending[:whole]))
                    except (trio.WouldBlock, ConfigError):
                        stalled = True
                        done.set()
                        return
                    del pending[:whole]
                    scope.deadline = trio.current_time() + idle_timeout
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError) as e:
            failed.append(e)
            done.set()

    with trio.CancelScope(deadline=trio.current_time() + idle_timeout) as scope:
        stream.set_watcher(on_ready)
        try:
            on_ready()
            await done.wait()
        finally:
            stream.set_watcher(None)
    if failed:
        raise trio.BrokenResourceError("ping stream broke") from failed[0]
    if scope.cancelled_caught:
        log.debug("ping: resetting a stream idle for %g s", idle_timeout)
        stream.reset()
        return False
    if stalled and pending:
        unread = getattr(stream, "unread", None)
        if unread is None:
            stream.reset()
            return False
        unread(bytes(pending))
    return stalled


class PingService:
    """Answers ``/ipfs/ping/1.0.0`` on a host (every host runs one; see
    :class:`physarum.overlay.host.Service`). ``idle_timeout``: as for :func:`handle_ping`."""

    def __init__(self, idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
        self.idle_timeout = idle_timeout

    def attach(self, host: HandlerHost) -> None:
        host.set_handler(PROTOCOL_ID, self._handle)

    async def _handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        await handle_ping(stream, idle_timeout=self.idle_timeout)


async def ping_once(stream: trio.abc.Stream) -> float:
    """Send one ping on an open ping stream; return the RTT in seconds.

    Raises:
        ProtocolError: the echo differs or the stream ended.
        trio.BrokenResourceError: the stream broke.
    """
    payload = os.urandom(PING_SIZE)
    start = trio.current_time()
    send_nowait = getattr(stream, "send_nowait", None)
    try:
        if send_nowait is None:
            raise trio.WouldBlock
        # Straight to the socket (see physarum.nowait): no trip through the scheduler before the
        # echo can come back.
        send_nowait(payload)
    except trio.WouldBlock:
        await stream.send_all(payload)
    echo = await _receive_exactly(stream, PING_SIZE)
    rtt = trio.current_time() - start
    if echo != payload:
        if len(echo) < PING_SIZE:
            raise StreamEndedError("ping stream ended")
        raise ProtocolError("ping echo does not match")
    return rtt
