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

import argparse
import json
import random
import statistics
import sys
import time
import traceback
from contextlib import AsyncExitStack
from typing import Any

import trio

from physarum.dht.memory import MemoryNetwork
from physarum.dht.service import KadDHT
from physarum.overlay.host import open_host
from physarum.overlay.identity import KeyPair

JOIN_TIMEOUT = 30.0
LOOKUP_TIMEOUT = 30.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"median": statistics.median(values), "p99": _pct(values, 0.99), "max": max(values)}


async def _measure(dhts: list[KadDHT], lookups: int, rng: random.Random) -> dict[str, Any]:
    lookup_ms: list[float] = []
    find_ms: list[float] = []
    msgs: list[float] = []
    hops: list[float] = []
    found = 0
    find_ok = 0
    failures: list[str] = []
    for _ in range(lookups):
        a, b = rng.sample(range(len(dhts)), 2)
        seeker, target = dhts[a], dhts[b].peer_id
        t0 = time.perf_counter()
        try:
            result = await seeker.lookup(target.to_bytes(), timeout=LOOKUP_TIMEOUT)
        except Exception as e:  # a benchmark reports, it does not crash
            failures.append(f"lookup: {type(e).__name__}: {e}")
            continue
        lookup_ms.append((time.perf_counter() - t0) * 1000)
        msgs.append(result.stats.queries)
        hops.append(result.stats.hops)
        found += any(p.peer_id == target and p.addrs for p in result.peers)
        t0 = time.perf_counter()
        try:
            with trio.fail_after(LOOKUP_TIMEOUT):
                peer = await seeker.find_peer(target)
            find_ms.append((time.perf_counter() - t0) * 1000)
            find_ok += peer.peer_id == target and bool(peer.addrs)
        except Exception as e:
            failures.append(f"find_peer: {type(e).__name__}: {e}")
    return {
        "lookups": lookups,
        "lookup_ms": _summary(lookup_ms),
        "lookup_success": found / lookups if lookups else 0.0,
        "find_peer_ms": _summary(find_ms),
        "find_peer_success": find_ok / lookups if lookups else 0.0,
        "messages": _summary(msgs),
        "hops": _summary(hops),
        "failures": failures[:5],
        "failure_count": len(failures),
    }


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
            out["table_sizes"] = _summary([len(d.table) for d in dhts])
            stage = "lookups"
            out.update(await _measure(dhts, lookups, rng))
            out["connections"] = sum(len(h.connected_peers()) for h in hosts)
            nursery.cancel_scope.cancel()
    except Exception as e:  # reported to the caller, which falls back to the memory network
        return {
            "ok": False,
            "transport": "hosts",
            "stage": stage,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=8),
        }
    out["ok"] = out.get("failure_count", 0) == 0 and out.get("lookup_success", 0) > 0
    return out


async def run_memory(n: int, lookups: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    net = MemoryNetwork(codec=True)
    dhts: list[KadDHT] = []
    for _ in range(n):
        kp = KeyPair(rng.randbytes(32))
        dht = KadDHT(kp, net.transport(kp.peer_id))
        dht.own_addrs = lambda p=kp.peer_id: [net.addr_of(p)]  # type: ignore[method-assign]
        net.nodes[kp.peer_id] = dht
        dhts.append(dht)
    t0 = time.perf_counter()
    boot = dhts[0]
    for dht in dhts[1:]:
        dht.add_peer(boot.peer_id, [net.addr_of(boot.peer_id)])
        await dht.lookup(dht.peer_id.to_bytes())
    out: dict[str, Any] = {"transport": "memory-codec", "nodes": n, "join_s": time.perf_counter() - t0}
    out["table_sizes"] = _summary([len(d.table) for d in dhts])
    out.update(await _measure(dhts, lookups, rng))
    out["ok"] = out["failure_count"] == 0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--lookups", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--transport", choices=["hosts", "memory"], default="hosts")
    args = ap.parse_args()
    runner = run_hosts if args.transport == "hosts" else run_memory
    result = trio.run(runner, args.nodes, args.lookups, args.seed)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
