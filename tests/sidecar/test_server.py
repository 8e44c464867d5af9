"""The sidecar's HTTP layer over memory streams: routing from the OpenAPI document, validation,
errors, token, deadlines and the client bound. The API runs over a real (not listening) host and DHT."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from physarum.dht.service import KadDHT
from physarum.overlay.host import Host
from physarum.overlay.identity import KeyPair
from physarum.sidecar.api import SidecarApi
from physarum.sidecar.openapi import (
    MAX_BODY_BYTES,
    OPENAPI,
    SchemaError,
    operations,
    request_schema,
    validate,
)
from physarum.sidecar.server import ApiServer, match, routes

TOKEN = "s3cret-token"


class Response:
    def __init__(self, raw: bytes) -> None:
        head, sep, body = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        self.json: Any = json.loads(body)


@pytest.fixture
async def api() -> AsyncIterator[SidecarApi]:
    host = Host(KeyPair.generate(), listen=())
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        yield SidecarApi(host, KadDHT.for_host(host))
        nursery.cancel_scope.cancel()


async def exchange(server: ApiServer, request: bytes, *, eof: bool = True) -> bytes:
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, server_side)
        await client.send_all(request)
        if eof:
            await client.send_eof()
        data = bytearray()
        while chunk := await client.receive_some():
            data += chunk
    return bytes(data)


def req(method: str, target: str, body: bytes | None = None, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1:9081", *headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def ask(server: ApiServer, request: bytes) -> Response:
    return Response(await exchange(server, request))


# -- the document is the routing table --


async def test_every_operation_has_a_handler_and_every_handler_an_operation(api: SidecarApi) -> None:
    assert set(operations().values()) == set(api.handlers)
    assert len(set(operations().values())) == len(operations())  # operationIds are unique
    served = {(m, r.template) for r in routes() for m in r.methods}
    assert served == set(operations())


@pytest.mark.parametrize(
    ("path", "template", "params"),
    [
        ("/v1/info", "/v1/info", {}),
        ("/openapi.json", "/openapi.json", {}),
        ("/v1/peers", "/v1/peers", {}),
        ("/v1/peers/QmX/ping", "/v1/peers/{peer_id}/ping", {"peer_id": "QmX"}),
        ("/v1/records/a%2Fb%20c", "/v1/records/{name}", {"name": "a/b c"}),
        ("/v1/providers/hello", "/v1/providers/{key}", {"key": "hello"}),
    ],
)
def test_match(path: str, template: str, params: dict[str, str]) -> None:
    found = match(routes(), path)
    assert found is not None
    assert (found[0].template, found[1]) == (template, params)


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/info/", "/v1/peers//ping", "/v1/records/", "/v2/info"])
def test_no_match(path: str) -> None:
    assert match(routes(), path) is None


def test_validate() -> None:
    schema = request_schema("/v1/records", "POST")
    assert schema is not None
    validate({"name": "x", "data": {"a": 1}, "endpoints": ["/ip4/1.2.3.4/tcp/1"], "ttl": 60}, schema)
    bad: list[tuple[Any, str]] = [
        ([], "must be object"),
        ({}, "missing field 'name'"),
        ({"name": "x", "extra": 1}, "unknown field 'extra'"),
        ({"name": 5}, "must be string"),
        ({"name": ""}, "too short"),
        ({"name": "x", "ttl": True}, "must be number"),
        ({"name": "x", "ttl": 0}, "must be above 0"),
        ({"name": "x", "ttl": 1e9}, "above"),
        ({"name": "x", "endpoints": [1]}, "body.endpoints[0]: must be string"),
        ({"name": "x", "endpoints": ["/x"] * 33}, "more than 32 items"),
    ]
    for value, reason in bad:
        with pytest.raises(SchemaError) as info:
            validate(value, schema)
        assert reason in str(info.value), value


# -- answers --


async def test_info_and_openapi(api: SidecarApi, autojump_clock: trio.abc.Clock) -> None:
    server = ApiServer(api)
    info = await ask(server, req("GET", "/v1/info"))
    assert info.status == 200 and info.headers["content-type"] == "application/json"
    assert info.json == {"peer_id": str(api.host.peer_id), "addrs": [], "joined": False, "connected_peers": 0}
    doc = await ask(server, req("GET", "/openapi.json"))
    assert doc.status == 200 and doc.json == json.loads(json.dumps(OPENAPI))
    assert (await ask(server, req("GET", "/v1/peers"))).json == {"peers": []}


BIG = b'{"address": "' + b"a" * MAX_BODY_BYTES + b'"}'


@pytest.mark.parametrize(
    ("request_", "status", "code"),
    [
        (req("GET", "/nope"), 404, "not_found"),
        (req("DELETE", "/v1/info"), 405, "method_not_allowed"),
        (req("GET", "/v1/join"), 405, "method_not_allowed"),
        (req("POST", "/v1/join", b"{"), 400, "bad_json"),
        (req("POST", "/v1/join", b"\xff\xfe"), 400, "bad_json"),
        (req("POST", "/v1/join", b'{"address": NaN}'), 400, "bad_json"),
        (req("POST", "/v1/join", b"[]"), 400, "bad_body"),
        (req("POST", "/v1/join", b"[" * 5000 + b"]" * 5000), 400, "bad_json"),
        (req("POST", "/v1/join", b"{}"), 400, "bad_body"),
        (req("POST", "/v1/join"), 400, "bad_body"),
        (req("POST", "/v1/join", b'{"address": 1}'), 400, "bad_body"),
        (req("POST", "/v1/join", b'{"address": "/ip4/1.2.3.4/tcp/1", "x": 1}'), 400, "bad_body"),
        (req("POST", "/v1/join", b'{"address": "junk"}'), 400, "bad_multiaddr"),
        (req("POST", "/v1/join", b'{"address": "/ip4/1.2.3.4/udp/1"}'), 400, "bad_multiaddr"),
        (req("POST", "/v1/join", BIG), 413, "too_large"),
        (req("POST", "/v1/peers/notapeer/ping", b"{}"), 400, "bad_peer_id"),
        (
            req("POST", "/v1/peers/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N/ping", b'{"count": 0}'),
            400,
            "bad_body",
        ),
        (
            req("POST", "/v1/peers/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N/ping", b'{"count": 1.5}'),
            400,
            "bad_body",
        ),
        (req("GET", "/v1/peers/%ff%fe/addrs"), 400, "bad_peer_id"),
        (req("POST", "/v1/records", b'{"name": "x", "endpoints": ["nope"]}'), 400, "bad_multiaddr"),
        (req("GET", "/v1/records/" + "x" * 300), 400, "bad_request"),
        # no network: 503, never a 500
        (req("GET", "/v1/records/x"), 503, "not_joined"),
        (req("POST", "/v1/records", b'{"name": "x"}'), 503, "not_joined"),
        (req("GET", "/v1/providers/x"), 503, "not_joined"),
        (req("POST", "/v1/providers/x"), 503, "not_joined"),
        (req("GET", "/v1/peers/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N/addrs"), 503, "not_joined"),
        (req("POST", "/v1/peers/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N/ping"), 503, "not_joined"),
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET /v1/info HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
    ],
)
async def test_errors(
    api: SidecarApi, autojump_clock: trio.abc.Clock, request_: bytes, status: int, code: str
) -> None:
    response = await ask(ApiServer(api), request_)
    assert (response.status, response.json["error"]) == (status, code), response.json
    assert isinstance(response.json["message"], str) and set(response.json) == {"error", "message"}


async def test_an_oversize_chunked_body_is_refused(api: SidecarApi, autojump_clock: trio.abc.Clock) -> None:
    chunk = b"a" * 4096
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 20 + b"0\r\n\r\n"
    head = b"POST /v1/join HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    response = await ask(ApiServer(api, max_body_bytes=10_000), head + body)
    assert (response.status, response.json["error"]) == (413, "too_large")


# -- the token --


async def test_token(api: SidecarApi, autojump_clock: trio.abc.Clock) -> None:
    server = ApiServer(api, token=TOKEN)
    for headers in [(), ("Authorization: Bearer wrong",), (f"Authorization: Basic {TOKEN}",)]:
        response = await ask(server, req("GET", "/v1/info", None, *headers))
        assert (response.status, response.json["error"]) == (401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    both = (f"Authorization: Bearer {TOKEN}", f"Authorization: Bearer {TOKEN}")
    assert (await ask(server, req("GET", "/v1/info", None, *both))).status == 401
    assert (await ask(server, req("GET", "/v1/info", None, f"Authorization: Bearer {TOKEN}"))).status == 200
    assert (await ask(server, req("GET", "/v1/info", None, f"authorization: bearer {TOKEN}"))).status == 200
    # the document is public; unknown paths are 404 with or without the token
    assert (await ask(server, req("GET", "/openapi.json"))).status == 200
    assert (await ask(server, req("GET", "/nope"))).status == 404


# -- deadlines and bounds --


async def test_a_silent_client_is_dropped_at_the_head_deadline(
    api: SidecarApi, autojump_clock: trio.abc.Clock
) -> None:
    server = ApiServer(api, head_timeout=3.0)
    start = trio.current_time()
    assert await exchange(server, b"GET /v1/info HTTP/1.1\r\nHost: x\r\n", eof=False) == b""
    assert 3.0 <= trio.current_time() - start < 3.5
    assert server.clients == 0


async def test_a_body_that_does_not_arrive_gets_408(api: SidecarApi, autojump_clock: trio.abc.Clock) -> None:
    server = ApiServer(api, body_timeout=2.0)
    head = b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
    response = Response(await exchange(server, head, eof=False))
    assert (response.status, response.json["error"]) == (408, "timeout")


async def test_clients_over_the_bound_get_503(api: SidecarApi, autojump_clock: trio.abc.Clock) -> None:
    server = ApiServer(api, max_clients=1, head_timeout=10.0)
    slow, slow_server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle, slow_server)
        await slow.send_all(b"GET /v1/info HTTP/1.1\r\n")  # holds the one slot
        await trio.testing.wait_all_tasks_blocked()
        busy = await ask(server, req("GET", "/v1/info"))
        assert (busy.status, busy.json["error"]) == (503, "busy")
        assert busy.headers["retry-after"] == "1"
        await slow.send_all(b"Host: x\r\n\r\n")
        await slow.send_eof()
        data = bytearray()
        while chunk := await slow.receive_some():
            data += chunk
        assert Response(bytes(data)).status == 200
    assert server.clients == 0


async def test_bounds_must_be_positive(api: SidecarApi) -> None:
    from physarum.errors import ConfigError

    with pytest.raises(ConfigError):
        ApiServer(api, max_clients=0)
    with pytest.raises(ConfigError):
        ApiServer(api, token="has space")


async def test_an_oversize_head_gets_431(api: SidecarApi, autojump_clock: trio.abc.Clock) -> None:
    server = ApiServer(api, max_head_bytes=1024)
    response = await ask(server, req("GET", "/v1/info", None, "X-Pad: " + "a" * 40_000))
    assert (response.status, response.json["error"]) == (431, "bad_request")


async def test_past_twice_the_bound_connections_are_closed_at_once(
    api: SidecarApi, autojump_clock: trio.abc.Clock
) -> None:
    server = ApiServer(api, max_clients=1, head_timeout=10.0)
    holders = []
    async with trio.open_nursery() as nursery:
        for _ in range(2):  # one served, one waiting to be told 503
            client, server_side = trio.testing.memory_stream_pair()
            holders.append(client)
            nursery.start_soon(server.handle, server_side)
        await trio.testing.wait_all_tasks_blocked()
        assert server.clients == 2
        start = trio.current_time()
        assert await exchange(server, req("GET", "/v1/info")) == b""
        assert trio.current_time() == start
        nursery.cancel_scope.cancel()
    assert server.clients == 0
