"""Node identities: Ed25519 key pairs, libp2p's key protobufs, peer ids and identity key files.

A peer id is the multihash of the protobuf-encoded public key: the identity multihash when that
encoding is at most 42 bytes (Ed25519, giving ``12D3KooW...``), SHA-256 otherwise (RSA ``Qm...``).
physarum signs only with Ed25519. It checks the signatures of every libp2p key type, so peers with
RSA (go-libp2p's default before 0.20, and PhysarumSM's nodes without a key file), ECDSA or
Secp256k1 identities connect too: those checks use the ``cryptography`` package, imported when
the first such key is seen.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from pathlib import Path

import base58
import nacl.exceptions
import nacl.signing

from physarum.errors import DecodeError, PhysarumError
from physarum.overlay import pb, varint

KEY_RSA = 0
KEY_ED25519 = 1
KEY_SECP256K1 = 2
KEY_ECDSA = 3
_KEY_NAMES = {KEY_RSA: "RSA", KEY_ED25519: "Ed25519", KEY_SECP256K1: "Secp256k1", KEY_ECDSA: "ECDSA"}

_MH_IDENTITY = 0x00
_MH_SHA256 = 0x12
_CODEC_LIBP2P_KEY = 0x72
_MAX_INLINE_KEY = 42


class IdentityKeyError(PhysarumError, ValueError):
    """A key or identity key file that cannot be used; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PublicKey:
    """A libp2p public key: its type and raw bytes. Only Ed25519 keys can verify here."""

    __slots__ = ("data", "key_type")

    def __init__(self, key_type: int, data: bytes) -> None:
        self.key_type = key_type
        self.data = bytes(data)

    def to_protobuf(self) -> bytes:
        """libp2p's deterministic ``PublicKey{Type=1, Data=2}`` encoding."""
        return pb.encode([(1, self.key_type), (2, self.data)])

    @classmethod
    def from_protobuf(cls, data: bytes) -> PublicKey:
        """Parse ``PublicKey{Type, Data}``.

        Raises:
            DecodeError: malformed protobuf, missing fields, or a wrong-length Ed25519 key.
        """
        fields = pb.decode(data)
        key_type = pb.get_int(fields, 1)
        raw = pb.get_bytes(fields, 2)
        if key_type is None or raw is None:
            raise DecodeError("public key protobuf lacks Type or Data")
        if key_type == KEY_ED25519 and len(raw) != 32:
            raise DecodeError(f"Ed25519 public key of {len(raw)} bytes, want 32")
        return cls(key_type, raw)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``message`` (libp2p's schemes: Ed25519;
        RSA PKCS#1 v1.5, ECDSA and Secp256k1 over SHA-256, the latter two DER-encoded).

        Raises:
            IdentityKeyError: an unknown key type, or key bytes that are not a key of their type
                (an RSA key under 2,048 or over 16,384 bits among them).
        """
        if self.key_type == KEY_ED25519:
            try:
                nacl.signing.VerifyKey(self.data).verify(message, signature)
            except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
                return False
            return True
        return _verify_other(self.key_type, self.data, message, signature)

    def peer_id(self) -> PeerId:
        return PeerId.from_public_key(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and (self.key_type, self.data) == (other.key_type, other.data)

    def __hash__(self) -> int:
        return hash((self.key_type, self.data))

    def __repr__(self) -> str:
        return f"PublicKey({_KEY_NAMES.get(self.key_type, self.key_type)}, {self.data.hex()})"


#: RSA keys outside these sizes are refused (go-libp2p refuses under 2,048 bits, and a huge key
#: costs a peer nothing to send and us much to check).
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 16384


def _verify_other(key_type: int, data: bytes, message: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    name = _KEY_NAMES.get(key_type)
    if name is None:
        raise IdentityKeyError(f"unknown key type {key_type}")
    try:
        if key_type == KEY_SECP256K1:
            key: object = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise IdentityKeyError(f"not a {name} public key: {e}") from None
    if key_type == KEY_RSA:
        if not isinstance(key, rsa.RSAPublicKey):
            raise IdentityKeyError("an RSA key type holding another kind of key")
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise IdentityKeyError(f"an RSA key of {key.key_size} bits (physarum takes {RSA_MIN_BITS}-{RSA_MAX_BITS})")
    elif not isinstance(key, ec.EllipticCurvePublicKey):
        raise IdentityKeyError(f"a {name} key type holding another kind of key")
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):  # ValueError: a signature that is not DER
        return False
    return True


class PeerId(bytes):
    """A peer id: its multihash bytes, shown as base58btc text.

    A ``bytes`` subclass, so hashing and comparing run at C speed: peer ids key every table in a
    node (connections, peer store, routing table, lookups). It equals its own multihash bytes.
    """

    __slots__ = ()

    def __new__(cls, multihash: bytes) -> PeerId:
        """Raises: DecodeError: not a well-formed multihash."""
        _check_multihash(multihash)
        return super().__new__(cls, multihash)

    @classmethod
    def from_public_key(cls, key: PublicKey) -> PeerId:
        encoded = key.to_protobuf()
        if len(encoded) <= _MAX_INLINE_KEY:
            return cls(bytes((_MH_IDENTITY, len(encoded))) + encoded)
        return cls(bytes((_MH_SHA256, 32)) + hashlib.sha256(encoded).digest())

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse base58btc (``12D3KooW...``, ``Qm...``, ``16Uiu2...``) or a CIDv1 ``b...`` peer id.

        Raises:
            DecodeError: not a peer id, with the reason.
        """
        text = text.strip()
        if not text:
            raise DecodeError("empty peer id")
        if text[0] == "b" and len(text) > 50 and text.islower():
            return cls._from_cid(text)
        try:
            raw = base58.b58decode(text)
        except ValueError as e:
            raise DecodeError(f"peer id {text!r} is not base58btc: {e}") from None
        return cls(raw)

    @classmethod
    def _from_cid(cls, text: str) -> PeerId:
        body = text[1:].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError as e:
            raise DecodeError(f"peer id {text!r} is not a base32 CID: {e}") from None
        try:
            version, pos = varint.decode(raw)
            codec, pos = varint.decode(raw, pos)
        except PhysarumError as e:
            raise DecodeError(f"peer id {text!r}: bad CID prefix") from e
        if version != 1 or codec != _CODEC_LIBP2P_KEY:
            raise DecodeError(f"peer id {text!r}: CID is not a libp2p-key CIDv1")
        return cls(raw[pos:])

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerId:
        """Parse a binary peer id (a multihash), as carried in protobufs.

        Raises:
            DecodeError: not a well-formed multihash.
        """
        return cls(data)

    @property
    def multihash(self) -> bytes:
        return bytes(self)

    def to_bytes(self) -> bytes:
        return bytes(self)

    def public_key(self) -> PublicKey | None:
        """The public key inlined in an identity-multihash id, else None."""
        if self[0] != _MH_IDENTITY:
            return None
        return PublicKey.from_protobuf(bytes(self[2:]))

    def matches(self, key: PublicKey) -> bool:
        return PeerId.from_public_key(key) == self

    def __str__(self) -> str:
        return _base58(bytes(self))

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return f"PeerId({self!s})"


@functools.lru_cache(maxsize=256)
def _base58(raw: bytes) -> str:
    # The pure-Python base58 encoder costs ~20 us; ids are printed and logged again and again.
    # Small: every identity of a crowd passes through here (an error message names its peer), and
    # each entry left behind pins the heap pages it sits on, ~12 KiB of RSS apiece once the crowd
    # left (measured: 900 entries kept 11-13 MiB); 256 cover the peers a node talks to at once.
    return base58.b58encode(raw).decode()


def clear_text_cache() -> None:
    """Empty the cache of peer ids' text forms (after a crowd left: see :mod:`physarum.monitor.reclaim`)."""
    _base58.cache_clear()


def _check_multihash(data: bytes) -> None:
    try:
        code, pos = varint.decode(data)
        length, pos = varint.decode(data, pos)
    except PhysarumError as e:
        raise DecodeError("peer id is not a multihash") from e
    if len(data) - pos != length:
        raise DecodeError(f"peer id multihash says {length} bytes of digest but has {len(data) - pos}")
    if code == _MH_IDENTITY:
        if length > _MAX_INLINE_KEY:
            raise DecodeError("identity-multihash peer id too long")
    elif code == _MH_SHA256:
        if length != 32:
            raise DecodeError("sha2-256 peer id with a digest that is not 32 bytes")
    else:
        raise DecodeError(f"peer id uses unsupported multihash code {code:#x}")


class KeyPair:
    """An Ed25519 identity: signs, and names its peer id."""

    __slots__ = ("_signing", "peer_id", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise IdentityKeyError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        self._signing = nacl.signing.SigningKey(seed)
        self.public_key = PublicKey(KEY_ED25519, bytes(self._signing.verify_key))
        self.peer_id = PeerId.from_public_key(self.public_key)

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(os.urandom(32))

    @property
    def seed(self) -> bytes:
        return bytes(self._signing)

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message).signature

    def private_key_protobuf(self) -> bytes:
        """``PrivateKey{Type=Ed25519, Data=seed||public}``: what go-libp2p's MarshalPrivateKey writes."""
        return pb.encode([(1, KEY_ED25519), (2, self.seed + self.public_key.data)])

    @classmethod
    def from_private_key_protobuf(cls, data: bytes) -> KeyPair:
        """Parse a marshalled libp2p private key (Ed25519 only).

        Raises:
            IdentityKeyError: not an Ed25519 private key, or its halves disagree.
        """
        try:
            fields = pb.decode(data)
            key_type = pb.get_int(fields, 1)
            raw = pb.get_bytes(fields, 2)
        except DecodeError as e:
            raise IdentityKeyError(f"not a libp2p private key: {e.reason}") from e
        if key_type is None or raw is None:
            raise IdentityKeyError("private key protobuf lacks Type or Data")
        if key_type != KEY_ED25519:
            name = _KEY_NAMES.get(key_type, key_type)
            raise IdentityKeyError(f"private key type {name} is not supported; physarum uses Ed25519")
        if len(raw) not in (32, 64):
            raise IdentityKeyError(f"Ed25519 private key of {len(raw)} bytes, want 64 (or a 32-byte seed)")
        pair = cls(raw[:32])
        if len(raw) == 64 and raw[32:] != pair.public_key.data:
            raise IdentityKeyError("Ed25519 private key's public half does not match its seed")
        return pair


def save_key_pair(path: str | os.PathLike[str], pair: KeyPair) -> None:
    """Write ``pair`` as a marshalled libp2p private key, readable by its owner only (0600).

    Raises:
        OSError: the file cannot be written.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # O_CREAT's mode only applies to a new file: a stale temp file keeps its old mode.
        os.fchmod(fd, 0o600)
        os.write(fd, pair.private_key_protobuf())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_key_pair(path: str | os.PathLike[str]) -> KeyPair:
    """Read an identity key file written by :func:`save_key_pair` (or go-libp2p).

    Raises:
        IdentityKeyError: unreadable, or not an Ed25519 libp2p private key; the message names the path.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise IdentityKeyError(f"cannot read key file {path}: {e.strerror or e}") from e
    try:
        return KeyPair.from_private_key_protobuf(data)
    except IdentityKeyError as e:
        raise IdentityKeyError(f"key file {path}: {e.reason}") from e


def load_or_create_key_pair(path: str | os.PathLike[str]) -> KeyPair:
    """Load the identity at ``path``, creating it (0600) when the file does not exist.

    Raises:
        IdentityKeyError: the file exists but is not a usable key.
        OSError: the new file cannot be written.
    """
    if not Path(path).exists():
        pair = KeyPair.generate()
        save_key_pair(path, pair)
        return pair
    return load_key_pair(path)
