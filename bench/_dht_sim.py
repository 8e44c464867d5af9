"""One simulated physarum DHT network of N nodes in this process, for ``bench/dht.py``: JSON out.

    .venv/bin/python bench/_dht_sim.py --nodes 10000 [--lookups 1000] [--refresh 2] [--seed 1]
                                       [--async-checks 50] [--profile 300] [--tracemalloc]

Every node is a real :class:`physarum.dht.service.KadDHT` (real Ed25519 key pair, real
:class:`~physarum.dht.table.RoutingTable`) registered in a ``MemoryNetwork(codec=False)``. Lookups
are the nodes' own lookup driver (:meth:`KadClient.start_lookup <physarum.dht.client.KadClient.start_lookup>`,
the :class:`~physarum.dht.client.LookupRun` that ``KadDHT.lookup`` runs), driven *synchronously* with
:meth:`~physarum.dht.client.LookupRun.run_in_order`: alpha = 3 queries in flight answered in the
order they were sent, each answer from the target node's own ``KadDHT.rpc(sender, FIND_NODE)`` (and
the asker offered to the answering node's table, as ``MemoryTransport.request`` does). Nothing of
Kademlia is re-implemented here: which peers to ask, when to stop, what a node answers and what goes
into its table is physarum's code; only trio's scheduling is left out. ``--async-checks`` lookups
also go through the real async ``KadDHT.lookup`` over the same network, and their results are
compared with the synchronous run's.

Building: node 0 is the bootstrap node; nodes join one at a time, each adding
node 0 to its table and looking up its own id (what ``KadDHT``'s bootstrap task does). Then every node
runs one maintenance round: it refreshes ``--refresh`` buckets, the emptiest ones (see
``buckets_to_refresh``), each with a lookup of a random key preimage in that bucket, as the
DHT's maintenance (:mod:`physarum.dht.maintenance`) does. Lookups are measured twice: after the joins and after the refresh.

Memory per node = growth of this process's VmRSS (after ``gc.collect()``) from before the nodes are
created to after the network is built, divided by N. ``--tracemalloc`` traces the build instead and
reports the traced bytes per node split by source file and line (tracing slows the build ~4x, so that
run measures nothing else). ``--profile N`` runs cProfile over N extra lookups: where the CPU goes.
No sockets are opened.
"""

from __future__ import annotations

import argparse
import collections
import gc
import hashlib
import heapq
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import trio
from _harness import status_kib, summary

from physarum.dht import keyspace
from physarum.dht.lookup import LookupStats
from physarum.dht.memory import MemoryNetwork
from physarum.dht.messages import Message, MessageType, Peer
from physarum.dht.service import KadDHT
from physarum.dht.table import DEFAULT_MAX_REFRESH_INDEX
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.multiaddr import Multiaddr


def settled_rss() -> int:
    """This process's VmRSS in bytes after a full collection."""
    gc.collect()
    return status_kib("self") * 1024


SUMMARY = ("median", "p99", "mean", "max", "n")


# ---------------------------------------------------------------------------------------- the network


def memory_node(net: MemoryNetwork, key_pair: KeyPair) -> KadDHT:
    """A KadDHT node in ``net``, advertising the placeholder address the network gives it."""
    peer_id = key_pair.peer_id
    node = KadDHT(key_pair, net.transport(peer_id))

    def own_addrs() -> list[Multiaddr]:
        return [net.addr_of(peer_id)]

    node.own_addrs = own_addrs
    net.nodes[peer_id] = node
    return node


@dataclass
class DriveResult:
    stats: LookupStats
    peers: list[Peer]
    responder_ns: int = 0  # wall time spent inside the answering nodes (rpc + add_peer of the asker)


class SyncNetwork:
    """A MemoryNetwork(codec=False) of KadDHT nodes, and their lookups run synchronously."""

    def __init__(self) -> None:
        self.net = MemoryNetwork(codec=False)
        self.nodes: list[KadDHT] = []

    def add_node(self, key_pair: KeyPair) -> KadDHT:
        node = memory_node(self.net, key_pair)
        self.nodes.append(node)
        return node

    def request(
        self, asker: PeerId, asker_addrs: list[Any], peer: PeerId, message: Message
    ) -> Message | None:
        """What ``MemoryTransport.request`` + ``KadClient._call`` do, minus the awaits; None = failure."""
        net = self.net
        net.messages += 1
        if peer in net.silent:
            return None
        node = net.nodes.get(peer)
        if node is None:
            return None
        add_peer = getattr(node, "add_peer", None)
        if add_peer is not None:
            add_peer(asker, asker_addrs)  # identify, on a real connection: the asker speaks kad
        reply = node.rpc(asker, message)
        if reply is None or reply.type != message.type:
            return None
        return reply

    def lookup(self, node: KadDHT, key: bytes) -> DriveResult:
        """``KadDHT.lookup(key)`` (FIND_NODE) without trio: the node's own lookup, answers taken in
        the order asked; ``responder_ns`` is the time spent in the answering nodes."""
        me = node.peer_id
        message = Message(MessageType.FIND_NODE, key=key)
        my_addrs = [self.net.addr_of(me)]
        responder_ns = 0
        clock = time.perf_counter_ns

        def ask(peer: Peer) -> tuple[Peer, ...] | None:
            nonlocal responder_ns
            t0 = clock()
            reply = self.request(me, my_addrs, peer.peer_id, message)
            responder_ns += clock() - t0
            return None if reply is None else reply.closer_peers

        result = node.client.start_lookup(key).run_in_order(ask)
        return DriveResult(result.stats, result.peers, responder_ns)


# ----------------------------------------------------------------------------------------- building


class Phase:
    """One phase of the build, timed as a ``with`` block: its wall and CPU seconds, the messages sent
    meanwhile, and the ``lookups`` the block counts."""

    def __init__(self, sim: SyncNetwork) -> None:
        self.sim = sim
        self.seconds = self.cpu_seconds = 0.0
        self.lookups = self.messages = 0

    def __enter__(self) -> Phase:
        self._start = (time.perf_counter(), time.process_time(), self.sim.net.messages)
        return self

    def __exit__(self, *exc_info: object) -> None:
        t0, c0, m0 = self._start
        self.seconds, self.cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        self.messages = self.sim.net.messages - m0

    def as_json(self) -> dict[str, float]:
        return {
            "seconds": round(self.seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "lookups": self.lookups,
            "messages": self.messages,
            "messages_per_lookup": round(self.messages / self.lookups, 2) if self.lookups else 0.0,
        }


def create_nodes(sim: SyncNetwork, n: int, rng: random.Random) -> Phase:
    with Phase(sim) as st:
        for _ in range(n):
            sim.add_node(KeyPair(rng.randbytes(32)))
    return st


def join_all(sim: SyncNetwork) -> Phase:
    """Each node in turn: add the bootstrap node, look up its own id (KadDHT's bootstrap task)."""
    boot = sim.nodes[0]
    boot_addrs = [sim.net.addr_of(boot.peer_id)]
    with Phase(sim) as st:
        for node in sim.nodes[1:]:
            node.add_peer(boot.peer_id, boot_addrs)
            sim.lookup(node, node.peer_id.to_bytes())
            st.lookups += 1
    return st


def buckets_to_refresh(node: KadDHT, count: int, policy: str) -> list[int]:
    """Which buckets a node refreshes in its maintenance round.

    ``sparse`` (default): the ``count`` emptiest buckets from 0 to the deepest non-empty one (capped
    at ``DEFAULT_MAX_REFRESH_INDEX``, as ``stale_buckets`` is), lower index first on ties. KadDHT's
    maintenance refreshes buckets idle for ``refresh_interval``; an empty bucket never sees activity
    and a full one is touched by every lookup through it, so the emptiest are the first to go stale.
    ``low``: the ``count`` lowest indices (every bucket idle, e.g. right after a restart).
    """
    table = node.table
    sizes = table.bucket_sizes()
    deepest = min(max(sizes, default=-1), DEFAULT_MAX_REFRESH_INDEX)
    indices = list(range(deepest + 1))
    if policy == "sparse":
        indices.sort(key=lambda i: (sizes.get(i, 0), i))
    return indices[:count]


def refresh_round(sim: SyncNetwork, buckets: int, policy: str, rng: random.Random) -> Phase:
    """Each node refreshes ``buckets`` of its buckets (see :func:`buckets_to_refresh`), as
    the DHT's maintenance does: mark the bucket refreshed, look up a random preimage in it."""
    with Phase(sim) as st:
        for node in sim.nodes:
            table = node.table
            for index in buckets_to_refresh(node, buckets, policy):
                table.mark_refreshed(index, trio.current_time())
                sim.lookup(node, table.random_preimage_in_bucket(index, rng))
                st.lookups += 1
    return st


# ---------------------------------------------------------------------------------------- measuring


@dataclass
class Measured:
    hops: list[float] = field(default_factory=list)
    messages: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    responder_share: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)
    exact: int = 0

    def as_json(self) -> dict[str, Any]:
        n = len(self.hops)
        return {
            "lookups": n,
            "exact_fraction": self.exact / n if n else 0.0,
            "recall_mean": statistics.fmean(self.recall) if self.recall else 0.0,
            "recall_min": min(self.recall) if self.recall else 0.0,
            "inexact": n - self.exact,
            "found_none": sum(1 for r in self.recall if r == 0),
            "hops": summary(self.hops, SUMMARY),
            "messages": summary(self.messages, SUMMARY),
            "cpu_ms": summary(self.cpu_ms, SUMMARY),
            "wall_ms": summary(self.wall_ms, SUMMARY),
            "responder_share": statistics.fmean(self.responder_share) if self.responder_share else 0.0,
            "failed_queries": sum(self.failures),
        }


def true_closest(keys: list[int], target: int, exclude_key: int, k: int) -> list[int]:
    """Brute force: the k smallest XOR distances to ``target`` over every node key but ``exclude_key``."""
    nearest = heapq.nsmallest(k + 1, (key ^ target for key in keys))
    skip = exclude_key ^ target
    return [d for d in nearest if d != skip][:k]


def measure(sim: SyncNetwork, lookups: int, rng: random.Random) -> Measured:
    keys = [keyspace.peer_key(n.peer_id) for n in sim.nodes]
    out = Measured()
    cpu, wall = time.thread_time_ns, time.perf_counter_ns
    gc.collect()
    for _ in range(lookups):
        node = rng.choice(sim.nodes)
        key = rng.randbytes(32)
        c0, w0 = cpu(), wall()
        res = sim.lookup(node, key)
        c1, w1 = cpu(), wall()
        target = keyspace.kad_key(key)
        truth = true_closest(keys, target, keyspace.peer_key(node.peer_id), node.k)
        got = [keyspace.peer_key(p.peer_id) ^ target for p in res.peers]
        out.exact += got == truth
        out.recall.append(len(set(got) & set(truth)) / len(truth))
        st = res.stats
        out.hops.append(st.hops)
        out.messages.append(st.queries)
        out.failures.append(st.failures)
        out.cpu_ms.append((c1 - c0) / 1e6)
        out.wall_ms.append((w1 - w0) / 1e6)
        out.responder_share.append(res.responder_ns / max(1, w1 - w0))
    return out


async def check_async(sim: SyncNetwork, count: int, rng: random.Random) -> dict[str, Any]:
    """The same (node, key) run synchronously and through the real async ``KadDHT.lookup``.

    Both run on the live network, one after the other (alternating which goes first), so the second
    starts from tables the first has just updated: results should agree; query counts may differ a
    little (so may trio's order of answers, which it shuffles on purpose).
    """
    same_peers = 0
    stats: dict[str, list[float]] = {
        k: []
        for k in ("sync_cpu_ms", "async_cpu_ms", "sync_queries", "async_queries", "sync_hops", "async_hops")
    }
    cpu = time.thread_time_ns
    for i in range(count):
        node = rng.choice(sim.nodes)
        key = rng.randbytes(32)
        order = ("sync", "async") if i % 2 == 0 else ("async", "sync")
        got: dict[str, list[PeerId]] = {}
        for how in order:
            c0 = cpu()
            if how == "sync":
                driven = sim.lookup(node, key)
                peers, st = driven.peers, driven.stats
            else:
                real = await node.lookup(key)
                peers, st = real.peers, real.stats
            stats[f"{how}_cpu_ms"].append((cpu() - c0) / 1e6)
            stats[f"{how}_queries"].append(st.queries)
            stats[f"{how}_hops"].append(st.hops)
            got[how] = [p.peer_id for p in peers]
        same_peers += got["sync"] == got["async"]
    out: dict[str, Any] = {"lookups": count, "same_result": same_peers}
    out.update({name: summary(values, SUMMARY) for name, values in stats.items()})
    return out


def profile_lookups(sim: SyncNetwork, count: int, rng: random.Random, top: int = 14) -> dict[str, Any]:
    """cProfile over ``count`` more lookups: where the CPU goes (shares of the profiled total)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    nodes = [rng.choice(sim.nodes) for _ in range(count)]
    keys = [rng.randbytes(32) for _ in range(count)]
    prof.enable()
    for node, key in zip(nodes, keys, strict=True):
        sim.lookup(node, key)
    prof.disable()
    st = pstats.Stats(prof)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    by_file: dict[str, float] = collections.defaultdict(float)
    for (filename, _, _), v in raw.items():
        by_file[_where(filename)] += v[2]
    return {
        "lookups": count,
        "note": "cProfile tottime shares (profiling overhead inflates small functions)",
        "functions": [
            {
                "function": f"{_where(filename)}:{line}({name})",
                "calls_per_lookup": round(v[1] / count, 1),
                "self_share": round(v[2] / total, 3),
                "cumulative_share": round(v[3] / total, 3),
            }
            for (filename, line, name), v in rows
        ],
        "by_file_self_share": {
            k: round(v / total, 3) for k, v in sorted(by_file.items(), key=lambda kv: -kv[1])[:8]
        },
    }


def table_stats(sim: SyncNetwork) -> dict[str, Any]:
    sizes = [len(n.table) for n in sim.nodes]
    replacements = sum(len(n.table.replacements(i)) for n in sim.nodes for i in n.table.bucket_sizes())
    return {
        "contacts": summary([float(s) for s in sizes], SUMMARY),
        "contacts_total": sum(sizes),
        "replacements_total": replacements,
    }


# ------------------------------------------------------------------------------------------- memory


def _where(filename: str) -> str:
    """A short name for a source file: the path from ``physarum/`` or from site-packages, else the name."""
    if filename == "~":
        return "builtins"
    parts = filename.replace("\\", "/").split("/")
    if "physarum" in parts:
        return "/".join(parts[parts.index("physarum") :])
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return parts[-1]


def traced_breakdown(snapshot: tracemalloc.Snapshot, before: tracemalloc.Snapshot, n: int) -> dict[str, Any]:
    by_file: dict[str, int] = collections.Counter()
    for stat in snapshot.compare_to(before, "filename"):
        if stat.size_diff > 0:
            by_file[_where(stat.traceback[0].filename)] += stat.size_diff
    by_line = [
        {
            "site": f"{_where(s.traceback[0].filename)}:{s.traceback[0].lineno}",
            "bytes_per_node": s.size_diff / n,
        }
        for s in snapshot.compare_to(before, "lineno")[:12]
        if s.size_diff > 0
    ]
    top = sorted(by_file.items(), key=lambda kv: -kv[1])[:10]
    return {
        "total_bytes_per_node": sum(by_file.values()) / n,
        "by_file_bytes_per_node": {name: size / n for name, size in top},
        "top_lines": by_line,
    }


# --------------------------------------------------------------------------------------------- main


async def simulate(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    sim = SyncNetwork()
    out: dict[str, Any] = {"nodes": args.nodes, "pid": os.getpid()}
    # Touch the code paths once, so first-use allocations are not charged to the network.
    keyspace.kad_key(hashlib.sha256(b"warm").digest())
    rss0 = settled_rss()
    if args.tracemalloc:
        tracemalloc.start(1)
        snap0 = tracemalloc.take_snapshot()
    create = create_nodes(sim, args.nodes, rng)
    join = join_all(sim)
    out.update({"create": create.as_json(), "join": join.as_json()})
    rss_join = settled_rss()
    out["tables_after_join"] = table_stats(sim)
    if args.lookups_after_join:
        out["after_join"] = measure(sim, args.lookups_after_join, random.Random(args.seed + 1)).as_json()
    refresh = refresh_round(sim, args.refresh, args.refresh_policy, rng)
    out.update(
        {"refresh": refresh.as_json(), "refresh_buckets": args.refresh, "refresh_policy": args.refresh_policy}
    )
    out["build_seconds"] = round(create.seconds + join.seconds + refresh.seconds, 2)
    out["build_cpu_seconds"] = round(create.cpu_seconds + join.cpu_seconds + refresh.cpu_seconds, 2)
    out["tables"] = table_stats(sim)
    if args.tracemalloc:
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        out["tracemalloc"] = traced_breakdown(snap1, snap0, args.nodes)
        del snap0, snap1
        return out  # RSS and timings are distorted by tracing: nothing more to measure
    rss_built = settled_rss()
    out["memory"] = {
        "method": "VmRSS growth after gc.collect(), from before the nodes are created, / N",
        "rss_before_bytes": rss0,
        "rss_after_join_bytes": rss_join,
        "rss_built_bytes": rss_built,
        "bytes_per_node_after_join": (rss_join - rss0) / args.nodes,
        "bytes_per_node": (rss_built - rss0) / args.nodes,
    }
    if args.lookups:
        out["measured"] = measure(sim, args.lookups, random.Random(args.seed + 2)).as_json()
    if args.async_checks:
        out["async_check"] = await check_async(sim, args.async_checks, random.Random(args.seed + 3))
    if args.profile:
        out["profile"] = profile_lookups(sim, args.profile, random.Random(args.seed + 4))
    out["peer_key_cache"] = keyspace.peer_key.cache_info()._asdict()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--lookups", type=int, default=1000, help="measured lookups after the refresh round")
    ap.add_argument("--lookups-after-join", type=int, default=None, help="default: same as --lookups")
    ap.add_argument("--refresh", type=int, default=2, help="buckets each node refreshes after all joined")
    ap.add_argument("--refresh-policy", choices=["sparse", "low"], default="sparse")
    ap.add_argument("--async-checks", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", type=int, default=0, help="cProfile this many extra lookups")
    ap.add_argument(
        "--tracemalloc", action="store_true", help="trace the build, report where memory goes, and stop there"
    )
    args = ap.parse_args()
    if args.lookups_after_join is None:
        args.lookups_after_join = args.lookups
    result = trio.run(simulate, args)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
