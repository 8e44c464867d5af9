"""Resource accounting: what peers may make this node hold (memory, connections, streams).

In the spirit of go-libp2p's resource manager: scopes nest (system > peer), a reservation is
made in a scope and every scope above it or not at all, and a refusal is the caller's cue to drop
the stream or connection that asked, never to wait. Nothing here starts tasks or does I/O.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

import trio

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

from physarum.errors import ConfigError

log = logging.getLogger(__name__)


class MemoryBudget:
    """Bytes a group of buffers may hold; ``parent`` (when given) bounds the group's total too.

    Reserve before buffering what a peer sent, release once it is consumed or dropped. A reservation
    either succeeds in this budget and every ancestor or changes nothing.
    """

    __slots__ = ("limit", "name", "parent", "used")

    def __init__(self, limit: int, *, parent: MemoryBudget | None = None, name: str = "") -> None:
        if limit < 0:
            raise ConfigError("a memory budget cannot be negative")
        self.limit = limit
        self.parent = parent
        self.name = name
        self.used = 0

    def try_reserve(self, n: int) -> bool:
        """Reserve ``n`` bytes here and in every ancestor; False (and nothing reserved) when any
        of them would go over its limit."""
        if n <= 0:
            return True
        scope: MemoryBudget | None = self
        while scope is not None:
            if scope.used + n > scope.limit:
                return False
            scope = scope.parent
        scope = self
        while scope is not None:
            scope.used += n
            scope = scope.parent
        return True

    def release(self, n: int) -> None:
        """Give back ``n`` bytes reserved with :meth:`try_reserve`."""
        if n <= 0:
            return
        scope: MemoryBudget | None = self
        while scope is not None:
            scope.used = max(0, scope.used - n)
            scope = scope.parent

    @property
    def available(self) -> int:
        """What :meth:`try_reserve` could still get, counting every ancestor's room."""
        room = self.limit - self.used
        scope = self.parent
        while scope is not None:
            room = min(room, scope.limit - scope.used)
            scope = scope.parent
        return max(0, room)

    def __repr__(self) -> str:
        return f"<MemoryBudget {self.name or '?'} {self.used}/{self.limit}>"


# -- limits ------------------------------------------------------------------------------------------

#: Networks exempt from the per-IP limits by default: this machine's own processes (go-libp2p
#: exempts loopback the same way). They still count against every global limit.
LOOPBACK_NETWORKS: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

#: Inbound streams one peer may hold open at once for these protocols (others:
#: ``ResourceLimits.max_inbound_streams_per_protocol``). Honest peers use one or two: the monitor
#: reuses one ping stream, js-libp2p opens one per ping, identify and push are one-shot.
DEFAULT_PROTOCOL_STREAM_LIMITS: Mapping[str, int] = MappingProxyType(
    {"/ipfs/ping/1.0.0": 8, "/ipfs/id/1.0.0": 8, "/ipfs/id/push/1.0.0": 8}
)


@dataclass(frozen=True)
class ResourceLimits:
    """Every limit of a host's resource manager, with its default.

    Connections go through two pools. A *handshake* (an inbound TCP connection until pnet, Noise and
    yamux are done) is admitted at accept, before any crypto, if fewer than ``max_handshakes`` are in
    progress and fewer than ``max_handshakes_per_ip`` from its IP (networks in ``exempt_networks``
    skip the per-IP test); when the pool is full, the oldest handshake in progress is dropped to make
    room (honest handshakes take milliseconds, so the oldest is the likeliest to be stalled). A
    handshake must show its first bytes within ``first_byte_timeout`` and finish within
    ``handshake_timeout``. Then an *established* connection needs a slot among ``max_connections``
    (both directions) and fewer than ``max_connections_per_peer`` to that peer. When
    ``max_connections`` are open, the connection manager's least valuable unprotected connection
    (inbound first, from the most crowded IP, the newest; see
    :func:`~physarum.overlay.connmgr.pick_victim`) is closed to make room, and the newcomer is
    refused only when every connection is protected: a flood of valid identities cannot lock honest
    newcomers out. The connection manager trims at its own, lower, water marks. Outbound dials in
    progress are bounded apart (``max_dials``), so inbound floods never take an outbound dial's place.

    Streams: ``max_streams_per_connection`` open at once on a connection, and a peer may hold at most
    ``protocol_stream_limits[protocol]`` (default ``max_inbound_streams_per_protocol``) inbound streams
    of one protocol at once, across its connections; a stream over it is reset. An inbound stream must
    finish negotiating its protocol within ``stream_negotiation_timeout``.

    Memory: what peers make us buffer (yamux receive buffers, partly read messages) is reserved from a
    per-peer budget of ``memory_per_peer`` bytes inside a system budget of ``memory`` bytes; a
    reservation that fails resets the stream that asked.
    """

    max_connections: int = 1024
    max_connections_per_peer: int = 8
    max_handshakes: int = 128
    max_handshakes_per_ip: int = 16
    failed_handshakes_per_ip: int = 16
    """An IP whose handshakes failed this many times (a wrong key, garbage, a timeout) within
    ``failure_window`` seconds is refused at accept, before it costs anything, until its failures
    are older than that (fail2ban's rule). No honest process fails 16 handshakes in 10 s; a flood
    of clients without the key otherwise fills the accept queue and delays honest dials."""
    failure_window: float = 10.0
    failure_exempt: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    """Networks whose failed handshakes are never held against them: this machine's own processes
    (they connect from 127.0.0.1 or ::1) must always reach their node, whatever a misconfigured
    local client did. The rest of 127.0.0.0/8 is not exempt."""
    max_dials: int = 256
    first_byte_timeout: float = 3.0
    handshake_timeout: float = 10.0
    max_streams_per_connection: int = 256
    max_inbound_streams_per_protocol: int = 32
    protocol_stream_limits: Mapping[str, int] = field(default_factory=lambda: DEFAULT_PROTOCOL_STREAM_LIMITS)
    stream_negotiation_timeout: float = 10.0
    memory: int = 256 * 1024 * 1024
    memory_per_peer: int = 16 * 1024 * 1024
    exempt_networks: tuple[str, ...] = LOOPBACK_NETWORKS

    def stream_limit(self, protocol: str) -> int:
        """Inbound streams of ``protocol`` one peer may hold open at once."""
        return self.protocol_stream_limits.get(protocol, self.max_inbound_streams_per_protocol)


class Refusal(StrEnum):
    """Why a connection or stream was refused or dropped; the ``reason`` label of
    ``physarum_resource_refused_total``."""

    CLOSING = "closing"
    HANDSHAKE_POOL = "handshake_pool_full"
    IP_LIMIT = "ip_limit"
    IP_FAILURES = "ip_failures"
    CONNECTION_LIMIT = "connection_limit"
    PEER_LIMIT = "peer_connection_limit"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    PSK_MISMATCH = "psk_mismatch"
    NO_PSK = "no_psk"
    HANDSHAKE_FAILED = "handshake_failed"
    STREAM_LIMIT = "protocol_stream_limit"
    PROTOCOL_ERROR = "protocol_error"
    MEMORY = "memory"

    @property
    def words(self) -> str:
        return _WORDS[self]


_WORDS = {
    Refusal.CLOSING: "host closing",
    Refusal.HANDSHAKE_POOL: "too many handshakes in progress",
    Refusal.IP_LIMIT: "too many handshakes from that IP",
    Refusal.IP_FAILURES: "too many failed handshakes from that IP",
    Refusal.CONNECTION_LIMIT: "connection limit reached",
    Refusal.PEER_LIMIT: "too many connections to that peer",
    Refusal.FIRST_BYTE_TIMEOUT: "no first bytes in time",
    Refusal.HANDSHAKE_TIMEOUT: "handshake timeout",
    Refusal.PSK_MISMATCH: "psk mismatch",
    Refusal.NO_PSK: "peer uses no psk",
    Refusal.HANDSHAKE_FAILED: "handshake failed",
    Refusal.STREAM_LIMIT: "too many streams of one protocol",
    Refusal.PROTOCOL_ERROR: "broke the protocol",
    Refusal.MEMORY: "memory budget exhausted",
}


# -- handshakes ----------------------------------------------------------------------------------------


class Handshake:
    """One inbound handshake holding a slot; ``cancel_scope`` is cancelled if it is evicted."""

    __slots__ = ("cancel_scope", "evicted", "ip", "started")

    def __init__(self, ip: str, started: float) -> None:
        self.ip = ip
        self.started = started
        self.cancel_scope = trio.CancelScope()
        self.evicted = False


#: IPs whose failed handshakes are remembered at most (about 100 bytes each).
_MAX_FAILING_IPS = 4096


def _in_any(ip: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether ``ip`` (text; anything that is not an IP address is in none) is in ``networks``."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


class HandshakePool:
    """Inbound handshakes in progress, overall and per IP (see :class:`ResourceLimits`)."""

    def __init__(self, limits: ResourceLimits) -> None:
        self.limits = limits
        self._exempt = [ipaddress.ip_network(n) for n in limits.exempt_networks]
        # Insertion order is start order: the first entry is the oldest handshake.
        self._open: dict[Handshake, None] = {}
        self._per_ip: Counter[str] = Counter()
        # ip -> (failures, when the first of them counted): a window per IP; the oldest entries
        # go first when there are more than _MAX_FAILING_IPS (insertion order).
        self._failures: dict[str, tuple[int, float]] = {}
        self._failure_exempt = [ipaddress.ip_network(n) for n in limits.failure_exempt]

    def failed(self, ip: str, now: float) -> None:
        """A handshake from ``ip`` failed (see ``ResourceLimits.failed_handshakes_per_ip``)."""
        if _in_any(ip, self._failure_exempt):
            return
        count, since = self._failures.pop(ip, (0, now))
        if now - since > self.limits.failure_window:
            count, since = 0, now
        self._failures[ip] = (count + 1, since)
        if len(self._failures) > _MAX_FAILING_IPS:
            del self._failures[next(iter(self._failures))]

    def _failing(self, ip: str, now: float) -> bool:
        entry = self._failures.get(ip)
        if entry is None:
            return False
        count, since = entry
        if now - since > self.limits.failure_window:
            del self._failures[ip]
            return False
        return count >= self.limits.failed_handshakes_per_ip

    def __len__(self) -> int:
        return len(self._open)

    def _limited(self, ip: str) -> bool:
        return not _in_any(ip, self._exempt)

    def admit(self, ip: str, now: float) -> Handshake | Refusal:
        """A slot for a handshake from ``ip``, or why there is none. A full pool drops its oldest
        handshake (its ``cancel_scope`` is cancelled and ``evicted`` set) rather than the newcomer."""
        if self._failing(ip, now):
            return Refusal.IP_FAILURES
        if self._limited(ip) and self._per_ip[ip] >= self.limits.max_handshakes_per_ip:
            return Refusal.IP_LIMIT
        if len(self._open) >= self.limits.max_handshakes:
            if not self._open:
                return Refusal.HANDSHAKE_POOL
            oldest = next(iter(self._open))
            oldest.evicted = True
            oldest.cancel_scope.cancel()
            self.release(oldest)
        hs = Handshake(ip, now)
        self._open[hs] = None
        self._per_ip[ip] += 1
        return hs

    def release(self, hs: Handshake) -> None:
        """Give the slot back (twice is harmless)."""
        if self._open.pop(hs, 0) is None:
            self._per_ip[hs.ip] -= 1
            if self._per_ip[hs.ip] <= 0:
                del self._per_ip[hs.ip]


# -- refusal counts and the summary log line -----------------------------------------------------------


class RefusalLog:
    """Counts refusals by reason and keeps the log quiet under a flood.

    The first refusal of each reason in an ``interval`` is logged at once (INFO) with its detail;
    the rest go to DEBUG, and :meth:`flush`, called periodically, writes one summary line for the
    interval ("refused 10,482 connections in 60 s: psk mismatch 10,480, handshake timeout 2"), at
    WARNING when a capacity limit was among the reasons. ``totals`` feeds the metrics.
    """

    _CAPACITY = frozenset(
        {Refusal.HANDSHAKE_POOL, Refusal.IP_LIMIT, Refusal.CONNECTION_LIMIT, Refusal.PEER_LIMIT, Refusal.MEMORY}
    )

    def __init__(self, logger: logging.Logger, noun: str, *, interval: float = 60.0) -> None:
        self.log = logger
        self.noun = noun
        self.interval = interval
        self.totals: Counter[Refusal] = Counter()
        self._window: Counter[Refusal] = Counter()
        self._window_start: float | None = None

    def refused(self, reason: Refusal, detail: str, now: float, *, error: BaseException | None = None) -> None:
        """Count a refusal; ``error`` (the exception behind it, if any) rides on the log record as
        ``record.error`` for handlers and tests."""
        self.totals[reason] += 1
        if self._window_start is None:
            self._window_start = now
        self._window[reason] += 1
        extra = None if error is None else {"error": error}
        if self._window[reason] == 1:
            self.log.info("refused %s %s: %s", self.noun.rstrip("s"), detail, reason.words, extra=extra)
        elif self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("refused %s %s: %s", self.noun.rstrip("s"), detail, reason.words, extra=extra)

    def flush(self, now: float, *, force: bool = False) -> None:
        """Write the summary line of the interval that ended (if anything beyond the lines already
        written happened in it) and start a new one."""
        start = self._window_start
        if start is None or (now - start < self.interval and not force):
            return
        window, self._window, self._window_start = self._window, Counter(), None
        total = sum(window.values())
        if total <= len(window):
            return  # every refusal of the interval already has its own line
        parts = ", ".join(f"{r.words} {n:,}" for r, n in window.most_common())
        level = logging.WARNING if self._CAPACITY.intersection(window) else logging.INFO
        self.log.log(level, "refused %s %s in %.0f s: %s", f"{total:,}", self.noun, max(now - start, 1), parts)


# -- the manager -----------------------------------------------------------------------------------------


class Usage(NamedTuple):
    """What a host holds right now, for the metrics (the host fills it in at scrape time)."""

    inbound: int
    outbound: int
    dials: int
    streams: int
    memory_resets: int = 0
    """Streams yamux reset because their data did not fit a memory budget, ever."""
    pongs_dropped: int = 0
    """yamux pings left unanswered because the peer was not reading the answers, ever."""


class ResourceManager:
    """A host's limits and what counts against them: the handshake pool, memory budgets, inbound
    streams per peer and protocol, and the refusal counters behind ``physarum_resource_*``.

    The host asks before it holds something (:meth:`admit_handshake`, :meth:`open_inbound_stream`,
    a budget's ``try_reserve``) and gives it back when done; refusals are recorded with
    :meth:`refuse_connection` / :meth:`refuse_stream`, which keep the logs quiet under a flood.
    """

    def __init__(self, limits: ResourceLimits | None = None, *, logger: logging.Logger | None = None) -> None:
        self.limits = limits or ResourceLimits()
        self.memory = MemoryBudget(self.limits.memory, name="system")
        self.handshakes = HandshakePool(self.limits)
        logger = logger or log
        self.connection_refusals = RefusalLog(logger, "connections")
        self.stream_refusals = RefusalLog(logger, "streams")
        self._peer_memory: dict[object, MemoryBudget] = {}
        self._inbound_streams: Counter[tuple[object, str]] = Counter()

    # connections
    def admit_handshake(self, ip: str, now: float) -> Handshake | Refusal:
        return self.handshakes.admit(ip, now)

    def refuse_connection(
        self, reason: Refusal, detail: str, now: float, *, error: BaseException | None = None
    ) -> None:
        self.connection_refusals.refused(reason, detail, now, error=error)

    # memory
    def peer_memory(self, peer: object) -> MemoryBudget:
        """The budget of what ``peer`` may make us buffer (created on first use)."""
        budget = self._peer_memory.get(peer)
        if budget is None:
            # Not str(peer): a PeerId's text is cached process-wide, and every fresh identity of a
            # crowd would leave an entry (and the heap pages it sits on) behind.
            name = peer.hex() if isinstance(peer, bytes) else str(peer)
            budget = self._peer_memory[peer] = MemoryBudget(
                self.limits.memory_per_peer, parent=self.memory, name=name
            )
        return budget

    def forget_peer(self, peer: object) -> None:
        """``peer`` has no connection left: drop its budget once nothing is reserved in it."""
        budget = self._peer_memory.get(peer)
        if budget is not None and budget.used == 0:
            del self._peer_memory[peer]

    # streams
    def open_inbound_stream(self, peer: object, protocol: str) -> bool:
        """Count an inbound stream of ``protocol`` from ``peer``; False (not counted) when the peer
        already holds its limit of them."""
        key = (peer, protocol)
        if self._inbound_streams[key] >= self.limits.stream_limit(protocol):
            return False
        self._inbound_streams[key] += 1
        return True

    def close_inbound_stream(self, peer: object, protocol: str) -> None:
        key = (peer, protocol)
        n = self._inbound_streams[key] - 1
        if n > 0:
            self._inbound_streams[key] = n
        else:
            del self._inbound_streams[key]

    def refuse_stream(self, reason: Refusal, detail: str, now: float) -> None:
        self.stream_refusals.refused(reason, detail, now)

    def flush_logs(self, now: float, *, force: bool = False) -> None:
        self.connection_refusals.flush(now, force=force)
        self.stream_refusals.flush(now, force=force)


class ResourceCollector:
    """``physarum_resource_*`` at scrape time, from the manager and the host's ``usage()`` (a
    prometheus_client collector; imported from there only when a scrape comes, so hosts without
    metrics never load it)."""

    def __init__(self, manager: ResourceManager, usage: Callable[[], Usage]) -> None:
        self.manager = manager
        self.usage = usage

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.manager
        u = self.usage()
        conns = GaugeMetricFamily(
            "physarum_resource_connections", "Connections open or being set up", labels=["state"]
        )
        conns.add_metric(["inbound"], u.inbound)
        conns.add_metric(["outbound"], u.outbound)
        conns.add_metric(["handshaking"], len(m.handshakes))
        conns.add_metric(["dialing"], u.dials)
        yield conns
        limits = GaugeMetricFamily(
            "physarum_resource_limit", "Configured limits of the resource manager", labels=["resource"]
        )
        limits.add_metric(["connections"], m.limits.max_connections)
        limits.add_metric(["handshakes"], m.limits.max_handshakes)
        limits.add_metric(["dials"], m.limits.max_dials)
        limits.add_metric(["memory_bytes"], m.limits.memory)
        yield limits
        yield GaugeMetricFamily("physarum_resource_streams", "Streams open on all connections", value=u.streams)
        yield GaugeMetricFamily(
            "physarum_resource_memory_bytes", "Bytes peers have made us buffer", value=m.memory.used
        )
        refused = CounterMetricFamily(
            "physarum_resource_refused",
            "Connections and streams refused or dropped, by reason",
            labels=["scope", "reason"],
        )
        for scope, book in (("connection", m.connection_refusals), ("stream", m.stream_refusals)):
            totals = dict(book.totals)
            if scope == "stream" and u.memory_resets:
                totals[Refusal.MEMORY] = totals.get(Refusal.MEMORY, 0) + u.memory_resets
            for reason, n in sorted(totals.items()):
                refused.add_metric([scope, reason.value], n)
        yield refused
        yield CounterMetricFamily(
            "physarum_resource_pongs_dropped",
            "yamux pings left unanswered because the peer did not read the answers",
            value=u.pongs_dropped,
        )


__all__ = [
    "DEFAULT_PROTOCOL_STREAM_LIMITS",
    "LOOPBACK_NETWORKS",
    "Handshake",
    "HandshakePool",
    "MemoryBudget",
    "Refusal",
    "RefusalLog",
    "ResourceCollector",
    "ResourceLimits",
    "ResourceManager",
    "Usage",
]
