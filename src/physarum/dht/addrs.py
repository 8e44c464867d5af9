"""Checking multiaddrs that arrive from the network, bounding how many a peer may place, and
reading the IP address out of one.

Thin wrappers over physarum's multiaddr codec (:mod:`physarum.overlay.multiaddr`, the one
validator: minimal varint protocol codes, known protocols, exact value lengths, values that decode,
at most :data:`MAX_MULTIADDR_SIZE` bytes) for the DHT's peer-input paths, which report every
malformed message as a :class:`DecodeError`.

Bounds on peer input (the DHT applies them wherever a peer's addresses arrive: identify, kad
messages we decode, provider entries, routing table contacts; contact records have their own
:data:`physarum.dht.records.MAX_ENDPOINTS`, also 32):

* a peer keeps at most :data:`MAX_ADDRS_PER_PEER` (32) addresses, its first distinct ones, as
  go-libp2p and physarum's identify keep a similar bound; an honest node lists under 10;
* an address over :data:`MAX_ADDR_SIZE` (256) binary bytes or :data:`MAX_ADDR_COMPONENTS` (16)
  components is dropped (the same bounds as identify's defaults): the length and component count
  are what a parsed address costs in memory (:func:`addr_footprint`), and real ones stay under
  150 bytes and 10 components.

:func:`bounded_addrs` applies them in one pass over its input (a set, not pairwise comparisons),
stopping as soon as it has enough, so a peer announcing thousands of addresses costs a read of
what it sent and no more.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from physarum.errors import DecodeError
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

#: Most addresses kept for one peer (contacts, provider entries, peers in kad messages).
MAX_ADDRS_PER_PEER = 32
#: Longest address kept, in binary bytes.
MAX_ADDR_SIZE = 256
#: Most components (``/ip4/..``, ``/tcp/..``) in a kept address.
MAX_ADDR_COMPONENTS = 16

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


def addr_allowed(addr: Multiaddr) -> bool:
    """Whether ``addr`` is within :data:`MAX_ADDR_SIZE` bytes and :data:`MAX_ADDR_COMPONENTS`
    components. Never raises."""
    return len(addr.to_bytes()) <= MAX_ADDR_SIZE and len(addr.protocols()) <= MAX_ADDR_COMPONENTS


def addr_footprint(addr: Multiaddr) -> int:
    """About how many bytes of memory a parsed ``addr`` holds (measured on CPython 3.11: object
    and binary form, its text form once printed, ~64 bytes per parsed component). Never raises."""
    return 160 + 2 * len(addr.to_bytes()) + 64 * len(addr.protocols())


def bounded_addrs(addrs: Iterable[Multiaddr], limit: int = MAX_ADDRS_PER_PEER) -> tuple[Multiaddr, ...]:
    """The first ``limit`` distinct allowed (:func:`addr_allowed`) addresses of ``addrs``, in order.

    Linear: one pass, membership in a set, and it stops reading once it has ``limit``. Never raises.
    """
    out: dict[Multiaddr, None] = {}
    if limit <= 0:
        return ()
    for addr in addrs:
        if addr not in out and addr_allowed(addr):
            out[addr] = None
            if len(out) >= limit:
                break
    return tuple(out)
