"""Fuzz contact records and record sets (physarum.dht.records): what PUT_VALUE stores and GET_VALUE
hands back, from any peer.

Input: byte 0 picks what runs, the rest is the body:

* 0: ``verify_record(body)`` and ``RecordStore.put(body)``: an envelope as received.
* 1: the body is a ``ContactRecord`` payload that our fixed key seals, so the fuzzer reaches the
  payload checks past the signature. A record that verifies must be stored, re-signed and verified
  again to the same record.
* 2: ``decode_record_set(body)``, each envelope in it verified.
* 3: ``record_id_from_key(body)``.

``verify_record`` raises RecordError subclasses only; ``RecordStore.put`` never raises;
``decode_record_set`` and ``record_id_from_key`` raise DecodeError only.

    mkdir -p /tmp/records && python tests/fuzz/fuzz_records.py /tmp/records tests/fuzz/corpus/records -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports(include=["physarum"]):
    from physarum.dht import records
    from physarum.errors import DecodeError
    from physarum.overlay.identity import KeyPair

PUBLISHER = KeyPair(bytes(31) + b"\x0c")
#: Wall-clock time of every check; the corpus's records expire an hour after it.
NOW = 1_800_000_000.0


def _verify(envelope: bytes) -> records.ContactRecord | None:
    try:
        record = records.verify_record(envelope, NOW)
    except records.RecordError:
        result = records.RecordStore().put(envelope, NOW)
        assert isinstance(result, records.RecordRejected)
        return None
    stored = records.RecordStore().put(envelope, NOW)
    assert isinstance(stored, records.Stored), stored
    return record


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    if mode == 0:
        _verify(body)
    elif mode == 1:
        envelope = records.seal_envelope(PUBLISHER, records.DOMAIN, records.PAYLOAD_TYPE, body)
        record = _verify(envelope)
        if record is None or len(envelope) > records.MAX_ENVELOPE_SIZE:
            return
        assert record.publisher == PUBLISHER.peer_id
        again = records.verify_record(records.sign_record(PUBLISHER, record), NOW)
        assert again == record and again.data == record.data, (again, record)
    elif mode == 2:
        try:
            envelopes = records.decode_record_set(body)
        except DecodeError:
            return
        for envelope in envelopes:
            _verify(envelope)
    else:
        try:
            record_id = records.record_id_from_key(body)
        except DecodeError:
            return
        assert records.record_key(record_id) == body


if __name__ == "__main__":
    _common.main(test_one_input, max_len=16384)
