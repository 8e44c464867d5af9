"""The DHT service over in-memory networks, with trio's autojump clock.

Lookups are checked against brute force; silent and lying peers must neither stall a lookup past
its deadlines nor change its answer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY, CollectorRegistry

from physarum.dht import keyspace
from physarum.dht.memory import MemoryNetwork
from physarum.dht.messages import ConnectionType, Message, MessageType, Peer, Record
from physarum.dht.metrics import QUERY_RESULTS
from physarum.dht.records import (
    ContactRecord,
    RecordTooLargeError,
    encode_record_set,
    new_expiry,
    record_key,
    sign_record,
)
from physarum.dht.service import KadDHT, NotJoinedError, PeerNotFoundError
from physarum.dht.table import Added, BucketFull, Contact, RoutingTable
from physarum.errors import PhysarumError
from physarum.overlay.addr import AddressError
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make_network(n: int, *, codec: bool = True, seed: int = 1) -> tuple[MemoryNetwork, list[KadDHT]]:
    rng = random.Random(seed)
    net = MemoryNetwork(codec=codec)
    nodes = []
    for _ in range(n):
        kp = KeyPair(rng.randbytes(32))
        node = KadDHT(kp, net.transport(kp.peer_id), query_timeout=2.0)
        node.own_addrs = lambda p=kp.peer_id: [net.addr_of(p)]  # type: ignore[misc]
        net.nodes[kp.peer_id] = node
        nodes.append(node)
    return net, nodes


async def join_all(net: MemoryNetwork, nodes: list[KadDHT]) -> None:
    boot = nodes[0]
    for node in nodes[1:]:
        node.add_peer(boot.peer_id, [net.addr_of(boot.peer_id)])
        await node.lookup(node.peer_id.to_bytes())


def true_closest(target: int, peers: Iterator[PeerId] | list[PeerId], k: int = 20) -> list[PeerId]:
    return sorted(peers, key=lambda p: keyspace.peer_key(p) ^ target)[:k]


async def test_200_nodes_exact_lookups_and_every_contact_found(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(200, codec=False)
    await join_all(net, nodes)
    rng = random.Random(7)
    ids = [n.peer_id for n in nodes]
    for node in rng.sample(nodes, 40):
        target_key = rng.randbytes(32)
        result = await node.lookup(target_key)
        expected = true_closest(keyspace.kad_key(target_key), [p for p in ids if p != node.peer_id])
        assert [p.peer_id for p in result.peers] == expected
        assert all(p.addrs for p in result.peers)

    for node in nodes:
        stored = await node.publish_contact(str(node.peer_id), data={"role": "worker"})
        assert stored == 20
    for seeker in nodes:
        for target in nodes:
            if target is seeker:
                continue
            records = await seeker.find_contact(str(target.peer_id))
            assert records and records[0].publisher == target.peer_id, (seeker.peer_id, target.peer_id)
            assert records[0].data == {"role": "worker"}


async def test_lookup_through_the_wire_codec(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(40, codec=True)
    await join_all(net, nodes)
    target = nodes[-1]
    found = await nodes[5].find_peer(target.peer_id)
    assert found.peer_id == target.peer_id and found.addrs
    await nodes[3].publish_contact("receptionist", data={"actor": "receptionist", "port": 7})
    records = await nodes[30].find_contact("receptionist")
    assert [r.publisher for r in records] == [nodes[3].peer_id]
    assert records[0].data["port"] == 7


async def test_publish_takes_endpoints_as_text_and_checks_them_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net, nodes = make_network(10)
    await join_all(net, nodes)
    endpoints = ["/ip4/127.0.0.1/tcp/7000", Multiaddr("/dns4/svc.example/tcp/443")]
    assert await nodes[3].publish_contact("receptionist", endpoints, {"port": 7000}) > 0
    (record,) = await nodes[7].find_contact("receptionist")
    assert record.endpoints == (Multiaddr("/ip4/127.0.0.1/tcp/7000"), Multiaddr("/dns4/svc.example/tcp/443"))
    with pytest.raises(AddressError):
        await nodes[3].publish_contact("other", ["/ip4/300.0.0.1/tcp/1"])
    assert nodes[3].records.get_from("other", nodes[3].peer_id, nodes[3].wall_clock()) is None


async def test_silent_peers_cost_deadlines_not_answers(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(120, codec=False, seed=3)
    await join_all(net, nodes)
    rng = random.Random(3)
    silent = set(rng.sample([n.peer_id for n in nodes[1:]], 25))
    net.silent |= silent
    alive = [n.peer_id for n in nodes if n.peer_id not in silent]
    for node in rng.sample([n for n in nodes if n.peer_id not in silent], 10):
        key = rng.randbytes(32)
        start = trio.current_time()
        result = await node.lookup(key)
        # Each round waits at most one query_timeout; a stalled lookup would take far longer.
        assert trio.current_time() - start < 40 * node.query_timeout
        got = [p.peer_id for p in result.peers]
        assert not silent & set(got)
        assert got == true_closest(keyspace.kad_key(key), [p for p in alive if p != node.peer_id])


class Liar:
    """Answers every request with made-up peers: many, far, and unreachable."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.rng = random.Random(11)

    def rpc(self, sender: PeerId | None, request: Message) -> Message | None:
        fake = [
            Peer(KeyPair(self.rng.randbytes(32)).peer_id, (), ConnectionType.CAN_CONNECT) for _ in range(self.count)
        ]
        return Message(request.type, key=request.key, closer_peers=tuple(fake))


async def test_lying_peers_do_not_change_or_stall_lookups(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(80, codec=False, seed=5)
    await join_all(net, nodes)
    liars = nodes[40:50]
    for liar in liars:
        net.nodes[liar.peer_id] = Liar(count=500)
    honest = [n.peer_id for n in nodes if n not in liars]
    rng = random.Random(5)
    for node in nodes[1:11]:
        key = rng.randbytes(32)
        with trio.fail_after(120):
            result = await node.lookup(key)
        got = [p.peer_id for p in result.peers]
        truth = true_closest(keyspace.kad_key(key), [p for p in honest if p != node.peer_id])
        # Liars answer, so they may rank among the closest; the honest closest must all be there.
        assert set(truth[:10]) <= set(got)
        assert result.stats.ignored_peers > 0  # the flood was cut at k per answer


async def test_missing_peer_is_reported(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(30, codec=False)
    await join_all(net, nodes)
    with pytest.raises(PeerNotFoundError):
        await nodes[1].find_peer(KeyPair.generate().peer_id)


async def test_bad_records_are_refused_and_not_forwarded(autojump_clock: trio.testing.MockClock) -> None:
    _, nodes = make_network(3, codec=True)
    a, b, c = nodes
    wall = a.wall_clock()
    good = sign_record(a.key_pair, ContactRecord("svc", (), {"v": 1}, seq=5, expires=new_expiry(wall)))
    put = Message(MessageType.PUT_VALUE, key=record_key("svc"), record=Record(record_key("svc"), encode_record_set([good])))
    assert b.rpc(a.peer_id, put) == put
    # A flipped byte in the signature.
    bad = good[:-1] + bytes([good[-1] ^ 1])
    tampered = Message(
        MessageType.PUT_VALUE, key=record_key("svc"), record=Record(record_key("svc"), encode_record_set([bad]))
    )
    assert c.rpc(a.peer_id, tampered) is None
    assert c.records.get("svc", wall) == []
    # An older seq from the same publisher is stale.
    old = sign_record(a.key_pair, ContactRecord("svc", (), {"v": 0}, seq=4, expires=new_expiry(wall)))
    stale = Message(
        MessageType.PUT_VALUE, key=record_key("svc"), record=Record(record_key("svc"), encode_record_set([old]))
    )
    assert b.rpc(a.peer_id, stale) is None
    assert b.records.get("svc", wall) == [good]
    # A record filed under another id's key.
    misfiled = Message(
        MessageType.PUT_VALUE, key=record_key("other"), record=Record(record_key("other"), encode_record_set([good]))
    )
    assert c.rpc(a.peer_id, misfiled) is None
    assert c.records.get("svc", wall) == [] and c.records.get("other", wall) == []
    # Oversized data cannot even be signed.
    with pytest.raises(RecordTooLargeError):
        sign_record(a.key_pair, ContactRecord("svc", (), {"x": "y" * 20000}, seq=6, expires=new_expiry(wall)))
    # GET_VALUE forwards only what was stored.
    reply = b.rpc(c.peer_id, Message(MessageType.GET_VALUE, key=record_key("svc")))
    assert reply is not None and reply.record is not None


async def test_records_republish_and_expire(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(25, codec=False)
    wall = [1_800_000_000.0]
    for n in nodes:
        n.wall_clock = lambda: wall[0]  # type: ignore[method-assign]
        n.republish_interval = 600.0
    await join_all(net, nodes)
    publisher = nodes[4]
    await publisher.publish_contact("cache", data={"n": 1}, ttl=1800)
    holders = [n for n in nodes if n.records.get("cache", wall[0])]
    assert len(holders) >= 20
    # The holders forget it (restart): the publisher's republish puts it back.
    for h in holders:
        if h is not publisher:
            h.records.remove("cache")
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        await trio.sleep(700)
        wall[0] += 700
        await trio.sleep(700)
        nursery.cancel_scope.cancel()
    assert sum(1 for n in nodes if n is not publisher and n.records.get("cache", wall[0])) >= 15
    # After its expiry, nobody serves it.
    wall[0] += 3600
    assert await nodes[9].find_contact("cache") == []


async def settled(node: KadDHT) -> None:
    """Wait (under a deadline) until no liveness check is running."""
    with trio.fail_after(30):
        await trio.sleep(0)
        while node.routing.checking:
            await trio.sleep(0.01)


async def test_full_bucket_pings_oldest_and_keeps_it_if_alive(autojump_clock: trio.testing.MockClock) -> None:
    _, nodes = make_network(1)
    me = nodes[0]
    answers: dict[PeerId, bool] = {}

    async def alive(peer: PeerId) -> bool:
        return answers[peer]

    me.liveness_check = alive
    me.table = type(me.table)(me.peer_id, k=2, diversity=None)
    # Fill one bucket: peers sharing a prefix length with us.
    rng = random.Random(99)  # not make_network's seed: that would make our own id first
    same_bucket: list[PeerId] = []
    want = None
    while len(same_bucket) < 4:
        pid = KeyPair(rng.randbytes(32)).peer_id
        index = keyspace.bucket_index(me.table.self_key, keyspace.peer_key(pid))
        if want is None or index == want:
            want = index
            same_bucket.append(pid)
    first, second, third, fourth = same_bucket
    async with trio.open_nursery() as nursery:
        await nursery.start(me.run)
        assert isinstance(me.table.add(Contact(first), 0.0), Added)
        me.add_peer(second, [])
        answers[first] = True
        me.add_peer(third, [])  # bucket full: first is pinged, answers, stays
        await settled(me)
        assert first in me.table and third not in me.table
        answers[second] = False
        answers[first] = False
        result = me.table.add(Contact(fourth), trio.current_time())
        assert isinstance(result, BucketFull)
        me.add_peer(fourth, [])
        await settled(me)
        assert fourth in me.table
        nursery.cancel_scope.cancel()


async def test_bootstrap_joins_and_retries_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    """Without a host, a bootstrap peer counts as connected while it answers FIND_NODE; an absent
    one is retried after 1, 2, 4 ... s (the binaries' backoff, shared code)."""
    net, nodes = make_network(20)
    boot = nodes[0]
    del net.nodes[boot.peer_id]  # not up yet
    await join_all(net, nodes[1:])
    kp = KeyPair(random.Random(42).randbytes(32))
    addr = Multiaddr(f"{net.addr_of(boot.peer_id)}/p2p/{boot.peer_id}")
    newcomer = KadDHT(kp, net.transport(kp.peer_id), query_timeout=2.0, bootstrap=[addr])
    newcomer.own_addrs = lambda: [net.addr_of(kp.peer_id)]  # type: ignore[method-assign]
    net.nodes[kp.peer_id] = newcomer
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(newcomer.run)
        await trio.sleep(5)  # attempts at 0, 1, 3; the next at 7
        assert not newcomer.bootstrapped.is_set()
        net.nodes[boot.peer_id] = boot
        for node in nodes[1:]:
            boot.add_peer(node.peer_id, [net.addr_of(node.peer_id)])
        await newcomer.bootstrapped.wait()
        assert 7 <= trio.current_time() - start < 8
        assert len(newcomer.table) == 20
        nursery.cancel_scope.cancel()


async def test_saved_table_rejoins_without_bootstrap(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(25)
    await join_all(net, nodes)
    node = nodes[7]
    saved = node.table.to_json(now=trio.current_time(), wall_now=1_800_000_000.0)
    again = KadDHT(
        node.key_pair,
        net.transport(node.peer_id),
        table=RoutingTable.from_json(
            saved, now=trio.current_time(), wall_now=1_800_000_060.0, self_id=node.peer_id
        ),
    )
    net.nodes[node.peer_id] = again
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        with trio.fail_after(30):
            await again.bootstrapped.wait()
        nursery.cancel_scope.cancel()
    with pytest.raises(ValueError, match="belongs to"):
        KadDHT(nodes[1].key_pair, net.transport(nodes[1].peer_id), table=node.table)


# ---- bootstrap addresses: text or Multiaddr, checked up front ----


async def test_bootstrap_addresses_may_be_text_and_are_checked_up_front(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net, (boot, other) = make_network(2)
    kp = KeyPair(random.Random(42).randbytes(32))
    text = f"{net.addr_of(boot.peer_id)}/p2p/{boot.peer_id}"
    own = f"/ip4/127.0.0.1/tcp/9/p2p/{kp.peer_id}"
    other_addr = Multiaddr(f"/ip4/10.0.0.1/tcp/4001/p2p/{other.peer_id}")
    node = KadDHT(kp, net.transport(kp.peer_id), bootstrap=[text, other_addr, own])
    assert [str(a) for a in node.bootstrap_addrs] == [text, f"/ip4/10.0.0.1/tcp/4001/p2p/{other.peer_id}"]
    assert all(isinstance(a, Multiaddr) for a in node.bootstrap_addrs)
    bad = [
        ("/ip4/127.0.0.1/tcp/4001", "/p2p/"),  # no peer id: could not check who answers
        ("not a multiaddr", None),
        ("/ip4/300.0.0.1/tcp/4001/p2p/" + str(boot.peer_id), None),
        (f"/ip4/127.0.0.1/udp/4001/p2p/{boot.peer_id}", None),  # physarum dials TCP only
    ]
    for addr, in_reason in bad:
        with pytest.raises(AddressError) as info:
            KadDHT(kp, net.transport(kp.peer_id), bootstrap=[text, addr])
        assert isinstance(info.value, PhysarumError) and info.value.reason
        if in_reason is not None:
            assert in_reason in info.value.reason


# ---- NotJoinedError: nobody to ask is not "not found" ----


async def test_a_lone_node_raises_not_joined_instead_of_finding_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _, (node,) = make_network(1)
    key = b"/physarum/service/x"

    async def every_lookup() -> None:
        calls = [
            node.lookup(key),
            node.find_peer(KeyPair(b"\x01" * 32).peer_id),
            node.find_contact("receptionist"),
            node.find_providers(key),
            node.publish_contact("receptionist", data={"v": 1}),
            node.provide(key),
        ]
        for call in calls:
            start = trio.current_time()
            with pytest.raises(NotJoinedError) as info:
                await call
            assert not info.value.joining and info.value.reason
            assert trio.current_time() == start  # at once: there is nothing to wait for

    await every_lookup()  # not running
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)  # running, but nothing to join through
        assert node.bootstrapped.is_set()
        await every_lookup()
        nursery.cancel_scope.cancel()
    # publish_contact and provide checked before storing anything.
    assert node.records.get("receptionist", node.wall_clock()) == []
    assert node.providers.get(key, trio.current_time()) == []


async def test_local_results_still_count_without_anyone_to_ask(autojump_clock: trio.testing.MockClock) -> None:
    net, (node, other) = make_network(2)
    del net.nodes[other.peer_id]
    wall = node.wall_clock()
    # A record another node stored here, and a provider that announced itself here.
    envelope = sign_record(other.key_pair, ContactRecord("svc", (), {"v": 1}, seq=1, expires=new_expiry(wall)))
    key = record_key("svc")
    put = Message(MessageType.PUT_VALUE, key=key, record=Record(key, encode_record_set([envelope])))
    assert node.rpc(other.peer_id, put) == put
    me = Peer(other.peer_id, (net.addr_of(other.peer_id),), ConnectionType.CONNECTED)
    node.rpc(other.peer_id, Message(MessageType.ADD_PROVIDER, key=b"svc", provider_peers=(me,)))
    assert len(node.table) == 0
    assert [r.publisher for r in await node.find_contact("svc")] == [other.peer_id]
    assert [p.peer_id for p in await node.find_providers(b"svc")] == [other.peer_id]
    # Our own id needs nobody either.
    assert (await node.find_peer(node.peer_id)).addrs == (net.addr_of(node.peer_id),)
    # ... and with peers that do not answer, the local answer stands too.
    node.add_peer(other.peer_id, [net.addr_of(other.peer_id)])
    net.nodes[other.peer_id] = other
    net.silent.add(other.peer_id)
    assert [r.publisher for r in await node.find_contact("svc")] == [other.peer_id]
    with pytest.raises(NotJoinedError, match="answered"):
        await node.find_contact("nothing-here")


async def test_peers_that_never_answer_raise_not_joined(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(6)
    await join_all(net, nodes)
    me = nodes[1]
    net.silent |= {n.peer_id for n in nodes if n is not me}
    start = trio.current_time()
    with pytest.raises(NotJoinedError) as info:
        await me.lookup(b"anything")
    assert not info.value.joining and "answered" in info.value.reason
    assert trio.current_time() - start <= 2 * me.query_timeout
    # Publishing still works locally and says that nobody stored it.
    assert await me.publish_contact("svc", data={"v": 1}) == 0
    assert me.records.get("svc", me.wall_clock())


async def test_lookups_wait_for_a_join_in_progress(autojump_clock: trio.testing.MockClock) -> None:
    """While a node with bootstrap peers is joining, lookups wait for the join (within their
    timeout) instead of failing; without a timeout they wait until it joins."""
    net, nodes = make_network(20)
    boot = nodes[0]
    del net.nodes[boot.peer_id]  # not up yet
    await join_all(net, nodes[1:])
    await nodes[5].publish_contact("receptionist", data={"port": 7})
    kp = KeyPair(random.Random(42).randbytes(32))
    newcomer = KadDHT(
        kp,
        net.transport(kp.peer_id),
        query_timeout=2.0,
        bootstrap=[f"{net.addr_of(boot.peer_id)}/p2p/{boot.peer_id}"],
    )
    newcomer.own_addrs = lambda: [net.addr_of(kp.peer_id)]  # type: ignore[method-assign]
    net.nodes[kp.peer_id] = newcomer
    async with trio.open_nursery() as nursery:
        await nursery.start(newcomer.run)
        start = trio.current_time()
        with pytest.raises(NotJoinedError) as info:
            await newcomer.find_contact("receptionist", timeout=3)
        assert info.value.joining and "bootstrap" in info.value.reason
        assert trio.current_time() - start == pytest.approx(3)
        with pytest.raises(NotJoinedError):
            await newcomer.publish_contact("mine", data={}, timeout=1)
        assert newcomer.records.get("mine", newcomer.wall_clock()) == []

        found: list[object] = []

        async def find_without_timeout() -> None:
            found.extend(await newcomer.find_contact("receptionist"))

        nursery.start_soon(find_without_timeout)
        await trio.sleep(10)
        assert not found  # still waiting, not "not found"
        net.nodes[boot.peer_id] = boot
        for node in nodes[1:]:
            boot.add_peer(node.peer_id, [net.addr_of(node.peer_id)])
        with trio.fail_after(600):
            await newcomer.bootstrapped.wait()
            while not found:
                await trio.sleep(0.1)
        assert [r.publisher for r in found] == [nodes[5].peer_id]  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_a_saved_table_whose_peers_are_gone_raises_not_joined(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(8)
    await join_all(net, nodes)
    node = nodes[3]
    table = RoutingTable.from_json(
        node.table.to_json(now=trio.current_time(), wall_now=0.0), now=trio.current_time(), self_id=node.peer_id
    )
    for n in nodes:
        if n is not node:
            del net.nodes[n.peer_id]  # every saved contact is gone: dials fail
    again = KadDHT(node.key_pair, net.transport(node.peer_id), table=table, query_timeout=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        with pytest.raises(NotJoinedError):
            await again.lookup(b"x", timeout=60)
        assert len(again.table) == 0  # the dead contacts left the table
        with pytest.raises(NotJoinedError) as info:
            await again.lookup(b"x")  # no bootstrap peer, nothing left: at once, no timeout needed
        assert not info.value.joining
        nursery.cancel_scope.cancel()


# ---- metrics on an injected registry ----


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_metrics_on_the_injected_registry(autojump_clock: trio.testing.MockClock) -> None:
    net, nodes = make_network(12)
    registry = CollectorRegistry()
    kp = KeyPair(random.Random(77).randbytes(32))
    node = KadDHT(kp, net.transport(kp.peer_id), registry=registry)
    node.own_addrs = lambda: [net.addr_of(kp.peer_id)]  # type: ignore[method-assign]
    net.nodes[kp.peer_id] = node
    assert sample(registry, "physarum_routing_table_peers") == 0
    assert sample(registry, "physarum_dht_lookups_total") == 0
    assert sample(registry, "physarum_dht_requests_total", type="find_node") == 0
    await join_all(net, nodes)
    node.add_peer(nodes[0].peer_id, [net.addr_of(nodes[0].peer_id)])
    assert sample(registry, "physarum_routing_table_peers") == 1
    await node.lookup(node.peer_id.to_bytes())
    assert sample(registry, "physarum_routing_table_peers") == len(node.table) == 12
    assert sample(registry, "physarum_dht_lookups_total") == 1
    assert sample(registry, "physarum_dht_lookup_duration_seconds_count") == 1
    # Every FIND_NODE it sent was answered: ok, and nothing else.
    asked = sample(registry, "physarum_dht_queries_total", type="find_node", result="ok") or 0
    assert asked >= 11
    failed = sum(sample(registry, "physarum_dht_queries_total", type="find_node", result=r) or 0 for r in QUERY_RESULTS[1:])
    assert failed == 0
    served = sample(registry, "physarum_dht_requests_total", type="find_node") or 0
    await nodes[4].lookup(node.peer_id.to_bytes())
    assert (sample(registry, "physarum_dht_requests_total", type="find_node") or 0) > served
    await nodes[4].find_contact("x")
    assert (sample(registry, "physarum_dht_requests_total", type="get_value") or 0) >= 1
    # A peer that cannot be dialed leaves the table, and the gauge follows.
    gone = nodes[7].peer_id
    del net.nodes[gone]
    await node.lookup(gone.to_bytes())
    assert gone not in node.table
    assert sample(registry, "physarum_routing_table_peers") == len(node.table) == 11
    failed = sum(sample(registry, "physarum_dht_queries_total", type="find_node", result=r) or 0 for r in QUERY_RESULTS[1:])
    assert failed >= 1  # the query to the peer that is gone
    assert sample(registry, "physarum_dht_lookup_duration_seconds_count") == 2
    # Only the injected registry holds them.
    assert REGISTRY.get_sample_value("physarum_routing_table_peers") is None
