"""A live topology page for the ping monitor: who is connected, the RTT to each, reachability, history.

Served by the monitor's :class:`~physarum.monitor.http.MetricsServer` (same port, token and client
bounds as ``/metrics``) through its ``pages``:

``/``
    An HTML page: this node in the middle, one node per peer around it, the last RTT on each edge,
    unreachable and departed peers marked, a sparkline of each peer's recent RTTs, and a table of the
    same. Its script polls ``/topology.json`` every ``interval`` seconds (the snapshot says how often)
    and redraws; it links to ``/metrics``.
``/topology.json``
    The snapshot the page draws (see :meth:`TopologyView.snapshot`).
``/topology.js``, ``/topology.css``
    The page's script and style: hand-written, shipped in the package (``monitor/static``). Nothing is
    fetched from anywhere else: the page carries a ``Content-Security-Policy`` that forbids it.

What a hostile peer can make this cost is bounded: at most ``max_peers`` peers are kept and shown
(connected peers first, longest connected first, then departed ones, most recently seen first; the
snapshot counts the rest), each with at most ``history`` RTTs, ``max_addrs`` addresses of at most
:data:`MAX_ADDR_CHARS` characters. Everything a peer chose (its addresses) reaches the page only as
text (``textContent``), never as markup. The snapshot is rendered at most once per ``cache_for``
seconds however often it is asked for, since pages run on the event loop.

The history is sampled from the monitor by :meth:`TopologyView.run` every ``sample_interval`` seconds
(half the ping interval by default, so that no ping result is missed) and whenever a snapshot is made:
one entry per ping, its RTT in milliseconds or ``null`` for a failed ping. The result of a peer's last
ping before it left is lost if no sample came between the two.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Protocol

import trio

from physarum.errors import ConfigError
from physarum.monitor.http import Page, Reply
from physarum.monitor.ping_monitor import ListenInfo, PeerStats, PingMonitor
from physarum.overlay.identity import PeerId

#: RTTs kept per peer for its sparkline: a minute of pings at the default 1 s interval.
HISTORY = 60

#: Peers kept and shown: more would not fit on the page, and each costs up to ``HISTORY`` samples.
MAX_PEERS = 128

#: Addresses kept per peer (the one its connection comes from, then those its identify gave).
MAX_ADDRS = 4

#: Longest address text kept; longer ones are cut (with "...").
MAX_ADDR_CHARS = 200

#: Seconds a rendered snapshot is reused: however many clients poll, at most a few renders a second.
CACHE_FOR = 0.25

JSON_PATH = "/topology.json"
SCRIPT_PATH = "/topology.js"
STYLE_PATH = "/topology.css"

#: The page may load its own script, style and snapshot, and nothing else (the favicon is ``data:``).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


class TopologyConnection(Protocol):
    """What the page reads of a connection (:class:`physarum.overlay.host.Connection` is one)."""

    @property
    def remote_addr(self) -> object: ...

    @property
    def identify_info(self) -> ListenInfo | None: ...


class TopologyHost(Protocol):
    """What the page reads of the host (:class:`physarum.overlay.host.Host` is one)."""

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def addrs(self) -> Sequence[object]: ...

    def connection(self, peer_id: PeerId) -> TopologyConnection | None: ...


@dataclass
class _Record:
    """What the page keeps of one peer beyond the monitor's :class:`PeerStats`."""

    history: deque[float | None]
    pings: int = 0
    """successes + failures when last sampled: a change means a new ping result."""
    addresses: list[str] = field(default_factory=list)


class TopologyView:
    """The topology page and its snapshot, for ``monitor`` running on ``host``.

    Register :meth:`pages` with the monitor's :class:`~physarum.monitor.http.MetricsServer` and run
    :meth:`run` (``await nursery.start(view.run)``) to record the history.

    Args:
        monitor: the node's ping monitor (read, never changed).
        host: the node's host, for its id and addresses and each peer's connection.
        history: RTTs kept per peer.
        max_peers: peers kept and shown.
        max_addrs: addresses kept per peer.
        sample_interval: seconds between two samples of the monitor (None: half its ping interval).
        cache_for: seconds a rendered snapshot is reused.
        wall_clock: the Unix time (``last_seen`` and ``generated_at`` are given in it; the monitor's
            own times are on trio's clock).

    Raises:
        ConfigError: a bound or interval is not positive, or ``cache_for`` is negative.
    """

    def __init__(
        self,
        monitor: PingMonitor,
        host: TopologyHost,
        *,
        history: int = HISTORY,
        max_peers: int = MAX_PEERS,
        max_addrs: int = MAX_ADDRS,
        sample_interval: float | None = None,
        cache_for: float = CACHE_FOR,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        sample_interval = monitor.interval / 2 if sample_interval is None else sample_interval
        for name, value in (
            ("history", history),
            ("max_peers", max_peers),
            ("max_addrs", max_addrs),
            ("sample_interval", sample_interval),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if not cache_for >= 0:
            raise ConfigError(f"cache_for must not be negative, got {cache_for}")
        self.monitor = monitor
        self.host = host
        self.history = history
        self.max_peers = max_peers
        self.max_addrs = max_addrs
        self.sample_interval = sample_interval
        self.cache_for = cache_for
        self.wall_clock = wall_clock
        self._records: dict[PeerId, _Record] = {}
        self._cached: tuple[float, bytes] | None = None

    # -- the pages --

    def pages(self) -> dict[str, Page]:
        """The page at ``/`` (replacing the index page), its script, style and snapshot."""
        html, script, style = _asset("topology.html"), _asset("topology.js"), _asset("topology.css")
        return {
            "/": _static(html, "text/html; charset=utf-8"),
            SCRIPT_PATH: _static(script, "text/javascript; charset=utf-8"),
            STYLE_PATH: _static(style, "text/css; charset=utf-8"),
            JSON_PATH: self.json_reply,
        }

    def json_reply(self) -> Reply:
        """The snapshot as JSON, rendered afresh at most once per ``cache_for`` seconds."""
        now = trio.current_time()
        if self._cached is None or now - self._cached[0] >= self.cache_for or now < self._cached[0]:
            body = json.dumps(self.snapshot(), separators=(",", ":"), allow_nan=False).encode()
            self._cached = (now, body)
        headers = [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            *_SECURITY_HEADERS,
        ]
        return Reply(200, headers, self._cached[1])

    # -- the data --

    def shown(self) -> list[PeerStats]:
        """The peers kept and shown, in order: connected ones, longest connected first, then departed
        ones, most recently seen first; at most ``max_peers``."""
        peers = self.monitor.peers.values()
        connected = sorted((s for s in peers if s.connected), key=lambda s: s.connected_since)
        if len(connected) >= self.max_peers:
            return connected[: self.max_peers]
        departed = sorted((s for s in peers if not s.connected), key=lambda s: -s.last_seen)
        return connected + departed[: self.max_peers - len(connected)]

    def sample(self) -> None:
        """Record the result of each shown peer's latest ping (if new) and its addresses; forget peers
        no longer shown."""
        shown = self.shown()
        kept = {s.peer_id for s in shown}
        for peer in [p for p in self._records if p not in kept]:
            del self._records[peer]
        for stats in shown:
            record = self._records.get(stats.peer_id)
            if record is None:
                record = self._records[stats.peer_id] = _Record(deque(maxlen=self.history))
            pings = stats.successes + stats.failures
            if pings != record.pings:
                record.pings = pings
                # A peer that left has lost its last RTT (the monitor keeps none of a departed peer):
                # its last result, if not sampled before it left, is unknown rather than a failure.
                if stats.connected:
                    record.history.append(None if stats.last_rtt is None else _ms(stats.last_rtt))
            if stats.connected:
                conn = self.host.connection(stats.peer_id)
                if conn is not None:
                    record.addresses = self._addresses(conn)

    def snapshot(self) -> dict[str, object]:
        """What the page draws, JSON-ready::

            {"version": 1, "generated_at": UNIX_TIME, "interval": PING_INTERVAL_S,
             "self": {"id": ..., "hostname": ..., "addresses": [...]},
             "peers_known": N, "peers_connected": N, "peers_omitted": N,
             "peers": [{"id": ..., "addresses": [...], "state": STATE, "connected": bool,
                        "reachable": bool, "rtt_ms": MS|null, "ewma_ms": MS|null,
                        "last_seen": UNIX_TIME, "last_seen_ago": S, "connected_for": S|null,
                        "successes": N, "failures": N, "history": [MS|null, ...]}, ...]}

        ``state`` is ``reachable`` (its last ping was answered), ``pending`` (connected, not pinged
        yet), ``unreachable`` (connected, its last ping failed) or ``departed`` (no longer connected;
        kept by the monitor until it expires). ``history`` is oldest first, ``null`` for a failed ping.
        """
        self.sample()  # the history up to the latest ping, whenever the sampler last ran
        now = trio.current_time()
        wall = self.wall_clock()
        shown = self.shown()
        peers = []
        for stats in shown:
            record = self._records[stats.peer_id]
            peers.append(
                {
                    "id": stats.label,
                    "addresses": record.addresses,
                    "state": _state(stats),
                    "connected": stats.connected,
                    "reachable": stats.reachable,
                    "rtt_ms": None if stats.last_rtt is None else _ms(stats.last_rtt),
                    "ewma_ms": None if stats.ewma_ms is None else round(stats.ewma_ms, 3),
                    "last_seen": round(wall - (now - stats.last_seen), 3),
                    "last_seen_ago": round(max(0.0, now - stats.last_seen), 3),
                    "connected_for": round(now - stats.connected_since, 3) if stats.connected else None,
                    "successes": stats.successes,
                    "failures": stats.failures,
                    "history": list(record.history),
                }
            )
        return {
            "version": 1,
            "generated_at": round(wall, 3),
            "interval": self.monitor.interval,
            "self": {
                "id": str(self.host.peer_id),
                "hostname": self.monitor.hostname,
                "addresses": [_cut(str(a)) for a in list(self.host.addrs)[: self.max_addrs]],
            },
            "peers_known": len(self.monitor.peers),
            "peers_connected": sum(1 for s in self.monitor.peers.values() if s.connected),
            "peers_omitted": len(self.monitor.peers) - len(shown),
            "peers": peers,
        }

    def _addresses(self, conn: TopologyConnection) -> list[str]:
        """Where the peer's connection comes from, then what its identify said, distinct, bounded."""
        found = [str(conn.remote_addr)]
        info = conn.identify_info
        if info is not None:
            # Only as many as may be kept: a peer may have sent many.
            for a in list(info.listen_addrs)[: self.max_addrs]:
                found.append(str(a))
        out: list[str] = []
        for text in map(_cut, found):
            if text not in out:
                out.append(text)
        return out[: self.max_addrs]

    # -- sampling --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample the monitor every ``sample_interval`` seconds until cancelled."""
        task_status.started()
        while True:
            self.sample()
            await trio.sleep(self.sample_interval)


def _state(stats: PeerStats) -> str:
    if not stats.connected:
        return "departed"
    if stats.reachable:
        return "reachable"
    if stats.successes + stats.failures == 0:
        return "pending"
    return "unreachable"


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ADDR_CHARS else text[: MAX_ADDR_CHARS - 3] + "..."


@cache
def _asset(name: str) -> bytes:
    """A file of the package's ``monitor/static`` folder."""
    return resources.files("physarum.monitor").joinpath("static", name).read_bytes()


def _static(body: bytes, content_type: str) -> Page:
    reply = Reply(
        200, [("Content-Type", content_type), ("Cache-Control", "no-cache"), *_SECURITY_HEADERS], body
    )

    def page() -> Reply:
        return reply

    return page


__all__ = [
    "CACHE_FOR",
    "CONTENT_SECURITY_POLICY",
    "HISTORY",
    "JSON_PATH",
    "MAX_ADDRS",
    "MAX_ADDR_CHARS",
    "MAX_PEERS",
    "SCRIPT_PATH",
    "STYLE_PATH",
    "TopologyConnection",
    "TopologyHost",
    "TopologyView",
]
