"""Multiaddrs: self-describing network addresses, in text (``/ip4/1.2.3.4/tcp/4001/p2p/12D3KooW...``)
and binary form (``<uvarint protocol code><value>...``), as libp2p sends them on the wire.

A pure codec, strict both ways: protocol codes are minimal uvarints from the table below (unknown
protocols are errors), fixed-size values have exactly their size, variable-size values carry an
exact uvarint length, and every value must decode (IP addresses, ports 0..65535, UTF-8 names without
``/``, peer ids, multihashes...). The binary form is capped at :data:`MAX_MULTIADDR_SIZE` bytes and the
text form at :data:`MAX_TEXT_SIZE` characters, so parsing untrusted input stays cheap; both parsers
are single passes over their input. Every failure is an :class:`AddressError`.

Protocol codes and value encodings follow the multiformats multiaddr table (multiformats/multiaddr
``protocols.csv`` and ``protocols/*.md``; the same codes as go-multiaddr, js-multiaddr and
rust-multiaddr). ``/unix`` and ``/http-path`` values are percent-encoded single path segments in
text form (multiaddr ``protocols/unix.md``, ``protocols/httppath.md``); ``/ipfs`` is read as ``/p2p``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NoReturn

import base58

from physarum.errors import PhysarumError
from physarum.overlay import varint
from physarum.overlay.identity import PeerId

__all__ = [
    "MAX_MULTIADDR_SIZE",
    "MAX_TEXT_SIZE",
    "PROTOCOLS",
    "VAR",
    "AddressError",
    "Multiaddr",
    "Protocol",
]

#: Longest binary multiaddr accepted (real ones are well under 100 bytes).
MAX_MULTIADDR_SIZE: Final = 1024
#: Longest text multiaddr accepted (room for percent-encoded values of a maximal binary form).
MAX_TEXT_SIZE: Final = 4 * MAX_MULTIADDR_SIZE
#: Longest text of one multibase/base58 value (peer ids and certificate hashes are under 100).
_MAX_ENCODED_VALUE = 512

#: ``Protocol.size`` of a value that is uvarint-length-prefixed.
VAR: Final = -1


class AddressError(PhysarumError, ValueError):
    """A multiaddr that is malformed or that physarum cannot dial or listen on.

    ``address`` is the input as given (text, bytes or a Multiaddr); ``reason`` says what is wrong.
    """

    def __init__(self, address: object, reason: str) -> None:
        super().__init__(f"bad multiaddr {_show(address)}: {reason}")
        self.address = address
        self.reason = reason


def _show(address: object) -> str:
    if isinstance(address, bytes | bytearray | memoryview):
        raw = bytes(address)
        return f"0x{raw[:64].hex()}{'...' if len(raw) > 64 else ''}"
    text = str(address)
    return repr(text if len(text) <= 200 else text[:200] + "...")


class _ValueError(Exception):
    """A value codec's complaint; the parser turns it into an AddressError naming the protocol."""


def _fail(reason: str) -> NoReturn:
    raise _ValueError(reason)


def _q(text: str) -> str:
    """``text`` quoted for an error reason, cut short when long."""
    return repr(text if len(text) <= 80 else text[:80] + "...")


# -- value codecs ------------------------------------------------------------------------------
# Each protocol with a value has ``to_bytes(text) -> bytes`` and ``to_text(bytes) -> str``; both
# raise _ValueError (or ValueError / PhysarumError from the helpers they call) when the value is
# malformed. ``to_text`` is also the validator of binary values.

_Codec = tuple[Callable[[str], bytes], Callable[[bytes], str]]

_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_B32_LOWER = re.compile(r"[a-z2-7]*")
_B32_UPPER = re.compile(r"[A-Z2-7]*")
_B36_LOWER = re.compile(r"[0-9a-z]*")
_B36_UPPER = re.compile(r"[0-9A-Z]*")
_B58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]*")
_B64_URL = re.compile(r"[A-Za-z0-9_-]*")
_B64_URL_PAD = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_B64_STD = re.compile(r"[A-Za-z0-9+/]*")
_B64_STD_PAD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64_I2P_PAD = re.compile(r"[A-Za-z0-9~-]*={0,2}")
_HEX_LOWER = re.compile(r"(?:[0-9a-f]{2})*")
_HEX_UPPER = re.compile(r"(?:[0-9A-F]{2})*")
_PERCENT = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
#: RFC 3986 ``pchar`` minus ``%``: what a path segment may hold unescaped (besides letters and digits).
_SEGMENT_SAFE = "-._~!$&'()*+,;=:@"


def _uint(text: str, limit: int, what: str) -> int:
    if len(text) > 20 or not _DECIMAL.fullmatch(text) or int(text) > limit:
        _fail(f"{_q(text)} is not a {what} (0..{limit})")
    return int(text)


def _port_to_bytes(text: str) -> bytes:
    return _uint(text, 0xFFFF, "port").to_bytes(2, "big")


def _port_to_text(raw: bytes) -> str:
    return str(int.from_bytes(raw, "big"))


def _ip4_to_bytes(text: str) -> bytes:
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        _fail(f"{_q(text)} is not an IPv4 address")


def _ip4_to_text(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _ip6_to_bytes(text: str) -> bytes:
    if "%" in text:  # ipaddress accepts a scope ("fe80::1%eth0"); multiaddrs put it in /ip6zone
        _fail(f"{_q(text)} is not an IPv6 address (a zone goes in /ip6zone/ZONE before /ip6)")
    try:
        return ipaddress.IPv6Address(text).packed
    except ValueError:
        _fail(f"{_q(text)} is not an IPv6 address")


def _ip6_to_text(raw: bytes) -> str:
    ip = ipaddress.IPv6Address(raw)
    mapped = ip.ipv4_mapped
    # Python before 3.13 prints IPv4-mapped addresses in hex; go and js print the dotted form.
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


def _cidr_to_bytes(text: str) -> bytes:
    return bytes((_uint(text, 0xFF, "prefix length"),))


def _cidr_to_text(raw: bytes) -> str:
    return str(raw[0])


def _uint64_to_bytes(text: str) -> bytes:
    return _uint(text, (1 << 64) - 1, "64-bit unsigned integer").to_bytes(8, "big")


def _uint64_to_text(raw: bytes) -> str:
    return str(int.from_bytes(raw, "big"))


def _name_to_bytes(text: str) -> bytes:
    # text values never hold "/": the parser split on it
    return text.encode("utf-8")


def _utf8(raw: bytes) -> str:
    if not raw:
        _fail("empty value")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        _fail(f"{raw[:64]!r} is not UTF-8")


def _name_to_text(raw: bytes) -> str:
    text = _utf8(raw)
    if "/" in text:
        _fail(f"{_q(text)} contains '/'")
    return text


def _path_to_bytes(text: str) -> bytes:
    if not _PERCENT.fullmatch(text):
        _fail(f"{_q(text)} has a '%' that is not followed by two hex digits")
    raw = urllib.parse.unquote_to_bytes(text)
    _path_to_text(raw)
    return raw


def _path_to_text(raw: bytes) -> str:
    return urllib.parse.quote(_utf8(raw), safe=_SEGMENT_SAFE)


_CODEC_LIBP2P_KEY = 0x72


def _peer_to_bytes(text: str) -> bytes:
    if len(text) > _MAX_ENCODED_VALUE:
        _fail(f"peer id of {len(text)} characters is too long")
    if text[:1] in ("1", "Q"):  # a base58btc multihash: 1... (identity) or Qm... (sha2-256)
        if not _B58.fullmatch(text):
            _fail(f"peer id {_q(text)} is not base58btc")
        return PeerId.from_string(text).to_bytes()
    # otherwise a CIDv1 with the libp2p-key codec, in any multibase (bafz..., k51...)
    raw = _multibase_decode(text)
    try:
        version, pos = varint.decode(raw)
        codec, pos = varint.decode(raw, pos)
    except PhysarumError:
        _fail(f"peer id {_q(text)} is neither base58btc nor a CID")
    if version != 1 or codec != _CODEC_LIBP2P_KEY:
        _fail(f"peer id {_q(text)} is not a CIDv1 with the libp2p-key codec")
    return PeerId.from_bytes(raw[pos:]).to_bytes()


def _peer_to_text(raw: bytes) -> str:
    return str(PeerId.from_bytes(raw))


def _multihash_check(raw: bytes) -> None:
    try:
        _code, pos = varint.decode(raw)
        length, pos = varint.decode(raw, pos)
    except PhysarumError:
        _fail("not a multihash")
    if len(raw) - pos != length:
        _fail(f"multihash says {length} bytes of digest but has {len(raw) - pos}")


def _certhash_to_bytes(text: str) -> bytes:
    raw = _multibase_decode(text)
    _multihash_check(raw)
    return raw


def _certhash_to_text(raw: bytes) -> str:
    _multihash_check(raw)
    return "u" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _multibase_decode(text: str) -> bytes:
    """Multibase text (prefix b/B base32, k/K base36, z base58btc, f/F hex, u/U base64url, m/M base64)."""
    if len(text) > _MAX_ENCODED_VALUE:
        _fail(f"multibase value of {len(text)} characters is too long")
    prefix, body = text[:1], text[1:]
    decoder = _MULTIBASE.get(prefix)
    if decoder is None:
        _fail(f"{_q(text)} is not multibase (unknown prefix {prefix!r})")
    pattern, decode = decoder
    if not pattern.fullmatch(body):
        _fail(f"{_q(text)} has characters outside its multibase alphabet")
    try:
        return decode(body)
    except (binascii.Error, ValueError):
        _fail(f"{_q(text)} is not valid multibase")


def _b32_nopad(body: str) -> bytes:
    return base64.b32decode(body.upper() + "=" * (-len(body) % 8))


def _b64_nopad(body: str, altchars: bytes) -> bytes:
    if len(body) % 4 == 1:
        raise ValueError("impossible base64 length")
    return base64.b64decode(body + "=" * (-len(body) % 4), altchars=altchars, validate=True)


def _b36(body: str) -> bytes:
    zeros = len(body) - len(body.lstrip("0"))
    rest = body[zeros:]
    value = int(rest, 36) if rest else 0
    return bytes(zeros) + (value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b"")


_MULTIBASE: dict[str, tuple[re.Pattern[str], Callable[[str], bytes]]] = {
    "b": (_B32_LOWER, _b32_nopad),
    "B": (_B32_UPPER, _b32_nopad),
    "k": (_B36_LOWER, _b36),
    "K": (_B36_UPPER, _b36),
    "z": (_B58, lambda body: base58.b58decode(body)),
    "f": (_HEX_LOWER, bytes.fromhex),
    "F": (_HEX_UPPER, bytes.fromhex),
    "u": (_B64_URL, lambda body: _b64_nopad(body, b"-_")),
    "U": (_B64_URL_PAD, lambda body: base64.b64decode(body, altchars=b"-_", validate=True)),
    "m": (_B64_STD, lambda body: _b64_nopad(body, b"+/")),
    "M": (_B64_STD_PAD, lambda body: base64.b64decode(body, validate=True)),
}


def _onion_codec(host_chars: int) -> _Codec:
    host_bytes = host_chars * 5 // 8

    def to_bytes(text: str) -> bytes:
        host, sep, port = text.partition(":")
        if not sep or len(host) != host_chars or not re.fullmatch(r"[A-Za-z2-7]*", host):
            _fail(f"{_q(text)} is not {host_chars} base32 characters, ':' and a port")
        number = _uint(port, 0xFFFF, "port")
        if number == 0:
            _fail("onion port 0")
        return base64.b32decode(host.upper()) + number.to_bytes(2, "big")

    def to_text(raw: bytes) -> str:
        port = int.from_bytes(raw[host_bytes:], "big")
        if port == 0:
            _fail("onion port 0")
        return f"{base64.b32encode(raw[:host_bytes]).decode('ascii').lower()}:{port}"

    return to_bytes, to_text


def _garlic64_to_bytes(text: str) -> bytes:
    if not _B64_I2P_PAD.fullmatch(text) or len(text) % 4:
        _fail("not I2P base64")
    try:
        raw = base64.b64decode(text, altchars=b"-~", validate=True)
    except binascii.Error:
        _fail("not I2P base64")
    _garlic64_to_text(raw)
    return raw


def _garlic64_to_text(raw: bytes) -> str:
    if len(raw) < 386:
        _fail(f"an I2P destination of {len(raw)} bytes is too short (at least 386)")
    return base64.b64encode(raw, altchars=b"-~").decode("ascii")


def _garlic32_to_bytes(text: str) -> bytes:
    if not _B32_LOWER.fullmatch(text) or len(text) % 8 in (1, 3, 6):
        _fail("not I2P base32")
    raw = _b32_nopad(text)
    _garlic32_to_text(raw)
    return raw


def _garlic32_to_text(raw: bytes) -> str:
    if len(raw) != 32 and len(raw) < 35:
        _fail(f"an I2P base32 address of {len(raw)} bytes (want 32, or at least 35)")
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


# -- the protocol table ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Protocol:
    """One multiaddr protocol: its code, name and value size in bytes (0: no value, VAR: length-prefixed)."""

    code: int
    name: str
    size: int
    to_bytes: Callable[[str], bytes] | None = None
    to_text: Callable[[bytes], str] | None = None

    @property
    def has_value(self) -> bool:
        return self.size != 0


def _p(code: int, name: str, size: int = 0, codec: _Codec | None = None) -> Protocol:
    if codec is None:
        return Protocol(code, name, size)
    return Protocol(code, name, size, codec[0], codec[1])


_PORT = (_port_to_bytes, _port_to_text)
_NAME = (_name_to_bytes, _name_to_text)
_PATH = (_path_to_bytes, _path_to_text)

_TABLE = (
    _p(0x04, "ip4", 4, (_ip4_to_bytes, _ip4_to_text)),
    _p(0x06, "tcp", 2, _PORT),
    _p(0x21, "dccp", 2, _PORT),
    _p(0x29, "ip6", 16, (_ip6_to_bytes, _ip6_to_text)),
    _p(0x2A, "ip6zone", VAR, _NAME),
    _p(0x2B, "ipcidr", 1, (_cidr_to_bytes, _cidr_to_text)),
    _p(0x35, "dns", VAR, _NAME),
    _p(0x36, "dns4", VAR, _NAME),
    _p(0x37, "dns6", VAR, _NAME),
    _p(0x38, "dnsaddr", VAR, _NAME),
    _p(0x84, "sctp", 2, _PORT),
    _p(0x0111, "udp", 2, _PORT),
    _p(0x0113, "p2p-webrtc-star"),
    _p(0x0114, "p2p-webrtc-direct"),
    _p(0x0118, "webrtc-direct"),
    _p(0x0119, "webrtc"),
    _p(0x0122, "p2p-circuit"),
    _p(0x012D, "udt"),
    _p(0x012E, "utp"),
    _p(0x0190, "unix", VAR, _PATH),
    _p(0x01A5, "p2p", VAR, (_peer_to_bytes, _peer_to_text)),
    _p(0x01BB, "https"),
    _p(0x01BC, "onion", 12, _onion_codec(16)),
    _p(0x01BD, "onion3", 37, _onion_codec(56)),
    _p(0x01BE, "garlic64", VAR, (_garlic64_to_bytes, _garlic64_to_text)),
    _p(0x01BF, "garlic32", VAR, (_garlic32_to_bytes, _garlic32_to_text)),
    _p(0x01C0, "tls"),
    _p(0x01C1, "sni", VAR, _NAME),
    _p(0x01C6, "noise"),
    _p(0x01CC, "quic"),
    _p(0x01CD, "quic-v1"),
    _p(0x01D1, "webtransport"),
    _p(0x01D2, "certhash", VAR, (_certhash_to_bytes, _certhash_to_text)),
    _p(0x01DD, "ws"),
    _p(0x01DE, "wss"),
    _p(0x01DF, "p2p-websocket-star"),
    _p(0x01E0, "http"),
    _p(0x01E1, "http-path", VAR, _PATH),
    _p(0x0309, "memory", 8, (_uint64_to_bytes, _uint64_to_text)),
)

#: Every known protocol by name (text input also takes ``ipfs`` for ``p2p``).
PROTOCOLS: Mapping[str, Protocol] = MappingProxyType({p.name: p for p in _TABLE})
_BY_NAME: dict[str, Protocol] = {**PROTOCOLS, "ipfs": PROTOCOLS["p2p"]}
_BY_CODE: dict[int, Protocol] = {p.code: p for p in _TABLE}
_CODE_PREFIX: dict[int, bytes] = {p.code: varint.encode(p.code) for p in _TABLE}
_P2P = PROTOCOLS["p2p"]


def _protocol_named(name: str, address: object) -> Protocol:
    proto = _BY_NAME.get(name)
    if proto is None:
        raise AddressError(address, f"unknown protocol {_q(name)}")
    return proto


# -- the address -------------------------------------------------------------------------------

#: One component: its protocol, where it starts in the binary form and where its value starts.
_Part = tuple[Protocol, int, int]


class Multiaddr:
    """An immutable, hashable multiaddr; equal to another when their binary forms are equal.

    ``Multiaddr(text_or_bytes_or_multiaddr)``; ``str()`` is the canonical text, ``to_bytes()`` the
    binary form; iterating yields ``(protocol name, value text)`` pairs (``""`` for protocols
    without a value).

    Raises:
        AddressError: malformed input, an unknown protocol, a bad value, or too long.
    """

    __slots__ = ("_bytes", "_parts", "_text")

    _bytes: bytes
    _parts: tuple[_Part, ...]
    _text: str | None

    def __init__(self, addr: str | bytes | bytearray | memoryview | Multiaddr) -> None:
        if isinstance(addr, Multiaddr):
            data, parts = addr._bytes, addr._parts
        elif isinstance(addr, str):
            data, parts = _parse_text(addr)
        elif isinstance(addr, bytes | bytearray | memoryview):
            data = bytes(addr)
            parts = _split(data, addr)
        else:
            raise AddressError(addr, f"want text or bytes, not {type(addr).__name__}")
        object.__setattr__(self, "_bytes", data)
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "_text", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Multiaddr is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Multiaddr is immutable")

    def __reduce__(self) -> tuple[type[Multiaddr], tuple[bytes]]:
        return (Multiaddr, (self._bytes,))

    def __copy__(self) -> Multiaddr:
        return self

    def __deepcopy__(self, memo: object) -> Multiaddr:
        return self

    # -- forms ---------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The binary form, as sent on the wire."""
        return self._bytes

    def __bytes__(self) -> bytes:
        return self._bytes

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = "".join(f"/{name}/{value}" if value else f"/{name}" for name, value in self)
            object.__setattr__(self, "_text", text)
        return text

    def __repr__(self) -> str:
        return f"Multiaddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Multiaddr):
            return self._bytes == other._bytes
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._bytes)

    # -- components ----------------------------------------------------------------------------

    def _value(self, i: int) -> bytes:
        start = self._parts[i][2]
        end = self._parts[i + 1][1] if i + 1 < len(self._parts) else len(self._bytes)
        return self._bytes[start:end]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for i, (proto, _start, _vstart) in enumerate(self._parts):
            if proto.to_text is None:
                yield proto.name, ""
            else:
                yield proto.name, proto.to_text(self._value(i))

    def protocols(self) -> tuple[str, ...]:
        """The protocol names, in order (``("ip4", "tcp", "p2p")``)."""
        return tuple(p.name for p, _, _ in self._parts)

    def value_for_protocol(self, name: str) -> str | None:
        """The value text of the first ``name`` component (``""`` if it has no value), None if absent.

        Raises:
            AddressError: ``name`` is not a known protocol.
        """
        proto = _protocol_named(name, self)
        for i, (p, _, _) in enumerate(self._parts):
            if p is proto:
                return "" if proto.to_text is None else proto.to_text(self._value(i))
        return None

    def peer_id(self) -> PeerId | None:
        """The peer id of the last ``/p2p`` component, or None."""
        for i in range(len(self._parts) - 1, -1, -1):
            if self._parts[i][0] is _P2P:
                return PeerId.from_bytes(self._value(i))
        return None

    def encapsulate(self, other: str | bytes | Multiaddr) -> Multiaddr:
        """``self`` followed by ``other``.

        Raises:
            AddressError: ``other`` is malformed, or the result exceeds the size limit.
        """
        tail = other if isinstance(other, Multiaddr) else Multiaddr(other)
        return Multiaddr(self._bytes + tail._bytes)

    def decapsulate(self, what: str | bytes | Multiaddr) -> Multiaddr:
        """``self`` cut before the last occurrence of ``what``: a protocol name (``"p2p"`` or
        ``"/p2p"``) or a multiaddr (its components, in a row). Unchanged when ``what`` is absent.

        Raises:
            AddressError: ``what`` is malformed, or nothing would be left.
        """
        parts = self._parts
        cut: int | None = None
        name = what.removeprefix("/") if isinstance(what, str) else None
        if name is not None and "/" not in name and name in _BY_NAME:
            proto = _BY_NAME[name]
            cut = next((i for i in range(len(parts) - 1, -1, -1) if parts[i][0] is proto), None)
        else:
            other = what if isinstance(what, Multiaddr) else Multiaddr(what)
            n = len(other._parts)
            for i in range(len(parts) - n, -1, -1):
                start = parts[i][1]
                end = parts[i + n][1] if i + n < len(parts) else len(self._bytes)
                if self._bytes[start:end] == other._bytes:
                    cut = i
                    break
        if cut is None:
            return self
        if cut == 0:
            raise AddressError(self, f"decapsulating {_show(what)} leaves nothing")
        return Multiaddr(self._bytes[: parts[cut][1]])


def _parse_text(text: str) -> tuple[bytes, tuple[_Part, ...]]:
    """Encode a text multiaddr and find its components (one pass over ``text``)."""
    if not text:
        raise AddressError(text, "empty")
    if len(text) > MAX_TEXT_SIZE:
        raise AddressError(text, f"text of {len(text)} characters exceeds {MAX_TEXT_SIZE}")
    if text[0] != "/":
        raise AddressError(text, "must start with '/'")
    segments = text[1:].split("/")
    if segments[-1] == "" and len(segments) > 1:
        segments.pop()  # one trailing slash is allowed, as go-multiaddr allows it
    out = bytearray()
    parts: list[_Part] = []
    i = 0
    while i < len(segments):
        name = segments[i]
        if not name:
            raise AddressError(text, "empty protocol name (a '//' or a lone '/')")
        proto = _protocol_named(name, text)
        if len(out) > MAX_MULTIADDR_SIZE:
            raise AddressError(text, f"binary form exceeds {MAX_MULTIADDR_SIZE} bytes")
        start = len(out)
        out += _CODE_PREFIX[proto.code]
        i += 1
        if proto.to_bytes is None:
            parts.append((proto, start, len(out)))
            continue
        if i >= len(segments):
            raise AddressError(text, f"/{proto.name} needs a value")
        value = segments[i]
        i += 1
        if not value:
            raise AddressError(text, f"/{proto.name} has an empty value")
        try:
            raw = proto.to_bytes(value)
        except (_ValueError, ValueError, PhysarumError) as e:
            raise AddressError(text, f"/{proto.name}: {_reason(e)}") from None
        if proto.size == VAR:
            out += varint.encode(len(raw))
        elif len(raw) != proto.size:  # pragma: no cover - the codecs produce exact sizes
            raise AddressError(text, f"/{proto.name}: value of {len(raw)} bytes, want {proto.size}")
        parts.append((proto, start, len(out)))
        out += raw
    if len(out) > MAX_MULTIADDR_SIZE:
        raise AddressError(text, f"binary form exceeds {MAX_MULTIADDR_SIZE} bytes")
    return bytes(out), tuple(parts)


def _split(data: bytes, address: object) -> tuple[_Part, ...]:
    """Check a binary multiaddr and find its components (one pass over ``data``)."""
    if not data:
        raise AddressError(address, "empty")
    if len(data) > MAX_MULTIADDR_SIZE:
        raise AddressError(address, f"{len(data)} bytes exceeds {MAX_MULTIADDR_SIZE}")
    parts: list[_Part] = []
    pos = 0
    end = len(data)
    while pos < end:
        start = pos
        try:
            code, pos = varint.decode(data, pos)
        except PhysarumError:
            raise AddressError(address, f"truncated or malformed protocol code at byte {start}") from None
        proto = _BY_CODE.get(code)
        if proto is None:
            raise AddressError(address, f"unknown protocol code {code:#x} at byte {start}")
        size = proto.size
        if size == VAR:
            try:
                size, pos = varint.decode(data, pos)
            except PhysarumError:
                raise AddressError(address, f"/{proto.name}: truncated or malformed value length") from None
        if end - pos < size:
            raise AddressError(
                address, f"/{proto.name}: value truncated ({size} bytes wanted, {end - pos} left)"
            )
        value_start = pos
        pos += size
        if proto.to_text is not None:
            try:
                proto.to_text(data[value_start:pos])
            except (_ValueError, ValueError, PhysarumError) as e:
                raise AddressError(address, f"/{proto.name}: {_reason(e)}") from None
        parts.append((proto, start, value_start))
    return tuple(parts)


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    return reason if isinstance(reason, str) else str(e)
