"""Helpers for the DHT tests: cheap peer ids, peer ids that land in a chosen bucket, multiaddrs."""

from __future__ import annotations

from random import Random
from typing import Any

from physarum.dht import keyspace
from physarum.dht.addrs import parse_multiaddr_text
from physarum.overlay.identity import PeerId


def random_peer_id(rng: Random) -> PeerId:
    """A SHA-256-style peer id (``Qm...``): valid, and far cheaper than generating a key pair."""
    return PeerId(b"\x12\x20" + rng.getrandbits(256).to_bytes(32, "big"))


def peer_in_bucket(self_key: int, index: int, rng: Random) -> PeerId:
    """A random peer id whose key falls in bucket ``index`` (about 2**(index+1) tries)."""
    while True:
        pid = random_peer_id(rng)
        if keyspace.bucket_index(self_key, keyspace.peer_key(pid)) == index:
            return pid


def ma(text: str) -> Any:
    return parse_multiaddr_text(text)


def tcp(ip: str, port: int = 4001) -> Any:
    version = "ip6" if ":" in ip else "ip4"
    return ma(f"/{version}/{ip}/tcp/{port}")
