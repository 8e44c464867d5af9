"""Physarum DHT nodes on real hosts for the integration and interop tests: each node is a host on
127.0.0.1 (port 0) running :meth:`KadDHT.for_host`, started and stopped on its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from physarum.dht.service import KadDHT
from physarum.dht.table import RoutingTable
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import KeyPair, PeerId
from tests.integration._util import LOOPBACK

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


@dataclass
class Node:
    host: Host
    dht: KadDHT
    scope: trio.CancelScope
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def peer_id(self) -> PeerId:
        return self.host.peer_id

    async def stop(self) -> None:
        self.scope.cancel()
        with trio.fail_after(5):
            await self.stopped.wait()


async def _run_node(
    psk: bytes,
    key_pair: KeyPair | None,
    bootstrap: Sequence[object],
    table: RoutingTable | None,
    server: bool,
    registry: CollectorRegistry | None,
    *,
    task_status: trio.TaskStatus[Node],
) -> None:
    stopped = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with open_host(key_pair, psk=psk, listen=[LOOPBACK]) as host:
                # Nobody knows our address yet, so no peer has identified us: registering the kad
                # handler now is still "before the first connection".
                dht = KadDHT.for_host(
                    host, server=server, bootstrap=bootstrap, table=table, query_timeout=5.0, registry=registry
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(dht.run)
                    task_status.started(Node(host, dht, scope, stopped))
                    await trio.sleep_forever()
    finally:
        stopped.set()


async def start_node(
    nursery: trio.Nursery,
    psk: bytes,
    *,
    key_pair: KeyPair | None = None,
    bootstrap: Sequence[object] = (),
    table: RoutingTable | None = None,
    server: bool = True,
    registry: CollectorRegistry | None = None,
) -> Node:
    """A node running in ``nursery`` until :meth:`Node.stop` (or the nursery ends); its DHT
    exports metrics on ``registry`` when given."""
    node: Node = await nursery.start(_run_node, psk, key_pair, bootstrap, table, server, registry)
    return node


