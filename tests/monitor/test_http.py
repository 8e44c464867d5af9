"""The /metrics HTTP server (h11) over memory streams: routes, negotiation, gzip, errors, bounds."""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from physarum.monitor.http import INDEX_HTML, METRICS, Reply, read_token_file, route
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
    assert server.clients == 0
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
        # found by tests/fuzz/fuzz_http.py: urlsplit raises ValueError on these (an unclosed IPv6
        # host), which the handler logged as a traceback, answering nothing
        (b"GET", b"//[", 400),
        (b"GET", b"http://[::1/metrics", 400),
        (b"HEAD", b"//[x/metrics?name[]=a", 400),
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


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text;version=1.",
        "application/openmetrics-text; version=x",
        "text/plain;version=a",
        # echoed into Content-Type, which h11 cannot write (UnicodeEncodeError)
        "application/openmetrics-text;version=2.0.\u00ff\u00ff",
    ],
)
async def test_an_accept_version_prometheus_client_cannot_parse_gets_the_classic_format(
    accept: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by tests/fuzz/fuzz_http.py: choose_encoder raises TypeError on these, or answers with a
    # Content-Type h11 cannot encode; the handler logged a traceback and answered nothing.
    r = await ask(MetricsServer(registry_with_a_peer()), get("/metrics", f"Accept: {accept}"))
    assert r.status_line == "HTTP/1.1 200 OK"
    assert r.headers["content-type"] == CONTENT_TYPE
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]


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


async def test_a_target_urlsplit_refuses_gets_400_without_a_traceback(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by tests/fuzz/fuzz_http.py: the handler logged "metrics request failed" with a
    # traceback and closed the connection without an answer.
    r = await ask(NeverRender(CollectorRegistry()), get("//["))
    assert r.status_line == "HTTP/1.1 400 Bad Request"
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET /metrics HTTP/1.1\n", 400),  # HTTP/1.1 needs a Host
        (b"GET /metrics HTTP/1.1\nHost: a\n", 200),
        (b"GET /metrics HTTP/1.0\n", 200),
        (b"GET /metrics HTTP/1.1\r\nHost: a\r\n\n", 200),
        (b"GET /metrics HTTP/1.1\r\nHost: a\n", 200),
        (b"GET /\n", 400),
        (b"GET /metrics\n", 400),
    ],
)
async def test_a_request_that_stops_after_a_bare_lf_is_answered_at_once(request_: bytes, status: int) -> None:
    """``echo 'GET /metrics HTTP/1.0' | nc``: no blank line ever comes; the head ends at the bare LF.
    (Real time: 200s are rendered in a worker thread, which an autojump clock would jump past.)"""
    server = MetricsServer(registry_with_a_peer(), head_timeout=30, request_timeout=60)
    with trio.fail_after(1):  # the client never closes: not the head deadline
        r = await ask(server, request_)
    assert r.status == status


async def test_a_head_with_bare_lfs_ends_where_the_data_stops() -> None:
    server = MetricsServer(registry_with_a_peer(), head_timeout=30, request_timeout=60)
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, server_side)
        await client.send_all(b"GET /metrics HTTP/1.0\nAccept-Encoding: gzip\n")
        with trio.fail_after(1):
            r = Response(await read_all(client))
    assert r.status == 200 and r.headers["content-encoding"] == "gzip"


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
    assert server.clients == 0


async def test_request_timeout_bounds_everything(autojump_clock: trio.abc.Clock) -> None:
    server = MetricsServer(CollectorRegistry(), head_timeout=30, request_timeout=3.0)
    start = trio.current_time()
    assert await exchange(server, b"GET /") == b""
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_oldest_idle_client_makes_room_for_a_new_one(autojump_clock: trio.abc.Clock) -> None:
    """All slots taken by clients still sending their head: the oldest goes, the newcomer is served."""
    server = NeverRender(CollectorRegistry(), max_clients=2, head_timeout=60, request_timeout=60)
    idle = [trio.testing.memory_stream_pair() for _ in range(2)]
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        for _, idle_server_side in idle:
            nursery.start_soon(server._handle, idle_server_side)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(1)
        await idle[0][0].send_all(b"GET /metr")  # trickling: idle all the same
        assert server.clients == 2
        nursery.start_soon(server._handle, server_side)
        await client.send_all(get("/"))  # the index page: no rendering thread for the clock to jump past
        with trio.fail_after(1):
            assert Response(await read_all(client)).status == 200
            assert await idle[0][0].receive_some() == b""  # the oldest was dropped
        assert server.dropped == 1 and server.clients == 1  # the younger idle client is still there
        nursery.cancel_scope.cancel()


class GatedRender(MetricsServer):
    """Renders block (in their worker thread) until ``gate`` is set; counts renders by variant."""

    def __init__(self, *args: object, body: bytes = b"x\n", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.body = body
        self.renders: list[str] = []

    def render(
        self, *, accept: str = "", accept_encoding: str = "", names: Sequence[str] = ()
    ) -> tuple[bytes, list[tuple[str, str]]]:
        self.renders.append(accept_encoding)
        self.gate.wait(10)
        return self.body, [("Content-Type", CONTENT_TYPE)]


async def renders_started(server: GatedRender, n: int) -> None:
    """Until ``n`` renderings have entered their thread (polled under a deadline, in real time)."""
    with trio.fail_after(5):
        while len(server.renders) < n:
            await trio.sleep(0.005)


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


async def test_busy_slots_answer_503_to_a_newcomer() -> None:
    """Both slots wait for a rendering (nobody idle): the third client gets a 503, not a silent close."""
    server = GatedRender(CollectorRegistry(), max_clients=2, refusal_linger=5)
    pairs = [trio.testing.memory_stream_pair() for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for client, server_side in pairs[:2]:
            nursery.start_soon(server._handle, server_side)
            await client.send_all(get("/metrics"))
        await renders_started(server, 1)
        await trio.testing.wait_all_tasks_blocked()
        client, server_side = pairs[2]
        nursery.start_soon(server._handle, server_side)
        await client.send_all(get("/metrics"))
        with trio.fail_after(1):
            head = bytes(await client.receive_some())
            await client.send_eof()  # done sending: the server stops draining and closes
            refusal = Response(head + await read_all(client))
        assert refusal.status_line == "HTTP/1.1 503 Service Unavailable"
        assert refusal.headers["retry-after"] == "1" and refusal.headers["connection"] == "close"
        assert server.refused == 1 and server.dropped == 0
        server.gate.set()
        with trio.fail_after(5):
            for client, _ in pairs[:2]:
                assert Response(await read_all(client)).status == 200


async def test_a_client_that_stops_reading_its_answer_becomes_idle() -> None:
    """Real time (the answer is rendered in a thread), with wide margins around ``stall_timeout``."""
    server = GatedRender(CollectorRegistry(), body=b"x" * 1_000_000, max_clients=1, stall_timeout=1.0)
    server.gate.set()
    stalled, stalled_side = trio.testing.lockstep_stream_pair()  # a send waits for the reader
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, stalled_side)
        await stalled.send_all(get("/metrics"))
        received = len(await stalled.receive_some(100))  # the first bytes of the answer, then nothing more
        early, early_side = trio.testing.lockstep_stream_pair()
        nursery.start_soon(server._handle, early_side)
        with trio.fail_after(1):
            assert Response(bytes(await early.receive_some(4096))).status == 503  # not stalled long enough
        await early.aclose()
        await trio.sleep(1.2)
        late, late_side = trio.testing.memory_stream_pair()
        nursery.start_soon(server._handle, late_side)
        await late.send_all(get("/metrics"))
        with trio.fail_after(2):
            answer = Response(await read_all(late))
        assert answer.status == 200 and len(answer.body) == 1_000_000
        assert server.dropped == 1 and server.refused == 1
        try:  # the stalled client's connection was closed before the end of its answer
            while chunk := await stalled.receive_some(1_000_000):
                received += len(chunk)
        except trio.BrokenResourceError:
            pass
        assert received < 1_000_000
        nursery.cancel_scope.cancel()


async def test_requests_waiting_for_a_rendering_share_the_next_one() -> None:
    """While one rendering runs, every identical request that arrives shares the next one: a burst of
    scrapes costs two renderings, and each sees data rendered after it arrived."""
    server = GatedRender(CollectorRegistry())
    async with trio.open_nursery() as nursery:
        server._nursery = nursery  # as run() does
        clients = []
        for encoding in ["", "", "", "", "", "gzip"]:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server._handle, server_side)
            await client.send_all(get("/metrics", f"Accept-Encoding: {encoding}"))
            await renders_started(server, 1)
            await trio.testing.wait_all_tasks_blocked()
            clients.append(client)
        assert server.renders == [""]  # the first rendering waits at the gate; the others are queued
        server.gate.set()
        with trio.fail_after(5):
            for client in clients:
                assert Response(await read_all(client)).status == 200
        assert sorted(server.renders) == ["", "", "gzip"]
        assert server._renders == {}


async def test_a_rendering_nobody_waits_for_is_cancelled() -> None:
    server = GatedRender(CollectorRegistry(), request_timeout=0.3)
    async with trio.open_nursery() as nursery:
        server._nursery = nursery
        clients = []
        for names in ["a", "b", "c"]:  # three variants, the last two queued behind the first
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server._handle, server_side)
            await client.send_all(get(f"/metrics?name[]={names}"))
            await renders_started(server, 1)
            clients.append(client)
        with trio.fail_after(5):
            for client in clients:
                assert await read_all(client) == b""  # every client timed out
        assert server._renders == {}
        server.gate.set()
        nursery.cancel_scope.cancel()
    assert len(server.renders) == 1


# -- bearer token --


TOKEN = "s3cret-T0ken_with.chars~"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ((), 401),
        ((f"Authorization: Bearer {TOKEN}",), 200),
        ((f"Authorization: bearer {TOKEN}",), 200),
        ((f"Authorization: Bearer  {TOKEN} ",), 200),
        ((f"Authorization: Bearer {TOKEN}x",), 401),
        ((f"Authorization: Bearer {TOKEN[:-1]}",), 401),
        ((f"Authorization: Basic {TOKEN}",), 401),
        (("Authorization: Bearer",), 401),
        ((f"Authorization: Bearer {TOKEN}", f"Authorization: Bearer {TOKEN}"), 401),
    ],
)
async def test_token_required(headers: tuple[str, ...], status: int) -> None:
    server = MetricsServer(registry_with_a_peer(), token=TOKEN)
    r = await ask(server, get("/metrics", *headers))
    assert r.status == status
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
        assert PEER.encode() not in r.body
    else:
        assert PEER.encode() in r.body


async def test_token_guards_every_path() -> None:
    server = NeverRender(CollectorRegistry(), token=TOKEN)
    for target in ["/", "/nope", "/metrics"]:
        assert (await ask(server, get(target))).status == 401
    assert (await ask(server, get("/", f"Authorization: Bearer {TOKEN}"))).status == 200


async def test_no_token_no_check() -> None:
    r = await ask(MetricsServer(registry_with_a_peer()), get("/metrics", "Authorization: Bearer whatever"))
    assert r.status == 200


@pytest.mark.parametrize("bad", ["", "two words", "tab\there", "caf\u00e9", "x" * 4097, "nl\n"])
def test_bad_tokens_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        MetricsServer(CollectorRegistry(), token=bad)


def test_token_file_is_read_as_prometheus_reads_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert read_token_file(str(path)) == TOKEN
    for bad in [b"", b" \n", b"two words\n", b"\xff\xfe"]:
        path.write_bytes(bad)
        with pytest.raises(ValueError):
            read_token_file(str(path))
    with pytest.raises(OSError):
        read_token_file(str(tmp_path / "missing"))


def test_other_bounds_must_be_positive() -> None:
    for bad in [{"max_clients": 0}, {"head_timeout": 0}, {"request_timeout": -1}, {"stall_timeout": 0}]:
        with pytest.raises(ValueError):
            MetricsServer(CollectorRegistry(), **bad)  # type: ignore[arg-type]
