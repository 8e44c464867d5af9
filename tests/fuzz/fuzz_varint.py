"""Fuzz the uvarint codec (physarum.overlay.varint): every length prefix a peer sends goes through it.

Input: any bytes. Read varints one after another; each must re-encode to exactly the bytes it came
from (the decoder refuses non-minimal forms), and a length-prefixed split must agree with them.

    mkdir -p /tmp/varint && python tests/fuzz/fuzz_varint.py /tmp/varint tests/fuzz/corpus/varint -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports(include=["physarum"]):
    from physarum.errors import DecodeError, IncompleteError
    from physarum.overlay import varint

MAX_SIZE = 1024


def test_one_input(data: bytes) -> None:
    pos = 0
    while pos < len(data):
        try:
            value, end = varint.decode(data, pos)
        except (IncompleteError, DecodeError):
            break
        assert pos < end <= pos + varint.MAX_VARINT_BYTES
        assert varint.encode(value) == data[pos:end], (value, data[pos:end])
        pos = end
    try:
        body, end = varint.split_length_prefixed(data, MAX_SIZE)
    except (IncompleteError, DecodeError):
        return
    length, start = varint.decode(data)
    assert len(body) == length <= MAX_SIZE and end == start + length and data[start:end] == body


if __name__ == "__main__":
    _common.main(test_one_input, max_len=64)
