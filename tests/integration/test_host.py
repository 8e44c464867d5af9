"""Two real hosts over loopback TCP: connect, identify, ping, disconnect, handlers, addressing errors."""

from __future__ import annotations

import os
import socket

import pytest
import trio
from multiaddr import Multiaddr

from physarum.errors import DialError, LimitError, NegotiationError, PeerIdMismatchError
from physarum.overlay import identify, ping
from physarum.overlay.addr import AddressError
from physarum.overlay.host import INBOUND, OUTBOUND, Host, open_host
from physarum.overlay.identity import KeyPair
from physarum.overlay.yamux import YamuxStream
from physarum.psk import PskMismatchError, generate_psk
from tests.integration._util import (
    ECHO,
    LOOPBACK,
    Recorder,
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
        with trio.fail_after(2), pytest.raises(DialError):
            await a.connect(a.addrs[0])  # /p2p/<our own id>
        with trio.fail_after(2), pytest.raises(DialError):
            await a.connect(a.peer_id)
        # Without /p2p the dial reaches our own listener; the handshake proves it is us.
        with trio.fail_after(2), pytest.raises(DialError):
            await a.connect(a.listen_addrs[0])
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
    with pytest.raises(ValueError):
        Host(psk=bytes(33))


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
    with pytest.raises(RuntimeError):
        await host.connect(LOOPBACK)


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


async def test_limit_error_is_not_wrapped_in_dial_error() -> None:
    async with open_host(max_connections=1) as a, open_host() as b, open_host() as c:
        await a.connect(b.addrs[0])
        with pytest.raises(LimitError) as info:
            await a.connect(c.addrs[0])
        assert info.value.limit == 1


async def test_multiaddr_objects_are_accepted() -> None:
    async with host_pair() as (a, b):
        conn = await a.connect(Multiaddr(str(b.addrs[0])))
        assert conn.peer_id == b.peer_id


@pytest.mark.parametrize("with_psk", [True, False], ids=["psk", "no-psk"])
async def test_dial_to_a_silent_server_respects_the_timeout(with_psk: bool) -> None:
    async with open_host(psk=generate_psk() if with_psk else None) as a, trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        hung_up = trio.Event()

        async def silent(stream: trio.SocketStream) -> None:
            async with stream:
                await read_until_closed(stream)  # read, never answer
            hung_up.set()

        await nursery.start(trio.serve_listeners, silent, listeners)
        port = listeners[0].socket.getsockname()[1]
        start = trio.current_time()
        with trio.fail_after(2), pytest.raises(DialError) as info:
            await a.connect(f"/ip4/127.0.0.1/tcp/{port}", timeout=0.3)
        assert trio.current_time() - start >= 0.3
        # With a key, a peer that takes the connection and never sends a header we can decode
        # is reported as outside the private network (what a peer with another key looks like).
        expected = PskMismatchError if with_psk else TimeoutError
        assert any(isinstance(e, expected) for e in info.value.errors.values()), info.value.errors
        with trio.fail_after(2):
            await hung_up.wait()  # the dialer closed its half-made connection
        assert not a.connections
        nursery.cancel_scope.cancel()
