"""Prometheus discovery: nodes tell the monitor where their metrics are, the monitor lists them for
Prometheus' ``http_sd_configs``.

The protocol, ``/physarum/metrics/1.0.0`` (:data:`PROTOCOL_ID`), is served only by nodes that serve
metrics (:class:`MetricsAnnouncer`, see :func:`announce_metrics`), so identify tells the monitor which
peers have any. One request per stream, framed as physarum's own protocols frame their messages
(:func:`physarum.overlay.streamio.json_frame`: a uvarint length, then a JSON object)::

    -> {"get": "endpoints"}
    <- {"endpoints": [{"role": "peer", "scheme": "http", "port": 9102, "path": "/metrics",
                       "bind": ["0.0.0.0"]}]}

``bind`` lists the addresses the node's metrics server is bound to. The monitor
(:class:`MetricsDiscovery`) asks once per connection whose identify lists the protocol (a later
identify push that adds it counts too), within ``timeout`` seconds, and reads at most
``max_answer_bytes``.

**Where a target is scraped (the host rule).** A peer says which port, path and scheme its metrics
use, never which host Prometheus should contact: the host is always the IP address the monitor sees
the peer's connection come from (for a connection the monitor dialed, the address it dialed). An
endpoint is listed only if the node's metrics server is bound where that address reaches it: one of
its ``bind`` addresses is the wildcard of that address family (``0.0.0.0``, ``::``) or that very
address. An endpoint bound elsewhere (``127.0.0.1`` on a peer that connected from another machine, an
address of another interface) is left out, as Prometheus could not reach it through the monitor's view
anyway. So a peer can make Prometheus scrape only ports of the machine it connects from, never a third
party. A peer behind NAT is listed at its NAT's address, where its metrics port is usually closed: give
such peers a static scrape job instead.

**What the monitor lists** (:meth:`MetricsDiscovery.sd_page`, served at ``/sd``, see :data:`SD_PATH`):
its own metrics endpoint (``role="monitor"``), then one target group per endpoint of every peer that
answered, labelled ``peer_id``, ``role``, ``__metrics_path__`` and ``__scheme__``. The monitor's own
address is its metrics server's bound address or, bound to a wildcard, the host of its first
advertised libp2p address of that family (where peers reach it; ``-announce`` sets it), else the
loopback address. A peer's targets are listed while it is connected, and for ``linger`` seconds after
its last connection closed (so Prometheus sees the scrape fail, ``up == 0``, before the target goes);
a fresh answer replaces the old one. At most ``max_peers`` peers are listed: a newcomer takes the slot
of the peer that departed longest ago, and when every listed peer is connected it is left out (counted
as ``limit``) until a slot frees up and it reconnects. Connected peers are never pushed out.

Metrics (on the registry given): ``physarum_discovery_targets`` (targets listed, the monitor's own
included) and ``physarum_discovery_queries_total{result}`` (``ok``, ``failed``: no valid answer in
time; ``limit``: no slot).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

from physarum.errors import PEER_FAILURES, ConfigError, DecodeError, NotRunningError
from physarum.monitor.http import Reply
from physarum.monitor.ping_monitor import CallbackList
from physarum.overlay import addr as addrs_
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.streamio import BufferedStream, json_frame, read_json

if TYPE_CHECKING:
    from physarum.monitor.http import MetricsServer
    from physarum.overlay.host import Host

log = logging.getLogger(__name__)

PROTOCOL_ID = "/physarum/metrics/1.0.0"

#: Where the monitor serves the target list (beside ``/metrics``), for ``http_sd_configs: url``.
SD_PATH = "/sd"

#: What the monitor sends.
REQUEST = {"get": "endpoints"}

#: Seconds the monitor gives a peer to open the stream and answer.
QUERY_TIMEOUT = 5.0

#: Seconds a node gives the monitor to send its request.
SERVE_TIMEOUT = 5.0

#: Largest request a node reads (the monitor's is 19 bytes).
MAX_REQUEST_BYTES = 256

#: Largest answer read (an answer with 8 endpoints takes under 1 KiB).
MAX_ANSWER_BYTES = 4096

#: Endpoints kept per peer; more in an answer are ignored.
MAX_ENDPOINTS = 8

#: Bind addresses kept per endpoint.
MAX_BINDS = 8

#: Peers whose targets are listed at most (the ping monitor's default per-peer series limit).
MAX_PEERS = 2000

#: Seconds a departed peer's targets stay listed.
LINGER = 60.0

#: Peers asked at once.
QUERY_CONCURRENCY = 16

ROLES = ("monitor", "peer", "allocator")
"""The roles physarum's binaries announce; others are accepted if they match :data:`_ROLE`."""

SCHEMES = ("http", "https")

QUERY_RESULTS = ("ok", "failed", "limit")

_ROLE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,255}")


class AnswerError(DecodeError):
    """A peer's answer is not a valid endpoint list (``reason`` says why)."""


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where a node serves metrics: ``scheme://(a bound address):port/path``."""

    role: str
    port: int
    path: str = "/metrics"
    scheme: str = "http"
    bind: tuple[str, ...] = ("0.0.0.0",)
    """The addresses the metrics server is bound to (a wildcard: every interface of that family)."""

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "scheme": self.scheme, "port": self.port, "path": self.path, "bind": list(self.bind)}

    @classmethod
    def from_json(cls, obj: object) -> MetricsEndpoint:
        """One endpoint of an answer.

        Raises:
            AnswerError: not an object with a valid role, scheme, port, path and bind list.
        """
        if not isinstance(obj, dict):
            raise AnswerError("an endpoint is not a JSON object")
        role, scheme, port, path, bind = (obj.get(k) for k in ("role", "scheme", "port", "path", "bind"))
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise AnswerError("bad role")
        if scheme not in SCHEMES:
            raise AnswerError("bad scheme")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise AnswerError("bad port")
        if not isinstance(path, str) or not _PATH.fullmatch(path):
            raise AnswerError("bad path")
        if not isinstance(bind, list) or not bind or len(bind) > MAX_BINDS:
            raise AnswerError("bad bind list")
        hosts = []
        for b in bind:
            try:
                hosts.append(str(ipaddress.ip_address(b)))
            except ValueError:
                raise AnswerError("a bind address is not an IP address") from None
        assert isinstance(scheme, str)
        return cls(role, port, path, scheme, tuple(hosts))


def encode_answer(endpoints: Sequence[MetricsEndpoint]) -> dict[str, Any]:
    return {"endpoints": [e.to_json() for e in endpoints]}


def decode_answer(message: dict[str, Any], max_endpoints: int = MAX_ENDPOINTS) -> list[MetricsEndpoint]:
    """The endpoints of an answer (the first ``max_endpoints``).

    Raises:
        AnswerError: not an answer, or an endpoint is invalid.
    """
    endpoints = message.get("endpoints")
    if not isinstance(endpoints, list):
        raise AnswerError("no endpoint list")
    return [MetricsEndpoint.from_json(e) for e in endpoints[:max_endpoints]]


def scrape_host(endpoint: MetricsEndpoint, seen_at: str) -> str | None:
    """The host Prometheus should scrape ``endpoint`` at, for a peer whose connection the monitor sees
    at ``seen_at`` (an IP address, or the DNS name the monitor dialed): ``seen_at`` when a bind address
    of the endpoint reaches it (the wildcard of its family, or itself), else None (see the module notes).
    """
    try:
        seen = ipaddress.ip_address(seen_at)
    except ValueError:  # a DNS name we dialed: only a wildcard bind is known to answer there
        return seen_at if any(ipaddress.ip_address(b).is_unspecified for b in endpoint.bind) else None
    if isinstance(seen, ipaddress.IPv6Address) and seen.ipv4_mapped is not None:
        seen = seen.ipv4_mapped
    for b in endpoint.bind:
        bound = ipaddress.ip_address(b)
        if bound.version == seen.version and (bound.is_unspecified or bound == seen):
            return str(seen)
    return None


def target_address(host: str, port: int) -> str:
    """``host:port`` as Prometheus takes a target (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- what discovery needs of a host --


class Identified(Protocol):
    """The part of an identify message discovery reads."""

    @property
    def protocols(self) -> Sequence[str]: ...


class DiscoveryConnection(Protocol):
    """What discovery needs of a connection (:class:`physarum.overlay.host.Connection` is one)."""

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def remote_addr(self) -> Multiaddr: ...

    @property
    def is_closed(self) -> bool: ...

    @property
    def identify_info(self) -> Identified | None: ...

    async def open_stream(self, protocols: Sequence[str]) -> trio.abc.HalfCloseableStream: ...


ConnectionCallback = Callable[[DiscoveryConnection], None]


class DiscoveryHost(Protocol):
    """What the monitor's discovery needs of a host (:class:`physarum.overlay.host.Host` is one)."""

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def on_identify(self) -> CallbackList[ConnectionCallback]: ...

    @property
    def on_disconnect(self) -> CallbackList[ConnectionCallback]: ...

    def connection(self, peer_id: PeerId) -> DiscoveryConnection | None: ...

    def connected_peers(self) -> list[PeerId]: ...

    def advertised_addrs(self) -> list[Multiaddr]: ...


class HandlerHost(Protocol):
    """What a node needs of its host to answer the protocol."""

    def set_handler(self, protocol: str, handler: Callable[[Any], Any]) -> None: ...


class BoundServer(Protocol):
    """A metrics server (:class:`physarum.monitor.http.MetricsServer`): its bound ``(host, port)`` pairs."""

    @property
    def addresses(self) -> list[tuple[str, int]]: ...


def server_endpoints(server: BoundServer, role: str, *, path: str = "/metrics") -> list[MetricsEndpoint]:
    """``server``'s endpoints (one per port, with every address bound on it); none before it runs."""
    by_port: dict[int, list[str]] = {}
    for host, port in server.addresses:
        by_port.setdefault(port, []).append(host)
    return [MetricsEndpoint(role, port, path, "http", tuple(hosts)) for port, hosts in by_port.items()]


# -- the node's side --


class MetricsAnnouncer:
    """Answer :data:`PROTOCOL_ID` with ``endpoints()`` (read at each request), on every host it is
    attached to."""

    def __init__(self, endpoints: Callable[[], Sequence[MetricsEndpoint]], *, timeout: float = SERVE_TIMEOUT) -> None:
        self.endpoints = endpoints
        self.timeout = timeout

    def attach(self, host: HandlerHost) -> None:
        host.set_handler(PROTOCOL_ID, self.handle)

    async def handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        """Answer one request on ``stream`` (read within ``timeout``): our endpoints, or
        ``{"error": ...}`` for another request. Never raises for what the peer did."""
        try:
            with trio.fail_after(self.timeout):
                request = await read_json(BufferedStream(stream), MAX_REQUEST_BYTES)
            if request is None:
                return
            answer = encode_answer(self.endpoints()) if request == REQUEST else {"error": "unknown request"}
            await stream.send_all(json_frame(answer))
            await stream.send_eof()
        except PEER_FAILURES as e:
            log.debug("metrics endpoints request: %s", e)


_announcers: weakref.WeakKeyDictionary[object, list[Callable[[], Sequence[MetricsEndpoint]]]] = (
    weakref.WeakKeyDictionary()
)


def announce_metrics(host: HandlerHost, server: BoundServer, role: str) -> None:
    """Make ``host`` answer :data:`PROTOCOL_ID` with ``server``'s endpoints as ``role`` (``monitor``,
    ``peer``, ``allocator``); a second server announced on the same host is listed beside the first.
    Call it once ``server`` runs; the host tells connected peers (identify push)."""
    sources = _announcers.get(host)
    if sources is None:
        sources = _announcers[host] = []

        def endpoints() -> list[MetricsEndpoint]:
            return [e for source in list(sources) for e in source()][:MAX_ENDPOINTS]

        MetricsAnnouncer(endpoints).attach(host)
    sources.append(lambda: server_endpoints(server, role))


# -- the monitor's side --


@dataclass
class _Listed:
    """One peer's targets."""

    peer_id: PeerId
    targets: list[tuple[str, MetricsEndpoint]]
    """(host, endpoint) pairs."""
    departed_at: float | None = None


@dataclass(frozen=True)
class DiscoveryOptions:
    """How the monitor discovers metrics endpoints; every field has a default.

    Raises:
        ConfigError: a bound is not positive (``linger`` may be 0: departed peers go at once).
    """

    timeout: float = QUERY_TIMEOUT
    """Seconds a peer has to open the stream and answer."""
    max_answer_bytes: int = MAX_ANSWER_BYTES
    max_endpoints: int = MAX_ENDPOINTS
    """Endpoints kept per peer."""
    max_peers: int = MAX_PEERS
    """Peers listed at most."""
    linger: float = LINGER
    """Seconds a departed peer stays listed."""
    concurrency: int = QUERY_CONCURRENCY
    """Peers asked at once."""

    def __post_init__(self) -> None:
        for name in ("timeout", "max_answer_bytes", "max_endpoints", "max_peers", "concurrency"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.linger >= 0:
            raise ConfigError(f"linger must not be negative, got {self.linger}")


class MetricsDiscovery:
    """The monitor's side (see the module notes): ask every identified peer that serves
    :data:`PROTOCOL_ID` where its metrics are, and list them (and ``own``, the monitor's own
    endpoints, read at each listing) for Prometheus at :meth:`sd_page`.

    Attach it to the host (``host.add_service(discovery)``, which starts :meth:`run`), or call
    :meth:`attach` and start :meth:`run` yourself.
    """

    def __init__(
        self,
        own: Callable[[], Sequence[MetricsEndpoint]] = list,
        *,
        options: DiscoveryOptions | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.own = own
        self.options = options or DiscoveryOptions()
        self._host: DiscoveryHost | None = None
        self._listed: dict[PeerId, _Listed] = {}
        self._asked: set[DiscoveryConnection] = set()
        self._send: trio.MemorySendChannel[DiscoveryConnection] | None = None
        self._targets_gauge: Gauge | None = None
        self._queries: dict[str, Counter] = {}
        if registry is not None:
            self._targets_gauge = Gauge(
                "physarum_discovery_targets",
                "Metrics endpoints listed for Prometheus at /sd (the monitor's own included).",
                registry=registry,
            )
            queries = Counter(
                "physarum_discovery_queries",
                "Peers asked where their metrics are, by result: ok, failed (no valid answer in time), "
                "limit (no slot left).",
                ["result"],
                registry=registry,
            )
            self._queries = {r: queries.labels(r) for r in QUERY_RESULTS}

    @property
    def host(self) -> DiscoveryHost:
        """The host it is attached to.

        Raises:
            NotRunningError: not attached yet.
        """
        if self._host is None:
            raise NotRunningError("this MetricsDiscovery is not attached to a host")
        return self._host

    def attach(self, host: DiscoveryHost) -> None:
        self._host = host
        host.on_identify.append(self._identified)
        host.on_disconnect.append(self._disconnected)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ask peers as they are identified, ``concurrency`` at a time, until cancelled."""
        # Unbounded: one entry per identified connection, which the host's connection limit bounds.
        send, receive = trio.open_memory_channel[DiscoveryConnection](float("inf"))
        self._send = send
        try:
            async with trio.open_nursery() as nursery:
                limiter = trio.CapacityLimiter(self.options.concurrency)
                task_status.started()
                # peers identified before we ran (identify fires once per connection, and on pushes)
                for peer in self.host.connected_peers():
                    conn = self.host.connection(peer)
                    if conn is not None:
                        self._identified(conn)
                async for conn in receive:
                    await limiter.acquire_on_behalf_of(conn)
                    nursery.start_soon(self._ask_and_release, conn, limiter)
        finally:
            self._send = None

    # -- events --

    def _identified(self, conn: DiscoveryConnection) -> None:
        info = conn.identify_info
        if info is None or PROTOCOL_ID not in info.protocols or conn in self._asked or conn.is_closed:
            return
        if self._send is None:
            return  # not running: a later push (or the next connection) asks
        self._asked.add(conn)
        self._send.send_nowait(conn)

    def _disconnected(self, conn: DiscoveryConnection) -> None:
        self._asked.discard(conn)
        listed = self._listed.get(conn.peer_id)
        if listed is not None and listed.departed_at is None and self.host.connection(conn.peer_id) is None:
            listed.departed_at = trio.current_time()

    # -- asking --

    async def _ask_and_release(self, conn: DiscoveryConnection, limiter: trio.CapacityLimiter) -> None:
        try:
            await self.ask(conn)
        finally:
            limiter.release_on_behalf_of(conn)

    async def ask(self, conn: DiscoveryConnection) -> bool:
        """Ask ``conn``'s peer for its endpoints and list them; whether it answered. Never raises for
        what the peer did."""
        try:
            with trio.fail_after(self.options.timeout):
                endpoints = await self._query(conn)
        except PEER_FAILURES as e:  # DecodeError (AnswerError), TooSlowError, a broken stream...
            log.debug("metrics endpoints of %s: %s", conn.peer_id, e)
            self._count("failed")
            return False
        if conn.is_closed and self.host.connection(conn.peer_id) is None:
            return False  # gone meanwhile: nothing to scrape
        seen_at = _seen_host(conn.remote_addr)
        targets = []
        for endpoint in endpoints:
            host = None if seen_at is None else scrape_host(endpoint, seen_at)
            if host is None:
                log.debug(
                    "metrics endpoint of %s bound to %s: not reachable at %s", conn.peer_id, endpoint.bind, seen_at
                )
                continue
            targets.append((host, endpoint))
        if not targets:  # nothing Prometheus could reach: takes no slot
            if self._listed.pop(conn.peer_id, None) is not None:
                self._update_gauge()
            self._count("ok")
            return True
        if not self._make_room(conn.peer_id):
            log.debug("metrics endpoints of %s not listed: %d peers listed", conn.peer_id, self.options.max_peers)
            self._count("limit")
            return True
        self._listed[conn.peer_id] = _Listed(conn.peer_id, targets)
        self._count("ok")
        self._update_gauge()
        return True

    async def _query(self, conn: DiscoveryConnection) -> list[MetricsEndpoint]:
        stream = await conn.open_stream([PROTOCOL_ID])
        try:
            await stream.send_all(json_frame(REQUEST))
            await stream.send_eof()
            answer = await read_json(BufferedStream(stream), self.options.max_answer_bytes)
        finally:
            await trio.aclose_forcefully(stream)
        if answer is None:
            raise AnswerError("the stream ended without an answer")
        return decode_answer(answer, self.options.max_endpoints)

    def _make_room(self, peer_id: PeerId) -> bool:
        """Whether ``peer_id`` may be listed: it is, there is room, or a departed peer made room."""
        self._expire(trio.current_time())
        if peer_id in self._listed or len(self._listed) < self.options.max_peers:
            return True
        departed = [v for v in self._listed.values() if v.departed_at is not None]
        if not departed:
            return False
        oldest = min(departed, key=lambda v: v.departed_at or 0.0)
        del self._listed[oldest.peer_id]
        return True

    def _expire(self, now: float) -> None:
        linger = self.options.linger
        gone = [p for p, v in self._listed.items() if v.departed_at is not None and now - v.departed_at >= linger]
        for p in gone:
            del self._listed[p]

    def _count(self, result: str) -> None:
        counter = self._queries.get(result)
        if counter is not None:
            counter.inc()

    def _update_gauge(self, groups: int | None = None) -> None:
        if self._targets_gauge is not None:
            if groups is None:
                groups = len(self.own()) + sum(len(v.targets) for v in self._listed.values())
            self._targets_gauge.set(groups)

    # -- the list --

    def target_groups(self) -> list[dict[str, Any]]:
        """Prometheus' HTTP SD target groups: the monitor's own endpoints, then every listed peer's."""
        self._expire(trio.current_time())
        host = self.host
        groups = [
            _group(self_host, e, host.peer_id)
            for e in self.own()
            if (self_host := _own_host(e, host.advertised_addrs())) is not None
        ]
        for listed in self._listed.values():
            groups.extend(_group(h, e, listed.peer_id) for h, e in listed.targets)
        self._update_gauge(len(groups))
        return groups

    def sd_page(self) -> Reply:
        """The :data:`SD_PATH` page: :meth:`target_groups` as JSON."""
        body = json.dumps(self.target_groups(), separators=(",", ":")).encode()
        return Reply(200, [("Content-Type", "application/json")], body)

    def peers(self) -> dict[PeerId, list[str]]:
        """Every listed peer's targets (``host:port/path``), for tests and the log."""
        self._expire(trio.current_time())
        return {
            p: [target_address(h, e.port) + e.path for h, e in v.targets] for p, v in self._listed.items()
        }


def _group(host: str, e: MetricsEndpoint, peer_id: PeerId) -> dict[str, Any]:
    return {
        "targets": [target_address(host, e.port)],
        "labels": {"peer_id": str(peer_id), "role": e.role, "__metrics_path__": e.path, "__scheme__": e.scheme},
    }


def _seen_host(remote: Multiaddr) -> str | None:
    try:
        return addrs_.tcp_endpoint(remote).host
    except addrs_.AddressError:
        return None


def _own_host(e: MetricsEndpoint, advertised: Sequence[Multiaddr]) -> str | None:
    """Where Prometheus reaches our own endpoint: a specific bind address; for a wildcard, the host of
    our first advertised address of that family (or any DNS name we announce), else loopback."""
    for b in e.bind:
        if not ipaddress.ip_address(b).is_unspecified:
            return b
    six = any(ipaddress.ip_address(b).version == 6 for b in e.bind) and not any(
        ipaddress.ip_address(b).version == 4 for b in e.bind
    )
    for a in advertised:
        host = _seen_host(a)
        if host is None:
            continue
        try:
            if (ipaddress.ip_address(host).version == 6) == six:
                return host
        except ValueError:
            return host  # an announced DNS name
    return "::1" if six else "127.0.0.1"


def serve_discovery(
    host: Host,
    server: MetricsServer,
    *,
    role: str,
    discover: bool,
    options: DiscoveryOptions | None = None,
    registry: CollectorRegistry | None = None,
) -> MetricsDiscovery | None:
    """The node wiring: announce ``server``'s endpoints on ``host`` as ``role`` and, with ``discover``
    (the monitor), discover the peers' endpoints and serve them at :data:`SD_PATH` on ``server``.
    ``host`` is a :class:`~physarum.overlay.host.Host` and ``server`` a running
    :class:`~physarum.monitor.http.MetricsServer`."""
    announce_metrics(host, server, role)
    if not discover:
        return None
    discovery = MetricsDiscovery(lambda: server_endpoints(server, role), options=options, registry=registry)
    server.pages[SD_PATH] = discovery.sd_page
    host.add_service(discovery)
    return discovery


__all__ = [
    "LINGER",
    "MAX_ANSWER_BYTES",
    "MAX_ENDPOINTS",
    "MAX_PEERS",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_ID",
    "QUERY_CONCURRENCY",
    "QUERY_TIMEOUT",
    "REQUEST",
    "ROLES",
    "SD_PATH",
    "SERVE_TIMEOUT",
    "AnswerError",
    "DiscoveryConnection",
    "DiscoveryHost",
    "DiscoveryOptions",
    "MetricsAnnouncer",
    "MetricsDiscovery",
    "MetricsEndpoint",
    "announce_metrics",
    "decode_answer",
    "encode_answer",
    "scrape_host",
    "serve_discovery",
    "server_endpoints",
    "target_address",
]
