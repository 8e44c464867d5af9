"""The peer store: per-field caps, LRU eviction by peers and by estimated bytes, real memory."""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest

from physarum.overlay import identify, varint
from physarum.overlay.identify import IdentifyLimits
from physarum.overlay.identity import KeyPair, PeerId, PublicKey
from physarum.overlay.multiaddr import AddressError, Multiaddr
from physarum.overlay.peerstore import ENTRY_BASE_SIZE, MAX_ADDRS_PER_PEER, PeerInfo, PeerStore


def _peer() -> PeerId:
    return PeerId(bytes([0, 36, 8, 1, 18, 32]) + os.urandom(32))


def _addr(i: int) -> Multiaddr:
    return Multiaddr(f"/ip4/10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/tcp/4001")


def _big_addr(i: int) -> Multiaddr:
    """256 bytes and 16 components: the largest address the default limits keep."""
    name = f"{i:08d}".encode().ljust(208, b"a")
    return Multiaddr(bytes([0x36]) + varint.encode(len(name)) + name + bytes([6, 0x0F, 0xA1]) * 15)


def _fill_worst(entry: PeerInfo, seed: int) -> None:
    entry.addrs = [_big_addr(seed * 100 + j) for j in range(40)]
    entry.protocols = [f"/{seed}/{j}/".ljust(256, "p") for j in range(200)]
    entry.agent_version = "\U0001f600" * 300
    entry.protocol_version = "\U0001f600" * 300
    entry.public_key = PublicKey(0, os.urandom(2048))
    entry.observed_addr = _big_addr(seed * 100 + 99)


def test_fields_are_cut_as_they_are_set() -> None:
    store = PeerStore()
    entry = store.info(_peer())
    entry.protocols = [f"/p/{i}" for i in range(1000)] + ["/x" * 200]
    assert entry.protocols == [f"/p/{i}" for i in range(128)]
    entry.addrs = [_addr(i) for i in range(1000)]
    assert entry.addrs == [_addr(i) for i in range(MAX_ADDRS_PER_PEER)] and MAX_ADDRS_PER_PEER == 32
    entry.agent_version = "a" * 10_000
    assert entry.agent_version == "a" * 256
    entry.protocol_version = None
    assert entry.protocol_version is None
    entry.public_key = PublicKey(0, b"k" * 3000)
    assert entry.public_key is None
    entry.observed_addr = Multiaddr(bytes([0x36, 0x90, 0x02]) + b"a" * 272 + bytes([6, 0, 1]))
    assert entry.observed_addr is None
    # The lists read are copies: changing one changes nothing stored.
    entry.protocols.append("/sneaky")
    assert "/sneaky" not in entry.protocols
    # So does an entry made by hand, with the limits it is given.
    small = PeerInfo(_peer(), protocols=["/a", "/b", "/c"], limits=IdentifyLimits(max_protocols=2))
    assert small.protocols == ["/a", "/b"]


def test_add_addrs_merges_dedups_and_prefers() -> None:
    store = PeerStore()
    peer = _peer()
    store.add_addrs(peer, [_addr(1), _addr(2), _addr(1)])
    store.add_addrs(peer, [_addr(2), _addr(3)])
    assert store.addrs(peer) == [_addr(1), _addr(2), _addr(3)]
    store.add_addrs(peer, [_addr(3)], prefer=True)
    assert store.addrs(peer) == [_addr(3), _addr(1), _addr(2)]
    # Thousands announced at once: the first distinct ones are kept, in one pass.
    store.add_addrs(peer, (_addr(i) for i in range(100_000)))
    assert len(store.addrs(peer)) == MAX_ADDRS_PER_PEER
    assert store.addrs(peer)[:3] == [_addr(3), _addr(1), _addr(2)]
    assert store.addrs(_peer()) == []


def test_capacity_drops_the_least_recently_used() -> None:
    store = PeerStore(3)
    a, b, c, d = (_peer() for _ in range(4))
    for p in (a, b, c):
        store.add_addrs(p, [_addr(1)])
    store.info(a)  # a is used again: b is now the oldest
    store.add_addrs(d, [_addr(1)])
    assert set(store.peers()) == {a, c, d} and b not in store and len(store) == 3


def test_the_byte_budget_bounds_a_flood_of_fat_identities() -> None:
    store = PeerStore(max_bytes=2 * 1024 * 1024)
    honest = _peer()
    store.add_addrs(honest, [_addr(1)])
    sizes = []
    for i in range(100):  # 100 identities at every per-field cap
        entry = store.info(_peer())
        _fill_worst(entry, i)
        sizes.append(entry.size)
        assert store.bytes_used <= store.max_bytes
    assert 100_000 < max(sizes) < 130_000  # the ~123 KiB per entry the module docstring gives
    assert len(store) < 20  # 2 MiB holds about 17 of them
    assert honest not in store  # the oldest went first
    assert store.bytes_used == sum(store.info(p).size for p in store.peers())


def test_real_memory_stays_under_the_byte_budget() -> None:
    """What the store holds is what goes when it goes: measured that way, memory that other code
    caches meanwhile (imports, a first key generation, text forms of ids) does not count, so the
    figure is the same run alone or after any other test."""
    budget = 1024 * 1024
    gc.collect()
    tracemalloc.start()
    try:
        store = PeerStore(max_bytes=budget)
        for i in range(30):  # 3.6 MiB of entries go through
            entry = store.info(_peer())
            _fill_worst(entry, i)
            for a in entry.addrs:
                str(a)  # the text form, once printed, is cached in the address too
        del entry
        used = store.bytes_used
        gc.collect()
        with_store = tracemalloc.get_traced_memory()[0]
        del store
        gc.collect()
        held = with_store - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert used <= budget
    assert budget * 0.5 < held <= budget * 1.1, held


def test_honest_entries_cost_what_the_docstring_says() -> None:
    store = PeerStore()
    for i in range(100):
        store.add_addrs(_peer(), [_addr(3 * i + j) for j in range(3)])
    dht_learned = store.bytes_used / 100
    assert 1200 < dht_learned < 1600
    # 10,000 of them fit the default 16 MiB.
    assert dht_learned * 10_000 < store.max_bytes


def test_an_entry_held_after_eviction_no_longer_counts() -> None:
    store = PeerStore(2)
    a = store.info(_peer())
    store.info(_peer())
    store.info(_peer())  # a is evicted
    assert a.peer_id not in store
    used = store.bytes_used
    a.protocols = ["/late"] * 1 + [f"/p/{i}" for i in range(100)]  # the host still held it
    assert store.bytes_used == used
    store.forget(store.peers()[0])
    assert len(store) == 1 and store.bytes_used == ENTRY_BASE_SIZE
    store.forget(_peer())  # unknown: nothing happens
    assert len(store) == 1


def test_the_entry_being_written_is_never_evicted_for_its_own_size() -> None:
    store = PeerStore(max_bytes=50_000)
    other = store.info(_peer())
    entry = store.info(_peer())
    store.info(other.peer_id)  # entry is now the least recently used
    _fill_worst(entry, 1)  # over the whole budget alone: the other goes, it stays
    assert entry.peer_id in store and other.peer_id not in store
    assert store.bytes_used == entry.size > store.max_bytes


def test_the_peer_store_and_trim_agree() -> None:
    info = identify.IdentifyInfo(
        listen_addrs=[_addr(i) for i in range(100)], protocols=[f"/p/{i}" for i in range(300)]
    )
    store = PeerStore()
    entry = store.info(_peer())
    entry.addrs = info.listen_addrs
    entry.protocols = info.protocols
    t = identify.trim(info)
    assert entry.addrs == t.listen_addrs and entry.protocols == t.protocols


# -- peers that left --


def _identified(store: PeerStore, addrs: list[Multiaddr]) -> PeerInfo:
    """An entry as identify leaves it: protocols, versions, key, observed address, and ``addrs``."""
    entry = store.info(_peer())
    entry.protocols = ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/ipfs/kad/1.0.0"]
    entry.agent_version = "physarum/1"
    entry.protocol_version = "ipfs/0.1.0"
    entry.public_key = PublicKey(1, os.urandom(32))
    entry.observed_addr = _addr(9999)
    entry.addrs = addrs
    return entry


def test_a_departed_peer_without_addresses_is_forgotten() -> None:
    """An inbound-only client (``peer find``, a throwaway identity) leaves nothing behind."""
    store = PeerStore()
    client = _identified(store, [])
    node = _identified(store, [_addr(1)])
    used = store.bytes_used
    store.departed(client.peer_id, 12.0)
    assert client.peer_id not in store and store.get(client.peer_id) is None
    assert store.peers() == [node.peer_id] and store.bytes_used == used - client.size


def test_a_departed_peer_keeps_its_addresses_and_nothing_else() -> None:
    """A node's addresses stay for a later dial by peer id; what its identify said goes."""
    store = PeerStore()
    node = _identified(store, [_addr(1), _addr(2)])
    before = store.bytes_used
    store.departed(node.peer_id, 12.0)
    entry = store.get(node.peer_id)
    assert entry is node
    assert entry.addrs == [_addr(1), _addr(2)] and store.addrs(node.peer_id) == [_addr(1), _addr(2)]
    assert entry.protocols == [] and entry.public_key is None and entry.observed_addr is None
    assert entry.agent_version is None and entry.protocol_version is None
    assert entry.last_seen == 12.0
    assert entry.size < before and store.bytes_used == entry.size


def test_departed_creates_nothing_and_does_not_refresh_recency() -> None:
    store = PeerStore(capacity=2)
    store.departed(_peer(), 1.0)  # never seen: nothing to do
    assert len(store) == 0
    old = _identified(store, [_addr(1)])
    new = _identified(store, [_addr(2)])
    store.departed(old.peer_id, 2.0)
    store.info(_peer())  # over capacity: the least recently used goes, the departed one
    assert old.peer_id not in store and new.peer_id in store


def test_a_crowd_of_departed_clients_leaves_no_memory_behind() -> None:
    """1,000 identified clients that left cost nothing afterwards (measured, not estimated)."""
    store = PeerStore()
    store.departed(_identified(store, []).peer_id, 0.0)  # first-use costs (interned names) paid here
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        crowd = [_identified(store, []).peer_id for _ in range(1000)]
        assert tracemalloc.get_traced_memory()[0] - before > 500_000  # the crowd, while it is there
        for peer in crowd:
            store.departed(peer, 1.0)
        del crowd
        gc.collect()
        assert len(store) == 0 and store.bytes_used == 0
        # What stays is the store's hash table, sized for the crowd (a dict does not shrink): ~53 KB.
        assert tracemalloc.get_traced_memory()[0] - before < 100_000
    finally:
        tracemalloc.stop()


def test_add_addrs_takes_text_and_checks_it_first() -> None:
    store = PeerStore()
    peer = KeyPair.generate().peer_id
    store.add_addrs(peer, ["/ip4/10.0.0.1/tcp/4001", Multiaddr("/ip4/10.0.0.2/tcp/4001/ws")])
    assert store.addrs(peer) == [Multiaddr("/ip4/10.0.0.1/tcp/4001"), Multiaddr("/ip4/10.0.0.2/tcp/4001/ws")]
    with pytest.raises(AddressError):
        store.add_addrs(peer, ["/ip4/10.0.0.3/tcp/1", "/ip4/not-an-ip/tcp/1"])
    assert len(store.addrs(peer)) == 2  # nothing of the bad batch was added
