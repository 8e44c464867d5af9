"""The node's Prometheus metrics: the ping monitor's, the process's, and the ``/metrics`` server.

Metrics live on a :class:`~prometheus_client.CollectorRegistry` handed in by the caller, never on
prometheus_client's global registry, so several nodes (or tests) can share a process. A node makes its
registry with :func:`node_registry`, which already carries the process metrics; each subsystem then
registers its own on it (the DHT exports its routing table size there itself).

PhysarumSM-compatible (existing dashboards keep working):

``ping_rtt{targetHost, host}``
    The latest RTT to the peer ``targetHost`` (its peer id) in **milliseconds**, measured by the node
    whose hostname is ``host``. Help text kept verbatim: "Historical ping RTTs over time (ms)".
``ping_ewma_rtt{targetHost, host}``
    An exponentially weighted moving average of those samples (factor 0.1, ms).

``targetHost`` lives only on those two legacy gauges. Named after the Prometheus conventions (base
units, ``_total`` counters, snake_case labels, ``peer`` for the peer id), beside them:

``physarum_pings_rtt_seconds``
    Histogram of every successful ping's RTT, all peers together, buckets from 50 us (a loopback or
    LAN ping) to 5 s (a congested edge link).
``physarum_ping_rtt_seconds{peer}``
    The same per peer, only with ``peer_histograms`` (``ping-monitor -peer-histograms``): 19 lines a
    peer, six sevenths of a scrape at 1,000 peers (2.3 MB and 134 ms to render with them, 0.3 MB
    and 16 ms without).
``physarum_ping_failures_total{peer, reason}``
    Pings that failed; ``reason`` is one of :data:`FAILURE_REASONS`.
``physarum_peers_connected``
    Peers with at least one open connection (updated on every connect and disconnect).
``physarum_peers_reachable``
    Connected peers whose last ping succeeded, with or without per-peer series.
``physarum_peer_reachable{peer}``
    1 while the peer's last ping succeeded, 0 after a failure or a disconnection (until it expires).
``physarum_pings_total{result}``
    Every ping, of every peer (per-peer series or not): ``result`` is ``ok`` or a failure reason.
``physarum_metrics_peers``
    Peers that have per-peer series now (at most the monitor's ``max_peer_series``).
``physarum_metrics_peers_dropped_total{reason}``
    Peers left without per-peer series: ``limit``, a peer that connected when ``max_peer_series`` peers
    already had series (it is still pinged and counted in the aggregates above, and gets series once
    there is room); ``evicted``, a departed peer whose remaining series were removed before its expiry
    to make room for a connected one.
``physarum_build_info{version, python}``
    Always 1; the labels say which physarum and which Python run the node.

From prometheus_client's own collectors, on every :func:`node_registry`:

``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``process_virtual_memory_bytes``,
``process_open_fds``, ``process_max_fds``, ``process_start_time_seconds``
    The node process (Linux: read from /proc at scrape time).
``python_info{implementation, major, minor, patchlevel, version}``
    The interpreter.
``python_gc_objects_collected_total{generation}``, ``python_gc_objects_uncollectable_total{generation}``,
``python_gc_collections_total{generation}``
    The garbage collector (CPython).

No ``_created`` series are served: the server renders through
:class:`~physarum.monitor.http.WithoutCreated`, leaving prometheus_client's global setting alone.

Staleness and cardinality: the RTT gauges are removed (not zeroed: a zero would read as a perfect link)
the moment a peer's ping fails or its last connection closes, so ``ping_rtt`` only ever shows an RTT
measured on a connection that is still answering. What else stays after a peer leaves depends on whether
it was *established* (see :class:`physarum.monitor.ping_monitor.PingMonitor`): a peer seen only briefly
loses every series at once; an established one keeps its histogram and failure counters for a short
grace, so the next scrape still sees their final values, and ``physarum_peer_reachable 0`` until it
expires, for alerts on lost nodes. At most ``max_peer_series`` peers have per-peer series at all.
"""

from __future__ import annotations

import logging
import platform
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from physarum import __version__
from physarum.monitor.http import (
    CONTENT_TYPE,
    HEAD_TIMEOUT,
    MAX_CLIENTS,
    MAX_REQUEST_BYTES,
    REQUEST_TIMEOUT,
    MetricsServer,
    WithoutCreated,
    render_exposition,
)

log = logging.getLogger(__name__)

#: RTT histogram buckets in seconds: 50 us .. 5 s.
RTT_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

#: Why a ping failed: no echo within the deadline; the stream or connection broke or closed;
#: the peer answered with something that is not the echo; the peer does not speak the ping protocol;
#: the connection has no room for another stream.
FAILURE_REASONS: tuple[str, ...] = ("timeout", "closed", "protocol", "unsupported", "limit")

#: Why a peer has no per-peer series (``physarum_metrics_peers_dropped_total{reason}``).
DROP_REASONS: tuple[str, ...] = ("limit", "evicted")

#: The PhysarumSM help text, kept verbatim for dashboards that show it.
PING_RTT_HELP = "Historical ping RTTs over time (ms)"


#: Help texts of the per-peer series.
EWMA_HELP = "Exponentially weighted moving average of ping RTTs, factor 0.1 (ms)"
RTT_SECONDS_HELP = "Round-trip time of /ipfs/ping/1.0.0 pings to connected peers."
FAILURES_HELP = "Pings to connected peers that failed, by reason."
REACHABLE_HELP = "1 if the last ping to the peer succeeded, 0 if it failed or the peer disconnected."

# The bucket bounds as prometheus_client writes them ("5e-05", "5.0"), so the text is the same.
_go_float: Callable[[float], str] = floatToGoString
_BUCKET_LABELS: tuple[str, ...] = (*(_go_float(b) for b in RTT_BUCKETS), "+Inf")


class _Series:
    """What one peer's series say. ``buckets`` (per-bucket counts, the last one +Inf) is None until the
    first RTT, ``failures`` (by reason) until the first failure; ``reachable`` None: no such series."""

    __slots__ = ("buckets", "ewma_ms", "failures", "reachable", "rtt_ms", "sum")

    def __init__(self) -> None:
        self.rtt_ms: float | None = None
        self.ewma_ms: float | None = None
        self.reachable: int | None = None
        self.buckets: list[int] | None = None
        self.sum = 0.0
        self.failures: dict[str, int] | None = None


class PeerSeries(Collector):
    """Every per-peer series (``ping_rtt``, ``ping_ewma_rtt``, ``physarum_ping_rtt_seconds``,
    ``physarum_ping_failures_total``, ``physarum_peer_reachable``), kept as a few numbers per peer and
    turned into metric families at scrape time.

    prometheus_client's labelled metrics keep a child object per series and a value object with its
    own lock per number (19 for a histogram of 16 buckets): about 6.4 KB a peer, a seventh of what a
    connected peer costs the monitor. Here a peer costs ~0.4 KB. The trio thread updates under a lock;
    a scrape (rendered in another thread) copies the numbers under it and builds the families after.
    """

    def __init__(self, hostname: str, *, histograms: bool = False) -> None:
        self.hostname = hostname
        self.histograms = histograms
        """Whether each peer has its RTT histogram (``physarum_ping_rtt_seconds{peer}``)."""
        self._lock = threading.Lock()
        self._peers: dict[str, _Series] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def _series(self, peer: str) -> _Series:
        series = self._peers.get(peer)
        if series is None:
            series = self._peers[peer] = _Series()
        return series

    def observe(self, peer: str, rtt: float, ewma_ms: float) -> None:
        with self._lock:
            series = self._series(peer)
            series.rtt_ms = rtt * 1000.0
            series.ewma_ms = ewma_ms
            series.reachable = 1
            if self.histograms:
                if series.buckets is None:
                    series.buckets = [0] * len(_BUCKET_LABELS)
                series.buckets[bisect_left(RTT_BUCKETS, rtt)] += 1
                series.sum += rtt

    def failed(self, peer: str, reason: str) -> None:
        with self._lock:
            series = self._series(peer)
            if series.failures is None:
                series.failures = {}
            series.failures[reason] = series.failures.get(reason, 0) + 1
            series.rtt_ms = series.ewma_ms = None
            series.reachable = 0

    def unreachable(self, peer: str) -> None:
        with self._lock:
            series = self._series(peer)
            series.rtt_ms = series.ewma_ms = None
            series.reachable = 0

    def forget(self, peer: str) -> None:
        with self._lock:
            self._peers.pop(peer, None)

    def forget_history(self, peer: str) -> None:
        with self._lock:
            series = self._peers.get(peer)
            if series is not None:
                series.buckets = None
                series.sum = 0.0
                series.failures = None

    def _families(
        self,
    ) -> tuple[
        GaugeMetricFamily, GaugeMetricFamily, HistogramMetricFamily, CounterMetricFamily, GaugeMetricFamily
    ]:
        return (
            GaugeMetricFamily("ping_rtt", PING_RTT_HELP, labels=["targetHost", "host"]),
            GaugeMetricFamily("ping_ewma_rtt", EWMA_HELP, labels=["targetHost", "host"]),
            HistogramMetricFamily("physarum_ping_rtt_seconds", RTT_SECONDS_HELP, labels=["peer"]),
            CounterMetricFamily("physarum_ping_failures", FAILURES_HELP, labels=["peer", "reason"]),
            GaugeMetricFamily("physarum_peer_reachable", REACHABLE_HELP, labels=["peer"]),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            rows = [
                (
                    peer,
                    s.rtt_ms,
                    s.ewma_ms,
                    s.reachable,
                    None if s.buckets is None else list(s.buckets),
                    s.sum,
                    None if s.failures is None else list(s.failures.items()),
                )
                for peer, s in self._peers.items()
            ]
        rtt, ewma, histogram, failures, reachable = self._families()
        host = self.hostname
        for peer, rtt_ms, ewma_ms, up, buckets, total, failed in rows:
            if rtt_ms is not None:
                rtt.add_metric([peer, host], rtt_ms)
            if ewma_ms is not None:
                ewma.add_metric([peer, host], ewma_ms)
            if buckets is not None:
                cumulative, running = [], 0
                for label, n in zip(_BUCKET_LABELS, buckets, strict=True):
                    running += n
                    cumulative.append((label, float(running)))
                histogram.add_metric([peer], cumulative, total)
            for reason, n in failed or ():
                failures.add_metric([peer, reason], n)
            if up is not None:
                reachable.add_metric([peer], up)
        return (rtt, ewma, histogram, failures, reachable)


class MonitorMetrics:
    """Every metric the ping monitor exports, registered on ``registry``.

    ``hostname`` fills the PhysarumSM ``host`` label; ``peer`` (and PhysarumSM's ``targetHost``) label
    values are peer ids. Gauges are set by the owner (the monitor, on the trio thread), never computed by
    callbacks at scrape time: the exposition is rendered in another thread, which must not read
    trio-owned structures (the host's connection table). The per-peer series are a
    :class:`PeerSeries`, which keeps its own numbers for that thread under a lock.

    Raises:
        ValueError: a metric of the same name is already registered on ``registry``.
    """

    def __init__(self, registry: CollectorRegistry, *, hostname: str, peer_histograms: bool = False) -> None:
        self.registry = registry
        self.hostname = hostname
        self.peer_series = PeerSeries(hostname, histograms=peer_histograms)
        registry.register(self.peer_series)
        self.peers_connected = Gauge(
            "physarum_peers_connected", "Peers with at least one open connection.", registry=registry
        )
        self.peers_reachable = Gauge(
            "physarum_peers_reachable",
            "Connected peers whose last ping succeeded (with or without per-peer series).",
            registry=registry,
        )
        self.pings = Counter(
            "physarum_pings",
            "Pings to connected peers, by result: ok or the failure reason (every peer, with or without "
            "per-peer series).",
            ["result"],
            registry=registry,
        )
        for result in ("ok", *FAILURE_REASONS):
            self.pings.labels(result)
        self.rtts = Histogram(
            "physarum_pings_rtt_seconds",
            "Round-trip time of every successful ping, all peers together (with or without per-peer series).",
            buckets=RTT_BUCKETS,
            registry=registry,
        )
        self.series_peers = Gauge(
            "physarum_metrics_peers", "Peers that have per-peer series.", registry=registry
        )
        self.peers_dropped = Counter(
            "physarum_metrics_peers_dropped",
            "Peers left without per-peer series: limit (max peer series reached when the peer connected), "
            "evicted (a departed peer's series removed before expiry to make room).",
            ["reason"],
            registry=registry,
        )
        for reason in DROP_REASONS:
            self.peers_dropped.labels(reason)
        self.build_info = Info(
            "physarum_build", "Version of physarum and of Python running this node.", registry=registry
        )
        self.build_info.info({"version": __version__, "python": platform.python_version()})

    def observe(self, peer: str, rtt: float, ewma_ms: float) -> None:
        """Record a successful ping in the per-peer series: ``rtt`` in seconds, the updated EWMA in
        milliseconds (:meth:`ping_result` counts it in the aggregate)."""
        self.peer_series.observe(peer, rtt, ewma_ms)

    def failed(self, peer: str, reason: str) -> None:
        """Record a failed ping in the per-peer series: count it, drop the RTT gauges, mark the peer
        unreachable."""
        self.peer_series.failed(peer, reason)

    def unreachable(self, peer: str) -> None:
        """Drop the RTT gauges of ``peer`` and set its reachability to 0."""
        self.peer_series.unreachable(peer)

    def forget(self, peer: str) -> None:
        """Remove every series of ``peer`` (it expired, or was seen only briefly)."""
        self.peer_series.forget(peer)

    def forget_history(self, peer: str) -> None:
        """Remove the RTT histogram and failure counters of ``peer`` (a departed peer after its grace);
        its reachability stays."""
        self.peer_series.forget_history(peer)

    def ping_result(self, result: str, rtt: float | None = None) -> None:
        """Count one ping of any peer: ``result`` is ``ok`` (with its ``rtt`` in seconds, for the
        aggregate histogram) or one of :data:`FAILURE_REASONS`."""
        self.pings.labels(result).inc()
        if rtt is not None:
            self.rtts.observe(rtt)

    def set_peers_connected(self, n: int) -> None:
        self.peers_connected.set(n)

    def exposition(self) -> bytes:
        """The registry in the classic text format (0.0.4), without ``_created`` samples."""
        return generate_latest(WithoutCreated(self.registry))


def node_registry() -> CollectorRegistry:
    """A fresh registry for a node, carrying prometheus_client's process, platform and GC collectors
    (``process_*``, ``python_info``, ``python_gc_*``); the node's subsystems add their metrics to it."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


__all__ = [
    "CONTENT_TYPE",
    "DROP_REASONS",
    "FAILURE_REASONS",
    "HEAD_TIMEOUT",
    "MAX_CLIENTS",
    "MAX_REQUEST_BYTES",
    "PING_RTT_HELP",
    "REQUEST_TIMEOUT",
    "RTT_BUCKETS",
    "MetricsServer",
    "MonitorMetrics",
    "PeerSeries",
    "WithoutCreated",
    "node_registry",
    "render_exposition",
]
