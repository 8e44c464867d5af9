"""The key space (SHA-256 ints, XOR, bucket indices, refresh targets)."""

from __future__ import annotations

import hashlib
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from physarum.dht import keyspace
from physarum.overlay.identity import KeyPair

from ._util import random_peer_id

KEYS = st.integers(min_value=0, max_value=2**256 - 1)


def test_kad_key_is_sha256_of_the_bytes() -> None:
    assert keyspace.kad_key(b"") == int(hashlib.sha256(b"").hexdigest(), 16)
    pid = KeyPair(bytes(32)).peer_id
    assert keyspace.peer_key(pid) == int.from_bytes(hashlib.sha256(pid.to_bytes()).digest(), "big")
    assert keyspace.key_to_bytes(keyspace.kad_key(b"x")) == hashlib.sha256(b"x").digest()


def test_key_to_bytes_range() -> None:
    with pytest.raises(ValueError):
        keyspace.key_to_bytes(-1)
    with pytest.raises(ValueError):
        keyspace.key_to_bytes(2**256)


def test_bucket_index_edges() -> None:
    top = 1 << 255
    assert keyspace.bucket_index(0, top) == 0
    assert keyspace.bucket_index(0, 1) == 255
    assert keyspace.bucket_index(5, 5) == 256
    assert keyspace.common_prefix_length(0, top >> 3) == 3


@given(KEYS, KEYS, KEYS)
def test_distance_is_a_metric_ordering(a: int, b: int, c: int) -> None:
    assert keyspace.distance(a, a) == 0
    assert keyspace.distance(a, b) == keyspace.distance(b, a)
    assert keyspace.distance(a, c) <= keyspace.distance(a, b) + keyspace.distance(b, c)
    # ultrametric in bit length, which is why whole buckets are ordered by distance
    assert keyspace.distance(a, c).bit_length() <= max(
        keyspace.distance(a, b).bit_length(), keyspace.distance(b, c).bit_length()
    )
    assert keyspace.closer(a, b, c) == (a ^ b < a ^ c)


@given(KEYS, st.lists(KEYS, max_size=30))
def test_sort_by_distance(target: int, keys: list[int]) -> None:
    ordered = keyspace.sort_by_distance(target, keys, key=lambda k: k)
    assert [k ^ target for k in ordered] == sorted(k ^ target for k in keys)


@given(KEYS, st.integers(0, 255), st.integers(0, 2**32))
def test_random_key_in_bucket_lands_there(self_key: int, index: int, seed: int) -> None:
    key = keyspace.random_key_in_bucket(self_key, index, Random(seed))
    assert keyspace.bucket_index(self_key, key) == index
    assert 0 <= key < 2**256


def test_random_key_in_bucket_range() -> None:
    with pytest.raises(ValueError):
        keyspace.random_key_in_bucket(0, 256, Random(1))
    with pytest.raises(ValueError):
        keyspace.random_key_in_bucket(0, -1, Random(1))


@pytest.mark.parametrize("index", [0, 1, 5, 9])
def test_random_preimage_in_bucket(index: int) -> None:
    rng = Random(index)
    self_key = keyspace.peer_key(random_peer_id(rng))
    pre = keyspace.random_preimage_in_bucket(self_key, index, rng)
    assert pre[:2] == b"\x12\x20" and len(pre) == 34
    assert keyspace.bucket_index(self_key, keyspace.kad_key(pre)) == index


def test_random_preimage_limits() -> None:
    with pytest.raises(ValueError):
        keyspace.random_preimage_in_bucket(0, keyspace.MAX_PREIMAGE_INDEX + 1, Random(1))
    with pytest.raises(ValueError):
        keyspace.random_preimage_in_bucket(0, 20, Random(1), max_tries=3)
