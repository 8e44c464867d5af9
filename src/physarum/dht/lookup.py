"""Kademlia's iterative lookup as a pure state machine (no I/O, no clock).

The driver asks :meth:`Lookup.next_queries` whom to ask (at most ``alpha`` in flight), sends each
a FIND_NODE-like request with its own deadline, and reports back with :meth:`Lookup.on_response`
or :meth:`Lookup.on_failure`. The lookup is done when the ``k`` closest peers it knows of have all
answered (or nobody is left to ask); :meth:`Lookup.result` is then those ``k`` peers, closest first.

The driver is :class:`physarum.dht.client.LookupRun`: it seeds the machine from the routing table
and feeds it the answers, on trio for real lookups and synchronously for the simulated networks of
``bench/dht.py``, so what the benchmark measures is the code that runs.

Defences against lying peers: a response counts only the first ``k`` peers it names (an "endless"
answer cannot flood the candidate set), peers that fail are never asked again or returned, and the
candidate set keeps only the closest ``max_candidates`` so memory stays bounded.
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from physarum.errors import ConfigError

P = TypeVar("P", bound=Hashable)

_NEW = 0
_IN_FLIGHT = 1
_DONE = 2
_FAILED = 3


@dataclass
class _Candidate(Generic[P]):
    peer: P
    distance: int
    depth: int
    state: int = _NEW


def _distance(c: _Candidate[P]) -> int:
    return c.distance


@dataclass
class LookupStats:
    """What a lookup cost: messages sent, failures, and hops (longest referral chain)."""

    queries: int = 0
    failures: int = 0
    hops: int = 0
    responses: int = 0
    ignored_peers: int = 0


@dataclass
class Lookup(Generic[P]):
    """One iterative lookup for ``target`` (a 256-bit key as an int).

    Peers are any hashable handle; ``key_of`` is not needed because callers pass each peer with
    its Kademlia key. ``exclude`` (typically ourselves) is never queried nor returned.
    """

    target: int
    k: int = 20
    alpha: int = 3
    max_candidates: int = 0
    exclude: frozenset[P] = frozenset()
    stats: LookupStats = field(default_factory=LookupStats)

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 1:
            raise ConfigError("k and alpha must be at least 1")
        if self.max_candidates <= 0:
            self.max_candidates = 8 * self.k
        self._candidates: dict[P, _Candidate[P]] = {}
        self._order: list[_Candidate[P]] = []  # by distance: kept sorted rather than sorted per call
        self._in_flight = 0
        self._closest: list[_Candidate[P]] | None = None  # cache, dropped on every change

    def add(self, peers: Iterable[tuple[P, int]], depth: int = 1) -> int:
        """Offer peers (with their keys) as candidates; return how many were new."""
        added = 0
        for peer, key in peers:
            if peer in self._candidates or peer in self.exclude:
                continue
            c = _Candidate(peer, key ^ self.target, depth)
            self._candidates[peer] = c
            bisect.insort(self._order, c, key=_distance)
            added += 1
        self._closest = None
        if len(self._candidates) > self.max_candidates:
            self._trim()
        return added

    def _trim(self) -> None:
        # Keep anything in flight or answered; drop the farthest unasked and failed ones.
        ordered = self._order
        kept = ordered[: self.max_candidates] + [
            c for c in ordered[self.max_candidates :] if c.state in (_IN_FLIGHT, _DONE)
        ]
        self._order = kept
        self._candidates = {c.peer: c for c in kept}

    def _closest_live(self) -> list[_Candidate[P]]:
        if self._closest is not None:
            return self._closest
        out = []
        k = self.k
        for c in self._order:
            if c.state != _FAILED:
                out.append(c)
                if len(out) == k:
                    break
        self._closest = out
        return out

    def next_queries(self) -> list[P]:
        """Peers to ask now (marked in flight); empty when nothing more should be sent yet."""
        if self.done:
            return []
        out = []
        for c in self._closest_live():
            if self._in_flight >= self.alpha:
                break
            if c.state == _NEW:
                c.state = _IN_FLIGHT
                self._in_flight += 1
                self.stats.queries += 1
                out.append(c.peer)
        return out

    def on_response(self, peer: P, closer: Iterable[tuple[P, int]]) -> None:
        """``peer`` answered, naming ``closer`` peers (only the first ``k`` count)."""
        c = self._candidates.get(peer)
        if c is None or c.state != _IN_FLIGHT:
            return
        c.state = _DONE
        self._in_flight -= 1
        self._closest = None
        self.stats.responses += 1
        self.stats.hops = max(self.stats.hops, c.depth)
        offered = list(closer)
        self.stats.ignored_peers += max(0, len(offered) - self.k)
        self.add(offered[: self.k], depth=c.depth + 1)

    def on_failure(self, peer: P) -> None:
        """``peer`` did not answer in time, or answered garbage: never ask or return it again."""
        c = self._candidates.get(peer)
        if c is None or c.state != _IN_FLIGHT:
            return
        c.state = _FAILED
        self._in_flight -= 1
        self._closest = None
        self.stats.failures += 1

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def done(self) -> bool:
        """True when the ``k`` closest live candidates have all answered, or none is left to ask."""
        closest = self._closest_live()
        if all(c.state == _DONE for c in closest):
            return True
        return self._in_flight == 0 and not any(c.state == _NEW for c in closest)

    def result(self) -> list[P]:
        """The closest peers that answered, closest first (at most ``k``)."""
        return [c.peer for c in self._order if c.state == _DONE][: self.k]
