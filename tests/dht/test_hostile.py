"""The DHT under hostile peers (issue 11): what one peer's input can make a node do or hold.

Addresses are handled in linear time and capped at 32 per peer wherever they arrive; requests
are capped in size and key length, reserved from the peer's memory budget while read, and must
arrive whole in time; records and providers have quotas that throwaway identities cannot exhaust,
and an established publisher keeps its place among them. Memory streams and autojump clocks only.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from physarum.dht import maintenance as maintenance_mod
from physarum.dht.addrs import MAX_ADDRS_PER_PEER, bounded_addrs
from physarum.dht.memory import MemoryNetwork
from physarum.dht.messages import (
    ConnectionType,
    Message,
    MessageType,
    Peer,
    Record,
    decode_message,
    encode_framed,
    encode_message,
)
from physarum.dht.records import (
    ContactRecord,
    encode_record_set,
    new_expiry,
    record_key,
    sign_record,
    verify_record,
)
from physarum.dht.service import PROTOCOL_ID, KadDHT
from physarum.overlay import varint
from physarum.overlay.identify import IdentifyInfo
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.resources import MemoryBudget
from tests.dht._util import random_peer_id


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def many_addrs(n: int, proto: str = "tcp") -> list[Multiaddr]:
    return [Multiaddr(f"/ip4/10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/{proto}/4001") for i in range(n)]


# ---- a host that only identifies peers (what KadDHT.for_host reads) ----


class _PeerStore:
    def add_addrs(self, peer_id: PeerId, addrs: list[Multiaddr]) -> None:
        pass

    def addrs(self, peer_id: PeerId) -> list[Multiaddr]:
        return []


@dataclass
class _Session:
    closed: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Conn:
    peer_id: PeerId
    identify_info: IdentifyInfo | None
    identified: trio.Event = field(default_factory=trio.Event)
    remote_addr: Multiaddr = field(default_factory=lambda: Multiaddr("/ip4/127.0.0.1/tcp/9"))
    is_closed: bool = False
    session: _Session = field(default_factory=_Session)


class _Host:
    def __init__(self) -> None:
        self.key_pair = KeyPair(bytes([42]) * 32)
        self.peerstore = _PeerStore()
        self.on_identify: list[Callable[[_Conn], None]] = []
        self.connections: Mapping[PeerId, Sequence[_Conn]] = {}
        self.handlers: dict[str, object] = {}

    def connection(self, peer_id: PeerId) -> None:
        return None

    async def connect(self, target: Multiaddr, *, timeout: float) -> _Conn:
        raise OSError("no network here")

    async def new_stream(self, peer: PeerId, protocols: Sequence[str]) -> trio.abc.HalfCloseableStream:
        raise OSError("no network here")

    async def ping(self, peer: PeerId) -> list[float]:
        raise OSError("no network here")

    def set_handler(self, protocol: str, handler: object) -> None:
        self.handlers[protocol] = handler

    def advertised_addrs(self) -> list[Multiaddr]:
        return [Multiaddr("/ip4/127.0.0.1/tcp/4001")]


class _Counting:
    """Counts calls of a function it wraps."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


async def test_peers_announcing_thousands_of_addresses_cost_linear_work_and_keep_32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 peers announcing kad and 6,300 addresses each stalled the loop ~17 s (pairwise dedup) and
    made a 37-byte FIND_NODE answer 1.07 MB. Now each costs a bounded number of parses and
    comparisons, and contacts and answers hold 32 addresses per peer."""
    parses = _Counting(maintenance_mod.parse_multiaddr_bytes)
    monkeypatch.setattr(maintenance_mod, "parse_multiaddr_bytes", parses)
    comparisons = _Counting(Multiaddr.__eq__)

    def counted_eq(self: Multiaddr, other: object) -> bool:
        return comparisons(self, other)  # type: ignore[no-any-return]

    monkeypatch.setattr(Multiaddr, "__eq__", counted_eq)
    host = _Host()
    dht = KadDHT.for_host(host)
    rng = random.Random(1)
    announced = many_addrs(6300)

    peers = [random_peer_id(rng) for _ in range(20)]
    for peer in peers:
        dht.maintenance.on_identify(_Conn(peer, IdentifyInfo(listen_addrs=announced, protocols=[PROTOCOL_ID])))
    # It stops reading at 32: the rest of what was announced costs nothing at all.
    assert parses.calls == 20 * MAX_ADDRS_PER_PEER
    assert comparisons.calls <= 20 * MAX_ADDRS_PER_PEER
    for peer in peers:
        contact = dht.table.get(peer)
        assert contact is not None and contact.addrs == tuple(announced[:MAX_ADDRS_PER_PEER])

    # Addresses it cannot use (not TCP), then repeats: each read once, nothing pairwise.
    parses.calls = comparisons.calls = 0
    useless = many_addrs(6300, "udp")
    repeated = [announced[0]] * 6300
    odd = random_peer_id(rng)
    dht.maintenance.on_identify(_Conn(odd, IdentifyInfo(listen_addrs=useless + repeated, protocols=[PROTOCOL_ID])))
    assert parses.calls <= len(useless) + 1  # each address at most once, the repeated one once
    assert comparisons.calls <= len(useless) + len(repeated)
    odd_contact = dht.table.get(odd)
    assert odd_contact is not None and odd_contact.addrs == (announced[0],)

    # What we answer is bounded: k peers of at most 32 addresses (the issue measured 1.07 MB).
    reply = dht.rpc(None, Message(MessageType.FIND_NODE, key=rng.randbytes(32)))
    assert reply is not None and len(reply.closer_peers) == 20
    assert all(len(p.addrs) <= MAX_ADDRS_PER_PEER for p in reply.closer_peers)
    assert len(encode_message(reply)) < 20 * (64 + MAX_ADDRS_PER_PEER * 12)


async def test_answers_naming_peers_with_thousands_of_addresses_are_cut_to_32(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An answer of up to 4 MiB may name one peer hundreds of times with a thousand addresses:
    decoding keeps 256 entries of 32 addresses, the lookup k, the table 32 per contact."""
    net = MemoryNetwork(codec=True)
    rng = random.Random(2)
    me, other = KeyPair(rng.randbytes(32)), KeyPair(rng.randbytes(32))
    node = KadDHT(me, net.transport(me.peer_id))
    net.nodes[me.peer_id] = node
    net.nodes[other.peer_id] = KadDHT(other, net.transport(other.peer_id))
    liar_id = random_peer_id(rng)
    addrs = tuple(many_addrs(1200))  # 300 entries of these: just under 4 MiB
    answer = Message(
        MessageType.FIND_NODE, closer_peers=(Peer(other.peer_id, addrs, ConnectionType.CAN_CONNECT),) * 300
    )
    decoded = decode_message(encode_message(answer))
    assert len(decoded.closer_peers) == 256
    assert all(len(p.addrs) == MAX_ADDRS_PER_PEER for p in decoded.closer_peers)

    class Liar:
        def rpc(self, sender: PeerId | None, request: Message) -> Message:
            return Message(request.type, key=request.key, closer_peers=answer.closer_peers)

    net.nodes[liar_id] = Liar()
    node.add_peer(liar_id, [net.addr_of(liar_id)])
    result = await node.lookup(b"anything", timeout=30)
    assert {p.peer_id for p in result.peers} == {liar_id, other.peer_id}
    assert all(len(p.addrs) <= MAX_ADDRS_PER_PEER for p in result.peers)
    contact = node.table.get(other.peer_id)
    assert contact is not None and contact.addrs == addrs[:MAX_ADDRS_PER_PEER]


# ---- inbound requests: size, keys, memory, time ----


class _Stream:
    """The server side of a kad stream: a memory stream with what the handler reads of a yamux one."""

    def __init__(self, stream: trio.abc.Stream, peer_id: PeerId, budget: MemoryBudget | None) -> None:
        self.stream = stream
        self.peer_id = peer_id
        self.memory = budget
        self.was_reset = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    def reset(self) -> None:
        self.was_reset = True


def _server(registry: CollectorRegistry | None = None, **options: Any) -> KadDHT:
    net = MemoryNetwork()
    kp = KeyPair(bytes([7]) * 32)
    return KadDHT(kp, net.transport(kp.peer_id), registry=registry, **options)


async def _serve(dht: KadDHT, data: bytes, budget: MemoryBudget | None = None) -> tuple[_Stream, bytes]:
    """Run the handler on a stream that carries ``data`` then ends; return it and what it answered."""
    client, server = trio.testing.memory_stream_pair()
    stream = _Stream(server, KeyPair(bytes([8]) * 32).peer_id, budget)
    await client.send_all(data)
    await client.send_eof()
    await dht.server.handle_stream(stream)
    await server.aclose()
    answer = b""
    while chunk := await client.receive_some():
        answer += chunk
    return stream, answer


async def test_requests_over_the_cap_are_refused_from_their_length_prefix(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = CollectorRegistry()
    dht = _server(registry)
    assert dht.max_request_size == 64 * 1024
    # Only the prefix is sent: the body is never waited for.
    stream, answer = await _serve(dht, varint.encode(dht.max_request_size + 1))
    assert stream.was_reset and answer == b""
    assert sample(registry, "physarum_dht_requests_refused_total", reason="too_large") == 1
    # A 1 MB key (the issue saw it echoed back whole) is far over the request cap.
    stream, answer = await _serve(dht, encode_framed(Message(MessageType.GET_VALUE, key=b"k" * 1_000_000)))
    assert stream.was_reset and answer == b""
    assert sample(registry, "physarum_dht_requests_refused_total", reason="too_large") == 2
    # The largest legitimate request, a PUT of one full-size record, fits.
    kp = KeyPair(bytes([9]) * 32)
    big = sign_record(
        kp, ContactRecord("x" * 256, (), {"d": "y" * 8000}, seq=1, expires=new_expiry(dht.wall_clock()))
    )
    key = record_key("x" * 256)
    put = Message(MessageType.PUT_VALUE, key=key, record=Record(key, encode_record_set([big])))
    assert len(encode_framed(put)) < dht.max_request_size // 3
    stream, answer = await _serve(dht, encode_framed(put))
    assert not stream.was_reset and decode_message(answer[varint.decode(answer)[1] :]) == put


async def test_keys_over_the_cap_are_refused_and_never_echoed(autojump_clock: trio.testing.MockClock) -> None:
    registry = CollectorRegistry()
    dht = _server(registry)
    assert dht.max_key_size == 1024
    for request in (
        Message(MessageType.FIND_NODE, key=b"k" * 1025),
        Message(MessageType.GET_VALUE, key=b"k" * 5000),
        Message(MessageType.GET_PROVIDERS, key=b"k" * 5000),
        Message(MessageType.PUT_VALUE, key=b"k", record=Record(b"k" * 2000, b"")),
    ):
        stream, answer = await _serve(dht, encode_framed(request))
        assert stream.was_reset and answer == b""
    assert sample(registry, "physarum_dht_requests_refused_total", reason="key_too_large") == 4
    # At the cap it is answered (and echoed: 1 KiB at most).
    stream, answer = await _serve(dht, encode_framed(Message(MessageType.FIND_NODE, key=b"k" * 1024)))
    assert not stream.was_reset and len(answer) < 2048


async def test_malformed_and_slow_requests_reset_their_stream(autojump_clock: trio.testing.MockClock) -> None:
    registry = CollectorRegistry()
    dht = _server(registry, request_timeout=10.0, stream_idle_timeout=60.0)
    stream, _ = await _serve(dht, b"\x03\xff\xff\xff")
    assert stream.was_reset
    assert sample(registry, "physarum_dht_requests_refused_total", reason="malformed") == 1

    # A request begun and never finished holds its stream for request_timeout, not the idle timeout.
    client, server = trio.testing.memory_stream_pair()
    stream = _Stream(server, KeyPair(bytes([8]) * 32).peer_id, None)
    await client.send_all(varint.encode(1000) + b"\x08")
    start = trio.current_time()
    await dht.server.handle_stream(stream)
    assert stream.was_reset and trio.current_time() - start == pytest.approx(10.0)
    assert sample(registry, "physarum_dht_requests_refused_total", reason="slow") == 1

    # A quiet stream is closed after the idle timeout, without a reset (nothing was refused).
    client, server = trio.testing.memory_stream_pair()
    stream = _Stream(server, KeyPair(bytes([8]) * 32).peer_id, None)
    start = trio.current_time()
    await dht.server.handle_stream(stream)
    assert not stream.was_reset and trio.current_time() - start == pytest.approx(60.0)


async def test_unfinished_messages_are_held_within_the_peers_memory_budget() -> None:
    """250 streams of one peer, each with an unfinished 60 KiB request: the issue saw 40 -> 1,069 MB
    (4 MiB each). Each reservation comes from the peer's budget; past it, streams are reset; all
    of it comes back when the streams go."""
    registry = CollectorRegistry()
    dht = _server(registry)
    budget = MemoryBudget(1024 * 1024, name="peer")
    size = 60 * 1024
    streams: list[_Stream] = []
    clients = []
    async with trio.open_nursery() as nursery:
        for _ in range(250):
            client, server = trio.testing.memory_stream_pair()
            stream = _Stream(server, KeyPair(bytes([8]) * 32).peer_id, budget)
            streams.append(stream)
            clients.append(client)
            nursery.start_soon(dht.server.handle_stream, stream)
            await client.send_all(varint.encode(size) + b"\x08\x04" + bytes(1000))
        await trio.testing.wait_all_tasks_blocked()
        held = budget.limit // size
        assert budget.used == held * size <= budget.limit
        assert sum(s.was_reset for s in streams) == 250 - held
        assert sample(registry, "physarum_dht_requests_refused_total", reason="memory") == 250 - held
        # The peer goes away: every stream ends mid-message.
        for client in clients:
            await client.aclose()
    assert budget.used == 0


async def test_a_request_is_reserved_while_read_and_released_after(autojump_clock: trio.testing.MockClock) -> None:
    dht = _server()
    budget = MemoryBudget(64 * 1024)
    seen: list[int] = []
    real_rpc = dht.server.rpc

    def rpc(sender: PeerId | None, request: Message) -> Message | None:
        seen.append(budget.used)  # decoded: nothing is held for it any more
        return real_rpc(sender, request)

    dht.server.rpc = rpc  # type: ignore[method-assign]
    stream, answer = await _serve(dht, encode_framed(Message(MessageType.FIND_NODE, key=b"abc")) * 3, budget)
    assert not stream.was_reset and seen == [0, 0, 0] and budget.used == 0
    assert len(answer) > 0


# ---- records: quotas and standing ----


def _put(dht: KadDHT, key_pair: KeyPair, record_id: str, *, data: dict[str, Any] | None = None) -> Message | None:
    envelope = sign_record(
        key_pair, ContactRecord(record_id, (), data or {}, seq=1, expires=new_expiry(dht.wall_clock()))
    )
    key = record_key(record_id)
    request = Message(MessageType.PUT_VALUE, key=key, record=Record(key, encode_record_set([envelope])))
    return dht.rpc(key_pair.peer_id, request)


def _publishers(dht: KadDHT, record_id: str) -> list[PeerId]:
    reply = dht.rpc(None, Message(MessageType.GET_VALUE, key=record_key(record_id)))
    assert reply is not None
    if reply.record is None:
        return []
    from physarum.dht.records import decode_record_set

    out = []
    for envelope in decode_record_set(reply.record.value):
        publisher = verify_record(envelope, dht.wall_clock()).publisher
        assert publisher is not None
        out.append(publisher)
    return out


async def test_throwaway_identities_cannot_lock_an_established_publisher_out_of_a_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """16 throwaway identities published "victim" first; the issue saw the honest publisher refused
    and GET_VALUE return only the attackers' records."""
    registry = CollectorRegistry()
    dht = _server(registry)
    rng = random.Random(3)
    honest = KeyPair(rng.randbytes(32))
    dht.add_peer(honest.peer_id, [Multiaddr("/ip4/10.0.0.1/tcp/4001")])
    await trio.sleep(3600)  # it has been in our table for an hour
    # Some of the attackers even got into the table, later than the honest peer.
    attackers = [KeyPair(rng.randbytes(32)) for _ in range(20)]
    for attacker in attackers[:8]:
        dht.add_peer(attacker.peer_id, [Multiaddr("/ip4/10.0.0.2/tcp/4001")])
    await trio.sleep(1)
    stored = [a for a in attackers if _put(dht, a, "victim") is not None]
    assert len(stored) == dht.records.max_per_id == 16
    assert _put(dht, honest, "victim") is not None
    publishers = _publishers(dht, "victim")
    assert honest.peer_id in publishers and len(publishers) == 16
    assert sample(registry, "physarum_dht_records_refused_total", reason="name_full") == 4
    # A stranger now gets nothing: among equals it is first come, first served.
    assert _put(dht, KeyPair(rng.randbytes(32)), "victim") is None
    # The attackers in the table kept their places over the strangers (one gave way to honest).
    table_attackers = {a.peer_id for a in attackers[:8]}
    assert table_attackers <= set(publishers)


async def test_one_identity_cannot_fill_the_store_and_peer_records_always_have_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One identity PUT 10,000 tiny records: the issue saw the store full in 4 s and every honest
    PUT refused, even a peer's own peer-id record."""
    registry = CollectorRegistry()
    dht = _server(registry)
    flooder = KeyPair(bytes([11]) * 32)
    accepted = sum(_put(dht, flooder, f"junk-{i}") is not None for i in range(1000))
    assert accepted == dht.records.max_per_publisher == 64
    assert sample(registry, "physarum_dht_records_refused_total", reason="publisher_quota") == 1000 - 64
    honest = KeyPair(bytes([12]) * 32)
    assert _put(dht, honest, "receptionist") is not None
    assert _put(dht, honest, str(honest.peer_id)) is not None


async def test_a_flood_of_names_never_takes_the_room_of_peer_id_records(autojump_clock: trio.testing.MockClock) -> None:
    from physarum.dht.records import RecordStore

    dht = _server(records=RecordStore(max_records=40, max_per_publisher=4))
    rng = random.Random(4)
    for i in range(20):
        flooder = KeyPair(rng.randbytes(32))
        for j in range(4):
            _put(dht, flooder, f"junk-{i}-{j}")
    assert dht.records._pool_count == [40, 0]
    newcomer = KeyPair(rng.randbytes(32))
    assert _put(dht, newcomer, "receptionist") is None  # strangers: the names pool is full
    assert _put(dht, newcomer, str(newcomer.peer_id)) is not None  # its own peer-id record: room
    # A publisher with history takes the place of the stranger stored last.
    known = KeyPair(rng.randbytes(32))
    dht.add_peer(known.peer_id, [Multiaddr("/ip4/10.0.0.3/tcp/4001")])
    assert _put(dht, known, "receptionist") is not None
    assert _publishers(dht, "junk-9-3") == [] and _publishers(dht, "junk-0-0") != []


# ---- providers ----


async def test_add_provider_with_thousands_of_addresses_keeps_32(autojump_clock: trio.testing.MockClock) -> None:
    """ADD_PROVIDER with 1,000 addresses each: +202 MiB in the issue, kept for 24 h."""
    registry = CollectorRegistry()
    dht = _server(registry)
    rng = random.Random(5)
    announced = tuple(many_addrs(1000))
    for i in range(200):
        peer = random_peer_id(rng)
        me = Peer(peer, announced, ConnectionType.CONNECTED)
        dht.rpc(peer, Message(MessageType.ADD_PROVIDER, key=b"svc-%d" % i, provider_peers=(me,)))
    assert len(dht.providers) == 200
    held = [p for key in dht.providers.keys() for p in dht.providers.get(key, trio.current_time())]
    assert all(len(p.addrs) == MAX_ADDRS_PER_PEER for p in held)
    assert dht.providers.total_bytes < 200 * 20_000
    # GET_PROVIDERS answers stay small too.
    reply = dht.rpc(None, Message(MessageType.GET_PROVIDERS, key=b"svc-7"))
    assert reply is not None and len(encode_message(reply)) < 1000
    # They expire with their validity (24 h), whatever the peer did since.
    await trio.sleep(dht.providers.validity)
    assert dht.providers.expire(trio.current_time()) == 200 and dht.providers.total_bytes == 0


async def test_provider_quotas_and_refusal_counters(autojump_clock: trio.testing.MockClock) -> None:
    from physarum.dht.records import ProviderStore

    registry = CollectorRegistry()
    dht = _server(registry, providers=ProviderStore(max_keys_per_provider=3, max_entries=10))
    rng = random.Random(6)
    flooder = random_peer_id(rng)

    def announce(peer: PeerId, key: bytes) -> None:
        me = Peer(peer, (Multiaddr("/ip4/10.0.0.9/tcp/1"),), ConnectionType.CONNECTED)
        dht.rpc(peer, Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(me,)))

    for i in range(10):
        announce(flooder, b"k%d" % i)
    assert len(dht.providers) == 3
    assert sample(registry, "physarum_dht_providers_refused_total", reason="provider_quota") == 7
    others = [random_peer_id(rng) for _ in range(7)]
    for p in others:
        announce(p, b"shared")
    assert len(dht.providers) == 10
    announce(random_peer_id(rng), b"shared")
    assert sample(registry, "physarum_dht_providers_refused_total", reason="store_full") == 1
    # A provider with history makes room: the strangers' entry added longest ago goes.
    known = KeyPair(rng.randbytes(32))
    dht.add_peer(known.peer_id, [Multiaddr("/ip4/10.0.0.4/tcp/4001")])
    announce(known.peer_id, b"shared")
    assert known.peer_id in [p.peer_id for p in dht.providers.get(b"shared", trio.current_time())]
    assert dht.providers.get(b"k0", trio.current_time()) == []
    # Our own entry always has room.
    assert dht.providers.offer(b"mine", dht.peer_id, (), trio.current_time()).value == "stored"


# ---- logs ----


async def test_refusals_are_summed_up_in_a_few_info_lines(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    dht = _server()
    caplog.set_level(logging.INFO, logger="physarum.dht")
    for _ in range(1000):
        dht.rpc(None, Message(MessageType.FIND_NODE, key=b"k" * 2000))
    await trio.sleep(61)
    dht.rpc(None, Message(MessageType.FIND_NODE, key=b"k" * 2000))
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 2
    assert "key_too_large 1,000" in lines[1].getMessage()


def test_bounded_addrs_is_linear_and_stops_at_the_limit() -> None:
    addrs = many_addrs(100)
    assert bounded_addrs(addrs) == tuple(addrs[:32])
    assert bounded_addrs([addrs[0]] * 1000 + addrs[1:3]) == tuple(addrs[:3])
    assert bounded_addrs(addrs, 0) == ()
    long = Multiaddr("/dns4/" + "a" * 251 + "/tcp/1")
    deep = Multiaddr("/ip4/1.2.3.4" + "/tcp/1" * 16)
    assert bounded_addrs([long, deep, addrs[0]]) == (addrs[0],)



# ---- the reader ----


async def test_large_answers_are_decoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    from physarum.dht import framing

    threads: list[bool] = []
    real = framing.decode_message

    def decode(data: bytes) -> Message:
        threads.append(threading.current_thread() is threading.main_thread())
        return real(data)

    monkeypatch.setattr(framing, "decode_message", decode)
    small = Message(MessageType.FIND_NODE, key=b"k")
    big = Message(MessageType.GET_VALUE, key=b"k", record=Record(b"k", bytes(framing.INLINE_DECODE_MAX)))
    client, server = trio.testing.memory_stream_pair()
    budget = MemoryBudget(1 << 20)
    reader = framing.MessageReader(server, budget=budget)
    await client.send_all(encode_framed(small) + encode_framed(big))
    assert await reader.receive(1 << 20) == small
    assert await reader.receive(1 << 20) == big
    assert threads == [True, False] and budget.used == 0


async def test_the_reader_gives_back_what_it_reserved_whatever_happens() -> None:
    from physarum.dht import framing
    from physarum.errors import DecodeError

    budget = MemoryBudget(100)
    client, server = trio.testing.memory_stream_pair()
    reader = framing.MessageReader(server, budget=budget)
    await client.send_all(b"\x05\xff\xff\xff\xff\xff")  # malformed protobuf
    with pytest.raises(DecodeError):
        await reader.receive(1000)
    assert budget.used == 0
    await client.send_all(varint.encode(101))
    with pytest.raises(framing.MemoryRefusedError):
        await reader.receive(1000)
    assert budget.used == 0
    client, server = trio.testing.memory_stream_pair()
    reader = framing.MessageReader(server, budget=budget)
    await client.send_all(varint.encode(50) + b"\x08")
    await client.send_eof()
    with pytest.raises(trio.BrokenResourceError):
        await reader.receive(1000)
    assert budget.used == 0
    assert framing.stream_budget(object()) is None


async def test_an_established_publisher_is_found_after_throwaway_identities_took_its_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same over a network: 20 throwaway identities PUT "victim" at every node first; the
    node that then publishes it, an hour-old member of the network, is stored by the k closest
    and found by the others."""
    net = MemoryNetwork(codec=True)
    rng = random.Random(12)
    nodes = []
    for _ in range(30):
        kp = KeyPair(rng.randbytes(32))
        node = KadDHT(kp, net.transport(kp.peer_id), query_timeout=2.0)
        node.own_addrs = lambda p=kp.peer_id: [net.addr_of(p)]  # type: ignore[misc]
        net.nodes[kp.peer_id] = node
        nodes.append(node)
    for node in nodes[1:]:
        node.add_peer(nodes[0].peer_id, [net.addr_of(nodes[0].peer_id)])
        await node.lookup(node.peer_id.to_bytes())
    await trio.sleep(3600)
    for attacker in (KeyPair(rng.randbytes(32)) for _ in range(20)):
        for node in nodes:
            _put(node, attacker, "victim")
    assert all(len(node.records.get("victim", node.wall_clock())) == 16 for node in nodes)
    honest = nodes[5]
    assert await honest.publish_contact("victim", data={"real": True}) == 20
    for seeker in (nodes[9], nodes[17], nodes[28]):
        found = await seeker.find_contact("victim", timeout=30)
        assert honest.peer_id in [r.publisher for r in found]
        assert next(r for r in found if r.publisher == honest.peer_id).data == {"real": True}
