"""The monitor's topology page in a real headless chromium (Debian's), driven by playwright-core.

Everything runs on 127.0.0.1: the monitor and its peers are real nodes in this process, the page is
loaded from the monitor's metrics port and polls its ``/topology.json``. Screenshots are kept in
build/test-artifacts/. The tests never sleep: each waits (under a deadline) for what the page shows.
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from physarum.cli.flags import NodeOptions
from physarum.cli.node import MonitorOptions, RunningNode, run_node
from physarum.monitor import MetricsServer, PingMonitor, node_registry
from physarum.monitor.topology import TopologyView
from physarum.overlay import ping
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import KeyPair
from physarum.overlay.multiaddr import Multiaddr
from physarum.psk import psk_from_passphrase
from tests.browser._browser import ARTIFACTS, chromium_executable, open_browser

LOOPBACK = Multiaddr("/ip4/127.0.0.1/tcp/0")
RTT_TEXT = re.compile(r"^\d+(\.\d+)? ms$")


@pytest.fixture
def chromium() -> str:
    """Found (or installed) before any node starts: installing blocks."""
    return chromium_executable()


def node_options(psk: bytes, bootstrap: list[Multiaddr]) -> NodeOptions:
    return NodeOptions(
        listen=[LOOPBACK],
        bootstrap=bootstrap,
        psk=psk,
        key_pair=KeyPair.generate(),
        hostname="topology-test",
        debug="",
        psk_source="passphrase",
    )


async def _stoppable(
    opts: NodeOptions, *, task_status: trio.TaskStatus[tuple[RunningNode, trio.CancelScope]]
) -> None:
    """A peer node that stops (its host closes every connection) when its scope is cancelled."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            node = await nursery.start(partial(run_node, opts, out=io.StringIO(), handle_signals=False))
            task_status.started((node, scope))


@asynccontextmanager
async def network(
    n_peers: int,
) -> AsyncIterator[tuple[RunningNode, list[tuple[RunningNode, trio.CancelScope]]]]:
    """The binaries' own node code: a ping-monitor (metrics port on 127.0.0.1, a free port) and
    ``n_peers`` peers bootstrapping to it, each stoppable on its own."""
    psk = psk_from_passphrase("topology page test network")
    async with trio.open_nursery() as nursery:
        monitor: RunningNode = await nursery.start(
            partial(
                run_node,
                node_options(psk, []),
                monitor=MonitorOptions("127.0.0.1", 0, interval=0.5),
                out=io.StringIO(),
                handle_signals=False,
            )
        )
        peers = [
            await nursery.start(_stoppable, node_options(psk, [monitor.host.addrs[0]]))
            for _ in range(n_peers)
        ]
        try:
            yield monitor, peers
        finally:
            nursery.cancel_scope.cancel()


def page_url(server: MetricsServer | None) -> str:
    assert server is not None
    host, port = server.addresses[0]
    return f"http://{host}:{port}/"


async def test_the_page_shows_one_node_per_peer_and_follows_a_departure(
    chromium: str, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with network(3) as (monitor, peers), open_browser(chromium, tmp_path / "driver.log") as browser:
        await browser.call("open", url=page_url(monitor.metrics_server))
        ids = [str(node.host.peer_id) for node, _ in peers]

        shown = await browser.wait_peers(dict.fromkeys(ids, "reachable"), timeout=20)
        assert shown["self"] == str(monitor.host.peer_id)
        assert shown["metrics_link"]
        assert sorted(n["id"] for n in shown["nodes"]) == sorted(ids)
        for node in shown["nodes"]:
            assert RTT_TEXT.match(node["rtt"]), node  # the RTT on each edge
            assert node["sparkline_points"] >= 1, node
        for row in shown["rows"]:
            assert "/ip4/127.0.0.1/tcp/" in row["addresses"], row
        assert "3 peer(s) connected, 3 reachable" in shown["status"]
        await browser.call("screenshot", path=str(ARTIFACTS / "topology.png"))

        # One peer stops: it never became established (the monitor's 30 s), so it leaves the page.
        _, scope = peers[0]
        scope.cancel()
        shown = await browser.wait_peers(dict.fromkeys(ids[1:], "reachable"), timeout=20)
        assert "2 peer(s) connected" in shown["status"]
        await browser.call("screenshot", path=str(ARTIFACTS / "topology-after-leave.png"))
        assert browser.errors == []


@asynccontextmanager
async def monitor_with_page(*, interval: float) -> AsyncIterator[tuple[Host, MetricsServer]]:
    """A monitor whose peers are established by their first answer, so one that leaves stays on the
    page as departed (until it expires)."""
    async with open_host(listen=[LOOPBACK]) as host, trio.open_nursery() as nursery:
        registry = node_registry()
        monitor = PingMonitor(host, registry, hostname="marks-test", interval=interval, established_after=0)
        view = TopologyView(monitor, host)
        server = MetricsServer(registry, host="127.0.0.1", port=0, pages=view.pages())
        await nursery.start(server.run)
        await nursery.start(monitor.run)
        await nursery.start(view.run)
        try:
            yield host, server
        finally:
            nursery.cancel_scope.cancel()


async def test_the_page_marks_unreachable_and_departed_peers(chromium: str, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with (
        monitor_with_page(interval=0.25) as (mon, server),
        open_host(listen=[LOOPBACK]) as steady,
        open_host(listen=[LOOPBACK]) as leaving,
        open_host(listen=[LOOPBACK]) as mute,
        open_browser(chromium, tmp_path / "driver.log") as browser,
    ):
        mute.remove_handler(ping.PROTOCOL_ID)  # connected, but never answers a ping
        for peer in (steady, leaving, mute):
            await peer.connect(mon.addrs[0])
        await browser.call("open", url=page_url(server))
        s, lv, m = str(steady.peer_id), str(leaving.peer_id), str(mute.peer_id)

        shown = await browser.wait_peers({s: "reachable", lv: "reachable", m: "unreachable"}, timeout=20)
        labels = {n["id"]: n["rtt"] for n in shown["nodes"]}
        assert RTT_TEXT.match(labels[s]) and labels[m] == "unreachable"

        await leaving.disconnect(mon.peer_id)
        shown = await browser.wait_peers({s: "reachable", lv: "departed", m: "unreachable"}, timeout=20)
        assert {n["id"]: n["rtt"] for n in shown["nodes"]}[lv] == "departed"
        assert "2 peer(s) connected, 1 reachable" in shown["status"]
        await browser.call("screenshot", path=str(ARTIFACTS / "topology-marks.png"))
        assert browser.errors == []
