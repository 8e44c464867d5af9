"""Identities: peer id encodings and known vectors, key protobufs, key files, signatures."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import base58
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.errors import DecodeError, PhysarumError
from physarum.overlay import identity, pb
from physarum.overlay.identity import (
    KEY_ECDSA,
    KEY_ED25519,
    KEY_RSA,
    KEY_SECP256K1,
    IdentityKeyError,
    KeyPair,
    PeerId,
    PublicKey,
    load_key_pair,
    load_or_create_key_pair,
    save_key_pair,
)

ZERO_SEED_PEER_ID = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
# Ed25519 public key of the all-zero seed (a widely published value).
ZERO_SEED_PUBKEY = bytes.fromhex("3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
RSA_PEER_ID = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
# The compressed secp256k1 generator point: a real, valid secp256k1 public key.
SECP256K1_G = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")

# RFC 8032 section 7.1, TEST 1 (empty message) and TEST 2 (one byte 0x72).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
    "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
RFC8032_SEED2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
RFC8032_PUB2 = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
RFC8032_SIG_72 = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)

SEEDS = st.binary(min_size=32, max_size=32)


def _cid_text(multihash: bytes) -> str:
    """CIDv1 libp2p-key in multibase base32 ('b'), built independently of physarum."""
    raw = bytes((0x01, 0x72)) + multihash  # varint(1), varint(0x72): both single bytes
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


# ---- known vectors ----


def test_zero_seed_peer_id() -> None:
    pair = KeyPair(bytes(32))
    assert pair.public_key.data == ZERO_SEED_PUBKEY
    assert str(pair.peer_id) == ZERO_SEED_PEER_ID
    # Independently: identity multihash (00, length 0x24) of PublicKey{Type=1, Data=pubkey}.
    expected = bytes.fromhex("002408011220") + ZERO_SEED_PUBKEY
    assert pair.peer_id.to_bytes() == expected
    assert base58.b58encode(expected).decode() == ZERO_SEED_PEER_ID
    assert PeerId.from_string(ZERO_SEED_PEER_ID) == pair.peer_id
    assert PeerId.from_string(ZERO_SEED_PEER_ID).public_key() == pair.public_key


@given(SEEDS)
@settings(max_examples=50)
def test_ed25519_peer_id_layout(seed: bytes) -> None:
    pair = KeyPair(seed)
    assert pair.peer_id.to_bytes() == b"\x00\x24\x08\x01\x12\x20" + pair.public_key.data
    assert str(pair.peer_id).startswith("12D3KooW")
    assert pair.peer_id.public_key() == pair.public_key
    assert pair.peer_id.matches(pair.public_key)
    assert pair.public_key.peer_id() == pair.peer_id


def test_rsa_peer_id() -> None:
    pid = PeerId.from_string(RSA_PEER_ID)
    raw = pid.to_bytes()
    assert raw[:2] == b"\x12\x20"  # sha2-256, 32 bytes
    assert len(raw) == 34
    assert raw == base58.b58decode(RSA_PEER_ID)
    assert str(pid) == RSA_PEER_ID
    assert pid.public_key() is None  # hashed: the key is not inside
    assert PeerId.from_bytes(raw) == pid


def test_rsa_sized_key_is_hashed() -> None:
    # A key whose protobuf exceeds 42 bytes gets a sha2-256 multihash of that protobuf.
    key = PublicKey(KEY_RSA, b"\x30" * 270)
    pid = key.peer_id()
    assert pid.to_bytes() == b"\x12\x20" + hashlib.sha256(b"\x08\x00\x12\x8e\x02" + b"\x30" * 270).digest()
    assert str(pid).startswith("Qm")
    assert pid.matches(key)
    assert not pid.matches(PublicKey(KEY_RSA, b"\x31" * 270))


def test_secp256k1_peer_id() -> None:
    # Built by hand: identity multihash of PublicKey{Type=2, Data=33-byte compressed key}.
    protobuf = b"\x08\x02\x12\x21" + SECP256K1_G
    multihash = b"\x00" + bytes((len(protobuf),)) + protobuf
    text = base58.b58encode(multihash).decode()
    assert text.startswith("16Uiu2HAm")
    pid = PeerId.from_string(text)
    assert pid.to_bytes() == multihash
    assert str(pid) == text
    key = pid.public_key()
    assert key == PublicKey(KEY_SECP256K1, SECP256K1_G)
    assert key is not None and key.peer_id() == pid
    # G is the public key of private key 1: a signature by it checks out, garbage does not.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    signature = ec.derive_private_key(1, ec.SECP256K1()).sign(b"msg", ec.ECDSA(hashes.SHA256()))
    assert key.verify(b"msg", signature)
    assert not key.verify(b"other", signature)
    assert not key.verify(b"msg", b"\x00" * 64)


def test_rsa_and_ecdsa_signatures_are_checked() -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    rsa_key = rsa.generate_private_key(65537, 2048)
    public = PublicKey(KEY_RSA, rsa_key.public_key().public_bytes(der, spki))
    assert str(public.peer_id()).startswith("Qm")  # over 42 bytes: a SHA-256 multihash
    assert public.verify(b"m", rsa_key.sign(b"m", padding.PKCS1v15(), hashes.SHA256()))
    assert not public.verify(b"n", rsa_key.sign(b"m", padding.PKCS1v15(), hashes.SHA256()))
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(IdentityKeyError, match="1024 bits"):
        PublicKey(KEY_RSA, small.public_key().public_bytes(der, spki)).verify(b"m", b"x")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    public = PublicKey(KEY_ECDSA, ec_key.public_key().public_bytes(der, spki))
    assert public.verify(b"m", ec_key.sign(b"m", ec.ECDSA(hashes.SHA256())))
    assert not public.verify(b"m", b"not der")
    # A key type holding another kind of key, garbage key bytes, an unknown type: clear errors.
    with pytest.raises(IdentityKeyError, match="another kind of key"):
        PublicKey(KEY_RSA, ec_key.public_key().public_bytes(der, spki)).verify(b"m", b"x")
    with pytest.raises(IdentityKeyError, match="not a ECDSA public key"):
        PublicKey(KEY_ECDSA, b"garbage").verify(b"m", b"x")
    with pytest.raises(IdentityKeyError, match="unknown key type"):
        PublicKey(9, b"x").verify(b"m", b"x")


def test_cid_forms() -> None:
    pair = KeyPair(bytes(32))
    text = _cid_text(pair.peer_id.to_bytes())
    assert text.startswith("bafzaa")
    assert PeerId.from_string(text) == pair.peer_id
    assert PeerId.from_string(f"  {text}\n") == pair.peer_id
    rsa = PeerId.from_string(RSA_PEER_ID)
    rsa_cid = _cid_text(rsa.to_bytes())
    assert rsa_cid.startswith("bafzbei")
    assert PeerId.from_string(rsa_cid) == rsa


def test_cid_cross_check_with_py_cid() -> None:
    import cid  # py-cid, a reference implementation
    pair = KeyPair(bytes(32))
    text = _cid_text(pair.peer_id.to_bytes())
    parsed = cid.make_cid(text)
    assert parsed.version == 1
    assert parsed.codec == "libp2p-key"
    assert bytes(parsed.multihash) == pair.peer_id.to_bytes()


@given(SEEDS)
@settings(max_examples=50)
def test_text_roundtrip(seed: bytes) -> None:
    pid = KeyPair(seed).peer_id
    assert PeerId.from_string(str(pid)) == pid
    assert PeerId.from_bytes(pid.to_bytes()) == pid
    assert PeerId.from_string(_cid_text(pid.to_bytes())) == pid
    assert repr(pid) == f"PeerId({pid})"
    assert hash(PeerId.from_string(str(pid))) == hash(pid)


@given(st.binary(min_size=32, max_size=32))
def test_sha256_peer_ids_roundtrip(digest: bytes) -> None:
    pid = PeerId(b"\x12\x20" + digest)
    assert PeerId.from_string(str(pid)) == pid
    assert PeerId.from_string(_cid_text(pid.to_bytes())) == pid


def test_equality_and_ordering() -> None:
    a, b = KeyPair(bytes(32)).peer_id, KeyPair(b"\x01" * 32).peer_id
    assert a != b
    assert a == PeerId(a.to_bytes())
    assert a == a.to_bytes()  # a PeerId is a bytes subclass: its multihash (see PeerId docstring)
    assert sorted([b, a]) == sorted([a, b])
    assert (a < b) == (a.to_bytes() < b.to_bytes())
    assert len({a, PeerId(a.to_bytes()), b}) == 2


# ---- garbage ----


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "0OIl",  # characters outside base58btc
        "12D3KooW",  # too short: truncated multihash
        ZERO_SEED_PEER_ID[:-1],  # truncated by one character
        ZERO_SEED_PEER_ID + "1",  # one extra (leading-zero-like) byte
        RSA_PEER_ID[:-2],
        "Qm" + "1" * 44,
        "héllo",
        "/ip4/127.0.0.1/tcp/4001",
        "bafzaa",  # CID prefix only
        "b" + "a" * 60,  # base32 of zeros: CIDv0-ish garbage, not a CIDv1 libp2p-key
        _cid_text(b"\x12\x20" + bytes(32)).replace("bafz", "bafy"),  # wrong codec
        "b" + base64.b32encode(b"\x01\x55\x12\x20" + bytes(32)).decode().lower().rstrip("="),  # raw codec
        "b" + base64.b32encode(b"\x02\x72\x12\x20" + bytes(32)).decode().lower().rstrip("="),  # CIDv2
        "b" + "1" * 60,  # not base32 at all
        "b" + "a" * 57,  # base32 of an impossible length
        base58.b58encode(b"\x11\x14" + bytes(20)).decode(),  # sha1 multihash: unsupported
        base58.b58encode(b"\x12\x10" + bytes(16)).decode(),  # sha2-256 with a 16-byte digest
        base58.b58encode(b"\x00\x2b" + bytes(43)).decode(),  # identity multihash over 42 bytes
        base58.b58encode(b"\x00\x80\x00").decode(),  # non-minimal varint length
    ],
)
def test_garbage_strings(text: str) -> None:
    with pytest.raises(DecodeError):
        PeerId.from_string(text)


@given(st.text(max_size=80))
def test_fuzz_from_string(text: str) -> None:
    try:
        pid = PeerId.from_string(text)
    except DecodeError:
        return
    assert PeerId.from_string(str(pid)) == pid


@given(st.binary(max_size=60))
def test_fuzz_from_bytes(data: bytes) -> None:
    try:
        pid = PeerId.from_bytes(data)
    except DecodeError:
        return
    assert pid.to_bytes() == data
    try:
        pid.public_key()
    except DecodeError:
        pass


def test_bad_multihash_bytes() -> None:
    for data in (b"", b"\x00", b"\x12", b"\x12\x20" + bytes(31), b"\x12\x20" + bytes(33), b"\x00\x05abc"):
        with pytest.raises(DecodeError):
            PeerId.from_bytes(data)


def test_identity_id_with_bad_key_inside() -> None:
    # Well-formed identity multihash whose content is an Ed25519 key of the wrong length.
    inner = pb.encode([(1, KEY_ED25519), (2, b"\x01" * 31)])
    pid = PeerId(b"\x00" + bytes((len(inner),)) + inner)
    with pytest.raises(DecodeError):
        pid.public_key()


# ---- public keys ----


def test_public_key_protobuf() -> None:
    key = KeyPair(bytes(32)).public_key
    encoded = key.to_protobuf()
    assert encoded == b"\x08\x01\x12\x20" + ZERO_SEED_PUBKEY
    assert PublicKey.from_protobuf(encoded) == key
    assert repr(key) == f"PublicKey(Ed25519, {ZERO_SEED_PUBKEY.hex()})"
    assert hash(PublicKey.from_protobuf(encoded)) == hash(key)
    assert key != PublicKey(KEY_SECP256K1, key.data)
    assert key != key.data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08\x01",  # no Data
        b"\x12\x20" + bytes(32),  # no Type
        b"\x08\x01\x12\x1f" + bytes(31),  # Ed25519 key of 31 bytes
        b"\x08\x01\x12\x21" + bytes(33),
        b"\x08\x01\x12\x20" + bytes(31),  # truncated
        b"\x0a\x01\x01\x12\x20" + bytes(32),  # Type as bytes
        b"\x08\x01\x10\x05",  # Data as varint
    ],
)
def test_public_key_from_bad_protobuf(data: bytes) -> None:
    with pytest.raises(DecodeError):
        PublicKey.from_protobuf(data)


def test_other_key_types_parse_but_do_not_verify() -> None:
    for key_type in (KEY_RSA, KEY_SECP256K1, KEY_ECDSA, 9):
        key = PublicKey.from_protobuf(pb.encode([(1, key_type), (2, b"\x04" * 65)]))
        assert key.key_type == key_type
        with pytest.raises(IdentityKeyError) as info:
            key.verify(b"message", b"\x00" * 64)
        assert isinstance(info.value, PhysarumError)
        assert info.value.reason


# ---- signatures ----


def test_rfc8032_vectors() -> None:
    pair = KeyPair(RFC8032_SEED)
    assert pair.public_key.data == RFC8032_PUB
    assert pair.sign(b"") == RFC8032_SIG_EMPTY
    assert pair.public_key.verify(b"", RFC8032_SIG_EMPTY)
    pair2 = KeyPair(RFC8032_SEED2)
    assert pair2.public_key.data == RFC8032_PUB2
    assert pair2.sign(b"\x72") == RFC8032_SIG_72
    assert PublicKey(KEY_ED25519, RFC8032_PUB2).verify(b"\x72", RFC8032_SIG_72)


@given(SEEDS, st.binary(max_size=200))
@settings(max_examples=50)
def test_sign_verify(seed: bytes, message: bytes) -> None:
    pair = KeyPair(seed)
    sig = pair.sign(message)
    assert len(sig) == 64
    assert pair.public_key.verify(message, sig)
    assert not pair.public_key.verify(message + b"x", sig)
    other = KeyPair(hashlib.sha256(seed).digest())
    assert not other.public_key.verify(message, sig)


@given(SEEDS, st.integers(0, 63), st.integers(1, 255))
@settings(max_examples=50)
def test_tampered_signature_fails(seed: bytes, index: int, flip: int) -> None:
    pair = KeyPair(seed)
    sig = bytearray(pair.sign(b"noise-libp2p-static-key:" + bytes(32)))
    sig[index] ^= flip
    assert not pair.public_key.verify(b"noise-libp2p-static-key:" + bytes(32), bytes(sig))


def test_malformed_signatures_are_false_not_errors() -> None:
    pair = KeyPair(bytes(32))
    sig = pair.sign(b"m")
    for bad in (b"", sig[:63], sig + b"\x00", b"\xff" * 64):
        assert pair.public_key.verify(b"m", bad) is False
    # A malformed Ed25519 key (wrong length, built directly) cannot verify anything either.
    assert PublicKey(KEY_ED25519, b"\x01" * 31).verify(b"m", sig) is False


def test_keypair_seed_and_generate() -> None:
    pair = KeyPair(RFC8032_SEED)
    assert pair.seed == RFC8032_SEED
    a, b = KeyPair.generate(), KeyPair.generate()
    assert a.peer_id != b.peer_id
    for seed in (b"", bytes(31), bytes(33), bytes(64)):
        with pytest.raises(IdentityKeyError):
            KeyPair(seed)


# ---- private key protobufs and key files ----


def test_private_key_protobuf_layout() -> None:
    pair = KeyPair(RFC8032_SEED)
    encoded = pair.private_key_protobuf()
    # PrivateKey{Type=1, Data=seed||public}, as go-libp2p marshals Ed25519 keys.
    assert encoded == b"\x08\x01\x12\x40" + RFC8032_SEED + RFC8032_PUB
    assert KeyPair.from_private_key_protobuf(encoded).seed == RFC8032_SEED
    # A bare 32-byte seed is accepted too.
    assert KeyPair.from_private_key_protobuf(b"\x08\x01\x12\x20" + RFC8032_SEED).seed == RFC8032_SEED


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xff",
        b"\x08\x01",  # no Data
        b"\x12\x40" + RFC8032_SEED + RFC8032_PUB,  # no Type
        b"\x08\x00\x12\x40" + RFC8032_SEED + RFC8032_PUB,  # RSA
        b"\x08\x02\x12\x20" + RFC8032_SEED,  # secp256k1
        b"\x08\x01\x12\x30" + bytes(48),  # wrong length
        b"\x08\x01\x12\x40" + RFC8032_SEED + RFC8032_PUB2,  # halves disagree
        (b"\x08\x01\x12\x40" + RFC8032_SEED + RFC8032_PUB)[:-1],  # truncated
        b"\x0a\x01\x01\x12\x20" + RFC8032_SEED,  # Type as bytes
    ],
)
def test_bad_private_key_protobufs(data: bytes) -> None:
    with pytest.raises(IdentityKeyError) as info:
        KeyPair.from_private_key_protobuf(data)
    assert info.value.reason


def test_private_key_error_reasons() -> None:
    # A missing field is reported as missing, not as an unsupported key type.
    for data in (b"\x08\x01", b"\x12\x20" + RFC8032_SEED):
        with pytest.raises(IdentityKeyError) as info:
            KeyPair.from_private_key_protobuf(data)
        assert "not supported" not in info.value.reason
    with pytest.raises(IdentityKeyError) as info:
        KeyPair.from_private_key_protobuf(b"\x08\x02\x12\x20" + RFC8032_SEED)
    assert "Secp256k1" in info.value.reason


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_save_load_roundtrip(tmp_path: Path) -> None:
    pair = KeyPair.generate()
    path = tmp_path / "key"
    save_key_pair(path, pair)
    assert _mode(path) == 0o600
    assert path.read_bytes() == pair.private_key_protobuf()
    loaded = load_key_pair(path)
    assert loaded.peer_id == pair.peer_id
    assert loaded.seed == pair.seed
    assert load_key_pair(str(path)).peer_id == pair.peer_id
    assert not (tmp_path / "key.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_save_replaces_and_tightens_permissions(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    pair = KeyPair.generate()
    save_key_pair(path, pair)
    assert _mode(path) == 0o600
    assert load_key_pair(path).peer_id == pair.peer_id


def test_save_is_0600_even_over_a_stale_temp_file(tmp_path: Path) -> None:
    # A crash between creating the temp file and renaming it can leave key.tmp behind, and it
    # may have been created (or chmod-ed) with wider permissions: the key must still end up 0600.
    stale = tmp_path / "key.tmp"
    stale.write_bytes(b"stale")
    stale.chmod(0o644)
    save_key_pair(tmp_path / "key", KeyPair.generate())
    assert _mode(tmp_path / "key") == 0o600


def test_save_ignores_umask_that_allows_more(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_key_pair(tmp_path / "key", KeyPair.generate())
    finally:
        os.umask(old)
    assert _mode(tmp_path / "key") == 0o600


@pytest.mark.parametrize(
    "content",
    [
        b"",  # empty
        b"\x08\x01\x12\x40" + bytes(10),  # truncated
        b"not a key at all\n",  # corrupt
        b"\x08\x00\x12\x40" + bytes(64),  # wrong type (RSA)
        b"\x08\x01\x12\x40" + RFC8032_SEED + RFC8032_PUB2,  # mismatched halves
        b"/key/swarm/psk/1.0.0/\n/base16/\n" + b"ab" * 32,  # a PSK file given by mistake
    ],
)
def test_load_bad_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    with pytest.raises(IdentityKeyError) as info:
        load_key_pair(path)
    assert str(path) in str(info.value)
    assert str(path) in info.value.reason
    assert isinstance(info.value, PhysarumError)


@given(st.integers(0, 67))
@settings(max_examples=68)
def test_load_every_truncation_of_a_key_file(cut: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "key"
        good = KeyPair(RFC8032_SEED).private_key_protobuf()
        assert len(good) == 68
        path.write_bytes(good[:cut])
        with pytest.raises(IdentityKeyError) as info:
            load_key_pair(path)
        assert str(path) in str(info.value)


def test_load_missing_key_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "key"
    with pytest.raises(IdentityKeyError) as info:
        load_key_pair(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_load_directory_as_key_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityKeyError) as info:
        load_key_pair(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "key"
    created = load_or_create_key_pair(path)
    assert _mode(path) == 0o600
    assert load_or_create_key_pair(path).peer_id == created.peer_id
    path.write_bytes(b"garbage")
    with pytest.raises(IdentityKeyError) as info:
        load_or_create_key_pair(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == b"garbage"  # never overwrites an existing file


def test_identity_key_error_is_a_value_error() -> None:
    err = IdentityKeyError("why")
    assert isinstance(err, ValueError)
    assert isinstance(err, PhysarumError)
    assert err.reason == "why"
    assert identity.IdentityKeyError is IdentityKeyError
