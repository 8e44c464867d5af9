"""The perf protocol (``/perf/1.0.0``) against go-libp2p, both directions, over pnet + Noise and TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from physarum.overlay import perf
from physarum.overlay.host import open_host
from physarum.psk import load_key_file
from tests.interop.partner import go_peer_argv, open_partner

pytestmark = pytest.mark.interop

MIB = 1 << 20


@pytest.mark.parametrize("security", ["noise", "tls"])
async def test_perf_both_directions(security: str, psk_file: Path) -> None:
    argv = go_peer_argv("--psk-file", str(psk_file), "--security", security)
    async with (
        open_partner(argv) as go,
        open_host(psk=load_key_file(psk_file), services=[perf.PerfService()]) as host,
    ):
        with trio.fail_after(60):
            conn = await host.connect(go.addrs[0], timeout=10)
            # physarum measures go: 8 MiB up, 8 MiB down on one stream.
            stream = await conn.open_stream([perf.PROTOCOL_ID])
            result = await perf.measure(stream, upload=8 * MIB, download=8 * MIB)
            await stream.aclose()
            assert (result.uploaded, result.downloaded) == (8 * MIB, 8 * MIB)
            assert result.seconds > 0
            # go measures physarum's PerfService.
            reply = await go.call("perf", peer=str(host.peer_id), upload=4 * MIB, download=6 * MIB, timeout=50)
            assert (reply["uploaded"], reply["downloaded"]) == (4 * MIB, 6 * MIB)
            assert reply["upload_us"] > 0 and reply["download_us"] > 0
