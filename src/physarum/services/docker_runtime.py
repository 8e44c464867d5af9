"""The container runtime: a service's ``image`` run through the Docker Engine API.

Speaks the API with the ``docker`` package (``pip install 'physarum[docker]'``), so it drives
Docker or anything serving the same API, such as ``podman system service`` (how the tests run it).

Decisions:

* **Nothing is pulled.** An image the engine lacks is a :class:`ImageMissingError`: an allocator
  must not fetch arbitrary images on a peer's request, and the engines it runs on may have no
  registry access. Build or load images on the machine first.
* **Host network** (``--network host``), as PhysarumSM ran its containers: the instance listens on
  ``127.0.0.1:$SERVICE_PORT`` of the machine, where the allocator's sidecar reaches it.
* **Environment**: the container gets exactly the ``env`` the allocator gives (not the allocator's
  own environment, which may hold its secrets).
* **Command**: a ServiceInfo with an ``image`` and a ``command`` runs the command in the image
  (in place of its CMD; after its ENTRYPOINT, if it has one, as Docker does); ``$NAME`` and ``${NAME}`` in the command, for ``NAME`` in ``env``, are
  replaced first, because images such as a static busybox have no shell to expand
  ``$SERVICE_PORT`` (Python's ``string.Template.safe_substitute``: ``$$`` is a ``$``, other names
  stay as written). Without a command the image's own CMD runs and reads ``SERVICE_PORT`` itself.
* **Init** (:attr:`DockerOptions.init`): the engine's init runs as PID 1 and forwards signals, so
  a service that installs no SIGTERM handler (PID 1 ignores it by default) ends at once on stop
  instead of after the whole stop timeout. The price: a command the image lacks no longer fails
  the start (the init starts, then cannot exec it); the container ends at once with a non-zero
  status and its output (the init's complaint) is logged and kept in
  :attr:`DockerInstance.last_output`. Without an init, start raises :class:`StartError` naming it.
* **Labels**: every container carries ``DockerOptions.label=owner`` and the service's name under
  ``DockerOptions.service_label``; :meth:`DockerRuntime.remove_leftovers` removes what an allocator
  that died left behind (the allocator calls it as it starts, through the runtime's ``cleanup``).
* **Removal on stop**, not the engine's auto-remove: a container that ends on its own stays (its
  exit status and logs can be read) until :meth:`stop` removes it, so callers must stop every
  instance they started, ended or not (the allocator does, when it culls).
* **Exit status without blocking**: at start a daemon thread waits on the container
  (``POST /containers/ID/wait``, no timeout) and stores its exit status; ``exit_status()`` reads
  that. It costs a thread and an engine connection per running instance, and the exit is known as
  soon as the engine reports it (polling would delay it by its interval). A thread of our own,
  not ``trio.to_thread``: a wait that lasts the instance's life would hold one of trio's shared
  thread tokens. If the engine connection breaks, the thread tries again every
  :attr:`DockerOptions.wait_retry` seconds; a container that vanished reports :data:`GONE`.
* The package is synchronous: every call runs in ``trio.to_thread.run_sync``. Read-only calls are
  abandoned on cancellation; creating and starting is not (it finishes, and a container that
  exists when the caller is cancelled is removed), and :meth:`stop` is shielded, so a cancelled
  allocator leaves no container behind.
"""

from __future__ import annotations

import logging
import math
import secrets
import string
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from physarum.errors import ConfigError
from physarum.services.registry import ServiceInfo
from physarum.services.runtime import Instance, Runtime, StartError

log = logging.getLogger("physarum.services.docker_runtime")

#: What :meth:`DockerInstance.exit_status` says of a container that was removed behind our back
#: (its real status cannot be known).
GONE = -1

_DEFAULT_URL = "unix:///var/run/docker.sock"
_MAX_REASON = 300


class EngineUnreachableError(StartError):
    """The container engine at ``url`` could not be reached (``reason`` says how it failed)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the container engine at {url}: {reason}")
        self.url = url
        self.reason = reason


class ImageMissingError(StartError):
    """The engine has no image ``image`` (the runtime never pulls one)."""

    def __init__(self, service: str, image: str) -> None:
        super().__init__(f"{service}: image {image} not found in the engine; build or load it first: nothing is pulled")
        self.service = service
        self.image = image


@dataclass(frozen=True)
class DockerOptions:
    """How :class:`DockerRuntime` runs containers.

    Raises:
        ConfigError: a value out of range (at construction).
    """

    api_timeout: float = 60.0
    """Seconds one Engine API call may take (a stop call gets its stop timeout on top)."""
    api_version: str = "auto"
    """The Engine API version to speak; ``auto``: the engine's, at most the newest the ``docker``
    package knows (asked once, at the first call)."""
    label: str = "io.physarum.allocator"
    """The label that marks a container as physarum's; its value is :attr:`owner`."""
    owner: str = "physarum"
    """Which allocator started the container. Allocators sharing one engine need distinct owners:
    :meth:`DockerRuntime.remove_leftovers` removes every container of its owner."""
    service_label: str = "io.physarum.service"
    """The label holding the service's name (for ``docker ps --filter``)."""
    name_prefix: str = "physarum-"
    """Containers are named ``PREFIX + service + '-' + 8 random hex digits``."""
    init: bool = True
    """Run the engine's init as PID 1 (``docker run --init``), which forwards stop signals to the
    service. Needs the engine's init binary: Docker ships docker-init; podman needs catatonit."""
    wait_retry: float = 1.0
    """Seconds before waiting on a container again after the engine connection broke."""
    log_tail: int = 5
    """Lines of a container's output logged (and kept in ``last_output``) when it ends on its own."""
    max_connections: int = 64
    """Engine connections kept open: one per running instance (its exit is awaited on one) plus
    the API calls; more are opened and closed as needed."""

    def __post_init__(self) -> None:
        for key in ("api_timeout", "wait_retry"):
            v = getattr(self, key)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ConfigError(f"docker runtime: {key} must be a positive number of seconds, not {v!r}")
        if not isinstance(self.log_tail, int) or self.log_tail < 0:
            raise ConfigError(f"docker runtime: log_tail must be 0 or more lines, not {self.log_tail!r}")
        if not isinstance(self.max_connections, int) or self.max_connections < 1:
            raise ConfigError(f"docker runtime: max_connections must be at least 1, not {self.max_connections!r}")
        for key in ("label", "owner", "service_label", "api_version"):
            if not getattr(self, key):
                raise ConfigError(f"docker runtime: {key} must not be empty")


def _one_line(text: object) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."


def _os_reason(exc: BaseException, depth: int = 0) -> str | None:
    """The strerror of the OSError under a requests/urllib3 failure ("Connection refused")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if depth > 8:
        return None
    nested = [a for a in exc.args if isinstance(a, BaseException)]
    for nxt in (*nested, getattr(exc, "reason", None), exc.__cause__, exc.__context__):
        if isinstance(nxt, BaseException):
            found = _os_reason(nxt, depth + 1)
            if found:
                return found
    return None


def _tail(output: bytes, max_chars: int = 1000) -> str:
    """Output lines as one line (`` | `` between them), its end kept when too long."""
    text = " | ".join(" ".join(line.split()) for line in output.decode("utf-8", "replace").splitlines() if line.strip())
    return text if len(text) <= max_chars else "..." + text[-(max_chars - 3):]


def _expand(command: tuple[str, ...], env: Mapping[str, str]) -> list[str]:
    return [string.Template(arg).safe_substitute(env) for arg in command]


class DockerInstance:
    """A running container (from :meth:`DockerRuntime.start`)."""

    def __init__(self, runtime: DockerRuntime, container: Any, service: str) -> None:
        self._runtime = runtime
        self.id: str = container.id
        self.name: str = container.name
        self.service = service
        self.description = f"container {self.id[:12]} ({self.name})"
        self._status: int | None = None
        self.last_output: str | None = None
        """The end of its output (``log_tail`` lines) if it ended on its own, for diagnosis."""
        self._stopping = threading.Event()
        self._waiter = threading.Thread(target=self._wait, name=f"wait {self.name}", daemon=True)
        self._waiter.start()

    def exit_status(self) -> int | None:
        """The container's exit status once it has ended (:data:`GONE` if it vanished), else None."""
        return self._status

    def _wait(self) -> None:
        errors = self._runtime._docker.errors
        requests_errors = self._runtime._requests_errors
        while not self._stopping.is_set():
            try:
                # No timeout: the call lasts as long as the container runs.
                result = self._runtime._client.api.wait(self.id, timeout=None)
            except errors.NotFound:
                self._set_status(GONE, "it is gone")
                return
            except (errors.DockerException, *requests_errors) as e:
                if self._stopping.is_set():
                    return
                log.debug("waiting on %s failed (again in %g s): %s", self.description,
                          self._runtime.options.wait_retry, _one_line(e))
                self._stopping.wait(self._runtime.options.wait_retry)
                continue
            if result.get("Error"):
                # podman answers a wait on a container removed meanwhile with status 0 and an Error.
                self._set_status(GONE, _one_line(result["Error"]))
                return
            if not self._stopping.is_set() and self._runtime.options.log_tail:
                try:
                    output = self._runtime._client.api.logs(self.id, tail=self._runtime.options.log_tail)
                    self.last_output = _tail(output)
                except (errors.DockerException, *requests_errors) as e:
                    log.debug("reading the output of %s failed: %s", self.description, _one_line(e))
            self._set_status(int(result.get("StatusCode", GONE)), None)
            return

    def _set_status(self, status: int, why: str | None) -> None:
        if self._status is None:
            if not self._stopping.is_set():
                log.info("%s of %s ended: status %d%s%s", self.description, self.service, status,
                         f" ({why})" if why else "",
                         f"; its last output: {self.last_output}" if self.last_output else "")
            self._status = status

    async def stop(self, timeout: float) -> None:
        """Stop the container (SIGTERM, SIGKILL after ``timeout`` s, rounded up to whole seconds as
        the API wants), then remove it. Never raises: failures are logged. Shielded from
        cancellation, so it takes up to ``timeout`` + 3 x ``api_timeout`` with a stuck engine."""
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._stop_sync, timeout)

    def _stop_sync(self, timeout: float) -> None:
        errors = self._runtime._docker.errors
        failures = (errors.DockerException, *self._runtime._requests_errors)
        api = self._runtime._client.api
        self._stopping.set()
        try:
            api.stop(self.id, timeout=max(0, math.ceil(timeout)))
            result = api.wait(self.id)
            self._set_status(int(result.get("StatusCode", GONE)), None)
        except errors.NotFound:
            self._set_status(GONE, "it is gone")
            return
        except failures as e:
            log.warning("stopping %s failed (removing it anyway): %s", self.description, _one_line(e))
        try:
            api.remove_container(self.id, v=True, force=True)
        except errors.NotFound:
            pass
        except failures as e:
            log.warning("removing %s failed: %s", self.description, _one_line(e))
        self._set_status(GONE, None)


class DockerRuntime:
    """Runs ``ServiceInfo.image`` as a container through the Docker Engine API at ``base_url``
    (default: ``$DOCKER_HOST`` with ``$DOCKER_TLS_VERIFY``/``$DOCKER_CERT_PATH``, else
    ``unix:///var/run/docker.sock``). See the module docstring for what it does and why.
    Nothing connects to the engine before the first :meth:`start`.

    Raises:
        ConfigError: the ``docker`` package is not installed, or ``base_url`` is not an engine URL.
    """

    name = "docker"

    def __init__(self, base_url: str | None = None, options: DockerOptions = DockerOptions()) -> None:
        try:
            import docker
            import requests.exceptions
        except ImportError:
            raise ConfigError("the docker runtime needs the docker package: pip install 'physarum[docker]'") from None
        self._docker: Any = docker
        self._requests_errors: tuple[type[BaseException], ...] = (requests.exceptions.RequestException,)
        self.options = options
        try:
            if base_url is None:
                self._client_kwargs: dict[str, Any] = docker.utils.kwargs_from_env()
            else:
                self._client_kwargs = {"base_url": base_url}
            url = self._client_kwargs.get("base_url") or _DEFAULT_URL
            docker.utils.parse_host(url)
        except docker.errors.DockerException as e:
            raise ConfigError(f"docker runtime: {_one_line(e)}") from None
        self.url: str = url
        self._client_or_none: Any = None
        self._client_lock = threading.Lock()

    @property
    def _client(self) -> Any:
        assert self._client_or_none is not None, "no engine client before the first call"
        return self._client_or_none

    def can_run(self, info: ServiceInfo) -> bool:
        return bool(info.image)

    def _connect(self) -> Any:
        """The engine client, created on first use (in a worker thread: it asks the engine).

        Raises:
            EngineUnreachableError, StartError.
        """
        with self._client_lock:
            if self._client_or_none is None:
                try:
                    self._client_or_none = self._docker.DockerClient(
                        **self._client_kwargs,
                        version=self._negotiate() if self.options.api_version == "auto" else self.options.api_version,
                        timeout=self.options.api_timeout,
                        max_pool_size=self.options.max_connections,
                    )
                except (self._docker.errors.DockerException, *self._requests_errors) as e:
                    raise self._failure(e, "connecting") from None
            return self._client_or_none

    def _negotiate(self) -> str:
        """The API version to speak: the engine's (the Api-Version header of ``GET /_ping``), at
        most the newest the package knows. docker's own "auto" asks ``/version`` instead, which
        podman takes ~0.4 s to answer (it runs its helpers for their versions); ``/_ping`` takes 1 ms.

        Raises:
            docker.errors.DockerException, requests.exceptions.RequestException.
        """
        docker = self._docker
        probe = docker.DockerClient(**self._client_kwargs, version=docker.constants.MINIMUM_DOCKER_API_VERSION,
                                    timeout=self.options.api_timeout)
        try:
            response = probe.api.get(probe.api.base_url + "/_ping")
            response.raise_for_status()
        finally:
            probe.close()
        engine = response.headers.get("Api-Version")
        if not engine:
            return "auto"
        newest = docker.constants.DEFAULT_DOCKER_API_VERSION
        return str(engine) if docker.utils.version_lt(engine, newest) else str(newest)

    def _failure(self, e: BaseException, doing: str) -> StartError:
        """The StartError for an engine call that raised ``e``."""
        if isinstance(e, self._docker.errors.APIError):
            return StartError(f"{doing}: {_one_line(e.explanation or e)}")
        reason = _os_reason(e)
        if reason is not None or isinstance(e, self._requests_errors):
            return EngineUnreachableError(self.url, reason or _one_line(e))
        return StartError(f"{doing}: {_one_line(e)}")

    async def start(self, info: ServiceInfo, env: Mapping[str, str]) -> DockerInstance:
        """Create and start a container of ``info.image`` (see the module docstring).

        Raises:
            ImageMissingError: the engine has no such image.
            EngineUnreachableError: the engine cannot be reached.
            StartError: no image in ``info``, or the engine refused (one line, the engine's words).
        """
        if not info.image:
            raise StartError(f"{info.name} has no image to run")
        # Not abandoned on cancellation: a container created meanwhile must not be lost.
        container = await trio.to_thread.run_sync(self._create_and_start, info, dict(env))
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            return DockerInstance(self, container, info.name)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._remove_quietly, container.id)
            raise

    def _create_and_start(self, info: ServiceInfo, env: dict[str, str]) -> Any:
        assert info.image is not None
        client = self._connect()
        errors = self._docker.errors
        failures = (errors.DockerException, *self._requests_errors)
        kwargs: dict[str, Any] = {
            "command": _expand(info.command, env) if info.command else None,
            "environment": env,
            "labels": {self.options.label: self.options.owner, self.options.service_label: info.name},
            "name": f"{self.options.name_prefix}{info.name}-{secrets.token_hex(4)}",
            "network_mode": "host",
            "init": self.options.init,
        }
        if info.cpu is not None:
            kwargs["nano_cpus"] = round(info.cpu * 1e9)
        if info.memory_mb is not None:
            kwargs["mem_limit"] = info.memory_mb * 1024 * 1024
        try:
            # The engine's create never pulls (only the CLI's and docker-py's run do).
            container = client.containers.create(info.image, **kwargs)
        except errors.NotFound:
            raise ImageMissingError(info.name, info.image) from None
        except failures as e:
            raise self._failure(e, f"{info.name}: cannot create a container of {info.image}") from None
        try:
            container.start()
        except failures as e:
            self._remove_quietly(container.id)
            raise self._failure(e, f"{info.name}: cannot start a container of {info.image}") from None
        except BaseException:
            self._remove_quietly(container.id)
            raise
        return container

    def _remove_quietly(self, container_id: str) -> None:
        try:
            self._client.api.remove_container(container_id, v=True, force=True)
        except (self._docker.errors.DockerException, *self._requests_errors) as e:
            log.warning("removing container %s failed: %s", container_id[:12], _one_line(e))

    async def remove_leftovers(self) -> list[str]:
        """Remove every container labelled as :attr:`DockerOptions.owner`'s, running or not: what
        an allocator that did not stop its instances (killed, crashed) left. Call it before starting
        instances. The names removed.

        Raises:
            EngineUnreachableError: the engine cannot be reached.
            StartError: the engine refused to list them.
        """
        return await trio.to_thread.run_sync(self._remove_leftovers, abandon_on_cancel=True)

    async def cleanup(self) -> list[str]:
        """:meth:`remove_leftovers` (the :class:`~physarum.services.runtime.Runtime` protocol's
        clean-up, called by the allocator as it starts).

        Raises:
            EngineUnreachableError: the engine cannot be reached.
            StartError: the engine refused to list them.
        """
        return await self.remove_leftovers()

    def _remove_leftovers(self) -> list[str]:
        client = self._connect()
        selector = f"{self.options.label}={self.options.owner}"
        try:
            found = client.containers.list(all=True, filters={"label": selector})
        except (self._docker.errors.DockerException, *self._requests_errors) as e:
            raise self._failure(e, f"listing the containers labelled {selector}") from None
        for container in found:
            log.info("removing leftover container %s (%s)", container.name, container.short_id)
            self._remove_quietly(container.id)
        return [c.name for c in found]


if TYPE_CHECKING:  # mypy checks both against the runtime protocols
    _INSTANCE: type[Instance] = DockerInstance
    _RUNTIME: type[Runtime] = DockerRuntime

__all__ = ["GONE", "DockerInstance", "DockerOptions", "DockerRuntime", "EngineUnreachableError", "ImageMissingError"]
