"""A bulk transfer over a real private-network connection, with pings on the same connection throughout."""

from __future__ import annotations

import hashlib
import os

import trio

from physarum.overlay.host import open_host
from physarum.overlay.yamux import YamuxStream
from physarum.psk import generate_psk
from tests.integration._util import ping_on, receive_exactly, wait_quiet

SINK = "/physarum-test/sink/1.0.0"
TOTAL = 64 * 1024 * 1024
CHUNK = 1024 * 1024


async def sink_handler(stream: YamuxStream) -> None:
    """Hash everything until end of stream; answer with the byte count and the SHA-256."""
    digest = hashlib.sha256()
    n = 0
    while data := await stream.receive_some(1 << 20):
        digest.update(data)
        n += len(data)
    await stream.send_all(n.to_bytes(8, "big") + digest.digest())
    await stream.send_eof()


async def test_64_mib_transfer_with_concurrent_pings() -> None:
    psk = generate_psk()
    async with open_host(psk=psk) as a, open_host(psk=psk) as b:
        b.set_handler(SINK, sink_handler)
        conn = await a.connect(b.addrs[0])
        await wait_quiet(conn)
        block = os.urandom(CHUNK)
        sent = hashlib.sha256()
        transfer_done = trio.Event()
        pings_during: list[float] = []

        async def pinger() -> None:
            # Each ping uses a fresh stream on this very connection; any failure fails the test.
            while not transfer_done.is_set():
                rtt = await ping_on(conn)
                if not transfer_done.is_set():
                    pings_during.append(rtt)

        async def sender() -> tuple[int, bytes]:
            stream = await conn.open_stream([SINK])
            for i in range(TOTAL // CHUNK):
                # Vary every chunk so a lost, repeated or reordered chunk changes the hash.
                chunk = i.to_bytes(4, "big") + block[4:]
                sent.update(chunk)
                await stream.send_all(chunk)
            await stream.send_eof()
            answer = await receive_exactly(stream, 8 + 32)
            assert await stream.receive_some() == b""
            await stream.aclose()
            return int.from_bytes(answer[:8], "big"), answer[8:]

        result: list[tuple[int, bytes]] = []

        async def run_sender() -> None:
            try:
                result.append(await sender())
            finally:
                transfer_done.set()

        with trio.fail_after(40):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pinger)
                nursery.start_soon(run_sender)

        received, digest = result[0]
        assert received == TOTAL
        assert digest == sent.digest()
        assert len(pings_during) > 0
        assert all(r > 0 for r in pings_during)
        # The connection is the one we started with and still healthy.
        assert not conn.is_closed and a.connection(b.peer_id) is conn
        assert await ping_on(conn) > 0
