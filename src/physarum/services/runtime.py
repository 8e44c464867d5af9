"""Runtimes: how an allocator starts a service's instance and stops it.

A runtime starts what a :class:`~physarum.services.registry.ServiceInfo` names (its ``command``
for :class:`ProcessRuntime`, its ``image`` for the container runtime in
:mod:`physarum.services.docker_runtime`) with an environment that says where to listen:

* ``SERVICE_PORT``: the TCP port on 127.0.0.1 the instance must accept connections on;
* ``SERVICE_NAME``: the service's name; ``P2P_BOOTSTRAPS``: the allocator's own addresses,
  for a service that joins the overlay itself.

The allocator, not the instance, runs the instance's sidecar (its own peer identity, in the
allocator's process): PhysarumSM's images had to bundle the proxy; ours need only serve HTTP. The
allocator waits until the port accepts a connection before it answers, and stops the instance
when it is culled or when the allocator stops.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from typing import Protocol

import trio

from physarum.errors import PhysarumError
from physarum.services.registry import ServiceInfo

log = logging.getLogger("physarum.services.runtime")


class StartError(PhysarumError):
    """An instance could not be started: the message says why (a command that does not exist, an
    image the engine lacks, an engine that cannot be reached)."""


class Instance(Protocol):
    """A started instance."""

    description: str
    """For logs: ``pid 1234``, ``container 3f2a...``."""

    def exit_status(self) -> int | None:
        """Its exit status once it has ended, else None (never blocks)."""
        ...

    async def stop(self, timeout: float) -> None:
        """Ask it to end, wait up to ``timeout`` seconds, then kill it; never raises."""
        ...


class Runtime(Protocol):
    """Starts instances (:class:`ProcessRuntime`, :class:`~physarum.services.docker_runtime.DockerRuntime`).

    :meth:`cleanup` is part of the protocol, not an optional extra found with ``getattr``: a runtime
    with nothing to clean up returns ``[]`` (as :class:`ProcessRuntime` does), and mypy checks
    every runtime has it.
    """

    name: str

    def can_run(self, info: ServiceInfo) -> bool:
        """Whether ``info`` names something this runtime starts (a command, an image)."""
        ...

    async def start(self, info: ServiceInfo, env: Mapping[str, str]) -> Instance:
        """Start one instance of ``info`` with ``env`` added to its environment.

        Raises:
            StartError: it could not be started.
        """
        ...

    async def cleanup(self) -> list[str]:
        """Remove what an earlier run of this allocator left behind (a killed allocator cannot stop
        its instances): the allocator calls it once, at the start of ``Allocator.run``, before it
        starts or advertises anything. What it removed, for the log.

        Raises:
            StartError: it could not clean up (the allocator logs it and goes on: its instances
                are still started as usual).
        """
        ...


class _Process:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.description = f"pid {process.pid}"

    def exit_status(self) -> int | None:
        return self.process.poll()

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, timeout: float) -> None:
        if self.process.poll() is not None:
            return
        # The whole process group: a `sh -c` command line leaves its children otherwise.
        self._signal_group(signal.SIGTERM)
        with trio.move_on_after(timeout):
            await self.process.wait()
            return
        log.info("%s did not end within %g s of SIGTERM: killing it", self.description, timeout)
        self._signal_group(signal.SIGKILL)
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            await self.process.wait()


class ProcessRuntime:
    """Runs ``ServiceInfo.command`` as a child process in its own process group (no shell; use
    ``["sh", "-c", "..."]`` for one). Its output goes to the allocator's stderr.

    ``cwd``: the working directory of the instances (default: the allocator's).
    """

    name = "process"

    def __init__(self, *, cwd: str | None = None) -> None:
        self.cwd = cwd

    def can_run(self, info: ServiceInfo) -> bool:
        return bool(info.command)

    async def cleanup(self) -> list[str]:
        # Nothing to find: child processes carry no mark of the allocator that started them.
        return []

    async def start(self, info: ServiceInfo, env: Mapping[str, str]) -> Instance:
        if not info.command:
            raise StartError(f"{info.name} has no command to run")
        try:
            process = await trio.lowlevel.open_process(
                list(info.command),
                env={**os.environ, **env},
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=2,  # the allocator's stderr: stdout is for what the binaries print
                start_new_session=True,
            )
        except FileNotFoundError:
            raise StartError(f"{info.name}: command not found: {info.command[0]}") from None
        except PermissionError:
            raise StartError(f"{info.name}: command not executable: {info.command[0]}") from None
        except OSError as e:
            raise StartError(f"{info.name}: cannot run {info.command[0]}: {e.strerror or e}") from None
        return _Process(process)


__all__ = ["Instance", "ProcessRuntime", "Runtime", "StartError"]
