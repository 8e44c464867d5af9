"""One process of a real-socket DHT swarm (``bench/_swarm_run.py``): N physarum hosts + KadDHT on
127.0.0.1, driven over JSON lines on stdin/stdout.

    .venv/bin/python bench/_swarm_node.py --nodes 100 (--with-bootstrap | --bootstrap MADDR) [options]

Each node is :func:`~physarum.overlay.host.open_host` (TCP + Noise + yamux, no PSK, listening on
127.0.0.1 port 0) with a connection manager (``--low/--high/--grace``; ``--no-trim``: none) running
:meth:`KadDHT.for_host` in server mode; the bootstrap peer is protected in every node's connection
manager (as ``physarum.cli.node`` does). With ``--with-bootstrap`` node 0 is the network's bootstrap
node: it joins nobody and is started (and its address printed) before the others.

Out, one JSON object per line:
    {"event":"bootstrap","addr":MADDR}                  (``--with-bootstrap``, first)
    {"event":"ready","peers":[ID,...],"pid":N}          every host listens, nobody joined yet
    {"event":"joined","seconds":S,"failed":[...]}       after ``join``: every node's DHT bootstrapped
    {"event":"stats","connections":[...],"tables":[...],"trimmed":N,"victims":N,"cpu_s":S,
     "bootstrap_closes":{"outbound, GoAway code 4101":N,...}}  (how connections to the bootstrap ended)
    {"event":"found","results":[[ok,ms,table_hit,error],...]}
    {"event":"error","error":TEXT}
In:  {"cmd":"join"}  {"cmd":"stats"}  {"cmd":"find","pairs":[[node index, peer id], ...]}  {"cmd":"quit"}
Only 127.0.0.1 is listened on or dialed.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import resource
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import trio

from physarum.dht.service import KadDHT
from physarum.overlay import addr as addrs_
from physarum.overlay.connmgr import ConnManagerOptions
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import KeyPair, PeerId

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _open_connections(host: Host) -> int:
    return sum(1 for conns in host.connections.values() for c in conns if not c.is_closed)


async def _lines(stream: trio.abc.ReceiveStream) -> Any:
    buf = b""
    while True:
        while b"\n" not in buf:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
        line, buf = buf.split(b"\n", 1)
        if line.strip():
            yield json.loads(line)


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
                self.boot_closes[f"{conn.direction}, GoAway code {conn.session.go_away_code}"] += 1

        host.on_disconnect.append(closed)
        dht = KadDHT.for_host(host, bootstrap=bootstrap)
        await nursery.start(dht.run)
        self.dhts[i] = dht
        return dht

    async def join(self, nursery: trio.Nursery, first: int, bootstrap: list[str]) -> dict[str, Any]:
        """Start the DHTs of nodes ``first..`` and wait until each one has joined."""
        limiter = trio.CapacityLimiter(self.args.join_concurrency)
        failed: list[str] = []
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            async with limiter:
                dht = await self.start_dht(nursery, i, bootstrap)
                with trio.move_on_after(self.args.join_timeout):
                    await dht.bootstrapped.wait()
                if not dht.bootstrapped.is_set():
                    failed.append(f"node {i}: not joined within {self.args.join_timeout} s")

        async with trio.open_nursery() as joins:
            for i in range(first, len(self.hosts)):
                joins.start_soon(one, i)
        return {"event": "joined", "seconds": time.perf_counter() - t0, "failed": failed}

    def stats(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "event": "stats",
            "connections": [_open_connections(h) for h in self.hosts],
            "tables": [len(d.table) if d is not None else 0 for d in self.dhts],
            "trimmed": sum(h.conn_manager.trimmed_total for h in self.hosts),
            "victims": sum(h.conn_manager.victims_total for h in self.hosts),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "bootstrap_closes": dict(self.boot_closes),
        }

    async def find(self, pairs: list[list[Any]]) -> dict[str, Any]:
        results: list[list[Any]] = []
        for index, target_text in pairs:
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
        return {"event": "found", "results": results}


async def main(args: argparse.Namespace) -> None:
    swarm = Swarm(args)
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with AsyncExitStack() as stack:
        await swarm.open_hosts(stack, args.nodes)
        nursery = await stack.enter_async_context(trio.open_nursery())
        bootstrap: list[str] = [args.bootstrap] if args.bootstrap else []
        first = 0
        if args.with_bootstrap:
            await swarm.start_dht(nursery, 0, [])
            boot = str(swarm.hosts[0].addrs[0])
            bootstrap = [boot]
            first = 1
            emit({"event": "bootstrap", "addr": boot})
        emit({"event": "ready", "peers": [str(h.peer_id) for h in swarm.hosts], "pid": os.getpid()})
        async for cmd in _lines(stdin):
            what = cmd.get("cmd")
            if what == "join":
                emit(await swarm.join(nursery, first, bootstrap))
            elif what == "stats":
                emit(swarm.stats())
            elif what == "find":
                emit(await swarm.find(cmd["pairs"]))
            elif what == "quit":
                break
            else:
                emit({"event": "error", "error": f"unknown command {what!r}"})
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
    try:
        trio.run(main, arguments)
    except KeyboardInterrupt:
        pass
