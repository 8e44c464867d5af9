"""physarum's Kademlia DHT with rust-libp2p's libp2p-kad (server mode, ``/ipfs/kad/1.0.0``, same PSK).

(a) rust asks physarum: a rust node connected only to physarum node A finds physarum node B, which
    only A knows, so A answered rust's FIND_NODE.
(b) physarum asks rust: a physarum node connected only to rust1 finds rust2, which only rust1 knows.
(c) provider records both ways: each side's ADD_PROVIDER is stored by the other and served in
    GET_PROVIDERS answers.
(d) values: physarum's signed contact records stored at a rust node (PUT_VALUE) and served back
    from it (GET_VALUE) byte for byte; a contact record rust stores (PUT_VALUE) is accepted,
    verified and served by physarum.

rust-libp2p's kad learns a peer's address from the dialer side of a connection, or (in the
partner) from identify's listenAddrs when they list the kad protocol; it bootstraps by itself
500 ms after a peer enters its table (a lookup of its own id), which cannot be switched off.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from physarum.dht.messages import Message, MessageType
from physarum.dht.records import (
    ContactRecord,
    decode_record_set,
    encode_record_set,
    new_expiry,
    record_key,
    sign_record,
    verify_record,
)
from physarum.dht.routing import now
from physarum.dht.service import KadDHT
from physarum.overlay import addr as addrs_
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr
from physarum.psk import load_key_file
from tests.integration._dht import Node, start_node
from tests.integration._util import wait_until
from tests.interop.partner import Partner, open_partner, rust_peer_argv

pytestmark = pytest.mark.interop


@pytest.fixture
async def rust_kad(psk_file: Path) -> AsyncIterator[Partner]:
    async with open_partner(rust_peer_argv("--kad", "--psk-file", str(psk_file))) as partner:
        yield partner


def bare(addr: str | Multiaddr) -> Multiaddr:
    """An address without its /p2p/ part (rust-libp2p's kad keeps it on the addresses it hands out)."""
    return addrs_.without_peer(addrs_.parse(addr))


def log_requests(node: Node) -> list[tuple[PeerId | None, MessageType]]:
    """Record every kad request ``node`` answers: (asker, type)."""
    seen: list[tuple[PeerId | None, MessageType]] = []
    answer = node.dht.server.rpc

    def rpc(sender: PeerId | None, request: Message) -> Message | None:
        seen.append((sender, request.type))
        return answer(sender, request)

    node.dht.server.rpc = rpc  # type: ignore[method-assign]
    return seen


async def two_physarum_nodes(nursery: trio.Nursery, psk: bytes) -> tuple[Node, Node]:
    """A and B, B joined through A (so A knows B)."""
    a = await start_node(nursery, psk)
    b = await start_node(nursery, psk, bootstrap=[a.host.addrs[0]])
    with trio.fail_after(10):
        await b.dht.bootstrapped.wait()
    await wait_until(lambda: b.peer_id in a.dht.table, what="A knows B")
    return a, b


async def join(rust: Partner, node: Node) -> None:
    """rust dials ``node``; wait until each has the other in its routing table."""
    await rust.call("dial", addr=str(node.host.addrs[0]), timeout=15)
    await rust.wait_event("kad_add", peer_id=str(node.peer_id), timeout=15)
    rust_id = PeerId.from_string(rust.peer_id)
    await wait_until(lambda: rust_id in node.dht.table, timeout=10, what="physarum knows rust")


async def test_rust_finds_a_peer_that_only_physarum_knows(psk_file: Path, rust_kad: Partner) -> None:
    psk = load_key_file(psk_file)
    rust = rust_kad
    rust_id = PeerId.from_string(rust.peer_id)
    async with trio.open_nursery() as nursery:
        a, b = await two_physarum_nodes(nursery, psk)
        asked_a = log_requests(a)
        await join(rust, a)  # the only address rust is ever given is A's

        found = await rust.call("find_peer", peer=str(b.peer_id), timeout=20, timeout_ms=15000)
        assert found["peer_id"] == str(b.peer_id)
        # rust's kad appends /p2p/<id> to the addresses it learns.
        assert [bare(x) for x in found["addrs"]] == b.host.listen_addrs
        # Only A could have named B: A answered rust's FIND_NODE lookups.
        assert (rust_id, MessageType.FIND_NODE) in asked_a
        kad_peers = (await rust.call("routing_table"))["peers"]
        assert {str(a.peer_id), str(b.peer_id)} <= set(kad_peers)

        closest = await rust.call("closest_peers", key_peer=str(b.peer_id), timeout=20, timeout_ms=15000)
        assert {str(a.peer_id), str(b.peer_id)} <= set(closest["peers"])
        infos = {p["peer_id"]: p["addrs"] for p in closest["peer_infos"]}
        assert [bare(x) for x in infos[str(a.peer_id)]] == a.host.listen_addrs
        nursery.cancel_scope.cancel()


async def test_physarum_lookup_through_rust_finds_a_peer_it_is_not_connected_to(psk_file: Path) -> None:
    psk = load_key_file(psk_file)
    argv = rust_peer_argv("--kad", "--psk-file", str(psk_file))
    async with open_partner(argv) as rust1, open_partner(argv) as rust2, trio.open_nursery() as nursery:
        await rust1.call("dial", addr=rust2.addrs[0], timeout=15)
        await rust1.wait_event("kad_add", peer_id=rust2.peer_id, timeout=15)
        rust1_id = PeerId.from_string(rust1.peer_id)
        rust2_id = PeerId.from_string(rust2.peer_id)

        # A client-mode physarum node: it does not list kad in identify, so rust1 never puts it in
        # its table nor hands it to rust2; whatever connects it to rust2 must be our lookup.
        node = await start_node(nursery, psk, server=False)
        dht: KadDHT = node.dht
        await node.host.connect(rust1.addrs[0], timeout=10)
        await wait_until(lambda: rust1_id in dht.table, timeout=10, what="rust1 in physarum's table")
        assert rust2_id not in dht.table and node.host.connection(rust2_id) is None
        events_before = len(rust1.events)

        with trio.fail_after(20):
            found = await dht.find_peer(rust2_id, timeout=15)
        assert found.peer_id == rust2_id
        # rust1 names rust2 with /p2p/<id> on its address, as rust's kad keeps its addresses.
        assert [bare(x) for x in found.addrs] == [bare(rust2.addrs[0])]
        assert node.host.connection(rust2_id) is None  # found through rust1 alone
        await rust1.wait_event("kad_request", type="find_node", after=events_before, timeout=5)
        assert str(node.peer_id) not in (await rust1.call("routing_table"))["peers"]

        # The addresses work: dial rust2 there and ping it.
        conn = await node.host.connect(found.addrs[0], timeout=10)
        assert conn.peer_id == rust2_id
        assert len(await node.host.ping(rust2_id, count=3)) == 3

        # A full lookup through rust returns both rust nodes, closest first.
        with trio.fail_after(20):
            result = await dht.lookup(rust2_id.to_bytes(), timeout=15)
        assert [p.peer_id for p in result.peers][:1] == [rust2_id]
        assert {rust1_id, rust2_id} <= {p.peer_id for p in result.peers}
        nursery.cancel_scope.cancel()


async def test_provider_records_both_ways(psk_file: Path, rust_kad: Partner) -> None:
    psk = load_key_file(psk_file)
    rust = rust_kad
    rust_id = PeerId.from_string(rust.peer_id)
    rust_addr = bare(rust.addrs[0])
    async with trio.open_nursery() as nursery:
        a, b = await two_physarum_nodes(nursery, psk)
        # rust joins through A with its bootstrap (a lookup of its own id through A).
        boot = await rust.call("bootstrap", addrs=[str(a.host.addrs[0])], timeout=20, timeout_ms=15000)
        assert {str(a.peer_id), str(b.peer_id)} <= set(boot["peers"])
        await wait_until(lambda: rust_id in a.dht.table, timeout=10, what="A knows rust")

        # rust provides: its ADD_PROVIDER reaches physarum, which keeps it with rust's address.
        key_rust = b"/physarum-test/provided-by-rust/" + os.urandom(8)
        await rust.call("provide", key_hex=key_rust.hex(), timeout=20, timeout_ms=15000)

        # libp2p sends ADD_PROVIDER without waiting for an answer: rust is done before we are.
        def held() -> dict[PeerId, tuple[Multiaddr, ...]]:
            return {p.peer_id: tuple(p.addrs) for n in (a, b) for p in n.dht.providers.get(key_rust, now())}

        await wait_until(lambda: rust_id in held(), what="physarum stored rust's provider record")
        assert [bare(x) for x in held()[rust_id]] == [rust_addr]
        # A physarum lookup finds rust as the provider.
        with trio.fail_after(20):
            providers = await b.dht.find_providers(key_rust, timeout=15)
        assert rust_id in {p.peer_id for p in providers}

        # physarum provides: its ADD_PROVIDER reaches rust, which serves it to a rust lookup.
        key_b = b"/physarum-test/provided-by-physarum/" + os.urandom(8)
        with trio.fail_after(20):
            told = await b.dht.provide(key_b, timeout=15)
        assert told >= 1
        await wait_until_async(
            lambda: rust_has_provider(rust, key_b, b.peer_id), what="rust stored B's provider record"
        )
        # rust's kad appends /p2p/<id> to every address it decodes from a kad message.
        local = (await rust.call("local_providers", key_hex=key_b.hex()))["providers"]
        assert [(p["peer_id"], [bare(x) for x in p["addrs"]]) for p in local] == [
            (str(b.peer_id), b.host.listen_addrs)
        ]
        found = await rust.call("find_providers", key_hex=key_b.hex(), timeout=20, timeout_ms=15000)
        assert str(b.peer_id) in found["providers"]
        nursery.cancel_scope.cancel()


async def test_contact_records_through_rust_put_and_get_value(psk_file: Path, rust_kad: Partner) -> None:
    psk = load_key_file(psk_file)
    rust = rust_kad
    rust_id = PeerId.from_string(rust.peer_id)
    async with trio.open_nursery() as nursery:
        a, b = await two_physarum_nodes(nursery, psk)
        await join(rust, a)
        await wait_until(lambda: rust_id in b.dht.table or rust_id in a.dht.table, what="rust in the DHT")

        # physarum -> rust: A publishes its own contact record; rust stores it (PUT_VALUE) and
        # answers GET_VALUE with the same signed bytes.
        with trio.fail_after(20):
            stored = await a.dht.publish_contact(str(a.peer_id), data={"role": "test"}, timeout=15)
        assert stored >= 1
        key = record_key(str(a.peer_id))
        await wait_until_async(lambda: rust_holds(rust, key), what="rust stored A's record")
        got = await rust.call("get_value", key_hex=key.hex(), timeout=20, timeout_ms=15000)
        assert got["records"]
        for found in got["records"]:
            (envelope,) = decode_record_set(bytes.fromhex(found["value_hex"]))
            record = verify_record(envelope, time.time())
            assert record.id == str(a.peer_id) and record.publisher == a.peer_id
            assert record.data == {"role": "test"}
        # ... and a physarum lookup that can only ask rust gets it from rust.
        node = await start_node(nursery, psk, server=False)
        await node.host.connect(rust.addrs[0], timeout=10)
        await wait_until(lambda: rust_id in node.dht.table, what="rust in the client's table")
        events_before = len(rust.events)
        with trio.fail_after(20):
            records = await node.dht.find_contact(str(a.peer_id), timeout=15)
        assert [r.publisher for r in records][:1] == [a.peer_id]
        # rust answered the GET_VALUE with the record it holds.
        await rust.wait_event("kad_request", type="get_value", present_locally=True, after=events_before)

        # rust -> physarum: rust stores a contact record (made and signed by a physarum key, as
        # any publisher may for an entity name) at the closest nodes; physarum verifies and keeps it.
        publisher = KeyPair.generate()
        name = "rust-published-" + os.urandom(4).hex()
        wall = time.time()
        envelope = sign_record(
            publisher,
            ContactRecord(
                name,
                (addrs_.parse("/ip4/127.0.0.1/tcp/4001"),),
                {"via": "rust"},
                seq=1,
                expires=new_expiry(wall),
            ),
        )
        await rust.call(
            "put_value",
            key_hex=record_key(name).hex(),
            value_hex=encode_record_set([envelope]).hex(),
            timeout=20,
            timeout_ms=15000,
        )
        await wait_until(
            lambda: any(n.dht.records.get(name, time.time()) for n in (a, b)),
            what="physarum kept rust's record",
        )
        with trio.fail_after(20):
            found_records = await b.dht.find_contact(name, timeout=15)
        assert [(r.publisher, r.data) for r in found_records] == [(publisher.peer_id, {"via": "rust"})]
        nursery.cancel_scope.cancel()


async def rust_holds(rust: Partner, key: bytes) -> bool:
    records = (await rust.call("local_records"))["records"]
    return any(r["key_hex"] == key.hex() for r in records)


async def rust_has_provider(rust: Partner, key: bytes, peer: PeerId) -> bool:
    providers = (await rust.call("local_providers", key_hex=key.hex()))["providers"]
    return any(p["peer_id"] == str(peer) for p in providers)


async def wait_until_async(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll an async ``check()`` until it returns True, under a deadline."""
    try:
        with trio.fail_after(timeout):
            while not await check():
                await trio.sleep(0.02)
    except trio.TooSlowError:
        raise AssertionError(f"{what} did not hold within {timeout} s") from None
