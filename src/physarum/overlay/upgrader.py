"""The upgrader: a transport's raw stream becomes a secure, multiplexed libp2p connection.

``pnet (XSalsa20, when the network has a key) -> multistream-select -> Noise or TLS 1.3 ->
multistream-select -> yamux``, each a small trio stream layer, as go-libp2p's ``Upgrader`` does over any transport.
The upgrader knows keys and the wire, not limits or connection bookkeeping: the host admits a
connection before calling it, bounds the time it takes, and registers what it returns.

What a failure says (the errors are the dialer's diagnosis, so they are chosen with care):

- pnet has no MAC, so another key (or none) shows up as a garbled multistream header, or as a peer
  that hangs up on our garbled one: :class:`~physarum.psk.PskMismatchError`.
- A peer that closes before sending a single byte refused us (at capacity, or not a libp2p node):
  :class:`~physarum.errors.RefusedError`, never a PSK mismatch.
- Inbound, a peer that sends nothing within ``first_byte_timeout`` loses its handshake slot early:
  :class:`FirstBytesTimeout`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import trio

from physarum.errors import ConfigError, NotMultistreamError, RefusedError, SelfDialError
from physarum.overlay import multistream, noise, tls, yamux
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.resources import MemoryBudget
from physarum.overlay.streamio import BufferedStream
from physarum.overlay.yamux import YamuxSession
from physarum.psk import NONCE_SIZE, PskMismatchError, PskStream, protect

#: Security protocols we offer, in order of preference (a dialer proposes them in turn; a listener
#: takes whichever the dialer proposes first): Noise, as every libp2p has, then TLS, which
#: go-libp2p and rust-libp2p also have and go-libp2p 0.9 (PhysarumSM's) offers first.
DEFAULT_SECURITY = (noise.PROTOCOL_ID, tls.PROTOCOL_ID)

#: What a peer without a pre-shared key sends first: multistream-select's header, in the clear.
PLAINTEXT_HEADER = multistream.encode(multistream.PROTOCOL_ID)


class FirstBytesTimeout(Exception):
    """An inbound peer sent nothing within ``first_byte_timeout``."""


class DialPhase:
    """How far an outbound upgrade got, for the message when the dial's deadline passes."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.name = "tcp"
        self.raw: trio.abc.Stream | None = None

    @property
    def heard(self) -> bool:
        """Whether the peer sent anything (with a PSK: any of its nonce)."""
        return getattr(self.raw, "nonce_bytes_received", 1) > 0


class Upgrader:
    """Upgrades raw streams for one identity in one network.

    ``psk``: the private network's key (None: no pnet). ``first_byte_timeout``: how long an inbound
    peer may stay silent before it loses its slot. ``max_streams``: yamux streams per connection.
    ``peer_memory``: the memory budget a peer's yamux buffers are charged to. ``security``: the
    security protocols offered, in order of preference (:data:`DEFAULT_SECURITY`; any of
    ``/noise`` and ``/tls/1.0.0``).

    Raises:
        ConfigError: ``security`` is empty or names a protocol physarum does not have.
    """

    def __init__(
        self,
        key_pair: KeyPair,
        psk: bytes | None,
        *,
        first_byte_timeout: float,
        max_streams: int,
        peer_memory: Callable[[PeerId], MemoryBudget] | None = None,
        security: Sequence[str] = DEFAULT_SECURITY,
    ) -> None:
        unknown = [s for s in security if s not in DEFAULT_SECURITY]
        if not security or unknown:
            raise ConfigError(f"security protocols are some of {', '.join(DEFAULT_SECURITY)}; got {list(security)}")
        self.security = tuple(security)
        self.key_pair = key_pair
        self.peer_id = key_pair.peer_id
        self.psk = psk
        self.first_byte_timeout = first_byte_timeout
        self.max_streams = max_streams
        self.peer_memory = peer_memory

    async def upgrade(
        self,
        stream: trio.abc.Stream,
        *,
        initiator: bool,
        expected: PeerId | None,
        remote: Multiaddr,
        phase: DialPhase | None = None,
    ) -> YamuxSession:
        """The yamux session over ``stream`` once pnet, Noise and yamux are negotiated (the session
        is not running yet; its ``peer_id`` is the proven remote identity).

        Raises:
            PskMismatchError: the peer is in another private network, or in none.
            RefusedError: the peer closed before sending anything.
            FirstBytesTimeout: inbound, the peer stayed silent.
            SelfDialError: the remote is ourselves.
            NegotiationError, NoiseError, PeerIdMismatchError, DecodeError: the handshake failed.
            trio.BrokenResourceError: the connection broke.
        """
        raw: trio.abc.Stream
        greeted = False
        if self.psk is None:
            raw = stream
            first = b""
            if not initiator:
                # Our header goes out first, as multistream-select's listener always sends it: a
                # dialer with a key reads it as a garbled nonce and names the mismatch.
                await stream.send_all(PLAINTEXT_HEADER)
                greeted = True
                first = await self._first_bytes(stream, 4096)
                if not first:
                    raise trio.BrokenResourceError("the peer closed the connection at once")
        else:
            first = b"" if initiator else await self._first_bytes(stream, NONCE_SIZE)
            if first and PLAINTEXT_HEADER.startswith(first[: len(PLAINTEXT_HEADER)]):
                # A libp2p node without our key opens with multistream in the clear; a nonce (24
                # random bytes) starts this way with probability 2^-160. No need to wait for more,
                # nor to set up a cipher (~170 us, and floods of these come fast): 24 random bytes
                # look like our nonce to it, and its garbled view of them tells it (as our
                # PskMismatchError) that it is outside the network.
                await stream.send_all(os.urandom(NONCE_SIZE))
                raise PskMismatchError(
                    "the peer speaks multistream-select in the clear: it uses no pre-shared key",
                    address=str(remote),
                    no_psk=True,
                )
            # Our nonce goes out here.
            raw = await protect(stream, self.psk, received=first)
            first = b""
        buf = BufferedStream(raw, first)
        if phase is not None:
            phase.name, phase.raw = "header", raw
        try:
            offered = self.security
            if initiator:
                chosen = await multistream.select(buf, offered)
            else:
                chosen = await multistream.handle(buf, offered.__contains__, lambda: list(offered), greeted=greeted)
        except (NotMultistreamError, trio.BrokenResourceError) as e:
            if initiator and _closed_before_first_byte(e, raw, buf):
                raise RefusedError(
                    "the peer closed the connection before sending anything: it is at capacity or"
                    " refusing connections from us, or is not a libp2p node",
                    address=str(remote),
                ) from e
            # pnet has no MAC: another key (or none) shows up as a garbled header or a peer
            # that hangs up on our garbled one.
            if self.psk is not None:
                raise PskMismatchError(peer_id=expected, address=str(remote)) from e
            if isinstance(e, NotMultistreamError):
                # The mirror image: we have no key and the peer's first bytes are garbage, which
                # is what a peer in a private network sends us (its nonce, then ciphertext).
                raise PskMismatchError(
                    "the peer does not speak multistream-select in the clear: it is probably in a"
                    " private network (uses a pre-shared key) and we are not",
                    peer_id=expected,
                    address=str(remote),
                ) from e
            raise
        if phase is not None:
            phase.name = "noise" if chosen == noise.PROTOCOL_ID else "tls"
        secure: noise.NoiseStream | tls.TlsStream
        if chosen == tls.PROTOCOL_ID:
            secure = await tls.handshake(buf, self.key_pair, initiator=initiator, expected_peer=expected)
        else:
            secure = await noise.handshake(buf, self.key_pair, initiator=initiator, expected_peer=expected)
        peer_id = secure.remote_peer
        if peer_id == self.peer_id:
            raise SelfDialError("the remote is ourselves", address=str(remote))
        buf2 = BufferedStream(secure)
        if initiator:
            await multistream.select(buf2, [yamux.PROTOCOL_ID])
        else:
            await multistream.handle(buf2, yamux.PROTOCOL_ID.__eq__, lambda: [yamux.PROTOCOL_ID])
        return YamuxSession(
            secure,
            is_client=initiator,
            max_streams=self.max_streams,
            peer_id=peer_id,
            initial=buf2.take_buffer(),
            memory=self.peer_memory(peer_id) if self.peer_memory is not None else None,
        )

    async def _first_bytes(self, stream: trio.abc.Stream, max_bytes: int) -> bytes:
        """What an inbound peer sends first, within ``first_byte_timeout``."""
        with trio.move_on_after(self.first_byte_timeout):
            return bytes(await stream.receive_some(max_bytes))
        raise FirstBytesTimeout


def _closed_before_first_byte(e: BaseException, raw: trio.abc.Stream, buf: BufferedStream) -> bool:
    """Whether the peer closed the connection without sending a single byte."""
    if not isinstance(e, trio.BrokenResourceError):
        return False
    if isinstance(raw, PskStream):
        return raw.nonce_bytes_received == 0
    return buf.received == 0


__all__ = ["PLAINTEXT_HEADER", "DialPhase", "FirstBytesTimeout", "Upgrader"]
