"""The allocator with the docker runtime, for real: podman's Docker Engine API
(tests/containers/podman.py) running the busybox image tests/containers/setup.sh builds, behind the
whole service layer of tests/integration/test_services.py (bootstrap, registry, allocator, client
proxy on 127.0.0.1)."""

from __future__ import annotations

import logging
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from physarum.dht.service import KadDHT
from physarum.overlay.host import open_host
from physarum.psk import generate_psk
from physarum.services.allocator import Allocator, AllocatorOptions
from physarum.services.docker_runtime import DockerInstance, DockerOptions, DockerRuntime
from physarum.services.network import OverlayNetwork
from physarum.services.proxy import INSTANCE_HEADER
from physarum.services.registry import RegistryClient
from physarum.services.runtime import ProcessRuntime, Runtime
from tests.containers.podman import IMAGE, LABEL, PodmanEngine
from tests.integration._http import Client
from tests.integration._util import wait_until
from tests.integration.test_services import services

#: busybox's httpd on the port the allocator hands out (the runtime expands $SERVICE_PORT: the
#: image has no shell to do it).
HTTPD = ("busybox", "httpd", "-f", "-p", "127.0.0.1:$SERVICE_PORT", "-h", "/www")
#: /www/index.html of the test image (tests/containers/setup.sh).
PAGE = b"Hello, world\n"
MISSING_IMAGE = "localhost/physarum-test-missing:0"
CMD_REPOSITORY = "localhost/physarum-test-busybox-cmd"
#: First requests measured for the README's figure.
SAMPLES = 5


def docker_runtime(engine: PodmanEngine, **options: Any) -> DockerRuntime:
    return DockerRuntime(engine.url, DockerOptions(owner=engine.owner, **options))


def container_ids(engine: PodmanEngine, owner: str | None = None) -> list[str]:
    """The ids of ``owner``'s containers (default: this session's), running or not. One list call:
    ``containers.list`` also inspects each one, which fails for a container removed meanwhile."""
    found = engine.client.api.containers(all=True, filters={"label": f"{LABEL}={owner or engine.owner}"})
    return [c["Id"] for c in found]


@pytest.fixture
def image_with_cmd(docker_engine: PodmanEngine) -> Iterator[str]:
    """An image that serves the page on $SERVICE_PORT with its own CMD (no command in the registry
    entry): the test image committed with one. busybox's sh expands the variable (the image has
    busybox but no /bin/sh). Made from the local image, removed at teardown; nothing is pulled."""
    tag = f"{CMD_REPOSITORY}:{os.getpid()}"
    base = docker_engine.client.containers.create(IMAGE, command=["busybox", "true"])
    try:
        base.commit(repository=CMD_REPOSITORY, tag=str(os.getpid()), changes=[
            'CMD ["busybox", "sh", "-c", "exec busybox httpd -f -p 127.0.0.1:$SERVICE_PORT -h /www"]'])
    finally:
        base.remove(force=True, v=True)
    try:
        yield tag
    finally:
        docker_engine.client.images.remove(tag, force=True)


async def test_first_request_starts_a_container_then_reuses_it_and_idle_culling_removes_it(
        tmp_path: Path, docker_engine: PodmanEngine) -> None:
    options = AllocatorOptions(runtimes=("docker",), idle_timeout=1.0, cull_interval=0.1)
    async with services(tmp_path, options, {"docker": docker_runtime(docker_engine)}) as s:
        await s.add("hello-docker", HTTPD, image=IMAGE)
        client = await Client.open(s.port)
        t0 = trio.current_time()
        assert await client.request("GET", "/hello-docker/") == (200, PAGE)
        first = trio.current_time() - t0
        running = s.allocator.instances["hello-docker"]
        assert running.runtime == "docker" and isinstance(running.instance, DockerInstance)
        assert client.headers[INSTANCE_HEADER].startswith(str(running.host.peer_id).encode() + b"; rtt-ms=")
        container = docker_engine.client.containers.get(running.instance.id)
        assert container_ids(docker_engine) == [container.id]
        assert container.status == "running"
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.labels[LABEL] == docker_engine.owner
        assert f"SERVICE_PORT={running.port}" in container.attrs["Config"]["Env"]
        for target in ("/hello-docker/index.html", "/hello-docker/"):
            assert await client.request("GET", target) == (200, PAGE)
        assert s.allocator.allocations == {"started": 1}
        assert container_ids(docker_engine) == [container.id]

        # idle for idle_timeout: stopped and removed from the engine
        instance = running.instance
        with trio.fail_after(20):
            while container_ids(docker_engine):
                await trio.sleep(0.05)
        assert "hello-docker" not in s.allocator.instances and instance.exit_status() is not None
        # once the client's cache has dropped it (its re-ping fails), the next request starts a new one
        gone = running.host.peer_id
        await wait_until(lambda: gone not in s.selector.cached("hello-docker"), timeout=5,
                         what="the culled instance left the client's cache")
        assert await (await Client.open(s.port)).request("GET", "/hello-docker/") == (200, PAGE)
        assert s.allocator.allocations == {"started": 2}
        assert s.allocator.instances["hello-docker"].instance is not instance
    assert container_ids(docker_engine) == []
    print(f"\nfirst request, docker allocation included: {first * 1000:.0f} ms")


async def test_image_the_engine_lacks_is_a_503_naming_it(tmp_path: Path, docker_engine: PodmanEngine) -> None:
    import docker

    options = AllocatorOptions(runtimes=("docker",))
    async with services(tmp_path, options, {"docker": docker_runtime(docker_engine)}) as s:
        await s.add("no-image", HTTPD, image=MISSING_IMAGE)
        status, body = await (await Client.open(s.port)).request("GET", "/no-image/")
        assert status == 503
        text = body.decode()
        assert text.endswith("\n") and text.count("\n") == 1, text
        assert f"image {MISSING_IMAGE} not found in the engine" in text and "nothing is pulled" in text, text
        assert s.allocator.instances == {} and s.allocator.allocations == {"start-failed": 1}
        assert container_ids(docker_engine) == []
    with pytest.raises(docker.errors.ImageNotFound):
        docker_engine.client.images.get(MISSING_IMAGE)


async def test_stopping_the_allocator_removes_its_containers(tmp_path: Path, docker_engine: PodmanEngine) -> None:
    """Several first requests, each starting a container (timed for the README), then the allocator's
    nursery is cancelled: every container is removed before it returns."""
    options = AllocatorOptions(runtimes=("docker",))
    times: list[float] = []
    async with services(tmp_path, options, {"docker": docker_runtime(docker_engine)}) as s:
        for i in range(SAMPLES):
            await s.add(f"hello-{i}", HTTPD, image=IMAGE)
            client = await Client.open(s.port)
            t0 = trio.current_time()
            assert await client.request("GET", f"/hello-{i}/") == (200, PAGE)
            times.append(trio.current_time() - t0)
        assert s.allocator.allocations == {"started": SAMPLES}
        ids = {r.instance.id for r in s.allocator.instances.values() if isinstance(r.instance, DockerInstance)}
        assert len(ids) == SAMPLES and set(container_ids(docker_engine)) == ids
    # services() cancelled the allocator's nursery; its shielded stops have already removed them
    assert container_ids(docker_engine) == []
    ms = sorted(t * 1000 for t in times)
    print(f"\nfirst request, docker allocation included, {SAMPLES} services: median {statistics.median(ms):.0f} ms"
          f" (min {ms[0]:.0f}, max {ms[-1]:.0f})")


async def test_process_and_docker_runtimes_each_take_what_they_can_run(
        tmp_path: Path, docker_engine: PodmanEngine, image_with_cmd: str) -> None:
    options = AllocatorOptions(runtimes=("process", "docker"))
    runtimes: dict[str, Runtime] = {"process": ProcessRuntime(), "docker": docker_runtime(docker_engine)}
    async with services(tmp_path, options, runtimes) as s:
        await s.add("by-command", (sys.executable, "-m", "physarum.cli", "hello"))
        await s.add("by-image", (), image=image_with_cmd)
        client = await Client.open(s.port)
        assert await client.request("GET", "/by-command/") == (200, PAGE)
        assert await client.request("GET", "/by-image/") == (200, PAGE)
        by_command, by_image = s.allocator.instances["by-command"], s.allocator.instances["by-image"]
        assert by_command.runtime == "process" and by_command.instance.description.startswith("pid ")
        assert by_image.runtime == "docker" and isinstance(by_image.instance, DockerInstance)
        assert container_ids(docker_engine) == [by_image.instance.id]
        assert s.allocator.allocations == {"started": 2}
    assert container_ids(docker_engine) == []


async def _run_allocator(runtime: DockerRuntime, *, task_status: trio.TaskStatus[Allocator] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """An allocator on a host of its own, alone on its network (clean-up needs no peer)."""
    async with open_host(psk=generate_psk()) as host, trio.open_nursery() as nursery:
        dht = KadDHT.for_host(host)
        await nursery.start(dht.run)
        allocator = Allocator(dht, RegistryClient(OverlayNetwork(host, dht)), {"docker": runtime},
                              AllocatorOptions(runtimes=("docker",)))
        allocator.attach(host)
        await nursery.start(allocator.run)
        task_status.started(allocator)


async def test_an_allocator_removes_its_owners_leftovers_when_it_starts(docker_engine: PodmanEngine) -> None:
    """What a killed allocator left (a running and an ended container with its owner's label) is
    removed before the new allocator starts; another owner's container on the same engine stays."""
    client = docker_engine.client
    other_owner = f"{docker_engine.owner}-other"
    running = client.containers.run(IMAGE, ["busybox", "sleep", "600"], detach=True, init=True,
                                    labels={LABEL: docker_engine.owner})
    ended = client.containers.create(IMAGE, ["busybox", "true"], labels={LABEL: docker_engine.owner})
    other = client.containers.create(IMAGE, ["busybox", "true"], labels={LABEL: other_owner})
    try:
        assert set(container_ids(docker_engine)) == {running.id, ended.id}
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(_run_allocator, docker_runtime(docker_engine))
                # started: the clean-up came first
                assert container_ids(docker_engine) == []
                nursery.cancel_scope.cancel()
        assert container_ids(docker_engine, other_owner) == [other.id]
    finally:
        other.remove(force=True, v=True)


async def test_an_unreachable_engine_at_start_is_logged_and_the_allocator_runs(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "physarum.services.allocator")
    runtime = DockerRuntime(f"unix://{tmp_path}/no-engine.sock")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            allocator: Allocator = await nursery.start(_run_allocator, runtime)
            assert allocator.instances == {}
            nursery.cancel_scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"runtime docker: cannot remove an earlier run's instances: cannot reach the container "
                        f"engine at unix://{tmp_path}/no-engine.sock: No such file or directory"], warnings
