"""Standing: how the record and provider stores rank whoever stores something here.

A publisher's (or provider's) standing is its history with us: since when it has been in our
routing table (trio clock), None for a stranger. The DHT supplies it
(:meth:`physarum.dht.routing.Routing.standing`); the stores (:class:`~physarum.dht.records.RecordStore`,
:class:`~physarum.dht.providers.ProviderStore`) only compare ranks, so that throwaway identities
can neither fill a store nor push an established publisher out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from physarum.overlay.identity import PeerId

#: ``standing(publisher)``: since when the publisher has been in our routing table, or None.
Standing = Callable[[PeerId], float | None]

#: A publisher with no history here ranks below every publisher with one.
STRANGER = -math.inf


def no_history(publisher: PeerId) -> float | None:
    """The default standing: everyone is a stranger."""
    return None


def rank(known_since: float | None) -> float:
    """Standing from history: earlier ``known_since`` ranks higher; None (a stranger) lowest."""
    return STRANGER if known_since is None else -known_since


__all__ = ["STRANGER", "Standing", "no_history", "rank"]
