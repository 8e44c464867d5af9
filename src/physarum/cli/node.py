"""Running a node for the binaries: host, DHT, metrics, ping monitor, signals, exit codes.

Every node runs the Kademlia DHT in server mode (:class:`~physarum.dht.service.KadDHT`), which keeps
the ``-bootstrap`` peers connected with PhysarumSM's backoff (1, 2, 4, ... 512 s, forever) and joins
the network through them. The backoff itself lives in :mod:`physarum.overlay.backoff`; its names are
re-exported here for the binaries' tests and scripts.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

import trio
from prometheus_client import CollectorRegistry

from physarum.cli.flags import NodeOptions, UsageError
from physarum.dht.service import KadDHT
from physarum.dht.table import RoutingTable, TableFormatError
from physarum.errors import DialError, PeerIdMismatchError, exception_leaves
from physarum.monitor.discovery import LINGER, DiscoveryOptions, serve_discovery
from physarum.monitor.metrics import MetricsServer, node_registry
from physarum.monitor.ping_monitor import MAX_PEER_SERIES, PingMonitor
from physarum.monitor.topology import TopologyView
from physarum.overlay import addr as addrs_
from physarum.overlay.backoff import (
    MAX_BACKOFF,
    backoff_delays,
    keep_bootstrap_connected,
    keep_connected,
)
from physarum.overlay.connmgr import ConnManagerOptions
from physarum.overlay.host import Host
from physarum.overlay.identity import PeerId
from physarum.psk import PskMismatchError

log = logging.getLogger("physarum.cli")

#: How often a node with ``-dht-state`` saves its routing table (and once more when it stops).
DHT_STATE_SAVE_INTERVAL = 60.0

# -- the node --------------------------------------------------------------------------------------


@dataclass
class MonitorOptions:
    """The metrics server and, with ``ping`` (ping-monitor), the ping monitor and /sd."""

    prom_host: str | None
    """None: every interface."""
    prom_port: int
    interval: float = 1.0
    timeout: float = 5.0
    expiry: float = 600.0
    max_peer_series: int = MAX_PEER_SERIES
    peer_histograms: bool = False
    """An RTT histogram per peer (see :class:`~physarum.monitor.ping_monitor.PingMonitor`)."""
    token: str | None = None
    """Bearer token every /metrics request must carry (None: none needed)."""
    ping: bool = True
    """Ping every connected peer and list the network's metrics endpoints at /sd (the ping-monitor);
    False: serve this node's own metrics only (``peer -prom-listen-addr``). Either way the node answers
    ``/physarum/metrics/1.0.0`` (:mod:`physarum.monitor.discovery`) with its endpoint."""
    discovery: DiscoveryOptions | None = None
    """How /sd learns the peers' endpoints (None: the defaults, ``linger`` at most ``expiry``)."""


@dataclass
class RunningNode:
    """What :func:`run_node` reports when started (for tests and embedders)."""

    host: Host
    monitor: PingMonitor | None
    metrics_server: MetricsServer | None
    dht: KadDHT


# -- the DHT's saved routing table (-dht-state) ----------------------------------------------------


def load_dht_state(path: str, self_id: PeerId) -> RoutingTable | None:
    """The routing table saved at ``path`` (versioned JSON, see :meth:`RoutingTable.to_json`), or None.

    The file is a cache: a missing one means a first start, and one that cannot be read or used
    (malformed, another version, saved by another identity) is logged and ignored, so the node still
    starts (through its bootstrap peers). Call inside trio (contacts are stamped with trio's clock).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warning("cannot read -dht-state %s (%s): starting with an empty routing table", path, e)
        return None
    try:
        table = RoutingTable.from_json(text, now=trio.current_time(), wall_now=time.time(), self_id=self_id)
    except TableFormatError as e:
        log.warning("ignoring -dht-state %s: %s", path, e.reason)
        return None
    log.info("loaded %d DHT contact(s) from %s", len(table), path)
    return table


def save_dht_state(path: str, table: RoutingTable) -> bool:
    """Write ``table`` to ``path`` atomically (a temporary file, then a rename); False if it failed (logged)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        # 0600 from the start: the table lists who this node talks to.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(table.to_json(now=trio.current_time(), wall_now=time.time()), f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot save -dht-state %s: %s", path, e)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True


async def _save_dht_state_periodically(path: str, table: RoutingTable, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        save_dht_state(path, table)


def conn_manager_options(opts: NodeOptions, *, monitor: bool) -> ConnManagerOptions | None:
    """The connection manager's water marks (``-conn-low``/``-conn-high``, else the defaults); None,
    no trimming, for the ping-monitor unless either flag is given: it monitors every connected peer,
    and a peer it trims drops out of its metrics."""
    return None if monitor and not opts.conn_manager_set else opts.conn_manager


def protect_bootstraps(host: Host, opts: NodeOptions) -> None:
    """Never trim the connections to the ``-bootstrap`` peers: they are how this node (re)joins,
    and in PhysarumSM's layout the bootstrap is the monitor that pings us."""
    for address in opts.bootstrap:
        peer = addrs_.tcp_endpoint(address).peer_id
        if peer is not None:
            host.conn_manager.protect(peer, "bootstrap")


def start_dht(
    host: Host, opts: NodeOptions, *, server: bool = True, registry: CollectorRegistry | None = None
) -> KadDHT:
    """A :class:`KadDHT` on ``host`` joining through ``opts.bootstrap``, from ``opts.dht_state`` if saved,
    exporting its metrics on ``registry`` when given."""
    table = load_dht_state(opts.dht_state, host.peer_id) if opts.dht_state else None
    return KadDHT.for_host(
        host,
        server=server,
        bootstrap=opts.bootstrap,
        table=table,
        registry=registry,
        query_timeout=opts.dht_query_timeout,
    )


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


async def start_node(nursery: trio.Nursery, opts: NodeOptions) -> RunningNode:
    """Run the node of ``opts`` in ``nursery`` (see :func:`run_node`) and return once it is up; when a
    signal ends it, ``nursery`` is cancelled, so whatever the program serves beside it stops too.
    Its ``dht`` is always set.

    Raises:
        UsageError: as :func:`run_node`.
    """

    async def node_then_stop(*, task_status: trio.TaskStatus[RunningNode]) -> None:
        await run_node(opts, task_status=task_status)
        nursery.cancel_scope.cancel()

    running: RunningNode = await nursery.start(node_then_stop)
    return running


async def run_node(
    opts: NodeOptions,
    *,
    monitor: MonitorOptions | None = None,
    out: TextIO | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a node until SIGINT/SIGTERM (or cancellation): listen, print our multiaddrs on ``out``
    (default stdout) one per line, run the DHT in server mode (which keeps the bootstrap peers
    connected and joins through them; with ``opts.dht_state`` its routing table is loaded at start
    and saved every minute and at exit), and with ``monitor`` also ping every connected peer and
    serve ``/metrics`` (including the routing table's size).

    Raises:
        UsageError: a listen address or the metrics address cannot be bound.
    """
    out = sys.stdout if out is None else out
    async with trio.open_nursery() as nursery:
        if handle_signals:
            await nursery.start(_stop_on_signals, nursery.cancel_scope)
        registry = node_registry() if monitor is not None else None
        host = Host(
            opts.key_pair, psk=opts.psk, listen=(), announce=opts.announce, limits=opts.limits, registry=registry,
            conn_manager=conn_manager_options(opts, monitor=monitor is not None and monitor.ping),
        )
        protect_bootstraps(host, opts)
        await nursery.start(host.run)
        dht = start_dht(host, opts, registry=registry)
        await _serve(nursery, host, dht, registry, opts, monitor, out, task_status)


async def _serve(
    nursery: trio.Nursery,
    host: Host,
    dht: KadDHT,
    registry: CollectorRegistry | None,
    opts: NodeOptions,
    monitor: MonitorOptions | None,
    out: TextIO,
    task_status: trio.TaskStatus[RunningNode],
) -> None:
    for address in opts.listen:
        try:
            await host.listen(address)
        except OSError as e:
            raise UsageError(f"cannot listen on {address}: {_os_reason(e)}") from None
        except addrs_.AddressError as e:
            raise UsageError(f"cannot listen on {address}: {e.reason}") from None

    # The DHT keeps the bootstrap peers connected (PhysarumSM's backoff) and joins through them.
    await nursery.start(dht.run)
    if opts.dht_state:
        nursery.start_soon(_save_dht_state_periodically, opts.dht_state, dht.table, DHT_STATE_SAVE_INTERVAL)
    ping_monitor: PingMonitor | None = None
    server: MetricsServer | None = None
    if monitor is not None and registry is not None:
        ping_monitor = None if not monitor.ping else PingMonitor(
            host,
            registry,
            hostname=opts.hostname,
            interval=monitor.interval,
            timeout=monitor.timeout,
            expiry=monitor.expiry,
            max_peer_series=monitor.max_peer_series,
            peer_histograms=monitor.peer_histograms,
        )
        server = MetricsServer(registry, host=monitor.prom_host, port=monitor.prom_port, token=monitor.token)
        # the live page at / and /topology.json (the ping-monitor's; a peer's metrics have none)
        topology = None if ping_monitor is None else TopologyView(ping_monitor, host)
        if topology is not None:
            server.pages.update(topology.pages())
        try:
            await nursery.start(server.run)
        except OSError as e:
            where = f"{monitor.prom_host or ''}:{monitor.prom_port}"
            raise UsageError(f"cannot serve metrics on {where}: {_os_reason(e)}") from None
        serve_discovery(
            host, server, role="monitor" if monitor.ping else "peer", discover=monitor.ping, registry=registry,
            options=monitor.discovery or DiscoveryOptions(linger=min(LINGER, monitor.expiry)),
        )
        if ping_monitor is not None:
            await nursery.start(ping_monitor.run)
        if topology is not None:
            await nursery.start(topology.run)

    for a in host.addrs:
        print(a, file=out)
    out.flush()
    log.info(
        "peer id %s, private network: %s, %d bootstrap peer(s)",
        host.peer_id,
        opts.psk_source,
        len(opts.bootstrap),
    )
    if opts.psk_in_argv:
        log.warning(
            "-psk on the command line is readable by every local user (ps): prefer -psk-file or $P2P_PSK"
        )
    if server is not None:
        log.info("metrics at %s", " ".join(server.urls))
    # A node holds ~250 tracked objects per peer that live as long as the connection; the default
    # thresholds made full collections run every few seconds for 200-400 ms with 1,000 peers
    # (bench/monitor.py), stalling pings and scrapes. Freeze start-up objects, collect less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    task_status.started(RunningNode(host, ping_monitor, server, dht))
    try:
        await trio.sleep_forever()
    finally:
        if opts.dht_state:
            save_dht_state(opts.dht_state, dht.table)


# -- process plumbing ------------------------------------------------------------------------------


#: Longest log line the binaries write (a traceback, at debug level or for a bug, may follow it).
MAX_LOG_LINE = 200


class _LineFormatter(logging.Formatter):
    """One line per record, cut at :data:`MAX_LOG_LINE` characters: logs stay greppable and bounded
    whatever a peer put in an error message."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        first, newline, rest = text.partition("\n")
        if record.exc_info is None and record.stack_info is None:
            rest = ""  # a multi-line message: keep its first line only
            newline = ""
        if len(first) > MAX_LOG_LINE:
            first = first[: MAX_LOG_LINE - 3] + "..."
        return first + newline + rest


def setup_logging(debug: str | bool = "", *, quiet: bool = False) -> None:
    """Log to stderr, one line per record (at most :data:`MAX_LOG_LINE` characters).

    physarum's loggers log at INFO (WARNING when ``quiet``, for one-shot commands), or DEBUG with
    ``debug`` ("physarum" or True); other libraries stay at WARNING unless ``debug == "all"``.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug == "all" else logging.WARNING)
    own = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.getLogger("physarum").setLevel(own)


def find_usage_error(exc: BaseException) -> UsageError | None:
    """The first :class:`UsageError` in ``exc`` or, for an exception group, among its leaves."""
    for leaf in exception_leaves(exc):
        if isinstance(leaf, UsageError):
            return leaf
    return None


def run_main(prog: str, main: Callable[[], Awaitable[int | None]]) -> int:
    """``trio.run(main)`` as a process: the exit status, with :class:`UsageError` printed as one line
    on stderr (status 2) and Ctrl-C before the signal handler is installed quietly giving 130."""
    return run_sync_main(prog, lambda: trio.run(main))


def run_sync_main(prog: str, main: Callable[[], int | None]) -> int:
    """``main()`` as a process: its exit status, a :class:`UsageError` (alone or inside an exception
    group) printed as one line on stderr with status 2, Ctrl-C giving 130."""
    try:
        try:
            return main() or 0
        except BaseExceptionGroup as group:
            leaves = list(exception_leaves(group))
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


def short_reason(e: BaseException) -> str:
    """Why a dial or request failed, in a few words fit for one line (no addresses, no reprs)."""
    if isinstance(e, DialError) and e.errors:
        # the first real cause; the "(deadline)" entry only says the time ran out
        causes = [v for k, v in e.errors.items() if k != "(deadline)"] or list(e.errors.values())
        return short_reason(causes[0])
    if isinstance(e, PskMismatchError):
        return "PSK mismatch: the peer is not in this private network (another key, or none)"
    if isinstance(e, PeerIdMismatchError):
        return f"another peer answered ({e.actual})"
    if isinstance(e, OSError) and not isinstance(e, TimeoutError):
        if e.errno is None and e.__cause__ is not None:
            # trio's "all attempts to connect to HOST:PORT failed" holds the real errors as its cause
            return short_reason(next(exception_leaves(e.__cause__)))
        return _os_reason(e)
    if isinstance(e, TimeoutError | trio.TooSlowError):
        return str(e) or "timed out"
    text = str(e).split("\n", 1)[0] or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


__all__ = [
    "DHT_STATE_SAVE_INTERVAL",
    "MAX_BACKOFF",
    "MAX_LOG_LINE",
    "MonitorOptions",
    "RunningNode",
    "backoff_delays",
    "conn_manager_options",
    "find_usage_error",
    "keep_bootstrap_connected",
    "keep_connected",
    "load_dht_state",
    "protect_bootstraps",
    "run_main",
    "run_node",
    "run_sync_main",
    "save_dht_state",
    "setup_logging",
    "short_reason",
    "start_dht",
]
