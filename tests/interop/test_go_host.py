"""physarum's host against a real go-libp2p node (tests/interop/go, built by its setup.sh) on loopback.

Both directions: connect with and without a PSK, a wrong or missing key refused, ping (many pings
on one stream, counted on the answering side), identify with signed peer records, and the ping
monitor showing a go-libp2p peer in ``ping_rtt``.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from physarum.errors import DialError
from physarum.overlay.envelope import open_peer_record
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import PeerId, PublicKey
from physarum.overlay.yamux import YamuxStream
from physarum.psk import PskMismatchError, generate_psk, load_key_file, write_key_file
from tests.integration._util import ECHO, echo_handler
from tests.integration.test_monitor import monitor_node, rtt_series, scrape, wait_scrape
from tests.interop._util import PingStreams, bare
from tests.interop.partner import Partner, PartnerError, go_peer_argv, open_partner

pytestmark = pytest.mark.interop

PING = "/ipfs/ping/1.0.0"
IDENTIFY = "/ipfs/id/1.0.0"
KAD = "/ipfs/kad/1.0.0"


@pytest.fixture
async def go(psk_file: Path) -> AsyncIterator[Partner]:
    async with open_partner(go_peer_argv("--psk-file", str(psk_file))) as partner:
        yield partner


@pytest.fixture
async def host(psk_file: Path) -> AsyncIterator[Host]:
    async with open_host(psk=load_key_file(psk_file)) as h:
        yield h




async def test_partner_reports_its_versions(go: Partner) -> None:
    versions = go.ready["versions"]
    assert versions["go-libp2p"].startswith("v0.") and versions["go-libp2p-kad-dht"].startswith("v0.")
    assert go.ready["pnet"] is True and go.ready["kad"] is False
    assert all(a.startswith("/ip4/127.0.0.1/tcp/") and a.endswith(f"/p2p/{go.peer_id}") for a in go.addrs)


async def test_physarum_dials_go_pings_on_one_stream_and_identifies(host: Host, go: Partner) -> None:
    conn = await host.connect(go.addrs[0], timeout=10)
    assert str(conn.peer_id) == go.peer_id
    rtts = await host.ping(conn.peer_id, count=20)
    assert len(rtts) == 20 and all(0 < r < 1 for r in rtts)
    stats = await go.call("ping_stats")
    assert stats == {"id": stats["id"], "ok": True, "inbound_streams": 1, "echoes": 20}

    with trio.fail_after(10):
        await conn.identified.wait()
    info = host.peerstore.get(conn.peer_id)
    assert info is not None
    assert {PING, IDENTIFY} <= set(info.protocols) and KAD not in info.protocols
    assert info.agent_version and info.agent_version.startswith("go-libp2p/v0.")
    assert info.public_key is not None and info.public_key.peer_id() == conn.peer_id
    assert bare(go.addrs[0]) in [str(a) for a in info.addrs]
    # go's signed peer record passed physarum's checks (a bad one is dropped) and says the same.
    assert conn.identify_info is not None and conn.identify_info.signed_peer_record is not None
    record = open_peer_record(conn.identify_info.signed_peer_record)
    assert str(record.peer_id) == go.peer_id and record.seq > 0
    assert [str(a) for a in record.addrs] == [bare(a) for a in go.addrs]

    # go's view of us: our identify answer, and our signed peer record verified by go-libp2p.
    seen = await go.call("identify", peer=str(host.peer_id), timeout=15)
    assert seen["agent_version"].startswith("physarum/")
    assert {PING, IDENTIFY} <= set(seen["protocols"])
    assert str(host.listen_addrs[0]) in seen["listen_addrs"]
    assert seen["observed_addr"].startswith("/ip4/127.0.0.1/tcp/")
    assert PublicKey.from_protobuf(base64.b64decode(seen["public_key_b64"])).peer_id() == host.peer_id
    spr = seen["signed_peer_record"]
    assert spr is not None and spr["peer_id"] == str(host.peer_id)
    assert spr["addrs"] == [str(a) for a in host.advertised_addrs()]
    stored = await go.call("peerstore", peer=str(host.peer_id))
    assert str(host.listen_addrs[0]) in stored["addrs"]
    assert stored["metadata"]["AgentVersion"] == seen["agent_version"]


async def test_go_dials_physarum_pings_on_one_stream_and_identifies(host: Host, go: Partner) -> None:
    counter = PingStreams()
    host.set_handler(PING, counter)
    connected = trio.Event()
    host.on_connect.append(lambda c: connected.set())
    reply = await go.call("dial", addr=str(host.addrs[0]), timeout=15)
    assert reply["peer_id"] == str(host.peer_id)
    assert reply["encryption"] == "/noise" and reply["multiplexer"] == "/yamux/1.0.0"
    with trio.fail_after(10):
        await connected.wait()
    rtts = (await go.call("bench_ping", peer=str(host.peer_id), count=20, timeout=15))["rtts_us"]
    assert len(rtts) == 20 and all(r > 0 for r in rtts)
    assert counter.streams == 1  # go-libp2p pings on one stream, and physarum echoed them all there
    await go.wait_event("identify", peer_id=str(host.peer_id), timeout=10)
    info = await go.call("identify", peer=str(host.peer_id), timeout=15)
    assert {PING, IDENTIFY} <= set(info["protocols"])
    assert info["signed_peer_record"] is not None
    # And the reverse direction over go's connection.
    conn = host.connection(PeerId.from_string(go.peer_id))
    assert conn is not None and conn.direction == "inbound"
    assert len(await host.ping(conn.peer_id, count=5)) == 5
    assert (await go.call("ping_stats"))["inbound_streams"] == 1
    assert (await go.call("peers"))["peers"] == [str(host.peer_id)]


async def test_go_learns_protocols_added_and_removed_after_connecting(host: Host, go: Partner) -> None:
    """Identify push: a handler registered on a live connection reaches go's peer store, and so
    does its removal, without reconnecting."""
    late = "/physarum-test/late/1.0.0"
    conn = await host.connect(go.addrs[0], timeout=10)
    await go.wait_event("identify", peer_id=str(host.peer_id), timeout=10)

    async def go_sees() -> list[str]:
        return list((await go.call("peerstore", peer=str(host.peer_id)))["protocols"])

    assert IDENTIFY in await go_sees() and late not in await go_sees()
    host.set_handler(late, echo_handler)
    with trio.fail_after(10):
        while late not in await go_sees():
            await trio.sleep(0.02)
    host.remove_handler(late)
    with trio.fail_after(10):
        while late in await go_sees():
            await trio.sleep(0.02)
    assert host.connection(conn.peer_id) is conn and not conn.is_closed


async def test_bulk_data_on_one_stream_both_ways(host: Host, go: Partner) -> None:
    """4 MiB each way on one echo stream: yamux flow control (window updates) between the two."""
    size = 4 * 1024 * 1024
    host.set_handler(ECHO, echo_handler)
    conn = await host.connect(go.addrs[0], timeout=10)
    reply = await go.call("echo", peer=str(host.peer_id), size=size, timeout=30, timeout_ms=25000)
    assert reply["bytes"] == size

    payload = os.urandom(size)
    stream = await conn.open_stream([ECHO])
    echoed = bytearray()
    with trio.fail_after(25):
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await stream.send_all(payload)
                await stream.send_eof()

            nursery.start_soon(send)
            while chunk := await stream.receive_some(65536):
                echoed += chunk
    await stream.aclose()
    assert len(echoed) == size and echoed == payload


@pytest.mark.open_issue  # physarum bug: its 1 MiB stream windows are not backed by the 16 MiB peer budget
async def test_streams_within_their_windows_are_never_reset(host: Host, go: Partner) -> None:
    """17 go-libp2p streams each send 1000 KiB (inside the 1 MiB window physarum grants) to a
    handler that has not read yet: flow control allows all of it, so no stream may be reset."""
    streams, size = 17, 1000 * 1024
    gate = trio.Event()

    async def gated_echo(stream: YamuxStream) -> None:
        await gate.wait()
        await echo_handler(stream)

    host.set_handler(ECHO, gated_echo)
    conn = await host.connect(go.addrs[0], timeout=10)
    budget = host.resources.peer_memory(conn.peer_id)

    async def echo() -> None:
        reply = await go.call("echo", peer=str(host.peer_id), size=size, timeout=30, timeout_ms=25000)
        assert reply["bytes"] == size

    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(echo)
        # Everything the windows allow has arrived (or a stream was reset for it): now read.
        with trio.fail_after(15):
            while not (conn.session.streams_reset_for_memory or budget.used >= streams * size):
                await trio.sleep(0.01)
        gate.set()
    assert conn.session.streams_reset_for_memory == 0


async def test_connect_without_psk_both_ways() -> None:
    async with (
        open_partner(go_peer_argv()) as go,
        open_host() as dialer,
        open_host() as listener,
    ):
        assert go.ready["pnet"] is False
        conn = await dialer.connect(go.addrs[0], timeout=10)
        assert len(await dialer.ping(conn.peer_id, count=3)) == 3
        reply = await go.call("dial", addr=str(listener.addrs[0]), timeout=15)
        assert reply["peer_id"] == str(listener.peer_id)
        assert len((await go.call("ping", peer=str(listener.peer_id), count=3))["rtts_ms"]) == 3
        assert set((await go.call("peers"))["peers"]) == {str(dialer.peer_id), str(listener.peer_id)}


async def test_different_psk_is_refused_quickly_both_ways(go: Partner, tmp_path: Path) -> None:
    async with open_host(psk=generate_psk()) as other:
        start = trio.current_time()
        with trio.fail_after(2), pytest.raises(DialError) as failure:
            await other.connect(go.addrs[0], timeout=1.9)
        assert trio.current_time() - start < 2
        assert any(isinstance(e, PskMismatchError) for e in failure.value.errors.values()), (
            failure.value.errors
        )
        # go dialing us with its key fails as well.
        with pytest.raises(PartnerError):
            await go.call("dial", addr=str(other.addrs[0]), timeout=15, timeout_ms=10000)
        assert other.connections == {}
    assert (await go.call("peers"))["peers"] == []


async def test_missing_psk_is_named_both_ways(psk_file: Path) -> None:
    """A physarum node without a key and a private go node, and the reverse: refused, and physarum
    says why."""
    async with open_partner(go_peer_argv("--psk-file", str(psk_file))) as private_go, open_host() as plain:
        with trio.fail_after(2), pytest.raises(DialError) as failure:
            await plain.connect(private_go.addrs[0], timeout=1.9)
        assert any(isinstance(e, PskMismatchError) for e in failure.value.errors.values()), (
            failure.value.errors
        )
        assert plain.connections == {}
    async with open_partner(go_peer_argv()) as plain_go, open_host(psk=load_key_file(psk_file)) as private:
        with pytest.raises(PartnerError):
            await plain_go.call("dial", addr=str(private.addrs[0]), timeout=15)
        assert private.connections == {}


async def test_ping_monitor_shows_a_go_peer_and_not_one_from_another_network(tmp_path: Path) -> None:
    good_key, bad_key = tmp_path / "good.key", tmp_path / "bad.key"
    write_key_file(good_key, generate_psk())
    write_key_file(bad_key, generate_psk())
    async with (
        monitor_node(load_key_file(good_key), interval=0.2) as node,
        open_partner(go_peer_argv("--psk-file", str(good_key))) as good,
        open_partner(go_peer_argv("--psk-file", str(bad_key))) as bad,
    ):
        target = str(node.host.addrs[0])
        assert (await good.call("dial", addr=target, timeout=15))["peer_id"] == str(node.host.peer_id)
        metrics = await wait_scrape(
            node, lambda m: good.peer_id in rtt_series(m), what="the go peer's ping_rtt"
        )
        assert 0 < rtt_series(metrics)[good.peer_id] < 1000
        labels = next(lab for lab, _ in metrics["ping_rtt"] if lab["targetHost"] == good.peer_id)
        assert labels["host"] == "monitor-under-test"
        # The monitor pings on one stream too: go's handler counted one stream for many echoes.
        stats = node.monitor.peers[PeerId.from_string(good.peer_id)]
        with trio.fail_after(10):
            while stats.successes < 5:
                await trio.sleep(0.05)
        go_stats = await good.call("ping_stats")
        assert go_stats["inbound_streams"] == 1 and go_stats["echoes"] >= 5
        assert stats.failures == 0, stats.failures_by_reason

        with pytest.raises(PartnerError):
            await bad.call("dial", addr=target, timeout=15, timeout_ms=10000)
        metrics = await scrape(node)
        assert bad.peer_id not in str(metrics)
        assert metrics["physarum_peers_connected"] == [({}, 1.0)]
