"""The metrics discovery protocol and the monitor's /sd list, over memory streams on trio's clock."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from physarum.errors import ConfigError, DecodeError
from physarum.monitor.discovery import (
    PROTOCOL_ID,
    SD_PATH,
    AnswerError,
    DiscoveryOptions,
    MetricsAnnouncer,
    MetricsDiscovery,
    MetricsEndpoint,
    announce_metrics,
    decode_answer,
    encode_answer,
    scrape_host,
    server_endpoints,
)
from physarum.monitor.http import MetricsServer, route
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.overlay.streamio import BufferedStream
from physarum.overlay.streamio import json_frame as frame
from physarum.overlay.streamio import read_json as read_message

# -- the wire --


def test_endpoint_round_trip() -> None:
    endpoints = [
        MetricsEndpoint("peer", 9102, "/metrics", "http", ("0.0.0.0", "::")),
        MetricsEndpoint("allocator", 9101, "/x/metrics", "https", ("10.0.0.5",)),
    ]
    assert decode_answer(json.loads(json.dumps(encode_answer(endpoints)))) == endpoints


@pytest.mark.parametrize(
    "patch",
    [
        {"role": "Peer!"},
        {"role": ""},
        {"role": 7},
        {"scheme": "ftp"},
        {"port": 0},
        {"port": 65536},
        {"port": True},
        {"port": "9100"},
        {"path": "metrics"},
        {"path": "/metrics?x=1"},
        {"path": "/" + "a" * 300},
        {"bind": []},
        {"bind": "0.0.0.0"},
        {"bind": ["example.com"]},
        {"bind": ["0.0.0.0"] * 9},
    ],
)
def test_invalid_endpoints_are_refused(patch: dict[str, Any]) -> None:
    good = MetricsEndpoint("peer", 9102).to_json()
    with pytest.raises(AnswerError):
        decode_answer({"endpoints": [{**good, **patch}]})


def test_answer_without_a_list_is_refused_and_long_lists_are_cut() -> None:
    with pytest.raises(AnswerError):
        decode_answer({"error": "unknown request"})
    many = encode_answer([MetricsEndpoint("peer", 9000 + i) for i in range(20)])
    assert [e.port for e in decode_answer(many, max_endpoints=3)] == [9000, 9001, 9002]


# -- the host rule --


@pytest.mark.parametrize(
    ("bind", "seen", "host"),
    [
        (("0.0.0.0",), "192.0.2.7", "192.0.2.7"),  # wildcard: where the monitor sees the peer
        (("192.0.2.7",), "192.0.2.7", "192.0.2.7"),  # bound to that very address
        (("127.0.0.1",), "192.0.2.7", None),  # loopback-only metrics of a remote peer
        (("198.51.100.1",), "192.0.2.7", None),  # another address: never a peer-chosen host
        (("::",), "192.0.2.7", None),  # an IPv6 wildcard does not take IPv4
        (("::", "0.0.0.0"), "192.0.2.7", "192.0.2.7"),
        (("::",), "2001:db8::7", "2001:db8::7"),
        (("0.0.0.0",), "::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped
        (("0.0.0.0",), "monitor.example", "monitor.example"),  # a name the monitor dialed
        (("192.0.2.7",), "monitor.example", None),
    ],
)
def test_scrape_host_is_where_the_monitor_sees_the_peer(bind: tuple[str, ...], seen: str, host: str | None) -> None:
    assert scrape_host(MetricsEndpoint("peer", 9102, bind=bind), seen) == host


# -- fakes: a host and connections whose streams are memory streams --


@dataclass
class FakeInfo:
    protocols: list[str]


@dataclass
class FakeNode:
    """A remote node: what it answers on the discovery protocol (None: it does not speak it)."""

    handler: Callable[[trio.abc.HalfCloseableStream], Any] | None
    peer_id: PeerId = field(default_factory=lambda: KeyPair.generate().peer_id)
    streams: int = 0


class FakeConnection:
    def __init__(self, nursery: trio.Nursery, node: FakeNode, remote: str) -> None:
        self.nursery = nursery
        self.node = node
        self.peer_id = node.peer_id
        self.remote_addr = Multiaddr(remote)
        self.closed = False
        protocols = ["/ipfs/ping/1.0.0"] + ([PROTOCOL_ID] if node.handler is not None else [])
        self.identify_info: FakeInfo | None = FakeInfo(protocols)

    @property
    def is_closed(self) -> bool:
        return self.closed

    async def open_stream(self, protocols: Sequence[str]) -> trio.abc.HalfCloseableStream:
        assert list(protocols) == [PROTOCOL_ID]
        assert self.node.handler is not None
        self.node.streams += 1
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.node.handler, theirs)
        return ours


class FakeHost:
    def __init__(self, advertised: Sequence[str] = ("/ip4/192.0.2.1/tcp/4001",)) -> None:
        self.peer_id = KeyPair.generate().peer_id
        self.on_identify: list[Callable[[Any], None]] = []
        self.on_disconnect: list[Callable[[Any], None]] = []
        self.conns: dict[PeerId, list[FakeConnection]] = {}
        self.advertised = [Multiaddr(a) for a in advertised]

    def connection(self, peer_id: PeerId) -> FakeConnection | None:
        live = [c for c in self.conns.get(peer_id, []) if not c.closed]
        return live[-1] if live else None

    def connected_peers(self) -> list[PeerId]:
        return [p for p in self.conns if self.connection(p) is not None]

    def advertised_addrs(self) -> list[Multiaddr]:
        return list(self.advertised)

    def connect(self, conn: FakeConnection) -> None:
        self.conns.setdefault(conn.peer_id, []).append(conn)
        for cb in list(self.on_identify):
            cb(conn)

    def disconnect(self, conn: FakeConnection) -> None:
        conn.closed = True
        for cb in list(self.on_disconnect):
            cb(conn)


def announcer(*endpoints: MetricsEndpoint) -> Callable[[trio.abc.HalfCloseableStream], Any]:
    return MetricsAnnouncer(lambda: list(endpoints)).handle


OWN = MetricsEndpoint("monitor", 9100, bind=("0.0.0.0",))
PEER_METRICS = MetricsEndpoint("peer", 9102, bind=("0.0.0.0",))


async def started(
    nursery: trio.Nursery, host: FakeHost, options: DiscoveryOptions | None = None, registry: CollectorRegistry | None = None
) -> MetricsDiscovery:
    discovery = MetricsDiscovery(lambda: [OWN], options=options, registry=registry)
    discovery.attach(host)
    await nursery.start(discovery.run)
    return discovery


def sd(discovery: MetricsDiscovery) -> list[dict[str, Any]]:
    reply = discovery.sd_page()
    assert reply.status == 200
    assert ("Content-Type", "application/json") in reply.headers
    groups: list[dict[str, Any]] = json.loads(reply.body)
    return groups


# -- the monitor's side --


async def test_peer_endpoints_are_listed_with_the_monitor_itself(autojump_clock: trio.abc.Clock) -> None:
    registry = CollectorRegistry()
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        discovery = await started(nursery, host, registry=registry)
        node = FakeNode(announcer(PEER_METRICS))
        host.connect(FakeConnection(nursery, node, "/ip4/192.0.2.7/tcp/50000"))
        await trio.testing.wait_all_tasks_blocked()
        assert sd(discovery) == [
            {
                "targets": ["192.0.2.1:9100"],  # our wildcard bind: our advertised address
                "labels": {"peer_id": str(host.peer_id), "role": "monitor", "__metrics_path__": "/metrics", "__scheme__": "http"},
            },
            {
                "targets": ["192.0.2.7:9102"],
                "labels": {"peer_id": str(node.peer_id), "role": "peer", "__metrics_path__": "/metrics", "__scheme__": "http"},
            },
        ]
        assert registry.get_sample_value("physarum_discovery_targets") == 2
        assert registry.get_sample_value("physarum_discovery_queries_total", {"result": "ok"}) == 1
        nursery.cancel_scope.cancel()


async def test_asks_once_per_connection_and_never_a_peer_without_the_protocol(autojump_clock: trio.abc.Clock) -> None:
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        discovery = await started(nursery, host)
        node = FakeNode(announcer(PEER_METRICS))
        conn = FakeConnection(nursery, node, "/ip4/192.0.2.7/tcp/50000")
        host.connect(conn)
        host.connect(conn)  # identify push: the same connection is not asked again
        await trio.testing.wait_all_tasks_blocked()
        assert node.streams == 1
        second = FakeConnection(nursery, node, "/ip4/192.0.2.7/tcp/50001")
        host.connect(second)
        await trio.testing.wait_all_tasks_blocked()
        assert node.streams == 2
        silent = FakeNode(None)
        host.connect(FakeConnection(nursery, silent, "/ip4/192.0.2.8/tcp/50000"))
        await trio.testing.wait_all_tasks_blocked()
        assert silent.peer_id not in discovery.peers()
        assert list(discovery.peers()) == [node.peer_id]
        nursery.cancel_scope.cancel()


async def test_peers_identified_before_it_runs_are_asked(autojump_clock: trio.abc.Clock) -> None:
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        node = FakeNode(announcer(PEER_METRICS))
        host.conns[node.peer_id] = [FakeConnection(nursery, node, "/ip4/192.0.2.7/tcp/50000")]
        discovery = await started(nursery, host)
        await trio.testing.wait_all_tasks_blocked()
        assert discovery.peers() == {node.peer_id: ["192.0.2.7:9102/metrics"]}
        nursery.cancel_scope.cancel()


async def test_a_peer_given_host_is_never_used(autojump_clock: trio.abc.Clock) -> None:
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        discovery = await started(nursery, host)
        elsewhere = FakeNode(announcer(MetricsEndpoint("peer", 22, bind=("198.51.100.1",))))
        host.connect(FakeConnection(nursery, elsewhere, "/ip4/192.0.2.7/tcp/50000"))
        same = FakeNode(announcer(MetricsEndpoint("peer", 9102, bind=("192.0.2.9",))))
        host.connect(FakeConnection(nursery, same, "/ip4/192.0.2.9/tcp/50000"))
        await trio.testing.wait_all_tasks_blocked()
        assert discovery.peers() == {same.peer_id: ["192.0.2.9:9102/metrics"]}
        nursery.cancel_scope.cancel()


async def hang(stream: trio.abc.HalfCloseableStream) -> None:
    await trio.sleep_forever()


async def flood(stream: trio.abc.HalfCloseableStream) -> None:
    await read_message(BufferedStream(stream), 256)
    await stream.send_all(frame({"endpoints": [PEER_METRICS.to_json()] * 100}))
    await stream.send_eof()


async def garbage(stream: trio.abc.HalfCloseableStream) -> None:
    await stream.send_all(b"\x05hello")
    await stream.send_eof()


@pytest.mark.parametrize("handler", [hang, flood, garbage])
async def test_a_peer_that_answers_badly_is_not_listed(
    autojump_clock: trio.abc.Clock, handler: Callable[[trio.abc.HalfCloseableStream], Any]
) -> None:
    registry = CollectorRegistry()
    host = FakeHost()
    options = DiscoveryOptions(timeout=2.0, max_answer_bytes=1024)
    async with trio.open_nursery() as nursery:
        discovery = await started(nursery, host, options, registry)
        host.connect(FakeConnection(nursery, FakeNode(handler), "/ip4/192.0.2.7/tcp/50000"))
        start = trio.current_time()
        while registry.get_sample_value("physarum_discovery_queries_total", {"result": "failed"}) != 1:
            await trio.sleep(0.1)
        assert trio.current_time() - start <= 2.1
        assert discovery.peers() == {}
        assert len(sd(discovery)) == 1  # the monitor only
        nursery.cancel_scope.cancel()


async def test_departed_peers_drop_out_after_linger(autojump_clock: trio.abc.Clock) -> None:
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        discovery = await started(nursery, host, DiscoveryOptions(linger=30.0))
        node = FakeNode(announcer(PEER_METRICS))
        first = FakeConnection(nursery, node, "/ip4/192.0.2.7/tcp/50000")
        second = FakeConnection(nursery, node, "/ip4/192.0.2.7/tcp/50001")
        host.connect(first)
        host.connect(second)
        await trio.testing.wait_all_tasks_blocked()
        host.disconnect(first)  # still connected through the second one
        await trio.sleep(100)
        assert node.peer_id in discovery.peers()
        host.disconnect(second)
        await trio.sleep(29)
        assert node.peer_id in discovery.peers()
        await trio.sleep(1)
        assert discovery.peers() == {}
        assert len(sd(discovery)) == 1
        nursery.cancel_scope.cancel()


async def test_at_most_max_peers_and_connected_peers_are_never_pushed_out(autojump_clock: trio.abc.Clock) -> None:
    registry = CollectorRegistry()
    host = FakeHost()
    async with trio.open_nursery() as nursery:
        discovery = await started(nursery, host, DiscoveryOptions(max_peers=2), registry)
        nodes = [FakeNode(announcer(PEER_METRICS)) for _ in range(4)]
        conns = [FakeConnection(nursery, n, f"/ip4/192.0.2.{i + 10}/tcp/50000") for i, n in enumerate(nodes)]
        for c in conns[:3]:
            host.connect(c)
            await trio.testing.wait_all_tasks_blocked()
        assert set(discovery.peers()) == {nodes[0].peer_id, nodes[1].peer_id}
        assert registry.get_sample_value("physarum_discovery_queries_total", {"result": "limit"}) == 1
        host.disconnect(conns[1])
        await trio.sleep(1)
        host.connect(conns[3])  # takes the departed peer's slot
        await trio.testing.wait_all_tasks_blocked()
        assert set(discovery.peers()) == {nodes[0].peer_id, nodes[3].peer_id}
        nursery.cancel_scope.cancel()


async def test_the_monitors_own_address() -> None:
    def own_targets(bind: tuple[str, ...], advertised: Sequence[str]) -> list[str]:
        discovery = MetricsDiscovery(lambda: [MetricsEndpoint("monitor", 9100, bind=bind)])
        discovery.attach(FakeHost(advertised))
        return [t for g in discovery.target_groups() for t in g["targets"]]

    assert own_targets(("10.1.2.3",), ["/ip4/192.0.2.1/tcp/4001"]) == ["10.1.2.3:9100"]
    assert own_targets(("0.0.0.0",), ["/ip6/2001:db8::1/tcp/4001", "/ip4/192.0.2.1/tcp/4001"]) == ["192.0.2.1:9100"]
    assert own_targets(("::",), ["/ip4/192.0.2.1/tcp/4001", "/ip6/2001:db8::1/tcp/4001"]) == ["[2001:db8::1]:9100"]
    assert own_targets(("0.0.0.0",), ["/dns4/monitor.example/tcp/4001"]) == ["monitor.example:9100"]
    assert own_targets(("0.0.0.0",), []) == ["127.0.0.1:9100"]


# -- the node's side --


async def ask_raw(handler: Callable[[trio.abc.HalfCloseableStream], Any], request: dict[str, Any]) -> dict[str, Any] | None:
    ours, theirs = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handler, theirs)
        await ours.send_all(frame(request))
        await ours.send_eof()
        return await read_message(BufferedStream(ours), 4096)


async def test_announcer_answers_the_endpoints_and_refuses_other_requests() -> None:
    handler = announcer(PEER_METRICS)
    assert await ask_raw(handler, {"get": "endpoints"}) == encode_answer([PEER_METRICS])
    assert await ask_raw(handler, {"get": "everything"}) == {"error": "unknown request"}


@dataclass
class FakeServer:
    addresses: list[tuple[str, int]]


class HandlerOnly:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Any], Any]] = {}

    def set_handler(self, protocol: str, handler: Callable[[Any], Any]) -> None:
        self.handlers[protocol] = handler


async def test_two_servers_announced_on_one_host_are_both_listed() -> None:
    host = HandlerOnly()
    announce_metrics(host, FakeServer([("0.0.0.0", 9101), ("::", 9101)]), "allocator")
    announce_metrics(host, FakeServer([("127.0.0.1", 9102)]), "peer")
    answer = await ask_raw(host.handlers[PROTOCOL_ID], {"get": "endpoints"})
    assert answer is not None
    assert decode_answer(answer) == [
        MetricsEndpoint("allocator", 9101, bind=("0.0.0.0", "::")),
        MetricsEndpoint("peer", 9102, bind=("127.0.0.1",)),
    ]


async def test_sd_page_is_served_beside_metrics() -> None:
    server = MetricsServer(CollectorRegistry(), port=0)
    discovery = MetricsDiscovery(lambda: server_endpoints(server, "monitor"))
    discovery.attach(FakeHost())
    server.pages[SD_PATH] = discovery.sd_page
    reply = route(b"GET", b"/sd", server.pages)
    assert not isinstance(reply, str)
    assert reply.status == 200
    assert json.loads(reply.body) == []  # not running yet: no bound address, nothing to list


async def feed(data: bytes, max_size: int = 4096) -> dict[str, Any] | None:
    ours, theirs = trio.testing.memory_stream_pair()
    await theirs.send_all(data)
    await theirs.send_eof()
    return await read_message(BufferedStream(ours), max_size)


async def test_framing_round_trip_and_every_cut_is_an_error() -> None:
    message = encode_answer([PEER_METRICS, OWN])
    data = frame(message)
    assert await feed(data) == message
    assert await feed(b"") is None
    for cut in range(1, len(data)):
        with pytest.raises(DecodeError):
            await feed(data[:cut])
    with pytest.raises(DecodeError):
        await feed(data, max_size=len(json.dumps(message, separators=(",", ":"))) - 1)  # a byte short
    for bad in (b"[]", b"{", b"\xff"):
        with pytest.raises(DecodeError):
            await feed(bytes([len(bad)]) + bad)


async def test_announcer_ignores_bad_requests() -> None:
    handler = announcer(PEER_METRICS)
    for data in (frame({"x": "y" * 300}), b"\x05hello", b"\x80"):
        ours, theirs = trio.testing.memory_stream_pair()
        await ours.send_all(data)
        await ours.send_eof()
        with trio.fail_after(1):
            await handler(theirs)  # returns without raising
        await theirs.aclose()  # as the host does after a handler
        assert await ours.receive_some(1) == b""  # nothing answered


async def test_announcer_waits_at_most_its_timeout(autojump_clock: trio.abc.Clock) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    start = trio.current_time()
    await MetricsAnnouncer(lambda: [PEER_METRICS], timeout=3.0).handle(theirs)
    assert trio.current_time() - start == pytest.approx(3.0)
    await ours.aclose()


@pytest.mark.parametrize(
    "bad", [{"timeout": 0}, {"max_answer_bytes": 0}, {"max_endpoints": 0}, {"max_peers": 0}, {"concurrency": 0}, {"linger": -1}]
)
def test_options_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        DiscoveryOptions(**bad)
    DiscoveryOptions(linger=0)
