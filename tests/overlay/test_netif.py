"""netif: this machine's interface addresses, the advertising rule, the cache; ObservedAddrs."""

from __future__ import annotations

import ipaddress
import socket

from physarum.overlay import netif
from physarum.overlay.addr import Multiaddr
from physarum.overlay.identify import ObservedAddrs
from physarum.overlay.identity import KeyPair
from physarum.overlay.netif import InterfaceAddress, InterfaceCache, select_advertised


def ip(text: str) -> netif.IPAddress:
    return ipaddress.ip_address(text)


def test_this_machine_has_loopback_and_no_duplicates() -> None:
    found = netif.interface_addresses()
    assert ip("127.0.0.1") in [a.ip for a in found]
    assert len(found) == len(set(found))
    for family in (socket.AF_INET, socket.AF_INET6):
        assert all(a.family == family for a in netif.interface_addresses(family))


def test_select_advertised_prefers_routable_addresses() -> None:
    lo4, lo6 = ip("127.0.0.1"), ip("::1")
    assert select_advertised([lo4, ip("10.0.0.5"), ip("192.168.1.2"), ip("10.0.0.5")]) == [
        ip("10.0.0.5"),
        ip("192.168.1.2"),
    ]
    assert select_advertised([lo6, ip("fe80::1"), ip("fd00::7"), ip("2001:db8::1")]) == [
        ip("fd00::7"),
        ip("2001:db8::1"),
    ]
    # IPv6 link-local never (it needs a zone); loopback when nothing else exists.
    assert select_advertised([lo6, ip("fe80::1")]) == [lo6]
    assert select_advertised([lo4, ip("169.254.3.4")]) == [ip("169.254.3.4")]
    assert select_advertised([lo4]) == [lo4]
    assert select_advertised([ip("0.0.0.0"), ip("224.0.0.1")]) == []
    assert select_advertised([InterfaceAddress("eth0", ip("10.0.0.5")), lo4]) == [ip("10.0.0.5")]


def test_interface_cache_reuses_a_listing_for_max_age() -> None:
    calls: list[int] = []

    def source(family: int) -> list[InterfaceAddress]:
        calls.append(family)
        return [InterfaceAddress("eth0", ip("10.0.0.5"))]

    cache = InterfaceCache(max_age=5.0, source=source)
    assert cache.get(socket.AF_INET, now=100.0) == [InterfaceAddress("eth0", ip("10.0.0.5"))]
    cache.get(socket.AF_INET, now=104.9)
    assert calls == [socket.AF_INET]
    cache.get(socket.AF_INET6, now=104.9)
    assert calls == [socket.AF_INET, socket.AF_INET6]
    cache.get(socket.AF_INET, now=105.0)
    cache.get(socket.AF_INET, now=99.0)  # a clock that went back: list again
    assert calls == [socket.AF_INET, socket.AF_INET6, socket.AF_INET, socket.AF_INET]
    cache.clear()
    cache.get(socket.AF_INET, now=99.0)
    assert len(calls) == 5


def _peers(n: int) -> list[object]:
    return [KeyPair.generate().peer_id for _ in range(n)]


def test_observed_addrs_count_each_peer_once() -> None:
    a, b = Multiaddr("/ip4/198.51.100.1/tcp/4001"), Multiaddr("/ip4/198.51.100.2/tcp/4001")
    p1, p2, p3 = (KeyPair.generate().peer_id for _ in range(3))
    obs = ObservedAddrs()
    for _ in range(5):
        obs.record(p1, a)  # repeating a report adds nothing
    assert obs.counts() == {a: 1}
    obs.record(p2, a)
    obs.record(p3, b)
    assert obs.counts() == {a: 2, b: 1}
    assert obs.confirmed(2) == [a]
    obs.record(p1, b)  # p1 changed its mind: its old report goes
    assert obs.counts() == {b: 2, a: 1}
    obs.forget(p2)
    assert obs.counts() == {b: 2}
    obs.forget(p2)  # twice is fine
    assert obs.confirmed() == []  # the default threshold is 4


def test_observed_addrs_are_bounded_and_keep_what_many_agree_on() -> None:
    obs = ObservedAddrs(max_addrs=4)
    popular = Multiaddr("/ip4/198.51.100.1/tcp/4001")
    for peer in (KeyPair.generate().peer_id for _ in range(4)):
        obs.record(peer, popular)
    for port in range(1000, 1100):  # a flood of one-off reports
        obs.record(KeyPair.generate().peer_id, Multiaddr(f"/ip4/198.51.100.9/tcp/{port}"))
    assert len(obs) == 4
    assert obs.confirmed(4) == [popular]
    assert Multiaddr("/ip4/198.51.100.9/tcp/1099") in obs.counts()
