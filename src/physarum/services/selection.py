"""Selection: which instance of a service answers a request, ranked by RTT from this node.

:class:`Selector` finds a service's providers, pings them all concurrently within one shared budget
(PhysarumSM's 1 s), and ranks those that answered by RTT. It keeps a per-service cache whose
instances are re-pinged every second; an instance that fails a ping, or whose RTT goes over the hard
limit, leaves the cache at once. The limits are in milliseconds and named so (``soft_rtt_ms``,
``hard_rtt_ms``): PhysarumSM documented milliseconds but compared Go durations (nanoseconds).

Unlike PhysarumSM, the hard limit is applied at request time too: :meth:`Selector.select` never
returns an instance whose latest RTT is over it. When even the best instance misses the soft limit
(or there is none), the :class:`Selection` says so (``close_enough`` is False) and the selector
calls its ``on_not_close_enough`` hook; :class:`~physarum.services.placement.Placement` reads
``close_enough`` itself and has an allocator start an instance near this node, while traffic keeps
going to the best one there is. A service's own limits (from its registry entry) replace the
options' with :meth:`Selector.set_limits`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from physarum.errors import PEER_FAILURES
from physarum.overlay.identity import PeerId
from physarum.services.discovery import service_key

log = logging.getLogger("physarum.services.selection")


class ServiceNetwork(Protocol):
    """What selection and the client proxy need of the overlay (:class:`OverlayNetwork` on a
    :class:`~physarum.overlay.host.Host` and a :class:`~physarum.dht.service.KadDHT`)."""

    async def find_instances(self, key: bytes, *, timeout: float) -> list[PeerId]:
        """Peers providing ``key`` (never ourselves); raises one of :data:`PEER_FAILURES`."""
        ...

    async def ping(self, peer: PeerId, *, timeout: float) -> float:
        """One RTT to ``peer`` in seconds; raises one of :data:`PEER_FAILURES`."""
        ...


@dataclass(frozen=True)
class SelectorOptions:
    """How instances are found, measured and kept. Every time is in seconds unless named ``_ms``."""

    soft_rtt_ms: float | None = None
    """Best instance slower than this: :attr:`Selection.close_enough` is False (None: no limit)."""
    hard_rtt_ms: float | None = None
    """Instances slower than this are never used and leave the cache (None: no limit)."""
    ping_budget: float = 1.0
    """One budget for pinging all of a service's instances at once (PhysarumSM's 1 s)."""
    refresh_interval: float = 1.0
    """Cached instances are re-pinged this often."""
    discovery_timeout: float = 5.0
    """How long one DHT lookup for providers may take."""
    rediscover_interval: float = 10.0
    """A cached service's providers are looked up again this often (new instances join the cache)."""
    retry_empty_after: float = 1.0
    """A service with no usable instance is looked up again on the next request after this long."""
    idle_expiry: float = 60.0
    """A service not asked for this long leaves the cache (its instances are no longer pinged)."""


@dataclass(frozen=True, order=True)
class Candidate:
    """An instance and its latest RTT (seconds), ordered by RTT."""

    rtt: float
    peer_id: PeerId = field(compare=False)

    @property
    def rtt_ms(self) -> float:
        return self.rtt * 1000.0


@dataclass(frozen=True)
class Selection:
    """The instances of ``service`` usable now, best first, and whether the best is close enough."""

    service: str
    ranked: tuple[Candidate, ...]
    close_enough: bool

    @property
    def best(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None


@dataclass
class _Entry:
    rtts: dict[PeerId, float] = field(default_factory=dict)
    discovered_at: float = -float("inf")
    used_at: float = 0.0
    discovering: trio.Event | None = None


class Selector:
    """RTT-ranked instances per service, with the cache described in the module docstring.

    Run :meth:`run` (``nursery.start``) for the periodic re-pings; :meth:`select` works without it
    (the cache is then only refreshed by lookups). ``on_not_close_enough(selection)`` is called
    when the best instance misses the soft limit or there is none.
    """

    def __init__(
        self,
        network: ServiceNetwork,
        options: SelectorOptions = SelectorOptions(),
        *,
        on_not_close_enough: Callable[[Selection], None] | None = None,
    ) -> None:
        self.network = network
        self.options = options
        self.on_not_close_enough = on_not_close_enough
        self._cache: dict[str, _Entry] = {}
        self._limits: dict[str, tuple[float | None, float | None]] = {}

    def set_limits(self, service: str, soft_rtt_ms: float | None, hard_rtt_ms: float | None) -> None:
        """``service``'s own RTT limits (from its registry entry) instead of the options' defaults."""
        self._limits[service] = (soft_rtt_ms, hard_rtt_ms)

    def limits(self, service: str) -> tuple[float | None, float | None]:
        """(soft, hard) in milliseconds for ``service``: its own, else the options'."""
        return self._limits.get(service, (self.options.soft_rtt_ms, self.options.hard_rtt_ms))

    # -- queries --

    def cached(self, service: str) -> dict[PeerId, float]:
        """The cached instances of ``service`` and their RTTs in seconds (a copy)."""
        entry = self._cache.get(service)
        return dict(entry.rtts) if entry else {}

    def _over_hard(self, service: str, rtt: float) -> bool:
        hard = self.limits(service)[1]
        return hard is not None and rtt * 1000.0 > hard

    def _selection(self, service: str, entry: _Entry) -> Selection:
        ranked = tuple(
            sorted(Candidate(rtt, p) for p, rtt in entry.rtts.items() if not self._over_hard(service, rtt))
        )
        soft = self.limits(service)[0]
        close = bool(ranked) and (soft is None or ranked[0].rtt_ms <= soft)
        return Selection(service, ranked, close)

    async def select(self, service: str) -> Selection:
        """The usable instances of ``service``, best first (possibly none).

        Looks the service up (and pings what it finds, within one budget) when it is not cached,
        when its cached instances are all gone (at most every ``retry_empty_after`` s), and shares
        one lookup between concurrent callers. Never raises for network failures: an instance that
        cannot be reached is simply not in the answer.
        """
        now = trio.current_time()
        entry = self._cache.get(service)
        if entry is None:
            entry = self._cache[service] = _Entry(used_at=now)
        entry.used_at = now
        if not entry.rtts:
            if entry.discovering is not None:
                await entry.discovering.wait()  # a lookup is under way: its answer is ours too
            elif now - entry.discovered_at >= self.options.retry_empty_after:
                await self._discover(service, entry)
        selection = self._selection(service, entry)
        if not selection.close_enough and self.on_not_close_enough is not None:
            self.on_not_close_enough(selection)
        return selection

    async def add_instances(self, service: str, peers: Sequence[PeerId]) -> Selection:
        """Ping ``peers`` (instances of ``service`` learnt otherwise than from the DHT: an allocator's
        answer) within one budget, keep those that answered, and return the new selection."""
        entry = self._cache.get(service)
        if entry is None:
            entry = self._cache[service] = _Entry(used_at=trio.current_time())
        await self._measure(service, entry, list(peers))
        return self._selection(service, entry)

    def report_failure(self, service: str, peer: PeerId) -> None:
        """``peer`` failed a request for ``service``: drop it now (the next lookup may bring it back
        once it answers pings again)."""
        entry = self._cache.get(service)
        if entry is not None and entry.rtts.pop(peer, None) is not None:
            log.info("%s: instance %s failed a request, dropped", service, peer)

    # -- lookups and pings --

    async def _discover(self, service: str, entry: _Entry) -> None:
        if entry.discovering is not None:
            await entry.discovering.wait()
            return
        done = entry.discovering = trio.Event()
        try:
            try:
                with trio.fail_after(self.options.discovery_timeout):
                    found = await self.network.find_instances(
                        service_key(service), timeout=self.options.discovery_timeout
                    )
            except PEER_FAILURES as e:
                log.info("%s: looking up instances failed: %s", service, e)
                found = []
            fresh = [p for p in found if p not in entry.rtts]
            await self._measure(service, entry, fresh)
        finally:
            entry.discovered_at = trio.current_time()
            entry.discovering = None
            done.set()

    async def _measure(self, service: str, entry: _Entry, peers: Sequence[PeerId]) -> None:
        """Ping ``peers`` concurrently within one ``ping_budget``; keep those that answered within
        the hard limit, drop the others from ``entry``."""
        if not peers:
            return
        answers: dict[PeerId, float] = {}

        async def one(peer: PeerId) -> None:
            try:
                answers[peer] = await self.network.ping(peer, timeout=self.options.ping_budget)
            except PEER_FAILURES as e:
                log.debug("%s: ping %s failed: %s", service, peer, e)

        with trio.move_on_after(self.options.ping_budget):
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(one, peer)
        for peer in peers:
            rtt = answers.get(peer)
            if rtt is None or self._over_hard(service, rtt):
                if entry.rtts.pop(peer, None) is not None:
                    why = "no answer" if rtt is None else f"{rtt * 1000:.1f} ms over the hard limit"
                    log.info("%s: instance %s evicted (%s)", service, peer, why)
            else:
                entry.rtts[peer] = rtt

    async def refresh(self) -> None:
        """One round: forget services idle over ``idle_expiry``, re-ping every cached instance,
        and look up again services due for it (all services concurrently)."""
        now = trio.current_time()
        for name in [n for n, e in self._cache.items() if now - e.used_at > self.options.idle_expiry]:
            del self._cache[name]

        async def one(name: str, entry: _Entry) -> None:
            await self._measure(name, entry, list(entry.rtts))
            if now - entry.discovered_at >= self.options.rediscover_interval:
                await self._discover(name, entry)

        async with trio.open_nursery() as nursery:
            for name, entry in list(self._cache.items()):
                nursery.start_soon(one, name, entry)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh the cache every ``refresh_interval`` until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.options.refresh_interval)
            await self.refresh()


__all__ = ["Candidate", "Selection", "Selector", "SelectorOptions", "ServiceNetwork"]
