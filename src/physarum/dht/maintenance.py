"""Joining the DHT and staying joined: bootstrap, rejoin, identify intake, refresh and republish.

:class:`Maintenance` is what :meth:`~physarum.dht.service.KadDHT.run` runs, and what the public
lookups ask before they start (:meth:`Maintenance.until_joined`).

* Bootstrap peers are kept connected by :func:`physarum.overlay.backoff.keep_bootstrap_connected`
  (PhysarumSM's backoff, the same code the binaries used before the DHT); after each (re)connection
  we look up our own id through them, then refresh every bucket short of ``k`` up to the deepest
  filled one. :attr:`Maintenance.bootstrapped` is set after the first lookup that got an answer (at
  once when there is nothing to join through). Without a host (in-memory networks) "connected"
  means the bootstrap peer answered a FIND_NODE lately.
* A table loaded from disk (:meth:`~physarum.dht.table.RoutingTable.from_json`) is rejoined the
  same way, retrying with backoff, so a restarted node needs no bootstrap peer; so is a table that
  identified peers filled before :meth:`Maintenance.run`, and, while the node has not joined, any
  kad peer that identifies later.
* Identify (:meth:`Maintenance.on_identify`): a peer that lists ``/ipfs/kad/1.0.0`` and at least one
  dialable address joins the table; a peer whose identify push drops the protocol leaves it.
* Every ``max(1 s, min(refresh_interval, republish_interval) / 10)``: expired records and providers
  go, up to 4 buckets idle for ``refresh_interval`` are refreshed with a lookup of a random key in
  them, and our records due for republishing are stored again at the closest nodes.

Joining and lookups (:class:`NotJoinedError`): a lookup never answers "nothing found" when it
could ask nobody; see :meth:`Maintenance.until_joined`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import NoReturn, Protocol

import trio

from physarum.dht import keyspace
from physarum.dht.addrs import MAX_ADDR_SIZE, MAX_ADDRS_PER_PEER, addr_allowed, parse_multiaddr_bytes
from physarum.dht.client import PEER_FAILURES, KadClient, quietly
from physarum.dht.host_api import KadConnection, KadHost
from physarum.dht.messages import PROTOCOL_ID
from physarum.dht.providers import ProviderStore
from physarum.dht.records import RecordStore
from physarum.dht.routing import Routing, now
from physarum.dht.table import RoutingTable
from physarum.errors import PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay.backoff import backoff_delays, keep_bootstrap_connected, keep_connected
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr

log = logging.getLogger(__name__)

#: Stale buckets refreshed per maintenance round (each is one lookup): after a long pause (a
#: laptop asleep) every bucket is stale at once, and refreshing them all in one go would be a
#: burst of 256 lookups; the rest wait for the next rounds, a tenth of the refresh interval apart.
REFRESHES_PER_ROUND = 4


class NotJoinedError(PhysarumError):
    """A lookup had nobody to ask, so "not found" would mean nothing (see :mod:`physarum.dht.service`).

    ``reason`` says why, in words fit for a log line. ``joining`` is True when a join was under
    way (bootstrap peers, or a saved table) but had not finished by the caller's deadline: try
    again later, or with a longer ``timeout``. False means the routing table is empty and there is
    nothing to join through (no bootstrap peer, :meth:`KadDHT.run` not running), or that none of
    the peers asked answered.
    """

    def __init__(self, reason: str, *, joining: bool = False) -> None:
        super().__init__(f"not joined to the DHT: {reason}")
        self.reason = reason
        self.joining = joining


class MaintainedNode(Protocol):
    """What the maintenance uses of its node (a :class:`~physarum.dht.service.KadDHT`)."""

    peer_id: PeerId
    k: int
    table: RoutingTable
    host: KadHost | None
    bootstrap_addrs: list[Multiaddr]
    query_timeout: float
    refresh_interval: float
    republish_interval: float
    max_backoff: float
    records: RecordStore
    providers: ProviderStore
    wall_clock: Callable[[], float]


class Maintenance:
    """Bootstrap, rejoin, identify intake, refresh and republish for one node (see the module notes)."""

    def __init__(self, node: MaintainedNode, routing: Routing, client: KadClient) -> None:
        self.node = node
        self.routing = routing
        self.client = client
        self.bootstrapped = trio.Event()
        """Set once a lookup of our own id got an answer (at once when there is nothing to join)."""
        self._nursery: trio.Nursery | None = None
        self._rejoining = False
        self._join_done: trio.Event | None = None  # set when the join in progress ends

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Maintain the table (bootstrap, refresh) and our records (republish, expiry) until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = self.routing.nursery = nursery
                for addr in self.node.bootstrap_addrs:
                    nursery.start_soon(self._keep_bootstrap_peer, addr)
                if len(self.node.table):
                    self._rejoining = True
                    nursery.start_soon(self._rejoin)
                elif not self.node.bootstrap_addrs:
                    self._set_bootstrapped()
                nursery.start_soon(self._maintain)
                task_status.started()
        finally:
            self._nursery = self.routing.nursery = None
            self._rejoining = False
            self.routing.changed()  # waiting lookups see that nothing will join any more

    def on_identify(self, conn: KadConnection) -> None:
        """A connection identified (or pushed a new identify): take the peer in, or out, of the table."""
        node = self.node
        info = conn.identify_info
        if info is None or node.host is None:
            return
        if PROTOCOL_ID not in info.protocols:
            if info.protocols and conn.peer_id in node.table:
                self.routing.forget(conn.peer_id)  # it stopped serving the DHT
            return
        addrs = dialable(info.listen_addrs) or dialable(node.host.peerstore.addrs(conn.peer_id))
        if not addrs:
            return
        self.routing.add_peer(conn.peer_id, addrs)
        if (
            self._nursery is not None
            and not self.bootstrapped.is_set()
            and self._join_done is None
            and conn.peer_id in node.table
        ):
            # Not joined yet (bootstrap peers down, say), and a kad peer turned up: join through it.
            self._nursery.start_soon(quietly, self.join())

    async def join(self) -> bool:
        """Look up our own id (fills the table); True if anyone answered.

        One join runs at a time: a second caller waits for the one in progress and shares its outcome.
        """
        if self._join_done is not None:
            await self._join_done.wait()
            return self.bootstrapped.is_set()
        done = self._join_done = trio.Event()
        try:
            try:
                result = await self.client.lookup(self.node.peer_id.to_bytes())
            except PEER_FAILURES as e:
                log.info("joining the DHT: %s", e)
                return False
            if result.stats.responses:
                await self._fill_buckets()
                self._set_bootstrapped()
                return True
            return False
        finally:
            self._join_done = None
            done.set()
            self.routing.changed()

    def _set_bootstrapped(self) -> None:
        self.bootstrapped.set()
        self.routing.changed()

    def _join_pending(self) -> bool:
        """Whether something may still fill the table: :meth:`run` keeps bootstrap peers
        connected, or rejoins through the table it started with while that holds anyone."""
        if self._nursery is None:
            return False
        if self.node.bootstrap_addrs:
            return True
        return self._rejoining and (len(self.node.table) > 0 or self._join_done is not None)

    async def until_joined(self, deadline: float) -> None:
        """Return once a lookup has someone to ask; wait for a join in progress until ``deadline``.

        While the node is joining (:meth:`run` is running with bootstrap peers, or with a starting
        table that still holds peers, and :attr:`bootstrapped` is not set yet) it waits for the
        join; a node with bootstrap peers whose table has emptied since waits the same way for
        them to answer again.

        Raises:
            NotJoinedError: the table is empty and nothing will fill it (no bootstrap peer, the
                starting table's peers all gone, or :meth:`run` not running), or the join did not
                finish by ``deadline`` (``joining=True``).
        """
        node = self.node
        while True:
            pending = self._join_pending()
            if len(node.table) and (self.bootstrapped.is_set() or not pending):
                return
            if not pending:
                why = "no bootstrap peer, no saved table" if self._nursery is not None else "DHT not running"
                raise NotJoinedError(f"the routing table is empty and there is nothing to join through ({why})")
            if trio.current_time() >= deadline:
                how = (
                    f"{len(node.bootstrap_addrs)} bootstrap peer(s)"
                    if node.bootstrap_addrs
                    else f"the {len(node.table)} peer(s) of the routing table"
                )
                raise NotJoinedError(f"still joining through {how} when the deadline passed", joining=True)
            await self.routing.wait_changed(deadline)

    async def _refresh(self, index: int, rng: random.Random, at: float) -> None:
        """Refresh bucket ``index``: mark it refreshed at ``at``, look up a random key in it."""
        table = self.node.table
        table.mark_refreshed(index, at)
        await quietly(self.client.lookup(table.random_preimage_in_bucket(index, rng)))

    async def _fill_buckets(self) -> None:
        """After the self lookup, refresh every bucket that is not full up to the deepest filled one,
        as go-libp2p does at bootstrap: the self lookup alone leaves gaps that misdirect lookups
        (bench/dht.py saw 4.5% of lookups fail at 10,000 nodes until the periodic refresh ran)."""
        sizes = self.node.table.bucket_sizes()
        if not sizes:
            return
        deepest = min(max(sizes), keyspace.MAX_PREIMAGE_INDEX)
        rng = random.Random()
        at = now()
        for index in range(deepest + 1):
            if sizes.get(index, 0) < self.node.k:
                await self._refresh(index, rng, at)

    async def _rejoin(self) -> None:
        """Join through the contacts of a loaded table, retrying with backoff until one answers."""
        try:
            for delay in backoff_delays(cap=self.node.max_backoff):
                if self.bootstrapped.is_set() or await self.join():
                    return
                log.info("no saved DHT contact answered; trying again in %g s", delay)
                await trio.sleep(delay)
        finally:
            self._rejoining = False
            self.routing.changed()

    async def _keep_bootstrap_peer(self, addr: Multiaddr) -> NoReturn:
        """Keep ``addr`` connected (PhysarumSM's backoff) and join the DHT after each connection."""
        peer = _addr_peer(addr)
        if peer is None:
            raise addrs_.AddressError(addr, "a bootstrap address ends in /p2p/<peer id>")
        host = self.node.host
        if host is not None:
            await keep_bootstrap_connected(host, addr, max_delay=self.node.max_backoff, on_connected=self._joined_via)
        else:
            await self._keep_answering(peer, addr)

    async def _keep_answering(self, peer: PeerId, addr: Multiaddr) -> NoReturn:
        """Without a host (in-memory networks): "connected" means it answered a FIND_NODE lately."""

        async def dial() -> None:
            await self.client.call_ping(peer, [addr])
            self.routing.add_peer(peer, [addrs_.without_peer(addr)])
            await self.join()

        async def wait_gone() -> None:
            while True:
                await trio.sleep(self.node.refresh_interval)
                try:
                    await self.client.call_ping(peer, self.routing.addrs_of(peer) or [addr])
                except PEER_FAILURES:
                    return

        await keep_connected(dial, lambda: False, wait_gone, name=f"bootstrap {addr}", max_delay=self.node.max_backoff)

    async def _joined_via(self, conn: KadConnection) -> None:
        """A bootstrap peer is connected: once identified, take it in and look up our own id."""
        node = self.node
        with trio.move_on_after(node.query_timeout):
            await conn.identified.wait()
        info = conn.identify_info
        if info is not None and PROTOCOL_ID not in info.protocols:
            log.warning("bootstrap peer %s does not serve %s: cannot join the DHT through it", conn.peer_id, PROTOCOL_ID)
            return
        if conn.peer_id not in node.table and node.host is not None:
            addrs = dialable(node.host.peerstore.addrs(conn.peer_id)) or [addrs_.without_peer(conn.remote_addr)]
            self.routing.add_peer(conn.peer_id, addrs)
        # Until a lookup got an answer (ours, or one through another bootstrap peer), try again
        # with backoff while this connection lasts.
        for delay in backoff_delays(cap=node.max_backoff):
            if await self.join() or self.bootstrapped.is_set() or conn.is_closed:
                return
            log.info("joining the DHT through %s: no answer; trying again in %g s", conn.peer_id, delay)
            await trio.sleep(delay)

    async def _maintain(self) -> None:
        node = self.node
        rng = random.Random()
        check_every = max(1.0, min(node.refresh_interval, node.republish_interval) / 10)
        while True:
            await trio.sleep(check_every)
            t = now()
            wall = node.wall_clock()
            node.records.expire(wall)
            node.providers.expire(t)
            self.routing.changed()  # also catches changes made to the table from outside
            for index in node.table.stale_buckets(t, node.refresh_interval)[:REFRESHES_PER_ROUND]:
                await self._refresh(index, rng, t)
            for stored in node.records.due_for_republish(wall, node.republish_interval):
                node.records.mark_republished(stored.record.id, stored.publisher, wall)
                await quietly(self.client.store_at_closest(stored.record.id, stored.envelope))


def bootstrap_addr(addr: str | Multiaddr) -> tuple[Multiaddr, PeerId]:
    """A checked bootstrap address and the peer id it ends in.

    Raises:
        AddressError: malformed, not a TCP address, or no ``/p2p/<peer id>`` at the end.
    """
    ma = addrs_.parse(addr)
    peer = addrs_.tcp_endpoint(ma).peer_id
    if peer is None:
        raise addrs_.AddressError(addr, "a bootstrap address must end in /p2p/<peer id>")
    return ma, peer


def _addr_peer(addr: Multiaddr) -> PeerId | None:
    try:
        return addrs_.tcp_endpoint(addr).peer_id
    except PhysarumError:
        return None


def dialable(addrs: Iterable[Multiaddr], limit: int = MAX_ADDRS_PER_PEER) -> list[Multiaddr]:
    """The first ``limit`` distinct checked TCP addresses without ``/p2p/``, in order: what a
    contact holds.

    Addresses from identify or the peer store may come unchecked; the table needs checked ones
    (it reads their bytes, and saves their text form). Linear in what it reads, and it stops
    reading once it has ``limit``: repeats are skipped by a set lookup on their bytes before
    any parsing, oversized ones by their length.
    """
    out: dict[Multiaddr, None] = {}
    seen: set[bytes] = set()
    for a in addrs:
        raw = a.to_bytes()
        if raw in seen or len(raw) > MAX_ADDR_SIZE:
            continue
        seen.add(raw)
        try:
            checked = parse_multiaddr_bytes(addrs_.without_peer(a).to_bytes())
        except (PhysarumError, ValueError):
            continue
        if checked in out or not addr_allowed(checked) or not addrs_.is_dialable(checked):
            continue
        out[checked] = None
        if len(out) >= limit:
            break
    return list(out)


__all__ = ["MaintainedNode", "Maintenance", "NotJoinedError", "bootstrap_addr", "dialable"]
