"""A fake host for PingMonitor unit tests: in-memory ping streams whose echo takes a scripted time.

Everything runs on trio's clock, so with ``autojump_clock`` an RTT of 10 ms is measured as 10 ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from physarum.errors import NegotiationError
from physarum.overlay import ping
from physarum.overlay.identity import KeyPair, PeerId

OK = "ok"
HANG = "hang"  # never echoes
BAD_ECHO = "bad-echo"  # echoes other bytes
EOF = "eof"  # ends the stream instead of echoing
RESET = "reset"  # resets the stream instead of echoing
UNSUPPORTED = "unsupported"  # does not speak the ping protocol


#: A listen address as a node's identify message carries it (the monitor only counts them).
NODE_ADDRS: tuple[str, ...] = ("/ip4/192.0.2.7/tcp/4001",)


@dataclass
class FakeIdentify:
    """The part of an identify message the monitor reads."""

    listen_addrs: list[str] = field(default_factory=list)


class FakePeer:
    """A remote peer's behaviour. ``rtts``: a number, or an iterable of numbers used in turn (the last
    one repeats). ``stream_lifetime``: the responder resets a ping stream this long after it opened
    (js-libp2p does so after 10 s). ``listen_addrs``: what its identify message says (a node by default;
    ``()`` for a one-shot client); with ``identified=False`` its connections never complete identify."""

    def __init__(
        self,
        rtts: float | Iterable[float] = 0.01,
        *,
        mode: str = OK,
        stream_lifetime: float | None = None,
        listen_addrs: Sequence[str] = NODE_ADDRS,
        identified: bool = True,
        arrival: float | None = None,
    ):
        self.peer_id: PeerId = KeyPair.generate().peer_id
        self.listen_addrs = list(listen_addrs)
        self.identified = identified
        self._rtts = [rtts] if isinstance(rtts, int | float) else list(rtts)
        self._next = 0
        self.mode = mode
        self.stream_lifetime = stream_lifetime
        # Its streams sit on a socket whose kernel stamps each echo's arrival this many (wall-clock)
        # seconds after the ping was written, whatever trio's clock says (None: no such socket).
        self.arrival = arrival
        self.streams: list[FakeStream] = []
        self.echoes = 0
        self.ping_started_at: list[float] = []
        self.on_echo: Callable[[], None] | None = None
        """Called (synchronously, in the pinging task) just before an echo is returned."""
        self.on_reset: Callable[[], None] | None = None
        """Called (synchronously) when the monitor resets one of its ping streams."""

    def next_rtt(self) -> float:
        rtt = self._rtts[min(self._next, len(self._rtts) - 1)]
        self._next += 1
        return float(rtt)


class FakeDirect:
    """The socket under a stream, as far as the monitor uses it: the kernel's arrival stamps."""

    def __init__(self) -> None:
        self.received_at = 0.0
        self.stamping = False

    def stamp_receives(self) -> bool:
        self.stamping = True
        return True


class FakeStream:
    """A ping stream driven as the monitor drives yamux streams: ``send_nowait`` a ping, and the
    watcher is called when the scripted echo (or end, or reset) is due, on trio's clock."""

    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn
        self.peer = conn.peer
        self.opened_at = trio.current_time()
        self.pending = b""
        self.received = b""  # echoed, not yet taken
        self.ended = False  # the responder ended the stream (EOF)
        self.closed = False  # aclose()d: a FIN went out
        self.was_reset = False
        self.pings = 0
        self.watcher: Callable[[], None] | None = None
        self.direct_socket = FakeDirect() if self.peer.arrival is not None else None
        self.sent_wall = 0.0

    def _check(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("closed")
        if self.was_reset or self.conn.is_closed:
            raise trio.BrokenResourceError("reset")
        lifetime = self.peer.stream_lifetime
        if lifetime is not None and trio.current_time() - self.opened_at >= lifetime:
            self.was_reset = True
            raise trio.BrokenResourceError("reset by the responder (stream lifetime)")

    def set_watcher(self, watcher: Callable[[], None] | None) -> None:
        self.watcher = watcher

    def send_nowait(self, data: bytes) -> None:
        self._check()
        if not self.pending:
            self.peer.ping_started_at.append(trio.current_time())
            self.sent_wall = time.time()
        self.pending += bytes(data)
        if self.peer.mode != HANG:
            trio.lowlevel.spawn_system_task(self._answer, self.peer.next_rtt())

    async def _answer(self, rtt: float) -> None:
        await trio.sleep(rtt)
        try:
            self._check()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            if self.watcher is not None and not self.closed:
                self.watcher()
            return
        mode = self.peer.mode
        if mode == EOF:
            self.ended = True
        elif mode == RESET:
            self.was_reset = True
        else:
            data, self.pending = self.pending[: ping.PING_SIZE], self.pending[ping.PING_SIZE :]
            self.pings += 1
            self.peer.echoes += 1
            if self.peer.on_echo is not None:
                self.peer.on_echo()
            self.received += bytes(len(data)) if mode == BAD_ECHO else data
            if self.direct_socket is not None and self.peer.arrival is not None:
                self.direct_socket.received_at = self.sent_wall + self.peer.arrival
        if self.watcher is not None:
            self.watcher()

    def receive_nowait(self, max_bytes: int | None = None) -> bytes:
        if self.received:
            data, self.received = self.received, b""
            return data
        if self.closed:
            raise trio.ClosedResourceError("closed")
        if self.ended:
            return b""
        if self.was_reset or self.conn.is_closed:
            raise trio.BrokenResourceError("reset")
        raise trio.WouldBlock

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()

    def reset(self) -> None:
        self.was_reset = True
        if self.peer.on_reset is not None:
            self.peer.on_reset()


class FakeConnection:
    """Identified as soon as it exists (when the peer completes identify), like a real connection a
    moment after on_connect; tests may set ``identify_info`` later."""

    def __init__(self, peer: FakePeer) -> None:
        self.peer = peer
        self.peer_id = peer.peer_id
        self.closed = False
        self.identify_info: FakeIdentify | None = (
            FakeIdentify(list(peer.listen_addrs)) if peer.identified else None
        )

    @property
    def is_closed(self) -> bool:
        return self.closed

    async def open_stream(self, protocols: Sequence[str]) -> FakeStream:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.BrokenResourceError("connection closed")
        if self.peer.mode == UNSUPPORTED:
            raise NegotiationError(f"peer speaks none of {list(protocols)}")
        stream = FakeStream(self)
        self.peer.streams.append(stream)
        return stream


class FakeHost:
    """Connections to fake peers; fires the callbacks a real Host fires."""

    def __init__(self) -> None:
        self.on_connect: list[Callable[[FakeConnection], None]] = []
        self.on_disconnect: list[Callable[[FakeConnection], None]] = []
        self.conns: dict[PeerId, FakeConnection] = {}

    def connected_peers(self) -> list[PeerId]:
        return [p for p, c in self.conns.items() if not c.is_closed]

    def connection(self, peer_id: PeerId) -> FakeConnection | None:
        conn = self.conns.get(peer_id)
        return conn if conn is not None and not conn.is_closed else None

    def connect(self, peer: FakePeer, *, fire: bool = True) -> FakeConnection:
        conn = FakeConnection(peer)
        self.conns[peer.peer_id] = conn
        if fire:
            for cb in list(self.on_connect):
                cb(conn)
        return conn

    def disconnect(self, peer: FakePeer, *, fire: bool = True) -> None:
        conn = self.conns.pop(peer.peer_id)
        conn.closed = True
        if fire:
            for cb in list(self.on_disconnect):
                cb(conn)
