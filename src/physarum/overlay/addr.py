"""Multiaddr helpers: parse with clear errors, split TCP endpoints, attach ``/p2p/<id>``."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from multiaddr import Multiaddr
from multiaddr.exceptions import Error as _MultiaddrError

from physarum.errors import PhysarumError
from physarum.overlay.identity import PeerId

_IP_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")


class AddressError(PhysarumError, ValueError):
    """A multiaddr that is malformed or that physarum cannot dial or listen on."""

    def __init__(self, address: object, reason: str) -> None:
        super().__init__(f"bad multiaddr {str(address)!r}: {reason}")
        self.address = address
        self.reason = reason


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
    try:
        return Multiaddr(text)
    except (_MultiaddrError, ValueError, TypeError, IndexError, KeyError) as e:
        raise AddressError(text, str(e).split(" (string:")[0]) from None


def tcp_endpoint(addr: Multiaddr) -> TcpEndpoint:
    """Split ``/ip4|ip6|dns*/HOST/tcp/PORT[/p2p/ID]``.

    Raises:
        AddressError: any other shape (physarum speaks TCP only).
    """
    parts = list(addr.items())
    if len(parts) not in (2, 3) or parts[0][0].name not in _IP_PROTOCOLS or parts[1][0].name != "tcp":
        raise AddressError(addr, "want /ip4|ip6|dns/HOST/tcp/PORT, optionally followed by /p2p/PEER_ID")
    peer: PeerId | None = None
    if len(parts) == 3:
        if parts[2][0].name != "p2p":
            raise AddressError(addr, f"unsupported protocol /{parts[2][0].name} after /tcp")
        try:
            peer = PeerId.from_string(str(parts[2][1]))
        except PhysarumError as e:
            raise AddressError(addr, f"bad peer id: {e}") from None
    try:
        port = int(str(parts[1][1]))
    except ValueError:
        raise AddressError(addr, "bad TCP port") from None
    return TcpEndpoint(str(parts[0][1]), port, peer)


def from_sockaddr(sockaddr: tuple[object, ...]) -> Multiaddr:
    host, port = str(sockaddr[0]), int(str(sockaddr[1]))
    family = "ip6" if ":" in host else "ip4"
    return Multiaddr(f"/{family}/{host}/tcp/{port}")


def with_peer(addr: Multiaddr, peer_id: PeerId) -> Multiaddr:
    """``addr`` ending in ``/p2p/<peer_id>`` (added once)."""
    if tcp_endpoint(addr).peer_id is not None:
        return addr
    return Multiaddr(f"{addr}/p2p/{peer_id}")


def without_peer(addr: Multiaddr) -> Multiaddr:
    ep = tcp_endpoint(addr)
    return addr if ep.peer_id is None else addr.decapsulate("/p2p")


def is_unspecified(addr: Multiaddr) -> bool:
    host = tcp_endpoint(addr).host
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
