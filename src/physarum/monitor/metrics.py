"""The ping monitor's Prometheus metrics, and a small trio HTTP server for ``/metrics``.

Metrics live on a :class:`~prometheus_client.CollectorRegistry` handed in by the caller, never on
prometheus_client's global registry, so several monitors (or tests) can share a process.

PhysarumSM-compatible (existing dashboards keep working):

``ping_rtt{targetHost, host}``
    The latest RTT to the peer ``targetHost`` (its peer id) in **milliseconds**, measured by the node
    whose hostname is ``host``. Help text kept verbatim: "Historical ping RTTs over time (ms)".
``ping_ewma_rtt{targetHost, host}``
    An exponentially weighted moving average of those samples (factor 0.1, ms).

Named after the Prometheus conventions (base units, ``_total`` counters), beside them:

``physarum_ping_rtt_seconds{target}``
    Histogram of RTT samples, buckets from 50 us (a loopback or LAN ping) to 5 s (a congested edge link).
``physarum_ping_failures_total{target, reason}``
    Pings that failed; ``reason`` is one of :data:`FAILURE_REASONS`.
``physarum_peers_connected``
    Peers with at least one open connection (updated on every connect and disconnect).
``physarum_peer_reachable{target}``
    1 while the peer's last ping succeeded, 0 after a failure or a disconnection (until it expires).
``physarum_routing_table_peers``
    Peers in the DHT routing table, refreshed every monitor interval (only when a size function is given).
``physarum_build_info{version, python}``
    Always 1; the labels say which physarum and which Python run the node.

Staleness: the RTT gauges are removed (not zeroed: a zero would read as a perfect link) the moment a
peer's ping fails or its last connection closes, so ``ping_rtt`` only ever shows an RTT measured on a
connection that is still answering. ``physarum_peer_reachable`` stays, at 0, until the peer expires;
then every series of that peer goes (see :class:`physarum.monitor.ping_monitor.PingMonitor`).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Sequence

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from physarum import __version__

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

#: The PhysarumSM help text, kept verbatim for dashboards that show it.
PING_RTT_HELP = "Historical ping RTTs over time (ms)"


class MonitorMetrics:
    """Every metric the ping monitor exports, registered on ``registry``.

    ``hostname`` fills the PhysarumSM ``host`` label. ``physarum_routing_table_peers`` exists only with
    ``routing_table=True``. Gauges are set by the owner (the monitor, on the trio thread), never computed
    by callbacks at scrape time: the exposition is rendered in another thread, which must not read
    trio-owned structures (the host's connection table, the routing table).

    Raises:
        ValueError: a metric of the same name is already registered on ``registry``.
    """

    def __init__(self, registry: CollectorRegistry, *, hostname: str, routing_table: bool = False) -> None:
        self.registry = registry
        self.hostname = hostname
        self.ping_rtt = Gauge("ping_rtt", PING_RTT_HELP, ["targetHost", "host"], registry=registry)
        self.ping_ewma_rtt = Gauge(
            "ping_ewma_rtt",
            "Exponentially weighted moving average of ping RTTs, factor 0.1 (ms)",
            ["targetHost", "host"],
            registry=registry,
        )
        self.rtt_seconds = Histogram(
            "physarum_ping_rtt_seconds",
            "Round-trip time of /ipfs/ping/1.0.0 pings to connected peers.",
            ["target"],
            buckets=RTT_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "physarum_ping_failures",
            "Pings to connected peers that failed, by reason.",
            ["target", "reason"],
            registry=registry,
        )
        self.peers_connected = Gauge(
            "physarum_peers_connected", "Peers with at least one open connection.", registry=registry
        )
        self.reachable = Gauge(
            "physarum_peer_reachable",
            "1 if the last ping to the peer succeeded, 0 if it failed or the peer disconnected.",
            ["target"],
            registry=registry,
        )
        self.routing_table_peers: Gauge | None = None
        if routing_table:
            self.routing_table_peers = Gauge(
                "physarum_routing_table_peers", "Peers in the DHT routing table.", registry=registry
            )
        self.build_info = Info(
            "physarum_build", "Version of physarum and of Python running this node.", registry=registry
        )
        self.build_info.info({"version": __version__, "python": platform.python_version()})

    def observe(self, target: str, rtt: float, ewma_ms: float) -> None:
        """Record a successful ping: ``rtt`` in seconds, the updated EWMA in milliseconds."""
        self.ping_rtt.labels(target, self.hostname).set(rtt * 1000.0)
        self.ping_ewma_rtt.labels(target, self.hostname).set(ewma_ms)
        self.rtt_seconds.labels(target).observe(rtt)
        self.reachable.labels(target).set(1)

    def failed(self, target: str, reason: str) -> None:
        """Record a failed ping: count it, drop the RTT gauges, mark the peer unreachable."""
        self.failures.labels(target, reason).inc()
        self.unreachable(target)

    def unreachable(self, target: str) -> None:
        """Drop the RTT gauges of ``target`` and set its reachability to 0."""
        self.ping_rtt.remove(target, self.hostname)
        self.ping_ewma_rtt.remove(target, self.hostname)
        self.reachable.labels(target).set(0)

    def forget(self, target: str) -> None:
        """Remove every series of ``target`` (it expired)."""
        self.ping_rtt.remove(target, self.hostname)
        self.ping_ewma_rtt.remove(target, self.hostname)
        self.rtt_seconds.remove(target)
        self.reachable.remove(target)
        for reason in FAILURE_REASONS:
            self.failures.remove(target, reason)

    def set_peers_connected(self, n: int) -> None:
        self.peers_connected.set(n)

    def set_routing_table_size(self, n: int) -> None:
        if self.routing_table_peers is not None:
            self.routing_table_peers.set(n)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (0.0.4)."""
        return generate_latest(self.registry)


# -- the /metrics HTTP server ---------------------------------------------------------------------
#
# Why our own server rather than prometheus_client.start_http_server: that one runs a thread with a
# ThreadingHTTPServer (one more thread per scrape). The node is a trio program; a thread would share
# the GIL with the event loop anyway, and would make shutdown (SIGTERM within 2 s) and tests depend on
# daemon threads. This server is ~100 lines, speaks just enough HTTP/1.1 (GET/HEAD, Connection: close),
# bounds what a client may send and how long it may take, and caps concurrent clients, so a slow or
# garbage client costs one task and a few KiB, never the node.

#: The classic text format, which generate_latest writes (every Prometheus 2.x and 3.x reads it;
#: prometheus_client >= 0.22 labels its output "version=1.0.0", which older scrapers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Largest request head (request line + headers) accepted; Prometheus sends about 300 bytes.
MAX_REQUEST_BYTES = 8192


def _response(status: str, body: bytes, content_type: str, *, head: bool = False, extra: str = "") -> bytes:
    headers = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return headers.encode("ascii") + (b"" if head else body)


def _text_response(status: str, text: str, *, head: bool = False, extra: str = "") -> bytes:
    return _response(status, text.encode() + b"\n", "text/plain; charset=utf-8", head=head, extra=extra)


def route(head: bytes) -> bool | bytes:
    """Route one request head (everything before the blank line); never raises on bad input.

    Returns True for ``GET /metrics``, False for ``HEAD /metrics``, or else the complete error response
    (400 malformed, 405 other methods, 404 other paths).
    """
    line, _, _ = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _text_response("400 Bad Request", "bad request line")
    method, target, _ = parts
    if method not in (b"GET", b"HEAD"):
        return _text_response("405 Method Not Allowed", "only GET and HEAD", extra="Allow: GET, HEAD\r\n")
    is_head = method == b"HEAD"
    if target.startswith((b"http://", b"https://")):  # absolute form: keep only the path
        target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
    path = target.split(b"?", 1)[0]
    if path != b"/metrics":
        return _text_response("404 Not Found", "not found: metrics are at /metrics", head=is_head)
    return not is_head


def metrics_response(body: bytes, *, head: bool = False) -> bytes:
    """The 200 response carrying an exposition."""
    return _response("200 OK", body, CONTENT_TYPE, head=head)


def handle_request_head(head: bytes, render: Callable[[], bytes]) -> bytes:
    """The full HTTP response to one request head, calling ``render`` for ``/metrics``. Never raises on bad input."""
    routed = route(head)
    if isinstance(routed, bytes):
        return routed
    return metrics_response(render(), head=not routed)


class MetricsServer:
    """Serve ``GET /metrics`` (the text exposition of ``registry``) over HTTP on ``host``:``port``.

    ``host`` None or ``""`` binds every interface; port 0 picks a free port. Run it with
    ``await nursery.start(server.run)``: that returns once listening, with :attr:`addresses` holding
    the bound ``(host, port)`` pairs. Limits: a request head over ``max_request_bytes`` gets 431; a
    client that has not finished within ``request_timeout`` seconds is dropped; over ``max_clients``
    concurrent clients, new ones are closed at once. Anything but ``/metrics`` gets 404.

    The exposition is rendered by ``generate_latest`` in a worker thread, one at a time. It costs about
    14 us per sample line in prometheus_client (some 330 ms for 1,000 peers, whose RTT histograms are
    most of the lines): on the event loop that would stall every ping in flight and inflate its RTT; in a
    thread the loop keeps running, only sharing the GIL in 5 ms slices. prometheus_client's metrics are
    thread-safe (each one locks its children), so collecting while the loop records samples is sound.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str | None = "127.0.0.1",
        port: int = 9100,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        request_timeout: float = 10.0,
        max_clients: int = 64,
    ) -> None:
        self.registry = registry
        self.host = host or None
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.request_timeout = request_timeout
        self.max_clients = max_clients
        self.addresses: list[tuple[str, int]] = []
        self._clients = 0
        self._render_limiter = trio.CapacityLimiter(1)

    @property
    def urls(self) -> list[str]:
        """``http://HOST:PORT/metrics`` for every bound address (IPv6 in brackets)."""
        return [f"http://{_url_host(h)}:{p}/metrics" for h, p in self.addresses]

    async def run(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled.

        Raises:
            OSError: the address cannot be bound (port in use, no such interface).
        """
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        try:
            self.addresses = [_sockname(lst.socket.getsockname()) for lst in listeners]
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(list(self.addresses))
                await trio.sleep_forever()
        finally:
            for lst in listeners:
                await trio.aclose_forcefully(lst)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        if self._clients >= self.max_clients:
            await trio.aclose_forcefully(stream)
            return
        self._clients += 1
        try:
            with trio.move_on_after(self.request_timeout):
                head = await self._read_head(stream)
                if head is None:
                    response = _text_response("431 Request Header Fields Too Large", "request too large")
                elif not head:
                    return  # the client went away without a request
                else:
                    routed = route(head)
                    if isinstance(routed, bytes):
                        response = routed
                    else:
                        body = await trio.to_thread.run_sync(self.render, limiter=self._render_limiter)
                        response = metrics_response(body, head=not routed)
                await stream.send_all(response)
                await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("metrics client: %s", e)
        except Exception:
            log.exception("metrics request failed")
        finally:
            self._clients -= 1
            await trio.aclose_forcefully(stream)

    async def _read_head(self, stream: trio.abc.ReceiveStream) -> bytes | None:
        """The request head without its final blank line; b"" if the client closed first; None if too big."""
        data = bytearray()
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                return bytes(data[:end])
            if len(data) > self.max_request_bytes:
                return None
            chunk = await stream.receive_some(4096)
            if not chunk:
                return b""
            data += chunk


def _sockname(sockname: Sequence[object]) -> tuple[str, int]:
    return str(sockname[0]), int(str(sockname[1]))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = [
    "CONTENT_TYPE",
    "FAILURE_REASONS",
    "MAX_REQUEST_BYTES",
    "PING_RTT_HELP",
    "RTT_BUCKETS",
    "MetricsServer",
    "MonitorMetrics",
    "handle_request_head",
    "metrics_response",
    "route",
]
