"""Fuzz identify (physarum.overlay.identify): what a peer says about itself on ``/ipfs/id/1.0.0``
and ``/ipfs/id/push/1.0.0``, as ``Host._read_identify`` and ``_store_identify`` take it.

Input: byte 0 picks the form (even: the rest is the message as read from the stream; odd: the rest
is the payload of a signed peer record that our fixed key seals, put in an identify message with
that key, so the fuzzer reaches the record checks past the signature). A message either decodes or
raises DecodeError; a decoded one re-encodes to the same information; ``check_against`` keeps only
what the connection's peer could have said; ``trim`` keeps what it retains within its limits.

    mkdir -p /tmp/identify && python tests/fuzz/fuzz_identify.py /tmp/identify tests/fuzz/corpus/identify -max_total_time=60
"""

from __future__ import annotations

import _common
import atheris

with atheris.instrument_imports(include=["physarum"]):
    from physarum.errors import DecodeError
    from physarum.overlay import envelope, identify
    from physarum.overlay.identity import KeyPair

PEER = KeyPair(bytes(31) + b"\x07")
OTHER = KeyPair(bytes(31) + b"\x08")
#: What identify's docs promise one trimmed message keeps at most ("about 110 KiB").
MAX_RETAINED = 128 * 1024


def _same(a: identify.IdentifyInfo, b: identify.IdentifyInfo) -> bool:
    return (a.public_key, a.listen_addrs, a.protocols, a.observed_addr, a.signed_peer_record) == (
        b.public_key,
        b.listen_addrs,
        b.protocols,
        b.observed_addr,
        b.signed_peer_record,
    ) and (a.protocol_version or "", a.agent_version or "") == (
        b.protocol_version or "",
        b.agent_version or "",
    )


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2:
        record = envelope.seal(PEER, envelope.PEER_RECORD_DOMAIN, envelope.PEER_RECORD_TYPE, data[1:])
        message = identify.encode(
            identify.IdentifyInfo(public_key=PEER.public_key, signed_peer_record=record)
        )
    else:
        message = data[1:]
    try:
        info = identify.decode_message(message)
    except DecodeError:
        return
    assert _same(identify.decode(identify.encode(info)), info)
    for peer in (PEER, OTHER):
        try:
            checked = identify.check_against(identify.decode_message(message), peer.peer_id)
        except DecodeError:
            assert info.public_key is not None and info.public_key != peer.public_key
            continue
        if checked.signed_peer_record is not None:
            assert envelope.open_peer_record(checked.signed_peer_record).peer_id == peer.peer_id
        kept = identify.trim(checked)
        assert identify.retained_size(kept) <= MAX_RETAINED, identify.retained_size(kept)
        observed = identify.ObservedAddrs(max_addrs=2)
        for addr in checked.listen_addrs[:4]:
            observed.record(peer.peer_id, addr)
        assert len(observed) <= 2


if __name__ == "__main__":
    _common.main(test_one_input, max_len=8192)
