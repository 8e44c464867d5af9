"""physarum and js-libp2p over a WebSocket (``/ws``, @libp2p/websockets): pnet + Noise + yamux run
over the WebSocket's byte stream exactly as over TCP, in both directions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from physarum.errors import DialError
from physarum.overlay.host import Connection, Host, open_host
from physarum.overlay.identity import PeerId
from physarum.psk import PskMismatchError, generate_psk, load_key_file
from tests.interop.partner import Partner, js_peer_argv, open_partner

pytestmark = pytest.mark.interop

PING = "/ipfs/ping/1.0.0"
IDENTIFY = "/ipfs/id/1.0.0"
WS_LISTEN = "/ip4/127.0.0.1/tcp/0/ws"


@pytest.fixture
async def js(psk_file: Path) -> AsyncIterator[Partner]:
    async with open_partner(js_peer_argv("--psk-file", str(psk_file), "--listen", WS_LISTEN)) as partner:
        yield partner


@pytest.fixture
async def host(psk_file: Path) -> AsyncIterator[Host]:
    async with open_host(psk=load_key_file(psk_file), listen=[WS_LISTEN]) as h:
        yield h


def _ws(addr: object) -> bool:
    return "/tcp/" in str(addr) and str(addr).split("/p2p/")[0].endswith("/ws")


async def test_js_dials_physarum_over_ws_and_pings_it(host: Host, js: Partner) -> None:
    [ours] = host.addrs
    assert _ws(ours)
    connected: list[Connection] = []
    arrived = trio.Event()

    def on_connect(conn: Connection) -> None:
        connected.append(conn)
        arrived.set()

    host.on_connect.append(on_connect)
    reply = await js.call("dial", addr=str(ours), timeout=15)
    assert reply["peer_id"] == str(host.peer_id)
    assert _ws(reply["remote_addr"]) and reply["encryption"] == "/noise" and reply["multiplexer"] == "/yamux/1.0.0"
    with trio.fail_after(10):
        await arrived.wait()
    [conn] = connected
    assert str(conn.peer_id) == js.peer_id and conn.direction == "inbound"
    assert _ws(conn.remote_addr)  # the js end of the TCP connection, with /ws
    # js opens a new stream per ping; several in a row over the WebSocket.
    rtts = (await js.call("ping", peer=str(host.peer_id), count=5, timeout=30))["rtts_ms"]
    assert len(rtts) == 5 and all(r >= 0 for r in rtts)
    info = await js.call("identify", peer=str(host.peer_id), timeout=15)
    assert info["agent_version"].startswith("physarum/")
    assert {PING, IDENTIFY} <= set(info["protocols"])
    assert any(_ws(a) and a.startswith(str(ours).split("/p2p/")[0]) for a in info["listen_addrs"])
    assert _ws(info["observed_addr"])
    # and back over js's connection
    assert len(await host.ping(PeerId.from_string(js.peer_id), count=5)) == 5
    assert host.connection(conn.peer_id) is conn and not conn.is_closed


async def test_physarum_dials_js_over_ws_pings_and_identifies(host: Host, js: Partner) -> None:
    [theirs] = js.addrs
    assert _ws(theirs)
    conn = await host.connect(theirs, timeout=10)
    assert str(conn.peer_id) == js.peer_id and conn.direction == "outbound"
    assert _ws(conn.remote_addr) and _ws(conn.local_addr)
    rtts = await host.ping(conn.peer_id, count=20)
    assert len(rtts) == 20 and all(0 < r < 1 for r in rtts)
    with trio.fail_after(10):
        await conn.identified.wait()
    info = host.peerstore.get(conn.peer_id)
    assert info is not None
    assert {PING, IDENTIFY} <= set(info.protocols)
    assert info.agent_version and "js-libp2p" in info.agent_version
    # identify shows js's /ws listen address
    assert any(_ws(a) and str(a).startswith(theirs.split("/p2p/")[0]) for a in info.addrs)
    # js pings us over the same connection
    rtts_ms = (await js.call("ping", peer=str(host.peer_id), count=3, timeout=30))["rtts_ms"]
    assert len(rtts_ms) == 3
    assert host.connection(conn.peer_id) is conn and not conn.is_closed


async def test_another_key_does_not_connect_over_ws(js: Partner) -> None:
    """pnet runs over the WebSocket too: the upgrade succeeds, the private network does not."""
    async with open_host(psk=generate_psk(), listen=[WS_LISTEN]) as other:
        with trio.fail_after(5), pytest.raises(DialError) as failure:
            await other.connect(js.addrs[0], timeout=3)
        assert any(isinstance(e, PskMismatchError) for e in failure.value.errors.values())
        assert other.connections == {}
