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
``/healthz``
    ``200 ok`` (text/plain) while the node runs: for liveness and readiness probes, so it needs no
    token even when ``/metrics`` does, and renders nothing.

Anything else: 404; other methods: 405 (with ``Allow``); a request h11 rejects (a malformed request
line, a bare-LF HTTP/1.1 request without ``Host``, duplicate ``Host`` headers...): 400 at once; a request
head larger than ``max_request_bytes``: 431. With a token (:class:`MetricsServer` ``token=``), every
path but ``/healthz`` answers 401 unless the request carries ``Authorization: Bearer TOKEN``. A client over the limit
that cannot make room gets 503 (see :class:`MetricsServer`). Every response carries ``Connection: close``.

Line ends: h11 reads bare-LF lines (RFC 9112 lets a server do so). A client that stops sending right
after a bare LF (``echo 'GET /metrics HTTP/1.0' | nc``, a request typed by hand) is taken to have ended
its head there, and is answered (or told 400) at once rather than left waiting for the head deadline:
real HTTP clients end every line with CRLF and send the blank line that ends the head.
"""

from __future__ import annotations

import copy
import errno
import gzip
import hmac
import logging
import re
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from physarum.errors import ConfigError

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

#: Clients served at once. A scraper needs one (Prometheus never has two scrapes of a target in flight);
#: the rest is room for other readers and for slow or hostile clients, which are dropped to make room
#: (see :class:`MetricsServer`). Each costs a task, a socket and a few KiB.
MAX_CLIENTS = 256

#: Seconds without progress while its answer is being sent (the client does not read) after which a
#: client counts as idle: dropped, if the slots are all taken, to make room for a new client.
STALL_TIMEOUT = 2.0

#: Seconds a client refused with 503 (every slot busy, none idle) keeps its connection while what it
#: sent is read and discarded: closing a socket with unread data resets it, and the client's kernel
#: then drops the 503 before the client reads it.
REFUSAL_LINGER = 1.0

#: Largest bearer token accepted (and largest token file read).
MAX_TOKEN_BYTES = 4096

#: How many times a port-0 server looks for a port free on every address family before giving up.
BIND_ATTEMPTS = 8

#: gzip level of compressed expositions: zlib's default. On the 2.3 MB exposition of 1,000 peers it
#: gives 187 KB in 53 ms; level 9 (gzip.compress's default) 181 KB in 91 ms.
GZIP_LEVEL = 6

_RECEIVE_SIZE = 4096

# The answer is sent in pieces of this size so that a client that stops reading is seen stalling.
_SEND_CHUNK = 65536

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


def _choose_encoder(accept: str) -> tuple[Callable[[Collector], bytes], str]:
    """prometheus_client's choice for ``accept``; a version it cannot parse, or that it would copy into
    the answer's ``Content-Type`` in a form no header can carry, counts as none asked for."""
    try:
        encoder, content_type = choose_encoder(accept)
    except (TypeError, ValueError):  # prometheus_client 0.26 raises on "version=1." or "version=x"
        return generate_latest, CONTENT_TYPE
    if not (content_type.isascii() and content_type.isprintable()):  # "version=2.0.\xff" is echoed
        return generate_latest, CONTENT_TYPE
    return encoder, content_type


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
    encoder, content_type = _choose_encoder(accept)
    if encoder is generate_latest:  # nobody asked for a version: the classic 0.0.4 label
        content_type = CONTENT_TYPE
    source: Collects = registry.restricted_registry(names) if names else registry
    view: Collects = WithoutCreated(source)
    escaping = _escapes_names(encoder)
    if escaping is not None:
        metrics = list(view.collect())
        if all(_plain_names(m) for m in metrics):
            # prometheus_client >= 0.22 "escapes" every sample name character by character (2/3 of
            # the OpenMetrics rendering time for 1,000 peers). A name made of [a-zA-Z0-9_] comes out
            # unchanged, and then asking for no escaping gives the same bytes (a test checks it).
            encoder = partial(escaping.func, **{**escaping.keywords, "escaping": openmetrics.ALLOWUTF8})
        view = _Collected(metrics)
    body = encoder(view)
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL)
        headers.append(("Content-Encoding", "gzip"))
    return body, headers


def _escapes_names(encoder: object) -> partial[bytes] | None:
    """``encoder`` if it is OpenMetrics with the underscores escaping of names, else None."""
    if (
        isinstance(encoder, partial)
        and encoder.func is openmetrics.generate_latest
        and encoder.keywords.get("escaping") == openmetrics.UNDERSCORES
    ):
        return encoder
    return None


_PLAIN_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _plain_names(metric: Metric) -> bool:
    names = {metric.name, *(s.name for s in metric.samples)}
    names.update(k for s in metric.samples for k in s.labels)
    return all(_PLAIN_NAME.fullmatch(n) and not n.startswith("__") for n in names)


class _Collected:
    """Metrics already collected, to be encoded."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


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

HEALTHZ = "/healthz"
"""The health path: answered without a token (a probe carries none) and without rendering."""

HEALTHY = text_reply(200, "ok")
"""The answer to :data:`HEALTHZ`."""


Page = Callable[[], Reply]
"""A page's handler: called on the event loop for each ``GET``/``HEAD`` of its path (any query), so it
must be quick; it answers the whole reply."""


def route(method: bytes, target: bytes, pages: Mapping[str, Page] | None = None) -> Reply | str:
    """:data:`METRICS` for ``GET``/``HEAD /metrics`` (any query), else the complete reply: a page of
    ``pages`` (by path, which may replace the index page at ``/``), the index page, 405 for other methods,
    404 for other paths, 400 for a target that is not a URL. ``target`` may be in origin or absolute form."""
    if method not in (b"GET", b"HEAD"):
        return text_reply(405, "only GET and HEAD", [("Allow", "GET, HEAD")])
    try:
        path = urlsplit(target.decode("latin-1")).path or "/"
    except ValueError:  # h11 lets through targets urlsplit refuses, such as "//[" (an unclosed IPv6 host)
        return text_reply(400, "bad request target")
    if path == "/metrics":
        return METRICS
    if path == HEALTHZ:
        return HEALTHY
    page = None if pages is None else pages.get(path)
    if page is not None:
        return page()
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


def _canned(reply: Reply) -> bytes:
    """``reply`` serialized by h11, for a client whose request is never read (h11 answers only after a
    request, so it is given a placeholder one)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: physarum\r\n\r\n")
    conn.next_event()
    return _serialize(conn, reply, head=False)


_BUSY = _canned(text_reply(503, "busy: too many clients, try again", [("Retry-After", "1")]))


def _ends_in_bare_lf(conn: h11.Connection) -> bool:
    """True if the unparsed data in ``conn`` is a partial request head that ends with a bare LF."""
    data = conn.trailing_data[0]
    return data.endswith(b"\n") and not data.endswith(b"\r\n") and bool(data.strip())


# -- access control --


def check_token(token: str) -> str:
    """``token`` if it can be a bearer token: 1 to :data:`MAX_TOKEN_BYTES` visible ASCII characters.

    Raises:
        ConfigError: it is empty, too long, or holds spaces, control or non-ASCII characters.
    """
    if not token:
        raise ConfigError("the token is empty")
    if len(token) > MAX_TOKEN_BYTES:
        raise ConfigError(f"the token is longer than {MAX_TOKEN_BYTES} characters")
    if not all("!" <= c <= "~" for c in token):
        raise ConfigError("the token must be visible ASCII characters, without spaces")
    return token


def read_token_file(path: str) -> str:
    """The bearer token held in the file ``path``, without surrounding whitespace (as Prometheus reads
    ``authorization: credentials_file``, so one file can serve both).

    Raises:
        OSError: the file cannot be read.
        ConfigError: it does not hold one token (see :func:`check_token`).
    """
    with open(path, "rb") as f:
        data = f.read(MAX_TOKEN_BYTES + 64)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError("the token must be visible ASCII characters, without spaces") from None
    return check_token(text)


def _bearer(request: h11.Request) -> bytes | None:
    """The credentials of the request's one ``Authorization: Bearer`` header; None without exactly one."""
    values = [v for k, v in request.headers if k == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, credentials = values[0].partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.strip()


# -- the server --


_HEAD = "head"  # reading the request head: idle, droppable
_RENDER = "render"  # waiting for the exposition
_SEND = "send"  # sending the answer: droppable once stalled


@dataclass(eq=False)
class _Client:
    scope: trio.CancelScope
    connected_at: float
    phase: str = _HEAD
    progress_at: float = 0.0
    """When the last piece of the answer was accepted by the socket (phase :data:`_SEND`)."""


_RenderKey = tuple[str, bool, tuple[str, ...]]
_Rendered = tuple[bytes, list[tuple[str, str]]]


@dataclass(eq=False)
class _Render:
    """One rendering of the exposition, shared by every request for the same variant that arrives
    before it starts."""

    job: Callable[[], _Rendered]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    started: bool = False
    waiters: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    result: _Rendered | None = None


class MetricsServer:
    """Serve ``registry`` at ``/metrics`` (and an index page at ``/``) over HTTP/1.1 on ``host``:``port``.

    ``pages`` maps further paths to their :data:`Page` handlers (add more to :attr:`pages` before
    :meth:`run`); they answer under the same token and bounds as ``/metrics``.

    ``host`` None or ``""`` binds every interface; port 0 picks a free port, the same one on every
    address family (IPv4 and IPv6), retried up to ``bind_attempts`` times when another program holds it
    on one of them. Run it with ``await nursery.start(server.run)``: that returns once listening, with
    :attr:`addresses` holding the bound ``(host, port)`` pairs. Bind to ``127.0.0.1`` (the default here;
    the CLI's ``-prom-listen-addr 127.0.0.1:9100``) to keep the metrics to the machine, and/or give a
    ``token``: then every request needs ``Authorization: Bearer TOKEN`` (compared in constant time),
    else 401. Prometheus sends it with ``authorization: {credentials_file: PATH}`` in its scrape config.

    Bounds, so slow or hostile clients cost a task and a few KiB each and cannot starve a scraper:

    * the request head must arrive within ``head_timeout`` seconds of connecting (one deadline for the
      whole head, however it trickles in) and be at most ``max_request_bytes`` (431 beyond);
    * a client is dropped ``request_timeout`` seconds after it connected, whatever it is doing;
    * at most ``max_clients`` are served at once. When all the slots are taken, a new client takes the
      slot of the oldest *idle* one: a client still sending its request head (a real scraper sends its
      ~300 bytes at once, so it is idle for well under a millisecond, while a slowloris client is idle
      for ever), else the client that has stalled longest on its answer (``stall_timeout`` or more
      since the socket last took a 64 KiB piece of it: the client does not read). If none is idle (every slot is being rendered for or answered), the newcomer
      gets ``503`` with ``Retry-After: 1`` (its connection is kept ``refusal_linger`` seconds so the
      answer is not lost to a reset; at most ``max_clients`` refusals at once, more are closed at once).

    One request per connection. The exposition is rendered in a worker thread, one at a time; requests
    for the same variant (format, compression, ``name[]`` filter) that arrive while an earlier one waits
    for its turn share that rendering, so a burst of scrapes costs one rendering, not one each, and none
    is served data older than its own arrival. Rendering costs about 14 us per sample line in
    prometheus_client (some 330 ms for 1,000 peers, whose RTT histograms are most of the lines): on the
    event loop that would stall every ping in flight and inflate its RTT; in a thread the loop keeps
    running, only sharing the GIL in 5 ms slices. prometheus_client's metrics are thread-safe (each one
    locks its children), so collecting while the loop records samples is sound. gzip runs in that
    thread too.

    :attr:`dropped` counts clients dropped to make room, :attr:`refused` those answered 503.

    Raises:
        ConfigError: ``token`` is not a valid bearer token (see :func:`check_token`), or a bound is not
            positive.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str | None = "127.0.0.1",
        port: int = 9100,
        token: str | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        head_timeout: float = HEAD_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
        refusal_linger: float = REFUSAL_LINGER,
        max_clients: int = MAX_CLIENTS,
        bind_attempts: int = BIND_ATTEMPTS,
        pages: Mapping[str, Page] | None = None,
    ) -> None:
        for name, value in (
            ("max_request_bytes", max_request_bytes),
            ("head_timeout", head_timeout),
            ("request_timeout", request_timeout),
            ("stall_timeout", stall_timeout),
            ("max_clients", max_clients),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        self.registry = registry
        self.host = host or None
        self.port = port
        self.token = None if token is None else check_token(token)
        self.max_request_bytes = max_request_bytes
        self.head_timeout = head_timeout
        self.request_timeout = request_timeout
        self.stall_timeout = stall_timeout
        self.refusal_linger = refusal_linger
        self.max_clients = max_clients
        self.bind_attempts = bind_attempts
        self.pages: dict[str, Page] = dict(pages or {})
        self.addresses: list[tuple[str, int]] = []
        self.dropped = 0
        self.refused = 0
        # Insertion order is arrival order: the first idle client found is the oldest.
        self._clients: dict[_Client, None] = {}
        self._refusing = 0
        self._renders: dict[_RenderKey, _Render] = {}
        self._render_limiter = trio.CapacityLimiter(1)
        self._nursery: trio.Nursery | None = None

    @property
    def clients(self) -> int:
        """Clients being served now."""
        return len(self._clients)

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
                self._nursery = nursery
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(list(self.addresses))
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for lst in listeners:
                await trio.aclose_forcefully(lst)

    def render(
        self, *, accept: str = "", accept_encoding: str = "", names: Sequence[str] = ()
    ) -> tuple[bytes, list[tuple[str, str]]]:
        """:func:`render_exposition` of this server's registry."""
        return render_exposition(self.registry, accept=accept, accept_encoding=accept_encoding, names=names)

    async def _handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        now = trio.current_time()
        if len(self._clients) >= self.max_clients:
            idle = self._idlest(now)
            if idle is None:
                await self._refuse(stream)
                return
            self._drop(idle, now)
        client = _Client(trio.CancelScope(deadline=now + self.request_timeout), now)
        self._clients[client] = None
        try:
            with client.scope:
                await self._serve(stream, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("metrics client: %s", e)
        except Exception:
            log.exception("metrics request failed")
        finally:
            self._clients.pop(client, None)
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.HalfCloseableStream, client: _Client) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_request_bytes)
        request: h11.Request | h11.RemoteProtocolError | None = None
        with trio.move_on_after(self.head_timeout):
            request = await self._receive_request(conn, stream)
        if request is None:
            return  # no request in time, or the client went away before sending one
        if isinstance(request, h11.RemoteProtocolError):
            status = request.error_status_hint
            reply = text_reply(status, HTTPStatus(status).phrase.lower())
            head = False
        else:
            client.phase = _RENDER
            reply = await self._answer(request)
            head = request.method == b"HEAD"
        client.phase = _SEND
        client.progress_at = trio.current_time()
        data = memoryview(_serialize(conn, reply, head=head))
        for start in range(0, len(data), _SEND_CHUNK):
            await stream.send_all(data[start : start + _SEND_CHUNK])
            client.progress_at = trio.current_time()
        await stream.send_eof()

    def _idlest(self, now: float) -> _Client | None:
        """The client to drop for a newcomer: the oldest still sending its head, else the one stalled
        longest (at least ``stall_timeout``) on its answer; None if no client is idle."""
        stalled: _Client | None = None
        for client in self._clients:
            if client.phase == _HEAD:
                return client
            if client.phase == _SEND and now - client.progress_at >= self.stall_timeout:
                if stalled is None or client.progress_at < stalled.progress_at:
                    stalled = client
        return stalled

    def _drop(self, client: _Client, now: float) -> None:
        self._clients.pop(client, None)
        client.scope.cancel()
        self.dropped += 1
        log.debug(
            "metrics: all %d slots taken: dropped a client idle for %.1f s (%s)",
            self.max_clients,
            now - (client.connected_at if client.phase == _HEAD else client.progress_at),
            "request head" if client.phase == _HEAD else "not reading",
        )

    async def _refuse(self, stream: trio.abc.HalfCloseableStream) -> None:
        """503 to a client that finds every slot busy; what it sent is read and dropped for a moment."""
        self.refused += 1
        if self._refusing >= self.max_clients:
            await trio.aclose_forcefully(stream)
            return
        self._refusing += 1
        log.debug("metrics: all %d slots busy: 503", self.max_clients)
        try:
            with trio.move_on_after(self.refusal_linger):
                await stream.send_all(_BUSY)
                await stream.send_eof()
                while await stream.receive_some(_RECEIVE_SIZE):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("metrics client (refused): %s", e)
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _receive_request(
        self, conn: h11.Connection, stream: trio.abc.ReceiveStream
    ) -> h11.Request | h11.RemoteProtocolError | None:
        """The request head; the error h11 found in it; or None if the client closed before sending one."""
        eof = bare_lf = False
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                return None if eof else e  # hung up mid-request: nobody to answer
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed
            if bare_lf:  # what the client sent stops after a bare LF: its head ends there
                conn.receive_data(b"\n")
                bare_lf = False
                continue
            data = await stream.receive_some(_RECEIVE_SIZE)
            eof = not data
            conn.receive_data(bytes(data))
            bare_lf = bool(data) and _ends_in_bare_lf(conn)

    async def _answer(self, request: h11.Request) -> Reply:
        if route(request.method, request.target) is HEALTHY:  # probes carry no token; it says nothing
            return HEALTHY
        if self.token is not None:
            credentials = _bearer(request)
            if credentials is None or not hmac.compare_digest(credentials, self.token.encode()):
                return text_reply(
                    401, "unauthorized: send Authorization: Bearer TOKEN", [("WWW-Authenticate", "Bearer")]
                )
        routed = route(request.method, request.target, self.pages)  # a page runs only for the token holder
        if isinstance(routed, Reply):
            return routed
        accept = _header(request, b"accept")
        accept_encoding = _header(request, b"accept-encoding")
        names = _query_names(request.target)
        key: _RenderKey = (_choose_encoder(accept)[1], gzip_accepted(accept_encoding), tuple(names))
        job = partial(self.render, accept=accept, accept_encoding=accept_encoding, names=names)
        rendered = await self._rendered(key, job)
        if rendered is None:
            return text_reply(500, "the exposition could not be rendered")
        body, headers = rendered
        return Reply(200, [*headers, ("Vary", "Accept, Accept-Encoding")], body)

    async def _rendered(self, key: _RenderKey, job: Callable[[], _Rendered]) -> _Rendered | None:
        """The exposition variant ``key``, rendered by ``job`` or by an identical request's job queued
        before this one; None if rendering failed (logged)."""
        if self._nursery is None:  # not run() (a stream handed to _handle): no sharing
            async with self._render_limiter:
                return await trio.to_thread.run_sync(job)
        pending = self._renders.get(key)
        if pending is None:
            pending = self._renders[key] = _Render(job)
            self._nursery.start_soon(self._render, key, pending)
        pending.waiters += 1
        try:
            await pending.done.wait()
        finally:
            pending.waiters -= 1
            if pending.waiters == 0 and not pending.started:  # everyone left: nobody needs it
                pending.scope.cancel()
                if self._renders.get(key) is pending:
                    del self._renders[key]
        return pending.result

    async def _render(self, key: _RenderKey, pending: _Render) -> None:
        try:
            with pending.scope:
                async with self._render_limiter:
                    pending.started = True
                    if self._renders.get(key) is pending:  # later requests get a fresh rendering
                        del self._renders[key]
                    pending.result = await trio.to_thread.run_sync(pending.job)
        except Exception:
            log.exception("rendering the metrics exposition failed")
        finally:
            if self._renders.get(key) is pending:
                del self._renders[key]
            pending.done.set()


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
    "HEALTHY",
    "HEALTHZ",
    "INDEX_HTML",
    "MAX_CLIENTS",
    "MAX_REQUEST_BYTES",
    "MAX_TOKEN_BYTES",
    "METRICS",
    "REFUSAL_LINGER",
    "REQUEST_TIMEOUT",
    "STALL_TIMEOUT",
    "Collects",
    "MetricsServer",
    "Reply",
    "WithoutCreated",
    "check_token",
    "open_listeners",
    "read_token_file",
    "render_exposition",
    "route",
    "text_reply",
]
