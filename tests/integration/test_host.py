"""Two real hosts over loopback TCP: connect, identify, ping, disconnect, handlers, addressing errors."""

from __future__ import annotations

import logging
import os
import socket
from contextlib import AsyncExitStack
from functools import partial
from ipaddress import ip_address

import pytest
import trio

from physarum.errors import (
    DialError,
    LimitError,
    NegotiationError,
    NotRunningError,
    PeerIdMismatchError,
    SelfDialError,
)
from physarum.overlay import addr as addrs_
from physarum.overlay import identify, netif, ping, yamux
from physarum.overlay.addr import AddressError
from physarum.overlay.envelope import open_peer_record
from physarum.overlay.host import INBOUND, OUTBOUND, Host, open_host
from physarum.overlay.identity import KeyPair
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.netif import InterfaceAddress
from physarum.overlay.resources import ResourceLimits
from physarum.overlay.yamux import YamuxStream
from physarum.psk import KeyFileError, KeyFileReason, PskMismatchError, generate_psk
from tests.integration._util import (
    ECHO,
    LOOPBACK,
    Recorder,
    connect_pair,
    connection_count,
    count_fds,
    echo_handler,
    echo_round_trip,
    host_pair,
    ping_on,
    port_of,
    read_until_closed,
    receive_exactly,
    wait_until,
)


@pytest.mark.parametrize("with_psk", [True, False], ids=["psk", "no-psk"])
async def test_connect_identify_ping_disconnect(with_psk: bool) -> None:
    psk = generate_psk() if with_psk else None
    async with host_pair(psk=psk) as (a, b):
        rec_a, rec_b = Recorder(a), Recorder(b)
        conn_a = await a.connect(b.addrs[0])
        assert conn_a.peer_id == b.peer_id
        assert conn_a.direction == OUTBOUND
        await rec_a.wait_connected()
        await rec_b.wait_connected()
        assert rec_a.connected == [conn_a]
        assert [c.peer_id for c in rec_a.connected] == [b.peer_id]
        assert [c.peer_id for c in rec_b.connected] == [a.peer_id]
        conn_b = rec_b.connected[0]
        assert conn_b.direction == INBOUND
        assert a.connected_peers() == [b.peer_id] and b.connected_peers() == [a.peer_id]

        with trio.fail_after(5):
            await conn_a.identified.wait()
            await conn_b.identified.wait()
        for me, other in ((a, b), (b, a)):
            info = me.peerstore.get(other.peer_id)
            assert info is not None
            assert {ping.PROTOCOL_ID, identify.PROTOCOL_ID} <= set(info.protocols)
            assert info.agent_version is not None and info.agent_version.startswith("physarum/")
            assert info.protocol_version == identify.PROTOCOL_VERSION
            assert info.public_key is not None
            assert info.public_key == other.key_pair.public_key
            assert info.public_key.peer_id() == other.peer_id
            assert other.listen_addrs[0] in info.addrs
            assert info.observed_addr is not None and str(info.observed_addr).startswith(
                "/ip4/127.0.0.1/tcp/"
            )

        rtts = await a.ping(b.peer_id, count=5)
        assert len(rtts) == 5 and all(0 < r < 1 for r in rtts)
        rtts = await b.ping(a.peer_id, count=3)
        assert len(rtts) == 3 and all(0 < r < 1 for r in rtts)
        assert connection_count(a) == connection_count(b) == 1  # pings reused the connection

        await a.disconnect(b.peer_id)
        await rec_a.wait_disconnected()
        await rec_b.wait_disconnected()
        assert rec_a.disconnected == [conn_a] and rec_b.disconnected == [conn_b]
        assert conn_a.is_closed and conn_b.is_closed
        await wait_until(lambda: not a.connections and not b.connections, what="connections forgotten")
        assert a.connected_peers() == [] and b.connected_peers() == []
        # The peer store remembers where b is: dialing by peer id works again.
        conn = await a.connect(b.peer_id)
        assert conn is not conn_a and not conn.is_closed
        assert len(await a.ping(b.peer_id)) == 1


async def test_connect_reuses_an_open_connection() -> None:
    async with host_pair() as (a, b):
        conn = await a.connect(b.addrs[0])
        assert await a.connect(b.addrs[0]) is conn
        assert await a.connect(b.peer_id) is conn
        assert connection_count(a) == 1


async def test_dialing_another_peer_id_raises_peer_id_mismatch() -> None:
    async with host_pair() as (a, b):
        rec_b = Recorder(b)
        impostor = KeyPair.generate().peer_id
        target = f"/ip4/127.0.0.1/tcp/{port_of(b)}/p2p/{impostor}"
        with trio.fail_after(2), pytest.raises(DialError) as info:
            await a.connect(target)
        errors = list(info.value.errors.values())
        assert any(isinstance(e, PeerIdMismatchError) for e in errors), errors
        mismatch = next(e for e in errors if isinstance(e, PeerIdMismatchError))
        assert mismatch.expected == impostor and mismatch.actual == b.peer_id
        assert info.value.peer_id == impostor
        assert not a.connections and not b.connections and not rec_b.connected
        # The real id at the same address works.
        conn = await a.connect(f"/ip4/127.0.0.1/tcp/{port_of(b)}/p2p/{b.peer_id}")
        assert conn.peer_id == b.peer_id


async def test_dialing_ourselves_is_refused() -> None:
    async with open_host() as a:
        rec = Recorder(a)
        with trio.fail_after(2), pytest.raises(DialError) as info:
            await a.connect(a.addrs[0])  # /p2p/<our own id>
        assert all(isinstance(e, SelfDialError) for e in info.value.errors.values()), info.value.errors
        with trio.fail_after(2), pytest.raises(DialError) as info:
            await a.connect(a.peer_id)
        assert all(isinstance(e, SelfDialError) for e in info.value.errors.values()), info.value.errors
        # Without /p2p the dial reaches our own listener; the handshake proves it is us.
        with trio.fail_after(2), pytest.raises(DialError) as info:
            await a.connect(a.listen_addrs[0])
        assert any(isinstance(e, SelfDialError) for e in info.value.errors.values()), info.value.errors
        assert not a.connections and not rec.connected


async def test_custom_protocol_echo_and_negotiation() -> None:
    async with host_pair() as (a, b):
        b.set_handler(ECHO, echo_handler)
        assert ECHO in b.protocols
        stream = await a.new_stream(b.addrs[0], [ECHO])
        assert stream.protocol == ECHO
        for size in (1, 1000, 300_000):
            await echo_round_trip(stream, os.urandom(size))
        await stream.send_eof()
        assert await stream.receive_some() == b""
        await stream.aclose()

        conn = a.connection(b.peer_id)
        assert conn is not None
        with trio.fail_after(5), pytest.raises(NegotiationError):
            await a.new_stream(b.peer_id, ["/physarum-test/nope/1.0.0"])
        # The connection is still the same and still works.
        assert not conn.is_closed and a.connection(b.peer_id) is conn
        assert len(await a.ping(b.peer_id)) == 1
        # The first protocol the peer accepts wins.
        stream = await a.new_stream(b.peer_id, ["/physarum-test/nope/1.0.0", ECHO])
        assert stream.protocol == ECHO
        await echo_round_trip(stream)
        await stream.aclose()
        # A removed handler is no longer negotiated.
        b.remove_handler(ECHO)
        with trio.fail_after(5), pytest.raises(NegotiationError):
            await a.new_stream(b.peer_id, [ECHO])
        assert connection_count(a) == 1 and not conn.is_closed


async def test_failing_handler_resets_only_its_stream() -> None:
    async with host_pair() as (a, b):
        started = trio.Event()

        async def boom(stream: YamuxStream) -> None:
            await receive_exactly(stream, 3)
            started.set()
            raise RuntimeError("handler bug")

        b.set_handler(ECHO, echo_handler)
        b.set_handler("/physarum-test/boom/1.0.0", boom)
        recs = [Recorder(a), Recorder(b)]
        conn_a = await a.connect(b.addrs[0])
        echo1 = await conn_a.open_stream([ECHO])
        await echo_round_trip(echo1)

        bad = await conn_a.open_stream(["/physarum-test/boom/1.0.0"])
        await bad.send_all(b"abc")
        with trio.fail_after(5):
            await started.wait()
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            while await bad.receive_some():
                pass
        with pytest.raises(trio.BrokenResourceError):
            await bad.send_all(b"more")
        await bad.aclose()

        # Everything else on the connection is untouched.
        assert not conn_a.is_closed and a.connection(b.peer_id) is conn_a
        await echo_round_trip(echo1)
        echo2 = await conn_a.open_stream([ECHO])
        await echo_round_trip(echo2)
        assert await ping_on(conn_a) > 0
        assert len(await b.ping(a.peer_id)) == 1
        assert all(r.disconnected == [] for r in recs)
        assert connection_count(a) == connection_count(b) == 1
        await echo1.aclose()
        await echo2.aclose()


async def test_bad_addresses_give_clear_errors() -> None:
    async with open_host() as a:
        with pytest.raises(AddressError):
            await a.connect("not a multiaddr")
        with pytest.raises(AddressError) as info:
            await a.connect("/ip4/127.0.0.1/udp/1")
        assert "tcp" in str(info.value)
        with pytest.raises(AddressError):
            await a.listen("/ip4/127.0.0.1/udp/0")
        with pytest.raises(AddressError):
            await a.connect(f"/ip4/127.0.0.1/tcp/1/p2p/{'x' * 20}")

        # A port nobody listens on: refused at once.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        with trio.fail_after(2), pytest.raises(DialError) as dial:
            await a.connect(f"/ip4/127.0.0.1/tcp/{closed_port}")
        assert any(isinstance(e, OSError) for e in dial.value.errors.values()), dial.value.errors

        # A peer id with no known addresses.
        with pytest.raises(DialError):
            await a.connect(KeyPair.generate().peer_id)

        # Binding a port in use.
        with pytest.raises(OSError):
            await a.listen(a.listen_addrs[0])
        assert len(a.listen_addrs) == 1


def test_short_psk_is_rejected() -> None:
    with pytest.raises(ValueError):
        Host(psk=b"short")
    with pytest.raises(KeyFileError) as info:
        Host(psk=bytes(33))
    assert info.value.reason == KeyFileReason.WRONG_LENGTH


async def test_open_host_on_a_port_in_use_raises_oserror() -> None:
    async with open_host() as a:
        with pytest.raises(OSError):
            async with open_host(listen=[a.listen_addrs[0]]):
                pass
        with pytest.raises(AddressError):
            async with open_host(listen=["/ip4/127.0.0.1/udp/0"]):
                pass
        # Host.run itself, started directly in a nursery.
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError):
                await nursery.start(Host(listen=[a.listen_addrs[0]]).run)
            with pytest.raises(AddressError):
                await nursery.start(Host(listen=["/ip4/127.0.0.1/udp/0"]).run)
        # A host that bound its first address but not its second releases the first.
        fds = count_fds()
        for _ in range(3):
            with pytest.raises(OSError):
                async with open_host(listen=[LOOPBACK, a.listen_addrs[0]]):
                    pass
        assert count_fds() <= fds


async def test_host_not_running_raises() -> None:
    host = Host()
    with pytest.raises(RuntimeError):  # NotRunningError is one, for code written before it existed
        await host.connect(LOOPBACK)
    with pytest.raises(NotRunningError):
        await host.listen(LOOPBACK)


async def test_simultaneous_connections_and_aclose() -> None:
    async with open_host() as b:
        rec_b = Recorder(b)
        a = Host(listen=[LOOPBACK])
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            rec_a = Recorder(a)
            results = {}

            async def dial(me: Host, other: Host) -> None:
                results[me] = await me.connect(other.addrs[0])

            async with trio.open_nursery() as dials:
                dials.start_soon(dial, a, b)
                dials.start_soon(dial, b, a)
            await wait_until(
                lambda: connection_count(a) == 2 and connection_count(b) == 2, what="both connections"
            )
            for me, other in ((a, b), (b, a)):
                conns = me.connections[other.peer_id]
                assert sorted(c.direction for c in conns) == [INBOUND, OUTBOUND]
                assert results[me] in conns
                for conn in conns:
                    assert await ping_on(conn) > 0
            assert len(rec_a.connected) == len(rec_b.connected) == 2

            await a.aclose()
            await rec_b.wait_disconnected(2)
            await rec_a.wait_disconnected(2)
            await wait_until(lambda: not b.connections, what="b forgets a's connections")
            assert not a.connections
            assert all(c.is_closed for c in rec_b.connected)
            # a no longer listens.
            with trio.fail_after(2), pytest.raises(DialError):
                await b.connect(a.listen_addrs[0])
            nursery.cancel_scope.cancel()


async def test_aclose_with_several_peers_and_streams() -> None:
    async with open_host() as b, open_host() as c:
        b.set_handler(ECHO, echo_handler)
        c.set_handler(ECHO, echo_handler)
        recs = [Recorder(b), Recorder(c)]
        async with open_host() as a:
            for other in (b, c):
                await a.connect(other.addrs[0])
                for _ in range(2):
                    await a.connect(other.listen_addrs[0])  # more connections to the same peer
            streams = [await a.new_stream(p, [ECHO]) for p in (b.peer_id, c.peer_id)]
            for s in streams:
                await echo_round_trip(s)
            assert connection_count(a) == 6
            await a.aclose()
            for s in streams:
                with pytest.raises((trio.BrokenResourceError, trio.ClosedResourceError)):
                    await echo_round_trip(s)
            # Still inside a's block: aclose alone closed everything.
            for rec in recs:
                await rec.wait_disconnected(3)
                # Every connection was closed gracefully: the peer got a GoAway before the end.
                assert [c.session.go_away_received for c in rec.disconnected] == [True] * 3
            await wait_until(
                lambda: not b.connections and not c.connections, what="peers forget the closed host"
            )
            assert not a.connections


async def test_aclose_says_goaway_to_every_peer_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Peers whose GoAway takes the whole GO_AWAY_TIMEOUT (they do not read): closed one by one,
    # five of them would take 5 s; in parallel, under one deadline, about one.
    async with open_host() as b:
        async with open_host() as a:
            for _ in range(5):
                await a.connect(b.listen_addrs[0])
            assert connection_count(a) == 5
            go_away = yamux.YamuxSession._go_away

            async def slow_go_away(session: yamux.YamuxSession, code: int) -> None:
                await trio.sleep(yamux.GO_AWAY_TIMEOUT * 0.9)
                await go_away(session, code)

            monkeypatch.setattr(yamux.YamuxSession, "_go_away", slow_go_away)
            started = trio.current_time()
            await a.aclose()
            assert trio.current_time() - started < 3 * yamux.GO_AWAY_TIMEOUT
            assert all(c.is_closed for conns in a.connections.values() for c in conns)
        await wait_until(lambda: not b.connections, what="b sees every connection closed")


@pytest.mark.parametrize("with_psk", [False, True])
async def test_tls_is_negotiated_when_a_peer_has_no_noise(with_psk: bool) -> None:
    psk = generate_psk() if with_psk else None
    async with open_host(psk=psk, security=["/tls/1.0.0"]) as tls_only, open_host(psk=psk) as both:
        with trio.fail_after(15):
            conn = await both.connect(tls_only.addrs[0])  # proposes /noise, hears "na", then /tls/1.0.0
            assert type(conn.session.transport).__name__ == "TlsStream"
            assert len(await both.ping(tls_only.peer_id, count=3)) == 3
            await conn.identified.wait()
            assert conn.identify_info is not None and ping.PROTOCOL_ID in conn.identify_info.protocols
            back = await tls_only.new_stream(both.peer_id, [ping.PROTOCOL_ID])  # the same connection
            await back.aclose()
        async with open_host(psk=psk, security=["/noise"]) as noise_only:
            with trio.fail_after(15), pytest.raises(DialError) as info:
                await noise_only.connect(tls_only.addrs[0], timeout=10)
            assert any(isinstance(e, NegotiationError) for e in info.value.errors.values())


async def test_limit_error_is_not_wrapped_in_dial_error() -> None:
    async with open_host(limits=ResourceLimits(max_connections=1)) as a, open_host() as b, open_host() as c:
        a.conn_manager.protect(b.peer_id, "test")  # no victim to make room with
        await a.connect(b.addrs[0])
        with pytest.raises(LimitError) as info:
            await a.connect(c.addrs[0])
        assert info.value.limit == 1


async def test_multiaddr_objects_are_accepted() -> None:
    async with host_pair() as (a, b):
        conn = await a.connect(Multiaddr(str(b.addrs[0])))
        assert conn.peer_id == b.peer_id


@pytest.mark.parametrize(
    ("with_psk", "sends"), [(True, b""), (False, b""), (True, b"n" * 24)], ids=["psk", "no-psk", "psk-nonce"]
)
async def test_dial_to_a_silent_server_respects_the_timeout(with_psk: bool, sends: bytes) -> None:
    async with open_host(psk=generate_psk() if with_psk else None) as a, trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        hung_up = trio.Event()

        async def silent(stream: trio.SocketStream) -> None:
            async with stream:
                await stream.send_all(sends)
                await read_until_closed(stream)  # read, never answer
            hung_up.set()

        await nursery.start(trio.serve_listeners, silent, listeners)
        port = listeners[0].socket.getsockname()[1]
        start = trio.current_time()
        with trio.fail_after(2), pytest.raises(DialError) as info:
            await a.connect(f"/ip4/127.0.0.1/tcp/{port}", timeout=0.3)
        assert trio.current_time() - start >= 0.3
        # With a key, a peer that sends its nonce and then never a header we can decode is
        # reported as outside the private network (what a peer with another key looks like); one
        # that sends nothing at all is stuck, whatever its key.
        expected = PskMismatchError if sends else TimeoutError
        errors = list(info.value.errors.values())
        assert any(isinstance(e, expected) for e in errors), errors
        assert not any(isinstance(e, PskMismatchError) for e in errors) or sends, errors
        with trio.fail_after(2):
            await hung_up.wait()  # the dialer closed its half-made connection
        assert not a.connections
        nursery.cancel_scope.cancel()


# -- advertised addresses ----------------------------------------------------------------------------

FAKE_INTERFACES = [
    InterfaceAddress("lo", ip_address("127.0.0.1")),
    InterfaceAddress("eth0", ip_address("10.1.2.3")),
    InterfaceAddress("eth0", ip_address("10.1.2.4")),  # a second address on eth0
    InterfaceAddress("eth1", ip_address("169.254.7.7")),
    InterfaceAddress("lo", ip_address("::1")),
    InterfaceAddress("eth0", ip_address("fe80::1")),
    InterfaceAddress("eth0", ip_address("fd00:1::5")),
]


def fake_interfaces(monkeypatch: pytest.MonkeyPatch, addresses: list[InterfaceAddress]) -> list[int | None]:
    """Make netif report ``addresses``; return the list of families it is asked for."""
    calls: list[int | None] = []

    def listing(family: int | None = None) -> list[InterfaceAddress]:
        calls.append(family)
        return [a for a in addresses if family is None or a.family == family]

    monkeypatch.setattr(netif, "interface_addresses", listing)
    return calls


def advertised(host: Host) -> list[str]:
    return [str(a) for a in host.advertised_addrs()]


def test_wildcard_binds_advertise_interface_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_interfaces(monkeypatch, FAKE_INTERFACES)
    host = Host()
    host.listen_addrs = [
        Multiaddr("/ip4/0.0.0.0/tcp/4001"),
        Multiaddr("/ip6/::/tcp/4002"),
        Multiaddr("/ip4/127.0.0.1/tcp/4003"),  # loopback bound explicitly: advertised as it is
    ]
    expected = [
        "/ip4/10.1.2.3/tcp/4001",
        "/ip4/10.1.2.4/tcp/4001",
        "/ip6/fd00:1::5/tcp/4002",  # not fe80::1: a link-local address needs a zone
        "/ip4/127.0.0.1/tcp/4003",
    ]
    assert advertised(host) == expected
    assert [str(a) for a in host.addrs] == [f"{a}/p2p/{host.peer_id}" for a in expected]


def test_loopback_is_advertised_only_when_nothing_else_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host()
    host.listen_addrs = [Multiaddr("/ip4/0.0.0.0/tcp/4001"), Multiaddr("/ip6/::/tcp/4002")]
    lo4, lo6, ll6 = (
        InterfaceAddress(n, ip_address(ip))
        for n, ip in [("lo", "127.0.0.1"), ("lo", "::1"), ("eth0", "fe80::1")]
    )
    fake_interfaces(monkeypatch, [lo4, lo6, ll6])
    assert advertised(host) == ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4002"]
    # IPv4 link-local (no zone needed) beats loopback when it is all there is.
    fake_interfaces(monkeypatch, [lo4, InterfaceAddress("eth0", ip_address("169.254.7.7")), lo6, ll6])
    assert advertised(host) == ["/ip4/169.254.7.7/tcp/4001", "/ip6/::1/tcp/4002"]


async def test_interface_list_is_cached_briefly(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    calls = fake_interfaces(monkeypatch, FAKE_INTERFACES)
    host = Host(address_cache_ttl=5.0)
    host.listen_addrs = [Multiaddr("/ip4/0.0.0.0/tcp/4001")]
    for _ in range(50):
        host.advertised_addrs()
    assert calls == [socket.AF_INET]
    await trio.sleep(5.0)  # virtual time
    host.advertised_addrs()
    assert calls == [socket.AF_INET, socket.AF_INET]


def test_bad_announce_addresses_are_refused() -> None:
    other = KeyPair.generate().peer_id
    for bad in [
        "not a multiaddr",
        "/ip4/203.0.113.7/udp/4001",
        "/ip4/0.0.0.0/tcp/4001",
        "/ip4/203.0.113.7/tcp/0",
        f"/ip4/203.0.113.7/tcp/4001/p2p/{other}",
    ]:
        with pytest.raises(AddressError):
            Host(announce=[bad])


async def test_announce_replaces_the_advertised_addresses() -> None:
    # 203.0.113.0/24 is TEST-NET-3: announced, never dialed.
    announced = ["/ip4/203.0.113.7/tcp/4001", "/dns4/node.example.org/tcp/4001"]
    key = KeyPair.generate()
    async with (
        open_host(key, announce=[announced[0], f"{announced[1]}/p2p/{key.peer_id}"]) as a,
        open_host() as b,
    ):
        assert advertised(a) == announced
        assert [str(x) for x in a.addrs] == [f"{x}/p2p/{a.peer_id}" for x in announced]
        assert [str(x) for x in a.announce] == announced
        conn = await b.connect(addrs_.with_peer(a.listen_addrs[0], a.peer_id))
        with trio.fail_after(5):
            await conn.identified.wait()
        assert conn.identify_info is not None
        assert [str(x) for x in conn.identify_info.listen_addrs] == announced
        assert conn.identify_info.signed_peer_record is not None
        assert [str(x) for x in open_peer_record(conn.identify_info.signed_peer_record).addrs] == announced

        # Changed while connected: b hears of it (identify push).
        a.set_announce(["/ip4/203.0.113.8/tcp/4001"])

        def b_sees(addrs: list[str]) -> bool:
            info = conn.identify_info
            return info is not None and [str(x) for x in info.listen_addrs] == addrs

        await wait_until(
            lambda: b_sees(["/ip4/203.0.113.8/tcp/4001"]), what="b hears the new announce address"
        )
        a.set_announce([])
        assert a.advertised_addrs() == a.listen_addrs
        await wait_until(lambda: b_sees([str(a.listen_addrs[0])]), what="b hears a's listen address again")


# -- observed addresses ------------------------------------------------------------------------------


def _identified_by(host: Host, peer: Host) -> bool:
    conn = host.connection(peer.peer_id)
    return conn is not None and conn.identify_info is not None


async def test_observed_addresses_need_several_peers() -> None:
    async with open_host() as a, AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(open_host(listen=())) for _ in range(4)]
        for i, peer in enumerate(peers):
            await peer.connect(a.addrs[0])
            await wait_until(partial(_identified_by, a, peer), what="a identified the dialer")
            assert a.observed_addrs() == (
                [] if i < identify.OBSERVED_ADDR_THRESHOLD - 1 else [a.listen_addrs[0]]
            )
        assert identify.OBSERVED_ADDR_THRESHOLD == 4
        assert a.observed_addrs(min_observers=5) == []
        assert a.observed_addrs(min_observers=1) == [a.listen_addrs[0]]
        # A connection a dialed: the peer sees a's ephemeral port, which does not count.
        async with open_host() as c:
            await a.connect(c.addrs[0])
            await wait_until(partial(_identified_by, a, c), what="a identified c")
            assert a.observed_addrs(min_observers=1) == [a.listen_addrs[0]]
        # A peer that leaves takes its report with it.
        await peers[0].disconnect(a.peer_id)
        await wait_until(lambda: a.observed_addrs() == [], what="the report is forgotten")
        assert a.observed_addrs(min_observers=3) == [a.listen_addrs[0]]


# -- identify push -----------------------------------------------------------------------------------


def _protocols_of(host: Host, peer: Host) -> list[str]:
    info = host.peerstore.get(peer.peer_id)
    return info.protocols if info is not None else []


async def test_changes_are_pushed_to_connected_peers() -> None:
    async with host_pair() as (a, b):
        await connect_pair(a, b)
        assert ECHO not in _protocols_of(b, a)
        a.set_handler(ECHO, echo_handler)
        await wait_until(lambda: ECHO in _protocols_of(b, a), what="b learns a's new protocol")
        # b can use it at once, on the same connection.
        stream = await b.new_stream(a.peer_id, [ECHO])
        await echo_round_trip(stream)
        await stream.aclose()
        a.remove_handler(ECHO)
        await wait_until(lambda: ECHO not in _protocols_of(b, a), what="b hears the protocol is gone")
        # A new listen address too.
        new = (await a.listen(LOOPBACK))[0]
        await wait_until(lambda: new in b.peerstore.addrs(a.peer_id), what="b learns a's new address")
        assert connection_count(a) == connection_count(b) == 1


async def test_a_burst_of_changes_is_one_push() -> None:
    async with host_pair() as (a, b):
        await connect_pair(a, b)
        pushes: list[object] = []
        b.on_identify.append(pushes.append)
        names = [f"/physarum-test/burst/{i}/1.0.0" for i in range(5)]
        for name in names:
            a.set_handler(name, echo_handler)
        await wait_until(lambda: set(names) <= set(_protocols_of(b, a)), what="b learns all five")
        assert len(pushes) == 1
        assert not a.identify_service._push_wanted.is_set()  # and no other push is on its way


# -- exceptions come out unwrapped -------------------------------------------------------------------


async def test_open_host_lets_the_blocks_exception_out_unwrapped() -> None:
    with pytest.raises(ValueError, match="from the block") as info:
        async with open_host():
            raise ValueError("from the block")
    assert type(info.value) is ValueError
    with pytest.raises(KeyError) as key_info:
        async with open_host() as a, open_host() as b:
            await a.connect(b.addrs[0])
            raise KeyError("nested")
    assert type(key_info.value) is KeyError
    with pytest.raises(AddressError):
        async with open_host(listen=["/ip4/127.0.0.1/udp/0"]):
            pass
    with pytest.raises(AddressError):
        async with open_host(announce=["/ip4/203.0.113.7/udp/1"]):
            pass
    with pytest.raises(KeyFileError):
        async with open_host(psk=b"short"):
            pass


async def _boom() -> None:
    raise ValueError("internal failure")


async def test_a_failing_host_raises_its_error_unwrapped() -> None:
    with trio.fail_after(5), pytest.raises(ValueError, match="internal failure"):
        async with open_host() as host:
            assert host._nursery is not None
            host._nursery.start_soon(_boom)  # stands in for a bug in one of the host's tasks
            await trio.sleep_forever()
    host = Host(listen=[LOOPBACK])
    host.identify_service._push_loop = _boom  # type: ignore[method-assign]
    with trio.fail_after(5), pytest.raises(ValueError, match="internal failure"):
        await host.run()


# -- log lines ---------------------------------------------------------------------------------------


async def test_host_log_lines_are_short(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="physarum")
    async with open_host(psk=generate_psk()) as a, open_host(psk=generate_psk()) as b, open_host() as c:
        # Another key, no key, and plain garbage: each makes b close the connection and say why.
        with trio.fail_after(15), pytest.raises(DialError):
            await a.connect(b.addrs[0], timeout=5)
        with trio.fail_after(15), pytest.raises(DialError):
            await c.connect(b.addrs[0], timeout=5)
        tcp = await trio.open_tcp_stream("127.0.0.1", port_of(b))
        await tcp.send_all(b"GET / HTTP/1.1\r\n\r\n" * 10)
        await read_until_closed(tcp)
        await tcp.aclose()

        def closing() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage().startswith("closing connection from")]

        await wait_until(lambda: len(closing()) >= 3, what="three closed connections logged")
        for record in closing():
            message = record.getMessage()
            assert message.count("127.0.0.1") == 1, message
            assert "Error" in message, message
        # A connection that works: connected, identified, disconnected lines.
        async with open_host() as d:
            conn = await d.connect(c.addrs[0])
            with trio.fail_after(5):
                await conn.identified.wait()
            await d.disconnect(c.peer_id)
            await wait_until(lambda: not c.connections, what="c forgets d")
    host_records = [r for r in caplog.records if r.name.startswith("physarum.overlay")]
    assert host_records
    for record in host_records:
        assert len(record.getMessage()) < 200, record.getMessage()
