"""libp2p TLS 1.3 (``/tls/1.0.0``): the certificate extension, its checks, and handshakes over memory streams."""

from __future__ import annotations

import datetime

import pytest
import trio
import trio.testing

from physarum.errors import DecodeError, PeerIdMismatchError
from physarum.overlay import tls
from physarum.overlay.identity import KeyPair


def test_signed_key_round_trip_and_strict_der() -> None:
    der = tls.encode_signed_key(b"k" * 36, b"s" * 64)
    assert tls.decode_signed_key(der) == (b"k" * 36, b"s" * 64)
    long = tls.encode_signed_key(b"k" * 300, b"s" * 200)  # long-form lengths
    assert tls.decode_signed_key(long) == (b"k" * 300, b"s" * 200)
    for bad in (
        b"",
        der[:-1],  # truncated
        der + b"\x00",  # trailing bytes
        b"\x31" + der[1:],  # a SET, not a SEQUENCE
        tls._der(0x30, tls._der(0x04, b"k")),  # one field
        tls._der(0x30, tls._der(0x04, b"k") * 3),  # three fields
        b"\x30\x81\x05" + der[2:7],  # a long-form length that fits the short form
    ):
        with pytest.raises(DecodeError):
            tls.decode_signed_key(bad)


def test_a_certificate_proves_its_host_key() -> None:
    key_pair = KeyPair.generate()
    der, _ = tls.make_certificate(key_pair)
    assert tls.verify_certificate(der) == key_pair.public_key


def test_certificates_that_prove_nothing_are_refused() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key_pair = KeyPair.generate()
    now = datetime.datetime.now(datetime.UTC)
    der, _ = tls.make_certificate(key_pair, now=now)
    with pytest.raises(tls.TlsError, match="not valid now"):
        tls.verify_certificate(der, now=now + tls.VALIDITY + datetime.timedelta(days=1))
    with pytest.raises(tls.TlsError, match="not valid now"):
        tls.verify_certificate(der, now=now - datetime.timedelta(hours=2))
    with pytest.raises(tls.TlsError, match="does not parse"):
        tls.verify_certificate(b"\x30\x03\x02\x01\x00")

    def build(extension: bytes | None, sign_with: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "1")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if extension is not None:
            oid = x509.ObjectIdentifier(tls.EXTENSION_OID)
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, extension), critical=True)
        return builder.sign(sign_with or key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    with pytest.raises(tls.TlsError, match="lacks the libp2p public key extension"):
        tls.verify_certificate(build(None))
    with pytest.raises(tls.TlsError, match="malformed"):
        tls.verify_certificate(build(b"\x30\x00"))
    # A signature by the host key, but over another certificate key: copied from someone else's.
    stolen = tls.encode_signed_key(
        key_pair.public_key.to_protobuf(), key_pair.sign(tls.SIGNATURE_PREFIX + b"another key")
    )
    with pytest.raises(tls.TlsError, match="did not sign"):
        tls.verify_certificate(build(stolen))
    # Signed by a CA's key rather than by its own.
    with pytest.raises(tls.TlsError, match="not self-signed"):
        tls.verify_certificate(build(stolen, sign_with=ec.generate_private_key(ec.SECP256R1())))


async def _pair(
    client_key: KeyPair, server_key: KeyPair, *, expected: object = None
) -> tuple[tls.TlsStream, tls.TlsStream]:
    a, b = trio.testing.memory_stream_pair()
    out: dict[str, tls.TlsStream] = {}

    async def side(name: str, stream: trio.abc.Stream, key: KeyPair, initiator: bool) -> None:
        out[name] = await tls.handshake(
            stream, key, initiator=initiator, expected_peer=expected if initiator else None  # type: ignore[arg-type]
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "client", a, client_key, True)
        nursery.start_soon(side, "server", b, server_key, False)
    return out["client"], out["server"]


async def test_handshake_proves_both_identities_and_carries_data() -> None:
    ka, kb = KeyPair.generate(), KeyPair.generate()
    with trio.fail_after(10):
        client, server = await _pair(ka, kb, expected=kb.peer_id)
        assert client.remote_peer == kb.peer_id and server.remote_peer == ka.peer_id
        big = bytes(range(256)) * 4096  # 1 MiB: many TLS records
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, big)
            got = bytearray()
            while len(got) < len(big):
                got += await server.receive_some(65536)
        assert got == big
        await server.send_all(b"pong")
        assert await client.receive_some() == b"pong"
        # Half-close: the client's close_notify ends what the server reads; the server can still send.
        await client.send_eof()
        assert await server.receive_some() == b""
        await server.send_all(b"after eof")
        assert await client.receive_some() == b"after eof"


async def test_handshake_with_the_wrong_peer_fails() -> None:
    ka, kb = KeyPair.generate(), KeyPair.generate()
    with trio.fail_after(10), pytest.RaisesGroup(PeerIdMismatchError, allow_unwrapped=True, flatten_subgroups=True):
        await _pair(ka, kb, expected=KeyPair.generate().peer_id)


async def test_garbage_instead_of_a_client_hello_is_a_tls_error() -> None:
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(10):
        await a.send_all(b"GET / HTTP/1.1\r\n\r\n" + b"\x00" * 100)
        with pytest.raises(tls.TlsError, match="TLS handshake failed"):
            await tls.handshake(b, KeyPair.generate(), initiator=False)
