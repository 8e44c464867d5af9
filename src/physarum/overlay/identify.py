"""``/ipfs/id/1.0.0`` and ``/ipfs/id/push/1.0.0``: who a peer is, what it speaks, where it listens.

``Identify{publicKey=1, listenAddrs=2, protocols=3, observedAddr=4, protocolVersion=5,
agentVersion=6, signedPeerRecord=8}``, sent uvarint-length-prefixed by the answering side,
which then closes the stream.

A message is at most :data:`MAX_MESSAGE` bytes, but what it says can still cost far more once
parsed (a 64 KiB message of one-byte protocols is 30,000 strings). :func:`trim` cuts a parsed
message down to :class:`IdentifyLimits` before anything keeps it; the peer store applies the same
limits to what it stores.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from physarum.errors import DecodeError, IncompleteError, PhysarumError
from physarum.overlay import addr as addrs_
from physarum.overlay import pb, varint
from physarum.overlay.envelope import EnvelopeError, EnvelopeFault, open_peer_record
from physarum.overlay.identity import PeerId, PublicKey
from physarum.overlay.multiaddr import AddressError, Multiaddr

log = logging.getLogger(__name__)

PROTOCOL_ID = "/ipfs/id/1.0.0"
PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"
MAX_MESSAGE = 64 * 1024
#: Distinct observed addresses :class:`ObservedAddrs` keeps by default.
MAX_OBSERVED_ADDRS = 32
#: Distinct peers that must report an address before :meth:`ObservedAddrs.confirmed` lists it
#: (go-libp2p's activation threshold is 4 too): one or two peers, mistaken or lying, are not enough.
OBSERVED_ADDR_THRESHOLD = 4


@dataclass(frozen=True)
class IdentifyLimits:
    """What is kept of a peer's identify message (see :func:`trim`); every field has a default.

    With these defaults one trimmed message retains at most about 115 KiB (measured with
    tracemalloc; :func:`retained_size` says 128 KiB) for 32 addresses of 256 bytes and 16
    components, 128 protocols of 256 bytes, the largest key and record; an honest one (5
    addresses, 20 protocols) about 3 KiB.
    """

    max_protocols: int = 128
    """Protocols kept per peer (js-libp2p and kubo announce 10-30); the first ones are kept."""
    max_protocol_length: int = 256
    """Longest protocol id kept, in UTF-8 bytes; longer ones are dropped, not cut (a cut id would
    name another protocol). Real ids are under 60 bytes."""
    max_listen_addrs: int = addrs_.MAX_ADDRS_PER_PEER
    """Listen addresses kept per peer, the first ones announced (go-libp2p keeps a similar bound)."""
    max_addr_length: int = addrs_.MAX_ADDR_SIZE
    """Longest address kept, in binary bytes (real ones are under 150, with two certificate
    hashes and a peer id); longer ones are dropped."""
    max_addr_components: int = addrs_.MAX_ADDR_COMPONENTS
    """Most components (``/ip4/..``, ``/tcp/..``) in a kept address: each costs about 70 bytes
    once parsed, so this bounds an address's memory as its length cannot. Real ones have under 10."""
    max_version_length: int = 256
    """Agent and protocol version strings are cut to this many characters."""
    max_public_key_length: int = 2048
    """A public key whose key bytes are longer is dropped (an RSA-8192 key is about 1,050)."""
    max_signed_record: int = 8 * 1024
    """A signed peer record envelope over this many bytes is dropped (go-libp2p caps a whole
    identify message carrying one at 8 KiB)."""


#: The limits :func:`trim` and the peer store apply by default.
DEFAULT_LIMITS = IdentifyLimits()


@dataclass
class IdentifyInfo:
    public_key: PublicKey | None = None
    listen_addrs: list[Multiaddr] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    observed_addr: Multiaddr | None = None
    protocol_version: str | None = None
    agent_version: str | None = None
    signed_peer_record: bytes | None = None


def encode(info: IdentifyInfo) -> bytes:
    """The protobuf body (without length prefix)."""
    fields: list[tuple[int, int | bytes | str | None]] = []
    if info.public_key is not None:
        fields.append((1, info.public_key.to_protobuf()))
    fields += [(2, a.to_bytes()) for a in info.listen_addrs]
    fields += [(3, p) for p in info.protocols]
    if info.observed_addr is not None:
        fields.append((4, info.observed_addr.to_bytes()))
    fields += [(5, info.protocol_version), (6, info.agent_version), (8, info.signed_peer_record)]
    return pb.encode(fields)


def _addr(raw: bytes) -> Multiaddr | None:
    try:
        return Multiaddr(raw)
    except AddressError:  # one unparseable address must not void the rest
        return None


def _text(raw: bytes) -> str:
    # Interned: a thousand peers announce the same protocol ids and agent, kept once (an interned
    # string still goes away with its last user).
    return sys.intern(raw.decode("utf-8", "replace"))


def decode(body: bytes, limits: IdentifyLimits | None = DEFAULT_LIMITS) -> IdentifyInfo:
    """Parse an Identify protobuf, cut to ``limits`` (see :func:`trim`; None: keep everything).

    Unparseable addresses are skipped. With limits, addresses and protocols past twice their
    limit are never parsed (room for a few duplicates or bad entries), so a message of 6,000
    addresses costs one pass over its bytes, not 6,000 multiaddrs.

    Raises:
        DecodeError: malformed protobuf or public key.
    """
    caps = None
    if limits is not None:
        caps = {2: 2 * limits.max_listen_addrs, 3: 2 * limits.max_protocols}
    fields = pb.decode(body, caps)
    info = IdentifyInfo()
    key = pb.get_bytes(fields, 1)
    if key:
        info.public_key = PublicKey.from_protobuf(key)
    info.listen_addrs = [a for a in map(_addr, pb.get_repeated_bytes(fields, 2)) if a is not None]
    info.protocols = [_text(p) for p in pb.get_repeated_bytes(fields, 3)]
    observed = pb.get_bytes(fields, 4)
    info.observed_addr = _addr(observed) if observed else None
    pv, av = pb.get_bytes(fields, 5), pb.get_bytes(fields, 6)
    info.protocol_version = _text(pv) if pv is not None else None
    info.agent_version = _text(av) if av is not None else None
    info.signed_peer_record = pb.get_bytes(fields, 8)
    return info if limits is None else trim(info, limits)


def decode_message(data: bytes, limits: IdentifyLimits | None = DEFAULT_LIMITS) -> IdentifyInfo:
    """Parse what a peer sent on an identify stream: length-prefixed, or (older peers) bare;
    cut to ``limits`` as :func:`decode` does.

    Raises:
        DecodeError: neither form parses.
    """
    try:
        length, pos = varint.decode(data)
        if pos + length == len(data):
            return decode(data[pos:], limits)
    except (DecodeError, IncompleteError):
        pass
    return decode(data, limits)


def addr_allowed(addr: Multiaddr, limits: IdentifyLimits = DEFAULT_LIMITS) -> bool:
    """Whether ``addr`` is within ``limits``' length and component bounds."""
    return addrs_.addr_allowed(addr, limits.max_addr_length, limits.max_addr_components)


def protocol_allowed(protocol: str, limits: IdentifyLimits = DEFAULT_LIMITS) -> bool:
    """Whether ``protocol`` is a non-empty id within ``limits.max_protocol_length`` UTF-8 bytes."""
    n = len(protocol)
    if n == 0 or n > limits.max_protocol_length:
        return False
    return protocol.isascii() or len(protocol.encode("utf-8", "replace")) <= limits.max_protocol_length


def bounded_addrs(
    addrs: Iterable[Multiaddr], limit: int, limits: IdentifyLimits = DEFAULT_LIMITS
) -> list[Multiaddr]:
    """The first ``limit`` distinct addresses of ``addrs`` that ``limits`` allow (linear)."""
    return list(
        addrs_.bounded_addrs(
            addrs, limit, max_size=limits.max_addr_length, max_components=limits.max_addr_components
        )
    )


def bounded_protocols(protocols: Iterable[str], limits: IdentifyLimits = DEFAULT_LIMITS) -> list[str]:
    """The first ``limits.max_protocols`` distinct allowed protocol ids of ``protocols`` (linear)."""
    out: dict[str, None] = {}
    for p in protocols:
        if len(out) >= limits.max_protocols:
            break
        if p not in out and protocol_allowed(p, limits):
            out[p] = None
    return list(out)


def bounded_text(text: str | None, limits: IdentifyLimits = DEFAULT_LIMITS) -> str | None:
    """``text`` cut to ``limits.max_version_length`` characters."""
    if text is None or len(text) <= limits.max_version_length:
        return text
    return text[: limits.max_version_length]


def trim(info: IdentifyInfo, limits: IdentifyLimits = DEFAULT_LIMITS) -> IdentifyInfo:
    """A copy of ``info`` cut to ``limits``: call it on every parsed message before keeping it.

    Keeps the first ``max_listen_addrs`` distinct addresses and ``max_protocols`` distinct
    protocols within their length limits, in the peer's order; cuts the version strings; drops
    an oversized observed address, public key or signed peer record. Linear in the message.
    """
    key = info.public_key
    if key is not None and len(key.data) > limits.max_public_key_length:
        key = None
    observed = info.observed_addr
    if observed is not None and not addr_allowed(observed, limits):
        observed = None
    record = info.signed_peer_record
    if record is not None and len(record) > limits.max_signed_record:
        record = None
    return dataclasses.replace(
        info,
        public_key=key,
        listen_addrs=bounded_addrs(info.listen_addrs, limits.max_listen_addrs, limits),
        protocols=bounded_protocols(info.protocols, limits),
        observed_addr=observed,
        protocol_version=bounded_text(info.protocol_version, limits),
        agent_version=bounded_text(info.agent_version, limits),
        signed_peer_record=record,
    )


# Approximate retained sizes (CPython 3.11, 64-bit, measured with tracemalloc): what keeping a
# value costs, including the object headers and the list slot that holds it.
_ADDR_BASE = 200  # the Multiaddr, its bytes object and parts tuple, the list slot
_ADDR_PER_COMPONENT = 72  # one (protocol, start, value start) tuple and its ints
_ADDR_PER_BYTE = 4  # the bytes, and the text form cached once it is printed


def addr_size(addr: Multiaddr) -> int:
    """About how many bytes keeping ``addr`` costs (an upper estimate)."""
    return _ADDR_BASE + _ADDR_PER_COMPONENT * len(addr.protocols()) + _ADDR_PER_BYTE * len(addr.to_bytes())


def text_size(text: str | None) -> int:
    """About how many bytes keeping ``text`` (in a list or an attribute) costs."""
    return 0 if text is None else sys.getsizeof(text) + 8


def retained_size(info: IdentifyInfo) -> int:
    """About how many bytes keeping ``info`` costs: what a memory budget should be charged."""
    size = 200  # the IdentifyInfo and its two lists
    size += sum(map(addr_size, info.listen_addrs)) + sum(map(text_size, info.protocols))
    if info.observed_addr is not None:
        size += addr_size(info.observed_addr)
    size += text_size(info.protocol_version) + text_size(info.agent_version)
    if info.public_key is not None:
        size += 100 + len(info.public_key.data)
    if info.signed_peer_record is not None:
        size += 40 + len(info.signed_peer_record)
    return size


def check_against(info: IdentifyInfo, peer_id: PeerId) -> IdentifyInfo:
    """Drop what ``peer_id`` could not have said: a key not its own, a peer record not its own.

    Raises:
        DecodeError: the public key is not the connection's peer.
    """
    if info.public_key is not None and info.public_key.peer_id() != peer_id:
        raise DecodeError(f"identify public key belongs to {info.public_key.peer_id()}, not {peer_id}")
    if info.signed_peer_record is not None:
        try:
            record = open_peer_record(info.signed_peer_record)
        except (EnvelopeError, PhysarumError) as e:
            # A record we cannot read (another format: rust-libp2p's identify sends its legacy
            # routing-state record) is routine; a forged one, or one naming another peer, is news.
            routine = isinstance(e, EnvelopeError) and e.fault is EnvelopeFault.MALFORMED
            log.log(
                logging.DEBUG if routine else logging.INFO,
                "identify: ignoring a bad signed peer record from %s: %s",
                peer_id,
                type(e).__name__,
            )
            info.signed_peer_record = None
        else:
            if record.peer_id != peer_id:
                log.info("identify: ignoring a signed peer record of %s sent by %s", record.peer_id, peer_id)
                info.signed_peer_record = None
    return info


class ObservedAddrs:
    """The addresses peers say they see us at (identify's ``observedAddr``), counted per peer.

    A pure data structure: one entry per observer (its latest report replaces the previous one),
    at most ``max_addrs`` distinct addresses. A new address beyond that evicts the one with the
    fewest observers (the least recently reported among equals), with its observers' entries, so
    a flood of distinct reports cannot grow it or displace an address many peers agree on.
    """

    def __init__(self, max_addrs: int = MAX_OBSERVED_ADDRS) -> None:
        self.max_addrs = max_addrs
        self._by_peer: dict[PeerId, Multiaddr] = {}
        # address -> its observers; the address order is recency of the last report
        self._observers: OrderedDict[Multiaddr, dict[PeerId, None]] = OrderedDict()

    def record(self, observer: PeerId, addr: Multiaddr) -> None:
        """``observer`` says it sees us at ``addr``."""
        self.forget(observer)
        observers = self._observers.get(addr)
        if observers is None:
            while self._observers and len(self._observers) >= self.max_addrs:
                self._evict()
            observers = self._observers[addr] = {}
        self._observers.move_to_end(addr)
        observers[observer] = None
        self._by_peer[observer] = addr

    def forget(self, observer: PeerId) -> None:
        """Drop ``observer``'s report (it disconnected)."""
        old = self._by_peer.pop(observer, None)
        if old is None:
            return
        observers = self._observers.get(old)
        if observers is not None:
            observers.pop(observer, None)
            if not observers:
                del self._observers[old]

    def _evict(self) -> None:
        fewest = min(self._observers, key=lambda a: len(self._observers[a]))  # first among equals: oldest
        for peer in self._observers.pop(fewest):
            self._by_peer.pop(peer, None)

    def counts(self) -> dict[Multiaddr, int]:
        """Every recorded address and how many distinct peers report it, most reported first."""
        ranked = sorted(self._observers.items(), key=lambda item: -len(item[1]))
        return {addr: len(observers) for addr, observers in ranked}

    def confirmed(self, min_observers: int = OBSERVED_ADDR_THRESHOLD) -> list[Multiaddr]:
        """Addresses reported by at least ``min_observers`` distinct peers, most reported first."""
        return [a for a, n in self.counts().items() if n >= min_observers]

    def __len__(self) -> int:
        return len(self._observers)
