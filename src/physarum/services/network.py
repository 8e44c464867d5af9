"""The overlay as selection and the proxy see it: a :class:`~physarum.overlay.host.Host` and a
:class:`~physarum.dht.service.KadDHT`, through their public API only."""

from __future__ import annotations

import trio

from physarum.dht.service import KadDHT
from physarum.overlay.host import Host
from physarum.overlay.identity import PeerId


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

    async def ping(self, peer: PeerId, *, timeout: float) -> float:
        """One RTT in seconds (the dial, if any, is not part of it).

        Raises:
            see :meth:`Host.ping`.
        """
        return (await self.host.ping(peer, timeout=timeout))[0]

    async def open_stream(self, peer: PeerId, protocol: str, *, timeout: float) -> trio.abc.HalfCloseableStream:
        """A new stream to ``peer`` speaking ``protocol``.

        Raises:
            see :meth:`Host.new_stream`.
        """
        return await self.host.new_stream(peer, [protocol], timeout=timeout)


__all__ = ["OverlayNetwork"]
