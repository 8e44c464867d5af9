"""An in-memory network of :class:`~physarum.dht.service.KadDHT` nodes, for tests and simulations.

Requests still go through the wire codec both ways, so what a node answers is what a real peer
would read; only sockets and the connection stack are left out. Nodes can be marked unresponsive
(their requests hang until the caller's deadline) or replaced by any object with an ``rpc``
method, such as a lying peer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from physarum.dht.messages import Message, decode_message, encode_message
from physarum.errors import DialError
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr


class Responder(Protocol):
    def rpc(self, sender: PeerId | None, request: Message) -> Message | None: ...


class MemoryNetwork:
    """Peer id -> responder; ``silent`` peers never answer, ``latency`` delays every answer."""

    def __init__(self, latency: float = 0.0, *, codec: bool = True) -> None:
        # codec=False hands message objects over as they are: for simulations of thousands of
        # nodes, where encoding would only measure the codec again and again.
        self.codec = codec
        self.nodes: dict[PeerId, Responder] = {}
        self.silent: set[PeerId] = set()
        self.latency = latency
        self.messages = 0
        self._addrs: dict[PeerId, Multiaddr] = {}

    def transport(self, me: PeerId) -> MemoryTransport:
        return MemoryTransport(self, me)

    def addr_of(self, peer: PeerId) -> Multiaddr:
        """A placeholder address, so contacts look like real ones."""
        addr = self._addrs.get(peer)
        if addr is None:
            addr = self._addrs[peer] = Multiaddr(f"/ip4/127.0.0.1/tcp/{1024 + hash(peer) % 60000}")
        return addr


class MemoryTransport:
    def __init__(self, network: MemoryNetwork, me: PeerId) -> None:
        self.network = network
        self.me = me

    async def request(self, peer: PeerId, addrs: Sequence[Multiaddr], message: Message) -> Message:
        net = self.network
        net.messages += 1
        if net.latency:
            await trio.sleep(net.latency)
        else:
            await trio.lowlevel.checkpoint()
        if peer in net.silent:
            await trio.sleep_forever()
        node = net.nodes.get(peer)
        if node is None:
            raise DialError(peer, {"memory": ConnectionRefusedError("no such node")})
        add_peer = getattr(node, "add_peer", None)
        if add_peer is not None and self.me in net.nodes:
            # What identify does on a real connection: the asker speaks kad, so it may join.
            add_peer(self.me, [net.addr_of(self.me)])
        if net.codec:
            message = decode_message(encode_message(message))
        reply = node.rpc(self.me, message)
        if reply is None:
            raise trio.BrokenResourceError(f"{peer} reset the stream")
        return decode_message(encode_message(reply)) if net.codec else reply
