"""The perf protocol (``/perf/1.0.0``) against js-libp2p, both directions, over pnet + Noise + yamux.

The js partner speaks perf itself on js-libp2p's streams (@libp2p/perf is not on the registry this
project installs from; see tests/interop/js/peer.mjs), as the go partner does on go-libp2p's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from physarum.overlay import perf
from physarum.overlay.host import open_host
from physarum.psk import load_key_file
from tests.interop.partner import PartnerError, js_peer_argv, open_partner

pytestmark = pytest.mark.interop

MIB = 1 << 20


async def test_perf_both_directions(psk_file: Path) -> None:
    async with (
        open_partner(js_peer_argv("--psk-file", str(psk_file))) as js,
        open_host(psk=load_key_file(psk_file), services=[perf.PerfService()]) as host,
    ):
        with trio.fail_after(60):
            conn = await host.connect(js.addrs[0], timeout=10)
            # physarum measures js: 8 MiB up, 8 MiB down on one stream.
            stream = await conn.open_stream([perf.PROTOCOL_ID])
            result = await perf.measure(stream, upload=8 * MIB, download=8 * MIB)
            await stream.aclose()
            assert (result.uploaded, result.downloaded) == (8 * MIB, 8 * MIB)
            assert result.upload_seconds > 0 and result.download_seconds > 0
            # js measures physarum's PerfService, on the connection physarum opened.
            reply = await js.call(
                "perf",
                peer=str(host.peer_id),
                upload=4 * MIB,
                download=6 * MIB,
                timeout_ms=45_000,
                timeout=50,
            )
            assert (reply["uploaded"], reply["downloaded"]) == (4 * MIB, 6 * MIB)
            assert reply["upload_us"] > 0 and reply["download_us"] > 0
            # js reused the connection physarum opened rather than dialling its own.
            assert [c.is_closed for c in host.connections[conn.peer_id]] == [False]


async def test_js_perf_refused_size_fails(psk_file: Path) -> None:
    """A server that refuses the size resets the stream: js's client reports it, no hang."""
    async with (
        open_partner(js_peer_argv("--psk-file", str(psk_file))) as js,
        open_host(psk=load_key_file(psk_file), services=[perf.PerfService(max_download=MIB)]) as host,
    ):
        await host.connect(js.addrs[0], timeout=10)
        with pytest.raises(PartnerError) as refused:
            await js.call(
                "perf", peer=str(host.peer_id), upload=0, download=2 * MIB, timeout_ms=10_000, timeout=15
            )
        assert "reset" in str(refused.value.error).lower()
