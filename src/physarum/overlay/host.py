"""The host: listens and dials TCP, upgrades connections, routes streams to protocol handlers.

Every connection is upgraded in this order (the libp2p connection stack)::

    TCP -> pnet (when a pre-shared key is set) -> multistream -> /noise -> multistream -> /yamux/1.0.0

Inbound streams are negotiated with multistream-select and handed to the handler registered
for their protocol; identify and ping are built in. Everything a peer sends is untrusted: a
failure closes that stream or connection, is logged, and never reaches the caller's nursery.

Addresses. What the host tells peers (identify, its signed peer record, the DHT) and prints
(:attr:`Host.addrs`) are its *advertised* addresses: the ``announce`` addresses when given,
otherwise its listen addresses with a wildcard bind (``0.0.0.0`` / ``::``) replaced by this
machine's interface addresses of that family (:mod:`physarum.overlay.netif`; loopback and
link-local ones only when nothing else exists). Peers also report where they see us
(identify's ``observedAddr``); :meth:`Host.observed_addrs` lists those enough peers agree on,
but they are never advertised by themselves: behind a NAT the port a peer sees is the NAT's
mapping of one connection, which usually does not lead to our listener, and a few peers could
otherwise make us advertise an address of their choosing.

Identify push. When our protocols (:meth:`Host.set_handler`, :meth:`Host.remove_handler`) or
advertised addresses change, the host sends its identify message on ``/ipfs/id/push/1.0.0``
to every connected peer that identified and speaks push, once per burst of changes.
"""

from __future__ import annotations

import collections
import logging
import math
import socket
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import trio

from physarum.errors import (
    PEER_FAILURES,
    DialError,
    LimitError,
    NotRunningError,
    PhysarumError,
    SelfDialError,
    exception_leaves,
)
from physarum.overlay import addr as addrs_
from physarum.overlay import multistream, netif, ping
from physarum.overlay.connmgr import DEFAULT_CONN_MANAGER, ConnectionManager, ConnManagerOptions
from physarum.overlay.events import Callbacks
from physarum.overlay.identify import OBSERVED_ADDR_THRESHOLD, IdentifyInfo
from physarum.overlay.identify_service import IdentifyOptions, IdentifyService
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.logfmt import clip, ipport, reason, short
from physarum.overlay.multiaddr import AddressError, Multiaddr
from physarum.overlay.peerstore import PeerStore
from physarum.overlay.resources import (
    Handshake,
    Refusal,
    ResourceCollector,
    ResourceLimits,
    ResourceManager,
    Usage,
)
from physarum.overlay.streamio import BufferedStream
from physarum.overlay.transport import RawConnection, TcpTransport, Transport
from physarum.overlay.upgrader import DEFAULT_SECURITY, DialPhase, FirstBytesTimeout, Upgrader
from physarum.overlay.websocket import WebSocketTransport
from physarum.overlay.yamux import GO_AWAY_GARBAGE_COLLECTED, GO_AWAY_TIMEOUT, YamuxSession, YamuxStream
from physarum.psk import PSK_SIZE, KeyFileError, KeyFileReason, PskMismatchError, xsalsa20

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

Handler = Callable[[YamuxStream], Awaitable[None]]


@runtime_checkable
class Service(Protocol):
    """A protocol run on a host, added with :meth:`Host.add_service` or ``Host(services=...)``.

    ``attach(host)`` registers what it serves (:meth:`Host.set_handler`) and the callbacks it needs
    (``host.on_connect``, ``on_identify``, ``on_disconnect``, ``on_local_change``); it is called once,
    when the service is added. A service with work of its own also has
    ``async def run(self, *, task_status=trio.TASK_STATUS_IGNORED)``: the host starts it before it
    listens (or at once when already running) and cancels it when the host stops. Ping
    (:class:`physarum.overlay.ping.PingService`) and identify
    (:class:`physarum.overlay.identify_service.IdentifyService`) are services like any other.
    """

    def attach(self, host: Host) -> None: ...

INBOUND = "inbound"
OUTBOUND = "outbound"
#: At the connection limit, victims are ranked this many at a time...
VICTIM_BATCH = 64
#: ...and a ranking is used for at most this long (seconds): a flood of newcomers pays for one
#: ranking per batch, and what changed meanwhile (a connection tagged, one protected) counts soon.
VICTIM_BATCH_TTL = 0.25
#: How often refusal counts are looked at for their rate-limited log summary (seconds); the
#: summary itself goes out at most once a minute (``resources.RefusalLog``).
REFUSAL_LOG_TICK = 5.0
#: Default deadline of connect, new_stream, ping and identify (seconds), each a parameter.
DEFAULT_TIMEOUT = 10.0


class Connection:
    """An upgraded connection to one peer. Several may exist to the same peer."""

    def __init__(
        self,
        host: Host,
        session: YamuxSession,
        peer_id: PeerId,
        remote_addr: Multiaddr,
        local_addr: Multiaddr | None,
        direction: str,
    ) -> None:
        self.host = host
        self.session = session
        self.peer_id = peer_id
        self.remote_addr = remote_addr
        self.local_addr = local_addr
        self.direction = direction
        self.opened_at = trio.current_time()
        # Set once the peer's identify message arrived (identify_info) or identify failed (None).
        self.identified = trio.Event()
        self.identify_info: IdentifyInfo | None = None

    @property
    def is_closed(self) -> bool:
        return self.session.broken

    @property
    def go_away_code(self) -> int | None:
        """The code of the GoAway the peer sent (0 normal, 1 protocol error, 2 internal error,
        0x1005 trimmed by its connection manager), or None if it sent none."""
        return self.session.go_away_code

    async def open_stream(self, protocols: Sequence[str]) -> YamuxStream:
        """A new stream speaking the first of ``protocols`` the peer accepts.

        Raises:
            NegotiationError: the peer supports none of them.
            LimitError: too many streams open on this connection.
            trio.BrokenResourceError: the connection broke.
        """
        stream = await self.session.open_stream()
        try:
            buf = BufferedStream(stream)
            stream.protocol = await multistream.select(buf, protocols)
            stream.unread(buf.take_buffer())
        except BaseException:
            stream.reset()
            raise
        return stream

    async def aclose(self) -> None:
        await self.session.aclose()

    def __repr__(self) -> str:
        return f"<Connection {self.direction} {short(self.peer_id)} {ipport(self.remote_addr)}>"


class Host:
    """A libp2p host, in a private network when ``psk`` is given.

    Run it with ``async with open_host(...) as host`` or ``await nursery.start(host.run)``.
    ``listen`` addresses are ``/ip4|ip6/HOST/tcp/PORT`` or ``/ip4|ip6/HOST/tcp/PORT/ws`` (port 0
    picks a free port). ``transports``: how connections are made (default: TCP and WebSocket, see
    :mod:`physarum.overlay.transport`); each is upgraded by :attr:`upgrader` (pnet, Noise, yamux).
    ``announce``: when given, exactly the addresses we advertise (identify, peer record, DHT,
    :attr:`addrs`), e.g. a NAT's public address or a DNS name; ``/ip4|ip6|dns*/HOST/tcp/PORT``,
    a ``/p2p/<our id>`` suffix is dropped. Without it, see :meth:`advertised_addrs`.
    Limits: ``limits`` (:class:`~physarum.overlay.resources.ResourceLimits`, every default documented
    there) bound connections, handshakes, streams and what peers can make us buffer; a connection or
    stream over a limit is refused and counted, and a flood of refusals is summarised in one log
    line a minute. ``registry``: where ``physarum_resource_*`` metrics go (none when not given).
    ``security``: the security protocols offered, in order of preference (default Noise, then
    TLS 1.3: ``("/noise", "/tls/1.0.0")``). ``identify``: our agent version and how identify push runs
    (:class:`~physarum.overlay.identify_service.IdentifyOptions`). ``services``: more protocols to
    run on the host (:class:`Service`; ping and identify are always there). ``address_cache_ttl``: how long the list of this
    machine's interface addresses is reused (seconds). ``conn_manager``: the connection manager's
    water marks and grace period (:mod:`physarum.overlay.connmgr`; None: never trim), run as
    :attr:`conn_manager`.

    Raises:
        AddressError: a malformed ``listen`` or ``announce`` address, or an ``announce`` one that
            is not TCP, names another peer, has port 0 or an unspecified host.
        KeyFileError: ``psk`` is not 32 bytes (reason ``WRONG_LENGTH``; also a ValueError).
    """

    def __init__(
        self,
        key_pair: KeyPair | None = None,
        *,
        psk: bytes | None = None,
        listen: Sequence[str | Multiaddr] = (),
        announce: Sequence[str | Multiaddr] = (),
        limits: ResourceLimits | None = None,
        registry: CollectorRegistry | None = None,
        identify: IdentifyOptions | None = None,
        peerstore_capacity: int = 10_000,
        address_cache_ttl: float = netif.DEFAULT_MAX_AGE,
        conn_manager: ConnManagerOptions | None = DEFAULT_CONN_MANAGER,
        transports: Sequence[Transport] | None = None,
        services: Sequence[Service] = (),
        security: Sequence[str] = DEFAULT_SECURITY,
    ) -> None:
        if psk is not None and len(psk) != PSK_SIZE:
            raise KeyFileError(
                KeyFileReason.WRONG_LENGTH, f"a pre-shared key is {PSK_SIZE} bytes, got {len(psk)}"
            )
        self.key_pair = key_pair or KeyPair.generate()
        self.peer_id = self.key_pair.peer_id
        self.psk = psk
        self._listen_requests = [addrs_.parse(a) for a in listen]
        self._announce = self._check_announce(announce)
        self.resources = ResourceManager(limits, logger=log)
        self.limits = self.resources.limits
        self.transports: list[Transport] = (
            list(transports) if transports is not None else [TcpTransport(), WebSocketTransport()]
        )
        self.upgrader = Upgrader(
            self.key_pair,
            psk,
            first_byte_timeout=self.limits.first_byte_timeout,
            max_streams=self.limits.max_streams_per_connection,
            peer_memory=self.resources.peer_memory,
            security=security,
        )
        self.handshake_timeout = self.limits.handshake_timeout
        self.peerstore = PeerStore(peerstore_capacity)
        self.listen_addrs: list[Multiaddr] = []
        self.connections: dict[PeerId, list[Connection]] = {}
        self.on_connect: Callbacks[Connection] = Callbacks()
        self.on_disconnect: Callbacks[Connection] = Callbacks()
        #: A connection's identify message arrived (or a push changed it): ``conn.identify_info``.
        self.on_identify: Callbacks[Connection] = Callbacks()
        #: What our identify message says changed (a protocol added or removed, our advertised
        #: addresses): the identify service pushes it to connected peers.
        self.on_local_change: Callbacks[None] = Callbacks()
        # Water marks, grace period, protected and tagged peers (None: never trims; see connmgr).
        self.conn_manager = ConnectionManager(conn_manager, registry=registry)
        self._handlers: dict[str, Handler] = {}
        self._nursery: trio.Nursery | None = None
        self._pending_outbound = 0
        self._evicting: set[Connection] = set()
        self._joining: set[Connection] = set()
        self._registered = 0  # connections in self.connections
        # yamux's counters of the sessions that ended, for the metrics (see _usage)
        self._closed_memory_resets = 0
        self._closed_pongs_dropped = 0
        # Weak: a batch outlives a flood, and must not keep its closed connections' buffers alive.
        self._victims: collections.deque[weakref.ref[Connection]] = collections.deque()  # see _next_victim
        self._victims_at = -math.inf
        self._closed = False
        self._interfaces = netif.InterfaceCache(address_cache_ttl)
        self._advertised: tuple[Multiaddr, ...] | None = None
        self._services: list[Service] = []
        self.identify_service = IdentifyService(identify or IdentifyOptions())
        self.add_service(ping.PingService())
        self.add_service(self.identify_service)
        for service in services:
            self.add_service(service)
        if registry is not None:
            registry.register(ResourceCollector(self.resources, self._usage))

    # -- services --

    def add_service(self, service: Service) -> None:
        """Attach ``service`` (see :class:`Service`) and, if it has a ``run`` and the host is running,
        start it."""
        service.attach(self)
        self._services.append(service)
        if self._nursery is not None and hasattr(service, "run"):
            self._nursery.start_soon(service.run)

    @property
    def closing(self) -> bool:
        """Whether the host is stopping (or stopped): no new connection is taken."""
        return self._closed

    # -- lifecycle --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, serve, and report started once every listener is bound.

        Errors come out as themselves, not wrapped in an ExceptionGroup: a group holding a single
        exception (a bind that failed, an internal failure while serving) is unwrapped. A group of
        several stays a group.

        Raises:
            AddressError: a listen address is malformed or no transport handles it.
            OSError: a listen address cannot be bound (port in use, no such interface).
        """
        failed: BaseException | None = None
        try:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self.psk is not None:
                        xsalsa20.preload()  # see there: not under a flood of first connections
                    # Services first: they hear of every connection the listeners bring.
                    for service in self._services:
                        await _start_service(nursery, service)
                    # A bad address or a port in use fails here, before started(): the error
                    # comes out of the nursery alone and is unwrapped below.
                    for a in self._listen_requests:
                        await self._listen_on(nursery, a)
                    await nursery.start(self.conn_manager.run, self)
                    nursery.start_soon(self._flush_refusal_logs)
                    task_status.started()
                    await trio.sleep_forever()
            except BaseExceptionGroup as errors:
                failed = _sole_error(errors)
                if failed is None:
                    raise
        finally:
            self._closed = True
            self._nursery = None
            self.resources.flush_logs(trio.current_time(), force=True)
            with trio.CancelScope(shield=True):
                for conn in [c for conns in self.connections.values() for c in conns]:
                    await trio.aclose_forcefully(conn.session.transport)
        if failed is not None:
            raise failed  # outside the except block: no group in its context

    async def _flush_refusal_logs(self) -> None:
        while True:
            await trio.sleep(REFUSAL_LOG_TICK)
            self.resources.flush_logs(trio.current_time())

    def _usage(self) -> Usage:
        inbound = outbound = streams = 0
        memory_resets, pongs_dropped = self._closed_memory_resets, self._closed_pongs_dropped
        # Called from the metrics server's render thread while trio changes these: list() copies
        # each in one step under the GIL, where iterating the live dict could see it resized.
        for conns in list(self.connections.values()):
            for c in list(conns):
                streams += len(c.session.streams)
                memory_resets += c.session.streams_reset_for_memory
                pongs_dropped += c.session.pongs_dropped
                if c.direction == INBOUND:
                    inbound += 1
                else:
                    outbound += 1
        return Usage(inbound, outbound, self._pending_outbound, streams, memory_resets, pongs_dropped)

    def _require_running(self) -> trio.Nursery:
        if self._nursery is None:
            raise NotRunningError(
                "the host is not running: use `async with open_host(...)` or nursery.start(host.run)"
            )
        return self._nursery

    async def listen(self, address: str | Multiaddr) -> list[Multiaddr]:
        """Start listening; return the bound addresses (with real ports).

        Connected peers are told our new addresses (identify push) unless ``announce`` fixes them.

        Raises:
            AddressError: malformed or not TCP.
            OSError: cannot bind.
            NotRunningError: the host is not running.
        """
        nursery = self._require_running()
        return await self._listen_on(nursery, address)

    async def _listen_on(self, nursery: trio.Nursery, address: str | Multiaddr) -> list[Multiaddr]:
        ma = addrs_.parse(address)
        transport, bare = self._transport_for(ma)
        bound = await transport.listen(bare, self._handle_inbound, nursery)
        self.listen_addrs += bound
        self.advertised_addrs()  # notices the change, so connected peers hear of it
        return bound

    def _transport_for(self, ma: Multiaddr) -> tuple[Transport, Multiaddr]:
        """The transport for ``ma``, and ``ma`` without ``/p2p`` (what the transport is given).

        Raises:
            AddressError: no transport handles it.
        """
        bare = ma.decapsulate("p2p") if ma.peer_id() is not None else ma
        for t in self.transports:
            if t.handles(bare):
                return t, bare
        raise AddressError(ma, "no transport for this address (physarum has /tcp/PORT and /tcp/PORT/ws)")

    async def aclose(self) -> None:
        """Close every connection and stop listening, within about :data:`GO_AWAY_TIMEOUT` (1 s).

        Every connection says GoAway at once, in parallel, under one deadline: a peer that does not
        read cannot hold the others up, and shutdown does not grow with the number of peers."""
        self._closed = True
        # A copy: each connection's task removes it from these lists as it closes.
        conns = [c for conns in self.connections.values() for c in conns]
        with trio.move_on_after(GO_AWAY_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for conn in conns:
                    nursery.start_soon(conn.aclose)
        for conn in conns:
            if not conn.is_closed:  # its GoAway was still on its way at the deadline
                await trio.aclose_forcefully(conn.session.transport)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- addresses --

    @property
    def addrs(self) -> list[Multiaddr]:
        """Our advertised addresses, each ending in ``/p2p/<our id>`` (what the binaries print)."""
        return [addrs_.with_peer(a, self.peer_id) for a in self.advertised_addrs()]

    @property
    def announce(self) -> list[Multiaddr]:
        """The ``announce`` addresses (empty: advertise the listen addresses)."""
        return list(self._announce)

    def set_announce(self, addresses: Sequence[str | Multiaddr]) -> None:
        """Replace the ``announce`` addresses (empty: advertise the listen addresses again).

        Connected peers are told (identify push).

        Raises:
            AddressError: as for the ``announce`` argument of :class:`Host`.
        """
        self._announce = self._check_announce(addresses)
        self.advertised_addrs()

    def _check_announce(self, addresses: Sequence[str | Multiaddr]) -> tuple[Multiaddr, ...]:
        out: list[Multiaddr] = []
        for a in addresses:
            ma = addrs_.parse(a)
            ep = addrs_.tcp_endpoint(ma)
            if ep.peer_id is not None and ep.peer_id != self.peer_id:
                raise addrs_.AddressError(ma, "an announce address names another peer id")
            if ep.port == 0:
                raise addrs_.AddressError(ma, "an announce address needs a real port, not 0")
            if addrs_.is_unspecified(ma):
                raise addrs_.AddressError(
                    ma, "an announce address needs a host peers can dial, not a wildcard"
                )
            out.append(addrs_.without_peer(ma))
        return tuple(dict.fromkeys(out))

    def advertised_addrs(self) -> list[Multiaddr]:
        """The addresses we tell peers, without ``/p2p``.

        The ``announce`` addresses when set. Otherwise the listen addresses, where a wildcard bind
        (``0.0.0.0`` or ``::``) stands for every address of that family on this machine's interfaces
        that are up, except loopback and link-local ones (see :func:`netif.select_advertised`:
        loopback is listed only when the machine has nothing else; an explicit ``127.0.0.1`` bind is
        advertised as it is). The interface list is reused for ``address_cache_ttl`` seconds, so a
        change of the machine's addresses is noticed the next time they are needed (identify, the
        DHT) within that time; any change noticed here is pushed to connected peers.
        """
        if self._announce:
            out = list(self._announce)
        else:
            out = []
            for a in self.listen_addrs:
                if not addrs_.is_unspecified(a):
                    out.append(a)
                    continue
                six = ":" in addrs_.tcp_endpoint(a).host
                for ip in netif.select_advertised(self._interface_addresses(six)):
                    out.append(addrs_.with_host(a, str(ip)))
            out = list(dict.fromkeys(out))
        current = tuple(out)
        if current != self._advertised:
            self._advertised = current
            self.on_local_change.fire(None)
        return out

    def _interface_addresses(self, ipv6: bool) -> list[netif.InterfaceAddress]:
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        try:
            now = trio.current_time()
        except RuntimeError:  # outside trio: no clock to age a cache by
            return netif.interface_addresses(family)
        return self._interfaces.get(family, now)

    def observed_addrs(self, min_observers: int = OBSERVED_ADDR_THRESHOLD) -> list[Multiaddr]:
        """Where peers see us: addresses at least ``min_observers`` distinct connected peers
        reported in identify (default 4, go-libp2p's threshold), most reported first.

        Only reports made on connections the peer dialed count: on a connection we dialed, the
        peer sees our ephemeral source port (or a NAT's mapping of it), which leads nowhere.
        Each peer counts once (its latest report) until it disconnects; at most
        :data:`identify.MAX_OBSERVED_ADDRS` distinct addresses are kept. These addresses are a
        hint (e.g. for an operator choosing ``announce``) and are never advertised by themselves:
        a NAT may map each connection to another port, and peers could lie.
        """
        return self.identify_service.observed_addrs(min_observers)

    # -- handlers --

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve ``protocol`` on inbound streams. The host closes the stream after the handler returns.

        A new protocol is pushed to connected peers (identify push).
        """
        new = protocol not in self._handlers
        self._handlers[protocol] = handler
        if new:
            self.on_local_change.fire(None)

    def remove_handler(self, protocol: str) -> None:
        """Stop serving ``protocol``; connected peers are told (identify push)."""
        if self._handlers.pop(protocol, None) is not None:
            self.on_local_change.fire(None)

    @property
    def protocols(self) -> list[str]:
        return list(self._handlers)

    # -- connections --

    def connected_peers(self) -> list[PeerId]:
        return [p for p, conns in self.connections.items() if any(not c.is_closed for c in conns)]

    def connection(self, peer_id: PeerId) -> Connection | None:
        """The newest open connection to ``peer_id``, if any."""
        for conn in reversed(self.connections.get(peer_id, ())):
            if not conn.is_closed:
                return conn
        return None

    def _connection_count(self) -> int:
        """Open connections, with those admitted but not registered yet, and without those being
        closed to make room (they are leaving)."""
        return self._registered + len(self._joining) - len(self._evicting)

    def _make_room(self, newcomer: Connection) -> Refusal | None:
        """Whether ``newcomer`` (its handshake done) may join the open connections. At
        ``max_connections`` the connection manager's victim
        (:func:`~physarum.overlay.connmgr.pick_victim`) is closed to make room, with GoAway 0x1005;
        with no victim (every connection protected) the newcomer is refused."""
        limits = self.limits
        if len(self.connections.get(newcomer.peer_id, ())) >= limits.max_connections_per_peer:
            return Refusal.PEER_LIMIT
        # Dials in progress hold no slot: each one, like each inbound handshake, makes room (or is
        # refused) when it is done, so the count never passes the limit. Usually no victim is
        # needed, or one; more only if the limit was lowered.
        victims = []
        for _ in range(self._connection_count() + 1 - limits.max_connections):
            victim = self._next_victim()
            if victim is None:
                return Refusal.CONNECTION_LIMIT
            victims.append(victim)
        for victim in victims:
            self._evicting.add(victim)
            log.debug("closing %s to make room for %s", victim, short(newcomer.peer_id))
            self._require_running().start_soon(self._evict, victim)
        self._joining.add(newcomer)  # until _run_connection registers it
        return None

    def _next_victim(self) -> Connection | None:
        """The connection manager's next victim. Ranking every open connection costs ~1.5 ms per
        1,000, so on a host with many connections a ranked batch is reused for
        :data:`VICTIM_BATCH_TTL` seconds (skipping what closed or became protected since) rather
        than ranked per newcomer; newcomers admitted meanwhile are not in it, so under a flood the
        victims are the flood's earlier connections rather than its newest."""
        now = trio.current_time()
        if now - self._victims_at > VICTIM_BATCH_TTL:
            self._victims.clear()
        manager = self.conn_manager
        while True:
            if not self._victims:
                # Not those still joining: their sessions do not run yet, so they could not be told why.
                candidates = [c for conns in self.connections.values() for c in conns if c not in self._evicting]
                # A small host ranks per newcomer (cheap, and exact: newcomers since count too).
                batch = VICTIM_BATCH if len(candidates) > 4 * VICTIM_BATCH else 1
                self._victims = collections.deque(weakref.ref(c) for c in manager.rank_victims(candidates, batch))
                self._victims_at = now if batch > 1 else -math.inf
                if not self._victims:
                    return None
            victim = self._victims.popleft()()
            if victim is None or victim.is_closed or victim in self._evicting or manager.is_protected(victim.peer_id):
                continue
            manager.note_victim()
            return victim

    def _all_protected(self) -> bool:
        """Whether no open connection could make room (every one is protected or leaving)."""
        protected = self.conn_manager.is_protected
        return all(
            protected(peer) or all(c in self._evicting for c in conns) for peer, conns in self.connections.items()
        )

    async def _evict(self, victim: Connection) -> None:
        try:
            await victim.session.aclose(GO_AWAY_GARBAGE_COLLECTED)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # already going: closed is what we wanted
        finally:
            # Counted as leaving until its connection task has removed it (or it never ran).
            if victim not in self.connections.get(victim.peer_id, ()):
                self._evicting.discard(victim)


    async def connect(self, target: str | Multiaddr | PeerId, *, timeout: float = DEFAULT_TIMEOUT) -> Connection:
        """Return an open connection to ``target``, dialing if needed.

        ``target`` is a multiaddr (``/p2p/<id>`` is then checked against the remote's proven
        identity) or a peer id whose addresses are in the peer store.

        Raises:
            AddressError: a malformed multiaddr.
            DialError: every address failed; ``errors`` says why for each (a wrong PSK shows as
                PskMismatchError, another identity as PeerIdMismatchError, ourselves as
                SelfDialError).
            LimitError: ``limits.max_connections`` connections are open and all are protected,
                or ``limits.max_dials`` dials are in progress.
            NotRunningError: the host is not running.
        """
        self._require_running()
        if isinstance(target, PeerId):
            if target == self.peer_id:
                raise DialError(target, {str(target): SelfDialError("that is our own peer id")})
            existing = self.connection(target)
            if existing is not None:
                return existing
            candidates = self.peerstore.addrs(target)
            peer: PeerId | None = target
        else:
            ma = addrs_.parse(target)
            peer = addrs_.tcp_endpoint(ma).peer_id
            if peer is not None and peer == self.peer_id:
                raise DialError(peer, {str(ma): SelfDialError("that is our own peer id")})
            existing = self.connection(peer) if peer is not None else None
            if existing is not None:
                return existing
            candidates = [ma]
        errors: dict[str, BaseException] = {}
        phase = DialPhase()
        with trio.move_on_after(timeout) as scope:
            for ma in candidates:
                phase.reset()
                try:
                    return await self._dial(ma, peer, phase)
                except PEER_FAILURES as e:
                    if isinstance(e, LimitError):
                        raise
                    errors[str(ma)] = e
        if scope.cancelled_caught:
            if self.psk is not None and phase.name == "header" and phase.heard:
                # The peer sent its nonce but never a header our key decodes: peers with another
                # key often wait silently for more of our garbage.
                errors[str(ma)] = PskMismatchError(
                    f"no multistream header within {timeout} s: the peer is probably not in this "
                    "private network (pre-shared keys differ) or is not using a PSK",
                    peer_id=peer,
                    address=str(ma),
                )
            elif phase.name == "header":
                # Not even a nonce: a stuck or overloaded peer, or a listener without a key that waits
                # for a valid multistream header before it says anything (rust-libp2p's does).
                errors[str(ma)] = TimeoutError(
                    f"the peer took the connection and sent nothing within {timeout} s: it is overloaded,"
                    + (" or it uses no pre-shared key and waits for a header it can read" if self.psk else "")
                )
            else:
                errors["(deadline)"] = TimeoutError(f"no connection within {timeout} s")
        raise DialError(peer, errors)

    async def _dial(self, ma: Multiaddr, peer: PeerId | None, phase: DialPhase | None = None) -> Connection:
        limits = self.limits
        if self._pending_outbound >= limits.max_dials:
            raise LimitError(f"{limits.max_dials} dials already in progress", limit=limits.max_dials)
        transport, bare = self._transport_for(ma)
        if peer == self.peer_id:
            raise SelfDialError("that is our own peer id", address=str(ma))
        # Counted apart (max_dials): inbound handshakes have a pool of their own and never take
        # a dial's place.
        self._pending_outbound += 1
        try:
            raw = await transport.dial(bare)
            try:
                session = await self.upgrader.upgrade(
                    raw.stream, initiator=True, expected=peer, remote=raw.remote, phase=phase
                )
                conn = self._connection(session, raw, OUTBOUND)
                refusal = self._make_room(conn)
                if refusal is not None:
                    raise LimitError(
                        f"{limits.max_connections} connections already open, all protected"
                        if refusal == Refusal.CONNECTION_LIMIT
                        else f"{limits.max_connections_per_peer} connections to {short(conn.peer_id)} already open",
                        limit=limits.max_connections,
                    )
            except BaseException:
                await trio.aclose_forcefully(raw.stream)
                raise
            self.peerstore.add_addrs(conn.peer_id, [bare], prefer=True)
            try:
                await self._require_running().start(self._run_connection, conn)
            finally:
                self._joining.discard(conn)  # registered by now, or never will be
        finally:
            self._pending_outbound -= 1
        return conn

    def _connection(self, session: YamuxSession, raw: RawConnection, direction: str) -> Connection:
        assert session.peer_id is not None  # the upgrader proved it
        conn = Connection(self, session, session.peer_id, raw.remote, raw.local, direction)
        session.on_stream = lambda stream: self._on_stream(conn, stream)
        return conn

    async def _handle_inbound(self, raw: RawConnection) -> None:
        stream, remote = raw.stream, raw.remote
        now = trio.current_time()
        where = ipport(remote)
        res = self.resources
        # Refusals happen here, before any crypto and before we send a byte: the dialer sees the
        # connection closed without our pnet nonce and reports RefusedError, not a PSK mismatch.
        admitted: Handshake | Refusal
        if self._closed:
            admitted = Refusal.CLOSING
        elif self._connection_count() >= self.limits.max_connections and self._all_protected():
            admitted = Refusal.CONNECTION_LIMIT  # nothing could make room: refuse before any crypto
        else:
            # At the connection limit a victim may make room once the handshake is done; the
            # handshake pool bounds what handshakes cost meanwhile.
            admitted = res.admit_handshake(raw.ip, now)
        if isinstance(admitted, Refusal):
            res.refuse_connection(admitted, f"from {where}", now)
            await trio.aclose_forcefully(stream)
            return
        hs = admitted
        try:
            with hs.cancel_scope, trio.move_on_after(self.limits.handshake_timeout) as deadline:
                session = await self.upgrader.upgrade(stream, initiator=False, expected=None, remote=remote)
            if hs.cancel_scope.cancelled_caught or deadline.cancelled_caught:
                why = Refusal.HANDSHAKE_POOL if hs.evicted else Refusal.HANDSHAKE_TIMEOUT
                if not hs.evicted:
                    res.handshakes.failed(raw.ip, trio.current_time())
                res.refuse_connection(why, f"from {where}", trio.current_time())
                await trio.aclose_forcefully(stream)
                return
        except FirstBytesTimeout:
            res.handshakes.failed(raw.ip, trio.current_time())
            res.refuse_connection(Refusal.FIRST_BYTE_TIMEOUT, f"from {where}", trio.current_time())
            await trio.aclose_forcefully(stream)
            return
        except PEER_FAILURES as e:
            if isinstance(e, PhysarumError):  # the peer's doing (a wrong key, garbage), not a lost link
                res.handshakes.failed(raw.ip, trio.current_time())
            res.refuse_connection(_refusal_of(e), f"from {where}", trio.current_time(), error=e)
            log.debug("closing connection from %s: %s", where, reason(e))
            await trio.aclose_forcefully(stream)
            return
        finally:
            res.handshakes.release(hs)
        conn = self._connection(session, raw, INBOUND)
        refusal = self._make_room(conn)
        if refusal is not None:
            res.refuse_connection(refusal, f"from {where} ({short(conn.peer_id)})", trio.current_time())
            await trio.aclose_forcefully(conn.session.transport)
            return
        await self._run_connection(conn)

    async def _run_connection(
        self, conn: Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.connections.setdefault(conn.peer_id, []).append(conn)
        self._registered += 1  # counted here, as the walk over every connection cost a flood dearly
        self._joining.discard(conn)
        self.peerstore.info(conn.peer_id).last_seen = trio.current_time()
        log.debug("connected %s", conn)
        try:
            # The session reads in this very task (not a child of it): a task less per connection.
            await conn.session.run(task_status=_ThenFire(task_status, self.on_connect, conn))
        finally:
            conns = self.connections.get(conn.peer_id, [])
            if conn in conns:
                conns.remove(conn)
                self._registered -= 1
                self._closed_memory_resets += conn.session.streams_reset_for_memory
                self._closed_pongs_dropped += conn.session.pongs_dropped
            self._evicting.discard(conn)
            if not conns:
                self.connections.pop(conn.peer_id, None)
                self.resources.forget_peer(conn.peer_id)
                self.peerstore.departed(conn.peer_id, trio.current_time())
            else:
                self.peerstore.info(conn.peer_id).last_seen = trio.current_time()
            # on_stream's closure holds conn, which holds the session: a cycle that would keep the
            # connection (its buffers, ciphers and socket, ~50 KB) until a full collection.
            conn.session.on_stream = None
            why = conn.session.close_reason
            log.debug(
                "disconnected %s: %s", conn, reason(why) if isinstance(why, BaseException) else clip(why)
            )
            self.on_disconnect.fire(conn)

    async def disconnect(self, peer_id: PeerId) -> None:
        """Close every connection to ``peer_id``."""
        for conn in list(self.connections.get(peer_id, ())):
            await conn.aclose()

    # -- streams --

    def _on_stream(self, conn: Connection, stream: YamuxStream) -> None:
        if self._nursery is None:
            stream.reset()
            return
        self._nursery.start_soon(self._serve_stream, conn, stream)

    async def _serve_stream(self, conn: Connection, stream: YamuxStream) -> None:
        counted: str | None = None
        try:
            with trio.move_on_after(self.limits.stream_negotiation_timeout):
                buf = BufferedStream(stream)
                handlers = self._handlers
                stream.protocol = await multistream.handle(
                    buf, handlers.__contains__, lambda: list(handlers), defer=stream.defer
                )
                stream.unread(buf.take_buffer())
            handler = self._handlers.get(stream.protocol or "")
            if handler is None or stream.protocol is None:
                stream.reset()
                return
            if not self.resources.open_inbound_stream(conn.peer_id, stream.protocol):
                self.resources.refuse_stream(
                    Refusal.STREAM_LIMIT,
                    f"{clip(stream.protocol, 60)} from {short(conn.peer_id)}",
                    trio.current_time(),
                )
                stream.reset()
                return
            counted = stream.protocol
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.debug(
                "stream %s from %s ended: %s", clip(stream.protocol, 60), short(conn.peer_id), reason(e)
            )
        except PhysarumError as e:
            self.resources.refuse_stream(
                Refusal.PROTOCOL_ERROR,
                f"{clip(stream.protocol, 60)} from {short(conn.peer_id)} ({reason(e)})",
                trio.current_time(),
            )
            stream.reset()
        except Exception:
            log.exception(
                "handler for %s failed on a stream from %s", clip(stream.protocol, 60), short(conn.peer_id)
            )
            stream.reset()
        finally:
            if counted is not None:
                self.resources.close_inbound_stream(conn.peer_id, counted)
            await stream.aclose()

    async def new_stream(
        self, peer: PeerId | str | Multiaddr, protocols: str | Sequence[str], *, timeout: float = DEFAULT_TIMEOUT
    ) -> YamuxStream:
        """Open a stream to ``peer`` (dialing if needed) speaking the first protocol it accepts
        (``protocols``: one protocol id, or several in order of preference).

        Raises:
            DialError: cannot connect.
            NegotiationError: the peer supports none of ``protocols``.
            LimitError: stream or connection limit reached.
            NotRunningError: the host is not running.
            trio.TooSlowError: ``timeout`` passed.
            trio.BrokenResourceError: the connection broke meanwhile.
        """
        if isinstance(protocols, str):  # not its characters as protocols
            protocols = [protocols]
        with trio.fail_after(timeout):
            conn = await self.connect(peer, timeout=timeout)
            return await conn.open_stream(protocols)

    async def new_lazy_stream(
        self, peer: PeerId | str | Multiaddr, protocol: str, *, timeout: float = DEFAULT_TIMEOUT
    ) -> multistream.LazyStream:
        """Open a stream to ``peer`` proposing ``protocol`` without waiting for the answer (see
        :class:`~physarum.overlay.multistream.LazyStream`): the proposal goes out with the first
        data, and the first receive raises NegotiationError if the peer refused it. For a
        request-response protocol this saves the round trip :meth:`new_stream` waits for.

        Raises:
            see :meth:`new_stream` (NegotiationError only later, from a receive).
        """
        with trio.fail_after(timeout):
            conn = await self.connect(peer, timeout=timeout)
            stream = await conn.session.open_stream()
        stream.protocol = protocol
        return multistream.LazyStream(stream, protocol)

    # -- ping --

    async def ping(
        self, peer: PeerId | str | Multiaddr, *, count: int = 1, timeout: float = DEFAULT_TIMEOUT
    ) -> list[float]:
        """Ping ``peer`` ``count`` times on one stream; RTTs in seconds.

        Raises:
            DialError, NegotiationError, ProtocolError, NotRunningError, trio.TooSlowError,
            trio.BrokenResourceError.
        """
        with trio.fail_after(timeout):
            stream = await self.new_stream(peer, [ping.PROTOCOL_ID], timeout=timeout)
            try:
                return [await ping.ping_once(stream) for _ in range(count)]
            finally:
                await stream.aclose()

    # -- identify --

    async def identify(self, peer: PeerId, *, timeout: float = DEFAULT_TIMEOUT) -> IdentifyInfo:
        """What ``peer`` says of itself, asked now over a fresh identify stream (the peer store and
        the connection's ``identify_info`` are updated, ``on_identify`` fires).

        Raises:
            DialError, NegotiationError, DecodeError, NotRunningError, trio.TooSlowError,
            trio.BrokenResourceError.
        """
        return await self.identify_service.identify(peer, timeout=timeout)


class _ThenFire:
    """A task status for a session's ``run``: once it reads, tell the caller's task status, then fire
    ``on_connect`` for the connection."""

    __slots__ = ("_conn", "_event", "_outer")

    def __init__(self, outer: trio.TaskStatus[None], event: Callbacks[Connection], conn: Connection) -> None:
        self._outer, self._event, self._conn = outer, event, conn

    def started(self, value: None = None) -> None:
        self._outer.started()
        self._event.fire(self._conn)


async def _start_service(nursery: trio.Nursery, service: Service) -> None:
    run = getattr(service, "run", None)
    if run is not None:
        await nursery.start(run)


def _refusal_of(e: BaseException) -> Refusal:
    """The refusal counter an inbound handshake failure goes under."""
    if isinstance(e, PskMismatchError):
        return Refusal.NO_PSK if e.no_psk else Refusal.PSK_MISMATCH
    return Refusal.HANDSHAKE_FAILED


# -- exception groups --------------------------------------------------------------------------------


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception a group wraps, unless it is a cancellation (those stay as trio made them)."""
    leaves = list(exception_leaves(group))
    if len(leaves) == 1 and not isinstance(leaves[0], trio.Cancelled):
        return leaves[0]
    return None


@asynccontextmanager
async def open_host(
    key_pair: KeyPair | None = None,
    *,
    listen: Sequence[str | Multiaddr] = ("/ip4/127.0.0.1/tcp/0",),
    announce: Sequence[str | Multiaddr] = (),
    **kwargs: object,
) -> AsyncIterator[Host]:
    """Run a :class:`Host` for the duration of the block, then close it.

    Exceptions come out as themselves, not wrapped in ExceptionGroups (trio's nurseries are strict):
    an exception the block raises is caught, the host is closed and cancelled, and the exception is
    raised again outside the host's nursery; so are errors starting the host, and a host that fails
    on its own (an internal error) raises its single exception. Cancellation is left to trio, and
    genuinely several errors at once (the block and the host both failing) stay an ExceptionGroup.

    Raises:
        AddressError, OSError: a listen address is malformed or cannot be bound; AddressError for a
            bad ``announce`` address.
        KeyFileError: a ``psk`` that is not 32 bytes.
    """
    host = Host(key_pair, listen=listen, announce=announce, **kwargs)  # type: ignore[arg-type]
    failed: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(host.run)
            except Exception as e:
                failed = e  # raised below, outside the nursery
            else:
                try:
                    yield host
                except Exception as e:
                    failed = e  # raised below, outside the nursery
                finally:
                    try:
                        await host.aclose()
                    finally:
                        nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if failed is None:
            failed = _sole_error(group)
            if failed is None:
                raise
        elif any(not isinstance(e, trio.Cancelled) for e in exception_leaves(group)):
            raise BaseExceptionGroup(
                "open_host: the block and the host both failed", [failed, group]
            ) from None
        # else: only cancellations came out while closing; the block's own error says more
    if failed is not None:
        raise failed


__all__ = ["INBOUND", "OUTBOUND", "Connection", "Handler", "Host", "Service", "open_host"]
