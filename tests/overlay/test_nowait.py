"""Writes that do not wait (physarum.nowait): pnet and Noise on a real socket, yamux's send_nowait,
receive_nowait and watchers, and the ping responder driven from the reader."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from physarum.errors import ConfigError
from physarum.overlay import ping
from physarum.overlay.noise import NoiseStream
from physarum.overlay.yamux import INITIAL_WINDOW, YamuxSession, YamuxStream
from physarum.psk import PskStream
from tests.overlay.test_noise import handshake_pair

PSK = bytes(range(32))


def socket_pair(sndbuf: int = 4096) -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two connected stream sockets (AF_UNIX), the first with a small send buffer so that it fills."""
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    return trio.SocketStream(a), trio.SocketStream(b)


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some()
        assert chunk, f"stream ended after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


async def fill_then_finish(sender: PskStream | NoiseStream, receiver: trio.abc.ReceiveStream) -> None:
    """send_nowait until the kernel keeps some back, then send_all: the peer gets every byte in order."""
    sent = bytearray()
    chunk = 0
    while sender.can_send_nowait():
        data = os.urandom(1000) + chunk.to_bytes(4, "big")
        sender.send_nowait(data)
        sent += data
        chunk += 1
        assert chunk < 10_000, "the send buffer never filled"
    assert sender.unsent > 0
    with pytest.raises(trio.WouldBlock):
        sender.send_nowait(b"refused: nothing is encrypted or sent")
    tail = b"the tail, after what the kernel kept back"
    received = b""

    async def read_all() -> None:
        nonlocal received
        received = await receive_exactly(receiver, len(sent) + len(tail))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await sender.send_all(tail)
    assert received == bytes(sent) + tail
    assert sender.unsent == 0 and sender.can_send_nowait()


async def test_pnet_send_nowait_keeps_what_the_kernel_did_not_take_for_the_next_write() -> None:
    a, b = socket_pair()
    sender, receiver = PskStream(a, PSK), PskStream(b, PSK)
    await fill_then_finish(sender, receiver)


async def test_pnet_flush_sends_what_was_left() -> None:
    a, b = socket_pair()
    sender, receiver = PskStream(a, PSK), PskStream(b, PSK)
    sent = bytearray()
    while sender.can_send_nowait():
        sender.send_nowait(b"x" * 1500)
        sent += b"x" * 1500
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.flush)
        assert await receive_exactly(receiver, len(sent)) == bytes(sent)
    assert sender.unsent == 0


async def test_noise_on_a_socket_sends_without_waiting() -> None:
    i, r = await handshake_pair(lambda: socket_pair())
    assert i.can_send_nowait()
    await fill_then_finish(i, r)


async def test_noise_over_pnet_sends_through_it() -> None:
    def pnet_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        a, b = socket_pair()
        return PskStream(a, PSK), PskStream(b, PSK)

    i, r = await handshake_pair(pnet_pair)
    assert i.can_send_nowait()
    await fill_then_finish(i, r)


async def test_memory_streams_do_not_send_without_waiting() -> None:
    a, _ = trio.testing.memory_stream_pair()
    stream = PskStream(a, PSK)
    assert not stream.can_send_nowait()
    with pytest.raises(trio.WouldBlock):
        stream.send_nowait(b"x")


async def test_a_broken_socket_raises_broken() -> None:
    a, b = socket_pair()
    sender = PskStream(a, PSK)
    await b.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the first write may still be accepted
            sender.send_nowait(b"x" * 1000)
    assert not sender.can_send_nowait()


@asynccontextmanager
async def yamux_pair(
    sndbuf: int = 4096, window: int = INITIAL_WINDOW * 4
) -> AsyncIterator[tuple[YamuxStream, YamuxStream]]:
    """A yamux stream pair over pnet over a socket pair (outbound side granting ``window``, inbound side)."""
    a, b = socket_pair(sndbuf)
    send, inbound = trio.open_memory_channel[YamuxStream](math.inf)
    client = YamuxSession(PskStream(a, PSK), is_client=True, window=window)
    server = YamuxSession(PskStream(b, PSK), is_client=False, on_stream=send.send_nowait)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await nursery.start(server.run)
        s = await client.open_stream()
        s.send_nowait(b"hello")
        with trio.fail_after(5):
            r = await inbound.receive()
            assert await r.receive_some() == b"hello"
        yield s, r
        nursery.cancel_scope.cancel()


async def test_yamux_send_nowait_in_order_with_send_all_and_past_a_full_socket() -> None:
    async with yamux_pair() as (s, r):
        sent = bytearray()
        for n in range(200):  # up to 200 KiB: more than the socket takes at once, within the window
            data = n.to_bytes(4, "big") * 256
            try:
                s.send_nowait(data)
            except trio.WouldBlock:  # the session's queue is full (the socket took 4 KiB)
                assert n > 4
                break
            sent += data
        else:
            raise AssertionError("never refused")
        await s.send_all(b"end")
        with trio.fail_after(10):
            assert await receive_exactly(r, len(sent) + 3) == bytes(sent) + b"end"


async def test_yamux_send_nowait_refuses_past_the_window() -> None:
    async with yamux_pair(sndbuf=1 << 20) as (s, _r):
        sent = 5  # "hello"
        while sent + 1000 <= INITIAL_WINDOW:
            s.send_nowait(b"x" * 1000)
            sent += 1000
        with pytest.raises(trio.WouldBlock):
            s.send_nowait(b"x" * 1000)
        with pytest.raises(ConfigError, match="at most"):
            s.send_nowait(b"x" * 70_000)


async def test_watcher_sees_data_fin_reset_and_a_broken_connection() -> None:
    async with yamux_pair() as (s, r):
        events: list[object] = []

        def watch() -> None:
            while True:
                try:
                    data = r.receive_nowait()
                except trio.WouldBlock:
                    return
                except trio.BrokenResourceError:
                    events.append("broken")
                    return
                events.append(data)
                if not data:
                    return

        with pytest.raises(trio.WouldBlock):
            r.receive_nowait()
        r.set_watcher(watch)
        s.send_nowait(b"one")
        await s.send_final(b"two")
        with trio.fail_after(5):
            while events[-1:] != [b""]:
                await trio.sleep(0.001)
        assert b"".join(e for e in events if isinstance(e, bytes)) == b"onetwo"
        r.set_watcher(None)

    async with yamux_pair() as (s, r):
        got: list[str] = []

        def on_reset() -> None:
            try:
                r.receive_nowait()
            except trio.BrokenResourceError:
                got.append("broken")
            except trio.WouldBlock:
                got.append("wouldblock")

        r.set_watcher(on_reset)
        s.reset()
        with trio.fail_after(5):
            while not got:
                await trio.sleep(0.001)
        assert got == ["broken"]

    async with yamux_pair() as (s, r):
        called = trio.Event()
        s.set_watcher(called.set)
        await r.session.aclose()  # the connection goes: the other side's watcher hears of it
        with trio.fail_after(5):
            await called.wait()
        with pytest.raises(trio.BrokenResourceError):
            s.receive_nowait()


async def test_ping_responder_echoes_from_the_reader_and_waits_for_room_when_not_read() -> None:
    """Echoes go out from the connection's reader; a client that sends far more pings than it reads
    echoes fills the window, and the responder goes on as a task once the client reads again."""
    async with yamux_pair(sndbuf=1 << 16, window=INITIAL_WINDOW) as (s, r), trio.open_nursery() as nursery:

        async def serve() -> None:
            await ping.handle_ping(r)
            await r.aclose()  # as the host does once a handler returns

        nursery.start_soon(serve)
        # The usual case: one at a time.
        for _ in range(3):
            with trio.fail_after(5):
                assert await ping.ping_once(s) >= 0
        # 400 KiB of pings with no reading: more echoes than the client's 256 KiB window takes.
        payload = b"".join(os.urandom(ping.PING_SIZE) for _ in range(12_800))
        with trio.fail_after(20):
            await s.send_all(payload)  # every ping out before any echo is read
            echoed = await receive_exactly(s, len(payload))
        assert echoed == payload
        await s.send_eof()
        with trio.fail_after(5):
            assert await s.receive_some() == b""


async def test_direct_reads_end_cleanly_and_fail_closed_when_closed_while_waiting() -> None:
    a, b = socket_pair()
    sender, receiver = PskStream(a, PSK), PskStream(b, PSK)
    await sender.send_all(b"x" * 100)
    assert await receive_exactly(receiver, 100) == b"x" * 100  # a short read: the next one waits first
    await sender.aclose()
    assert await receiver.receive_some() == b""

    a, b = socket_pair()
    receiver = PskStream(b, PSK)
    await a.send_all(bytes(24))
    async with trio.open_nursery() as nursery:
        failed = trio.Event()

        async def wait_for_data() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await receiver.receive_some()
            failed.set()

        nursery.start_soon(wait_for_data)
        await trio.testing.wait_all_tasks_blocked()
        await b.aclose()  # the stream's own close, under the waiting read
        with trio.fail_after(5):
            await failed.wait()


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two connected TCP streams on 127.0.0.1."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_stamped_reads_give_the_time_the_bytes_arrived_not_the_time_they_were_read() -> None:
    a, b = await tcp_pair()
    sender, receiver = PskStream(a, PSK), PskStream(b, PSK)
    direct = receiver.direct_socket
    assert direct is not None and direct.received_at == 0.0
    assert direct.stamp_receives() and direct.stamp_receives()  # once is enough; twice is harmless
    for n in range(3):
        before = time.time()
        await sender.send_all(b"stamped %d" % n)
        time.sleep(0.05)  # this process is busy: the bytes wait in the socket
        assert await receive_exactly(receiver, 9) == b"stamped %d" % n
        assert before <= direct.received_at <= time.time() - 0.045
    await sender.aclose()
    assert await receiver.receive_some() == b""

    # Unstamped (the default): reads keep no time.
    a, b = await tcp_pair()
    sender, receiver = PskStream(a, PSK), PskStream(b, PSK)
    await sender.send_all(b"x")
    assert await receive_exactly(receiver, 1) == b"x"
    assert receiver.direct_socket is not None and receiver.direct_socket.received_at == 0.0


async def test_the_socket_under_yamux_noise_and_pnet_is_found_and_none_elsewhere() -> None:
    def pnet_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
        a, b = socket_pair()
        return PskStream(a, PSK), PskStream(b, PSK)

    i, _r = await handshake_pair(pnet_pair)
    assert i.direct_socket is not None and i.direct_socket is i.transport_stream.direct_socket  # type: ignore[attr-defined]
    i, _r = await handshake_pair(lambda: socket_pair())
    assert i.direct_socket is not None
    async with yamux_pair() as (s, r):
        assert s.direct_socket is not None and r.direct_socket is not None
        assert s.direct_socket is not r.direct_socket
    a, _ = trio.testing.memory_stream_pair()
    assert PskStream(a, PSK).direct_socket is None
