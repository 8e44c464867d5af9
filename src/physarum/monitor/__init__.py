"""The ping monitor: RTTs to every connected peer, exported for Prometheus.

Typical use, inside a trio program that runs a :class:`~physarum.overlay.host.Host`::

    registry = node_registry()  # process metrics included
    monitor = PingMonitor(host, registry, hostname=socket.gethostname())
    server = MetricsServer(registry, host="127.0.0.1", port=9100)
    await nursery.start(monitor.run)
    await nursery.start(server.run)

Prometheus discovery (:mod:`physarum.monitor.discovery`): :func:`announce_metrics` makes a node answer
``/physarum/metrics/1.0.0`` with its metrics endpoint; :class:`MetricsDiscovery` asks the peers and lists
them for ``http_sd_configs`` (its ``sd_page`` goes on ``server.pages[SD_PATH]``).
"""

from physarum.monitor.discovery import (
    SD_PATH,
    DiscoveryOptions,
    MetricsAnnouncer,
    MetricsDiscovery,
    MetricsEndpoint,
    announce_metrics,
)
from physarum.monitor.metrics import (
    FAILURE_REASONS,
    RTT_BUCKETS,
    MetricsServer,
    MonitorMetrics,
    node_registry,
)
from physarum.monitor.ping_monitor import (
    EWMA_ALPHA,
    ListenInfo,
    MonitoredHost,
    PeerStats,
    PingConnection,
    PingMonitor,
)
from physarum.monitor.reclaim import MemoryReclaimer, malloc_trim

__all__ = [
    "EWMA_ALPHA",
    "FAILURE_REASONS",
    "RTT_BUCKETS",
    "SD_PATH",
    "DiscoveryOptions",
    "ListenInfo",
    "MemoryReclaimer",
    "MetricsAnnouncer",
    "MetricsDiscovery",
    "MetricsEndpoint",
    "MetricsServer",
    "MonitorMetrics",
    "MonitoredHost",
    "PeerStats",
    "PingConnection",
    "PingMonitor",
    "announce_metrics",
    "malloc_trim",
    "node_registry",
]
