"""multistream-select: the pure codec, select/handle over memory streams, and the BufferedStream below them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from physarum.errors import DecodeError, IncompleteError, NegotiationError, PhysarumError
from physarum.overlay import multistream, varint
from physarum.overlay.streamio import BufferedStream

HEADER = b"\x13/multistream/1.0.0\n"
TIMEOUT = 5
# Text multistream can carry: no newline, and encodable as UTF-8 (no lone surrogates).
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=100)


def buffered_pair() -> tuple[BufferedStream, BufferedStream]:
    a, b = trio.testing.memory_stream_pair()
    return BufferedStream(a), BufferedStream(b)


def _parse_all(data: bytes) -> list[str]:
    out = []
    pos = 0
    while pos < len(data):
        text, pos = multistream.decode(data, pos)
        out.append(text)
    return out


# ---- codec ----


def test_wire_vectors() -> None:
    assert multistream.encode("na") == bytes.fromhex("036e610a")
    assert multistream.encode(multistream.NA) == b"\x03na\n"
    assert multistream.encode(multistream.PROTOCOL_ID) == HEADER
    assert HEADER[0] == len("/multistream/1.0.0\n") == 0x13
    assert multistream.encode("/noise") == b"\x07/noise\n"
    assert multistream.encode("/yamux/1.0.0") == b"\x0d/yamux/1.0.0\n"
    assert multistream.encode("ls") == b"\x03ls\n"
    assert multistream.encode("") == b"\x01\n"
    assert multistream.decode(bytes.fromhex("036e610a")) == ("na", 4)
    assert multistream.decode(HEADER) == ("/multistream/1.0.0", len(HEADER))


def test_length_counts_bytes_not_characters() -> None:
    assert multistream.encode("/é") == b"\x04/\xc3\xa9\n"
    assert multistream.decode(b"\x04/\xc3\xa9\n") == ("/é", 5)


@given(TEXT)
def test_roundtrip(text: str) -> None:
    encoded = multistream.encode(text)
    assert multistream.decode(encoded) == (text, len(encoded))
    length, body = varint.decode(encoded)
    assert length == len(encoded) - body == len(text.encode()) + 1
    assert encoded.endswith(b"\n")


@given(st.lists(TEXT, max_size=8), st.binary(max_size=8))
def test_decode_consecutive_messages_at_offsets(texts: list[str], junk: bytes) -> None:
    data = junk + b"".join(multistream.encode(t) for t in texts)
    pos = len(junk)
    out = []
    for _ in texts:
        text, pos = multistream.decode(data, pos)
        out.append(text)
    assert out == texts
    assert pos == len(data)
    if texts:
        assert multistream.decode(bytearray(data), len(junk))[0] == texts[0]


@given(TEXT)
def test_every_truncation_is_incomplete(text: str) -> None:
    encoded = multistream.encode(text)
    for cut in range(len(encoded)):
        with pytest.raises(IncompleteError):
            multistream.decode(encoded[:cut])


def test_incomplete_error_is_exported() -> None:
    assert multistream.IncompleteError is IncompleteError


@pytest.mark.parametrize(
    "data",
    [
        b"\x02na",  # no newline
        b"\x03nax",  # last byte is not a newline
        b"\x00",  # empty body: not even a newline
        b"\x03\xff\xfe\n",  # not UTF-8
        b"\x04\xed\xa0\x80\n",  # an encoded surrogate is not UTF-8
        b"\x80\x00",  # non-minimal length
        b"\x80" * 11,  # length longer than any varint
        varint.encode(multistream.MAX_MESSAGE + 1) + b"x" * (multistream.MAX_MESSAGE + 1),
        varint.encode(2**40),  # oversize: rejected from the prefix alone
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError):
        multistream.decode(data)


def test_size_limits() -> None:
    longest = "x" * (multistream.MAX_MESSAGE - 1)  # + newline = MAX_MESSAGE
    assert multistream.decode(multistream.encode(longest))[0] == longest
    with pytest.raises(ValueError):
        multistream.encode(longest + "x")
    assert len(multistream.encode("é" * (multistream.MAX_MESSAGE // 2))) == 3 + multistream.MAX_MESSAGE
    with pytest.raises(ValueError):
        multistream.encode("é" * (multistream.MAX_MESSAGE // 2 + 1))  # too long in bytes, not in chars


@pytest.mark.parametrize("text", ["a\nb", "\n", "/proto\n"])
def test_encode_rejects_newline(text: str) -> None:
    with pytest.raises(ValueError):
        multistream.encode(text)


# ---- select / handle over memory streams ----


def _only(*protocols: str) -> Callable[[str], bool]:
    return set(protocols).__contains__


async def _negotiate(
    dialer_protocols: list[str], listener_protocols: list[str]
) -> tuple[str | BaseException, str | BaseException]:
    """Run select and handle against each other; return each side's result or exception."""
    d, ln = buffered_pair()
    results: dict[str, str | BaseException] = {}

    async def dial() -> None:
        try:
            results["d"] = await multistream.select(d, dialer_protocols)
        except (PhysarumError, trio.BrokenResourceError) as e:
            results["d"] = e
            await d.aclose()

    async def listen() -> None:
        try:
            results["l"] = await multistream.handle(
                ln, _only(*listener_protocols), lambda: listener_protocols
            )
        except (PhysarumError, trio.BrokenResourceError) as e:
            results["l"] = e
            await ln.aclose()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dial)
            nursery.start_soon(listen)
    return results["d"], results["l"]


async def test_select_first_proposal() -> None:
    assert await _negotiate(["/a/1.0.0", "/b"], ["/b", "/a/1.0.0"]) == ("/a/1.0.0", "/a/1.0.0")


async def test_select_falls_back_after_na() -> None:
    assert await _negotiate(["/x", "/y", "/b"], ["/a", "/b"]) == ("/b", "/b")


async def test_select_no_common_protocol() -> None:
    dialer, listener = await _negotiate(["/x", "/y"], ["/a", "/b"])
    assert isinstance(dialer, NegotiationError)
    # The dialer gave up and closed: the listener sees the stream end.
    assert isinstance(listener, trio.BrokenResourceError)


async def test_select_needs_a_protocol() -> None:
    d, _ = buffered_pair()
    with pytest.raises(ValueError):
        await multistream.select(d, [])


async def test_select_wire_bytes_and_single_round_trip() -> None:
    d, ln = buffered_pair()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def listener() -> None:
                # Header and first proposal arrive together, before the listener says anything.
                first = HEADER + multistream.encode("/x")
                assert await ln.receive_exactly(len(first)) == first
                await ln.send_all(HEADER + b"\x03na\n")
                assert await ln.receive_exactly(4) == b"\x03/y\n"
                await ln.send_all(b"\x03/y\n")

            nursery.start_soon(listener)
            assert await multistream.select(d, ["/x", "/y"]) == "/y"


async def test_handle_wire_bytes() -> None:
    d, ln = buffered_pair()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def dialer() -> None:
                assert await d.receive_exactly(len(HEADER)) == HEADER
                await d.send_all(HEADER + b"\x03/x\n")
                assert await d.receive_exactly(4) == bytes.fromhex("036e610a")
                await d.send_all(b"\x03/a\n")
                assert await d.receive_exactly(4) == b"\x03/a\n"

            nursery.start_soon(dialer)
            assert await multistream.handle(ln, _only("/a"), lambda: ["/a"]) == "/a"


async def test_handle_answers_a_dialer_that_waits_for_our_header() -> None:
    # py-libp2p sends its header, then waits for ours before it proposes: the listener must not
    # keep its header back (for the answer) while it waits for that proposal.
    a, b = trio.testing.memory_stream_pair()
    d, ln = BufferedStream(a), BufferedStream(b, HEADER)  # the dialer's header is already here
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def dialer() -> None:
                assert await d.receive_exactly(len(HEADER)) == HEADER
                await d.send_all(b"\x03/a\n")
                assert await d.receive_exactly(4) == b"\x03/a\n"

            nursery.start_soon(dialer)
            assert await multistream.handle(ln, _only("/a"), lambda: ["/a"]) == "/a"


async def test_handle_answers_a_lazy_dialer_in_one_write_or_defers_it() -> None:
    for deferred in (False, True):
        a, b = trio.testing.memory_stream_pair()
        # header, proposal and the protocol's first bytes already read ahead, as a yamux stream
        # holds what a lazy dialer sent in one frame
        ln = BufferedStream(b, HEADER + b"\x03/a\n" + b"request")
        later: list[bytes] = []
        with trio.fail_after(TIMEOUT):
            proto = await multistream.handle(
                ln, _only("/a"), lambda: ["/a"], defer=later.append if deferred else None
            )
            assert proto == "/a"
            if deferred:
                assert later == [HEADER + b"\x03/a\n"]
                with trio.move_on_after(0.05):
                    await a.receive_some()
                    raise AssertionError("nothing may be sent now")
            else:
                # one write: header and answer arrive in one chunk
                assert await a.receive_some() == HEADER + b"\x03/a\n"


async def test_handle_answers_at_once_a_dialer_that_sent_nothing_more() -> None:
    # A dialer that waits for the answer (multistream.select) must get it even if the protocol's
    # handler neither reads nor writes for a while: nothing is deferred then.
    a, b = trio.testing.memory_stream_pair()
    ln = BufferedStream(b, HEADER + b"\x03/a\n")
    later: list[bytes] = []
    with trio.fail_after(TIMEOUT):
        assert await multistream.handle(ln, _only("/a"), lambda: ["/a"], defer=later.append) == "/a"
        assert later == []
        assert await a.receive_some() == HEADER + b"\x03/a\n"


async def test_select_listener_answers_something_else() -> None:
    d, ln = buffered_pair()
    await ln.send_all(HEADER + multistream.encode("/other"))
    with trio.fail_after(TIMEOUT), pytest.raises(NegotiationError):
        await multistream.select(d, ["/a"])


async def test_select_listener_not_multistream() -> None:
    d, ln = buffered_pair()
    await ln.send_all(b"\x13/multistream/2.0.0\n" + b"\x03/a\n")
    with trio.fail_after(TIMEOUT), pytest.raises(NegotiationError):
        await multistream.select(d, ["/a"])


async def test_handle_dialer_not_multistream() -> None:
    d, ln = buffered_pair()
    await d.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(TIMEOUT), pytest.raises(NegotiationError):
        await multistream.handle(ln, _only("/a"), lambda: ["/a"])


async def test_peer_hangs_up_mid_negotiation() -> None:
    d, ln = buffered_pair()
    await ln.send_all(HEADER + b"\x10/trunc")  # announces 16 bytes, sends 6, closes
    await ln.aclose()
    with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
        await multistream.select(d, ["/a"])


def _select_outcome(garbage_after_header: bytes, proto: str) -> str:
    """What select must do when the listener's header is followed by ``garbage_after_header``."""
    try:
        answer, _ = multistream.decode(garbage_after_header)
    except DecodeError:
        return "error"
    return "ok" if answer == proto else "error"


def _handle_outcome(garbage_after_header: bytes, proto: str) -> str:
    pos = 0
    while True:
        try:
            proposal, pos = multistream.decode(garbage_after_header, pos)
        except DecodeError:
            return "error"
        if proposal == proto:
            return "ok"


# Zero bytes after the garbage: any announced length (<= 64 KiB) is satisfied, and a 00 length
# is always a DecodeError, so every run ends without waiting on the peer.
FILLER = b"\x00" * (multistream.MAX_MESSAGE + 16)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64), st.booleans())
async def test_select_garbage_from_listener(garbage: bytes, with_header: bool) -> None:
    d, ln = buffered_pair()
    await ln.send_all((HEADER if with_header else b"") + garbage + FILLER)
    expected = _select_outcome(garbage + FILLER, "/a") if with_header else "error"
    if garbage.startswith(HEADER):
        expected = "error" if not with_header else expected
    with trio.fail_after(TIMEOUT):
        if expected == "ok":
            assert await multistream.select(d, ["/a"]) == "/a"
        else:
            with pytest.raises((DecodeError, NegotiationError)):
                await multistream.select(d, ["/a"])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=64), st.booleans())
async def test_handle_garbage_from_dialer(garbage: bytes, with_header: bool) -> None:
    d, ln = buffered_pair()
    await d.send_all((HEADER if with_header else b"") + garbage + FILLER)
    expected = _handle_outcome(garbage + FILLER, "/a") if with_header else "error"
    if not with_header and (garbage + FILLER).startswith(HEADER):
        expected = _handle_outcome((garbage + FILLER)[len(HEADER) :], "/a")
    with trio.fail_after(TIMEOUT):
        if expected == "ok":
            assert await multistream.handle(ln, _only("/a"), lambda: ["/a"]) == "/a"
        else:
            with pytest.raises((DecodeError, NegotiationError)):
                await multistream.handle(ln, _only("/a"), lambda: ["/a"])


@pytest.mark.parametrize(
    "garbage",
    [
        bytes(range(256)) * 4,  # pnet with a different key: uniformly random-looking bytes
        b"\xff" * 40,  # varint longer than 10 bytes
        b"\x13" + b"x" * 18 + b"\n",  # right length, wrong header
        HEADER + b"\x05hello",  # no newline
        HEADER + varint.encode(1 << 20),  # oversize answer
        HEADER + b"\x03\xff\xfe\n",  # not UTF-8
    ],
)
async def test_select_garbage_examples(garbage: bytes) -> None:
    d, ln = buffered_pair()
    await ln.send_all(garbage)
    with trio.fail_after(TIMEOUT), pytest.raises((DecodeError, NegotiationError)):
        await multistream.select(d, ["/a"])


async def test_handle_answers_ls() -> None:
    d, ln = buffered_pair()
    listing = ["/ipfs/ping/1.0.0", "/ipfs/id/1.0.0", "/ipfs/kad/1.0.0"]
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def dialer() -> None:
                await d.send_all(HEADER + b"\x03ls\n")
                assert await d.receive_exactly(len(HEADER)) == HEADER
                # The answer is one message whose body is the listed protocols as multistream
                # messages, then a newline (rust-libp2p's format).
                body = await d.receive_length_prefixed(multistream.MAX_MESSAGE)
                assert body.endswith(b"\n")
                assert _parse_all(body[:-1]) == listing
                # ls does not end the negotiation.
                await d.send_all(multistream.encode("/ipfs/id/1.0.0"))
                assert await d.receive_exactly(16) == multistream.encode("/ipfs/id/1.0.0")

            nursery.start_soon(dialer)
            assert await multistream.handle(ln, _only(*listing), lambda: listing) == "/ipfs/id/1.0.0"


async def test_handle_answers_ls_with_empty_listing() -> None:
    d, ln = buffered_pair()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def dialer() -> None:
                await d.send_all(HEADER + b"\x03ls\n")
                assert await d.receive_exactly(len(HEADER) + 2) == HEADER + b"\x01\n"
                await d.send_all(b"\x03/a\n")
                assert await d.receive_exactly(4) == b"\x03na\n"
                await d.send_all(b"\x03/z\n")
                assert await d.receive_exactly(4) == b"\x03/z\n"

            nursery.start_soon(dialer)
            assert await multistream.handle(ln, _only("/z"), list) == "/z"


async def test_bytes_after_agreement_reach_the_next_layer_dialer_side() -> None:
    d, ln = buffered_pair()
    app = b"\x00\x01first bytes of the next protocol" * 10
    # The listener answers and starts talking in the same write.
    await ln.send_all(HEADER + multistream.encode("/a") + app)
    with trio.fail_after(TIMEOUT):
        assert await multistream.select(d, ["/a"]) == "/a"
        assert d.take_buffer() == app
        assert d.take_buffer() == b""


async def test_bytes_after_agreement_reach_the_next_layer_via_receive_some() -> None:
    d, ln = buffered_pair()
    app = bytes(range(256)) * 3
    await ln.send_all(HEADER + b"\x03na\n" + b"\x03/b\n" + app)
    with trio.fail_after(TIMEOUT):
        assert await multistream.select(d, ["/a", "/b"]) == "/b"
        got = b""
        while len(got) < len(app):
            got += await d.receive_some(100)
        assert got == app
        # Once the read-ahead is drained, calls go through to the transport.
        await ln.send_all(b"more")
        assert await d.receive_some() == b"more"


async def test_bytes_after_agreement_reach_the_next_layer_listener_side() -> None:
    d, ln = buffered_pair()
    app = b"optimistic data from the dialer"
    # A dialer may pipeline header, proposal and data before hearing back.
    await d.send_all(HEADER + multistream.encode("/a") + app)
    with trio.fail_after(TIMEOUT):
        assert await multistream.handle(ln, _only("/a"), lambda: ["/a"]) == "/a"
        assert await ln.receive_some(5) == app[:5]
        assert ln.take_buffer() == app[5:]


async def test_nested_negotiation_over_one_stream() -> None:
    # Two negotiations back to back (as after Noise): the second sees only its own bytes.
    d, ln = buffered_pair()
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def listener() -> None:
                assert await multistream.handle(ln, _only("/noise"), lambda: ["/noise"]) == "/noise"
                inner = BufferedStream(ln, ln.take_buffer())
                assert await multistream.handle(inner, _only("/yamux/1.0.0"), list) == "/yamux/1.0.0"

            nursery.start_soon(listener)
            assert await multistream.select(d, ["/noise"]) == "/noise"
            inner = BufferedStream(d, d.take_buffer())
            assert await multistream.select(inner, ["/mplex/6.7.0", "/yamux/1.0.0"]) == "/yamux/1.0.0"


# ---- BufferedStream ----


async def test_buffered_stream_is_a_half_closeable_stream() -> None:
    async def maker() -> tuple[BufferedStream, BufferedStream]:
        return buffered_pair()

    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(maker, None)


async def test_buffered_stream_exact_and_prefixed_reads() -> None:
    d, ln = buffered_pair()
    await d.send_all(b"abcdef" + varint.encode(3) + b"xyz" + varint.encode(0) + b"tail")
    with trio.fail_after(TIMEOUT):
        assert await ln.receive_exactly(2) == b"ab"
        assert await ln.receive_exactly(0) == b""
        assert await ln.receive_exactly(4) == b"cdef"
        assert await ln.receive_length_prefixed(3) == b"xyz"
        assert await ln.receive_length_prefixed(0) == b""
        assert await ln.receive_some(2) == b"ta"
        assert ln.take_buffer() == b"il"


async def test_buffered_stream_reassembles_byte_by_byte() -> None:
    d, ln = buffered_pair()
    message = b"m" * 300
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def trickle() -> None:
                for b in varint.encode(len(message)) + message:
                    await d.send_all(bytes((b,)))
                    await trio.testing.wait_all_tasks_blocked()

            nursery.start_soon(trickle)
            assert await ln.receive_length_prefixed(1000) == message


async def test_buffered_stream_prefixed_errors() -> None:
    d, ln = buffered_pair()
    await d.send_all(varint.encode(101) + b"x" * 101)
    with trio.fail_after(TIMEOUT), pytest.raises(DecodeError):
        await ln.receive_length_prefixed(100)

    d, ln = buffered_pair()
    await d.send_all(b"\x80" * 12)
    with trio.fail_after(TIMEOUT), pytest.raises(DecodeError):
        await ln.receive_length_prefixed(100)

    d, ln = buffered_pair()
    await d.send_all(b"\x80\x00")
    with trio.fail_after(TIMEOUT), pytest.raises(DecodeError):
        await ln.receive_length_prefixed(100)


async def test_buffered_stream_eof_mid_message() -> None:
    d, ln = buffered_pair()
    await d.send_all(b"\x05abc")
    await d.send_eof()
    with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
        await ln.receive_length_prefixed(100)

    d, ln = buffered_pair()
    await d.send_all(b"\x85")
    await d.aclose()
    with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
        await ln.receive_length_prefixed(100)

    d, ln = buffered_pair()
    await d.aclose()
    with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
        await ln.receive_exactly(1)


async def test_buffered_stream_initial_bytes_come_first() -> None:
    a, b = trio.testing.memory_stream_pair()
    s = BufferedStream(b, b"early")
    await a.send_all(b"late")
    with trio.fail_after(TIMEOUT):
        assert await s.receive_some() == b"early"
        assert await s.receive_some() == b"late"


async def test_buffered_stream_read_ahead_obeys_the_stream_contract() -> None:
    # While serving read-ahead bytes, receive_some must still behave as trio.abc.ReceiveStream says.
    _a, b = trio.testing.memory_stream_pair()
    s = BufferedStream(b, b"buffered")
    with pytest.raises(ValueError):
        await s.receive_some(0)
    with pytest.raises(ValueError):
        await s.receive_some(-1)
    with trio.testing.assert_checkpoints():
        assert await s.receive_some(3) == b"buf"
    await s.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await s.receive_some(10)
    with pytest.raises(trio.ClosedResourceError):
        await s.receive_exactly(1)


async def test_buffered_stream_send_eof_needs_half_closeable_transport() -> None:
    a, b = trio.testing.memory_stream_pair()
    s = BufferedStream(a)
    await s.send_eof()
    with trio.fail_after(TIMEOUT):
        assert await b.receive_some(10) == b""

    class OneWayStapled(trio.abc.Stream):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            raise NotImplementedError

        async def wait_send_all_might_not_block(self) -> None:
            raise NotImplementedError

        async def receive_some(self, max_bytes: int | None = None) -> bytes:
            raise NotImplementedError

        async def aclose(self) -> None:
            pass

    with pytest.raises(trio.ClosedResourceError):
        await BufferedStream(OneWayStapled()).send_eof()
