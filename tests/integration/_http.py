"""HTTP pieces for the services' integration tests: a tiny h11 service, a TCP relay that adds
latency, and a keep-alive client, all on real sockets on 127.0.0.1."""

from __future__ import annotations

import h11
import trio


async def _events(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(bytes(await stream.receive_some(65536)))
    return event  # type: ignore[return-value]


async def http_service(name: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """/count answers the request body's length; /big?n=N sends N bytes; /missing is a 404;
    anything else answers ``NAME PATH``."""

    async def serve(stream: trio.SocketStream) -> None:
        try:
            await serve_one(stream)
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client (a sidecar giving up on a request) went away
        finally:
            await stream.aclose()

    async def serve_one(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            request = await _events(conn, stream)
            if not isinstance(request, h11.Request):
                return
            size = 0
            while not isinstance(event := await _events(conn, stream), h11.EndOfMessage):
                assert isinstance(event, h11.Data)
                size += len(event.data)
            target = request.target.decode()
            status, body, length = 200, f"{name} {target}".encode(), -1
            if target == "/count":
                body = str(size).encode()
            elif target.startswith("/big?n="):
                length = int(target[7:])
            elif target == "/missing":
                status, body = 404, b"not here"
            n = length if length >= 0 else len(body)
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=[(b"content-length", str(n).encode())])))
            if length >= 0:
                chunk = b"z" * 65536
                while length > 0:
                    await stream.send_all(conn.send(h11.Data(data=chunk[: min(length, len(chunk))])))
                    length -= len(chunk)
            else:
                await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            conn.start_next_cycle()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


async def delaying_relay(target_port: int, delay: float, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """TCP relay to 127.0.0.1:target_port adding ``delay`` each way (bytes keep their order)."""

    async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](1000)

        async def writer() -> None:
            async for due, data in receive:
                await trio.sleep_until(due)
                await dst.send_all(data)
            await dst.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            async with send:
                while data := await src.receive_some(65536):
                    await send.send((trio.current_time() + delay, bytes(data)))

    async def handle(client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream("127.0.0.1", target_port)
        except OSError:
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server)
                nursery.start_soon(pump, server, client)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await server.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


class Client:
    """A keep-alive HTTP/1.1 client on a real socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.headers: dict[bytes, bytes] = {}
        """The latest response's headers (lowercase names)."""

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def request(self, method: str, target: str, body: bytes | int = b"", *, count_only: bool = False
                      ) -> tuple[int, bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        size = body if isinstance(body, int) else len(body)
        headers = [(b"host", b"127.0.0.1"), (b"content-length", str(size).encode())]
        await self.stream.send_all(self.conn.send(h11.Request(method=method, target=target, headers=headers)))
        if isinstance(body, int):
            chunk = b"u" * 65536
            left = body
            while left > 0:
                await self.stream.send_all(self.conn.send(h11.Data(data=chunk[: min(left, len(chunk))])))
                left -= len(chunk)
        elif body:
            await self.stream.send_all(self.conn.send(h11.Data(data=body)))
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
        status, data, n = 0, bytearray(), 0
        while True:
            event = await _events(self.conn, self.stream)
            if isinstance(event, h11.Response):
                status = event.status_code
                self.headers = dict(event.headers)
            elif isinstance(event, h11.Data):
                n += len(event.data)
                if not count_only:
                    data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, (str(n).encode() if count_only else bytes(data))
            else:
                raise AssertionError(event)
