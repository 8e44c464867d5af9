"""Running a node for the binaries: host, metrics, ping monitor, bootstrap links, signals, exit codes.

The bootstrap reconnection logic lives here (not in :mod:`physarum.overlay`) because it is policy of
the binaries, PhysarumSM's: each ``-bootstrap`` peer gets a task that dials it, and when the dial fails
or the connection drops, dials again after 1, 2, 4, ... 512, 512, ... seconds, forever.
:func:`keep_connected` is written against three callables and an injectable ``sleep`` so it can be
tested on trio's ``autojump_clock`` with a fake host; :func:`keep_bootstrap_connected` binds it to a
:class:`~physarum.overlay.host.Host`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn, TextIO

import trio
from multiaddr import Multiaddr
from prometheus_client import CollectorRegistry

from physarum.cli.flags import NodeOptions, UsageError
from physarum.errors import PhysarumError
from physarum.monitor.metrics import MetricsServer
from physarum.monitor.ping_monitor import PingMonitor
from physarum.overlay import addr as addrs_
from physarum.overlay.host import Host

log = logging.getLogger("physarum.cli")

#: PhysarumSM's cap on the delay between two dials of a bootstrap peer.
MAX_BACKOFF = 512.0

#: What a failed dial may raise; anything else is a bug and propagates.
DIAL_ERRORS: tuple[type[BaseException], ...] = (
    PhysarumError,
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
)


# -- bootstrap peers -------------------------------------------------------------------------------


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

    ``dial`` raises one of :data:`DIAL_ERRORS` on failure; ``wait_disconnected`` returns once
    ``is_connected()`` is false. Runs until cancelled.
    """
    delays = backoff_delays(cap=max_delay)
    while True:
        if not is_connected():
            try:
                await dial()
            except DIAL_ERRORS as e:
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
    host: Host,
    address: Multiaddr,
    *,
    dial_timeout: float = 10.0,
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
) -> NoReturn:
    """:func:`keep_connected` for the bootstrap peer at ``address`` (which ends in ``/p2p/<id>``).

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
        while (conn := host.connection(peer)) is not None:
            await conn.session.closed.wait()

    await keep_connected(dial, is_connected, wait_disconnected, name=f"bootstrap {address}", sleep=sleep)


# -- the node --------------------------------------------------------------------------------------


@dataclass
class MonitorOptions:
    """The ping monitor and its metrics server (ping-monitor only)."""

    prom_host: str | None
    """None: every interface."""
    prom_port: int
    interval: float = 1.0
    timeout: float = 5.0
    expiry: float = 600.0


@dataclass
class RunningNode:
    """What :func:`run_node` reports when started (for tests and embedders)."""

    host: Host
    monitor: PingMonitor | None
    metrics_server: MetricsServer | None


async def _stop_on_signals(
    cancel_scope: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s: shutting down", signal.Signals(signum).name)
            cancel_scope.cancel()
            return


def _os_reason(e: OSError) -> str:
    if e.errno is not None and e.errno in errno.errorcode:
        return os.strerror(e.errno).lower()
    return str(e)


async def run_node(
    opts: NodeOptions,
    *,
    monitor: MonitorOptions | None = None,
    out: TextIO | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until SIGINT/SIGTERM (or cancellation): listen, print our multiaddrs on ``out``
    (default stdout) one per line, keep the bootstrap peers connected, and with ``monitor`` also ping
    every connected peer and serve ``/metrics``.

    Raises:
        UsageError: a listen address or the metrics address cannot be bound.
    """
    out = sys.stdout if out is None else out
    async with trio.open_nursery() as nursery:
        if handle_signals:
            await nursery.start(_stop_on_signals, nursery.cancel_scope)
        host = Host(opts.key_pair, psk=opts.psk, listen=())
        await nursery.start(host.run)
        for address in opts.listen:
            try:
                await host.listen(address)
            except OSError as e:
                raise UsageError(f"cannot listen on {address}: {_os_reason(e)}") from None
            except addrs_.AddressError as e:
                raise UsageError(f"cannot listen on {address}: {e.reason}") from None

        # ---------------------------------------------------------------------------------------
        # DHT: plug-in point. When physarum.dht provides its service, start it here, in server
        # mode, before the bootstrap links (so joining peers land in its routing table), e.g.
        #     dht = DhtService(host, ...)
        #     await nursery.start(dht.run)
        #     routing_table_size = dht.routing_table.__len__
        # routing_table_size is exported by the ping monitor as physarum_routing_table_peers.
        routing_table_size: Callable[[], int] | None = None
        # ---------------------------------------------------------------------------------------

        ping_monitor: PingMonitor | None = None
        server: MetricsServer | None = None
        if monitor is not None:
            registry = CollectorRegistry()
            ping_monitor = PingMonitor(
                host,
                registry,
                hostname=opts.hostname,
                interval=monitor.interval,
                timeout=monitor.timeout,
                expiry=monitor.expiry,
                routing_table_size=routing_table_size,
            )
            server = MetricsServer(registry, host=monitor.prom_host, port=monitor.prom_port)
            try:
                await nursery.start(server.run)
            except OSError as e:
                where = f"{monitor.prom_host or ''}:{monitor.prom_port}"
                raise UsageError(f"cannot serve metrics on {where}: {_os_reason(e)}") from None
            await nursery.start(ping_monitor.run)

        for address in opts.bootstrap:
            if addrs_.tcp_endpoint(address).peer_id == host.peer_id:
                continue  # redundant bootstraps share one list that names each of them
            nursery.start_soon(keep_bootstrap_connected, host, address)

        for a in host.addrs:
            print(a, file=out)
        out.flush()
        log.info(
            "peer id %s, private network: %s, %d bootstrap peer(s)",
            host.peer_id,
            opts.psk_source,
            len(opts.bootstrap),
        )
        if server is not None:
            log.info("metrics at %s", " ".join(server.urls))
        task_status.started(RunningNode(host, ping_monitor, server))
        await trio.sleep_forever()


# -- process plumbing ------------------------------------------------------------------------------


def setup_logging(debug: bool, *, quiet: bool = False) -> None:
    """Log to stderr: debug with ``-debug``, else info (warnings only when ``quiet``, for one-shot commands)."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def find_usage_error(exc: BaseException) -> UsageError | None:
    """The first :class:`UsageError` in ``exc`` or, for an exception group, among its leaves."""
    for leaf in _leaves(exc):
        if isinstance(leaf, UsageError):
            return leaf
    return None


def run_main(prog: str, main: Callable[[], Awaitable[int | None]]) -> int:
    """``trio.run(main)`` as a process: the exit status, with :class:`UsageError` printed as one line
    on stderr (status 2) and Ctrl-C before the signal handler is installed quietly giving 130."""
    try:
        try:
            return trio.run(main) or 0
        except BaseExceptionGroup as group:
            leaves = list(_leaves(group))
            for kind in (UsageError, KeyboardInterrupt):
                for leaf in leaves:
                    if isinstance(leaf, kind):
                        raise leaf from None
            raise
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def describe_dial_error(e: BaseException) -> str:
    """One line saying why a dial failed."""
    errors = getattr(e, "errors", None)
    if isinstance(errors, dict) and errors:
        first = next(iter(errors.values()))
        return str(first) or type(first).__name__
    return str(e) or type(e).__name__


__all__ = [
    "DIAL_ERRORS",
    "MAX_BACKOFF",
    "MonitorOptions",
    "RunningNode",
    "backoff_delays",
    "describe_dial_error",
    "find_usage_error",
    "keep_bootstrap_connected",
    "keep_connected",
    "run_main",
    "run_node",
    "setup_logging",
]
