"""MemoryReclaimer: when memory is given back after peers leave, and the allocator restart."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from physarum.monitor import reclaim
from physarum.monitor.reclaim import MemoryReclaimer, malloc_trim


class Steps:
    """Fake collect and trim steps that record when they ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def trim(self) -> bool:
        self.calls.append("trim")
        return True


def reclaimer(steps: Steps, **kwargs: float) -> MemoryReclaimer:
    options = {"after": 64, "min_interval": 5.0, "settle": 1.0, **kwargs}
    return MemoryReclaimer(
        after=int(options["after"]),
        min_interval=options["min_interval"],
        settle=options["settle"],
        collect=steps.collect,
        trim=steps.trim,
    )


def leave(r: MemoryReclaimer, n: int, start: float, end: float) -> None:
    """``n`` departures spread evenly from ``start`` to ``end``."""
    for i in range(n):
        r.departed(start + (end - start) * i / max(n - 1, 1))


def test_reclaims_once_a_crowd_has_left() -> None:
    steps = Steps()
    r = reclaimer(steps)
    leave(r, 1000, 10.0, 12.0)  # a crowd leaves over two seconds
    assert not r.maybe_reclaim(11.0, connected=500)  # half of it still connected
    assert not r.maybe_reclaim(12.5, connected=2)  # the last ones left half a second ago
    assert steps.calls == []
    assert r.maybe_reclaim(13.0, connected=2)  # a second without a crowd leaving
    assert steps.calls == ["collect", "trim"] and r.pending == 0 and r.reclaims == 1


def test_a_peer_leaving_now_and_then_does_not_hold_a_reclaim_back() -> None:
    steps = Steps()
    r = reclaimer(steps)
    leave(r, 200, 0.0, 0.5)
    r.departed(1.2)  # a client that came and went meanwhile
    assert r.maybe_reclaim(1.5, connected=3)
    assert steps.calls == ["collect", "trim"]


def test_too_few_departures_never_reclaim() -> None:
    steps = Steps()
    r = reclaimer(steps)
    leave(r, 63, 0.0, 1.0)
    assert not r.maybe_reclaim(100.0, connected=0)
    r.departed(100.0)
    assert r.maybe_reclaim(101.0, connected=0)


def test_not_while_more_peers_are_connected_than_left() -> None:
    """A full collection costs what is live: with 1,000 peers connected, 100 leaving do not pay for it."""
    steps = Steps()
    r = reclaimer(steps)
    leave(r, 100, 0.0, 0.1)
    assert not r.maybe_reclaim(10.0, connected=1000)
    leave(r, 900, 10.0, 10.1)
    assert r.maybe_reclaim(20.0, connected=1000)


def test_sustained_churn_reclaims_every_min_interval() -> None:
    steps = Steps()
    r = reclaimer(steps)
    ran = []
    now = 0.0
    while now < 20.0:
        r.departed(now)  # 100 a second, without a pause
        if r.maybe_reclaim(now, connected=10):
            ran.append(now)
        now = round(now + 0.01, 2)
    # enough once 64 left (0.63 s), run min_interval later; again 64 departures and min_interval on
    assert ran == [5.63, 11.27, 16.91]


def test_trims_once_more_after_a_reclaim() -> None:
    """What the departed connections' timers held is freed as they expire: trimmed a bit later."""
    steps = Steps()
    r = reclaimer(steps)
    leave(r, 100, 0.0, 0.1)
    assert r.maybe_reclaim(2.0, connected=0)
    assert not r.maybe_reclaim(6.9, connected=0)
    assert steps.calls == ["collect", "trim"]
    assert not r.maybe_reclaim(7.0, connected=0)
    assert steps.calls == ["collect", "trim", "trim"]
    r.maybe_reclaim(20.0, connected=0)
    assert steps.calls == ["collect", "trim", "trim"]  # once


def test_after_zero_never_reclaims_and_steps_may_be_skipped() -> None:
    steps = Steps()
    off = reclaimer(steps, after=0)
    leave(off, 10_000, 0.0, 1.0)
    assert not off.maybe_reclaim(100.0, connected=0)
    trim_only = MemoryReclaimer(after=1, collect=None, trim=steps.trim)
    trim_only.departed(0.0)
    assert trim_only.maybe_reclaim(10.0, connected=0)
    assert steps.calls == ["trim"]


@pytest.mark.parametrize("bad", [{"after": -1}, {"min_interval": -1.0}, {"settle": -0.5}])
def test_rejects_negative_settings(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MemoryReclaimer(**bad)  # type: ignore[arg-type]


def test_the_default_steps_run() -> None:
    r = MemoryReclaimer(after=1)
    r.departed(0.0)
    assert r.maybe_reclaim(10.0, connected=0)
    assert isinstance(malloc_trim(), bool)


# -- the allocator restart --


RESTART = (
    "from physarum.monitor.reclaim import restart_with_system_malloc; "
    "restart_with_system_malloc(['-c', 'import os; print(\"restarted\", os.environ[\"PYTHONMALLOC\"])']); "
    "print('not restarted')"
)


def run_restart(env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", RESTART], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim is Linux only")
def test_restarts_under_the_c_allocator() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    expected = "restarted malloc" if reclaim._MALLOC_TRIM is not None else "not restarted"
    assert run_restart(env) == expected


def test_pythonmalloc_set_keeps_the_allocator() -> None:
    assert run_restart({**os.environ, "PYTHONMALLOC": "pymalloc"}) == "not restarted"


def test_a_reclaim_forgets_the_peer_caches_first() -> None:
    steps = Steps()
    r = MemoryReclaimer(after=1, collect=steps.collect, trim=steps.trim, forget=lambda: steps.calls.append("forget"))
    r.departed(0.0)
    assert r.maybe_reclaim(10.0, connected=0)
    assert steps.calls == ["forget", "collect", "trim"]


def test_the_default_forget_empties_the_peer_id_caches() -> None:
    from physarum.dht import keyspace
    from physarum.overlay.identity import KeyPair, _base58

    peer = KeyPair.generate().peer_id
    str(peer), keyspace.peer_key(peer)
    assert _base58.cache_info().currsize > 0 and keyspace.peer_key.cache_info().currsize > 0
    reclaim.forget_peer_caches()
    assert _base58.cache_info().currsize == 0 and keyspace.peer_key.cache_info().currsize == 0
