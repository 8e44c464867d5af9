"""``/perf/1.0.0``: libp2p's throughput protocol, the one its cross-implementation dashboards use.

The client opens a stream, sends how many bytes it wants back (a big-endian uint64), uploads any
number of bytes and closes its side; the server reads to that end, then sends the bytes asked for
and closes. :func:`measure` is the client, timing each direction; :class:`PerfService` the server.

The spec says a node should not serve perf unless asked to: hosts do not run it by default; add
``PerfService()`` (``Host(services=[PerfService()])``) on nodes you measure against. A client may
ask for at most ``max_download`` bytes (default 16 GiB); a larger request resets the stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import trio

from physarum.errors import ProtocolError, StreamEndedError
from physarum.overlay.events import HandlerHost

PROTOCOL_ID = "/perf/1.0.0"
#: Bytes written or read per call: large enough that per-call costs vanish, small enough to stay
#: within a yamux frame's worth of buffering.
BLOCK = 64 * 1024
DEFAULT_MAX_DOWNLOAD = 16 << 30
_ZEROS = bytes(BLOCK)


@dataclass(frozen=True)
class PerfResult:
    """What :func:`measure` timed, in seconds (trio's clock)."""

    uploaded: int
    downloaded: int
    upload_seconds: float
    """From the stream's first byte sent to our side closed (the upload is in the peer's buffers
    or on its way; the download's first byte marks its end from the peer's side)."""
    download_seconds: float
    """From our side closed to the last byte received."""

    @property
    def seconds(self) -> float:
        return self.upload_seconds + self.download_seconds


async def _send_zeros(stream: trio.abc.SendStream, n: int) -> None:
    view = memoryview(_ZEROS)
    while n > 0:
        chunk = min(n, BLOCK)
        await stream.send_all(view[:chunk])
        n -= chunk


async def measure(stream: trio.abc.HalfCloseableStream, *, upload: int, download: int) -> PerfResult:
    """Run one perf exchange on ``stream`` (already negotiated to :data:`PROTOCOL_ID`).

    Raises:
        StreamEndedError: the server sent fewer than ``download`` bytes.
        ProtocolError: it sent more.
        trio.BrokenResourceError: the stream broke (e.g. the server refused the size).
    """
    start = trio.current_time()
    await stream.send_all(struct.pack(">Q", download))
    await _send_zeros(stream, upload)
    await stream.send_eof()
    uploaded_at = trio.current_time()
    received = 0
    while True:
        data = await stream.receive_some(BLOCK)
        if not data:
            break
        received += len(data)
        if received > download:
            raise ProtocolError(f"perf: the server sent more than the {download} bytes asked for")
    if received < download:
        raise StreamEndedError(f"perf: the server sent {received} of {download} bytes")
    return PerfResult(upload, received, uploaded_at - start, trio.current_time() - uploaded_at)


class PerfService:
    """Serves :data:`PROTOCOL_ID` on a host (see the module notes). ``max_download``: the most a
    client may ask us to send on one stream."""

    def __init__(self, max_download: int = DEFAULT_MAX_DOWNLOAD) -> None:
        self.max_download = max_download

    def attach(self, host: HandlerHost) -> None:
        host.set_handler(PROTOCOL_ID, self.handle)

    async def handle(self, stream: trio.abc.HalfCloseableStream) -> None:
        header = b""
        while len(header) < 8:
            data = await stream.receive_some(8 - len(header))
            if not data:
                return  # ended before saying how much it wants: nothing to send
            header += data
        (wanted,) = struct.unpack(">Q", header)
        if wanted > self.max_download:
            reset = getattr(stream, "reset", None)  # a yamux stream: the client learns at once
            if reset is not None:
                reset()
            return
        # Read the upload to its end before answering: the spec forbids overlapping the two.
        while await stream.receive_some(BLOCK):
            pass
        await _send_zeros(stream, wanted)
        await stream.send_eof()
