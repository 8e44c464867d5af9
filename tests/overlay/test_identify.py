"""identify: the codec, and trimming what a peer announces to :class:`IdentifyLimits`."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from physarum.overlay import envelope, identify, pb, varint
from physarum.overlay.identify import DEFAULT_LIMITS, IdentifyInfo, IdentifyLimits
from physarum.overlay.identity import KeyPair, PublicKey
from physarum.overlay.multiaddr import Multiaddr


def _addr(i: int) -> Multiaddr:
    return Multiaddr(f"/ip4/10.0.{i // 256 % 256}.{i % 256}/tcp/{4000 + i // 65536}")


def _dns_addr(name_len: int, tcp_components: int = 1, fill: str = "a") -> Multiaddr:
    name = fill.encode() * name_len
    return Multiaddr(bytes([0x36]) + varint.encode(name_len) + name + bytes([6, 0x0F, 0xA1]) * tcp_components)


def test_roundtrip() -> None:
    key = KeyPair.generate().public_key
    info = IdentifyInfo(
        public_key=key,
        listen_addrs=[_addr(1), _addr(2)],
        protocols=["/ipfs/ping/1.0.0", "/ipfs/id/1.0.0"],
        observed_addr=_addr(3),
        protocol_version="ipfs/0.1.0",
        agent_version="physarum/test",
        signed_peer_record=b"record",
    )
    assert identify.decode(identify.encode(info)) == info
    body = identify.encode(info)
    assert identify.decode_message(varint.encode(len(body)) + body) == info


def test_an_honest_message_is_kept_whole() -> None:
    info = IdentifyInfo(
        public_key=KeyPair.generate().public_key,
        listen_addrs=[_addr(i) for i in range(5)],
        protocols=["/ipfs/ping/1.0.0", "/ipfs/id/1.0.0", "/ipfs/kad/1.0.0", "/ipfs/id/push/1.0.0"],
        observed_addr=_addr(9),
        protocol_version="ipfs/0.1.0",
        agent_version="kubo/0.30.0/",
        signed_peer_record=b"r" * 500,
    )
    trimmed = identify.trim(info)
    assert trimmed == info
    assert trimmed is not info and trimmed.protocols is not info.protocols  # a copy


def test_trim_caps_every_field_and_keeps_the_peers_order() -> None:
    limits = DEFAULT_LIMITS
    protocols = [f"/p/{i}" for i in range(500)]
    protocols[3] = "/long/" + "x" * 300  # dropped, not cut
    protocols[5] = ""  # empty: dropped
    protocols[7] = protocols[6]  # duplicate: kept once
    protocols[8] = "/é" * 128  # 257 bytes of UTF-8 in 256 characters: dropped
    addrs = [_addr(i) for i in range(100)]
    addrs[1] = addrs[0]
    addrs[2] = _dns_addr(300)  # too long
    addrs[4] = _dns_addr(10, tcp_components=20)  # too many components
    info = IdentifyInfo(
        public_key=PublicKey(0, b"k" * 5000),
        listen_addrs=addrs,
        protocols=protocols,
        observed_addr=_dns_addr(300),
        protocol_version="v" * 1000,
        agent_version="a" * 1000,
        signed_peer_record=b"s" * 10_000,
    )
    t = identify.trim(info)
    expected_protocols = [p for i, p in enumerate(protocols) if i not in (3, 5, 7, 8)][: limits.max_protocols]
    assert t.protocols == expected_protocols
    expected_addrs = [a for i, a in enumerate(addrs) if i not in (1, 2, 4)][: limits.max_listen_addrs]
    assert t.listen_addrs == expected_addrs
    assert t.protocol_version == "v" * limits.max_version_length
    assert t.agent_version == "a" * limits.max_version_length
    assert t.public_key is None and t.observed_addr is None and t.signed_peer_record is None
    # The input is untouched.
    assert len(info.protocols) == 500 and info.agent_version == "a" * 1000


def test_trim_follows_other_limits() -> None:
    limits = IdentifyLimits(max_protocols=2, max_listen_addrs=1, max_version_length=3, max_protocol_length=4)
    info = IdentifyInfo(
        listen_addrs=[_addr(1), _addr(2)], protocols=["/abcd", "/a", "/b", "/c"], agent_version="agent"
    )
    t = identify.trim(info, limits)
    assert t.protocols == ["/a", "/b"]
    assert t.listen_addrs == [_addr(1)]
    assert t.agent_version == "age"


def _worst_message() -> bytes:
    """A maximal identify message: as many distinct short protocols as fit."""
    fields: list[tuple[int, int | bytes | str | None]] = []
    size = 0
    i = 0
    while size < identify.MAX_MESSAGE - 16:
        p = f"/{i}"
        fields.append((3, p))
        size += 2 + len(p)
        i += 1
    return pb.encode(fields)


def test_a_maximal_message_trims_to_the_bounds() -> None:
    body = _worst_message()
    assert len(body) <= identify.MAX_MESSAGE
    info = identify.decode(body, limits=None)
    assert len(info.protocols) > 9_000
    t = identify.trim(info)
    assert len(t.protocols) == DEFAULT_LIMITS.max_protocols
    assert identify.retained_size(t) < identify.retained_size(info) // 50
    # What a peer sends is cut while it is parsed: the same result, without 9,000 strings.
    assert identify.decode(body) == t


def test_decode_parses_no_more_than_twice_the_limits() -> None:
    limits = IdentifyLimits(max_protocols=2, max_listen_addrs=2)
    # Duplicates and bad entries within twice the limit still leave room for good ones...
    fields: list[tuple[int, int | bytes | str | None]] = [(3, "/a"), (3, "/a"), (3, "/b"), (3, "/c")]
    fields += [(2, _addr(1).to_bytes()), (2, b"\xff"), (2, _addr(2).to_bytes())]
    info = identify.decode(pb.encode(fields), limits)
    assert info.protocols == ["/a", "/b"]
    assert info.listen_addrs == [_addr(1), _addr(2)]
    # ...but past it nothing is parsed, even when everything before was a duplicate.
    fields = [(3, "/a")] * 4 + [(3, "/b")]
    assert identify.decode(pb.encode(fields), limits).protocols == ["/a"]


def test_the_retained_size_of_a_worst_case_message_is_bounded() -> None:
    limits = DEFAULT_LIMITS
    worst = IdentifyInfo(
        public_key=PublicKey(0, b"k" * limits.max_public_key_length),
        listen_addrs=[_dns_addr(190 + i % 10, tcp_components=15) for i in range(40)],
        protocols=[f"/{i:04d}".ljust(limits.max_protocol_length, "p") for i in range(200)],
        observed_addr=_dns_addr(190, tcp_components=15),
        protocol_version="\U0001f600" * 300,
        agent_version="\U0001f600" * 300,
        signed_peer_record=b"s" * limits.max_signed_record,
    )
    t = identify.trim(worst)
    assert len(t.listen_addrs) == 10  # ten distinct addresses among the forty
    assert len(t.protocols) == limits.max_protocols
    # The figure IdentifyLimits documents (128 KiB estimated at the most; 32 distinct addresses).
    fills = "abcdefghijklmnopqrstuvwxyz012345"
    t32 = dataclasses.replace(t, listen_addrs=[_dns_addr(208, 15, fill) for fill in fills])
    assert all(identify.addr_allowed(a) for a in t32.listen_addrs)
    assert 90_000 < identify.retained_size(t32) < 140_000


@given(st.lists(st.text(max_size=300), max_size=300), st.lists(st.integers(0, 1000), max_size=100))
def test_trim_never_exceeds_its_limits(protocols: list[str], addr_ids: list[int]) -> None:
    limits = IdentifyLimits(max_protocols=16, max_listen_addrs=8, max_protocol_length=64)
    addrs = [_addr(i) for i in addr_ids]
    info = IdentifyInfo(listen_addrs=addrs, protocols=protocols, agent_version="x" * 300)
    t = identify.trim(info, limits)
    assert len(t.protocols) <= 16 and len(set(t.protocols)) == len(t.protocols)
    assert all(0 < len(p.encode("utf-8", "replace")) <= 64 for p in t.protocols)
    assert len(t.listen_addrs) <= 8 and len(set(t.listen_addrs)) == len(t.listen_addrs)
    assert t.agent_version is not None and len(t.agent_version) == limits.max_version_length
    # Nothing allowed is skipped: the kept ones are the first allowed, in order.
    allowed = list(dict.fromkeys(p for p in protocols if identify.protocol_allowed(p, limits)))
    assert t.protocols == allowed[:16]


def test_unreadable_records_are_dropped_quietly_and_foreign_ones_loudly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="physarum.overlay.identify")
    me, other = KeyPair(bytes(32)), KeyPair(bytes([1]) * 32)
    # rust-libp2p's identify carries its legacy routing-state record: another payload type.
    legacy = envelope.seal(me, envelope.PEER_RECORD_DOMAIN, b"/libp2p/routing-state-record", b"x")
    info = identify.check_against(IdentifyInfo(signed_peer_record=legacy), me.peer_id)
    assert info.signed_peer_record is None
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    caplog.clear()
    # Someone else's valid record, relayed: news.
    foreign = envelope.seal_peer_record(other, 1, [Multiaddr("/ip4/1.2.3.4/tcp/1")])
    info = identify.check_against(IdentifyInfo(signed_peer_record=foreign), me.peer_id)
    assert info.signed_peer_record is None
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    caplog.clear()
    # Our own record passes, silently.
    own = envelope.seal_peer_record(me, 1, [Multiaddr("/ip4/1.2.3.4/tcp/1")])
    assert identify.check_against(IdentifyInfo(signed_peer_record=own), me.peer_id).signed_peer_record == own
    assert caplog.records == []
