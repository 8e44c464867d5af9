"""What the host knows of peers: addresses, protocols, agent, last contact. Bounded.

Peers announce themselves (identify) and are announced by others (the DHT), so what a peer store
keeps is what strangers chose to send. It is bounded three ways:

- per field, by :class:`~physarum.overlay.identify.IdentifyLimits` (the same limits
  :func:`identify.trim <physarum.overlay.identify.trim>` applies), enforced whenever a field is
  set: at most 32 addresses (:data:`MAX_ADDRS_PER_PEER`) and 128 protocols per peer, no protocol
  over 256 bytes, no address over 256 bytes or 16 components, version strings cut to 256
  characters, no key over 2 KiB;
- in peers, by ``capacity`` (default 10,000);
- in bytes, by ``max_bytes`` (default 16 MiB), over an estimate of each entry's retained size
  (:func:`identify.retained_size <physarum.overlay.identify.retained_size>`'s rules, object
  headers included; it errs high).

The byte bound is what makes the total safe. At its per-field caps one entry is estimated at
123 KiB (measured with tracemalloc: 107 KiB; 32 addresses of 256 bytes and 16 components, 128
protocols of 256 bytes, two 256-character versions, a 2 KiB key), so 10,000 of them would be
about 1.2 GB. With the byte bound, a store flooded with such entries holds at most ``max_bytes``
by estimate (about 130 of them), whatever the number of identities behind them. Honest entries
are estimated at 1.4 KiB (3 addresses learned from the DHT; measured 1.2 KiB) to 4.3 KiB (an
identified peer with 5 addresses and 20 protocols; measured 2.7 KiB): 16 MiB holds about 3,800
identified peers, or all 10,000 DHT-learned ones. The least recently used entries go first,
whichever bound is hit.

What a peer's connection told us (identify: protocols, versions, key, observed address) describes
that connection: when the peer's last connection closes, :meth:`PeerStore.departed` drops it and
keeps only the addresses a later dial by peer id needs. A peer that left no address (an inbound-only
client: ``peer find``, a throwaway identity) is forgotten at once, so a thousand identities that
connect and leave leave nothing behind (measured: 1,000 such entries kept 0.7 MiB before).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from itertools import chain

from physarum.overlay.identify import (
    DEFAULT_LIMITS,
    IdentifyLimits,
    addr_allowed,
    addr_size,
    bounded_addrs,
    bounded_protocols,
    bounded_text,
    text_size,
)
from physarum.overlay.identity import PeerId, PublicKey
from physarum.overlay.multiaddr import Multiaddr

#: Addresses kept per peer (``IdentifyLimits.max_listen_addrs``); identify and the DHT can
#: announce thousands and they must not grow without bound. go-libp2p keeps a similar number.
MAX_ADDRS_PER_PEER = DEFAULT_LIMITS.max_listen_addrs
#: Peers a store keeps by default.
DEFAULT_CAPACITY = 10_000
#: Estimated bytes a store keeps by default (see the module docstring).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Estimated cost of an entry with nothing in it: the entry, its peer id, its slot in the store.
ENTRY_BASE_SIZE = 320


class PeerInfo:
    """What is known of one peer. Fields are cut to the store's limits as they are set.

    ``addrs`` and ``protocols`` read as fresh lists: assign a new list to change them.
    """

    __slots__ = (
        "_addrs",
        "_agent_version",
        "_limits",
        "_observed_addr",
        "_protocol_version",
        "_protocols",
        "_public_key",
        "_size",
        "_store",
        "last_seen",
        "peer_id",
    )

    def __init__(
        self,
        peer_id: PeerId,
        addrs: Iterable[Multiaddr] = (),
        protocols: Iterable[str] = (),
        public_key: PublicKey | None = None,
        agent_version: str | None = None,
        protocol_version: str | None = None,
        observed_addr: Multiaddr | None = None,
        last_seen: float = 0.0,
        *,
        limits: IdentifyLimits = DEFAULT_LIMITS,
    ) -> None:
        self.peer_id = peer_id
        self.last_seen = last_seen
        self._limits = limits
        self._store: PeerStore | None = None
        self._addrs: tuple[Multiaddr, ...] = tuple(bounded_addrs(addrs, limits.max_listen_addrs, limits))
        self._protocols: tuple[str, ...] = tuple(bounded_protocols(protocols, limits))
        self._public_key = _bounded_key(public_key, limits)
        self._agent_version = bounded_text(agent_version, limits)
        self._protocol_version = bounded_text(protocol_version, limits)
        self._observed_addr = _bounded_addr(observed_addr, limits)
        self._size = self._measure()

    def __repr__(self) -> str:
        return f"<PeerInfo {self.peer_id} addrs={len(self._addrs)} protocols={len(self._protocols)}>"

    @property
    def size(self) -> int:
        """Estimated bytes this entry retains."""
        return self._size

    def _measure(self) -> int:
        size = ENTRY_BASE_SIZE + sum(map(addr_size, self._addrs)) + sum(map(text_size, self._protocols))
        size += text_size(self._agent_version) + text_size(self._protocol_version)
        if self._public_key is not None:
            size += 100 + len(self._public_key.data)
        if self._observed_addr is not None:
            size += addr_size(self._observed_addr)
        return size

    def _changed(self) -> None:
        old, self._size = self._size, self._measure()
        if self._store is not None:
            self._store._resized(self, self._size - old)

    @property
    def addrs(self) -> list[Multiaddr]:
        return list(self._addrs)

    @addrs.setter
    def addrs(self, value: Iterable[Multiaddr]) -> None:
        self._addrs = tuple(bounded_addrs(value, self._limits.max_listen_addrs, self._limits))
        self._changed()

    @property
    def protocols(self) -> list[str]:
        return list(self._protocols)

    @protocols.setter
    def protocols(self, value: Iterable[str]) -> None:
        self._protocols = tuple(bounded_protocols(value, self._limits))
        self._changed()

    @property
    def public_key(self) -> PublicKey | None:
        return self._public_key

    @public_key.setter
    def public_key(self, value: PublicKey | None) -> None:
        self._public_key = _bounded_key(value, self._limits)
        self._changed()

    @property
    def agent_version(self) -> str | None:
        return self._agent_version

    @agent_version.setter
    def agent_version(self, value: str | None) -> None:
        self._agent_version = bounded_text(value, self._limits)
        self._changed()

    @property
    def protocol_version(self) -> str | None:
        return self._protocol_version

    @protocol_version.setter
    def protocol_version(self, value: str | None) -> None:
        self._protocol_version = bounded_text(value, self._limits)
        self._changed()

    @property
    def observed_addr(self) -> Multiaddr | None:
        return self._observed_addr

    @observed_addr.setter
    def observed_addr(self, value: Multiaddr | None) -> None:
        self._observed_addr = _bounded_addr(value, self._limits)
        self._changed()


def _bounded_key(key: PublicKey | None, limits: IdentifyLimits) -> PublicKey | None:
    return key if key is None or len(key.data) <= limits.max_public_key_length else None


def _bounded_addr(addr: Multiaddr | None, limits: IdentifyLimits) -> Multiaddr | None:
    return addr if addr is None or addr_allowed(addr, limits) else None


class PeerStore:
    """Peer id -> :class:`PeerInfo`, least recently used entries dropped beyond ``capacity``
    peers or ``max_bytes`` estimated bytes; every entry cut to ``limits``.

    With the defaults (10,000 peers, 16 MiB, :data:`~physarum.overlay.identify.DEFAULT_LIMITS`)
    a full store holds at most about 16 MiB whatever peers send (see the module docstring for
    the estimate and what honest entries cost).
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        limits: IdentifyLimits = DEFAULT_LIMITS,
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.limits = limits
        self._peers: OrderedDict[PeerId, PeerInfo] = OrderedDict()
        self._bytes = 0

    @property
    def bytes_used(self) -> int:
        """Estimated bytes the entries retain (what ``max_bytes`` bounds)."""
        return self._bytes

    def get(self, peer_id: PeerId) -> PeerInfo | None:
        return self._peers.get(peer_id)

    def info(self, peer_id: PeerId) -> PeerInfo:
        """The entry for ``peer_id``, created if new; marks it most recently used."""
        entry = self._peers.get(peer_id)
        if entry is None:
            entry = self._peers[peer_id] = PeerInfo(peer_id, limits=self.limits)
            entry._store = self
            self._bytes += entry.size
            self._evict(entry)
        else:
            self._peers.move_to_end(peer_id)
        return entry

    def _resized(self, entry: PeerInfo, delta: int) -> None:
        if self._peers.get(entry.peer_id) is not entry:
            entry._store = None  # evicted while someone held it: no longer counted here
            return
        self._bytes += delta
        self._evict(entry)

    def _evict(self, keep: PeerInfo) -> None:
        """Drop least recently used entries until both bounds hold; ``keep`` (the entry being
        written) stays, even alone over ``max_bytes``: its own fields are capped."""
        peers = self._peers
        while (len(peers) > self.capacity or self._bytes > self.max_bytes) and len(peers) > 1:
            peer_id, oldest = next(iter(peers.items()))
            if oldest is keep:
                peers.move_to_end(peer_id)
                continue
            del peers[peer_id]
            oldest._store = None
            self._bytes -= oldest.size

    def add_addrs(self, peer_id: PeerId, addrs: Iterable[str | Multiaddr], *, prefer: bool = False) -> None:
        """Remember addresses, text or :class:`Multiaddr` (the first :data:`MAX_ADDRS_PER_PEER`
        distinct ones are kept); ``prefer`` puts them first (a dial just succeeded there). Linear in
        ``addrs``.

        Raises:
            AddressError: a malformed address (nothing is added then).
        """
        parsed = [a if isinstance(a, Multiaddr) else Multiaddr(a) for a in addrs]
        entry = self.info(peer_id)
        old = entry._addrs
        entry.addrs = chain(parsed, old) if prefer else chain(old, parsed)

    def addrs(self, peer_id: PeerId) -> list[Multiaddr]:
        entry = self._peers.get(peer_id)
        return entry.addrs if entry else []

    def departed(self, peer_id: PeerId, now: float) -> None:
        """``peer_id``'s last connection closed at ``now``: keep its addresses (and ``last_seen``),
        which a later dial by peer id needs, and drop what its identify said, which is asked again
        on the next connection; forget it altogether if it has no address. Does not create an
        entry, nor mark one recently used."""
        entry = self._peers.get(peer_id)
        if entry is None:
            return
        if not entry._addrs:
            self.forget(peer_id)
            return
        entry.last_seen = now
        entry._protocols = ()
        entry._public_key = None
        entry._agent_version = None
        entry._protocol_version = None
        entry._observed_addr = None
        entry._changed()

    def forget(self, peer_id: PeerId) -> None:
        """Drop what is known of ``peer_id``."""
        entry = self._peers.pop(peer_id, None)
        if entry is not None:
            entry._store = None
            self._bytes -= entry.size

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def peers(self) -> list[PeerId]:
        return list(self._peers)
