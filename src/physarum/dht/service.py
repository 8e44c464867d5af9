"""The Kademlia DHT service: ``/ipfs/kad/1.0.0`` server and client, lookups, contact records.

:class:`KadDHT` answers FIND_NODE, GET_VALUE/PUT_VALUE (contact records), GET_PROVIDERS/ADD_PROVIDER
and PING (answered, never sent), and runs iterative lookups (:class:`physarum.dht.lookup.Lookup`)
with ``alpha`` parallel queries, each under its own deadline. Peers that identify as speaking the
protocol join the routing table with their addresses; when a bucket is full, the oldest contact is
pinged (libp2p ping) and replaced only if it does not answer, as Kademlia says.

The network is behind :class:`KadTransport`, so the same service runs over a real
:class:`~physarum.overlay.host.Host` (:class:`HostTransport`) or an in-memory network in tests.

Requests are answered by :meth:`KadDHT.rpc` (named ``rpc_*`` per message type) and sent by the
``call_*`` methods. We send each request on a new stream and read one answer; as a server we answer
every message a stream carries, in order (go and js may send several on one stream), until the asker
closes its side or the stream idles for ``stream_idle_timeout``. ADD_PROVIDER is never answered
(libp2p sends it without waiting). A refused request resets that stream and nothing else.

Hostile peers (what one peer can make a node hold or do, whatever it sends):

* Requests are small: a request over ``max_request_size`` (64 KiB; the largest legitimate one, a
  PUT_VALUE of one contact record, is ~17 KiB: a 16 KiB envelope and its key twice) is refused
  from its length prefix alone, before its body is read; a key (or record key) over
  ``max_key_size`` (1 KiB: ours are at most 274 bytes, a CID or ``/ipns/`` key under 100; no
  reply ever echoes more) is refused; a request must arrive whole within ``request_timeout``
  (10 s) of its first byte. Each message read, request or answer, is reserved from the peer's
  memory budget (``stream.session.memory``, see :mod:`physarum.dht.framing`) while it is
  buffered and refused when the budget is spent. Answers we read may be up to 4 MiB (libp2p's
  limit). The host bounds the kad streams one peer may open at once.
* Addresses are bounded and handled in linear time wherever a peer's input reaches: identify,
  answers we decode, provider entries, contacts (see :mod:`physarum.dht.addrs`): at most 32 per
  peer, deduplicated with a set in one pass that stops once it has 32. An answer we send holds
  at most ``k`` peers of 32 addresses each.
* Records and providers have quotas per publisher, per name or key, and per store, and rank
  publishers by their history in our routing table (see :class:`~physarum.dht.records.RecordStore`
  and :class:`~physarum.dht.records.ProviderStore`): throwaway identities can neither fill the
  store nor lock an established publisher out of a name.
* Refusals are counted (metrics below), logged one by one at DEBUG, and summed up at INFO at most
  once per ``refusal_log_interval`` (60 s).

On a real host (:meth:`KadDHT.for_host`):

* Connected peers join the routing table when their identify lists ``/ipfs/kad/1.0.0`` and at least
  one dialable address (a contact without addresses is of no use to anyone we would hand it to);
  a peer whose identify push drops the protocol leaves it. Peers already identified when
  :meth:`KadDHT.for_host` runs are taken in at once, and registering the kad handler makes the
  host push our new protocol list to the peers already connected (identify push), so a DHT may
  start on a host that is already connected: those peers learn that we speak kad.
* Bootstrap peers are kept connected by :func:`physarum.overlay.backoff.keep_bootstrap_connected`
  (PhysarumSM's backoff, the same code the binaries used before the DHT); after each (re)connection
  we look up our own id through them. :attr:`KadDHT.bootstrapped` is set after the first lookup that
  got an answer (at once when there is nothing to join through). A table loaded from disk
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

Metrics (with ``registry=``): ``physarum_routing_table_peers`` (gauge, set on the trio thread
whenever the table changes), ``physarum_dht_requests_total{type}`` (requests served, by message
type, e.g. ``find_node``), ``physarum_dht_lookups_total`` (iterative lookups started, our
callers' and the table maintenance's), and the refusals:
``physarum_dht_requests_refused_total{reason}`` (``too_large``, ``key_too_large``, ``memory``,
``malformed``, ``slow``), ``physarum_dht_records_refused_total{reason}`` (``invalid``, ``stale``,
``wrong_key``, ``publisher_quota``, ``name_full``, ``store_full``) and
``physarum_dht_providers_refused_total{reason}`` (``bad_key``, ``provider_quota``, ``key_full``,
``store_full``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import trio

from physarum.dht import keyspace
from physarum.dht.addrs import (
    MAX_ADDR_SIZE,
    MAX_ADDRS_PER_PEER,
    addr_allowed,
    bounded_addrs,
    parse_multiaddr_bytes,
)
from physarum.dht.framing import MemoryRefusedError, MessageReader, MessageTooLargeError, stream_budget
from physarum.dht.lookup import Lookup, LookupStats
from physarum.dht.messages import (
    MAX_MESSAGE_SIZE,
    ConnectionType,
    Message,
    MessageType,
    Peer,
    Record,
    encode_framed,
)
from physarum.dht.records import (
    DEFAULT_RECORD_TTL,
    ContactRecord,
    NameFullError,
    ProviderOutcome,
    ProviderStore,
    PublisherQuotaError,
    RecordError,
    RecordRejected,
    RecordStore,
    StaleRecordError,
    StoreFullError,
    WrongKeyError,
    decode_record_set,
    encode_record_set,
    new_expiry,
    record_id_from_key,
    record_key,
    sign_record,
    verify_record,
)
from physarum.dht.table import Added, BucketFull, Contact, RoutingTable
from physarum.errors import DecodeError, DialError, PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay.backoff import backoff_delays, keep_bootstrap_connected, keep_connected
from physarum.overlay.connmgr import KBUCKET_WEIGHT
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from physarum.overlay.identify import IdentifyInfo
    from physarum.overlay.yamux import YamuxStream

log = logging.getLogger(__name__)

PROTOCOL_ID = "/ipfs/kad/1.0.0"

#: What a peer that cannot be reached or answer in time makes a request raise.
_PEER_FAILURES = (PhysarumError, trio.BrokenResourceError, OSError, trio.TooSlowError)

#: Largest request served by default: a PUT_VALUE of one full-size contact record is ~17 KiB.
DEFAULT_MAX_REQUEST_SIZE = 64 * 1024
#: Longest key (and record key) served by default.
DEFAULT_MAX_KEY_SIZE = 1024

#: Why a request was refused (``physarum_dht_requests_refused_total{reason}``).
REQUEST_REFUSALS = ("too_large", "key_too_large", "memory", "malformed", "slow")
#: Why a PUT_VALUE record was refused (``physarum_dht_records_refused_total{reason}``).
RECORD_REFUSALS = ("invalid", "stale", "wrong_key", "publisher_quota", "name_full", "store_full")
#: Why an ADD_PROVIDER entry was refused (``physarum_dht_providers_refused_total{reason}``).
PROVIDER_REFUSALS = tuple(o.value for o in ProviderOutcome if o is not ProviderOutcome.STORED)


class PeerNotFoundError(PhysarumError):
    """A lookup ended without finding the peer; ``peer_id`` says which."""

    def __init__(self, peer_id: PeerId) -> None:
        super().__init__(f"peer {peer_id} not found in the DHT")
        self.peer_id = peer_id


class NotJoinedError(PhysarumError):
    """A lookup had nobody to ask, so "not found" would mean nothing (see the module notes).

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


# -- what the DHT needs from a host (a physarum.overlay.host.Host satisfies these) --


class KadPeerStore(Protocol):
    def add_addrs(self, peer_id: PeerId, addrs: list[Multiaddr]) -> None: ...

    def addrs(self, peer_id: PeerId) -> list[Multiaddr]: ...


class KadSession(Protocol):
    @property
    def closed(self) -> trio.Event: ...


class KadConnection(Protocol):
    """A connection as the DHT sees it: who, what they said in identify, and whether it is open."""

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def identify_info(self) -> IdentifyInfo | None: ...

    @property
    def identified(self) -> trio.Event: ...

    @property
    def remote_addr(self) -> Multiaddr: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def session(self) -> KadSession: ...


class KadHost(Protocol):
    """What a running DHT uses of its host: dial, open kad streams, ping, serve kad."""

    @property
    def key_pair(self) -> KeyPair: ...

    @property
    def peerstore(self) -> KadPeerStore: ...

    def connection(self, peer_id: PeerId) -> KadConnection | None: ...

    async def connect(self, target: Multiaddr, *, timeout: float) -> KadConnection: ...

    async def new_stream(self, peer: PeerId, protocols: Sequence[str]) -> trio.abc.HalfCloseableStream: ...

    async def ping(self, peer: PeerId) -> list[float]: ...

    def set_handler(self, protocol: str, handler: Callable[[YamuxStream], Awaitable[None]]) -> None: ...

    def advertised_addrs(self) -> list[Multiaddr]: ...


_Conn = TypeVar("_Conn", bound=KadConnection)


class IdentifyingHost(KadHost, Protocol[_Conn]):
    """:class:`KadHost` plus what :meth:`KadDHT.for_host` needs to learn peers from identify."""

    @property
    def on_identify(self) -> list[Callable[[_Conn], None]]: ...

    @property
    def connections(self) -> Mapping[PeerId, Sequence[_Conn]]: ...


class _Metrics:
    """The DHT's series on an injected registry; every update runs on the trio thread."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge  # only nodes that export metrics pay for it

        self.table_peers = Gauge(
            "physarum_routing_table_peers", "Peers in the DHT routing table.", registry=registry
        )
        requests = Counter(
            "physarum_dht_requests_total",
            "Kademlia requests served, by message type.",
            ["type"],
            registry=registry,
        )
        self.requests = {t: requests.labels(t.name.lower()) for t in MessageType}
        self.lookups = Counter(
            "physarum_dht_lookups_total",
            "Iterative Kademlia lookups this node started (its callers' and its table maintenance's).",
            registry=registry,
        )
        refused = Counter(
            "physarum_dht_requests_refused_total",
            "Kademlia requests refused (their stream reset), by reason.",
            ["reason"],
            registry=registry,
        )
        records = Counter(
            "physarum_dht_records_refused_total",
            "Contact records refused in PUT_VALUE requests, by reason.",
            ["reason"],
            registry=registry,
        )
        providers = Counter(
            "physarum_dht_providers_refused_total",
            "Provider entries refused in ADD_PROVIDER requests, by reason.",
            ["reason"],
            registry=registry,
        )
        self.refused = {
            "request": {r: refused.labels(r) for r in REQUEST_REFUSALS},
            "record": {r: records.labels(r) for r in RECORD_REFUSALS},
            "provider": {r: providers.labels(r) for r in PROVIDER_REFUSALS},
        }


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
        max_request_size: largest inbound request, in bytes (default 64 KiB, see the module notes).
        max_key_size: longest key or record key in a request, in bytes (default 1 KiB).
        records, providers: the stores to hold others' records and provider entries in, built
            with the bounds wanted (default: :class:`RecordStore` and :class:`ProviderStore`
            with theirs); the DHT sets their ``standing`` to seniority in its routing table.
        refusal_log_interval: refused requests, records and providers are summed up in one INFO
            line at most this often (default 60 s); each is logged at DEBUG.
        registry: a ``prometheus_client.CollectorRegistry`` to export the DHT's metrics on
            (``physarum_routing_table_peers``, ``physarum_dht_requests_total{type}``,
            ``physarum_dht_lookups_total`` and the refusal counters of the module notes); None
            exports nothing. One DHT per registry
            (prometheus_client refuses the same names twice).

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
        ValueError: ``table`` belongs to another peer id, or ``registry`` already holds the
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
        query_timeout: float = 5.0,
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
            raise ValueError(f"the routing table belongs to {table.self_id}, not {key_pair.peer_id}")
        self.key_pair = key_pair
        self.peer_id = key_pair.peer_id
        self.transport = transport
        self.k = k
        self.alpha = alpha
        self.query_timeout = query_timeout
        self.bootstrap_addrs = [
            addr for addr, peer in map(_bootstrap_addr, bootstrap) if peer != key_pair.peer_id
        ]
        self.refresh_interval = refresh_interval
        self.republish_interval = republish_interval
        self.max_backoff = max_backoff
        self.wall_clock = wall_clock
        self.table = table if table is not None else RoutingTable(self.peer_id, k=k, now=_now())
        self.stream_idle_timeout = stream_idle_timeout
        self.request_timeout = request_timeout
        self.max_request_size = max_request_size
        self.max_key_size = max_key_size
        self.records = records if records is not None else RecordStore()
        self.providers = providers if providers is not None else ProviderStore()
        self.records.standing = self.providers.standing = self._standing
        self.refusal_log_interval = refusal_log_interval
        self._refusals: dict[str, int] = {}  # "kind reason" -> count since the last summary line
        self._refusals_logged_at = -math.inf
        self.liveness_check = liveness_check
        self.own_addrs: Callable[[], list[Multiaddr]] = list
        self._nursery: trio.Nursery | None = None
        self._checking: set[PeerId] = set()
        self.host: KadHost | None = None
        self.bootstrapped = trio.Event()
        """Set once a lookup of our own id got an answer (at once when there is nothing to join)."""
        self._rejoining = False
        self._join_done: trio.Event | None = None  # set when the join in progress ends
        self._change: trio.Event | None = None  # created by waiters, set by _changed()
        self._metrics = _Metrics(registry) if registry is not None else None
        self._changed()

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
            ValueError: ``table`` belongs to another peer id.
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
            host.set_handler(PROTOCOL_ID, dht._handle_stream)
        host.on_identify.append(dht._on_identify)
        manager = getattr(host, "conn_manager", None)  # a Host's ConnectionManager: trim others first
        if manager is not None:
            manager.add_tag_source("kbucket", lambda peer: KBUCKET_WEIGHT if peer in dht.table else 0)
        for conns in list(host.connections.values()):
            for conn in conns:
                if conn.identify_info is not None:
                    dht._on_identify(conn)
        return dht

    def _on_identify(self, conn: KadConnection) -> None:
        info = conn.identify_info
        if info is None or self.host is None:
            return
        if PROTOCOL_ID not in info.protocols:
            if info.protocols and conn.peer_id in self.table:
                self.table.remove(conn.peer_id)  # it stopped serving the DHT
                self._changed()
            return
        addrs = _dialable(info.listen_addrs) or _dialable(self.host.peerstore.addrs(conn.peer_id))
        if not addrs:
            return
        self.add_peer(conn.peer_id, addrs)
        if (
            self._nursery is not None
            and not self.bootstrapped.is_set()
            and self._join_done is None
            and conn.peer_id in self.table
        ):
            # Not joined yet (bootstrap peers down, say), and a kad peer turned up: join through it.
            self._nursery.start_soon(self._quietly, self._join())

    async def _handle_stream(self, stream: YamuxStream) -> None:
        reader = MessageReader(stream, budget=stream_budget(stream))
        sender = stream.peer_id
        while True:
            try:
                with trio.move_on_after(self.stream_idle_timeout) as idle:
                    more = await reader.wait_message()
                if idle.cancelled_caught or not more:
                    return  # idle, or the asker closed its side: the host closes the stream
                with trio.fail_after(self.request_timeout):
                    request = await reader.receive(self.max_request_size)
            except trio.BrokenResourceError:
                return  # the asker closed or reset mid-request: nothing to answer
            except (MessageTooLargeError, MemoryRefusedError, DecodeError, trio.TooSlowError) as e:
                if isinstance(e, trio.TooSlowError):
                    self._refuse("request", "slow", sender, f"not whole within {self.request_timeout:g} s")
                else:
                    self._refuse("request", _request_refusal(e), sender, str(e))
                stream.reset()
                return
            reply = self.rpc(sender, request)
            if reply is None:
                stream.reset()
                return
            if request.type != MessageType.ADD_PROVIDER:  # libp2p never answers ADD_PROVIDER
                await stream.send_all(encode_framed(reply))

    # -- lifecycle --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Maintain the table (bootstrap, refresh) and our records (republish, expiry) until cancelled.

        Start it with ``await nursery.start(dht.run)`` in a nursery the host outlives.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for addr in self.bootstrap_addrs:
                    nursery.start_soon(self._keep_bootstrap_peer, addr)
                if len(self.table):
                    self._rejoining = True
                    nursery.start_soon(self._rejoin)
                elif not self.bootstrap_addrs:
                    self._set_bootstrapped()
                nursery.start_soon(self._maintenance)
                task_status.started()
        finally:
            self._nursery = None
            self._rejoining = False
            self._changed()  # waiting lookups see that nothing will join any more

    async def _join(self) -> bool:
        """Look up our own id (fills the table); True if anyone answered.

        One join runs at a time: a second caller waits for the one in progress and shares its outcome.
        """
        if self._join_done is not None:
            await self._join_done.wait()
            return self.bootstrapped.is_set()
        done = self._join_done = trio.Event()
        try:
            try:
                result = await self._lookup(self.peer_id.to_bytes())
            except _PEER_FAILURES as e:
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
            self._changed()

    def _set_bootstrapped(self) -> None:
        self.bootstrapped.set()
        self._changed()

    def _changed(self) -> None:
        """The table or the join state changed: update the gauge, wake lookups waiting to join."""
        if self._metrics is not None:
            self._metrics.table_peers.set(len(self.table))
        if self._change is not None:
            self._change.set()
            self._change = None

    def _join_pending(self) -> bool:
        """Whether something may still fill the table: :meth:`run` keeps bootstrap peers
        connected, or rejoins through the table it started with while that holds anyone."""
        if self._nursery is None:
            return False
        if self.bootstrap_addrs:
            return True
        return self._rejoining and (len(self.table) > 0 or self._join_done is not None)

    async def _until_joined(self, deadline: float) -> None:
        """Return once a lookup has someone to ask; wait for a join in progress until ``deadline``.

        Raises:
            NotJoinedError: the table is empty and nothing will fill it, or the join did not
                finish by ``deadline``.
        """
        while True:
            pending = self._join_pending()
            if len(self.table) and (self.bootstrapped.is_set() or not pending):
                return
            if not pending:
                why = "no bootstrap peer, no saved table" if self._nursery is not None else "DHT not running"
                raise NotJoinedError(f"the routing table is empty and there is nothing to join through ({why})")
            if trio.current_time() >= deadline:
                how = (
                    f"{len(self.bootstrap_addrs)} bootstrap peer(s)"
                    if self.bootstrap_addrs
                    else f"the {len(self.table)} peer(s) of the routing table"
                )
                raise NotJoinedError(f"still joining through {how} when the deadline passed", joining=True)
            if self._change is None:
                self._change = trio.Event()
            with trio.move_on_at(deadline):
                await self._change.wait()

    async def _fill_buckets(self) -> None:
        """After the self lookup, refresh every bucket that is not full up to the deepest filled one,
        as go-libp2p does at bootstrap: the self lookup alone leaves gaps that misdirect lookups
        (bench/dht.py saw 4.5% of lookups fail at 10,000 nodes until the periodic refresh ran)."""
        sizes = self.table.bucket_sizes()
        if not sizes:
            return
        deepest = min(max(sizes), keyspace.MAX_PREIMAGE_INDEX)
        rng = random.Random()
        now = _now()
        for index in range(deepest + 1):
            if sizes.get(index, 0) < self.k:
                self.table.mark_refreshed(index, now)
                await self._quietly(self._lookup(self.table.random_preimage_in_bucket(index, rng)))

    async def _rejoin(self) -> None:
        """Join through the contacts of a loaded table, retrying with backoff until one answers."""
        try:
            for delay in backoff_delays(cap=self.max_backoff):
                if self.bootstrapped.is_set() or await self._join():
                    return
                log.info("no saved DHT contact answered; trying again in %g s", delay)
                await trio.sleep(delay)
        finally:
            self._rejoining = False
            self._changed()

    async def _keep_bootstrap_peer(self, addr: Multiaddr) -> NoReturn:
        """Keep ``addr`` connected (PhysarumSM's backoff) and join the DHT after each connection."""
        peer = _addr_peer(addr)
        if peer is None:
            raise addrs_.AddressError(addr, "a bootstrap address ends in /p2p/<peer id>")
        if self.host is not None:
            await keep_bootstrap_connected(
                self.host, addr, max_delay=self.max_backoff, on_connected=self._joined_via
            )
        else:
            await self._keep_answering(peer, addr)

    async def _keep_answering(self, peer: PeerId, addr: Multiaddr) -> NoReturn:
        """Without a host (in-memory networks): "connected" means it answered a FIND_NODE lately."""

        async def dial() -> None:
            await self.call_ping(peer, [addr])
            self.add_peer(peer, [addrs_.without_peer(addr)])
            await self._join()

        async def wait_gone() -> None:
            while True:
                await trio.sleep(self.refresh_interval)
                try:
                    await self.call_ping(peer, self._addrs_of(peer) or [addr])
                except _PEER_FAILURES:
                    return

        await keep_connected(dial, lambda: False, wait_gone, name=f"bootstrap {addr}", max_delay=self.max_backoff)

    async def _joined_via(self, conn: KadConnection) -> None:
        """A bootstrap peer is connected: once identified, take it in and look up our own id."""
        with trio.move_on_after(self.query_timeout):
            await conn.identified.wait()
        info = conn.identify_info
        if info is not None and PROTOCOL_ID not in info.protocols:
            log.warning("bootstrap peer %s does not serve %s: cannot join the DHT through it", conn.peer_id, PROTOCOL_ID)
            return
        if conn.peer_id not in self.table and self.host is not None:
            addrs = _dialable(self.host.peerstore.addrs(conn.peer_id)) or [addrs_.without_peer(conn.remote_addr)]
            self.add_peer(conn.peer_id, addrs)
        # Until a lookup got an answer (ours, or one through another bootstrap peer), try again
        # with backoff while this connection lasts.
        for delay in backoff_delays(cap=self.max_backoff):
            if await self._join() or self.bootstrapped.is_set() or conn.is_closed:
                return
            log.info("joining the DHT through %s: no answer; trying again in %g s", conn.peer_id, delay)
            await trio.sleep(delay)

    async def _maintenance(self) -> None:
        rng = random.Random()
        check_every = max(1.0, min(self.refresh_interval, self.republish_interval) / 10)
        while True:
            await trio.sleep(check_every)
            now = _now()
            wall = self.wall_clock()
            self.records.expire(wall)
            self.providers.expire(now)
            self._changed()  # also catches changes made to the table from outside
            for index in self.table.stale_buckets(now, self.refresh_interval)[:4]:
                self.table.mark_refreshed(index, now)
                await self._quietly(self._lookup(self.table.random_preimage_in_bucket(index, rng)))
            for stored in self.records.due_for_republish(wall, self.republish_interval):
                self.records.mark_republished(stored.record.id, stored.publisher, wall)
                await self._quietly(self._store_at_closest(stored.record.id, stored.envelope))

    async def _quietly(self, work: Awaitable[object]) -> None:
        try:
            await work
        except _PEER_FAILURES as e:
            log.info("dht maintenance: %s", e)

    # -- routing table --

    def add_peer(self, peer_id: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """Offer a peer that speaks kad to the routing table (Kademlia's eviction rule applies).

        The contact keeps the first ``table.max_addrs`` (32) distinct addresses within the size
        bounds of :mod:`physarum.dht.addrs` (one pass; it stops reading once it has them)."""
        if peer_id == self.peer_id:
            return
        kept = bounded_addrs(addrs, self.table.max_addrs)
        result = self.table.add(Contact(peer_id, kept, _now()), _now())
        if isinstance(result, Added):
            self._changed()
        elif isinstance(result, BucketFull) and self._nursery is not None:
            oldest = result.oldest.peer_id
            if oldest not in self._checking:
                self._checking.add(oldest)
                self._nursery.start_soon(self._check_oldest, result)

    async def _check_oldest(self, full: BucketFull) -> None:
        oldest = full.oldest.peer_id
        try:
            alive = False
            with trio.move_on_after(self.query_timeout):
                alive = await self._alive(oldest)
            if alive:
                self.table.touch(oldest, _now())
            else:
                self.table.replace(oldest, full.candidate, _now())
                self._changed()
        finally:
            self._checking.discard(oldest)

    async def _alive(self, peer: PeerId) -> bool:
        if self.liveness_check is not None:
            return await self.liveness_check(peer)
        try:
            await self.call_ping(peer, self._addrs_of(peer))
        except (PhysarumError, trio.BrokenResourceError, OSError):
            return False
        return True

    def _addrs_of(self, peer: PeerId) -> list[Multiaddr]:
        contact = self.table.get(peer)
        return list(contact.addrs) if contact else []

    def _peer_entry(self, contact: Contact) -> Peer:
        return Peer(contact.peer_id, tuple(contact.addrs), ConnectionType.CAN_CONNECT)

    def _standing(self, peer: PeerId) -> float | None:
        """Since when ``peer`` has been in the routing table (trio clock), None when it is not:
        the history the record and provider stores rank publishers by. We rank above everyone
        (our own provider entries, say)."""
        if peer == self.peer_id:
            return -math.inf
        contact = self.table.get(peer)
        return None if contact is None else contact.since

    def _refuse(self, kind: str, reason: str, sender: PeerId | None, detail: str) -> None:
        """Count a refusal (``kind`` is request, record or provider), log it at DEBUG, and sum
        the refusals up at INFO at most once per ``refusal_log_interval``."""
        if self._metrics is not None:
            self._metrics.refused[kind][reason].inc()
        log.debug("kad %s from %s refused (%s): %s", kind, sender, reason, detail)
        what = f"{kind} {reason}"
        self._refusals[what] = self._refusals.get(what, 0) + 1
        now = _now()
        if now - self._refusals_logged_at >= self.refusal_log_interval:
            since = now - self._refusals_logged_at
            window = f"in {since:.0f} s" if math.isfinite(since) else "so far"
            summary = ", ".join(f"{k} {n:,}" for k, n in sorted(self._refusals.items()))
            log.info("kad: refused %s: %s (details at DEBUG)", window, summary)
            self._refusals.clear()
            self._refusals_logged_at = now

    def closest_peers(self, key: int, exclude: Sequence[PeerId] = ()) -> list[Peer]:
        return [self._peer_entry(c) for c in self.table.closest(key, self.k, exclude=exclude)]

    # -- answering (rpc_*) --

    def rpc(self, sender: PeerId | None, request: Message) -> Message | None:
        """Answer one request; None means refuse it (the stream is reset).

        A key or record key over ``max_key_size`` is refused before anything else is done."""
        longest = max(len(request.key), len(request.record.key) if request.record is not None else 0)
        if longest > self.max_key_size:
            self._refuse("request", "key_too_large", sender, f"key of {longest} bytes, at most {self.max_key_size}")
            return None
        handler = {
            MessageType.FIND_NODE: self.rpc_find_node,
            MessageType.GET_VALUE: self.rpc_get_value,
            MessageType.PUT_VALUE: self.rpc_put_value,
            MessageType.GET_PROVIDERS: self.rpc_get_providers,
            MessageType.ADD_PROVIDER: self.rpc_add_provider,
            MessageType.PING: self.rpc_ping,
        }[request.type]
        if sender is not None and sender in self.table:
            self.table.touch(sender, _now())
        if self._metrics is not None:
            self._metrics.requests[request.type].inc()
        return handler(sender, request)

    def rpc_ping(self, sender: PeerId | None, request: Message) -> Message:
        return Message(MessageType.PING)

    def rpc_find_node(self, sender: PeerId | None, request: Message) -> Message:
        exclude = [sender] if sender is not None else []
        peers = self.closest_peers(keyspace.kad_key(request.key), exclude)
        if request.key == self.peer_id.to_bytes():
            peers = [Peer(self.peer_id, bounded_addrs(self.own_addrs()), ConnectionType.CONNECTED), *peers]
        return Message(MessageType.FIND_NODE, key=request.key, closer_peers=tuple(peers[: self.k]))

    def rpc_get_value(self, sender: PeerId | None, request: Message) -> Message:
        exclude = [sender] if sender is not None else []
        closer = tuple(self.closest_peers(keyspace.kad_key(request.key), exclude))
        record = None
        try:
            record_id = record_id_from_key(request.key)
        except (RecordError, DecodeError):
            record_id = None
        if record_id is not None:
            envelopes = self.records.get(record_id, self.wall_clock())
            if envelopes:
                record = Record(request.key, encode_record_set(envelopes))
        return Message(MessageType.GET_VALUE, key=request.key, record=record, closer_peers=closer)

    def rpc_put_value(self, sender: PeerId | None, request: Message) -> Message | None:
        if request.record is None:
            self._refuse("record", "invalid", sender, "PUT_VALUE without a record")
            return None
        try:
            record_id = record_id_from_key(request.record.key)
            envelopes = decode_record_set(request.record.value)
        except (RecordError, DecodeError) as e:
            self._refuse("record", "invalid", sender, str(e))
            return None
        now = self.wall_clock()
        for envelope in envelopes:
            result = self.records.put(envelope, now, record_id=record_id)
            if isinstance(result, RecordRejected):
                self._refuse("record", _record_refusal(result.error), sender, result.reason)
                return None
        return request

    def rpc_get_providers(self, sender: PeerId | None, request: Message) -> Message:
        exclude = [sender] if sender is not None else []
        providers = tuple(
            Peer(p.peer_id, tuple(p.addrs), ConnectionType.CAN_CONNECT)
            for p in self.providers.get(request.key, _now(), limit=self.k)
        )
        closer = tuple(self.closest_peers(keyspace.kad_key(request.key), exclude))
        return Message(MessageType.GET_PROVIDERS, key=request.key, closer_peers=closer, provider_peers=providers)

    def rpc_add_provider(self, sender: PeerId | None, request: Message) -> Message | None:
        for provider in request.provider_peers:
            # Only a peer can say it provides: anything else would let one peer enlist others.
            if sender is not None and provider.peer_id != sender:
                continue
            outcome = self.providers.offer(request.key, provider.peer_id, provider.addrs, _now())
            if outcome is not ProviderOutcome.STORED:
                self._refuse("provider", outcome.value, sender, f"provider entry for a key of {len(request.key)} bytes")
        return None if sender is None else Message(MessageType.ADD_PROVIDER, key=request.key)

    # -- asking (call_*) --

    async def _call(self, peer: PeerId, addrs: Sequence[Multiaddr], message: Message) -> Message:
        with trio.fail_after(self.query_timeout):
            reply = await self.transport.request(peer, addrs, message)
        if reply.type != message.type:
            raise DecodeError(f"asked {message.type.name}, {peer} answered {reply.type.name}")
        return reply

    async def call_ping(self, peer: PeerId, addrs: Sequence[Multiaddr] = ()) -> None:
        """Check ``peer`` speaks kad, with a FIND_NODE for ourselves (kad PING is deprecated: never sent)."""
        await self.call_find_node(peer, addrs, self.peer_id.to_bytes())

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
        me = Peer(self.peer_id, bounded_addrs(self.own_addrs()), ConnectionType.CONNECTED)
        # ADD_PROVIDER has no answer in libp2p: the transport sends it and does not wait for one.
        message = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(me,))
        with trio.move_on_after(self.query_timeout):
            await self.transport.request(peer, addrs, message)

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
        await self._until_joined(deadline)
        with trio.fail_at(deadline):
            result = await self._lookup(key, query=query, until=until)
        _require_answers(result)
        return result

    async def _lookup(
        self,
        key: bytes,
        *,
        query: Callable[[Peer], Awaitable[list[Peer]]] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> LookupResult:
        """:meth:`lookup` without the wait for the join and without a deadline: for the join and
        the table maintenance, which must run on an empty or silent table (an empty result)."""
        if self._metrics is not None:
            self._metrics.lookups.inc()
        target = keyspace.kad_key(key)
        self.table.note_lookup(target, _now())
        lookup: Lookup[PeerId] = Lookup(target, k=self.k, alpha=self.alpha, exclude=frozenset([self.peer_id]))
        known: dict[PeerId, Peer] = {}

        def offer(peers: Sequence[Peer]) -> list[tuple[PeerId, int]]:
            out = []
            for p in peers:
                if p.peer_id == self.peer_id:
                    continue
                if p.peer_id not in known or (p.addrs and not known[p.peer_id].addrs):
                    known[p.peer_id] = p
                out.append((p.peer_id, keyspace.peer_key(p.peer_id)))
            return out

        lookup.add(offer([self._peer_entry(c) for c in self.table.closest(target, self.k)]))

        async def ask_find_node(p: Peer) -> list[Peer]:
            return await self.call_find_node(p.peer_id, p.addrs, key)

        ask = query or ask_find_node
        results: trio.MemorySendChannel[tuple[PeerId, list[Peer] | None]]
        results, inbox = trio.open_memory_channel(math.inf)

        async def one(peer: PeerId) -> None:
            answer: list[Peer] | None = None
            try:
                with trio.fail_after(self.query_timeout):
                    answer = await ask(known[peer])
            except (*_PEER_FAILURES, trio.ClosedResourceError) as e:
                log.debug("lookup: %s did not answer: %s", peer, e)
                if isinstance(e, DialError) and self.table.remove(peer) is not None:
                    self._changed()
            results.send_nowait((peer, answer))

        async with trio.open_nursery() as nursery:
            while not lookup.done:
                for peer in lookup.next_queries():
                    nursery.start_soon(one, peer)
                if lookup.in_flight == 0:
                    break
                peer, answer = await inbox.receive()
                if answer is None:
                    lookup.on_failure(peer)
                    continue
                lookup.on_response(peer, offer(answer))
                contact_addrs = known[peer].addrs
                self.add_peer(peer, list(contact_addrs))
                if until is not None and until():
                    break
            nursery.cancel_scope.cancel()
        return LookupResult([known[p] for p in lookup.result()], lookup.stats)

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
            return self._peer_entry(contact)
        found: list[Peer] = []

        async def ask(p: Peer) -> list[Peer]:
            peers = await self.call_find_node(p.peer_id, p.addrs, peer_id.to_bytes())
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
        await self._until_joined(deadline)
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
        return await self._store_at_closest(record_id, envelope, deadline=deadline)

    async def _store_at_closest(self, record_id: str, envelope: bytes, *, deadline: float = math.inf) -> int:
        key = record_key(record_id)
        with trio.fail_at(deadline):
            closest = await self._lookup(key)
        stored = 0

        async def put(p: Peer) -> None:
            nonlocal stored
            try:
                await self.call_put_value(p.peer_id, p.addrs, key, encode_record_set([envelope]))
                stored += 1
            except _PEER_FAILURES as e:
                log.info("storing %r at %s failed: %s", record_id, p.peer_id, e)

        async with trio.open_nursery() as nursery:
            for p in closest.peers:
                nursery.start_soon(put, p)
        return stored

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
            envelopes, closer = await self.call_get_value(p.peer_id, p.addrs, key)
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
        await self._until_joined(deadline)
        self.providers.add(key, self.peer_id, tuple(self.own_addrs()), _now())
        with trio.fail_at(deadline):
            closest = await self._lookup(key)
        async with trio.open_nursery() as nursery:
            for p in closest.peers:
                nursery.start_soon(self._quietly, self.call_add_provider(p.peer_id, p.addrs, key))
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
            p.peer_id: Peer(p.peer_id, tuple(p.addrs)) for p in self.providers.get(key, _now())
        }

        async def ask(p: Peer) -> list[Peer]:
            providers, closer = await self.call_get_providers(p.peer_id, p.addrs, key)
            for q in providers:
                found.setdefault(q.peer_id, q)
            return closer

        try:
            await self._joined_lookup(key, deadline, query=ask)
        except NotJoinedError:
            if not found:
                raise
        return list(found.values())


def _now() -> float:
    return trio.current_time()


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else trio.current_time() + timeout


def _require_answers(result: LookupResult) -> None:
    """Raises: NotJoinedError when the lookup asked peers and none answered."""
    if not result.stats.responses:
        raise NotJoinedError(f"none of the {result.stats.queries} peer(s) asked answered")


def _bootstrap_addr(addr: str | Multiaddr) -> tuple[Multiaddr, PeerId]:
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


def _dialable(addrs: Iterable[Multiaddr], limit: int = MAX_ADDRS_PER_PEER) -> list[Multiaddr]:
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
            ep = addrs_.tcp_endpoint(checked)
        except (PhysarumError, ValueError):
            continue
        if ep.port == 0 or checked in out or not addr_allowed(checked) or addrs_.is_unspecified(checked):
            continue
        out[checked] = None
        if len(out) >= limit:
            break
    return list(out)


def _request_refusal(error: PhysarumError) -> str:
    """The ``physarum_dht_requests_refused_total`` reason for a request that could not be read."""
    if isinstance(error, MessageTooLargeError):
        return "too_large"
    if isinstance(error, MemoryRefusedError):
        return "memory"
    return "malformed"


def _record_refusal(error: RecordError) -> str:
    """The ``physarum_dht_records_refused_total`` reason for a refused record."""
    if isinstance(error, StaleRecordError):
        return "stale"
    if isinstance(error, WrongKeyError):
        return "wrong_key"
    if isinstance(error, PublisherQuotaError):
        return "publisher_quota"
    if isinstance(error, NameFullError):
        return "name_full"
    if isinstance(error, StoreFullError):
        return "store_full"
    return "invalid"


def _ping_check(host: KadHost) -> Callable[[PeerId], Awaitable[bool]]:
    async def alive(peer: PeerId) -> bool:
        try:
            await host.ping(peer)
        except _PEER_FAILURES:
            return False
        return True

    return alive
