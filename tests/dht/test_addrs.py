"""Multiaddrs from the network (physarum.dht.addrs): checking them, bounding how many a peer may
place, and reading the IP address out of one."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from physarum.dht.addrs import (
    MAX_ADDR_COMPONENTS,
    MAX_ADDR_SIZE,
    MAX_ADDRS_PER_PEER,
    addr_allowed,
    addr_footprint,
    bounded_addrs,
    ip_address_of,
    parse_multiaddr_bytes,
    parse_multiaddr_text,
)
from physarum.errors import DecodeError
from physarum.overlay import varint
from physarum.overlay.multiaddr import Multiaddr


def _addr(i: int) -> Multiaddr:
    return Multiaddr(f"/ip4/10.0.{i // 256 % 256}.{i % 256}/tcp/4001")


def _dns_addr(name_len: int, tcp_components: int = 1) -> Multiaddr:
    """``/dns4/aaa.../tcp/4001...``: its binary size is ``name_len + varint + 1 + 3 * tcp_components``."""
    return Multiaddr(b"\x36" + varint.encode(name_len) + b"a" * name_len + b"\x06\x0f\xa1" * tcp_components)


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


@pytest.mark.parametrize("value", [None, 4001, ["/ip4/1.2.3.4/tcp/1"]])
def test_values_of_the_wrong_type_are_decode_errors(value: object) -> None:
    # A peer's JSON or protobuf can put anything where an address belongs.
    with pytest.raises(DecodeError):
        parse_multiaddr_bytes(value)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        parse_multiaddr_text(value)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        parse_multiaddr_text(b"/ip4/1.2.3.4/tcp/1")  # type: ignore[arg-type]


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
    # only the first component counts: an IP further in is not where the address points
    assert ip_address_of(parse_multiaddr_text("/dns4/example.com/tcp/1/ip4/1.2.3.4")) is None


@given(st.ip_addresses(v=4), st.integers(0, 65535))
def test_ip_address_of_reads_any_ip4_back(ip: ipaddress.IPv4Address, port: int) -> None:
    assert ip_address_of(Multiaddr(f"/ip4/{ip}/tcp/{port}")) == ip


# ---- bounds on what a peer may place ----


def test_the_bounds_are_the_documented_ones() -> None:
    assert (MAX_ADDRS_PER_PEER, MAX_ADDR_SIZE, MAX_ADDR_COMPONENTS) == (32, 256, 16)


def test_addr_allowed_at_its_edges() -> None:
    at_size, over_size = _dns_addr(250), _dns_addr(251)
    assert len(at_size.to_bytes()) == MAX_ADDR_SIZE and addr_allowed(at_size)
    assert len(over_size.to_bytes()) == MAX_ADDR_SIZE + 1 and not addr_allowed(over_size)
    at_count, over_count = _dns_addr(4, MAX_ADDR_COMPONENTS - 1), _dns_addr(4, MAX_ADDR_COMPONENTS)
    assert len(at_count.protocols()) == MAX_ADDR_COMPONENTS and addr_allowed(at_count)
    assert len(over_count.protocols()) == MAX_ADDR_COMPONENTS + 1 and not addr_allowed(over_count)


def test_the_footprint_grows_with_length_and_components() -> None:
    small = addr_footprint(_addr(1))
    assert addr_footprint(_dns_addr(200)) > addr_footprint(_dns_addr(20)) > 0
    assert addr_footprint(_dns_addr(4, 10)) > addr_footprint(_dns_addr(4, 1))
    # what the bounds let one peer place stays small: 32 of the largest allowed addresses
    assert MAX_ADDRS_PER_PEER * addr_footprint(_dns_addr(250)) < 64 * 1024
    assert small < 1024


def test_bounded_addrs_keeps_the_first_distinct_allowed_ones_in_order() -> None:
    a, b, c = _addr(1), _addr(2), _addr(3)
    big = _dns_addr(251)
    assert bounded_addrs([a, b, a, big, c, b], limit=3) == (a, b, c)
    assert bounded_addrs([c, a, b], limit=2) == (c, a)
    assert bounded_addrs([a, b], limit=0) == () and bounded_addrs([a], limit=-1) == ()
    assert bounded_addrs([]) == ()
    assert len(bounded_addrs(_addr(i) for i in range(1000))) == MAX_ADDRS_PER_PEER


def test_bounded_addrs_stops_reading_once_it_has_enough() -> None:
    read = 0

    def flood() -> Iterator[Multiaddr]:
        nonlocal read
        for i in range(10_000):
            read += 1
            yield _addr(i)

    assert len(bounded_addrs(flood(), limit=5)) == 5
    assert read == 5


@given(st.lists(st.integers(0, 40), max_size=80), st.integers(0, 40))
def test_bounded_addrs_properties(ids: list[int], limit: int) -> None:
    addrs = [_addr(i) if i < 35 else _dns_addr(240 + i) for i in ids]  # 35.. are over the size bound
    kept = bounded_addrs(addrs, limit)
    expected = list(dict.fromkeys(a for a in addrs if addr_allowed(a)))[: max(limit, 0)]
    assert list(kept) == expected
