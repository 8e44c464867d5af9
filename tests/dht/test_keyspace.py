"""The key space (SHA-256 ints, XOR, bucket indices, refresh targets) and multiaddr checking."""

from __future__ import annotations

import hashlib
import ipaddress
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from physarum.dht import keyspace
from physarum.dht.addrs import ip_address_of, parse_multiaddr_bytes, parse_multiaddr_text
from physarum.errors import DecodeError
from physarum.overlay.identity import KeyPair
from physarum.overlay.multiaddr import Multiaddr

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


# ---- multiaddrs from the network ----


@pytest.mark.parametrize(
    "text",
    [
        "/ip4/1.2.3.4/tcp/4001",
        "/ip6/::1/tcp/1",
        "/dns4/example.com/tcp/443/wss",
        "/ip4/127.0.0.1/udp/4001/quic-v1",
        "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
    ],
)
def test_valid_multiaddrs_pass(text: str) -> None:
    addr = parse_multiaddr_text(text)
    assert str(addr) == text
    assert parse_multiaddr_bytes(addr.to_bytes()) == addr


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x04\x01\x02\x03",  # ip4 with three bytes
        b"\x04\x01\x02\x03\x04\x06\x0f",  # tcp port cut short
        b"\x80",  # varint cut short
        b"\x04\x01\x02\x03\x04\x06\x00\x01\xff\xff\x7f",  # unknown protocol code
        b"\x36\x05abc",  # dns4 length runs past the end
        b"\x36\x02\xff\xfe",  # dns4 name that is not UTF-8
        b"\x84\x00",  # non-minimal varint for ip4
        b"\x04" + bytes(4) + b"\x00" * 2000,  # too long
    ],
)
def test_invalid_multiaddrs_fail(data: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_multiaddr_bytes(data)


@pytest.mark.parametrize("text", ["", "nonsense", "/ip4/999.1.1.1/tcp/1", "/tcp/99999", "/ip4"])
def test_invalid_multiaddr_text_fails(text: str) -> None:
    with pytest.raises(DecodeError):
        parse_multiaddr_text(text)


@given(st.binary(max_size=60))
def test_multiaddr_fuzz_only_decode_error(data: bytes) -> None:
    try:
        addr = parse_multiaddr_bytes(data)
    except DecodeError:
        return
    # whatever passes has a text form that parses back to the same bytes
    assert Multiaddr(str(addr)).to_bytes() == data


def test_ip_address_of() -> None:
    assert ip_address_of(parse_multiaddr_text("/ip4/10.1.2.3/tcp/1")) == ipaddress.ip_address("10.1.2.3")
    assert ip_address_of(parse_multiaddr_text("/ip6/2001:4860::8888/tcp/1")) == ipaddress.ip_address(
        "2001:4860::8888"
    )
    assert ip_address_of(parse_multiaddr_text("/ip6/::ffff:8.8.8.8/tcp/1")) == ipaddress.ip_address("8.8.8.8")
    assert ip_address_of(parse_multiaddr_text("/dns4/example.com/tcp/1")) is None
