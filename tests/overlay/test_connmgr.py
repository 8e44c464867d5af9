"""The connection manager: its pure policy (plan_trim, pick_victim), tags and protection, and its
loop over a fake host on trio's autojump_clock."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from physarum.overlay.connmgr import (
    KBUCKET_WEIGHT,
    ConnectionManager,
    ConnInfo,
    ConnManagerOptions,
    pick_victim,
    plan_trim,
    rank_victims,
)
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.yamux import GO_AWAY_GARBAGE_COLLECTED

_ports = itertools.count(10_000)


def peer(i: int) -> PeerId:
    return PeerId(b"\x00\x05p" + i.to_bytes(4, "big"))


# -- the pure policy --------------------------------------------------------------------------------


def info(
    name: str,
    *,
    peer_no: int | None = None,
    opened_at: float = 0.0,
    value: int = 0,
    protected: bool = False,
    streams: int = 0,
    idle_since: float | None = 0.0,
    spare: bool = False,
    outbound: bool = False,
    ip: str = "127.0.0.1",
) -> ConnInfo[str]:
    p = peer(peer_no if peer_no is not None else zlib.crc32(name.encode()))
    return ConnInfo(name, p, opened_at, value, protected, streams, idle_since, spare, outbound, ip)


OPTS = ConnManagerOptions(low_water=2, high_water=4, grace_period=10.0)


def test_options_check_their_values() -> None:
    assert ConnManagerOptions().high_water <= 100  # the bound on the default
    with pytest.raises(ValueError):
        ConnManagerOptions(low_water=10, high_water=5)
    with pytest.raises(ValueError):
        ConnManagerOptions(low_water=-1)
    with pytest.raises(ValueError):
        ConnManagerOptions(grace_period=-1)
    with pytest.raises(ValueError):
        ConnManagerOptions(min_trim_interval=0)
    with pytest.raises(ValueError):
        ConnManagerOptions(close_timeout=float("inf"))
    ConnManagerOptions(low_water=0, high_water=0, grace_period=0)  # legal: close everything unprotected


def test_nothing_is_trimmed_at_or_under_high_water() -> None:
    conns = [info(f"c{i}") for i in range(4)]
    plan = plan_trim(conns, 100.0, OPTS)
    assert plan.close == [] and plan.retry_at is None


def test_over_high_water_trims_down_to_low_water_lowest_value_first() -> None:
    conns = [info(f"v{v}", value=v) for v in (5, 0, 3, 1, 4)]
    plan = plan_trim(conns, 100.0, OPTS)
    assert plan.close == ["v0", "v1", "v3"]
    assert plan.retry_at is None


def test_protected_and_young_connections_are_never_trimmed() -> None:
    conns = [
        info("protected", protected=True),
        info("young", opened_at=95.0),
        info("old1", value=9),
        info("old2", value=9),
        info("old3", value=9),
    ]
    plan = plan_trim(conns, 100.0, OPTS)
    # 5 open, low water 2: three to go; the young one ranks first but keeps its grace period
    assert plan.close == ["old1", "old2"]
    assert plan.retry_at == 105.0  # when the young one's turn comes


def test_a_valuable_old_connection_is_not_closed_in_place_of_worthless_young_ones() -> None:
    conns = [info("old", value=1)] + [
        info(f"young{i}", opened_at=90.0 + i, idle_since=90.0 + i) for i in range(5)
    ]
    plan = plan_trim(conns, 95.0, OPTS)
    assert plan.close == []
    assert plan.retry_at == 100.0  # young0 opened at 90, grace 10: look again then
    later = plan_trim(conns, 104.0, OPTS)  # young0..3 have come of age: they go, old stays
    assert later.close == ["young0", "young1", "young2", "young3"]


def test_an_unfinished_trim_goes_on_to_low_water_once_its_connections_come_of_age() -> None:
    olds = [info(f"old{i}", value=1) for i in range(3)]
    youngs = [info(f"young{i}", opened_at=95.0) for i in range(2)]
    plan = plan_trim(olds + youngs, 100.0, OPTS)  # 5 > 4: three to go, the two young ones among them
    assert plan.close == ["old0"]
    assert plan.unfinished and plan.retry_at == 105.0
    rest = olds[1:] + youngs  # 4: at high water, so a new trim would not start
    assert plan_trim(rest, 105.0, OPTS).close == []
    assert plan_trim(rest, 105.0, OPTS, unfinished=True).close == ["young0", "young1"]  # to low water


def test_ties_go_to_spare_then_idle_then_longest_idle_then_oldest() -> None:
    conns = [
        info("busy", streams=2, idle_since=None, opened_at=1.0),
        info("idle-recently", idle_since=50.0, opened_at=2.0),
        info("idle-long", idle_since=10.0, opened_at=3.0),
        info("idle-long-older", idle_since=10.0, opened_at=0.5),
        info("spare-valuable", spare=True, value=100, streams=1, idle_since=None),
        info("keep1", value=1),
        info("keep2", value=1),
    ]
    plan = plan_trim(conns, 100.0, OPTS)
    assert plan.close == ["spare-valuable", "idle-long-older", "idle-long", "idle-recently", "busy"]


def test_victims_include_connections_in_their_grace_period() -> None:
    assert pick_victim([info("new", opened_at=99.0)]) == "new"
    assert pick_victim([info("p", protected=True)]) is None
    assert pick_victim([]) is None


def test_victim_order() -> None:
    base = [info("valuable", value=5, opened_at=1.0), info("cheap", value=0, opened_at=1.0)]
    assert pick_victim(base) == "cheap"
    assert pick_victim([*base, info("spare", spare=True, value=50)]) == "spare"
    # inbound before outbound: an attacker cannot make us dial it
    assert pick_victim([info("out", outbound=True, opened_at=5.0), info("in", opened_at=1.0)]) == "in"
    # the remote address holding the most connections, then its newest
    crowd = [info(f"crowd{i}", ip="127.0.0.2", opened_at=float(i)) for i in range(3)]
    assert pick_victim([info("alone", ip="127.0.0.3", opened_at=9.0), *crowd]) == "crowd2"


def test_a_flood_of_fresh_connections_evicts_itself_not_established_or_new_honest_peers() -> None:
    """2,000 fresh connections from one address against a full host: each newcomer, the flooder's
    or an honest one, gets in by closing the flooder's newest; honest peers keep their place."""
    capacity = 64
    honest = [info(f"honest{i}", ip="127.0.0.1", opened_at=float(i)) for i in range(3)]
    conns = honest + [info(f"attack{i}", ip="127.0.0.2", opened_at=100.0) for i in range(capacity - 3)]
    for i in range(2000):
        newcomer = (
            info("honest-new", ip="127.0.0.3", opened_at=200.0 + i)
            if i == 500
            else info(f"attack-late{i}", ip="127.0.0.2", opened_at=200.0 + i)
        )
        victim = pick_victim(conns)
        assert victim is not None and victim.startswith("attack")
        conns = [c for c in conns if c.conn != victim] + [newcomer]
    names = {c.conn for c in conns}
    assert {"honest0", "honest1", "honest2", "honest-new"} <= names


def test_rank_victims_lists_pick_victims_order() -> None:
    conns = [
        info("valuable", value=5, opened_at=1.0),
        info("out", outbound=True, opened_at=5.0),
        info("p", protected=True),
        *[info(f"crowd{i}", ip="127.0.0.2", opened_at=float(i)) for i in range(3)],
        info("alone", ip="127.0.0.3", opened_at=9.0),
    ]
    ranked = rank_victims(conns, 10)
    assert ranked == ["crowd2", "crowd1", "crowd0", "alone", "out", "valuable"]
    assert ranked[0] == pick_victim(conns)
    assert rank_victims(conns, 2) == ranked[:2]
    assert rank_victims([info("p", protected=True)], 5) == []


# -- tags and protection ----------------------------------------------------------------------------


def test_protection_lasts_until_its_last_tag_goes() -> None:
    cm = ConnectionManager()
    a = peer(1)
    assert not cm.is_protected(a)
    cm.protect(a, "bootstrap")
    cm.protect(a, "monitor")
    assert cm.is_protected(a) and cm.is_protected(a, "monitor") and not cm.is_protected(a, "other")
    assert cm.unprotect(a, "monitor") is True  # still protected as a bootstrap
    assert cm.unprotect(a, "bootstrap") is False
    assert not cm.is_protected(a)
    assert cm.unprotect(a, "bootstrap") is False  # unknown: nothing to do


def test_value_sums_tags_and_tag_sources() -> None:
    cm = ConnectionManager()
    a, b = peer(1), peer(2)
    cm.tag_peer(a, "app", 3)
    cm.tag_peer(a, "app", 7)  # replaces
    cm.tag_peer(a, "other", 1)
    table = {b}
    cm.add_tag_source("kbucket", lambda p: KBUCKET_WEIGHT if p in table else 0)
    assert cm.value(a) == 8
    assert cm.value(b) == KBUCKET_WEIGHT
    table.add(a)  # a source is asked each time: never stale
    assert cm.value(a) == 8 + KBUCKET_WEIGHT
    cm.untag_peer(a, "app")
    cm.remove_tag_source("kbucket")
    assert cm.value(a) == 1
    cm.untag_peer(a, "other")
    cm.untag_peer(a, "never-set")
    assert cm.value(a) == 0


# -- the loop, over a fake host ---------------------------------------------------------------------


class FakeSession:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn
        self.streams: dict[int, object] = {}
        self.closed_with: int | None = None

    async def aclose(self, code: int = 0) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed_with is None:
            self.closed_with = code
            self.conn.host.drop(self.conn)


class FakeConn:
    def __init__(self, host: FakeHost, peer_id: PeerId, ip: str, direction: str) -> None:
        self.host = host
        self.peer_id = peer_id
        self.remote_addr = Multiaddr(f"/ip4/{ip}/tcp/{next(_ports)}")
        self.direction = direction
        self.opened_at = trio.current_time()
        self.session = FakeSession(self)

    @property
    def is_closed(self) -> bool:
        return self.session.closed_with is not None


class FakeHost:
    def __init__(self) -> None:
        self.connections: dict[PeerId, list[FakeConn]] = {}
        self.on_connect: list[Callable[[FakeConn], None]] = []
        self.on_disconnect: list[Callable[[FakeConn], None]] = []

    def add(self, peer_id: PeerId, *, ip: str = "127.0.0.1", direction: str = "inbound") -> FakeConn:
        conn = FakeConn(self, peer_id, ip, direction)
        self.connections.setdefault(peer_id, []).append(conn)
        for cb in list(self.on_connect):
            cb(conn)
        return conn

    def drop(self, conn: FakeConn) -> None:
        conns = self.connections[conn.peer_id]
        conns.remove(conn)
        if not conns:
            del self.connections[conn.peer_id]
        for cb in list(self.on_disconnect):
            cb(conn)

    def count(self) -> int:
        return sum(len(c) for c in self.connections.values())


async def test_the_loop_trims_to_low_water_once_the_grace_period_is_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    opts = ConnManagerOptions(low_water=3, high_water=5, grace_period=20.0, check_interval=60.0)
    registry = CollectorRegistry()
    cm = ConnectionManager(opts, registry=registry)
    host = FakeHost()
    boot = peer(0)
    cm.protect(boot, "bootstrap")
    async with trio.open_nursery() as nursery:
        await nursery.start(cm.run, host)
        protected = host.add(boot)
        conns = [host.add(peer(i)) for i in range(1, 8)]
        cm.tag_peer(peer(7), "app", 10)
        assert host.count() == 8
        await trio.sleep(19.9)
        assert host.count() == 8, "nothing is trimmed during the grace period"
        await trio.sleep(0.2)
        # the loop woke when the grace period ended (not at its 60 s check) and trimmed at once
        assert host.count() == 3
        assert not protected.is_closed
        assert not conns[-1].is_closed  # the valuable one
        closed = [c for c in conns if c.is_closed]
        assert len(closed) == 5
        assert {c.session.closed_with for c in closed} == {GO_AWAY_GARBAGE_COLLECTED}
        assert cm.trimmed_total == 5 and cm.trims_total == 1
        assert registry.get_sample_value("physarum_connmgr_trimmed_connections_total") == 5
        assert registry.get_sample_value("physarum_connmgr_protected_peers") == 1
        nursery.cancel_scope.cancel()
    assert host.on_connect == [] and host.on_disconnect == []


async def test_trims_are_spaced_by_min_trim_interval_and_new_connections_wake_the_loop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    opts = ConnManagerOptions(
        low_water=1, high_water=2, grace_period=0.0, min_trim_interval=5.0, check_interval=1000.0
    )
    cm = ConnectionManager(opts)
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        await nursery.start(cm.run, host)
        for i in range(3):
            host.add(peer(i))
        await trio.sleep(0.1)
        assert host.count() == 1  # woken by the third connection, trimmed at once
        first = cm.trims_total
        t0 = trio.current_time()
        for i in range(3, 6):
            host.add(peer(i))
        await trio.sleep(4.0)
        assert host.count() == 4 and cm.trims_total == first  # within min_trim_interval of the last
        await trio.sleep(1.5)
        assert host.count() == 1 and cm.trims_total == first + 1
        assert trio.current_time() - t0 < 6.0  # not the check_interval
        nursery.cancel_scope.cancel()


async def test_busy_connections_outlive_idle_ones_and_idle_since_is_sampled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    opts = ConnManagerOptions(low_water=3, high_water=3, grace_period=1.0, check_interval=2.0)
    cm = ConnectionManager(opts)
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        await nursery.start(cm.run, host)
        a, b, c = host.add(peer(1)), host.add(peer(2)), host.add(peer(3))
        a.session.streams[1] = object()  # a is busy throughout
        c.session.streams[1] = object()
        await trio.sleep(3.0)  # the check at 2 s sees a and c busy, b idle since it opened
        del c.session.streams[1]
        await trio.sleep(2.0)  # the check at 4 s notes c idle from then on
        d = host.add(peer(4))  # over high water; d is in its grace period
        await trio.sleep(0.5)
        # one to close: b, idle longest (all three opened together; a is busy, c idle since 4 s)
        assert [x.is_closed for x in (a, b, c, d)] == [False, True, False, False]
        nursery.cancel_scope.cancel()


async def test_tags_go_with_the_last_connection_and_protection_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cm = ConnectionManager()
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        await nursery.start(cm.run, host)
        a = peer(1)
        first, second = host.add(a), host.add(a)
        cm.tag_peer(a, "app", 4)
        cm.protect(a, "monitor")
        host.drop(first)
        assert cm.value(a) == 4  # still connected
        host.drop(second)
        assert cm.value(a) == 0
        assert cm.is_protected(a)
        nursery.cancel_scope.cancel()


async def test_without_options_nothing_is_trimmed_but_victims_are_still_picked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cm = ConnectionManager(None)
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        await nursery.start(cm.run, host)
        conns = []
        for i in range(300):
            conns.append(host.add(peer(i)))
            await trio.sleep(1)
        await trio.sleep(3600)
        assert host.count() == 300
        assert await cm.trim(host) is None and cm.trimmed_total == 0
        cm.protect(peer(299), "monitor")
        victim = cm.pick_victim(c for cs in host.connections.values() for c in cs)
        assert victim is conns[298]  # the newest unprotected
        assert cm.victims_total == 1
        nursery.cancel_scope.cancel()


async def test_the_spare_of_two_connections_to_one_peer_goes_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    opts = ConnManagerOptions(low_water=2, high_water=2, grace_period=0.0)
    cm = ConnectionManager(opts)
    host = FakeHost()
    cm.add_tag_source("kbucket", lambda p: KBUCKET_WEIGHT)
    older = host.add(peer(1), direction="outbound")
    await trio.sleep(1)
    newer = host.add(peer(1), direction="inbound")
    other = host.add(peer(2))
    assert await cm.trim(host) is None
    assert older.is_closed and not newer.is_closed and not other.is_closed


async def test_a_snapshot_leaves_closed_connections_out() -> None:
    cm = ConnectionManager()
    host = FakeHost()
    a, b = host.add(peer(1)), host.add(peer(2), ip="127.0.0.9", direction="outbound")
    a.session.closed_with = 0
    infos = cm.snapshot([a, b], trio.current_time())
    assert [i.conn for i in infos] == [b]
    assert infos[0].ip == "127.0.0.9" and infos[0].outbound


# -- the command line -------------------------------------------------------------------------------


def test_conn_flags_resolve_to_water_marks() -> None:
    from physarum.cli.flags import UsageError, resolve_conn_manager

    assert resolve_conn_manager(None, None) == ConnManagerOptions()
    assert resolve_conn_manager(10, 20) == ConnManagerOptions(low_water=10, high_water=20)
    assert resolve_conn_manager(None, 20) == ConnManagerOptions(low_water=20, high_water=20)
    assert resolve_conn_manager(200, None) == ConnManagerOptions(low_water=200, high_water=200)
    with pytest.raises(UsageError):
        resolve_conn_manager(30, 20)


def test_the_ping_monitor_trims_only_when_asked_and_other_nodes_by_default() -> None:
    from physarum.cli import bootstrap, ping_monitor
    from physarum.cli.node import conn_manager_options

    opts, _ = ping_monitor.parse_args(["-ephemeral"], env={})
    assert conn_manager_options(opts, monitor=True) is None
    opts, _ = ping_monitor.parse_args(["-ephemeral", "-conn-high", "50"], env={})
    assert conn_manager_options(opts, monitor=True) == ConnManagerOptions(low_water=50, high_water=50)
    node = bootstrap.parse_args(["-ephemeral", "-conn-low", "8", "--conn-high=16"], env={})
    assert conn_manager_options(node, monitor=False) == ConnManagerOptions(low_water=8, high_water=16)
    assert (
        conn_manager_options(bootstrap.parse_args(["-ephemeral"], env={}), monitor=False)
        == ConnManagerOptions()
    )
