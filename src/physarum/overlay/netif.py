"""This machine's interface addresses, per family, found without sending a packet.

What a host bound to a wildcard (``0.0.0.0`` / ``::``) advertises comes from here. Resolving
``gethostname()`` is not enough: on many machines it gives ``127.0.1.1`` or ``127.0.0.1`` while
eth0 has the address peers can reach.

- Linux, IPv4: ``SIOCGIFCONF`` on a datagram socket (no packet is sent; the socket is never
  connected) lists every address with its interface label; ``SIOCGIFFLAGS`` drops interfaces
  that are down.
- Linux, IPv6: ``/proc/net/if_inet6`` (address, interface index, prefix, scope, flags, name);
  addresses whose duplicate-address detection failed are dropped.
- Elsewhere, or when those sources fail: ``getaddrinfo(gethostname())`` plus the loopback address.

No third-party package, no ``ip`` binary, no UDP "connect to a public address" trick.
:func:`select_advertised` applies the advertising rule and :class:`InterfaceCache` keeps the list
for a few seconds, so a host does not enumerate interfaces for every identify message.
"""

from __future__ import annotations

import array
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Linux ioctls and flags (linux/sockios.h, linux/if.h, linux/if_addr.h).
_SIOCGIFCONF = 0x8912
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFNAMSIZ = 16
_IFA_F_DADFAILED = 0x08
_IF_INET6 = "/proc/net/if_inet6"

#: How long :class:`InterfaceCache` trusts a listing, in seconds, unless told otherwise.
DEFAULT_MAX_AGE = 5.0


@dataclass(frozen=True)
class InterfaceAddress:
    """One address of this machine: ``interface`` is its name (``""`` when the source does not say)."""

    interface: str
    ip: IPAddress

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.ip.version == 6 else socket.AF_INET


def interface_addresses(family: int | None = None) -> list[InterfaceAddress]:
    """Every address of this machine's interfaces that are up, of ``family`` (AF_INET, AF_INET6,
    or None for both), loopback included, in the kernel's order and without duplicates.

    Never raises: a source that fails is logged at debug level and the next one is used.
    """
    out: list[InterfaceAddress] = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        if family is not None and fam != family:
            continue
        found: list[InterfaceAddress] = []
        if sys.platform.startswith("linux"):
            try:
                found = _linux_ipv4() if fam == socket.AF_INET else _linux_ipv6()
            except (OSError, ValueError, struct.error) as e:
                log.debug("listing %s interface addresses failed: %s", _family_name(fam), e)
        if not found:
            found = _from_hostname(fam)
        out += found
    return list(dict.fromkeys(out))


def select_advertised(addresses: Iterable[InterfaceAddress | IPAddress]) -> list[IPAddress]:
    """The addresses a host bound to a wildcard advertises, in order, without duplicates.

    Every address that is neither loopback nor link-local, nor unspecified or multicast. IPv6
    link-local addresses are never chosen (dialing one needs a zone, ``%eth0``, that the peer
    cannot know). When no other address exists, IPv4 link-local ones (169.254/16, which need no
    zone) are used, and failing those the loopback addresses, so a machine with no network
    still advertises something its own processes can dial.
    """
    ips = list(dict.fromkeys(a.ip if isinstance(a, InterfaceAddress) else a for a in addresses))
    ips = [ip for ip in ips if not (ip.is_unspecified or ip.is_multicast)]
    routable = [ip for ip in ips if not (ip.is_loopback or ip.is_link_local)]
    if routable:
        return routable
    link_local4: list[IPAddress] = [ip for ip in ips if ip.version == 4 and ip.is_link_local]
    if link_local4:
        return link_local4
    return [ip for ip in ips if ip.is_loopback]


class InterfaceCache:
    """:func:`interface_addresses` remembered for ``max_age`` seconds, per family.

    ``now`` is passed in by the caller (the host uses ``trio.current_time()``); ``source`` is the
    listing function (default: this module's :func:`interface_addresses`, looked up at each call).
    """

    def __init__(
        self,
        max_age: float = DEFAULT_MAX_AGE,
        source: Callable[[int], list[InterfaceAddress]] | None = None,
    ) -> None:
        self.max_age = max_age
        self._source = source
        self._entries: dict[int, tuple[float, list[InterfaceAddress]]] = {}

    def get(self, family: int, now: float) -> list[InterfaceAddress]:
        entry = self._entries.get(family)
        if entry is None or not (entry[0] <= now < entry[0] + self.max_age):
            source = self._source or interface_addresses
            entry = (now, source(family))
            self._entries[family] = entry
        return list(entry[1])

    def clear(self) -> None:
        self._entries.clear()


# -- sources ---------------------------------------------------------------------------------------


def _ifreq_size() -> int:
    # struct ifreq: IFNAMSIZ bytes of name, then a union whose largest member is struct ifmap
    # (two unsigned longs, an unsigned short and three chars): 24 bytes on LP64, 16 on ILP32.
    return _IFNAMSIZ + (24 if struct.calcsize("P") == 8 else 16)


def _linux_ipv4() -> list[InterfaceAddress]:
    import fcntl

    size = _ifreq_size()
    out: list[InterfaceAddress] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        capacity = 32
        while True:
            buf = array.array("B", bytes(capacity * size))
            pointer, _ = buf.buffer_info()
            # struct ifconf {int ifc_len; char *ifc_buf;}: the kernel fills buf and sets ifc_len.
            result = fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, struct.pack("iP", len(buf), pointer))
            used = struct.unpack("iP", result)[0]
            if used + size <= len(buf) or capacity >= 65536:
                break  # room to spare: nothing was cut off
            capacity *= 2
        data = buf.tobytes()[:used]
        up: dict[str, bool] = {}
        for offset in range(0, used - size + 1, size):
            label = data[offset : offset + _IFNAMSIZ].split(b"\0", 1)[0].decode("ascii", "replace")
            sa_family = struct.unpack_from("H", data, offset + _IFNAMSIZ)[0]
            if sa_family != socket.AF_INET:
                continue
            # struct sockaddr_in: family (2), port (2), address (4).
            start = offset + _IFNAMSIZ + 4
            ip = ipaddress.IPv4Address(data[start : start + 4])
            name = label.split(":", 1)[0]  # "eth0:1" is an alias label of eth0
            if name not in up:
                up[name] = _is_up(sock, name)
            if up[name]:
                out.append(InterfaceAddress(name, ip))
    return out


def _is_up(sock: socket.socket, name: str) -> bool:
    import fcntl

    request = struct.pack(f"{_IFNAMSIZ}sH", name.encode("ascii", "replace"), 0).ljust(_ifreq_size(), b"\0")
    try:
        result = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
    except OSError:
        return True  # cannot tell: keep the address
    flags = struct.unpack_from("H", result, _IFNAMSIZ)[0]
    return bool(flags & _IFF_UP)


def _linux_ipv6() -> list[InterfaceAddress]:
    out: list[InterfaceAddress] = []
    with open(_IF_INET6, encoding="ascii") as f:
        text = f.read()
    names = {name for _, name in socket.if_nameindex()}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        up: dict[str, bool] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 6 or len(parts[0]) != 32:
                continue
            hex_addr, _index, _prefix, _scope, flags, name = parts
            if int(flags, 16) & _IFA_F_DADFAILED:
                continue
            if name in names and name not in up:
                up[name] = _is_up(sock, name)
            if not up.get(name, True):
                continue
            out.append(InterfaceAddress(name, ipaddress.IPv6Address(bytes.fromhex(hex_addr))))
    return out


def _from_hostname(family: int) -> list[InterfaceAddress]:
    """The portable fallback: what the host name resolves to, and loopback."""
    loopback = ipaddress.ip_address("::1" if family == socket.AF_INET6 else "127.0.0.1")
    out = [InterfaceAddress("", loopback)]
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, family)
    except (OSError, UnicodeError):
        infos = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        out.append(InterfaceAddress("", ip))
    return list(dict.fromkeys(out))


def _family_name(family: int) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"


__all__ = [
    "DEFAULT_MAX_AGE",
    "IPAddress",
    "InterfaceAddress",
    "InterfaceCache",
    "interface_addresses",
    "select_advertised",
]
