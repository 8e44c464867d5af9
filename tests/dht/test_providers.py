"""The provider store (physarum.dht.providers): who provides a key, for how long, and how many
entries a stranger may place (wall-clock ``now`` injected)."""

from __future__ import annotations

from random import Random
from typing import Any

import pytest

from physarum.dht import keyspace
from physarum.dht.providers import ProviderOutcome, ProviderStore

from ._util import ma, random_peer_id

EP = (ma("/ip4/127.0.0.1/tcp/4001"), ma("/dns4/example.com/tcp/443/wss"))


def test_providers_add_get_expire() -> None:
    rng = Random(5)
    store = ProviderStore()
    key = keyspace.key_to_bytes(rng.getrandbits(256))
    p1, p2 = random_peer_id(rng), random_peer_id(rng)
    assert store.add(key, p1, EP, 0.0)
    assert store.add(key, p2, (), 10.0)
    got = store.get(key, 20.0)
    assert [p.peer_id for p in got] == [p2, p1]
    assert got[1].addrs == EP and got[1].expires == 24 * 3600
    assert store.get(key, 24 * 3600.0)[0].peer_id == p2
    assert store.expire(24 * 3600.0) == 1
    assert store.expire(24 * 3600.0 + 10) == 1
    assert len(store) == 0 and store.keys() == []


def test_providers_readd_refreshes() -> None:
    rng = Random(6)
    store = ProviderStore(validity=100)
    p1, p2 = random_peer_id(rng), random_peer_id(rng)
    store.add(b"k", p1, (), 0.0)
    store.add(b"k", p2, (), 10.0)
    store.add(b"k", p1, EP, 50.0)
    assert [p.peer_id for p in store.get(b"k", 60.0)] == [p1, p2]
    assert [p.peer_id for p in store.get(b"k", 120.0)] == [p1]
    assert len(store) == 2


def test_provider_bounds() -> None:
    rng = Random(7)
    store = ProviderStore(max_per_key=2, max_keys=2, max_key_size=8)
    peers = [random_peer_id(rng) for _ in range(3)]
    for i, p in enumerate(peers):
        store.add(b"k", p, (), float(i))
    assert [p.peer_id for p in store.get(b"k", 5.0)] == [peers[2], peers[1]]
    assert len(store) == 2
    assert store.add(b"j", peers[0], (), 0.0)
    assert not store.add(b"i", peers[0], (), 0.0)
    assert not store.add(b"", peers[0], (), 0.0)
    assert not store.add(b"123456789", peers[0], (), 0.0)
    assert store.remove(b"j", peers[0]) and not store.remove(b"j", peers[0])
    assert store.add(b"i", peers[0], (), 0.0)
    with pytest.raises(ValueError):
        ProviderStore(validity=0)


def test_providers_standing_per_key_and_store_wide() -> None:
    rng = Random(9)
    since: dict[Any, float] = {}
    store = ProviderStore(max_per_key=2, max_entries=3, standing=since.get)
    a, b, c, d, e = (random_peer_id(rng) for _ in range(5))
    since[a] = 10.0
    assert store.add(b"k", a, (), 0.0) and store.add(b"k", b, (), 1.0)
    # A stranger replaces the stranger added longest ago, never the provider with history.
    assert store.add(b"k", c, (), 2.0)
    assert {p.peer_id for p in store.get(b"k", 3.0)} == {a, c}
    assert store.add(b"j", d, (), 3.0)
    # Full store: a stranger is refused; one with history evicts the oldest stranger entry.
    assert store.offer(b"i", e, (), 4.0) is ProviderOutcome.STORE_FULL
    since[e] = 20.0
    assert store.offer(b"i", e, (), 4.0) is ProviderOutcome.STORED
    assert {p.peer_id for p in store.get(b"k", 5.0)} == {a}  # c's entry, the oldest stranger's, went
    assert [p.peer_id for p in store.get(b"j", 5.0)] == [d]
    assert len(store) == 3
    # Addresses: the first 32 distinct, oversized ones dropped, and the store's estimate follows.
    many = [ma(f"/ip4/10.0.0.{i}/tcp/1") for i in range(1, 100)]
    assert store.offer(b"k", a, many + many, 6.0) is ProviderOutcome.STORED
    assert store.get(b"k", 7.0)[0].addrs == tuple(many[:32])
    assert store.total_bytes > 32 * 160
    store.remove(b"k", a)
    store.expire(1e9)
    assert len(store) == 0 and store.total_bytes == 0


def test_providers_expiry_follows_the_latest_add() -> None:
    rng = Random(10)
    store = ProviderStore(validity=100)
    p1, p2 = random_peer_id(rng), random_peer_id(rng)
    store.add(b"k", p1, (), 0.0)
    store.add(b"j", p2, (), 10.0)
    store.add(b"k", p1, (), 20.0)  # re-added: now expires after p2's entry
    assert store.expire(110.0) == 1 and store.keys() == [b"k"]
    assert store.expire(120.0) == 1 and len(store) == 0
