"""The Kademlia key space: 256-bit SHA-256 keys as Python ints, XOR distance, common prefix lengths.

As in libp2p's kad-dht, every key on the wire (a peer id's multihash bytes, a record key, a
provider key) is hashed with SHA-256 before distances are taken, so the space is uniform whatever
the keys look like. Keys are plain ``int``: XOR and ``bit_length`` on ints are the fastest way to
compare distances in Python.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable
from random import Random
from typing import TypeVar

from physarum.errors import ConfigError
from physarum.overlay.identity import PeerId

KEY_BITS = 256
KEY_BYTES = KEY_BITS // 8
_MAX_KEY = (1 << KEY_BITS) - 1

T = TypeVar("T")


def kad_key(data: bytes) -> int:
    """The Kademlia key of some wire bytes: SHA-256 of them, as a big-endian int."""
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


@functools.lru_cache(maxsize=65536)
def peer_key(peer_id: PeerId) -> int:
    """The Kademlia key of a peer: SHA-256 of its peer id's multihash bytes.

    Cached: every response names up to k peers, mostly ones seen before, and a lookup needs each
    one's key.
    """
    return kad_key(peer_id.to_bytes())


def key_to_bytes(key: int) -> bytes:
    """A key as its 32 big-endian bytes (the SHA-256 digest it came from).

    Raises:
        ConfigError: ``key`` is not in [0, 2**256).
    """
    if not 0 <= key <= _MAX_KEY:
        raise ConfigError(f"key out of range: {key}")
    return key.to_bytes(KEY_BYTES, "big")


def distance(a: int, b: int) -> int:
    """XOR distance between two keys."""
    return a ^ b


def common_prefix_length(a: int, b: int) -> int:
    """How many leading bits two keys share: 256 for equal keys, 0 when the top bit differs."""
    return KEY_BITS - (a ^ b).bit_length()


def bucket_index(self_key: int, other_key: int) -> int:
    """The k-bucket ``other_key`` belongs in for a table centred on ``self_key``.

    Bucket ``i`` holds keys sharing exactly ``i`` leading bits with ``self_key``, so bucket 0 is the
    far half of the space. Returns 256 for ``other_key == self_key`` (the node itself, never stored).
    """
    return KEY_BITS - (self_key ^ other_key).bit_length()


def sort_by_distance(target: int, items: Iterable[T], key: Callable[[T], int]) -> list[T]:
    """``items`` ordered nearest to ``target`` first, ``key(item)`` giving each item's Kademlia key."""
    return sorted(items, key=lambda item: key(item) ^ target)


def closer(target: int, a: int, b: int) -> bool:
    """True when key ``a`` is strictly closer to ``target`` than key ``b``."""
    return (a ^ target) < (b ^ target)


def random_key_in_bucket(self_key: int, index: int, rng: Random) -> int:
    """A uniformly random key that falls in bucket ``index`` of a table centred on ``self_key``.

    Useful for simulations and local ordering. A lookup on the wire needs a key's *preimage*
    (what remote nodes hash); see :func:`random_preimage_in_bucket`.

    Raises:
        ConfigError: ``index`` is not in [0, 255].
    """
    if not 0 <= index < KEY_BITS:
        raise ConfigError(f"bucket index out of range: {index}")
    shift = KEY_BITS - 1 - index
    # keep self's first `index` bits, flip the next one, randomise the rest
    prefix = (self_key >> shift) ^ 1
    return (prefix << shift) | rng.getrandbits(shift)


#: Deepest bucket :func:`random_preimage_in_bucket` searches: bucket ``i`` costs about 2**(i+1) hashes.
MAX_PREIMAGE_INDEX = 20

_SHA256_MULTIHASH_PREFIX = b"\x12\x20"


def random_preimage_in_bucket(
    self_key: int, index: int, rng: Random, *, max_tries: int | None = None
) -> bytes:
    """Random wire key bytes whose Kademlia key falls in bucket ``index``: a FIND_NODE target.

    Remote nodes hash whatever key they are sent, so a refresh lookup for one bucket must send a
    preimage. The result is shaped like a SHA-256 peer id multihash (``0x12 0x20`` + 32 bytes) so
    implementations that parse FIND_NODE keys as peer ids accept it. Found by trial: bucket ``i``
    takes about 2**(i+1) SHA-256 computations (bucket 15: ~65k, tens of milliseconds).

    Raises:
        ValueError: ``index`` is out of [0, MAX_PREIMAGE_INDEX], or ``max_tries`` ran out.
    """
    if not 0 <= index <= MAX_PREIMAGE_INDEX:
        raise ConfigError(f"bucket index {index} is out of [0, {MAX_PREIMAGE_INDEX}] for a preimage search")
    shift = KEY_BITS - 1 - index
    want = (self_key >> shift) ^ 1
    tries = max_tries if max_tries is not None else 1 << (index + 8)
    sha256 = hashlib.sha256
    for _ in range(tries):
        candidate = _SHA256_MULTIHASH_PREFIX + rng.getrandbits(KEY_BITS).to_bytes(KEY_BYTES, "big")
        if int.from_bytes(sha256(candidate).digest(), "big") >> shift == want:
            return candidate
    raise ConfigError(f"no preimage for bucket {index} in {tries} tries")
