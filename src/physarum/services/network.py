"""The overlay as selection and the proxy see it: a :class:`~physarum.overlay.host.Host` and a
:class:`~physarum.dht.service.KadDHT`, through their public API only."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from physarum.dht.service import KadDHT
from physarum.overlay.host import Host
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr


class OverlayNetwork:
    """:class:`~physarum.services.selection.ServiceNetwork` and
    :class:`~physarum.services.proxy.StreamOpener` on ``host`` and ``dht``."""

    def __init__(self, host: Host, dht: KadDHT) -> None:
        self.host = host
        self.dht = dht

    async def find_instances(self, key: bytes, *, timeout: float) -> list[PeerId]:
        """Providers of ``key`` other than us; their addresses go to the peer store so they can be
        dialled by id.

        Raises:
            NotJoinedError, trio.TooSlowError: see :meth:`KadDHT.find_providers`.
        """
        found = await self.dht.find_providers(key, timeout=timeout)
        peers = []
        for p in found:
            if p.peer_id == self.host.peer_id:
                continue
            if p.addrs:
                self.host.peerstore.add_addrs(p.peer_id, p.addrs)
            peers.append(p.peer_id)
        return peers

    def add_addrs(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """Where ``peer`` can be dialled (an allocator's answer)."""
        self.host.peerstore.add_addrs(peer, list(addrs))

    async def ping(self, peer: PeerId, *, timeout: float) -> float:
        """The lower of two RTTs on one stream, in seconds (the dial, if any, is not part of it).
        Two, because the first echo on a fresh connection often waits behind identify's traffic
        (6 ms against 0.3 ms seen on loopback): one ping would make a new instance look far.

        Raises:
            see :meth:`Host.ping`.
        """
        return min(await self.host.ping(peer, count=2, timeout=timeout))

    async def open_stream(self, peer: PeerId, protocol: str, *, timeout: float) -> trio.abc.HalfCloseableStream:
        """A new stream to ``peer`` proposing ``protocol`` lazily (:meth:`Host.new_lazy_stream`):
        the proxy, the registry and the allocator each send a request first, so the negotiation's
        round trip is saved; a refusal surfaces as NegotiationError on the first receive.

        Raises:
            see :meth:`Host.new_stream`.
        """
        return await self.host.new_lazy_stream(peer, protocol, timeout=timeout)


__all__ = ["OverlayNetwork"]
