"""Checking multiaddrs that arrive from the network, bounding how many a peer may place, and
reading the IP address out of one.

Thin wrappers over physarum's multiaddr codec (:mod:`physarum.overlay.multiaddr`, the one
validator: minimal varint protocol codes, known protocols, exact value lengths, values that decode,
at most :data:`MAX_MULTIADDR_SIZE` bytes) for the DHT's peer-input paths, which report every
malformed message as a :class:`DecodeError`.

The bounds on peer input (:data:`MAX_ADDRS_PER_PEER`, :data:`MAX_ADDR_SIZE`,
:data:`MAX_ADDR_COMPONENTS`, :func:`addr_allowed`, :func:`bounded_addrs`) are
:mod:`physarum.overlay.addr`'s, re-exported here: the DHT applies them wherever a peer's addresses
arrive (kad messages we decode, provider entries, routing table contacts; contact records have
their own :data:`physarum.dht.records.MAX_ENDPOINTS`, also 32), as identify does.
"""

from __future__ import annotations

import ipaddress

from physarum.errors import DecodeError
from physarum.overlay.addr import (
    MAX_ADDR_COMPONENTS,
    MAX_ADDR_SIZE,
    MAX_ADDRS_PER_PEER,
    addr_allowed,
    bounded_addrs,
)
from physarum.overlay.multiaddr import MAX_MULTIADDR_SIZE, AddressError, Multiaddr

__all__ = [
    "MAX_ADDRS_PER_PEER",
    "MAX_ADDR_COMPONENTS",
    "MAX_ADDR_SIZE",
    "MAX_MULTIADDR_SIZE",
    "IPAddress",
    "addr_allowed",
    "addr_footprint",
    "bounded_addrs",
    "ip_address_of",
    "parse_multiaddr_bytes",
    "parse_multiaddr_text",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_P_IP4 = 0x04
_P_IP6 = 0x29


def parse_multiaddr_bytes(data: bytes) -> Multiaddr:
    """Check a binary multiaddr and wrap it in a ``Multiaddr``.

    Raises:
        DecodeError: empty, too long, an unknown protocol, a truncated or malformed value.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"not a binary multiaddr: {type(data).__name__}")
    try:
        return Multiaddr(data)
    except AddressError as e:
        raise DecodeError(f"bad multiaddr: {e.reason}") from None


def parse_multiaddr_text(text: str) -> Multiaddr:
    """Parse a multiaddr's text form (``/ip4/1.2.3.4/tcp/4001``).

    Raises:
        DecodeError: not a multiaddr.
    """
    if not isinstance(text, str):
        raise DecodeError(f"not a multiaddr: {text!r}")
    try:
        return Multiaddr(text)
    except AddressError as e:
        raise DecodeError(f"bad multiaddr: {e.reason}") from None


def ip_address_of(addr: Multiaddr) -> IPAddress | None:
    """The IP address a multiaddr starts with (``/ip4/...`` or ``/ip6/...``), else None.

    IPv4-mapped IPv6 addresses come back as IPv4. Never raises.
    """
    data = addr.to_bytes()
    if len(data) >= 5 and data[0] == _P_IP4:
        return ipaddress.IPv4Address(data[1:5])
    if len(data) >= 17 and data[0] == _P_IP6:
        ip6 = ipaddress.IPv6Address(data[1:17])
        return ip6.ipv4_mapped or ip6
    return None


def addr_footprint(addr: Multiaddr) -> int:
    """About how many bytes of memory a parsed ``addr`` holds (measured on CPython 3.11: object
    and binary form, its text form once printed, ~64 bytes per parsed component). Never raises."""
    return 160 + 2 * len(addr.to_bytes()) + 64 * len(addr.protocols())
