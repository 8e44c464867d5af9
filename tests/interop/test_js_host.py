"""physarum's host against a real js-libp2p node (tests/interop/js/peer.mjs) on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from physarum.errors import DialError
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import PeerId
from physarum.overlay.yamux import YamuxStream
from physarum.psk import PskMismatchError, generate_psk, load_key_file
from tests.interop.partner import Partner, PartnerError, js_peer_argv, open_partner

pytestmark = pytest.mark.interop

PING = "/ipfs/ping/1.0.0"
IDENTIFY = "/ipfs/id/1.0.0"


@pytest.fixture
async def js(psk_file: Path) -> AsyncIterator[Partner]:
    async with open_partner(js_peer_argv("--psk-file", str(psk_file))) as partner:
        yield partner


@pytest.fixture
async def host(psk_file: Path) -> AsyncIterator[Host]:
    async with open_host(psk=load_key_file(psk_file)) as h:
        yield h


async def test_physarum_dials_js_pings_and_identifies(host: Host, js: Partner) -> None:
    conn = await host.connect(js.addrs[0], timeout=10)
    assert str(conn.peer_id) == js.peer_id
    rtts = await host.ping(conn.peer_id, count=20)
    assert len(rtts) == 20 and all(0 < r < 1 for r in rtts)
    with trio.fail_after(10):
        await conn.identified.wait()
    info = host.peerstore.get(conn.peer_id)
    assert info is not None
    assert {PING, IDENTIFY} <= set(info.protocols)
    assert info.agent_version and "js-libp2p" in info.agent_version
    assert info.public_key is not None and info.public_key.peer_id() == conn.peer_id
    assert any(str(a).startswith("/ip4/127.0.0.1/tcp/") for a in info.addrs)
    # js saw us: our identify answer landed in its peer store.
    seen = await js.call("identify", peer=str(host.peer_id), timeout=15)
    assert {PING, IDENTIFY} <= set(seen["protocols"])
    assert any(a.startswith(str(host.listen_addrs[0])) for a in seen["listen_addrs"])


async def test_js_dials_physarum_pings_and_identifies(host: Host, js: Partner) -> None:
    connected = trio.Event()
    host.on_connect.append(lambda c: connected.set())
    reply = await js.call("dial", addr=str(host.addrs[0]), timeout=15)
    assert reply["peer_id"] == str(host.peer_id)
    with trio.fail_after(10):
        await connected.wait()
    # js opens a new stream per ping and half-closes it after its 32 bytes.
    rtts = (await js.call("bench_ping", peer=str(host.peer_id), count=20, timeout=30))["rtts_us"]
    assert len(rtts) == 20 and all(r > 0 for r in rtts)
    info = await js.call("identify", peer=str(host.peer_id), timeout=15)
    assert info["agent_version"].startswith("physarum/")
    assert {PING, IDENTIFY} <= set(info["protocols"])
    assert info["observed_addr"].startswith("/ip4/127.0.0.1/tcp/")
    # And the reverse direction over js's connection.
    peer = PeerId.from_string(js.peer_id)
    assert len(await host.ping(peer, count=5)) == 5


async def test_connection_survives_js_keepalive_pings(host: Host, js: Partner) -> None:
    """js pings every connection itself and drops it if that fails: several pings in a row,
    from both sides at once, must all work and leave the connection up."""
    conn = await host.connect(js.addrs[0], timeout=10)

    async def js_pings() -> None:
        await js.call("bench_ping", peer=str(host.peer_id), count=30, timeout=30)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(js_pings)
        await host.ping(conn.peer_id, count=200)
    assert not conn.is_closed
    assert str(host.peer_id) in (await js.call("peers"))["peers"]


async def test_different_psk_does_not_connect(tmp_path: Path, js: Partner) -> None:
    async with open_host(psk=generate_psk()) as other:
        # js sometimes waits silently for more of our garbage: then our own deadline says it.
        with trio.fail_after(2), pytest.raises(DialError) as failure:
            await other.connect(js.addrs[0], timeout=1.5)
        assert any(isinstance(e, PskMismatchError) for e in failure.value.errors.values())
        # js dialing us with its key fails too (js may only give up at its own 10 s timeout).
        with pytest.raises(PartnerError):
            await js.call("dial", addr=str(other.addrs[0]), timeout=20, timeout_ms=15000)
        assert other.connections == {}
    assert (await js.call("peers"))["peers"] == []


async def test_no_psk_does_not_join_private_js(js: Partner) -> None:
    async with open_host() as plain:
        with trio.fail_after(2), pytest.raises(DialError):
            await plain.connect(js.addrs[0], timeout=1.5)
        assert plain.connections == {}


async def test_js_learns_a_protocol_added_after_connecting(psk_file: Path, host: Host) -> None:
    """Identify push both ways: a handler we register on a live connection reaches js's peer
    store (js runs identifyPush with --identify-push), without reconnecting."""
    late = "/physarum-test/late/1.0.0"
    async with open_partner(js_peer_argv("--psk-file", str(psk_file), "--identify-push")) as js:
        conn = await host.connect(js.addrs[0], timeout=10)
        with trio.fail_after(10):
            await conn.identified.wait()
        info = host.peerstore.get(conn.peer_id)
        assert info is not None and "/ipfs/id/push/1.0.0" in info.protocols

        async def js_sees() -> list[str]:
            stored = await js.call("peerstore", peer=str(host.peer_id))
            return list(stored["protocols"])

        # Polled under deadlines. First js identifies us (it does on every new connection).
        with trio.fail_after(15):
            while IDENTIFY not in await js_sees():
                await trio.sleep(0.05)
        assert late not in await js_sees()
        host.set_handler(late, _echo)
        with trio.fail_after(15):
            while late not in await js_sees():
                await trio.sleep(0.05)
        assert host.connection(conn.peer_id) is conn and not conn.is_closed
        host.remove_handler(late)
        with trio.fail_after(15):
            while late in await js_sees():
                await trio.sleep(0.05)


async def _echo(stream: YamuxStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)
