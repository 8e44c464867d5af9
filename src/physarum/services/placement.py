"""Placement: what the client proxy does when a service's instances are missing or too far.

:meth:`Placement.select` is :meth:`Selector.select` plus the registry and the allocators:

* the service's RTT limits come from its registry entry (looked up in the background, cached
  ``info_ttl`` seconds), else from the selector's options;
* **no usable instance**: the registry is asked whether the service exists at all (no:
  :class:`~physarum.services.registry.UnknownServiceError`, the proxy's 404); if it does (or no
  registry can say), the nearest allocator starts one and the request waits for it;
* **the best instance misses the soft limit**: the request goes to the best instance there is,
  while an allocation near this node runs in the background; once the new instance answers a ping
  it joins the selector's cache, and since it is nearer, traffic moves to it. A service gets at most
  one such allocation per ``improve_cooldown`` seconds (the nearest allocator may be no nearer).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import trio

from physarum.overlay.identity import PeerId
from physarum.services.allocator import AllocatorClient
from physarum.services.errors import AllocationError
from physarum.services.network import OverlayNetwork
from physarum.services.registry import CALL_FAILURES, RegistryClient, ServiceInfo, UnknownServiceError
from physarum.services.selection import Selection, Selector

log = logging.getLogger("physarum.services.placement")


@dataclass(frozen=True)
class PlacementOptions:
    """Timings of placement (seconds)."""

    info_ttl: float = 30.0
    """A service's registry entry (its RTT limits) is looked up again after this."""
    improve_cooldown: float = 30.0
    """At most one background allocation per service this often."""


class Placement:
    """:meth:`select` for the client proxy (see the module docstring). Run :meth:`run`
    (``nursery.start``) for the background work; ``registry`` and ``allocators`` may be None."""

    def __init__(
        self,
        selector: Selector,
        network: OverlayNetwork,
        registry: RegistryClient | None,
        allocators: AllocatorClient | None,
        options: PlacementOptions = PlacementOptions(),
    ) -> None:
        self.selector = selector
        self.network = network
        self.registry = registry
        self.allocators = allocators
        self.options = options
        self.allocated = 0
        self._info_at: dict[str, float] = {}
        self._allocating: dict[str, trio.Event] = {}
        self._failures: dict[str, AllocationError] = {}
        self._improved_at: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _apply_info(self, info: ServiceInfo) -> None:
        self.selector.set_limits(info.name, info.soft_rtt_ms, info.hard_rtt_ms)

    async def _refresh_info(self, service: str) -> None:
        """Look ``service`` up in the registry and apply its limits; raises UnknownServiceError."""
        if self.registry is None:
            return
        self._info_at[service] = trio.current_time()
        try:
            entry = await self.registry.get(service)
        except UnknownServiceError:
            raise
        except CALL_FAILURES as e:
            log.debug("%s: registry not asked: %s", service, e)
            return
        assert entry.info is not None
        self._apply_info(entry.info)

    async def _refresh_info_quietly(self, service: str) -> None:
        try:
            await self._refresh_info(service)
        except UnknownServiceError:
            pass

    async def select(self, service: str) -> Selection:
        """The usable instances of ``service``, allocating one first when there is none.

        Raises:
            UnknownServiceError: no instance, and the registry has no such service.
            AllocationError: no instance, and none could be allocated (the reason).
        """
        now = trio.current_time()
        if self.registry is not None and now - self._info_at.get(service, -math.inf) >= self.options.info_ttl:
            if self._nursery is not None:
                self._info_at[service] = now
                self._nursery.start_soon(self._refresh_info_quietly, service)
        selection = await self.selector.select(service)
        if not selection.ranked:
            await self._refresh_info(service)  # raises UnknownServiceError: the proxy's 404
            if self.allocators is None:
                return selection
            await self._allocate(service)
            return await self.selector.select(service)
        if not selection.close_enough and self.allocators is not None and self._nursery is not None:
            if now - self._improved_at.get(service, -math.inf) >= self.options.improve_cooldown:
                self._improved_at[service] = now
                best = selection.best
                log.info("%s: best instance at %.2f ms misses the soft limit of %s ms: allocating a nearer one",
                         service, best.rtt_ms if best else math.nan, self.selector.limits(service)[0])
                self._nursery.start_soon(self._allocate_quietly, service)
        return selection

    def report_failure(self, service: str, peer: PeerId) -> None:
        """See :meth:`Selector.report_failure`."""
        self.selector.report_failure(service, peer)

    async def _allocate_quietly(self, service: str) -> None:
        try:
            await self._allocate(service)
        except AllocationError as e:
            log.info("%s: background allocation failed: %s", service, e)

    async def _allocate(self, service: str) -> None:
        """One allocation of ``service`` at a time; its instance joins the selector's cache.

        Raises:
            AllocationError: it failed (every caller waiting on it gets the same reason).
        """
        assert self.allocators is not None
        pending = self._allocating.get(service)
        if pending is not None:
            await pending.wait()
            failure = self._failures.get(service)
            if failure is not None:
                raise failure
            return
        done = self._allocating[service] = trio.Event()
        self._failures.pop(service, None)
        try:
            allocated = await self.allocators.allocate(service)
            self.network.add_addrs(allocated.peer_id, allocated.addrs)
            selection = await self.selector.add_instances(service, [allocated.peer_id])
            if not any(c.peer_id == allocated.peer_id for c in selection.ranked):
                raise AllocationError(f"the instance allocated for {service} ({allocated.peer_id}) did not answer a ping")
            self.allocated += 0 if allocated.reused else 1
            log.info("%s: instance %s from allocator %s (%s, %.0f ms)", service, allocated.peer_id,
                     allocated.allocator, "reused" if allocated.reused else "started", allocated.seconds * 1000)
        except AllocationError as e:
            self._failures[service] = e
            raise
        finally:
            del self._allocating[service]
            done.set()


__all__ = ["Placement", "PlacementOptions"]
