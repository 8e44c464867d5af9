"""The WebSocket transport: libp2p over ``/ip4|ip6|dns*/HOST/tcp/PORT/ws``.

What it is. A plain-TCP connection upgraded to a WebSocket (RFC 6455) by an HTTP/1.1 ``GET``; from
then on each *binary message* carries the next bytes of the connection's byte stream, and message
boundaries mean nothing. That is libp2p's WebSocket transport as js-libp2p
(``@libp2p/websockets``), go-libp2p and rust-libp2p speak it: the dialer asks for path ``/``, no
subprotocol and no extension; pnet, Noise and yamux then run over the stream exactly as over TCP
(the host's upgrader is the same). :class:`~physarum.overlay.wsstream.WebSocketStream` is that byte stream, a
``trio.abc.Stream`` over the TCP stream; :class:`WebSocketTransport` dials and listens.

Built on wsproto (the sans-IO WebSocket state machine under trio-websocket), not on trio-websocket
itself: trio-websocket runs a reader task per connection in a nursery the caller provides, which
:meth:`Transport.dial <physarum.overlay.transport.Transport.dial>` has none of (the connection
outlives the call and its task), and it assembles whole messages into a queue, which a byte stream
has no use for. Here the task that calls ``receive_some`` drives the state machine, as every other
physarum layer does, and message payload goes straight into the byte stream as it arrives.

Limits and defaults (:class:`WebSocketOptions`):

- Memory: bytes are read from TCP only when everything received before was handed out, at most
  ``receive_size`` (64 KiB) at a time; a partly received message is never buffered whole. So a
  connection holds at most about ``receive_size`` of received data, whatever the peer sends.
  The HTTP upgrade request and response are capped by h11 at 16 KiB.
- ``max_message_size`` (1 MiB): a longer message is refused (close code 1009, Message Too Big),
  as trio-websocket and rust-libp2p refuse theirs. libp2p implementations write a message per
  write of the layers above (Noise frames are at most 64 KiB), so honest peers stay far below.
- ``send_message_size`` (256 KiB): ``send_all`` splits larger writes into messages of at most this.
- ``handshake_timeout`` (10 s): an inbound connection must complete the HTTP upgrade in this
  time or is dropped; at most ``max_pending_upgrades`` (128) upgrades run at once per listener,
  and when that many are pending the oldest is dropped for a newcomer (honest upgrades take one
  round trip, so the oldest is the likeliest to be stalled). The upgrade happens before the
  host's own admission (its handshake pool and per-IP limits), which sees the connection only
  after it; that is why it is cheap and bounded here. Outbound, the caller bounds the dial.
- ``close_timeout`` (1 s): how long ``aclose`` (and the answer to a peer's Close) may wait to send
  the Close frame before the TCP connection is closed anyway.

Behaviour on the wire. A Close frame with code 1000, 1001 or none is a clean end of stream
(``receive_some`` returns ``b""``); any other code, a TCP connection lost without a Close, or a
broken frame is an abrupt one (``trio.BrokenResourceError``). A text message is a protocol error:
libp2p sends binary only, so the connection is closed (code 1003). Pings are answered.
The listener accepts any path and any ``Host`` header (libp2p dialers use ``/``); a request that
is not a WebSocket upgrade gets HTTP 400 and is closed, logged at DEBUG in one line.

Out of scope: ``/wss`` and ``/tls/ws`` (TLS; :meth:`WebSocketTransport.handles` says no),
``/http-path``, proxies, permessage-deflate (never offered or accepted: compression would let a
peer make us inflate without bound), and WebSocket half-close (a Close ends both directions, so
:class:`~physarum.overlay.wsstream.WebSocketStream` is a ``trio.abc.Stream``, not half-closeable).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from physarum.errors import ConfigError, PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.transport import InboundHandler, RawConnection, socket_ends

if TYPE_CHECKING:
    from physarum.overlay.wsstream import WebSocketStream

__all__ = [
    "DEFAULT_WEBSOCKET_OPTIONS",
    "LAYERS",
    "WebSocketOptions",
    "WebSocketTransport",
]

log = logging.getLogger(__name__)

LAYERS = ("ws",)
"""What :func:`~physarum.overlay.addr.tcp_endpoint` reports above TCP for this transport."""


@dataclass(frozen=True)
class WebSocketOptions:
    """Limits and timeouts of WebSocket connections (see the module docstring for why).

    Attributes:
        handshake_timeout: seconds an inbound connection has to complete the HTTP upgrade.
        max_pending_upgrades: inbound upgrades in progress at once per listener; a newcomer
            beyond it drops the oldest.
        max_message_size: longest message accepted, in bytes (close code 1009 beyond).
        send_message_size: longest message sent; ``send_all`` splits larger writes.
        receive_size: bytes read from TCP at a time, which bounds the received bytes held.
        close_timeout: seconds ``aclose`` may spend sending the Close frame.

    Raises:
        ConfigError: a size below 1, or a timeout not a positive number of seconds.
    """

    handshake_timeout: float = 10.0
    max_pending_upgrades: int = 128
    max_message_size: int = 1024 * 1024
    send_message_size: int = 256 * 1024
    receive_size: int = 64 * 1024
    close_timeout: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_pending_upgrades", "max_message_size", "send_message_size", "receive_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("handshake_timeout", "close_timeout"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} is a number of seconds > 0")


#: The options a :class:`WebSocketTransport` gets unless told otherwise.
DEFAULT_WEBSOCKET_OPTIONS = WebSocketOptions()


# -- the transport -------------------------------------------------------------------------------


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Upgrade:
    """An inbound upgrade in progress, which a full pool may drop."""

    scope: trio.CancelScope
    evicted: bool = False


class WebSocketTransport:
    """Plain WebSocket over TCP: ``/ip4|ip6|dns*/HOST/tcp/PORT/ws`` (not ``/wss``)."""

    def __init__(self, options: WebSocketOptions = DEFAULT_WEBSOCKET_OPTIONS) -> None:
        self.options = options

    def handles(self, addr: Multiaddr) -> bool:
        """Whether ``addr`` is ``/ip4|ip6|dns*/HOST/tcp/PORT/ws`` (``/p2p/ID`` allowed after it)."""
        try:
            return addrs_.tcp_endpoint(addr).layers == LAYERS
        except PhysarumError:
            return False

    async def dial(self, addr: Multiaddr) -> RawConnection:
        """A WebSocket to ``addr`` (path ``/``); the caller bounds the time it takes.

        Raises:
            AddressError: ``addr`` is not a ``/tcp/PORT/ws`` address.
            OSError: the TCP connection failed.
            trio.BrokenResourceError: the HTTP upgrade failed.
        """
        ep = addrs_.tcp_endpoint(addr)
        if ep.layers != LAYERS:
            raise addrs_.AddressError(addr, "not a /tcp/PORT/ws address")
        from physarum.overlay.wsstream import client_handshake

        tcp = await trio.open_tcp_stream(ep.host, ep.port)
        try:
            remote, local = socket_ends(tcp, LAYERS)
            stream = await client_handshake(tcp, _host_header(ep.host, ep.port), options=self.options)
            return RawConnection(stream, remote, local)
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise

    async def listen(self, addr: Multiaddr, handler: InboundHandler, nursery: trio.Nursery) -> list[Multiaddr]:
        """Bind ``addr`` and hand every upgraded inbound WebSocket to ``handler``.

        Raises:
            AddressError: ``addr`` is not a ``/tcp/PORT/ws`` address.
            OSError: cannot bind.
        """
        ep = addrs_.tcp_endpoint(addr)
        if ep.layers != LAYERS:
            raise addrs_.AddressError(addr, "not a /tcp/PORT/ws address")
        from physarum.overlay.wsstream import server_handshake

        listeners = await trio.open_tcp_listeners(ep.port, host=ep.host)
        bound = [addrs_.from_sockaddr(lst.socket.getsockname(), LAYERS) for lst in listeners]
        options = self.options
        # Insertion order is start order: the first entry is the oldest upgrade.
        pending: dict[int, _Upgrade] = {}

        async def serve(tcp: trio.SocketStream) -> None:
            try:
                remote, local = socket_ends(tcp, LAYERS)
            except OSError:  # the peer is already gone
                await trio.aclose_forcefully(tcp)
                return
            if len(pending) >= options.max_pending_upgrades:
                oldest = pending.pop(next(iter(pending)))
                oldest.evicted = True
                oldest.scope.cancel()
            upgrade = _Upgrade(trio.CancelScope(deadline=trio.current_time() + options.handshake_timeout))
            pending[id(upgrade)] = upgrade
            stream: WebSocketStream | None = None
            try:
                with upgrade.scope:
                    stream = await server_handshake(tcp, options=options)
            except trio.BrokenResourceError as e:
                log.debug("WebSocket upgrade from %s failed: %s", _where(remote), e)
            except trio.ClosedResourceError:
                pass
            finally:
                pending.pop(id(upgrade), None)
            if stream is None:
                if upgrade.scope.cancelled_caught:
                    why = "too many upgrades in progress" if upgrade.evicted else "upgrade timeout"
                    log.debug("WebSocket upgrade from %s dropped: %s", _where(remote), why)
                await trio.aclose_forcefully(tcp)
                return
            await handler(RawConnection(stream, remote, local))

        await nursery.start(trio.serve_listeners, serve, listeners)
        return bound


def _where(addr: Multiaddr) -> str:
    try:
        ep = addrs_.tcp_endpoint(addr)
    except PhysarumError:
        return str(addr)
    return _host_header(ep.host, ep.port)
