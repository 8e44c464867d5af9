"""One process of a real-socket DHT swarm (``bench/_swarm_run.py``): N physarum hosts + KadDHT on
127.0.0.1, driven over JSON lines on stdin/stdout (the protocol of ``bench/_harness.py``).

    .venv/bin/python bench/_swarm_node.py --nodes 100 (--with-bootstrap | --bootstrap MADDR) [options]

Each node is :func:`~physarum.overlay.host.open_host` (TCP + Noise + yamux, no PSK, listening on
127.0.0.1 port 0) with a connection manager (``--low/--high/--grace``; ``--no-trim``: none) running
:meth:`KadDHT.for_host` in server mode; the bootstrap peer is protected in every node's connection
manager (as ``physarum.cli.node`` does). With ``--with-bootstrap`` node 0 is the network's bootstrap
node: it joins nobody and is started (and its address printed) before the others.

Out: {"event":"ready","peers":[ID,...],"pid":N,"bootstrap":MADDR}  every host listens, nobody joined yet
     (``bootstrap``: node 0's address, with ``--with-bootstrap``)
In:  join -> {"seconds":S,"failed":[...]}  (every node's DHT bootstrapped);
     stats -> {"connections":[...],"tables":[...],"trimmed":N,"victims":N,"cpu_s":S,
               "bootstrap_closes":{"outbound, GoAway code 4101":N,...}}  (how connections to the bootstrap ended);
     find {pairs:[[node index, peer id], ...]} -> {"results":[[ok,ms,table_hit,error],...]};  stop.
Only 127.0.0.1 is listened on or dialed.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import os
import random
import resource
import time
from contextlib import AsyncExitStack
from functools import partial
from typing import Any

import trio
from _harness import emit, run_driven, serve_commands

from physarum.dht.service import KadDHT
from physarum.overlay import addr as addrs_
from physarum.overlay.connmgr import ConnManagerOptions
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import KeyPair, PeerId

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def _open_connections(host: Host) -> int:
    return sum(1 for conns in host.connections.values() for c in conns if not c.is_closed)


class Swarm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.options: ConnManagerOptions | None = (
            None
            if args.no_trim
            else ConnManagerOptions(low_water=args.low, high_water=args.high, grace_period=args.grace)
        )
        self.hosts: list[Host] = []
        self.dhts: list[KadDHT | None] = []
        self.boot_closes: collections.Counter[str] = collections.Counter()
        self.bootstrap: list[str] = [args.bootstrap] if args.bootstrap else []
        self.first = 0  # the first node that joins: 1 when node 0 is the network's bootstrap

    async def open_hosts(self, stack: AsyncExitStack, n: int) -> None:
        for _ in range(n):
            host = await stack.enter_async_context(
                open_host(KeyPair(self.rng.randbytes(32)), listen=[LOOPBACK], conn_manager=self.options)
            )
            self.hosts.append(host)
            self.dhts.append(None)

    async def start_dht(self, nursery: trio.Nursery, i: int, bootstrap: list[str]) -> KadDHT:
        host = self.hosts[i]
        boot_peers = {addrs_.tcp_endpoint(addrs_.parse(a)).peer_id for a in bootstrap} - {None}
        for peer in boot_peers:
            assert peer is not None
            host.conn_manager.protect(peer, "bootstrap")

        def closed(conn: Any) -> None:
            # How connections to the bootstrap end: its trims say GoAway 0x1005 (4101).
            if conn.peer_id in boot_peers:
                self.boot_closes[f"{conn.direction}, GoAway code {conn.go_away_code}"] += 1

        host.on_disconnect.append(closed)
        dht = KadDHT.for_host(host, bootstrap=bootstrap)
        await nursery.start(dht.run)
        self.dhts[i] = dht
        return dht

    async def cmd_join(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        """Start the DHTs of the nodes that join and wait until each one has."""
        limiter = trio.CapacityLimiter(self.args.join_concurrency)
        failed: list[str] = []
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            async with limiter:
                dht = await self.start_dht(nursery, i, self.bootstrap)
                with trio.move_on_after(self.args.join_timeout):
                    await dht.bootstrapped.wait()
                if not dht.bootstrapped.is_set():
                    failed.append(f"node {i}: not joined within {self.args.join_timeout} s")

        async with trio.open_nursery() as joins:
            for i in range(self.first, len(self.hosts)):
                joins.start_soon(one, i)
        return {"seconds": time.perf_counter() - t0, "failed": failed}

    async def cmd_stats(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "connections": [_open_connections(h) for h in self.hosts],
            "tables": [len(d.table) if d is not None else 0 for d in self.dhts],
            "trimmed": sum(h.conn_manager.trimmed_total for h in self.hosts),
            "victims": sum(h.conn_manager.victims_total for h in self.hosts),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "bootstrap_closes": dict(self.boot_closes),
        }

    async def cmd_find(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        results: list[list[Any]] = []
        for index, target_text in cmd["pairs"]:
            dht = self.dhts[int(index)]
            target = PeerId.from_string(target_text)
            if dht is None:
                results.append([False, 0.0, False, "node has no DHT"])
                continue
            hit = target in dht.table
            t0 = time.perf_counter()
            try:
                peer = await dht.find_peer(target, timeout=self.args.lookup_timeout)
                ok = peer.peer_id == target and bool(peer.addrs)
                results.append([ok, (time.perf_counter() - t0) * 1000, hit, "" if ok else "no address"])
            except Exception as e:  # a benchmark reports, it does not crash
                results.append(
                    [False, (time.perf_counter() - t0) * 1000, hit, f"{type(e).__name__}: {e}"[:200]]
                )
        return {"results": results}


async def main(args: argparse.Namespace) -> None:
    swarm = Swarm(args)
    async with AsyncExitStack() as stack:
        await swarm.open_hosts(stack, args.nodes)
        nursery = await stack.enter_async_context(trio.open_nursery())
        ready: dict[str, Any] = {"event": "ready", "peer_id": "", "addrs": [], "pid": os.getpid()}
        if args.with_bootstrap:
            await swarm.start_dht(nursery, 0, [])
            ready["bootstrap"] = str(swarm.hosts[0].addrs[0])
            swarm.bootstrap, swarm.first = [ready["bootstrap"]], 1
        emit({**ready, "peers": [str(h.peer_id) for h in swarm.hosts]})
        # A join takes as long as it takes (--join-timeout bounds each node's), so no limit here.
        await serve_commands(swarm, nursery, limit=math.inf)
        nursery.cancel_scope.cancel()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--with-bootstrap", action="store_true", help="node 0 is the network's bootstrap")
    where.add_argument("--bootstrap", metavar="MADDR", help="join through this node")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--low", type=int, default=ConnManagerOptions.low_water)
    ap.add_argument("--high", type=int, default=ConnManagerOptions.high_water)
    ap.add_argument("--grace", type=float, default=ConnManagerOptions.grace_period)
    ap.add_argument("--no-trim", action="store_true", help="no connection manager trimming (the baseline)")
    ap.add_argument("--join-concurrency", type=int, default=8)
    ap.add_argument("--join-timeout", type=float, default=120.0)
    ap.add_argument("--lookup-timeout", type=float, default=20.0)
    ap.add_argument("--log-level", default="WARNING", help="physarum's log level on stderr")
    return ap.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    logging.basicConfig(
        level=logging.WARNING, format="%(relativeCreated)d %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("physarum").setLevel(arguments.log_level.upper())
    run_driven(partial(main, arguments))
