"""The allocator: starts an instance of a service on this machine when a client asks for one.

An allocator node provides the DHT key of ``physarum-allocator`` and serves
``/physarum/allocator/1.0.0``. A client proxy whose best instance is missing or misses the soft RTT
limit asks the allocator with the lowest RTT (:class:`AllocatorClient`), usually the one on its own
machine. Unlike PhysarumSM's:

* the allocator answers only once the instance **accepts connections** on its port, and answers
  with the instance's peer id and addresses, so the client sends traffic to it at once instead of
  waiting for its provider record to spread;
* one instance per service per allocator: concurrent and later requests for a service that runs
  here share it (no duplicate allocations while it boots);
* ``capacity`` bounds the instances (a request over it is refused with a reason); instances idle
  for ``idle_timeout`` (no request through their sidecar) are stopped;
* only peers of the private network can ask (the overlay's PSK), and ports are options.

Each instance gets a sidecar (:class:`~physarum.services.proxy.Sidecar`) on a host of its own (a
fresh identity) that joins the network through the allocator and provides the service's key, so
other clients find it as they find any instance.

Wire: one request per stream, uvarint-length-prefixed JSON (as the registry):
``{"op": "allocate", "service": NAME}`` -> ``{"peer": ID, "addrs": [...], "reused": BOOL,
"seconds": S}`` or ``{"error": CODE, "message": TEXT}`` (:class:`AllocationError`'s codes).
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from physarum.dht.service import KadDHT
from physarum.errors import PEER_FAILURES, DecodeError, PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay.host import Host
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.services.discovery import Advertiser, AdvertiserOptions, service_key
from physarum.services.errors import AllocationError, AtCapacityError, NoAllocatorError
from physarum.services.proxy import PROTOCOL_ID as SIDECAR_PROTOCOL
from physarum.services.proxy import ProxyOptions, Sidecar, sidecar_limits
from physarum.services.registry import (
    NoRegistryError,
    RegistryClient,
    RegistryError,
    ServiceInfo,
    UnknownServiceError,
)
from physarum.services.runtime import Instance, Runtime, StartError
from physarum.services.wire import call, serve_request

log = logging.getLogger("physarum.services.allocator")

PROTOCOL_ID = "/physarum/allocator/1.0.0"
#: The name allocators provide on the DHT (its :func:`service_key`).
ALLOCATOR_NAME = "physarum-allocator"
#: Allocation-time buckets (seconds) of ``physarum_allocator_allocation_seconds``.
ALLOCATION_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


_CALL_FAILURES: tuple[type[BaseException], ...] = (DecodeError, *PEER_FAILURES)


@dataclass(frozen=True)
class AllocatorOptions:
    """An allocator's limits and timings (seconds)."""

    capacity: int = 16
    """Most instances running at once."""
    idle_timeout: float = 60.0
    """An instance without a request for this long is stopped (PhysarumSM's 60 s)."""
    cull_interval: float = 5.0
    """How often idle instances are looked for."""
    ready_timeout: float = 30.0
    """An instance must accept connections on its port within this, else the allocation fails."""
    stop_timeout: float = 5.0
    """A stopping instance gets this long before it is killed."""
    port_range: tuple[int, int] | None = None
    """Ports handed to instances (inclusive); None: any free port the system gives."""
    runtimes: tuple[str, ...] = ("process", "docker")
    """Which runtime starts a service that more than one could start, in order of preference."""
    request_timeout: float = 10.0
    """A request must arrive within this."""
    instance_listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    """Where each instance's sidecar host listens (use the machine's address for other machines)."""
    advertise: AdvertiserOptions = field(default_factory=AdvertiserOptions)
    proxy: ProxyOptions = field(default_factory=ProxyOptions)


@dataclass
class RunningInstance:
    """An instance this allocator started, and its sidecar."""

    service: str
    port: int
    instance: Instance
    host: Host
    sidecar: Sidecar
    runtime: str
    started_at: float
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def addrs(self) -> list[Multiaddr]:
        return self.host.addrs

    def idle_for(self, now: float) -> float:
        last = self.sidecar.last_request
        return now - (last if last is not None else self.started_at)


def _free_port(port_range: tuple[int, int] | None, taken: set[int]) -> int:
    """A port nobody listens on now (the instance binds it a moment later)."""
    candidates: Sequence[int] = range(port_range[0], port_range[1] + 1) if port_range else [0] * 8
    for port in candidates:
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise
            chosen: int = s.getsockname()[1]
            if chosen not in taken:
                return chosen
    raise AtCapacityError(f"no free port in {port_range[0]}-{port_range[1]}" if port_range else "no free port")


class Allocator:
    """Serves allocation requests on ``host`` (see the module docstring).

    ``registry`` gives each service's :class:`ServiceInfo`; ``runtimes`` start instances, by name.
    Attach it to a running host with a running ``dht`` (``host.add_service(allocator)``), or call
    :meth:`attach` and start :meth:`run` yourself.
    """

    def __init__(
        self,
        dht: KadDHT,
        registry: RegistryClient,
        runtimes: Mapping[str, Runtime],
        options: AllocatorOptions = AllocatorOptions(),
        *,
        metrics: Any = None,
    ) -> None:
        self.dht = dht
        self.registry = registry
        self.runtimes = dict(runtimes)
        self.options = options
        self.instances: dict[str, RunningInstance] = {}
        self._pending: dict[str, trio.Event] = {}
        self._failures: dict[str, AllocationError] = {}
        self._host: Host | None = None
        self._nursery: trio.Nursery | None = None
        self.allocations: dict[str, int] = {}
        self._metrics = _Metrics(metrics, self) if metrics is not None else None

    def attach(self, host: Host) -> None:
        self._host = host
        host.set_handler(PROTOCOL_ID, self.handle_stream)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Clean up what an earlier run left (each runtime's ``cleanup``), advertise, serve and cull
        until cancelled; then stop every instance."""
        assert self._host is not None, "attach the allocator to a host first"
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._cleanup()
                await nursery.start(Advertiser(ALLOCATOR_NAME, self.dht, self._host, self.options.advertise).run)
                task_status.started()
                while True:
                    await trio.sleep(self.options.cull_interval)
                    await self.cull()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for running in list(self.instances.values()):
                    await self._stop(running, "the allocator is stopping")

    async def _cleanup(self) -> None:
        """Before anything is started: each runtime removes the instances an earlier run (killed,
        so it could not stop them) left; a failure is logged, not fatal (the engine may be back
        by the first request)."""
        for name, runtime in self.runtimes.items():
            try:
                removed = await runtime.cleanup()
            except StartError as e:
                log.warning("runtime %s: cannot remove an earlier run's instances: %s", name, e)
                continue
            if removed:
                log.info("runtime %s: removed %d instance(s) an earlier run left: %s", name, len(removed),
                         ", ".join(removed))

    def _count(self, result: str) -> None:
        self.allocations[result] = self.allocations.get(result, 0) + 1
        if self._metrics is not None:
            self._metrics.allocations.labels(result=result).inc()

    async def cull(self) -> int:
        """Stop instances idle over ``idle_timeout`` or that ended; how many."""
        now = trio.current_time()
        gone = 0
        for running in list(self.instances.values()):
            status = running.instance.exit_status()
            if status is not None:
                await self._stop(running, f"it exited with status {status}")
                gone += 1
            elif running.idle_for(now) > self.options.idle_timeout:
                await self._stop(running, f"idle for {running.idle_for(now):.0f} s")
                gone += 1
        return gone

    async def _stop(self, running: RunningInstance, why: str) -> None:
        if self.instances.get(running.service) is running:
            del self.instances[running.service]
        log.info("stopping %s (%s, port %d): %s", running.service, running.instance.description, running.port, why)
        running.cancel_scope.cancel()
        await running.instance.stop(self.options.stop_timeout)

    async def allocate(self, service: str) -> tuple[RunningInstance, bool]:
        """The instance of ``service`` here (started now unless it runs already) and whether it was
        already running. Concurrent calls for one service share one start.

        Raises:
            AllocationError: unknown service, at capacity, no runtime for it, or it failed to start.
        """
        while True:
            running = self.instances.get(service)
            if running is not None:
                status = running.instance.exit_status()
                if status is None:
                    self._count("reused")
                    return running, True
                # Ended before the cull saw it: stop its sidecar before a new one takes its place.
                await self._stop(running, f"it exited with status {status}")
                continue
            pending = self._pending.get(service)
            if pending is None:
                break
            await pending.wait()
            failure = self._failures.get(service)
            if failure is not None and service not in self.instances:
                raise failure
        done = self._pending[service] = trio.Event()
        self._failures.pop(service, None)
        started = trio.current_time()
        try:
            running = await self._start(service)
        except AllocationError as e:
            self._failures[service] = e
            self._count(e.code)
            log.info("allocating %s failed: %s", service, e)
            raise
        finally:
            del self._pending[service]
            done.set()
        seconds = trio.current_time() - started
        self._count("started")
        if self._metrics is not None:
            self._metrics.seconds.observe(seconds)
        log.info("started %s (%s, %s) on port %d in %.0f ms; sidecar %s", service, running.runtime,
                 running.instance.description, running.port, seconds * 1000, running.host.peer_id)
        return running, False

    def _runtime_for(self, info: ServiceInfo) -> Runtime:
        for name in self.options.runtimes:
            runtime = self.runtimes.get(name)
            if runtime is not None and runtime.can_run(info):
                return runtime
        needs = " or ".join(k for k, v in (("process (a command)", info.command), ("docker (an image)", info.image)) if v)
        have = ", ".join(self.runtimes) or "none"
        raise AllocationError(f"{info.name} needs the {needs} runtime; this allocator has {have}", "no-runtime")

    async def _start(self, service: str) -> RunningInstance:
        assert self._host is not None and self._nursery is not None, "the allocator is not running"
        if len(self.instances) >= self.options.capacity:
            raise AtCapacityError(f"at capacity ({self.options.capacity} instances)")
        try:
            info = await self.registry.get(service)
        except UnknownServiceError as e:
            raise AllocationError(str(e), "unknown-service") from None
        except NoRegistryError as e:
            raise AllocationError(str(e), "no-registry") from None
        except RegistryError as e:
            raise AllocationError(f"registry: {e}", "registry") from None
        assert info.info is not None
        runtime = self._runtime_for(info.info)
        port = _free_port(self.options.port_range, {r.port for r in self.instances.values()})
        env = {
            "SERVICE_PORT": str(port),
            "SERVICE_NAME": service,
            "P2P_BOOTSTRAPS": " ".join(str(a) for a in self._host.addrs),
        }
        try:
            instance = await runtime.start(info.info, env)
        except StartError as e:
            raise AllocationError(str(e), "start-failed") from None
        try:
            await self._wait_ready(service, instance, port)
            running = await self._sidecar(service, port, instance, runtime.name)
        except BaseException:
            with trio.CancelScope(shield=True):
                await instance.stop(self.options.stop_timeout)
            raise
        self.instances[service] = running
        return running

    async def _wait_ready(self, service: str, instance: Instance, port: int) -> None:
        """Poll the port until it accepts a connection, the instance ends, or the deadline."""
        deadline = trio.current_time() + self.options.ready_timeout
        delay = 0.005
        while True:
            status = instance.exit_status()
            if status is not None:
                raise AllocationError(
                    f"{service} ({instance.description}) exited with status {status} before listening on port {port}",
                    "start-failed",
                )
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                pass
            else:
                await stream.aclose()
                return
            if trio.current_time() >= deadline:
                raise AllocationError(
                    f"{service} ({instance.description}) did not listen on port {port} within "
                    f"{self.options.ready_timeout:g} s", "not-ready",
                )
            await trio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _sidecar(self, service: str, port: int, instance: Instance, runtime: str) -> RunningInstance:
        """A host of its own for the instance: listening, joined through ours, serving the sidecar."""
        assert self._host is not None and self._nursery is not None
        host = Host(KeyPair.generate(), psk=self._host.psk, listen=(), limits=sidecar_limits())
        sidecar = Sidecar("127.0.0.1", port, self.options.proxy)
        host.set_handler(SIDECAR_PROTOCOL, sidecar.handle_stream)
        running = RunningInstance(service, port, instance, host, sidecar, runtime, trio.current_time())
        ours = self._host.addrs

        async def life(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with running.cancel_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(host.run)
                    for a in self.options.instance_listen:
                        await host.listen(addrs_.parse(a))
                    dht = KadDHT.for_host(host, bootstrap=ours)
                    await nursery.start(dht.run)
                    await nursery.start(Advertiser(service, dht, host, self.options.advertise).run)
                    task_status.started()

        await self._nursery.start(life)
        return running

    async def handle_stream(self, stream: trio.abc.HalfCloseableStream) -> None:
        async def answer(request: dict[str, Any]) -> list[dict[str, Any]]:
            return [await self._answer(request)]

        await serve_request(stream, answer, timeout=self.options.request_timeout, log=log)

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") != "allocate" or not isinstance(request.get("service"), str):
            return {"error": "malformed", "message": 'expected {"op": "allocate", "service": NAME}'}
        started = time.monotonic()
        try:
            running, reused = await self.allocate(request["service"])
        except AllocationError as e:
            return {"error": e.code, "message": e.message}
        return {"peer": str(running.host.peer_id), "addrs": [str(a) for a in running.addrs()],
                "reused": reused, "seconds": round(time.monotonic() - started, 6)}


class _Metrics:
    def __init__(self, registry: Any, allocator: Allocator) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.allocations = Counter(
            "physarum_allocator_allocations", "Allocation requests by result (started, reused, or the error code)",
            ["result"], registry=registry,
        )
        self.seconds = Histogram(
            "physarum_allocator_allocation_seconds", "Time from request to an instance accepting connections",
            buckets=ALLOCATION_BUCKETS, registry=registry,
        )
        instances = Gauge("physarum_allocator_instances", "Instances running", registry=registry)
        instances.set_function(lambda: len(allocator.instances))


@dataclass(frozen=True)
class Allocated:
    """An allocator's answer: the instance's sidecar peer and addresses."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...]
    reused: bool
    seconds: float
    allocator: PeerId


class AllocatorClient:
    """Asks the allocator with the lowest RTT from this node for an instance of a service."""

    def __init__(self, network: Any, *, timeout: float = 30.0, ping_budget: float = 1.0,
                 cache_ttl: float = 30.0, nodes: Sequence[PeerId] | None = None) -> None:
        self.network = network
        self.timeout = timeout
        self.ping_budget = ping_budget
        self.cache_ttl = cache_ttl
        self.fixed = list(nodes) if nodes is not None else None
        self._ranked: list[PeerId] = []
        self._ranked_at = -math.inf
        self.rtts: dict[PeerId, float] = {}
        """The allocators that answered the latest ranking's pings and their RTTs in seconds
        (what :meth:`ranked` ordered them by; a demo or an operator can show why one was chosen)."""

    async def ranked(self) -> list[PeerId]:
        """Allocators that answered a ping, nearest first (cached ``cache_ttl`` s)."""
        if self._ranked and trio.current_time() - self._ranked_at < self.cache_ttl:
            return self._ranked
        if self.fixed is not None:
            found = self.fixed
        else:
            try:
                found = await self.network.find_instances(service_key(ALLOCATOR_NAME), timeout=self.timeout)
            except PEER_FAILURES as e:
                log.debug("looking up allocators failed: %s", e)
                found = []
        rtts: dict[PeerId, float] = {}

        async def one(peer: PeerId) -> None:
            try:
                rtts[peer] = await self.network.ping(peer, timeout=self.ping_budget)
            except PEER_FAILURES as e:
                log.debug("allocator %s did not answer a ping: %s", peer, e)

        with trio.move_on_after(self.ping_budget):
            async with trio.open_nursery() as nursery:
                for peer in found:
                    nursery.start_soon(one, peer)
        self._ranked = sorted(rtts, key=rtts.__getitem__)
        self.rtts = rtts
        self._ranked_at = trio.current_time()
        return self._ranked

    async def allocate(self, service: str) -> Allocated:
        """An instance of ``service`` from the nearest allocator that gives one.

        Raises:
            AllocationError: every allocator refused (the nearest one's reason; ``code`` is its).
            NoAllocatorError: none found or reachable.
        """
        allocators = await self.ranked()
        if not allocators:
            self._ranked_at = -math.inf
            raise NoAllocatorError("no allocator found on the network (run 'physarum allocator')")
        first: AllocationError | None = None
        for peer in allocators:
            try:
                return await self._call(peer, service)
            except AllocationError as e:
                if e.code == "unknown-service":
                    raise
                first = first or e
            except _CALL_FAILURES as e:
                log.info("allocator %s failed: %s", peer, e)
                self._ranked_at = -math.inf
                first = first or NoAllocatorError(f"allocator {peer}: {e}")
        assert first is not None
        raise first

    async def _call(self, peer: PeerId, service: str) -> Allocated:
        def refusal(code: str, message: str) -> AllocationError:
            return AllocationError(f"allocator {peer}: {message}", code)

        with trio.fail_after(self.timeout):
            stream = await self.network.open_stream(peer, PROTOCOL_ID, timeout=self.timeout)
            answers = await call(stream, {"op": "allocate", "service": service}, refusal=refusal)
        if not answers:
            raise DecodeError("the allocator closed the stream without an answer")
        answer = answers[0]
        try:
            return Allocated(
                PeerId.from_string(answer["peer"]),
                tuple(addrs_.parse(a) for a in answer["addrs"]),
                bool(answer.get("reused")),
                float(answer.get("seconds", 0.0)),
                peer,
            )
        except (KeyError, TypeError, ValueError, PhysarumError) as e:
            raise DecodeError(f"malformed allocator answer: {e}") from None


__all__ = [
    "ALLOCATOR_NAME",
    "PROTOCOL_ID",
    "Allocated",
    "AllocationError",
    "Allocator",
    "AllocatorClient",
    "AllocatorOptions",
    "AtCapacityError",
    "NoAllocatorError",
    "RunningInstance",
]
