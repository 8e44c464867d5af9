"""Eight nodes of four implementations in one private network: 2 physarum, 2 js-libp2p, 2 go-libp2p and
2 rust-libp2p, all kad servers, joined through one physarum bootstrap; every node then finds every
other through the DHT (56 lookups), each by its own implementation's lookup code."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from physarum.overlay.identity import PeerId
from physarum.psk import load_key_file
from tests.integration._dht import Node, start_node
from tests.integration._util import wait_until
from tests.interop.partner import Partner, go_peer_argv, js_peer_argv, open_partner, rust_peer_argv

pytestmark = pytest.mark.interop


async def test_eight_nodes_of_four_implementations_find_each_other(psk_file: Path) -> None:
    psk = load_key_file(psk_file)
    common = ("--kad", "--psk-file", str(psk_file))
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        boot = await start_node(nursery, psk)
        other = await start_node(nursery, psk, bootstrap=[boot.host.addrs[0]])
        physarum: list[Node] = [boot, other]
        partners: dict[str, Partner] = {}
        for name, argv in (
            ("js-1", js_peer_argv(*common)),
            ("js-2", js_peer_argv(*common)),
            ("go-1", go_peer_argv(*common)),
            ("go-2", go_peer_argv(*common)),
            ("rust-1", rust_peer_argv(*common)),
            ("rust-2", rust_peer_argv(*common)),
        ):
            partners[name] = await stack.enter_async_context(open_partner(argv))
        with trio.fail_after(60):
            await other.dht.bootstrapped.wait()
            for partner in partners.values():
                await partner.call("dial", addr=str(boot.host.addrs[0]), timeout=15)
            for partner in partners.values():
                # Each took the bootstrap into its routing table (identify listed kad).
                await partner.wait_event("kad_add", peer_id=str(boot.peer_id), timeout=20)
            ids = {str(n.peer_id) for n in physarum} | {p.peer_id for p in partners.values()}
            assert len(ids) == 8
            await wait_until(
                lambda: {str(c.peer_id) for c in boot.dht.table} >= ids - {str(boot.peer_id)},
                timeout=20,
                what="the bootstrap's table holds all seven others",
            )

            missed: list[str] = []
            for name, partner in partners.items():
                for target in sorted(ids - {partner.peer_id}):
                    try:
                        found = await partner.call("find_peer", peer=target, timeout=20, timeout_ms=15000)
                    except Exception as e:
                        missed.append(f"{name} -> {target}: {e}")
                        continue
                    if found.get("peer_id") != target:
                        missed.append(f"{name} -> {target}: answered {found}")
            for node in physarum:
                for target in sorted(ids - {str(node.peer_id)}):
                    try:
                        found_peer = await node.dht.find_peer(PeerId.from_string(target), timeout=15)
                    except Exception as e:
                        missed.append(f"physarum {node.peer_id} -> {target}: {e}")
                        continue
                    if not found_peer.addrs:
                        missed.append(f"physarum {node.peer_id} -> {target}: no addresses")
            assert missed == []
        await stack.aclose()  # the partners stop before the physarum nodes
        nursery.cancel_scope.cancel()
