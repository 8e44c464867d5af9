"""DHT benchmark: simulated physarum networks of 1,000 and 10,000 nodes, and 20-node networks of real hosts
beside py-libp2p's kad-dht.

    .venv/bin/python bench/dht.py [--quick] [--json PATH] [--seed N]

Simulation (bench/_dht_sim.py; each network lives entirely in one process, a fresh child per size so
that its RSS growth is its own): N real ``KadDHT`` nodes (Ed25519 identities, real ``RoutingTable``s)
in a ``MemoryNetwork(codec=False)``. Node 0 bootstraps; the others join one at a time (add node 0,
look up their own id), then each refreshes its two emptiest buckets (one maintenance round). Every
lookup, the joins included, is the nodes' own lookup driver (``physarum.dht.client.LookupRun``, what
``KadDHT.lookup`` runs) driven synchronously against the nodes' real ``KadDHT.rpc`` (FIND_NODE); a sample
also goes through the real async ``KadDHT.lookup`` to check the two agree. Lookups go to random
keys from random nodes and are checked against brute force over every node key. Reported per size:
hops (Lookup.stats.hops, the longest referral chain) beside log2(N), messages, the fraction of exact
answers (the true 20 closest, in order), CPU time per lookup (all the code a lookup runs, the
answering nodes' included: there is no network), and memory per node (VmRSS growth / N).
``--quick``: 1,000 and 3,000 nodes, fewer lookups, no tracemalloc breakdown.

Comparison: 20 py-libp2p 0.8.1 hosts (bench/_pylibp2p_dht.py, run by tests/interop/py/.venv's
interpreter) and 20 physarum hosts (bench/_physarum_dht20.py: ``open_host`` + ``KadDHT.for_host``),
each set in one process on 127.0.0.1, joined through a bootstrap node; 50 lookups of random peers.
Also physarum's 20 nodes over ``MemoryNetwork(codec=True)`` (no sockets, every message encoded).

Swarm (``--swarm N``, bench/_swarm_run.py): N real physarum nodes in 3 processes (bench/_swarm_node.py,
N/3 hosts + KadDHT each, TCP + Noise + yamux on 127.0.0.1) join through one bootstrap node, all at once;
then connections per node (polled until every node holds at most the high-water mark) and 90 random
``find_peer`` lookups. Run twice: with the default connection manager (64/96, 20 s grace) and without
one (the same-run baseline: every peer contacted stays connected). ``--swarm-only``: just that section
(its figures are merged into the existing results JSON).

A benchmark, not a test: it never asserts a timing. Other work on the machine inflates wall times
(the load average is printed); CPU times and counts are steadier. Results go to bench/results/dht.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from _harness import (
    RESULTS,
    ROOT,
    Goal,
    PartnerSetupError,
    Run,
    aligned,
    bench_argv,
    goal_lines,
    goal_markdown,
    markdown,
    py_venv_python,
    utc_now,
    write_json,
)
from _harness import fmt as plain_fmt
from _harness import progress as bench_progress

SWARM_PROCS = 3
SWARM_LOOKUPS = 90
RESULTS_JSON = RESULTS / "dht.json"
KIB = 1024

GOAL_EXACT = 0.99  # at 10,000 nodes
GOAL_EXACT_NODES = 10_000
GOAL_HOPS = 4.0  # median
GOAL_KIB_PER_NODE = 100.0

METHOD = (
    "(b)+(a): nodes join one by one through node 0 (add it, look up their own id), then each refreshes its "
    "2 emptiest buckets; every lookup (joins, refreshes, measured) is the real Lookup state machine driven "
    "synchronously against the nodes' real KadDHT.rpc(FIND_NODE) over MemoryNetwork(codec=False), with "
    "KadDHT.lookup's table updates on both sides; a sample is re-run through the async KadDHT.lookup"
)


@dataclass(frozen=True)
class Config:
    quick: bool
    sizes: tuple[int, ...]
    lookups: int
    async_checks: int
    profile: int
    refresh: int
    tracemalloc_nodes: int  # 0: skip
    partner_nodes: int
    partner_lookups: int
    seed: int

    @classmethod
    def make(cls, quick: bool, seed: int) -> Config:
        if quick:
            return cls(True, (1000, 3000), 300, 20, 100, 2, 0, 20, 50, seed)
        return cls(False, (1000, 10_000), 1000, 50, 300, 2, 1000, 20, 50, seed)


progress = partial(bench_progress, tag="dht bench")
fmt = partial(plain_fmt, grouping=True)  # node counts run into the thousands


def run_json(argv: list[str], timeout: float) -> dict[str, Any]:
    """Run a helper that prints one JSON object; failures come back as {"ok": false, "error": ...}."""
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    except OSError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    lines = [line for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"exit {proc.returncode}: {tail[:300]}"}
    try:
        data: dict[str, Any] = json.loads(lines[-1])
    except ValueError as e:
        return {"ok": False, "error": f"bad JSON from helper: {e}"}
    data.setdefault("ok", True)
    return data


# ---------------------------------------------------------------------------------------- running


def run_simulations(cfg: Config) -> list[dict[str, Any]]:
    out = []
    for n in cfg.sizes:
        progress(
            f"simulating {n:,} nodes (build, {cfg.lookups} lookups after the joins and after the refresh)"
        )
        t0 = time.perf_counter()
        argv = bench_argv(
            "_dht_sim.py",
            nodes=n,
            lookups=cfg.lookups,
            refresh=cfg.refresh,
            async_checks=cfg.async_checks,
            profile=cfg.profile,
            seed=cfg.seed,
        )
        res = run_json(argv, timeout=1800)
        res["child_seconds"] = round(time.perf_counter() - t0, 1)
        if res.get("ok", True) and "measured" in res:
            progress(
                f"  {n:,} nodes: built in {res['build_seconds']:.0f} s, "
                f"exact {res['measured']['exact_fraction']:.1%}, child {res['child_seconds']:.0f} s"
            )
        else:
            progress(f"  {n:,} nodes failed: {res.get('error')}")
        out.append(res)
    return out


def run_tracemalloc(cfg: Config) -> dict[str, Any] | None:
    if not cfg.tracemalloc_nodes:
        return None
    n = cfg.tracemalloc_nodes
    progress(f"tracing the memory of a {n:,}-node build (tracemalloc; slow)")
    argv = bench_argv(
        "_dht_sim.py",
        nodes=n,
        lookups=0,
        lookups_after_join=0,
        refresh=cfg.refresh,
        seed=cfg.seed,
        tracemalloc=True,
    )
    return run_json(argv, timeout=900)


def run_partners(cfg: Config) -> dict[str, dict[str, Any]]:
    common: dict[str, Any] = {"nodes": cfg.partner_nodes, "lookups": cfg.partner_lookups, "seed": cfg.seed}
    n, lookups = cfg.partner_nodes, cfg.partner_lookups
    out: dict[str, dict[str, Any]] = {}
    progress(f"py-libp2p: {n} hosts, {lookups} lookups")
    try:
        argv = bench_argv("_pylibp2p_dht.py", python=py_venv_python(), **common)
        out["py-libp2p"] = run_json(argv, timeout=600)
    except PartnerSetupError as e:
        out["py-libp2p"] = {"ok": False, "error": str(e)}
    for transport, what in (("hosts", f"{n} hosts"), ("memory", f"{n} nodes over MemoryNetwork(codec=True)")):
        progress(f"physarum: {what}, {lookups} lookups")
        argv = bench_argv("_physarum_dht20.py", **common, transport=transport)
        out[f"physarum-{transport}"] = run_json(argv, timeout=600)
    for name, res in out.items():
        if not res.get("ok"):
            progress(f"  {name}: {res.get('error') or res.get('failures')}")
    return out


def run_swarm(nodes: int, seed: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, no_trim in (("connection manager", False), ("no connection manager", True)):
        progress(f"swarm: {nodes} nodes in {SWARM_PROCS} processes, {name}")
        argv = bench_argv(
            "_swarm_run.py",
            nodes=nodes,
            procs=SWARM_PROCS,
            lookups=SWARM_LOOKUPS,
            seed=seed,
            join_timeout=1800,
            no_trim=no_trim,
        )
        res = run_json(argv, timeout=3600)
        if res.get("ok"):
            progress(
                f"  joined in {res['join_s']:.0f} s, connections/node max {res['connections_settled']['max']:.0f}, "
                f"lookups {res['lookup_success']:.0%}"
            )
        else:
            progress(
                f"  failed: {res.get('error') or res.get('lookup_failures') or res.get('join_failures')}"
            )
        out[name] = res
    return out


SWARM_HEADER = [
    "swarm",
    "join s",
    "conns/node med",
    "conns/node max",
    "after lookups max",
    "lookup ms med",
    "lookup ms p95",
    "found",
    "trimmed",
    "CPU s",
]


def swarm_rows(swarm: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, res in swarm.items():
        if "join_s" not in res:
            rows.append([name, "failed: " + str(res.get("error"))[:80]] + ["-"] * (len(SWARM_HEADER) - 2))
            continue
        if res.get("trim"):
            label = f"{name} ({res['low_water']}/{res['high_water']}, {res['grace_s']:g} s grace)"
        else:
            label = name
        settled = res.get("connections_settled") or {}
        after = res.get("connections_after_lookups") or {}
        rows.append(
            [
                f"{label}, {res['nodes']} nodes",
                fmt(res.get("join_s"), 0),
                fmt(settled.get("median"), 0),
                fmt(settled.get("max"), 0),
                fmt(after.get("max"), 0),
                fmt(med(res.get("lookup_ms")), 1),
                fmt(med(res.get("lookup_ms"), "p95"), 1),
                f"{round(res.get('lookup_success', 0) * res.get('lookups', 0))}/{res.get('lookups', 0)}",
                f"{res.get('trimmed_connections', 0):,}",
                fmt(res.get("cpu_s"), 0),
            ]
        )
    return rows


def swarm_notes(swarm: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, res in swarm.items():
        if "join_s" not in res:
            continue
        net = res.get("lookup_ms_network") or {}
        line = (
            f"swarm, {name}: connections/node right after the join median {res['connections_after_join']['median']:.0f}, "
            f"max {res['connections_after_join']['max']:.0f}; routing tables median {res['tables']['median']:.0f}; "
            f"{res['table_hits']} of {res['lookups']} find_peer answered from the seeker's table, the others by a "
            f"lookup (median {fmt(net.get('median'), 1)} ms, p95 {fmt(net.get('p95'), 1)} ms)"
        )
        if res.get("trim"):
            line += (
                f"; every node at or under {res['high_water']} {res['settle_s']:.0f} s after the join"
                if res.get("settled")
                else f"; NOT settled: {res.get('over_high_water')} node(s) over {res['high_water']}"
            )
            closes = res.get("bootstrap_closes") or {}
            if closes:
                line += "; connections to the bootstrap ended: " + ", ".join(
                    f"{k} x{v}" for k, v in closes.items()
                )
        out.append(line)
    return out


# ---------------------------------------------------------------------------------------- formatting


def med(d: dict[str, Any] | None, key: str = "median") -> float | None:
    return None if not d else d.get(key)


SIM_HEADER = [
    "nodes",
    "state",
    "build s",
    "log2 N",
    "hops med",
    "hops p99",
    "msgs med",
    "msgs p99",
    "exact",
    "recall",
    "CPU ms med",
    "CPU ms p99",
    "KiB/node",
]


def sim_rows(sims: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for s in sims:
        n = s.get("nodes")
        if not s.get("ok", True) or "measured" not in s:
            rows.append([f"{n:,}" if n else "?", "failed: " + str(s.get("error"))[:60]] + ["-"] * 11)
            continue
        mem = s["memory"]
        log2n = fmt(math.log2(s["nodes"]), 1)
        for state, m, build, kib in (
            (
                "joined",
                s.get("after_join"),
                s["create"]["seconds"] + s["join"]["seconds"],
                mem["bytes_per_node_after_join"] / KIB,
            ),
            ("+refresh", s["measured"], s["build_seconds"], mem["bytes_per_node"] / KIB),
        ):
            if not m:
                continue
            rows.append(
                [
                    f"{n:,}",
                    state,
                    fmt(build, 0),
                    log2n,
                    fmt(m["hops"]["median"], 0),
                    fmt(m["hops"]["p99"], 0),
                    fmt(m["messages"]["median"], 0),
                    fmt(m["messages"]["p99"], 0),
                    fmt(m["exact_fraction"], 1, pct=True),
                    fmt(m["recall_mean"], 1, pct=True),
                    fmt(m["cpu_ms"]["median"], 2),
                    fmt(m["cpu_ms"]["p99"], 2),
                    fmt(kib, 1),
                ]
            )
    return rows


PARTNER_HEADER = [
    "20-node network",
    "join s",
    "lookup ms med",
    "lookup ms p99",
    "msgs med",
    "msgs p99",
    "found",
    "find_peer ms med",
    "table med",
]
PARTNER_LABELS = {
    "py-libp2p": "py-libp2p {version} kad-dht, TCP+Noise+yamux",
    "physarum-hosts": "physarum KadDHT.for_host, TCP+Noise+yamux",
    "physarum-memory": "physarum KadDHT, MemoryNetwork(codec=True)",
}


def partner_rows(partners: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, res in partners.items():
        label = PARTNER_LABELS[name].format(version=res.get("version", "0.8.1"))
        if not res.get("ok") and "lookup_ms" not in res:
            rows.append([label, "failed: " + str(res.get("error"))[:80]] + ["-"] * 7)
            continue
        rows.append(
            [
                label,
                fmt(res.get("join_s"), 1),
                fmt(med(res.get("lookup_ms")), 1),
                fmt(med(res.get("lookup_ms"), "p99"), 1),
                fmt(med(res.get("messages")), 0),
                fmt(med(res.get("messages"), "p99"), 0),
                fmt(res.get("lookup_success"), 0, pct=True),
                fmt(med(res.get("find_peer_ms")), 3),
                fmt(med(res.get("table_sizes")), 0),
            ]
        )
    return rows


def evaluate_goals(sims: list[dict[str, Any]]) -> list[Goal]:
    ok = [s for s in sims if "measured" in s]
    goals = []
    big = next((s for s in ok if s["nodes"] == GOAL_EXACT_NODES), None)
    if big is not None:
        frac = big["measured"]["exact_fraction"]
        goals.append(
            Goal(
                f"exact 20 closest at {GOAL_EXACT_NODES:,} nodes",
                f">= {GOAL_EXACT:.0%}",
                f"{frac:.1%} of {big['measured']['lookups']} lookups",
                frac >= GOAL_EXACT,
            )
        )
    else:
        largest = max(ok, key=lambda s: s["nodes"], default=None)
        value = "not measured at 10,000 nodes (--quick)"
        if largest is not None:
            value += f"; {largest['measured']['exact_fraction']:.1%} at {largest['nodes']:,}"
        goals.append(
            Goal(f"exact 20 closest at {GOAL_EXACT_NODES:,} nodes", f">= {GOAL_EXACT:.0%}", value, None)
        )
    if ok:
        hops = {s["nodes"]: s["measured"]["hops"]["median"] for s in ok}
        goals.append(
            Goal(
                "median hops",
                f"<= {GOAL_HOPS:.0f}",
                ", ".join(f"{h:.0f} at {n:,} (log2 N = {math.log2(n):.1f})" for n, h in hops.items()),
                all(h <= GOAL_HOPS for h in hops.values()),
            )
        )
        kib = {s["nodes"]: s["memory"]["bytes_per_node"] / KIB for s in ok}
        goals.append(
            Goal(
                "memory per simulated node",
                f"< {GOAL_KIB_PER_NODE:.0f} KiB",
                ", ".join(f"{v:.1f} KiB at {n:,} (RSS)" for n, v in kib.items()),
                all(v < GOAL_KIB_PER_NODE for v in kib.values()),
            )
        )
        build = {s["nodes"]: s["build_seconds"] for s in ok}
        limit = 60 if max(build) < GOAL_EXACT_NODES else 180
        goals.append(
            Goal(
                "build time of the largest network",
                f"< {limit} s",
                f"{build[max(build)]:.0f} s wall ({max(ok, key=lambda s: s['nodes'])['build_cpu_seconds']:.0f} s CPU) "
                f"at {max(build):,}",
                build[max(build)] < limit,
            )
        )
    return goals


def notes(sims: list[dict[str, Any]], traced: dict[str, Any] | None) -> list[str]:
    out = []
    for s in sims:
        if "measured" not in s:
            continue
        n = s["nodes"]
        m = s["measured"]
        t = s["tables"]
        out.append(
            f"{n:,} nodes: join {s['join']['seconds']:.0f} s ({s['join']['messages_per_lookup']:.1f} msgs/join), "
            f"refresh {s['refresh']['seconds']:.0f} s ({s['refresh']['lookups']:,} lookups); table contacts median "
            f"{t['contacts']['median']:.0f} (joined: {s['tables_after_join']['contacts']['median']:.0f}), "
            f"{t['replacements_total'] / n:.1f} replacement-cache entries/node; responders' rpc = "
            f"{m['responder_share']:.0%} of a lookup's time; lookup wall ms median {m['wall_ms']['median']:.2f}"
        )
        j = s.get("after_join")
        if j and j.get("inexact"):
            out.append(
                f"{n:,} nodes, joined only: {j['inexact']} of {j['lookups']} lookups inexact, {j['found_none']} of them "
                "found none of the true 20 (stuck in the wrong subtree: self-lookup joins leave buckets empty)"
            )
        a = s.get("async_check")
        if a:
            out.append(
                f"{n:,} nodes, async check: real KadDHT.lookup agreed with the driver on {a['same_result']}/{a['lookups']} "
                f"results; queries median {a['sync_queries']['median']:.0f} (driver) vs {a['async_queries']['median']:.0f} "
                f"(async), hops {a['sync_hops']['median']:.0f} vs {a['async_hops']['median']:.0f}; CPU ms median "
                f"{a['sync_cpu_ms']['median']:.2f} vs {a['async_cpu_ms']['median']:.2f} (trio scheduling)"
            )
        p = s.get("profile")
        if p and s is sims[-1]:
            top = ", ".join(f"{f['function']} {f['self_share']:.0%}" for f in p["functions"][:6])
            files = ", ".join(f"{k} {v:.0%}" for k, v in list(p["by_file_self_share"].items())[:5])
            out.append(f"{n:,} nodes, CPU profile (self time): by file {files}; top functions {top}")
    if traced and "tracemalloc" in traced:
        tm = traced["tracemalloc"]
        files = ", ".join(f"{k} {v / KIB:.1f}" for k, v in list(tm["by_file_bytes_per_node"].items())[:4])
        lines = ", ".join(f"{x['site']} {x['bytes_per_node'] / KIB:.1f}" for x in tm["top_lines"][:6])
        out.append(
            f"tracemalloc, {traced['nodes']:,}-node build: {tm['total_bytes_per_node'] / KIB:.1f} KiB/node traced; "
            f"KiB/node by file: {files}; top sites: {lines}"
        )
    elif traced:
        out.append(f"tracemalloc run failed: {traced.get('error')}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000 and 3,000 nodes, 300 lookups, no tracemalloc")
    ap.add_argument(
        "--json", type=Path, default=RESULTS_JSON, help=f"where to write results (default {RESULTS_JSON})"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--swarm",
        type=int,
        default=0,
        metavar="N",
        help="also run N real nodes in 3 processes, with and without the connection manager (e.g. 300)",
    )
    ap.add_argument("--swarm-only", action="store_true", help="only the --swarm section")
    ap.add_argument(
        "--sizes", type=int, nargs="+", metavar="N", help="simulated network sizes instead of the default"
    )
    args = ap.parse_args()
    cfg = Config.make(args.quick, args.seed)
    if args.sizes:
        cfg = dataclasses.replace(cfg, sizes=tuple(sorted(set(args.sizes))))
    run = Run()
    if args.swarm_only:
        if not args.swarm:
            ap.error("--swarm-only needs --swarm N")
        main_swarm(args, run)
        return
    partners = run_partners(cfg)
    sims = run_simulations(cfg)
    traced = run_tracemalloc(cfg)
    swarm = run_swarm(args.swarm, args.seed) if args.swarm else {}
    run.finish()

    goals = evaluate_goals(sims)
    srows, prows = sim_rows(sims), partner_rows(partners)
    print(run.title("physarum DHT benchmark", "quick" if cfg.quick else "full") + "\n")
    print(
        f"Simulated networks, k = 20, alpha = 3, {cfg.lookups} lookups of random keys per row. Method: {METHOD}."
    )
    print("joined = after the joins only; +refresh = after every node refreshed its 2 emptiest buckets.")
    print(
        "exact = the true 20 closest, in order (brute force over all node keys); recall = mean share of them found."
    )
    print(
        "CPU ms = thread CPU time of the whole lookup incl. the answering nodes' rpc; KiB/node = VmRSS growth / N.\n"
    )
    print(aligned(SIM_HEADER, srows, left=2))
    print(
        f"\n20-node networks on 127.0.0.1, {cfg.partner_lookups} lookups of random peers' ids (each set in one process):\n"
    )
    print(aligned(PARTNER_HEADER, prows))
    if swarm:
        print("\n" + swarm_intro(args.swarm))
        print(aligned(SWARM_HEADER, swarm_rows(swarm)))
    print("\nNotes:")
    for line in notes(sims, traced) + swarm_notes(swarm):
        print(f"- {line}")
    for name, res in partners.items():
        if not res.get("ok"):
            print(f"- {name}: {res.get('error') or res.get('failures')}")
    print("\nGoals:")
    print(goal_lines(goals, target_width=10))
    print("\nMarkdown:\n")
    print(markdown(SIM_HEADER, srows, left=2))
    print()
    print(markdown(PARTNER_HEADER, prows, left=1))
    if swarm:
        print()
        print(markdown(SWARM_HEADER, swarm_rows(swarm)))
    print()
    print(goal_markdown(goals))
    data = run.record(
        cfg.quick,
        python=platform.python_version(),
        config=cfg.__dict__,
        method=METHOD,
        memory_method="VmRSS growth after gc.collect(), from before the nodes are created to after the build, / N",
        simulations=sims,
        tracemalloc=traced,
        partners=partners,
        swarm=swarm or None,
        goals=[g.as_json() for g in goals],
    )
    write_json(args.json, data)


def swarm_intro(nodes: int) -> str:
    return (
        f"Real-socket swarm on 127.0.0.1: {nodes} nodes in {SWARM_PROCS} processes joined through one "
        f"bootstrap node; {SWARM_LOOKUPS} random find_peer; connections per node once settled:\n"
    )


def main_swarm(args: argparse.Namespace, run: Run) -> None:
    """``--swarm-only``: the swarm section alone, merged into the results JSON."""
    swarm = run_swarm(args.swarm, args.seed)
    run.finish()
    print(run.title("physarum DHT swarm") + "\n")
    print(swarm_intro(args.swarm))
    print(aligned(SWARM_HEADER, swarm_rows(swarm)))
    print("\nNotes:")
    for line in swarm_notes(swarm):
        print(f"- {line}")
    print("\nMarkdown:\n")
    print(markdown(SWARM_HEADER, swarm_rows(swarm)))
    data: dict[str, Any] = {}
    if args.json.exists():
        try:
            data = json.loads(args.json.read_text())
        except ValueError:
            data = {}
    data["swarm"] = swarm
    data["swarm_date"] = utc_now()
    write_json(args.json, data)


if __name__ == "__main__":
    main()
