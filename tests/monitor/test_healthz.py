"""``/healthz`` beside ``/metrics``: 200 ``ok`` for probes, without a token and without rendering."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
import trio
from prometheus_client import CollectorRegistry

from physarum.monitor.http import HEALTHY, Reply, route
from physarum.monitor.metrics import MetricsServer
from tests.monitor.test_http import TOKEN, NeverRender, ask, get, registry_with_a_peer


@pytest.mark.parametrize("target", [b"/healthz", b"/healthz?probe=liveness", b"http://10.0.0.1:9100/healthz"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_route(method: bytes, target: bytes) -> None:
    assert route(method, target) is HEALTHY


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [(b"GET", b"/healthz/", 404), (b"GET", b"/healthzx", 404), (b"POST", b"/healthz", 405)],
)
def test_route_near_misses(method: bytes, target: bytes, status: int) -> None:
    routed = route(method, target)
    assert isinstance(routed, Reply) and routed.status == status


@pytest.mark.parametrize("token", [None, TOKEN])
async def test_ok_without_rendering_or_token(token: str | None) -> None:
    server = NeverRender(CollectorRegistry(), token=token)  # raises if anything is rendered
    r = await ask(server, get("/healthz"))
    assert r.status == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.body == b"ok\n"
    assert r.headers["content-length"] == "3"
    assert r.headers["connection"] == "close"


async def test_head_has_no_body() -> None:
    r = await ask(NeverRender(CollectorRegistry(), token=TOKEN), get("/healthz", method="HEAD"))
    assert r.status == 200 and r.body == b""
    assert r.headers["content-length"] == "3"


async def test_token_still_guards_the_rest() -> None:
    server = NeverRender(CollectorRegistry(), token=TOKEN)
    for target in ["/", "/metrics", "/nope", "/healthz/"]:
        assert (await ask(server, get(target))).status == 401, target
    assert (await ask(server, get("/healthz", "Authorization: Bearer wrong"))).status == 200


async def test_over_a_socket_with_a_token() -> None:
    server = MetricsServer(registry_with_a_peer(), host="127.0.0.1", port=0, token=TOKEN)

    def fetch(path: str) -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read()

    async with trio.open_nursery() as nursery:
        ((host, port),) = await nursery.start(server.run)
        assert await trio.to_thread.run_sync(fetch, "/healthz") == (200, "text/plain; charset=utf-8", b"ok\n")
        assert (await trio.to_thread.run_sync(fetch, "/metrics"))[0] == 401
        nursery.cancel_scope.cancel()
