"""The proxy pair on real hosts and sockets (127.0.0.1): a bootstrap, two instances of a tiny h11
service each behind a sidecar node (one node reached through a relay adding 20 ms each way), and a
client node running the client proxy."""

from __future__ import annotations

import gc
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import h11
import psutil
import trio

from physarum.dht.service import KadDHT
from physarum.overlay.host import Host, open_host
from physarum.psk import generate_psk
from physarum.services import (
    PROTOCOL_ID,
    Advertiser,
    ClientProxy,
    OverlayNetwork,
    Selector,
    Sidecar,
    service_key,
)
from tests.integration._util import wait_until

DELAY = 0.020  # each way, through the relay
BIG = 50 * 1024 * 1024


async def _events(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(bytes(await stream.receive_some(65536)))
    return event  # type: ignore[return-value]


async def http_service(name: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """/count answers the request body's length; /big?n=N sends N bytes; /missing is a 404;
    anything else answers ``NAME PATH``."""

    async def serve(stream: trio.SocketStream) -> None:
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


@dataclass
class Instance:
    name: str
    host: Host
    cancel: trio.CancelScope


@dataclass
class Net:
    fast: Instance
    slow: Instance
    client: Host
    selector: Selector
    proxy: ClientProxy
    port: int


async def _instance(
    nursery: trio.Nursery, psk: bytes, boot: str, name: str, delay: float | None,
    task_status: trio.TaskStatus[Instance] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.CancelScope() as cancel:
        service_port = await nursery.start(http_service, name)
        async with open_host(psk=psk) as host, trio.open_nursery() as inner:
            if delay is not None:
                port = host.addrs[0].value_for_protocol("tcp")
                assert port is not None
                relay = await nursery.start(delaying_relay, int(port), delay)
                host.set_announce([f"/ip4/127.0.0.1/tcp/{relay}"])
            host.set_handler(PROTOCOL_ID, Sidecar("127.0.0.1", service_port).handle_stream)
            dht = KadDHT.for_host(host, bootstrap=[boot])
            await inner.start(dht.run)
            advertiser = Advertiser("hello", dht, host)
            await inner.start(advertiser.run)
            await wait_until(lambda: advertiser.provided > 0, timeout=10, what="provided")
            task_status.started(Instance(name, host, cancel))
            await trio.sleep_forever()


@asynccontextmanager
async def network() -> AsyncIterator[Net]:
    psk = generate_psk()
    async with open_host(psk=psk) as boot_host, trio.open_nursery() as nursery:
        boot_dht = KadDHT.for_host(boot_host)
        await nursery.start(boot_dht.run)
        boot = str(boot_host.addrs[0])
        fast: Instance = await nursery.start(_instance, nursery, psk, boot, "fast", None)
        slow: Instance = await nursery.start(_instance, nursery, psk, boot, "slow", DELAY)
        async with open_host(psk=psk, listen=()) as client:
            # A DHT client: instances never dial it, so it reaches each through its advertised address.
            dht = KadDHT.for_host(client, server=False, bootstrap=[boot])
            await nursery.start(dht.run)
            key = service_key("hello")
            await wait_until(lambda: len(boot_dht.providers.get(key, trio.current_time())) == 2, timeout=10,
                             what="two providers")
            network = OverlayNetwork(client, dht)
            selector = Selector(network)
            await nursery.start(selector.run)
            proxy = ClientProxy(selector, network)
            port = await nursery.start(proxy.run)
            yield Net(fast, slow, client, selector, proxy, port)
            nursery.cancel_scope.cancel()


class Client:
    """A keep-alive HTTP/1.1 client on a real socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

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
            elif isinstance(event, h11.Data):
                n += len(event.data)
                if not count_only:
                    data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, (str(n).encode() if count_only else bytes(data))
            else:
                raise AssertionError(event)


async def test_fastest_instance_serves_and_proxy_errors() -> None:
    async with network() as net:
        client = await Client.open(net.port)
        for _ in range(5):
            assert await client.request("GET", "/hello/x?y=1") == (200, b"fast /x?y=1")
        rtts = net.selector.cached("hello")
        assert rtts[net.fast.host.peer_id] < DELAY < 2 * DELAY <= rtts[net.slow.host.peer_id]
        # the service's own 404 passes through; the proxy's own errors are told apart by status
        assert await client.request("GET", "/hello/missing") == (404, b"not here")
        assert await (await Client.open(net.port)).request("GET", "/") == (
            404, b"no service in the path: ask for /SERVICE/PATH\n")
        status, body = await (await Client.open(net.port)).request("GET", "/nothing/x")
        assert (status, body) == (503, b"no instance of nothing could be found\n")
        raw = await trio.open_tcp_stream("127.0.0.1", net.port)
        await raw.send_all(b"GET /hello/x HTTP/1.1\r\nno colon here\r\n\r\n")
        answer = b""
        while chunk := await raw.receive_some(65536):
            answer += chunk
        head, _, text = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and text.startswith(b"malformed request") and text.count(b"\n") == 1


async def test_killed_instance_retried_and_evicted() -> None:
    async with network() as net:
        client = await Client.open(net.port)
        assert await client.request("GET", "/hello/a") == (200, b"fast /a")
        net.fast.cancel.cancel()  # the fast instance's node and service go away
        killed = trio.current_time()
        answers = []
        while net.fast.host.peer_id in net.selector.cached("hello"):
            answers.append(await client.request("GET", "/hello/b"))
            assert trio.current_time() - killed < 2.0, "the dead instance stayed in the cache"
        assert trio.current_time() - killed < 2.0
        for _ in range(5):
            answers.append(await client.request("GET", "/hello/b"))
        assert set(answers) == {(200, b"slow /b")}


async def test_big_bodies_stream_with_bounded_memory() -> None:
    async with network() as net:
        proc = psutil.Process()
        client = await Client.open(net.port)
        assert await client.request("GET", "/hello/warm") == (200, b"fast /warm")
        gc.collect()
        before = proc.memory_info().rss
        peak = before
        done = trio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                with trio.move_on_after(0.05):
                    await done.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            t0 = trio.current_time()
            assert await client.request("POST", "/hello/count", BIG) == (200, str(BIG).encode())
            t1 = trio.current_time()
            assert await client.request("GET", f"/hello/big?n={BIG}", count_only=True) == (200, str(BIG).encode())
            t2 = trio.current_time()
            done.set()
        growth = (peak - before) / 2**20
        print(f"\n50 MiB up {BIG / 2**20 / (t1 - t0):.0f} MiB/s, down {BIG / 2**20 / (t2 - t1):.0f} MiB/s "
              f"(proxy pair + service + client in one process); RSS growth {growth:.1f} MiB")
        assert growth < 32


async def test_added_latency_of_the_proxy_pair() -> None:
    """Not a benchmark (bench/ is): a figure printed for the report, and a loose sanity bound."""
    async with network() as net:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(http_service, "direct")
            direct, proxied = await Client.open(port), await Client.open(net.port)
            await proxied.request("GET", "/hello/warm")
            d, p = [], []
            for _ in range(200):
                t = trio.current_time()
                await direct.request("GET", "/x")
                d.append(trio.current_time() - t)
                t = trio.current_time()
                await proxied.request("GET", "/hello/x")
                p.append(trio.current_time() - t)
            dm, pm = statistics.median(d) * 1e6, statistics.median(p) * 1e6
            print(f"\nmedian GET: direct {dm:.0f} us, through the proxy pair {pm:.0f} us, added {pm - dm:.0f} us "
                  "(all in one process on a shared 2-core machine)")
            assert pm < 50_000
            nursery.cancel_scope.cancel()
