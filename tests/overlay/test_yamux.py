from __future__ import annotations

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
from physarum.overlay.yamux import YamuxSession, YamuxStream


@asynccontextmanager
async def session_pair(
    maker: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] = trio.testing.memory_stream_pair,
    **kwargs: object,
) -> AsyncIterator[tuple[YamuxSession, YamuxSession, trio.MemoryReceiveChannel[YamuxStream]]]:
    a_t, b_t = maker()
    send, receive = trio.open_memory_channel[YamuxStream](100)
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
            client._pending_event.set()
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
