"""Fuzz the metrics HTTP server's request handling (physarum.monitor.http): ``MetricsServer._handle``,
what every connection to ``:9100`` runs, reading a request through h11 and routing it.

Input: byte 0 holds flags (bit 0: the client keeps its side open after its bytes instead of ending
it; bit 1: the server has a bearer token, ``secret``), byte 1 how the bytes are cut into reads (see
``_common.split``); the rest is what the client sends. The contract: the handler returns without
raising and without logging an error or traceback, within the server's ``request_timeout``; what it
sends, if anything, is one well-formed HTTP/1.1 response that closes the connection.

Rendering runs inline rather than in a worker thread (``trio.to_thread.run_sync`` is replaced in
this process), so the run stays on the mock clock and a crash reproduces from its input alone.

    mkdir -p /tmp/http && python tests/fuzz/fuzz_http.py /tmp/http tests/fuzz/corpus/http -max_total_time=60
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _common
import atheris
import h11
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge

with atheris.instrument_imports(include=["physarum"]):
    from physarum.monitor.http import MetricsServer

TOKEN = "secret"


async def _inline(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return fn(*args)


trio.to_thread.run_sync = _inline  # type: ignore[assignment]

REGISTRY = CollectorRegistry()
_rtt = Gauge("ping_rtt", "Historical ping RTTs over time (ms)", ["targetHost", "host"], registry=REGISTRY)
_rtt.labels("12D3KooWPeer", "node").set(1.5)
Counter("physarum_pings", "Pings sent.", registry=REGISTRY).inc(3)


async def _serve(feed: _common.FeedStream, token: bool) -> None:
    server = MetricsServer(REGISTRY, token=TOKEN if token else None)
    start = trio.current_time()
    await server._handle(feed)
    elapsed = trio.current_time() - start
    assert elapsed <= server.request_timeout + 1e-6, elapsed
    assert feed.closed


def _check_response(raw: bytes) -> None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "fuzz")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")
    event = client.next_event()
    assert isinstance(event, h11.Response), (event, raw[:200])
    assert (b"connection", b"close") in [(k, v.lower()) for k, v in event.headers], event.headers


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, pattern, request = data[0], data[1], data[2:]
    feed = _common.FeedStream(_common.split(request, pattern), eof=not flags & 1)
    _common.run_trio(lambda: _serve(feed, bool(flags & 2)))
    _common.check_logs()
    if feed.sent:
        _check_response(bytes(feed.sent))


if __name__ == "__main__":
    _common.main(test_one_input, max_len=4096)
