"""The topology page's snapshot on a fake host and trio's autojump clock: what it shows of each peer,
its bounded history, peers leaving, and the bounds a hostile peer meets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from physarum.errors import ConfigError
from physarum.monitor import PingMonitor, http
from physarum.monitor.topology import (
    CONTENT_SECURITY_POLICY,
    JSON_PATH,
    MAX_ADDR_CHARS,
    SCRIPT_PATH,
    STYLE_PATH,
    TopologyView,
)
from physarum.overlay.identity import KeyPair, PeerId
from tests.monitor._fakes import HANG, FakeConnection, FakeHost, FakeIdentify, FakePeer

WALL = 1_800_000_000.0


class TopologyFakeHost(FakeHost):
    """A fake host with what the page reads besides: our id and addresses, each peer's remote address."""

    def __init__(self) -> None:
        super().__init__()
        self.peer_id: PeerId = KeyPair.generate().peer_id
        self.addrs = [f"/ip4/192.0.2.1/tcp/4001/p2p/{self.peer_id}"]
        self._port = 50000

    def connect(self, peer: FakePeer, *, fire: bool = True) -> FakeConnection:
        self._port += 1
        conn = FakeConnection(peer)
        conn.remote_addr = f"/ip4/198.51.100.9/tcp/{self._port}"  # type: ignore[attr-defined]
        self.conns[peer.peer_id] = conn
        if fire:
            for cb in list(self.on_connect):
                cb(conn)
        return conn


@asynccontextmanager
async def running(
    host: TopologyFakeHost, *, monitor_args: dict[str, Any] | None = None, **view_args: Any
) -> AsyncIterator[tuple[PingMonitor, TopologyView]]:
    monitor = PingMonitor(host, CollectorRegistry(), hostname="topo-1", **(monitor_args or {}))
    view = TopologyView(monitor, host, wall_clock=lambda: WALL + trio.current_time(), **view_args)
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        await nursery.start(view.run)
        try:
            yield monitor, view
        finally:
            nursery.cancel_scope.cancel()


def peers_of(view: TopologyView) -> dict[str, dict[str, Any]]:
    """The snapshot's peers by id, through its JSON (what the page gets)."""
    snap = json.loads(view.json_reply().body)
    return {p["id"]: p for p in snap["peers"]}


async def test_snapshot_shows_self_and_each_peer(autojump_clock: trio.testing.MockClock) -> None:
    host = TopologyFakeHost()
    fast, slow = FakePeer(0.002), FakePeer(0.040)
    host.connect(fast)
    host.connect(slow)
    async with running(host, monitor_args={"interval": 1.0}) as (_, view):
        await trio.sleep(2.5)  # pings at 0, 1, 2
        snap = json.loads(view.json_reply().body)
        assert snap["version"] == 1
        assert snap["interval"] == 1.0
        assert snap["self"] == {"id": str(host.peer_id), "hostname": "topo-1", "addresses": host.addrs}
        assert snap["peers_known"] == 2 and snap["peers_connected"] == 2 and snap["peers_omitted"] == 0
        assert snap["generated_at"] == pytest.approx(WALL + 2.5)
        peers = {p["id"]: p for p in snap["peers"]}
        assert list(peers) == [str(fast.peer_id), str(slow.peer_id)]  # longest connected first
        p = peers[str(slow.peer_id)]
        assert p["state"] == "reachable" and p["connected"] and p["reachable"]
        assert p["rtt_ms"] == pytest.approx(40.0)
        assert p["ewma_ms"] == pytest.approx(40.0)
        assert p["history"] == pytest.approx([40.0, 40.0, 40.0])
        assert p["successes"] == 3 and p["failures"] == 0
        assert p["addresses"][0].startswith("/ip4/198.51.100.9/tcp/")
        assert p["addresses"][1:] == list(slow.listen_addrs)
        assert p["last_seen_ago"] == pytest.approx(0.5 - 0.040)  # its last answer, at 2.040
        assert p["last_seen"] == pytest.approx(WALL + 2.040)
        assert p["connected_for"] == pytest.approx(2.5)


async def test_history_is_one_entry_per_ping_and_bounded(autojump_clock: trio.testing.MockClock) -> None:
    host = TopologyFakeHost()
    rtts = [0.001 * (i + 1) for i in range(12)]
    peer = FakePeer(rtts)
    host.connect(peer)
    async with running(host, monitor_args={"interval": 1.0}, history=5) as (_, view):
        await trio.sleep(3.5)
        assert peers_of(view)[str(peer.peer_id)]["history"] == pytest.approx([1.0, 2.0, 3.0, 4.0])
        await trio.sleep(8)  # 12 pings in all: only the last 5 are kept
        history = peers_of(view)[str(peer.peer_id)]["history"]
        assert history == pytest.approx([8.0, 9.0, 10.0, 11.0, 12.0])
        assert len(view._records[peer.peer_id].history) == 5


async def test_failed_pings_are_gaps_and_mark_the_peer(autojump_clock: trio.testing.MockClock) -> None:
    host = TopologyFakeHost()
    peer = FakePeer(0.005)
    host.connect(peer)
    async with running(host, monitor_args={"interval": 1.0, "timeout": 0.5}) as (_, view):
        await trio.sleep(1.5)
        peer.mode = HANG  # answers no more: each ping times out after 0.5 s
        await trio.sleep(2.2)  # the pings at 2 and 3 failed (at 2.5 and 3.5)
        p = peers_of(view)[str(peer.peer_id)]
        assert p["state"] == "unreachable" and p["connected"] and not p["reachable"]
        assert p["rtt_ms"] is None
        assert p["history"][:2] == pytest.approx([5.0, 5.0])
        assert p["history"][2:] == [None, None]


async def test_a_peer_not_pinged_yet_is_pending(autojump_clock: trio.testing.MockClock) -> None:
    host = TopologyFakeHost()
    peer = FakePeer(mode=HANG)
    host.connect(peer)
    async with running(host, monitor_args={"interval": 1.0, "timeout": 5.0}) as (_, view):
        await trio.sleep(0.5)
        p = peers_of(view)[str(peer.peer_id)]
        assert p["state"] == "pending" and p["history"] == [] and p["rtt_ms"] is None


async def test_a_brief_visitor_leaves_the_page_when_it_disconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = TopologyFakeHost()
    stays, visitor = FakePeer(0.001), FakePeer(0.001)
    host.connect(stays)
    host.connect(visitor)
    async with running(host, monitor_args={"interval": 1.0}) as (_, view):
        await trio.sleep(2.5)
        assert set(peers_of(view)) == {str(stays.peer_id), str(visitor.peer_id)}
        host.disconnect(visitor)  # not established (30 s): the monitor forgets it at once
        await trio.sleep(0.3)  # past the snapshot cache
        snap = json.loads(view.json_reply().body)
        assert [p["id"] for p in snap["peers"]] == [str(stays.peer_id)]
        assert snap["peers_connected"] == 1 and snap["peers_known"] == 1
        await trio.sleep(1)  # the next sample drops what the page kept of it
        assert set(view._records) == {stays.peer_id}


async def test_an_established_peer_that_leaves_is_departed_until_it_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = TopologyFakeHost()
    peer = FakePeer(0.003)
    host.connect(peer)
    monitor_args = {"interval": 1.0, "established_after": 0, "expiry": 10.0}
    async with running(host, monitor_args=monitor_args) as (_, view):
        await trio.sleep(2.5)
        assert peers_of(view)[str(peer.peer_id)]["state"] == "reachable"  # a snapshot samples its pings
        host.disconnect(peer)
        await trio.sleep(3)
        p = peers_of(view)[str(peer.peer_id)]
        assert p["state"] == "departed" and not p["connected"] and not p["reachable"]
        assert p["rtt_ms"] is None and p["connected_for"] is None
        assert p["history"] == pytest.approx([3.0, 3.0, 3.0])  # what it was, no entries after it left
        assert p["last_seen_ago"] == pytest.approx(3.0)
        assert p["addresses"][0].startswith("/ip4/198.51.100.9/tcp/")  # remembered from its connection
        await trio.sleep(8)  # unseen for 10 s: the monitor forgets it, and so does the page
        assert peers_of(view) == {}
        assert view._records == {}


async def test_at_most_max_peers_connected_first(autojump_clock: trio.testing.MockClock) -> None:
    host = TopologyFakeHost()
    peers = [FakePeer(0.001) for _ in range(5)]
    async with running(host, monitor_args={"interval": 1.0}, max_peers=3) as (_, view):
        for p in peers:
            host.connect(p)
            await trio.sleep(0.1)
        await trio.sleep(2)
        snap = json.loads(view.json_reply().body)
        assert [p["id"] for p in snap["peers"]] == [str(p.peer_id) for p in peers[:3]]
        assert snap["peers_omitted"] == 2 and snap["peers_connected"] == 5
        assert len(view._records) == 3
        host.disconnect(peers[0])
        await trio.sleep(1)
        assert [p["id"] for p in peers_of(view).values()] == [str(p.peer_id) for p in peers[1:4]]
        assert set(view._records) == {p.peer_id for p in peers[1:4]}


async def test_a_peer_cannot_flood_the_page_with_addresses(autojump_clock: trio.testing.MockClock) -> None:
    host = TopologyFakeHost()
    peer = FakePeer(0.001, listen_addrs=[f"/dns4/{i}{'a' * 1000}.example/tcp/1" for i in range(100)])
    host.connect(peer)
    async with running(host, monitor_args={"interval": 1.0}, max_addrs=3) as (_, view):
        await trio.sleep(1.5)
        addresses = peers_of(view)[str(peer.peer_id)]["addresses"]
        assert len(addresses) == 3
        assert all(len(a) <= MAX_ADDR_CHARS for a in addresses)
        assert addresses[1].endswith("...")


async def test_identify_arriving_later_updates_the_addresses(autojump_clock: trio.testing.MockClock) -> None:
    host = TopologyFakeHost()
    peer = FakePeer(0.001, identified=False)
    conn = host.connect(peer)
    async with running(host, monitor_args={"interval": 1.0}) as (_, view):
        await trio.sleep(0.5)
        assert len(peers_of(view)[str(peer.peer_id)]["addresses"]) == 1
        conn.identify_info = FakeIdentify(["/ip4/203.0.113.5/tcp/4001"])
        await trio.sleep(1)
        assert peers_of(view)[str(peer.peer_id)]["addresses"][1:] == ["/ip4/203.0.113.5/tcp/4001"]


async def test_snapshot_is_rendered_at_most_once_per_cache_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = TopologyFakeHost()
    async with running(host, monitor_args={"interval": 1.0}, cache_for=0.5) as (_, view):
        first = view.json_reply()
        host.connect(FakePeer(0.001))
        await trio.sleep(0.1)
        assert view.json_reply().body == first.body  # within the cache period: the same rendering
        await trio.sleep(0.5)
        assert view.json_reply().body != first.body
        assert len(json.loads(view.json_reply().body)["peers"]) == 1


async def test_pages_are_served_with_a_strict_policy(autojump_clock: trio.testing.MockClock) -> None:
    host = TopologyFakeHost()
    async with running(host) as (_, view):
        pages = view.pages()
        index = http.route(b"GET", b"/", pages)
        assert isinstance(index, http.Reply) and index.status == 200
        headers = dict(index.headers)
        assert headers["Content-Type"].startswith("text/html")
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert b'href="metrics"' in index.body and b'src="topology.js"' in index.body
        assert b"http://" not in index.body and b"https://" not in index.body  # nothing fetched elsewhere
        for path, kind in (
            (SCRIPT_PATH, "text/javascript"),
            (STYLE_PATH, "text/css"),
            (JSON_PATH, "application/json"),
        ):
            reply = http.route(b"GET", path.encode() + b"?t=1", pages)
            assert isinstance(reply, http.Reply) and reply.status == 200, path
            assert dict(reply.headers)["Content-Type"].startswith(kind)
            assert dict(reply.headers)["X-Content-Type-Options"] == "nosniff"
            # only the SVG namespace, never a fetch of another origin
            assert b"https://" not in reply.body
            assert reply.body.count(b"http://") == reply.body.count(b"http://www.w3.org/2000/svg")
        assert dict(pages[JSON_PATH]().headers)["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "kwargs",
    [{"history": 0}, {"max_peers": 0}, {"max_addrs": 0}, {"sample_interval": 0.0}, {"cache_for": -1.0}],
)
def test_bounds_must_be_positive(kwargs: dict[str, Any]) -> None:
    host = TopologyFakeHost()
    monitor = PingMonitor(host, CollectorRegistry(), hostname="topo-1")
    with pytest.raises(ConfigError):
        TopologyView(monitor, host, **kwargs)
