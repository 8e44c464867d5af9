"""Asking other nodes: one kad request per call, and the iterative lookup that chains them.

* :class:`KadTransport` is how a request reaches a peer: :class:`HostTransport` over a host (a new
  ``/ipfs/kad/1.0.0`` stream per request), :class:`~physarum.dht.memory.MemoryTransport` in tests
  and simulations.
* :class:`KadClient` sends them (``call_*``, one per message type, each under ``query_timeout``;
  an answer of another type is a :class:`~physarum.errors.DecodeError`), runs lookups, and stores
  a record at the ``k`` closest nodes.
* :class:`LookupRun` is one iterative lookup: the :class:`~physarum.dht.lookup.Lookup` state
  machine seeded from the routing table, with what each answer teaches the table (the peer that
  answered joins it; a peer that cannot be dialed leaves it). :meth:`LookupRun.run` drives it on
  trio (``alpha`` queries in flight, each under its own deadline); :meth:`LookupRun.run_in_order`
  drives it synchronously, answers taken in the order asked, for the simulated networks of
  ``bench/dht.py``, which so measure this very code.

We send each request on a new stream and read one answer. ADD_PROVIDER gets no answer in libp2p:
it is sent without waiting for one.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from physarum.dht import keyspace
from physarum.dht.addrs import bounded_addrs
from physarum.dht.framing import MessageReader, stream_budget
from physarum.dht.host_api import KadHost
from physarum.dht.lookup import Lookup, LookupStats
from physarum.dht.messages import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_ID,
    ConnectionType,
    Message,
    MessageType,
    Peer,
    Record,
    encode_framed,
)
from physarum.dht.metrics import DhtMetrics
from physarum.dht.records import RecordError, decode_record_set, encode_record_set, record_key
from physarum.dht.routing import Routing, now
from physarum.dht.table import RoutingTable
from physarum.errors import PEER_FAILURES, DecodeError, DialError, failure_kind
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr

log = logging.getLogger(__name__)

#: Seconds one peer has to answer a query within a lookup (``KadDHT(query_timeout=)``,
#: ``-dht-query-timeout``): a few round trips on the slowest links an edge network has; a peer
#: slower than this counts as not answering and the lookup asks another.
DEFAULT_QUERY_TIMEOUT = 5.0



class KadTransport(Protocol):
    """Sends one kad request to a peer and returns its answer."""

    async def request(self, peer: PeerId, addrs: Sequence[Multiaddr], message: Message) -> Message:
        """Raises: PhysarumError, trio.BrokenResourceError, OSError when the peer cannot answer."""
        ...


class HostTransport:
    """Kad requests over a :class:`~physarum.overlay.host.Host`: one new stream per request.

    ``addrs`` (from a lookup answer or the routing table) go to the host's peer store first, so
    the host can dial a peer it has never seen. ADD_PROVIDER gets no answer in libp2p: it is sent,
    our side closed, and once the server has closed its side the request itself is returned as
    the "answer".
    """

    def __init__(self, host: KadHost) -> None:
        self.host = host

    async def request(self, peer: PeerId, addrs: Sequence[Multiaddr], message: Message) -> Message:
        """The answer is read within the 4 MiB message limit and reserved from the connection's
        memory budget while it is read (see :mod:`physarum.dht.framing`).

        Raises: DialError, NegotiationError, DecodeError, LimitError (MessageTooLargeError,
        MemoryRefusedError among them), trio.BrokenResourceError, trio.TooSlowError."""
        if addrs and self.host.connection(peer) is None:
            self.host.peerstore.add_addrs(peer, list(addrs))
        stream = await self.host.new_stream(peer, [PROTOCOL_ID])
        try:
            await stream.send_all(encode_framed(message))
            if message.type == MessageType.ADD_PROVIDER:
                # No answer comes; wait for the server to close its side, so the announcement is
                # stored once we return (the caller's deadline bounds a server that never closes).
                await stream.send_eof()
                with contextlib.suppress(trio.BrokenResourceError):
                    while await stream.receive_some():
                        pass
                return message
            return await MessageReader(stream, budget=stream_budget(stream)).receive(MAX_MESSAGE_SIZE)
        finally:
            await stream.aclose()


@dataclass(frozen=True)
class LookupResult:
    """The ``k`` closest peers found (closest first) with their addresses, and what it cost."""

    peers: list[Peer]
    stats: LookupStats


class ClientNode(Protocol):
    """What the client uses of its node (a :class:`~physarum.dht.service.KadDHT`)."""

    peer_id: PeerId
    k: int
    alpha: int
    table: RoutingTable
    transport: KadTransport
    query_timeout: float
    own_addrs: Callable[[], list[Multiaddr]]


class LookupRun:
    """One iterative lookup for ``key`` from ``node`` (see the module notes); made by
    :meth:`KadClient.start_lookup`, driven by :meth:`run` or :meth:`run_in_order`, once."""

    def __init__(self, node: ClientNode, routing: Routing, key: bytes, metrics: DhtMetrics | None = None) -> None:
        target = keyspace.kad_key(key)
        node.table.note_lookup(target, now())
        self._me = node.peer_id
        self._routing = routing
        self._metrics = metrics
        self.lookup: Lookup[PeerId] = Lookup(target, k=node.k, alpha=node.alpha, exclude=frozenset([self._me]))
        self.known: dict[PeerId, Peer] = {}
        """Every peer offered so far, with the first addresses heard for it."""
        self.lookup.add(self._offer(routing.closest_peers(target, node.k)))

    def _offer(self, peers: Iterable[Peer]) -> list[tuple[PeerId, int]]:
        known = self.known
        out = []
        for p in peers:
            if p.peer_id == self._me:
                continue
            if p.peer_id not in known or (p.addrs and not known[p.peer_id].addrs):
                known[p.peer_id] = p
            out.append((p.peer_id, keyspace.peer_key(p.peer_id)))
        return out

    def answered(self, peer: PeerId, closer: Iterable[Peer] | None) -> bool:
        """Feed in what ``peer`` answered (the peers it named), or None when it did not answer.

        A peer that answered joins the routing table. Returns whether it answered."""
        if closer is None:
            self.lookup.on_failure(peer)
            return False
        self.lookup.on_response(peer, self._offer(closer))
        self._routing.add_peer(peer, list(self.known[peer].addrs))
        return True

    def _unreachable(self, peer: PeerId, error: BaseException) -> None:
        log.debug("lookup: %s did not answer: %s", peer, error)
        if isinstance(error, DialError):
            self._routing.forget(peer)

    def result(self) -> LookupResult:
        return LookupResult([self.known[p] for p in self.lookup.result()], self.lookup.stats)

    async def run(
        self,
        ask: Callable[[Peer], Awaitable[Sequence[Peer]]],
        *,
        timeout: float,
        until: Callable[[], bool] | None = None,
    ) -> LookupResult:
        """Drive the lookup: ``alpha`` queries ``ask(peer)`` in flight, each under ``timeout``.

        A query that raises :data:`PEER_FAILURES` (or is cut by ``timeout``) counts as no answer.
        ``until``, checked after each answer, ends the lookup early when it returns True (queries
        still in flight are cancelled). Never raises what a query raises."""
        results: trio.MemorySendChannel[tuple[PeerId, Sequence[Peer] | None]]
        results, inbox = trio.open_memory_channel(math.inf)

        async def one(peer: PeerId) -> None:
            answer: Sequence[Peer] | None = None
            try:
                with trio.fail_after(timeout):
                    answer = await ask(self.known[peer])
            except PEER_FAILURES as e:
                self._unreachable(peer, e)
            results.send_nowait((peer, answer))

        lookup = self.lookup
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            while not lookup.done:
                for peer in lookup.next_queries():
                    nursery.start_soon(one, peer)
                if lookup.in_flight == 0:
                    break
                peer, answer = await inbox.receive()
                if self.answered(peer, answer) and until is not None and until():
                    break
            nursery.cancel_scope.cancel()
        if self._metrics is not None:
            self._metrics.lookup_duration.observe(trio.current_time() - started)
        return self.result()

    def run_in_order(self, ask: Callable[[Peer], Iterable[Peer] | None]) -> LookupResult:
        """Drive the lookup synchronously: the same queries as :meth:`run`, ``alpha`` in flight,
        answered one at a time in the order they were sent. ``ask`` returns the peers an answer
        names, or None for no answer. For simulations (``bench/_dht_sim.py``): no trio tasks."""
        lookup = self.lookup
        in_flight: collections.deque[PeerId] = collections.deque()
        while not lookup.done:
            in_flight.extend(lookup.next_queries())
            if lookup.in_flight == 0:
                break
            peer = in_flight.popleft()
            self.answered(peer, ask(self.known[peer]))
        return self.result()


class KadClient:
    """The ``call_*`` requests of one node, its lookups, and storing records at the closest nodes."""

    def __init__(self, node: ClientNode, routing: Routing, metrics: DhtMetrics | None = None) -> None:
        self.node = node
        self.routing = routing
        self.metrics = metrics

    async def _call(self, peer: PeerId, addrs: Sequence[Multiaddr], message: Message) -> Message:
        try:
            with trio.fail_after(self.node.query_timeout):
                reply = await self.node.transport.request(peer, addrs, message)
            if reply.type != message.type:
                raise DecodeError(f"asked {message.type.name}, {peer} answered {reply.type.name}")
        except PEER_FAILURES as e:
            self._count(message.type, failure_kind(e).value)
            raise
        self._count(message.type, "ok")
        return reply

    def _count(self, kind: MessageType, result: str) -> None:
        if self.metrics is not None:
            self.metrics.queries[kind, result].inc()

    async def call_ping(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> None:
        """Check ``peer`` speaks kad, with a FIND_NODE for ourselves (kad PING is deprecated: never sent)."""
        await self.call_find_node(peer, addrs, self.node.peer_id.to_bytes())

    async def call_find_node(self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes) -> list[Peer]:
        reply = await self._call(peer, addrs, Message(MessageType.FIND_NODE, key=key))
        return list(reply.closer_peers)

    async def call_get_value(
        self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes
    ) -> tuple[list[bytes], list[Peer]]:
        reply = await self._call(peer, addrs, Message(MessageType.GET_VALUE, key=key))
        envelopes: list[bytes] = []
        if reply.record is not None and reply.record.key == key:
            try:
                envelopes = decode_record_set(reply.record.value)
            except (RecordError, DecodeError) as e:
                log.debug("GET_VALUE answer from %s has a bad record set: %s", peer, e)
        return envelopes, list(reply.closer_peers)

    async def call_put_value(self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes, value: bytes) -> None:
        await self._call(peer, addrs, Message(MessageType.PUT_VALUE, key=key, record=Record(key, value)))

    async def call_get_providers(
        self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes
    ) -> tuple[list[Peer], list[Peer]]:
        reply = await self._call(peer, addrs, Message(MessageType.GET_PROVIDERS, key=key))
        return list(reply.provider_peers), list(reply.closer_peers)

    async def call_add_provider(self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes) -> None:
        me = Peer(self.node.peer_id, bounded_addrs(self.node.own_addrs()), ConnectionType.CONNECTED)
        # ADD_PROVIDER has no answer in libp2p: the transport sends it and does not wait for one.
        message = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(me,))
        result = "deadline"
        try:
            with trio.move_on_after(self.node.query_timeout):
                await self.node.transport.request(peer, addrs, message)
                result = "ok"
        except PEER_FAILURES as e:
            result = failure_kind(e).value
            raise
        finally:
            self._count(MessageType.ADD_PROVIDER, result)

    def start_lookup(self, key: bytes) -> LookupRun:
        """A lookup for ``key`` (any bytes; distances use its SHA-256), counted in
        ``physarum_dht_lookups_total`` and seeded from the routing table; drive it once."""
        if self.metrics is not None:
            self.metrics.lookups.inc()
        return LookupRun(self.node, self.routing, key, self.metrics)

    async def lookup(
        self,
        key: bytes,
        *,
        query: Callable[[Peer], Awaitable[list[Peer]]] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> LookupResult:
        """The ``k`` peers closest to ``key``, asking each with ``query`` (FIND_NODE by default):
        no wait for the join and no deadline, so an empty or silent table gives an empty result
        (the public :meth:`~physarum.dht.service.KadDHT.lookup` adds both). Never raises what a
        query raises."""

        async def ask_find_node(p: Peer) -> list[Peer]:
            return await self.call_find_node(p.peer_id, p.addrs, key)

        return await self.start_lookup(key).run(query or ask_find_node, timeout=self.node.query_timeout, until=until)

    async def store_at_closest(self, record_id: str, envelope: bytes, *, deadline: float = math.inf) -> int:
        """PUT_VALUE ``envelope`` (a signed contact record) at the ``k`` nodes closest to its key;
        returns how many stored it.

        Raises:
            trio.TooSlowError: ``deadline`` passed during the lookup (each store then has
                ``query_timeout``)."""
        key = record_key(record_id)
        with trio.fail_at(deadline):
            closest = await self.lookup(key)
        stored = 0

        async def put(p: Peer) -> None:
            nonlocal stored
            try:
                await self.call_put_value(p.peer_id, p.addrs, key, encode_record_set([envelope]))
                stored += 1
            except PEER_FAILURES as e:
                log.info("storing %r at %s failed: %s", record_id, p.peer_id, e)

        async with trio.open_nursery() as nursery:
            for p in closest.peers:
                nursery.start_soon(put, p)
        return stored


async def quietly(work: Awaitable[object]) -> None:
    """Await ``work``, logging (not raising) a peer's failure: for background work nobody waits on."""
    try:
        await work
    except PEER_FAILURES as e:
        log.info("dht maintenance: %s", e)


__all__ = [
    "PEER_FAILURES",
    "ClientNode",
    "HostTransport",
    "KadClient",
    "KadTransport",
    "LookupResult",
    "LookupRun",
    "quietly",
]
