"""Provider entries: who said (ADD_PROVIDER) it can provide a key, held within bounds.

:class:`ProviderStore` is pure (no I/O; ``now`` is injected from any steady clock, since it only
compares times it recorded itself). Like :class:`~physarum.dht.records.RecordStore` it is bounded
per provider, per key and per store, and when a bound is hit, providers with a history in our
routing table (their standing, :mod:`physarum.dht.standing`) win over strangers; among equals it
favours the freshest entries, since providers re-provide periodically. The DHT serves and fills it
in :mod:`physarum.dht.server` (ADD_PROVIDER, GET_PROVIDERS) and :meth:`~physarum.dht.service.KadDHT.provide`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from physarum.dht.addrs import MAX_ADDRS_PER_PEER, addr_footprint, bounded_addrs
from physarum.dht.standing import STRANGER, Standing, no_history
from physarum.dht.standing import rank as _rank
from physarum.errors import ConfigError
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr

#: How long a provider entry lives without being re-added (libp2p's provide validity).
DEFAULT_PROVIDER_VALIDITY = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Provider:
    """A peer that said (ADD_PROVIDER) it can provide a key: its id, addresses, and when.

    ``known_since`` is the standing it had when it said so (see :class:`ProviderStore`).
    """

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...]
    added: float
    expires: float
    known_since: float | None = None


class ProviderOutcome(enum.Enum):
    """What :meth:`ProviderStore.offer` did."""

    STORED = "stored"
    """Held (new, or refreshed)."""
    BAD_KEY = "bad_key"
    """An empty key, or one over ``max_key_size``."""
    PROVIDER_QUOTA = "provider_quota"
    """The provider already provides ``max_keys_per_provider`` keys here."""
    KEY_FULL = "key_full"
    """The key has ``max_per_key`` providers, all with more standing."""
    STORE_FULL = "store_full"
    """The store is at ``max_entries``, ``max_keys`` or ``max_bytes``, and the newcomer may not
    evict (a stranger), or evicting every stranger would not make room."""


#: Memory of one provider entry beside its addresses (the object, its dict slots, the key's share).
_PROVIDER_OVERHEAD = 400


def _provider_cost(key: bytes, addrs: Sequence[Multiaddr]) -> int:
    return _PROVIDER_OVERHEAD + len(key) + sum(addr_footprint(a) for a in addrs)


class ProviderStore:
    """Provider entries by key, each living ``validity`` seconds from its latest ADD_PROVIDER.

    Pure: ``now`` is injected, from any steady clock (only times this store recorded are compared).
    Entries expire ``validity`` after their latest ADD_PROVIDER (libp2p's 24 h); since that is the
    same for every entry, the entries kept in order of their latest add are also in order of
    expiry, and :meth:`expire` costs only what it drops.

    Bounds, so that peers who announce and leave cannot make a node hold more than ``max_bytes``:
    an entry keeps the provider's first ``max_addrs`` distinct addresses within the size bounds of
    :mod:`physarum.dht.addrs`; a key has at most ``max_per_key`` providers; a provider provides at
    most ``max_keys_per_provider`` keys here; the store holds at most ``max_entries`` entries over
    ``max_keys`` keys, and ``max_bytes`` of (estimated) memory.

    Standing, as for records (:class:`RecordStore`): ``standing(provider)`` says since when the
    provider has been in our routing table, None for a stranger (the default for everyone);
    earlier is higher. At ``max_per_key``
    the entry of the lowest standing that was added longest ago makes room, if that standing is
    not above the newcomer's (providers re-provide periodically, so among equals the freshest are
    the most useful); with the store full, a newcomer with history evicts strangers' entries,
    those added longest ago first, and a stranger is refused.

    Raises:
        ConfigError: a bound below 1 or a non-positive ``validity``.
    """

    def __init__(
        self,
        *,
        validity: float = DEFAULT_PROVIDER_VALIDITY,
        standing: Standing | None = None,
        max_per_key: int = 64,
        max_keys: int = 10_000,
        max_key_size: int = 256,
        max_entries: int = 10_000,
        max_keys_per_provider: int = 256,
        max_bytes: int = 8 * 1024 * 1024,
        max_addrs: int = MAX_ADDRS_PER_PEER,
    ) -> None:
        bounds = (max_per_key, max_keys, max_key_size, max_entries, max_keys_per_provider, max_bytes, max_addrs)
        if validity <= 0 or min(bounds) < 1:
            raise ConfigError("provider store bounds and validity must be positive")
        self.validity = validity
        self.standing: Standing = standing if standing is not None else no_history
        self.max_per_key = max_per_key
        self.max_keys = max_keys
        self.max_key_size = max_key_size
        self.max_entries = max_entries
        self.max_keys_per_provider = max_keys_per_provider
        self.max_bytes = max_bytes
        self.max_addrs = max_addrs
        # per key, insertion order = least recently (re-)added first
        self._by_key: dict[bytes, dict[PeerId, Provider]] = {}
        # every entry, least recently (re-)added first (so also soonest to expire first)
        self._order: dict[tuple[bytes, PeerId], Provider] = {}
        self._strangers: dict[tuple[bytes, PeerId], Provider] = {}
        self._stranger_bytes = 0
        self._per_provider: dict[PeerId, int] = {}
        self._bytes = 0

    def __len__(self) -> int:
        """How many (key, provider) entries are held."""
        return len(self._order)

    @property
    def total_bytes(self) -> int:
        """Estimated memory held by the entries."""
        return self._bytes

    def keys(self) -> list[bytes]:
        return list(self._by_key)

    def add(self, key: bytes, provider: PeerId, addrs: Sequence[Multiaddr], now: float) -> bool:
        """:meth:`offer`; True when the entry is held."""
        return self.offer(key, provider, addrs, now) is ProviderOutcome.STORED

    def offer(self, key: bytes, provider: PeerId, addrs: Sequence[Multiaddr], now: float) -> ProviderOutcome:
        """Record that ``provider`` provides ``key`` as of ``now`` (re-adding refreshes it).

        ``addrs`` are cut to the first ``max_addrs`` distinct allowed ones. Returns what happened
        (see :class:`ProviderOutcome`); anything but ``STORED`` stores nothing, and a refused
        re-add leaves the old entry as it was. Never raises (unless ``standing`` does).
        """
        if not key or len(key) > self.max_key_size:
            return ProviderOutcome.BAD_KEY
        self.expire(now)
        known_since = self.standing(provider)
        kept = bounded_addrs(addrs, self.max_addrs)
        entry = Provider(provider, kept, now, now + self.validity, known_since)
        cost = _provider_cost(key, kept)
        providers = self._by_key.get(key)
        old = providers.get(provider) if providers is not None else None
        rank = _rank(known_since)
        leaving: Provider | None = old
        if old is None:
            if self._per_provider.get(provider, 0) >= self.max_keys_per_provider:
                return ProviderOutcome.PROVIDER_QUOTA
            if providers is not None and len(providers) >= self.max_per_key:
                # lowest standing first, then added longest ago (dicts keep that order)
                leaving = min(providers.values(), key=lambda p: _rank(p.known_since))
                if _rank(leaving.known_since) > rank:
                    return ProviderOutcome.KEY_FULL
        victims = self._room(key, cost, rank, leaving, new_key=providers is None)
        if victims is None:
            return ProviderOutcome.STORE_FULL
        if leaving is not None:
            self._drop(key, leaving)
        for victim_key, victim in victims:
            self._drop(victim_key, victim)
        self._by_key.setdefault(key, {})[provider] = entry
        self._order[(key, provider)] = entry
        if known_since is None:
            self._strangers[(key, provider)] = entry
            self._stranger_bytes += cost
        self._per_provider[provider] = self._per_provider.get(provider, 0) + 1
        self._bytes += cost
        return ProviderOutcome.STORED

    def get(self, key: bytes, now: float, *, limit: int | None = None) -> list[Provider]:
        """The unexpired providers of ``key``, most recently added first."""
        providers = self._by_key.get(key)
        if not providers:
            return []
        live = [p for p in reversed(providers.values()) if p.expires > now]
        return live[:limit]

    def remove(self, key: bytes, provider: PeerId) -> bool:
        """Forget one provider of ``key``; False when it was not held."""
        entry = self._by_key.get(key, {}).get(provider)
        if entry is None:
            return False
        self._drop(key, entry)
        return True

    def expire(self, now: float) -> int:
        """Drop every entry with ``expires <= now``; returns how many went."""
        dropped = 0
        while self._order:
            (key, _), entry = next(iter(self._order.items()))
            if entry.expires > now:
                break
            self._drop(key, entry)
            dropped += 1
        return dropped

    def _room(
        self, key: bytes, cost: int, rank: float, leaving: Provider | None, *, new_key: bool
    ) -> list[tuple[bytes, Provider]] | None:
        """Strangers' entries to evict so that one more entry of ``cost`` fits once ``leaving``
        (an entry of ``key``) is gone: [] when it fits already, None when it cannot."""
        n = len(self._order) + 1
        b = self._bytes + cost
        keys = len(self._by_key) + (1 if new_key else 0)
        if leaving is not None:
            n -= 1
            b -= _provider_cost(key, leaving.addrs)
        if n <= self.max_entries and b <= self.max_bytes and keys <= self.max_keys:
            return []
        if rank == STRANGER:
            return None
        spare_n, spare_b = len(self._strangers), self._stranger_bytes
        if leaving is not None and leaving.known_since is None:
            spare_n -= 1
            spare_b -= _provider_cost(key, leaving.addrs)
        if n - spare_n > self.max_entries or b - spare_b > self.max_bytes:
            return None
        victims: list[tuple[bytes, Provider]] = []
        emptied: dict[bytes, int] = {}
        for (victim_key, _peer), victim in self._strangers.items():  # added longest ago first
            if victim is leaving:
                continue
            victims.append((victim_key, victim))
            n -= 1
            b -= _provider_cost(victim_key, victim.addrs)
            if victim_key != key:
                emptied[victim_key] = emptied.get(victim_key, 0) + 1
                if emptied[victim_key] == len(self._by_key[victim_key]):
                    keys -= 1
            if n <= self.max_entries and b <= self.max_bytes and keys <= self.max_keys:
                return victims
        return None

    def _drop(self, key: bytes, entry: Provider) -> None:
        providers = self._by_key[key]
        del providers[entry.peer_id]
        if not providers:
            del self._by_key[key]
        del self._order[(key, entry.peer_id)]
        cost = _provider_cost(key, entry.addrs)
        if self._strangers.pop((key, entry.peer_id), None) is not None:
            self._stranger_bytes -= cost
        left = self._per_provider[entry.peer_id] - 1
        if left:
            self._per_provider[entry.peer_id] = left
        else:
            del self._per_provider[entry.peer_id]
        self._bytes -= cost


__all__ = ["DEFAULT_PROVIDER_VALIDITY", "Provider", "ProviderOutcome", "ProviderStore"]
