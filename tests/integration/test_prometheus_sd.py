"""Prometheus follows a 5-node network through the ping-monitor's ``/sd``, with the shipped config.

A ping-monitor and four peers serving their own metrics (``peer -prom-listen-addr``: MonitorOptions
with ``ping=False``) run in this process on 127.0.0.1. The real Prometheus (Debian's package, installed
by scripts/prometheus-setup.sh) runs with deploy/prometheus/prometheus.yml, changed only where the
test must: the monitor's URL and 1 s intervals instead of 15-30 s; its rules.yml is loaded beside it.
The tests wait (under a deadline, polling) until Prometheus scrapes all five nodes, and until every
query of deploy/grafana/physarum.json returns data. promtool checks the config and the rules, and
runs the rules' unit tests (deploy/prometheus/rules_test.yml).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from physarum.cli.node import MonitorOptions, RunningNode, run_node
from physarum.monitor.discovery import SD_PATH
from physarum.psk import psk_from_passphrase
from tests.integration.test_prometheus import (
    api_get,
    api_query,
    node_options,
    prometheus_binary,
    run_prometheus,
    tail,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "physarum.json"

#: What the test changes in the shipped config (each must occur exactly once).
EXAMPLE_SD_URL = "http://monitor.example:9100/sd"
FAST = {
    "scrape_interval: 15s": "scrape_interval: 1s",
    "scrape_timeout: 10s": "scrape_timeout: 1s",
    "evaluation_interval: 15s": "evaluation_interval: 1s",
    "refresh_interval: 30s": "refresh_interval: 1s",
}

#: Grafana's variables as the dashboard would get them with a 1 s scrape interval
#: ($__rate_interval is at least four scrape intervals).
VARIABLES = {"$__rate_interval": "5s", "$__interval": "1s", "$__range": "1m", "$job": "physarum"}

PEERS = 4
DEADLINE = 40.0


def promtool() -> str:
    prometheus_binary()  # installs the package (promtool comes with it) when missing
    found = shutil.which("promtool")
    assert found is not None, "promtool is not installed"
    return found


def test_promtool_accepts_the_config_and_the_rules() -> None:
    tool = promtool()
    for args in (["check", "config", str(CONFIG)], ["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False, cwd=CONFIG.parent)
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    rules = RULES.read_text()
    for alert in ("PhysarumMonitorDown", "PhysarumPeerUnreachable", "PhysarumHighRtt"):
        assert f"alert: {alert}" in rules


def test_config_has_one_http_sd_job_following_the_monitor() -> None:
    text = CONFIG.read_text()
    assert text.count("job_name:") == 1
    assert text.count("http_sd_configs:") == 1
    assert text.count(EXAMPLE_SD_URL) == 1
    assert EXAMPLE_SD_URL.endswith(SD_PATH)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows' nested panels included, with
    Grafana's variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, value in VARIABLES.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"unsubstituted variable in {panel['title']!r}: {expr}"
                out.append((panel["title"], expr))

    walk(dashboard["panels"])
    return out


def test_dashboard_covers_what_the_issue_asks() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    types = {p["title"]: p["type"] for p in dashboard["panels"]}
    assert "heatmap" in types.values()
    exprs = " ".join(q for _, q in dashboard_queries())
    for metric in (
        "ping_ewma_rtt",
        "ping_rtt",
        "physarum_pings_rtt_seconds_bucket",
        "physarum_peer_reachable",
        "physarum_peers_connected",
        "physarum_routing_table_peers",
        "physarum_dht_queries_total",
    ):
        assert re.search(rf"\b{metric}\b", exprs), metric


def fast_config(tmp_path: Path, sd_url: str) -> Path:
    """The shipped config and rules in ``tmp_path``, pointing at ``sd_url``, with 1 s intervals."""
    text = CONFIG.read_text()
    for old, new in {EXAMPLE_SD_URL: sd_url, **FAST}.items():
        assert text.count(old) == 1, f"{CONFIG} no longer holds {old!r} once"
        text = text.replace(old, new)
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    shutil.copy(RULES, tmp_path / "rules.yml")
    return config


@asynccontextmanager
async def network() -> AsyncIterator[tuple[RunningNode, list[RunningNode]]]:
    """A ping-monitor and :data:`PEERS` peers, each serving metrics on a free port: on 127.0.0.1, but the
    first peer on every interface (``-prom-listen-addr :0``: listed at the address the monitor sees it
    at, 127.0.0.1, which is all the test contacts)."""
    psk = psk_from_passphrase("prometheus sd test network")
    async with trio.open_nursery() as nursery:
        monitor: RunningNode = await nursery.start(
            lambda task_status: run_node(
                node_options(psk, []),
                monitor=MonitorOptions("127.0.0.1", 0, interval=1.0),
                out=io.StringIO(),
                handle_signals=False,
                task_status=task_status,
            )
        )
        peers: list[RunningNode] = []
        for i in range(PEERS):
            prom_host = None if i == 0 else "127.0.0.1"
            peers.append(
                await nursery.start(
                    partial(
                        run_node,
                        node_options(psk, [monitor.host.addrs[0]]),
                        monitor=MonitorOptions(prom_host, 0, ping=False),
                        out=io.StringIO(),
                        handle_signals=False,
                    )
                )
            )
        try:
            yield monitor, peers
        finally:
            nursery.cancel_scope.cancel()


def sd_url(monitor: RunningNode) -> str:
    assert monitor.metrics_server is not None
    host, port = monitor.metrics_server.addresses[0]
    return f"http://{host}:{port}{SD_PATH}"


async def wait_for_targets(port: int, expected: dict[str, str], log_path: Path) -> list[dict[str, Any]]:
    """Poll /api/v1/targets until the physarum job has exactly ``expected`` (peer id -> role), all up."""
    last: object = None
    try:
        with trio.fail_after(DEADLINE):
            while True:
                try:
                    answer = await api_get(port, "/api/v1/targets?state=active")
                except OSError as e:  # not listening yet
                    last = e
                else:
                    targets = [t for t in answer["data"]["activeTargets"] if t["labels"].get("job") == "physarum"]
                    last = [(t["labels"].get("peer_id"), t["health"], t.get("lastError")) for t in targets]
                    roles = {t["labels"].get("peer_id"): t["labels"].get("role") for t in targets}
                    if roles == expected and all(t["health"] == "up" for t in targets):
                        return targets
                await trio.sleep(0.25)
    except trio.TooSlowError:
        pytest.fail(
            f"Prometheus did not scrape all {len(expected)} nodes through /sd within {DEADLINE:g} s; "
            f"last: {last}\n--- prometheus log (tail) ---\n{tail(log_path)}",
            pytrace=False,
        )


def expected_roles(monitor: RunningNode, peers: list[RunningNode]) -> dict[str, str]:
    return {str(monitor.host.peer_id): "monitor", **{str(p.host.peer_id): "peer" for p in peers}}


async def test_prometheus_discovers_and_scrapes_every_node_through_the_monitor(tmp_path: Path) -> None:
    async with network() as (monitor, peers):
        config = fast_config(tmp_path, sd_url(monitor))
        async with run_prometheus(tmp_path, config) as (port, log_path):
            targets = await wait_for_targets(port, expected_roles(monitor, peers), log_path)
            servers = {str(n.host.peer_id): n.metrics_server for n in (monitor, *peers)}
            for t in targets:
                server = servers[t["labels"]["peer_id"]]
                assert server is not None
                assert t["scrapeUrl"] == f"http://127.0.0.1:{server.addresses[0][1]}/metrics"
            # the rules loaded from rules.yml are evaluated by the real Prometheus
            rules = await api_get(port, "/api/v1/rules")
            names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
            assert {"PhysarumMonitorDown", "PhysarumPeerUnreachable", "PhysarumHighRtt"} <= names
            # every peer's own series carry its peer_id: the DHT's table size of each of the 5 nodes
            tables = await api_query(port, 'physarum_routing_table_peers{job="physarum"}')
            assert {r["metric"]["peer_id"] for r in tables["data"]["result"]} == set(servers)


async def test_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    async with network() as (monitor, peers):
        config = fast_config(tmp_path, sd_url(monitor))
        async with run_prometheus(tmp_path, config) as (port, log_path):
            await wait_for_targets(port, expected_roles(monitor, peers), log_path)
            empty = dict.fromkeys(queries)
            try:
                with trio.fail_after(DEADLINE):
                    while empty:
                        for title, expr in list(empty):
                            answer = await api_query(port, expr)
                            assert answer["status"] == "success", (title, expr, answer)
                            if answer["data"]["result"]:
                                del empty[(title, expr)]
                        if empty:
                            await trio.sleep(0.5)
            except trio.TooSlowError:
                pytest.fail(
                    f"dashboard queries without data after {DEADLINE:g} s: {list(empty)}\n"
                    f"--- prometheus log (tail) ---\n{tail(log_path)}",
                    pytrace=False,
                )


async def get_sd(url: str) -> list[dict[str, Any]]:
    def get() -> list[dict[str, Any]]:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"] == "application/json"
            result: list[dict[str, Any]] = json.loads(response.read())
            return result

    return await trio.to_thread.run_sync(get)


async def test_an_allocator_is_listed_and_departed_peers_drop_out(tmp_path: Path) -> None:
    """The allocator answers the protocol with its -metrics-listen-addr (role allocator); a peer that
    stops drops out of /sd once the monitor's linger has passed (1 s here)."""
    from physarum.cli import allocator
    from physarum.monitor.discovery import DiscoveryOptions

    passphrase = "prometheus sd allocator test"
    psk = psk_from_passphrase(passphrase)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            monitor: RunningNode = await nursery.start(
                lambda task_status: run_node(
                    node_options(psk, []),
                    monitor=MonitorOptions("127.0.0.1", 0, discovery=DiscoveryOptions(linger=1.0)),
                    out=io.StringIO(),
                    handle_signals=False,
                    task_status=task_status,
                )
            )
            url = sd_url(monitor)
            argv = ["-p2p-listen-addr", "127.0.0.1:0", "-metrics-listen-addr", "127.0.0.1:0"]
            opts = allocator.parse_args([*argv, "-psk", passphrase, "-bootstrap", str(monitor.host.addrs[0])], {})
            running, _, alloc_port = await nursery.start(allocator.run_allocator, opts)
            async with trio.open_nursery() as peer_nursery:  # the peer's own, to stop it alone
                peer: RunningNode = await peer_nursery.start(
                    lambda task_status: run_node(
                        node_options(psk, [monitor.host.addrs[0]]),
                        monitor=MonitorOptions("127.0.0.1", 0, ping=False),
                        out=io.StringIO(),
                        handle_signals=False,
                        task_status=task_status,
                    )
                )
                assert peer.metrics_server is not None
                peer_port = peer.metrics_server.addresses[0][1]
                want = {
                    (str(running.host.peer_id), "allocator", f"127.0.0.1:{alloc_port}"),
                    (str(peer.host.peer_id), "peer", f"127.0.0.1:{peer_port}"),
                }
                while True:
                    groups = await get_sd(url)
                    listed = {(g["labels"]["peer_id"], g["labels"]["role"], g["targets"][0]) for g in groups}
                    if want <= listed:
                        break
                    await trio.sleep(0.1)
                peer_nursery.cancel_scope.cancel()
            while any(g["labels"]["peer_id"] == str(peer.host.peer_id) for g in await get_sd(url)):
                await trio.sleep(0.1)
            roles = sorted(g["labels"]["role"] for g in await get_sd(url))
            assert roles == ["allocator", "monitor"]
            nursery.cancel_scope.cancel()


def test_the_commented_token_setup_is_valid(tmp_path: Path) -> None:
    """Uncommenting the two authorization blocks, as the config's comment says, gives a valid config."""
    token = tmp_path / "physarum.token"
    token.write_text("token-0123\n")
    lines = []
    for line in CONFIG.read_text().splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped == "# authorization:":
            line = f"{indent}authorization:"
        elif stripped.startswith("#   credentials_file:"):
            line = f"{indent}  credentials_file: {token}"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    assert text.count("authorization:") == 2 and text.count(str(token)) == 2
    (tmp_path / "prometheus.yml").write_text(text)
    shutil.copy(RULES, tmp_path / "rules.yml")
    result = subprocess.run(
        [promtool(), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
