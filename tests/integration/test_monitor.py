"""A real ping monitor (Host + PingMonitor + MetricsServer on 127.0.0.1) with real peers attached."""

from __future__ import annotations

import errno
import gzip
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from physarum.monitor import MetricsServer, PingMonitor, http, node_registry
from physarum.overlay import ping
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import KeyPair
from physarum.overlay.yamux import YamuxStream
from physarum.psk import generate_psk
from tests.integration._util import LOOPBACK, count_fds, count_tasks, wait_until

HOSTNAME = "monitor-under-test"

Metrics = dict[str, list[tuple[dict[str, str], float]]]
"""Sample name -> [(labels, value)]."""


@dataclass
class MonitorNode:
    host: Host
    monitor: PingMonitor
    server: MetricsServer
    registry: CollectorRegistry

    @property
    def port(self) -> int:
        return self.server.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


@asynccontextmanager
async def monitor_node(
    psk: bytes | None, *, interval: float = 0.25, token: str | None = None, **kwargs: object
) -> AsyncIterator[MonitorNode]:
    """A monitor whose peers are established by their first answer (``established_after=0``): these
    tests connect peers for a moment and look at what stays once they leave."""
    kwargs.setdefault("established_after", 0)
    kwargs.setdefault("peer_histograms", True)  # the tests read each peer's histogram
    async with open_host(psk=psk, listen=[LOOPBACK]) as host, trio.open_nursery() as nursery:
        registry = node_registry()
        monitor = PingMonitor(host, registry, hostname=HOSTNAME, interval=interval, **kwargs)  # type: ignore[arg-type]
        server = MetricsServer(registry, host="127.0.0.1", port=0, token=token)
        await nursery.start(server.run)
        await nursery.start(monitor.run)
        try:
            yield MonitorNode(host, monitor, server, registry)
        finally:
            nursery.cancel_scope.cancel()


async def fetch(url: str, *, method: str = "GET") -> tuple[int, bytes]:
    """An HTTP request with the standard library's client (in a thread): independent of our server code."""
    status, _, body = await fetch_with_headers(url, method=method)
    return status, body


async def fetch_with_headers(
    url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and raw body (not decompressed) of one request."""

    def get() -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    return await trio.to_thread.run_sync(get)


async def scrape(node: MonitorNode) -> Metrics:
    status, body = await fetch(node.url)
    assert status == 200
    out: Metrics = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


async def wait_scrape(
    node: MonitorNode, predicate: Callable[[Metrics], bool], *, timeout: float = 10.0, what: str = "metrics"
) -> Metrics:
    """Scrape until ``predicate(metrics)`` holds (polling under a deadline)."""
    last: Metrics = {}
    try:
        with trio.fail_after(timeout):
            while True:
                last = await scrape(node)
                if predicate(last):
                    return last
                await trio.sleep(0.02)
    except trio.TooSlowError:
        raise AssertionError(f"{what} not seen within {timeout} s; last scrape: {last}") from None


def rtt_series(metrics: Metrics) -> dict[str, float]:
    return {labels["targetHost"]: v for labels, v in metrics.get("ping_rtt", [])}


@asynccontextmanager
async def peers(n: int, psk: bytes | None, *, listen: bool = True) -> AsyncIterator[list[Host]]:
    """``n`` hosts; with ``listen=False`` they are clients (no listen address, as `peer find` runs)."""
    async with trio.open_nursery() as nursery:
        hosts: list[Host] = []
        for _ in range(n):
            host = Host(psk=psk, listen=[LOOPBACK] if listen else [])
            await nursery.start(host.run)
            hosts.append(host)
        try:
            yield hosts
        finally:
            nursery.cancel_scope.cancel()


async def wait_identified(node: MonitorNode, hosts: list[Host]) -> None:
    """Until the monitor's host has the identify message of each of ``hosts``."""

    def done() -> bool:
        conns = [node.host.connection(h.peer_id) for h in hosts]
        return all(c is not None and c.identify_info is not None for c in conns)

    await wait_until(done, what="identify of every peer")


def series_naming(metrics: Metrics, peer_id: str) -> list[str]:
    return [name for name, samples in metrics.items() for labels, _ in samples if peer_id in labels.values()]


async def test_three_peers_one_ping_rtt_series_each() -> None:
    psk = generate_psk()
    async with monitor_node(psk) as node, peers(3, psk) as hosts:
        for h in hosts:
            await h.connect(node.host.addrs[0])
        ids = {str(h.peer_id) for h in hosts}
        metrics = await wait_scrape(node, lambda m: set(rtt_series(m)) == ids, what="3 ping_rtt series")
        for labels, value in metrics["ping_rtt"]:
            assert labels == {"targetHost": labels["targetHost"], "host": HOSTNAME}
            assert 0 < value < 1000
        assert {labels["targetHost"] for labels, _ in metrics["ping_ewma_rtt"]} == ids
        assert metrics["physarum_peers_connected"] == [({}, 3.0)]
        assert {labels["peer"]: v for labels, v in metrics["physarum_peer_reachable"]} == dict.fromkeys(
            ids, 1.0
        )
        counts = {labels["peer"]: v for labels, v in metrics["physarum_ping_rtt_seconds_count"]}
        assert set(counts) == ids and all(v >= 1 for v in counts.values())
        assert [labels["version"] for labels, _ in metrics["physarum_build_info"]] == ["0.1.0"]


async def test_disconnect_and_kill_are_reflected_within_two_intervals() -> None:
    interval = 0.25
    psk = generate_psk()
    async with monitor_node(psk, interval=interval) as node, peers(3, psk) as hosts:
        for h in hosts:
            await h.connect(node.host.addrs[0])
        await wait_scrape(node, lambda m: len(rtt_series(m)) == 3, what="3 series")
        await wait_identified(node, hosts)  # they listen: kept (reachable 0) after they leave
        polite, killed, stays = hosts
        # a clean disconnect (GoAway, TCP close)
        t0 = trio.current_time()
        await polite.disconnect(node.host.peer_id)
        metrics = await wait_scrape(
            node, lambda m: str(polite.peer_id) not in rtt_series(m), timeout=2 * interval, what="polite gone"
        )
        assert trio.current_time() - t0 <= 2 * interval
        reach = {labels["peer"]: v for labels, v in metrics["physarum_peer_reachable"]}
        assert reach[str(polite.peer_id)] == 0  # kept (at 0) until expiry
        # a peer whose sockets are closed under it, as when its process is killed
        t0 = trio.current_time()
        for conn in killed.connections.get(node.host.peer_id, []):
            await trio.aclose_forcefully(conn.session.transport)
        await wait_scrape(
            node, lambda m: str(killed.peer_id) not in rtt_series(m), timeout=2 * interval, what="killed gone"
        )
        assert trio.current_time() - t0 <= 2 * interval
        assert set(rtt_series(await scrape(node))) == {str(stays.peer_id)}


async def test_restarted_peer_comes_back_within_two_intervals() -> None:
    interval = 0.25
    psk = generate_psk()
    key = KeyPair.generate()
    async with monitor_node(psk, interval=interval) as node:
        for _ in range(3):
            async with open_host(key, psk=psk, listen=[LOOPBACK]) as peer:
                t0 = trio.current_time()
                await peer.connect(node.host.addrs[0])
                await wait_scrape(
                    node, lambda m: str(key.peer_id) in rtt_series(m), timeout=2 * interval, what="peer back"
                )
                assert trio.current_time() - t0 <= 2 * interval
            t0 = trio.current_time()
            await wait_scrape(
                node, lambda m: str(key.peer_id) not in rtt_series(m), timeout=2 * interval, what="peer gone"
            )


async def test_one_ping_stream_per_peer_and_fin_when_the_monitor_stops() -> None:
    psk = generate_psk()
    opened: list[YamuxStream] = []
    ended_cleanly: list[YamuxStream] = []

    async def recording_ping(stream: YamuxStream) -> None:
        opened.append(stream)
        await ping.handle_ping(stream)  # returns only on end of stream (FIN); a reset raises
        ended_cleanly.append(stream)

    async with peers(1, psk) as (peer,), open_host(psk=psk, listen=[LOOPBACK]) as host:
        peer.set_handler(ping.PROTOCOL_ID, recording_ping)
        await peer.connect(host.addrs[0])
        monitor = PingMonitor(host, CollectorRegistry(), hostname="h", interval=0.02)
        async with trio.open_nursery() as nursery:
            await nursery.start(monitor.run)
            await wait_until(lambda: monitor.peers[peer.peer_id].successes >= 20, what="20 pings")
            nursery.cancel_scope.cancel()
        assert len(opened) == 1
        await wait_until(lambda: len(ended_cleanly) == 1, what="the responder sees end of stream")
        assert host.connection(peer.peer_id) is not None  # stopping the monitor leaves connections alone


async def test_peer_without_ping_is_counted_as_unsupported() -> None:
    psk = generate_psk()
    async with monitor_node(psk, interval=0.05) as node, peers(2, psk) as (mute, ok):
        mute.remove_handler(ping.PROTOCOL_ID)
        await mute.connect(node.host.addrs[0])
        await ok.connect(node.host.addrs[0])

        def done(m: Metrics) -> bool:
            fails = [
                v
                for labels, v in m.get("physarum_ping_failures_total", [])
                if labels["peer"] == str(mute.peer_id) and labels["reason"] == "unsupported"
            ]
            return bool(fails) and fails[0] >= 2 and str(ok.peer_id) in rtt_series(m)

        metrics = await wait_scrape(node, done, what="unsupported failures")
        assert str(mute.peer_id) not in rtt_series(metrics)


async def test_no_fd_or_task_leak_over_100_connect_disconnect_cycles() -> None:
    psk = generate_psk()
    async with monitor_node(psk, interval=0.01) as node, peers(1, psk) as (peer,):
        monitor = node.monitor

        async def cycle() -> None:
            before = monitor.peers.get(peer.peer_id)
            seen = before.successes if before else 0
            await peer.connect(node.host.addrs[0])
            await wait_until(
                lambda: (s := monitor.peers.get(peer.peer_id)) is not None and s.successes > seen,
                what="a ping on the new connection",
            )
            await wait_identified(node, [peer])  # a listening peer: its stats outlive the connection
            await peer.disconnect(node.host.peer_id)
            await wait_until(
                lambda: (
                    node.host.connection(peer.peer_id) is None
                    and peer.peer_id not in monitor._pingers
                    and not peer.connections
                ),
                what="both sides disconnected",
            )

        await cycle()
        await wait_until(lambda: True)
        base_fds, base_tasks = count_fds(), count_tasks()
        for _ in range(100):
            await cycle()
        await wait_until(
            lambda: count_fds() <= base_fds and count_tasks() <= base_tasks,
            what=f"fds back to {base_fds} (now {count_fds()}) and tasks to {base_tasks} (now {count_tasks()})",
        )
        assert monitor.peers[peer.peer_id].successes >= 101
        assert not node.host.connections


async def test_promtool_check_metrics_passes() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: run scripts/prometheus-setup.sh (Debian's prometheus package)"
        )
    psk = generate_psk()
    async with monitor_node(psk, interval=0.05) as node, peers(3, psk) as hosts:
        hosts[2].remove_handler(ping.PROTOCOL_ID)  # so the failure counter has samples too
        for h in hosts:
            await h.connect(node.host.addrs[0])
        await wait_scrape(
            node,
            lambda m: len(rtt_series(m)) == 2 and "physarum_ping_failures_total" in m,
            what="rtts and failures",
        )
        status, body = await fetch(node.url)
    assert status == 200

    def check(data: bytes) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [promtool, "check", "metrics"],
            input=data.decode(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    # The whole exposition parses. The only lint finding promtool may report is the camelCase label
    # `targetHost` of the PhysarumSM gauges, kept on purpose so existing dashboards work.
    full = await trio.to_thread.run_sync(check, body)
    problems = [line for line in (full.stdout + full.stderr).splitlines() if line.strip()]
    assert full.returncode in (0, 3), problems
    assert all(p.startswith(("ping_rtt ", "ping_ewma_rtt ")) and "snake_case" in p for p in problems), (
        problems
    )
    # Everything else is lint-clean.
    ours = b"\n".join(line for line in body.splitlines() if not metric_name(line).startswith(b"ping_"))
    assert b"physarum_ping_rtt_seconds_bucket" in ours and b"ping_rtt{" not in ours
    clean = await trio.to_thread.run_sync(check, ours + b"\n")
    assert clean.returncode == 0, clean.stdout + clean.stderr


def metric_name(line: bytes) -> bytes:
    """The metric a line of the text exposition is about."""
    if line.startswith(b"#"):
        parts = line.split(b" ")
        return parts[2] if len(parts) > 2 else b""
    return line.split(b"{")[0].split(b" ")[0]


# -- the HTTP server over real sockets --


async def test_http_paths_and_methods() -> None:
    async with monitor_node(None) as node:
        base = f"http://127.0.0.1:{node.port}"
        status, body = await fetch(base + "/metrics")
        assert status == 200 and b"# TYPE ping_rtt gauge" in body
        assert (await fetch(base + "/metrics?x=1"))[0] == 200
        status, body = await fetch(base + "/")
        assert status == 200 and b'<a href="metrics">' in body
        assert (await fetch(base + "/nope"))[0] == 404
        assert (await fetch(base + "/metrics/extra"))[0] == 404
        assert (await fetch(base + "/metrics", method="POST"))[0] == 405
        status, body = await fetch(base + "/metrics", method="HEAD")
        assert status == 200 and body == b""


async def test_slow_and_garbage_clients_do_not_block_scrapes() -> None:
    async with monitor_node(None) as node:
        silent = [await trio.open_tcp_stream("127.0.0.1", node.port) for _ in range(10)]
        trickle = await trio.open_tcp_stream("127.0.0.1", node.port)
        await trickle.send_all(b"GET /metr")
        garbage = await trio.open_tcp_stream("127.0.0.1", node.port)
        await garbage.send_all(bytes(range(256)) * 8 + b"\r\n\r\n")
        huge = await trio.open_tcp_stream("127.0.0.1", node.port)
        try:
            await huge.send_all(b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 100_000)
        except trio.BrokenResourceError:
            pass  # the server may already have answered 431 and closed
        with trio.fail_after(5):
            status, _ = await fetch(node.url)
        assert status == 200

        async def read_all(stream: trio.SocketStream) -> bytes:
            data = bytearray()
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass
            return bytes(data)

        with trio.fail_after(5):
            assert (await read_all(garbage)).startswith(b"HTTP/1.1 400 ")
            answer = await read_all(huge)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
        for s in [*silent, trickle, garbage, huge]:
            await s.aclose()


async def test_300_slowloris_clients_do_not_starve_scrapes() -> None:
    """300 clients that each hold a connection, sending a header line every 0.5 s and never finishing,
    and reconnecting the moment they are dropped, against 256 slots: every real scrape, sent while
    all the slots are taken, succeeds within 1 s."""
    async with monitor_node(None) as node:
        server = node.server
        assert server.max_clients == 256
        opened = 0

        async def hold(stream: trio.SocketStream) -> None:
            """Trickle a request head until the server closes the connection."""
            async with trio.open_nursery() as nursery:

                async def trickle() -> None:
                    try:
                        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                        while True:
                            await trio.sleep(0.5)
                            await stream.send_all(b"X-a: b\r\n")
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        nursery.cancel_scope.cancel()

                nursery.start_soon(trickle)
                try:
                    while await stream.receive_some(4096):
                        pass
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

        async def slowloris() -> None:
            nonlocal opened
            while True:  # until the test cancels it
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", node.port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                opened += 1
                try:
                    await hold(stream)
                finally:
                    await trio.aclose_forcefully(stream)

        async with trio.open_nursery() as nursery:
            for _ in range(300):
                nursery.start_soon(slowloris)
            await wait_until(lambda: opened >= 300, what="300 slowloris connections")
            for _ in range(10):
                await wait_until(lambda: server.clients == server.max_clients, what="every slot taken")
                start = trio.current_time()
                status, body = await fetch(node.url)
                elapsed = trio.current_time() - start
                assert status == 200 and b"# TYPE ping_rtt gauge" in body
                assert elapsed < 1.0, f"a scrape took {elapsed:.2f} s"
                await trio.sleep(0.2)
            assert server.dropped >= 10  # each scrape took an idle client's slot, at least
            assert server.refused == 0
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("request_", "status"),
    [(b"GET /metrics HTTP/1.0\n", 200), (b"GET /metrics HTTP/1.1\n", 400), (b"GET /\n", 400)],
)
async def test_a_request_ending_in_a_bare_lf_is_answered_at_once(request_: bytes, status: int) -> None:
    """``echo 'GET /metrics HTTP/1.0' | nc 127.0.0.1 9100``, which never sends the blank line."""
    async with monitor_node(None) as node:
        stream = await trio.open_tcp_stream("127.0.0.1", node.port)
        await stream.send_all(request_)
        data = bytearray()
        with trio.fail_after(1):  # not the 2 s head deadline
            while chunk := await stream.receive_some(65536):
                data += chunk
        assert data.startswith(f"HTTP/1.1 {status} ".encode())
        await stream.aclose()


async def test_bearer_token_over_a_socket() -> None:
    token = "f00dfeed-metrics"
    async with monitor_node(None, token=token) as node:
        status, headers, body = await fetch_with_headers(node.url)
        assert status == 401 and headers["www-authenticate"] == "Bearer" and b"ping_rtt" not in body
        status, _, _ = await fetch_with_headers(node.url, headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, _, body = await fetch_with_headers(node.url, headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and b"# TYPE ping_rtt gauge" in body


async def test_gzip_and_openmetrics_over_a_socket() -> None:
    psk = generate_psk()
    async with monitor_node(psk, interval=0.05) as node, peers(1, psk) as (peer,):
        await peer.connect(node.host.addrs[0])
        await wait_scrape(node, lambda m: str(peer.peer_id) in rtt_series(m), what="the peer's ping_rtt")
        status, headers, body = await fetch_with_headers(
            node.url,
            headers={
                "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
                "Accept-Encoding": "gzip",
            },
        )
        assert status == 200
        assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert headers["content-encoding"] == "gzip"
        assert headers["content-length"] == str(len(body))
        text = gzip.decompress(body).decode()
        assert text.endswith("# EOF\n") and "_created" not in text
        families = {f.name: f for f in openmetrics_families(text)}
        assert {s.labels["targetHost"] for s in families["ping_rtt"].samples} == {str(peer.peer_id)}
        assert {s.labels["peer"] for s in families["physarum_peer_reachable"].samples} == {str(peer.peer_id)}
        assert families["process_resident_memory_bytes"].samples[0].value > 0
        assert families["process_cpu_seconds"].type == "counter"

        # a classic scrape: the 0.0.4 text format, not compressed
        status, headers, body = await fetch_with_headers(node.url)
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "content-encoding" not in headers
        assert b"# EOF" not in body and b"_created" not in body and b"process_open_fds " in body


async def test_clients_leave_no_series_behind() -> None:
    """Five one-shot clients (no listen address, like `peer find`): pinged while there, gone at once."""
    psk = generate_psk()
    async with monitor_node(psk, interval=0.05) as node, peers(1, psk) as (listening,):
        await listening.connect(node.host.addrs[0])
        await wait_identified(node, [listening])
        for _ in range(5):
            async with peers(1, psk, listen=False) as (client,):
                await client.connect(node.host.addrs[0])
                await wait_scrape(node, lambda m: str(client.peer_id) in rtt_series(m), what="client pinged")
                await wait_identified(node, [client])
                info = node.host.connection(client.peer_id).identify_info  # type: ignore[union-attr]
                assert info is not None and info.listen_addrs == []
                await client.disconnect(node.host.peer_id)
                metrics = await wait_scrape(
                    node, lambda m: not series_naming(m, str(client.peer_id)), what="the client forgotten"
                )
                assert metrics["physarum_peers_connected"] == [({}, 1.0)]
                assert client.peer_id not in node.monitor.peers
        await listening.disconnect(node.host.peer_id)
        metrics = await wait_scrape(
            node, lambda m: str(listening.peer_id) not in rtt_series(m), what="the listening peer gone"
        )
        reach = {labels["peer"]: v for labels, v in metrics["physarum_peer_reachable"]}
        assert reach == {str(listening.peer_id): 0.0}  # only the node that listens stays (at 0)


async def test_port_zero_on_every_interface_is_one_port_for_all_families() -> None:
    server = MetricsServer(CollectorRegistry(), host=None, port=0)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(server.run)
        ports = {port for _, port in addresses}
        assert len(ports) == 1 and ports != {0}
        families = {":" in host for host, _ in addresses}
        if socket.has_ipv6 and len(addresses) > 1:
            assert families == {False, True}
        (port,) = ports
        assert (await fetch(f"http://127.0.0.1:{port}/metrics"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_port_zero_taken_on_another_family_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    infos = await trio.socket.getaddrinfo(None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    if len(infos) < 2:
        pytest.skip("this machine has one address family: nothing to keep in step")  # pragma: no cover
    calls: list[int] = []
    listen = http._listen

    async def flaky(family: int, type_: int, proto: int, sockaddr: tuple[object, ...]) -> object:
        calls.append(int(str(sockaddr[1])))
        if len(calls) == 2:  # the second family, first attempt: "taken"
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return await listen(family, type_, proto, sockaddr)

    monkeypatch.setattr(http, "_listen", flaky)
    listeners = await http.open_listeners(None, 0)
    try:
        ports = {int(lst.socket.getsockname()[1]) for lst in listeners}
        assert len(listeners) == len(infos) and len(ports) == 1
        assert calls[0] == 0 and calls[2] == 0  # the second attempt started from a new free port
    finally:
        for lst in listeners:
            await lst.aclose()

    async def always_taken(family: int, type_: int, proto: int, sockaddr: tuple[object, ...]) -> object:
        if sockaddr[1] != 0:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return await listen(family, type_, proto, sockaddr)

    monkeypatch.setattr(http, "_listen", always_taken)
    with pytest.raises(OSError) as e:
        await http.open_listeners(None, 0, attempts=3)
    assert e.value.errno == errno.EADDRINUSE
