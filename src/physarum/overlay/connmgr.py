"""The connection manager: keeps the open connections between a low and a high water mark.

Without it every peer a node ever talked to stays connected: in a 300-node DHT each node held ~135
connections, growing with the network rather than with ``k``. Anchored on go-libp2p's connection
manager (``connmgr.BasicConnMgr``), with these decisions:

**What is counted**: open connections, not peers (what ``max_connections`` counts too).

**Trimming** (:func:`plan_trim`, a pure function). When more than ``high_water`` connections are
open, connections are closed until ``low_water`` remain. Never closed: connections to a *protected*
peer (:meth:`ConnectionManager.protect`: bootstrap peers, a monitor), and connections younger than
``grace_period`` (a new connection gets time to identify, join the routing table and be tagged before
it is judged). The others are closed in this order:

1. a spare connection to a peer that also has a newer one open (simultaneous dials): nothing is lost;
2. the lowest *value* first: the sum of the peer's tag weights (:meth:`~ConnectionManager.tag_peer`,
   plus tag sources such as the DHT's routing table, :data:`KBUCKET_WEIGHT` per peer in it, as
   go-libp2p-kad-dht's "kbucket" tag);
3. connections without an open stream before busy ones (closing a busy one cuts a request short);
4. the longest idle first: a connection is idle since the manager first saw it without streams (it
   looks at each trim pass and every ``check_interval``, so this is exact to within that);
5. the oldest first.

Connections in their grace period are ranked like the others, and those that rank among the ones
to close are closed when their grace ends (the trim goes on then, down to ``low_water``), not
replaced by others: a valuable old connection is never closed in place of a worthless young one. So
a pass may leave more than ``low_water`` (even more than ``high_water``) open until the next one.

**When.** A pass runs when a new connection takes the count over ``high_water`` and every
``check_interval``, never twice within ``min_trim_interval`` (go's "silence period" is 10 s; a pass
over 1,000 connections takes about 3 ms here, :func:`pick_victim` over them about 1.5 ms). While the count stays over ``high_water``
because the excess is still in its grace period, the next pass runs when the first of those comes of
age.

**Closing.** The chosen connections are closed concurrently, all within one ``close_timeout``, with
yamux GoAway code :data:`~physarum.overlay.yamux.GO_AWAY_GARBAGE_COLLECTED` (0x1005, go-libp2p's
``ConnGarbageCollected``), so the peer can tell "trimmed" from "shut down":
:func:`~physarum.overlay.backoff.keep_bootstrap_connected` waits its longest backoff (512 s) before
dialing a bootstrap peer that trimmed it again. Without that, N nodes that keep one bootstrap peer
connected hold it at N connections for ever.

**Victims at the hard limit** (:func:`pick_victim`, for the host when ``max_connections`` are open and
a new inbound connection has finished its handshake). The least valuable unprotected connection, or
None (refuse the newcomer). Connections in their grace period may be chosen: otherwise 2,000 fresh
connections from an attacker would leave nothing to close and every honest newcomer would be refused.
Order: a spare connection to a peer with a newer one; the lowest value; inbound before outbound (an
attacker cannot make us dial it, and our dials are lookups and bootstraps we need); the remote IP
address holding the most connections first (a flood from one address pays for itself, as Bitcoin's
eviction picks from the largest network group); the newest first (under a flood the newest are most
likely the flooder's, and established peers keep their place).

**Tags and protection.** :meth:`~ConnectionManager.tag_peer` weights live while the peer is connected
(dropped when its last connection closes, as go's; a tag set on a peer not connected yet waits for
it). Tag sources (:meth:`~ConnectionManager.add_tag_source`) are asked at each decision, so a source
that follows a data structure (the routing table) is never stale. Protection (:meth:`protect`) lasts
until :meth:`unprotect`, connected or not, and works with trimming off too.

**No trimming**: ``options=None`` (the ping-monitor's default, since it monitors every connected peer)
keeps tags, protection and :func:`pick_victim`, and never trims.

**Measured** (bench/dht.py --swarm 300: 300 nodes in 3 processes on 127.0.0.1 joined at once through
one bootstrap node, then 90 random find_peer; 2 cores): without a manager each node held 138
connections (median; the bootstrap 299); with the defaults at most 96 (median 67-71) within 11 s of
the join, and every lookup found its peer. The price: connections trimmed during the join are dialed
again by later lookups (16,000 trims, 10-40% more CPU for the 300 joins), and a lookup that must dial
takes longer (find_peer median 4.5-8.3 ms against 3.1-3.3 ms with every peer still connected).

Metrics (with ``registry``): ``physarum_connmgr_trimmed_connections_total`` (connections closed by
trimming), ``physarum_connmgr_trims_total`` (passes that closed something),
``physarum_connmgr_victims_total`` (connections chosen by :meth:`ConnectionManager.pick_victim`),
``physarum_connmgr_protected_peers`` (gauge).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NamedTuple, Protocol, TypeVar

import trio

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

from physarum.errors import ConfigError, PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.yamux import GO_AWAY_GARBAGE_COLLECTED

log = logging.getLogger(__name__)

#: The weight the DHT gives each peer in its routing table (go-libp2p-kad-dht's "kbucket" tag).
KBUCKET_WEIGHT = 5

#: ``Connection.direction`` of a connection we dialed (physarum.overlay.host.OUTBOUND).
OUTBOUND = "outbound"


@dataclass(frozen=True)
class ConnManagerOptions:
    """Water marks and timings of the connection manager; see the module notes for how they act.

    Attributes:
        low_water: a trim closes connections until this many remain (kubo: 32, go-libp2p: 160).
        high_water: a trim starts when more than this many are open (kubo: 96, go-libp2p: 192).
            64/96 leave a node at 300 nodes with most of its ~100 routing-table peers connected.
        grace_period: seconds a new connection is safe from trimming (kubo: 20 s, go-libp2p: 1 min).
        min_trim_interval: seconds between two trim passes at least (go's silence period: 10 s).
        check_interval: seconds between two checks when no new connection asks for one.
        close_timeout: seconds the connections of one pass have to close, all together.

    Raises:
        ConfigError: a negative water mark, ``low_water > high_water``, or a timing that is not a
            positive number (``grace_period`` may be 0).
    """

    low_water: int = 64
    high_water: int = 96
    grace_period: float = 20.0
    min_trim_interval: float = 1.0
    check_interval: float = 10.0
    close_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.low_water < 0 or self.high_water < 0:
            raise ConfigError("connection water marks cannot be negative")
        if self.low_water > self.high_water:
            raise ConfigError(f"low_water {self.low_water} is above high_water {self.high_water}")
        if not 0 <= self.grace_period < math.inf:
            raise ConfigError("grace_period is a number of seconds >= 0")
        for name in ("min_trim_interval", "check_interval", "close_timeout"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"{name} is a number of seconds > 0")


#: The options a :class:`~physarum.overlay.host.Host` gets unless told otherwise.
DEFAULT_CONN_MANAGER = ConnManagerOptions()


# -- what the manager needs of connections and hosts (physarum.overlay.host's satisfy these) --


class ManagedSession(Protocol):
    @property
    def streams(self) -> Sized: ...

    async def aclose(self, code: int = ...) -> None: ...


class ManagedConnection(Protocol):
    @property
    def peer_id(self) -> PeerId: ...

    @property
    def remote_addr(self) -> Multiaddr: ...

    @property
    def direction(self) -> str: ...

    @property
    def opened_at(self) -> float: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def session(self) -> ManagedSession: ...


_C = TypeVar("_C", bound=ManagedConnection)
_T = TypeVar("_T")


class ManagedHost(Protocol[_C]):
    @property
    def connections(self) -> Mapping[PeerId, Sequence[_C]]: ...

    @property
    def on_connect(self) -> list[Callable[[_C], None]]: ...

    @property
    def on_disconnect(self) -> list[Callable[[_C], None]]: ...


# -- the policy: pure functions over snapshots -------------------------------------------------


class ConnInfo(NamedTuple, Generic[_T]):
    """What the policy knows of one open connection (``conn`` is handed back when chosen). A tuple:
    a pass builds one per open connection, and at the connection limit one per newcomer.

    ``idle_since``: when it was first seen without open streams (None: it has some); ``spare``: the
    peer has a newer open connection; ``ip``: the remote address, for grouping.
    """

    conn: _T
    peer: PeerId
    opened_at: float
    value: int
    protected: bool
    streams: int = 0
    idle_since: float | None = None
    spare: bool = False
    outbound: bool = False
    ip: str = ""


@dataclass(frozen=True)
class TrimPlan(Generic[_T]):
    """What one trim pass closes now; ``retry_at``: when connections chosen to go come out of their
    grace period (None: none waits), and the trim is unfinished until then."""

    close: list[_T]
    retry_at: float | None

    @property
    def unfinished(self) -> bool:
        return self.retry_at is not None


def plan_trim(
    conns: Sequence[ConnInfo[_T]], now: float, options: ConnManagerOptions, *, unfinished: bool = False
) -> TrimPlan[_T]:
    """The connections to close so that ``options.low_water`` remain, once more than
    ``options.high_water`` are open (or at once when the previous plan was ``unfinished``); the
    order is the module notes'."""
    excess = len(conns) - options.low_water
    if excess <= 0 or (len(conns) <= options.high_water and not unfinished):
        return TrimPlan([], None)
    ripe = now - options.grace_period
    ranked = sorted(
        (c for c in conns if not c.protected),
        key=lambda c: (
            not c.spare,
            c.value,
            c.streams > 0,
            math.inf if c.idle_since is None else c.idle_since,
            c.opened_at,
        ),
    )
    chosen = ranked[:excess]
    # Young connections are ranked like the others but only closed once their grace ends: a
    # valuable old connection is never closed in place of a worthless young one.
    close = [c.conn for c in chosen if c.opened_at <= ripe]
    waiting = [c.opened_at for c in chosen if c.opened_at > ripe]
    retry_at = min(waiting) + options.grace_period if waiting else None
    return TrimPlan(close, retry_at)


def pick_victim(conns: Sequence[ConnInfo[_T]]) -> _T | None:
    """The connection to close to make room for a newcomer at the hard limit, or None when every
    one is protected; the order is the module notes' (grace periods do not count here)."""
    victims = rank_victims(conns, 1)
    return victims[0] if victims else None


def rank_victims(conns: Sequence[ConnInfo[_T]], n: int) -> list[_T]:
    """The first ``n`` connections :func:`pick_victim` would choose, in order (the per-IP counts
    as they are now): one pass for a burst of newcomers instead of one per newcomer."""
    candidates = [c for c in conns if not c.protected]
    per_ip = Counter(c.ip for c in conns)
    ranked = heapq.nsmallest(
        n, candidates, key=lambda c: (not c.spare, c.value, c.outbound, -per_ip[c.ip], -c.opened_at)
    )
    return [c.conn for c in ranked]


# -- the manager ----------------------------------------------------------------------------------


@dataclass
class _Seen:
    """What the manager remembers of an open connection."""

    ip: str
    idle_since: float | None


class ConnectionManager:
    """Tags, protection and trimming for one host (see the module notes).

    A :class:`~physarum.overlay.host.Host` makes one (``host.conn_manager``) and runs it; ``options``
    None never trims. ``registry``: where its metrics go (none when not given).

    Raises:
        ValueError: ``registry`` already holds the manager's metric names.
    """

    def __init__(
        self,
        options: ConnManagerOptions | None = DEFAULT_CONN_MANAGER,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.options = options
        self.trimmed_total = 0
        """Connections closed by trimming."""
        self.trims_total = 0
        """Trim passes that closed at least one connection."""
        self.victims_total = 0
        """Connections chosen by :meth:`pick_victim`."""
        self._protected: dict[PeerId, set[str]] = {}
        self._tags: dict[PeerId, dict[str, int]] = {}
        self._sources: dict[str, Callable[[PeerId], int]] = {}
        self._seen: dict[object, _Seen] = {}
        self._wake = trio.Event()
        self._last_trim = -math.inf
        self._unfinished = False  # the last pass left connections to close when their grace ends
        if registry is not None:
            registry.register(_Collector(self))

    # -- protection --

    def protect(self, peer: PeerId, tag: str) -> None:
        """Never trim (nor pick as a victim) connections to ``peer`` while any tag protects it."""
        self._protected.setdefault(peer, set()).add(tag)

    def unprotect(self, peer: PeerId, tag: str) -> bool:
        """Remove one protection; True if ``peer`` is still protected by another tag."""
        tags = self._protected.get(peer)
        if tags is None:
            return False
        tags.discard(tag)
        if not tags:
            del self._protected[peer]
            return False
        return True

    def is_protected(self, peer: PeerId, tag: str | None = None) -> bool:
        """Whether ``peer`` is protected (by ``tag``, or by any tag when None)."""
        tags = self._protected.get(peer)
        return bool(tags) if tag is None else tags is not None and tag in tags

    # -- value --

    def tag_peer(self, peer: PeerId, tag: str, weight: int) -> None:
        """Set ``peer``'s weight under ``tag`` (replacing an earlier one); kept while it is connected."""
        self._tags.setdefault(peer, {})[tag] = weight

    def untag_peer(self, peer: PeerId, tag: str) -> None:
        tags = self._tags.get(peer)
        if tags is not None:
            tags.pop(tag, None)
            if not tags:
                del self._tags[peer]

    def add_tag_source(self, tag: str, weight: Callable[[PeerId], int]) -> None:
        """Ask ``weight(peer)`` at each decision (e.g. the DHT: :data:`KBUCKET_WEIGHT` for a peer in
        its routing table, else 0). It must be cheap and must not raise: it runs for every connected
        peer in a pass."""
        self._sources[tag] = weight

    def remove_tag_source(self, tag: str) -> None:
        self._sources.pop(tag, None)

    def value(self, peer: PeerId) -> int:
        """The sum of ``peer``'s tag weights, its tag sources' included."""
        total = sum(self._tags.get(peer, {}).values())
        for weight in self._sources.values():
            total += weight(peer)
        return total

    # -- snapshots and decisions --

    def _track(self, conn: ManagedConnection) -> _Seen:
        seen = self._seen.get(conn)
        if seen is None:
            seen = self._seen[conn] = _Seen(_ip_of(conn.remote_addr), conn.opened_at)
        return seen

    def snapshot(self, connections: Iterable[_C], now: float) -> list[ConnInfo[_C]]:
        """What the policy functions see of ``connections`` (closed ones left out) at ``now``;
        notes which ones are idle."""
        open_: list[_C] = []
        for c in connections:
            if c.is_closed:
                self._seen.pop(c, None)
            else:
                open_.append(c)
        newest: dict[PeerId, float] = {}
        for c in open_:
            newest[c.peer_id] = max(newest.get(c.peer_id, -math.inf), c.opened_at)
        values: dict[PeerId, int] = {}
        out: list[ConnInfo[_C]] = []
        for c in open_:
            seen = self._track(c)
            streams = len(c.session.streams)
            if streams:
                seen.idle_since = None
            elif seen.idle_since is None:
                seen.idle_since = now
            peer = c.peer_id
            if peer not in values:
                values[peer] = self.value(peer)
            out.append(
                ConnInfo(
                    c,
                    peer,
                    c.opened_at,
                    values[peer],
                    peer in self._protected,
                    streams,
                    seen.idle_since,
                    c.opened_at < newest[peer],
                    c.direction == OUTBOUND,
                    seen.ip,
                )
            )
        return out

    def pick_victim(self, connections: Iterable[_C]) -> _C | None:
        """The connection to close to make room for a new one at the hard connection limit (see
        :func:`pick_victim`), or None: refuse the newcomer. The caller closes it."""
        victim = pick_victim(self.snapshot(connections, trio.current_time()))
        if victim is not None:
            self.victims_total += 1
        return victim

    def rank_victims(self, connections: Iterable[_C], n: int) -> list[_C]:
        """The next ``n`` victims (see :func:`rank_victims`), for a caller that closes them one at a
        time as newcomers arrive and counts each in :attr:`victims_total` (:meth:`note_victim`)."""
        return rank_victims(self.snapshot(connections, trio.current_time()), n)

    def note_victim(self) -> None:
        """Count a connection closed to make room (chosen from :meth:`rank_victims`)."""
        self.victims_total += 1

    async def trim(self, host: ManagedHost[_C]) -> float | None:
        """One trim pass now (whatever ``min_trim_interval`` says): close what :func:`plan_trim`
        chooses, concurrently, within ``close_timeout``. Returns when a connection still in its grace
        period may be trimmed (None: no need). Nothing happens without options."""
        options = self.options
        if options is None:
            return None
        now = trio.current_time()
        self._last_trim = now
        conns = list(_all(host))
        current = set(conns)
        for gone in [c for c in self._seen if c not in current]:
            del self._seen[gone]  # a disconnect we did not hear of (callbacks removed, say)
        plan = plan_trim(self.snapshot(conns, now), now, options, unfinished=self._unfinished)
        self._unfinished = plan.unfinished
        if plan.close:
            self.trims_total += 1
            self.trimmed_total += len(plan.close)
            log.debug(
                "trimming %d connection(s) to stay under %d (low water %d)",
                len(plan.close),
                options.high_water,
                options.low_water,
            )
            with trio.move_on_after(options.close_timeout):
                async with trio.open_nursery() as nursery:
                    for conn in plan.close:
                        nursery.start_soon(_close_trimmed, conn)
        return plan.retry_at

    # -- running --

    async def run(
        self, host: ManagedHost[_C], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow ``host``'s connections and trim them until cancelled (start it in the host's nursery)."""

        def connected(conn: _C) -> None:
            self._track(conn)
            options = self.options
            if options is not None and len(self._seen) > options.high_water:
                self._wake.set()

        def disconnected(conn: _C) -> None:
            self._seen.pop(conn, None)
            if not host.connections.get(conn.peer_id):
                self._tags.pop(conn.peer_id, None)

        host.on_connect.append(connected)
        host.on_disconnect.append(disconnected)
        for conn in _all(host):
            self._track(conn)
        try:
            task_status.started()
            options = self.options
            if options is None:
                await trio.sleep_forever()
                return
            next_pass = trio.current_time() + options.check_interval
            while True:
                with trio.move_on_at(next_pass):
                    await self._wake.wait()
                self._wake = trio.Event()
                await trio.sleep_until(self._last_trim + options.min_trim_interval)
                retry_at = await self.trim(host)
                next_pass = trio.current_time() + options.check_interval
                if retry_at is not None:
                    next_pass = min(next_pass, retry_at)
        finally:
            _remove(host.on_connect, connected)
            _remove(host.on_disconnect, disconnected)
            self._seen.clear()


def _all(host: ManagedHost[_C]) -> Iterator[_C]:
    for conns in list(host.connections.values()):
        yield from conns


def _remove(callbacks: list[Callable[[_C], None]], cb: Callable[[_C], None]) -> None:
    if cb in callbacks:
        callbacks.remove(cb)


def _ip_of(addr: Multiaddr) -> str:
    try:
        return addrs_.tcp_endpoint(addr).host
    except PhysarumError:
        return str(addr)


async def _close_trimmed(conn: ManagedConnection) -> None:
    try:
        await conn.session.aclose(GO_AWAY_GARBAGE_COLLECTED)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # already going: closed is what we wanted


class _Collector:
    """The manager's counters on a prometheus registry, read at each scrape (prometheus_client is
    imported then, so hosts without metrics never load it)."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.manager
        return [
            CounterMetricFamily(
                "physarum_connmgr_trimmed_connections",
                "Connections the connection manager closed to stay under its high-water mark.",
                value=m.trimmed_total,
            ),
            CounterMetricFamily(
                "physarum_connmgr_trims",
                "Trim passes that closed at least one connection.",
                value=m.trims_total,
            ),
            CounterMetricFamily(
                "physarum_connmgr_victims",
                "Connections chosen to make room for a new one at the hard connection limit.",
                value=m.victims_total,
            ),
            GaugeMetricFamily(
                "physarum_connmgr_protected_peers",
                "Peers the connection manager never trims (bootstrap peers, monitors).",
                value=len(m._protected),
            ),
        ]


__all__ = [
    "DEFAULT_CONN_MANAGER",
    "KBUCKET_WEIGHT",
    "ConnInfo",
    "ConnManagerOptions",
    "ConnectionManager",
    "ManagedConnection",
    "ManagedHost",
    "TrimPlan",
    "pick_victim",
    "plan_trim",
]
