"""physarum's Kademlia DHT with js-libp2p's kad-dht (server mode, ``/ipfs/kad/1.0.0``, same PSK).

(a) js asks physarum: a js node connected only to physarum node A finds physarum node B, which only
    A knows, so A answered js's FIND_NODE (the key is B's peer id multihash).
(b) physarum asks js: a physarum node connected only to js1 finds js2, which only js1 knows.

js adds a peer to its routing table only after identify lists the kad protocol and a ping answers
(``kad_add`` events say when), and it drops peers without addresses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from physarum.dht.service import KadDHT
from physarum.overlay import addr as addrs_
from physarum.overlay.identity import PeerId
from physarum.psk import load_key_file
from tests.integration._dht import start_node
from tests.integration._util import wait_until
from tests.interop.partner import Partner, js_peer_argv, open_partner

pytestmark = pytest.mark.interop


@pytest.fixture
async def js_kad(psk_file: Path) -> AsyncIterator[Partner]:
    async with open_partner(js_peer_argv("--kad", "--psk-file", str(psk_file))) as partner:
        yield partner


async def test_js_finds_a_peer_that_only_physarum_knows(psk_file: Path, js_kad: Partner) -> None:
    psk = load_key_file(psk_file)
    js = js_kad
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, psk)
        b = await start_node(nursery, psk, bootstrap=[a.host.addrs[0]])
        with trio.fail_after(10):
            await b.dht.bootstrapped.wait()
        await wait_until(lambda: b.peer_id in a.dht.table, what="A knows B")

        await js.call("dial", addr=str(a.host.addrs[0]), timeout=15)
        # js took A in (identify listed kad, A has addresses, A answered ping), and A took js in.
        await js.wait_event("kad_add", peer_id=str(a.peer_id), timeout=15)
        await wait_until(lambda: PeerId.from_string(js.peer_id) in a.dht.table, what="A knows js")
        assert (await js.call("routing_table", timeout=10))["peers"] == [str(a.peer_id)]

        found = await js.call("find_peer", peer=str(b.peer_id), timeout=20, timeout_ms=15000)
        assert found["peer_id"] == str(b.peer_id)
        assert found["from"] == str(a.peer_id)  # A's FIND_NODE answer named B
        assert found["addrs"] == [str(x) for x in b.host.listen_addrs]

        closest = await js.call("closest_peers", key_peer=str(b.peer_id), timeout=20, timeout_ms=15000)
        assert {str(a.peer_id), str(b.peer_id)} <= set(closest["peers"])
        nursery.cancel_scope.cancel()


async def test_physarum_lookup_through_js_finds_a_peer_it_is_not_connected_to(psk_file: Path) -> None:
    psk = load_key_file(psk_file)
    argv = js_peer_argv("--kad", "--psk-file", str(psk_file))
    async with open_partner(argv) as js1, open_partner(argv) as js2, trio.open_nursery() as nursery:
        await js1.call("dial", addr=js2.addrs[0], timeout=15)
        await js1.wait_event("kad_add", peer_id=js2.peer_id, timeout=15)
        js2_id = PeerId.from_string(js2.peer_id)
        js1_id = PeerId.from_string(js1.peer_id)

        # A client-mode physarum node: it does not list kad in identify, so js1 never hands it to
        # js2 and js2 never dials it by itself; whatever connects the two must be our lookup.
        node = await start_node(nursery, psk, server=False)
        dht: KadDHT = node.dht
        await node.host.connect(js1.addrs[0], timeout=10)
        await wait_until(lambda: js1_id in dht.table, timeout=10, what="js1 in physarum's table")
        assert js2_id not in dht.table and node.host.connection(js2_id) is None

        with trio.fail_after(20):
            found = await dht.find_peer(js2_id, timeout=15)
        assert found.peer_id == js2_id
        expected = addrs_.without_peer(addrs_.parse(js2.addrs[0]))
        assert expected in found.addrs
        assert node.host.connection(js2_id) is None  # found through js1 alone

        # The addresses work: dial js2 there and ping it.
        conn = await node.host.connect(addrs_.with_peer(expected, js2_id), timeout=10)
        assert conn.peer_id == js2_id
        assert len(await node.host.ping(js2_id, count=3)) == 3

        # A full lookup through js returns both js nodes, closest first.
        with trio.fail_after(20):
            result = await dht.lookup(js2_id.to_bytes(), timeout=15)
        assert [p.peer_id for p in result.peers][:1] == [js2_id]
        assert {js1_id, js2_id} <= {p.peer_id for p in result.peers}
        nursery.cancel_scope.cancel()
