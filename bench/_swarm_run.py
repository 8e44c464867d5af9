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
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from physarum.overlay.connmgr import DEFAULT_CONN_MANAGER

NODE = Path(__file__).resolve().parent / "_swarm_node.py"


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

    def node_argv(self, nodes: int, index: int) -> list[str]:
        argv = [
            sys.executable,
            str(NODE),
            "--nodes",
            str(nodes),
            "--seed",
            str(self.seed * 1000 + index),
            "--join-concurrency",
            str(self.join_concurrency),
            "--join-timeout",
            str(self.join_timeout),
            "--lookup-timeout",
            str(self.lookup_timeout),
            "--log-level",
            self.log_level,
        ]
        if self.trim:
            argv += ["--low", str(self.low), "--high", str(self.high), "--grace", str(self.grace)]
        else:
            argv.append("--no-trim")
        return argv


class SwarmError(Exception):
    """A swarm process failed or did not answer in time; ``stage`` says when."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


class NodeProcess:
    """One ``_swarm_node.py`` child, spoken to in JSON lines."""

    def __init__(self, process: trio.Process, log_path: str) -> None:
        self.process = process
        self.log_path = log_path
        self._buf = b""
        self.peers: list[str] = []

    async def send(self, cmd: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(cmd).encode() + b"\n")

    async def expect(self, event: str, timeout: float, stage: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        with trio.move_on_after(timeout):
            while True:
                while b"\n" not in self._buf:
                    data = await self.process.stdout.receive_some(1 << 20)
                    if not data:
                        raise SwarmError(stage, f"process exited ({self.tail()})")
                    self._buf += data
                line, self._buf = self._buf.split(b"\n", 1)
                if not line.startswith(b"{"):
                    continue
                msg: dict[str, Any] = json.loads(line)
                if msg.get("event") == "error":
                    raise SwarmError(stage, str(msg.get("error")))
                if msg.get("event") == event:
                    return msg
        raise SwarmError(stage, f"no {event!r} within {timeout:.0f} s ({self.tail()})")

    def tail(self) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:])[-400:] or "empty log"


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {"median": statistics.median(ordered), "p95": pct(0.95), "max": ordered[-1], "min": ordered[0]}


async def _spawn(cfg: SwarmConfig, nodes: int, index: int, extra: list[str], logdir: str) -> NodeProcess:
    log_path = os.path.join(logdir, f"swarm-{index}.log")
    log = open(log_path, "wb")
    try:
        process = await trio.lowlevel.open_process(
            [*cfg.node_argv(nodes, index), *extra],
            stdin=-1,
            stdout=-1,
            stderr=log,
            cwd=str(NODE.parent.parent),
        )
    finally:
        log.close()
    return NodeProcess(process, log_path)


async def _stats(procs: list[NodeProcess], stage: str) -> list[dict[str, Any]]:
    for p in procs:
        await p.send({"cmd": "stats"})
    return [await p.expect("stats", 30, stage) for p in procs]


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
    procs: list[NodeProcess] = []
    own_dir = None
    if logdir is None:
        own_dir = tempfile.TemporaryDirectory(prefix="physarum-swarm-")
        logdir = own_dir.name
    try:
        first = await _spawn(cfg, sizes[0], 0, ["--with-bootstrap"], logdir)
        procs.append(first)
        boot = (await first.expect("bootstrap", 60, "start"))["addr"]
        for i, n in enumerate(sizes[1:], start=1):
            procs.append(await _spawn(cfg, n, i, ["--bootstrap", boot], logdir))
        for p in procs:
            p.peers = (await p.expect("ready", 120, "start"))["peers"]
        t0 = time.perf_counter()
        for p in procs:
            await p.send({"cmd": "join"})
        joined = [await p.expect("joined", cfg.join_timeout + 30, "join") for p in procs]
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
        where = [(pi, ni) for pi, p in enumerate(procs) for ni in range(len(p.peers))]
        results: list[list[Any]] = []
        for _ in range(cfg.lookups):
            (sp, sn), (tp, tn) = rng.sample(where, 2)
            await procs[sp].send({"cmd": "find", "pairs": [[sn, procs[tp].peers[tn]]]})
            results += (await procs[sp].expect("found", cfg.lookup_timeout + 30, "lookups"))["results"]
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
    finally:
        with trio.CancelScope(shield=True):
            for p in procs:
                try:
                    await p.send({"cmd": "quit"})
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            with trio.move_on_after(10):
                for p in procs:
                    await p.process.wait()
            for p in procs:
                if p.process.returncode is None:
                    p.process.kill()
                    await p.process.wait()
                for pipe in (p.process.stdin, p.process.stdout):
                    if pipe is not None:
                        await pipe.aclose()
        if own_dir is not None:
            own_dir.cleanup()


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
