"""The Kademlia DHT service: ``/ipfs/kad/1.0.0`` server and client, lookups, contact records.

:class:`KadDHT` is the node: it holds the options, the routing table and the stores, wires itself
to a host (:meth:`KadDHT.for_host`), and offers the public operations (:meth:`~KadDHT.lookup`,
:meth:`~KadDHT.find_peer`, :meth:`~KadDHT.publish_contact`, :meth:`~KadDHT.find_contact`,
:meth:`~KadDHT.provide`, :meth:`~KadDHT.find_providers`). The work is done by its parts, each a
module of its own:

* :mod:`physarum.dht.routing` (:attr:`KadDHT.routing`): who joins the routing table, the eviction
  checks of full buckets (libp2p ping on a host, replaced only if it does not answer), standing;
* :mod:`physarum.dht.server` (:attr:`KadDHT.server`): the stream handler and the ``rpc_*``
  answers, with the defences against hostile peers and their refusal counters;
* :mod:`physarum.dht.client` (:attr:`KadDHT.client`): the ``call_*`` requests and the iterative
  lookup driver (:class:`~physarum.dht.client.LookupRun` around :class:`~physarum.dht.lookup.Lookup`,
  ``alpha`` queries in flight, each under its own deadline);
* :mod:`physarum.dht.maintenance` (:attr:`KadDHT.maintenance`): bootstrap, rejoin, identify
  intake, bucket refresh, republish, and the wait for the join;
* :mod:`physarum.dht.records` and :mod:`physarum.dht.providers`: the signed contact records and
  the pure, bounded stores that hold records and provider entries;
* :mod:`physarum.dht.host_api`: what all of it uses of a host, as typed protocols;
  :mod:`physarum.dht.metrics`: the Prometheus series.

The network is behind :class:`~physarum.dht.client.KadTransport`, so the same service runs over a
real :class:`~physarum.overlay.host.Host` (:class:`~physarum.dht.client.HostTransport`) or an
in-memory network in tests (:mod:`physarum.dht.memory`).

On a real host (:meth:`KadDHT.for_host`):

* Connected peers join the routing table when their identify lists ``/ipfs/kad/1.0.0`` and at least
  one dialable address (a contact without addresses is of no use to anyone we would hand it to);
  a peer whose identify push drops the protocol leaves it. Peers already identified when
  :meth:`KadDHT.for_host` runs are taken in at once, and registering the kad handler makes the
  host push our new protocol list to the peers already connected (identify push), so a DHT may
  start on a host that is already connected: those peers learn that we speak kad.
* Bootstrap peers are kept connected by :func:`physarum.overlay.backoff.keep_bootstrap_connected`
  (PhysarumSM's backoff); after each (re)connection we look up our own id through them.
  :attr:`KadDHT.bootstrapped` is set after the first lookup that got an answer (at once when there
  is nothing to join through). A table loaded from disk
  (:meth:`~physarum.dht.table.RoutingTable.from_json`) is rejoined the same way, so a restarted node
  needs no bootstrap peer; so is a table that identified peers filled before :meth:`KadDHT.run`,
  and, while the node has not joined, any kad peer that identifies later.

Joining and lookups (:class:`NotJoinedError`): the public lookups (:meth:`KadDHT.lookup`,
:meth:`~KadDHT.find_peer`, :meth:`~KadDHT.find_contact`, :meth:`~KadDHT.find_providers`,
:meth:`~KadDHT.publish_contact`, :meth:`~KadDHT.provide`) never answer "nothing found" when they
could ask nobody:

* While the node is joining (:meth:`KadDHT.run` is running with bootstrap peers, or with a
  starting table that still holds peers, and :attr:`~KadDHT.bootstrapped` is not set yet), a
  lookup first waits for the join, within the caller's ``timeout`` (without one, for as long as
  the join takes), then raises :class:`NotJoinedError` with ``joining=True`` if it has not
  finished. A node with bootstrap peers whose table has emptied since waits the same way for
  them to answer again.
* With an empty table and nothing to join through (no bootstrap peer, the starting table's peers
  all gone, or :meth:`KadDHT.run` not running), a lookup raises :class:`NotJoinedError` at once.
  So does a lookup that asked peers and got no answer from any of them.
* Local results still count where they are an answer: :meth:`~KadDHT.find_contact` and
  :meth:`~KadDHT.find_providers` return the records this node holds (its own, or stored here by
  others) instead of raising when it holds some, and :meth:`~KadDHT.find_peer` answers for our own
  id and for peers in the table without asking anyone. :meth:`~KadDHT.publish_contact` and
  :meth:`~KadDHT.provide` check before they store anything, so a :class:`NotJoinedError` from them
  means nothing was published.

Metrics (with ``registry=``): ``physarum_routing_table_peers``, ``physarum_dht_requests_total{type}``,
``physarum_dht_lookups_total`` and the refusal counters ``physarum_dht_requests_refused_total``,
``physarum_dht_records_refused_total`` and ``physarum_dht_providers_refused_total``, by ``reason``
(see :mod:`physarum.dht.metrics`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from physarum.dht.client import (
    DEFAULT_QUERY_TIMEOUT,
    PEER_FAILURES,
    HostTransport,
    KadClient,
    KadTransport,
    LookupResult,
    quietly,
)
from physarum.dht.host_api import (
    IdentifyingHost,
    KadConnection,
    KadHost,
    KadPeerStore,
    KadSession,
    KadStream,
    TagSource,
)
from physarum.dht.maintenance import Maintenance, NotJoinedError, bootstrap_addr
from physarum.dht.messages import PROTOCOL_ID, ConnectionType, Message, Peer
from physarum.dht.metrics import PROVIDER_REFUSALS, RECORD_REFUSALS, REQUEST_REFUSALS, DhtMetrics
from physarum.dht.providers import ProviderStore
from physarum.dht.records import (
    DEFAULT_RECORD_TTL,
    ContactRecord,
    RecordError,
    RecordRejected,
    RecordStore,
    new_expiry,
    record_key,
    sign_record,
    verify_record,
)
from physarum.dht.routing import Routing, now, peer_entry
from physarum.dht.server import DEFAULT_MAX_KEY_SIZE, DEFAULT_MAX_REQUEST_SIZE, KadServer
from physarum.dht.table import RoutingTable
from physarum.errors import ConfigError, PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay.connmgr import KBUCKET_WEIGHT
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)


class PeerNotFoundError(PhysarumError):
    """A lookup ended without finding the peer; ``peer_id`` says which."""

    def __init__(self, peer_id: PeerId) -> None:
        super().__init__(f"peer {peer_id} not found in the DHT")
        self.peer_id = peer_id


_Conn = TypeVar("_Conn", bound=KadConnection)


class KadDHT:
    """A Kademlia DHT node in server mode.

    Args:
        key_pair: our identity (signs our contact records).
        transport: how requests reach other peers.
        k, alpha: Kademlia's bucket size and parallelism (libp2p: 20 and 3).
        query_timeout: deadline of one request within a lookup.
        bootstrap: multiaddrs (``Multiaddr`` objects or text) ending in ``/p2p/<peer id>`` to join
            through; kept connected with exponential backoff (2**n s, capped at ``max_backoff``)
            when they drop, as PhysarumSM does. Addresses naming our own peer id are skipped
            (redundant bootstraps share one list).
        refresh_interval: a bucket with no lookup for this long is refreshed with a random lookup.
        republish_interval: our own contact records are stored again this often.
        wall_clock: unix time, for record expiry (records carry absolute times).
        table: a routing table to start from (e.g. loaded with ``RoutingTable.from_json``); it must
            be ours (``table.self_id``). :meth:`run` rejoins through its contacts.
        stream_idle_timeout: an inbound kad stream with no new request for this long is closed.
        request_timeout: an inbound request must arrive whole within this long of its first byte
            (default 10 s), else its stream is reset.
        max_request_size: largest inbound request, in bytes (default 64 KiB, see
            :mod:`physarum.dht.server`).
        max_key_size: longest key or record key in a request, in bytes (default 1 KiB).
        records, providers: the stores to hold others' records and provider entries in, built
            with the bounds wanted (default: :class:`RecordStore` and :class:`ProviderStore`
            with theirs); the DHT sets their ``standing`` to seniority in its routing table.
        refusal_log_interval: refused requests, records and providers are summed up in one INFO
            line at most this often (default 60 s); each is logged at DEBUG.
        registry: a ``prometheus_client.CollectorRegistry`` to export the DHT's metrics on
            (``physarum_routing_table_peers``, ``physarum_dht_requests_total{type}``,
            ``physarum_dht_lookups_total`` and the refusal counters of :mod:`physarum.dht.metrics`);
            None exports nothing. One DHT per registry (prometheus_client refuses the same names
            twice).

    Parts (see the module notes): :attr:`routing` (:class:`~physarum.dht.routing.Routing`),
    :attr:`client` (:class:`~physarum.dht.client.KadClient`), :attr:`server`
    (:class:`~physarum.dht.server.KadServer`) and :attr:`maintenance`
    (:class:`~physarum.dht.maintenance.Maintenance`). Each reads the options and the table from
    this object when it runs, so changing an option or the ``own_addrs`` callable afterwards
    takes effect everywhere. To change what the node does, replace or wrap a part's method (e.g.
    ``dht.server.rpc``): :class:`KadDHT`'s ``rpc``, ``call_*`` and ``add_peer`` only forward
    to the parts, which call each other directly.

    Lifetimes, on a real host (:meth:`for_host`):

    * create the DHT inside ``trio.run`` once the host runs (``async with open_host(...)`` or
      ``await nursery.start(host.run)``); it reads ``trio.current_time()`` and registers its
      handler and identify callback on the host. It may be created before or after the host
      listens and connects (see the module notes);
    * start it with ``await nursery.start(dht.run)``; it keeps the bootstrap peers connected, joins,
      refreshes and republishes until that nursery is cancelled. Lookups work without
      :meth:`run` through the peers the host has identified, but nothing joins, so an empty table
      raises :class:`NotJoinedError`;
    * the host must outlive the nursery running the DHT (open the host first, the DHT's nursery
      inside it): the DHT's tasks dial and open streams through it. The DHT does not unregister
      its handler; a host that goes on without the DHT should ``remove_handler(PROTOCOL_ID)``.

    Raises:
        ConfigError: ``table`` belongs to another peer id, or ``registry`` already holds the
            DHT's metric names.
        physarum.overlay.addr.AddressError: a ``bootstrap`` address is malformed, not
            ``/ip4|ip6|dns*/HOST/tcp/PORT/p2p/ID``, or lacks its ``/p2p/<peer id>``
            (``reason`` says which).
    """

    def __init__(
        self,
        key_pair: KeyPair,
        transport: KadTransport,
        *,
        k: int = 20,
        alpha: int = 3,
        query_timeout: float = DEFAULT_QUERY_TIMEOUT,
        bootstrap: Sequence[str | Multiaddr] = (),
        refresh_interval: float = 600.0,
        republish_interval: float = 3600.0,
        max_backoff: float = 512.0,
        wall_clock: Callable[[], float] = time.time,
        table: RoutingTable | None = None,
        liveness_check: Callable[[PeerId], Awaitable[bool]] | None = None,
        stream_idle_timeout: float = 60.0,
        request_timeout: float = 10.0,
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        max_key_size: int = DEFAULT_MAX_KEY_SIZE,
        records: RecordStore | None = None,
        providers: ProviderStore | None = None,
        refusal_log_interval: float = 60.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if table is not None and table.self_id != key_pair.peer_id:
            raise ConfigError(f"the routing table belongs to {table.self_id}, not {key_pair.peer_id}")
        self.key_pair = key_pair
        self.peer_id = key_pair.peer_id
        self.transport = transport
        self.k = k
        self.alpha = alpha
        self.query_timeout = query_timeout
        self.bootstrap_addrs = [
            addr for addr, peer in map(bootstrap_addr, bootstrap) if peer != key_pair.peer_id
        ]
        self.refresh_interval = refresh_interval
        self.republish_interval = republish_interval
        self.max_backoff = max_backoff
        self.wall_clock = wall_clock
        self.table = table if table is not None else RoutingTable(self.peer_id, k=k, now=now())
        self.stream_idle_timeout = stream_idle_timeout
        self.request_timeout = request_timeout
        self.max_request_size = max_request_size
        self.max_key_size = max_key_size
        self.records = records if records is not None else RecordStore()
        self.providers = providers if providers is not None else ProviderStore()
        self.refusal_log_interval = refusal_log_interval
        self.liveness_check = liveness_check
        self.own_addrs: Callable[[], list[Multiaddr]] = list
        self.host: KadHost | None = None
        metrics = DhtMetrics(registry) if registry is not None else None
        self.routing = Routing(self, metrics)
        self.client = KadClient(self, self.routing, metrics)
        self.server = KadServer(self, self.routing, metrics)
        self.maintenance = Maintenance(self, self.routing, self.client)
        self.records.standing = self.providers.standing = self.routing.standing
        self.routing.changed()

    @property
    def bootstrapped(self) -> trio.Event:
        """Set once a lookup of our own id got an answer (at once when there is nothing to join)."""
        return self.maintenance.bootstrapped

    # -- wiring to a host --

    @classmethod
    def for_host(
        cls,
        host: IdentifyingHost[_Conn],
        *,
        server: bool = True,
        bootstrap: Sequence[str | Multiaddr] = (),
        table: RoutingTable | None = None,
        registry: CollectorRegistry | None = None,
        **options: Any,
    ) -> KadDHT:
        """A DHT over ``host``: serves the protocol there (``server``) and learns peers from identify.

        ``bootstrap``, ``table``, ``registry`` and ``options`` (``k``, ``query_timeout``, ...) are
        :class:`KadDHT`'s. Call it inside trio once the host runs, before or after it connects (see
        the class notes on lifetimes). Peers already identified are taken in at once; peers already
        connected learn that we speak kad from the identify push the host sends when the handler
        is registered. With ``server=False`` (client mode, for one-shot commands) no handler is
        registered, so peers never add us to their tables, and we still look things up through
        them.

        Raises:
            physarum.overlay.addr.AddressError: a bad ``bootstrap`` address (checked before
                anything is registered on the host).
            ConfigError: ``table`` belongs to another peer id.
        """
        dht = cls(
            host.key_pair,
            HostTransport(host),
            liveness_check=_ping_check(host),
            bootstrap=bootstrap,
            table=table,
            registry=registry,
            **options,
        )
        dht.host = host
        dht.own_addrs = host.advertised_addrs
        if server:
            host.set_handler(PROTOCOL_ID, dht.server.handle_stream)
        host.on_identify.append(dht.maintenance.on_identify)
        manager: object = getattr(host, "conn_manager", None)  # a Host's ConnectionManager: trim others first
        if isinstance(manager, TagSource):
            manager.add_tag_source("kbucket", lambda peer: KBUCKET_WEIGHT if peer in dht.table else 0)
        for conns in list(host.connections.values()):
            for conn in conns:
                if conn.identify_info is not None:
                    dht.maintenance.on_identify(conn)
        return dht

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Maintain the table (bootstrap, refresh) and our records (republish, expiry) until cancelled.

        Start it with ``await nursery.start(dht.run)`` in a nursery the host outlives.
        """
        await self.maintenance.run(task_status=task_status)

    # -- the parts' entry points, kept here for callers of KadDHT --

    def add_peer(self, peer_id: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """:meth:`Routing.add_peer <physarum.dht.routing.Routing.add_peer>`: offer a peer that speaks kad."""
        self.routing.add_peer(peer_id, addrs)

    def closest_peers(self, key: int, exclude: Sequence[PeerId] = ()) -> list[Peer]:
        return self.routing.closest_peers(key, self.k, exclude)

    def rpc(self, sender: PeerId | None, request: Message) -> Message | None:
        """:meth:`KadServer.rpc <physarum.dht.server.KadServer.rpc>`: answer one request, None to refuse it."""
        return self.server.rpc(sender, request)

    def rpc_ping(self, sender: PeerId | None, request: Message) -> Message:
        return self.server.rpc_ping(sender, request)

    def rpc_find_node(self, sender: PeerId | None, request: Message) -> Message:
        return self.server.rpc_find_node(sender, request)

    def rpc_get_value(self, sender: PeerId | None, request: Message) -> Message:
        return self.server.rpc_get_value(sender, request)

    def rpc_put_value(self, sender: PeerId | None, request: Message) -> Message | None:
        return self.server.rpc_put_value(sender, request)

    def rpc_get_providers(self, sender: PeerId | None, request: Message) -> Message:
        return self.server.rpc_get_providers(sender, request)

    def rpc_add_provider(self, sender: PeerId | None, request: Message) -> Message | None:
        return self.server.rpc_add_provider(sender, request)

    async def call_ping(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> None:
        """Check ``peer`` speaks kad, with a FIND_NODE for ourselves (kad PING is deprecated: never sent)."""
        await self.client.call_ping(peer, addrs)

    async def call_find_node(self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes) -> list[Peer]:
        return await self.client.call_find_node(peer, addrs, key)

    async def call_get_value(
        self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes
    ) -> tuple[list[bytes], list[Peer]]:
        return await self.client.call_get_value(peer, addrs, key)

    async def call_put_value(self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes, value: bytes) -> None:
        await self.client.call_put_value(peer, addrs, key, value)

    async def call_get_providers(
        self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes
    ) -> tuple[list[Peer], list[Peer]]:
        return await self.client.call_get_providers(peer, addrs, key)

    async def call_add_provider(self, peer: PeerId, addrs: Sequence[Multiaddr], key: bytes) -> None:
        await self.client.call_add_provider(peer, addrs, key)

    # -- lookups --

    async def lookup(
        self,
        key: bytes,
        *,
        query: Callable[[Peer], Awaitable[list[Peer]]] | None = None,
        timeout: float | None = None,
        until: Callable[[], bool] | None = None,
    ) -> LookupResult:
        """The ``k`` peers closest to ``key`` (any bytes; distances use its SHA-256), asking
        ``alpha`` at a time. ``query`` replaces FIND_NODE (GET_VALUE lookups collect records on the way).
        ``until``, checked after each answer, ends the lookup early when it returns True (queries
        still in flight are cancelled). A peer that cannot be dialed leaves the routing table.
        While the node is joining, the lookup first waits for the join (see the module notes).

        Raises:
            NotJoinedError: nobody to ask (an empty table and nothing to join through, or the join
                not finished by the deadline), or none of the peers asked answered.
            trio.TooSlowError: ``timeout`` (which covers the wait for the join) passed during the
                lookup; each query has ``query_timeout`` anyway.
        """
        return await self._joined_lookup(key, _deadline(timeout), query=query, until=until)

    async def _joined_lookup(
        self,
        key: bytes,
        deadline: float,
        *,
        query: Callable[[Peer], Awaitable[list[Peer]]] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> LookupResult:
        """:meth:`lookup` with an absolute deadline (raises the same)."""
        await self.maintenance.until_joined(deadline)
        with trio.fail_at(deadline):
            result = await self.client.lookup(key, query=query, until=until)
        _require_answers(result)
        return result

    async def find_peer(self, peer_id: PeerId, *, timeout: float | None = None) -> Peer:
        """Where ``peer_id`` can be reached: our own addresses for our own id, a routing table
        entry with addresses, else by a lookup (stopping at the first answer naming it).

        Raises:
            PeerNotFoundError: no node on the way knew it (or it is our own id and we have no
                address).
            NotJoinedError: nobody to ask, or nobody answered (see :meth:`lookup`).
            trio.TooSlowError: ``timeout`` passed.
        """
        if peer_id == self.peer_id:
            own = tuple(self.own_addrs())
            if own:
                return Peer(self.peer_id, own, ConnectionType.CONNECTED)
            raise PeerNotFoundError(peer_id)
        contact = self.table.get(peer_id)
        if contact is not None and contact.addrs:
            return peer_entry(contact)
        found: list[Peer] = []

        async def ask(p: Peer) -> list[Peer]:
            peers = await self.client.call_find_node(p.peer_id, p.addrs, peer_id.to_bytes())
            found.extend(q for q in peers if q.peer_id == peer_id and q.addrs)
            return peers

        # Stop at the first answer naming it with addresses, as libp2p does: asking on would dial
        # the peer itself, and a caller that wants a connection dials it anyway.
        result = await self._joined_lookup(
            peer_id.to_bytes(), _deadline(timeout), query=ask, until=lambda: bool(found)
        )
        for p in found + result.peers:
            if p.peer_id == peer_id and p.addrs:
                return p
        raise PeerNotFoundError(peer_id)

    # -- contact records --

    async def publish_contact(
        self,
        record_id: str,
        endpoints: Sequence[str | Multiaddr] | None = None,
        data: dict[str, Any] | None = None,
        *,
        ttl: float = DEFAULT_RECORD_TTL,
        timeout: float | None = None,
    ) -> int:
        """Sign and store a contact record for ``record_id`` at the ``k`` closest nodes (and here).

        ``endpoints`` (text or :class:`Multiaddr`) default to our own addresses. Returns how many
        remote nodes stored it (0 when none of the nodes the lookup reached stored it or none
        answered; the record is then still held here, served to those who ask and republished).
        ``timeout`` covers the wait for the join and the lookup; each store then has ``query_timeout``.

        Raises:
            AddressError: a malformed endpoint (checked before anything else).
            NotJoinedError: nobody to ask (checked before anything is signed or stored).
            RecordError: the record is invalid (oversized data, a peer id that is not ours, ...).
            trio.TooSlowError: ``timeout`` passed.
        """
        own_endpoints = tuple(addrs_.parse(e) for e in endpoints) if endpoints is not None else None
        deadline = _deadline(timeout)
        await self.maintenance.until_joined(deadline)
        wall = self.wall_clock()
        previous = self.records.get_from(record_id, self.peer_id, wall)
        # seq must grow across restarts as well: milliseconds of wall clock, or previous + 1.
        seq = max(int(wall * 1000), previous.record.seq + 1 if previous else 0)
        record = ContactRecord(
            record_id,
            own_endpoints if own_endpoints is not None else tuple(self.own_addrs()),
            data or {},
            seq=seq,
            expires=new_expiry(wall, ttl),
        )
        envelope = sign_record(self.key_pair, record)
        result = self.records.put(envelope, wall, own=True)
        if isinstance(result, RecordRejected):
            raise result.error
        self.records.mark_republished(record_id, self.peer_id, wall)
        return await self.client.store_at_closest(record_id, envelope, deadline=deadline)

    async def find_contact(self, record_id: str, *, timeout: float | None = None) -> list[ContactRecord]:
        """Every valid, unexpired record for ``record_id`` (one per publisher, highest seq), newest first.

        Records found along the lookup are verified before they count; invalid ones are dropped.
        Records held here count too: when nobody can be asked (or nobody answers), those are the
        answer, and only without any does it raise.

        Raises:
            NotJoinedError: nobody to ask, or nobody answered, and no record for ``record_id`` here.
            trio.TooSlowError: ``timeout`` passed.
        """
        deadline = _deadline(timeout)
        key = record_key(record_id)
        wall = self.wall_clock()
        best: dict[PeerId, ContactRecord] = {}
        seen: set[bytes] = set()

        def consider(envelope: bytes) -> None:
            # Up to k nodes return the same envelope: check each signature once.
            if envelope in seen:
                return
            seen.add(envelope)
            try:
                record = verify_record(envelope, self.wall_clock())
            except RecordError as e:
                log.debug("ignoring a bad record for %r: %s", record_id, e)
                return
            if record.id != record_id or record.publisher is None:
                return
            old = best.get(record.publisher)
            if old is None or record.seq > old.seq:
                best[record.publisher] = record

        for envelope in self.records.get(record_id, wall):
            consider(envelope)

        async def ask(p: Peer) -> list[Peer]:
            envelopes, closer = await self.client.call_get_value(p.peer_id, p.addrs, key)
            for envelope in envelopes:
                consider(envelope)
            return closer

        try:
            await self._joined_lookup(key, deadline, query=ask)
        except NotJoinedError:
            if not best:
                raise
        return sorted(best.values(), key=lambda r: r.seq, reverse=True)

    # -- providers --

    async def provide(self, key: bytes, *, timeout: float | None = None) -> int:
        """Announce that we provide ``key`` (e.g. a service name) to the ``k`` closest nodes.

        Returns how many nodes were told (0 when none of those asked answered). ``timeout`` covers
        the wait for the join and the lookup; each announcement then has ``query_timeout``.

        Raises:
            NotJoinedError: nobody to ask (checked before anything is recorded).
            trio.TooSlowError: ``timeout`` passed.
        """
        deadline = _deadline(timeout)
        await self.maintenance.until_joined(deadline)
        self.providers.add(key, self.peer_id, tuple(self.own_addrs()), now())
        with trio.fail_at(deadline):
            closest = await self.client.lookup(key)
        async with trio.open_nursery() as nursery:
            for p in closest.peers:
                nursery.start_soon(quietly, self.client.call_add_provider(p.peer_id, p.addrs, key))
        return len(closest.peers)

    async def find_providers(self, key: bytes, *, timeout: float | None = None) -> list[Peer]:
        """Peers that announced they provide ``key`` (including us, and those that told us).

        As with :meth:`find_contact`, providers known here are the answer when nobody can be
        asked or nobody answers.

        Raises:
            NotJoinedError: nobody to ask, or nobody answered, and no provider known here.
            trio.TooSlowError: ``timeout`` passed.
        """
        deadline = _deadline(timeout)
        found: dict[PeerId, Peer] = {
            p.peer_id: Peer(p.peer_id, tuple(p.addrs)) for p in self.providers.get(key, now())
        }

        async def ask(p: Peer) -> list[Peer]:
            providers, closer = await self.client.call_get_providers(p.peer_id, p.addrs, key)
            for q in providers:
                found.setdefault(q.peer_id, q)
            return closer

        try:
            await self._joined_lookup(key, deadline, query=ask)
        except NotJoinedError:
            if not found:
                raise
        return list(found.values())


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else trio.current_time() + timeout


def _require_answers(result: LookupResult) -> None:
    """Raises: NotJoinedError when the lookup asked peers and none answered."""
    if not result.stats.responses:
        raise NotJoinedError(f"none of the {result.stats.queries} peer(s) asked answered")


def _ping_check(host: KadHost) -> Callable[[PeerId], Awaitable[bool]]:
    async def alive(peer: PeerId) -> bool:
        try:
            await host.ping(peer)
        except PEER_FAILURES:
            return False
        return True

    return alive


__all__ = [
    "DEFAULT_MAX_KEY_SIZE",
    "DEFAULT_MAX_REQUEST_SIZE",
    "PROTOCOL_ID",
    "PROVIDER_REFUSALS",
    "RECORD_REFUSALS",
    "REQUEST_REFUSALS",
    "HostTransport",
    "IdentifyingHost",
    "KadConnection",
    "KadDHT",
    "KadHost",
    "KadPeerStore",
    "KadSession",
    "KadStream",
    "KadTransport",
    "LookupResult",
    "NotJoinedError",
    "PeerNotFoundError",
]
