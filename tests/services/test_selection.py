import math

import trio
import trio.testing

from physarum.errors import DialError
from physarum.overlay.identity import KeyPair, PeerId
from physarum.services.discovery import service_key
from physarum.services.selection import Selection, Selector, SelectorOptions


class FakeNetwork:
    """Instances with fixed RTTs (seconds); math.inf = never answers; None = refuses."""

    def __init__(self, rtts: dict[PeerId, float | None]) -> None:
        self.rtts = rtts
        self.lookups = 0

    async def find_instances(self, key: bytes, *, timeout: float) -> list[PeerId]:
        assert key == service_key("svc")
        self.lookups += 1
        return list(self.rtts)

    async def ping(self, peer: PeerId, *, timeout: float) -> float:
        rtt = self.rtts[peer]
        if rtt is None:
            raise DialError(peer, {"x": ConnectionRefusedError()})
        await trio.sleep(rtt)
        return rtt


def peers(n: int) -> list[PeerId]:
    return [KeyPair.generate().peer_id for _ in range(n)]


async def test_ranks_by_rtt_within_one_budget(autojump_clock: trio.testing.MockClock) -> None:
    a, b, c, d = peers(4)
    net = FakeNetwork({a: 0.030, b: 0.002, c: math.inf, d: None})
    sel = Selector(net, SelectorOptions(ping_budget=1.0))
    start = trio.current_time()
    s = await sel.select("svc")
    assert trio.current_time() - start <= 1.0 + 1e-6  # the hanging one cost the budget, not more
    assert [x.peer_id for x in s.ranked] == [b, a]
    assert s.close_enough and s.best is not None and abs(s.best.rtt_ms - 2.0) < 1e-6
    # cached: a second select neither looks up nor waits
    t = trio.current_time()
    await sel.select("svc")
    assert net.lookups == 1 and trio.current_time() == t


async def test_hard_limit_never_used_and_soft_limit_reported(autojump_clock: trio.testing.MockClock) -> None:
    a, b = peers(2)
    net = FakeNetwork({a: 0.030, b: 0.012})
    told: list[Selection] = []
    sel = Selector(net, SelectorOptions(soft_rtt_ms=5, hard_rtt_ms=20), on_not_close_enough=told.append)
    s = await sel.select("svc")
    assert [x.peer_id for x in s.ranked] == [b]  # 30 ms is over the hard limit
    assert not s.close_enough and told == [s]
    assert a not in sel.cached("svc")
    # the slow one gets faster: re-pinged, it becomes usable
    net.rtts[b] = 0.004
    await sel.refresh()
    s = await sel.select("svc")
    assert s.close_enough and s.best is not None and s.best.peer_id == b


async def test_cache_evicts_dead_instance_within_a_refresh(autojump_clock: trio.testing.MockClock) -> None:
    a, b = peers(2)
    net = FakeNetwork({a: 0.001, b: 0.003})
    sel = Selector(net, SelectorOptions(refresh_interval=1.0, rediscover_interval=math.inf))
    async with trio.open_nursery() as nursery:
        await nursery.start(sel.run)
        assert (await sel.select("svc")).best.peer_id == a  # type: ignore[union-attr]
        net.rtts[a] = None  # killed
        died = trio.current_time()
        while a in sel.cached("svc"):
            await trio.sleep(0.01)
        assert trio.current_time() - died <= 2.0
        assert (await sel.select("svc")).best.peer_id == b  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_failure_report_and_idle_expiry(autojump_clock: trio.testing.MockClock) -> None:
    a, b = peers(2)
    net = FakeNetwork({a: 0.001, b: 0.003})
    sel = Selector(net, SelectorOptions(idle_expiry=60, rediscover_interval=math.inf))
    await sel.select("svc")
    sel.report_failure("svc", a)
    assert list(sel.cached("svc")) == [b]
    await trio.sleep(61)
    await sel.refresh()
    assert sel.cached("svc") == {}


async def test_concurrent_selects_share_one_lookup(autojump_clock: trio.testing.MockClock) -> None:
    (a,) = peers(1)
    net = FakeNetwork({a: 0.010})
    sel = Selector(net)
    results: list[Selection] = []

    async def one() -> None:
        results.append(await sel.select("svc"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one)
    assert net.lookups == 1 and all(r.best and r.best.peer_id == a for r in results)


async def test_no_instance_is_retried_only_after_a_pause(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork({})
    sel = Selector(net, SelectorOptions(retry_empty_after=1.0))
    assert (await sel.select("svc")).ranked == ()
    await sel.select("svc")
    assert net.lookups == 1
    await trio.sleep(1.0)
    await sel.select("svc")
    assert net.lookups == 2
