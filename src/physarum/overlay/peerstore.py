"""What the host knows of peers: addresses, protocols, agent, last contact. Bounded."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from physarum.overlay.identity import PeerId, PublicKey
from physarum.overlay.multiaddr import Multiaddr

#: Addresses kept per peer; identify can announce many and they must not grow without bound.
MAX_ADDRS_PER_PEER = 16


@dataclass
class PeerInfo:
    peer_id: PeerId
    addrs: list[Multiaddr] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    public_key: PublicKey | None = None
    agent_version: str | None = None
    protocol_version: str | None = None
    observed_addr: Multiaddr | None = None
    last_seen: float = 0.0


class PeerStore:
    """Peer id -> :class:`PeerInfo`, keeping at most ``capacity`` peers (least recently seen go)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._peers: OrderedDict[PeerId, PeerInfo] = OrderedDict()

    def get(self, peer_id: PeerId) -> PeerInfo | None:
        return self._peers.get(peer_id)

    def info(self, peer_id: PeerId) -> PeerInfo:
        """The entry for ``peer_id``, created if new; marks it most recently used."""
        entry = self._peers.get(peer_id)
        if entry is None:
            entry = self._peers[peer_id] = PeerInfo(peer_id)
            while len(self._peers) > self.capacity:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer_id)
        return entry

    def add_addrs(self, peer_id: PeerId, addrs: list[Multiaddr], *, prefer: bool = False) -> None:
        """Remember addresses; ``prefer`` puts them first (a dial just succeeded there)."""
        entry = self.info(peer_id)
        fresh = list(dict.fromkeys(addrs))
        if prefer:
            merged = fresh + [a for a in entry.addrs if a not in fresh]
        else:
            merged = entry.addrs + [a for a in fresh if a not in entry.addrs]
        entry.addrs = merged[:MAX_ADDRS_PER_PEER]

    def addrs(self, peer_id: PeerId) -> list[Multiaddr]:
        entry = self._peers.get(peer_id)
        return list(entry.addrs) if entry else []

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def peers(self) -> list[PeerId]:
        return list(self._peers)
