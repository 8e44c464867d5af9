"""MonitorMetrics and the /metrics HTTP handling, over memory streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from physarum.monitor.metrics import (
    FAILURE_REASONS,
    PING_RTT_HELP,
    RTT_BUCKETS,
    MetricsServer,
    MonitorMetrics,
    handle_request_head,
)

TARGET = "12D3KooWQrEbutuv991JegVdQhzqv6v3MKjckZRtkdKnKqvHuNVM"


def families(registry: CollectorRegistry) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    from prometheus_client.exposition import generate_latest

    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        out[fam.name] = [(s.name, s.labels, s.value) for s in fam.samples]
    return out


def test_physarumsm_names_help_and_labels() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="edge-7")
    m.observe(TARGET, 0.00125, 1.5)
    text = m.exposition().decode()
    assert f"# HELP ping_rtt {PING_RTT_HELP}" in text
    assert "# TYPE ping_rtt gauge" in text
    assert "# TYPE ping_ewma_rtt gauge" in text
    fams = families(registry)
    ((name, labels, rtt),) = fams["ping_rtt"]
    assert (name, labels) == ("ping_rtt", {"targetHost": TARGET, "host": "edge-7"})
    assert rtt == pytest.approx(1.25)
    assert fams["ping_ewma_rtt"] == [("ping_ewma_rtt", {"targetHost": TARGET, "host": "edge-7"}, 1.5)]


def test_histogram_buckets_cover_lan_to_edge() -> None:
    assert RTT_BUCKETS[0] == 0.00005 and RTT_BUCKETS[-1] == 5.0
    assert list(RTT_BUCKETS) == sorted(RTT_BUCKETS)
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h")
    m.observe(TARGET, 0.00004, 0.04)
    m.observe(TARGET, 7.0, 0.04)
    buckets = {
        s[1]["le"]: s[2] for s in families(registry)["physarum_ping_rtt_seconds"] if s[0].endswith("_bucket")
    }
    assert buckets["5e-05"] == 1
    assert buckets["5.0"] == 1
    assert buckets["+Inf"] == 2


def test_failure_drops_rtt_gauges_and_counts() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h")
    m.observe(TARGET, 0.001, 1.0)
    m.failed(TARGET, "timeout")
    m.failed(TARGET, "timeout")
    m.failed(TARGET, "closed")
    get = registry.get_sample_value
    assert get("ping_rtt", {"targetHost": TARGET, "host": "h"}) is None
    assert get("ping_ewma_rtt", {"targetHost": TARGET, "host": "h"}) is None
    assert get("physarum_peer_reachable", {"target": TARGET}) == 0
    assert get("physarum_ping_failures_total", {"target": TARGET, "reason": "timeout"}) == 2
    assert get("physarum_ping_failures_total", {"target": TARGET, "reason": "closed"}) == 1


def test_forget_removes_every_series_and_tolerates_missing_ones() -> None:
    registry = CollectorRegistry()
    m = MonitorMetrics(registry, hostname="h")
    m.forget(TARGET)  # nothing there yet
    m.observe(TARGET, 0.001, 1.0)
    for reason in FAILURE_REASONS:
        m.failed(TARGET, reason)
    m.observe("other", 0.002, 2.0)
    m.forget(TARGET)
    for samples in families(registry).values():
        for _, labels, _ in samples:
            assert TARGET not in labels.values()
    assert registry.get_sample_value("ping_rtt", {"targetHost": "other", "host": "h"}) == 2.0


# -- HTTP request heads --


def render() -> bytes:
    return b"metric 1\n"


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


@pytest.mark.parametrize(
    "target", [b"/metrics", b"/metrics?name[]=ping_rtt", b"http://127.0.0.1:9100/metrics"]
)
def test_get_metrics(target: bytes) -> None:
    status, headers, body = split(handle_request_head(b"GET " + target + b" HTTP/1.1\r\nHost: x", render))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert headers["Content-Length"] == str(len(body))
    assert headers["Connection"] == "close"
    assert body == b"metric 1\n"


def test_head_has_no_body() -> None:
    status, headers, body = split(handle_request_head(b"HEAD /metrics HTTP/1.0", render))
    assert status == "HTTP/1.1 200 OK" and body == b""
    assert headers["Content-Length"] == str(len(render()))


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1", "404"),
        (b"GET /metricsx HTTP/1.1", "404"),
        (b"GET /favicon.ico HTTP/1.1", "404"),
        (b"POST /metrics HTTP/1.1", "405"),
        (b"DELETE /metrics HTTP/1.1", "405"),
        (b"GET /metrics", "400"),
        (b"GET /metrics SPDY/3", "400"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "400"),
        (b"", "400"),
        (b"GET  /metrics HTTP/1.1", "400"),
    ],
)
def test_other_requests(head: bytes, status: str) -> None:
    called: list[int] = []

    def render_once() -> bytes:
        called.append(1)
        return b""

    response = handle_request_head(head, render_once)
    assert response.split(b" ")[1].decode() == status
    assert called == []


# -- the server's per-client handling over memory streams --


async def exchange(server: MetricsServer, request: bytes, *, close: bool = True) -> bytes:
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, server_side)
        await client.send_all(request)
        if close:
            await client.send_eof()
        data = bytearray()
        while chunk := await client.receive_some():
            data += chunk
    return bytes(data)


async def test_server_answers_and_closes() -> None:
    registry = CollectorRegistry()
    MonitorMetrics(registry, hostname="h").observe(TARGET, 0.001, 1.0)
    server = MetricsServer(registry)
    response = await exchange(server, b"GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n", close=False)
    status, _, body = split(response)
    assert status == "HTTP/1.1 200 OK"
    assert f'targetHost="{TARGET}"'.encode() in body


async def test_request_split_into_bytes() -> None:
    server = MetricsServer(CollectorRegistry())
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, server_side)
        for byte in b"GET /nope HTTP/1.1\r\n\r\n":
            await client.send_all(bytes([byte]))
        data = bytearray()
        while chunk := await client.receive_some():
            data += chunk
    assert data.startswith(b"HTTP/1.1 404 ")


async def test_oversized_request_gets_431() -> None:
    server = MetricsServer(CollectorRegistry(), max_request_bytes=1024)
    response = await exchange(server, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 5000, close=False)
    assert response.startswith(b"HTTP/1.1 431 ")


async def test_client_that_hangs_up_early_gets_nothing() -> None:
    server = MetricsServer(CollectorRegistry())
    assert await exchange(server, b"GET /met") == b""


async def test_silent_client_is_dropped_after_the_timeout(autojump_clock: trio.abc.Clock) -> None:
    server = MetricsServer(CollectorRegistry(), request_timeout=3.0)
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, server_side)
        start = trio.current_time()
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(3.0)
    assert server._clients == 0


async def test_clients_over_the_limit_are_closed_at_once(autojump_clock: trio.abc.Clock) -> None:
    server = MetricsServer(CollectorRegistry(), max_clients=2, request_timeout=60)
    pairs = [trio.testing.memory_stream_pair() for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for _, server_side in pairs:
            nursery.start_soon(server._handle, server_side)
            await trio.testing.wait_all_tasks_blocked()
        assert server._clients == 2
        with trio.fail_after(1):
            assert await pairs[2][0].receive_some() == b""
        nursery.cancel_scope.cancel()
