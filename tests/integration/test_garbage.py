"""A peer that sends garbage, at any layer, loses its own connection and nothing else."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from physarum.overlay import multistream, noise, pb, yamux
from physarum.overlay.host import Connection, Host, open_host
from physarum.overlay.identity import KEY_ED25519, KEY_RSA, KeyPair, PublicKey
from physarum.overlay.resources import ResourceLimits
from physarum.overlay.streamio import BufferedStream
from physarum.overlay.yamux import YamuxStream
from physarum.psk import generate_psk, protect
from tests.integration._util import (
    ECHO,
    HandlerLog,
    Recorder,
    connect_pair,
    echo_round_trip,
    ping_on,
    port_of,
    read_until_closed,
    wait_until,
)

HEADER = multistream.encode(multistream.PROTOCOL_ID)
PSKS = {"no-psk": None, "psk": generate_psk()}


class Target:
    """A host under attack, with a well-behaved peer connected to it."""

    def __init__(self, host: Host, friend: Host, friend_conn: Connection, handler: HandlerLog) -> None:
        self.host = host
        self.friend = friend
        self.friend_conn = friend_conn
        self.handler = handler
        self.rec = Recorder(host)
        self.friend_rec = Recorder(friend)

    async def check_unharmed(self) -> None:
        """The host still runs, its friend's connection is the same one and still works, new peers get in."""
        assert not self.friend_conn.is_closed
        assert self.friend.connection(self.host.peer_id) is self.friend_conn
        assert self.friend_rec.disconnected == []
        assert await ping_on(self.friend_conn) > 0
        stream = await self.friend_conn.open_stream([ECHO])
        await echo_round_trip(stream)
        await stream.aclose()
        async with open_host(psk=self.host.psk) as newcomer:
            assert len(await newcomer.ping(self.host.addrs[0])) == 1


@asynccontextmanager
async def target(psk: bytes | None) -> AsyncIterator[Target]:
    # A long handshake timeout: every connection closed below was closed for its garbage.
    async with open_host(psk=psk, limits=ResourceLimits(handshake_timeout=30, first_byte_timeout=30)) as host, open_host(psk=psk) as friend:
        handler = HandlerLog()
        host.set_handler(ECHO, handler)
        friend_conn, _ = await connect_pair(friend, host)
        yield Target(host, friend, friend_conn, handler)


async def _raw_stream(t: Target) -> trio.abc.HalfCloseableStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port_of(t.host))
    return tcp if t.host.psk is None else await protect(tcp, t.host.psk)


RAW_GARBAGE = {
    "random": lambda: os.urandom(4096),
    "zeros": lambda: bytes(4096),
    "bad-varint-after-header": lambda: HEADER + b"\xff" * 12,
    "huge-proposal": lambda: HEADER + b"\xff\xff\x7f" + os.urandom(100),
    "proposal-without-newline": lambda: HEADER + b"\x07/noise!" + os.urandom(100),
    "short-noise-message": lambda: HEADER + multistream.encode(noise.PROTOCOL_ID) + noise.frame(b"short"),
    "http": lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(100),
}


@pytest.mark.parametrize("garbage", list(RAW_GARBAGE.values()), ids=list(RAW_GARBAGE))
@pytest.mark.parametrize("psk", list(PSKS.values()), ids=list(PSKS))
async def test_raw_garbage_closes_that_connection(psk: bytes | None, garbage: Callable[[], bytes]) -> None:
    """Garbage straight after TCP (and after a correct pnet layer when the host has a PSK)."""
    async with target(psk) as t:
        stream = await _raw_stream(t)
        with trio.fail_after(2):
            try:
                await stream.send_all(garbage())
            except trio.BrokenResourceError:
                pass  # the host hung up while we were still writing
            await read_until_closed(stream)
        await stream.aclose()
        assert t.rec.connected == [] and t.handler.calls == []
        await t.check_unharmed()


async def _noise_client(t: Target, payload: Callable[[bytes], bytes]) -> noise.NoiseStream:
    """A hand-rolled dialer: multistream and Noise XX, with a message-3 payload of our choosing."""
    buf = BufferedStream(await _raw_stream(t))
    await multistream.select(buf, [noise.PROTOCOL_ID])
    hs = noise.HandshakeState(True, KeyPair.generate())
    await buf.send_all(noise.frame(hs.write_message()))
    hs.read_message(await noise._read_frame(buf))
    assert hs.re is not None and hs.remote_peer == t.host.peer_id
    # Message 3, as HandshakeState.write_message builds it but with our payload.
    enc_s = hs._encrypt_and_hash(hs.s_pub)
    hs._mix_key(noise._dh(hs.s_priv, hs.re))
    await buf.send_all(noise.frame(enc_s + hs._encrypt_and_hash(payload(hs.s_pub))))
    hs.step += 1
    send, recv = hs.split()
    return noise.NoiseStream(buf, send, recv, hs.remote_peer)


_SIG = b"noise-libp2p-static-key:"
_KP = KeyPair.generate()

#: Message-3 payloads, from (our Noise static key, the host's identity key protobuf).
BAD_PAYLOADS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "empty": lambda s, host_key: b"",
    "not-protobuf": lambda s, host_key: b"\xff\xff\xff\xff",
    "no-signature": lambda s, host_key: pb.encode([(1, _KP.public_key.to_protobuf())]),
    "rsa-key": lambda s, host_key: pb.encode(
        [(1, PublicKey(KEY_RSA, os.urandom(300)).to_protobuf()), (2, os.urandom(256))]
    ),
    "unknown-key-type": lambda s, host_key: pb.encode(
        [(1, PublicKey(77, os.urandom(32)).to_protobuf()), (2, os.urandom(64))]
    ),
    "short-ed25519-key": lambda s, host_key: pb.encode(
        [(1, PublicKey(KEY_ED25519, os.urandom(31)).to_protobuf()), (2, os.urandom(64))]
    ),
    "key-is-varint": lambda s, host_key: pb.encode([(1, 5), (2, os.urandom(64))]),
    "signature-over-another-key": lambda s, host_key: pb.encode(
        [(1, _KP.public_key.to_protobuf()), (2, _KP.sign(_SIG + os.urandom(32)))]
    ),
    "garbage-signature": lambda s, host_key: pb.encode(
        [(1, _KP.public_key.to_protobuf()), (2, os.urandom(64))]
    ),
    "the-hosts-own-key": lambda s, host_key: pb.encode([(1, host_key), (2, os.urandom(64))]),
}


@pytest.mark.parametrize("payload", list(BAD_PAYLOADS.values()), ids=list(BAD_PAYLOADS))
@pytest.mark.parametrize("psk", list(PSKS.values()), ids=list(PSKS))
async def test_bad_noise_identity_closes_that_connection(
    psk: bytes | None, payload: Callable[[bytes, bytes], bytes]
) -> None:
    async with target(psk) as t:
        host_key = t.host.key_pair.public_key.to_protobuf()
        with trio.fail_after(2):
            secure = await _noise_client(t, lambda s: payload(s, host_key))
            # The host hangs up without a word: a good payload would get its multistream header.
            assert await read_until_closed(secure) == b""
        await secure.aclose()
        assert t.rec.connected == [] and t.handler.calls == []
        await t.check_unharmed()


@pytest.mark.parametrize("psk", list(PSKS.values()), ids=list(PSKS))
async def test_hand_rolled_noise_client_with_a_good_payload_gets_through(psk: bytes | None) -> None:
    """The control for the test above: the same client with a valid payload is answered."""
    async with target(psk) as t:
        kp = KeyPair.generate()
        with trio.fail_after(2):
            secure = await _noise_client(t, lambda s: noise.encode_payload(kp, s))
            buf = BufferedStream(secure)
            await multistream.select(buf, [yamux.PROTOCOL_ID])
        await buf.aclose()
        await t.check_unharmed()


STALL = "/physarum-test/stall/1.0.0"


async def stall_handler(stream: YamuxStream) -> None:
    await trio.sleep_forever()


def _syn_for_open_stream(open_id: int) -> bytes:
    return yamux.encode_header(yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_SYN, open_id, 0)


#: Forged frames, from the id of a stream that is open (and stalled) on the connection.
YAMUX_GARBAGE: dict[str, Callable[[int], bytes]] = {
    "bad-version": lambda s: b"\x01" + yamux.encode_header(yamux.TYPE_PING, yamux.FLAG_SYN, 0, 1)[1:],
    "unknown-type": lambda s: struct.pack(">BBHII", 0, 9, 0, 0, 0),
    "data-on-stream-0": lambda s: yamux.encode_header(yamux.TYPE_DATA, 0, 0, 4) + b"abcd",
    "window-update-on-stream-0": lambda s: yamux.encode_header(yamux.TYPE_WINDOW_UPDATE, 0, 0, 100),
    "oversized-data-frame": lambda s: yamux.encode_header(
        yamux.TYPE_DATA, yamux.FLAG_SYN, 1001, yamux.DEFAULT_WINDOW + 1
    ),
    "syn-with-the-listeners-parity": lambda s: yamux.encode_header(
        yamux.TYPE_WINDOW_UPDATE, yamux.FLAG_SYN, 2, 0
    ),
    "syn-for-an-open-stream": _syn_for_open_stream,
    "data-past-the-window": lambda s: b"".join(
        yamux.encode_header(yamux.TYPE_DATA, 0, s, 200_000) + bytes(200_000) for _ in range(6)  # 1.2 MB: past the 1 MiB window
    ),
}


@pytest.mark.parametrize("frame", list(YAMUX_GARBAGE.values()), ids=list(YAMUX_GARBAGE))
@pytest.mark.parametrize("psk", list(PSKS.values()), ids=list(PSKS))
async def test_malformed_yamux_frame_closes_that_connection(
    psk: bytes | None, frame: Callable[[int], bytes]
) -> None:
    async with target(psk) as t, open_host(psk=psk) as mallory:
        rec_m = Recorder(mallory)
        t.host.set_handler(STALL, stall_handler)
        conn_m, conn_h = await connect_pair(mallory, t.host)
        # An open stream, for the frames that need one; its handler never reads, so its window
        # never grows.
        victim = await conn_m.open_stream([STALL])
        assert victim.stream_id in conn_h.session.streams
        session = conn_m.session
        async with session.hold_writes():  # keep our forged frame whole among the session's own writes
            await session.transport.send_all(frame(victim.stream_id))

        await t.rec.wait_disconnected(1, timeout=2)
        assert t.rec.disconnected == [conn_h]
        await rec_m.wait_disconnected(1, timeout=2)
        assert conn_h.is_closed and conn_m.is_closed
        await wait_until(
            lambda: t.host.connection(mallory.peer_id) is None, timeout=2, what="host forgets mallory"
        )
        # The stream mallory had open broke with its connection.
        with pytest.raises(trio.BrokenResourceError):
            await victim.send_all(b"x")
        with pytest.raises(trio.BrokenResourceError):
            await victim.receive_some()
        await t.check_unharmed()


@pytest.mark.parametrize("psk", list(PSKS.values()), ids=list(PSKS))
async def test_forged_noise_ciphertext_closes_that_connection(psk: bytes | None) -> None:
    async with target(psk) as t, open_host(psk=psk) as mallory:
        conn_m, conn_h = await connect_pair(mallory, t.host)
        secure: object = conn_m.session.transport
        while not isinstance(secure, noise.NoiseStream):  # whatever buffering sits above Noise
            secure = secure.transport_stream  # type: ignore[attr-defined]
        async with conn_m.session.hold_writes():
            await secure.transport_stream.send_all(noise.frame(os.urandom(40)))
        await t.rec.wait_disconnected(1, timeout=2)
        assert t.rec.disconnected == [conn_h]
        await t.check_unharmed()


async def test_garbage_from_many_peers_at_once() -> None:
    async with target(generate_psk()) as t:
        async with trio.open_nursery() as nursery:
            pinged: list[float] = []

            async def pinger() -> None:
                for _ in range(50):
                    pinged.append(await ping_on(t.friend_conn))

            async def attacker() -> None:
                stream = await _raw_stream(t)
                try:
                    await stream.send_all(os.urandom(10_000))
                except trio.BrokenResourceError:
                    pass
                await read_until_closed(stream)
                await stream.aclose()

            with trio.fail_after(10):
                nursery.start_soon(pinger)
                for _ in range(30):
                    nursery.start_soon(attacker)
        assert len(pinged) == 50
        assert t.rec.connected == []
        await t.check_unharmed()
