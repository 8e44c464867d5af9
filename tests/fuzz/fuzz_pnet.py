"""Fuzz the pnet connection protector (physarum.psk.protector) and what reads through it first: a
listener's multistream-select and Noise responder, as ``Host._upgrade`` runs them.

Input: byte 0 holds flags (bit 0: the rest is plaintext that the fuzzer's peer encrypts with our
key, after a nonce taken from the input, so the fuzzer reaches multistream and Noise; else it is
the raw wire, nonce included; bit 1: read the stream dry instead of running the upgrade), byte 1
how the wire is cut into reads, byte 2 the ``max_bytes`` of each read (0: None); the rest is the
input. A plaintext input read dry must come back exactly; the upgrade ends in a handshake or one of
DecodeError, ProtocolError (negotiation, handshake) or trio.BrokenResourceError.

    mkdir -p /tmp/pnet && python tests/fuzz/fuzz_pnet.py /tmp/pnet tests/fuzz/corpus/pnet -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris
import trio

with atheris.instrument_imports(include=["physarum"]):
    from physarum.errors import PhysarumError
    from physarum.overlay import multistream, noise
    from physarum.overlay.identity import KeyPair
    from physarum.overlay.streamio import BufferedStream
    from physarum.psk.protector import NONCE_SIZE, protect
    from physarum.psk.xsalsa20 import XSalsa20

PSK = bytes(range(32))
KEY_PAIR = KeyPair(bytes(32))
ALLOWED = (trio.BrokenResourceError, PhysarumError)


async def _read_dry(feed: _common.FeedStream, max_bytes: int | None) -> bytes:
    stream = await protect(feed, PSK)
    got = bytearray()
    while data := await stream.receive_some(max_bytes):
        got += data
    return bytes(got)


async def _upgrade(feed: _common.FeedStream) -> None:
    stream = await protect(feed, PSK)
    buf = BufferedStream(stream)
    await multistream.handle(buf, noise.PROTOCOL_ID.__eq__, lambda: [noise.PROTOCOL_ID])
    await noise.handshake(buf, KEY_PAIR, initiator=False)


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    flags, pattern, max_bytes, body = data[0], data[1], data[2] or None, data[3:]
    plaintext: bytes | None = None
    if flags & 1 and len(body) >= NONCE_SIZE:
        nonce, plaintext = body[:NONCE_SIZE], body[NONCE_SIZE:]
        wire = nonce + XSalsa20(PSK, nonce).process(plaintext)
    else:
        wire = body
    feed = _common.FeedStream(_common.split(wire, pattern))
    try:
        if flags & 2:
            got = _common.run_trio(lambda: _read_dry(feed, max_bytes))
            assert plaintext is None or got == plaintext
        else:
            _common.run_trio(lambda: _upgrade(feed))
    except BaseException as e:
        if not _common.only(e, ALLOWED):
            raise
    assert feed.sent[:NONCE_SIZE] and len(feed.sent) >= NONCE_SIZE


if __name__ == "__main__":
    _common.main(test_one_input, max_len=2048)
