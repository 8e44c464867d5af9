"""physarum's multiaddr codec: published vectors, round trips, truncation, malformed input, the API."""

from __future__ import annotations

import base64
import copy
import hashlib
import ipaddress
import pickle
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from physarum.errors import PhysarumError
from physarum.overlay import addr as addr_module
from physarum.overlay.identity import PeerId
from physarum.overlay.multiaddr import MAX_MULTIADDR_SIZE, MAX_TEXT_SIZE, PROTOCOLS, AddressError, Multiaddr

# The Ed25519 public key of the all-zero seed (as in test_identity.py) and its peer id.
ZERO_SEED_PUBKEY = bytes.fromhex("3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
ZERO_SEED_PEER_ID = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
QM = "QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC"
QM_MULTIHASH = "1220d52ebb89d85b02a284948203a62ff28389c57c9f42beec4ec20db76a68911c0b"
# An I2P destination from go-multiaddr's multiaddr_test.go (387 bytes).
GARLIC64 = (
    "jT~IyXaoauTni6N4517EG8mrFUKpy0IlgZh-EY9csMAk82Odatmzr~YTZy8Hv7u~wvkg75EFNOyqb~nAPg-khyp2TS~ObUz8WlqYAM"
    "2VlEzJ7wJB91P-cUlKF18zSzVoJFmsrcQHZCirSbWoOknS6iNmsGRh5KVZsBEfp1Dg3gwTipTRIx7Vl5Vy~1OSKQVjYiGZS9q8RL0MF"
    "~7xFiKxZDLbPxk0AK9TzGGqm~wMTI2HS0Gm4Ycy8LYPVmLvGonIBYndg2bJC7WLuF6tVjVquiokSVDKFwq70BCUU5AU-EvdOD5KEOA"
    "M7mPfw-gJUG4tm1TtvcobrObqoRnmhXPTBTN5H7qDD12AvlwFGnfAlBXjuP4xOUAISL5SRLiulrsMSiT4GcugSI80mF6sdB0zWRgL"
    "1yyvoVWeTBn1TqjO27alr95DGTluuSqrNAxgpQzCKEWAyzrQkBfo2avGAmmz2NaHaAvYbOg0QSJz1PLjv2jdPW~ofiQmrGWM1cd~1c"
    "CqAAAA"
)
GARLIC64_HEX = (
    "be0383038d3fc8c976a86ae4e78ba378e75ec41bc9ab1542a9cb422581987e118f5cb0c024f3639d6ad9b3aff613672f07bfbb"
    "bfc2f920ef910534ecaa6ff9c03e0fa4872a764d2fce6d4cfc5a5a9800cd95944cc9ef0241f753fe71494a175f334b35682459"
    "acadc4076428ab49b5a83a49d2ea2366b06461e4a559b0111fa750e0de0c138a94d1231ed5979572ff53922905636221994bda"
    "bc44bd0c17fef11622b16432db3f193400af53cc61aa9bfc0c4c8d874b41a6e18732f0b60f5662ef1a89c80589dd8366c90bb5"
    "8bb85ead56356aba2a244950ca170abbd01094539014f84bdd383e4a10e00cee63dfc3e809506e2d9b54edbdca1bace6eaa119"
    "e68573d30533791fba830f5d80be5c051a77c09415e3b8fe3139400848be5244b8ae96bb0c4a24f819cba0488f34985eac741d"
    "3359180bd72cafa1559e4c19f54ea8cedbb6a5afde4319396eb92aab340c60a50cc2284580cb3ad09017e8d9abc60269b3d8d6"
    "87680bd86ce834412273d4f2e3bf68dd3d6fe87e2426ac658cd5c77fd5c0aa000000"
)

# (canonical text, binary form in hex): both directions must match exactly.
VECTORS = [
    # multiformats/multiaddr test/multiaddr.feature ("Simple string form" / "Simple packed form")
    ("/ip4/192.0.2.42/tcp/443", "04c000022a0601bb"),
    # go-multiaddr multiaddr_test.go, TestStringToBytes / TestBytesToString / TestBinaryRepresentation
    ("/ip4/127.0.0.1/udp/1234", "047f000001910204d2"),
    ("/ip4/127.0.0.1/tcp/4321", "047f0000010610e1"),
    ("/ip4/127.0.0.1/udp/1234/ip4/127.0.0.1/tcp/4321", "047f000001910204d2047f0000010610e1"),
    ("/onion/aaimaq4ygg2iegci:80", "bc030010c0439831b48218480050"),
    (
        "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:1234",
        "bd03adadec040be047f9658668b11a504f3155001f231a37f54c4476c07fb4cc139ed7e30304d2",
    ),
    ("/garlic64/" + GARLIC64, GARLIC64_HEX),
    (
        "/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzuq",
        "bf0320efbcd45d0c5dc79781ac6f20ea5055a036afb48d45a52e7d68ec7d4338919e69",
    ),
    # go-multiaddr TestZone
    ("/ip6zone/eth0/ip6/::1", "2a0465746830" + "29" + "00" * 15 + "01"),
    # rust-multiaddr tests/lib.rs construct_success (the entries whose protocol codes are current;
    # /ipfs/ is written /p2p/ in canonical text, as go and js print it)
    ("/ip4/1.2.3.4", "0401020304"),
    ("/ip6/::1", "29" + "00" * 15 + "01"),
    ("/ip6/2601:9:4f81:9700:803e:ca65:66e8:c21", "29260100094f819700803eca6566e80c21"),
    ("/tcp/0", "060000"),
    ("/sctp/1234", "840104d2"),
    ("/tcp/65535", "06ffff"),
    ("/tcp/1234/http", "0604d2e003"),
    ("/tcp/1234/https", "0604d2bb03"),
    (f"/p2p/{QM}", "a50322" + QM_MULTIHASH),
    (f"/p2p/{QM}/tcp/1234", "a50322" + QM_MULTIHASH + "0604d2"),
    (f"/ip4/127.0.0.1/p2p/{QM}", "047f000001a50322" + QM_MULTIHASH),
    (f"/ip4/127.0.0.1/p2p/{QM}/tcp/1234", "047f000001a50322" + QM_MULTIHASH + "0604d2"),
    (
        f"/ip6/2001:8a0:7ac5:4201:3ac9:86ff:fe31:7095/tcp/8000/ws/p2p/{QM}",
        "29200108a07ac542013ac986fffe317095061f40dd03a50322" + QM_MULTIHASH,
    ),
    (
        f"/ip6/2001:8a0:7ac5:4201:3ac9:86ff:fe31:7095/tcp/8000/wss/p2p/{QM}",
        "29200108a07ac542013ac986fffe317095061f40de03a50322" + QM_MULTIHASH,
    ),
    # The address every physarum node prints: ip4 (04) + tcp 4001 (06 0fa1) + p2p (a5 03 = uvarint 421)
    # + length 38 (26) + the identity multihash of the Ed25519 key protobuf (00 24 08 01 12 20 <key>),
    # laid out as in the libp2p peer-ids spec; js-libp2p sends the same bytes for its addresses.
    (
        f"/ip4/127.0.0.1/tcp/4001/p2p/{ZERO_SEED_PEER_ID}",
        "047f000001060fa1a50326002408011220" + ZERO_SEED_PUBKEY.hex(),
    ),
    # Codes from the multiformats table for the protocols without a value, and a few more.
    ("/ip4/127.0.0.1/udp/4001/quic-v1", "047f00000191020fa1cd03"),
    ("/ip4/127.0.0.1/udp/4001/quic-v1/webtransport", "047f00000191020fa1cd03d103"),
    (
        "/ip4/127.0.0.1/tcp/4001/tls/sni/example.com/ws",
        "047f000001060fa1c003c1030b6578616d706c652e636f6ddd03",
    ),
    ("/dns4/example.com/tcp/443/wss", "360b6578616d706c652e636f6d0601bbde03"),
    ("/dnsaddr/bootstrap.libp2p.io", "3813626f6f7473747261702e6c69627032702e696f"),
    ("/ip4/1.2.3.4/tcp/1/p2p-circuit", "0401020304060001a202"),
    ("/memory/4", "890600000000000000" + "04"),
    ("/ip4/192.0.2.0/ipcidr/24", "04c00002002b18"),
]


def _unhex(h: str) -> bytes:
    return bytes.fromhex(h)


@pytest.mark.parametrize(("text", "hexed"), VECTORS)
def test_vectors(text: str, hexed: str) -> None:
    data = _unhex(hexed)
    assert Multiaddr(text).to_bytes() == data
    assert str(Multiaddr(data)) == text
    assert Multiaddr(text) == Multiaddr(data)
    assert bytes(Multiaddr(data)) == data


# Text that is valid but not canonical, and its canonical form.
CANONICAL = [
    (f"/ipfs/{QM}", f"/p2p/{QM}"),  # /ipfs is an input alias
    ("/ip4/127.0.0.1/tcp/1234/", "/ip4/127.0.0.1/tcp/1234"),  # one trailing slash, as go allows
    ("/ip6/0:0:0:0:0:0:0:1/tcp/1", "/ip6/::1/tcp/1"),
    ("/ip6/2001:DB8::1", "/ip6/2001:db8::1"),
    (
        "/ip6/::ffff:7f00:1/tcp/111",
        "/ip6/::ffff:127.0.0.1/tcp/111",
    ),  # mapped addresses dotted, as go prints them
    # peer ids given as CIDv1 (libp2p-key) come back as base58btc multihashes (go-multiaddr's good list)
    ("/p2p/k2k4r8oqamigqdo6o7hsbfwd45y70oyynp98usk7zmyfrzpqxh1pohl7", f"/p2p/{QM}"),
    ("/p2p/bafzbeigvf25ytwc3akrijfecaotc74udrhcxzh2cx3we5qqnw5vgrei4bm", f"/p2p/{QM}"),
    (
        "/p2p/bafzaajaiaejcalj543iwv2d7pkjt7ykvefrkfu7qjfi6sduakhso4lay6abn2d5u",
        "/p2p/12D3KooWCryG7Mon9orvQxcS1rYZjotPgpwoJNHHKcLLfE4Hf5mV",
    ),
    (
        "/p2p/k51qzi5uqu5dhb6l8spkdx7yxafegfkee5by8h7lmjh2ehc2sgg34z7c15vzqs",
        "/p2p/12D3KooWCryG7Mon9orvQxcS1rYZjotPgpwoJNHHKcLLfE4Hf5mV",
    ),
    # certificate hashes in any multibase come back base64url ('u')
    (
        "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/b2uaraocy6yrdblb4sfptaddgimjmmpy",
        "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/u1QEQOFj2IjCsPJFfMAxmQxLGPw",
    ),
    # the same hash in base58btc and base64url (go-multiaddr's good list and TestRoundTrip)
    (
        "/certhash/zQmbWTwYGcmdyK9CYfNBcfs9nhZs17a6FQ4Y8oea278xx41",
        "/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g",
    ),
    ("/unix/tmp%2fsock", "/unix/tmp%2Fsock"),
    ("/unix/a b", "/unix/a%20b"),
    ("/onion/AAIMAQ4YGG2IEGCI:80", "/onion/aaimaq4ygg2iegci:80"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_canonical_text(text: str, canonical: str) -> None:
    addr = Multiaddr(text)
    assert str(addr) == canonical
    assert Multiaddr(canonical) == addr
    assert str(Multiaddr(addr.to_bytes())) == canonical


# go-multiaddr multiaddr_test.go TestConstructSucceeds and TestRoundTrip (apart from the /unix paths
# with slashes: the current spec, protocols/unix.md, percent-encodes them as one segment).
GOOD = [
    "/ip4/0.0.0.0",
    "/ip6/2601:9:4f81:9700:803e:ca65:66e8:c21/udp/1234/quic",
    "/ip6/2001:db8::/ipcidr/32",
    "/ip6zone/x/ip6/fe80::1",
    "/ip6zone/x%y/ip6/fe80::1",
    "/ip6zone/x%y/ip6/::",
    "/ip6zone/x/ip6/fe80::1/udp/1234/quic-v1",
    "/onion/timaq4ygg2iegci7:1234",
    "/onion/timaq4ygg2iegci7:80/http",
    "/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:80/http",
    f"/garlic64/{GARLIC64}/udp/8080",
    "/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzuq/tcp/8080",
    "/udp/0",
    "/udp/65535",
    "/udp/1234/sctp/1234",
    "/udp/1234/udt",
    "/udp/1234/utp",
    "/tcp/1234/tls/http",
    "/p2p/12D3KooWCryG7Mon9orvQxcS1rYZjotPgpwoJNHHKcLLfE4Hf5mV",
    "/ip4/127.0.0.1/udp/1234/quic",
    "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/uEiDDq4_xNyDorZBH3TlGazyJdOWSwvo4PUo5YHFMrvDE8g",
    "/ip4/127.0.0.1/tcp/9090/http/p2p-webrtc-direct",
    "/ip4/127.0.0.1/tcp/9090/ws/p2p-webrtc-star",
    "/ip4/127.0.0.1/tcp/9090/ws/p2p-websocket-star",
    "/ip4/127.0.0.1/tcp/127/noise",
    "/ip4/127.0.0.1/tcp/127/webrtc-direct",
    "/ip4/127.0.0.1/tcp/127/webrtc",
    "/ip4/127.0.0.1/dccp/5000",
    "/http-path/tmp%2Fbar",
    f"/ip4/127.0.0.1/tcp/0/p2p/{ZERO_SEED_PEER_ID}/http-path/foo",
    "/ip4/127.0.0.1/tcp/443/tls/sni/example.com/http/http-path/foo",
    "/unix/stdio",
    "/unix/%2Ftmp%2Fphysarum.sock/p2p-circuit",
    f"/memory/{2**64 - 1}",
    "/ip4/127.0.0.1/udp/123/ip6/::",
    "/dns/localhost/tcp/4001",
    "/dns6/ip6.example/tcp/4001",
]


@pytest.mark.parametrize("text", GOOD)
def test_good_addresses_round_trip(text: str) -> None:
    addr = Multiaddr(text)
    assert str(addr) == text
    assert Multiaddr(addr.to_bytes()) == addr
    assert Multiaddr(str(addr)).to_bytes() == addr.to_bytes()


# Text that must fail, and a word the reason must contain.
BAD_TEXT = [
    ("", "empty"),
    ("/", "empty protocol"),
    ("//ip4/1.2.3.4", "empty protocol"),
    ("/ip4/1.2.3.4//tcp/1", "empty protocol"),
    ("ip4/1.2.3.4", "start with '/'"),
    (" /ip4/1.2.3.4", "start with '/'"),
    ("/ip5/1.2.3.4", "unknown protocol"),
    ("/IP4/1.2.3.4", "unknown protocol"),
    ("/ip4", "needs a value"),
    ("/ip4/", "needs a value"),
    ("/ip4/1.2.3.4/tcp", "needs a value"),
    ("/ip4/127.0.0.1/p2p", "needs a value"),
    ("/ip4/1.2.3", "IPv4"),
    ("/ip4/999.1.1.1", "IPv4"),
    ("/ip4/01.2.3.4", "IPv4"),
    ("/ip4/::1", "IPv4"),
    ("/ip4/1.2.3.4 ", "IPv4"),
    ("/ip6/1.2.3.4", "IPv6"),
    ("/ip6/fe80::1%eth0", "ip6zone"),
    ("/ip6/:::", "IPv6"),
    ("/tcp/65536", "port"),
    ("/tcp/-1", "port"),
    ("/tcp/+80", "port"),
    ("/tcp/080", "port"),
    ("/tcp/80a", "port"),
    ("/tcp/" + "9" * 30, "port"),
    ("/udp/١٢٣", "port"),  # Arabic-Indic digits are digits to int(), not to us
    ("/ipcidr/256", "prefix"),
    ("/memory/" + str(2**64), "64-bit"),
    ("/p2p/12D3KooW", "peer id"),
    ("/p2p/QmxoHT6iViN5xAjoz1VZ553cL31U9F94ht3QvWR1FrEbZY", "peer id"),  # digest longer than 32 bytes (go)
    ("/p2p/Qm" + "0" * 44, "base58"),
    (f"/p2p/{ZERO_SEED_PEER_ID} ", "base58"),
    ("/p2p/k2k4r8oqamigqdo6o7hsbfwd45y70oyynp98usk7zmyfrzpqxh1pohl-", "multibase"),  # (go)
    ("/p2p/?unknownmultibase", "multibase"),  # (go)
    (
        "/p2p/k2jmtxwoe2phm1hbqp0e7nufqf6umvuu2e9qd7ana7h411a0haqj6i2z",
        "libp2p-key",
    ),  # a CID of another codec (go)
    ("/p2p/" + "z" * 600, "too long"),
    (
        "/ip4/127.0.0.1/udp/1234/quic-v1/webtransport/certhash/b2uaraocy6yrdblb4sfptaddgimjmmp",
        "multibase",
    ),  # (go)
    ("/certhash/x1234", "multibase"),
    ("/certhash/f123", "multibase"),
    ("/onion/9imaq4ygg2iegci7:80", "base32"),  # (go TestConstructFails, as are the next ones)
    ("/onion/aaimaq4ygg2iegci7:80", "base32"),
    ("/onion/timaq4ygg2iegci7:0", "port 0"),
    ("/onion/timaq4ygg2iegci7:-1", "port"),
    ("/onion/timaq4ygg2iegci7", "port"),
    ("/onion/timaq4ygg2iegci@:666", "base32"),
    ("/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd:0", "port 0"),
    ("/onion3/vww6ybal4bd7szmgncyruucpgfkqahzddi37ktceo3ah7ngmcopnpyyd7:80", "base32"),
    ("/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzu", "base32"),
    ("/garlic32/566niximlxdzpanmn4qouucvua3k7neniwss47li5r6ugoertzu77", "I2P"),
    ("/garlic64/" + GARLIC64[:-4], "I2P"),
    ("/garlic64/" + GARLIC64 + "7", "I2P"),
    ("/udp/1234/sctp", "needs a value"),
    ("/udp/1234/udt/1234", "unknown protocol"),
    ("/ip4/127.0.0.1/quic-v1/1234", "unknown protocol"),
    ("/ip4/127.0.0.1/tcp/9090/http/p2p-webcrt-direct", "unknown protocol"),
    ("/unix/%zz", "hex digits"),
    ("/unix/%ff", "UTF-8"),
    ("/ip6zone//ip6/fe80::1", "empty value"),
    ("/tls" * 600, "exceeds"),
    ("/" + "a" * (MAX_TEXT_SIZE + 1), "exceeds"),
    ("/dns/" + "a" * 1030, "exceeds"),
]


@pytest.mark.parametrize(("text", "word"), BAD_TEXT)
def test_malformed_text(text: str, word: str) -> None:
    with pytest.raises(AddressError) as info:
        Multiaddr(text)
    assert word in info.value.reason
    assert info.value.address == text


# Binary input that must fail, and a word the reason must contain.
BAD_BYTES = [
    (b"", "empty"),
    (b"\x04\x01\x02\x03", "truncated"),  # ip4 with three bytes
    (b"\x04\x01\x02\x03\x04\x06\x0f", "truncated"),  # tcp port cut short
    (b"\x80", "protocol code"),  # a varint cut short
    (b"\x84\x00", "protocol code"),  # a non-minimal varint for ip4
    (b"\x04\x01\x02\x03\x04\x06\x00\x01\xff\xff\x7f", "unknown protocol code"),
    (b"\x00", "unknown protocol code"),
    (b"\x36\x05abc", "truncated"),  # dns4 length runs past the end
    (b"\x36\x02\xff\xfe", "UTF-8"),  # a dns4 name that is not UTF-8
    (b"\x36\x00", "empty"),
    (b"\x36\x03a/b", "'/'"),
    (b"\x36\x80", "length"),  # the length varint cut short
    (b"\x2a\x00", "empty"),  # ip6zone
    (b"\xa5\x03\x00", "peer id"),
    (b"\xa5\x03\x04\x12\x02\xaa\xbb", "peer id"),  # a sha2-256 multihash with a 2-byte digest
    # go-multiaddr TestInvalidP2PAddrBytes
    (_unhex("a503221221c05877cbae039d70a5e600ea02c6f9f2942439285c9e344e26f8d280c850fad6"), "peer id"),
    (b"\xd2\x03\x03\x12\x20\x00", "multihash"),  # certhash
    (b"\xbc\x03" + bytes(12), "port 0"),  # onion
    (b"\xbf\x03\x21" + bytes(33), "I2P"),  # garlic32 of 33 bytes
    (b"\xbe\x03\x10" + bytes(16), "I2P"),  # garlic64 too short
    (b"\x04" + bytes(4) + b"\x00" * 2000, "exceeds"),
]


@pytest.mark.parametrize(("data", "word"), BAD_BYTES)
def test_malformed_bytes(data: bytes, word: str) -> None:
    with pytest.raises(AddressError) as info:
        Multiaddr(data)
    assert word in info.value.reason
    assert info.value.address == data


def _boundaries(addr: Multiaddr) -> set[int]:
    """Byte offsets where a component ends."""
    out = set()
    text = ""
    for name, value in addr:
        text += f"/{name}/{value}" if value else f"/{name}"
        out.add(len(Multiaddr(text).to_bytes()))
    return out


ALL_VALID = [_unhex(h) for _, h in VECTORS] + [Multiaddr(t).to_bytes() for t in GOOD]


@pytest.mark.parametrize("data", ALL_VALID, ids=lambda d: d[:12].hex())
def test_every_truncation_fails_cleanly(data: bytes) -> None:
    """A prefix that does not end on a component boundary is an AddressError, never anything else."""
    ends = _boundaries(Multiaddr(data))
    assert len(data) in ends
    for cut in range(len(data)):
        if cut in ends:
            assert Multiaddr(data[:cut]).to_bytes() == data[:cut]
            continue
        with pytest.raises(AddressError):
            Multiaddr(data[:cut])


@pytest.mark.parametrize("data", ALL_VALID, ids=lambda d: d[:12].hex())
def test_every_single_byte_change_is_clean(data: bytes) -> None:
    """Flip each byte: either still a multiaddr that round-trips, or an AddressError."""
    for i in range(len(data)):
        for delta in (1, 0x80, 0xFF):
            mutated = data[:i] + bytes(((data[i] + delta) & 0xFF,)) + data[i + 1 :]
            try:
                addr = Multiaddr(mutated)
            except AddressError:
                continue
            assert Multiaddr(str(addr)).to_bytes() == mutated


@given(st.binary(max_size=80))
def test_random_bytes_only_address_error(data: bytes) -> None:
    try:
        addr = Multiaddr(data)
    except AddressError:
        return
    assert addr.to_bytes() == data
    assert Multiaddr(str(addr)).to_bytes() == data


@given(
    st.lists(st.sampled_from([*PROTOCOLS, "ipfs"]), min_size=1, max_size=6).flatmap(
        lambda names: st.tuples(
            st.just(names), st.lists(st.binary(max_size=40), min_size=len(names), max_size=len(names))
        )
    )
)
def test_random_components_only_address_error(case: tuple[list[str], list[bytes]]) -> None:
    """Known protocol codes with random values (and random lengths): never another exception."""
    names, values = case
    data = b"".join(
        _code_bytes(name)
        + (bytes((len(v),)) + v if PROTOCOLS["p2p" if name == "ipfs" else name].size == -1 else v)
        for name, v in zip(names, values, strict=True)
    )
    try:
        addr = Multiaddr(data)
    except AddressError:
        return
    assert Multiaddr(str(addr)).to_bytes() == data


def _code_bytes(name: str) -> bytes:
    code = PROTOCOLS["p2p" if name == "ipfs" else name].code
    out = bytearray()
    while code >= 0x80:
        out.append(code & 0x7F | 0x80)
        code >>= 7
    out.append(code)
    return bytes(out)


_SEGMENT = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=0, max_size=12)


@given(st.lists(st.one_of(st.sampled_from([*PROTOCOLS, "ipfs"]), _SEGMENT), max_size=8), st.booleans())
def test_random_text_only_address_error(segments: list[str], slash: bool) -> None:
    text = ("/" if slash else "") + "/".join(segments)
    try:
        addr = Multiaddr(text)
    except AddressError:
        return
    assert Multiaddr(addr.to_bytes()) == addr
    assert Multiaddr(str(addr)) == addr


@given(st.text(max_size=60))
def test_random_text_anything(text: str) -> None:
    try:
        Multiaddr(text)
    except AddressError:
        pass


# -- generated valid addresses: text -> bytes -> text, bytes -> text -> bytes ----------------------

_PORT = st.integers(0, 65535).map(str)
_NAME = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=20)


def _ip6_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    assert isinstance(ip, ipaddress.IPv6Address)
    return f"::ffff:{ip.ipv4_mapped}" if ip.ipv4_mapped else str(ip)


def _peer_text(data: bytes, sha: bool) -> str:
    if sha:
        return str(PeerId(b"\x12\x20" + hashlib.sha256(data).digest()))
    return str(PeerId(b"\x00\x24\x08\x01\x12\x20" + hashlib.sha256(data).digest()))


def _certhash_text(digest: bytes) -> str:
    return "u" + base64.urlsafe_b64encode(b"\x12" + bytes((len(digest),)) + digest).decode().rstrip("=")


_VALUE = {
    "ip4": st.ip_addresses(v=4).map(str),
    "ip6": st.ip_addresses(v=6).map(_ip6_text),
    "tcp": _PORT,
    "udp": _PORT,
    "dccp": _PORT,
    "sctp": _PORT,
    "ipcidr": st.integers(0, 255).map(str),
    "memory": st.integers(0, 2**64 - 1).map(str),
    "dns": _NAME,
    "dns4": _NAME,
    "dns6": _NAME,
    "dnsaddr": _NAME,
    "sni": _NAME,
    "ip6zone": _NAME,
    "unix": st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).map(
        lambda p: urllib.parse.quote(p, safe="-._~!$&'()*+,;=:@")
    ),
    "p2p": st.builds(_peer_text, st.binary(max_size=8), st.booleans()),
    "certhash": st.binary(max_size=40).map(_certhash_text),
    "onion": st.tuples(st.binary(min_size=10, max_size=10), st.integers(1, 65535)).map(
        lambda t: f"{base64.b32encode(t[0]).decode().lower()}:{t[1]}"
    ),
    "garlic32": st.binary(min_size=32, max_size=32).map(
        lambda b: base64.b32encode(b).decode().rstrip("=").lower()
    ),
}


def _component() -> st.SearchStrategy[str]:
    valueless = [n for n, p in PROTOCOLS.items() if p.size == 0]
    return st.one_of(
        st.sampled_from(valueless).map(lambda n: f"/{n}"),
        *[strategy.map(lambda v, n=name: f"/{n}/{v}") for name, strategy in _VALUE.items()],  # type: ignore[misc]
    )


@settings(max_examples=300)
@given(st.lists(_component(), min_size=1, max_size=6))
def test_generated_text_round_trips(components: list[str]) -> None:
    text = "".join(components)
    addr = Multiaddr(text)
    assert str(addr) == text
    data = addr.to_bytes()
    assert Multiaddr(data) == addr
    assert str(Multiaddr(data)) == text
    assert Multiaddr(str(Multiaddr(data))).to_bytes() == data
    assert [f"/{n}/{v}" if v else f"/{n}" for n, v in addr] == components


# -- the API ----------------------------------------------------------------------------------

ADDR = f"/ip4/127.0.0.1/tcp/4001/p2p/{ZERO_SEED_PEER_ID}"


def test_equality_and_hash_follow_the_binary_form() -> None:
    a = Multiaddr(ADDR)
    b = Multiaddr(_unhex("047f000001060fa1a50326002408011220" + ZERO_SEED_PUBKEY.hex()))
    assert a == b and hash(a) == hash(b)
    assert Multiaddr("/ip6/0::1") == Multiaddr("/ip6/::1")
    assert a != Multiaddr("/ip4/127.0.0.1/tcp/4001")
    assert a != ADDR  # a string is not a Multiaddr
    assert len({a, b, Multiaddr(a), Multiaddr("/ip4/127.0.0.1/tcp/4001")}) == 2
    assert Multiaddr(bytearray(a.to_bytes())) == a
    assert Multiaddr(memoryview(a.to_bytes())) == a


def test_immutable() -> None:
    a = Multiaddr(ADDR)
    with pytest.raises(AttributeError):
        a._bytes = b"\x04\x01\x02\x03\x04"
    with pytest.raises(AttributeError):
        a.anything = 1
    with pytest.raises(AttributeError):
        del a._bytes
    assert copy.copy(a) is a and copy.deepcopy(a) is a
    assert pickle.loads(pickle.dumps(a)) == a
    assert Multiaddr(a) == a


def test_repr_and_str() -> None:
    a = Multiaddr("/ip4/1.2.3.4/tcp/80")
    assert repr(a) == "Multiaddr('/ip4/1.2.3.4/tcp/80')"
    assert str(a) == "/ip4/1.2.3.4/tcp/80"
    assert f"{a}" == "/ip4/1.2.3.4/tcp/80"


def test_components() -> None:
    a = Multiaddr(ADDR + "/p2p-circuit/p2p/" + QM)
    assert a.protocols() == ("ip4", "tcp", "p2p", "p2p-circuit", "p2p")
    assert list(a) == [
        ("ip4", "127.0.0.1"),
        ("tcp", "4001"),
        ("p2p", ZERO_SEED_PEER_ID),
        ("p2p-circuit", ""),
        ("p2p", QM),
    ]
    assert a.value_for_protocol("ip4") == "127.0.0.1"
    assert a.value_for_protocol("p2p") == ZERO_SEED_PEER_ID  # the first occurrence
    assert a.value_for_protocol("ipfs") == ZERO_SEED_PEER_ID
    assert a.value_for_protocol("p2p-circuit") == ""
    assert a.value_for_protocol("udp") is None
    with pytest.raises(AddressError):
        a.value_for_protocol("nonsense")
    assert a.peer_id() == PeerId.from_string(QM)  # the last occurrence
    assert Multiaddr(ADDR).peer_id() == PeerId.from_string(ZERO_SEED_PEER_ID)
    assert Multiaddr("/ip4/1.2.3.4").peer_id() is None


def test_encapsulate() -> None:
    base = Multiaddr("/ip4/127.0.0.1/udp/1234")
    assert str(base.encapsulate("/udp/5678")) == "/ip4/127.0.0.1/udp/1234/udp/5678"
    assert base.encapsulate(Multiaddr("/quic-v1")) == Multiaddr("/ip4/127.0.0.1/udp/1234/quic-v1")
    assert base.encapsulate(Multiaddr("/quic-v1").to_bytes()) == Multiaddr("/ip4/127.0.0.1/udp/1234/quic-v1")
    with pytest.raises(AddressError):
        base.encapsulate("/udp/99999")
    with pytest.raises(AddressError):
        base.encapsulate("/dns/" + "a" * 1020)  # over the size limit together


# go-multiaddr TestDecapsulate: (left, right, expected; None = nothing left)
DECAPSULATE = [
    ("/ip4/1.2.3.4/tcp/1234", "/ip4/1.2.3.4", None),
    ("/ip4/1.2.3.4", "/ip4/1.2.3.4/tcp/1234", "/ip4/1.2.3.4"),
    ("/ip4/1.2.3.5/tcp/1234", "/ip4/5.3.2.1", "/ip4/1.2.3.5/tcp/1234"),
    ("/ip4/1.2.3.5/udp/1234/quic-v1", "/udp/1234", "/ip4/1.2.3.5"),
    ("/ip4/1.2.3.6/udp/1234/quic-v1", "/udp/1234/quic-v1", "/ip4/1.2.3.6"),
    ("/ip4/1.2.3.7/tcp/1234", "/ws", "/ip4/1.2.3.7/tcp/1234"),
    ("/dnsaddr/wss.com/tcp/4001", "/ws", "/dnsaddr/wss.com/tcp/4001"),
    ("/dnsaddr/wss.com/tcp/4001/ws", "/wss", "/dnsaddr/wss.com/tcp/4001/ws"),
    ("/dnsaddr/wss.com/ws", "/wss", "/dnsaddr/wss.com/ws"),
    ("/dnsaddr/wss.com/ws", "/dnsaddr/wss.com", None),
    ("/dnsaddr/wss.com/tcp/4001/wss", "/wss", "/dnsaddr/wss.com/tcp/4001"),
    # from the last occurrence
    ("/ip4/1.2.3.4/tcp/1/ip4/1.2.3.4/tcp/1/ws", "/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/1"),
    ("/ip4/1.2.3.4/tcp/1/p2p-circuit/tcp/2", "tcp", "/ip4/1.2.3.4/tcp/1/p2p-circuit"),
    (ADDR, "p2p", "/ip4/127.0.0.1/tcp/4001"),
    (ADDR, "/p2p", "/ip4/127.0.0.1/tcp/4001"),
    (ADDR, "ipfs", "/ip4/127.0.0.1/tcp/4001"),
    (ADDR, f"/p2p/{ZERO_SEED_PEER_ID}", "/ip4/127.0.0.1/tcp/4001"),
    (ADDR, f"/p2p/{QM}", ADDR),
    (ADDR, "tcp", "/ip4/127.0.0.1"),
    (ADDR, "udp", ADDR),
    (ADDR, "ip4", None),
]


@pytest.mark.parametrize(("left", "right", "expected"), DECAPSULATE)
def test_decapsulate(left: str, right: str, expected: str | None) -> None:
    addr = Multiaddr(left)
    if expected is None:
        with pytest.raises(AddressError):
            addr.decapsulate(right)
        return
    assert addr.decapsulate(right) == Multiaddr(expected)
    if right.startswith("/") and right.count("/") > 1:
        assert addr.decapsulate(Multiaddr(right)) == Multiaddr(expected)
        assert addr.decapsulate(Multiaddr(right).to_bytes()) == Multiaddr(expected)


def test_decapsulate_rejects_malformed() -> None:
    with pytest.raises(AddressError):
        Multiaddr(ADDR).decapsulate("nonsense")
    with pytest.raises(AddressError):
        Multiaddr(ADDR).decapsulate("/tcp/99999")


def test_size_limits() -> None:
    # a dns name that makes the binary form exactly the limit: 1 (code) + 2 (length varint) + name
    name = "a" * (MAX_MULTIADDR_SIZE - 3)
    at_limit = Multiaddr(f"/dns/{name}")
    assert len(at_limit.to_bytes()) == MAX_MULTIADDR_SIZE
    assert Multiaddr(at_limit.to_bytes()) == at_limit
    with pytest.raises(AddressError):
        Multiaddr(f"/dns/{name}a")
    with pytest.raises(AddressError):
        Multiaddr(at_limit.to_bytes() + b"\xc0\x03")  # + /tls


def test_wrong_types() -> None:
    for value in (None, 4, ["/ip4/1.2.3.4"]):
        with pytest.raises(AddressError):
            Multiaddr(value)  # type: ignore[arg-type]


def test_address_error() -> None:
    assert issubclass(AddressError, PhysarumError)
    assert issubclass(AddressError, ValueError)
    assert addr_module.AddressError is AddressError
    assert addr_module.Multiaddr is Multiaddr
    with pytest.raises(AddressError) as info:
        Multiaddr(b"\x04" * 3000)
    assert len(str(info.value)) < 400  # long garbage is not copied into the message whole


def test_protocol_table() -> None:
    """Codes from the multiformats multiaddr table (spot checks, and no code used twice)."""
    expected = {
        "ip4": 0x04, "tcp": 0x06, "dccp": 0x21, "ip6": 0x29, "ip6zone": 0x2A, "ipcidr": 0x2B, "dns": 0x35,
        "dns4": 0x36, "dns6": 0x37, "dnsaddr": 0x38, "sctp": 0x84, "udp": 0x0111, "p2p-webrtc-star": 0x0113,
        "p2p-webrtc-direct": 0x0114, "webrtc-direct": 0x0118, "webrtc": 0x0119, "p2p-circuit": 0x0122,
        "udt": 0x012D, "utp": 0x012E, "unix": 0x0190, "p2p": 0x01A5, "https": 0x01BB, "onion": 0x01BC,
        "onion3": 0x01BD, "garlic64": 0x01BE, "garlic32": 0x01BF, "tls": 0x01C0, "sni": 0x01C1,
        "noise": 0x01C6, "quic": 0x01CC, "quic-v1": 0x01CD, "webtransport": 0x01D1, "certhash": 0x01D2,
        "ws": 0x01DD, "wss": 0x01DE, "p2p-websocket-star": 0x01DF, "http": 0x01E0, "http-path": 0x01E1,
        "memory": 0x0309,
    }  # fmt: skip
    assert {name: p.code for name, p in PROTOCOLS.items()} == expected
    assert len({p.code for p in PROTOCOLS.values()}) == len(PROTOCOLS)
