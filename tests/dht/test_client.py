"""The lookup driver (physarum.dht.client.LookupRun): the async run and the synchronous run that
bench/_dht_sim.py uses ask the same peers and find the same answer, over in-memory networks."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import trio
import trio.testing
from prometheus_client import CollectorRegistry

from physarum.dht import keyspace
from physarum.dht.memory import MemoryNetwork
from physarum.dht.messages import Message, MessageType, Peer
from physarum.dht.service import KadDHT
from physarum.overlay.identity import KeyPair

from .test_service import join_all, make_network, true_closest

Ask = Callable[[Peer], Sequence[Peer] | None]


def _sync_ask(net: MemoryNetwork, asker: KadDHT, key: bytes, asked: list[Peer]) -> Ask:
    """FIND_NODE answered at once by each node's own ``rpc``, as the benchmark does; ``asked`` logs it."""

    def ask(peer: Peer) -> Sequence[Peer] | None:
        asked.append(peer)
        reply = net.nodes[peer.peer_id].rpc(asker.peer_id, Message(MessageType.FIND_NODE, key=key))
        return None if reply is None else reply.closer_peers

    return ask


async def test_the_synchronous_run_finds_what_the_async_lookup_finds(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(60, codec=False)
    await join_all(net, nodes)
    rng = random.Random(3)
    for node in rng.sample(nodes, 10):
        key = rng.randbytes(32)
        asked: list[Peer] = []
        expected = true_closest(keyspace.kad_key(key), (n.peer_id for n in nodes if n is not node))
        in_order = node.client.start_lookup(key).run_in_order(_sync_ask(net, node, key, asked))
        on_trio = await node.lookup(key)
        assert [p.peer_id for p in in_order.peers] == [p.peer_id for p in on_trio.peers] == expected
        assert in_order.stats.queries == len(asked) > 0 and in_order.stats.responses == len(asked)
        assert all(p.addrs for p in in_order.peers)


async def test_a_run_counts_as_a_lookup_and_teaches_the_table(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(30, codec=False)
    await join_all(net, nodes)
    registry = CollectorRegistry()
    kp = KeyPair(bytes([9]) * 32)
    newcomer = KadDHT(kp, net.transport(kp.peer_id), registry=registry)
    net.nodes[kp.peer_id] = newcomer
    newcomer.add_peer(nodes[0].peer_id, [net.addr_of(nodes[0].peer_id)])
    key = kp.peer_id.to_bytes()
    result = newcomer.client.start_lookup(key).run_in_order(_sync_ask(net, newcomer, key, []))
    assert registry.get_sample_value("physarum_dht_lookups_total") == 1
    # Every peer that answered joined the table, with the addresses it was named with.
    assert result.stats.responses > 1 and len(newcomer.table) >= result.stats.responses
    assert all(newcomer.table.get(p.peer_id) is not None for p in result.peers)


async def test_a_silent_peer_is_a_failure_not_an_answer(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(30, codec=False)
    await join_all(net, nodes)
    me = nodes[5]
    silent = {p.peer_id for p in me.closest_peers(keyspace.kad_key(b"x"))[:2]}

    answer = _sync_ask(net, me, b"x", [])

    def ask(peer: Peer) -> Sequence[Peer] | None:
        return None if peer.peer_id in silent else answer(peer)

    result = me.client.start_lookup(b"x").run_in_order(ask)
    assert result.stats.failures == len(silent)
    assert not silent & {p.peer_id for p in result.peers}
