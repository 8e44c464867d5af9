"""XSalsa20 against published vectors and against libsodium (through PyNaCl)."""

from __future__ import annotations

import hashlib
import itertools

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.psk import XSalsa20, hsalsa20

# Vectors from "Cryptography in NaCl" (Bernstein), section 8, also NaCl's and libsodium's tests
# core1/core2 (HSalsa20), stream/stream3/stream4 (XSalsa20).
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
FIRSTKEY = bytes.fromhex("1b27556473e985d462cd51197a9a46c76009549eac6474f206c4ee0844f68389")
NONCE = bytes.fromhex("69696ee955b62b73cd62bda875fc73d68219e0036b7a0b37")
SECONDKEY = bytes.fromhex("dc908dda0b9344a953629b733820778880f3ceb421bb61b91cbd4c3e66256ce4")
STREAM3 = bytes.fromhex("eea6a7251c1e72916d11c2cb214d3c252539121d8e234e652d651fa4c8cff880")
STREAM_4MIB_SHA256 = "662b9d0e3463029156069b12f918691a98f7dfb2ca0393c96bbfc6b1fbd630a2"
STREAM4_M = bytes.fromhex(
    "be075fc53c81f2d5cf141316ebeb0c7b5228c52a4c62cbd44b66849b64244ffc"
    "e5ecbaaf33bd751a1ac728d45e6c61296cdc3c01233561f41db66cce314adb31"
    "0e3be8250c46f06dceea3a7fa1348057e2f6556ad6b1318a024a838f21af1fde"
    "048977eb48f59ffd4924ca1c60902e52f0a089bc76897040e082f93776384864"
    "5e0705"
)
STREAM4_C = bytes.fromhex(
    "8e993b9f48681273c29650ba32fc76ce48332ea7164d96a4476fb8c531a1186a"
    "c0dfc17c98dce87b4da7f011ec48c97271d2c20f9b928fe2270d6fb863d51738"
    "b48eeee314a7cc8ab932164548e526ae90224368517acfeabd6bb3732bc0e9da"
    "99832b61ca01b6de56244a9e88d5f9b37973f622a43d14a6599b1f654cb45a74"
    "e355a5"
)

keys = st.binary(min_size=32, max_size=32)
nonces = st.binary(min_size=24, max_size=24)


def libsodium_keystream_from_32(key: bytes, nonce: bytes, length: int) -> bytes:
    """XSalsa20 keystream bytes [32, 32 + length) as libsodium computes them.

    crypto_secretbox is XSalsa20-Poly1305: the first 32 keystream bytes become the Poly1305 key and the
    message is XORed with the keystream from byte 32 on. Its output is the 16-byte tag, then that XOR;
    encrypting zeros leaves the bare keystream.
    """
    boxed = nacl.bindings.crypto_secretbox(bytes(length), nonce, key)
    assert len(boxed) == 16 + length
    return boxed[16:]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def test_hsalsa20_nacl_vectors() -> None:
    assert hsalsa20(SHARED, bytes(16)) == FIRSTKEY
    assert hsalsa20(FIRSTKEY, NONCE[:16]) == SECONDKEY


def test_first_keystream_bytes() -> None:
    assert XSalsa20(FIRSTKEY, NONCE).process(bytes(32)) == STREAM3


def test_four_mebibytes_of_keystream() -> None:
    assert hashlib.sha256(XSalsa20(FIRSTKEY, NONCE).process(bytes(4194304))).hexdigest() == STREAM_4MIB_SHA256


def test_stream4_vector_after_the_first_32_bytes() -> None:
    cipher = XSalsa20(FIRSTKEY, NONCE)
    cipher.process(bytes(32))
    assert cipher.process(STREAM4_M) == STREAM4_C


def test_vectors_agree_with_libsodium() -> None:
    # Ties the two proofs together: the same key and nonce through PyNaCl give the stream4 ciphertext.
    keystream = libsodium_keystream_from_32(FIRSTKEY, NONCE, len(STREAM4_M))
    assert bytes(a ^ b for a, b in zip(keystream, STREAM4_M, strict=True)) == STREAM4_C


@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000, 4096, 65536 + 7])
def test_matches_libsodium_at_many_lengths(length: int) -> None:
    key = hashlib.sha256(b"key %d" % length).digest()
    nonce = hashlib.sha256(b"nonce %d" % length).digest()[:24]
    cipher = XSalsa20(key, nonce)
    cipher.process(bytes(32))
    assert cipher.process(bytes(length)) == libsodium_keystream_from_32(key, nonce, length)


@settings(max_examples=300)
@given(keys, nonces, st.integers(0, 3000), st.lists(st.integers(0, 3000), max_size=12))
def test_any_chunking_matches_libsodium(key: bytes, nonce: bytes, length: int, cuts: list[int]) -> None:
    expected = libsodium_keystream_from_32(key, nonce, length)
    cipher = XSalsa20(key, nonce)
    # The 32-byte prefix goes in chunks too, so state is carried across the 32-byte mark as well.
    got = b"".join(cipher.process(chunk) for chunk in split(bytes(32 + length), cuts))
    assert got[32:] == expected


@given(keys, nonces, st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=10))
def test_process_is_an_involution_and_split_invariant(
    key: bytes, nonce: bytes, data: bytes, cuts: list[int]
) -> None:
    whole = XSalsa20(key, nonce).process(data)
    cipher = XSalsa20(key, nonce)
    assert b"".join(cipher.process(chunk) for chunk in split(data, cuts)) == whole
    assert XSalsa20(key, nonce).process(whole) == data


def test_accepts_any_bytes_like() -> None:
    expected = XSalsa20(FIRSTKEY, NONCE).process(b"abcdef")
    assert XSalsa20(FIRSTKEY, NONCE).process(bytearray(b"abcdef")) == expected
    assert XSalsa20(FIRSTKEY, NONCE).process(memoryview(b"xxabcdef")[2:]) == expected


def test_empty_input_does_not_advance() -> None:
    cipher = XSalsa20(FIRSTKEY, NONCE)
    assert cipher.process(b"") == b""
    assert cipher.process(bytes(32)) == STREAM3


def test_nonce_prefix_and_suffix_both_matter() -> None:
    base = XSalsa20(FIRSTKEY, NONCE).process(bytes(64))
    for i in (0, 15, 16, 23):
        changed = bytearray(NONCE)
        changed[i] ^= 1
        assert XSalsa20(FIRSTKEY, bytes(changed)).process(bytes(64)) != base


@pytest.mark.parametrize(
    ("key", "nonce"), [(bytes(31), NONCE), (bytes(33), NONCE), (FIRSTKEY, bytes(8)), (FIRSTKEY, bytes(25))]
)
def test_rejects_bad_sizes(key: bytes, nonce: bytes) -> None:
    with pytest.raises(ValueError):
        XSalsa20(key, nonce)


def test_hsalsa20_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        hsalsa20(bytes(16), bytes(16))
    with pytest.raises(ValueError):
        hsalsa20(bytes(32), bytes(24))


@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=24, max_size=24),
    sizes=st.lists(st.sampled_from([0, 1, 31, 32, 33, 1023, 1024, 1025, 4095, 4096, 4097, 9000]), max_size=12),
)
def test_mixed_small_and_large_calls_match_one_call(key: bytes, nonce: bytes, sizes: list[int]) -> None:
    """Small calls use keystream generated ahead, large ones the cipher: any mix must line up."""
    data = bytes(range(256)) * (sum(sizes) // 256 + 1)
    data = data[: sum(sizes)]
    split = XSalsa20(key, nonce)
    out = b""
    pos = 0
    for n in sizes:
        out += split.process(data[pos : pos + n])
        pos += n
    assert out == XSalsa20(key, nonce).process(data)
