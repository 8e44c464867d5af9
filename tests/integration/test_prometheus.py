"""A real Prometheus (Debian's package) scrapes a running ping-monitor with three peers attached.

The monitor and the peers are the binaries' own node code (:func:`physarum.cli.node.run_node`), in this
process, on 127.0.0.1. Prometheus runs as a subprocess on a free loopback port (never 9090, where a
packaged service might listen) with a generated config and a temporary storage directory; the test asks
its HTTP API for ``ping_rtt`` until it reports one series per peer. If Prometheus is not installed and
scripts/prometheus-setup.sh cannot install it, the test fails: it never skips.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from physarum.cli.flags import NodeOptions
from physarum.cli.node import MonitorOptions, RunningNode, run_node
from physarum.monitor.http import read_token_file
from physarum.overlay.identity import KeyPair
from physarum.overlay.multiaddr import Multiaddr
from physarum.psk import psk_from_passphrase

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "prometheus-setup.sh"
LOOPBACK = Multiaddr("/ip4/127.0.0.1/tcp/0")


def prometheus_binary() -> str:
    """The prometheus executable, installed by scripts/prometheus-setup.sh if missing; fails the test otherwise."""
    found = shutil.which("prometheus")
    if found is not None:
        return found
    result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600, check=False)
    found = shutil.which("prometheus")
    if result.returncode != 0 or found is None:
        pytest.fail(
            "Prometheus is not installed and scripts/prometheus-setup.sh could not install it "
            f"(exit {result.returncode}): {result.stderr.strip()[-2000:]}",
            pytrace=False,
        )
    return found


def free_loopback_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 9090:
            return port


def node_options(psk: bytes, bootstrap: list[Multiaddr], hostname: str = "physarum-test") -> NodeOptions:
    return NodeOptions(
        listen=[LOOPBACK],
        bootstrap=bootstrap,
        psk=psk,
        key_pair=KeyPair.generate(),
        hostname=hostname,
        debug="",
        psk_source="passphrase",
    )


@asynccontextmanager
async def network(
    n_peers: int, *, token: str | None = None
) -> AsyncIterator[tuple[RunningNode, list[RunningNode]]]:
    """A ping-monitor (metrics on 127.0.0.1, a free port; requiring ``token`` if given) and ``n_peers``
    peers that bootstrap to it."""
    psk = psk_from_passphrase("prometheus test network")
    async with trio.open_nursery() as nursery:
        monitor: RunningNode = await nursery.start(
            lambda task_status: run_node(
                node_options(psk, []),
                monitor=MonitorOptions("127.0.0.1", 0, interval=1.0, token=token),
                out=io.StringIO(),
                handle_signals=False,
                task_status=task_status,
            )
        )
        peers: list[RunningNode] = []
        for _ in range(n_peers):
            peers.append(
                await nursery.start(
                    lambda task_status: run_node(
                        node_options(psk, [monitor.host.addrs[0]]),
                        out=io.StringIO(),
                        handle_signals=False,
                        task_status=task_status,
                    )
                )
            )
        try:
            yield monitor, peers
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def prometheus(
    tmp_path: Path, target_port: int, *, token_file: Path | None = None
) -> AsyncIterator[tuple[int, Path]]:
    """Prometheus scraping the target as job ``physarum`` (sending the token in ``token_file`` if given,
    as ``authorization: credentials_file``) and, with a token, also as job ``anonymous`` without it."""
    config = tmp_path / "prometheus.yml"
    jobs = "  - job_name: physarum\n"
    if token_file is not None:
        jobs += f"    authorization:\n      credentials_file: {token_file}\n"
    jobs += f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    if token_file is not None:
        jobs += (
            f"  - job_name: anonymous\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        )
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n" + jobs
    )
    async with run_prometheus(tmp_path, config) as running:
        yield running


@asynccontextmanager
async def run_prometheus(tmp_path: Path, config: Path) -> AsyncIterator[tuple[int, Path]]:
    """The real Prometheus on a free loopback port with ``config``; its port and log file."""
    binary = prometheus_binary()
    port = free_loopback_port()
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        process = await trio.lowlevel.open_process(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=info",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=tmp_path,
        )
    try:
        yield port, log_path
    finally:
        with trio.CancelScope(shield=True):
            process.terminate()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def api_get(port: int, path: str) -> dict[str, Any]:
    """The JSON answer of Prometheus' HTTP API at ``path``."""

    def get() -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    return await trio.to_thread.run_sync(get)


async def api_query(port: int, query: str) -> dict[str, Any]:
    return await api_get(port, "/api/v1/query?" + urllib.parse.urlencode({"query": query}))


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


async def test_real_prometheus_scrapes_one_ping_rtt_series_per_peer(tmp_path: Path) -> None:
    async with network(3) as (monitor, peers):
        assert monitor.metrics_server is not None
        metrics_port = monitor.metrics_server.addresses[0][1]
        peer_ids = {str(p.host.peer_id) for p in peers}
        async with prometheus(tmp_path, metrics_port) as (port, log_path):
            last: object = None
            try:
                with trio.fail_after(60):
                    while True:
                        try:
                            answer = await api_query(port, "ping_rtt")
                        except OSError as e:  # not listening yet, or still starting
                            last = e
                        else:
                            last = answer
                            series = answer.get("data", {}).get("result", [])
                            if {s["metric"].get("targetHost") for s in series} == peer_ids:
                                break
                        await trio.sleep(0.25)
            except trio.TooSlowError:
                pytest.fail(
                    f"Prometheus did not report 3 ping_rtt series within 60 s; last answer: {last}\n"
                    f"--- prometheus log (tail) ---\n{tail(log_path)}",
                    pytrace=False,
                )
            assert answer["status"] == "success"
            assert len(series) == 3
            for s in series:
                labels = s["metric"]
                assert labels["__name__"] == "ping_rtt"
                assert labels["host"] == "physarum-test"
                assert labels["job"] == "physarum"
                assert labels["instance"] == f"127.0.0.1:{metrics_port}"
                value = float(s["value"][1])
                assert 0 < value < 1000, s
            up = await api_query(port, 'up{job="physarum"}')
            assert [r["value"][1] for r in up["data"]["result"]] == ["1"]
            connected = await api_query(port, "physarum_peers_connected")
            assert [r["value"][1] for r in connected["data"]["result"]] == ["3"]
            # Prometheus negotiates OpenMetrics (with gzip): the same series, and no `_created` ones
            reachable = await api_query(port, "physarum_peer_reachable")
            assert {r["metric"]["peer"] for r in reachable["data"]["result"]} == peer_ids
            created = await api_query(port, '{__name__=~".+_created"}')
            assert created["data"]["result"] == []
            cpu = await api_query(port, "process_cpu_seconds_total")  # node_registry's process metrics
            assert len(cpu["data"]["result"]) == 1


async def test_prometheus_sends_the_bearer_token_from_its_credentials_file(tmp_path: Path) -> None:
    """The README's setup: one token file for ping-monitor's -prom-token-file and for Prometheus'
    ``authorization: credentials_file``; a scrape without it is refused (``up`` 0)."""
    token_file = tmp_path / "metrics.token"
    token_file.write_text("physarum-test-token-0123\n")
    token = read_token_file(str(token_file))
    async with network(1, token=token) as (monitor, _peers):
        assert monitor.metrics_server is not None
        metrics_port = monitor.metrics_server.addresses[0][1]
        async with prometheus(tmp_path, metrics_port, token_file=token_file) as (port, log_path):
            up: dict[str, str] = {}
            try:
                with trio.fail_after(60):
                    while set(up) != {"physarum", "anonymous"}:
                        await trio.sleep(0.25)
                        try:
                            answer = await api_query(port, "up")
                        except OSError:  # not listening yet
                            continue
                        up = {r["metric"]["job"]: r["value"][1] for r in answer["data"]["result"]}
            except trio.TooSlowError:
                pytest.fail(
                    f"Prometheus did not scrape both jobs within 60 s; last: {up}\n"
                    f"--- prometheus log (tail) ---\n{tail(log_path)}",
                    pytrace=False,
                )
            assert up == {"physarum": "1", "anonymous": "0"}
            connected = await api_query(port, 'physarum_peers_connected{job="physarum"}')
            assert [r["value"][1] for r in connected["data"]["result"]] == ["1"]
            anonymous = await api_query(port, '{job="anonymous",__name__!~"up|scrape_.*"}')
            assert anonymous["data"]["result"] == []


def test_prometheus_setup_script_is_idempotent() -> None:
    prometheus_binary()  # installs if needed
    result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert os.access(shutil.which("promtool") or "", os.X_OK)
