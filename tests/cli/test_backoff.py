"""Bootstrap reconnection: exponential backoff 1, 2, 4 ... 512, 512 s, on trio's autojump clock."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from physarum.cli.node import MAX_BACKOFF, backoff_delays, keep_connected
from physarum.errors import DialError

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
