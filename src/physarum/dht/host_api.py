"""What the DHT uses of a host, written down once as typed ``Protocol``\\s.

A :class:`~physarum.overlay.host.Host` satisfies all of them, and so does any host that offers
these members (a fake in tests, another transport stack), so strict mypy checks every use the DHT
makes of its host against this page, and nothing else of the host's surface leaks in:

* :class:`KadHost`: dial (only through :func:`~physarum.overlay.backoff.keep_bootstrap_connected`),
  open kad streams (:class:`~physarum.dht.client.HostTransport`), ping (liveness checks), serve kad
  (:class:`KadStream`\\s to :mod:`physarum.dht.server`), and our advertised addresses.
* :class:`IdentifyingHost`: what :meth:`~physarum.dht.service.KadDHT.for_host` adds, to learn peers
  from identify (``on_identify`` and the connections already open).
* :class:`KadConnection` and :class:`KadPeerStore`: what the DHT reads of a connection and of the
  peer store.
* :class:`TagSource`: a connection manager that can be told which peers matter (optional: a host
  without ``conn_manager`` is fine).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import trio

from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr

if TYPE_CHECKING:
    from physarum.overlay.identify import IdentifyInfo


class KadPeerStore(Protocol):
    """The peer store's addresses: what we hand the host before a dial, what we read after identify."""

    def add_addrs(self, peer_id: PeerId, addrs: list[Multiaddr]) -> None: ...

    def addrs(self, peer_id: PeerId) -> list[Multiaddr]: ...


class KadSession(Protocol):
    """The muxed session under a connection: only its end is watched (bootstrap reconnection)."""

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


class KadStream(Protocol):
    """An inbound kad stream, as the server reads requests off it and answers (a yamux stream fits).

    The peer's memory budget is looked up on it by :func:`physarum.dht.framing.stream_budget`
    (``stream.memory``), and is optional.
    """

    @property
    def peer_id(self) -> PeerId | None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    def reset(self) -> None: ...


#: What the DHT registers on a host for ``/ipfs/kad/1.0.0``; the host closes the stream after it returns.
StreamHandler = Callable[[KadStream], Awaitable[None]]


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

    def set_handler(self, protocol: str, handler: StreamHandler) -> None: ...

    def advertised_addrs(self) -> list[Multiaddr]: ...


_Conn = TypeVar("_Conn", bound=KadConnection)


class IdentifyingHost(KadHost, Protocol[_Conn]):
    """:class:`KadHost` plus what :meth:`~physarum.dht.service.KadDHT.for_host` needs to learn peers
    from identify."""

    @property
    def on_identify(self) -> list[Callable[[_Conn], None]]: ...

    @property
    def connections(self) -> Mapping[PeerId, Sequence[_Conn]]: ...


@runtime_checkable
class TagSource(Protocol):
    """A connection manager (a host's ``conn_manager``) that asks ``weight(peer)`` before it trims:
    the DHT weighs the peers of its routing table, so they are trimmed last."""

    def add_tag_source(self, tag: str, weight: Callable[[PeerId], int]) -> None: ...


__all__ = [
    "IdentifyingHost",
    "KadConnection",
    "KadHost",
    "KadPeerStore",
    "KadSession",
    "KadStream",
    "StreamHandler",
    "TagSource",
]
