"""The WebSocket transport: the byte stream over memory streams (trio's generic stream checks,
random frames), and listen/dial on real loopback sockets against hand-driven clients."""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from physarum.errors import LimitError, ProtocolError, RefusedError
from physarum.overlay import addr as addrs_
from physarum.overlay.identity import KeyPair
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.transport import RawConnection, TcpTransport
from physarum.overlay.websocket import WebSocketOptions, WebSocketTransport
from physarum.overlay.wsstream import WebSocketStream, client_handshake, server_handshake

LOOPBACK_WS = Multiaddr("/ip4/127.0.0.1/tcp/0/ws")

UPGRADE_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:4001\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


# -- helpers ---------------------------------------------------------------------------------------


async def ws_pair(
    maker: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]], options: WebSocketOptions | None = None
) -> tuple[WebSocketStream, WebSocketStream]:
    """A client and a server WebSocketStream over ``maker``'s streams, handshake done."""
    opts = options or WebSocketOptions()
    a, b = maker()
    ends: dict[str, WebSocketStream] = {}

    async def client() -> None:
        ends["client"] = await client_handshake(a, "test", options=opts)

    async def server() -> None:
        ends["server"] = await server_handshake(b, options=opts)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client)
        nursery.start_soon(server)
    return ends["client"], ends["server"]


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int, *, max_bytes: int | None = None) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some(max_bytes)
        assert chunk, f"stream ended after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def read_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until the peer closes (a reset counts as a close)."""
    got = bytearray()
    try:
        while chunk := await stream.receive_some():
            got += chunk
    except trio.BrokenResourceError:
        pass
    return bytes(got)


class RawClient:
    """A WebSocket client driven by hand (wsproto over TCP), to send what WebSocketStream never
    would: text, fragments, pings, oversized messages, a TCP close without a Close."""

    def __init__(self, tcp: trio.SocketStream) -> None:
        self.tcp = tcp
        self.ws = WSConnection(ConnectionType.CLIENT)

    @classmethod
    async def connect(cls, addr: Multiaddr) -> RawClient:
        ep = addrs_.tcp_endpoint(addr)
        client = cls(await trio.open_tcp_stream(ep.host, ep.port))
        await client.send(Request(host="whatever.example", target="/some/path"))
        assert [e for e in await client.events() if isinstance(e, AcceptConnection)]
        return client

    async def send(self, event: Event) -> None:
        await self.tcp.send_all(self.ws.send(event))

    async def events(self) -> list[Event]:
        """The events in the next bytes that make any (all of them up to EOF if it comes)."""
        while True:
            if self.ws.state is ConnectionState.CLOSED:
                return []
            data = await self.tcp.receive_some()
            self.ws.receive_data(data or None)
            events = list(self.ws.events())
            if events or not data:
                return events

    async def events_until_eof(self) -> list[Event]:
        got: list[Event] = []
        while self.ws.state is not ConnectionState.CLOSED:
            try:
                got += await self.events()
            except trio.BrokenResourceError:
                break
        return got


@asynccontextmanager
async def ws_listener(
    options: WebSocketOptions | None = None,
) -> AsyncIterator[tuple[Multiaddr, trio.MemoryReceiveChannel[RawConnection]]]:
    """A WebSocketTransport listening on 127.0.0.1; each upgraded connection arrives on the
    channel (the test owns it from there)."""
    send, receive = trio.open_memory_channel[RawConnection](math.inf)
    handed: list[RawConnection] = []

    async def handler(conn: RawConnection) -> None:
        handed.append(conn)
        send.send_nowait(conn)
        # trio.serve_listeners closes the TCP stream when the handler returns: hold it open
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        transport = WebSocketTransport(options or WebSocketOptions())
        [addr] = await transport.listen(LOOPBACK_WS, handler, nursery)
        try:
            yield addr, receive
        finally:
            for conn in handed:
                await trio.aclose_forcefully(conn.stream)
            nursery.cancel_scope.cancel()


async def accept(accepted: trio.MemoryReceiveChannel[RawConnection]) -> RawConnection:
    with trio.fail_after(10):
        return await accepted.receive()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


# -- the stream over memory streams ----------------------------------------------------------------


async def test_trio_generic_stream_checks(autojump_clock: trio.testing.MockClock) -> None:
    async def maker() -> tuple[WebSocketStream, WebSocketStream]:
        return await ws_pair(trio.testing.memory_stream_pair)

    async def clogged() -> tuple[WebSocketStream, WebSocketStream]:
        return await ws_pair(trio.testing.lockstep_stream_pair)

    await trio.testing.check_two_way_stream(maker, clogged)


async def test_writes_are_split_and_reads_never_exceed_max_bytes() -> None:
    client, server = await ws_pair(
        trio.testing.memory_stream_pair, WebSocketOptions(send_message_size=1000, receive_size=700)
    )
    data = random.Random(1).randbytes(10_000)
    await client.send_all(data)
    got = bytearray()
    while len(got) < len(data):
        chunk = await server.receive_some(333)
        assert 0 < len(chunk) <= 333
        got += chunk
    assert got == data


def test_options_are_checked() -> None:
    for bad in ({"max_message_size": 0}, {"receive_size": 0}, {"handshake_timeout": 0}, {"close_timeout": math.inf}):
        with pytest.raises(ValueError):
            WebSocketOptions(**bad)


def _frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True) -> bytes:
    """One WebSocket frame as a client would write it (or a broken one)."""
    head = bytes([(fin << 7) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


_frames = st.lists(
    st.builds(
        lambda op, payload, fin, rsv, masked: (op, payload, _frame(op, payload, fin=fin, rsv=rsv, masked=masked)),
        st.sampled_from([0, 1, 2, 8, 9, 10, 3, 11]),
        st.binary(max_size=300),
        st.booleans(),
        st.sampled_from([0, 0, 0, 4]),
        st.sampled_from([True, True, True, False]),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(_frames, st.binary(max_size=40), st.integers(1, 64))
def test_random_frames_never_break_the_receiver(
    frames: list[tuple[int, bytes, bytes]], tail: bytes, max_bytes: int
) -> None:
    """Whatever frames a peer sends (valid, fragmented, control, broken, unmasked, over the
    message limit), receive_some returns bytes, then b"" or BrokenResourceError; what it
    returned is a prefix of the binary payloads sent, in order."""
    wire = UPGRADE_REQUEST + b"".join(f for _, _, f in frames) + tail
    binary = b"".join(p for op, p, _ in frames if op in (0, 2))

    async def main() -> None:
        a, b = trio.testing.memory_stream_pair()
        await a.send_all(wire)
        await a.send_eof()
        server = await server_handshake(b, options=WebSocketOptions(max_message_size=500))
        got = bytearray()
        with trio.fail_after(5):
            try:
                while chunk := await server.receive_some(max_bytes):
                    assert len(chunk) <= max_bytes
                    got += chunk
            except trio.BrokenResourceError:
                pass
        assert binary.startswith(got)
        await server.aclose()

    trio.run(main)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=600), st.builds(lambda cut, junk: UPGRADE_REQUEST[:cut] + junk,
                                                    st.integers(0, len(UPGRADE_REQUEST)), st.binary(max_size=60))))
def test_any_request_bytes_are_accepted_or_refused(data: bytes) -> None:
    async def main() -> None:
        a, b = trio.testing.memory_stream_pair()
        await a.send_all(data)
        await a.send_eof()
        with trio.fail_after(5):
            try:
                stream = await server_handshake(b)
            except trio.BrokenResourceError:
                return
        await stream.aclose()

    trio.run(main)


# -- listen and dial on loopback ---------------------------------------------------------------------


def test_handles_only_plain_websocket_addresses() -> None:
    peer = KeyPair.generate().peer_id
    ws = WebSocketTransport()
    yes = ["/ip4/1.2.3.4/tcp/1/ws", "/ip6/::1/tcp/1/ws", "/dns4/example.com/tcp/1/ws", f"/ip4/1.2.3.4/tcp/1/ws/p2p/{peer}"]
    no = ["/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/1/wss", "/ip4/1.2.3.4/tcp/1/tls/ws", "/ip4/1.2.3.4/udp/1",
          "/ip4/1.2.3.4/udp/1/quic-v1", f"/p2p/{peer}"]
    assert [ws.handles(Multiaddr(a)) for a in yes] == [True] * len(yes)
    assert [ws.handles(Multiaddr(a)) for a in no] == [False] * len(no)
    # and TCP leaves /ws to the WebSocket transport
    assert not any(TcpTransport().handles(Multiaddr(a)) for a in yes)


async def test_listen_dial_and_echo_small_and_large_both_ways() -> None:
    async with ws_listener() as (addr, accepted):
        assert str(addr).startswith("/ip4/127.0.0.1/tcp/") and str(addr).endswith("/ws")
        dialed = await WebSocketTransport().dial(addr)
        inbound = await accept(accepted)
        # Both ends name the TCP socket's ends, with /ws.
        assert dialed.remote == addr
        assert inbound.remote == dialed.local and inbound.local == dialed.remote
        assert str(inbound.remote).endswith("/ws") and inbound.ip == "127.0.0.1"

        await dialed.stream.send_all(b"hi")
        assert await receive_exactly(inbound.stream, 2) == b"hi"
        await inbound.stream.send_all(b"there")
        assert await receive_exactly(dialed.stream, 5) == b"there"

        up = random.Random(2).randbytes(5 * 1024 * 1024 + 7)
        down = random.Random(3).randbytes(4 * 1024 * 1024 + 3)
        got: dict[str, bytes] = {}

        async def send(stream: trio.abc.Stream, data: bytes, seed: int) -> None:
            rng, view = random.Random(seed), memoryview(data)
            while view:
                n = rng.choice([1, 100, 65536, 300_000, 1_500_000])
                await stream.send_all(view[:n])
                view = view[n:]

        async def receive(name: str, stream: trio.abc.Stream, n: int) -> None:
            got[name] = await receive_exactly(stream, n, max_bytes=50_000)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, dialed.stream, up, 4)
                nursery.start_soon(send, inbound.stream, down, 5)
                nursery.start_soon(receive, "up", inbound.stream, len(up))
                nursery.start_soon(receive, "down", dialed.stream, len(down))
        assert got["up"] == up and got["down"] == down
        await dialed.stream.aclose()


async def test_message_boundaries_mean_nothing_and_pings_are_answered() -> None:
    async with ws_listener() as (addr, accepted):
        raw = await RawClient.connect(addr)
        inbound = await accept(accepted)
        pieces = [b"ab", b"", b"c", b"defg", bytes(range(256)) * 400]
        # one message in three fragments, a ping between two of them, then more messages
        await raw.send(BytesMessage(data=b"01", message_finished=False))
        await raw.send(Ping(payload=b"are you there"))
        await raw.send(BytesMessage(data=b"", message_finished=False))
        await raw.send(BytesMessage(data=b"234", message_finished=True))
        for piece in pieces:
            await raw.send(BytesMessage(data=piece))
        expected = b"01234" + b"".join(pieces)
        with trio.fail_after(10):
            assert await receive_exactly(inbound.stream, len(expected), max_bytes=7) == expected
            assert Pong(payload=b"are you there") in await raw.events()


async def test_clean_close_reads_as_end_of_stream_both_ways() -> None:
    async with ws_listener() as (addr, accepted):
        transport = WebSocketTransport()
        # the dialer closes: the listener's side reads what came before, then b""
        dialed = await transport.dial(addr)
        inbound = await accept(accepted)
        await dialed.stream.send_all(b"last words")
        await dialed.stream.aclose()
        await dialed.stream.aclose()  # idempotent
        with trio.fail_after(10):
            assert await read_until_eof(inbound.stream) == b"last words"
            assert await inbound.stream.receive_some() == b""  # and stays ended
        with pytest.raises(trio.ClosedResourceError):
            await dialed.stream.send_all(b"more")
        # the listener's side closes: the dialer reads b""
        dialed = await transport.dial(addr)
        inbound = await accept(accepted)
        await inbound.stream.aclose()
        with trio.fail_after(10):
            assert await dialed.stream.receive_some() == b""
        await dialed.stream.aclose()


async def test_a_close_without_a_code_is_clean_as_js_libp2p_sends_it() -> None:
    async with ws_listener() as (addr, accepted):
        raw = await RawClient.connect(addr)
        inbound = await accept(accepted)
        await raw.send(BytesMessage(data=b"bye"))
        await raw.send(CloseConnection(code=1005))  # wsproto writes a Close with no status code
        with trio.fail_after(10):
            assert await receive_exactly(inbound.stream, 3) == b"bye"
            assert await inbound.stream.receive_some() == b""
            # we answered the Close
            assert any(isinstance(e, CloseConnection) for e in await raw.events())


async def test_abrupt_ends_raise_broken_resource() -> None:
    async with ws_listener() as (addr, accepted):
        # TCP closed without a Close frame
        raw = await RawClient.connect(addr)
        inbound = await accept(accepted)
        await raw.send(BytesMessage(data=b"partial"))
        await raw.tcp.aclose()
        with trio.fail_after(10):
            assert await receive_exactly(inbound.stream, 7) == b"partial"
            with pytest.raises(trio.BrokenResourceError):
                await inbound.stream.receive_some()
            with pytest.raises(trio.BrokenResourceError):  # and stays broken
                await inbound.stream.receive_some()
        # a Close with an error code
        raw = await RawClient.connect(addr)
        inbound = await accept(accepted)
        await raw.send(CloseConnection(code=1011, reason="internal error"))
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as failure:
            await inbound.stream.receive_some()
        assert isinstance(failure.value.__cause__, ProtocolError) and "1011" in str(failure.value)
        # the listener's TCP connection vanishes under the dialer
        dialed = await WebSocketTransport().dial(addr)
        inbound = await accept(accepted)
        assert isinstance(inbound.stream, WebSocketStream)
        await inbound.stream.transport_stream.aclose()
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            await dialed.stream.receive_some()
        await dialed.stream.aclose()


async def test_a_text_message_closes_the_connection() -> None:
    async with ws_listener() as (addr, accepted):
        raw = await RawClient.connect(addr)
        inbound = await accept(accepted)
        await raw.send(BytesMessage(data=b"fine"))
        await raw.send(TextMessage(data="not libp2p"))
        with trio.fail_after(10):
            assert await receive_exactly(inbound.stream, 4) == b"fine"
            with pytest.raises(trio.BrokenResourceError) as failure:
                await inbound.stream.receive_some()
            assert isinstance(failure.value.__cause__, ProtocolError)
            with pytest.raises(trio.BrokenResourceError):
                await inbound.stream.send_all(b"x")
            await inbound.stream.aclose()
            closes = [e for e in await raw.events_until_eof() if isinstance(e, CloseConnection)]
        assert closes[0].code == 1003  # unsupported data


async def test_an_oversized_message_is_refused() -> None:
    async with ws_listener(WebSocketOptions(max_message_size=1000)) as (addr, accepted):
        raw = await RawClient.connect(addr)
        inbound = await accept(accepted)
        await raw.send(BytesMessage(data=b"a" * 1000))  # at the limit: fine
        await raw.send(BytesMessage(data=b"b" * 600, message_finished=False))
        await raw.send(BytesMessage(data=b"c" * 401))  # 1001 bytes in two fragments
        with trio.fail_after(10):
            got = b""
            with pytest.raises(trio.BrokenResourceError) as failure:
                while True:
                    got += await inbound.stream.receive_some()
            # Payload streams through as it comes, so part of the long message got through.
            assert got[:1000] == b"a" * 1000 and got[1000:] == b"b" * len(got[1000:])
            assert len(got) < 1000 + 600 + 401
            assert isinstance(failure.value.__cause__, LimitError) and failure.value.__cause__.limit == 1000
            await inbound.stream.aclose()
            closes = [e for e in await raw.events_until_eof() if isinstance(e, CloseConnection)]
        assert closes[0].code == 1009  # message too big


async def test_bad_and_silent_clients_do_not_disturb_a_good_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="physarum")
    options = WebSocketOptions(handshake_timeout=0.5)
    async with ws_listener(options) as (addr, accepted):
        ep = addrs_.tcp_endpoint(addr)
        silent = await trio.open_tcp_stream(ep.host, ep.port)
        started = trio.current_time()
        http = await trio.open_tcp_stream(ep.host, ep.port)
        await http.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        garbage = await trio.open_tcp_stream(ep.host, ep.port)
        await garbage.send_all(b"\x16\x03\x01\x02\x00\x01" + os.urandom(500) + b"\r\n\r\n")
        with trio.fail_after(10):
            assert (await read_until_eof(http)).startswith(b"HTTP/1.1 400 ")
            await read_until_eof(garbage)
            # the silent one is still waiting: a good client gets through meanwhile
            good = await WebSocketTransport().dial(addr)
            inbound = await accept(accepted)
            await good.stream.send_all(b"ping")
            assert await receive_exactly(inbound.stream, 4) == b"ping"
            # and the silent one is dropped at the deadline, not before
            assert await read_until_eof(silent) == b""
        assert trio.current_time() - started >= options.handshake_timeout * 0.9
        assert accepted.statistics().current_buffer_used == 0  # no bad client reached the handler
        await good.stream.aclose()
        for s in (silent, http, garbage):
            await s.aclose()
    no_tracebacks(caplog)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "not a WebSocket upgrade request" in messages and "upgrade timeout" in messages


async def test_a_full_upgrade_pool_drops_its_oldest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="physarum")
    async with ws_listener(WebSocketOptions(max_pending_upgrades=1, handshake_timeout=60)) as (addr, accepted):
        ep = addrs_.tcp_endpoint(addr)
        stalled = await trio.open_tcp_stream(ep.host, ep.port)
        await stalled.send_all(b"GET / HTTP/1.1\r\n")  # and never the rest
        await trio.testing.wait_all_tasks_blocked()  # its upgrade is pending now
        with trio.fail_after(10):
            good = await WebSocketTransport().dial(addr)
            await accept(accepted)
            assert await read_until_eof(stalled) == b""  # long before its 60 s
        await good.stream.aclose()
        await stalled.aclose()
    no_tracebacks(caplog)
    assert any("too many upgrades in progress" in r.getMessage() for r in caplog.records)


async def test_dialing_something_that_is_not_a_websocket_server_fails_cleanly() -> None:
    answers = [b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", b"", b"SSH-2.0-OpenSSH_9.6\r\n"]

    async def server(tcp: trio.SocketStream) -> None:
        async with tcp:
            await tcp.receive_some()
            await tcp.send_all(answers.pop(0))

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        addr = Multiaddr(f"/ip4/127.0.0.1/tcp/{port}/ws")
        for cause in (ProtocolError, RefusedError, ProtocolError):
            with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as failure:
                await WebSocketTransport().dial(addr)
            assert isinstance(failure.value.__cause__, cause)
        nursery.cancel_scope.cancel()
    with pytest.raises(addrs_.AddressError):
        await WebSocketTransport().dial(Multiaddr("/ip4/127.0.0.1/tcp/1"))
