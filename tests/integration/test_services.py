"""The service layer on real hosts and sockets (127.0.0.1), in one process: a bootstrap, a registry
node (SQLite in tmp_path), an allocator starting real ``physarum hello`` processes, and a client
node with placement and the client proxy."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import trio

from physarum.dht.service import KadDHT
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import KeyPair
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
from physarum.services.allocator import ALLOCATOR_NAME, Allocator, AllocatorClient, AllocatorOptions
from physarum.services.placement import Placement
from physarum.services.proxy import INSTANCE_HEADER
from physarum.services.registry import (
    REGISTRY_NAME,
    NotOwnerError,
    RegistryClient,
    RegistryService,
    RegistryStore,
    ServiceInfo,
)
from physarum.services.runtime import ProcessRuntime, Runtime
from tests.integration._http import Client, delaying_relay, http_service
from tests.integration._util import wait_until

HELLO = (sys.executable, "-m", "physarum.cli", "hello")


@dataclass
class Services:
    psk: bytes
    boot: str
    registry: RegistryClient
    allocator: Allocator
    placement: Placement
    selector: Selector
    client: Host
    client_dht: KadDHT
    port: int
    nursery: trio.Nursery
    publisher: KeyPair

    async def add(self, name: str, command: tuple[str, ...] = HELLO, **kw: object) -> None:
        await self.registry.publish(self.publisher, ServiceInfo(name, command, **kw))  # type: ignore[arg-type]


@asynccontextmanager
async def services(tmp_path: Path, options: AllocatorOptions | None = None,
                   runtimes: Mapping[str, Runtime] | None = None) -> AsyncIterator[Services]:
    """``runtimes``: the allocator's (default: the process runtime)."""
    options = options or AllocatorOptions()
    psk = generate_psk()
    async with open_host(psk=psk) as boot_host, trio.open_nursery() as nursery:
        boot_dht = KadDHT.for_host(boot_host)
        await nursery.start(boot_dht.run)
        boot = str(boot_host.addrs[0])
        async with open_host(psk=psk) as reg_host, open_host(psk=psk) as alloc_host, \
                open_host(psk=psk, listen=()) as client:
            reg_dht = KadDHT.for_host(reg_host, bootstrap=[boot])
            await nursery.start(reg_dht.run)
            store = RegistryStore(str(tmp_path / "registry.db"))
            registry_node = RegistryService(store, reg_dht, RegistryClient(OverlayNetwork(reg_host, reg_dht)))
            registry_node.attach(reg_host)
            await nursery.start(registry_node.run)

            alloc_dht = KadDHT.for_host(alloc_host, bootstrap=[boot])
            await nursery.start(alloc_dht.run)
            allocator = Allocator(alloc_dht, RegistryClient(OverlayNetwork(alloc_host, alloc_dht)),
                                  runtimes or {"process": ProcessRuntime()}, options)
            allocator.attach(alloc_host)
            await nursery.start(allocator.run)

            client_dht = KadDHT.for_host(client, server=False, bootstrap=[boot])
            await nursery.start(client_dht.run)
            now = trio.current_time
            await wait_until(lambda: bool(boot_dht.providers.get(service_key(REGISTRY_NAME), now()))
                             and bool(boot_dht.providers.get(service_key(ALLOCATOR_NAME), now())),
                             timeout=10, what="registry and allocator provided")
            network = OverlayNetwork(client, client_dht)
            selector = Selector(network)
            await nursery.start(selector.run)
            registry = RegistryClient(network)
            placement = Placement(selector, network, registry, AllocatorClient(network))
            await nursery.start(placement.run)
            port = await nursery.start(ClientProxy(placement, network).run)
            try:
                yield Services(psk, boot, registry, allocator, placement, selector, client, client_dht, port,
                               nursery, KeyPair.generate())
            finally:
                nursery.cancel_scope.cancel()
                store.close()


def _pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pid(allocator: Allocator, service: str) -> int:
    return int(allocator.instances[service].instance.description.split()[-1])


async def test_first_request_allocates_then_reuses_and_100_clients_share_it(tmp_path: Path) -> None:
    async with services(tmp_path) as s:
        await s.add("hello-world")
        client = await Client.open(s.port)
        t0 = trio.current_time()
        assert await client.request("GET", "/hello-world/") == (200, b"Hello, world\n")
        first = trio.current_time() - t0
        running = s.allocator.instances["hello-world"]
        assert client.headers[INSTANCE_HEADER].startswith(str(running.host.peer_id).encode() + b"; rtt-ms=")
        assert client.headers[b"x-served-by"] == f"hello-world@127.0.0.1:{running.port}".encode()
        for _ in range(5):
            assert await client.request("GET", "/hello-world/again") == (200, b"Hello, world\n")
        assert s.allocator.allocations == {"started": 1}

        answers: list[tuple[int, bytes]] = []

        async def one() -> None:
            c = await Client.open(s.port)
            for _ in range(3):
                answers.append(await c.request("GET", "/hello-world/"))

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
        assert answers == [(200, b"Hello, world\n")] * 300
        assert s.allocator.allocations == {"started": 1} and s.placement.allocated == 1
        print(f"\nfirst request, allocation included: {first * 1000:.0f} ms")


async def test_concurrent_first_requests_share_one_allocation(tmp_path: Path) -> None:
    async with services(tmp_path) as s:
        await s.add("hello-world")
        answers: list[tuple[int, bytes]] = []

        async def one() -> None:
            answers.append(await (await Client.open(s.port)).request("GET", "/hello-world/"))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(one)
        assert answers == [(200, b"Hello, world\n")] * 20
        assert s.allocator.allocations == {"started": 1}


async def test_unknown_service_and_instances_that_cannot_start(tmp_path: Path) -> None:
    before = {c.pid for c in psutil.Process().children(recursive=True)}  # other tests' (podman)
    async with services(tmp_path, AllocatorOptions(ready_timeout=3.0)) as s:
        assert await (await Client.open(s.port)).request("GET", "/nope/") == (
            404, b"no service named 'nope' in the registry\n")
        await s.add("missing-command", ("/nonexistent/physarum-test-command",))
        status, body = await (await Client.open(s.port)).request("GET", "/missing-command/")
        assert status == 503 and b"command not found: /nonexistent/physarum-test-command" in body
        await s.add("exits", (sys.executable, "-c", "raise SystemExit(3)"))
        status, body = await (await Client.open(s.port)).request("GET", "/exits/")
        assert status == 503 and b"exited with status 3 before listening" in body
        # a command that never listens: the allocation gives up at ready_timeout and stops it
        await s.add("sleeps", (sys.executable, "-c", "import time; time.sleep(60)"))
        t0 = trio.current_time()
        status, body = await (await Client.open(s.port)).request("GET", "/sleeps/")
        assert status == 503 and b"did not listen on port" in body and b"within 3 s" in body
        assert trio.current_time() - t0 < 6
        assert s.allocator.instances == {}
        assert s.allocator.allocations == {"start-failed": 2, "not-ready": 1}
        ours = [c for c in psutil.Process().children(recursive=True) if c.pid not in before]
        await wait_until(lambda: all(_pid_gone(c.pid) for c in ours), timeout=10, what="its children gone")


async def test_no_free_port_is_refused_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        async with services(tmp_path, AllocatorOptions(port_range=(busy, busy))) as s:
            await s.add("hello-world")
            status, body = await (await Client.open(s.port)).request("GET", "/hello-world/")
            assert status == 503 and f"no free port in {busy}-{busy}".encode() in body
            assert s.allocator.instances == {} and s.allocator.allocations == {"capacity": 1}


async def test_capacity_and_idle_culling(tmp_path: Path) -> None:
    options = AllocatorOptions(capacity=1, idle_timeout=0.5, cull_interval=0.1)
    async with services(tmp_path, options) as s:
        await s.add("hello-world")
        await s.add("other")
        client = await Client.open(s.port)
        assert await client.request("GET", "/hello-world/") == (200, b"Hello, world\n")
        pid = _pid(s.allocator, "hello-world")
        status, body = await (await Client.open(s.port)).request("GET", "/other/")
        assert status == 503 and b"at capacity (1 instances)" in body
        # idle for 0.5 s: stopped, its process gone, its sidecar's host closed
        sidecar_host = s.allocator.instances["hello-world"].host
        await wait_until(lambda: not s.allocator.instances, timeout=5, what="the idle instance culled")
        await wait_until(lambda: _pid_gone(pid), timeout=5, what="its process ended")
        await wait_until(lambda: not sidecar_host.connections, timeout=5, what="its sidecar gone")
        # the room it left is used for the other service
        assert await (await Client.open(s.port)).request("GET", "/other/") == (200, b"Hello, world\n")


async def test_allocator_stops_its_instances_when_it_stops(tmp_path: Path) -> None:
    async with services(tmp_path) as s:
        await s.add("hello-world")
        assert await (await Client.open(s.port)).request("GET", "/hello-world/") == (200, b"Hello, world\n")
        pid = _pid(s.allocator, "hello-world")
    await wait_until(lambda: _pid_gone(pid), timeout=10, what="the instance's process ended with the allocator")


async def _slow_instance(nursery: trio.Nursery, psk: bytes, boot: str, name: str, delay: float,
                         task_status: trio.TaskStatus[Host] = trio.TASK_STATUS_IGNORED) -> None:
    """An instance of ``name`` started by hand, reached only through a relay adding ``delay`` each way."""
    service_port = await nursery.start(http_service, "slow")
    async with open_host(psk=psk) as host, trio.open_nursery() as inner:
        port = host.addrs[0].value_for_protocol("tcp")
        assert port is not None
        relay = await nursery.start(delaying_relay, int(port), delay)
        host.set_announce([f"/ip4/127.0.0.1/tcp/{relay}"])
        host.set_handler(PROTOCOL_ID, Sidecar("127.0.0.1", service_port).handle_stream)
        dht = KadDHT.for_host(host, bootstrap=[boot])
        await inner.start(dht.run)
        advertiser = Advertiser(name, dht, host)
        await inner.start(advertiser.run)
        await wait_until(lambda: advertiser.provided > 0, timeout=10, what="provided")
        task_status.started(host)
        await trio.sleep_forever()


async def test_soft_limit_allocates_nearer_and_moves_traffic(tmp_path: Path) -> None:
    async with services(tmp_path) as s:
        await s.add("hello", soft_rtt_ms=5.0)
        slow: Host = await s.nursery.start(_slow_instance, s.nursery, s.psk, s.boot, "hello", 0.020)
        client = await Client.open(s.port)
        # the only instance is 40 ms away: it answers, and a nearer one is allocated meanwhile
        assert await client.request("GET", "/hello/x") == (200, b"slow /x")
        assert client.headers[INSTANCE_HEADER].startswith(str(slow.peer_id).encode())
        await wait_until(lambda: "hello" in s.allocator.instances, timeout=10, what="a nearer instance")
        near = s.allocator.instances["hello"].host.peer_id
        await wait_until(lambda: near in s.selector.cached("hello"), timeout=10, what="it joined the cache")
        for _ in range(5):
            assert await client.request("GET", "/hello/x") == (200, b"Hello, world\n")
            assert client.headers[INSTANCE_HEADER].startswith(str(near).encode())
        assert s.allocator.allocations == {"started": 1}


async def test_hard_limit_from_the_registry_is_never_crossed(tmp_path: Path) -> None:
    async with services(tmp_path) as s:
        await s.add("hello", hard_rtt_ms=10.0)
        slow: Host = await s.nursery.start(_slow_instance, s.nursery, s.psk, s.boot, "hello", 0.020)
        client = await Client.open(s.port)
        # the slow instance is over the hard limit: never used; one is allocated and answers
        for _ in range(3):
            assert await client.request("GET", "/hello/x") == (200, b"Hello, world\n")
            assert not client.headers[INSTANCE_HEADER].startswith(str(slow.peer_id).encode())
        assert slow.peer_id not in s.selector.cached("hello")


async def test_killed_instance_is_dropped_and_replaced(tmp_path: Path) -> None:
    async with services(tmp_path, AllocatorOptions(cull_interval=0.1)) as s:
        await s.add("hello-world")
        client = await Client.open(s.port)
        assert await client.request("GET", "/hello-world/") == (200, b"Hello, world\n")
        first = s.allocator.instances["hello-world"]
        os.kill(_pid(s.allocator, "hello-world"), 9)
        killed = trio.current_time()
        # the allocator notices the exit, stops the sidecar; the client's cache drops it
        await wait_until(lambda: first.host.peer_id not in s.selector.cached("hello-world"), timeout=2,
                         what="the dead instance left the client's cache")
        assert trio.current_time() - killed < 2
        # the next request gets a new instance
        assert await (await Client.open(s.port)).request("GET", "/hello-world/") == (200, b"Hello, world\n")
        assert s.allocator.instances["hello-world"] is not first
        assert s.allocator.allocations == {"started": 2}


async def test_instance_killed_mid_run_requests_keep_succeeding(tmp_path: Path) -> None:
    # The client still has the dead instance cached: the request fails there, is retried, and the
    # retry finds no other instance, so placement allocates a new one (the allocator notices the
    # exit before its cull does).
    async with services(tmp_path, AllocatorOptions(cull_interval=60)) as s:
        await s.add("hello-world")
        client = await Client.open(s.port)
        assert await client.request("GET", "/hello-world/") == (200, b"Hello, world\n")
        first = s.allocator.instances["hello-world"]
        pid = _pid(s.allocator, "hello-world")
        os.kill(pid, 9)
        await wait_until(lambda: _pid_gone(pid), timeout=5, what="the instance died")
        assert first.host.peer_id in s.selector.cached("hello-world")
        for _ in range(3):
            assert await (await Client.open(s.port)).request("GET", "/hello-world/") == (200, b"Hello, world\n")
        assert s.allocator.allocations["started"] == 2
        assert s.allocator.instances["hello-world"] is not first
        await wait_until(lambda: not first.host.connections, timeout=5, what="the dead instance's sidecar stopped")


async def test_registry_entry_survives_registry_restart_and_refuses_strangers(tmp_path: Path) -> None:
    psk = generate_psk()
    db = str(tmp_path / "r.db")
    publisher, stranger = KeyPair.generate(), KeyPair.generate()
    async with open_host(psk=psk) as boot_host, trio.open_nursery() as nursery:
        boot_dht = KadDHT.for_host(boot_host)
        await nursery.start(boot_dht.run)
        boot = str(boot_host.addrs[0])
        async with open_host(psk=psk, listen=()) as client:
            dht = KadDHT.for_host(client, server=False, bootstrap=[boot])
            await nursery.start(dht.run)
            registry = RegistryClient(OverlayNetwork(client, dht), cache_ttl=0.0)
            for round_ in range(2):
                store = RegistryStore(db)
                async with open_host(psk=psk) as reg_host, trio.open_nursery() as reg_nursery:
                    reg_dht = KadDHT.for_host(reg_host, bootstrap=[boot])
                    await reg_nursery.start(reg_dht.run)
                    node = RegistryService(store, reg_dht)
                    node.attach(reg_host)
                    await reg_nursery.start(node.run)
                    await wait_until(lambda: any(p.peer_id == reg_host.peer_id for p in boot_dht.providers.get(
                                                     service_key(REGISTRY_NAME), trio.current_time())),
                                     timeout=10, what="registry node provided")
                    if round_ == 0:
                        await registry.publish(publisher, ServiceInfo("svc", HELLO, soft_rtt_ms=3.0))
                    else:
                        entry = await registry.get("svc")
                        assert entry.publisher == publisher.peer_id and entry.info is not None
                        assert entry.info.soft_rtt_ms == 3.0
                        with pytest.raises(NotOwnerError):
                            await registry.publish(stranger, ServiceInfo("svc", ("evil",)))
                        with pytest.raises(NotOwnerError):
                            await registry.delete(stranger, "svc")
                        assert [e.name for e in await registry.list()] == ["svc"]
                    reg_nursery.cancel_scope.cancel()
                store.close()
            nursery.cancel_scope.cancel()
