"""``/ipfs/ping/1.0.0``: the echo handler and ping_once over memory streams and yamux, in virtual time."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from physarum.errors import ProtocolError
from physarum.overlay import ping
from physarum.overlay.yamux import YamuxSession, YamuxStream


@asynccontextmanager
async def ping_streams() -> AsyncIterator[tuple[YamuxStream, YamuxStream]]:
    """A yamux stream pair (client side, server side) over memory streams."""
    a_t, b_t = trio.testing.memory_stream_pair()
    send, inbound = trio.open_memory_channel[YamuxStream](math.inf)
    client = YamuxSession(a_t, is_client=True)
    server = YamuxSession(b_t, is_client=False, on_stream=send.send_nowait)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await nursery.start(server.run)
        s = await client.open_stream()
        await s.send_all(b"")  # the SYN goes out ahead of the first write
        client._start_flusher()
        with trio.fail_after(5):
            r = await inbound.receive()
        yield s, r
        nursery.cancel_scope.cancel()


async def test_a_monitor_pinging_every_second_on_one_stream_is_never_cut_off(autojump_clock: object) -> None:
    async with ping_streams() as (s, r), trio.open_nursery() as nursery:
        done = trio.Event()

        async def serve() -> None:
            await ping.handle_ping(r)
            done.set()

        nursery.start_soon(serve)
        start = trio.current_time()
        rtts = []
        for _ in range(600):  # ten minutes of 1 Hz pings, far past the idle timeout
            rtts.append(await ping.ping_once(s))
            await trio.sleep(1)
        assert len(rtts) == 600 and trio.current_time() - start >= 600
        assert not done.is_set()
        # A long pause, but shorter than the deadline (with the loop's last second), is fine too.
        await trio.sleep(ping.DEFAULT_IDLE_TIMEOUT - 2)
        await ping.ping_once(s)
        await s.send_eof()
        with trio.fail_after(1):
            await done.wait()


async def test_an_idle_ping_stream_is_reset_after_the_deadline(autojump_clock: object) -> None:
    async with ping_streams() as (s, r), trio.open_nursery() as nursery:
        ended_at: list[float] = []

        async def serve() -> None:
            await ping.handle_ping(r)
            ended_at.append(trio.current_time())

        nursery.start_soon(serve)
        await ping.ping_once(s)
        start = trio.current_time()
        with trio.fail_after(ping.DEFAULT_IDLE_TIMEOUT + 1):
            while not ended_at:  # nothing more comes: it gives up
                await trio.sleep(0.5)
        assert ended_at == [pytest.approx(start + ping.DEFAULT_IDLE_TIMEOUT)]
        assert r._reset
        with trio.fail_after(1), pytest.raises(trio.BrokenResourceError):
            await s.receive_some()  # the peer saw the reset


async def test_a_ping_trickled_byte_by_byte_is_cut_off_at_the_deadline(autojump_clock: object) -> None:
    async with ping_streams() as (s, r), trio.open_nursery() as nursery:
        ended_at: list[float] = []

        async def serve() -> None:
            await ping.handle_ping(r, idle_timeout=10)
            ended_at.append(trio.current_time())

        start = trio.current_time()
        nursery.start_soon(serve)
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(ping.PING_SIZE):
                await s.send_all(b"x")
                await trio.sleep(1)  # each byte well within 10 s, the whole ping not
        assert ended_at == [pytest.approx(start + 10)]


async def test_the_echo_still_goes_out_after_the_peer_half_closes() -> None:
    async with ping_streams() as (s, r), trio.open_nursery() as nursery:

        async def serve() -> None:
            await ping.handle_ping(r)
            await r.aclose()  # as the host does when a handler returns

        nursery.start_soon(serve)
        payload = bytes(range(32))
        await s.send_all(payload)
        await s.send_eof()  # as js-libp2p does right after its 32 bytes
        with trio.fail_after(5):
            assert await ping._receive_exactly(s, ping.PING_SIZE) == payload
            assert await s.receive_some() == b""  # and then the handler ends its side


class _RecordingStream(trio.abc.HalfCloseableStream):
    """A plain stream (no reset) that serves scripted chunks and records each read's size."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.asked: list[int | None] = []
        self.sent = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        self.asked.append(max_bytes)
        if not self.chunks:
            await trio.sleep_forever()
        chunk = self.chunks.pop(0)
        assert max_bytes is not None
        if len(chunk) > max_bytes:
            self.chunks.insert(0, chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_the_handler_reads_at_most_one_ping_at_a_time(autojump_clock: object) -> None:
    # A peer that sends 64 KiB at once is read 32 bytes at a time, echoing as it goes.
    stream = _RecordingStream([b"\x01" * 65536])
    await ping.handle_ping(stream, idle_timeout=5)  # a plain stream: no reset, it just returns
    assert stream.asked and all(n is not None and 1 <= n <= ping.PING_SIZE for n in stream.asked)
    assert len(stream.sent) == 65536


async def test_ping_once_reports_a_bad_echo_and_an_early_end() -> None:
    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def wrong_echo() -> None:
            await ping._receive_exactly(b, ping.PING_SIZE)
            await b.send_all(b"\x00" * ping.PING_SIZE)
            await ping._receive_exactly(b, ping.PING_SIZE)
            await b.send_all(b"\x00" * 10)
            await b.aclose()

        nursery.start_soon(wrong_echo)
        with pytest.raises(ProtocolError, match="does not match"):
            await ping.ping_once(a)
        with pytest.raises(ProtocolError, match="ended"):
            await ping.ping_once(a)
