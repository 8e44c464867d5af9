"""A small physarum DHT network for ``bench/dht.py``: N hosts in one process, lookups timed, JSON out.

    .venv/bin/python bench/_physarum_dht20.py [--nodes 20] [--lookups 50] [--seed 1] [--transport hosts|memory]

``hosts`` (default): N real physarum hosts (:func:`physarum.overlay.host.open_host`, TCP + Noise + yamux on
127.0.0.1, no PSK) each running :meth:`KadDHT.for_host`; node 0 is the bootstrap node and every other
node joins with ``bootstrap=[node 0]`` (ping, self lookup), one after another.
``memory``: the same N nodes over ``MemoryNetwork(codec=True)`` (every message encoded and decoded,
no sockets), joined the same way; the fallback when real hosts fail, and a floor for them.

Then ``--lookups`` times: a random seeker looks up a random other node's id (``KadDHT.lookup``, the
network lookup that ``find_peer`` falls back to when the table does not know the peer), and, for
the same pair, ``KadDHT.find_peer`` (a table hit when the seeker already knows the target).
Success = the target is among the lookup's k closest with an address. Prints one JSON object on
stdout; on failure ``{"ok": false, "error": ..., "stage": ...}``. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import random
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import trio
from _dht_sim import memory_node
from _harness import Found, failed, lookup_network_parser, summary, time_lookups

from physarum.dht.memory import MemoryNetwork
from physarum.dht.service import KadDHT
from physarum.overlay.host import open_host
from physarum.overlay.identity import KeyPair

JOIN_TIMEOUT = 30.0
LOOKUP_TIMEOUT = 30.0


async def _measure(dhts: list[KadDHT], lookups: int, rng: random.Random) -> dict[str, Any]:
    async def lookup(seeker: int, target: int) -> Found:
        peer_id = dhts[target].peer_id
        result = await dhts[seeker].lookup(peer_id.to_bytes(), timeout=LOOKUP_TIMEOUT)
        found = any(p.peer_id == peer_id and p.addrs for p in result.peers)
        return Found(found, result.stats.queries, result.stats.hops)

    async def find_peer(seeker: int, target: int) -> bool:
        peer_id = dhts[target].peer_id
        with trio.fail_after(LOOKUP_TIMEOUT):
            peer = await dhts[seeker].find_peer(peer_id)
        return peer.peer_id == peer_id and bool(peer.addrs)

    return await time_lookups(len(dhts), lookups, rng, lookup, find_peer)


async def run_hosts(n: int, lookups: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    stage = "open hosts"
    out: dict[str, Any] = {"transport": "hosts", "nodes": n}
    try:
        async with AsyncExitStack() as stack:
            hosts = [
                await stack.enter_async_context(
                    open_host(KeyPair(rng.randbytes(32)), listen=["/ip4/127.0.0.1/tcp/0"])
                )
                for _ in range(n)
            ]
            nursery = await stack.enter_async_context(trio.open_nursery())
            stage = "join"
            t0 = time.perf_counter()
            boot = KadDHT.for_host(hosts[0])
            await nursery.start(boot.run)
            dhts = [boot]
            boot_addr = hosts[0].addrs[0]
            for host in hosts[1:]:
                dht = KadDHT.for_host(host, bootstrap=[boot_addr])
                await nursery.start(dht.run)
                with trio.fail_after(JOIN_TIMEOUT):
                    await dht.bootstrapped.wait()
                dhts.append(dht)
            out["join_s"] = time.perf_counter() - t0
            out["table_sizes"] = summary([len(d.table) for d in dhts])
            stage = "lookups"
            out.update(await _measure(dhts, lookups, rng))
            out["connections"] = sum(len(h.connected_peers()) for h in hosts)
            nursery.cancel_scope.cancel()
    except Exception as e:  # reported to the caller, which falls back to the memory network
        return failed(stage, e, transport="hosts")
    out["ok"] = out.get("failure_count", 0) == 0 and out.get("lookup_success", 0) > 0
    return out


async def run_memory(n: int, lookups: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    net = MemoryNetwork(codec=True)
    dhts = [memory_node(net, KeyPair(rng.randbytes(32))) for _ in range(n)]
    t0 = time.perf_counter()
    boot = dhts[0]
    for dht in dhts[1:]:
        dht.add_peer(boot.peer_id, [net.addr_of(boot.peer_id)])
        await dht.lookup(dht.peer_id.to_bytes())
    out: dict[str, Any] = {"transport": "memory-codec", "nodes": n, "join_s": time.perf_counter() - t0}
    out["table_sizes"] = summary([len(d.table) for d in dhts])
    out.update(await _measure(dhts, lookups, rng))
    out["ok"] = out["failure_count"] == 0
    return out


def main() -> None:
    ap = lookup_network_parser(__doc__)
    ap.add_argument("--transport", choices=["hosts", "memory"], default="hosts")
    args = ap.parse_args()
    runner = run_hosts if args.transport == "hosts" else run_memory
    result = trio.run(runner, args.nodes, args.lookups, args.seed)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
