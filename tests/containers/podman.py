"""A podman serving the Docker Engine API for the container tests (fixtures; see setup.sh here).

``podman_engine`` (session): ``podman system service --time=0 unix://TMP/podman.sock`` with
CONTAINERS_CONF naming the configuration setup.sh wrote, polled under a deadline until it answers.
``docker_engine`` (per test): the same engine; at teardown it removes the containers the test left
and fails the test if there were any.

Skips only where podman cannot be had: setup.sh could not install it (apt unreachable) and left
its reason in conf/unavailable. A podman that is installed but does not start, or a missing test
image, fails: run ``bash tests/containers/setup.sh``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests._process import pid_alive

HERE = Path(__file__).resolve().parent
CONF = HERE / "conf" / "containers.conf"
UNAVAILABLE = HERE / "conf" / "unavailable"
#: Built by setup.sh (Debian's static busybox and /www/index.html); the image has no shell.
IMAGE = "localhost/physarum-test-busybox:1"
#: The runtime's default label (DockerOptions.label); tests set its value (the owner) per session.
LABEL = "io.physarum.allocator"
OWNER_PREFIX = "physarum-test-"
START_TIMEOUT = 30.0
POLL_INTERVAL = 0.01
SETUP = "run bash tests/containers/setup.sh"


@dataclass
class PodmanEngine:
    url: str
    """``unix://...podman.sock``: what DockerRuntime takes as its base_url."""
    owner: str
    """The DockerOptions.owner the tests use: their containers carry LABEL=owner."""
    started_in: float
    """Seconds from spawning the service to its first answer."""
    client: Any
    """A docker.DockerClient on the engine, for inspecting what the runtime did."""

    def containers(self) -> list[Any]:
        """This session's containers, running or not."""
        return list(self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.owner}"}))

    def remove_all(self) -> list[str]:
        found = self.containers()
        for c in found:
            c.remove(force=True, v=True)
        return [c.name for c in found]



def _remove_dead_sessions(client: Any) -> None:
    """Containers of test sessions whose process is gone (a killed pytest); others' are left alone."""
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        owner = c.labels.get(LABEL, "")
        pid = owner.removeprefix(OWNER_PREFIX)
        if owner.startswith(OWNER_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
            c.remove(force=True, v=True)


class PodmanService:
    """One ``podman system service`` process on ``url`` (see :func:`start_service`)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def podman_or_skip() -> str:
    """The podman command; skips where setup.sh could not install it, fails where it was not run."""
    podman = shutil.which("podman")
    if podman is None:
        if UNAVAILABLE.exists():
            reason = f"podman cannot be installed here: {UNAVAILABLE.read_text().strip()}"
            print(reason)
            pytest.skip(reason)
        pytest.fail(f"podman is not installed: {SETUP}", pytrace=False)
    if not CONF.exists():
        pytest.fail(f"{CONF} is missing: {SETUP}", pytrace=False)
    return podman


def start_service(podman: str, socket_path: Path) -> tuple[PodmanService, Any]:
    """Start ``podman system service`` on ``unix://socket_path`` and poll it under a deadline until
    it answers; the service and a docker.DockerClient on it. Fails the test if it does not answer."""
    import docker

    url = f"unix://{socket_path}"
    log_path = socket_path.with_suffix(".log")
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [podman, "system", "service", "--time=0", url],
            env={**os.environ, "CONTAINERS_CONF": str(CONF)},
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    service = PodmanService(proc, url, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"podman system service exited with status {proc.returncode}:\n{service.log()}", pytrace=False)
        try:
            # A client whose version is "auto" exists once the socket answers.
            return service, docker.DockerClient(base_url=url, version="auto", timeout=10)
        except docker.errors.DockerException:
            if time.monotonic() > deadline:
                service.stop()
                pytest.fail(f"podman system service did not answer on {url} within {START_TIMEOUT:g} s:\n"
                            f"{service.log()}", pytrace=False)
            time.sleep(POLL_INTERVAL)


@pytest.fixture(scope="session")
def podman_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanEngine]:
    podman = podman_or_skip()
    import docker

    started = time.monotonic()
    service, client = start_service(podman, tmp_path_factory.mktemp("podman") / "podman.sock")
    try:
        started_in = time.monotonic() - started
        try:
            client.images.get(IMAGE)
        except docker.errors.ImageNotFound:
            pytest.fail(f"the test image {IMAGE} is missing: {SETUP}", pytrace=False)
        _remove_dead_sessions(client)
        engine = PodmanEngine(service.url, f"{OWNER_PREFIX}{os.getpid()}", started_in, client)
        yield engine
        engine.remove_all()
    finally:
        client.close()
        service.stop()


@pytest.fixture
def docker_engine(podman_engine: PodmanEngine) -> Iterator[PodmanEngine]:
    yield podman_engine
    left = podman_engine.remove_all()
    if left:
        pytest.fail(f"the test left containers behind: {', '.join(left)}", pytrace=False)
