"""The docker runtime against a real engine: podman's Docker Engine API (tests/containers/podman.py),
running a busybox image built locally by tests/containers/setup.sh; HTTP over 127.0.0.1 through h11."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from physarum.errors import ConfigError
from physarum.services.docker_runtime import (
    DockerInstance,
    DockerOptions,
    DockerRuntime,
    EngineUnreachableError,
    ImageMissingError,
    _expand,
)
from physarum.services.registry import ServiceInfo
from physarum.services.runtime import StartError
from tests.containers.podman import IMAGE, LABEL, PodmanEngine, podman_or_skip, start_service
from tests.integration._util import wait_until

HTTPD = ("busybox", "httpd", "-f", "-p", "127.0.0.1:$SERVICE_PORT", "-h", "/www")
HELLO = ServiceInfo(name="hello", image=IMAGE, command=HTTPD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def runtime_for(engine: PodmanEngine, **options: Any) -> DockerRuntime:
    return DockerRuntime(engine.url, DockerOptions(owner=engine.owner, **options))


async def http_get(port: int) -> tuple[int, bytes]:
    """GET / on 127.0.0.1:port (h11): the status and the body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target="/", headers=[("Host", f"127.0.0.1:{port}"), ("Connection", "close")])
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body


async def first_answer(port: int, timeout: float = 5.0) -> tuple[int, bytes]:
    """Poll until the port accepts a connection (under a deadline), then GET /."""
    with trio.fail_after(timeout):
        while True:
            try:
                return await http_get(port)
            except OSError:
                await trio.sleep(0.005)


def listed(engine: PodmanEngine, container_id: str) -> bool:
    return any(c.id == container_id for c in engine.client.containers.list(all=True))


async def test_serves_hello_world_then_stop_removes_it(docker_engine: PodmanEngine) -> None:
    runtime = runtime_for(docker_engine)
    port = free_port()
    t0 = trio.current_time()
    instance = await runtime.start(HELLO, {"SERVICE_PORT": str(port), "SERVICE_NAME": "hello"})
    assert isinstance(instance, DockerInstance)
    try:
        assert instance.exit_status() is None
        assert await first_answer(port) == (200, b"Hello, world\n")
        started = trio.current_time() - t0
        assert instance.exit_status() is None

        attrs = docker_engine.client.containers.get(instance.id).attrs
        assert attrs["State"]["Running"]
        assert attrs["HostConfig"]["NetworkMode"] == "host"
        assert attrs["Config"]["Labels"][LABEL] == docker_engine.owner
        assert attrs["Config"]["Labels"]["io.physarum.service"] == "hello"
        assert f"SERVICE_PORT={port}" in attrs["Config"]["Env"]
        # $SERVICE_PORT was replaced by the runtime: the image has no shell to do it.
        assert f"127.0.0.1:{port}" in attrs["Args"]
        assert instance.name.startswith("physarum-hello-")
    finally:
        t1 = trio.current_time()
        await instance.stop(5)
        stopped = trio.current_time() - t1
    assert not listed(docker_engine, instance.id)
    # The init forwarded SIGTERM: httpd ended on it (128 + 15), well before the 5 s timeout.
    assert instance.exit_status() == 143
    assert stopped < 4
    with pytest.raises(OSError):
        await http_get(port)
    print(f"podman service answered in {docker_engine.started_in:.2f} s; container start to first "
          f"HTTP answer {started * 1000:.0f} ms; stop and remove {stopped * 1000:.0f} ms")


async def test_cpu_and_memory_limits_reach_the_engine(docker_engine: PodmanEngine) -> None:
    runtime = runtime_for(docker_engine)
    info = ServiceInfo(name="limited", image=IMAGE, command=("busybox", "sleep", "60"), cpu=0.5, memory_mb=64)
    instance = await runtime.start(info, {})
    try:
        host_config = docker_engine.client.containers.get(instance.id).attrs["HostConfig"]
        assert host_config["NanoCpus"] == 500_000_000
        assert host_config["Memory"] == 64 * 1024 * 1024
    finally:
        await instance.stop(5)
    assert not listed(docker_engine, instance.id)


async def test_no_limits_when_none_asked(docker_engine: PodmanEngine) -> None:
    instance = await runtime_for(docker_engine).start(
        ServiceInfo(name="free", image=IMAGE, command=("busybox", "sleep", "60")), {})
    try:
        host_config = docker_engine.client.containers.get(instance.id).attrs["HostConfig"]
        assert not host_config.get("NanoCpus")
        assert not host_config.get("Memory")
    finally:
        await instance.stop(5)


async def test_image_the_engine_lacks(docker_engine: PodmanEngine) -> None:
    image = "localhost/physarum-no-such-image:1"
    with trio.fail_after(2):
        with pytest.raises(ImageMissingError) as caught:
            await runtime_for(docker_engine).start(ServiceInfo(name="ghost", image=image, command=HTTPD), {})
    assert caught.value.image == image
    assert str(caught.value) == (
        f"ghost: image {image} not found in the engine; build or load it first: nothing is pulled")
    assert docker_engine.containers() == []
    assert not docker_engine.client.images.list(name="localhost/physarum-no-such-image")


async def test_command_the_image_lacks_without_init(docker_engine: PodmanEngine) -> None:
    info = ServiceInfo(name="broken", image=IMAGE, command=("no-such-command", "--port", "$SERVICE_PORT"))
    with trio.fail_after(5):
        with pytest.raises(StartError) as caught:
            await runtime_for(docker_engine, init=False).start(info, {"SERVICE_PORT": "1"})
    message = str(caught.value)
    assert message.startswith(f"broken: cannot start a container of {IMAGE}: ")
    assert "no-such-command" in message and "\n" not in message
    assert docker_engine.containers() == []


async def test_command_the_image_lacks_with_init(docker_engine: PodmanEngine, caplog: pytest.LogCaptureFixture) -> None:
    # The init starts and then cannot exec the command: the container ends at once, and says why.
    caplog.set_level(logging.INFO, logger="physarum.services.docker_runtime")
    info = ServiceInfo(name="broken", image=IMAGE, command=("no-such-command",))
    instance = await runtime_for(docker_engine).start(info, {})
    assert isinstance(instance, DockerInstance)
    try:
        await wait_until(lambda: instance.exit_status() is not None, what="the container's end is seen")
        assert instance.exit_status() != 0
        assert instance.last_output is not None and "failed to exec" in instance.last_output
        assert any("its last output" in r.getMessage() and "failed to exec" in r.getMessage() for r in caplog.records)
    finally:
        await instance.stop(5)
    assert docker_engine.containers() == []


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_unreachable_engine(kind: str, tmp_path: Path) -> None:
    url = f"unix://{tmp_path / 'nothing.sock'}" if kind == "unix" else f"tcp://127.0.0.1:{free_port()}"
    runtime = DockerRuntime(url)
    with trio.fail_after(2):
        with pytest.raises(EngineUnreachableError) as caught:
            await runtime.start(HELLO, {"SERVICE_PORT": "1"})
    assert caught.value.url == url
    reason = "No such file or directory" if kind == "unix" else "Connection refused"
    assert str(caught.value) == f"cannot reach the container engine at {url}: {reason}"


async def test_exit_status_of_a_container_that_ends(docker_engine: PodmanEngine) -> None:
    info = ServiceInfo(name="quitter", image=IMAGE, command=("busybox", "sh", "-c", "exit $CODE"))
    instance = await runtime_for(docker_engine).start(info, {"CODE": "3"})
    await wait_until(lambda: instance.exit_status() is not None, what="the container's end is seen")
    assert instance.exit_status() == 3
    # It stays (exit status and logs readable) until stopped, then it is removed.
    assert listed(docker_engine, instance.id)
    await instance.stop(5)
    assert instance.exit_status() == 3
    assert not listed(docker_engine, instance.id)


async def test_exit_is_seen_across_an_engine_restart(docker_engine: PodmanEngine, tmp_path: Path) -> None:
    podman = podman_or_skip()
    socket_path = tmp_path / "restarted.sock"
    service, client = await trio.to_thread.run_sync(start_service, podman, socket_path)
    try:
        runtime = DockerRuntime(service.url, DockerOptions(owner=docker_engine.owner, wait_retry=0.05))
        info = ServiceInfo(name="survivor", image=IMAGE, command=("busybox", "sleep", "60"))
        instance = await runtime.start(info, {})
        # The engine goes away (its containers run on) and comes back on the same socket.
        client.close()
        await trio.to_thread.run_sync(service.stop)
        assert instance.exit_status() is None
        service, client = await trio.to_thread.run_sync(start_service, podman, socket_path)
        assert instance.exit_status() is None
        client.containers.get(instance.id).kill()
        await wait_until(lambda: instance.exit_status() is not None, what="the kill is seen after the restart")
        assert instance.exit_status() == 137
        await instance.stop(5)
        assert not listed(docker_engine, instance.id)
    finally:
        client.close()
        await trio.to_thread.run_sync(service.stop)


async def test_cancelled_start_leaves_nothing(docker_engine: PodmanEngine) -> None:
    runtime = runtime_for(docker_engine)
    created: list[str] = []
    real = runtime._create_and_start

    with trio.CancelScope() as scope:

        def create_then_cancel(info: ServiceInfo, env: dict[str, str]) -> Any:
            container = real(info, env)
            created.append(container.id)
            # Cancelled while the container exists, before start() could return it.
            trio.from_thread.run_sync(scope.cancel)
            return container

        runtime._create_and_start = create_then_cancel  # type: ignore[method-assign]
        await runtime.start(HELLO, {"SERVICE_PORT": str(free_port())})
    assert scope.cancelled_caught
    assert len(created) == 1
    assert not listed(docker_engine, created[0])


async def test_stop_in_a_cancelled_scope_still_removes(docker_engine: PodmanEngine) -> None:
    instance = await runtime_for(docker_engine).start(HELLO, {"SERVICE_PORT": str(free_port())})
    with trio.CancelScope() as scope:
        scope.cancel()
        await instance.stop(5)
    assert not listed(docker_engine, instance.id)


async def test_stop_twice_and_after_removal_never_raises(docker_engine: PodmanEngine) -> None:
    instance = await runtime_for(docker_engine).start(HELLO, {"SERVICE_PORT": str(free_port())})
    docker_engine.client.containers.get(instance.id).remove(force=True)
    await wait_until(lambda: instance.exit_status() is not None, what="the removal is seen")
    await instance.stop(5)
    await instance.stop(5)
    assert not listed(docker_engine, instance.id)


async def test_remove_leftovers_of_a_dead_allocator(docker_engine: PodmanEngine) -> None:
    first = runtime_for(docker_engine)
    a = await first.start(HELLO, {"SERVICE_PORT": str(free_port())})
    b = await first.start(ServiceInfo(name="sleeper", image=IMAGE, command=("busybox", "sleep", "60")), {})
    # Another owner's container on the same engine is not touched.
    other = DockerRuntime(docker_engine.url, DockerOptions(owner=docker_engine.owner + "-other"))
    c = await other.start(ServiceInfo(name="sleeper", image=IMAGE, command=("busybox", "sleep", "60")), {})
    try:
        # A restarted allocator with the same owner finds what the first one left.
        removed = await runtime_for(docker_engine).remove_leftovers()
        assert sorted(removed) == sorted([a.name, b.name])
        assert docker_engine.containers() == []
        assert listed(docker_engine, c.id)
    finally:
        await c.stop(5)


def test_env_substitution_in_the_command() -> None:
    env = {"SERVICE_PORT": "4242", "SERVICE_NAME": "hello"}
    assert _expand(("-p", "127.0.0.1:$SERVICE_PORT", "${SERVICE_NAME}.txt", "$$5", "$HOME", "${NOPE}", "50%$"), env) == [
        "-p", "127.0.0.1:4242", "hello.txt", "$5", "$HOME", "${NOPE}", "50%$"]


def test_can_run_only_images() -> None:
    runtime = DockerRuntime("unix:///nonexistent.sock")
    assert runtime.name == "docker"
    assert runtime.can_run(HELLO)
    assert not runtime.can_run(ServiceInfo(name="p", command=("true",)))


def test_bad_engine_url_and_options() -> None:
    with pytest.raises(ConfigError, match="bogus://x"):
        DockerRuntime("bogus://x")
    with pytest.raises(ConfigError, match="api_timeout"):
        DockerOptions(api_timeout=0)
    with pytest.raises(ConfigError, match="max_connections"):
        DockerOptions(max_connections=0)


def test_default_url_comes_from_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert DockerRuntime().url == "tcp://127.0.0.1:2375"
    monkeypatch.delenv("DOCKER_HOST")
    assert DockerRuntime().url == "unix:///var/run/docker.sock"


def test_without_the_docker_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)  # import docker now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'physarum\[docker\]'"):
        DockerRuntime()
