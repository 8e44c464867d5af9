"""A real-socket DHT swarm: N physarum nodes in P processes (``bench/_swarm_node.py``) join through one
bootstrap node; join time, connections per node, lookup latency and success. Prints one JSON object.

    .venv/bin/python bench/_swarm_run.py [--nodes 300] [--procs 3] [--lookups 90] [--seed 1]
        [--low 64 --high 96 --grace 20 | --no-trim] [--settle-timeout 120]

Steps: process 0 starts the bootstrap node (its node 0) and the others start with its address; every
host listens first, then all processes join at once (``--join-concurrency`` nodes at a time each),
and ``join_s`` is the time until every node's DHT has bootstrapped. Connections per node are read
right after the join, then (with trimming) polled every ``--poll`` seconds until every node holds
at most ``--high`` (``settle_s``: time from the end of the join), then ``--lookups`` random
``find_peer`` calls run one after another (a random seeker in any process, a random other node as
target; ``table_hit``: the seeker's routing table knew it, no network), and connections are read
once more. Only 127.0.0.1 is used. The library function :func:`run_swarm` is what
tests/integration/test_swarm.py runs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from physarum.overlay.connmgr import DEFAULT_CONN_MANAGER

if not __package__:  # run as a script: bench/ is first on sys.path
    from _harness import Partner, PartnerError, bench_argv, open_partner, summary
else:  # imported as bench._swarm_run (tests/integration/test_swarm.py)
    from ._harness import Partner, PartnerError, bench_argv, open_partner, summary  # type: ignore[no-redef]


@dataclass(frozen=True)
class SwarmConfig:
    nodes: int = 300
    procs: int = 3
    lookups: int = 90
    seed: int = 1
    low: int = DEFAULT_CONN_MANAGER.low_water
    high: int = DEFAULT_CONN_MANAGER.high_water
    grace: float = DEFAULT_CONN_MANAGER.grace_period
    trim: bool = True
    join_concurrency: int = 8
    join_timeout: float = 120.0
    settle_timeout: float = 120.0
    lookup_timeout: float = 20.0
    poll: float = 0.5
    log_level: str = "WARNING"

    def node_argv(self, nodes: int, index: int, *where: str) -> list[str]:
        """Process ``index``'s command line; ``where``: ``--with-bootstrap`` or ``--bootstrap MADDR``."""
        trim = {"low": self.low, "high": self.high, "grace": self.grace} if self.trim else {"no_trim": True}
        return bench_argv(
            "_swarm_node.py",
            *where,
            nodes=nodes,
            seed=self.seed * 1000 + index,
            join_concurrency=self.join_concurrency,
            join_timeout=self.join_timeout,
            lookup_timeout=self.lookup_timeout,
            log_level=self.log_level,
            **trim,
        )


class SwarmError(Exception):
    """A swarm process failed or did not answer in time; ``stage`` says when."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


async def _ask(proc: Partner, cmd: str, timeout: float, stage: str, **args: Any) -> dict[str, Any]:
    try:
        return await proc.call(cmd, timeout=timeout, **args)
    except PartnerError as e:
        raise SwarmError(stage, str(e)) from e


async def _stats(procs: list[Partner], stage: str) -> list[dict[str, Any]]:
    return [await _ask(p, "stats", 30, stage) for p in procs]


def _summary(values: list[float]) -> dict[str, float]:
    return summary(values, ("median", "p95", "max", "min"))


async def _join(procs: list[Partner], timeout: float) -> list[dict[str, Any]]:
    """Every process joins its nodes, all at once; their answers."""
    joined: list[dict[str, Any]] = []
    errors: list[SwarmError] = []

    async def one(proc: Partner) -> None:
        try:
            joined.append(await _ask(proc, "join", timeout, "join"))
        except SwarmError as e:  # raised below, outside the nursery, as itself
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for proc in procs:
            nursery.start_soon(one, proc)
    if errors:
        raise errors[0]
    return joined


def _connections(stats: list[dict[str, Any]]) -> list[int]:
    return [c for s in stats for c in s["connections"]]


async def run_swarm(cfg: SwarmConfig, logdir: str | None = None) -> dict[str, Any]:
    """Run the swarm; the figures as a dict (``ok``: every node joined and every lookup succeeded,
    and with trimming every node settled at or under ``high``).

    Raises:
        SwarmError: a process failed or did not answer in time.
    """
    sizes = [cfg.nodes // cfg.procs + (1 if i < cfg.nodes % cfg.procs else 0) for i in range(cfg.procs)]
    out: dict[str, Any] = {
        "nodes": cfg.nodes,
        "procs": cfg.procs,
        "trim": cfg.trim,
        "low_water": cfg.low if cfg.trim else None,
        "high_water": cfg.high if cfg.trim else None,
        "grace_s": cfg.grace if cfg.trim else None,
    }
    with tempfile.TemporaryDirectory(prefix="physarum-swarm-") as own_dir:
        logs = Path(logdir or own_dir)
        async with AsyncExitStack() as stack:

            async def start(index: int, *where: str) -> Partner:
                argv = cfg.node_argv(sizes[index], index, *where)
                log = logs / f"swarm-{index}.log"
                try:
                    return await stack.enter_async_context(
                        open_partner(argv, stderr=log, ready_timeout=120, stop_timeout=10)
                    )
                except (PartnerError, OSError) as e:
                    raise SwarmError("start", str(e)) from e

            first = await start(0, "--with-bootstrap")
            procs = [first] + [
                await start(i, "--bootstrap", first.ready["bootstrap"]) for i in range(1, cfg.procs)
            ]
            peers: list[list[str]] = [p.ready["peers"] for p in procs]
            t0 = time.perf_counter()
            joined = await _join(procs, cfg.join_timeout + 30)
            join_end = time.perf_counter()
            out["join_s"] = join_end - t0
            out["join_failures"] = [f for j in joined for f in j["failed"]]

            stats = await _stats(procs, "stats after join")
            out["connections_after_join"] = _summary([float(c) for c in _connections(stats)])
            out["tables_after_join"] = _summary([float(t) for s in stats for t in s["tables"]])

            if cfg.trim:
                deadline = join_end + cfg.settle_timeout
                while max(_connections(stats)) > cfg.high:
                    if time.perf_counter() > deadline:
                        out["settled"] = False
                        break
                    await trio.sleep(cfg.poll)
                    stats = await _stats(procs, "settle")
                else:
                    out["settled"] = True
                out["settle_s"] = time.perf_counter() - join_end
            out["connections_settled"] = _summary([float(c) for c in _connections(stats)])
            out["over_high_water"] = sum(1 for c in _connections(stats) if cfg.trim and c > cfg.high)

            rng = random.Random(cfg.seed)
            where = [(pi, ni) for pi, ids in enumerate(peers) for ni in range(len(ids))]
            results: list[list[Any]] = []
            for _ in range(cfg.lookups):
                (sp, sn), (tp, tn) = rng.sample(where, 2)
                reply = await _ask(
                    procs[sp], "find", cfg.lookup_timeout + 30, "lookups", pairs=[[sn, peers[tp][tn]]]
                )
                results += reply["results"]
            ok = [r for r in results if r[0]]
            out["lookups"] = len(results)
            out["lookup_success"] = len(ok) / len(results) if results else 0.0
            out["lookup_ms"] = _summary([r[1] for r in ok])
            out["lookup_ms_network"] = _summary([r[1] for r in ok if not r[2]])
            out["table_hits"] = sum(1 for r in results if r[2])
            out["lookup_failures"] = [r[3] for r in results if not r[0]][:5]

            stats = await _stats(procs, "stats after lookups")
            out["connections_after_lookups"] = _summary([float(c) for c in _connections(stats)])
            out["tables"] = _summary([float(t) for s in stats for t in s["tables"]])
            out["trimmed_connections"] = sum(s["trimmed"] for s in stats)
            out["cpu_s"] = sum(s["cpu_s"] for s in stats)
            closes: dict[str, int] = {}
            for s in stats:
                for how, n in s["bootstrap_closes"].items():
                    closes[how] = closes.get(how, 0) + n
            out["bootstrap_closes"] = closes
            out["ok"] = (
                not out["join_failures"] and out["lookup_success"] == 1.0 and (not cfg.trim or out["settled"])
            )
            return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = SwarmConfig()
    ap.add_argument("--nodes", type=int, default=d.nodes)
    ap.add_argument("--procs", type=int, default=d.procs)
    ap.add_argument("--lookups", type=int, default=d.lookups)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--low", type=int, default=d.low)
    ap.add_argument("--high", type=int, default=d.high)
    ap.add_argument("--grace", type=float, default=d.grace)
    ap.add_argument("--no-trim", action="store_true")
    ap.add_argument("--join-concurrency", type=int, default=d.join_concurrency)
    ap.add_argument("--settle-timeout", type=float, default=d.settle_timeout)
    ap.add_argument("--join-timeout", type=float, default=d.join_timeout)
    ap.add_argument("--log-level", default=d.log_level, help="the nodes' physarum log level")
    ap.add_argument("--logdir", help="keep the nodes' logs (stderr) here")
    args = ap.parse_args()
    cfg = SwarmConfig(
        nodes=args.nodes,
        procs=args.procs,
        lookups=args.lookups,
        seed=args.seed,
        low=args.low,
        high=args.high,
        grace=args.grace,
        trim=not args.no_trim,
        join_concurrency=args.join_concurrency,
        settle_timeout=args.settle_timeout,
        join_timeout=args.join_timeout,
        log_level=args.log_level,
    )
    try:
        result = trio.run(run_swarm, cfg, args.logdir)
    except SwarmError as e:
        result = {"ok": False, "stage": e.stage, "error": str(e)}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
