"""Fuzz the Kademlia wire messages (physarum.dht.messages) and the DHT's stream handler that
answers them (``KadDHT.server.handle_stream``, which runs every request through ``KadDHT.rpc``).

Input: byte 0 holds flags (bit 0: the stream has no known sender), byte 1 how the bytes are cut
into reads (see ``_common.split``); the rest is what a peer writes on a ``/ipfs/kad/1.0.0`` stream.
Each length-prefixed message in it must decode or raise DecodeError, and decode again to the same
message once re-encoded; the handler, on a node with a few peers in its table, answers, resets the
stream or lets it go, raises nothing, and gives back every byte it reserved in the stream's budget.

    mkdir -p /tmp/kad && python tests/fuzz/fuzz_kad.py /tmp/kad tests/fuzz/corpus/kad -max_total_time=60
"""

from __future__ import annotations

from types import SimpleNamespace

import _common
import atheris
import trio

with atheris.instrument_imports(include=["physarum"]):
    from physarum.dht import messages
    from physarum.dht.addrs import parse_multiaddr_text
    from physarum.dht.service import KadDHT
    from physarum.errors import DecodeError, IncompleteError
    from physarum.overlay.identity import KeyPair, PeerId
    from physarum.overlay.resources import MemoryBudget

NODE = KeyPair(bytes(31) + b"\x0a")
SENDER = KeyPair(bytes(31) + b"\x0b").peer_id
PEERS = [PeerId(b"\x12\x20" + bytes([i]) * 32) for i in range(1, 9)]
PEER_ADDRS = [parse_multiaddr_text(f"/ip4/10.0.0.{i}/tcp/4001") for i in range(1, 9)]
WALL_CLOCK = 1_800_000_000.0
MEMORY_LIMIT = 2048


class KadStream(_common.FeedStream):
    """What the handler needs of a yamux stream: its peer, ``reset()``, and its session's memory
    budget (small, so inputs reach it; every byte reserved must come back)."""

    def __init__(self, chunks: list[bytes], peer_id: PeerId | None) -> None:
        super().__init__(chunks)
        self.peer_id = peer_id
        self.was_reset = False
        self.session = SimpleNamespace(memory=MemoryBudget(MEMORY_LIMIT))

    def reset(self) -> None:
        self.was_reset = True
        self.closed = True


class NoTransport:
    async def request(self, peer: PeerId, addrs: object, message: object) -> messages.Message:
        raise AssertionError("answering a request never asks another peer")


async def _serve(stream: KadStream) -> None:
    dht = KadDHT(NODE, NoTransport(), wall_clock=lambda: WALL_CLOCK)
    for peer, addr in zip(PEERS, PEER_ADDRS, strict=True):
        dht.add_peer(peer, [addr])
    await dht.server.handle_stream(stream)


def _decode_all(wire: bytes) -> None:
    pos = 0
    while pos < len(wire):
        try:
            body, pos = messages.unframe(wire, pos)
            msg = messages.decode_message(body)
        except (IncompleteError, DecodeError):
            return
        again = messages.decode_framed(messages.encode_framed(msg))
        assert again == msg, (again, msg)


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, pattern, wire = data[0], data[1], data[2:]
    _decode_all(wire)
    stream = KadStream(_common.split(wire, pattern), None if flags & 1 else SENDER)
    try:
        _common.run_trio(lambda: _serve(stream))
    except BaseException as e:
        if not _common.only(e, (trio.ClosedResourceError,)) or not stream.was_reset:
            raise
    assert stream.session.memory.used == 0, f"{stream.session.memory.used} bytes still reserved"
    sent, pos = bytes(stream.sent), 0
    while pos < len(sent):  # every answer is a whole message that decodes
        reply, pos = messages.unframe(sent, pos)
        messages.decode_message(reply)


if __name__ == "__main__":
    _common.main(test_one_input, max_len=8192)
