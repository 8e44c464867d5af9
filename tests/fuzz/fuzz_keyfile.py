"""Fuzz the key-file parsers: swarm key files (physarum.psk.keyfile), identity key files
(``KeyPair.from_private_key_protobuf``) and peer ids in text (``PeerId.from_string``, which reads
bootstrap addresses and record ids). Key files are local, but they are copied around, and a node
must refuse a bad one with its one documented error, never a stray exception.

Input: byte 0 picks the parser (0: swarm key, 1: identity key, 2: peer id text), the rest is the
file or the text. What parses must survive a write and a re-read unchanged.

    mkdir -p /tmp/keyfile && python tests/fuzz/fuzz_keyfile.py /tmp/keyfile tests/fuzz/corpus/keyfile -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports(include=["physarum"]):
    from physarum.errors import DecodeError
    from physarum.overlay.identity import IdentityKeyError, KeyPair, PeerId
    from physarum.psk.keyfile import KeyFileError, format_key_file, parse_key_file


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 0:
        try:
            key = parse_key_file(body)
        except KeyFileError:
            return
        assert len(key) == 32
        for encoding in ("base16", "base64", "bin"):
            assert parse_key_file(format_key_file(key, encoding)) == key  # type: ignore[arg-type]
    elif mode == 1:
        try:
            pair = KeyPair.from_private_key_protobuf(body)
        except IdentityKeyError:
            return
        again = KeyPair.from_private_key_protobuf(pair.private_key_protobuf())
        assert again.peer_id == pair.peer_id and again.seed == pair.seed
    else:
        text = body.decode("utf-8", "replace")
        try:
            peer = PeerId.from_string(text)
        except DecodeError:
            return
        assert PeerId.from_string(str(peer)) == peer


if __name__ == "__main__":
    _common.main(test_one_input, max_len=512)
