"""The routing table as the DHT keeps it: who gets in, who is evicted, who is handed out.

:mod:`physarum.dht.table` is the pure data structure (buckets, ``add`` says Added, Updated or
BucketFull, and never starts a task); :class:`Routing` is the policy around it:

* :meth:`Routing.add_peer` offers a peer that speaks kad (from identify, a lookup answer, a
  request) with at most ``table.max_addrs`` (32) checked addresses. When its bucket is full, the
  oldest contact is checked (libp2p ping on a host, else a FIND_NODE) and replaced only if it does
  not answer within ``query_timeout``, as Kademlia says; the check runs in the DHT's nursery, so
  only while :meth:`~physarum.dht.service.KadDHT.run` runs.
* :meth:`Routing.changed` is the one signal that the table (or the join state) changed: it sets the
  ``physarum_routing_table_peers`` gauge and wakes lookups waiting for the join.
* :meth:`Routing.standing` is the history the record and provider stores rank publishers by
  (:mod:`physarum.dht.standing`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from physarum.dht.addrs import bounded_addrs
from physarum.dht.messages import ConnectionType, Peer
from physarum.dht.metrics import DhtMetrics
from physarum.dht.table import Added, BucketFull, Contact, RoutingTable
from physarum.errors import PhysarumError
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr


class RoutingNode(Protocol):
    """What the routing policy uses of its node (a :class:`~physarum.dht.service.KadDHT`)."""

    peer_id: PeerId
    table: RoutingTable
    query_timeout: float
    liveness_check: Callable[[PeerId], Awaitable[bool]] | None

    async def call_ping(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> None: ...


def peer_entry(contact: Contact) -> Peer:
    """A table contact as a kad ``Peer`` entry (what answers and lookups carry)."""
    return Peer(contact.peer_id, tuple(contact.addrs), ConnectionType.CAN_CONNECT)


def now() -> float:
    """The DHT's clock for the table, providers and deadlines (records use the wall clock)."""
    return trio.current_time()


class Routing:
    """Admission, eviction checks and standing for ``node.table`` (see the module notes)."""

    def __init__(self, node: RoutingNode, metrics: DhtMetrics | None = None) -> None:
        self.node = node
        self.metrics = metrics
        self.nursery: trio.Nursery | None = None
        """Where eviction checks run; set while :meth:`KadDHT.run` runs, None otherwise."""
        self.checking: set[PeerId] = set()
        """Peers whose liveness is being checked (one check at a time per peer)."""
        self._change: trio.Event | None = None  # created by waiters, set by changed()

    def add_peer(self, peer_id: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """Offer a peer that speaks kad to the routing table (Kademlia's eviction rule applies).

        The contact keeps the first ``table.max_addrs`` (32) distinct addresses within the size
        bounds of :mod:`physarum.dht.addrs` (one pass; it stops reading once it has them)."""
        node = self.node
        if peer_id == node.peer_id:
            return
        kept = bounded_addrs(addrs, node.table.max_addrs)
        result = node.table.add(Contact(peer_id, kept, now()), now())
        if isinstance(result, Added):
            self.changed()
        elif isinstance(result, BucketFull) and self.nursery is not None:
            oldest = result.oldest.peer_id
            if oldest not in self.checking:
                self.checking.add(oldest)
                self.nursery.start_soon(self._check_oldest, result)

    async def _check_oldest(self, full: BucketFull) -> None:
        oldest = full.oldest.peer_id
        try:
            alive = False
            with trio.move_on_after(self.node.query_timeout):
                alive = await self._alive(oldest)
            if alive:
                self.node.table.touch(oldest, now())
            else:
                self.node.table.replace(oldest, full.candidate, now())
                self.changed()
        finally:
            self.checking.discard(oldest)

    async def _alive(self, peer: PeerId) -> bool:
        check = self.node.liveness_check
        if check is not None:
            return await check(peer)
        try:
            await self.node.call_ping(peer, self.addrs_of(peer))
        except (PhysarumError, trio.BrokenResourceError, OSError):
            return False
        return True

    def forget(self, peer: PeerId) -> None:
        """Drop ``peer`` from the table (it cannot be dialed, or stopped serving kad)."""
        if self.node.table.remove(peer) is not None:
            self.changed()

    def addrs_of(self, peer: PeerId) -> list[Multiaddr]:
        contact = self.node.table.get(peer)
        return list(contact.addrs) if contact else []

    def closest_peers(self, key: int, count: int, exclude: Sequence[PeerId] = ()) -> list[Peer]:
        """The ``count`` contacts nearest to ``key`` as kad ``Peer`` entries, nearest first."""
        return [peer_entry(c) for c in self.node.table.closest(key, count, exclude=exclude)]

    def standing(self, peer: PeerId) -> float | None:
        """Since when ``peer`` has been in the routing table (trio clock), None when it is not:
        the history the record and provider stores rank publishers by. We rank above everyone
        (our own provider entries, say)."""
        if peer == self.node.peer_id:
            return -math.inf
        contact = self.node.table.get(peer)
        return None if contact is None else contact.since

    def changed(self) -> None:
        """The table or the join state changed: update the gauge, wake lookups waiting to join."""
        if self.metrics is not None:
            self.metrics.table_peers.set(len(self.node.table))
        if self._change is not None:
            self._change.set()
            self._change = None

    async def wait_changed(self, deadline: float) -> None:
        """Return at the next :meth:`changed`, or at ``deadline`` (trio clock), whichever is first."""
        if self._change is None:
            self._change = trio.Event()
        with trio.move_on_at(deadline):
            await self._change.wait()


__all__ = ["Routing", "RoutingNode", "now", "peer_entry"]
