"""The perf protocol (``/perf/1.0.0``) against js-libp2p, go-libp2p (over Noise and over TLS) and
rust-libp2p, both directions, in a private network.

The partners speak perf on their library's streams: go and js in their partner programs (go-libp2p has
no perf package; @libp2p/perf is not on the registry this project installs from), rust through
libp2p-stream.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from physarum.overlay import perf
from physarum.overlay.host import open_host
from physarum.psk import load_key_file
from tests.interop.partner import PartnerError, go_peer_argv, js_peer_argv, open_partner, rust_peer_argv

pytestmark = pytest.mark.interop

MIB = 1 << 20

PARTNERS: dict[str, Callable[[Path], list[str]]] = {
    "js": lambda key: js_peer_argv("--psk-file", str(key)),
    "go-noise": lambda key: go_peer_argv("--psk-file", str(key), "--security", "noise"),
    "go-tls": lambda key: go_peer_argv("--psk-file", str(key), "--security", "tls"),
    "rust": lambda key: rust_peer_argv("--psk-file", str(key)),
}


@pytest.mark.parametrize("partner", sorted(PARTNERS))
async def test_perf_both_directions(partner: str, psk_file: Path) -> None:
    async with (
        open_partner(PARTNERS[partner](psk_file)) as other,
        open_host(psk=load_key_file(psk_file), services=[perf.PerfService()]) as host,
    ):
        with trio.fail_after(60):
            conn = await host.connect(other.addrs[0], timeout=10)
            # physarum measures the partner: 8 MiB up, 8 MiB down on one stream.
            stream = await conn.open_stream([perf.PROTOCOL_ID])
            result = await perf.measure(stream, upload=8 * MIB, download=8 * MIB)
            await stream.aclose()
            assert (result.uploaded, result.downloaded) == (8 * MIB, 8 * MIB)
            assert result.upload_seconds > 0 and result.download_seconds > 0
            # The partner measures physarum's PerfService, on the connection physarum opened.
            reply = await other.call(
                "perf", peer=str(host.peer_id), upload=4 * MIB, download=6 * MIB, timeout_ms=45_000, timeout=50
            )
            assert (reply["uploaded"], reply["downloaded"]) == (4 * MIB, 6 * MIB)
            assert reply["upload_us"] > 0 and reply["download_us"] > 0
            assert [c.is_closed for c in host.connections[conn.peer_id]] == [False]


async def test_a_refused_size_fails_at_once(psk_file: Path) -> None:
    """A server that refuses the size resets the stream: the partner's client reports it, no hang."""
    async with (
        open_partner(js_peer_argv("--psk-file", str(psk_file))) as js,
        open_host(psk=load_key_file(psk_file), services=[perf.PerfService(max_download=MIB)]) as host,
    ):
        await host.connect(js.addrs[0], timeout=10)
        with trio.fail_after(20), pytest.raises(PartnerError) as refused:
            await js.call("perf", peer=str(host.peer_id), upload=0, download=2 * MIB, timeout_ms=10_000, timeout=15)
        assert "reset" in str(refused.value.error).lower()
