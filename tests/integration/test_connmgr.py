"""The connection manager on real hosts (127.0.0.1): trimming to low water after the grace period,
protected and valuable peers kept, the GoAway code a trimmed peer sees, the bootstrap backoff that
code triggers, and the DHT's routing-table tag."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from physarum.dht.service import KadDHT
from physarum.overlay.backoff import keep_bootstrap_connected
from physarum.overlay.connmgr import KBUCKET_WEIGHT, ConnManagerOptions
from physarum.overlay.host import Connection, Host, open_host
from physarum.overlay.yamux import GO_AWAY_GARBAGE_COLLECTED, GO_AWAY_NORMAL
from tests.integration._util import LOOPBACK, connection_count, wait_until

GRACE = 1.0


async def test_a_host_trims_to_low_water_after_the_grace_period_keeping_protected_and_valuable_peers() -> (
    None
):
    opts = ConnManagerOptions(low_water=3, high_water=5, grace_period=GRACE, check_interval=0.5)
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(open_host(None, listen=[LOOPBACK], conn_manager=opts))
        peers: list[Host] = [
            await stack.enter_async_context(open_host(None, listen=[LOOPBACK], conn_manager=None))
            for _ in range(8)
        ]
        bootstrap, valuable = peers[0], peers[1]
        hub.conn_manager.protect(bootstrap.peer_id, "bootstrap")
        hub.conn_manager.tag_peer(valuable.peer_id, "app", 10)
        closed_at: list[tuple[Connection, float]] = []
        hub.on_disconnect.append(lambda c: closed_at.append((c, trio.current_time())))
        seen_codes: list[int | None] = []
        for p in peers:
            p.on_disconnect.append(lambda c: seen_codes.append(c.session.go_away_code))

        for p in peers:
            await p.connect(hub.addrs[0])
        await wait_until(lambda: len(closed_at) == 5, timeout=15, what="5 connections trimmed")
        assert connection_count(hub) == 3
        assert {bootstrap.peer_id, valuable.peer_id} <= set(hub.connected_peers())
        for conn, when in closed_at:
            assert when - conn.opened_at >= GRACE, "trimmed during its grace period"
        assert hub.conn_manager.trimmed_total == 5
        await wait_until(lambda: len(seen_codes) == 5, what="the peers saw their connections close")
        assert set(seen_codes) == {GO_AWAY_GARBAGE_COLLECTED}


@pytest.mark.parametrize("slow_join", [False, True])
async def test_a_bootstrap_that_trims_us_is_dialed_again_after_the_longest_backoff_not_at_once(
    slow_join: bool,
) -> None:
    opts = ConnManagerOptions(low_water=0, high_water=0, grace_period=0.2, check_interval=0.5)
    async with (
        open_host(None, listen=[LOOPBACK], conn_manager=opts) as boot,
        open_host(None, listen=[LOOPBACK]) as node,
        trio.open_nursery() as nursery,
    ):
        node.conn_manager.protect(boot.peer_id, "bootstrap")
        delays: list[float] = []

        async def sleep(seconds: float) -> None:
            delays.append(seconds)
            await trio.sleep_forever()

        async def join(conn: Connection) -> None:
            if slow_join:  # still joining when the bootstrap trims the connection
                await conn.session.closed.wait()

        nursery.start_soon(
            lambda: keep_bootstrap_connected(
                node, boot.addrs[0], sleep=sleep, max_delay=300.0, on_connected=join
            )
        )
        await wait_until(lambda: bool(delays), timeout=10, what="the bootstrap trimmed us")
        assert delays == [300.0]
        assert node.connection(boot.peer_id) is None
        nursery.cancel_scope.cancel()


async def test_a_bootstrap_that_closes_normally_is_dialed_again_on_the_usual_schedule() -> None:
    async with (
        open_host(None, listen=[LOOPBACK], conn_manager=None) as boot,
        open_host(None, listen=[LOOPBACK]) as node,
        trio.open_nursery() as nursery,
    ):
        delays: list[float] = []
        codes: list[int | None] = []
        node.on_disconnect.append(lambda c: codes.append(c.session.go_away_code))

        async def sleep(seconds: float) -> None:
            delays.append(seconds)
            await trio.sleep_forever()

        nursery.start_soon(
            lambda: keep_bootstrap_connected(node, boot.addrs[0], sleep=sleep, max_delay=300.0)
        )
        await wait_until(lambda: boot.connection(node.peer_id) is not None, what="connected")
        await boot.disconnect(node.peer_id)
        await wait_until(lambda: bool(delays) and bool(codes), what="the node noticed")
        assert codes == [GO_AWAY_NORMAL]
        assert delays == [1.0]  # the first step of PhysarumSM's backoff (the connection was short)
        nursery.cancel_scope.cancel()


async def test_routing_table_peers_carry_the_kbucket_weight() -> None:
    async with (
        open_host(None, listen=[LOOPBACK]) as a,
        open_host(None, listen=[LOOPBACK]) as b,
        trio.open_nursery() as nursery,
    ):
        dht_a = KadDHT.for_host(a)
        dht_b = KadDHT.for_host(b, bootstrap=[a.addrs[0]])
        await nursery.start(dht_a.run)
        await nursery.start(dht_b.run)
        with trio.fail_after(10):
            await dht_b.bootstrapped.wait()
        await wait_until(lambda: b.peer_id in dht_a.table, what="b in a's routing table")
        assert a.conn_manager.value(b.peer_id) == KBUCKET_WEIGHT
        assert b.conn_manager.value(a.peer_id) == KBUCKET_WEIGHT
        stranger = await open_stranger(a)
        assert a.conn_manager.value(stranger) == 0
        nursery.cancel_scope.cancel()


async def open_stranger(a: Host) -> object:
    """A peer id that is not in anyone's table."""
    async with open_host(None, listen=[LOOPBACK]) as c:
        return c.peer_id


def test_hosts_get_the_default_manager_and_none_turns_trimming_off() -> None:
    assert Host().conn_manager.options == ConnManagerOptions()
    assert Host(conn_manager=None).conn_manager.options is None
