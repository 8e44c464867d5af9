"""physarum's host against a real py-libp2p 0.8.1 node (tests/interop/py/peer.py), without a PSK.

py-libp2p's own pnet is not the libp2p spec's: it sends an 8-byte nonce and uses plain Salsa20
where the spec (and go/js/rust libp2p) use a 24-byte nonce and XSalsa20, so it cannot join a
standard private network. These tests therefore run without pnet, and the last test pins down
that difference so nobody "fixes" physarum towards py-libp2p's format.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator

import pytest
import trio

from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import PeerId
from physarum.psk import XSalsa20
from tests.interop.partner import PY_DIR, Partner, open_partner, py_peer_argv

pytestmark = pytest.mark.interop

PING = "/ipfs/ping/1.0.0"
IDENTIFY = "/ipfs/id/1.0.0"


@pytest.fixture
async def py() -> AsyncIterator[Partner]:
    # One connection per peer: py-libp2p otherwise waits 250 ms per dial for more.
    async with open_partner(py_peer_argv("--max-conns-per-peer", "1"), ready_timeout=60) as partner:
        yield partner


@pytest.fixture
async def host() -> AsyncIterator[Host]:
    async with open_host() as h:
        yield h


async def test_physarum_dials_py_libp2p(host: Host, py: Partner) -> None:
    conn = await host.connect(py.addrs[0], timeout=10)
    assert str(conn.peer_id) == py.peer_id
    rtts = await host.ping(conn.peer_id, count=20)
    assert len(rtts) == 20 and all(0 < r < 1 for r in rtts)
    with trio.fail_after(10):
        await conn.identified.wait()
    info = host.peerstore.get(conn.peer_id)
    assert info is not None and {PING, IDENTIFY} <= set(info.protocols)
    assert info.agent_version and info.agent_version.startswith("py-libp2p")
    assert any(str(a).startswith("/ip4/127.0.0.1/tcp/") for a in info.addrs)
    seen = await py.call("identify", peer=str(host.peer_id), timeout=15)
    assert seen["agent_version"].startswith("physarum/")
    assert {PING, IDENTIFY} <= set(seen["protocols"])


async def test_py_libp2p_dials_physarum(host: Host, py: Partner) -> None:
    connected = trio.Event()
    host.on_connect.append(lambda c: connected.set())
    reply = await py.call("dial", addr=str(host.addrs[0]), timeout=15)
    assert reply["peer_id"] == str(host.peer_id)
    with trio.fail_after(10):
        await connected.wait()
    rtts = (await py.call("bench_ping", peer=str(host.peer_id), count=50, timeout=30))["rtts_us"]
    assert len(rtts) == 50 and all(r > 0 for r in rtts)
    info = await py.call("identify", peer=str(host.peer_id), timeout=15)
    assert {PING, IDENTIFY} <= set(info["protocols"])
    assert info["observed_addr"].startswith("/ip4/127.0.0.1/tcp/")
    assert len(await host.ping(PeerId.from_string(py.peer_id), count=5)) == 5


_THEIR_PNET = """
import sys, trio
from libp2p.security.pnet.psk_conn import PskConn
class Sink:
    data = b""
    async def write(self, d): Sink.data += d
async def main():
    conn = PskConn(Sink(), sys.argv[1])
    await conn.write(b"\\x13/multistream/1.0.0\\n")
    print(Sink.data.hex())
trio.run(main)
"""


def test_py_libp2p_pnet_is_not_the_spec() -> None:
    """Their wire format: 8-byte nonce + Salsa20. The spec's (ours): 24-byte nonce + XSalsa20."""
    psk = bytes(range(32))
    plaintext = b"\x13/multistream/1.0.0\n"
    out = subprocess.run(
        [str(PY_DIR / ".venv" / "bin" / "python"), "-c", _THEIR_PNET, psk.hex()],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    wire = bytes.fromhex(out)
    assert len(wire) == 8 + len(plaintext)  # an 8-byte nonce: not XSalsa20's 24
    # A spec-compliant reader takes 24 bytes of nonce and XSalsa20: it reads garbage.
    ours = XSalsa20(psk, wire[:24]).process(wire[24:])
    assert plaintext[: len(ours)] != ours
