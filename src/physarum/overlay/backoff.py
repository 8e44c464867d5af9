"""Keeping a peer connected: dial it, and when it is gone, dial again with exponential backoff.

This is PhysarumSM's bootstrap policy, shared by the binaries (:mod:`physarum.cli.node`) and the DHT
(:class:`physarum.dht.service.KadDHT` keeps its bootstrap peers connected with it): each peer gets a
task that dials it, and when the dial fails or the connection drops, dials again after 1, 2, 4, ...
512, 512, ... seconds, forever. :func:`keep_connected` is written against three callables and an
injectable ``sleep`` so it can be tested on trio's ``autojump_clock`` with a fake host;
:func:`keep_bootstrap_connected` binds it to a :class:`~physarum.overlay.host.Host`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, NoReturn, Protocol, TypeVar

import trio

from physarum.errors import PEER_FAILURES
from physarum.overlay import addr as addrs_
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.yamux import GO_AWAY_GARBAGE_COLLECTED

if TYPE_CHECKING:
    from physarum.overlay.identity import PeerId

log = logging.getLogger(__name__)


class _Session(Protocol):
    @property
    def closed(self) -> trio.Event: ...


class BootstrapConnection(Protocol):
    """What :func:`keep_bootstrap_connected` uses of a connection (a host's ``Connection`` fits)."""

    @property
    def session(self) -> _Session: ...


_Conn_co = TypeVar("_Conn_co", bound=BootstrapConnection, covariant=True)
_Conn = TypeVar("_Conn", bound=BootstrapConnection)


class BootstrapHost(Protocol[_Conn_co]):
    """What :func:`keep_bootstrap_connected` uses of a host (a :class:`~physarum.overlay.host.Host`
    fits, and so does the DHT's view of one)."""

    async def connect(self, target: Multiaddr, *, timeout: float) -> object: ...

    def connection(self, peer_id: PeerId) -> _Conn_co | None: ...

#: PhysarumSM's cap on the delay between two dials of a bootstrap peer.
MAX_BACKOFF = 512.0



def backoff_delays(first: float = 1.0, cap: float = MAX_BACKOFF) -> Iterator[float]:
    """1, 2, 4, ... doubling up to ``cap``, then ``cap`` forever."""
    delay = first
    while True:
        yield min(delay, cap)
        delay = min(delay * 2, cap)


async def keep_connected(
    dial: Callable[[], Awaitable[object]],
    is_connected: Callable[[], bool],
    wait_disconnected: Callable[[], Awaitable[None]],
    *,
    name: str = "peer",
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    max_delay: float = MAX_BACKOFF,
    stable_after: float = 30.0,
) -> NoReturn:
    """Keep one peer connected, forever: dial it, and when it is gone, dial again with backoff.

    * A failed dial waits 1 s, then 2, 4, ... up to ``max_delay`` (PhysarumSM: 2^n s capped at 512 s),
      and keeps retrying at ``max_delay``.
    * A connection that stayed up at least ``stable_after`` seconds (time from ``trio.current_time()``)
      resets the schedule: when it drops, the peer is dialed again at once. One that drops sooner
      continues the schedule, so a peer that accepts and hangs up is not dialed in a tight loop.
    * A connection the peer opened to us counts as connected too (``is_connected``).

    ``dial`` raises one of :data:`~physarum.errors.PEER_FAILURES` on failure; ``wait_disconnected`` returns once
    ``is_connected()`` is false. Runs until cancelled.
    """
    delays = backoff_delays(cap=max_delay)
    while True:
        if not is_connected():
            try:
                await dial()
            except PEER_FAILURES as e:
                delay = next(delays)
                log.info("cannot reach %s (retrying in %g s): %s", name, delay, e)
                await sleep(delay)
                continue
            log.info("connected to %s", name)
        up_since = trio.current_time()
        await wait_disconnected()
        if trio.current_time() - up_since >= stable_after:
            delays = backoff_delays(cap=max_delay)
            log.info("lost %s; dialing it again", name)
        else:
            delay = next(delays)
            log.info(
                "lost %s after %.1f s; dialing it again in %g s", name, trio.current_time() - up_since, delay
            )
            await sleep(delay)


async def keep_bootstrap_connected(
    host: BootstrapHost[_Conn],
    address: Multiaddr,
    *,
    dial_timeout: float = 10.0,
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    max_delay: float = MAX_BACKOFF,
    on_connected: Callable[[_Conn], Awaitable[None]] | None = None,
) -> NoReturn:
    """:func:`keep_connected` for the bootstrap peer at ``address`` (which ends in ``/p2p/<id>``).

    ``on_connected`` runs after each (re)connection, whichever side dialed, before the connection
    is watched for its end (the DHT joins the network there); a :data:`~physarum.errors.PEER_FAILURES` it raises is
    logged and does not stop the loop. A connection the bootstrap peer closed with yamux GoAway
    code ``GO_AWAY_GARBAGE_COLLECTED`` (its connection manager trimmed us: it is up, and has enough
    peers) is dialed again after ``max_delay`` seconds rather than at once.

    Raises:
        AddressError: ``address`` has no peer id.
    """
    peer = addrs_.tcp_endpoint(address).peer_id
    if peer is None:
        raise addrs_.AddressError(address, "a bootstrap address ends in /p2p/<peer id>")

    async def dial() -> None:
        await host.connect(address, timeout=dial_timeout)

    def is_connected() -> bool:
        return host.connection(peer) is not None

    async def wait_disconnected() -> None:
        last = host.connection(peer)
        if last is not None and on_connected is not None:
            try:
                await on_connected(last)
            except PEER_FAILURES as e:
                log.info("bootstrap %s: %s", address, e)
        while (conn := host.connection(peer)) is not None:
            last = conn
            await conn.session.closed.wait()
        # The last connection to close says how it went (it may have closed during on_connected).
        if last is not None and getattr(last.session, "go_away_code", None) == GO_AWAY_GARBAGE_COLLECTED:
            # Its connection manager closed us to stay under its limits: it is up, and would trim
            # a new connection too (and N nodes redialing one bootstrap keep it over its limit).
            log.info(
                "bootstrap %s trimmed our connection (it has enough peers); dialing it again in %g s",
                address,
                max_delay,
            )
            await sleep(max_delay)

    await keep_connected(
        dial, is_connected, wait_disconnected, name=f"bootstrap {address}", sleep=sleep, max_delay=max_delay
    )


__all__ = ["MAX_BACKOFF", "backoff_delays", "keep_bootstrap_connected", "keep_connected"]
