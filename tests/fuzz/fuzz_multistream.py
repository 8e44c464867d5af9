"""Fuzz multistream-select (physarum.overlay.multistream): the first thing a peer's bytes meet on
every connection (before Noise, and after it for the muxer) and on every stream.

Input: byte 0 picks what runs (0: the pure decoder, 1: the listener's ``handle``, 2: the dialer's
``select``), byte 1 how the peer's bytes are cut into reads (see ``_common.split``), the rest is
what the peer sends, then it ends its side. ``handle`` and ``select`` return one of our protocols or
raise DecodeError, NegotiationError or trio.BrokenResourceError; the decoder returns text that
re-encodes to the bytes it came from, or asks for more, or raises DecodeError.

    mkdir -p /tmp/multistream && python tests/fuzz/fuzz_multistream.py /tmp/multistream tests/fuzz/corpus/multistream -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris
import trio

with atheris.instrument_imports(include=["physarum"]):
    from physarum.errors import DecodeError, IncompleteError, PhysarumError
    from physarum.overlay import multistream
    from physarum.overlay.streamio import BufferedStream

OURS = ["/noise", "/yamux/1.0.0", "/ipfs/ping/1.0.0", "/ipfs/id/1.0.0"]
ALLOWED = (trio.BrokenResourceError, PhysarumError)


def _decode_all(wire: bytes) -> None:
    pos = 0
    while pos < len(wire):
        try:
            text, end = multistream.decode(wire, pos)
        except (IncompleteError, DecodeError):
            return
        if "\n" not in text:
            assert multistream.encode(text) == wire[pos:end]
        pos = end


async def _handle(feed: _common.FeedStream) -> None:
    chosen = await multistream.handle(BufferedStream(feed), OURS.__contains__, lambda: list(OURS))
    assert chosen in OURS


async def _select(feed: _common.FeedStream) -> None:
    chosen = await multistream.select(BufferedStream(feed), OURS)
    assert chosen in OURS


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, pattern, wire = data[0] % 3, data[1], data[2:]
    if mode == 0:
        _decode_all(wire)
        return
    feed = _common.FeedStream(_common.split(wire, pattern))
    try:
        _common.run_trio(lambda: (_handle if mode == 1 else _select)(feed))
    except BaseException as e:
        if not _common.only(e, ALLOWED):
            raise


if __name__ == "__main__":
    _common.main(test_one_input, max_len=2048)
