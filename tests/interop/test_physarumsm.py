"""physarum in a network of PhysarumSM's own nodes: go-libp2p v0.9.2 + go-libp2p-kad-dht v0.7.11
(tests/interop/go09, built by its setup.sh), configured as PhysarumSM's p2pnode builds its hosts.

Such a node has a PSK derived from a passphrase (SHA3-256, PhysarumSM's ``-psk``), an RSA identity,
offers secio then TLS 1.0.0 (no Noise) and yamux then mplex, and runs kad-dht in server mode. So
every connection here is pnet + TLS 1.3 + yamux: physarum proposes Noise and is told "na", and
answers the node's secio proposal with "na" in turn. Both directions, the node's FIND_NODE queries
answered by physarum, physarum's lookups answered by the node, and the ping monitor pinging it.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator

import pytest
import trio

from physarum.dht.service import KadDHT
from physarum.errors import DialError
from physarum.overlay import addr as addrs_
from physarum.overlay.envelope import open_peer_record
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import KEY_RSA, PeerId, PublicKey
from physarum.overlay.tls import TlsStream
from physarum.psk import PskMismatchError, psk_from_passphrase
from tests.integration._dht import start_node
from tests.integration._util import wait_until
from tests.integration.test_monitor import monitor_node, rtt_series, wait_scrape
from tests.interop._util import PingStreams, bare
from tests.interop.partner import Partner, go09_peer_argv, open_partner

pytestmark = pytest.mark.interop

PING = "/ipfs/ping/1.0.0"
IDENTIFY = "/ipfs/id/1.0.0"
KAD = "/ipfs/kad/1.0.0"
TLS = "/tls/1.0.0"
YAMUX = "/yamux/1.0.0"


@pytest.fixture
def passphrase() -> str:
    """A fresh network's passphrase, as given to PhysarumSM's ``-psk``."""
    return "physarum-interop-" + secrets.token_hex(8)


@pytest.fixture
async def node(passphrase: str) -> AsyncIterator[Partner]:
    """A PhysarumSM node: RSA identity, passphrase PSK, kad-dht server."""
    async with open_partner(go09_peer_argv("--psk", passphrase)) as partner:
        yield partner


@pytest.fixture
async def host(passphrase: str) -> AsyncIterator[Host]:
    async with open_host(psk=psk_from_passphrase(passphrase)) as h:
        yield h




async def test_physarum_joins_a_physarumsm_node_pings_and_identifies_it(host: Host, node: Partner) -> None:
    versions = node.ready["versions"]
    assert (versions["go-libp2p"], versions["go-libp2p-kad-dht"]) == ("v0.9.2", "v0.7.11")
    assert node.ready["security"] == ["/secio/1.0.0", TLS] and node.ready["muxers"][0] == YAMUX
    assert node.peer_id.startswith("Qm")  # an RSA key's peer id is a sha2-256 multihash

    with trio.fail_after(15):
        conn = await host.connect(node.addrs[0], timeout=10)
        assert str(conn.peer_id) == node.peer_id
        assert isinstance(conn.session.transport, TlsStream)  # Noise refused, TLS taken
        rtts = await host.ping(conn.peer_id, count=10)
        assert len(rtts) == 10 and all(0 < r < 1 for r in rtts)
        stats = await node.call("ping_stats")
        assert (stats["inbound_streams"], stats["echoes"]) == (1, 10)

        await conn.identified.wait()
    info = host.peerstore.get(conn.peer_id)
    assert info is not None and info.public_key is not None
    assert info.public_key.key_type == KEY_RSA and info.public_key.peer_id() == conn.peer_id
    assert {PING, IDENTIFY, KAD} <= set(info.protocols)  # kad-dht in server mode
    assert info.agent_version
    assert bare(node.addrs[0]) in [str(a) for a in info.addrs]
    # v0.9's signed peer record (RSA-signed) passed physarum's checks.
    assert conn.identify_info is not None and conn.identify_info.signed_peer_record is not None
    record = open_peer_record(conn.identify_info.signed_peer_record)
    assert str(record.peer_id) == node.peer_id
    assert [str(a) for a in record.addrs] == [bare(a) for a in node.addrs]

    # The node's view of us: our identify answer, and our signed peer record verified by go-libp2p v0.9.
    seen = await node.call("identify", peer=str(host.peer_id), timeout=15)
    assert seen["agent_version"].startswith("physarum/")
    assert {PING, IDENTIFY} <= set(seen["protocols"])
    assert str(host.listen_addrs[0]) in seen["listen_addrs"]
    assert PublicKey.from_protobuf(base64.b64decode(seen["public_key_b64"])).peer_id() == host.peer_id
    spr = seen["signed_peer_record"]
    assert spr is not None and spr["peer_id"] == str(host.peer_id)
    assert spr["addrs"] == [str(a) for a in host.advertised_addrs()]


@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
async def test_a_physarumsm_node_dials_physarum_and_pings_it(
    key_type: str, passphrase: str, host: Host
) -> None:
    counter = PingStreams()
    host.set_handler(PING, counter)
    async with open_partner(go09_peer_argv("--psk", passphrase, "--key-type", key_type)) as node:
        with trio.fail_after(15):
            reply = await node.call("dial", addr=str(host.addrs[0]), timeout=12)
            assert reply["peer_id"] == str(host.peer_id)
            # physarum answered secio with "na"; go-libp2p v0.9 went on to TLS, and took yamux.
            assert (reply["encryption"], reply["multiplexer"]) == (TLS, YAMUX)
            rtts = (await node.call("ping", peer=str(host.peer_id), count=10, timeout=12))["rtts_ms"]
            assert len(rtts) == 10 and all(r > 0 for r in rtts)
            assert counter.streams == 1  # v0.9 pings on one stream too

            conn = host.connection(PeerId.from_string(node.peer_id))
            assert conn is not None and conn.direction == "inbound"
            assert isinstance(conn.session.transport, TlsStream)
            await conn.identified.wait()
            assert conn.identify_info is not None and conn.identify_info.public_key is not None
            assert conn.identify_info.public_key.peer_id() == conn.peer_id
            assert len(await host.ping(conn.peer_id, count=3)) == 3
            await node.wait_event("identify", peer_id=str(host.peer_id), signed_peer_record=True)
            assert (await node.call("peers"))["peers"] == [str(host.peer_id)]


async def test_another_passphrase_is_refused_quickly(node: Partner) -> None:
    async with open_host(psk=psk_from_passphrase("not the network's passphrase")) as other:
        with trio.fail_after(2), pytest.raises(DialError) as failure:
            await other.connect(node.addrs[0], timeout=1.9)
        assert any(isinstance(e, PskMismatchError) for e in failure.value.errors.values()), (
            failure.value.errors
        )
        assert other.connections == {}
    assert (await node.call("peers"))["peers"] == []


async def test_physarum_answers_the_physarumsm_nodes_find_node(passphrase: str) -> None:
    """The node, connected only to physarum node A, finds physarum node B that only A knows:
    A answered its FIND_NODE, and the node took A into its routing table first."""
    psk = psk_from_passphrase(passphrase)
    # Without auto-refresh the node runs no lookup of its own, so the one under test says who answered.
    argv = go09_peer_argv("--psk", passphrase, "--no-auto-refresh")
    async with open_partner(argv) as node, trio.open_nursery() as nursery:
        a = await start_node(nursery, psk)
        b = await start_node(nursery, psk, bootstrap=[a.host.addrs[0]])
        with trio.fail_after(10):
            await b.dht.bootstrapped.wait()
        await wait_until(lambda: b.peer_id in a.dht.table, what="A knows B")

        await node.call("dial", addr=str(a.host.addrs[0]), timeout=12)
        await node.wait_event("kad_add", peer_id=str(a.peer_id), timeout=10)
        node_id = PeerId.from_string(node.peer_id)
        await wait_until(lambda: node_id in a.dht.table, timeout=10, what="A has the node in its table")
        assert (await node.call("routing_table"))["peers"] == [str(a.peer_id)]
        assert str(b.peer_id) not in (await node.call("peers"))["peers"]

        found = await node.call("find_peer", peer=str(b.peer_id), timeout=15, timeout_ms=12000)
        assert found["peer_id"] == str(b.peer_id) and found["from"] == str(a.peer_id)
        assert {str(x) for x in b.host.listen_addrs} <= set(found["addrs"])
        closest = await node.call("closest_peers", key_peer=str(b.peer_id), timeout=15, timeout_ms=12000)
        assert {str(a.peer_id), str(b.peer_id)} <= set(closest["peers"])
        nursery.cancel_scope.cancel()


async def test_physarum_finds_a_physarumsm_node_through_another(passphrase: str) -> None:
    """A PhysarumSM peer joins its bootstrap node; a physarum node connected only to the bootstrap
    finds the peer with a lookup the bootstrap answers, then reaches it."""
    psk = psk_from_passphrase(passphrase)
    async with open_partner(go09_peer_argv("--psk", passphrase)) as bootstrap, trio.open_nursery() as nursery:
        async with open_partner(
            go09_peer_argv("--psk", passphrase, "--bootstrap", bootstrap.addrs[0])
        ) as peer:
            await peer.wait_event("kad_add", peer_id=bootstrap.peer_id, timeout=10)
            await bootstrap.wait_event("kad_add", peer_id=peer.peer_id, timeout=10)
            bootstrap_id, peer_id = PeerId.from_string(bootstrap.peer_id), PeerId.from_string(peer.peer_id)

            # A client-mode physarum node: it does not list kad in identify, so the bootstrap never
            # hands it to the peer and the peer never dials it; whatever connects the two is our lookup.
            client = await start_node(nursery, psk, server=False)
            dht: KadDHT = client.dht
            await client.host.connect(bootstrap.addrs[0], timeout=10)
            await wait_until(
                lambda: bootstrap_id in dht.table, timeout=10, what="the bootstrap in physarum's table"
            )
            assert peer_id not in dht.table and client.host.connection(peer_id) is None

            with trio.fail_after(15):
                found = await dht.find_peer(peer_id, timeout=12)
            assert found.peer_id == peer_id
            expected = addrs_.without_peer(addrs_.parse(peer.addrs[0]))
            assert expected in found.addrs
            assert client.host.connection(peer_id) is None  # found through the bootstrap alone

            conn = await client.host.connect(addrs_.with_peer(expected, peer_id), timeout=10)
            assert isinstance(conn.session.transport, TlsStream)
            assert len(await client.host.ping(peer_id, count=3)) == 3
        nursery.cancel_scope.cancel()


async def test_ping_monitor_shows_a_physarumsm_node(passphrase: str, node: Partner) -> None:
    async with monitor_node(psk_from_passphrase(passphrase), interval=0.2) as monitor:
        reply = await node.call("dial", addr=str(monitor.host.addrs[0]), timeout=12)
        assert reply["encryption"] == TLS
        metrics = await wait_scrape(
            monitor, lambda m: node.peer_id in rtt_series(m), what="the PhysarumSM node's ping_rtt"
        )
        assert 0 < rtt_series(metrics)[node.peer_id] < 1000
        labels = next(lab for lab, _ in metrics["ping_rtt"] if lab["targetHost"] == node.peer_id)
        assert labels["host"] == "monitor-under-test"
        stats = monitor.monitor.peers[PeerId.from_string(node.peer_id)]
        with trio.fail_after(10):
            while stats.successes < 5:
                await trio.sleep(0.05)
        go_stats = await node.call("ping_stats")
        assert go_stats["inbound_streams"] == 1 and go_stats["echoes"] >= 5  # one stream, many pings
        assert stats.failures == 0, stats.failures_by_reason
