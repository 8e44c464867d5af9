"""Bootstrap reconnection (physarum.overlay.backoff): exponential backoff 1, 2, 4 ... 512, 512 s, and
keeping a bootstrap peer connected through a host, on trio's autojump clock."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
import trio.testing

from physarum.errors import DialError, ProtocolError
from physarum.overlay.backoff import MAX_BACKOFF, backoff_delays, keep_bootstrap_connected, keep_connected
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import AddressError, Multiaddr
from physarum.overlay.yamux import GO_AWAY_GARBAGE_COLLECTED, GO_AWAY_NORMAL

SCHEDULE = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 512, 512]


def test_backoff_delays() -> None:
    assert list(itertools.islice(backoff_delays(), 12)) == SCHEDULE
    assert MAX_BACKOFF == 512
    assert list(itertools.islice(backoff_delays(cap=5), 5)) == [1, 2, 4, 5, 5]


class FakePeer:
    """Dials succeed when ``up``; a connection lasts ``lifetime`` seconds of trio time (None: forever)."""

    def __init__(self, *, up: bool = False, lifetime: float | None = None, connected: bool = False) -> None:
        self.up = up
        self.lifetime = lifetime
        self.connected = connected
        self.dials: list[float] = []
        self.changed = trio.Event()

    async def dial(self) -> None:
        self.dials.append(trio.current_time())
        await trio.sleep(0)
        if not self.up:
            raise DialError(None, {"/ip4/127.0.0.1/tcp/1": ConnectionRefusedError()})
        self.connected = True

    def is_connected(self) -> bool:
        return self.connected

    async def wait_disconnected(self) -> None:
        if self.lifetime is None:
            await trio.sleep_forever()
        await trio.sleep(self.lifetime)
        self.connected = False


async def run_for(peer: FakePeer, seconds: float, **kwargs: object) -> list[float]:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        await trio.sleep(delay)

    with trio.move_on_after(seconds):
        await keep_connected(peer.dial, peer.is_connected, peer.wait_disconnected, sleep=sleep, **kwargs)  # type: ignore[arg-type]
    return slept


async def test_unreachable_peer_is_retried_forever_with_capped_backoff(
    autojump_clock: trio.abc.Clock,
) -> None:
    peer = FakePeer(up=False)
    slept = await run_for(peer, sum(SCHEDULE) - 0.5)
    assert slept == SCHEDULE
    # dials at 0, 1, 3, 7, ... (each after the previous delay)
    assert peer.dials == pytest.approx(list(itertools.accumulate([0, *SCHEDULE[:-1]])))
    more = await run_for(FakePeer(up=False), 24 * 3600)
    assert more[:10] == SCHEDULE[:10] and set(more[10:]) == {512}


async def test_peer_coming_up_is_connected_on_the_next_attempt(autojump_clock: trio.abc.Clock) -> None:
    peer = FakePeer(up=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_for(peer, 10_000))
        await trio.sleep(20)  # attempts at 0, 1, 3, 7, 15; next at 31
        peer.up = True
        await trio.sleep(15)
        assert peer.connected
        assert peer.dials[-1] == pytest.approx(31)
        nursery.cancel_scope.cancel()


async def test_stable_connection_that_drops_is_redialled_at_once(autojump_clock: trio.abc.Clock) -> None:
    peer = FakePeer(up=True, lifetime=100.0)
    slept = await run_for(peer, 350)
    assert slept == []
    assert peer.dials == pytest.approx([0, 100, 200, 300])


async def test_flapping_connection_continues_the_schedule(autojump_clock: trio.abc.Clock) -> None:
    """A peer that accepts and hangs up after 1 s is not dialed in a tight loop."""
    peer = FakePeer(up=True, lifetime=1.0)
    slept = await run_for(peer, 60, stable_after=30.0)
    assert slept[:5] == [1, 2, 4, 8, 16]


async def test_failures_after_a_stable_connection_start_again_at_one_second(
    autojump_clock: trio.abc.Clock,
) -> None:
    peer = FakePeer(up=False)
    async with trio.open_nursery() as nursery:
        slept: list[float] = []

        async def sleep(delay: float) -> None:
            slept.append(delay)
            await trio.sleep(delay)

        nursery.start_soon(
            lambda: keep_connected(peer.dial, peer.is_connected, peer.wait_disconnected, sleep=sleep)
        )
        await trio.sleep(40)  # 1, 2, 4, 8, 16 -> next dial at 31 fails, sleeping 32
        assert slept == [1, 2, 4, 8, 16, 32]
        peer.up, peer.lifetime = True, 50.0
        await trio.sleep(40)  # dial at 63 succeeds; drops at 113
        peer.up = False  # at 80; the connection drops at 113: dials at 113, 114, 116, 120, 128, 144
        await trio.sleep(70)
        assert slept[6:] == [1, 2, 4, 8, 16, 32]
        nursery.cancel_scope.cancel()


async def test_already_connected_peer_is_not_dialed(autojump_clock: trio.abc.Clock) -> None:
    peer = FakePeer(connected=True, lifetime=None)
    await run_for(peer, 1000)
    assert peer.dials == []


async def test_unexpected_errors_propagate(autojump_clock: trio.abc.Clock) -> None:
    async def dial() -> None:
        raise ValueError("a bug")

    async def never() -> None:
        await trio.sleep_forever()

    with pytest.raises(ValueError):
        await keep_connected(dial, lambda: False, never)


# ---- keep_bootstrap_connected, through a host ----

BOOT = KeyPair(bytes(range(32))).peer_id
BOOT_ADDR = Multiaddr(f"/ip4/127.0.0.1/tcp/4001/p2p/{BOOT}")


class FakeSession:
    def __init__(self) -> None:
        self.closed = trio.Event()
        self.go_away_code: int | None = None


class FakeConnection:
    def __init__(self) -> None:
        self.session = FakeSession()


class FakeHost:
    """What keep_bootstrap_connected uses of a host: ``connect`` and ``connection``."""

    def __init__(self, *, up: bool = True) -> None:
        self.up = up
        self.conn: FakeConnection | None = None
        self.dials: list[tuple[float, Multiaddr, float]] = []
        self.asked: set[PeerId] = set()

    async def connect(self, target: Multiaddr, *, timeout: float) -> FakeConnection:
        self.dials.append((trio.current_time(), target, timeout))
        await trio.sleep(0)
        if not self.up:
            raise DialError(BOOT, {str(target): ConnectionRefusedError()})
        self.conn = FakeConnection()
        return self.conn

    def connection(self, peer_id: PeerId) -> FakeConnection | None:
        self.asked.add(peer_id)
        return self.conn

    def drop(self, code: int | None = None) -> None:
        conn, self.conn = self.conn, None
        assert conn is not None
        conn.session.go_away_code = code
        conn.session.closed.set()


async def test_an_address_without_a_peer_id_is_refused_before_any_dial() -> None:
    host = FakeHost()
    with pytest.raises(AddressError):
        await keep_bootstrap_connected(host, Multiaddr("/ip4/127.0.0.1/tcp/4001"))
    assert host.dials == []


async def test_the_bootstrap_peer_is_dialed_watched_and_redialed(autojump_clock: trio.abc.Clock) -> None:
    host = FakeHost()
    joined: list[tuple[float, FakeConnection]] = []

    async def on_connected(conn: FakeConnection) -> None:
        joined.append((trio.current_time(), conn))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: keep_bootstrap_connected(host, BOOT_ADDR, dial_timeout=3.0, on_connected=on_connected)
        )
        await trio.sleep(100)
        assert [(t, a, timeout) for t, a, timeout in host.dials] == [(0, BOOT_ADDR, 3.0)]
        assert host.asked == {BOOT}
        first = host.conn
        assert joined == [(0, first)]
        host.drop(GO_AWAY_NORMAL)  # up for 100 s: a stable connection, redialed at once
        await trio.sleep(1)
        assert [t for t, _, _ in host.dials] == [0, 100]
        assert len(joined) == 2 and joined[1][1] is host.conn is not first
        nursery.cancel_scope.cancel()


async def test_a_peer_that_trimmed_us_is_redialed_after_the_longest_delay(
    autojump_clock: trio.abc.Clock,
) -> None:
    host = FakeHost()
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        await trio.sleep(delay)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: keep_bootstrap_connected(host, BOOT_ADDR, sleep=sleep, max_delay=300.0))
        await trio.sleep(100)
        host.drop(GO_AWAY_GARBAGE_COLLECTED)
        await trio.sleep(299)
        assert len(host.dials) == 1  # still waiting out its connection manager
        await trio.sleep(2)
        assert [t for t, _, _ in host.dials] == [0, 400]
        assert slept == [300.0]
        nursery.cancel_scope.cancel()


async def test_a_connection_the_peer_opened_counts_and_is_not_dialed_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    host = FakeHost()
    host.conn = FakeConnection()
    joined: list[FakeConnection] = []

    async def on_connected(conn: FakeConnection) -> None:
        joined.append(conn)

    with trio.move_on_after(1000):
        await keep_bootstrap_connected(host, BOOT_ADDR, on_connected=on_connected)
    assert host.dials == [] and joined == [host.conn]


async def test_a_peer_failure_in_on_connected_is_logged_and_the_loop_goes_on(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="physarum.overlay.backoff")
    host = FakeHost()
    calls = 0

    async def on_connected(conn: FakeConnection) -> None:
        nonlocal calls
        calls += 1
        raise ProtocolError("the bootstrap peer answered garbage")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: keep_bootstrap_connected(host, BOOT_ADDR, on_connected=on_connected))
        await trio.sleep(50)
        assert calls == 1 and len(host.dials) == 1  # still connected: watched, not redialed
        assert "answered garbage" in caplog.text
        host.drop()
        await trio.sleep(1)
        assert calls == 2 and len(host.dials) == 2
        nursery.cancel_scope.cancel()


async def test_a_bug_in_on_connected_propagates(autojump_clock: trio.abc.Clock) -> None:
    async def on_connected(conn: FakeConnection) -> None:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await keep_bootstrap_connected(FakeHost(), BOOT_ADDR, on_connected=on_connected)


async def test_an_unreachable_bootstrap_peer_follows_the_schedule(autojump_clock: trio.abc.Clock) -> None:
    host = FakeHost(up=False)
    with trio.move_on_after(sum(SCHEDULE[:6]) + 0.5):
        await keep_bootstrap_connected(host, BOOT_ADDR)
    assert [t for t, _, _ in host.dials] == pytest.approx(list(itertools.accumulate([0, *SCHEDULE[:6]])))
