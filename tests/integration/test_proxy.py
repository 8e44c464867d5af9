"""The proxy pair on real hosts and sockets (127.0.0.1): a bootstrap, two instances of a tiny h11
service each behind a sidecar node (one node reached through a relay adding 20 ms each way), and a
client node running the client proxy."""

from __future__ import annotations

import gc
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

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
from tests.integration._http import Client, delaying_relay, http_service
from tests.integration._util import wait_until

DELAY = 0.020  # each way, through the relay
BIG = 50 * 1024 * 1024


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


async def test_a_client_leaving_mid_body_leaves_nothing_behind() -> None:
    async with network() as net:
        assert await (await Client.open(net.port)).request("GET", "/hello/warm") == (200, b"fast /warm")
        raw = await trio.open_tcp_stream("127.0.0.1", net.port)
        await raw.send_all(b"POST /hello/count HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n")
        await raw.send_all(b"u" * 1_000_000)  # a tenth of it, then the client is gone
        await raw.aclose()

        def streams_open() -> int:
            return sum(len(c.session.streams) for conns in net.client.connections.values() for c in conns)

        # the overlay stream to the instance is closed on both sides, the service's connection too
        await wait_until(lambda: streams_open() == 0, timeout=5, what="the client proxy's streams closed")
        fast = net.fast.host
        await wait_until(
            lambda: sum(len(c.session.streams) for conns in fast.connections.values() for c in conns) == 0,
            timeout=5, what="the sidecar's streams closed",
        )
        assert net.proxy.requests == 2
        # and the next request is served as usual
        client = await Client.open(net.port)
        assert await client.request("POST", "/hello/count", b"abc") == (200, b"3")
