"""Multiaddr helpers (physarum.overlay.addr): TCP endpoints, socket addresses, /p2p suffixes."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from physarum.overlay import addr as addrs_
from physarum.overlay.addr import (
    AddressError,
    Multiaddr,
    TcpEndpoint,
    from_sockaddr,
    is_unspecified,
    parse,
    tcp_endpoint,
    with_host,
    with_peer,
    without_peer,
)
from physarum.overlay.identity import KeyPair

PEER = KeyPair(bytes([3]) * 32).peer_id
OTHER = KeyPair(bytes([4]) * 32).peer_id


def test_parse_takes_text_bytes_and_multiaddrs() -> None:
    addr = parse("/ip4/1.2.3.4/tcp/4001")
    assert isinstance(addr, Multiaddr) and str(addr) == "/ip4/1.2.3.4/tcp/4001"
    assert parse(addr.to_bytes()) == addr
    assert parse(addr) is addr
    for bad in ("", "/ip4/1.2.3.4/tcp/70000", b"\x04\x01"):
        with pytest.raises(AddressError):
            parse(bad)


def test_the_codec_names_are_re_exported() -> None:
    from physarum.overlay import multiaddr

    assert addrs_.Multiaddr is multiaddr.Multiaddr and addrs_.AddressError is multiaddr.AddressError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ip4/1.2.3.4/tcp/4001", TcpEndpoint("1.2.3.4", 4001, None, ())),
        ("/ip6/::1/tcp/0", TcpEndpoint("::1", 0, None, ())),
        ("/dns4/example.com/tcp/443/ws", TcpEndpoint("example.com", 443, None, ("ws",))),
        ("/dns/example.com/tcp/1", TcpEndpoint("example.com", 1, None, ())),
        (f"/ip4/10.0.0.1/tcp/65535/p2p/{PEER}", TcpEndpoint("10.0.0.1", 65535, PEER, ())),
        (f"/ip4/10.0.0.1/tcp/4002/ws/p2p/{PEER}", TcpEndpoint("10.0.0.1", 4002, PEER, ("ws",))),
    ],
)
def test_tcp_endpoint_splits_every_shape_physarum_dials(text: str, expected: TcpEndpoint) -> None:
    assert tcp_endpoint(Multiaddr(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "/ip4/1.2.3.4/udp/4001/quic-v1",  # not TCP
        "/ip4/1.2.3.4",  # no port
        "/tcp/4001",  # no host
        f"/p2p/{PEER}",
        "/ip4/1.2.3.4/tcp/443/wss",  # TLS WebSocket: not a physarum transport
        "/ip4/1.2.3.4/tcp/443/tls/ws",
        "/ip4/1.2.3.4/tcp/1/ws/ws",
        f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}/ws",  # /p2p not last
        "/unix/tmp%2Fsock",
    ],
)
def test_tcp_endpoint_refuses_other_shapes(text: str) -> None:
    with pytest.raises(AddressError):
        tcp_endpoint(Multiaddr(text))


def test_from_sockaddr() -> None:
    assert from_sockaddr(("127.0.0.1", 4001)) == Multiaddr("/ip4/127.0.0.1/tcp/4001")
    assert from_sockaddr(("::1", 4001, 0, 0)) == Multiaddr("/ip6/::1/tcp/4001")
    assert from_sockaddr(("10.1.2.3", 80), ("ws",)) == Multiaddr("/ip4/10.1.2.3/tcp/80/ws")
    for bad in (("not-an-ip", 1), ("1.2.3.4", 65536), ("::zz", 1)):
        with pytest.raises(AddressError):
            from_sockaddr(bad)


def test_with_host_replaces_the_host_and_keeps_port_and_layers() -> None:
    assert with_host(Multiaddr("/ip4/0.0.0.0/tcp/4001"), "10.0.0.7") == Multiaddr("/ip4/10.0.0.7/tcp/4001")
    assert with_host(Multiaddr("/ip6/::/tcp/4002/ws"), "fe80::1") == Multiaddr("/ip6/fe80::1/tcp/4002/ws")
    assert with_host(Multiaddr("/dns4/example.com/tcp/1"), "::1") == Multiaddr("/ip6/::1/tcp/1")
    # the advertised form carries no /p2p (the caller adds its own)
    assert with_host(Multiaddr(f"/ip4/0.0.0.0/tcp/1/p2p/{PEER}"), "1.2.3.4") == Multiaddr(
        "/ip4/1.2.3.4/tcp/1"
    )
    with pytest.raises(AddressError):
        with_host(Multiaddr("/ip4/0.0.0.0/udp/1"), "1.2.3.4")
    with pytest.raises(AddressError):
        with_host(Multiaddr("/ip4/0.0.0.0/tcp/1"), "not-an-ip")


def test_with_peer_adds_the_peer_once() -> None:
    base = Multiaddr("/ip4/1.2.3.4/tcp/4001/ws")
    full = with_peer(base, PEER)
    assert full == Multiaddr(f"/ip4/1.2.3.4/tcp/4001/ws/p2p/{PEER}")
    assert with_peer(full, PEER) == full
    assert tcp_endpoint(full).peer_id == PEER
    with pytest.raises(AddressError):
        with_peer(Multiaddr("/ip4/1.2.3.4/udp/1"), PEER)


def test_with_peer_never_returns_another_peers_address() -> None:
    full = with_peer(Multiaddr("/ip4/1.2.3.4/tcp/4001"), PEER)
    try:
        result = with_peer(full, OTHER)
    except AddressError:
        return  # refusing the contradiction is as good as replacing it
    assert result.peer_id() == OTHER


def test_without_peer() -> None:
    base = Multiaddr("/ip4/1.2.3.4/tcp/4001/ws")
    assert without_peer(with_peer(base, PEER)) == base
    assert without_peer(base) is base
    with pytest.raises(AddressError):
        without_peer(Multiaddr(f"/ip4/1.2.3.4/udp/1/p2p/{PEER}"))


@pytest.mark.parametrize(
    ("text", "unspecified"),
    [
        ("/ip4/0.0.0.0/tcp/1", True),
        ("/ip6/::/tcp/1/ws", True),
        ("/ip4/127.0.0.1/tcp/1", False),
        ("/ip6/::1/tcp/1", False),
        ("/dns4/0.0.0.0.example/tcp/1", False),
    ],
)
def test_is_unspecified(text: str, unspecified: bool) -> None:
    assert is_unspecified(Multiaddr(text)) is unspecified


_IPS = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@given(_IPS, st.integers(0, 65535), st.sampled_from([(), ("ws",)]), st.booleans())
def test_endpoints_survive_every_helper(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, layers: tuple[str, ...], peer: bool
) -> None:
    addr = from_sockaddr((str(ip), port), layers)
    if peer:
        addr = with_peer(addr, PEER)
    ep = tcp_endpoint(addr)
    assert ipaddress.ip_address(ep.host) == ip
    assert (ep.port, ep.peer_id, ep.layers) == (port, PEER if peer else None, layers)
    assert tcp_endpoint(without_peer(addr)).peer_id is None
    moved = with_host(addr, "10.9.8.7")
    assert tcp_endpoint(moved) == TcpEndpoint("10.9.8.7", port, None, layers)
    assert is_unspecified(addr) == ip.is_unspecified
