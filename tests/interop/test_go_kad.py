"""physarum's Kademlia DHT with go-libp2p-kad-dht (server mode, ``/ipfs/kad/1.0.0``, same PSK).

(a) go asks physarum: a go node connected only to physarum node A finds physarum node B, which
    only A knows, so A answered go's FIND_NODE.
(b) physarum asks go: a physarum node connected only to go1 finds go2, which only go1 knows.
(c) provider records: go's ADD_PROVIDER stored by physarum, physarum's GET_PROVIDERS answer read
    by go, physarum's ADD_PROVIDER stored by go and go's GET_PROVIDERS answer read by physarum.
(d) physarum's signed contact records (PUT_VALUE / GET_VALUE under ``/physarum/contact/``): signed
    by go-libp2p's envelope code and verified by physarum, and the reverse.

go adds a peer to its routing table once identify lists the kad protocol and a FIND_NODE to it
answers (``kad_add`` events say when).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from physarum.dht.records import record_key, verify_record
from physarum.dht.routing import now
from physarum.dht.service import KadDHT
from physarum.overlay import addr as addrs_
from physarum.overlay.identity import PeerId
from physarum.psk import load_key_file
from tests.integration._dht import Node, start_node
from tests.integration._util import wait_until
from tests.interop._util import bare
from tests.interop.partner import Partner, go_peer_argv, open_partner

pytestmark = pytest.mark.interop


def multihash(text: str) -> bytes:
    """A sha2-256 multihash: go-libp2p-kad-dht takes provider keys only in that form."""
    return b"\x12\x20" + hashlib.sha256(text.encode()).digest()


@pytest.fixture
async def go_kad(psk_file: Path) -> AsyncIterator[Partner]:
    async with open_partner(go_peer_argv("--kad", "--psk-file", str(psk_file))) as partner:
        yield partner


async def join(go: Partner, node: Node) -> None:
    """``go`` dials ``node``, and each has the other in its routing table."""
    await go.call("dial", addr=str(node.host.addrs[0]), timeout=15)
    await go.wait_event("kad_add", peer_id=str(node.peer_id), timeout=15)
    go_id = PeerId.from_string(go.peer_id)
    await wait_until(lambda: go_id in node.dht.table, timeout=10, what=f"{node.peer_id} knows go")


async def test_go_finds_a_peer_that_only_physarum_knows(psk_file: Path) -> None:
    psk = load_key_file(psk_file)
    # kad-dht looks itself up as soon as its first peer joins its table, and would learn B from A
    # then: without that refresh the lookup under test is the only one, and it says who answered.
    argv = go_peer_argv("--kad", "--no-auto-refresh", "--psk-file", str(psk_file))
    async with open_partner(argv) as go, trio.open_nursery() as nursery:
        a = await start_node(nursery, psk)
        b = await start_node(nursery, psk, bootstrap=[a.host.addrs[0]])
        with trio.fail_after(10):
            await b.dht.bootstrapped.wait()
        await wait_until(lambda: b.peer_id in a.dht.table, what="A knows B")

        await join(go, a)
        assert (await go.call("routing_table"))["peers"] == [str(a.peer_id)]
        assert str(b.peer_id) not in (await go.call("peers"))["peers"]

        found = await go.call("find_peer", peer=str(b.peer_id), timeout=20, timeout_ms=15000)
        assert found["peer_id"] == str(b.peer_id)
        assert found["from"] == str(a.peer_id)  # A's FIND_NODE answer named B
        assert {str(x) for x in b.host.listen_addrs} <= set(found["addrs"])

        closest = await go.call("closest_peers", key_peer=str(b.peer_id), timeout=20, timeout_ms=15000)
        assert {str(a.peer_id), str(b.peer_id)} <= set(closest["peers"])
        nursery.cancel_scope.cancel()


async def test_physarum_lookup_through_go_finds_a_peer_it_is_not_connected_to(psk_file: Path) -> None:
    psk = load_key_file(psk_file)
    argv = go_peer_argv("--kad", "--psk-file", str(psk_file))
    async with open_partner(argv) as go2, trio.open_nursery() as nursery:
        # go1 joins through go2 at start-up (--bootstrap), as a PhysarumSM peer joins its bootstrap.
        async with open_partner([*argv, "--bootstrap", go2.addrs[0]]) as go1:
            await go1.wait_event("kad_add", peer_id=go2.peer_id, timeout=15)
            go1_id, go2_id = PeerId.from_string(go1.peer_id), PeerId.from_string(go2.peer_id)

            # A client-mode physarum node: it does not list kad in identify, so go1 never hands it
            # to go2 and go2 never dials it; whatever connects the two must be our lookup.
            node = await start_node(nursery, psk, server=False)
            dht: KadDHT = node.dht
            await node.host.connect(go1.addrs[0], timeout=10)
            await wait_until(lambda: go1_id in dht.table, timeout=10, what="go1 in physarum's table")
            assert go2_id not in dht.table and node.host.connection(go2_id) is None

            with trio.fail_after(20):
                found = await dht.find_peer(go2_id, timeout=15)
            assert found.peer_id == go2_id
            expected = addrs_.without_peer(addrs_.parse(go2.addrs[0]))
            assert expected in found.addrs
            assert node.host.connection(go2_id) is None  # found through go1 alone

            conn = await node.host.connect(addrs_.with_peer(expected, go2_id), timeout=10)
            assert conn.peer_id == go2_id
            assert len(await node.host.ping(go2_id, count=3)) == 3

            with trio.fail_after(20):
                result = await dht.lookup(go2_id.to_bytes(), timeout=15)
            assert [p.peer_id for p in result.peers][:1] == [go2_id]
            assert {go1_id, go2_id} <= {p.peer_id for p in result.peers}
        nursery.cancel_scope.cancel()


async def test_provider_records_both_ways(psk_file: Path, go_kad: Partner) -> None:
    psk = load_key_file(psk_file)
    go = go_kad
    go_id = PeerId.from_string(go.peer_id)
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, psk)
        b = await start_node(nursery, psk, bootstrap=[a.host.addrs[0]])
        with trio.fail_after(10):
            await b.dht.bootstrapped.wait()
        # Before go joins: B's announcement lands at A only.
        key_b = multihash("provided by physarum B")
        assert await b.dht.provide(key_b, timeout=10) >= 1
        await join(go, a)

        # go's GET_PROVIDERS, answered by physarum.
        found = await go.call("find_providers", key_hex=key_b.hex(), timeout=20, timeout_ms=15000)
        assert [p["peer_id"] for p in found["providers"]] == [str(b.peer_id)]
        assert {str(x) for x in b.host.listen_addrs} <= set(found["providers"][0]["addrs"])

        # go's ADD_PROVIDER, stored by physarum with go's addresses.
        key_g = multihash("provided by go")
        await go.call("provide", key_hex=key_g.hex(), timeout=20, timeout_ms=15000)
        # ADD_PROVIDER has no answer: go is done once it has written it.
        await wait_until(
            lambda: any(p.peer_id == go_id for p in a.dht.providers.get(key_g, now())),
            what="A holds go's provider entry",
        )
        held = [p for p in a.dht.providers.get(key_g, now()) if p.peer_id == go_id]
        assert bare(go.addrs[0]) in [str(x) for x in held[0].addrs]
        assert go_id in {p.peer_id for p in await b.dht.find_providers(key_g, timeout=10)}

        # physarum's ADD_PROVIDER stored by go, read back with a GET_PROVIDERS to go alone.
        key_a = multihash("provided by physarum A")
        await a.dht.provide(key_a, timeout=10)
        go_addrs = [addrs_.without_peer(addrs_.parse(go.addrs[0]))]
        with trio.fail_after(10):
            while True:  # ADD_PROVIDER has no answer: poll go until it holds the entry
                providers, _ = await b.dht.call_get_providers(go_id, go_addrs, key_a)
                if providers:
                    break
                await trio.sleep(0.05)
        assert [p.peer_id for p in providers] == [a.peer_id]
        assert set(a.host.listen_addrs) <= set(providers[0].addrs)
        nursery.cancel_scope.cancel()


async def test_contact_records_both_ways(psk_file: Path, go_kad: Partner) -> None:
    psk = load_key_file(psk_file)
    go = go_kad
    go_id = PeerId.from_string(go.peer_id)
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, psk)
        b = await start_node(nursery, psk, bootstrap=[a.host.addrs[0]])
        with trio.fail_after(10):
            await b.dht.bootstrapped.wait()
        await join(go, a)

        # go signs a contact record for its own peer id (go-libp2p's record.Seal) and stores it
        # with PUT_VALUE; physarum verified it before storing, and finds it.
        put = await go.call("put_contact", data={"role": "go", "n": 3}, timeout=20, timeout_ms=15000)
        assert put["key"] == record_key(go.peer_id).decode()
        assert a.dht.records.get(go.peer_id, time.time())
        records = await b.dht.find_contact(go.peer_id, timeout=10)
        assert [r.publisher for r in records] == [go_id]
        assert records[0].data == {"role": "go", "n": 3}
        assert [str(e) for e in records[0].endpoints] == [bare(x) for x in go.addrs]
        assert str(records[0].seq) == put["seq"]

        # physarum publishes an entity-name record; go's validator checked it when A's PUT_VALUE
        # came, go's GET_VALUE reads it back, and a GET_VALUE to go alone returns it too.
        stored = await a.dht.publish_contact("receptionist", data={"port": 7000}, timeout=10)
        assert stored >= 2  # B and go
        got = await go.call("get_contact", record_id="receptionist", timeout=20, timeout_ms=15000)
        assert [(r["publisher"], r["data"]) for r in got["records"]] == [(str(a.peer_id), {"port": 7000})]
        assert got["records"][0]["endpoints"] == [str(x) for x in a.host.advertised_addrs()]
        go_addrs = [addrs_.without_peer(addrs_.parse(go.addrs[0]))]
        envelopes, _ = await b.dht.call_get_value(go_id, go_addrs, record_key("receptionist"))
        assert [verify_record(e, time.time()).publisher for e in envelopes] == [a.peer_id]
        nursery.cancel_scope.cancel()
