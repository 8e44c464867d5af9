"""The ping monitor: ping every connected peer on an interval and export the RTTs for Prometheus.

This is PhysarumSM's ping-monitor behaviour (its metric names and labels are kept, see
:mod:`physarum.monitor.metrics`) with these decisions, each of which a test pins down:

* **One task sends every ping; the connection's reader takes every echo.** Each connected peer is
  pinged right after it connects, then every ``interval`` seconds on its own schedule, so pings to
  different peers spread over the interval in the order peers joined (not all 1,000 at the same
  instant: peers that share a host, as in namespaced tests or many pods on one node, would answer
  such a burst one after another and every RTT would include that queue; measured in the README).
  Pings due within 0.1% of the interval of each other go out together. A ping slower than the
  interval delays that peer's next one (missed ticks are skipped, never bunched); it never delays
  other peers. Per ping there is no task, timer or cancel scope: one system call sends it (see
  :mod:`physarum.nowait`) and the echo is taken by the stream's watcher in the connection's reader
  task (PhysarumSM pings every peer each second from one loop too). Opening a stream, rare, runs in
  a task of its own.
* **Each ping has its own deadline** (``timeout``, from the moment its stream is opened or, on an
  open stream, from the moment it is sent). A timeout, a broken stream, a bad echo, a peer without
  the ping protocol, a peer that stopped reading its ping stream: each is counted in
  ``physarum_ping_failures_total{reason}`` and logged at debug level; nothing a peer does stops
  the pinging.
* **One ping stream per peer, reused.** js-libp2p accepts at most 2 inbound ping streams per
  connection (py-libp2p similar) and go/js count opened streams, so a new stream per ping would also
  cost a multistream round trip each time. The stream is opened lazily, reused while it works, and
  replaced when it fails. js-libp2p aborts an inbound ping stream 10 s after it was opened, so when a
  *reused* stream turns out to be closed or reset while a ping is in flight, the ping is sent again
  on a fresh stream (within the same deadline) before it counts as a failure. A failed stream is
  reset (a late echo must never be read as the next answer); when the monitor stops, streams are
  closed with FIN so the responder sees a clean end of stream.
* **RTT** is taken as close to the socket as the stack allows: from just before the ping's bytes
  are encrypted and written to the socket to the moment the echo reached this node's socket, by the
  kernel's arrival stamp (``SO_TIMESTAMPNS``, see :mod:`physarum.nowait`; wall clock at both ends).
  It includes the peer's whole stack and the kernel both ways; not stream negotiation, and not the
  time this process took to notice the socket was readable, read and decrypt (a monitor busy with
  1,000 peers would otherwise add its own queueing to every peer's RTT). Where the transport has no
  such socket (WebSocket, TLS, memory streams in tests), or the wall clock was stepped between the
  two ends, the RTT ends when the reader has decrypted the echo, on ``trio.current_time()`` (tests
  run on trio's ``autojump_clock``). When the connection is busy writing something else the ping
  waits in its queue, and that wait is counted (it is that connection's latency at that moment).
* **EWMA**: ``ewma = 0.1 * sample + 0.9 * ewma``, initialised by the first sample. It survives single
  failed pings on a live connection (a lost ping says nothing new about the path's latency) and is
  reset when the peer's last connection closes (a new connection may take another path).
* **No stale RTTs**: ``ping_rtt`` and ``ping_ewma_rtt`` of a peer are removed as soon as one of its pings
  fails or its last connection closes, and come back with the next successful ping; meanwhile
  ``physarum_peer_reachable`` is 0. ``ping_rtt`` therefore always shows an RTT measured on a
  connection that answered its latest ping; at most ``timeout`` seconds can pass while a ping that
  will fail is still in flight.
* **Expiry**: a peer is *seen* while it is connected and whenever it answers a ping. One that has
  not been seen for ``expiry`` seconds (default 600, PhysarumSM's 10 minutes) loses every series it
  still has. A connected peer that keeps failing pings is still seen: it keeps ``reachable 0`` and a
  growing failure count, which is what an operator needs to see.
* **Only established peers leave series behind.** ``peer find``, ``peer publish`` and other one-shot
  programs connect with a fresh identity, stay a second and go; so can a thousand throwaway identities.
  A peer is *established* once it has told us a listen address (in identify: a node others may dial,
  checked at connect, at each ping and at disconnect) **and** has answered a ping at least
  ``established_after`` seconds (default 30) after its connection began; it stays established until
  it expires. When the last connection of a peer that is not established closes, every series of it
  goes at once: a brief visitor, or a peer that never answered, leaves nothing behind, and pages
  nobody who alerts on unreachable peers. When an established peer leaves, its RTT gauges go at once,
  its histogram and failure counters after ``grace`` seconds (default 60: a scrape at Prometheus'
  default 1-minute interval still sees their final values), and ``physarum_peer_reachable 0`` stays
  until it expires: that is the series an alert on a lost node needs. While connected, every peer is
  pinged alike.
* **At most ``max_peer_series`` peers have per-peer series** (default 2,000: some 4.9 MB of exposition,
  twice the 0.3-0.4 s it takes to render that of 1,000 peers). A peer that connects when the limit is reached takes the slot of the peer
  that departed longest ago (its remaining series go early: counted as ``evicted``); if every slot
  belongs to a connected peer, the newcomer is pinged and counted in the aggregates
  (``physarum_peers_connected``, ``physarum_peers_reachable``, ``physarum_pings_total``) but gets no
  series of its own (counted as ``limit``) until a slot frees up (checked at every sweep, longest
  connected first). Connected peers are never evicted: an attacker's identities cannot push an honest
  peer's series out while it is up.
* Connections come and go through the host's ``on_connect``/``on_disconnect`` callbacks; a sweep
  every ``interval`` also reconciles workers with ``host.connected_peers()`` and runs expiry, so a
  missed callback costs at most one interval. The monitor never dials or disconnects anyone.
* **Memory comes back after a crowd leaves.** The sweep also runs a
  :class:`~physarum.monitor.reclaim.MemoryReclaimer` (a full garbage collection, then glibc's
  ``malloc_trim``) once at least ``reclaim_after`` peers (default 64), and at least as many as are
  still connected, have left since it last ran and the crowd is gone (fewer than that many left in
  the last second), at most every ``reclaim_interval`` seconds (default 5); see
  :mod:`physarum.monitor.reclaim` for why and what it costs.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import inf
from typing import Protocol, TypeVar

import base58
import trio
from prometheus_client import CollectorRegistry

from physarum.errors import ConfigError, LimitError, NegotiationError, ProtocolError
from physarum.monitor.metrics import MonitorMetrics
from physarum.monitor.reclaim import RECLAIM_AFTER, RECLAIM_INTERVAL, MemoryReclaimer
from physarum.nowait import DirectSocket
from physarum.overlay import ping
from physarum.overlay.identity import PeerId

log = logging.getLogger(__name__)

# Ping payloads only need to differ from one ping to the next (the stream is encrypted): a system
# call for each (os.urandom) would be one more per ping. Seeded from os.urandom.
_random = random.Random()

#: PhysarumSM's EWMA factor: weight of the newest sample.
EWMA_ALPHA = 0.1

#: Seconds into a connection after which a listening peer's answered ping makes it established.
ESTABLISHED_AFTER = 30.0

#: Seconds a departed established peer keeps its histogram and failure counters.
GRACE = 60.0

#: Peers that may have per-peer series at once (each has about 22: 4.9 MB of exposition for 2,000).
MAX_PEER_SERIES = 2000


class ListenInfo(Protocol):
    """What the monitor reads of a peer's identify message (:class:`physarum.overlay.identify.IdentifyInfo`)."""

    @property
    def listen_addrs(self) -> Sequence[object]: ...


class PingConnection(Protocol):
    """What the monitor needs of a connection (:class:`physarum.overlay.host.Connection` is one).

    ``identify_info`` is None until the peer's identify message arrived (and stays None if it never
    does). Its streams are driven without a task (see :class:`PingStream`) and reset when abandoned."""

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def identify_info(self) -> ListenInfo | None: ...

    async def open_stream(self, protocols: Sequence[str]) -> PingStream: ...


class PingStream(ping.DrivenStream, Protocol):
    """A ping stream the monitor drives from the connection's reader (a yamux stream is one)."""

    async def aclose(self) -> None: ...


ConnectionCallback = Callable[[PingConnection], None]
"""What the monitor registers in the host's ``on_connect`` and ``on_disconnect``."""

_Callback = TypeVar("_Callback", contravariant=True)


class CallbackList(Protocol[_Callback]):
    """Where callbacks are registered: a ``list`` of callbacks taking the host's own connection type
    (which is a :class:`PingConnection`) accepts the monitor's, which take any ``PingConnection``."""

    def append(self, callback: _Callback, /) -> None: ...
    def remove(self, callback: _Callback, /) -> None: ...


class MonitoredHost(Protocol):
    """What the monitor needs of a host (:class:`physarum.overlay.host.Host` is one)."""

    @property
    def on_connect(self) -> CallbackList[ConnectionCallback]: ...

    @property
    def on_disconnect(self) -> CallbackList[ConnectionCallback]: ...

    def connected_peers(self) -> list[PeerId]: ...
    def connection(self, peer_id: PeerId) -> PingConnection | None: ...


@dataclass
class PeerStats:
    """What the monitor knows of one peer. Read it from :attr:`PingMonitor.peers`; don't mutate it."""

    peer_id: PeerId
    label: str
    connected: bool = False
    reachable: bool = False
    last_seen: float = 0.0
    last_rtt: float | None = None
    """Seconds; None before the first success and after the peer disconnects."""
    ewma_ms: float | None = None
    successes: int = 0
    last_success_at: float | None = None
    failures: int = 0
    streams_opened: int = 0
    """Ping streams opened to the peer (one is reused while it works)."""
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    listening: bool = False
    """The peer told us a listen address (in identify): a node others may dial."""
    connected_since: float = 0.0
    """When its current (or last) run of connections began."""
    established: bool = False
    """It listens and answered a ping ``established_after`` seconds into a connection: it keeps
    ``physarum_peer_reachable 0`` until it expires once it leaves. Others are forgotten as they leave."""
    tracked: bool = False
    """It has per-peer series (at most ``max_peer_series`` peers do)."""
    history_until: float | None = None
    """A departed established peer: when its histogram and failure counters go."""


class _Pinger:
    """The pinging state of one connected peer: its stream, the ping in flight, when the next is due."""

    __slots__ = (
        "deadline", "direct", "due", "echo", "fresh", "opening", "payload", "sent_at", "sent_wall", "stats",
        "stopped", "stream",
    )  # fmt: skip

    def __init__(self, stats: PeerStats, due: float) -> None:
        self.stats = stats
        self.stream: PingStream | None = None
        self.fresh = True  # the stream has not echoed yet: a failure on it is not retried
        self.opening = False  # a task is opening a stream (and will send the ping on it)
        self.stopped = False  # the peer disconnected: nothing more is recorded
        self.payload: bytes | None = None  # the ping in flight
        self.echo = b""
        self.sent_at = 0.0
        # The socket under the stream when the kernel stamps its arrivals: the echo's arrival time
        # then ends the RTT, against ``sent_wall`` (time.time() when the ping was written).
        self.direct: DirectSocket | None = None
        self.sent_wall = 0.0
        self.deadline = 0.0
        self.due = due


class _PingFailed(Exception):
    def __init__(self, reason: str, detail: object) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = str(detail)


class PingMonitor:
    """Ping every connected peer of ``host`` every ``interval`` seconds; export RTTs on ``registry``.

    Args:
        host: a running host (or anything shaped like :class:`MonitoredHost`).
        registry: where the metrics go (see :mod:`physarum.monitor.metrics`); never the global one.
        hostname: the ``host`` label of the PhysarumSM gauges (this node's name).
        interval: seconds between two pings of the same peer.
        timeout: deadline of one ping, including opening its stream if needed.
        expiry: seconds an established peer may go unseen before all its series are removed.
        established_after: seconds into a connection after which a ping answered by a peer that listens
            makes it established (see above); 0: its first answer does.
        grace: seconds a departed established peer keeps its histogram and failure counters.
        max_peer_series: peers that may have per-peer series at once.
        peer_histograms: give each peer an RTT histogram of its own (``physarum_ping_rtt_seconds{peer}``,
            19 lines a peer in every scrape); the histogram of all peers together is always there.
        reclaim_after: departures after which the sweep gives memory back (see above); 0 never does.
        reclaim_interval: seconds between two such reclaims at least.

    Raises:
        ConfigError: a non-positive interval, timeout, expiry or max_peer_series, a negative grace,
            established_after, reclaim_after or reclaim_interval, or metrics already on ``registry``.
    """

    def __init__(
        self,
        host: MonitoredHost,
        registry: CollectorRegistry,
        *,
        hostname: str,
        interval: float = 1.0,
        timeout: float = 5.0,
        expiry: float = 600.0,
        established_after: float = ESTABLISHED_AFTER,
        grace: float = GRACE,
        max_peer_series: int = MAX_PEER_SERIES,
        peer_histograms: bool = False,
        reclaim_after: int = RECLAIM_AFTER,
        reclaim_interval: float = RECLAIM_INTERVAL,
    ) -> None:
        for name, value in (
            ("interval", interval),
            ("timeout", timeout),
            ("expiry", expiry),
            ("max_peer_series", max_peer_series),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        for name, value in (
            ("established_after", established_after),
            ("grace", grace),
            ("reclaim_after", reclaim_after),
            ("reclaim_interval", reclaim_interval),
        ):
            if not value >= 0:
                raise ConfigError(f"{name} must not be negative, got {value}")
        self.host = host
        self.hostname = hostname
        self.interval = interval
        self.timeout = timeout
        self.expiry = expiry
        self.established_after = established_after
        self.grace = grace
        self.max_peer_series = max_peer_series
        self.metrics = MonitorMetrics(registry, hostname=hostname, peer_histograms=peer_histograms)
        self.reclaimer = MemoryReclaimer(after=reclaim_after, min_interval=reclaim_interval)
        self.peers: dict[PeerId, PeerStats] = {}
        self._pingers: dict[PeerId, _Pinger] = {}
        self._due: list[tuple[float, int, _Pinger]] = []  # heap: when each peer's next ping is due
        self._deadlines: list[tuple[float, int, _Pinger]] = []  # heap: deadlines of pings in flight
        self._order = 0  # tie-breaker in both heaps
        self._wakeup = trio.Event()  # a ping is due, or a deadline comes, before _asleep_until
        self._asleep_until = -inf
        # Pings due within this much of the first are sent with it: fewer wake-ups, and a send
        # early by 0.1% of the interval moves no later ping (the schedule keeps its phase).
        self._slack = interval / 1000
        self._nursery: trio.Nursery | None = None
        self._tracked: set[PeerId] = set()
        # Departed peers that still have series, in the order they left: the first is evicted first.
        self._departed: dict[PeerId, None] = {}
        self._reachable = 0  # connected peers whose last ping succeeded

    # -- lifecycle --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Monitor until cancelled. Reports started once workers exist for the peers already connected.

        On exit every ping stream is closed (FIN) and the host callbacks are removed; the metrics stay
        registered (a stopped monitor's last values are still scraped unless the caller drops them).
        """
        self.host.on_connect.append(self._on_connect)
        self.host.on_disconnect.append(self._on_disconnect)
        # Identify may complete after the last ping and the sweep may see the disconnection before
        # on_disconnect runs: learn that a peer listens the moment its identify arrives.
        on_identify = getattr(self.host, "on_identify", None)
        if isinstance(on_identify, list):
            on_identify.append(self._note_listening)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._reconcile()
                nursery.start_soon(self._pinging)
                task_status.started()
                while True:
                    await trio.sleep(self.interval)
                    self.sweep()
        finally:
            self._nursery = None
            pingers = list(self._pingers.values())
            self._pingers.clear()
            self._due.clear()
            self._deadlines.clear()
            with trio.CancelScope(shield=True):
                for pinger in pingers:
                    pinger.stopped = True
                    if pinger.stream is not None:
                        stream, pinger.stream = pinger.stream, None
                        stream.set_watcher(None)
                        await _close(stream)
            _remove(self.host.on_connect, self._on_connect)
            _remove(self.host.on_disconnect, self._on_disconnect)
            if isinstance(on_identify, list):
                _remove(on_identify, self._note_listening)

    def sweep(self) -> None:
        """Reconcile workers with the host's connections; end the grace of departed peers; expire peers
        unseen for ``expiry``; give series to connected peers left without while there is room; give
        memory back if enough peers left."""
        self._reconcile()
        now = trio.current_time()
        for peer in list(self._departed):
            stats = self.peers[peer]
            if now - stats.last_seen >= self.expiry:
                log.debug("forgetting %s: unseen for %.0f s", stats.label, now - stats.last_seen)
                self._forget(stats)
            elif stats.history_until is not None and now >= stats.history_until:
                stats.history_until = None
                self.metrics.forget_history(stats.label)
        if len(self._tracked) < self.max_peer_series:
            waiting = [s for s in self.peers.values() if s.connected and not s.tracked]
            waiting.sort(key=lambda s: s.connected_since)
            for stats in waiting[: self.max_peer_series - len(self._tracked)]:
                self._track(stats)
        self.metrics.series_peers.set(len(self._tracked))
        self.reclaimer.maybe_reclaim(now, len(self._pingers))

    # -- connections --

    def _on_connect(self, conn: PingConnection) -> None:
        self._peer_changed(conn.peer_id)
        self._note_listening(conn)
        self.metrics.set_peers_connected(len(self._pingers))

    def _on_disconnect(self, conn: PingConnection) -> None:
        self._note_listening(conn)  # before the worker stops: its identify may have come in meanwhile
        self._peer_changed(conn.peer_id)
        self.metrics.set_peers_connected(len(self._pingers))

    def _note_listening(self, conn: PingConnection | None) -> None:
        """Mark the peer of ``conn`` as listening if its identify message gave a listen address."""
        if conn is None:
            return
        stats = self.peers.get(conn.peer_id)
        if stats is None or stats.listening:
            return
        info = conn.identify_info
        if info is not None and len(info.listen_addrs) > 0:
            stats.listening = True

    def _reconcile(self) -> None:
        # In the host's order, not a set's: which peers get series first when the limit is reached
        # must not depend on hashing.
        peers = self.host.connected_peers()
        connected = set(peers)
        for peer in [*peers, *(p for p in self._pingers if p not in connected)]:
            self._peer_changed(peer, peer in connected)
        self.metrics.set_peers_connected(len(connected))

    def _peer_changed(self, peer: PeerId, connected: bool | None = None) -> None:
        if connected is None:
            connected = self.host.connection(peer) is not None
        if connected and peer not in self._pingers:
            self._start_worker(peer)
        elif not connected and peer in self._pingers:
            self._stop_worker(peer)

    def _start_worker(self, peer: PeerId) -> None:
        if self._nursery is None:
            return
        now = trio.current_time()
        stats = self.peers.get(peer)
        if stats is None:
            stats = self.peers[peer] = PeerStats(peer, _label(peer))
        stats.connected = True
        stats.connected_since = now
        stats.last_seen = now
        stats.history_until = None
        self._departed.pop(peer, None)
        if not stats.tracked and not self._make_room():
            self.metrics.peers_dropped.labels("limit").inc()
            log.debug("%s gets no per-peer series: %d peers have them", stats.label, len(self._tracked))
        else:
            self._track(stats)
        pinger = self._pingers[peer] = _Pinger(stats, now)
        self._schedule(pinger)
        self._wakeup.set()

    def _stop_worker(self, peer: PeerId) -> None:
        pinger = self._pingers.pop(peer)
        pinger.stopped = True
        if pinger.stream is not None:  # the connection is gone or going: nothing to say on it
            stream, pinger.stream = pinger.stream, None
            stream.set_watcher(None)
            stream.reset()
        now = trio.current_time()
        self.reclaimer.departed(now)
        stats = self.peers.get(peer)
        if stats is None:
            return
        self._set_reachable(stats, False)
        self._check_established(stats, now)
        if not stats.established or not stats.tracked:
            log.debug("forgetting %s: disconnected, not established", stats.label)
            self._forget(stats)
            return
        stats.connected = False
        stats.last_seen = now
        stats.last_rtt = None
        stats.ewma_ms = None
        stats.history_until = now + self.grace
        self._departed[peer] = None
        self.metrics.unreachable(stats.label)

    # -- per-peer series --

    def _track(self, stats: PeerStats) -> None:
        """Give ``stats`` per-peer series (they appear with its next ping); the caller checked for room."""
        if not stats.tracked:
            stats.tracked = True
            self._tracked.add(stats.peer_id)
            self.metrics.series_peers.set(len(self._tracked))

    def _make_room(self) -> bool:
        """True if a peer may get per-peer series, after evicting the peer that departed longest ago if
        the limit is reached; False if every slot belongs to a connected peer."""
        if len(self._tracked) < self.max_peer_series:
            return True
        if not self._departed:
            return False
        oldest = self.peers[next(iter(self._departed))]
        log.debug("forgetting %s early: %d peers have series", oldest.label, len(self._tracked))
        self.metrics.peers_dropped.labels("evicted").inc()
        self._forget(oldest)
        return True

    def _forget(self, stats: PeerStats) -> None:
        """Remove every series of ``stats`` and the monitor's record of it."""
        if stats.tracked:
            self.metrics.forget(stats.label)
            self._tracked.discard(stats.peer_id)
            self.metrics.series_peers.set(len(self._tracked))
        self._set_reachable(stats, False)
        self._departed.pop(stats.peer_id, None)
        self.peers.pop(stats.peer_id, None)

    def _check_established(self, stats: PeerStats, now: float) -> None:
        """Mark ``stats`` established if it listens and answered a ping late enough into its connection."""
        if stats.established or not stats.listening or stats.last_success_at is None:
            return
        if stats.last_success_at - stats.connected_since >= self.established_after:
            stats.established = True

    def _set_reachable(self, stats: PeerStats, reachable: bool) -> None:
        if stats.reachable != reachable:
            stats.reachable = reachable
            self._reachable += 1 if reachable else -1
            self.metrics.peers_reachable.set(self._reachable)

    # -- pinging --
    #
    # One task sends every ping when it is due; the echo is taken by the stream's watcher, in the
    # connection's reader task, the moment it is decrypted. Per ping that is one system call to
    # send and the reader's own wake-up: no task, timer or cancel scope per peer (see the module
    # docstring for what the RTT includes). Opening a stream, rare, gets a task of its own.

    def _schedule(self, pinger: _Pinger) -> None:
        self._order += 1
        heapq.heappush(self._due, (pinger.due, self._order, pinger))

    async def _pinging(self) -> None:
        due, deadlines = self._due, self._deadlines
        while True:
            now = trio.current_time()
            sent = 0
            while due and due[0][0] <= now + self._slack:
                pinger = heapq.heappop(due)[2]
                if pinger.stopped:
                    continue
                pinger.due += self.interval
                if pinger.due <= now:  # behind (a long stall): the missed ticks are skipped
                    pinger.due += ((now - pinger.due) // self.interval + 1) * self.interval
                self._schedule(pinger)
                if pinger.payload is None and not pinger.opening:  # else still waiting: skip a tick
                    self._ping(pinger, now)
                    sent += 1
                    if sent % 16 == 0:  # let readers take echoes that already came back
                        await trio.lowlevel.checkpoint()
                        now = trio.current_time()
            while deadlines and deadlines[0][0] <= now:
                deadline, _, pinger = heapq.heappop(deadlines)
                if pinger.payload is not None and pinger.deadline == deadline and not pinger.stopped:
                    self._lost(pinger, "timeout", f"no echo within {self.timeout} s", retry=False)
            wake = min(due[0][0] if due else now + self.interval, deadlines[0][0] if deadlines else now + self.interval)
            if wake > now:
                self._asleep_until = wake
                with trio.move_on_at(wake):
                    await self._wakeup.wait()
                self._asleep_until = -inf
                self._wakeup = trio.Event()
            else:
                await trio.lowlevel.checkpoint()

    def _ping(self, pinger: _Pinger, now: float, deadline: float | None = None) -> None:
        """Send a ping on the peer's stream, or have a task open one first."""
        stats = pinger.stats
        self._note_listening(self.host.connection(stats.peer_id))
        if pinger.stream is None:
            pinger.opening = True
            assert self._nursery is not None
            self._nursery.start_soon(self._open_then_ping, pinger, now + self.timeout if deadline is None else deadline)
            return
        payload = _random.randbytes(ping.PING_SIZE)
        pinger.payload, pinger.echo = payload, b""
        pinger.deadline = now + self.timeout if deadline is None else deadline
        self._order += 1
        heapq.heappush(self._deadlines, (pinger.deadline, self._order, pinger))
        if pinger.deadline < self._asleep_until:  # sent by an opening task: wake up for its deadline
            self._wakeup.set()
        pinger.sent_at = trio.current_time()
        if pinger.direct is not None:
            pinger.sent_wall = time.time()
        try:
            pinger.stream.send_nowait(payload)
        except trio.WouldBlock:
            # The peer has not read 256 KiB of our pings: it is not answering them.
            self._lost(pinger, "timeout", "the peer does not read its ping stream", retry=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError) as e:
            self._lost(pinger, "closed", e)

    async def _open_then_ping(self, pinger: _Pinger, deadline: float) -> None:
        stream: PingStream | None = None
        try:
            with trio.fail_at(deadline):
                stream = await self._open(pinger.stats.peer_id)
        except trio.TooSlowError:
            reason, detail = "timeout", f"no stream within {self.timeout} s"
        except _PingFailed as e:
            # Its reason and detail, not the exception: kept in a local of this frame, which its
            # traceback and context hold, it would make a cycle holding the connection until a
            # full collection.
            reason, detail = e.reason, e.detail
        else:
            reason = detail = ""
        finally:
            pinger.opening = False
            if stream is not None and pinger.stopped:
                with trio.CancelScope(shield=True):
                    await _close(stream)
        if pinger.stopped:
            return
        if stream is None:
            self._record_failure(pinger.stats, reason, detail)
            return
        pinger.stats.streams_opened += 1
        pinger.stream, pinger.fresh = stream, True
        direct = getattr(stream, "direct_socket", None)
        pinger.direct = direct if direct is not None and direct.stamp_receives() else None
        stream.set_watcher(lambda: self._on_ready(pinger))
        self._ping(pinger, trio.current_time(), deadline)

    def _on_ready(self, pinger: _Pinger) -> None:
        """The stream's watcher (in the connection's reader task): take the echo, record the RTT."""
        now = trio.current_time()
        stream = pinger.stream
        if stream is None or pinger.stopped:
            return
        while True:
            try:
                data = stream.receive_nowait()
            except trio.WouldBlock:
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self._lost(pinger, "closed", e)
                return
            if not data:
                self._lost(pinger, "protocol", "ping stream ended")
                return
            payload = pinger.payload
            echo = pinger.echo = pinger.echo + data
            if payload is None or len(echo) > ping.PING_SIZE:
                self._lost(pinger, "protocol", "bytes the ping did not ask for", retry=False)
                return
            if len(echo) == ping.PING_SIZE:
                if echo != payload:
                    self._lost(pinger, "protocol", "ping echo does not match", retry=False)
                    return
                pinger.payload, pinger.echo, pinger.fresh = None, b"", False
                rtt = now - pinger.sent_at
                if pinger.direct is not None:
                    # The kernel's arrival stamp, unless the wall clock was stepped meanwhile.
                    arrived = pinger.direct.received_at - pinger.sent_wall
                    if 0.0 < arrived < rtt:
                        rtt = arrived
                self._record_success(pinger.stats, rtt)
                self._settled()

    def _settled(self) -> None:
        """A ping in flight ended before its deadline. Its entry stays in the deadline heap until then
        (5 s of pings: 5,000 entries at 1,000 peers); past twice the peers, drop the stale ones."""
        deadlines = self._deadlines
        if len(deadlines) > 64 and len(deadlines) > 2 * len(self._pingers):
            deadlines[:] = [e for e in deadlines if e[2].payload is not None and e[2].deadline == e[0]]
            heapq.heapify(deadlines)

    def _lost(self, pinger: _Pinger, reason: str, detail: object, *, retry: bool = True) -> None:
        """The peer's stream failed (``reason``) and is abandoned (a late echo must never be read as
        the next answer). A ping in flight on a stream that had answered before (js-libp2p resets
        ping streams after 10 s) is sent again on a fresh stream within its deadline; else it counts
        as failed. With no ping in flight nothing is counted: the next one opens a fresh stream."""
        stream, pinger.stream, pinger.direct = pinger.stream, None, None
        if stream is not None:
            stream.set_watcher(None)
            stream.reset()
        if pinger.payload is None or pinger.stopped:  # (a reset may end the connection at once)
            return
        pinger.payload, pinger.echo = None, b""
        if retry and not pinger.fresh:
            self._ping(pinger, trio.current_time(), pinger.deadline)
            return
        self._record_failure(pinger.stats, reason, str(detail))

    async def _open(self, peer: PeerId) -> PingStream:
        conn = self.host.connection(peer)
        if conn is None:
            raise _PingFailed("closed", "not connected")
        try:
            return await conn.open_stream([ping.PROTOCOL_ID])
        except NegotiationError as e:
            raise _PingFailed("unsupported", e) from None
        except LimitError as e:
            raise _PingFailed("limit", e) from None
        except ProtocolError as e:
            raise _PingFailed("protocol", e) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise _PingFailed("closed", e) from None

    def _record_success(self, stats: PeerStats, rtt: float) -> None:
        now = trio.current_time()
        ms = rtt * 1000.0
        stats.ewma_ms = ms if stats.ewma_ms is None else EWMA_ALPHA * ms + (1 - EWMA_ALPHA) * stats.ewma_ms
        stats.last_rtt = rtt
        stats.last_seen = stats.last_success_at = now
        stats.successes += 1
        self._set_reachable(stats, True)
        self._check_established(stats, now)
        self.metrics.ping_result("ok", rtt)
        if stats.tracked:
            self.metrics.observe(stats.label, rtt, stats.ewma_ms)

    def _record_failure(self, stats: PeerStats, reason: str, detail: str) -> None:
        log.debug("ping to %s failed: %s: %s", stats.label, reason, detail)
        stats.last_rtt = None
        stats.failures += 1
        stats.failures_by_reason[reason] = stats.failures_by_reason.get(reason, 0) + 1
        self._set_reachable(stats, False)
        self.metrics.ping_result(reason)
        if stats.tracked:
            self.metrics.failed(stats.label, reason)


def _label(peer: PeerId) -> str:
    """The peer id's text, made afresh: ``str(peer)`` goes through a process-wide cache, where every
    identity of a crowd that connected and left would keep an entry, and pin the heap pages it sits
    on (measured: 11-13 MiB of RSS kept after 900 identities left)."""
    return base58.b58encode(bytes(peer)).decode()


async def _close(stream: PingStream) -> None:
    """End a ping stream with FIN (the responder sees end of stream); reset if that fails."""
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        stream.reset()


def _remove(callbacks: CallbackList[ConnectionCallback], cb: ConnectionCallback) -> None:
    try:
        callbacks.remove(cb)
    except ValueError:
        pass


__all__ = [
    "ESTABLISHED_AFTER",
    "EWMA_ALPHA",
    "GRACE",
    "MAX_PEER_SERIES",
    "CallbackList",
    "ConnectionCallback",
    "ListenInfo",
    "MonitoredHost",
    "PeerStats",
    "PingConnection",
    "PingMonitor",
    "PingStream",
]
