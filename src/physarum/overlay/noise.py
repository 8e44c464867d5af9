"""Noise ``XX_25519_ChaChaPoly_SHA256`` with libp2p's handshake payload, and the encrypted stream.

Wire: every Noise message carries a 2-byte big-endian length. The responder's payload rides in
message 2 and the initiator's in message 3; each is ``NoiseHandshakePayload{identity_key=1,
identity_sig=2, extensions=4}`` whose signature covers ``"noise-libp2p-static-key:" + static key``.
The handshake state machine is pure (:class:`HandshakeState`); :func:`handshake` drives it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import deque

import nacl.bindings as sodium
import nacl.exceptions
import trio

from physarum.errors import DecodeError, HandshakeError, PeerIdMismatchError, PhysarumError, StateError
from physarum.nowait import DirectSocket, direct_socket
from physarum.overlay import pb
from physarum.overlay.identity import KeyPair, PeerId, PublicKey
from physarum.overlay.streamio import BufferedStream, check_receive

PROTOCOL_ID = "/noise"
_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
_SIG_PREFIX = b"noise-libp2p-static-key:"
MAX_NOISE_MESSAGE = 65535
_TAG = 16
MAX_PLAINTEXT = MAX_NOISE_MESSAGE - _TAG
# What one read of the connection asks for: four whole messages.
_RECEIVE_SIZE = 262144
_NONCE_PREFIX = b"\x00\x00\x00\x00"
_ZERO_DH = bytes(32)
_MAX_NONCE = (1 << 64) - 1

try:
    # PyNaCl's wrappers spend ~4 us a call on argument checks and zeroed buffers; every
    # Noise message pays it twice, so call libsodium through PyNaCl's own cffi module.
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib

    _alloc = _ffi.new_allocator(should_clear_after_alloc=False)
    _NULL = _ffi.NULL

    def _aead_encrypt(message: bytes, aad: bytes | None, nonce: bytes, key: bytes) -> bytes:
        n = len(message) + _TAG
        out = _alloc("unsigned char[]", n)
        _lib.crypto_aead_chacha20poly1305_ietf_encrypt(
            out, _NULL, message, len(message), aad or _NULL, len(aad or b""), _NULL, nonce, key
        )
        return _ffi.buffer(out, n)[:]  # type: ignore[no-any-return]

    def _aead_decrypt(ciphertext: bytes, aad: bytes | None, nonce: bytes, key: bytes) -> bytes:
        n = len(ciphertext) - _TAG
        if n < 0:
            raise nacl.exceptions.CryptoError("ciphertext shorter than its tag")
        out = _alloc("unsigned char[]", max(n, 1))
        rc = _lib.crypto_aead_chacha20poly1305_ietf_decrypt(
            out, _NULL, _NULL, ciphertext, len(ciphertext), aad or _NULL, len(aad or b""), nonce, key
        )
        if rc != 0:
            raise nacl.exceptions.CryptoError("decryption failed")
        return _ffi.buffer(out, n)[:]  # type: ignore[no-any-return]

except ImportError:  # pragma: no cover - a PyNaCl without its cffi module
    _aead_encrypt = sodium.crypto_aead_chacha20poly1305_ietf_encrypt
    _aead_decrypt = sodium.crypto_aead_chacha20poly1305_ietf_decrypt


def _hkdf2(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = hmac.digest(ck, ikm, "sha256")
    out1 = hmac.digest(temp, b"\x01", "sha256")
    out2 = hmac.digest(temp, out1 + b"\x02", "sha256")
    return out1, out2


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        shared = sodium.crypto_scalarmult(private, public)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError, ValueError) as e:
        raise HandshakeError("peer sent an invalid X25519 key") from e
    if shared == _ZERO_DH:
        raise HandshakeError("peer sent a low-order X25519 key")
    return shared


class CipherState:
    """One direction of ChaChaPoly with Noise's 64-bit counter nonce."""

    __slots__ = ("key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key
        self.n = 0

    def _nonce(self) -> bytes:
        if self.n >= _MAX_NONCE:
            raise HandshakeError("Noise nonce exhausted")
        nonce = _NONCE_PREFIX + self.n.to_bytes(8, "little")
        self.n += 1
        return nonce

    def encrypt(self, ad: bytes | None, plaintext: bytes) -> bytes:
        if self.key is None:
            return plaintext
        return _aead_encrypt(plaintext, ad, self._nonce(), self.key)

    def decrypt(self, ad: bytes | None, ciphertext: bytes) -> bytes:
        """Raises: DecodeError when authentication fails."""
        if self.key is None:
            return ciphertext
        nonce = self._nonce()
        try:
            return _aead_decrypt(ciphertext, ad, nonce, self.key)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            self.n -= 1  # Noise section 5.1: a failed decryption does not use up the nonce
            raise DecodeError("Noise message failed authentication") from None


def encode_payload(key_pair: KeyPair, static_public: bytes) -> bytes:
    """The libp2p handshake payload proving ``key_pair`` owns the Noise static key."""
    return pb.encode([(1, key_pair.public_key.to_protobuf()), (2, key_pair.sign(_SIG_PREFIX + static_public))])


def verify_payload(payload: bytes, remote_static: bytes) -> PeerId:
    """Check a peer's handshake payload against its Noise static key; return its peer id.

    Raises:
        HandshakeError: malformed payload, unsupported key type, or a bad signature.
    """
    try:
        fields = pb.decode(payload)
        key_bytes = pb.get_bytes(fields, 1)
        signature = pb.get_bytes(fields, 2)
        if key_bytes is None or signature is None:
            raise HandshakeError("handshake payload lacks identity key or signature")
        key = PublicKey.from_protobuf(key_bytes)
        ok = key.verify(_SIG_PREFIX + remote_static, signature)
    except DecodeError as e:
        raise HandshakeError(f"malformed handshake payload: {e.reason}") from e
    except PhysarumError as e:
        if isinstance(e, HandshakeError):
            raise
        raise HandshakeError(str(e)) from e
    if not ok:
        raise HandshakeError("identity signature over the Noise static key is invalid")
    return key.peer_id()


class HandshakeState:
    """The XX pattern, sans-IO: ``write_message``/``read_message`` in turn; then :meth:`split`."""

    def __init__(self, initiator: bool, key_pair: KeyPair, *, prologue: bytes = b"") -> None:
        self.initiator = initiator
        self.key_pair = key_pair
        self.s_priv = os.urandom(32)
        self.s_pub = sodium.crypto_scalarmult_base(self.s_priv)
        self.e_priv = os.urandom(32)
        self.e_pub = sodium.crypto_scalarmult_base(self.e_priv)
        self.re: bytes | None = None
        self.rs: bytes | None = None
        self.remote_peer: PeerId | None = None
        self.h = _NAME  # exactly HASHLEN bytes, so used as is
        self.ck = self.h
        self.cipher = CipherState()
        self.step = 0
        self._mix_hash(prologue)

    def _mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def _mix_key(self, ikm: bytes) -> None:
        self.ck, temp = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp)

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cipher.encrypt(self.h, plaintext)
        self._mix_hash(ct)
        return ct

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cipher.decrypt(self.h, ciphertext)
        self._mix_hash(ciphertext)
        return pt

    @property
    def finished(self) -> bool:
        return self.step == 3

    def write_message(self) -> bytes:
        """The next message we send (1 and 3 for the initiator, 2 for the responder)."""
        step = self.step
        if step == 0 and self.initiator:
            self._mix_hash(self.e_pub)
            out = self.e_pub + self._encrypt_and_hash(b"")
        elif step == 1 and not self.initiator:
            assert self.re is not None
            self._mix_hash(self.e_pub)
            self._mix_key(_dh(self.e_priv, self.re))
            enc_s = self._encrypt_and_hash(self.s_pub)
            self._mix_key(_dh(self.s_priv, self.re))
            out = self.e_pub + enc_s + self._encrypt_and_hash(encode_payload(self.key_pair, self.s_pub))
        elif step == 2 and self.initiator:
            assert self.re is not None
            enc_s = self._encrypt_and_hash(self.s_pub)
            self._mix_key(_dh(self.s_priv, self.re))
            out = enc_s + self._encrypt_and_hash(encode_payload(self.key_pair, self.s_pub))
        else:
            raise StateError("not our turn to write")
        self.step += 1
        return out

    def read_message(self, message: bytes) -> None:
        """Consume the peer's next message.

        Raises:
            HandshakeError: short, unauthenticated or unverifiable message.
        """
        step = self.step
        try:
            if step == 0 and not self.initiator:
                if len(message) < 32:
                    raise HandshakeError("Noise message 1 too short")
                self.re = message[:32]
                self._mix_hash(self.re)
                self._decrypt_and_hash(message[32:])
            elif step == 1 and self.initiator:
                if len(message) < 32 + 48 + _TAG:
                    raise HandshakeError("Noise message 2 too short")
                self.re = message[:32]
                self._mix_hash(self.re)
                self._mix_key(_dh(self.e_priv, self.re))
                self.rs = self._decrypt_and_hash(message[32:80])
                self._mix_key(_dh(self.e_priv, self.rs))
                self.remote_peer = verify_payload(self._decrypt_and_hash(message[80:]), self.rs)
            elif step == 2 and not self.initiator:
                if len(message) < 48 + _TAG:
                    raise HandshakeError("Noise message 3 too short")
                assert self.re is not None
                self.rs = self._decrypt_and_hash(message[:48])
                self._mix_key(_dh(self.e_priv, self.rs))
                self.remote_peer = verify_payload(self._decrypt_and_hash(message[48:]), self.rs)
            else:
                raise StateError("not our turn to read")
        except DecodeError as e:
            raise HandshakeError(e.reason) from e
        self.step += 1

    def split(self) -> tuple[CipherState, CipherState]:
        """(send cipher, receive cipher) for the transport phase."""
        if not self.finished:
            raise StateError("handshake not finished")
        k1, k2 = _hkdf2(self.ck, b"")
        c1, c2 = CipherState(k1), CipherState(k2)
        return (c1, c2) if self.initiator else (c2, c1)


def frame(message: bytes) -> bytes:
    return struct.pack(">H", len(message)) + message


async def _read_frame(stream: BufferedStream) -> bytes:
    (length,) = struct.unpack(">H", await stream.receive_exactly(2))
    return await stream.receive_exactly(length)


async def handshake(
    stream: BufferedStream, key_pair: KeyPair, *, initiator: bool, expected_peer: PeerId | None = None
) -> NoiseStream:
    """Run the XX handshake over ``stream`` and return the encrypted stream.

    Raises:
        HandshakeError: the peer failed to prove its identity or sent garbage.
        PeerIdMismatchError: ``expected_peer`` was given and the remote is someone else.
        trio.BrokenResourceError: the stream broke.
    """
    hs = HandshakeState(initiator, key_pair)
    if initiator:
        await stream.send_all(frame(hs.write_message()))
        hs.read_message(await _read_frame(stream))
        assert hs.remote_peer is not None
        if expected_peer is not None and hs.remote_peer != expected_peer:
            # Before message 3: the impostor never learns who we are.
            raise PeerIdMismatchError(expected_peer, hs.remote_peer)
        await stream.send_all(frame(hs.write_message()))
    else:
        hs.read_message(await _read_frame(stream))
        await stream.send_all(frame(hs.write_message()))
        hs.read_message(await _read_frame(stream))
    assert hs.remote_peer is not None
    send, recv = hs.split()
    # Wrap the layer below the read-ahead buffer, handing over what it read ahead: one less
    # hop for every read and write of the connection's life.
    return NoiseStream(stream.transport_stream, send, recv, hs.remote_peer, initial=stream.take_buffer())


class NoiseStream(trio.abc.HalfCloseableStream):
    """The transport phase: length-prefixed ChaChaPoly messages over ``transport_stream``."""

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        send: CipherState,
        recv: CipherState,
        remote_peer: PeerId,
        *,
        initial: bytes = b"",
    ) -> None:
        self.transport_stream = transport_stream
        self._direct = direct_socket(transport_stream)
        # Below us, a pnet stream may write without waiting too (see send_nowait).
        self._lower_nowait = getattr(transport_stream, "send_nowait", None)
        self._lower_can_nowait = getattr(transport_stream, "can_send_nowait", None)
        self.remote_peer = remote_peer
        self._send = send
        self._recv = recv
        self._raw = bytearray(initial)
        # Decrypted messages, each handed on whole when it fits: no copy on the common path.
        # Decrypted messages not read yet; None while there are none (an empty deque is 760 bytes,
        # and a node may hold thousands of idle connections).
        self._plain: deque[bytes] | None = None
        self._sending = False
        self._receiving = False
        self._eof = False
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("stream is closed")
            view = memoryview(data)
            if not view:
                await trio.lowlevel.checkpoint()
                return
            out = self._seal(view)
            if self._direct is not None:
                out = self._direct.after_unsent(out)
            await self.transport_stream.send_all(out)
        finally:
            self._sending = False

    def _seal(self, view: memoryview) -> bytes:
        """``view`` as length-prefixed ChaChaPoly messages (the cipher's nonce moves on)."""
        encrypt = self._send.encrypt
        if len(view) <= MAX_PLAINTEXT:
            ct = encrypt(None, bytes(view))
            return struct.pack(">H", len(ct)) + ct
        parts = []
        for start in range(0, len(view), MAX_PLAINTEXT):
            ct = encrypt(None, bytes(view[start : start + MAX_PLAINTEXT]))
            parts.append(struct.pack(">H", len(ct)))
            parts.append(ct)
        return b"".join(parts)

    def can_send_nowait(self) -> bool:
        """Whether :meth:`send_nowait` can send now: TCP below (directly or under pnet), no other
        send in progress or bytes left unsent, the stream open."""
        if self._sending or self._closed:
            return False
        if self._direct is not None:
            return not self._direct.unsent
        return self._lower_can_nowait is not None and bool(self._lower_can_nowait())

    def send_nowait(self, data: bytes) -> None:
        """Encrypt ``data`` and hand it to the kernel without waiting (see :mod:`physarum.nowait`);
        what the kernel does not take goes out first with the next ``send_all`` or :meth:`flush`.

        Raises:
            trio.WouldBlock: :meth:`can_send_nowait` is false; nothing was encrypted or sent.
            trio.BrokenResourceError: the transport broke.
        """
        if not self.can_send_nowait():
            raise trio.WouldBlock
        out = self._seal(memoryview(data))
        if self._direct is not None:
            self._direct.write(out)
        else:
            assert self._lower_nowait is not None
            self._lower_nowait(out)

    @property
    def direct_socket(self) -> DirectSocket | None:
        """The TCP socket under this stream (directly or under pnet), None over other streams."""
        if self._direct is not None:
            return self._direct
        return getattr(self.transport_stream, "direct_socket", None)

    @property
    def unsent(self) -> int:
        """Bytes :meth:`send_nowait` left for the next write (here or below)."""
        if self._direct is not None:
            return self._direct.unsent
        return int(getattr(self.transport_stream, "unsent", 0))

    async def flush(self) -> None:
        """Send what :meth:`send_nowait` left unsent, if anything."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            if self._direct is not None:
                unsent = self._direct.take_unsent()
                if unsent:
                    await self.transport_stream.send_all(unsent)
                    return
            else:
                flush = getattr(self.transport_stream, "flush", None)
                if flush is not None:
                    await flush()
                    return
            await trio.lowlevel.checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    def _decrypt_available(self, data: bytes = b"") -> None:
        # Parse straight from the newly read bytes when nothing is left over from before.
        raw: bytes | bytearray
        if self._raw:
            self._raw += data
            raw = self._raw
        else:
            raw = data
        pos = 0
        end = len(raw)
        decrypt = self._recv.decrypt
        plain = self._plain
        while end - pos >= 2:
            length = raw[pos] << 8 | raw[pos + 1]
            if end - pos - 2 < length:
                break
            message = decrypt(None, bytes(raw[pos + 2 : pos + 2 + length]))
            if message:  # an empty message is legal but carries nothing; b"" would read as end of stream
                if plain is None:
                    plain = self._plain = deque()
                plain.append(message)
            pos += 2 + length
        if raw is self._raw:
            if pos:
                del self._raw[:pos]
        elif pos < end:
            self._raw = bytearray(raw[pos:])

    def _decrypt_or_break(self, data: bytes = b"") -> None:
        try:
            self._decrypt_available(data)
        except DecodeError as e:
            raise trio.BrokenResourceError("Noise message failed authentication") from e

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        max_bytes = check_receive(self._receiving, max_bytes)
        self._receiving = True
        try:
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("stream is closed")
            if self._raw and not self._plain:
                # Bytes that arrived with the last handshake message.
                self._decrypt_or_break()
            while not self._plain:
                if self._eof:
                    return b""
                direct = self._direct
                data: bytes | bytearray
                if direct is not None:
                    data = await direct.receive(_RECEIVE_SIZE)
                else:
                    data = await self.transport_stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    self._eof = True
                    if self._raw:
                        raise trio.BrokenResourceError("connection ended inside a Noise message")
                    return b""
                self._decrypt_or_break(bytes(data))
            plain = self._plain
            assert plain
            first = plain[0]
            if max_bytes is None or max_bytes >= len(first):
                plain.popleft()
                if len(plain) == 1 and (max_bytes is None or len(first) + len(plain[0]) <= max_bytes):
                    first += plain.popleft()
                if not plain:
                    self._plain = None
                return first
            plain[0] = first[max_bytes:]
            return first[:max_bytes]
        finally:
            self._receiving = False

    async def send_eof(self) -> None:
        if not isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            raise trio.ClosedResourceError("transport stream cannot half-close")
        if self.unsent:
            await self.flush()
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        self._closed = True
        await self.transport_stream.aclose()
