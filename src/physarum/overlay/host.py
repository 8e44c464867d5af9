"""The host: listens and dials TCP, upgrades connections, routes streams to protocol handlers.

Every connection is upgraded in this order (the libp2p connection stack)::

    TCP -> pnet (when a pre-shared key is set) -> multistream -> /noise -> multistream -> /yamux/1.0.0

Inbound streams are negotiated with multistream-select and handed to the handler registered
for their protocol; identify and ping are built in. Everything a peer sends is untrusted: a
failure closes that stream or connection, is logged, and never reaches the caller's nursery.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import trio
from multiaddr import Multiaddr

from physarum import __version__
from physarum.errors import (
    DecodeError,
    DialError,
    LimitError,
    NotMultistreamError,
    PhysarumError,
)
from physarum.overlay import addr as addrs_
from physarum.overlay import identify, multistream, noise, ping, varint, yamux
from physarum.overlay.envelope import seal_peer_record
from physarum.overlay.identify import IdentifyInfo
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.peerstore import PeerStore
from physarum.overlay.streamio import BufferedStream
from physarum.overlay.yamux import YamuxSession, YamuxStream
from physarum.psk import PskMismatchError, protect

log = logging.getLogger(__name__)

Handler = Callable[[YamuxStream], Awaitable[None]]
ConnectionCallback = Callable[["Connection"], None]

INBOUND = "inbound"
OUTBOUND = "outbound"


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
        self.identified = trio.Event()
        self.identify_info: IdentifyInfo | None = None

    @property
    def is_closed(self) -> bool:
        return self.session.broken

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
        return f"<Connection {self.direction} {self.peer_id} {self.remote_addr}>"


class Host:
    """A libp2p host over TCP, in a private network when ``psk`` is given.

    Run it with ``async with open_host(...) as host`` or ``await nursery.start(host.run)``.
    ``listen`` addresses are ``/ip4|ip6/HOST/tcp/PORT`` (port 0 picks a free port).
    Limits: ``max_connections`` (inbound ones over it are closed at once; dials raise
    :class:`LimitError`), ``max_streams_per_connection``, and ``handshake_timeout`` for upgrading
    a connection or negotiating an inbound stream, so a silent peer cannot hold a slot.
    """

    def __init__(
        self,
        key_pair: KeyPair | None = None,
        *,
        psk: bytes | None = None,
        listen: Sequence[str | Multiaddr] = (),
        max_connections: int = 1024,
        max_streams_per_connection: int = 256,
        handshake_timeout: float = 10.0,
        agent_version: str = f"physarum/{__version__}",
        peerstore_capacity: int = 10_000,
    ) -> None:
        if psk is not None and len(psk) != 32:
            raise ValueError("a pre-shared key is 32 bytes")
        self.key_pair = key_pair or KeyPair.generate()
        self.peer_id = self.key_pair.peer_id
        self.psk = psk
        self._listen_requests = [addrs_.parse(a) for a in listen]
        self.max_connections = max_connections
        self.max_streams_per_connection = max_streams_per_connection
        self.handshake_timeout = handshake_timeout
        self.agent_version = agent_version
        self.peerstore = PeerStore(peerstore_capacity)
        self.listen_addrs: list[Multiaddr] = []
        self.connections: dict[PeerId, list[Connection]] = {}
        self.on_connect: list[ConnectionCallback] = []
        self.on_disconnect: list[ConnectionCallback] = []
        self.on_identify: list[ConnectionCallback] = []
        self._handlers: dict[str, Handler] = {}
        self._nursery: trio.Nursery | None = None
        self._pending_inbound = 0
        self._pending_outbound = 0
        self._record: tuple[tuple[Multiaddr, ...], bytes] | None = None
        self._closed = False
        self.set_handler(ping.PROTOCOL_ID, self._handle_ping)
        self.set_handler(identify.PROTOCOL_ID, self._handle_identify)
        self.set_handler(identify.PUSH_PROTOCOL_ID, self._handle_identify_push)

    # -- lifecycle --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, serve, and report started once every listener is bound.

        Raises:
            AddressError: a listen address is malformed or not TCP.
            OSError: a listen address cannot be bound (port in use, no such interface).
        """
        listeners: list[list[trio.SocketListener]] = []
        try:
            # Bind before opening the nursery, so a bad address raises AddressError or OSError
            # itself rather than wrapped in an ExceptionGroup.
            for a in self._listen_requests:
                listeners.append(await self._bind(a))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for group in listeners:
                    await self._serve(nursery, group)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._closed = True
            self._nursery = None
            with trio.CancelScope(shield=True):
                for group in listeners:  # closed by serve_listeners once it started; closing twice is fine
                    for lst in group:
                        await trio.aclose_forcefully(lst)
                for conn in [c for conns in self.connections.values() for c in conns]:
                    await trio.aclose_forcefully(conn.session.transport)

    def _require_running(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("the host is not running: use `async with open_host(...)` or nursery.start(host.run)")
        return self._nursery

    async def listen(self, address: str | Multiaddr) -> list[Multiaddr]:
        """Start listening; return the bound addresses (with real ports).

        Raises:
            AddressError: malformed or not TCP.
            OSError: cannot bind.
        """
        nursery = self._require_running()
        return await self._serve(nursery, await self._bind(address))

    async def _bind(self, address: str | Multiaddr) -> list[trio.SocketListener]:
        ma = addrs_.parse(address)
        ep = addrs_.tcp_endpoint(ma)
        return await trio.open_tcp_listeners(ep.port, host=ep.host)

    async def _serve(self, nursery: trio.Nursery, listeners: list[trio.SocketListener]) -> list[Multiaddr]:
        bound = [addrs_.from_sockaddr(lst.socket.getsockname()) for lst in listeners]
        await nursery.start(trio.serve_listeners, self._handle_inbound, listeners)
        self.listen_addrs += bound
        self._record = None
        return bound

    @property
    def addrs(self) -> list[Multiaddr]:
        """Our dialable addresses, each ending in ``/p2p/<our id>``."""
        return [addrs_.with_peer(a, self.peer_id) for a in self.advertised_addrs()]

    def advertised_addrs(self) -> list[Multiaddr]:
        """Listen addresses, with wildcard binds expanded to this machine's addresses."""
        out: list[Multiaddr] = []
        for a in self.listen_addrs:
            if not addrs_.is_unspecified(a):
                out.append(a)
                continue
            ep = addrs_.tcp_endpoint(a)
            six = ":" in ep.host
            for ip in _local_ips(six):
                out.append(Multiaddr(f"/{'ip6' if six else 'ip4'}/{ip}/tcp/{ep.port}"))
        return list(dict.fromkeys(out))

    async def aclose(self) -> None:
        """Close every connection and stop listening."""
        self._closed = True
        # Copies: each connection's task removes it from these lists as it closes.
        for conn in [c for conns in self.connections.values() for c in conns]:
            await conn.aclose()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # -- handlers --

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve ``protocol`` on inbound streams. The host closes the stream after the handler returns."""
        self._handlers[protocol] = handler

    def remove_handler(self, protocol: str) -> None:
        self._handlers.pop(protocol, None)

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
        return sum(len(c) for c in self.connections.values())

    def _slots_in_use(self) -> int:
        """Open connections plus handshakes in progress, either way: what max_connections bounds."""
        return self._connection_count() + self._pending_inbound + self._pending_outbound

    async def connect(self, target: str | Multiaddr | PeerId, *, timeout: float = 10.0) -> Connection:
        """Return an open connection to ``target``, dialing if needed.

        ``target`` is a multiaddr (``/p2p/<id>`` is then checked against the remote's proven
        identity) or a peer id whose addresses are in the peer store.

        Raises:
            AddressError: a malformed multiaddr.
            DialError: every address failed; ``errors`` says why for each (a wrong PSK shows as
                PskMismatchError, another identity as PeerIdMismatchError).
            LimitError: ``max_connections`` reached.
        """
        self._require_running()
        if isinstance(target, PeerId):
            existing = self.connection(target)
            if existing is not None:
                return existing
            candidates = self.peerstore.addrs(target)
            peer: PeerId | None = target
        else:
            ma = addrs_.parse(target)
            peer = addrs_.tcp_endpoint(ma).peer_id
            if peer is not None and peer == self.peer_id:
                raise DialError(peer, {str(ma): ValueError("that is our own peer id")})
            existing = self.connection(peer) if peer is not None else None
            if existing is not None:
                return existing
            candidates = [ma]
        errors: dict[str, BaseException] = {}
        phase = ["tcp"]
        with trio.move_on_after(timeout) as scope:
            for ma in candidates:
                phase[0] = "tcp"
                try:
                    return await self._dial(ma, peer, phase)
                except (PhysarumError, OSError, trio.BrokenResourceError) as e:
                    if isinstance(e, LimitError):
                        raise
                    errors[str(ma)] = e
        if scope.cancelled_caught:
            if self.psk is not None and phase[0] == "header":
                # The peer took the TCP connection but never sent a header our key decodes:
                # peers with another key often wait silently for more of our garbage.
                errors[str(ma)] = PskMismatchError(
                    f"no multistream header within {timeout} s: the peer is probably not in this "
                    "private network (pre-shared keys differ) or is not using a PSK",
                    peer_id=peer,
                    address=str(ma),
                )
            else:
                errors["(deadline)"] = TimeoutError(f"no connection within {timeout} s")
        raise DialError(peer, errors)

    async def _dial(self, ma: Multiaddr, peer: PeerId | None, phase: list[str] | None = None) -> Connection:
        if self._slots_in_use() >= self.max_connections:
            raise LimitError(f"{self.max_connections} connections already open", limit=self.max_connections)
        ep = addrs_.tcp_endpoint(ma)
        if peer == self.peer_id:
            raise ValueError("refusing to dial ourselves")
        # Dials in progress hold a slot, as inbound handshakes do, so concurrent dials cannot
        # overshoot the limit. The slot is given back once the connection is registered.
        self._pending_outbound += 1
        try:
            tcp = await trio.open_tcp_stream(ep.host, ep.port)
            try:
                remote = addrs_.from_sockaddr(tcp.socket.getpeername())
                local = addrs_.from_sockaddr(tcp.socket.getsockname())
                conn = await self._upgrade(tcp, OUTBOUND, peer, remote, local, phase)
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
            self.peerstore.add_addrs(conn.peer_id, [addrs_.without_peer(ma)], prefer=True)
            await self._require_running().start(self._run_connection, conn)
        finally:
            self._pending_outbound -= 1
        return conn

    async def _handle_inbound(self, tcp: trio.SocketStream) -> None:
        try:
            remote = addrs_.from_sockaddr(tcp.socket.getpeername())
            local = addrs_.from_sockaddr(tcp.socket.getsockname())
        except OSError:
            await trio.aclose_forcefully(tcp)
            return
        if self._closed or self._slots_in_use() >= self.max_connections:
            log.warning("refusing connection from %s: %d connections open", remote, self.max_connections)
            await trio.aclose_forcefully(tcp)
            return
        self._pending_inbound += 1
        try:
            with trio.move_on_after(self.handshake_timeout) as scope:
                conn = await self._upgrade(tcp, INBOUND, None, remote, local)
            if scope.cancelled_caught:
                log.info("closing connection from %s: no handshake within %s s", remote, self.handshake_timeout)
                await trio.aclose_forcefully(tcp)
                return
        except (PhysarumError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.info("closing connection from %s: %s", remote, e)
            await trio.aclose_forcefully(tcp)
            return
        finally:
            self._pending_inbound -= 1
        await self._run_connection(conn)

    async def _upgrade(
        self,
        tcp: trio.abc.HalfCloseableStream,
        direction: str,
        expected: PeerId | None,
        remote: Multiaddr,
        local: Multiaddr | None,
        phase: list[str] | None = None,
    ) -> Connection:
        initiator = direction == OUTBOUND
        raw: trio.abc.Stream = tcp if self.psk is None else await protect(tcp, self.psk)
        buf = BufferedStream(raw)
        if phase is not None:
            phase[0] = "header"
        try:
            if initiator:
                await multistream.select(buf, [noise.PROTOCOL_ID])
            else:
                await multistream.handle(buf, noise.PROTOCOL_ID.__eq__, lambda: [noise.PROTOCOL_ID])
        except (NotMultistreamError, trio.BrokenResourceError) as e:
            # pnet has no MAC: another key (or none) shows up as a garbled header or a peer
            # that hangs up on our garbled one.
            if self.psk is not None:
                raise PskMismatchError(peer_id=expected, address=str(remote)) from e
            if isinstance(e, NotMultistreamError):
                # The mirror image: we have no key and the peer's first bytes are garbage, which
                # is what a peer in a private network sends us (its nonce, then ciphertext).
                raise PskMismatchError(
                    "the peer does not speak multistream-select in the clear: it is probably in a"
                    " private network (uses a pre-shared key) and we are not",
                    peer_id=expected,
                    address=str(remote),
                ) from e
            raise
        if phase is not None:
            phase[0] = "noise"
        secure = await noise.handshake(buf, self.key_pair, initiator=initiator, expected_peer=expected)
        peer_id = secure.remote_peer
        if peer_id == self.peer_id:
            raise PhysarumError(f"connected to ourselves at {remote}")
        buf2 = BufferedStream(secure)
        if initiator:
            await multistream.select(buf2, [yamux.PROTOCOL_ID])
        else:
            await multistream.handle(buf2, yamux.PROTOCOL_ID.__eq__, lambda: [yamux.PROTOCOL_ID])
        session = YamuxSession(
            secure,
            is_client=initiator,
            max_streams=self.max_streams_per_connection,
            peer_id=peer_id,
            initial=buf2.take_buffer(),
        )
        conn = Connection(self, session, peer_id, remote, local, direction)
        session.on_stream = lambda stream: self._on_stream(conn, stream)
        return conn

    async def _run_connection(
        self, conn: Connection, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.connections.setdefault(conn.peer_id, []).append(conn)
        self.peerstore.info(conn.peer_id).last_seen = trio.current_time()
        log.debug("connected %s", conn)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(conn.session.run)
                task_status.started()
                self._fire(self.on_connect, conn)
                nursery.start_soon(self._identify_connection, conn)
                await conn.session.closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            conns = self.connections.get(conn.peer_id, [])
            if conn in conns:
                conns.remove(conn)
            if not conns:
                self.connections.pop(conn.peer_id, None)
            self.peerstore.info(conn.peer_id).last_seen = trio.current_time()
            log.debug("disconnected %s: %s", conn, conn.session.close_reason)
            self._fire(self.on_disconnect, conn)

    def _fire(self, callbacks: list[ConnectionCallback], conn: Connection) -> None:
        for cb in list(callbacks):
            try:
                cb(conn)
            except Exception:
                log.exception("connection callback %r failed", cb)

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
        try:
            with trio.move_on_after(self.handshake_timeout):
                buf = BufferedStream(stream)
                handlers = self._handlers
                stream.protocol = await multistream.handle(buf, handlers.__contains__, lambda: list(handlers))
                stream.unread(buf.take_buffer())
            handler = self._handlers.get(stream.protocol or "")
            if handler is None:
                stream.reset()
                return
            await handler(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.debug("stream %r from %s ended: %s", stream.protocol, conn.peer_id, e)
        except PhysarumError as e:
            log.info("stream %r from %s: %s", stream.protocol, conn.peer_id, e)
            stream.reset()
        except Exception:
            log.exception("handler for %r failed on a stream from %s", stream.protocol, conn.peer_id)
            stream.reset()
        finally:
            await stream.aclose()

    async def new_stream(
        self, peer: PeerId | str | Multiaddr, protocols: Sequence[str], *, timeout: float = 10.0
    ) -> YamuxStream:
        """Open a stream to ``peer`` (dialing if needed) speaking the first protocol it accepts.

        Raises:
            DialError: cannot connect.
            NegotiationError: the peer supports none of ``protocols``.
            LimitError: stream or connection limit reached.
            trio.TooSlowError: ``timeout`` passed.
            trio.BrokenResourceError: the connection broke meanwhile.
        """
        with trio.fail_after(timeout):
            conn = await self.connect(peer, timeout=timeout)
            return await conn.open_stream(protocols)

    # -- ping --

    async def _handle_ping(self, stream: YamuxStream) -> None:
        await ping.handle_ping(stream)

    async def ping(self, peer: PeerId | str | Multiaddr, *, count: int = 1, timeout: float = 10.0) -> list[float]:
        """Ping ``peer`` ``count`` times on one stream; RTTs in seconds.

        Raises:
            DialError, NegotiationError, ProtocolError, trio.TooSlowError, trio.BrokenResourceError.
        """
        with trio.fail_after(timeout):
            stream = await self.new_stream(peer, [ping.PROTOCOL_ID], timeout=timeout)
            try:
                return [await ping.ping_once(stream) for _ in range(count)]
            finally:
                await stream.aclose()

    # -- identify --

    def _identify_info(self, conn: Connection) -> IdentifyInfo:
        advertised = tuple(self.advertised_addrs())
        if self._record is None or self._record[0] != advertised:
            # Sequence numbers must grow across restarts too: use the wall clock.
            self._record = (advertised, seal_peer_record(self.key_pair, time.time_ns(), list(advertised)))
        return IdentifyInfo(
            public_key=self.key_pair.public_key,
            listen_addrs=list(advertised),
            protocols=self.protocols,
            observed_addr=conn.remote_addr,
            protocol_version=identify.PROTOCOL_VERSION,
            agent_version=self.agent_version,
            signed_peer_record=self._record[1],
        )

    async def _handle_identify(self, stream: YamuxStream) -> None:
        body = identify.encode(self._identify_info(self._conn_of(stream)))
        await stream.send_all(varint.encode(len(body)) + body)
        await stream.send_eof()

    def _conn_of(self, stream: YamuxStream) -> Connection:
        peer = stream.session.peer_id
        for conn in self.connections.get(peer, ()) if peer is not None else ():
            if conn.session is stream.session:
                return conn
        raise trio.BrokenResourceError("connection already gone")

    async def _read_identify(self, stream: YamuxStream) -> IdentifyInfo:
        data = bytearray()
        while chunk := await stream.receive_some():
            data += chunk
            if len(data) > identify.MAX_MESSAGE:
                raise DecodeError(f"identify message over {identify.MAX_MESSAGE} bytes")
        return identify.decode_message(bytes(data))

    def _store_identify(self, conn: Connection, info: IdentifyInfo, *, push: bool = False) -> None:
        info = identify.check_against(info, conn.peer_id)
        entry = self.peerstore.info(conn.peer_id)
        if info.protocols or not push:
            entry.protocols = info.protocols
        if info.public_key is not None:
            entry.public_key = info.public_key
        entry.agent_version = info.agent_version or entry.agent_version
        entry.protocol_version = info.protocol_version or entry.protocol_version
        entry.observed_addr = info.observed_addr
        dialable = [a for a in info.listen_addrs if _is_dialable(a)]
        self.peerstore.add_addrs(conn.peer_id, [addrs_.without_peer(a) for a in dialable])
        conn.identify_info = info
        conn.identified.set()
        self._fire(self.on_identify, conn)

    async def _identify_connection(self, conn: Connection) -> None:
        try:
            with trio.fail_after(self.handshake_timeout):
                stream = await conn.open_stream([identify.PROTOCOL_ID])
                try:
                    info = await self._read_identify(stream)
                finally:
                    await stream.aclose()
            self._store_identify(conn, info)
        except (PhysarumError, trio.BrokenResourceError, trio.TooSlowError) as e:
            log.info("identify of %s failed: %s", conn.peer_id, e)
            conn.identified.set()

    async def _handle_identify_push(self, stream: YamuxStream) -> None:
        info = await self._read_identify(stream)
        self._store_identify(self._conn_of(stream), info, push=True)

    async def identify(self, peer: PeerId, *, timeout: float = 10.0) -> IdentifyInfo:
        """What ``peer`` says of itself, asked now over a fresh identify stream.

        Raises:
            DialError, NegotiationError, DecodeError, trio.TooSlowError, trio.BrokenResourceError.
        """
        with trio.fail_after(timeout):
            conn = await self.connect(peer, timeout=timeout)
            stream = await conn.open_stream([identify.PROTOCOL_ID])
            try:
                info = await self._read_identify(stream)
            finally:
                await stream.aclose()
        self._store_identify(conn, info)
        return info


def _is_dialable(a: Multiaddr) -> bool:
    try:
        ep = addrs_.tcp_endpoint(a)
    except PhysarumError:
        return False
    return ep.port != 0 and not addrs_.is_unspecified(a)


def _local_ips(ipv6: bool) -> list[str]:
    """This machine's addresses of one family, loopback first, without sending any packet."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    found = ["::1" if ipv6 else "127.0.0.1"]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, family)
    except OSError:
        infos = []
    for info in infos:
        ip = str(info[4][0])
        if ip not in found:
            found.append(ip)
    return found


@asynccontextmanager
async def open_host(
    key_pair: KeyPair | None = None, *, listen: Sequence[str | Multiaddr] = ("/ip4/127.0.0.1/tcp/0",), **kwargs: object
) -> AsyncIterator[Host]:
    """Run a :class:`Host` for the duration of the block.

    Raises:
        AddressError, OSError: a listen address is malformed or cannot be bound.
    """
    host = Host(key_pair, listen=listen, **kwargs)  # type: ignore[arg-type]
    failed: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(host.run)
        except Exception as e:
            # Raised below, outside the nursery, so the caller sees it rather than an ExceptionGroup.
            failed = e
        else:
            try:
                yield host
            finally:
                await host.aclose()
                nursery.cancel_scope.cancel()
    if failed is not None:
        raise failed


__all__ = ["INBOUND", "OUTBOUND", "Connection", "Handler", "Host", "open_host"]
