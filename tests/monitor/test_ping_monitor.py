"""PingMonitor on a fake host and trio's autojump clock: RTTs, EWMA, expiry, failures, stream reuse."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY, CollectorRegistry

from physarum.monitor import MemoryReclaimer, PingMonitor
from physarum.monitor.ping_monitor import _PingFailed
from tests.monitor._fakes import (
    BAD_ECHO,
    EOF,
    HANG,
    OK,
    RESET,
    UNSUPPORTED,
    FakeConnection,
    FakeHost,
    FakeIdentify,
    FakePeer,
    FakeStream,
)

HOSTNAME = "monitor-1"


@pytest.fixture
def autojump() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def rtt_ms(registry: CollectorRegistry, peer: FakePeer) -> float | None:
    return value(registry, "ping_rtt", targetHost=str(peer.peer_id), host=HOSTNAME)


def ewma_ms(registry: CollectorRegistry, peer: FakePeer) -> float | None:
    return value(registry, "ping_ewma_rtt", targetHost=str(peer.peer_id), host=HOSTNAME)


def reachable(registry: CollectorRegistry, peer: FakePeer) -> float | None:
    return value(registry, "physarum_peer_reachable", peer=str(peer.peer_id))


def failures(registry: CollectorRegistry, peer: FakePeer, reason: str) -> float | None:
    return value(registry, "physarum_ping_failures_total", peer=str(peer.peer_id), reason=reason)


def series_of(registry: CollectorRegistry, peer: FakePeer) -> list[str]:
    """Every sample that names the peer, in any label."""
    text = str(peer.peer_id)
    return [s.name for metric in registry.collect() for s in metric.samples if text in s.labels.values()]


@asynccontextmanager
async def running(
    host: FakeHost, registry: CollectorRegistry | None = None, **kwargs: object
) -> AsyncIterator[tuple[PingMonitor, CollectorRegistry]]:
    registry = registry if registry is not None else CollectorRegistry()
    kwargs.setdefault("peer_histograms", True)  # these tests read each peer's histogram
    monitor = PingMonitor(host, registry, hostname=HOSTNAME, **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run)
        try:
            yield monitor, registry
        finally:
            nursery.cancel_scope.cancel()


async def sleep_until(t: float) -> None:
    await trio.sleep_until(t)


# -- RTT samples and EWMA --


async def test_by_default_one_histogram_for_all_peers(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    fast, slow = FakePeer(0.001), FakePeer(0.010)
    host.connect(fast)
    host.connect(slow)
    async with running(host, interval=1.0, peer_histograms=False) as (_monitor, registry):
        await trio.sleep(2.5)  # three pings each
        get = registry.get_sample_value
        assert get("physarum_pings_rtt_seconds_count") == 6
        assert get("physarum_pings_rtt_seconds_bucket", {"le": "0.0025"}) == 3
        assert get("physarum_pings_rtt_seconds_bucket", {"le": "+Inf"}) == 6
        assert get("physarum_ping_rtt_seconds_count", {"peer": str(fast.peer_id)}) is None
        assert rtt_ms(registry, slow) == pytest.approx(10.0)  # the per-peer gauges stay


async def test_rtt_sample_in_ms_histogram_in_seconds(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    peer = FakePeer(0.010)
    host.connect(peer)
    async with running(host, interval=1.0) as (monitor, registry):
        await trio.sleep(0.5)
        assert rtt_ms(registry, peer) == pytest.approx(10.0)
        assert ewma_ms(registry, peer) == pytest.approx(10.0)
        assert reachable(registry, peer) == 1
        label = str(peer.peer_id)
        assert value(registry, "physarum_ping_rtt_seconds_count", peer=label) == 1
        assert value(registry, "physarum_ping_rtt_seconds_sum", peer=label) == pytest.approx(0.010)
        assert value(registry, "physarum_ping_rtt_seconds_bucket", peer=label, le="0.01") == 1
        assert value(registry, "physarum_ping_rtt_seconds_bucket", peer=label, le="0.005") == 0
        await trio.sleep(3)
        assert value(registry, "physarum_ping_rtt_seconds_count", peer=label) == 4
        stats = monitor.peers[peer.peer_id]
        assert stats.successes == 4 and stats.failures == 0
        assert stats.last_rtt == pytest.approx(0.010)


async def test_rtt_ends_when_the_kernel_stamped_the_echo(autojump: trio.testing.MockClock) -> None:
    # The echo reached the socket 3 ms after the ping was written, but this process (busy, or
    # waking up) read it 200 ms later: the RTT is the 3 ms.
    host = FakeHost()
    peer = FakePeer(0.200, arrival=0.003)
    host.connect(peer)
    async with running(host, interval=1.0) as (monitor, registry):
        await trio.sleep(0.5)
        assert rtt_ms(registry, peer) == pytest.approx(3.0, abs=1.0)
        stream = peer.streams[0]
        assert stream.direct_socket is not None and stream.direct_socket.stamping
        assert monitor.peers[peer.peer_id].last_rtt == pytest.approx(0.003, abs=0.001)


@pytest.mark.parametrize("arrival", [-5.0, 10.0])
async def test_a_stepped_wall_clock_falls_back_to_the_monotonic_rtt(
    autojump: trio.testing.MockClock, arrival: float
) -> None:
    # The wall clock moved between the write and the stamp (NTP stepped it back, or forward by
    # more than the RTT): the stamp says nothing, the monotonic RTT is used.
    host = FakeHost()
    peer = FakePeer(0.020, arrival=arrival)
    host.connect(peer)
    async with running(host, interval=1.0) as (_monitor, registry):
        await trio.sleep(0.5)
        assert rtt_ms(registry, peer) == pytest.approx(20.0)


async def test_ewma_factor_one_tenth_first_sample_initialises(autojump: trio.testing.MockClock) -> None:
    samples = [0.010, 0.020, 0.030, 0.030, 0.001]
    host = FakeHost()
    peer = FakePeer(samples)
    host.connect(peer)
    expected: list[float] = []
    ewma: float | None = None
    for s in samples:
        ewma = s * 1000 if ewma is None else 0.1 * s * 1000 + 0.9 * ewma
        expected.append(ewma)
    assert expected[:3] == pytest.approx([10.0, 11.0, 12.9])
    async with running(host, interval=1.0) as (_, registry):
        for i, s in enumerate(samples):
            await sleep_until(i + 0.5)
            assert rtt_ms(registry, peer) == pytest.approx(s * 1000)
            assert ewma_ms(registry, peer) == pytest.approx(expected[i])


async def test_pings_every_interval_from_connect(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    early, late = FakePeer(0.001), FakePeer(0.001)
    host.connect(early)
    async with running(host, interval=1.0):
        await sleep_until(2.25)
        host.connect(late)
        await sleep_until(4.5)
    assert early.ping_started_at == pytest.approx([0, 1, 2, 3, 4])
    assert late.ping_started_at == pytest.approx([2.25, 3.25, 4.25])


async def test_pings_to_different_peers_run_concurrently(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    peers = [FakePeer(0.9) for _ in range(20)]
    for p in peers:
        host.connect(p)
    async with running(host, interval=1.0) as (_, registry):
        await sleep_until(0.95)
        # 20 pings of 0.9 s each all answered within the first second: not one after another.
        assert all(rtt_ms(registry, p) == pytest.approx(900.0) for p in peers)


async def test_slow_ping_skips_missed_ticks(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    peer = FakePeer(2.5)
    host.connect(peer)
    async with running(host, interval=1.0, timeout=5.0) as (monitor, _):
        await sleep_until(9.9)
    assert peer.ping_started_at == pytest.approx([0, 3, 6, 9])
    assert monitor.peers[peer.peer_id].failures == 0


# -- stream reuse --


async def test_one_stream_reused_and_closed_with_fin_on_stop(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    peer = FakePeer(0.002)
    host.connect(peer)
    async with running(host, interval=1.0):
        await sleep_until(9.5)
    assert peer.echoes == 10
    assert len(peer.streams) == 1
    stream = peer.streams[0]
    assert stream.pings == 10
    assert stream.closed and not stream.was_reset  # FIN, not RST


async def test_reused_stream_reset_by_responder_is_replaced_without_failure(
    autojump: trio.testing.MockClock,
) -> None:
    """js-libp2p aborts an inbound ping stream 10 s after opening it: that is not a failed ping."""
    host = FakeHost()
    peer = FakePeer(0.002, stream_lifetime=10.0)
    host.connect(peer)
    async with running(host, interval=1.0) as (monitor, registry):
        await sleep_until(35.5)
        assert monitor.peers[peer.peer_id].failures == 0
        assert monitor.peers[peer.peer_id].successes == 36
        assert rtt_ms(registry, peer) == pytest.approx(2.0)
    assert len(peer.streams) == 4
    assert all(s.was_reset for s in peer.streams[:3])


@pytest.mark.parametrize("mode", [EOF, RESET])
async def test_reused_stream_ended_mid_ping_is_retried_once(
    autojump: trio.testing.MockClock, mode: str
) -> None:
    host = FakeHost()
    peer = FakePeer(0.002)
    host.connect(peer)
    async with running(host, interval=1.0) as (monitor, _):
        await sleep_until(0.5)
        peer.mode = mode  # the reused stream fails; the fresh one fails too: one failure, two streams
        await sleep_until(1.5)
        stats = monitor.peers[peer.peer_id]
        assert stats.failures == 1
        assert len(peer.streams) == 2
        peer.mode = OK
        await sleep_until(2.5)
        assert stats.successes == 2 and stats.failures == 1


# -- failures --


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (HANG, "timeout"),
        (BAD_ECHO, "protocol"),
        (EOF, "protocol"),
        (RESET, "closed"),
        (UNSUPPORTED, "unsupported"),
    ],
)
async def test_failures_counted_by_reason(autojump: trio.testing.MockClock, mode: str, reason: str) -> None:
    host = FakeHost()
    bad, good = FakePeer(0.003, mode=mode), FakePeer(0.004)
    host.connect(bad)
    host.connect(good)
    async with running(host, interval=1.0, timeout=0.5) as (monitor, registry):
        await sleep_until(4.9)
        assert failures(registry, bad, reason) == 5
        assert monitor.peers[bad.peer_id].failures_by_reason == {reason: 5}
        assert rtt_ms(registry, bad) is None and ewma_ms(registry, bad) is None
        assert reachable(registry, bad) == 0
        # the other peer never noticed
        assert monitor.peers[good.peer_id].successes == 5
        assert rtt_ms(registry, good) == pytest.approx(4.0)
        assert failures(registry, good, reason) is None


async def test_timeout_resets_the_stream_and_recovery_restores_gauges(
    autojump: trio.testing.MockClock,
) -> None:
    host = FakeHost()
    peer = FakePeer(0.005)
    host.connect(peer)
    async with running(host, interval=1.0, timeout=0.5) as (monitor, registry):
        await sleep_until(0.9)
        assert rtt_ms(registry, peer) == pytest.approx(5.0)
        peer.mode = HANG
        await sleep_until(1.4)
        assert rtt_ms(registry, peer) == pytest.approx(5.0)  # the ping is still within its deadline
        await sleep_until(1.6)
        assert rtt_ms(registry, peer) is None  # failed: no stale RTT
        assert ewma_ms(registry, peer) is None
        assert reachable(registry, peer) == 0
        assert peer.streams[0].was_reset  # a late echo must never be read as the next answer
        peer.mode = OK
        await sleep_until(2.9)
        assert rtt_ms(registry, peer) == pytest.approx(5.0)
        assert reachable(registry, peer) == 1
        assert len(peer.streams) == 2
        # the EWMA survived the single lost ping on a live connection
        assert monitor.peers[peer.peer_id].ewma_ms == pytest.approx(5.0)
        assert failures(registry, peer, "timeout") == 1


async def test_a_ping_slower_than_the_interval_but_within_timeout_is_a_success(
    autojump: trio.testing.MockClock,
) -> None:
    host = FakeHost()
    peer = FakePeer(1.5)
    host.connect(peer)
    async with running(host, interval=1.0, timeout=2.0) as (monitor, registry):
        await sleep_until(1.6)
        assert rtt_ms(registry, peer) == pytest.approx(1500.0)
        assert monitor.peers[peer.peer_id].failures == 0


# -- disconnects and expiry --


async def test_established_peer_keeps_history_for_the_grace_and_reachable_0_until_expiry(
    autojump: trio.testing.MockClock,
) -> None:
    host = FakeHost()
    peer, other = FakePeer(0.002), FakePeer(0.002)
    host.connect(peer)
    host.connect(other)
    async with running(host, interval=1.0, expiry=600.0, established_after=2.0, grace=60.0) as (
        monitor,
        registry,
    ):
        await sleep_until(2.5)
        assert rtt_ms(registry, peer) is not None
        assert monitor.peers[peer.peer_id].established  # answered 2 s into its connection
        host.disconnect(peer)
        assert rtt_ms(registry, peer) is None
        assert ewma_ms(registry, peer) is None
        assert reachable(registry, peer) == 0
        assert value(registry, "physarum_peers_connected") == 1
        gone_at = trio.current_time()
        await trio.sleep(0.001)
        assert peer.streams[0].was_reset  # its stream was abandoned with the connection
        await sleep_until(gone_at + 59)
        histogram = {
            "physarum_ping_rtt_seconds_bucket",
            "physarum_ping_rtt_seconds_count",
            "physarum_ping_rtt_seconds_sum",
        }
        assert set(series_of(registry, peer)) == {*histogram, "physarum_peer_reachable"}
        await sleep_until(gone_at + 61.01)  # the grace is over: only the series an alert needs
        assert series_of(registry, peer) == ["physarum_peer_reachable"]
        assert reachable(registry, peer) == 0
        assert peer.peer_id in monitor.peers
        await sleep_until(gone_at + 598)
        assert series_of(registry, peer) == ["physarum_peer_reachable"]
        await sleep_until(gone_at + 601.01)
        assert series_of(registry, peer) == []
        assert peer.peer_id not in monitor.peers
        assert rtt_ms(registry, other) == pytest.approx(2.0)  # untouched


async def test_expiry_removes_failure_counters_too(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    peer = FakePeer(0.002)
    host.connect(peer)
    async with running(host, interval=1.0, timeout=0.5, expiry=30.0, established_after=0) as (_, registry):
        await sleep_until(0.5)
        peer.mode = HANG
        await sleep_until(3.9)
        assert failures(registry, peer, "timeout") == 3
        host.disconnect(peer)
        assert reachable(registry, peer) == 0
        await sleep_until(35)
        assert series_of(registry, peer) == []


async def test_connected_peer_failing_pings_is_still_seen(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    peer = FakePeer(0.002, mode=HANG)
    host.connect(peer)
    async with running(host, interval=1.0, timeout=0.5, expiry=10.0) as (_, registry):
        await sleep_until(30.9)
        assert reachable(registry, peer) == 0
        assert failures(registry, peer, "timeout") == 31


# -- peers seen only briefly --


@pytest.mark.parametrize(
    "client", [{"listen_addrs": ()}, {"identified": False}], ids=["no-listen-addrs", "never-identified"]
)
async def test_client_is_forgotten_as_soon_as_it_disconnects(
    autojump: trio.testing.MockClock, client: dict[str, object]
) -> None:
    host = FakeHost()
    peer, node = FakePeer(0.002, **client), FakePeer(0.002)  # type: ignore[arg-type]
    host.connect(peer)
    host.connect(node)
    async with running(host, interval=1.0, expiry=600.0, established_after=0) as (monitor, registry):
        await sleep_until(2.5)
        assert rtt_ms(registry, peer) == pytest.approx(2.0)  # pinged like any peer while connected
        assert reachable(registry, peer) == 1
        assert not monitor.peers[peer.peer_id].listening
        assert monitor.peers[node.peer_id].listening
        host.disconnect(peer)
        host.disconnect(node)
        assert series_of(registry, peer) == []  # at once, not after the expiry
        assert peer.peer_id not in monitor.peers
        assert reachable(registry, node) == 0  # a node stays, at 0, until it expires
        assert value(registry, "physarum_peers_connected") == 0
        await trio.sleep(0.001)
        assert peer.streams[0].was_reset  # its stream was abandoned with the connection
        assert series_of(registry, peer) == []


async def test_five_one_shot_clients_leave_no_series(autojump: trio.testing.MockClock) -> None:
    """Five `peer find` runs, each a fresh identity that stays a moment: nothing left behind."""
    host = FakeHost()
    node = FakePeer(0.002)
    host.connect(node)
    async with running(host, interval=1.0) as (monitor, registry):
        clients = [FakePeer(0.003, listen_addrs=()) for _ in range(5)]
        for client in clients:
            host.connect(client)
            await trio.sleep(1.5)
            assert rtt_ms(registry, client) == pytest.approx(3.0)
            host.disconnect(client)
        for client in clients:
            assert series_of(registry, client) == []
        assert set(monitor.peers) == {node.peer_id}
        assert value(registry, "physarum_peers_connected") == 1
        assert {s.labels["peer"] for m in registry.collect() for s in m.samples if "peer" in s.labels} == {
            str(node.peer_id)
        }


async def test_failing_client_never_becomes_an_unreachable_series(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    client = FakePeer(0.002, mode=HANG, listen_addrs=())
    host.connect(client)
    async with running(host, interval=1.0, timeout=0.5) as (_, registry):
        await sleep_until(2.9)
        assert reachable(registry, client) == 0  # while connected, failures show as for any peer
        assert failures(registry, client, "timeout") == 3
        host.disconnect(client)
        assert series_of(registry, client) == []
        await sleep_until(5)
        assert series_of(registry, client) == []  # the cancelled ping recorded nothing afterwards


@pytest.mark.parametrize("outcome", ["echo", "timeout"])
async def test_a_ping_ending_as_its_client_disconnects_records_nothing(
    autojump: trio.testing.MockClock, outcome: str
) -> None:
    """The connection closes while the ping's result is being taken (the echo has arrived, or the timed-out
    stream is being reset): the client is forgotten, and the finished ping must not bring it back."""
    host = FakeHost()
    client = FakePeer(0.002, listen_addrs=(), mode=OK if outcome == "echo" else HANG)

    def disconnect() -> None:
        if client.peer_id in host.conns:
            host.disconnect(client)

    if outcome == "echo":
        client.on_echo = disconnect
    else:
        client.on_reset = disconnect
    host.connect(client)
    async with running(host, interval=1.0, timeout=0.5) as (monitor, registry):
        await sleep_until(3)
        assert client.peer_id not in host.conns  # the hook did disconnect it
        assert series_of(registry, client) == []
        assert client.peer_id not in monitor.peers


async def test_identify_arriving_after_connect_makes_a_node(autojump: trio.testing.MockClock) -> None:
    """Identify completes a moment after on_connect: seen at the next ping, or at disconnect."""
    host = FakeHost()
    by_ping, by_disconnect = FakePeer(0.002, identified=False), FakePeer(0.002, identified=False)
    conn_ping, conn_disconnect = host.connect(by_ping), host.connect(by_disconnect)
    async with running(host, interval=1.0, established_after=0) as (monitor, registry):
        await sleep_until(0.5)
        assert not monitor.peers[by_ping.peer_id].listening
        conn_ping.identify_info = FakeIdentify(["/ip4/192.0.2.8/tcp/4001"])
        await sleep_until(1.5)
        assert monitor.peers[by_ping.peer_id].listening
        conn_disconnect.identify_info = FakeIdentify(["/ip4/192.0.2.9/tcp/4001"])
        host.disconnect(by_disconnect)  # before its next ping
        host.disconnect(by_ping, fire=False)  # a missed callback: the sweep stops the worker
        await sleep_until(2.01)
        for peer in (by_ping, by_disconnect):
            assert reachable(registry, peer) == 0
            assert rtt_ms(registry, peer) is None
            assert not monitor.peers[peer.peer_id].connected


async def test_a_node_stays_a_node_across_reconnects(autojump: trio.testing.MockClock) -> None:
    """Once a peer told us a listen address, a later connection without identify does not make it a client."""
    host = FakeHost()
    peer = FakePeer(0.002)
    host.connect(peer)
    async with running(host, interval=1.0, established_after=0) as (monitor, registry):
        await sleep_until(0.5)
        host.disconnect(peer)
        peer.identified = False
        host.connect(peer)
        await sleep_until(1.5)
        host.disconnect(peer)
        assert reachable(registry, peer) == 0
        assert monitor.peers[peer.peer_id].listening


async def test_reconnect_within_expiry_resets_ewma(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    peer = FakePeer([0.010, 0.010, 0.050])
    host.connect(peer)
    async with running(host, interval=1.0) as (_, registry):
        await sleep_until(1.5)
        assert ewma_ms(registry, peer) == pytest.approx(10.0)
        host.disconnect(peer)
        await sleep_until(100)
        host.connect(peer)
        await sleep_until(100.5)
        assert rtt_ms(registry, peer) == pytest.approx(50.0)
        assert ewma_ms(registry, peer) == pytest.approx(50.0)  # a new connection starts a new average
        assert reachable(registry, peer) == 1


async def test_missed_callbacks_are_caught_by_the_sweep(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    before = FakePeer(0.002)
    host.connect(before)  # connected before the monitor started
    async with running(host, interval=1.0, established_after=0) as (monitor, registry):
        await sleep_until(0.5)
        assert rtt_ms(registry, before) == pytest.approx(2.0)
        silent = FakePeer(0.002)
        host.connect(silent, fire=False)
        host.disconnect(before, fire=False)
        await sleep_until(1.01)  # one sweep
        assert rtt_ms(registry, before) is None
        assert not monitor.peers[before.peer_id].connected
        await sleep_until(1.5)
        assert rtt_ms(registry, silent) == pytest.approx(2.0)


async def test_stopping_removes_callbacks_and_closes_streams(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    peers = [FakePeer(0.001) for _ in range(3)]
    for p in peers:
        host.connect(p)
    async with running(host, interval=1.0):
        await sleep_until(0.5)
        assert len(host.on_connect) == 1 and len(host.on_disconnect) == 1
    assert host.on_connect == [] and host.on_disconnect == []
    assert all(p.streams[0].closed for p in peers)


# -- the other metrics --


async def test_peers_connected_and_build_info(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    registry = CollectorRegistry()
    peers = [FakePeer() for _ in range(3)]
    for p in peers:
        host.connect(p)
    async with running(host, registry):
        assert value(registry, "physarum_peers_connected") == 3
        host.disconnect(peers[0])
        assert value(registry, "physarum_peers_connected") == 2
        host.connect(peers[0])
        assert value(registry, "physarum_peers_connected") == 3
        build = [s for m in registry.collect() for s in m.samples if s.name == "physarum_build_info"]
        assert len(build) == 1 and build[0].value == 1
        assert set(build[0].labels) == {"version", "python"}


async def test_one_label_name_for_the_peer(autojump: trio.testing.MockClock) -> None:
    """``peer`` on physarum's own metrics; PhysarumSM's ``targetHost`` only on its two gauges."""
    host = FakeHost()
    ok, bad = FakePeer(0.002), FakePeer(mode=HANG)
    host.connect(ok)
    host.connect(bad)
    async with running(host, timeout=0.5) as (_, registry):
        await sleep_until(0.9)
        labels: dict[str, set[str]] = {}
        for metric in registry.collect():
            for sample in metric.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
    assert labels["ping_rtt"] == labels["ping_ewma_rtt"] == {"targetHost", "host"}
    assert labels["physarum_ping_rtt_seconds_bucket"] == {"peer", "le"}
    assert labels["physarum_ping_rtt_seconds_count"] == {"peer"}
    assert labels["physarum_ping_failures_total"] == {"peer", "reason"}
    assert labels["physarum_peer_reachable"] == {"peer"}
    assert not any("target" in names for name, names in labels.items() if name.startswith("physarum_"))


async def test_the_monitor_exports_no_routing_table_gauge(autojump: trio.testing.MockClock) -> None:
    """The DHT exports its routing table itself, on the registry it is given."""
    async with running(FakeHost()) as (_, registry):
        assert all("routing" not in m.name for m in registry.collect())
    with pytest.raises(TypeError):
        PingMonitor(FakeHost(), CollectorRegistry(), hostname="a", routing_table_size=lambda: 1)  # type: ignore[call-arg]


async def test_metrics_stay_off_the_global_registry(autojump: trio.testing.MockClock) -> None:
    before = {m.name for m in REGISTRY.collect()}
    host = FakeHost()
    host.connect(FakePeer())
    async with running(host):
        await trio.sleep(1.5)
    assert {m.name for m in REGISTRY.collect()} == before
    assert "ping_rtt" not in before


def test_two_monitors_cannot_share_a_registry() -> None:
    registry = CollectorRegistry()
    PingMonitor(FakeHost(), registry, hostname="a")
    with pytest.raises(ValueError):
        PingMonitor(FakeHost(), registry, hostname="b")


@pytest.mark.parametrize(
    "bad",
    [
        {"interval": 0},
        {"timeout": -1},
        {"expiry": 0},
        {"max_peer_series": 0},
        {"grace": -1},
        {"established_after": -0.5},
    ],
)
def test_rejects_bad_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PingMonitor(FakeHost(), CollectorRegistry(), hostname="a", **bad)  # type: ignore[arg-type]


async def test_many_peers_churning(autojump: trio.testing.MockClock) -> None:
    """Connect and disconnect peers at random moments: workers track connections exactly."""
    import random

    rng = random.Random(4)
    host = FakeHost()
    peers = [FakePeer(rng.uniform(0.0001, 0.05)) for _ in range(30)]
    connected: set[int] = set()
    async with running(host, interval=1.0, expiry=20.0) as (monitor, registry):
        for _ in range(300):
            i = rng.randrange(len(peers))
            if i in connected:
                host.disconnect(peers[i])
                connected.discard(i)
            else:
                host.connect(peers[i])
                connected.add(i)
            await trio.sleep(rng.uniform(0, 0.3))
        await trio.sleep(1.01)
        for i, p in enumerate(peers):
            if i in connected:
                assert rtt_ms(registry, p) is not None
            else:
                assert rtt_ms(registry, p) is None
        assert set(monitor._pingers) == {peers[i].peer_id for i in connected}
        await trio.sleep(25)
        assert set(monitor.peers) == {peers[i].peer_id for i in connected}


# -- which peers leave series behind, and how many peers have series --


def peer_labels(registry: CollectorRegistry) -> set[str]:
    """Every peer id that appears in a series."""
    return {
        v
        for m in registry.collect()
        for s in m.samples
        for k, v in s.labels.items()
        if k in ("peer", "targetHost")
    }


async def test_a_brief_visit_leaves_nothing_behind(autojump: trio.testing.MockClock) -> None:
    """A node that listens and answers, but leaves before ``established_after``: forgotten at once."""
    host = FakeHost()
    brief, stays = FakePeer(0.002), FakePeer(0.002)
    host.connect(brief)
    host.connect(stays)
    async with running(host, interval=1.0, established_after=30.0) as (monitor, registry):
        await sleep_until(29.5)  # its last answer came 29 s into the connection
        assert reachable(registry, brief) == 1
        assert not monitor.peers[brief.peer_id].established
        host.disconnect(brief)
        assert series_of(registry, brief) == []
        assert brief.peer_id not in monitor.peers
        await sleep_until(30.5)
        assert monitor.peers[stays.peer_id].established  # answered 30 s into its connection
        host.disconnect(stays)
        assert reachable(registry, stays) == 0


async def test_a_peer_that_never_answers_leaves_nothing_behind(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    silent = FakePeer(mode=HANG)
    host.connect(silent)
    async with running(host, interval=1.0, timeout=0.5, established_after=0) as (monitor, registry):
        await sleep_until(100)
        assert reachable(registry, silent) == 0 and failures(registry, silent, "timeout") == 100
        host.disconnect(silent)
        assert series_of(registry, silent) == []
        assert silent.peer_id not in monitor.peers


async def test_established_stays_across_short_reconnects(autojump: trio.testing.MockClock) -> None:
    """A node that flaps after having been up for a while still ends as ``reachable 0``."""
    host = FakeHost()
    peer = FakePeer(0.002)
    host.connect(peer)
    async with running(host, interval=1.0, established_after=10.0) as (monitor, registry):
        await sleep_until(10.5)
        host.disconnect(peer)
        for t in (20, 40):
            await sleep_until(t)
            host.connect(peer)
            await sleep_until(t + 1.5)
            host.disconnect(peer)
            assert reachable(registry, peer) == 0
        assert monitor.peers[peer.peer_id].established


async def test_peers_over_the_limit_are_pinged_without_series(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    peers = [FakePeer(0.002) for _ in range(5)]
    for p in peers:
        host.connect(p)
    async with running(host, interval=1.0, timeout=0.5, max_peer_series=3) as (monitor, registry):
        await sleep_until(2.5)
        tracked, untracked = peers[:3], peers[3:]
        assert peer_labels(registry) == {str(p.peer_id) for p in tracked}
        assert all(monitor.peers[p.peer_id].successes == 3 for p in peers)  # everyone is pinged
        assert value(registry, "physarum_metrics_peers") == 3
        assert value(registry, "physarum_metrics_peers_dropped_total", reason="limit") == 2
        assert value(registry, "physarum_metrics_peers_dropped_total", reason="evicted") == 0
        assert value(registry, "physarum_peers_connected") == 5
        assert value(registry, "physarum_peers_reachable") == 5
        assert value(registry, "physarum_pings_total", result="ok") == 15
        untracked[0].mode = HANG
        await sleep_until(10)
        assert value(registry, "physarum_peers_reachable") == 4
        assert value(registry, "physarum_pings_total", result="timeout") >= 1  # type: ignore[operator]
        assert failures(registry, untracked[0], "timeout") is None
        # a tracked peer leaves (briefly seen: forgotten): the sweep gives its slot to the longest waiting
        host.disconnect(tracked[0])
        await sleep_until(11.6)  # the sweep at 11 s, then the failure of the ping sent at 11 s
        assert peer_labels(registry) == {str(p.peer_id) for p in (*tracked[1:], untracked[0])}
        assert reachable(registry, untracked[0]) == 0
        assert failures(registry, untracked[0], "timeout") in (1, 2)  # counted from its promotion on
        assert value(registry, "physarum_metrics_peers") == 3


async def test_a_newcomer_evicts_the_peer_that_left_first(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    first, second, stays = FakePeer(0.002), FakePeer(0.002), FakePeer(0.002)
    for p in (first, second, stays):
        host.connect(p)
    async with running(host, interval=1.0, established_after=0, max_peer_series=3) as (monitor, registry):
        await sleep_until(1.5)
        host.disconnect(first)
        await sleep_until(2.5)
        host.disconnect(second)
        assert reachable(registry, first) == reachable(registry, second) == 0
        newcomer = FakePeer(0.002)
        host.connect(newcomer)
        await sleep_until(3)
        assert series_of(registry, first) == [] and first.peer_id not in monitor.peers
        assert reachable(registry, second) == 0
        assert reachable(registry, newcomer) == 1
        assert value(registry, "physarum_metrics_peers_dropped_total", reason="evicted") == 1
        # every slot now belongs to a connected peer or to `second`; connected peers are never evicted
        host.connect(second)
        late = FakePeer(0.002)
        host.connect(late)
        await sleep_until(4)
        assert series_of(registry, late) == []
        assert value(registry, "physarum_metrics_peers_dropped_total", reason="limit") == 1
        assert [rtt_ms(registry, p) for p in (second, stays, newcomer)] == pytest.approx([2.0, 2.0, 2.0])


def exposition_size(monitor: PingMonitor) -> int:
    return len(monitor.metrics.exposition())


async def test_five_rounds_of_1000_throwaway_identities_leave_no_series(
    autojump: trio.testing.MockClock,
) -> None:
    """The issue's attack: identities that listen and answer pings, come by the thousand, and go."""
    host = FakeHost()
    honest = [FakePeer(0.002), FakePeer(0.003)]
    for p in honest:
        host.connect(p)
    async with running(host, interval=1.0) as (monitor, registry):  # the defaults
        await sleep_until(40)
        start = exposition_size(monitor)
        for _ in range(5):
            crowd = [FakePeer(0.001) for _ in range(1000)]
            for p in crowd:
                host.connect(p)
            await trio.sleep(2.5)
            assert value(registry, "physarum_peers_reachable") == 1002
            assert exposition_size(monitor) > 1000 * 2000  # they did have series (some 2.4 KB each)
            for p in crowd:
                host.disconnect(p)
            assert abs(exposition_size(monitor) - start) < 200  # a few more digits in counters
            assert set(monitor.peers) == {p.peer_id for p in honest}
        assert peer_labels(registry) == {str(p.peer_id) for p in honest}
        assert all(rtt_ms(registry, p) is not None for p in honest)


async def test_established_identities_churning_stay_within_the_limit(
    autojump: trio.testing.MockClock,
) -> None:
    """The same attack by identities that wait to be established: at most ``max_peer_series`` peers
    have series, departed ones keep one series after the grace, and honest connected peers keep theirs."""
    host = FakeHost()
    honest = [FakePeer(0.002), FakePeer(0.003)]
    for p in honest:
        host.connect(p)
    limit = 1500
    async with running(
        host, interval=1.0, established_after=2.0, grace=10.0, expiry=600.0, max_peer_series=limit
    ) as (monitor, registry):
        await sleep_until(5)
        start = exposition_size(monitor)
        per_peer = start  # an upper bound: two peers' series and everything else
        line = len(f'physarum_peer_reachable{{peer="{honest[0].peer_id}"}} 0.0\n')
        for _ in range(5):
            crowd = [FakePeer(0.001) for _ in range(1000)]
            for p in crowd:
                host.connect(p)
            await trio.sleep(3)
            assert len(peer_labels(registry)) <= limit
            assert exposition_size(monitor) < limit * per_peer
            for p in crowd:
                host.disconnect(p)
            await trio.sleep(11)  # the grace: the departed keep only physarum_peer_reachable 0
            assert exposition_size(monitor) <= start + limit * line
            assert all(rtt_ms(registry, p) is not None for p in honest)
        assert value(registry, "physarum_metrics_peers") == limit
        assert value(registry, "physarum_metrics_peers_dropped_total", reason="evicted") == 5000 - (limit - 2)
        assert value(registry, "physarum_metrics_peers_dropped_total", reason="limit") == 0
        await trio.sleep(600)
        assert peer_labels(registry) == {str(p.peer_id) for p in honest}
        assert abs(exposition_size(monitor) - start) < 200
        assert set(monitor.peers) == {p.peer_id for p in honest}


# -- memory given back after a crowd leaves --


class _Steps:
    def __init__(self) -> None:
        self.at: list[tuple[str, float]] = []

    def collect(self) -> int:
        self.at.append(("collect", trio.current_time()))
        return 0

    def trim(self) -> bool:
        self.at.append(("trim", trio.current_time()))
        return True


async def test_the_sweep_gives_memory_back_once_a_crowd_left(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    honest = FakePeer(0.002)
    host.connect(honest)
    async with running(host, interval=1.0) as (monitor, _):
        steps = _Steps()
        monitor.reclaimer = MemoryReclaimer(collect=steps.collect, trim=steps.trim)  # the defaults
        crowd = [FakePeer(0.001) for _ in range(300)]
        for p in crowd:
            host.connect(p)
        await sleep_until(10.5)
        for p in crowd[:40]:  # a few leave: not worth a full collection
            host.disconnect(p)
        await sleep_until(20.5)
        assert steps.at == []
        for p in crowd[40:]:
            host.disconnect(p)
        assert monitor.reclaimer.pending == 300
        await sleep_until(30.5)
        # the first sweep a second after the crowd left; the heap trimmed once more 5 s later
        assert steps.at == [("collect", 22.0), ("trim", 22.0), ("trim", 27.0)]
        assert monitor.reclaimer.pending == 0


async def test_a_monitor_can_be_told_never_to_reclaim(autojump: trio.testing.MockClock) -> None:
    host = FakeHost()
    async with running(host, interval=1.0, reclaim_after=0) as (monitor, _):
        crowd = [FakePeer(0.001) for _ in range(100)]
        for p in crowd:
            host.connect(p)
        await sleep_until(2.5)
        for p in crowd:
            host.disconnect(p)
        await sleep_until(20)
        assert monitor.reclaimer.reclaims == 0


@pytest.mark.parametrize("mode", [RESET, HANG, UNSUPPORTED])
async def test_a_failed_ping_leaves_no_cycle_holding_the_connection(
    autojump: trio.testing.MockClock, mode: str
) -> None:
    """A failed ping's exception, kept in a local of the frame its traceback holds, made a cycle that
    kept the connection until a full collection (which a busy node may put off for minutes)."""
    host = FakeHost()
    peer = FakePeer(0.002, mode=mode)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        async with running(host, interval=1.0, timeout=0.5) as (monitor, _):
            host.connect(peer)
            await sleep_until(3.9)
            assert monitor.peers[peer.peer_id].failures >= 3
            host.disconnect(peer)
            await sleep_until(4.5)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kept = [o for o in gc.garbage if isinstance(o, FakeConnection | FakeStream | _PingFailed)]
        assert kept == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
