"""The proxy pair end to end over memory streams: client -> ClientProxy -> (stream) -> Sidecar ->
an h11 service written here."""

from __future__ import annotations

import h11
import pytest
import trio
import trio.testing

from physarum.errors import DialError
from physarum.overlay.identity import KeyPair, PeerId
from physarum.services.proxy import (
    ERROR_HEADER,
    PROTOCOL_ID,
    ClientProxy,
    ProxyOptions,
    Sidecar,
    split_target,
)
from physarum.services.selection import Selector


async def http_service(stream: trio.abc.Stream, name: str | None) -> None:
    """/slow never answers; /count answers the body's length; anything else echoes name and path."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                continue
            if not isinstance(event, h11.Request):
                return
            size = 0
            while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
                if ev is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(ev, h11.Data):
                    size += len(ev.data)
            if event.target == b"/slow":
                await trio.sleep_forever()
            body = str(size).encode() if event.target == b"/count" else f"{name} {event.target.decode()}".encode()
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=[(b"content-length", str(len(body)).encode())])))
            await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()
    finally:
        await stream.aclose()


class Rig:
    """Instances (peer id -> sidecar, or None for an unreachable node) behind a selector that
    ranks them in the given order."""

    def __init__(self, nursery: trio.Nursery, options: ProxyOptions | None = None) -> None:
        options = options or ProxyOptions()
        self.nursery = nursery
        self.sidecars: dict[PeerId, Sidecar | None] = {}
        self.order: list[PeerId] = []
        self.opened: list[PeerId] = []
        self.selector = Selector(self)
        self.proxy = ClientProxy(self.selector, self, options)
        self.options = options

    def add(self, name: str | None, *, service_up: bool = True) -> PeerId:
        peer = KeyPair.generate().peer_id

        async def connect() -> trio.abc.Stream:
            if not service_up:
                raise ConnectionRefusedError(111, "connection refused")
            a, b = trio.testing.memory_stream_pair()
            self.nursery.start_soon(http_service, b, name)
            return a

        self.sidecars[peer] = None if name is None else Sidecar("127.0.0.1", 1, self.options, connect=connect)
        self.order.append(peer)
        return peer

    # ServiceNetwork
    async def find_instances(self, key: bytes, *, timeout: float) -> list[PeerId]:
        return list(self.order)

    async def ping(self, peer: PeerId, *, timeout: float) -> float:
        return 0.001 * (self.order.index(peer) + 1)

    # StreamOpener
    async def open_stream(self, peer: PeerId, protocol: str, *, timeout: float) -> trio.abc.HalfCloseableStream:
        assert protocol == PROTOCOL_ID
        self.opened.append(peer)
        sidecar = self.sidecars[peer]
        if sidecar is None:
            raise DialError(peer, {"x": ConnectionRefusedError()})
        a, b = trio.testing.memory_stream_pair()

        async def serve() -> None:
            try:
                await sidecar.handle_stream(b)
            finally:
                await b.aclose()

        self.nursery.start_soon(serve)
        return a

    def client(self) -> Client:
        a, b = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.proxy.handle_connection, b)
        return Client(a)


class Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = [(b"host", b"x"), (b"content-length", str(len(body)).encode())]
        await self.stream.send_all(self.conn.send(h11.Request(method=method, target=target, headers=headers)))
        await self.stream.send_all(self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage()))
        return await self.response()

    async def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        status, headers, data = 0, {}, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status, headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, headers, data
            else:
                raise AssertionError(event)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/hello/x/y?q=1", ("hello", b"/x/y?q=1")),
        (b"/hello", ("hello", b"/")),
        (b"/hello?q", ("hello", b"/?q")),
        (b"/", ("", b"/")),
        (b"http://127.0.0.1:4200/hello/x", ("hello", b"/x")),
        (b"*", None),
    ],
)
def test_split_target(target: bytes, expected: tuple[str, bytes] | None) -> None:
    assert split_target(target) == expected


async def test_forwards_to_best_with_path_stripped_and_keep_alive(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery)
        rig.add("fast")
        rig.add("slow")
        client = rig.client()
        status, _, body = await client.request("GET", "/svc/a/b?c=d")
        assert (status, body) == (200, b"fast /a/b?c=d")
        status, _, body = await client.request("DELETE", "/svc")
        assert (status, body) == (200, b"fast /")
        status, _, body = await client.request("POST", "/svc/count", b"x" * 300_000)
        assert (status, body) == (200, b"300000")
        assert rig.proxy.requests == 3  # one connection, three requests
        nursery.cancel_scope.cancel()


async def test_proxy_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, ProxyOptions(response_timeout=2.0))
        status, headers, body = await rig.client().request("GET", "/")
        assert (status, headers[ERROR_HEADER]) == (404, b"no-service") and body.endswith(b"\n")
        rig.order.clear()
        status, headers, body = await rig.client().request("GET", "/nothing/")
        assert (status, body) == (503, b"no instance of nothing could be found\n")
        rig.add("one")
        start = trio.current_time()
        status, headers, _ = await rig.client().request("GET", "/svc/slow")
        assert (status, headers[ERROR_HEADER]) == (504, b"upstream-timeout")
        assert trio.current_time() - start == pytest.approx(2.0)
        # malformed request line: 400, one line, connection closed
        a, b = trio.testing.memory_stream_pair()
        nursery.start_soon(rig.proxy.handle_connection, b)
        await a.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        raw = b""
        while chunk := await a.receive_some(65536):
            raw += chunk
        assert raw.startswith(b"HTTP/1.1 400 ")
        assert raw.split(b"\r\n\r\n", 1)[1].count(b"\n") == 1
        nursery.cancel_scope.cancel()


async def test_idempotent_request_retried_on_next_best(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery)
        dead = rig.add(None)  # node unreachable
        broken = rig.add("broken", service_up=False)  # node up, service down
        good = rig.add("good")
        client = rig.client()
        status, _, body = await client.request("GET", "/svc/x")  # dead -> broken: both fail, 2 tries only
        assert status == 502 and rig.opened == [dead, broken]
        assert dead not in rig.selector.cached("svc") and broken not in rig.selector.cached("svc")
        status, _, body = await rig.client().request("PUT", "/svc/count", b"abc")
        assert (status, body) == (200, b"3") and rig.opened[-1] == good
        nursery.cancel_scope.cancel()


async def test_non_idempotent_request_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery)
        rig.add(None)
        rig.add("good")
        status, headers, _ = await rig.client().request("POST", "/svc/count", b"abc")
        assert (status, headers[ERROR_HEADER]) == (502, b"instance-unreachable")
        assert len(rig.opened) == 1
        nursery.cancel_scope.cancel()
