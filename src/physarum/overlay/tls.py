"""``/tls/1.0.0``: libp2p's TLS 1.3 handshake, the second security protocol after Noise.

Each side shows a self-signed X.509 certificate for a fresh ECDSA P-256 key (one per connection,
as go-libp2p does). It carries the libp2p Public Key Extension (OID 1.3.6.1.4.1.53594.1.1), the DER
``SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }``: our host key as
the ``PublicKey`` protobuf, and its signature of ``"libp2p-tls-handshake:"`` followed by the
certificate key's DER SubjectPublicKeyInfo. Nothing is trusted from the certificate chain: the
peer's identity is the key in the extension, once its signature checks out, the certificate is
self-signed by the key it names and is valid now. Both sides must present one (the server asks
for the client's). ALPN is ``libp2p``; the muxer is then negotiated with multistream-select, as
after Noise (we never pick a muxer by ALPN, which the spec leaves optional).

The TLS engine is OpenSSL through pyOpenSSL, driven over memory buffers on any trio stream
(pnet's, in a private network): the standard ``ssl`` module cannot accept a self-signed client
certificate, which every libp2p peer sends. ``cryptography`` and pyOpenSSL are imported on the
first TLS handshake, so hosts that only speak Noise never pay for them.
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, Any

import trio

from physarum.errors import DecodeError, HandshakeError, PeerIdMismatchError
from physarum.overlay.identity import IdentityKeyError, KeyPair, PeerId, PublicKey

if TYPE_CHECKING:
    from OpenSSL import SSL

PROTOCOL_ID = "/tls/1.0.0"
ALPN = b"libp2p"
EXTENSION_OID = "1.3.6.1.4.1.53594.1.1"
SIGNATURE_PREFIX = b"libp2p-tls-handshake:"
#: Certificates are valid from an hour ago (clocks drift) for 100 years, as go-libp2p's.
VALIDITY = datetime.timedelta(days=36500)
#: Ciphertext read from the transport at a time.
RECEIVE_SIZE = 65536
#: Largest plaintext handed to OpenSSL at once (one TLS record is at most 16 KiB; this bounds the
#: ciphertext buffered before it is written).
SEND_CHUNK = 256 * 1024


class TlsError(HandshakeError):
    """The TLS handshake failed, or the peer's certificate does not prove a libp2p identity."""


# -- DER: just the two shapes SignedKey needs ---------------------------------------------------------


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_read(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """The body of the DER element of type ``tag`` at ``pos``, and where the next one starts.

    Raises:
        DecodeError: another tag, a bad or non-minimal length, or data too short.
    """
    if pos + 2 > len(data) or data[pos] != tag:
        raise DecodeError(f"SignedKey: expected DER tag {tag:#x}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        n = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise DecodeError("SignedKey: bad DER length")
        n = int.from_bytes(data[pos : pos + count], "big")
        if n < 0x80 or data[pos] == 0:
            raise DecodeError("SignedKey: DER length not in its shortest form")
        pos += count
    if pos + n > len(data):
        raise DecodeError("SignedKey: truncated")
    return data[pos : pos + n], pos + n


def encode_signed_key(public_key: bytes, signature: bytes) -> bytes:
    """``SignedKey`` in DER: ``public_key`` is the ``PublicKey`` protobuf."""
    return _der(0x30, _der(0x04, public_key) + _der(0x04, signature))


def decode_signed_key(data: bytes) -> tuple[bytes, bytes]:
    """``(public_key protobuf, signature)`` of a DER ``SignedKey``.

    Raises:
        DecodeError: not exactly a SEQUENCE of two OCTET STRINGs.
    """
    body, end = _der_read(data, 0, 0x30)
    if end != len(data):
        raise DecodeError("SignedKey: bytes after the SEQUENCE")
    key, pos = _der_read(body, 0, 0x04)
    signature, pos = _der_read(body, pos, 0x04)
    if pos != len(body):
        raise DecodeError("SignedKey: more than two fields")
    return key, signature


# -- certificates -----------------------------------------------------------------------------------


def make_certificate(key_pair: KeyPair, *, now: datetime.datetime | None = None) -> tuple[bytes, Any]:
    """A fresh self-signed certificate (DER) proving ``key_pair``'s identity, and its private key
    (a ``cryptography`` EC key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed = encode_signed_key(key_pair.public_key.to_protobuf(), key_pair.sign(SIGNATURE_PREFIX + spki))
    now = now or datetime.datetime.now(datetime.UTC)
    serial = int.from_bytes(os.urandom(16), "big") >> 1
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        # Not critical: the spec only says it MAY be, and go-libp2p-tls before 0.2 (PhysarumSM's
        # go-libp2p 0.9 nodes) runs Go's x509 Verify, which refuses any unknown critical extension.
        # Every implementation finds the extension by its OID either way.
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(EXTENSION_OID), signed), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER), key


def verify_certificate(der: bytes, *, now: datetime.datetime | None = None) -> PublicKey:
    """The libp2p host key a peer's certificate proves.

    Raises:
        TlsError: not a certificate, not valid now, not self-signed by its key, without the
            extension (or with two), or with a signature that does not check out.
    """
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise TlsError(f"the peer's certificate does not parse: {e}") from None
    now = now or datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise TlsError("the peer's certificate is not valid now")
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        raise TlsError("the peer's certificate is not self-signed by its own key") from None
    oid = x509.ObjectIdentifier(EXTENSION_OID)
    found = [e for e in cert.extensions if e.oid == oid] if _extensions_parse(cert) else []
    if len(found) != 1:
        raise TlsError("the peer's certificate lacks the libp2p public key extension")
    value = found[0].value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    try:
        key_bytes, signature = decode_signed_key(raw)
        host_key = PublicKey.from_protobuf(key_bytes)
    except DecodeError as e:
        raise TlsError(f"the peer's libp2p extension is malformed: {e.reason}") from None
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        ok = host_key.verify(SIGNATURE_PREFIX + spki, signature)
    except IdentityKeyError as e:
        raise TlsError(f"cannot check the peer's host key signature: {e.reason}") from None
    if not ok:
        raise TlsError("the peer's host key did not sign its certificate key")
    return host_key


def _extensions_parse(cert: Any) -> bool:
    try:
        cert.extensions  # noqa: B018 - parsing may fail on a hostile certificate
    except ValueError:
        return False
    return True


# -- the stream -------------------------------------------------------------------------------------


def _context(key_pair: KeyPair, initiator: bool) -> SSL.Context:
    from cryptography import x509
    from OpenSSL import SSL

    der, key = make_certificate(key_pair)
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate(x509.load_der_x509_certificate(der))
    ctx.use_privatekey(key)
    # Every certificate is self-signed: accept it here, and check what it proves after the handshake.
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)
    ctx.set_options(SSL.OP_NO_TICKET)
    if initiator:
        ctx.set_alpn_protos([ALPN])
    else:
        ctx.set_alpn_select_callback(
            lambda _conn, offered: ALPN if ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS
        )
    return ctx


class TlsStream(trio.abc.HalfCloseableStream):
    """A TLS 1.3 session over ``transport`` (see the module notes); made by :func:`handshake`."""

    def __init__(self, transport: trio.abc.Stream, conn: SSL.Connection, remote_peer: PeerId) -> None:
        self.transport = transport
        self._conn = conn
        self.remote_peer = remote_peer
        self._send_lock = trio.StrictFIFOLock()  # one writer on the transport: ours and the reader's flushes
        self._eof = False

    async def _flush(self) -> None:
        async with self._send_lock:
            await _drain(self._conn, self.transport)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        from OpenSSL import SSL

        view = memoryview(data)
        try:
            for start in range(0, len(view), SEND_CHUNK):
                self._conn.sendall(bytes(view[start : start + SEND_CHUNK]))
                await self._flush()
        except SSL.Error as e:
            raise trio.BrokenResourceError(f"TLS: {_ssl_reason(e)}") from None
        if not view:
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        from OpenSSL import SSL

        size = max_bytes or RECEIVE_SIZE
        while True:
            try:
                data = self._conn.recv(size)
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                return b""  # the peer's close_notify: its end of the stream
            except SSL.Error as e:
                if self._eof:
                    return b""  # the transport ended without close_notify: as good as an EOF here
                raise trio.BrokenResourceError(f"TLS: {_ssl_reason(e)}") from None
            else:
                await self._flush()  # a key update answer, if the peer asked for one
                if data:
                    return bytes(data)
                continue
            if self._eof:
                return b""
            chunk = await self.transport.receive_some(RECEIVE_SIZE)
            if not chunk:
                self._eof = True
                self._conn.bio_shutdown()
                continue
            self._conn.bio_write(bytes(chunk))

    async def send_eof(self) -> None:
        from OpenSSL import SSL

        try:
            self._conn.shutdown()  # close_notify: TLS 1.3 lets the other direction go on
        except SSL.Error as e:
            raise trio.BrokenResourceError(f"TLS: {_ssl_reason(e)}") from None
        await self._flush()

    async def aclose(self) -> None:
        await self.transport.aclose()


async def _drain(conn: SSL.Connection, transport: trio.abc.SendStream) -> None:
    """Write what OpenSSL has produced (records, alerts, handshake messages) to ``transport``."""
    from OpenSSL import SSL

    while True:
        try:
            out = conn.bio_read(RECEIVE_SIZE)
        except SSL.WantReadError:
            return
        if not out:
            return
        await transport.send_all(out)


def _ssl_reason(e: Exception) -> str:
    args = getattr(e, "args", ())
    if args and isinstance(args[0], list) and args[0] and isinstance(args[0][0], tuple):
        return str(args[0][0][-1])
    return str(e) or type(e).__name__


async def handshake(
    transport: trio.abc.Stream, key_pair: KeyPair, *, initiator: bool, expected_peer: PeerId | None = None
) -> TlsStream:
    """Run the TLS handshake over ``transport``; the stream's ``remote_peer`` is the proven identity.

    Raises:
        TlsError: the handshake failed or the certificate proves no libp2p identity.
        PeerIdMismatchError: ``expected_peer`` was given and the peer is someone else.
        trio.BrokenResourceError: the transport broke or ended during the handshake.
    """
    from OpenSSL import SSL

    conn = SSL.Connection(_context(key_pair, initiator), None)
    if initiator:
        conn.set_connect_state()
    else:
        conn.set_accept_state()

    while True:
        try:
            conn.do_handshake()
            break
        except SSL.WantReadError:
            pass
        except SSL.Error as e:
            await _try(_drain(conn, transport))  # the alert, so the peer knows why
            raise TlsError(f"TLS handshake failed: {_ssl_reason(e)}") from None
        await _drain(conn, transport)
        chunk = await transport.receive_some(RECEIVE_SIZE)
        if not chunk:
            raise trio.BrokenResourceError("the peer closed the connection during the TLS handshake")
        conn.bio_write(bytes(chunk))
    await _drain(conn, transport)
    if conn.get_alpn_proto_negotiated() != ALPN:
        raise TlsError("the peer did not agree on ALPN 'libp2p'")
    # OpenSSL's chain holds the server's own certificate as the client sees it, not the client's
    # as the server sees it: one certificate each way is a chain of 1 for the client, 0 for the server.
    chain = conn.get_peer_cert_chain() or []
    if len(chain) > (1 if initiator else 0):
        raise TlsError("the peer sent a certificate chain; libp2p allows exactly one certificate")
    cert = conn.get_peer_certificate(as_cryptography=True)
    if cert is None:
        raise TlsError("the peer sent no certificate")
    from cryptography.hazmat.primitives import serialization

    host_key = verify_certificate(cert.public_bytes(serialization.Encoding.DER))
    peer = host_key.peer_id()
    if expected_peer is not None and peer != expected_peer:
        raise PeerIdMismatchError(expected_peer, peer)
    return TlsStream(transport, conn, peer)


async def _try(work: Any) -> None:
    try:
        await work
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
