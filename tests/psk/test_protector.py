"""The pnet connection protector: trio's stream conformance checks, the exact wire format, failures."""

from __future__ import annotations

import hashlib
import itertools

import nacl.bindings
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.errors import PhysarumError
from physarum.psk import (
    NONCE_SIZE,
    HalfCloseablePskStream,
    PskMismatchError,
    PskStream,
    TruncatedNonceError,
    XSalsa20,
    protect,
)

PSK = hashlib.sha3_256(b"test network").digest()
OTHER_PSK = hashlib.sha3_256(b"another network").digest()
MULTISTREAM_HEADER = b"\x13/multistream/1.0.0\n"


class PlainStream(trio.abc.Stream):
    """A two-way stream that cannot half-close, to exercise the plain PskStream."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(memoryview(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def protect_both(
    a: trio.abc.HalfCloseableStream, b: trio.abc.HalfCloseableStream, psk_b: bytes = PSK
) -> tuple[HalfCloseablePskStream, HalfCloseablePskStream]:
    results: dict[str, HalfCloseablePskStream] = {}

    async def run(name: str, transport: trio.abc.HalfCloseableStream, psk: bytes) -> None:
        results[name] = await protect(transport, psk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "a", a, PSK)
        nursery.start_soon(run, "b", b, psk_b)
    return results["a"], results["b"]


async def protected_memory_pair() -> tuple[HalfCloseablePskStream, HalfCloseablePskStream]:
    return await protect_both(*trio.testing.memory_stream_pair())


async def lazy_memory_pair() -> tuple[HalfCloseablePskStream, HalfCloseablePskStream]:
    a, b = trio.testing.memory_stream_pair()
    return HalfCloseablePskStream(a, PSK), HalfCloseablePskStream(b, PSK)


async def lazy_lockstep_pair() -> tuple[HalfCloseablePskStream, HalfCloseablePskStream]:
    # protect() would block here: a lockstep send waits for a receive that nobody makes yet.
    a, b = trio.testing.lockstep_stream_pair()
    return HalfCloseablePskStream(a, PSK), HalfCloseablePskStream(b, PSK)


async def protected_plain_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    a, b = trio.testing.memory_stream_pair()
    pa, pb = PlainStream(a), PlainStream(b)
    results: list[PskStream] = []

    async def run(transport: trio.abc.Stream) -> None:
        results.append(await protect(transport, PSK))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, pa)
        nursery.start_soon(run, pb)
    first, second = results
    return (first, second) if first.transport_stream is pa else (second, first)


async def lazy_plain_lockstep_pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    a, b = trio.testing.lockstep_stream_pair()
    return PskStream(PlainStream(a), PSK), PskStream(PlainStream(b), PSK)


def libsodium_encrypt_from_32(nonce: bytes, tail: bytes) -> bytes:
    """Ciphertext bytes 32 onward of a message whose bytes 32 onward are ``tail``, per libsodium.

    crypto_secretbox (XSalsa20-Poly1305) keys Poly1305 with keystream bytes 0-31 and XORs the message
    with the keystream from byte 32 on; its output is the 16-byte tag, then that XOR.
    """
    return nacl.bindings.crypto_secretbox(tail, nonce, PSK)[16:]


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


# --- trio's generic stream checks --------------------------------------------------------------------


async def test_half_closeable_stream_conformance() -> None:
    await trio.testing.check_half_closeable_stream(protected_memory_pair, lazy_lockstep_pair)


async def test_half_closeable_stream_conformance_without_eager_nonce() -> None:
    await trio.testing.check_half_closeable_stream(lazy_memory_pair, lazy_lockstep_pair)


async def test_two_way_stream_conformance_over_a_plain_stream() -> None:
    await trio.testing.check_two_way_stream(protected_plain_pair, lazy_plain_lockstep_pair)


async def test_protect_picks_the_class_from_the_transport() -> None:
    a, _ = await protected_memory_pair()
    assert isinstance(a, HalfCloseablePskStream)
    p, _ = await protected_plain_pair()
    assert isinstance(p, PskStream)
    assert not isinstance(p, trio.abc.HalfCloseableStream)


# --- the wire format --------------------------------------------------------------------------------


async def test_protect_sends_a_fresh_nonce_at_once(autojump_clock: trio.testing.MockClock) -> None:
    nonces = set()
    for _ in range(4):
        raw, transport = trio.testing.memory_stream_pair()
        await protect(transport, PSK)
        with trio.fail_after(1):  # the nonce is already there: nothing waits for the peer
            nonces.add(bytes(await raw.receive_some()))
    assert len(nonces) == 4
    assert all(len(n) == NONCE_SIZE for n in nonces)


async def test_wire_is_nonce_then_xsalsa20_ciphertext() -> None:
    raw, transport = trio.testing.memory_stream_pair()
    stream = await protect(transport, PSK)
    plaintext = MULTISTREAM_HEADER + bytes(range(256)) * 20
    await stream.send_all(plaintext[:5])
    await stream.send_all(plaintext[5:])
    wire = await receive_exactly(raw, NONCE_SIZE + len(plaintext))
    nonce, ciphertext = wire[:NONCE_SIZE], wire[NONCE_SIZE:]
    # Bytes 32 onward checked against libsodium itself; the first 32 against our (separately verified) cipher.
    assert ciphertext[32:] == libsodium_encrypt_from_32(nonce, plaintext[32:])
    assert ciphertext == XSalsa20(PSK, nonce).process(plaintext)


async def test_lazy_stream_puts_nonce_and_first_data_in_one_write() -> None:
    raw, transport = trio.testing.memory_stream_pair()
    stream = HalfCloseablePskStream(transport, PSK)
    await stream.send_all(MULTISTREAM_HEADER)
    first = await raw.receive_some()
    assert len(first) == NONCE_SIZE + len(MULTISTREAM_HEADER)
    assert XSalsa20(PSK, first[:NONCE_SIZE]).process(first[NONCE_SIZE:]) == MULTISTREAM_HEADER


async def test_decrypts_what_libsodium_encrypted() -> None:
    raw, transport = trio.testing.memory_stream_pair()
    stream = await protect(transport, PSK)
    nonce = bytes(range(NONCE_SIZE))
    plaintext = bytes(32) + b"hello from a go or js peer" * 50
    await raw.send_all(nonce + bytes(32))  # the first 32 plaintext bytes are zero: ciphertext = keystream
    await raw.send_all(libsodium_encrypt_from_32(nonce, plaintext[32:]))
    keystream_head = await receive_exactly(stream, 32)
    assert keystream_head == XSalsa20(PSK, nonce).process(bytes(32))
    assert await receive_exactly(stream, len(plaintext) - 32) == plaintext[32:]


async def test_large_send_crosses_the_chunk_boundary() -> None:
    a, b = await protected_memory_pair()
    data = hashlib.shake_256(b"large").digest(3 * 256 * 1024 + 17)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, memoryview(data))
        assert await receive_exactly(b, len(data)) == data


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000),
    send_cuts=st.lists(st.integers(0, 3100), max_size=8),
    wire_cuts=st.lists(st.integers(0, 3100), max_size=8),
    reads=st.lists(st.integers(1, 4000), min_size=1, max_size=8),
)
async def test_any_split_on_the_wire_and_in_reads(
    data: bytes, send_cuts: list[int], wire_cuts: list[int], reads: list[int]
) -> None:
    # Encrypt with one PskStream, re-chunk the raw bytes arbitrarily (splitting the nonce too), decrypt
    # with another, reading with arbitrary max_bytes.
    sender_raw, sender_transport = trio.testing.memory_stream_pair()
    receiver_raw, receiver_transport = trio.testing.memory_stream_pair()
    sender = HalfCloseablePskStream(sender_transport, PSK)
    receiver = HalfCloseablePskStream(receiver_transport, PSK)
    for chunk in _split(data, send_cuts):
        await sender.send_all(chunk)
    wire = await receive_exactly(sender_raw, NONCE_SIZE + len(data))
    for chunk in _split(wire, wire_cuts):
        await receiver_raw.send_all(chunk)
    await receiver_raw.send_eof()
    got = bytearray()
    i = 0
    while True:
        max_bytes = reads[i % len(reads)]
        i += 1
        chunk = await receiver.receive_some(max_bytes)
        assert len(chunk) <= max_bytes
        if not chunk:
            break
        got += chunk
    assert got == data


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[x:y] for x, y in itertools.pairwise(bounds)]


# --- keys that differ -------------------------------------------------------------------------------


async def test_wrong_key_yields_garbage() -> None:
    a, b = await protect_both(*trio.testing.memory_stream_pair(), psk_b=OTHER_PSK)
    await a.send_all(MULTISTREAM_HEADER)
    got = await receive_exactly(b, len(MULTISTREAM_HEADER))
    assert got != MULTISTREAM_HEADER
    # Not a near miss either: a keystream under another key differs in about every byte.
    assert sum(x != y for x, y in zip(got, MULTISTREAM_HEADER, strict=True)) >= len(got) // 2


async def test_plaintext_peer_yields_garbage() -> None:
    raw, transport = trio.testing.memory_stream_pair()
    stream = await protect(transport, PSK)
    await raw.send_all(MULTISTREAM_HEADER * 3)  # a peer without pnet speaks multistream straight away
    got = await receive_exactly(stream, 3 * len(MULTISTREAM_HEADER) - NONCE_SIZE)
    assert MULTISTREAM_HEADER not in got


def test_psk_mismatch_error() -> None:
    err = PskMismatchError(peer_id="12D3KooWexample", address="/ip4/127.0.0.1/tcp/4001")
    assert isinstance(err, PhysarumError)
    assert err.peer_id == "12D3KooWexample"
    assert err.address == "/ip4/127.0.0.1/tcp/4001"
    assert "private network" in str(err)
    assert "12D3KooWexample" in str(err)
    assert (
        str(PskMismatchError())
        == "the peer is not in this private network (pre-shared keys differ) or is not using a PSK"
    )


# --- failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [0, 1, 23])
async def test_eof_before_the_whole_nonce_is_broken(sent: int) -> None:
    raw, transport = trio.testing.memory_stream_pair()
    stream = await protect(transport, PSK)
    await raw.send_all(bytes(sent))
    await raw.aclose()
    for _ in range(2):  # and it stays broken
        with pytest.raises(trio.BrokenResourceError) as info:
            await stream.receive_some()
        cause = info.value.__cause__
        assert isinstance(cause, TruncatedNonceError)
        assert cause.received == sent
        assert isinstance(cause, PhysarumError)


async def test_eof_after_the_nonce_is_a_clean_end() -> None:
    raw, transport = trio.testing.memory_stream_pair()
    stream = await protect(transport, PSK)
    await raw.send_all(bytes(NONCE_SIZE))
    await raw.send_eof()
    assert await stream.receive_some() == b""
    assert await stream.receive_some() == b""


async def test_send_eof_without_data_still_sends_the_nonce() -> None:
    a, b = await lazy_memory_pair()
    await a.send_eof()
    assert await b.receive_some() == b""


async def test_send_eof_with_pending_nonce_over_lockstep() -> None:
    a, b = await lazy_lockstep_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_eof)
        assert await b.receive_some() == b""


async def test_interrupted_send_breaks_the_sending_side(autojump_clock: trio.testing.MockClock) -> None:
    a, _ = await lazy_lockstep_pair()
    with trio.move_on_after(1):  # nobody reads: the send blocks part-way and is cancelled
        await a.send_all(b"x" * 100)
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"more")
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"")
    await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"more")


async def test_cancelled_before_sending_does_not_break() -> None:
    a, b = await protected_memory_pair()
    with trio.CancelScope() as scope:
        scope.cancel()
        await a.send_all(b"lost")
    await a.send_all(b"kept")
    assert await receive_exactly(b, 4) == b"kept"


async def test_cancelled_nonce_read_resumes(autojump_clock: trio.testing.MockClock) -> None:
    raw, transport = trio.testing.memory_stream_pair()
    stream = await protect(transport, PSK)
    nonce = bytes(range(100, 100 + NONCE_SIZE))
    await raw.send_all(nonce[:10])
    with trio.move_on_after(1):
        await stream.receive_some()
    await raw.send_all(nonce[10:] + XSalsa20(PSK, nonce).process(b"payload"))
    assert await receive_exactly(stream, 7) == b"payload"


async def test_bad_arguments() -> None:
    _, transport = trio.testing.memory_stream_pair()
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(ValueError):
            await protect(transport, bad)
        with pytest.raises(ValueError):
            PskStream(transport, bad)
    stream = HalfCloseablePskStream(transport, PSK)
    with pytest.raises(ValueError):
        await stream.receive_some(0)
    with pytest.raises(TypeError):
        await stream.receive_some(2.0)  # type: ignore[arg-type]


async def test_protect_on_a_closed_transport() -> None:
    _, transport = trio.testing.memory_stream_pair()
    await transport.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await protect(transport, PSK)
