"""An attacker's building blocks: physarum's own codecs, driven to send what an honest peer never would.

Everything here runs in the attacker's process (see ``_attacks.py``), never in the test's, so the
attacker's CPU does not slow down the test's own measurements. Targets are always 127.0.0.1; the
attacker's sockets may be bound to other loopback addresses (127.0.0.2 ... 127.0.0.254) to look like
other machines.
"""

from __future__ import annotations

import itertools
import resource
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from physarum.dht import messages as kad
from physarum.overlay import identify, multistream, noise, ping, varint, yamux
from physarum.overlay.identify import IdentifyInfo
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.streamio import BufferedStream
from physarum.overlay.yamux import YamuxSession, YamuxStream
from physarum.psk import protect

#: Where attackers pretend to come from: every loopback address but the honest peers' 127.0.0.1.
SOURCES = tuple(f"127.0.0.{i}" for i in range(2, 255))
#: Linux's IP_BIND_ADDRESS_NO_PORT: bind a source address now, pick the port at connect, so
#: thousands of short connections from one source do not run out of ports that bind() would reserve.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass(frozen=True)
class Target:
    """The node under attack (always on 127.0.0.1)."""

    host: str
    port: int
    peer_id: PeerId
    psk: bytes
    metrics_port: int


def raise_fd_limit() -> None:
    """Let this process hold as many sockets as the hard limit allows (attacks hold thousands)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def sources() -> Iterator[str]:
    """Source addresses in turn, for ever."""
    return itertools.cycle(SOURCES)


async def tcp_from(source: str, host: str, port: int) -> trio.SocketStream:
    """A TCP connection to ``host:port`` from the loopback address ``source``.

    Raises:
        OSError: the connection failed.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        await sock.bind((source, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def secure_channel(
    target: Target, key_pair: KeyPair, *, source: str = "127.0.0.2"
) -> tuple[noise.NoiseStream, bytes]:
    """Dial ``target`` from ``source`` and upgrade as far as yamux negotiation: pnet, Noise XX, the
    multistream choice of ``/yamux/1.0.0``. Returns the encrypted stream (no yamux session on it
    yet, so the caller may forge frames) and the bytes read ahead past the negotiation.

    Raises:
        OSError, trio.BrokenResourceError, PhysarumError: the node refused or hung up.
    """
    tcp = await tcp_from(source, target.host, target.port)
    try:
        buf = BufferedStream(await protect(tcp, target.psk))
        await multistream.select(buf, [noise.PROTOCOL_ID])
        secure = await noise.handshake(buf, key_pair, initiator=True, expected_peer=target.peer_id)
        buf2 = BufferedStream(secure)
        await multistream.select(buf2, [yamux.PROTOCOL_ID])
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return secure, buf2.take_buffer()


@dataclass
class Persona:
    """What an attacker's connection says and answers when the node asks (identify, ping, kad).

    ``protocols`` and ``listen_addrs`` go into its identify answer; kad FIND_NODE requests are
    answered with no peers; anything else is reset.
    """

    protocols: list[str] = field(default_factory=lambda: [identify.PROTOCOL_ID, ping.PROTOCOL_ID])
    listen_addrs: list[Multiaddr] = field(default_factory=list)
    #: Set once the node has read our identify answer (we sent it and closed our side).
    identified: trio.Event = field(default_factory=trio.Event)
    pings_answered: int = 0

    def identify_message(self, key_pair: KeyPair) -> bytes:
        info = IdentifyInfo(
            public_key=key_pair.public_key,
            listen_addrs=self.listen_addrs,
            protocols=self.protocols,
            protocol_version=identify.PROTOCOL_VERSION,
            agent_version="adversary/0",
        )
        body = identify.encode(info)
        return varint.encode(len(body)) + body


class Conn:
    """An attacker's connection with a running yamux session (it reads everything the node sends)."""

    def __init__(self, session: YamuxSession, key_pair: KeyPair, persona: Persona) -> None:
        self.session = session
        self.key_pair = key_pair
        self.persona = persona

    @property
    def closed(self) -> bool:
        return self.session.broken

    async def open(self, protocol: str) -> YamuxStream:
        """A new stream negotiated to ``protocol``.

        Raises:
            NegotiationError, LimitError, trio.BrokenResourceError.
        """
        stream = await self.session.open_stream()
        try:
            buf = BufferedStream(stream)
            await multistream.select(buf, [protocol])
            stream.unread(buf.take_buffer())
        except BaseException:
            stream.reset()
            raise
        return stream

    async def aclose(self) -> None:
        await self.session.aclose()


@asynccontextmanager
async def connect(
    target: Target,
    *,
    key_pair: KeyPair | None = None,
    persona: Persona | None = None,
    source: str = "127.0.0.2",
) -> AsyncIterator[Conn]:
    """A full, valid connection from a (fresh by default) identity, served by ``persona``; closed
    (TCP and all) when the block ends.

    Raises:
        OSError, trio.BrokenResourceError, PhysarumError: the node refused or hung up.
    """
    key_pair = key_pair or KeyPair.generate()
    persona = persona or Persona()
    secure, initial = await secure_channel(target, key_pair, source=source)
    async with trio.open_nursery() as nursery:
        session = YamuxSession(secure, is_client=True, peer_id=target.peer_id, initial=initial)
        conn = Conn(session, key_pair, persona)
        session.on_stream = lambda stream: nursery.start_soon(_serve, conn, stream)
        await nursery.start(session.run)
        try:
            yield conn
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(secure)


async def _serve(conn: Conn, stream: YamuxStream) -> None:
    persona = conn.persona
    try:
        with trio.fail_after(10):
            buf = BufferedStream(stream)
            proto = await multistream.handle(
                buf, persona.protocols.__contains__, lambda: list(persona.protocols)
            )
            stream.unread(buf.take_buffer())
        if proto == identify.PROTOCOL_ID:
            await stream.send_all(persona.identify_message(conn.key_pair))
            await stream.send_eof()
            persona.identified.set()
        elif proto == ping.PROTOCOL_ID:
            while len(data := await _receive_exactly(stream, ping.PING_SIZE)) == ping.PING_SIZE:
                await stream.send_all(data)
                persona.pings_answered += 1
        elif proto == kad.PROTOCOL_ID:
            request = kad.decode_message(
                await BufferedStream(stream).receive_length_prefixed(kad.MAX_MESSAGE_SIZE)
            )
            await stream.send_all(kad.encode_framed(kad.Message(request.type, key=request.key)))
            await stream.send_eof()
        else:
            stream.reset()
    except Exception:
        stream.reset()  # whatever the node did, an attacker does not care
    finally:
        await stream.aclose()


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def kad_request(
    conn: Conn, message: kad.Message, *, timeout: float = 10.0, max_reply: int = 64 * 1024 * 1024
) -> tuple[int, kad.Message | None]:
    """Send one kad request on a new stream and read one answer: ``(its size in bytes, decoded)``,
    ``(0, None)`` when the node reset or ended the stream instead of answering. (The node keeps a kad
    stream open for further requests after answering, so the answer is read by its length prefix.)

    Raises:
        trio.TooSlowError: no answer within ``timeout``.
    """
    with trio.fail_after(timeout):
        try:
            stream = await conn.open(kad.PROTOCOL_ID)
        except trio.BrokenResourceError:
            return 0, None
        try:
            await stream.send_all(kad.encode_framed(message))
            buf = BufferedStream(stream)
            raw = await buf.receive_length_prefixed(max_reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return 0, None
        finally:
            await stream.aclose()
    size = len(varint.encode(len(raw))) + len(raw)
    try:
        return size, kad.decode_message(raw)
    except Exception:
        return size, None


async def read_all(stream: trio.abc.ReceiveStream, limit: int = 64 * 1024 * 1024) -> bytes:
    """Everything the other side sends until it ends its side or resets (at most ``limit`` bytes)."""
    data = bytearray()
    try:
        while len(data) < limit and (chunk := await stream.receive_some(65536)):
            data += chunk
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return bytes(data)


def fake_addrs(n: int, *, port: int = 9, start: int = 0) -> list[Multiaddr]:
    """``n`` distinct TCP multiaddrs in 127.1.0.0/16 (loopback: should anyone dial them, nothing
    outside this machine is reached and nothing listens there)."""
    out = []
    for i in range(start, start + n):
        out.append(Multiaddr(f"/ip4/127.1.{(i // 250) % 250}.{i % 250 + 1}/tcp/{port + i // 62500}"))
    return out


def ping_flood_chunk(frames: int) -> bytes:
    """``frames`` yamux PING SYN frames back to back (each asks for a pong)."""
    return b"".join(yamux.encode_header(yamux.TYPE_PING, yamux.FLAG_SYN, 0, i) for i in range(frames))
