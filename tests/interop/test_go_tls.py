"""TLS 1.3 (``/tls/1.0.0``) against a go-libp2p node that offers TLS only: both directions, with and
without a PSK, and physarum's ping monitor pinging it."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from physarum.overlay.host import open_host
from physarum.overlay.identity import PeerId
from physarum.overlay.tls import TlsStream
from physarum.psk import load_key_file
from tests.integration._util import ECHO, echo_handler
from tests.interop.partner import go_peer_argv, open_partner

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("with_psk", [True, False])
async def test_physarum_dials_a_tls_only_go_node(with_psk: bool, psk_file: Path) -> None:
    argv = ["--security", "tls", *(["--psk-file", str(psk_file)] if with_psk else [])]
    psk = load_key_file(psk_file) if with_psk else None
    async with open_partner(go_peer_argv(*argv)) as go, open_host(psk=psk) as host:
        with trio.fail_after(20):
            # physarum proposes /noise first; go answers "na", then takes /tls/1.0.0.
            conn = await host.connect(go.addrs[0], timeout=10)
            assert isinstance(conn.session.transport, TlsStream)
            assert str(conn.peer_id) == go.peer_id
            assert len(await host.ping(conn.peer_id, count=10)) == 10
            await conn.identified.wait()
            assert conn.identify_info is not None and conn.identify_info.agent_version
            assert "/ipfs/ping/1.0.0" in conn.identify_info.protocols
            assert (await go.call("ping_stats"))["echoes"] == 10


@pytest.mark.parametrize("with_psk", [True, False])
async def test_a_tls_only_go_node_dials_physarum(with_psk: bool, psk_file: Path) -> None:
    argv = ["--security", "tls", *(["--psk-file", str(psk_file)] if with_psk else [])]
    psk = load_key_file(psk_file) if with_psk else None
    async with open_partner(go_peer_argv(*argv)) as go, open_host(psk=psk) as host:
        with trio.fail_after(40):
            reply = await go.call("dial", addr=str(host.addrs[0]), timeout=15)
            assert reply["encryption"] == "/tls/1.0.0" and reply["multiplexer"] == "/yamux/1.0.0"
            rtts = (await go.call("bench_ping", peer=str(host.peer_id), count=10, timeout=15))["rtts_us"]
            assert len(rtts) == 10
            conn = host.connection(PeerId.from_string(go.peer_id))
            assert conn is not None and isinstance(conn.session.transport, TlsStream)
            info = await go.call("identify", peer=str(host.peer_id), timeout=15)
            assert info["signed_peer_record"] is not None
            assert len(await host.ping(conn.peer_id, count=5)) == 5
            # 4 MiB there and back on one stream: hundreds of TLS records, yamux windows over them.
            host.set_handler(ECHO, echo_handler)
            reply = await go.call("echo", peer=str(host.peer_id), size=4 << 20, timeout=30, timeout_ms=25000)
            assert reply["bytes"] == 4 << 20


async def test_physarum_offering_tls_only_meets_go_offering_both(psk_file: Path) -> None:
    psk = load_key_file(psk_file)
    async with (
        open_partner(go_peer_argv("--security", "noise,tls", "--psk-file", str(psk_file))) as go,
        open_host(psk=psk, security=["/tls/1.0.0"]) as host,
    ):
        with trio.fail_after(20):
            conn = await host.connect(go.addrs[0], timeout=10)
            assert isinstance(conn.session.transport, TlsStream)
            assert len(await host.ping(conn.peer_id, count=3)) == 3
