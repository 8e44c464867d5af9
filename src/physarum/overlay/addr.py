"""Multiaddr helpers: parse with clear errors, split TCP endpoints, attach ``/p2p/<id>``.

Every transport physarum has runs over TCP: plain (``/ip4/1.2.3.4/tcp/4001``) or inside a
WebSocket (``/ip4/1.2.3.4/tcp/4002/ws``). :func:`tcp_endpoint` splits both shapes; the layers
above TCP (``("ws",)``) say which transport the address is for.

:class:`Multiaddr` and :class:`AddressError` live in :mod:`physarum.overlay.multiaddr` (the codec,
physarum's one validator of multiaddr bytes) and are re-exported here.

Addresses a peer sends us (identify, kad messages, provider entries, contacts) are bounded here,
below every user of them: a peer keeps at most :data:`MAX_ADDRS_PER_PEER` (32) addresses, its
first distinct ones, as go-libp2p keeps a similar bound (an honest node lists under 10); an address
over :data:`MAX_ADDR_SIZE` (256) binary bytes or :data:`MAX_ADDR_COMPONENTS` (16) components is
dropped, since length and component count are what a parsed address costs in memory (real ones
stay under 150 bytes and 10 components). :func:`bounded_addrs` applies them in one pass, stopping
once it has enough; :func:`is_dialable` says whether another machine could dial an address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import AddressError, Multiaddr

__all__ = [
    "MAX_ADDRS_PER_PEER",
    "MAX_ADDR_COMPONENTS",
    "MAX_ADDR_SIZE",
    "AddressError",
    "Multiaddr",
    "TcpEndpoint",
    "addr_allowed",
    "bounded_addrs",
    "from_sockaddr",
    "is_dialable",
    "is_unspecified",
    "parse",
    "tcp_endpoint",
    "with_host",
    "with_peer",
    "without_peer",
]

_IP_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")

#: Most addresses kept for one peer (identify, contacts, provider entries, peers in kad messages).
MAX_ADDRS_PER_PEER = 32
#: Longest address kept, in binary bytes.
MAX_ADDR_SIZE = 256
#: Most components (``/ip4/..``, ``/tcp/..``) in a kept address.
MAX_ADDR_COMPONENTS = 16


class TcpEndpoint(NamedTuple):
    host: str
    port: int
    peer_id: PeerId | None
    layers: tuple[str, ...] = ()
    """What runs over TCP: ``()`` for plain TCP, ``("ws",)`` for a WebSocket."""


def parse(text: str | bytes | Multiaddr) -> Multiaddr:
    """A Multiaddr from text or bytes.

    Raises:
        AddressError: malformed.
    """
    if isinstance(text, Multiaddr):
        return text
    return Multiaddr(text)


def tcp_endpoint(addr: Multiaddr) -> TcpEndpoint:
    """Split ``/ip4|ip6|dns*/HOST/tcp/PORT[/ws][/p2p/ID]``.

    Raises:
        AddressError: any other shape (every physarum transport runs over TCP).
    """
    parts = list(addr)
    if len(parts) < 2 or parts[0][0] not in _IP_PROTOCOLS or parts[1][0] != "tcp":
        raise AddressError(addr, "want /ip4|ip6|dns/HOST/tcp/PORT, optionally /ws, then /p2p/PEER_ID")
    rest = parts[2:]
    peer: PeerId | None = None
    if rest and rest[-1][0] == "p2p":
        peer = addr.peer_id()
        rest = rest[:-1]
    layers = tuple(name for name, _ in rest)
    if layers not in ((), ("ws",)):
        raise AddressError(addr, f"unsupported protocol /{'/'.join(layers)} after /tcp (physarum has /tcp and /tcp/PORT/ws)")
    # the codec checked the values: the port is a decimal 0..65535, the peer id well-formed
    return TcpEndpoint(parts[0][1], int(parts[1][1]), peer, layers)


def from_sockaddr(sockaddr: tuple[object, ...], layers: tuple[str, ...] = ()) -> Multiaddr:
    """``/ip4|ip6/HOST/tcp/PORT`` of a socket address, followed by ``layers`` (``("ws",)``).

    Raises:
        AddressError: not an IP address and port.
    """
    host, port = str(sockaddr[0]), int(str(sockaddr[1]))
    family = "ip6" if ":" in host else "ip4"
    return Multiaddr(f"/{family}/{host}/tcp/{port}" + "".join(f"/{layer}" for layer in layers))


def with_host(addr: Multiaddr, ip: str) -> Multiaddr:
    """``addr`` with its IP address or DNS name replaced by the IP address ``ip`` (same port and
    layers, no ``/p2p``): how a wildcard listen address becomes an advertised one.

    Raises:
        AddressError: ``addr`` is not a TCP address, or ``ip`` is not an IP address.
    """
    ep = tcp_endpoint(addr)
    family = "ip6" if ":" in ip else "ip4"
    return Multiaddr(f"/{family}/{ip}/tcp/{ep.port}" + "".join(f"/{layer}" for layer in ep.layers))


def with_peer(addr: Multiaddr, peer_id: PeerId) -> Multiaddr:
    """``addr`` ending in ``/p2p/<peer_id>`` (added once).

    Raises:
        AddressError: ``addr`` is not a TCP address, or already names another peer (a peer's
            record listing someone else's address must not read as its own).
    """
    named = tcp_endpoint(addr).peer_id
    if named is not None:
        if named != peer_id:
            raise AddressError(addr, f"names peer {named}, not {peer_id}")
        return addr
    return addr.encapsulate(f"/p2p/{peer_id}")


def without_peer(addr: Multiaddr) -> Multiaddr:
    """``addr`` without its ``/p2p/<id>``.

    Raises:
        AddressError: ``addr`` is not a TCP address.
    """
    ep = tcp_endpoint(addr)
    return addr if ep.peer_id is None else addr.decapsulate("p2p")


def is_unspecified(addr: Multiaddr) -> bool:
    """Whether ``addr`` names the wildcard address (``0.0.0.0``, ``::``).

    Raises:
        AddressError: ``addr`` is not a TCP address.
    """
    host = tcp_endpoint(addr).host
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def is_dialable(addr: Multiaddr) -> bool:
    """Whether another machine could dial ``addr``: a TCP address (plain or ``/ws``) with a real
    port and a host that is not a wildcard. Never raises."""
    try:
        ep = tcp_endpoint(addr)
    except AddressError:
        return False
    return ep.port != 0 and not is_unspecified(addr)


def addr_allowed(
    addr: Multiaddr, max_size: int = MAX_ADDR_SIZE, max_components: int = MAX_ADDR_COMPONENTS
) -> bool:
    """Whether ``addr`` is within ``max_size`` binary bytes and ``max_components`` components.
    Never raises."""
    return len(addr.to_bytes()) <= max_size and len(addr.protocols()) <= max_components


def bounded_addrs(
    addrs: Iterable[Multiaddr],
    limit: int = MAX_ADDRS_PER_PEER,
    *,
    max_size: int = MAX_ADDR_SIZE,
    max_components: int = MAX_ADDR_COMPONENTS,
) -> tuple[Multiaddr, ...]:
    """The first ``limit`` distinct allowed (:func:`addr_allowed`) addresses of ``addrs``, in order.

    Linear: one pass, membership in a set, and it stops reading once it has ``limit``. Never raises.
    """
    out: dict[Multiaddr, None] = {}
    if limit <= 0:
        return ()
    for addr in addrs:
        if addr not in out and addr_allowed(addr, max_size, max_components):
            out[addr] = None
            if len(out) >= limit:
                break
    return tuple(out)
