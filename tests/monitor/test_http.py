"""The /metrics HTTP server (h11) over memory streams: routes, negotiation, gzip, errors, bounds."""

from __future__ import annotations

import gzip

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from physarum.monitor.http import INDEX_HTML, METRICS, Reply, route
from physarum.monitor.metrics import CONTENT_TYPE, MetricsServer, MonitorMetrics

PEER = "12D3KooWQrEbutuv991JegVdQhzqv6v3MKjckZRtkdKnKqvHuNVM"


def registry_with_a_peer() -> CollectorRegistry:
    registry = CollectorRegistry()
    MonitorMetrics(registry, hostname="h").observe(PEER, 0.001, 1.0)
    return registry


class Response:
    def __init__(self, raw: bytes) -> None:
        head, sep, self.body = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split(" ")[1])
        self.headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}


async def exchange(server: MetricsServer, request: bytes, *, close: bool = False) -> bytes:
    """Send ``request`` (then EOF if ``close``) and read until the server closes."""
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, server_side)
        await client.send_all(request)
        if close:
            await client.send_eof()
        data = bytearray()
        while chunk := await client.receive_some():
            data += chunk
    assert server._clients == 0
    return bytes(data)


async def ask(server: MetricsServer, request: bytes) -> Response:
    return Response(await exchange(server, request))


def get(target: str = "/metrics", *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: node:9100", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- routing (pure) --


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        (b"GET", b"/metrics", METRICS),
        (b"HEAD", b"/metrics", METRICS),
        (b"GET", b"/metrics?name[]=ping_rtt", METRICS),
        (b"GET", b"http://127.0.0.1:9100/metrics", METRICS),
        (b"GET", b"/", 200),
        (b"GET", b"/?x=1", 200),
        (b"GET", b"http://127.0.0.1:9100", 200),
        (b"GET", b"/metricsx", 404),
        (b"GET", b"/metrics/", 404),
        (b"GET", b"/favicon.ico", 404),
        (b"POST", b"/metrics", 405),
        (b"DELETE", b"/", 405),
        (b"OPTIONS", b"*", 405),
    ],
)
def test_route(method: bytes, target: bytes, expected: str | int) -> None:
    routed = route(method, target)
    if isinstance(expected, str):
        assert routed == expected
    else:
        assert isinstance(routed, Reply) and routed.status == expected
        if expected == 405:
            assert ("Allow", "GET, HEAD") in routed.headers


# -- answers --


async def test_get_metrics() -> None:
    r = await ask(MetricsServer(registry_with_a_peer()), get("/metrics", "Accept: */*"))
    assert r.status_line == "HTTP/1.1 200 OK"
    assert r.headers["content-type"] == CONTENT_TYPE
    assert r.headers["content-length"] == str(len(r.body))
    assert r.headers["connection"] == "close"
    assert "content-encoding" not in r.headers
    assert f'ping_rtt{{host="h",targetHost="{PEER}"}} 1.0'.encode() in r.body
    assert b"_created" not in r.body


async def test_head_has_the_get_headers_and_no_body() -> None:
    server = MetricsServer(registry_with_a_peer())
    got = await ask(server, get("/metrics"))
    head = await ask(server, get("/metrics", method="HEAD"))
    assert head.status == 200 and head.body == b""
    assert head.headers == got.headers


async def test_index_page_links_to_metrics() -> None:
    server = MetricsServer(CollectorRegistry())
    r = await ask(server, get("/"))
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.body == INDEX_HTML and b'href="metrics"' in r.body
    head = await ask(server, get("/", method="HEAD"))
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == str(len(INDEX_HTML))


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (get("/nope"), 404),
        (get("/metricsx"), 404),
        (get("/metrics", method="POST"), 405),
        (get("/metrics", "Content-Length: 5", method="POST") + b"hello", 405),
        (get("/", method="PUT"), 405),
        (b"GET /metrics HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0 needs no Host
        (get("http://node:9100/metrics?name[]=ping_rtt"), 200),
    ],
)
async def test_statuses(request_: bytes, status: int) -> None:
    r = await ask(MetricsServer(registry_with_a_peer()), request_)
    assert r.status == status
    if status == 405:
        assert r.headers["allow"] == "GET, HEAD"
        assert b"ping_rtt" not in r.body


async def test_openmetrics_for_prometheus() -> None:
    accept = (
        "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
        "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    r = await ask(MetricsServer(registry_with_a_peer()), get("/metrics", accept))
    assert r.status == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert r.body.endswith(b"# EOF\n") and b"_created" not in r.body
    families = {f.name: f for f in openmetrics_families(r.body.decode())}
    assert families["ping_rtt"].samples[0].labels == {"targetHost": PEER, "host": "h"}
    assert "accept" in r.headers["vary"].lower()


async def test_gzip_when_accepted() -> None:
    server = MetricsServer(registry_with_a_peer())
    r = await ask(server, get("/metrics", "Accept-Encoding: gzip, deflate"))
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["content-length"] == str(len(r.body))
    assert f'targetHost="{PEER}"'.encode() in gzip.decompress(r.body)
    head = await ask(server, get("/metrics", "Accept-Encoding: gzip", method="HEAD"))
    assert head.headers["content-encoding"] == "gzip" and head.body == b""


async def test_repeated_accept_headers_are_one_list() -> None:
    server = MetricsServer(registry_with_a_peer())
    r = await ask(server, get("/metrics", "Accept: text/html", "Accept: application/openmetrics-text"))
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    r = await ask(server, get("/metrics", "Accept-Encoding: br", "Accept-Encoding: gzip"))
    assert r.headers["content-encoding"] == "gzip"


async def test_name_filter() -> None:
    r = await ask(MetricsServer(registry_with_a_peer()), get("/metrics?name[]=physarum_peer_reachable"))
    assert r.body.splitlines() == [
        b"# HELP physarum_peer_reachable 1 if the last ping to the peer succeeded, 0 if it failed or the peer disconnected.",
        b"# TYPE physarum_peer_reachable gauge",
        f'physarum_peer_reachable{{peer="{PEER}"}} 1.0'.encode(),
    ]


async def test_request_split_into_bytes() -> None:
    server = MetricsServer(CollectorRegistry())
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, server_side)
        for byte in get("/nope"):
            await client.send_all(bytes([byte]))
        data = bytearray()
        while chunk := await client.receive_some():
            data += chunk
    assert data.startswith(b"HTTP/1.1 404 Not Found\r\n")


# -- malformed requests: 400 (or 431) at once, without rendering --


class NeverRender(MetricsServer):
    def render(self, **kwargs: object) -> tuple[bytes, list[tuple[str, str]]]:
        raise AssertionError("rendered for a bad request")


@pytest.mark.parametrize(
    "request_",
    [
        b"GET /metrics HTTP/1.1\n\n",  # bare LF, and HTTP/1.1 without Host: h11 rejects it
        b"GET /metrics HTTP/1.1\r\n\r\n",  # no Host
        b"GET /metrics\r\n\r\n",
        b"GET /metrics SPDY/3\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        bytes(range(256)) * 8 + b"\r\n\r\n",
    ],
)
async def test_malformed_requests_get_400_at_once(autojump_clock: trio.abc.Clock, request_: bytes) -> None:
    server = NeverRender(CollectorRegistry(), head_timeout=30, request_timeout=60)
    start = trio.current_time()
    r = await ask(server, request_)  # the client never closes: the answer must not wait for a timeout
    assert trio.current_time() == start
    assert r.status_line == "HTTP/1.1 400 Bad Request"
    assert r.headers["connection"] == "close"


async def test_bare_lf_request_that_h11_accepts_is_answered() -> None:
    """h11 reads LF-only line ends (RFC 9112 lets a server do so); with a Host header that is a request."""
    r = await ask(MetricsServer(registry_with_a_peer()), b"GET /metrics HTTP/1.1\nHost: a\n\n")
    assert r.status == 200 and PEER.encode() in r.body


async def test_oversized_head_gets_431(autojump_clock: trio.abc.Clock) -> None:
    server = NeverRender(CollectorRegistry(), max_request_bytes=1024)
    r = await ask(server, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 5000)
    assert r.status_line == "HTTP/1.1 431 Request Header Fields Too Large"


# -- bounds --


async def test_client_that_hangs_up_early_gets_nothing() -> None:
    assert await exchange(MetricsServer(CollectorRegistry()), b"GET /met", close=True) == b""
    assert await exchange(MetricsServer(CollectorRegistry()), b"", close=True) == b""


async def test_silent_client_is_dropped_after_the_head_timeout(autojump_clock: trio.abc.Clock) -> None:
    server = MetricsServer(CollectorRegistry(), request_timeout=60)
    assert server.head_timeout == 2.0
    start = trio.current_time()
    assert await exchange(server, b"") == b""
    assert trio.current_time() - start == pytest.approx(2.0)


async def test_trickling_head_is_dropped_after_the_head_timeout(autojump_clock: trio.abc.Clock) -> None:
    server = MetricsServer(CollectorRegistry(), head_timeout=3.0, request_timeout=60)
    client, server_side = trio.testing.memory_stream_pair()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, server_side)

        async def trickle() -> None:
            try:
                for byte in get("/metrics"):
                    await client.send_all(bytes([byte]))
                    await trio.sleep(0.5)
            except trio.BrokenResourceError:
                pass

        nursery.start_soon(trickle)
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(3.0)
        nursery.cancel_scope.cancel()
    assert server._clients == 0


async def test_request_timeout_bounds_everything(autojump_clock: trio.abc.Clock) -> None:
    server = MetricsServer(CollectorRegistry(), head_timeout=30, request_timeout=3.0)
    start = trio.current_time()
    assert await exchange(server, b"GET /") == b""
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_clients_over_the_limit_are_closed_at_once(autojump_clock: trio.abc.Clock) -> None:
    server = MetricsServer(CollectorRegistry(), max_clients=2, head_timeout=60, request_timeout=60)
    pairs = [trio.testing.memory_stream_pair() for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for _, server_side in pairs:
            nursery.start_soon(server._handle, server_side)
            await trio.testing.wait_all_tasks_blocked()
        assert server._clients == 2
        with trio.fail_after(1):
            assert await pairs[2][0].receive_some() == b""
        nursery.cancel_scope.cancel()
