"""Transports: how a raw byte stream to or from a peer is made, below pnet, Noise and yamux.

A :class:`Transport` dials and listens on the addresses it :meth:`~Transport.handles`, and hands
every connection over as a :class:`RawConnection`: a trio stream and the two ends' multiaddrs. The
host (:class:`~physarum.overlay.host.Host`) owns what comes after: admission (limits, the handshake
pool), the upgrade (:mod:`physarum.overlay.upgrader`: pnet, multistream-select, Noise, yamux) and
the connection's life. A transport knows nothing of keys, peers or limits, as go-libp2p's
``transport.Transport`` below its ``Upgrader``.

To add one: write a class with the three methods of :class:`Transport` (see
:class:`TcpTransport`, and :class:`~physarum.overlay.websocket.WebSocketTransport` for one over
another protocol), make :func:`~physarum.overlay.addr.tcp_endpoint` accept its addresses if they
are not ``/tcp/PORT[/ws]``, and give it to the host: ``Host(transports=[TcpTransport(), Mine()])``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from physarum.errors import PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay.multiaddr import AddressError, Multiaddr


@dataclass(frozen=True)
class RawConnection:
    """A transport's connection before any upgrade: bytes both ways, and who is at each end."""

    stream: trio.abc.Stream
    remote: Multiaddr
    """The peer's address as this transport writes it (``/ip4/1.2.3.4/tcp/5678[/ws]``)."""
    local: Multiaddr | None

    @property
    def ip(self) -> str:
        """The remote IP address (what per-IP limits count), or the address text if it has none."""
        try:
            return addrs_.tcp_endpoint(self.remote).host
        except AddressError:
            return str(self.remote)


#: Serves one inbound connection; it owns the stream (closes it when done).
InboundHandler = Callable[[RawConnection], Awaitable[None]]


class Transport(Protocol):
    """Dials and listens on the multiaddrs it handles."""

    def handles(self, addr: Multiaddr) -> bool:
        """Whether ``addr`` (without ``/p2p``) is for this transport."""
        ...

    async def dial(self, addr: Multiaddr) -> RawConnection:
        """A new connection to ``addr`` (the caller bounds the time it takes).

        Raises:
            OSError: the connection failed.
            trio.BrokenResourceError: the transport's own handshake failed.
        """
        ...

    async def listen(self, addr: Multiaddr, handler: InboundHandler, nursery: trio.Nursery) -> list[Multiaddr]:
        """Bind ``addr`` and serve every inbound connection with ``handler``, each in its own task
        in ``nursery``, until the nursery is cancelled; returns the bound addresses (real ports).

        Raises:
            OSError: cannot bind.
        """
        ...


class TcpTransport:
    """Plain TCP: ``/ip4|ip6|dns*/HOST/tcp/PORT``."""

    def handles(self, addr: Multiaddr) -> bool:
        try:
            return addrs_.tcp_endpoint(addr).layers == ()
        except PhysarumError:
            return False

    async def dial(self, addr: Multiaddr) -> RawConnection:
        ep = addrs_.tcp_endpoint(addr)
        tcp = await trio.open_tcp_stream(ep.host, ep.port)
        try:
            return RawConnection(tcp, *socket_ends(tcp))
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise

    async def listen(self, addr: Multiaddr, handler: InboundHandler, nursery: trio.Nursery) -> list[Multiaddr]:
        ep = addrs_.tcp_endpoint(addr)
        listeners = await trio.open_tcp_listeners(ep.port, host=ep.host)
        bound = [addrs_.from_sockaddr(lst.socket.getsockname()) for lst in listeners]

        async def serve(tcp: trio.SocketStream) -> None:
            try:
                remote, local = socket_ends(tcp)
            except OSError:  # the peer is already gone
                await trio.aclose_forcefully(tcp)
                return
            await handler(RawConnection(tcp, remote, local))

        await nursery.start(trio.serve_listeners, serve, listeners)
        return bound


def socket_ends(tcp: trio.SocketStream, layers: tuple[str, ...] = ()) -> tuple[Multiaddr, Multiaddr]:
    """The remote and local multiaddrs of a connected TCP socket, followed by ``layers`` (for
    transports over TCP, such as WebSocket's ``("ws",)``).

    Raises:
        OSError: the socket is no longer connected.
    """
    return (
        addrs_.from_sockaddr(tcp.socket.getpeername(), layers),
        addrs_.from_sockaddr(tcp.socket.getsockname(), layers),
    )


__all__ = ["InboundHandler", "RawConnection", "TcpTransport", "Transport", "socket_ends"]
