"""Discovery: instances announce their service on the DHT, clients find them there.

A service's key is PhysarumSM's (go-libp2p ``RoutingDiscovery``): the CIDv1 (codec ``raw``) of the
SHA2-256 multihash of the service name. go-libp2p-kad-dht puts the CID's *multihash* on the wire
(``ADD_PROVIDER``/``GET_PROVIDERS`` key), so :func:`service_key` returns that multihash and
:func:`service_cid` the whole CID (for logs and for tools that speak in CIDs). Instances of one
name are therefore found by PhysarumSM's Go proxies and by ours alike.

:class:`Advertiser` provides the key and provides it again: periodically (provider entries expire
after 24 h on other nodes), after a failed attempt (with backoff), and when the node gets a
connection again after having none, which is the "re-advertise after reconnect" PhysarumSM lacks.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from physarum.errors import PEER_FAILURES

log = logging.getLogger("physarum.services.discovery")

_CID_V1 = 0x01
_RAW_CODEC = 0x55
_SHA2_256 = 0x12
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


def service_key(name: str) -> bytes:
    """The DHT key instances of ``name`` provide: the SHA2-256 multihash of its UTF-8 bytes."""
    return bytes([_SHA2_256, 32]) + hashlib.sha256(name.encode()).digest()


def service_cid(name: str) -> bytes:
    """The binary CIDv1 (raw) of ``name``, as go-libp2p's discovery builds it."""
    return bytes([_CID_V1, _RAW_CODEC]) + service_key(name)


def service_cid_text(name: str) -> str:
    """:func:`service_cid` in its usual text form (multibase ``b``: lowercase base32, no padding)."""
    data = service_cid(name)
    bits = int.from_bytes(data, "big")
    nbits = len(data) * 8
    pad = (-nbits) % 5
    bits <<= pad
    count = (nbits + pad) // 5
    chars = [_BASE32[(bits >> (5 * (count - 1 - i))) & 31] for i in range(count)]
    return "b" + "".join(chars)


class ProvidingDHT(Protocol):
    """What :class:`Advertiser` needs of a DHT (:class:`~physarum.dht.service.KadDHT` has it)."""

    async def provide(self, key: bytes, *, timeout: float | None = None) -> int: ...


class ConnectionEvents(Protocol):
    """What :class:`Advertiser` needs of a host (:class:`~physarum.overlay.host.Host` has it): its
    connect callbacks and its open connections."""

    @property
    def on_connect(self) -> list[Callable[[Any], None]]: ...

    @property
    def connections(self) -> Mapping[Any, Sequence[Any]]: ...


@dataclass(frozen=True)
class AdvertiserOptions:
    """When an instance (re-)provides its service key."""

    reprovide_interval: float = 3600.0
    """Seconds between provides while all is well; other nodes keep an entry 24 h."""
    provide_timeout: float = 30.0
    """Seconds one provide may take (the wait for the join and the lookup)."""
    retry_min: float = 1.0
    """Seconds before the first retry of a provide that reached nobody; doubles each time..."""
    retry_max: float = 60.0
    """...up to this."""


class Advertiser:
    """Keep ``name``'s key provided on ``dht`` (see the module's docstring for when).

    ``provided`` counts successful provides (one node or more told); ``last_told`` is how many nodes
    the latest attempt told (0 also when it failed).
    """

    def __init__(
        self,
        name: str,
        dht: ProvidingDHT,
        host: ConnectionEvents,
        options: AdvertiserOptions = AdvertiserOptions(),
    ) -> None:
        self.name = name
        self.key = service_key(name)
        self.dht = dht
        self.host = host
        self.options = options
        self.provided = 0
        self.last_told = 0
        self._wake = trio.Event()

    def _on_connect(self, _conn: object) -> None:
        # Only a connection that ends isolation (or arrives while we are failing) is news for the
        # DHT: client proxies connect to us all the time and must not each cause a provide.
        total = sum(len(c) for c in self.host.connections.values())
        if self.last_told == 0 or total <= 1:
            self._wake.set()

    async def provide_once(self) -> int:
        """Provide the key now; how many nodes were told (0 also when it failed, logged)."""
        try:
            told = await self.dht.provide(self.key, timeout=self.options.provide_timeout)
        except PEER_FAILURES as e:
            log.info("providing %s failed: %s", self.name, e)
            told = 0
        self.last_told = told
        if told:
            self.provided += 1
            log.debug("provided %s (%s) to %d node(s)", self.name, service_cid_text(self.name), told)
        return told

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Provide now, then again as described above, until cancelled."""
        self.host.on_connect.append(self._on_connect)
        try:
            task_status.started()
            delay = self.options.retry_min
            while True:
                self._wake = trio.Event()
                told = await self.provide_once()
                if told:
                    delay = self.options.retry_min
                    wait = self.options.reprovide_interval
                else:
                    wait = delay
                    delay = min(delay * 2, self.options.retry_max)
                with trio.move_on_after(wait if math.isfinite(wait) else math.inf):
                    await self._wake.wait()
        finally:
            self.host.on_connect.remove(self._on_connect)


__all__ = [
    "Advertiser",
    "AdvertiserOptions",
    "ConnectionEvents",
    "ProvidingDHT",
    "service_cid",
    "service_cid_text",
    "service_key",
]
