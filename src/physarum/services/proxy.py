"""The HTTP proxy pair: a client proxy on 127.0.0.1 and a sidecar beside each instance.

A client asks ``http://127.0.0.1:PORT/SERVICE/PATH``; the client proxy picks the instance with the
lowest RTT (:class:`~physarum.services.selection.Selector`), opens a new stream to it on
``/LCAManagerRequest/1.0`` (PhysarumSM's id) and writes the request there with ``/PATH`` as the
target; the instance's sidecar sends it to ``127.0.0.1:SERVICE_PORT`` and writes the response back,
then closes the stream. One request per stream, as PhysarumSM, so a Go sidecar or client proxy can
sit at either end. HTTP is spoken through h11 on every hop; bodies are relayed chunk by chunk in
both directions at once, so memory stays bounded by the chunk size and the yamux windows.

Errors the proxy makes itself are one line of ``text/plain`` with a header
``physarum-proxy-error`` naming the kind: 400 a malformed request, 404 no service in the path, 503
no instance found, 504 the instance did not answer in time, 502 the instance failed. An idempotent
request (GET, HEAD, PUT, DELETE, OPTIONS) whose instance fails before a response started is sent
once more to the next-best instance, if its body (up to ``retry_buffer_bytes``) could be kept.
"""

from __future__ import annotations

import dataclasses
import http
import logging
import select
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import h11
import trio

from physarum.errors import PEER_FAILURES
from physarum.overlay.identity import PeerId
from physarum.overlay.resources import ResourceLimits
from physarum.services.errors import AllocationError
from physarum.services.registry import UnknownServiceError
from physarum.services.selection import Candidate, Selection

log = logging.getLogger("physarum.services.proxy")

PROTOCOL_ID = "/LCAManagerRequest/1.0"
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS"})
#: Header on the responses the proxies make themselves; its value says which failure.
ERROR_HEADER = b"physarum-proxy-error"
#: Header the client proxy adds to every forwarded response: the instance's peer id and its RTT
#: when chosen (``PEER_ID; rtt-ms=0.412``), so a client can see who answered and why.
INSTANCE_HEADER = b"physarum-instance"
#: The sidecar's kind for "the service did not take the connection": the client proxy may retry.
UPSTREAM_UNREACHABLE = b"upstream-unreachable"

# Per-hop headers (RFC 9110 section 7.6.1) are not forwarded; Content-Length and Transfer-Encoding
# are, so that h11 frames the next hop's body the same way.
#: What a hop may raise when its other end breaks HTTP or goes away.
_HOP_FAILURES: tuple[type[BaseException], ...] = (h11.RemoteProtocolError, *PEER_FAILURES)
_SEND_FAILURES: tuple[type[BaseException], ...] = (h11.LocalProtocolError, *PEER_FAILURES)
_ALL_FAILURES: tuple[type[BaseException], ...] = (h11.ProtocolError, *PEER_FAILURES)

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"expect",
     b"proxy-authenticate", b"proxy-authorization"}
)


@dataclass(frozen=True)
class ProxyOptions:
    """Limits and timeouts of both proxies (seconds, bytes)."""

    chunk_size: int = 262144
    """Bytes read at a time from a socket or stream."""
    max_header_bytes: int = 65536
    """A request or response head larger than this is refused (400 / 502)."""
    idle_timeout: float = 60.0
    """A keep-alive client connection with no new request for this long is closed."""
    request_timeout: float = 30.0
    """A request head (and each later read of its body) must arrive within this."""
    stream_timeout: float = 5.0
    """Opening a stream to an instance (dial and negotiation) may take this long."""
    response_timeout: float = 30.0
    """The response head (and each later read of its body) must arrive within this: else 504."""
    connect_timeout: float = 5.0
    """The sidecar's connection to the service may take this long."""
    retry_buffer_bytes: int = 1 << 20
    """An idempotent request's body is kept up to this size so it can be retried."""
    upstream_max_idle: int = 16
    """A sidecar keeps up to this many idle keep-alive connections to its service..."""
    upstream_idle_timeout: float = 15.0
    """...each for at most this long (under the usual server keep-alive timeouts)."""
    max_streams_per_instance: int = 128
    """Requests in flight to one instance at once (one stream each); more wait for a slot. A
    sidecar resets streams over its host's limit for the protocol (:func:`sidecar_limits`: 128;
    the host default for other protocols is 32), which would fail requests instead of queueing them."""


class Chooser(Protocol):
    """Which instances may answer a request for a service (:class:`~physarum.services.selection.Selector`,
    or :class:`~physarum.services.placement.Placement`, which also allocates)."""

    async def select(self, service: str) -> Selection:
        """Raises UnknownServiceError (404) or AllocationError (503); else the ranked instances."""
        ...

    def report_failure(self, service: str, peer: PeerId) -> None: ...


class StreamOpener(Protocol):
    """What the client proxy needs of the overlay (:class:`~physarum.services.network.OverlayNetwork`)."""

    async def open_stream(self, peer: PeerId, protocol: str, *, timeout: float) -> trio.abc.HalfCloseableStream:
        """A new stream; raises one of :data:`~physarum.errors.PEER_FAILURES`."""
        ...


class _Gone(Exception):
    """The other end of a hop went away or broke HTTP; the exchange cannot go on."""


_GONE_HOP: tuple[type[BaseException], ...] = (_Gone, *_HOP_FAILURES)
_GONE_ALL: tuple[type[BaseException], ...] = (_Gone, *_ALL_FAILURES)
_GONE_PEER: tuple[type[BaseException], ...] = (_Gone, *PEER_FAILURES)


class _Hop:
    """One HTTP hop: an h11 connection over a stream."""

    def __init__(self, role: type[h11.CLIENT] | type[h11.SERVER], stream: trio.abc.Stream, opts: ProxyOptions) -> None:
        self.conn = h11.Connection(role, max_incomplete_event_size=opts.max_header_bytes)
        self.stream = stream
        self.chunk_size = opts.chunk_size
        self._held = b""

    async def next_event(self, timeout: float, *, flush: _Hop | None = None) -> h11.Event | type[h11.PAUSED]:
        """The next event; before waiting for more data, ``flush``'s held bytes go out. Raises
        h11.RemoteProtocolError, trio.TooSlowError, or one of PEER_FAILURES."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if flush is not None:
                await flush.flush()
            with trio.fail_after(timeout):
                data = await self.stream.receive_some(self.chunk_size)
            self.conn.receive_data(bytes(data))

    def hold(self, event: h11.Event) -> None:
        """Encode ``event`` but send it with the next :meth:`send` or :meth:`flush`: a response
        head and a body that is already there then leave in one write (one overlay frame)."""
        self._held += self.conn.send(event) or b""

    async def flush(self) -> None:
        if self._held:
            data, self._held = self._held, b""
            await self.stream.send_all(data)

    async def send(self, event: h11.Event, *, final: bool = False) -> None:
        """Send ``event`` (after anything held); ``final``: then end the stream's sending side,
        in the same frame when the stream can (a yamux stream's ``send_final``)."""
        data = self._held + (self.conn.send(event) or b"")
        self._held = b""
        if final:
            send_final = getattr(self.stream, "send_final", None)
            if send_final is not None:
                await send_final(data)
                return
            if data:
                await self.stream.send_all(data)
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()
        elif data:
            await self.stream.send_all(data)


def _forwarded(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k not in _HOP_BY_HOP]


async def _send_error(hop: _Hop, status: int, kind: bytes, reason: str) -> None:
    """A one-line text/plain answer; the connection is closed afterwards (its request body, if
    any, was not read)."""
    body = (reason.replace("\n", " ")[:300] + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (ERROR_HEADER, kind),
        (b"connection", b"close"),
    ]
    if hop.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    try:
        await hop.send(h11.Response(status_code=status, headers=headers, reason=http.HTTPStatus(status).phrase))
        await hop.send(h11.Data(data=body))
        await hop.send(h11.EndOfMessage())
    except _SEND_FAILURES:
        pass


class _Body:
    """The body of the client's request, read once from the client and kept (up to a limit) so a
    second attempt can send it again."""

    def __init__(self, hop: _Hop, limit: int, timeout: float) -> None:
        self.hop = hop
        self.limit = limit
        self.timeout = timeout
        self.kept: list[bytes] = []
        self.kept_size = 0
        self.replayable = True
        self.done = False

    async def read(self) -> bytes | None:
        """The next chunk from the client, None at its end; raises _Gone."""
        if self.done:
            return None
        if self.hop.conn.client_is_waiting_for_100_continue:
            await self.hop.send(h11.InformationalResponse(status_code=100, headers=[]))
        try:
            event = await self.hop.next_event(self.timeout)
        except _HOP_FAILURES as e:
            raise _Gone(f"client: {e}") from e
        if isinstance(event, h11.Data):
            data = bytes(event.data)
            if self.replayable:
                self.kept_size += len(data)
                if self.kept_size <= self.limit:
                    self.kept.append(data)
                else:
                    self.replayable = False
                    self.kept.clear()
            return data
        if isinstance(event, h11.EndOfMessage):
            self.done = True
            return None
        raise _Gone("client closed the connection mid-body")


class _AttemptFailed(Exception):
    """An attempt failed before any of its response reached the client; ``status`` is what the
    client gets if no retry follows."""

    def __init__(self, status: int, kind: bytes, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.status = status
        self.kind = kind
        self.reason = reason
        self.retryable = retryable


async def _upload(src: _Body | _Hop, dst: _Hop, replay: list[bytes], timeout: float, *, eof: bool = False) -> None:
    """Send ``replay`` then the rest of ``src``'s body to ``dst``, then end the message (and with
    ``eof`` the stream's sending side: the overlay stream's FIN rides with the body's end). Raises
    _Gone when ``src`` fails (the requester went away mid-body), one of _SEND_FAILURES when
    ``dst`` does."""
    for chunk in replay:
        await dst.send(h11.Data(data=chunk))
    while True:
        if isinstance(src, _Body):
            data = await src.read()
        else:
            try:
                event = await src.next_event(timeout)
            except _HOP_FAILURES as e:
                raise _Gone(f"requester: {e}") from e
            if isinstance(event, h11.Data):
                data = bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                data = None
            else:
                raise _Gone("the requester closed mid-body")
        if data is None:
            break
        await dst.send(h11.Data(data=data))
    await dst.send(h11.EndOfMessage(), final=eof)


async def _relay_response(src: _Hop, dst: _Hop, timeout: float, *, eof: bool = False) -> None:
    """Relay the body of the response whose head was already held on ``dst``; raises _Gone when
    either side fails (the client's connection must then be closed: its response is cut short).
    What ``src`` already delivered is held and goes out in one write when ``src`` must be waited
    for or the response ends (with ``eof``, the stream's FIN too): a short response is one frame."""
    while True:
        try:
            event = await src.next_event(timeout, flush=dst)
        except _HOP_FAILURES as e:
            raise _Gone(f"response cut short: {e}") from e
        try:
            if isinstance(event, h11.Data):
                dst.hold(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await dst.send(h11.EndOfMessage(), final=eof)
                return
            else:
                raise _Gone("response cut short")
        except PEER_FAILURES as e:
            raise _Gone(f"requester gone: {e}") from e


async def _read_response_head(hop: _Hop, timeout: float) -> h11.Response:
    """Raises trio.TooSlowError, h11.RemoteProtocolError, _Gone or one of PEER_FAILURES."""
    while True:
        event = await hop.next_event(timeout)
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.InformationalResponse):
            continue  # 100 Continue and the like are per hop
        raise _Gone("closed before a response")


def split_target(target: bytes) -> tuple[str, bytes] | None:
    """``/SERVICE/REST?QUERY`` -> (``SERVICE``, ``/REST?QUERY``); an absolute-form target's
    authority is dropped first. None when the target is not a path at all."""
    if not target.startswith(b"/"):
        _scheme, sep, absolute = target.partition(b"://")
        if not sep:
            return None
        start = absolute.find(b"/")
        target = absolute[start:] if start >= 0 else b"/"
    path, qmark, query = target.partition(b"?")
    _, _, after = path.partition(b"/")
    name, _slash, rest = after.partition(b"/")
    try:
        service = name.decode("ascii")
    except UnicodeDecodeError:
        return None
    return service, b"/" + rest + qmark + query


class ClientProxy:
    """The client side: serves HTTP/1.1 on ``host:port`` (keep-alive) and forwards each request to
    the best instance of the service its path names (see the module docstring)."""

    def __init__(
        self,
        selector: Chooser,
        network: StreamOpener,
        options: ProxyOptions = ProxyOptions(),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.selector = selector
        self.network = network
        self.options = options
        self.host = host
        self.port = port
        self.requests = 0
        self.retries = 0
        self._slots: dict[PeerId, trio.Semaphore] = {}

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``nursery.start`` returns the bound port.

        Raises:
            OSError: the address cannot be bound.
        """
        await _serve_tcp(self, self.handle_connection, task_status)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection (all its keep-alive requests), then close it."""
        hop = _Hop(h11.SERVER, stream, self.options)
        try:
            while True:
                try:
                    with trio.move_on_after(self.options.idle_timeout):
                        event = await hop.next_event(self.options.request_timeout)
                except h11.RemoteProtocolError as e:
                    await _send_error(hop, 400, b"malformed-request", f"malformed request: {e}")
                    return
                except PEER_FAILURES:
                    return
                if not isinstance(event, h11.Request):
                    return  # idle timeout or the client closed
                self.requests += 1
                try:
                    await self._handle_request(hop, event)
                except _Gone as e:
                    log.debug("connection ended: %s", e)
                    return
                if hop.conn.our_state is not h11.DONE or hop.conn.their_state is not h11.DONE:
                    return
                hop.conn.start_next_cycle()
        finally:
            await stream.aclose()

    async def _handle_request(self, hop: _Hop, request: h11.Request) -> None:
        split = split_target(request.target)
        if split is None:
            await _send_error(hop, 400, b"malformed-request", "malformed request target")
            return
        service, target = split
        if not service:
            await _send_error(hop, 404, b"no-service", "no service in the path: ask for /SERVICE/PATH")
            return
        try:
            selection = await self.selector.select(service)
        except UnknownServiceError as e:
            await _send_error(hop, 404, b"unknown-service", str(e))
            return
        except AllocationError as e:
            await _send_error(hop, 503, b"no-instance", f"no instance of {service}: {e}")
            return
        if not selection.ranked:
            await _send_error(hop, 503, b"no-instance", f"no instance of {service} could be found")
            return
        retry = request.method in IDEMPOTENT
        body = _Body(hop, self.options.retry_buffer_bytes if retry else 0, self.options.request_timeout)
        headers = _forwarded(list(request.headers))
        if not any(k == b"host" for k, _ in headers):
            headers.append((b"host", service.encode()))
        outgoing = h11.Request(method=request.method, target=target, headers=headers)
        failure: _AttemptFailed | None = None
        tried: set[PeerId] = set()
        candidate = selection.ranked[0]
        for attempt in range(2 if retry else 1):
            if attempt:
                if not (failure and failure.retryable and body.replayable):
                    break
                nxt = await self._next_candidate(service, selection, tried)
                if nxt is None:
                    break
                candidate = nxt
                self.retries += 1
                log.info("%s: retrying %s on %s", service, request.method.decode(), candidate.peer_id)
            tried.add(candidate.peer_id)
            try:
                await self._attempt(hop, service, candidate, outgoing, body)
                return
            except _AttemptFailed as e:
                failure = e
                if e.retryable:
                    self.selector.report_failure(service, candidate.peer_id)
        assert failure is not None
        await _send_error(hop, failure.status, failure.kind, failure.reason)

    async def _next_candidate(self, service: str, selection: Selection, tried: set[PeerId]) -> Candidate | None:
        """The next-best instance not tried yet: from ``selection``, else from a new selection
        (which looks the service up again, and with placement allocates one when none is left:
        an instance culled or killed since the selection)."""
        for candidate in selection.ranked:
            if candidate.peer_id not in tried:
                return candidate
        try:
            fresh = await self.selector.select(service)
        except (UnknownServiceError, AllocationError) as e:
            log.info("%s: no other instance to retry on: %s", service, e)
            return None
        return next((c for c in fresh.ranked if c.peer_id not in tried), None)

    async def _attempt(self, hop: _Hop, service: str, candidate: Candidate, request: h11.Request, body: _Body) -> None:
        """Forward ``request`` to ``candidate`` once one of its ``max_streams_per_instance`` slots is
        free; raises _AttemptFailed before the response head was forwarded, _Gone after it (or when
        the client is gone)."""
        peer = candidate.peer_id
        slots = self._slots.get(peer)
        if slots is None:
            slots = self._slots[peer] = trio.Semaphore(self.options.max_streams_per_instance)
        try:
            async with slots:
                await self._attempt_now(hop, service, candidate, request, body)
        finally:
            if slots.value == self.options.max_streams_per_instance and self._slots.get(peer) is slots:
                del self._slots[peer]  # idle: instances come and go, the map must not grow with them

    async def _attempt_now(self, hop: _Hop, service: str, candidate: Candidate, request: h11.Request,
                           body: _Body) -> None:
        opts = self.options
        peer = candidate.peer_id
        try:
            stream = await self.network.open_stream(peer, PROTOCOL_ID, timeout=opts.stream_timeout)
        except PEER_FAILURES as e:
            raise _AttemptFailed(502, b"instance-unreachable", f"instance {peer} of {service} unreachable: {e}",
                                 retryable=True) from e
        up = _Hop(h11.CLIENT, stream, opts)
        replay = list(body.kept)
        failed: _AttemptFailed | None = None
        try:
            # The head first, before anything reads: with a lazy stream the protocol proposal and
            # the head then leave in one frame; the stream's FIN follows the request's end.
            bodiless = _bodiless(request)
            try:
                if bodiless:
                    # Nothing to upload (a GET): the request and the stream's FIN leave with the
                    # proposal in one frame, and no task runs beside the response.
                    while await body.read() is not None:
                        pass
                    up.hold(request)
                    await up.send(h11.EndOfMessage(), final=True)
                else:
                    await up.send(request)
            except _SEND_FAILURES as e:
                raise _AttemptFailed(502, b"instance-unreachable",
                                     f"instance {peer} of {service} unreachable: {e}", retryable=True) from e
            if bodiless:
                await self._respond(hop, up, service, candidate)
                return
            async with trio.open_nursery() as nursery:
                async def upload() -> None:
                    try:
                        await _upload(body, up, replay, opts.request_timeout, eof=True)
                    except _Gone:
                        raise
                    except _SEND_FAILURES as e:
                        # The instance stopped reading; its response (if any) still decides.
                        log.debug("request to %s cut short: %s", peer, e)

                nursery.start_soon(upload)
                # _AttemptFailed is caught inside the nursery: out of it, trio would wrap it in a group.
                try:
                    await self._respond(hop, up, service, candidate)
                except _AttemptFailed as e:
                    failed = e
                # Done, failed, or an early answer (the instance did not want the rest of the body).
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The upload task raised _Gone (the client went away) while the head was awaited.
            gone = group.subgroup(_Gone)
            if gone is not None:
                raise gone.exceptions[0] from None
            raise
        finally:
            await stream.aclose()
        if failed is not None:
            raise failed


    async def _respond(self, hop: _Hop, up: _Hop, service: str, candidate: Candidate) -> None:
        """Read the instance's response head and relay the response to the client; raises
        _AttemptFailed before anything reached the client, _Gone after."""
        opts = self.options
        peer = candidate.peer_id
        try:
            head = await _read_response_head(up, opts.response_timeout)
        except trio.TooSlowError as e:
            raise _AttemptFailed(504, b"upstream-timeout",
                                 f"instance {peer} of {service} did not answer within "
                                 f"{opts.response_timeout:g} s", retryable=False) from e
        except _GONE_HOP as e:
            raise _AttemptFailed(502, b"instance-failed", f"instance {peer} of {service} failed: {e}",
                                 retryable=True) from e
        kind = dict(head.headers).get(ERROR_HEADER)
        if kind == UPSTREAM_UNREACHABLE:
            raise _AttemptFailed(head.status_code, kind,
                                 f"instance {peer} of {service}: service not accepting connections",
                                 retryable=True)
        served_by = f"{peer}; rtt-ms={candidate.rtt_ms:.3f}".encode()
        hop.hold(h11.Response(status_code=head.status_code,
                              headers=[*_forwarded(list(head.headers)), (INSTANCE_HEADER, served_by)],
                              reason=head.reason))
        await _relay_response(up, hop, opts.response_timeout)


def _bodiless(request: h11.Request) -> bool:
    """Whether ``request`` has no body (h11 then has its end already: nothing to stream)."""
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return False
    return True


#: Inbound ``/LCAManagerRequest/1.0`` streams one client proxy may hold open on a sidecar's host at
#: once (the host's default for a protocol is 32): one client proxy carries many users' requests.
SIDECAR_STREAM_LIMIT = 128


def sidecar_limits(limits: ResourceLimits | None = None) -> ResourceLimits:
    """``limits`` (default: the host's defaults) with :data:`SIDECAR_STREAM_LIMIT` for the sidecar's protocol."""
    limits = limits or ResourceLimits()
    return dataclasses.replace(
        limits, protocol_stream_limits={**limits.protocol_stream_limits, PROTOCOL_ID: SIDECAR_STREAM_LIMIT}
    )


class Sidecar:
    """The instance side: serves ``/LCAManagerRequest/1.0`` streams by forwarding each request to
    the service at ``service_host:service_port`` and streaming its response back.

    ``last_request`` is trio's clock at the latest request (None before the first): PhysarumSM's
    allocator culls instances by the seconds since then, served by :class:`IdleReporter`.
    """

    def __init__(
        self,
        service_host: str,
        service_port: int,
        options: ProxyOptions = ProxyOptions(),
        *,
        connect: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
    ) -> None:
        self.service_host = service_host
        self.service_port = service_port
        self.options = options
        self._connect = connect or self._connect_tcp
        self.requests = 0
        self.connections = 0
        """Connections made to the service (the others were reused)."""
        self.last_request: float | None = None
        self._idle: list[tuple[_Hop, float]] = []

    async def _connect_tcp(self) -> trio.abc.Stream:
        return await trio.open_tcp_stream(self.service_host, self.service_port)

    # -- keep-alive connections to the service --

    async def _upstream(self) -> tuple[_Hop, bool]:
        """An idle connection to the service that is still open, else a new one; and whether it
        was reused. Raises OSError or trio.TooSlowError."""
        now = trio.current_time()
        while self._idle:
            hop, since = self._idle.pop()
            if now - since < self.options.upstream_idle_timeout and not _closed_by_peer(hop.stream):
                return hop, True
            await hop.stream.aclose()
        with trio.fail_after(self.options.connect_timeout):
            stream = await self._connect()
        self.connections += 1
        return _Hop(h11.CLIENT, stream, self.options), False

    async def _release(self, hop: _Hop) -> None:
        """Keep ``hop`` for the next request if its exchange completed and both sides keep it
        alive; close it otherwise."""
        conn = hop.conn
        if (conn.our_state is h11.DONE and conn.their_state is h11.DONE
                and len(self._idle) < self.options.upstream_max_idle):
            conn.start_next_cycle()
            self._idle.append((hop, trio.current_time()))
        else:
            await hop.stream.aclose()

    async def aclose(self) -> None:
        """Close the idle connections to the service."""
        idle, self._idle = self._idle, []
        for hop, _ in idle:
            await hop.stream.aclose()

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one request from a client proxy (the host closes the stream afterwards)."""
        opts = self.options
        down = _Hop(h11.SERVER, stream, opts)
        try:
            event = await down.next_event(opts.request_timeout)
        except h11.RemoteProtocolError as e:
            await _send_error(down, 400, b"malformed-request", f"malformed request: {e}")
            return
        except PEER_FAILURES:
            return
        if not isinstance(event, h11.Request):
            return
        self.requests += 1
        self.last_request = trio.current_time()
        where = f"{self.service_host}:{self.service_port}"
        headers = dict(event.headers)
        bodiless = headers.get(b"content-length", b"0") == b"0" and b"transfer-encoding" not in headers
        request = h11.Request(method=event.method, target=event.target, headers=_forwarded(list(event.headers)))
        while True:
            try:
                up, reused = await self._upstream()
            except (OSError, trio.TooSlowError) as e:
                await _send_error(down, 502, UPSTREAM_UNREACHABLE, f"service at {where} not reachable: {e}")
                return
            try:
                again = await self._exchange(down, up, request, where, retry=reused and bodiless)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await up.stream.aclose()
                raise
            if not again:
                await self._release(up)
                return
            # The service had closed the idle connection we took (a keep-alive timeout): the
            # request had no body, so it is sent again on a new connection.
            await up.stream.aclose()

    async def _exchange(self, down: _Hop, up: _Hop, request: h11.Request, where: str, *, retry: bool) -> bool:
        """One request and its response between the client proxy's stream and the service; True
        when it should be sent again on a new connection (``retry`` and the service closed the
        connection before answering)."""
        opts = self.options
        try:
            await up.send(request)
        except _SEND_FAILURES as e:
            if retry:
                return True
            await _send_error(down, 502, b"upstream-failed", f"service at {where} failed: {e}")
            return False

        if _bodiless(request):
            try:
                await _upload(down, up, [], opts.request_timeout)  # ends at once: no task beside
            except _GONE_ALL as e:
                log.debug("request to %s cut short: %s", where, e)
            return await self._respond(down, up, where, retry=retry)
        async with trio.open_nursery() as nursery:

            async def upload() -> None:
                try:
                    await _upload(down, up, [], opts.request_timeout)
                except _Gone as e:
                    # The client proxy went away mid-body: nobody is left to answer, and the
                    # service would wait for the rest until its own timeout. Drop it all.
                    log.debug("request to %s abandoned: %s", where, e)
                    nursery.cancel_scope.cancel()
                except _SEND_FAILURES as e:
                    log.debug("request to %s cut short: %s", where, e)  # its answer may still come

            nursery.start_soon(upload)
            try:
                return await self._respond(down, up, where, retry=retry)
            finally:
                nursery.cancel_scope.cancel()  # the response is over: so is the request
        return False  # abandoned (the connection to the service is not reused: h11 is mid-request)

    async def _respond(self, down: _Hop, up: _Hop, where: str, *, retry: bool) -> bool:
        opts = self.options
        try:
            head = await _read_response_head(up, opts.response_timeout)
        except trio.TooSlowError:
            await _send_error(down, 504, b"upstream-timeout",
                              f"service at {where} did not answer within {opts.response_timeout:g} s")
            return False
        except _GONE_HOP as e:
            if retry:
                return True
            await _send_error(down, 502, b"upstream-failed", f"service at {where} failed: {e}")
            return False
        try:
            down.hold(h11.Response(status_code=head.status_code,
                                   headers=_forwarded(list(head.headers)), reason=head.reason))
            await _relay_response(up, down, opts.response_timeout, eof=True)
        except _GONE_PEER as e:
            log.debug("response from %s cut short: %s", where, e)
        return False


def _closed_by_peer(stream: trio.abc.Stream) -> bool:
    """Whether an idle connection became readable (the peer closed it, or sent what it should
    not have): either way it cannot carry another request. Streams without a socket are trusted."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Listening(Protocol):
    host: str
    port: int


async def _serve_tcp(
    server: _Listening,
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    task_status: trio.TaskStatus[int],
) -> None:
    """Listen on ``server.host:server.port`` (port 0: any), note the bound port there, report it
    started, and serve each connection with ``handler`` until cancelled."""
    listeners = await trio.open_tcp_listeners(server.port, host=server.host)
    server.port = listeners[0].socket.getsockname()[1]
    task_status.started(server.port)
    await trio.serve_listeners(handler, listeners)


class IdleReporter:
    """PhysarumSM's sidecar metrics port: any GET answers the seconds since the sidecar's latest
    request (since it started, before the first) as a plain decimal number."""

    def __init__(self, sidecar: Sidecar, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sidecar = sidecar
        self.host = host
        self.port = port
        self._started = 0.0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``nursery.start`` returns the bound port.

        Raises:
            OSError: the address cannot be bound.
        """
        self._started = trio.current_time()
        await _serve_tcp(self, self._serve, task_status)

    def idle_seconds(self) -> float:
        since = self.sidecar.last_request if self.sidecar.last_request is not None else self._started
        return trio.current_time() - since

    async def _serve(self, stream: trio.abc.Stream) -> None:
        hop = _Hop(h11.SERVER, stream, ProxyOptions())
        try:
            event = await hop.next_event(ProxyOptions.request_timeout)
            if isinstance(event, h11.Request):
                body = f"{self.idle_seconds():.0f}\n".encode()
                await hop.send(h11.Response(status_code=200, headers=[
                    (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")]))
                await hop.send(h11.Data(data=body))
                await hop.send(h11.EndOfMessage())
        except _ALL_FAILURES:
            pass
        finally:
            await stream.aclose()


__all__ = [
    "ERROR_HEADER",
    "IDEMPOTENT",
    "INSTANCE_HEADER",
    "PROTOCOL_ID",
    "SIDECAR_STREAM_LIMIT",
    "ClientProxy",
    "IdleReporter",
    "ProxyOptions",
    "Sidecar",
    "StreamOpener",
    "sidecar_limits",
    "split_target",
]
