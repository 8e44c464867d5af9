"""yamux 1.0.0: many flow-controlled streams over one secured connection.

Frames are a 12-byte header ``version(0) type flags stream-id length`` (big-endian) and, for data
frames, ``length`` bytes. Each stream starts with a 256 KiB window each way; the receiver grants
more with window-update frames as its application reads, so a slow reader never makes the
connection buffer more than a window per stream.

One reader task per session parses frames (:func:`decode_header` is the pure codec); writes go
straight to the transport under a lock, with control frames (window updates, FIN, RST, pong)
queued and written ahead of the next frame so no caller blocks on them and order is kept.

What a peer can make a session hold is bounded:

- queued control frames, by ``max_pending_control`` bytes. They pile up only while a write is
  stuck because the peer does not read (that write holds at most as much again, what was queued
  when it started); past the cap the session is closed, with GoAway(internal error) when no
  frame is half written.
- pong answers, by ``max_pending_pongs`` unsent at a time (go-yamux's ping backlog, 32): further
  pings are dropped unanswered, so a ping flood costs nothing while nobody reads our answers.
- received data, by each stream's window and, when the session has a ``memory`` budget, by that
  budget: a data frame that does not fit resets its stream (not the connection). Bytes are
  reserved while buffered and released when read, or when the stream is closed or reset or the
  session breaks.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import NamedTuple

import trio

from physarum.errors import ConfigError, DecodeError, LimitError, ProtocolError
from physarum.nowait import DirectSocket
from physarum.overlay.identity import PeerId
from physarum.overlay.resources import MemoryBudget
from physarum.overlay.streamio import check_receive

log = logging.getLogger(__name__)

PROTOCOL_ID = "/yamux/1.0.0"

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

FLAG_SYN = 1
FLAG_ACK = 2
FLAG_FIN = 4
FLAG_RST = 8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2
#: go-libp2p's ConnGarbageCollected (libp2p's connection error codes): a connection manager closed
#: the connection to stay under its limits. The peer is up; dialing it again at once gets trimmed again.
GO_AWAY_GARBAGE_COLLECTED = 0x1005

HEADER_SIZE = 12
INITIAL_WINDOW = 256 * 1024
#: The receive window we grant each stream (the spec's 256 KiB, raised with the SYN/ACK frame):
#: with one window in flight a sender stalls for a whole round trip of the peer's event loop;
#: 1 MiB keeps a loopback stream busy while bounding what one stream can make us buffer.
DEFAULT_WINDOW = 1024 * 1024
#: Data frames we write carry at most this much; bigger sends are split. The receiver hands data
#: on only once a whole frame is in, so frames well under the window let both sides work at once.
MAX_DATA_FRAME = 65535 - 16 - HEADER_SIZE  # header and data fill one Noise message exactly
#: Control frames (12 bytes each) a session queues for a peer that is not reading before it gives
#: up on the connection. Honest traffic queues a few frames per open stream at most (an ACK or
#: SYN, a window update per half window read, a FIN), a few KiB for hundreds of streams.
DEFAULT_MAX_PENDING_CONTROL = 64 * 1024
#: Pong answers queued and not yet written before further pings go unanswered (go-yamux's
#: ``PingBacklog``): honest peers have one ping in flight at a time.
DEFAULT_MAX_PENDING_PONGS = 32
#: How long a closing session tries to write its GoAway (it is best effort).
GO_AWAY_TIMEOUT = 1.0

_HEADER = struct.Struct(">BBHII")


class Header(NamedTuple):
    type: int
    flags: int
    stream_id: int
    length: int


def encode_header(type_: int, flags: int, stream_id: int, length: int) -> bytes:
    return _HEADER.pack(0, type_, flags, stream_id, length)


def decode_header(buf: bytes | bytearray, pos: int = 0) -> Header:
    """Parse the 12-byte header at ``buf[pos:]`` (the caller checks there are 12 bytes).

    Raises:
        DecodeError: unknown version or frame type.
    """
    version, type_, flags, stream_id, length = _HEADER.unpack_from(buf, pos)
    if version != 0:
        raise DecodeError(f"yamux version {version}, want 0")
    if type_ > TYPE_GO_AWAY:
        raise DecodeError(f"unknown yamux frame type {type_}")
    return Header(type_, flags, stream_id, length)


def _drop_tracebacks(error: object) -> None:
    """Clear the tracebacks of ``error`` and of the exceptions it was raised from or during."""
    for _ in range(8):  # a chain is short; a cycle in it must not loop
        if not isinstance(error, BaseException):
            return
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


class YamuxStream(trio.abc.HalfCloseableStream):
    """One multiplexed stream. ``protocol`` and ``peer_id`` are filled in by the host."""

    def __init__(self, session: YamuxSession, stream_id: int) -> None:
        self.session = session
        self.stream_id = stream_id
        self.protocol: str | None = None
        # Received frames, handed on whole when they fit; None while there are none (an empty deque
        # is 760 bytes, and a node may hold thousands of idle streams).
        self._buf: deque[bytes] | None = None
        self._recv_window = session.window  # bytes the peer may still send us (granted on open)
        self._consumed = 0  # read by the app since our last window update
        self._send_window = INITIAL_WINDOW
        self._recv_lot = trio.lowlevel.ParkingLot()
        self._send_lot = trio.lowlevel.ParkingLot()
        self._fin_sent = False
        self._fin_received = False
        self._reset = False
        self._closed = False
        self._sending = False
        self._receiving = False
        self._reserved = 0  # bytes of _buf reserved in session.memory
        self._reset_reason = "was reset by the peer"
        # Frames that go out with the stream's next write (an inbound stream's ACK, a deferred
        # negotiation answer), or on their own once the stream is about to wait for the peer.
        self._prefix = b""
        self._watcher: Callable[[], None] | None = None

    @property
    def peer_id(self) -> PeerId | None:
        return self.session.peer_id

    @property
    def direct_socket(self) -> DirectSocket | None:
        """The TCP socket under the session (see :mod:`physarum.nowait`), None over other transports."""
        return getattr(self.session.transport, "direct_socket", None)

    @property
    def memory(self) -> MemoryBudget | None:
        """The memory budget of the peer this stream's connection is with (None: not accounted).
        Protocols reserve what they buffer for a peer from it (see :mod:`physarum.dht.framing`)."""
        return self.session.memory

    @property
    def buffered(self) -> int:
        """Bytes received and not read yet."""
        return sum(map(len, self._buf)) if self._buf else 0

    def __repr__(self) -> str:
        return f"<YamuxStream {self.stream_id} {self.protocol or ''} peer={self.session.peer_id}>"

    def defer(self, data: bytes) -> None:
        """Send ``data`` with the stream's next write, or before it next waits to receive,
        whichever comes first: a negotiation answer then shares a frame (one write, one wake-up of
        the peer) with what the protocol sends first, and a peer waiting for it is never kept
        waiting by a handler that reads first."""
        if data:
            self._send_window -= len(data)
            self._prefix += encode_header(TYPE_DATA, 0, self.stream_id, len(data)) + data

    def _flush_prefix(self) -> None:
        prefix, self._prefix = self._prefix, b""
        self.session._queue(prefix)

    def accept(self) -> None:
        """Send what waits for the stream's first frame now (an inbound stream's ACK, which grants
        the peer our full receive window, and anything deferred): for a reader that will not read
        for a while but wants the peer to send up to the whole window meanwhile."""
        if self._prefix and not (self._reset or self._closed or self.session.broken):
            self._flush_prefix()

    def unread(self, data: bytes) -> None:
        """Put bytes a negotiation layer read ahead back in front of the stream.

        They count against the session's memory budget again when it has room; when it has not
        they stay unaccounted (at most one negotiation read ahead) rather than be lost.
        """
        if data:
            if self._buf is None:
                self._buf = deque()
            self._buf.appendleft(bytes(data))
            session = self.session
            memory = session.memory
            if memory is not None and not session.broken and memory.try_reserve(len(data)):
                self._reserved += len(data)
                session._reserved += len(data)

    def _release(self, n: int) -> None:
        """Give back up to ``n`` reserved bytes (what was read or dropped)."""
        n = min(n, self._reserved)
        self._reserved -= n
        session = self.session
        # A broken session gave back all its streams' bytes at once.
        if session.memory is not None and not session.broken:
            session._reserved -= n
            session.memory.release(n)

    def _drop_buffer(self) -> None:
        self._buf = None
        if self._reserved:
            self._release(self._reserved)

    # -- called by the session's reader (synchronous) --

    def _on_data(self, data: bytes) -> None:
        if self._closed:
            return
        if self._buf is None:
            self._buf = deque((data,))
        else:
            self._buf.append(data)
        self._recv_lot.unpark_all()

    def _on_fin(self) -> None:
        self._fin_received = True
        self._recv_lot.unpark_all()

    def _on_reset(self) -> None:
        # Like go-yamux, a reset stream's unread data is dropped: reads fail from now on.
        self._reset = True
        self._drop_buffer()
        self._recv_lot.unpark_all()
        self._send_lot.unpark_all()

    def _on_window(self, delta: int) -> None:
        self._send_window += delta
        self._send_lot.unpark_all()

    # -- the trio.abc.Stream interface --

    def _broken(self) -> trio.BrokenResourceError:
        if self._reset:
            return trio.BrokenResourceError(f"stream {self.stream_id} {self._reset_reason}")
        return trio.BrokenResourceError(f"connection to {self.session.peer_id} is broken")

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if self._fin_sent:
            raise trio.ClosedResourceError("send_eof was called on this stream")
        if self._reset or self.session.broken:
            raise self._broken()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(data, fin=False)

    async def send_final(self, data: bytes | bytearray | memoryview) -> None:
        """``send_all(data)`` then ``send_eof()``, the FIN on the last data frame: a short answer
        and its end leave in one frame, one write, one wake-up of the peer."""
        if not data:
            await self.send_eof()
            return
        await self._send(data, fin=True)

    async def _send(self, data: bytes | bytearray | memoryview, *, fin: bool) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data)
            if not view:
                await trio.lowlevel.cancel_shielded_checkpoint()
            pos = 0
            while True:
                self._check_sendable()
                if pos >= len(view):
                    return
                if self._send_window <= 0:
                    await self._send_lot.park()
                    continue
                n = min(len(view) - pos, self._send_window, MAX_DATA_FRAME)
                self._send_window -= n
                last = fin and pos + n >= len(view)
                frame = encode_header(TYPE_DATA, FLAG_FIN if last else 0, self.stream_id, n) + view[pos : pos + n]
                if self._prefix:
                    frame = self._prefix + frame
                    self._prefix = b""
                pos += n
                if last:
                    self._fin_sent = True
                await self.session._write(frame)
                if last:
                    self.session._maybe_forget(self)
                    return
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        while self._send_window <= 0 and not (self._reset or self._closed or self.session.broken):
            await self._send_lot.park()
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_receive(self._receiving, max_bytes)
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            yielded = False
            while not self._buf or not yielded:
                if not self._buf:
                    if self._closed:
                        raise trio.ClosedResourceError("stream is closed")
                    if self._fin_received and not self._reset:
                        # A reset after the FIN dropped what was buffered: that is no clean end.
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        return b""
                    if self._reset or self.session.broken:
                        raise self._broken()
                    if self._prefix:
                        # The peer may be waiting for it to send more. Queuing it may also break
                        # the session (the control cap), so look again before parking.
                        self._flush_prefix()
                        continue
                    await self._recv_lot.park()
                else:
                    # Data was there at once: yield anyway, then look again, since a reset (or
                    # aclose from another task) meanwhile drops the buffer (found by fuzz_yamux).
                    await trio.lowlevel.cancel_shielded_checkpoint()
                yielded = True
            return self._take(max_bytes)
        finally:
            self._receiving = False

    def _take(self, max_bytes: int | None) -> bytes:
        """Hand on buffered data (there is some) and grant the peer window for what was read."""
        buf = self._buf
        assert buf
        if max_bytes is None:
            out = b"".join(buf) if len(buf) > 1 else buf[0]
            self._buf = None
        else:
            out = buf[0]
            if len(out) > max_bytes:
                buf[0] = out[max_bytes:]
                out = out[:max_bytes]
            else:
                buf.popleft()
                if not buf:
                    self._buf = None
        if self._reserved:
            self._release(len(out))
        self._consumed += len(out)
        if self._consumed >= self.session.window // 2 and not self._fin_received:
            self._recv_window += self._consumed
            self.session._queue(encode_header(TYPE_WINDOW_UPDATE, 0, self.stream_id, self._consumed))
            self._consumed = 0
        return out

    # -- without waiting: for protocols driven from the session's reader (see set_watcher) --

    def set_watcher(self, watcher: Callable[[], None] | None) -> None:
        """Call ``watcher()`` whenever the stream may have become readable: data, FIN or RST arrived,
        or the connection broke. It runs synchronously in the session's reader task, so it must be
        quick, must not raise, and should call :meth:`receive_nowait` (and maybe :meth:`send_nowait`).
        A ping needs no task of its own this way. None removes it."""
        self._watcher = watcher

    def receive_nowait(self, max_bytes: int | None = None) -> bytes:
        """What :meth:`receive_some` would return without waiting: buffered data, or ``b""`` once
        the peer ended the stream.

        Raises:
            trio.WouldBlock: nothing is buffered and the stream is open.
            trio.ClosedResourceError, trio.BrokenResourceError: as :meth:`receive_some`.
        """
        max_bytes = check_receive(self._receiving, max_bytes)
        if not self._buf:
            if self._closed:
                raise trio.ClosedResourceError("stream is closed")
            if self._fin_received and not self._reset:
                return b""
            if self._reset or self.session.broken:
                raise self._broken()
            if self._prefix:  # the peer may wait for it before it sends anything
                self._flush_prefix()
            raise trio.WouldBlock
        return self._take(max_bytes)

    def send_nowait(self, data: bytes) -> None:
        """Send a small message (at most one frame, within the peer's window) without waiting: it is
        written to the socket at once when nothing else is being written, else queued ahead of the
        session's next write. For pings and their echoes; bulk data goes through :meth:`send_all`.

        Raises:
            trio.WouldBlock: the peer's window has no room for it, or the connection has a backlog of
                writes (the peer is not reading); nothing was sent.
            trio.BusyResourceError: a ``send_all`` is in progress on this stream.
            trio.ClosedResourceError: the stream was closed or ended (FIN) here.
            trio.BrokenResourceError: the stream was reset or the connection broke.
            ConfigError: ``data`` is larger than one frame.
        """
        if len(data) > MAX_DATA_FRAME:
            raise ConfigError(f"send_nowait takes at most {MAX_DATA_FRAME} bytes, got {len(data)}")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._check_sendable()
        if len(data) > self._send_window:
            raise trio.WouldBlock
        frame = encode_header(TYPE_DATA, 0, self.stream_id, len(data)) + data
        self.session._send_nowait(self._prefix + frame if self._prefix else frame)
        self._send_window -= len(data)
        self._prefix = b""

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if self._fin_sent:
            return
        if self._reset or self.session.broken:
            raise self._broken()
        self._fin_sent = True
        prefix, self._prefix = self._prefix, b""
        self.session._queue(prefix + encode_header(TYPE_WINDOW_UPDATE, FLAG_FIN, self.stream_id, 0))
        self.session._maybe_forget(self)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if not (self._reset or self._fin_sent or self.session.broken):
                self._fin_sent = True
                prefix, self._prefix = self._prefix, b""
                self.session._queue(prefix + encode_header(TYPE_WINDOW_UPDATE, FLAG_FIN, self.stream_id, 0))
            self._drop_buffer()
            self._recv_lot.unpark_all()
            self._send_lot.unpark_all()
            self.session._maybe_forget(self)
        await trio.lowlevel.checkpoint()

    def reset(self) -> None:
        """Abort the stream both ways (RST): the peer's reads and writes fail."""
        self._prefix = b""  # what was deferred is moot now
        if not (self._reset or self.session.broken):
            self.session._queue(encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, self.stream_id, 0))
        self._closed = True
        self._on_reset()
        self.session._forget(self)


class YamuxSession:
    """A yamux connection. ``run()`` reads frames until the transport ends.

    Inbound streams are handed to ``on_stream`` (synchronously, from the reader task); the
    callback must not block (start a task). ``max_streams`` bounds open streams per session:
    beyond it, a peer's new streams are reset and our :meth:`open_stream` raises LimitError.

    ``max_pending_control`` (default :data:`DEFAULT_MAX_PENDING_CONTROL`, 64 KiB) caps the
    control frames queued while the peer does not read; past it the session closes.
    ``max_pending_pongs`` (default :data:`DEFAULT_MAX_PENDING_PONGS`, 32) caps unsent pong
    answers; pings beyond it are dropped and counted in ``pongs_dropped``. ``memory`` (default
    None: no budget) is charged for every received byte a stream buffers; a frame it refuses resets
    that stream, counted in ``streams_reset_for_memory``.
    """

    # Slots: a node holds a session per connection, and over 30 attributes get each instance a
    # dict of its own (1.6 KB) where slots take 0.3 KB.
    __slots__ = (
        "_final_go_away",
        "_flushing",
        "_initial",
        "_next_id",
        "_nursery",
        "_pending",
        "_pending_pongs",
        "_reserved",
        "_run_scope",
        "_transport_can_nowait",
        "_transport_nowait",
        "_write_lot",
        "_writing",
        "broken",
        "close_reason",
        "closed",
        "go_away_code",
        "go_away_received",
        "is_client",
        "max_pending_control",
        "max_pending_pongs",
        "max_streams",
        "memory",
        "on_stream",
        "peer_id",
        "pongs_dropped",
        "streams",
        "streams_reset_for_memory",
        "transport",
        "window",
    )

    def __init__(
        self,
        transport: trio.abc.Stream,
        *,
        is_client: bool,
        on_stream: Callable[[YamuxStream], None] | None = None,
        max_streams: int = 512,
        window: int = DEFAULT_WINDOW,
        peer_id: PeerId | None = None,
        initial: bytes = b"",
        max_pending_control: int = DEFAULT_MAX_PENDING_CONTROL,
        max_pending_pongs: int = DEFAULT_MAX_PENDING_PONGS,
        memory: MemoryBudget | None = None,
    ) -> None:
        self.transport = transport
        self._initial = initial
        self.is_client = is_client
        self.on_stream = on_stream
        self.max_streams = max_streams
        self.peer_id = peer_id
        self.streams: dict[int, YamuxStream] = {}
        self._next_id = 1 if is_client else 2
        self._pending = bytearray()
        # A task that writes what is queued, started when something is (an idle connection keeps
        # no task for it: a monitor holds a thousand).
        self._flushing = False
        self._nursery: trio.Nursery | None = None
        if max_pending_control < HEADER_SIZE:
            raise ConfigError(f"max_pending_control must hold at least one frame ({HEADER_SIZE} bytes)")
        self.max_pending_control = max_pending_control
        self.max_pending_pongs = max_pending_pongs
        self._pending_pongs = 0  # pong frames in _pending
        self.pongs_dropped = 0
        self.memory = memory
        self._reserved = 0  # bytes this session's streams hold reserved in memory
        self.streams_reset_for_memory = 0
        if window < INITIAL_WINDOW:
            raise ConfigError(f"yamux windows are at least {INITIAL_WINDOW} bytes")
        self.window = window
        # A flag and a parking lot rather than trio.Lock: the lock yields to the scheduler even
        # when nobody holds it, one extra task switch on every frame (every ping) we send.
        self._writing = False
        self._write_lot = trio.lowlevel.ParkingLot()
        # The transport's synchronous write (pnet or Noise on TCP; see physarum.nowait), if any.
        self._transport_nowait: Callable[[bytes], None] | None = getattr(transport, "send_nowait", None)
        self._transport_can_nowait: Callable[[], bool] | None = getattr(transport, "can_send_nowait", None)
        self.broken = False
        self.go_away_received = False
        self.go_away_code: int | None = None
        """The error code of the peer's GoAway (e.g. GO_AWAY_GARBAGE_COLLECTED), None until one came."""
        self.closed = trio.Event()
        self.close_reason: BaseException | str | None = None
        self._run_scope: trio.CancelScope | None = None
        self._final_go_away: int | None = None  # GoAway code run() writes on its way out

    # -- writing --

    def _queue(self, frame: bytes) -> None:
        if self.broken:
            return
        if len(self._pending) + len(frame) > self.max_pending_control:
            self._overflow()
            return
        self._pending += frame
        self._start_flusher()

    def _overflow(self) -> None:
        """The peer let ``max_pending_control`` bytes of our control frames pile up: it is not
        reading. Close rather than buffer more."""
        log.info(
            "yamux: closing connection to %s: over %d bytes of control frames unsent, it is not reading",
            self.peer_id,
            self.max_pending_control,
        )
        if not self._writing:
            # No frame is half written, so a GoAway can still go out cleanly.
            self._final_go_away = GO_AWAY_INTERNAL_ERROR
        self._break(
            LimitError(
                f"over {self.max_pending_control} bytes of control frames unsent to {self.peer_id}",
                limit=self.max_pending_control,
            )
        )

    def _send_nowait(self, frame: bytes) -> None:
        """Write ``frame`` (after the queued control frames) to the transport without waiting when
        nothing else is being written and the transport can; else queue it for the flusher."""
        can = self._transport_can_nowait
        if self._writing or can is None or not can():
            if len(self._pending) + len(frame) > self.max_pending_control:
                raise trio.WouldBlock  # the connection is backed up: the caller waits or gives up
            self._queue(frame)
            return
        if self._pending:
            frame = bytes(self._pending) + frame
            self._pending = bytearray()
            self._pending_pongs = 0
        assert self._transport_nowait is not None
        try:
            self._transport_nowait(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._break(e)
            raise trio.BrokenResourceError(f"connection to {self.peer_id} is broken") from e
        if self._transport_unsent():
            self._start_flusher()  # the kernel took part of it: the flusher sends the rest

    def _transport_unsent(self) -> bool:
        return bool(self._transport_nowait is not None and getattr(self.transport, "unsent", 0))

    async def _write(self, frame: bytes | bytearray) -> None:
        if self.broken:
            raise trio.BrokenResourceError(f"connection to {self.peer_id} is broken")
        while self._writing:
            await self._write_lot.park()
            if self.broken:
                raise trio.BrokenResourceError(f"connection to {self.peer_id} is broken")
        self._writing = True
        try:
            if self._pending:
                frame = self._pending + frame
                self._pending = bytearray()
                self._pending_pongs = 0
            if frame:
                await self.transport.send_all(frame)  # after what send_nowait left, if anything
            elif self._transport_unsent():
                await self.transport.flush()  # type: ignore[attr-defined]
            while self._pending:
                chunk, self._pending = self._pending, bytearray()
                self._pending_pongs = 0
                await self.transport.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self._break(e)
            raise trio.BrokenResourceError(f"connection to {self.peer_id} is broken") from e
        except trio.Cancelled:
            # A write cut short leaves half a frame on the wire: the session is unusable.
            self._break("a write was cancelled mid-frame")
            raise
        finally:
            self._writing = False
            self._write_lot.unpark()

    @asynccontextmanager
    async def hold_writes(self) -> AsyncIterator[None]:
        """Hold the session's turn to write, so bytes written below it land between whole frames
        (tests forge frames this way)."""
        while self._writing:
            await self._write_lot.park()
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
            self._write_lot.unpark()

    def _start_flusher(self) -> None:
        if not self._flushing and self._nursery is not None:
            self._flushing = True
            self._nursery.start_soon(self._flusher)

    async def _flusher(self) -> None:
        try:
            while (self._pending or self._transport_unsent()) and not self.broken:
                await self._write(b"")
        except trio.BrokenResourceError:
            return
        finally:
            self._flushing = False

    # -- opening --

    async def open_stream(self) -> YamuxStream:
        """Open a new outbound stream (its SYN rides ahead of the first write).

        Raises:
            LimitError: ``max_streams`` streams are already open.
            trio.BrokenResourceError: the session is closed or the peer sent GoAway.
        """
        await trio.lowlevel.checkpoint()
        if self.broken or self.go_away_received:
            raise trio.BrokenResourceError(f"connection to {self.peer_id} is closing")
        if len(self.streams) >= self.max_streams:
            raise LimitError(f"{self.max_streams} streams already open to {self.peer_id}", limit=self.max_streams)
        stream_id = self._next_id
        if stream_id >= 1 << 32:
            raise trio.BrokenResourceError("yamux stream ids exhausted")
        self._next_id += 2
        stream = YamuxStream(self, stream_id)
        self.streams[stream_id] = stream
        self._queue(encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN, stream_id, self.window - INITIAL_WINDOW))
        return stream

    def _forget(self, stream: YamuxStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]

    def _maybe_forget(self, stream: YamuxStream) -> None:
        if stream._fin_sent and stream._fin_received:
            self._forget(stream)

    # -- reading --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and dispatch frames until the connection ends; then every stream is broken.

        Protocol violations send GoAway(protocol error) and end the session; they are logged,
        never raised, since they are the peer's fault.
        """
        async with trio.open_nursery() as nursery:
            self._run_scope = nursery.cancel_scope
            self._nursery = nursery
            if self._pending:  # queued before the session ran (a stream opened early)
                self._start_flusher()
            task_status.started()
            try:
                await self._read_loop()
            except ProtocolError as e:
                log.info("yamux: closing connection to %s: %s", self.peer_id, e.reason)
                await self._go_away(GO_AWAY_PROTOCOL_ERROR)
                self._break(e)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._break(e)
            else:
                self._break("the peer closed the connection")
            finally:
                nursery.cancel_scope.cancel()
                self._break("the session ended")
                with trio.CancelScope(shield=True):
                    if self._final_go_away is not None:
                        await self._write_final_go_away(self._final_go_away)
                    await trio.aclose_forcefully(self.transport)
                # The reason stays (the host logs it), its tracebacks go: their frames hold this
                # session (run's self), a cycle that would keep it, its buffers and socket until a
                # full collection.
                _drop_tracebacks(self.close_reason)

    async def _write_final_go_away(self, code: int) -> None:
        """GoAway on a session already broken, when no frame is half written; best effort."""
        if self._writing:
            return
        self._writing = True
        try:
            with trio.move_on_after(GO_AWAY_TIMEOUT):
                await self.transport.send_all(encode_header(TYPE_GO_AWAY, 0, 0, code))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._writing = False

    def _break(self, reason: BaseException | str) -> None:
        if self.broken:
            return
        self.broken = True
        self.close_reason = reason
        if self.memory is not None and self._reserved:
            # Every stream's reservation at once; streams skip their own releases from now on.
            # Data already buffered stays readable: a peer's last message before it hung up.
            self.memory.release(self._reserved)
            self._reserved = 0
        streams = list(self.streams.values())
        for stream in streams:
            stream._recv_lot.unpark_all()
            stream._send_lot.unpark_all()
        self.streams.clear()
        self._pending.clear()
        self._pending_pongs = 0
        self._write_lot.unpark_all()
        self._nursery = None  # nothing is flushed any more
        self.closed.set()
        if self._run_scope is not None:
            # Stop reading too: frames after the break must not open streams or queue answers.
            self._run_scope.cancel()
        for stream in streams:
            if stream._watcher is not None:
                stream._watcher()

    async def _read_loop(self) -> None:
        buf: bytes | bytearray = bytearray()
        receive = self.transport.receive_some
        data: bytes | bytearray = self._initial  # read ahead by the negotiation before us
        self._initial = b""
        while True:
            if not data:
                data = await receive(MAX_DATA_FRAME + HEADER_SIZE)
                if not data:
                    return
            # Parse straight from what was read when nothing is left over from before.
            if buf:
                buf += data
            else:
                buf = data
            data = b""
            pos = 0
            end = len(buf)
            while end - pos >= HEADER_SIZE and not self.broken:
                try:
                    header = decode_header(buf, pos)
                except DecodeError as e:
                    raise ProtocolError(e.reason, peer_id=self.peer_id) from e
                if header.type == TYPE_DATA:
                    if end - pos - HEADER_SIZE < header.length:
                        if header.length > self.window:
                            # No window we grant is ever larger: refuse before buffering it.
                            raise ProtocolError(f"data frame of {header.length} bytes", peer_id=self.peer_id)
                        break
                    body = bytes(buf[pos + HEADER_SIZE : pos + HEADER_SIZE + header.length])
                    pos += HEADER_SIZE + header.length
                    self._handle(header, body)
                else:
                    pos += HEADER_SIZE
                    self._handle(header, b"")
            if isinstance(buf, bytearray):
                del buf[:pos]
            else:
                buf = bytearray(buf[pos:])

    def _handle(self, header: Header, body: bytes) -> None:
        type_, flags, stream_id, length = header
        if type_ == TYPE_PING:
            if flags & FLAG_SYN:
                if self._pending_pongs >= self.max_pending_pongs:
                    self.pongs_dropped += 1
                else:
                    self._pending_pongs += 1
                    self._queue(encode_header(TYPE_PING, FLAG_ACK, 0, length))
            return
        if type_ == TYPE_GO_AWAY:
            self.go_away_received = True
            self.go_away_code = length
            if length not in (GO_AWAY_NORMAL, GO_AWAY_GARBAGE_COLLECTED):
                log.info("yamux: %s sent GoAway with error code %d", self.peer_id, length)
            return
        if stream_id == 0:
            raise ProtocolError("data or window frame on stream 0", peer_id=self.peer_id)
        stream = self.streams.get(stream_id)
        if flags & FLAG_SYN:
            if stream is not None:
                raise ProtocolError(f"SYN for open stream {stream_id}", peer_id=self.peer_id)
            if (stream_id % 2 == 1) == self.is_client:
                raise ProtocolError(f"peer opened stream {stream_id} with our parity", peer_id=self.peer_id)
            if len(self.streams) >= self.max_streams or self.go_away_received or self.on_stream is None:
                self._queue(encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0))
                return
            stream = YamuxStream(self, stream_id)
            self.streams[stream_id] = stream
            # The ACK (and our larger window) rides with the stream's first frame: see _prefix.
            stream._prefix = encode_header(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, self.window - INITIAL_WINDOW)
            self.on_stream(stream)
        if stream is None:
            # A stream we already forgot (closed, reset): late frames are harmless.
            return
        if type_ == TYPE_WINDOW_UPDATE:
            if length:
                stream._on_window(length)
        else:
            if length > stream._recv_window:
                raise ProtocolError(
                    f"stream {stream_id} sent {length} bytes past its window of {stream._recv_window}",
                    peer_id=self.peer_id,
                )
            stream._recv_window -= length
            if stream._closed:
                # We closed it for reading: say so once rather than buffer what nobody will read.
                if length and not flags & FLAG_FIN:
                    stream.reset()
                    return
            elif body:
                memory = self.memory
                if memory is not None:
                    n = len(body)
                    if not memory.try_reserve(n):
                        self._reset_for_memory(stream, n)
                        return
                    stream._reserved += n
                    self._reserved += n
                stream._on_data(body)
        if flags & FLAG_RST:
            stream._on_reset()
            self._forget(stream)
        elif flags & FLAG_FIN:
            stream._on_fin()
            self._maybe_forget(stream)
        if stream._watcher is not None and (body or flags & (FLAG_RST | FLAG_FIN)):
            stream._watcher()

    def _reset_for_memory(self, stream: YamuxStream, n: int) -> None:
        self.streams_reset_for_memory += 1
        log.debug(
            "yamux: resetting stream %d from %s: %d more bytes do not fit its memory budget %r",
            stream.stream_id,
            self.peer_id,
            n,
            self.memory,
        )
        # Reset it as the peer would have: the application's reads and writes fail (Broken, not
        # Closed: it did not close the stream itself).
        stream._reset_reason = "was reset: its data went over the connection's memory budget"
        self._queue(encode_header(TYPE_WINDOW_UPDATE, FLAG_RST, stream.stream_id, 0))
        stream._on_reset()
        self._forget(stream)
        if stream._watcher is not None:
            stream._watcher()

    async def _go_away(self, code: int) -> None:
        """Tell the peer we are leaving, best effort: at most a second, even when cancelled."""
        self._queue(encode_header(TYPE_GO_AWAY, 0, 0, code))
        with trio.move_on_after(GO_AWAY_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self._write(b"")
            except trio.BrokenResourceError:
                pass

    async def aclose(self, code: int = GO_AWAY_NORMAL) -> None:
        """Say GoAway (with ``code``) and close the connection; every stream breaks."""
        if not self.broken:
            await self._go_away(code)
            self._break("closed locally")
        await trio.aclose_forcefully(self.transport)
