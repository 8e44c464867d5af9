"""Multiaddr helpers: parse with clear errors, split TCP endpoints, attach ``/p2p/<id>``.

:class:`Multiaddr` and :class:`AddressError` live in :mod:`physarum.overlay.multiaddr` (the codec)
and are re-exported here.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import AddressError, Multiaddr

__all__ = [
    "AddressError",
    "Multiaddr",
    "TcpEndpoint",
    "from_sockaddr",
    "is_unspecified",
    "parse",
    "tcp_endpoint",
    "with_peer",
    "without_peer",
]

_IP_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")


class TcpEndpoint(NamedTuple):
    host: str
    port: int
    peer_id: PeerId | None


def parse(text: str | bytes | Multiaddr) -> Multiaddr:
    """A Multiaddr from text or bytes.

    Raises:
        AddressError: malformed.
    """
    if isinstance(text, Multiaddr):
        return text
    return Multiaddr(text)


def tcp_endpoint(addr: Multiaddr) -> TcpEndpoint:
    """Split ``/ip4|ip6|dns*/HOST/tcp/PORT[/p2p/ID]``.

    Raises:
        AddressError: any other shape (physarum speaks TCP only).
    """
    parts = list(addr)
    if len(parts) not in (2, 3) or parts[0][0] not in _IP_PROTOCOLS or parts[1][0] != "tcp":
        raise AddressError(addr, "want /ip4|ip6|dns/HOST/tcp/PORT, optionally followed by /p2p/PEER_ID")
    peer: PeerId | None = None
    if len(parts) == 3:
        if parts[2][0] != "p2p":
            raise AddressError(addr, f"unsupported protocol /{parts[2][0]} after /tcp")
        peer = addr.peer_id()
    # the codec checked the values: the port is a decimal 0..65535, the peer id well-formed
    return TcpEndpoint(parts[0][1], int(parts[1][1]), peer)


def from_sockaddr(sockaddr: tuple[object, ...]) -> Multiaddr:
    """``/ip4|ip6/HOST/tcp/PORT`` of a socket address.

    Raises:
        AddressError: not an IP address and port.
    """
    host, port = str(sockaddr[0]), int(str(sockaddr[1]))
    family = "ip6" if ":" in host else "ip4"
    return Multiaddr(f"/{family}/{host}/tcp/{port}")


def with_peer(addr: Multiaddr, peer_id: PeerId) -> Multiaddr:
    """``addr`` ending in ``/p2p/<peer_id>`` (added once).

    Raises:
        AddressError: ``addr`` is not a TCP address.
    """
    if tcp_endpoint(addr).peer_id is not None:
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
