"""The sidecar's HTTP server: JSON over HTTP/1.1 through h11, one request per connection.

Routes are the paths of :data:`~physarum.sidecar.openapi.OPENAPI` (``{name}`` segments match one
percent-decoded path segment); the handler of each is the :class:`~physarum.sidecar.api.SidecarApi`
method named by its ``operationId``. Every answer is a JSON object; errors are
``{"error": CODE, "message": TEXT}``:

- 400 ``bad_request`` (h11 refused the request), ``bad_json``, ``bad_body`` (the schema), or a code
  from the operation (``bad_peer_id``, ``bad_multiaddr``, ``bad_record``);
- 401 ``unauthorized``: a token is set and the ``/v1`` request does not carry it
  (``/openapi.json`` is always served);
- 404 ``not_found`` (no such path), 405 ``method_not_allowed`` (with ``Allow``);
- 408 ``timeout``: the body did not arrive within ``body_timeout``;
- 413 ``too_large``: a body over ``max_body_bytes``; 431: a request head still incomplete after
  ``max_head_bytes`` (h11's bound: a head is read at most that many bytes at a time, so one of up
  to twice the bound may pass);
- 503 ``busy`` when ``max_clients`` are being served (as many more are told so, within their head
  deadline; past that, connections are closed at once); 503/504 from the operations (network);
- 500 ``internal`` only for a bug (logged with its traceback): never from client input.

A client that sends no complete head within ``head_timeout`` is disconnected without an answer.
An empty body counts as ``{}``. Every response carries ``Connection: close``.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

from physarum.errors import ConfigError
from physarum.monitor.http import check_token, open_listeners
from physarum.sidecar.api import JSON, ApiError, Result, SidecarApi
from physarum.sidecar.openapi import (
    MAX_BODY_BYTES,
    OPENAPI,
    SchemaError,
    query_parameters,
    request_schema,
    validate,
)

log = logging.getLogger(__name__)

#: Largest request head (request line and headers), bytes.
MAX_HEAD_BYTES = 16384
#: Seconds a client has to send its request head.
HEAD_TIMEOUT = 5.0
#: Seconds a client has to send its body once the head is in.
BODY_TIMEOUT = 5.0
#: Clients served at once; the next ones get 503 ``busy``.
MAX_CLIENTS = 64

#: Seconds the rest of a request is read and dropped after the answer (closing with unread data
#: resets the connection, and the client's kernel may then drop the answer before it is read).
LINGER = 1.0

_RECEIVE_SIZE = 16384


@dataclass(frozen=True)
class Route:
    """One path template of the document: its pattern and ``METHOD -> operationId``."""

    template: str
    pattern: re.Pattern[str]
    methods: Mapping[str, str]


def routes() -> list[Route]:
    """The routes of :data:`OPENAPI`, fixed paths before templated ones."""
    out = []
    for template, item in OPENAPI["paths"].items():
        regex = "".join(
            f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[a-z_]+\})", template)
        )
        methods = {m.upper(): op["operationId"] for m, op in item.items() if m != "parameters"}
        out.append(Route(template, re.compile(regex), methods))
    return sorted(out, key=lambda r: "{" in r.template)


def match(table: list[Route], path: str) -> tuple[Route, dict[str, str]] | None:
    """The route of ``path`` and its (percent-decoded) parameters; None if no route matches."""
    for r in table:
        m = r.pattern.fullmatch(path)
        if m is not None:
            return r, {k: unquote(v) for k, v in m.groupdict().items()}
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(data: bytes) -> Any:
    """The JSON value of ``data`` (``{}`` if empty).

    Raises:
        ApiError: 400 ``bad_json``: not UTF-8 JSON (NaN and Infinity included), or nested too deep.
    """
    if not data.strip():
        return {}
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise ApiError(400, "bad_json", f"the body is not JSON: {str(e)[:120]}") from None


def parse_query(template: str, method: str, query: str) -> dict[str, str]:
    """The query parameters ``method template`` declares, checked against their schemas (integers
    in range); others are ignored, as HTTP servers usually do.

    Raises:
        ApiError: 400 ``bad_query``: a declared parameter given twice, or not matching its schema.
    """
    out: dict[str, str] = {}
    declared = query_parameters(template, method)
    if not declared:
        return out
    try:
        given = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=64)
    except ValueError as e:
        raise ApiError(400, "bad_query", f"bad query string: {e}") from None
    for param in declared:
        name, schema = param["name"], param["schema"]
        values = given.get(name)
        if values is None:
            continue
        if len(values) != 1:
            raise ApiError(400, "bad_query", f"{name} given {len(values)} times")
        text = values[0]
        value: Any = text
        if schema.get("type") == "integer":
            if not re.fullmatch(r"-?[0-9]{1,20}", text):
                raise ApiError(400, "bad_query", f"{name} must be an integer, not {text[:40]!r}")
            value = int(text)
        try:
            validate(value, schema, name)
        except SchemaError as e:
            raise ApiError(400, "bad_query", str(e)) from None
        out[name] = str(value)
    return out


def error_body(code: str, message: str) -> JSON:
    return {"error": code, "message": message}


class ApiServer:
    """Serve ``api`` over HTTP on ``host:port`` (host None: every interface; port 0: any free port).

    Raises:
        ConfigError: ``token`` is not a valid bearer token, or a bound is not positive.
    """

    def __init__(
        self,
        api: SidecarApi,
        *,
        host: str | None = "127.0.0.1",
        port: int = 9081,
        token: str | None = None,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        head_timeout: float = HEAD_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_clients: int = MAX_CLIENTS,
        linger: float = LINGER,
    ) -> None:
        for name, value in (
            ("max_head_bytes", max_head_bytes),
            ("max_body_bytes", max_body_bytes),
            ("head_timeout", head_timeout),
            ("body_timeout", body_timeout),
            ("max_clients", max_clients),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        self.api = api
        self.host = host
        self.port = port
        self.token = None if token is None else check_token(token).encode()
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.max_clients = max_clients
        self.linger = linger
        self.routes = routes()
        self.addresses: list[tuple[str, int]] = []
        self.clients = 0

    @property
    def urls(self) -> list[str]:
        """``http://HOST:PORT`` of every bound address."""
        return [f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}" for h, p in self.addresses]

    async def run(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled.

        Raises:
            OSError: the address cannot be bound.
        """
        listeners = await open_listeners(self.host, self.port)
        try:
            self.addresses = [
                (str(lst.socket.getsockname()[0]), int(lst.socket.getsockname()[1])) for lst in listeners
            ]
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self.handle, listeners)
                task_status.started(list(self.addresses))
                await trio.sleep_forever()
        finally:
            for lst in listeners:
                await trio.aclose_forcefully(lst)

    async def handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        """Serve one connection (one request), then close it."""
        if self.clients >= 2 * self.max_clients:  # even the 503s are over their bound: just close
            await trio.aclose_forcefully(stream)
            return
        busy = self.clients >= self.max_clients
        self.clients += 1
        try:
            await self._serve(stream, busy)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("sidecar client: %s", e)
        except Exception:
            log.exception("sidecar request failed")
        finally:
            self.clients -= 1
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.abc.HalfCloseableStream, busy: bool) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_bytes)
        request: h11.Request | None = None
        try:
            with trio.move_on_after(self.head_timeout):
                request = await self._receive_head(conn, stream)
        except h11.RemoteProtocolError as e:
            status = e.error_status_hint
            await self._send(stream, conn, status, error_body("bad_request", HTTPStatus(status).phrase))
            return
        if request is None:
            return
        if busy:
            await self._send(
                stream, conn, 503, error_body("busy", "too many clients, try again"), [("Retry-After", "1")]
            )
            return
        status, body, headers = await self._answer(conn, stream, request)
        await self._send(stream, conn, status, body, headers)

    async def _receive_head(self, conn: h11.Connection, stream: trio.abc.ReceiveStream) -> h11.Request | None:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                return event
            if event is not h11.NEED_DATA:
                return None
            # never more than the bound at once: h11 checks it only on what is buffered incomplete
            data = await stream.receive_some(min(_RECEIVE_SIZE, self.max_head_bytes))
            conn.receive_data(bytes(data))
            if not data:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    return None  # hung up mid-head: nobody to answer
                return event if isinstance(event, h11.Request) else None

    async def _receive_body(self, conn: h11.Connection, stream: trio.abc.ReceiveStream) -> bytes:
        """The request body, at most ``max_body_bytes``.

        Raises:
            ApiError: 413 over the limit, 408 not in time, 400 h11 refused it.
        """
        parts: list[bytes] = []
        size = 0
        with trio.move_on_after(self.body_timeout) as scope:
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as e:
                    raise ApiError(400, "bad_request", f"bad body: {e}") from None
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > self.max_body_bytes:
                        raise ApiError(413, "too_large", f"the body is over {self.max_body_bytes} bytes")
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    return b"".join(parts)
                elif event is h11.NEED_DATA:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    conn.receive_data(bytes(data))
                else:
                    raise ApiError(400, "bad_request", "the connection ended inside the body")
        assert scope.cancelled_caught
        raise ApiError(408, "timeout", f"the body did not arrive within {self.body_timeout:g} s")

    def _authorized(self, request: h11.Request) -> bool:
        if self.token is None:
            return True
        values = [v for k, v in request.headers if k == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token)

    async def _answer(
        self, conn: h11.Connection, stream: trio.abc.ReceiveStream, request: h11.Request
    ) -> tuple[int, JSON, list[tuple[str, str]]]:
        try:
            split = urlsplit(request.target.decode("ascii"))
            path = split.path
        except (ValueError, UnicodeDecodeError):
            return 400, error_body("bad_request", "bad request target"), []
        found = match(self.routes, path)
        if found is None:
            return 404, error_body("not_found", f"no such path: {path[:200]}"), []
        route, params = found
        method = request.method.decode("ascii", "replace")
        if method not in route.methods:
            allow = ", ".join(sorted(route.methods))
            return (
                405,
                error_body("method_not_allowed", f"{route.template} allows {allow}"),
                [("Allow", allow)],
            )
        if route.template.startswith("/v1/") and not self._authorized(request):
            body = error_body("unauthorized", "send Authorization: Bearer TOKEN")
            return 401, body, [("WWW-Authenticate", "Bearer")]
        try:
            params.update(parse_query(route.template, method, split.query))
            result = await self._call(conn, stream, request, route, method, params)
        except ApiError as e:
            return e.status, error_body(e.code, e.message), []
        except Exception:  # a bug: logged with its traceback, and the client still gets JSON
            log.exception("sidecar: %s %s failed", method, route.template)
            return 500, error_body("internal", "internal error (logged by the sidecar)"), []
        return result[0], result[1], []

    async def _call(
        self,
        conn: h11.Connection,
        stream: trio.abc.ReceiveStream,
        request: h11.Request,
        route: Route,
        method: str,
        params: dict[str, str],
    ) -> Result:
        for name, value in params.items():
            if not value or len(value) > 256:
                raise ApiError(
                    400,
                    "bad_request",
                    f"{name} must be 1 to 256 characters, not {len(value)}: {value[:20]!r}",
                )
        lengths = [v for k, v in request.headers if k == b"content-length"]
        if lengths and int(lengths[0]) > self.max_body_bytes:  # h11 checked it is digits
            raise ApiError(413, "too_large", f"the body is over {self.max_body_bytes} bytes")
        raw = await self._receive_body(conn, stream)
        schema = request_schema(route.template, method)
        body: JSON = {}
        if schema is not None:
            value = parse_body(raw)
            try:
                validate(value, schema)
            except SchemaError as e:
                raise ApiError(400, "bad_body", str(e)) from None
            body = value
        return await self.api.handlers[route.methods[method]](params, body)

    async def _send(
        self,
        stream: trio.abc.HalfCloseableStream,
        conn: h11.Connection,
        status: int,
        body: JSON,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        data = json.dumps(body, ensure_ascii=False).encode() + b"\n"
        head = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
            *(headers or []),
        ]
        try:
            out = conn.send(
                h11.Response(status_code=status, headers=head, reason=HTTPStatus(status).phrase.encode())
            )
            out = (
                (out or b"")
                + (conn.send(h11.Data(data=data)) or b"")
                + (conn.send(h11.EndOfMessage()) or b"")
            )
        except h11.LocalProtocolError:
            return  # h11 cannot answer in this state (the head never came): just close
        await stream.send_all(out)
        await stream.send_eof()
        # Unread request bytes would make the close a reset that can destroy the answer in flight:
        # drain what the client still sends, briefly.
        with trio.move_on_after(self.linger):
            while await stream.receive_some(_RECEIVE_SIZE):
                pass


__all__ = [
    "BODY_TIMEOUT",
    "HEAD_TIMEOUT",
    "LINGER",
    "MAX_CLIENTS",
    "MAX_HEAD_BYTES",
    "ApiServer",
    "Route",
    "match",
    "routes",
]
