"""Fuzz the protobuf codec (physarum.overlay.pb) and the binary identity types every protobuf
carries (``PublicKey``, ``PeerId``): identify, kad, envelopes and Noise payloads all start here.

Input: any bytes, decoded as a message; what decodes must re-encode to a message that decodes to
the same fields, and every typed getter raises only DecodeError.

    mkdir -p /tmp/pb && python tests/fuzz/fuzz_pb.py /tmp/pb tests/fuzz/corpus/pb -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports(include=["physarum"]):
    from physarum.errors import DecodeError
    from physarum.overlay import pb
    from physarum.overlay.identity import PeerId, PublicKey


def test_one_input(data: bytes) -> None:
    try:
        fields = pb.decode(data)
    except DecodeError:
        fields = None
    if fields is not None:
        again = pb.encode([(n, v) for n, values in fields.items() for v in values])
        assert pb.decode(again) == fields
        for number in range(1, 4):
            for getter in (pb.get_bytes, pb.get_int, pb.get_repeated_bytes):
                try:
                    getter(fields, number)
                except DecodeError:
                    pass
    try:
        key = PublicKey.from_protobuf(data)
    except DecodeError:
        pass
    else:
        assert PublicKey.from_protobuf(key.to_protobuf()) == key
        peer = key.peer_id()
        assert peer.matches(key)
        assert PeerId.from_string(str(peer)) == peer
    try:
        peer = PeerId.from_bytes(data)
    except DecodeError:
        return
    assert PeerId.from_string(str(peer)) == peer
    try:
        peer.public_key()
    except DecodeError:
        pass


if __name__ == "__main__":
    _common.main(test_one_input, max_len=1024)
