"""Messages (physarum.sidecar.messages): signing and the hash chain readers trust, the SQLite store,
and the service on real hosts on 127.0.0.1: persist, query, replacement of a dead store, sync."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from physarum.dht import keyspace
from physarum.dht.service import KadDHT
from physarum.overlay import addr as addrs_
from physarum.overlay.envelope import seal
from physarum.overlay.host import Host
from physarum.overlay.identity import KeyPair
from physarum.overlay.streamio import BufferedStream
from physarum.services.wire import frame, read_message
from physarum.sidecar.messages import (
    MAX_DATA_BYTES,
    MESSAGE_DOMAIN,
    MESSAGE_TYPE,
    PROTOCOL_ID,
    BadTopicError,
    MalformedMessageError,
    Message,
    MessageOptions,
    MessageService,
    MessageStore,
    NoStoreError,
    TooLargeError,
    encode_data,
    open_message,
    order,
    seal_message,
    topic_key,
    verify_chains,
)

ALICE = KeyPair.generate()
BOB = KeyPair.generate()


def chain(key: KeyPair, topic: str, n: int, *, start_ts: int = 1_000) -> list[Message]:
    out: list[Message] = []
    prev = ""
    for i in range(1, n + 1):
        m = seal_message(key, topic, i, start_ts + i, prev, *encode_data({"n": i}, raw=False))
        out.append(m)
        prev = m.id
    return out


def forged(original: Message, data: object) -> Message:
    """``original`` with other data, re-sealed by another key but claiming nothing else: the
    envelope's key is the forger's, so only a reader that trusts what a store says would take it."""
    payload = json.dumps(
        {
            "topic": original.topic,
            "seq": original.seq,
            "ts": original.ts,
            "prev": original.prev,
            "type": "json",
            "data": data,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    env = seal(BOB, MESSAGE_DOMAIN, MESSAGE_TYPE, payload)
    # swap the signature for one by another key over the same payload: a forgery in Alice's name
    good = seal(ALICE, MESSAGE_DOMAIN, MESSAGE_TYPE, payload)
    bad = good[:-64] + env[-64:]
    return open_message(bad, verify=False)


# -- messages and chains --


def test_round_trip_json_and_bytes() -> None:
    m = seal_message(ALICE, "news", 1, 5, "", *encode_data({"text": "Hello World"}, raw=False))
    back = open_message(m.envelope)
    assert (back.topic, back.publisher, back.seq, back.ts, back.data, back.id) == (
        "news",
        ALICE.peer_id,
        1,
        5,
        {"text": "Hello World"},
        m.id,
    )
    assert back.to_json() == {
        "publisher": str(ALICE.peer_id),
        "seq": 1,
        "ts": 5,
        "id": m.id,
        "data": {"text": "Hello World"},
    }
    raw = seal_message(ALICE, "bin", 1, 5, "", *encode_data(b"\x00\xff", raw=True))
    assert open_message(raw.envelope).data == b"\x00\xff"
    assert raw.to_json()["data_base64"] == base64.b64encode(b"\x00\xff").decode()


def test_data_over_the_limit_is_refused() -> None:
    encode_data(b"x" * MAX_DATA_BYTES, raw=True)
    with pytest.raises(TooLargeError):
        encode_data(b"x" * (MAX_DATA_BYTES + 1), raw=True)
    with pytest.raises(TooLargeError):
        encode_data("x" * MAX_DATA_BYTES, raw=False)  # its JSON text has two quotes more


@pytest.mark.parametrize("topic", ["", "-x", "a/b", "a b", "x" * 129, "é"])
def test_bad_topics(topic: str) -> None:
    with pytest.raises(BadTopicError):
        seal_message(ALICE, topic, 1, 1, "", "json", 1)


@pytest.mark.parametrize(
    "payload",
    [
        b"[1]",
        b"not json",
        b'{"topic":"t","seq":0,"ts":1,"prev":"","type":"json","data":1}',
        b'{"topic":"t","seq":1,"ts":1,"prev":"00","type":"json","data":1}',
        b'{"topic":"t","seq":2,"ts":1,"prev":"","type":"json","data":1}',
        b'{"topic":"t","seq":1,"ts":true,"prev":"","type":"json","data":1}',
        b'{"topic":"t","seq":1,"ts":1,"prev":"","type":"bytes","data":"!!"}',
        b'{"topic":"t","seq":1,"ts":1,"prev":"","type":"xml","data":1}',
    ],
)
def test_malformed_payloads_are_refused(payload: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        open_message(seal(ALICE, MESSAGE_DOMAIN, MESSAGE_TYPE, payload))


def test_tampered_and_oversize_envelopes_are_refused() -> None:
    m = seal_message(ALICE, "t", 1, 1, "", "json", "hi")
    with pytest.raises(MalformedMessageError, match="signature"):
        open_message(m.envelope.replace(b'"hi"', b'"ho"'))
    with pytest.raises(MalformedMessageError, match="exceeds"):
        open_message(b"\x00" * (64 * 1024))
    with pytest.raises(MalformedMessageError):
        open_message(b"\x0a\x03abc", verify=False)


def test_a_chain_is_trusted_through_its_newest_signature() -> None:
    msgs = chain(ALICE, "t", 50)
    unverified = [open_message(m.envelope, verify=False) for m in reversed(msgs)]
    assert [m.seq for m in order(verify_chains(unverified))] == list(range(1, 51))


def test_a_forged_message_is_dropped_and_the_chain_below_it_rechecked() -> None:
    msgs = chain(ALICE, "t", 5)
    fake_top = forged(msgs[4], "evil")
    kept = verify_chains([*msgs[:4], fake_top])
    assert sorted(m.seq for m in kept) == [1, 2, 3, 4]  # the forged 5 is gone; 1-4 hold by 4's signature
    fake_middle = forged(msgs[2], "evil")
    kept = verify_chains([msgs[0], msgs[1], fake_middle, msgs[3], msgs[4]])
    # 5 vouches for 4, 4's prev names the real 3, which is absent: the forged 3 fails its own check
    assert sorted(m.seq for m in kept) == [1, 2, 4, 5]
    assert all(m.data != "evil" for m in kept)


def test_duplicates_and_conflicts_resolve_to_the_chain() -> None:
    msgs = chain(ALICE, "t", 3)
    kept = verify_chains([*msgs, *msgs, forged(msgs[1], "evil")])
    assert [m.data for m in order(kept)] == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_order_is_time_then_publisher_then_seq() -> None:
    a = chain(ALICE, "t", 3, start_ts=10)  # ts 11, 12, 13
    b = chain(BOB, "t", 3, start_ts=11)  # ts 12, 13, 14
    merged = order([*b, *a])
    assert [m.ts for m in merged] == sorted(m.ts for m in merged)
    for key in (ALICE, BOB):
        assert [m.seq for m in merged if m.publisher == key.peer_id] == [1, 2, 3]


# -- the store --


def test_store_keeps_messages_in_order_across_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "m.db")
    store = MessageStore(path)
    a, b = chain(ALICE, "t", 5, start_ts=100), chain(BOB, "t", 5, start_ts=102)
    assert store.put([*a, *b]) == (10, 0)
    assert store.put(a) == (0, 0)  # already held
    assert store.put([forged(a[0], "x")]) == (0, 1)  # a conflict: the first stays
    store.set_own_head("t", 5, a[4].id, a[4].ts)
    store.close()

    store = MessageStore(path)
    got = [open_message(e) for e in store.query("t")]
    assert got == order([*a, *b])
    assert [m.ts for m in (open_message(e) for e in store.query("t", since=104, limit=3))] == [104, 104, 105]
    assert store.head("t", ALICE.peer_id) == (5, a[4].id, a[4].ts)
    assert store.head("t", KeyPair.generate().peer_id) == (0, "", 0)
    assert store.digest("t") == {str(ALICE.peer_id): (5, 5), str(BOB.peer_id): (5, 5)}
    assert store.own_head("t") == (5, a[4].id, a[4].ts) and store.own_head("u") is None
    assert store.topics() == ["t"]
    assert store.query("other") == []


def test_a_store_path_that_cannot_be_opened_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="cannot open the message store"):
        MessageStore(str(tmp_path / "missing-dir" / "m.db"))


# -- the service on real hosts --


@dataclass
class Node:
    host: Host
    dht: KadDHT
    service: MessageService
    scope: trio.CancelScope


OPTS = MessageOptions(replicas=3, sync_interval=3600, request_timeout=3.0, query_grace=0.2, discovery_ttl=0.0)


@asynccontextmanager
async def overlay(n: int, options: MessageOptions = OPTS) -> AsyncIterator[list[Node]]:
    """``n`` nodes on 127.0.0.1, each a store, joined through the first."""
    nodes: list[Node] = []
    async with trio.open_nursery() as nursery:

        async def start(bootstrap: list[str], *, task_status: trio.TaskStatus[Node]) -> None:
            with trio.CancelScope() as scope:
                host = Host(KeyPair.generate(), listen=["/ip4/127.0.0.1/tcp/0"])
                async with trio.open_nursery() as inner:
                    await inner.start(host.run)
                    dht = KadDHT.for_host(host, bootstrap=bootstrap)
                    await inner.start(dht.run)
                    service = MessageService(MessageStore(), dht, options)
                    host.add_service(service)
                    task_status.started(Node(host, dht, service, scope))
                    await trio.sleep_forever()

        first: Node = await nursery.start(start, [])
        nodes.append(first)
        boot = str(addrs_.with_peer(first.host.addrs[0], first.host.peer_id))
        for _ in range(n - 1):
            nodes.append(await nursery.start(start, [boot]))
        with trio.fail_after(20):  # every node knows every store through identify
            while any(len(node.host.connected_peers()) < 1 for node in nodes):
                await trio.sleep(0.01)
        yield nodes
        nursery.cancel_scope.cancel()


async def connect_all(nodes: list[Node]) -> None:
    for a in nodes:
        for b in nodes:
            if a is not b and a.host.connection(b.host.peer_id) is None:
                await a.host.connect(addrs_.with_peer(b.host.addrs[0], b.host.peer_id))
    with trio.fail_after(10):
        while True:
            known = [len(await n.service.stores()) for n in nodes]
            if min(known) == len(nodes):
                break
            await trio.sleep(0.01)


def closest_three(nodes: list[Node], topic: str) -> list[Node]:
    return keyspace.sort_by_distance(topic_key(topic), nodes, lambda n: keyspace.peer_key(n.host.peer_id))[:3]


async def test_persist_on_one_node_query_on_another() -> None:
    async with overlay(4) as nodes:
        await connect_all(nodes)
        writer, reader = nodes[1], nodes[2]
        for i in range(5):
            r = await writer.service.persist(writer.host.key_pair, "news", {"i": i})
            assert (r.stored, r.wanted, r.message.seq) == (3, 3, i + 1)
        await writer.service.persist(writer.host.key_pair, "news", b"\x01", raw=True)
        holders = closest_three(nodes, "news")
        for node in nodes:
            held = len(node.service.store.query("news"))
            assert held == (6 if node in holders else 0), node.host.peer_id
        got, more = await reader.service.query("news")
        assert [m.data for m in got] == [{"i": i} for i in range(5)] + [b"\x01"] and not more
        assert all(m.publisher == writer.host.peer_id for m in got)
        got, more = await reader.service.query("news", since=got[2].ts, limit=2)
        assert len(got) == 2 and more
        assert (await reader.service.query("empty"))[0] == []
        with pytest.raises(BadTopicError):
            await reader.service.query("bad topic")


async def test_a_dead_store_is_replaced_and_sync_fills_it_when_it_is_back() -> None:
    async with overlay(5) as nodes:
        await connect_all(nodes)
        topic = "events"
        holders = closest_three(nodes, topic)
        writer = next(n for n in nodes if n not in holders)
        await writer.service.persist(writer.host.key_pair, topic, "before")
        # the nearest store stops answering its protocol (as if its process hung or was killed)
        dead = holders[0]
        dead.host.remove_handler(PROTOCOL_ID)
        r = await writer.service.persist(writer.host.key_pair, topic, "during")
        assert r.stored == 3  # the next closest took the dead one's place
        dead.host.set_handler(PROTOCOL_ID, dead.service.handle_stream)
        assert [open_message(e).data for e in dead.service.store.query(topic)] == ["before"]
        # sync: the others offer it what it lacks
        for node in nodes:
            if node is not dead:
                await node.service.sync()
        assert [open_message(e).data for e in dead.service.store.query(topic)] == ["before", "during"]
        got, _ = await dead.service.query(topic)
        assert [m.data for m in got] == ["before", "during"]


async def test_a_publisher_with_a_fresh_store_continues_its_chain() -> None:
    async with overlay(3) as nodes:
        await connect_all(nodes)
        writer = nodes[1]
        for text in ("a", "b"):
            await writer.service.persist(writer.host.key_pair, "t", text)
        # a restart without -messages-db: its own head is gone, the stores know it
        writer.service.store = MessageStore()
        r = await writer.service.persist(writer.host.key_pair, "t", "c")
        assert r.message.seq == 3
        got, _ = await nodes[0].service.query("t")
        assert [m.data for m in got] == ["a", "b", "c"]


async def test_too_few_stores_is_no_store_and_the_chain_moves_on() -> None:
    async with overlay(
        3, MessageOptions(replicas=3, sync_interval=3600, request_timeout=1.0, discovery_ttl=3600)
    ) as nodes:
        await connect_all(nodes)
        writer = nodes[0]
        for node in nodes[1:]:
            node.host.remove_handler(PROTOCOL_ID)
        with pytest.raises(NoStoreError, match="stored by 1 of 3"):
            await writer.service.persist(writer.host.key_pair, "t", "x")
        assert writer.service.store.own_head("t") is not None  # seq 1 is used: never signed twice


async def test_stores_refuse_what_they_cannot_check() -> None:
    async with overlay(2) as nodes:
        a, b = nodes
        await connect_all(nodes)
        good = seal_message(ALICE, "t", 1, 1, "", "json", 1)
        bad = good.envelope.replace(b'"data":1', b'"data":2')
        assert bad != good.envelope
        cases = [
            ({"op": "store", "messages": [base64.b64encode(bad).decode()]}, "malformed"),
            ({"op": "store", "messages": "x"}, "malformed"),
            ({"op": "query", "topic": "../x"}, "bad_topic"),
            ({"op": "query", "topic": "t", "since": "0"}, "malformed"),
            ({"op": "head", "topic": "t", "publisher": "nope"}, "malformed"),
            ({"op": "nope", "topic": "t"}, "malformed"),
        ]
        for request, code in cases:
            stream = await a.host.new_stream(b.host.peer_id, PROTOCOL_ID)
            await stream.send_all(frame(request))
            await stream.send_eof()
            answer = await read_message(BufferedStream(stream))
            assert answer is not None and answer["error"] == code, (request, answer)
            await stream.aclose()
        assert b.service.store.query("t") == []


async def test_a_query_fetches_what_the_first_store_lacks_and_survives_its_loss() -> None:
    async with overlay(5) as nodes:
        await connect_all(nodes)
        topic = "gaps"
        holders = closest_three(nodes, topic)
        reader = next(n for n in nodes if n not in holders)
        writer = next(n for n in nodes if n not in holders and n is not reader)
        for text in ("a", "b", "c"):
            await writer.service.persist(writer.host.key_pair, topic, text)
        # the closest store loses "b" (as if it had been down when it was written)
        first = holders[0]
        b = next(open_message(e) for e in first.service.store.query(topic) if open_message(e).data == "b")
        first.service.store._db.execute("DELETE FROM messages WHERE id=?", (b.id,))
        got, _ = await reader.service.query(topic)
        assert [m.data for m in got] == ["a", "b", "c"]  # "b" fetched by id from another store
        # the first store stops answering: another sends the messages
        first.host.remove_handler(PROTOCOL_ID)
        got, _ = await reader.service.query(topic)
        assert [m.data for m in got] == ["a", "b", "c"]
        for node in holders[1:]:
            node.host.remove_handler(PROTOCOL_ID)
        with pytest.raises(NoStoreError, match="no message store answered"):
            await reader.service.query(topic)
