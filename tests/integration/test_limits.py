"""Connection and stream limits, and handshake deadlines, against real loopback TCP."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from physarum.errors import DialError, LimitError
from physarum.overlay import multistream, noise
from physarum.overlay.host import Host, open_host
from physarum.psk import NONCE_SIZE, generate_psk, protect
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


async def test_max_connections() -> None:
    async with (
        open_host(max_connections=2) as h,
        open_host() as a,
        open_host() as b,
        open_host() as c,
        open_host() as d,
    ):
        rec_h, rec_c = Recorder(h), Recorder(c)
        conn_a = await a.connect(h.addrs[0])
        conn_b = await b.connect(h.addrs[0])
        await rec_h.wait_connected(2)

        # The third inbound connection is closed at once.
        with trio.fail_after(2), pytest.raises(DialError):
            await c.connect(h.addrs[0])
        assert connection_count(h) == 2 and len(rec_h.connected) == 2
        assert not c.connections and not rec_c.connected
        # Our own dial beyond the limit is refused before it starts.
        with pytest.raises(LimitError) as info:
            await h.connect(d.addrs[0])
        assert info.value.limit == 2
        assert not d.connections and connection_count(h) == 2

        # The connections inside the limit are unaffected.
        assert await ping_on(conn_a) > 0
        assert await ping_on(conn_b) > 0

        # Closing one frees its slot.
        await a.disconnect(h.peer_id)
        await rec_h.wait_disconnected(1)
        await wait_until(lambda: connection_count(h) == 1, what="slot freed")
        assert len(await c.ping(h.addrs[0])) == 1
        assert connection_count(h) == 2


async def test_inbound_streams_beyond_the_limit_are_reset() -> None:
    async with open_host() as a, open_host(max_streams_per_connection=3) as b:
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
    async with open_host(max_streams_per_connection=2) as a, open_host() as b:
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
async def test_silent_client_is_cut_off_after_handshake_timeout(psk: bytes | None) -> None:
    timeout = 0.5
    async with open_host(psk=psk, handshake_timeout=timeout, max_connections=1) as h:
        rec = Recorder(h)
        start = trio.current_time()
        with trio.fail_after(timeout + 3):
            tcp = await trio.open_tcp_stream("127.0.0.1", port_of(h))
            data = await read_until_closed(tcp)
        elapsed = trio.current_time() - start
        await tcp.aclose()
        assert elapsed >= timeout * 0.9, f"closed after {elapsed:.3f} s, before the handshake timeout"
        # All the host said: its pnet nonce (with a PSK) and its multistream header.
        if psk is None:
            assert data == HEADER
        else:
            assert len(data) == NONCE_SIZE + len(HEADER)
        assert not rec.connected and not h.connections

        # The slot it held is free again: a real peer gets in (max_connections=1).
        async with open_host(psk=psk) as friend:
            assert len(await friend.ping(h.addrs[0])) == 1
            assert connection_count(h) == 1


async def test_pending_handshake_holds_a_slot_only_until_its_timeout() -> None:
    async with open_host(handshake_timeout=1.0, max_connections=1) as h, open_host() as friend:
        silent = await trio.open_tcp_stream("127.0.0.1", port_of(h))
        # The host sends its header as soon as it has accepted (and counted) the connection.
        with trio.fail_after(2):
            assert await receive_exactly(silent, len(HEADER)) == HEADER
        with trio.fail_after(2), pytest.raises(DialError):
            await friend.connect(h.addrs[0])
        with trio.fail_after(3):
            await read_until_closed(silent)
        await silent.aclose()
        assert len(await friend.ping(h.addrs[0])) == 1


async def test_silent_clients_do_not_block_real_peers() -> None:
    async with open_host(handshake_timeout=5.0) as h, open_host() as friend:
        silent = [await trio.open_tcp_stream("127.0.0.1", port_of(h)) for _ in range(5)]
        with trio.fail_after(2):
            for s in silent:
                assert await receive_exactly(s, len(HEADER)) == HEADER
            assert len(await friend.ping(h.addrs[0], count=3)) == 3
        assert connection_count(h) == 1
        for s in silent:
            await s.aclose()


@pytest.mark.parametrize("psk", [None, generate_psk()], ids=["no-psk", "psk"])
async def test_slowloris_is_cut_off(psk: bytes | None) -> None:
    timeout = 0.5
    # What a real dialer sends first, dripped one byte every 50 ms: 1.4 s in all.
    opening = HEADER + multistream.encode(noise.PROTOCOL_ID)
    async with open_host(psk=psk, handshake_timeout=timeout) as h:
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
    async with open_host() as a, open_host(handshake_timeout=0.5) as b:
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
        h = await stack.enter_async_context(open_host(max_connections=2))
        peers = [await stack.enter_async_context(open_host()) for _ in range(5)]
        outcomes: list[str] = []

        async def dial(peer: Host) -> None:
            try:
                await h.connect(peer.addrs[0])
                outcomes.append("connected")
            except LimitError:
                outcomes.append("limit")

        async with trio.open_nursery() as nursery:
            for p in peers:
                nursery.start_soon(dial, p)
        assert sorted(outcomes) == ["connected"] * 2 + ["limit"] * 3
        assert connection_count(h) == 2

        # Inbound and outbound together stay within the limit too.
        h2 = await stack.enter_async_context(open_host(max_connections=2))
        seen: list[int] = []
        h2.on_connect.append(lambda c: seen.append(connection_count(h2)))
        refused: list[BaseException] = []

        async def inbound(peer: Host) -> None:
            try:
                await peer.connect(h2.addrs[0])
            except DialError as e:
                refused.append(e)

        async def outbound(peer: Host) -> None:
            try:
                await h2.connect(peer.addrs[0])
            except LimitError as e:
                refused.append(e)

        async with trio.open_nursery() as nursery:
            for p in peers[:3]:
                nursery.start_soon(inbound, p)
            for p in peers[3:]:
                nursery.start_soon(outbound, p)
        assert len(refused) == 3
        await wait_until(lambda: connection_count(h2) == 2, what="h2 settles at its limit")
        assert len(seen) == 2 and max(seen) <= 2
