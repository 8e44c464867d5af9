"""Fuzz signed envelopes and peer records (physarum.overlay.envelope): identify carries them from
any peer, and every signed record in the DHT is one.

Input: byte 0 picks the form (even: the rest is an envelope as received; odd: the rest is a
peer record payload that our fixed key seals, so the fuzzer reaches the payload checks past the
signature). ``open_envelope`` and ``open_peer_record`` return or raise EnvelopeError, and only that;
a record that opens names its signer and survives a re-seal unchanged.

    mkdir -p /tmp/envelope && python tests/fuzz/fuzz_envelope.py /tmp/envelope tests/fuzz/corpus/envelope -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports(include=["physarum"]):
    from physarum.overlay import envelope
    from physarum.overlay.identity import KeyPair

SIGNER = KeyPair(bytes(31) + b"\x09")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2:
        raw = envelope.seal(SIGNER, envelope.PEER_RECORD_DOMAIN, envelope.PEER_RECORD_TYPE, data[1:])
    else:
        raw = data[1:]
        for payload_type in (None, envelope.PEER_RECORD_TYPE):
            try:
                env = envelope.open_envelope(raw, envelope.PEER_RECORD_DOMAIN, payload_type)
            except envelope.EnvelopeError:
                continue
            assert env.public_key.verify(
                envelope.signing_bytes(envelope.PEER_RECORD_DOMAIN, env.payload_type, env.payload),
                env.signature,
            )
    try:
        record = envelope.open_peer_record(raw)
    except envelope.EnvelopeError:
        return
    if data[0] % 2:
        assert record.peer_id == SIGNER.peer_id
        again = envelope.open_peer_record(envelope.seal_peer_record(SIGNER, record.seq, record.addrs))
        assert again == record


if __name__ == "__main__":
    _common.main(test_one_input, max_len=4096)
