"""Connection churn leaves nothing behind: no connections, tasks or file descriptors."""

from __future__ import annotations

import random
import socket

import pytest
import trio

from physarum.errors import DialError
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import KeyPair
from physarum.psk import generate_psk
from tests.integration._util import (
    ECHO,
    Recorder,
    count_fds,
    count_tasks,
    echo_handler,
    echo_round_trip,
    port_of,
    read_until_closed,
    wait_until,
)

CYCLES = 100
FD_SLACK = 2


async def _cycle(dialer: Host, listener: Host, closer: Host, recs: dict[Host, Recorder], i: int) -> None:
    conn = await dialer.connect(listener.addrs[0])
    if i % 4 == 0:
        # Some cycles use the connection first, with a stream left open at disconnect.
        stream = await dialer.new_stream(listener.peer_id, [ECHO])
        await echo_round_trip(stream, b"x" * 100)
        assert len(await dialer.ping(listener.peer_id)) == 1
    if i % 8 != 1:  # the others close while identify may still be running
        with trio.fail_after(5):
            await conn.identified.wait()
    other = listener if closer is dialer else dialer
    await closer.disconnect(other.peer_id)
    for rec in recs.values():
        await rec.wait_disconnected(i + 1)
    # A connection leaves host.connections before on_disconnect fires.
    assert not dialer.connections and not listener.connections, f"cycle {i}"


async def test_connect_disconnect_cycles_leak_nothing() -> None:
    psk = generate_psk()
    rng = random.Random(1234)
    async with open_host(psk=psk) as a, open_host(psk=psk) as b:
        for h in (a, b):
            h.set_handler(ECHO, echo_handler)
        recs = {a: Recorder(a), b: Recorder(b)}

        # Warm up: the first connection may create lasting state (caches, the peer store entry).
        await a.connect(b.addrs[0])
        await a.disconnect(b.peer_id)
        await wait_until(lambda: not a.connections and not b.connections, what="warm-up forgotten")
        for r in recs.values():
            r.connected.clear()
            r.disconnected.clear()
        tasks_before = count_tasks()
        fds_before = count_fds()

        with trio.fail_after(45):
            for i in range(CYCLES):
                dialer, listener = (a, b) if i % 2 == 0 else (b, a)
                closer = rng.choice((a, b))
                await _cycle(dialer, listener, closer, recs, i)

        for r in recs.values():
            assert len(r.connected) == CYCLES and len(r.disconnected) == CYCLES
        assert a.connections == {} and b.connections == {}
        assert a.connected_peers() == [] and b.connected_peers() == []
        await wait_until(lambda: count_tasks() <= tasks_before, what=f"task count back to {tasks_before}")
        await wait_until(lambda: count_fds() <= fds_before + FD_SLACK, what=f"fd count back to {fds_before}")
        # Peer stores stay bounded: one entry each.
        assert len(a.peerstore) == 1 and len(b.peerstore) == 1

        # And the hosts still work.
        assert len(await a.ping(b.addrs[0], count=3)) == 3


async def test_many_peers_connect_and_leave() -> None:
    async with open_host() as hub:
        rec = Recorder(hub)
        tasks_before = count_tasks()
        fds_before = count_fds()
        for round_ in range(3):
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(_visit, hub)
            await wait_until(lambda: not hub.connections, what=f"round {round_}: hub forgets its visitors")
        assert len(rec.connected) == len(rec.disconnected) == 30
        await wait_until(lambda: count_tasks() <= tasks_before, what=f"task count back to {tasks_before}")
        await wait_until(lambda: count_fds() <= fds_before + FD_SLACK, what=f"fd count back to {fds_before}")


async def _visit(hub: Host) -> None:
    async with open_host() as visitor:
        assert len(await visitor.ping(hub.addrs[0], count=2)) == 2


async def test_failed_dials_leak_nothing() -> None:
    """Every way a dial can fail, repeatedly: no task or descriptor survives, on either side."""
    psk = generate_psk()
    async with (
        open_host(psk=psk) as a,
        open_host(psk=generate_psk()) as stranger,
        open_host() as open_peer,
        open_host(psk=psk) as friend,
        trio.open_nursery() as nursery,
    ):
        # A server that accepts and never says a word.
        silent_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        accepted: list[trio.SocketStream] = []

        async def hold(stream: trio.SocketStream) -> None:
            accepted.append(stream)
            try:
                await read_until_closed(stream)
            finally:
                await stream.aclose()

        await nursery.start(trio.serve_listeners, hold, silent_listeners)
        silent_port = silent_listeners[0].socket.getsockname()[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        impostor = f"/ip4/127.0.0.1/tcp/{port_of(friend)}/p2p/{KeyPair.generate().peer_id}"
        targets = [
            stranger.addrs[0],
            open_peer.addrs[0],
            f"/ip4/127.0.0.1/tcp/{closed_port}",
            impostor,
            f"/ip4/127.0.0.1/tcp/{silent_port}",
        ]

        async def fail_all() -> None:
            for target in targets:
                with trio.fail_after(3), pytest.raises(DialError):
                    await a.connect(target, timeout=0.1)
            # ...and the other way round, where it can be.
            for dialer in (stranger, open_peer):
                with trio.fail_after(3), pytest.raises(DialError):
                    await dialer.connect(a.addrs[0], timeout=2)

        await fail_all()  # warm-up
        await wait_until(
            lambda: not any(s.socket.fileno() >= 0 for s in accepted), what="silent server hung up"
        )
        tasks_before, fds_before = count_tasks(), count_fds()
        for _ in range(10):
            await fail_all()
        for h in (a, stranger, open_peer, friend):
            assert h.connections == {}, h
        await wait_until(
            lambda: not any(s.socket.fileno() >= 0 for s in accepted), what="silent server hung up"
        )
        await wait_until(lambda: count_tasks() <= tasks_before, what=f"task count back to {tasks_before}")
        await wait_until(lambda: count_fds() <= fds_before + FD_SLACK, what=f"fd count back to {fds_before}")
        assert len(await a.ping(friend.addrs[0])) == 1
        nursery.cancel_scope.cancel()
