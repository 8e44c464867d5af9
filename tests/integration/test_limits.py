"""Connection and stream limits, the handshake pool and its deadlines, refusal counts and log
summaries, against real loopback TCP."""

from __future__ import annotations

import contextlib
import logging
from contextlib import AsyncExitStack

import pytest
import trio
from prometheus_client import CollectorRegistry

from physarum.errors import DialError, LimitError, PhysarumError, RefusedError
from physarum.overlay import multistream, noise, ping
from physarum.overlay.host import Host, open_host
from physarum.overlay.resources import ResourceLimits
from physarum.overlay.yamux import GO_AWAY_GARBAGE_COLLECTED
from physarum.psk import NONCE_SIZE, PskMismatchError, generate_psk, protect
from tests.integration._util import (
    ECHO,
    Recorder,
    connect_pair,
    connection_count,
    echo_handler,
    echo_round_trip,
    ping_on,
    port_of,
    read_until_closed,
    receive_exactly,
    wait_until,
)

HEADER = multistream.encode(multistream.PROTOCOL_ID)


def limits(**kw: object) -> ResourceLimits:
    return ResourceLimits(**kw)  # type: ignore[arg-type]


async def tcp_from(source: str, port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:port from another loopback source address (another "machine")."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


def refused(registry: CollectorRegistry, reason: str, scope: str = "connection") -> float:
    value = registry.get_sample_value("physarum_resource_refused_total", {"scope": scope, "reason": reason})
    return value or 0.0


async def test_max_connections() -> None:
    async with (
        open_host(limits=limits(max_connections=2)) as h,
        open_host() as a,
        open_host() as b,
        open_host() as c,
        open_host() as d,
    ):
        rec_h, rec_c = Recorder(h), Recorder(c)
        # With every open connection protected, nothing can make room.
        h.conn_manager.protect(a.peer_id, "test")
        h.conn_manager.protect(b.peer_id, "test")
        conn_a = await a.connect(h.addrs[0])
        conn_b = await b.connect(h.addrs[0])
        await rec_h.wait_connected(2)

        # The third inbound connection is closed right after its handshake, before any stream: the
        # dialer is told the peer refused it, not that keys differ.
        with trio.fail_after(2), pytest.raises(DialError) as refusal:
            await c.connect(h.addrs[0])
        assert [type(e) for e in refusal.value.errors.values()] == [RefusedError]
        assert connection_count(h) == 2 and len(rec_h.connected) == 2
        assert not rec_c.connected
        await wait_until(lambda: not c.connections, what="c sees the refusal")
        # Our own dial beyond the limit is refused too.
        with pytest.raises(LimitError) as info:
            await h.connect(d.addrs[0])
        assert info.value.limit == 2
        assert connection_count(h) == 2
        await wait_until(lambda: not d.connections, what="d sees the refusal")

        # The connections inside the limit are unaffected.
        assert await ping_on(conn_a) > 0
        assert await ping_on(conn_b) > 0

        # Closing one frees its slot.
        await a.disconnect(h.peer_id)
        await rec_h.wait_disconnected(1)
        await wait_until(lambda: connection_count(h) == 1, what="slot freed")
        assert len(await c.ping(h.addrs[0])) == 1
        assert connection_count(h) == 2


async def test_a_newcomer_at_the_limit_closes_the_least_valuable_connection() -> None:
    async with (
        open_host(limits=limits(max_connections=2)) as h,
        open_host() as a,
        open_host() as b,
        open_host() as c,
        open_host() as d,
    ):
        h.conn_manager.tag_peer(a.peer_id, "useful", 10)
        conn_a = await a.connect(h.addrs[0])
        conn_b = await b.connect(h.addrs[0])
        await wait_until(lambda: connection_count(h) == 2, what="a and b connected")
        # c is let in: b (no tags, the newest) makes room, told why with GoAway 0x1005.
        with trio.fail_after(3):
            conn_c = await c.connect(h.addrs[0])
            assert await ping_on(conn_c) > 0
        await wait_until(lambda: conn_b.is_closed, what="b's connection closed")
        assert conn_b.session.go_away_code == GO_AWAY_GARBAGE_COLLECTED
        assert not conn_a.is_closed and await ping_on(conn_a) > 0
        await wait_until(lambda: connection_count(h) == 2, what="h back at its limit")
        # Our own dial makes room the same way, taking an inbound connection before an outbound one.
        with trio.fail_after(3):
            await h.connect(d.addrs[0])
        await wait_until(lambda: conn_c.is_closed, what="c's connection closed")
        assert not conn_a.is_closed
        assert sorted(map(str, h.connected_peers())) == sorted([str(a.peer_id), str(d.peer_id)])
        assert h.conn_manager.victims_total == 2


async def test_inbound_streams_beyond_the_limit_are_reset() -> None:
    async with open_host() as a, open_host(limits=limits(max_streams_per_connection=3)) as b:
        b.set_handler(ECHO, echo_handler)
        conn_a, conn_b = await connect_pair(a, b)
        streams = [await conn_a.open_stream([ECHO]) for _ in range(3)]
        for s in streams:
            await echo_round_trip(s)
        assert len(conn_b.session.streams) == 3

        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await conn_a.open_stream([ECHO])
        # Only that stream failed.
        assert not conn_a.is_closed and not conn_b.is_closed
        for s in streams:
            await echo_round_trip(s)
        assert len(conn_b.session.streams) == 3

        await streams[0].aclose()
        await wait_until(lambda: len(conn_b.session.streams) == 2, what="closed stream forgotten")
        again = await conn_a.open_stream([ECHO])
        await echo_round_trip(again)
        await again.aclose()
        await wait_until(lambda: len(conn_b.session.streams) == 2, what="closed stream forgotten")
        assert await ping_on(conn_a) > 0
        for s in streams[1:]:
            await s.aclose()


async def test_opening_streams_beyond_the_limit_raises() -> None:
    async with open_host(limits=limits(max_streams_per_connection=2)) as a, open_host() as b:
        b.set_handler(ECHO, echo_handler)
        conn_a, _ = await connect_pair(a, b)
        s1 = await conn_a.open_stream([ECHO])
        s2 = await conn_a.open_stream([ECHO])
        with pytest.raises(LimitError) as info:
            await conn_a.open_stream([ECHO])
        assert info.value.limit == 2
        with pytest.raises(LimitError):
            await a.ping(b.peer_id)
        with pytest.raises(LimitError):
            await a.new_stream(b.peer_id, [ECHO])
        # Streams inside the limit still work, and the connection survives.
        await echo_round_trip(s1)
        await echo_round_trip(s2)
        assert not conn_a.is_closed
        await s1.aclose()
        await wait_until(lambda: len(conn_a.session.streams) == 1, what="closed stream forgotten")
        assert len(await a.ping(b.peer_id)) == 1
        await s2.aclose()


@pytest.mark.parametrize("psk", [None, generate_psk()], ids=["no-psk", "psk"])
async def test_silent_client_is_cut_off_after_the_first_byte_timeout(psk: bytes | None) -> None:
    timeout = 0.5
    registry = CollectorRegistry()
    async with open_host(
        psk=psk, limits=limits(first_byte_timeout=timeout, max_handshakes=1), registry=registry
    ) as h:
        rec = Recorder(h)
        start = trio.current_time()
        with trio.fail_after(timeout + 3):
            tcp = await trio.open_tcp_stream("127.0.0.1", port_of(h))
            data = await read_until_closed(tcp)
        elapsed = trio.current_time() - start
        await tcp.aclose()
        assert elapsed >= timeout * 0.9, f"closed after {elapsed:.3f} s, before the first-byte timeout"
        # All the host said: its multistream header without a PSK; with one, nothing (it waits for
        # the dialer's nonce before it sends its own or computes anything).
        assert data == (HEADER if psk is None else b"")
        assert not rec.connected and not h.connections
        assert refused(registry, "first_byte_timeout") == 1

        # The slot it held is free again: a real peer gets in (max_handshakes=1).
        async with open_host(psk=psk) as friend:
            assert len(await friend.ping(h.addrs[0])) == 1
            assert connection_count(h) == 1


async def test_a_full_handshake_pool_drops_its_oldest_handshake() -> None:
    registry = CollectorRegistry()
    async with (
        open_host(limits=limits(max_handshakes=2, first_byte_timeout=30), registry=registry) as h,
        open_host() as friend,
    ):
        silent = [await trio.open_tcp_stream("127.0.0.1", port_of(h)) for _ in range(2)]
        await wait_until(lambda: len(h.resources.handshakes) == 2, what="both silent clients admitted")
        # A real peer still gets in at once; the oldest silent client made room.
        with trio.fail_after(2):
            assert len(await friend.ping(h.addrs[0])) == 1
            assert await read_until_closed(silent[0]) == HEADER
        assert refused(registry, "handshake_pool_full") == 1
        for s in silent:
            await s.aclose()


async def test_handshakes_per_ip_are_limited_outside_the_exempt_networks() -> None:
    registry = CollectorRegistry()
    lim = limits(max_handshakes_per_ip=2, exempt_networks=("127.0.0.1/32",), first_byte_timeout=30)
    async with open_host(limits=lim, registry=registry) as h:
        port = port_of(h)
        held = [await tcp_from("127.0.0.2", port) for _ in range(2)]
        await wait_until(lambda: len(h.resources.handshakes) == 2, what="two handshakes from 127.0.0.2")
        third = await tcp_from("127.0.0.2", port)
        with trio.fail_after(2):
            assert await read_until_closed(third) == b""  # refused at accept, nothing sent
        await wait_until(lambda: refused(registry, "ip_limit") == 1, what="refusal counted")
        # Another address (and the exempt loopback one) is not affected.
        other = await tcp_from("127.0.0.3", port)
        exempt = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        await wait_until(lambda: len(h.resources.handshakes) == 6, what="other addresses admitted")
        for s in [*held, third, other, *exempt]:
            await s.aclose()


async def test_a_client_without_the_key_is_refused_at_once() -> None:
    registry = CollectorRegistry()
    async with open_host(psk=generate_psk(), limits=limits(first_byte_timeout=30), registry=registry) as h:
        # What every libp2p node without a pre-shared key sends first.
        start = trio.current_time()
        with trio.fail_after(2):
            tcp = await trio.open_tcp_stream("127.0.0.1", port_of(h))
            await tcp.send_all(HEADER)
            # Only our nonce: garbage to the client, which is how it learns it is outside the network.
            assert len(await read_until_closed(tcp)) == NONCE_SIZE
        assert trio.current_time() - start < 1
        await tcp.aclose()
        assert refused(registry, "no_psk") == 1
        # A physarum dialer without the key fails too.
        async with open_host() as keyless:
            with trio.fail_after(5), pytest.raises(DialError):
                await keyless.connect(h.addrs[0])


async def test_capacity_refusal_is_not_reported_as_a_psk_mismatch() -> None:
    psk = generate_psk()
    async with (
        open_host(psk=psk, limits=limits(max_connections=1)) as h,
        open_host(psk=psk) as a,
        open_host(psk=psk) as b,
    ):
        h.conn_manager.protect(a.peer_id, "test")  # no victim to make room with
        await a.connect(h.addrs[0])
        await wait_until(lambda: connection_count(h) == 1, what="a connected")
        with trio.fail_after(3), pytest.raises(DialError) as info:
            await b.connect(h.addrs[0])
        (error,) = info.value.errors.values()
        assert isinstance(error, RefusedError) and not isinstance(error, PskMismatchError)
        # A real key mismatch is still named as such.
        await a.disconnect(h.peer_id)
        await wait_until(lambda: connection_count(h) == 0, what="a slot frees")
        async with open_host(psk=generate_psk()) as stranger:
            with trio.fail_after(5), pytest.raises(DialError) as info:
                await stranger.connect(h.addrs[0])
            assert [type(e) for e in info.value.errors.values()] == [PskMismatchError]


async def test_a_flood_of_refusals_writes_a_few_lines(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    caplog.set_level(logging.INFO, logger="physarum")
    async with open_host(psk=generate_psk(), registry=registry) as h:
        port = port_of(h)
        for _ in range(200):
            tcp = await tcp_from("127.0.0.3", port)  # another machine (127.0.0.1 is never penalised)
            await tcp.send_all(HEADER)
            await read_until_closed(tcp)
            await tcp.aclose()
        await wait_until(
            lambda: refused(registry, "no_psk") + refused(registry, "ip_failures") == 200, what="200 refusals counted"
        )
        # 16 failed handshakes from one IP within 10 s, and the rest are refused at accept.
        assert refused(registry, "no_psk") == ResourceLimits().failed_handshakes_per_ip
        h.resources.flush_logs(trio.current_time(), force=True)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("physarum")]
    refusal_lines = [m for m in lines if "refused" in m]
    assert 3 <= len(refusal_lines) <= 4, refusal_lines
    assert any("refused 200 connections" in m and "peer uses no psk 16" in m for m in refusal_lines)


async def test_an_ip_failing_handshakes_is_refused_at_accept_for_a_while() -> None:
    psk = generate_psk()
    lim = limits(failed_handshakes_per_ip=3, failure_window=1.0)
    async with open_host(psk=psk, limits=lim) as h, open_host(psk=psk) as honest:
        port = port_of(h)
        for _ in range(3):  # clients without the key, from 127.0.0.3
            tcp = await tcp_from("127.0.0.3", port)
            await tcp.send_all(HEADER)
            assert len(await read_until_closed(tcp)) == NONCE_SIZE  # told it is outside, then closed
            await tcp.aclose()
        # Now 127.0.0.3 is refused before any byte, even with the right key...
        tcp = await tcp_from("127.0.0.3", port)
        with trio.fail_after(2):
            assert await read_until_closed(tcp) == b""
        await tcp.aclose()
        # ...while other addresses are not,
        with trio.fail_after(3):
            await honest.connect(h.addrs[0])
        # This machine's own address is never held to it, however often it fails,
        for _ in range(5):
            tcp = await tcp_from("127.0.0.1", port)
            await tcp.send_all(HEADER)
            assert len(await read_until_closed(tcp)) == NONCE_SIZE
            await tcp.aclose()
        # and once its failures are older than the window, 127.0.0.3 may try again.
        await trio.sleep(1.1)  # the window is the behaviour under test
        tcp = await tcp_from("127.0.0.3", port)
        await tcp.send_all(HEADER)
        with trio.fail_after(2):
            assert len(await read_until_closed(tcp)) == NONCE_SIZE
        await tcp.aclose()


async def test_inbound_streams_of_one_protocol_per_peer_are_limited() -> None:
    registry = CollectorRegistry()
    lim = limits(protocol_stream_limits={ping.PROTOCOL_ID: 2})
    async with open_host() as a, open_host(limits=lim, registry=registry) as b:
        conn_a, _ = await connect_pair(a, b)
        held = [await conn_a.open_stream([ping.PROTOCOL_ID]) for _ in range(2)]
        for s in held:
            assert await ping.ping_once(s) >= 0
        extra = await conn_a.open_stream([ping.PROTOCOL_ID])  # negotiated, then reset
        with trio.fail_after(3), pytest.raises((trio.BrokenResourceError, PhysarumError)):
            await ping.ping_once(extra)
        assert refused(registry, "protocol_stream_limit", scope="stream") == 1
        await held[0].aclose()
        again = None
        with trio.fail_after(5):
            while again is None:  # the slot frees once b's handler sees the stream end
                s = await conn_a.open_stream([ping.PROTOCOL_ID])
                try:
                    assert await ping.ping_once(s) >= 0
                    again = s
                except (trio.BrokenResourceError, PhysarumError):
                    await trio.sleep(0.05)  # polling interval while the slot frees
        await again.aclose()
        await held[1].aclose()


async def test_silent_clients_do_not_block_real_peers() -> None:
    async with open_host(limits=limits(first_byte_timeout=5.0)) as h, open_host() as friend:
        silent = [await trio.open_tcp_stream("127.0.0.1", port_of(h)) for _ in range(5)]
        with trio.fail_after(2):
            await wait_until(lambda: len(h.resources.handshakes) == 5, what="silent clients admitted")
            assert len(await friend.ping(h.addrs[0], count=3)) == 3
        assert connection_count(h) == 1
        for s in silent:
            await s.aclose()


@pytest.mark.parametrize("psk", [None, generate_psk()], ids=["no-psk", "psk"])
async def test_slowloris_is_cut_off(psk: bytes | None) -> None:
    timeout = 0.5
    # What a real dialer sends first, dripped one byte every 50 ms: 1.4 s in all.
    opening = HEADER + multistream.encode(noise.PROTOCOL_ID)
    async with open_host(psk=psk, limits=limits(handshake_timeout=timeout)) as h:
        rec = Recorder(h)
        tcp = await trio.open_tcp_stream("127.0.0.1", port_of(h))
        stream: trio.abc.Stream = tcp if psk is None else await protect(tcp, psk)
        sent = 0

        async def drip() -> None:
            nonlocal sent
            for byte in opening:
                try:
                    await stream.send_all(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                sent += 1
                await trio.sleep(0.05)  # the attack's pace, not a wait for readiness

        start = trio.current_time()
        with trio.fail_after(timeout + 3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip)
                try:
                    while await stream.receive_some(65536):
                        pass
                except trio.BrokenResourceError:
                    pass
                nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - start
        await stream.aclose()
        assert elapsed >= timeout * 0.9
        assert sent < len(opening), "the host waited for the whole slow handshake"
        assert not rec.connected and not h.connections
        async with open_host(psk=psk) as friend:
            assert len(await friend.ping(h.addrs[0])) == 1


async def test_silent_stream_is_reset_after_handshake_timeout() -> None:
    async with open_host() as a, open_host(limits=limits(stream_negotiation_timeout=0.5)) as b:
        conn_a, conn_b = await connect_pair(a, b)
        raw = await conn_a.session.open_stream()  # its SYN goes out, and then nothing
        start = trio.current_time()
        with trio.fail_after(3):
            assert await receive_exactly(raw, len(HEADER)) == HEADER
            with pytest.raises(trio.BrokenResourceError):
                await raw.receive_some()
        assert trio.current_time() - start >= 0.4
        await wait_until(lambda: not conn_b.session.streams, what="b forgets the silent stream")
        assert not conn_a.is_closed
        assert await ping_on(conn_a) > 0


async def test_concurrent_dials_respect_max_connections() -> None:
    async with AsyncExitStack() as stack:
        h = await stack.enter_async_context(open_host(limits=limits(max_connections=2)))
        peers = [await stack.enter_async_context(open_host()) for _ in range(5)]
        for p in peers[:2]:
            h.conn_manager.protect(p.peer_id, "test")
        outcomes: dict[Host, str] = {}

        async def dial(peer: Host) -> None:
            try:
                await h.connect(peer.addrs[0])
                outcomes[peer] = "connected"
            except LimitError:
                outcomes[peer] = "limit"

        # Five dials at once, two of them to protected peers: the unprotected ones make room for
        # each other (or are refused once only protected ones are open), a protected one is never
        # closed to make room, and h settles at its limit.
        async with trio.open_nursery() as nursery:
            for p in peers:
                nursery.start_soon(dial, p)
        assert len(outcomes) == 5 and list(outcomes.values()).count("connected") >= 2
        await wait_until(lambda: connection_count(h) == 2, what="h settles at its limit")
        for p in peers[:2]:
            assert outcomes[p] == "limit" or h.connection(p.peer_id) is not None

        # Inbound and outbound together settle at the limit too (connections chosen to make room
        # take up to yamux's GoAway timeout to leave).
        h2 = await stack.enter_async_context(open_host(limits=limits(max_connections=2)))

        async def inbound(peer: Host) -> None:
            with contextlib.suppress(DialError):
                await peer.connect(h2.addrs[0])

        async def outbound(peer: Host) -> None:
            with contextlib.suppress(LimitError):
                await h2.connect(peer.addrs[0])

        async with trio.open_nursery() as nursery:
            for p in peers[:3]:
                nursery.start_soon(inbound, p)
            for p in peers[3:]:
                nursery.start_soon(outbound, p)
        await wait_until(lambda: connection_count(h2) == 2, what="h2 settles at its limit")
        await wait_until(
            lambda: all(p.connection(h2.peer_id) is None for p in peers if h2.connection(p.peer_id) is None),
            what="peers h2 closed see it",
        )
