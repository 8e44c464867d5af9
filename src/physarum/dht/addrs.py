"""Checking multiaddrs that arrive from the network, and reading the IP address out of one.

``multiaddr.Multiaddr(bytes)`` stores its argument without looking at it, and the library's own
``bytes_to_string`` accepts truncated values (it reads short and carries on). The DHT takes
addresses from untrusted peers and stores or forwards them, so :func:`parse_multiaddr_bytes` walks
the binary form itself: minimal varint protocol codes, known protocols, exact value lengths, and
each value accepted by the library's codec. Anything else is a :class:`DecodeError`.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from multiaddr import Multiaddr
from multiaddr.codecs import codec_by_name
from multiaddr.protocols import protocol_with_code

from physarum.errors import DecodeError, PhysarumError
from physarum.overlay import varint

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_P_IP4 = 0x04
_P_IP6 = 0x29

#: Longest binary multiaddr accepted from a peer; real ones are well under 100 bytes.
MAX_MULTIADDR_SIZE = 1024


def parse_multiaddr_bytes(data: bytes) -> Any:
    """Check a binary multiaddr and wrap it in a ``Multiaddr``.

    Raises:
        DecodeError: empty, too long, an unknown protocol, a truncated or malformed value.
    """
    if not data:
        raise DecodeError("empty multiaddr")
    if len(data) > MAX_MULTIADDR_SIZE:
        raise DecodeError(f"multiaddr of {len(data)} bytes exceeds {MAX_MULTIADDR_SIZE}")
    data = bytes(data)
    pos = 0
    end = len(data)
    try:
        while pos < end:
            code, pos = varint.decode(data, pos)
            try:
                proto = protocol_with_code(code)
            except Exception:
                # the registry signals an unknown code with its own exception type
                raise DecodeError(f"multiaddr names unknown protocol {code:#x}") from None
            if proto.codec is None:
                continue
            codec = codec_by_name(proto.codec)
            if codec.SIZE > 0:
                size = codec.SIZE // 8
            else:
                size, pos = varint.decode(data, pos)
            if pos + size > end:
                raise DecodeError(f"multiaddr value for {proto.name} is truncated")
            value = data[pos : pos + size]
            pos += size
            try:
                codec.to_string(proto, value)
            except Exception as e:
                # codecs raise whatever their helper libraries raise (ValueError, netaddr, base58...)
                raise DecodeError(f"multiaddr value for {proto.name} is invalid: {e}") from None
    except PhysarumError as e:
        if isinstance(e, DecodeError):
            raise
        raise DecodeError("multiaddr truncated inside a varint") from e
    return Multiaddr(data)


def parse_multiaddr_text(text: str) -> Any:
    """Parse a multiaddr's text form (``/ip4/1.2.3.4/tcp/4001``).

    Raises:
        DecodeError: not a multiaddr the ``multiaddr`` package (and :func:`parse_multiaddr_bytes`) accepts.
    """
    if not isinstance(text, str) or not text:
        raise DecodeError(f"not a multiaddr: {text!r}")
    try:
        addr = Multiaddr(text)
    except Exception as e:
        # the parser raises a mix of its own, ValueError and netaddr exceptions
        raise DecodeError(f"not a multiaddr: {text!r}: {e}") from None
    return parse_multiaddr_bytes(addr.to_bytes())


def ip_address_of(addr: Any) -> IPAddress | None:
    """The IP address a multiaddr starts with (``/ip4/...`` or ``/ip6/...``), else None.

    IPv4-mapped IPv6 addresses come back as IPv4. Never raises for a ``Multiaddr`` that passed
    :func:`parse_multiaddr_bytes`; for other input, returns None when the bytes do not fit.
    """
    data: bytes = addr.to_bytes()
    if len(data) >= 5 and data[0] == _P_IP4:
        return ipaddress.IPv4Address(data[1:5])
    if len(data) >= 17 and data[0] == _P_IP6:
        ip6 = ipaddress.IPv6Address(data[1:17])
        return ip6.ipv4_mapped or ip6
    return None
