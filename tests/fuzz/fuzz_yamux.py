"""Fuzz yamux (physarum.overlay.yamux): the frame header codec and a whole ``YamuxSession`` reading
what a peer sends, with streams that applications read, write, close and reset meanwhile.

Input: byte 0 holds flags (bit 0: we are the client; bit 1: we open a stream and write to it;
bit 2: the peer stops reading what we send after ``16 * byte 2`` bytes, so our writes get stuck),
byte 1 how the wire is cut into reads (see ``_common.split``), byte 2 as above; the rest is what the
peer sends, then it ends its side.

Inbound streams get a handler chosen by stream id: echo until end of stream, read once and close,
reset at once, or write more than the initial window and half-close. The contract: ``run()``
returns without raising (a peer's protocol errors end the session, they are not raised), every
handler ends with data or trio.BrokenResourceError/ClosedResourceError/BusyResourceError, no stream
is left in the session, the control-frame queue stays under its cap, and every byte reserved in the
session's memory budget comes back.

    mkdir -p /tmp/yamux && python tests/fuzz/fuzz_yamux.py /tmp/yamux tests/fuzz/corpus/yamux -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris
import trio

with atheris.instrument_imports(include=["physarum"]):
    from physarum.errors import DecodeError, LimitError
    from physarum.overlay import yamux
    from physarum.overlay.resources import MemoryBudget

#: Small bounds, so short inputs reach them.
MAX_PENDING_CONTROL = 256
MEMORY_LIMIT = 300 * 1024
HANDLER_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError)
BIG = b"y" * (yamux.INITIAL_WINDOW + 1000)


async def _handler(stream: yamux.YamuxStream) -> None:
    kind = (stream.stream_id >> 1) % 4
    try:
        if kind == 0:
            while data := await stream.receive_some():
                await stream.send_all(data)
            await stream.aclose()
        elif kind == 1:
            await stream.receive_some(7)
            await stream.aclose()
        elif kind == 2:
            stream.reset()
        else:
            await stream.send_all(BIG)
            await stream.send_eof()
    except HANDLER_ERRORS:
        pass


async def _ours(session: yamux.YamuxSession) -> None:
    try:
        stream = await session.open_stream()
        await stream.send_all(b"hello")
        await stream.send_eof()
        while await stream.receive_some():
            pass
    except (*HANDLER_ERRORS, LimitError):
        pass


async def _session(feed: _common.FeedStream, is_client: bool, open_one: bool) -> None:
    memory = MemoryBudget(MEMORY_LIMIT)
    async with trio.open_nursery() as handlers:
        session = yamux.YamuxSession(
            feed,
            is_client=is_client,
            on_stream=lambda s: handlers.start_soon(_handler, s),
            window=yamux.INITIAL_WINDOW,
            max_streams=4,
            max_pending_control=MAX_PENDING_CONTROL,
            max_pending_pongs=4,
            memory=memory,
        )
        async with trio.open_nursery() as inner:
            await inner.start(session.run)
            if open_one:
                inner.start_soon(_ours, session)
            while not session.closed.is_set():
                assert len(session._pending) <= MAX_PENDING_CONTROL
                await trio.sleep(0.01)
    assert session.broken and not session.streams
    assert memory.used == 0, f"{memory.used} bytes still reserved after the session ended"


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    flags, pattern, reads, wire = data[0], data[1], data[2], data[3:]
    for pos in range(0, len(wire) - yamux.HEADER_SIZE + 1, yamux.HEADER_SIZE):
        try:
            header = yamux.decode_header(wire, pos)
        except DecodeError:
            continue
        assert yamux.encode_header(*header) == wire[pos : pos + yamux.HEADER_SIZE]
    feed = _common.FeedStream(_common.split(wire, pattern), reads=16 * reads if flags & 4 else None)
    _common.run_trio(lambda: _session(feed, bool(flags & 1), bool(flags & 2)))


if __name__ == "__main__":
    _common.main(test_one_input, max_len=4096)
