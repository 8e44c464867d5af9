from __future__ import annotations

import contextlib
import logging
import math
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from physarum.errors import DecodeError, LimitError
from physarum.overlay import yamux
from physarum.overlay.resources import MemoryBudget
from physarum.overlay.yamux import YamuxSession, YamuxStream


@asynccontextmanager
async def session_pair(
    maker: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] = trio.testing.memory_stream_pair,
    **kwargs: object,
) -> AsyncIterator[tuple[YamuxSession, YamuxSession, trio.MemoryReceiveChannel[YamuxStream]]]:
    a_t, b_t = maker()
    send, receive = trio.open_memory_channel[YamuxStream](math.inf)
    client = YamuxSession(a_t, is_client=True, on_stream=lambda s: send.send_nowait(s), **kwargs)  # type: ignore[arg-type]
    server = YamuxSession(b_t, is_client=False, on_stream=lambda s: send.send_nowait(s), **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await nursery.start(server.run)
        yield client, server, receive
        nursery.cancel_scope.cancel()


def test_header_roundtrip_and_garbage() -> None:
    h = yamux.encode_header(yamux.TYPE_DATA, yamux.FLAG_SYN, 7, 99)
    assert yamux.decode_header(h) == (yamux.TYPE_DATA, yamux.FLAG_SYN, 7, 99)
    with pytest.raises(DecodeError):
        yamux.decode_header(b"\x01" + h[1:])
    with pytest.raises(DecodeError):
        yamux.decode_header(h[:1] + b"\x09" + h[2:])


@given(st.integers(0, 3), st.integers(0, 15), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_header_hypothesis(t: int, f: int, sid: int, length: int) -> None:
    assert yamux.decode_header(yamux.encode_header(t, f, sid, length)) == (t, f, sid, length)


async def _stream_maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    raise NotImplementedError


async def test_check_half_closeable_stream() -> None:
    async with trio.open_nursery() as nursery:
        sessions = []

        async def maker() -> tuple[YamuxStream, YamuxStream]:
            a_t, b_t = trio.testing.memory_stream_pair()
            send, receive = trio.open_memory_channel[YamuxStream](1)
            client = YamuxSession(a_t, is_client=True, on_stream=send.send_nowait)
            server = YamuxSession(b_t, is_client=False, on_stream=send.send_nowait)
            await nursery.start(client.run)
            await nursery.start(server.run)
            sessions.append(client)
            s = await client.open_stream()
            await s.send_all(b"")  # nudge the SYN out
            client._start_flusher()
            r = await receive.receive()
            return s, r

        await trio.testing.check_half_closeable_stream(maker, None)
        nursery.cancel_scope.cancel()


async def test_many_streams_and_bulk() -> None:
    async with session_pair() as (client, _server, inbound):
        async def echo_server() -> None:
            async with trio.open_nursery() as n:
                async for s in inbound:
                    async def echo(s: YamuxStream) -> None:
                        while data := await s.receive_some():
                            await s.send_all(data)
                        await s.send_eof()
                    n.start_soon(echo, s)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo_server)
            payload = bytes(range(256)) * 4096  # 1 MiB, 4 windows

            async def one() -> None:
                s = await client.open_stream()
                got = bytearray()

                async def reader() -> None:
                    while data := await s.receive_some(70000):
                        got.extend(data)

                async with trio.open_nursery() as n:
                    n.start_soon(reader)
                    await s.send_all(payload)
                    await s.send_eof()
                assert got == payload
                await s.aclose()

            async with trio.open_nursery() as n:
                for _ in range(5):
                    n.start_soon(one)
            nursery.cancel_scope.cancel()


async def test_stream_limit() -> None:
    async with session_pair(max_streams=2) as (client, _server, _inbound):
        a = await client.open_stream()
        await client.open_stream()
        with pytest.raises(LimitError):
            await client.open_stream()
        await a.aclose()


async def test_inbound_stream_limit_resets() -> None:
    async with session_pair(max_streams=1) as (client, server, inbound):
        client.max_streams = 10
        s1 = await client.open_stream()
        await s1.send_all(b"x")
        await inbound.receive()
        s2 = await client.open_stream()
        await s2.send_all(b"y")
        with pytest.raises(trio.BrokenResourceError):
            with trio.fail_after(5):
                await s2.receive_some()
        assert len(server.streams) == 1


async def test_garbage_closes_session() -> None:
    a_t, b_t = trio.testing.memory_stream_pair()
    server = YamuxSession(b_t, is_client=False, on_stream=lambda s: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        await a_t.send_all(b"\x05" * 12)
        with trio.fail_after(5):
            await server.closed.wait()
    assert server.broken


async def test_window_violation_is_protocol_error() -> None:
    a_t, b_t = trio.testing.memory_stream_pair()
    server = YamuxSession(b_t, is_client=False, on_stream=lambda s: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        await a_t.send_all(yamux.encode_header(yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_SYN, 1, 0))
        big = server.window + 1
        await a_t.send_all(yamux.encode_header(yamux.TYPE_DATA, 0, 1, big))
        with trio.fail_after(5):
            await server.closed.wait()
        reply = b""
        with trio.move_on_after(1):
            while True:
                reply += await a_t.receive_some()
        # ACK of the SYN, then GoAway(protocol error)
        assert struct.unpack(">BBHII", reply[-12:]) == (0, yamux.TYPE_GO_AWAY, 0, 0, yamux.GO_AWAY_PROTOCOL_ERROR)


async def test_ping_is_answered() -> None:
    a_t, b_t = trio.testing.memory_stream_pair()
    server = YamuxSession(b_t, is_client=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        await a_t.send_all(yamux.encode_header(yamux.TYPE_PING, yamux.FLAG_SYN, 0, 1234))
        with trio.fail_after(5):
            reply = await a_t.receive_some()
        assert reply == yamux.encode_header(yamux.TYPE_PING, yamux.FLAG_ACK, 0, 1234)
        nursery.cancel_scope.cancel()


# -- bounded control frames ------------------------------------------------------------------------

PING_SYN = yamux.encode_header(yamux.TYPE_PING, yamux.FLAG_SYN, 0, 7)


def _frames(data: bytes) -> list[tuple[int, int, int, int, int]]:
    assert len(data) % 12 == 0
    return [struct.unpack(">BBHII", data[i : i + 12]) for i in range(0, len(data), 12)]


async def test_a_ping_flood_from_a_peer_that_does_not_read_queues_few_pongs(autojump_clock: object) -> None:
    # lockstep: our writes block until the attacker reads, which it does not.
    attacker, ours = trio.testing.lockstep_stream_pair()
    server = YamuxSession(ours, is_client=False, on_stream=lambda s: None)
    flood = 10_000
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        with trio.fail_after(30):
            await attacker.send_all(PING_SYN * flood)  # returns once the server read it all
            await trio.testing.wait_all_tasks_blocked()
        assert not server.broken
        # At most one backlog of pongs queued, and one more stuck in the transport's write.
        assert server._pending_pongs <= yamux.DEFAULT_MAX_PENDING_PONGS
        assert len(server._pending) <= yamux.DEFAULT_MAX_PENDING_PONGS * 12
        assert server.pongs_dropped >= flood - 2 * yamux.DEFAULT_MAX_PENDING_PONGS
        # Once the peer reads, what was queued arrives and new pings are answered again.
        got = b""
        with trio.fail_after(30):
            while len(got) < 12 * (flood - server.pongs_dropped):
                got += await attacker.receive_some()
            assert all(f == (0, yamux.TYPE_PING, yamux.FLAG_ACK, 0, 7) for f in _frames(got))
            await attacker.send_all(yamux.encode_header(yamux.TYPE_PING, yamux.FLAG_SYN, 0, 99))
            pong = await attacker.receive_some()
            assert pong == yamux.encode_header(yamux.TYPE_PING, yamux.FLAG_ACK, 0, 99)
        nursery.cancel_scope.cancel()


def _churn(first_id: int, count: int) -> bytes:
    """Open and reset ``count`` streams."""
    out = bytearray()
    for i in range(count):
        sid = first_id + 2 * i
        out += yamux.encode_header(yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_SYN, sid, 0)
        out += yamux.encode_header(yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_RST, sid, 0)
    return bytes(out)


def _syns(first_id: int, count: int) -> bytes:
    """Open ``count`` streams: past ``max_streams`` each costs the server an RST (12 bytes) to send."""
    return b"".join(
        yamux.encode_header(yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_SYN, first_id + 2 * i, 0) for i in range(count)
    )


async def test_streams_opened_and_reset_cost_no_control_frames(autojump_clock: object) -> None:
    # An inbound stream's ACK rides with its first frame (YamuxStream._prefix): a stream the peer
    # resets before we wrote costs us nothing to send, however many.
    attacker, ours = trio.testing.memory_stream_pair()
    opened: list[YamuxStream] = []
    server = YamuxSession(ours, is_client=False, on_stream=opened.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await attacker.send_all(_churn(1, 20_000))
        await trio.testing.wait_all_tasks_blocked()
        assert len(opened) == 20_000 and not server.streams and not server._pending and not server.broken
        assert await _nothing_sent(attacker)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("first", ["write", "read", "deferred then write", "close"])
async def test_an_inbound_streams_ack_rides_with_its_first_frame(first: str, autojump_clock: object) -> None:
    peer, ours = trio.testing.memory_stream_pair()
    opened: list[YamuxStream] = []
    server = YamuxSession(ours, is_client=False, on_stream=opened.append)
    grant = yamux.DEFAULT_WINDOW - yamux.INITIAL_WINDOW
    ack = (0, yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_ACK, 1, grant)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await peer.send_all(yamux.encode_header(yamux.TYPE_DATA, yamux.FLAG_SYN, 1, 3) + b"req")
        with trio.fail_after(5):
            while not opened:
                await trio.sleep(0.001)
        stream = opened[0]
        assert await _nothing_sent(peer)  # nothing yet: the ACK waits for the stream's first frame
        if first == "write":
            await stream.send_all(b"answer")
            expected = [ack, (0, yamux.TYPE_DATA, 0, 1, 6)]
        elif first == "deferred then write":
            stream.defer(b"ok")
            await stream.send_all(b"answer")
            expected = [ack, (0, yamux.TYPE_DATA, 0, 1, 2), (0, yamux.TYPE_DATA, 0, 1, 6)]
        elif first == "read":
            assert await stream.receive_some() == b"req"
            nursery.start_soon(stream.receive_some)  # waits for more: the ACK must go out now
            expected = [ack]
        else:
            await stream.aclose()
            expected = [ack, (0, yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_FIN, 1, 0)]
        with trio.fail_after(5):
            data = await peer.receive_some()
        frames, pos = [], 0
        while pos < len(data):
            frame = struct.unpack(">BBHII", data[pos : pos + 12])
            frames.append(frame)
            pos += 12 + (frame[4] if frame[1] == yamux.TYPE_DATA else 0)
        assert frames == expected  # one write: every frame in the first chunk
        nursery.cancel_scope.cancel()


async def _nothing_sent(peer: trio.testing.MemoryReceiveStream | trio.abc.Stream) -> bool:
    with trio.move_on_after(1):
        await peer.receive_some()
        return False
    return True


async def test_a_peer_that_does_not_read_its_control_frames_is_disconnected(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    attacker, ours = trio.testing.lockstep_stream_pair()
    budget = MemoryBudget(1 << 20)
    opened: list[YamuxStream] = []
    server = YamuxSession(ours, is_client=False, on_stream=opened.append, memory=budget)
    caplog.set_level(logging.INFO, logger="physarum.overlay.yamux")

    async def attack() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await attacker.send_all(_syns(1, 20_000))  # past 512 streams, 19,488 RSTs = 228 KiB

    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        nursery.start_soon(attack)
        with trio.fail_after(30):
            await server.closed.wait()
        nursery.cancel_scope.cancel()
    assert isinstance(server.close_reason, LimitError)
    assert server.close_reason.limit == yamux.DEFAULT_MAX_PENDING_CONTROL
    assert not server._pending and not server.streams
    # It stopped at the cap (queued RSTs, plus those the stuck write took, at most a cap's
    # worth too), not after reading the whole flood.
    assert len(opened) == 512
    lines = [r for r in caplog.records if "not reading" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert budget.used == 0


async def test_overflow_with_no_write_in_flight_says_go_away() -> None:
    # Three SYNs past max_streams arrive in one read: their three RSTs (36 bytes) overflow a 24-byte
    # cap before the flusher ever ran, so no frame is half written and a GoAway can go out.
    peer, ours = trio.testing.memory_stream_pair()
    server = YamuxSession(ours, is_client=False, on_stream=lambda s: None, max_pending_control=24, max_streams=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await peer.send_all(_syns(1, 3))
        with trio.fail_after(5):
            await server.closed.wait()
            reply = b""
            while data := await peer.receive_some():
                reply += data
    assert _frames(reply) == [(0, yamux.TYPE_GO_AWAY, 0, 0, yamux.GO_AWAY_INTERNAL_ERROR)]
    with pytest.raises(ValueError):
        YamuxSession(ours, is_client=False, max_pending_control=11)


async def test_honest_heavy_use_never_trips_the_control_cap(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of streams opened and closed, bulk both ways (window updates), pings, over a
    transport whose every write waits for the reader: the control queue stays far below its cap."""
    peak = 0
    queue = YamuxSession._queue

    def measuring_queue(self: YamuxSession, frame: bytes) -> None:
        nonlocal peak
        queue(self, frame)
        peak = max(peak, len(self._pending))

    monkeypatch.setattr(YamuxSession, "_queue", measuring_queue)
    async with session_pair(trio.testing.lockstep_stream_pair, max_streams=256) as (client, server, inbound):

        async def echo(s: YamuxStream) -> None:
            while data := await s.receive_some():
                await s.send_all(data)
            await s.send_eof()
            await s.aclose()

        async def serve() -> None:
            async with trio.open_nursery() as n:
                async for s in inbound:
                    n.start_soon(echo, s)

        async def exchange(size: int) -> None:
            s = await client.open_stream()
            payload = bytes(range(256)) * (size // 256)
            got = bytearray()

            async def reader() -> None:
                while data := await s.receive_some():
                    got.extend(data)

            async with trio.open_nursery() as n:
                n.start_soon(reader)
                await s.send_all(payload)
                await s.send_eof()
            assert got == payload
            await s.aclose()

        async def pinger() -> None:
            for i in range(2000):
                await client._write(yamux.encode_header(yamux.TYPE_PING, yamux.FLAG_SYN, 0, i))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with trio.fail_after(600):
                async with trio.open_nursery() as n:
                    n.start_soon(pinger)
                    for _ in range(2):
                        n.start_soon(exchange, 8 << 20)  # 8 windows each way
                    for _ in range(200):
                        n.start_soon(exchange, 256)
                for _ in range(1000):
                    await exchange(64)
            nursery.cancel_scope.cancel()
        assert not client.broken and not server.broken
        assert client.pongs_dropped == server.pongs_dropped == 0
    assert 0 < peak < yamux.DEFAULT_MAX_PENDING_CONTROL // 8


# -- stream receive buffers and the memory budget ------------------------------------------------------


async def _open_pair(
    client: YamuxSession, inbound: trio.MemoryReceiveChannel[YamuxStream], first: bytes = b"x"
) -> tuple[YamuxStream, YamuxStream]:
    s = await client.open_stream()
    await s.send_all(first)
    with trio.fail_after(5):
        r = await inbound.receive()
        r.accept()  # the full window now: these tests buffer without reading
        await _wait_until(lambda: bool(r._buf) or r._fin_received)
    return s, r


async def _wait_until(cond: Callable[[], bool]) -> None:
    while not cond():
        await trio.sleep(0.001)


async def test_buffered_bytes_are_reserved_until_read() -> None:
    system = MemoryBudget(10 << 20, name="system")
    peer = MemoryBudget(4 << 20, parent=system, name="peer")
    async with session_pair() as (client, server, inbound):
        server.memory = peer
        assert server.memory is peer
        s, r = await _open_pair(client, inbound, b"hello")
        assert peer.used == system.used == 5
        await s.send_all(b"a" * 100_000)
        with trio.fail_after(5):
            await _wait_until(lambda: peer.used == 100_005)
        assert await r.receive_some(3) == b"hel"
        assert peer.used == 100_002
        got = b""
        while len(got) < 100_002:
            got += await r.receive_some()
        assert peer.used == system.used == 0
        # Bytes a negotiation put back count again, and are released when read.
        r.unread(b"again")
        assert peer.used == 5
        assert await r.receive_some() == b"again"
        assert peer.used == 0


async def test_a_stream_over_the_budget_is_reset_not_the_connection() -> None:
    budget = MemoryBudget(300_000)
    async with session_pair() as (client, server, inbound):
        server.memory = budget
        greedy, greedy_in = await _open_pair(client, inbound)
        other, other_in = await _open_pair(client, inbound)
        assert budget.used == 2
        await greedy.send_all(b"g" * 200_000)  # fits
        with trio.fail_after(5):
            await _wait_until(lambda: budget.used == 200_002)
        await greedy.send_all(b"g" * 200_000)  # does not: that stream is reset
        with trio.fail_after(5):
            await _wait_until(lambda: server.streams_reset_for_memory == 1)
        assert budget.used == 1  # only the other stream's byte
        with pytest.raises(trio.BrokenResourceError, match="memory budget"):
            await greedy_in.receive_some()
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await greedy.receive_some()  # the sender saw the RST
        # The connection and the other stream are fine.
        assert await other_in.receive_some() == b"x"
        await other.send_all(b"still here")
        with trio.fail_after(5):
            assert await other_in.receive_some() == b"still here"
        assert not server.broken and not client.broken
        assert budget.used == 0


@pytest.mark.parametrize("how", ["aclose", "local reset", "peer reset", "fin then aclose"])
async def test_closing_a_stream_releases_what_it_buffered(how: str) -> None:
    budget = MemoryBudget(4 << 20)
    async with session_pair() as (client, server, inbound):
        server.memory = budget
        s, r = await _open_pair(client, inbound, b"z" * 70_000)
        with trio.fail_after(5):
            await _wait_until(lambda: budget.used == 70_000)
        if how == "aclose":
            await r.aclose()
        elif how == "local reset":
            r.reset()
        elif how == "peer reset":
            s.reset()
            with trio.fail_after(5):
                await _wait_until(lambda: r._reset)
            with pytest.raises(trio.BrokenResourceError):
                await r.receive_some()  # unread data is dropped with the reset
        else:
            await s.send_eof()
            with trio.fail_after(5):
                await _wait_until(lambda: r._fin_received)
            await r.send_eof()  # both sides done: the session forgets the stream, data unread
            assert r.stream_id not in server.streams
            assert budget.used == 70_000
            await r.aclose()
        assert budget.used == 0


async def test_a_broken_session_gives_everything_back_and_keeps_data_readable() -> None:
    system = MemoryBudget(10 << 20)
    budget = MemoryBudget(4 << 20, parent=system)
    a_t, b_t = trio.testing.memory_stream_pair()
    send, inbound = trio.open_memory_channel[YamuxStream](10)
    client = YamuxSession(a_t, is_client=True)
    server = YamuxSession(b_t, is_client=False, on_stream=send.send_nowait, memory=budget)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await nursery.start(server.run)
        _s1, r1 = await _open_pair(client, inbound, b"last words")
        s2, r2 = await _open_pair(client, inbound, b"q" * 1000)
        await s2.send_eof()
        await r2.send_eof()  # forgotten by the session, still holding its data
        with trio.fail_after(5):
            await _wait_until(lambda: budget.used == 1010 and r2.stream_id not in server.streams)
        await a_t.aclose()  # the peer hangs up
        with trio.fail_after(5):
            await server.closed.wait()
        assert budget.used == system.used == 0
        # A peer's last message before it hung up can still be read; reading it releases nothing twice.
        assert await r1.receive_some() == b"last words"
        assert await r2.receive_some() == b"q" * 1000
        r2.unread(b"late")
        await r1.aclose()
        await r2.aclose()
        assert budget.used == system.used == 0
        nursery.cancel_scope.cancel()


async def test_without_a_budget_nothing_is_counted() -> None:
    async with session_pair() as (client, server, inbound):
        assert server.memory is None
        _s, r = await _open_pair(client, inbound, b"abc")
        assert r._reserved == 0 and server._reserved == 0
        assert await r.receive_some() == b"abc"
        assert server.streams_reset_for_memory == 0


@pytest.mark.parametrize("max_bytes", [None, 3])
async def test_a_reset_while_a_receive_yields_over_buffered_data_raises_not_indexerror(
    max_bytes: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by fuzz_yamux: data was buffered, receive_some yielded once before taking it, and a
    reset in that moment dropped the buffer; the receive then indexed an empty deque."""
    async with session_pair() as (client, _server, inbound):
        s = await client.open_stream()
        await s.send_all(b"hello")
        peer = await inbound.receive()
        await trio.testing.wait_all_tasks_blocked()
        assert peer._buf  # the data is buffered before the receive starts
        real = trio.lowlevel.cancel_shielded_checkpoint

        async def reset_meanwhile() -> None:
            peer._on_reset()  # as when the peer's RST is read in that moment
            await real()

        monkeypatch.setattr(trio.lowlevel, "cancel_shielded_checkpoint", reset_meanwhile)
        with pytest.raises(trio.BrokenResourceError):
            await peer.receive_some(max_bytes)
