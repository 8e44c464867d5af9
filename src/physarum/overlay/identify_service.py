"""Identify as a host service: answer ``/ipfs/id/1.0.0``, identify every new connection, take
``/ipfs/id/push/1.0.0`` pushes, and push our own changes.

The codec is :mod:`physarum.overlay.identify`; this module is what runs it on a host, registered
like any other protocol (see :class:`physarum.overlay.host.Service`). The host owns one
(:attr:`Host.identify_service`) and exposes its results: :meth:`Host.identify`,
:meth:`Host.observed_addrs`, ``Connection.identified`` / ``Connection.identify_info`` and the
``Host.on_identify`` callbacks.

Push: when what our identify message says changes (the host's ``on_local_change``: a protocol
added or removed, advertised addresses changed), the message goes on ``/ipfs/id/push/1.0.0`` to
every connected peer that identified and speaks push, once per burst of changes.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from physarum import __version__
from physarum.errors import PEER_FAILURES, DecodeError, NotRunningError, PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay import identify, varint
from physarum.overlay.envelope import seal_peer_record
from physarum.overlay.identify import OBSERVED_ADDR_THRESHOLD, IdentifyInfo, ObservedAddrs
from physarum.overlay.identity import PeerId
from physarum.overlay.logfmt import reason, short
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.yamux import YamuxStream

if TYPE_CHECKING:
    from physarum.overlay.host import Connection, Host

log = logging.getLogger("physarum.overlay.host")  # one logger for what a host does to peers


@dataclass(frozen=True)
class IdentifyOptions:
    """How identify runs on a host; every field has a default."""

    agent_version: str = f"physarum/{__version__}"
    """What we call ourselves."""
    timeout: float | None = None
    """Identifying a new connection, and a push arriving once its stream is open, must finish
    within this many seconds (None: the host's ``limits.handshake_timeout``, 10 s by default)."""
    push_delay: float = 0.05
    """A change is pushed this many seconds after the first one of a burst (later ones join it)."""
    push_timeout: float = 5.0
    """Each push must be delivered within this many seconds."""
    push_concurrency: int = 16
    """Peers pushed to at a time."""


class IdentifyService:
    """Identify on one host (see the module notes). Built and attached by the host."""

    def __init__(self, options: IdentifyOptions) -> None:
        self.options = options
        self._host: Host | None = None
        self._timeout = 10.0  # options.timeout, or the host's handshake timeout (see attach)
        self._record: tuple[tuple[Multiaddr, ...], bytes] | None = None
        self._observed = ObservedAddrs()
        # Bumped whenever what our identify message says changes; a push goes to every peer that
        # was told an older version. _sent: which version each connection last got (an answer or
        # a push), absent until it asked.
        self._epoch = 0
        self._sent: dict[Connection, int] = {}
        self._push_wanted = trio.Event()

    @property
    def host(self) -> Host:
        if self._host is None:
            raise NotRunningError("this IdentifyService is not attached to a host")
        return self._host

    def attach(self, host: Host) -> None:
        self._host = host
        self._timeout = self.options.timeout if self.options.timeout is not None else host.handshake_timeout
        host.set_handler(identify.PROTOCOL_ID, self._handle_identify)
        host.set_handler(identify.PUSH_PROTOCOL_ID, self._handle_push)
        host.on_local_change.append(self.changed)
        host.on_disconnect.append(self._forget)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Identify each new connection, and push our changes; until cancelled."""
        async with trio.open_nursery() as nursery:
            def identify_new(conn: Connection) -> None:
                nursery.start_soon(self._identify_connection, conn)

            self.host.on_connect.append(identify_new)
            try:
                task_status.started()
                await self._push_loop()
            finally:
                self.host.on_connect.remove(identify_new)

    def changed(self, _: object = None) -> None:
        """What our identify message says changed: tell connected peers, soon, once per burst.
        (Its argument is ``on_local_change``'s, which says nothing.)"""
        self._epoch += 1
        self._push_wanted.set()

    def observed_addrs(self, min_observers: int = OBSERVED_ADDR_THRESHOLD) -> list[Multiaddr]:
        """See :meth:`Host.observed_addrs`."""
        return self._observed.confirmed(min_observers)

    def _forget(self, conn: Connection) -> None:
        self._sent.pop(conn, None)
        if not self.host.connections.get(conn.peer_id):
            self._observed.forget(conn.peer_id)

    # -- our message --

    def info(self, conn: Connection) -> IdentifyInfo:
        """Our identify message as ``conn``'s peer gets it (``observedAddr`` is where it is)."""
        host = self.host
        advertised = tuple(host.advertised_addrs())
        if self._record is None or self._record[0] != advertised:
            # Sequence numbers must grow across restarts too: use the wall clock.
            self._record = (advertised, seal_peer_record(host.key_pair, time.time_ns(), list(advertised)))
        return IdentifyInfo(
            public_key=host.key_pair.public_key,
            listen_addrs=list(advertised),
            protocols=host.protocols,
            observed_addr=conn.remote_addr,
            protocol_version=identify.PROTOCOL_VERSION,
            agent_version=self.options.agent_version,
            signed_peer_record=self._record[1],
        )

    def _message(self, conn: Connection) -> bytes:
        """Our identify message for ``conn``, length-prefixed; notes which version the peer gets."""
        body = identify.encode(self.info(conn))
        self._sent[conn] = self._epoch
        return varint.encode(len(body)) + body

    async def _handle_identify(self, stream: YamuxStream) -> None:
        await stream.send_all(self._message(self._conn_of(stream)))
        await stream.send_eof()

    def _conn_of(self, stream: YamuxStream) -> Connection:
        peer = stream.session.peer_id
        for conn in self.host.connections.get(peer, ()) if peer is not None else ():
            if conn.session is stream.session:
                return conn
        raise trio.BrokenResourceError("connection already gone")

    # -- theirs --

    async def identify(self, peer: PeerId, *, timeout: float = 10.0) -> IdentifyInfo:
        """See :meth:`Host.identify`."""
        with trio.fail_after(timeout):
            conn = await self.host.connect(peer, timeout=timeout)
            info = await self._ask(conn)
        self._store(conn, info)
        return info

    async def _ask(self, conn: Connection) -> IdentifyInfo:
        stream = await conn.open_stream([identify.PROTOCOL_ID])
        try:
            return await _read(stream)
        finally:
            await stream.aclose()

    async def _identify_connection(self, conn: Connection) -> None:
        try:
            with trio.fail_after(self._timeout):
                info = await self._ask(conn)
            self._store(conn, info)
        except PEER_FAILURES as e:
            # A connection closed meanwhile (trimmed, made room for another, the peer left) is
            # not news; a peer that answers identify wrongly is.
            level = logging.DEBUG if conn.is_closed else logging.INFO
            log.log(level, "identify of %s failed: %s", short(conn.peer_id), reason(e))
            conn.identified.set()
            return
        sent = self._sent.get(conn)
        if sent is not None and sent != self._epoch:
            # The peer asked us before a change that no push reached it with (pushes go to
            # identified peers only): push now.
            self._push_wanted.set()

    async def _handle_push(self, stream: YamuxStream) -> None:
        # A push is one message: a stream held open without one is a slot taken for nothing.
        try:
            with trio.fail_after(self._timeout):
                info = await _read(stream)
        except trio.TooSlowError:
            log.debug("identify push from %s: no message within %g s", short(stream.session.peer_id),
                      self._timeout)
            stream.reset()
            return
        self._store(self._conn_of(stream), info, push=True)

    def _store(self, conn: Connection, info: IdentifyInfo, *, push: bool = False) -> None:
        host = self.host
        info = identify.check_against(info, conn.peer_id)
        previous = conn.identify_info
        if push and previous is not None:
            # A push may carry only what changed: keep what it leaves out.
            info.public_key = info.public_key or previous.public_key
            info.listen_addrs = info.listen_addrs or previous.listen_addrs
            info.protocols = info.protocols or previous.protocols
            info.observed_addr = info.observed_addr or previous.observed_addr
            info.protocol_version = info.protocol_version or previous.protocol_version
            info.agent_version = info.agent_version or previous.agent_version
            info.signed_peer_record = info.signed_peer_record or previous.signed_peer_record
        entry = host.peerstore.info(conn.peer_id)
        if info.protocols or not push:
            entry.protocols = info.protocols
        if info.public_key is not None:
            entry.public_key = info.public_key
        entry.agent_version = info.agent_version or entry.agent_version
        entry.protocol_version = info.protocol_version or entry.protocol_version
        entry.observed_addr = info.observed_addr
        if conn.direction == "inbound" and info.observed_addr is not None:
            observed = _observable(info.observed_addr)
            if observed is not None:
                self._observed.record(conn.peer_id, observed)
        dialable = [a for a in info.listen_addrs if addrs_.is_dialable(a)]
        host.peerstore.add_addrs(conn.peer_id, [addrs_.without_peer(a) for a in dialable])
        conn.identify_info = info
        conn.identified.set()
        host.on_identify.fire(conn)

    # -- push --

    async def _push_loop(self) -> None:
        while True:
            await self._push_wanted.wait()
            # Changes in the next moment join this push (a service registering several protocols,
            # listening on several addresses); any after it start another.
            await trio.sleep(self.options.push_delay)
            self._push_wanted = trio.Event()
            targets = self._push_targets()
            if not targets:
                continue
            limiter = trio.CapacityLimiter(self.options.push_concurrency)
            async with trio.open_nursery() as nursery:
                for conn in targets:
                    nursery.start_soon(self._push, conn, limiter)

    def _push_targets(self) -> list[Connection]:
        """One connection per peer that identified, speaks push and was told an older version."""
        targets: list[Connection] = []
        host = self.host
        if host.closing:
            return targets
        for conns in host.connections.values():
            if any(self._sent.get(c) == self._epoch for c in conns):
                continue
            ready = [c for c in conns if not c.is_closed and c.identify_info is not None]
            info = ready[-1].identify_info if ready else None
            if info is not None and identify.PUSH_PROTOCOL_ID in info.protocols:
                targets.append(ready[-1])
        return targets

    async def _push(self, conn: Connection, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                with trio.fail_after(self.options.push_timeout):
                    stream = await conn.open_stream([identify.PUSH_PROTOCOL_ID])
                    try:
                        await stream.send_all(self._message(conn))
                        await stream.send_eof()
                    finally:
                        await stream.aclose()
            except PEER_FAILURES as e:
                self._sent.pop(conn, None)  # not told: a later identify of theirs tells them
                log.debug("identify push to %s failed: %s", short(conn.peer_id), reason(e))


async def _read(stream: YamuxStream) -> IdentifyInfo:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
        if len(data) > identify.MAX_MESSAGE:
            raise DecodeError(f"identify message over {identify.MAX_MESSAGE} bytes")
    return identify.decode_message(bytes(data))


def _observable(a: Multiaddr) -> Multiaddr | None:
    """A peer's report of our address, normalised (no /p2p), or None when it cannot be ours."""
    try:
        ep = addrs_.tcp_endpoint(a)
        ip = ipaddress.ip_address(ep.host)
    except (PhysarumError, ValueError):
        return None
    if ep.port == 0 or ip.is_unspecified or ip.is_multicast:
        return None
    return addrs_.without_peer(a)
