"""The node's HTTP endpoint: ``/metrics`` for Prometheus and a small index page, spoken through h11.

Routes (GET and HEAD; HEAD answers the same head without the body):

``/metrics``
    The exposition of the registry, negotiated as prometheus_client's own handler does
    (:func:`prometheus_client.exposition.choose_encoder`): OpenMetrics when the ``Accept`` header asks
    for ``application/openmetrics-text`` (Prometheus does by default), else the classic text format,
    labelled ``version=0.0.4`` (:data:`CONTENT_TYPE`); gzip when ``Accept-Encoding`` includes gzip.
    ``?name[]=NAME`` (repeatable) restricts the output to those series, as prometheus_client does.
    ``_created`` samples are never served (see :class:`WithoutCreated`).
``/``
    An HTML page linking to ``/metrics`` (more pages will be linked from it).

Anything else: 404; other methods: 405 (with ``Allow``); a request h11 rejects (a malformed request
line, a bare-LF HTTP/1.1 request without ``Host``, duplicate ``Host`` headers...): 400 at once; a request
head larger than ``max_request_bytes``: 431. Every response carries ``Connection: close``.
"""

from __future__ import annotations

import copy
import errno
import gzip
import logging
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import h11
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, generate_latest, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: The classic text format, served unless the scraper asks for another (every Prometheus 2.x and 3.x
#: reads it; prometheus_client >= 0.22 labels the same output "version=1.0.0", which older scrapers do
#: not know, so a scrape that does not ask for 1.0.0 gets it labelled 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Largest request head (request line + headers) accepted; Prometheus sends about 300 bytes.
MAX_REQUEST_BYTES = 8192

#: Seconds a client has to send its whole request head.
HEAD_TIMEOUT = 2.0

#: Seconds a client may hold its connection in all (head, rendering and sending the answer).
REQUEST_TIMEOUT = 10.0

#: Clients served at once; more are closed on arrival.
MAX_CLIENTS = 64

#: How many times a port-0 server looks for a port free on every address family before giving up.
BIND_ATTEMPTS = 8

#: gzip level of compressed expositions: zlib's default. On the 2.3 MB exposition of 1,000 peers it
#: gives 187 KB in 53 ms; level 9 (gzip.compress's default) 181 KB in 91 ms.
GZIP_LEVEL = 6

_RECEIVE_SIZE = 4096

INDEX_HTML = (
    b"<!DOCTYPE html>\n"
    b'<html lang="en"><head><meta charset="utf-8"><title>physarum</title></head>\n'
    b"<body><h1>physarum</h1>\n"
    b'<ul><li><a href="metrics">metrics</a> (Prometheus exposition)</li></ul>\n'
    b"</body></html>\n"
)


# -- the exposition --


class Collects(Protocol):
    """Anything with ``collect()``: a registry, a restricted registry, a collector."""

    def collect(self) -> Iterable[Metric]: ...


class WithoutCreated(Collector):
    """A read-only view of ``source`` without the ``_created`` samples of counters, histograms and
    summaries.

    prometheus_client adds a ``NAME_created`` sample (a Unix timestamp) to each of those series unless
    ``disable_created_metrics()`` flips a process-wide switch, which would change what an embedding
    program exports too. Prometheus stores each ``_created`` sample as a series of its own (one per peer
    and metric here), which nobody queries. So rendering goes through this view, which copies a metric
    only when it has something to drop and never mutates what ``source`` returns.
    """

    def __init__(self, source: Collects) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        for metric in self.source.collect():
            created = metric.name + "_created"
            if any(s.name == created for s in metric.samples):
                view = copy.copy(metric)
                view.samples = [s for s in metric.samples if s.name != created]
                yield view
            else:
                yield metric


def render_exposition(
    registry: CollectorRegistry,
    *,
    accept: str = "",
    accept_encoding: str = "",
    names: Sequence[str] = (),
) -> tuple[bytes, list[tuple[str, str]]]:
    """The body and the ``Content-Type`` (and ``Content-Encoding``) headers answering one scrape.

    ``accept`` and ``accept_encoding`` are the request's headers (several joined with ``,``); ``names``
    the ``name[]`` query parameters. The format is prometheus_client's choice
    (:func:`~prometheus_client.exposition.choose_encoder`), except that its default answer is labelled
    :data:`CONTENT_TYPE`. Thread-safe: the node calls it in a worker thread.
    """
    encoder, content_type = choose_encoder(accept)
    if encoder is generate_latest:  # nobody asked for a version: the classic 0.0.4 label
        content_type = CONTENT_TYPE
    source: Collects = registry.restricted_registry(names) if names else registry
    body = encoder(WithoutCreated(source))
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL)
        headers.append(("Content-Encoding", "gzip"))
    return body, headers


# -- requests and responses --


@dataclass
class Reply:
    """A complete response: status, headers (without Content-Length and Connection), body."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def text_reply(status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    return Reply(status, [("Content-Type", "text/plain; charset=utf-8"), *headers], text.encode() + b"\n")


METRICS = "metrics"
"""What :func:`route` answers for the metrics page (rendered by the caller)."""


def route(method: bytes, target: bytes) -> Reply | str:
    """:data:`METRICS` for ``GET``/``HEAD /metrics`` (any query), else the complete reply: the index page,
    405 for other methods, 404 for other paths. ``target`` may be in origin or absolute form."""
    if method not in (b"GET", b"HEAD"):
        return text_reply(405, "only GET and HEAD", [("Allow", "GET, HEAD")])
    path = urlsplit(target.decode("latin-1")).path or "/"
    if path == "/metrics":
        return METRICS
    if path == "/":
        return Reply(200, [("Content-Type", "text/html; charset=utf-8")], INDEX_HTML)
    return text_reply(404, "not found: metrics are at /metrics")


def _header(request: h11.Request, name: bytes) -> str:
    """Every value of header ``name`` joined with commas (as HTTP allows for lists)."""
    return ",".join(v.decode("latin-1") for k, v in request.headers if k == name)


def _query_names(target: bytes) -> list[str]:
    return parse_qs(urlsplit(target.decode("latin-1")).query).get("name[]", [])


def _serialize(conn: h11.Connection, reply: Reply, *, head: bool) -> bytes:
    headers = [
        *reply.headers,
        ("Content-Length", str(len(reply.body))),
        ("Connection", "close"),
    ]
    phrase = HTTPStatus(reply.status).phrase.encode()
    out = conn.send(h11.Response(status_code=reply.status, headers=headers, reason=phrase)) or b""
    if not head and reply.body:
        out += conn.send(h11.Data(data=reply.body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


# -- the server --


class MetricsServer:
    """Serve ``registry`` at ``/metrics`` (and an index page at ``/``) over HTTP/1.1 on ``host``:``port``.

    ``host`` None or ``""`` binds every interface; port 0 picks a free port, the same one on every
    address family (IPv4 and IPv6), retried up to ``bind_attempts`` times when another program holds it
    on one of them. Run it with ``await nursery.start(server.run)``: that returns once listening, with
    :attr:`addresses` holding the bound ``(host, port)`` pairs.

    Bounds, so a slow or garbage client costs one task and a few KiB, never the node: the request head
    must arrive within ``head_timeout`` seconds and be at most ``max_request_bytes`` (431 beyond); a
    client is dropped ``request_timeout`` seconds after it connected, whatever it is doing; over
    ``max_clients`` concurrent clients, new ones are closed at once. One request per connection.

    The exposition is rendered in a worker thread, one at a time. It costs about 14 us per sample line
    in prometheus_client (some 330 ms for 1,000 peers, whose RTT histograms are most of the lines): on
    the event loop that would stall every ping in flight and inflate its RTT; in a thread the loop keeps
    running, only sharing the GIL in 5 ms slices. prometheus_client's metrics are thread-safe (each one
    locks its children), so collecting while the loop records samples is sound. gzip runs in that
    thread too.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str | None = "127.0.0.1",
        port: int = 9100,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        head_timeout: float = HEAD_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        max_clients: int = MAX_CLIENTS,
        bind_attempts: int = BIND_ATTEMPTS,
    ) -> None:
        self.registry = registry
        self.host = host or None
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.head_timeout = head_timeout
        self.request_timeout = request_timeout
        self.max_clients = max_clients
        self.bind_attempts = bind_attempts
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
        listeners = await open_listeners(self.host, self.port, attempts=self.bind_attempts)
        try:
            self.addresses = [_sockname(lst.socket.getsockname()) for lst in listeners]
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(list(self.addresses))
                await trio.sleep_forever()
        finally:
            for lst in listeners:
                await trio.aclose_forcefully(lst)

    def render(
        self, *, accept: str = "", accept_encoding: str = "", names: Sequence[str] = ()
    ) -> tuple[bytes, list[tuple[str, str]]]:
        """:func:`render_exposition` of this server's registry."""
        return render_exposition(self.registry, accept=accept, accept_encoding=accept_encoding, names=names)

    async def _handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        if self._clients >= self.max_clients:
            await trio.aclose_forcefully(stream)
            return
        self._clients += 1
        try:
            with trio.move_on_after(self.request_timeout):
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_request_bytes)
                request: h11.Request | h11.RemoteProtocolError | None = None
                with trio.move_on_after(self.head_timeout):
                    request = await self._receive_request(conn, stream)
                if request is None:
                    return  # no request in time, or the client went away before sending one
                if isinstance(request, h11.RemoteProtocolError):
                    status = request.error_status_hint
                    reply = text_reply(status, HTTPStatus(status).phrase.lower())
                    response = _serialize(conn, reply, head=False)
                else:
                    response = _serialize(conn, await self._answer(request), head=request.method == b"HEAD")
                await stream.send_all(response)
                await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("metrics client: %s", e)
        except Exception:
            log.exception("metrics request failed")
        finally:
            self._clients -= 1
            await trio.aclose_forcefully(stream)

    async def _receive_request(
        self, conn: h11.Connection, stream: trio.abc.ReceiveStream
    ) -> h11.Request | h11.RemoteProtocolError | None:
        """The request head; the error h11 found in it; or None if the client closed before sending one."""
        eof = False
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                return None if eof else e  # hung up mid-request: nobody to answer
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed
            data = await stream.receive_some(_RECEIVE_SIZE)
            eof = not data
            conn.receive_data(bytes(data))

    async def _answer(self, request: h11.Request) -> Reply:
        routed = route(request.method, request.target)
        if isinstance(routed, Reply):
            return routed
        render = partial(
            self.render,
            accept=_header(request, b"accept"),
            accept_encoding=_header(request, b"accept-encoding"),
            names=_query_names(request.target),
        )
        body, headers = await trio.to_thread.run_sync(render, limiter=self._render_limiter)
        return Reply(200, [*headers, ("Vary", "Accept, Accept-Encoding")], body)


# -- listening --


async def open_listeners(
    host: str | None, port: int, *, attempts: int = BIND_ATTEMPTS
) -> list[trio.SocketListener]:
    """TCP listeners on every address of ``host`` (every interface when None) at ``port``.

    With port 0 the first address gets a free port and the others the same one; if that port is taken
    on one of them, everything is closed and tried again with a new free port, ``attempts`` times in all.
    Address families the system does not support are skipped, as :func:`trio.open_tcp_listeners` does.

    Raises:
        OSError: an address cannot be bound, or no port was free on every family within ``attempts``.
    """
    if port != 0:
        return await trio.open_tcp_listeners(port, host=host)
    infos = await trio.socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if len(infos) <= 1:
        return await trio.open_tcp_listeners(0, host=host)
    error: OSError | None = None
    for _ in range(max(1, attempts)):
        listeners: list[trio.SocketListener] = []
        chosen = 0
        try:
            for family, type_, proto, _, sockaddr in infos:
                listener = await _listen(family, type_, proto, (sockaddr[0], chosen, *sockaddr[2:]))
                if listener is None:
                    continue
                listeners.append(listener)
                if chosen == 0:
                    chosen = int(listener.socket.getsockname()[1])
        except OSError as e:
            for lst in listeners:
                await trio.aclose_forcefully(lst)
            if e.errno != errno.EADDRINUSE or chosen == 0:
                raise
            log.debug("port %d is taken on another address family: trying another", chosen)
            error = e
            continue
        if not listeners:
            raise OSError(errno.EAFNOSUPPORT, f"no supported address family for {host!r}")
        return listeners
    assert error is not None
    raise error


async def _listen(
    family: int, type_: int, proto: int, sockaddr: tuple[object, ...]
) -> trio.SocketListener | None:
    """One listening socket, set up as trio.open_tcp_listeners does; None if the family is unsupported."""
    try:
        sock = trio.socket.socket(family, type_, proto)
    except OSError as e:
        if e.errno == errno.EAFNOSUPPORT:
            return None
        raise
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _sockname(sockname: Sequence[object]) -> tuple[str, int]:
    return str(sockname[0]), int(str(sockname[1]))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = [
    "BIND_ATTEMPTS",
    "CONTENT_TYPE",
    "GZIP_LEVEL",
    "HEAD_TIMEOUT",
    "INDEX_HTML",
    "MAX_CLIENTS",
    "MAX_REQUEST_BYTES",
    "METRICS",
    "REQUEST_TIMEOUT",
    "Collects",
    "MetricsServer",
    "Reply",
    "WithoutCreated",
    "open_listeners",
    "render_exposition",
    "route",
    "text_reply",
]
