"""``/ipfs/ping/1.0.0``: 32 random bytes echoed, repeatable on one stream.

The RTT is measured with trio's clock (monotonic, ``perf_counter`` resolution), so tests
with a mock clock see virtual time.
"""

from __future__ import annotations

import os

import trio

from physarum.errors import ProtocolError

PROTOCOL_ID = "/ipfs/ping/1.0.0"
PING_SIZE = 32


async def _receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


async def handle_ping(stream: trio.abc.HalfCloseableStream) -> None:
    """Echo 32-byte pings until the peer ends its side.

    js-libp2p half-closes right after its 32 bytes, so the echo must still go out after EOF.
    """
    while True:
        data = await _receive_exactly(stream, PING_SIZE)
        if len(data) < PING_SIZE:
            return
        await stream.send_all(data)


async def ping_once(stream: trio.abc.Stream) -> float:
    """Send one ping on an open ping stream; return the RTT in seconds.

    Raises:
        ProtocolError: the echo differs or the stream ended.
        trio.BrokenResourceError: the stream broke.
    """
    payload = os.urandom(PING_SIZE)
    start = trio.current_time()
    await stream.send_all(payload)
    echo = await _receive_exactly(stream, PING_SIZE)
    rtt = trio.current_time() - start
    if echo != payload:
        raise ProtocolError("ping echo does not match" if len(echo) == PING_SIZE else "ping stream ended")
    return rtt
