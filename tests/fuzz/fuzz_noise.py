"""Fuzz Noise (physarum.overlay.noise): the handshake messages, the libp2p handshake payload inside
them, and the transport messages after them.

Input: byte 0 picks what runs, byte 1 and 2 are options, the rest is the body:

* 0: ``verify_payload(body)``: a handshake payload as the peer would send it.
* 1, 2: the responder's (1) or the initiator's (2) ``handshake`` over a peer sending ``body`` raw.
* 3, 4: an honest handshake (both sides ours) whose message 3 (3) or 2 (4) carries ``body`` as the
  sender's payload, properly encrypted, so the fuzzer reaches the payload checks through the real
  messages (the sender's static key is :data:`STATIC`); with byte 1 odd, the body's first 32 bytes
  are sent as its static key instead (any X25519 value, low-order ones included).
* 5, 6: a ``NoiseStream`` reading transport messages: the body is a list of one-byte-length-prefixed
  plaintexts that the peer encrypts (5) with the right key (byte 1 odd: the last is tampered with),
  or (6) the raw wire. Byte 2 is each read's ``max_bytes`` (0: None). What was encrypted must be
  read back exactly, and tampering must end in trio.BrokenResourceError.

Everything ends in a value or in HandshakeError (a ProtocolError), DecodeError or
trio.BrokenResourceError.

    mkdir -p /tmp/noise && python tests/fuzz/fuzz_noise.py /tmp/noise tests/fuzz/corpus/noise -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris
import nacl.bindings as sodium
import trio

with atheris.instrument_imports(include=["physarum"]):
    from physarum.errors import HandshakeError, PhysarumError
    from physarum.overlay import noise
    from physarum.overlay.identity import KeyPair, PeerId
    from physarum.overlay.streamio import BufferedStream

INITIATOR = KeyPair(bytes(31) + b"\x01")
RESPONDER = KeyPair(bytes(31) + b"\x02")
#: The Noise static key of the side whose payload the input is (modes 3 and 4): fixed, so a payload
#: in the corpus can carry a valid signature over it.
STATIC_PRIVATE = bytes(range(1, 33))
STATIC = sodium.crypto_scalarmult_base(STATIC_PRIVATE)
TRANSPORT_KEYS = (bytes(32), bytes(31) + b"\x01")
ALLOWED = (trio.BrokenResourceError, PhysarumError)


def _payload_message(hs: noise.HandshakeState, payload: bytes, static: bytes | None) -> bytes:
    """Message 2 (responder) or 3 (initiator) of ``hs``, carrying ``payload`` as it is."""
    assert hs.re is not None
    s_pub = hs.s_pub if static is None else static
    head = b""
    if not hs.initiator:
        hs._mix_hash(hs.e_pub)
        hs._mix_key(noise._dh(hs.e_priv, hs.re))
        head = hs.e_pub
    enc_s = hs._encrypt_and_hash(s_pub)
    hs._mix_key(noise._dh(hs.s_priv, hs.re))
    hs.step += 1
    return head + enc_s + hs._encrypt_and_hash(payload)


def _handshake_payload(to_responder: bool, payload: bytes, static: bytes | None) -> None:
    init = noise.HandshakeState(True, INITIATOR)
    resp = noise.HandshakeState(False, RESPONDER)
    sender = init if to_responder else resp
    sender.s_priv, sender.s_pub = STATIC_PRIVATE, STATIC
    resp.read_message(init.write_message())
    if to_responder:
        init.read_message(resp.write_message())
        message, reader = _payload_message(init, payload, static), resp
    else:
        message, reader = _payload_message(resp, payload, static), init
    try:
        reader.read_message(message)
    except HandshakeError:
        return
    assert isinstance(reader.remote_peer, PeerId) and reader.rs is not None
    assert static is None or reader.rs == static


async def _handshake_raw(feed: _common.FeedStream, initiator: bool) -> None:
    key_pair = INITIATOR if initiator else RESPONDER
    stream = await noise.handshake(BufferedStream(feed), key_pair, initiator=initiator)
    assert isinstance(stream.remote_peer, PeerId)


async def _read_dry(feed: _common.FeedStream, max_bytes: int | None) -> bytes:
    send, recv = noise.CipherState(TRANSPORT_KEYS[0]), noise.CipherState(TRANSPORT_KEYS[1])
    stream = noise.NoiseStream(feed, send, recv, INITIATOR.peer_id)
    got = bytearray()
    while data := await stream.receive_some(max_bytes):
        got += data
    return bytes(got)


def _messages(body: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(body):
        n = body[pos]
        out.append(body[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return out


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    mode, opt, opt2, body = data[0] % 7, data[1], data[2], data[3:]
    try:
        if mode == 0:
            try:
                assert isinstance(noise.verify_payload(body, STATIC), PeerId)
            except HandshakeError:
                pass
        elif mode in (1, 2):
            feed = _common.FeedStream(_common.split(body, opt))
            _common.run_trio(lambda: _handshake_raw(feed, mode == 2))
        elif mode in (3, 4):
            static = None
            if opt % 2:
                static, body = body[:32].ljust(32, b"\x00"), body[32:]
            _handshake_payload(mode == 3, body, static)
        else:
            if mode == 5:
                plain = _messages(body)
                cipher = noise.CipherState(TRANSPORT_KEYS[1])
                frames = [noise.frame(cipher.encrypt(None, p)) for p in plain]
                tampered = bool(opt % 2 and frames)
                if tampered:
                    frames[-1] = frames[-1][:-1] + bytes([frames[-1][-1] ^ 1])
                wire = b"".join(frames)
            else:
                wire = body
            feed = _common.FeedStream(_common.split(wire, opt2 % 17))
            try:
                got = _common.run_trio(lambda: _read_dry(feed, opt2 or None))
            except trio.BrokenResourceError:
                assert mode == 6 or tampered
            else:
                assert mode == 6 or (not tampered and got == b"".join(plain)), (got, plain)
    except BaseException as e:
        if not _common.only(e, ALLOWED):
            raise


if __name__ == "__main__":
    _common.main(test_one_input, max_len=2048)
