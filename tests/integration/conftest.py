from __future__ import annotations

# The podman engine for the docker runtime's tests (tests/containers/podman.py).
from tests.containers.podman import docker_engine, podman_engine

__all__ = ["docker_engine", "podman_engine"]
