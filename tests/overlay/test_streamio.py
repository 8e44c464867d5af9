"""The read-ahead buffer handshake layers share (physarum.overlay.streamio), over memory streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.errors import DecodeError
from physarum.overlay import varint
from physarum.overlay.streamio import BufferedStream, check_max_bytes, json_frame, read_json


class _Chunked(trio.abc.Stream):
    """A transport that hands out ``chunks`` one per read (then EOF), and is not half-closeable."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.reads: list[int | None] = []
        self.sent = bytearray()
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        self.reads.append(max_bytes)
        return self.chunks.pop(0) if self.chunks else b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


def test_check_max_bytes() -> None:
    assert check_max_bytes(None) is None
    assert check_max_bytes(1) == 1
    assert check_max_bytes(True) == 1  # an integer, as operator.index says
    with pytest.raises(ValueError):
        check_max_bytes(0)
    with pytest.raises(TypeError):
        check_max_bytes(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_max_bytes("3")  # type: ignore[arg-type]


async def test_it_is_a_well_behaved_half_closeable_stream() -> None:
    async def pair() -> tuple[BufferedStream, BufferedStream]:
        a, b = trio.testing.memory_stream_pair()
        return BufferedStream(a), BufferedStream(b)

    async def lockstep() -> tuple[BufferedStream, BufferedStream]:
        a, b = trio.testing.lockstep_stream_pair()
        return BufferedStream(a), BufferedStream(b)

    await trio.testing.check_half_closeable_stream(pair, None)
    await trio.testing.check_half_closeable_stream(lockstep, None)


async def test_receive_exactly_gathers_across_reads_and_keeps_the_rest() -> None:
    buf = BufferedStream(_Chunked([b"ab", b"c", b"defg"]))
    assert await buf.receive_exactly(0) == b""
    assert await buf.receive_exactly(4) == b"abcd"
    assert buf.received == 7
    assert buf.take_buffer() == b"efg"
    assert buf.take_buffer() == b""
    with pytest.raises(trio.BrokenResourceError):
        await buf.receive_exactly(1)


async def test_receive_exactly_fails_when_the_stream_ends_mid_message() -> None:
    buf = BufferedStream(_Chunked([b"abc"]))
    with pytest.raises(trio.BrokenResourceError):
        await buf.receive_exactly(4)
    assert buf.received == 3  # the peer did send something: not a silent refusal


async def test_initial_bytes_come_first_and_count_as_received() -> None:
    buf = BufferedStream(_Chunked([b"tail"]), initial=b"head")
    assert buf.received == 4
    assert await buf.receive_exactly(6) == b"headta"
    assert await buf.receive_some() == b"il"


async def test_receive_length_prefixed() -> None:
    message = b"x" * 300
    wire = varint.encode(300) + message + varint.encode(0) + varint.encode(2) + b"ok"
    # cut inside the two-byte length prefix and inside the body
    buf = BufferedStream(_Chunked([wire[:1], wire[1:100], wire[100:]]))
    assert await buf.receive_length_prefixed(300) == message
    assert await buf.receive_length_prefixed(300) == b""
    assert await buf.receive_length_prefixed(2) == b"ok"
    with pytest.raises(trio.BrokenResourceError):
        await buf.receive_length_prefixed(10)


async def test_an_over_long_message_is_refused_before_it_is_read() -> None:
    transport = _Chunked([varint.encode(1 << 20), b"y" * 10])
    buf = BufferedStream(transport)
    with pytest.raises(DecodeError, match="exceeds"):
        await buf.receive_length_prefixed(1000)
    assert len(transport.reads) == 1  # the body was never waited for


async def test_a_length_prefix_longer_than_a_varint_is_refused() -> None:
    buf = BufferedStream(_Chunked([b"\x80" * 6, b"\x80" * 6]))
    with pytest.raises(DecodeError):
        await buf.receive_length_prefixed(1 << 30)


async def test_receive_some_serves_read_ahead_bytes_first_within_max_bytes() -> None:
    transport = _Chunked([b"later"])
    buf = BufferedStream(transport, initial=b"abcdef")
    with trio.testing.assert_checkpoints():
        assert await buf.receive_some(4) == b"abcd"
    assert transport.reads == []  # served from the buffer
    assert await buf.receive_some() == b"ef"
    assert await buf.receive_some(3) == b"later"  # the transport gets max_bytes as given
    assert transport.reads == [3]
    assert await buf.receive_some() == b""


async def test_receive_some_checks_max_bytes_even_from_the_buffer() -> None:
    buf = BufferedStream(_Chunked([]), initial=b"abc")
    with pytest.raises(ValueError):
        await buf.receive_some(0)
    with pytest.raises(TypeError):
        await buf.receive_some("1")  # type: ignore[arg-type]
    assert await buf.receive_some() == b"abc"  # nothing was lost by the refusals


async def test_a_closed_stream_refuses_reads_even_with_bytes_buffered() -> None:
    transport = _Chunked([])
    buf = BufferedStream(transport, initial=b"abc")
    await buf.aclose()
    assert transport.closed
    for call in (buf.receive_some(), buf.receive_exactly(1), buf.receive_length_prefixed(5)):
        with pytest.raises(trio.ClosedResourceError):
            await call


async def test_writes_pass_straight_through() -> None:
    transport = _Chunked([])
    buf = BufferedStream(transport)
    await buf.send_all(b"hello")
    await buf.wait_send_all_might_not_block()
    assert transport.sent == b"hello"
    # this transport cannot half-close: say so rather than close it altogether
    with pytest.raises(trio.ClosedResourceError):
        await buf.send_eof()
    assert not transport.closed


async def test_send_eof_reaches_a_half_closeable_transport() -> None:
    a, b = trio.testing.memory_stream_pair()
    buf = BufferedStream(a)
    await buf.send_all(b"bye")
    await buf.send_eof()
    assert await b.receive_some() == b"bye"
    assert await b.receive_some() == b""


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(max_size=200), max_size=6),
    st.lists(st.integers(1, 50), min_size=1, max_size=20),
    st.data(),
)
def test_any_cut_of_a_message_sequence_reads_back_the_same(
    messages: list[bytes], cuts: list[int], data: st.DataObject
) -> None:
    wire = b"".join(varint.encode(len(m)) + m for m in messages)
    chunks, pos = [], 0
    for n in cuts * (len(wire) // max(sum(cuts), 1) + 1):
        if pos >= len(wire):
            break
        chunks.append(wire[pos : pos + n])
        pos += n
    truncate = data.draw(st.integers(0, len(wire)))

    async def main() -> None:
        buf = BufferedStream(_Chunked(chunks))
        for m in messages:
            assert await buf.receive_length_prefixed(200) == m
        assert buf.take_buffer() == b""
        assert buf.received == len(wire)
        # the same bytes cut short: every whole message comes out, then the stream is broken
        cut = BufferedStream(_Chunked([wire[:truncate]]))
        whole = 0
        with pytest.raises(trio.BrokenResourceError):
            for m in messages:
                assert await cut.receive_length_prefixed(200) == m
                whole += len(varint.encode(len(m))) + len(m)
            await cut.receive_length_prefixed(200)
        assert whole <= truncate

    trio.run(main)


class _Reset(_Chunked):
    """Hands out ``chunks``, then fails as a reset stream does."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.chunks:
            return await super().receive_some(max_bytes)
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("stream reset by the peer")


async def test_read_json_ends_cleanly_only_at_an_end_of_stream_not_at_a_reset() -> None:
    one = json_frame({"a": 1})
    assert await read_json(BufferedStream(_Chunked([one])), 1000) == {"a": 1}
    stream = BufferedStream(_Chunked([one]))
    assert await read_json(stream, 1000) == {"a": 1}
    assert await read_json(stream, 1000) is None  # the peer closed between messages: a clean end
    # A reset (or a broken connection) between messages is no end: a refused or broken exchange must
    # not read as one that finished with no (more) answers.
    for chunks in ([], [one]):
        stream = BufferedStream(_Reset(chunks))
        if chunks:
            assert await read_json(stream, 1000) == {"a": 1}
        with pytest.raises(trio.BrokenResourceError, match="reset"):
            await read_json(stream, 1000)
    with pytest.raises(DecodeError, match="cut short"):
        await read_json(BufferedStream(_Chunked([one[:3]])), 1000)
    with pytest.raises(trio.BrokenResourceError, match="reset"):
        await read_json(BufferedStream(_Reset([one[:3]])), 1000)
