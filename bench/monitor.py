"""Ping-monitor benchmark: one ``ping-monitor`` process pinging N peers at 1 Hz, beside the raw-TCP floor.

    .venv/bin/python bench/monitor.py [--quick] [--profile SECONDS] [--json PATH] [--sizes N ...] [--window S]
    .venv/bin/python bench/monitor.py --path-ms 20 [--window S]

Attaches N peers (100, 500, 1,000; ``--quick``: 100, 300) to ONE ping-monitor and prints, for each N: the
monitor's CPU share of one core and RSS, the CPU of the processes holding the peers, and the RTT median/p99
the monitor measures (its ``ping_rtt`` gauges, collected over several scrapes) beside the raw-TCP floor
measured in the same run under the same load (a trio TCP 32-byte echo between two processes). RTT bias =
monitor RTT median minus raw TCP RTT median. Prints an aligned table, goal verdicts and markdown tables, and
writes bench/results/monitor.json. A benchmark, not a test: it never asserts a timing.

Processes (every one on 127.0.0.1 only):
  * the monitor: the real ``ping-monitor`` binary (.venv/bin/ping-monitor, else ``python -m physarum.cli
    ping-monitor``) with ``-ephemeral``, ``-psk`` (a random passphrase), ``-p2p-listen-addr 127.0.0.1:0``
    and ``-prom-listen-addr`` on a free loopback port; the benchmark reads the multiaddrs it prints;
  * 4 peer processes (bench/_monitor_peers.py --role peers), each holding N/4 Hosts with their own
    identities, dialled into the monitor; peer process 0 also runs a raw TCP echo server on its loop;
  * an echo server and an echo client (bench/_monitor_peers.py), for the raw-TCP floor.

Per N, once every peer is connected and has been pinged at least twice:
  1. CPU window (20 s; --quick 8 s) with no scrape at all: /proc/PID/stat utime+stime of the monitor, the
     peer processes and the echo processes; /proc/stat for the whole machine. RSS (VmRSS) at its end.
     The ``physarum_pings_rtt_seconds`` histogram deltas across the window give pings/s and a bucketed RTT.
  2. RTT phase: the end-of-window scrape, then scrapes at least 3 s apart and at least twice as long as
     the previous scrape took, so the monitor has caught up after rendering. The ``ping_rtt`` gauges hold
     each peer's latest sample, so scrapes further apart than the 1 s interval never read one twice.
     A scrape's CPU is that of the monitor's threads but the main one (/proc/PID/task): MetricsServer
     renders the exposition in a worker thread.
The echo client pings both floors throughout (every ~50 ms each, jittered).
With ``--profile S`` py-spy (``--py-spy PATH``, else on PATH, in .venv/bin or /tmp/pyspy/bin) samples the
monitor for S seconds at the largest N, after the measurements, and the report lists where its CPU goes.
py-spy counts a thread that is runnable but waiting for a CPU as busy; on a loaded machine that lands mostly
in system calls (a loopback send wakes the peer, which may preempt the sender), so the report also gives the
breakdown of the samples outside system calls, which tracks the monitor's user CPU (/proc utime).
The machine's other load is measured too (busy cores minus this benchmark's processes), and rows taken on a
saturated machine are flagged: their RTTs include waiting for a CPU.
At 1,000 peers, once the monitor has stopped, the floor under its CPU: a bare pinger on the same schedule
(each peer once a second on its own phase) over plain TCP, in trio and in a plain ``selectors`` loop
(bench/_pinger_floor.py): what any pinger pays on this machine for waking up twice per ping.

``--path-ms MS`` runs another scenario instead: one peer whose connection crosses a relay delaying
MS/2 each way (bench/_delay_relay.py; this kernel has no netem) beside a raw TCP echo crossing
another listener of the same relay, for ``--window`` seconds (default 30): the monitor's ``ping_rtt``
median against the echo's (issue 8: within 0.3 ms on a 20 ms path). Results: results/monitor_path.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
from _harness import (
    LOOPBACK,
    RESULTS,
    ROOT,
    Goal,
    Partner,
    Run,
    aligned,
    bench_argv,
    fmt,
    goal_lines,
    goal_markdown,
    markdown,
    open_partner,
    progress,
    status_kib,
    summary,
    versions,
    write_json,
)

RESULTS_JSON = RESULTS / "monitor.json"
HELPER = "_monitor_peers.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB = 1e6

# Goals (issue 8). Kept here so the summary and the JSON say the same thing.
GOAL_PEERS = 1000
GOAL_CPU_PCT = 10.0
GOAL_RSS_MB = 64.0
GOAL_BIAS_US = 150.0
# PhysarumSM's paper, for its Go monitor.
PAPER_RSS_MB = 32.0
PAPER_CPU_PCT = 4.76


@dataclass(frozen=True)
class Config:
    """What a run measures; :meth:`make` gives the full and the ``--quick`` run."""

    quick: bool
    sizes: tuple[int, ...]  # peer counts, a row each
    window: float  # seconds of the CPU window
    rtt_scrapes: int  # scrapes after the window (the end-of-window scrape comes on top)
    scrape_gap: float = 3.0  # seconds between scrapes, at least
    peer_procs: int = 4  # processes holding the peers
    echo_period: float = 0.05  # seconds between the floor's echoes, on average
    attach_concurrency: int = 4  # dials in flight in each peer process
    profile: float = 0.0  # seconds of py-spy at the largest N (0: none)

    @classmethod
    def make(cls, quick: bool, profile: float) -> Config:
        if quick:
            return cls(quick=True, sizes=(100, 300), window=8.0, rtt_scrapes=2, profile=profile)
        return cls(quick=False, sizes=(100, 500, 1000), window=20.0, rtt_scrapes=4, profile=profile)


# ------------------------------------------------------------------------------------------ /proc


def cpu_split_path(path: str) -> tuple[float, float]:
    """(utime, stime) in seconds from a /proc stat file."""
    with open(path) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all its threads), in seconds."""
    return cpu_split_path(f"/proc/{pid}/stat")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    return sum(cpu_split(pid))


def worker_threads_cpu(pid: int) -> dict[int, float]:
    """utime + stime of each thread of ``pid`` but its main one (MetricsServer renders in a worker thread)."""
    out: dict[int, float] = {}
    for entry in os.scandir(f"/proc/{pid}/task"):
        tid = int(entry.name)
        if tid == pid:
            continue
        try:
            out[tid] = sum(cpu_split_path(f"/proc/{pid}/task/{tid}/stat"))
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


# ---------------------------------------------------------------------------------------- scraping

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Scrape:
    """What one GET /metrics said, reduced to what the benchmark uses."""

    at: float  # perf_counter when the response was complete
    seconds: float
    size: int
    rtt_ms: dict[str, float] = field(default_factory=dict)  # ping_rtt, per peer
    count: float = 0.0  # the aggregate histogram's _count: successful pings of every peer
    buckets: dict[float, float] = field(default_factory=dict)  # the aggregate histogram's buckets
    failures: dict[str, float] = field(default_factory=dict)  # failures by reason, summed over peers
    peers_connected: float | None = None
    peers_reachable: float | None = None
    unreachable: int = 0

    @property
    def pings(self) -> float:
        return self.count

    @property
    def failed(self) -> float:
        return sum(self.failures.values())


def parse_exposition(text: str, scrape: Scrape) -> Scrape:
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        series, _, value_text = line.rpartition(" ")
        name, _, labels_text = series.partition("{")
        value = float(value_text)
        if name == "physarum_peers_connected":
            scrape.peers_connected = value
            continue
        if name == "physarum_peers_reachable":
            scrape.peers_reachable = value
            continue
        if name == "physarum_pings_rtt_seconds_count":
            scrape.count = value
            continue
        if name not in (
            "ping_rtt",
            "physarum_pings_rtt_seconds_bucket",
            "physarum_ping_failures_total",
            "physarum_peer_reachable",
        ):
            continue
        labels = dict(_LABEL.findall(labels_text))
        if name == "ping_rtt":
            scrape.rtt_ms[labels["targetHost"]] = value
        elif name == "physarum_pings_rtt_seconds_bucket":
            le = float(labels["le"])
            scrape.buckets[le] = scrape.buckets.get(le, 0.0) + value
        elif name == "physarum_ping_failures_total":
            reason = labels["reason"]
            scrape.failures[reason] = scrape.failures.get(reason, 0.0) + value
        elif value == 0:
            scrape.unreachable += 1
    return scrape


async def scrape(port: int) -> Scrape:
    """GET /metrics from the monitor and parse it.

    Raises:
        RuntimeError: not a 200 answer.
        OSError, trio.TooSlowError: the monitor cannot be reached in time.
    """
    t0 = time.perf_counter()
    chunks: list[bytes] = []
    with trio.fail_after(60):
        async with await trio.open_tcp_stream(LOOPBACK, port) as stream:
            await stream.send_all(
                f"GET /metrics HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            while data := await stream.receive_some(1 << 16):
                chunks.append(data)
    t1 = time.perf_counter()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise RuntimeError(f"/metrics answered {status.decode(errors='replace')!r}")
    return parse_exposition(body.decode(), Scrape(at=t1, seconds=t1 - t0, size=len(raw)))


def histogram_quantile(q: float, before: Scrape, after: Scrape) -> float | None:
    """Prometheus's histogram_quantile over the bucket increase between two scrapes (seconds)."""
    bounds = sorted(after.buckets)
    cumulative = [after.buckets[b] - before.buckets.get(b, 0.0) for b in bounds]
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower  # as Prometheus: the highest finite bound
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


# ------------------------------------------------------------------------------------- the monitor


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def monitor_argv() -> tuple[list[str], str]:
    binary = Path(sys.executable).parent / "ping-monitor"
    if binary.exists():
        return [str(binary)], str(binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary)
    return [sys.executable, "-m", "physarum.cli", "ping-monitor"], "python -m physarum.cli ping-monitor"


@dataclass
class Monitor:
    process: trio.Process
    pid: int
    addrs: list[str]
    prom_port: int
    program: str
    stdout_path: Path
    stderr_path: Path
    shutdown_seconds: float | None = None

    @property
    def addr(self) -> str:
        return next(a for a in self.addrs if a.startswith(f"/ip4/{LOOPBACK}/"))

    def stderr_tail(self, n: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def stop(self) -> None:
        """SIGTERM, and how long it took to exit (the issue asks for under 2 s); killed after 10 s."""
        if self.process.returncode is not None:
            return
        t0 = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await self.process.wait()
            self.shutdown_seconds = time.perf_counter() - t0
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def run_monitor(tmp: Path, passphrase: str, peers: int) -> AsyncIterator[Monitor]:
    """Start the ping-monitor binary for up to ``peers`` peers; killed on the way out whatever happens.

    Above 1,000 peers it gets ``-max-connections`` to match, as an operator would give it: a node's
    default (1,024 connections) is sized for a node, not for a monitor of thousands.

    Raises:
        RuntimeError: it exited or printed no multiaddr within 30 s (after 3 tries on port clashes).
    """
    argv, program = monitor_argv()
    env = {k: v for k, v in os.environ.items() if k not in ("P2P_PSK", "P2P_BOOTSTRAPS")}
    for attempt in range(3):
        prom_port = free_loopback_port()
        out, err = tmp / f"monitor-{attempt}.out", tmp / f"monitor-{attempt}.err"
        flags = [
            "-ephemeral",
            "-psk",
            passphrase,
            "-hostname",
            "bench-monitor",
            "-p2p-listen-addr",
            f"{LOOPBACK}:0",
            "-prom-listen-addr",
            f"{LOOPBACK}:{prom_port}",
            *(["-max-connections", str(peers + 64)] if peers > 1000 else []),
        ]
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            process = await trio.lowlevel.open_process(
                [*argv, *flags], stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr, cwd=ROOT, env=env
            )
        monitor = Monitor(process, process.pid, [], prom_port, program, out, err)
        try:
            with trio.move_on_after(30):
                while process.returncode is None and not monitor.addrs:
                    await trio.sleep(0.05)
                    lines = out.read_text(errors="replace").splitlines()
                    monitor.addrs = [line.strip() for line in lines if "/p2p/" in line]
            if process.returncode == 2 and "metrics" in monitor.stderr_tail():
                continue  # the free port was taken meanwhile: another one
            if not monitor.addrs or process.returncode is not None:
                raise RuntimeError(
                    f"ping-monitor printed no multiaddr (status {process.returncode}):\n{monitor.stderr_tail()}"
                )
            yield monitor
            return
        finally:
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
    raise RuntimeError("ping-monitor could not bind a metrics port in 3 tries")


# ------------------------------------------------------------------------------------------ helpers


@dataclass
class Procs:
    """Every process of the run, for the CPU accounting."""

    monitor: Monitor
    peers: list[Partner]
    echo_server: Partner
    echo_client: Partner

    def peer_pids(self) -> list[int]:
        return [int(p.ready["pid"]) for p in self.peers]

    def echo_pids(self) -> list[int]:
        return [int(self.echo_server.ready["pid"]), int(self.echo_client.ready["pid"])]


def cpu_of(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    monitor: tuple[float, float]  # (user, sys) seconds
    peers: float
    echo: float
    bench: float  # this process (scrapes, parsing)
    machine: tuple[int, int]

    @property
    def monitor_total(self) -> float:
        return sum(self.monitor)

    @classmethod
    def take(cls, procs: Procs) -> CpuSnapshot:
        return cls(
            at=time.perf_counter(),
            monitor=cpu_split(procs.monitor.pid),
            peers=cpu_of(procs.peer_pids()),
            echo=cpu_of(procs.echo_pids()),
            bench=cpu_seconds(os.getpid()),
            machine=machine_ticks(),
        )


# ----------------------------------------------------------------------------------------- results


@dataclass
class SizeResult:
    peers: int
    attached: int = 0
    attach_failed: int = 0
    attach_seconds: float = 0.0
    ready: bool = False
    ready_seconds: float = 0.0
    window_seconds: float = 0.0
    monitor_cpu_pct: float | None = None
    monitor_sys_pct: float | None = None  # the kernel's part of monitor_cpu_pct (stime)
    monitor_cpu_us_per_ping: float | None = None
    monitor_rss_mb: float | None = None
    monitor_hwm_mb: float | None = None
    peers_cpu_pct: float | None = None
    peers_rss_mb: float | None = None
    echo_cpu_pct: float | None = None
    machine_busy_cores: float | None = None
    others_cores: float | None = None  # busy cores minus this benchmark's processes: other people's work
    saturated: bool = False
    pings_per_s: float | None = None
    failures: float = 0.0
    rtt_median_us: float | None = None
    rtt_p99_us: float | None = None
    rtt_samples: int = 0
    rtt_quiet_median_us: float | None = None  # the end-of-window scrape alone (no scrape for a window)
    hist_median_us: float | None = None
    hist_p99_us: float | None = None
    floor_median_us: float | None = None
    floor_p99_us: float | None = None
    floor_samples: int = 0
    floor_in_peers_median_us: float | None = None
    floor_in_peers_p99_us: float | None = None
    bias_median_us: float | None = None
    bias_vs_peer_loop_median_us: float | None = None
    scrape_cpu_ms: float | None = None
    scrape_wall_ms: float | None = None
    scrape_kib: float | None = None
    notes: list[str] = field(default_factory=list)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def attach(procs: Procs, delta: int, concurrency: int, result: SizeResult) -> None:
    replies: list[dict[str, Any]] = []

    async def one(peer: Partner, count: int) -> None:
        if count:
            reply = await peer.call(
                "attach", addr=procs.monitor.addr, count=count, concurrency=concurrency, timeout=300
            )
            replies.append(reply)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for peer, count in zip(procs.peers, _split(delta, len(procs.peers)), strict=True):
            nursery.start_soon(one, peer, count)
    result.attach_seconds = time.perf_counter() - t0
    result.attached = sum(int(r["attached"]) for r in replies)
    result.attach_failed = sum(int(r["failed"]) for r in replies)
    errors: dict[str, int] = {}
    for r in replies:
        for k, v in r.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + int(v)
    if errors:
        result.notes.append(f"failed dials: {errors}")


async def connected_peers(procs: Procs) -> int:
    total = 0
    for peer in procs.peers:
        total += int((await peer.call("stats"))["connected"])
    return total


async def wait_ready(procs: Procs, n: int, result: SizeResult, timeout: float = 90.0) -> Scrape:
    """Scrape until the monitor has ``n`` peers connected, each answering its pings, and at least two
    pings a peer counted; the last scrape."""
    t0 = time.perf_counter()
    last = await scrape(procs.monitor.prom_port)
    with trio.move_on_after(timeout):
        while True:
            pinged = last.peers_reachable or 0
            if last.peers_connected == n and pinged >= n and last.count >= 2 * n:
                result.ready = True
                break
            await trio.sleep(1.0)
            last = await scrape(procs.monitor.prom_port)
    result.ready_seconds = time.perf_counter() - t0
    if not result.ready:
        result.notes.append(
            f"not ready after {timeout:.0f} s: {last.peers_connected} connected, {last.peers_reachable} reachable"
        )
    return last


def us_summary(samples_s: Sequence[float]) -> tuple[float | None, float | None]:
    us = summary([s * 1e6 for s in samples_s], ("median", "p99"))
    return us.get("median"), us.get("p99")


async def measure_size(cfg: Config, procs: Procs, n: int, have: int) -> SizeResult:
    result = SizeResult(peers=n)
    mon = procs.monitor
    progress(f"N={n}: attaching {n - have} more peers")
    await attach(procs, n - have, cfg.attach_concurrency, result)
    progress(
        f"N={n}: {result.attached} attached in {result.attach_seconds:.1f} s ({result.attach_failed} failed);"
        " waiting until each is pinged twice"
    )
    start = await wait_ready(procs, n, result)
    await trio.sleep(1.0)  # the readiness scrape's render thread is done; let the loop settle

    # 1. the CPU window: no scrapes
    await procs.echo_client.call("take")  # drop the floor samples taken before this N was steady
    progress(f"N={n}: CPU window {cfg.window:.0f} s")
    peer_pids = procs.peer_pids()
    c0 = CpuSnapshot.take(procs)
    await trio.sleep(cfg.window)
    c1 = CpuSnapshot.take(procs)
    wall = c1.at - c0.at
    result.window_seconds = wall
    monitor_rate = (c1.monitor_total - c0.monitor_total) / wall
    result.monitor_cpu_pct = 100 * monitor_rate
    result.monitor_sys_pct = 100 * (c1.monitor[1] - c0.monitor[1]) / wall
    result.peers_cpu_pct = 100 * (c1.peers - c0.peers) / wall
    result.echo_cpu_pct = 100 * (c1.echo - c0.echo) / wall
    busy, total = c1.machine[0] - c0.machine[0], c1.machine[1] - c0.machine[1]
    cpus = os.cpu_count() or 1
    result.machine_busy_cores = cpus * busy / max(1, total)
    ours = (c1.monitor_total + c1.peers + c1.echo + c1.bench) - (
        c0.monitor_total + c0.peers + c0.echo + c0.bench
    )
    result.others_cores = max(0.0, result.machine_busy_cores - ours / wall)
    if result.machine_busy_cores >= 0.9 * cpus:
        result.saturated = True
        result.notes.append(
            f"the machine was saturated ({result.machine_busy_cores:.2f} of {cpus} cores busy,"
            f" {result.others_cores:.2f} by other programs): RTTs include waiting for a CPU"
        )
    result.monitor_rss_mb = status_kib(mon.pid) * 1024 / MB
    result.monitor_hwm_mb = status_kib(mon.pid, "VmHWM") * 1024 / MB
    result.peers_rss_mb = sum(status_kib(pid) for pid in peer_pids) * 1024 / MB

    # 2. the RTT phase: the end-of-window scrape, then more, scrape_gap apart
    progress(f"N={n}: RTT phase, {cfg.rtt_scrapes + 1} scrapes >= {cfg.scrape_gap:g} s apart")
    render_cpu = 0.0  # CPU of the monitor's threads other than its main one: the /metrics rendering

    async def timed_scrape() -> Scrape:
        nonlocal render_cpu
        before = worker_threads_cpu(mon.pid)
        got = await scrape(mon.prom_port)
        after = worker_threads_cpu(mon.pid)
        render_cpu += sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items())
        return got

    scrapes = [await timed_scrape()]
    end = scrapes[0]
    for _ in range(cfg.rtt_scrapes):
        # A scrape stalls the monitor's loop while it renders (GIL): leave it time to catch up, so
        # the next scrape's gauges hold samples from a monitor that is not still recovering.
        await trio.sleep(max(cfg.scrape_gap, 2 * scrapes[-1].seconds))
        scrapes.append(await timed_scrape())
    result.scrape_cpu_ms = 1e3 * render_cpu / len(scrapes)
    result.scrape_wall_ms = 1e3 * statistics.median(s.seconds for s in scrapes)
    result.scrape_kib = statistics.median(s.size for s in scrapes) / 1024
    floor = (await procs.echo_client.call("take"))["samples"]

    # figures
    span = end.at - start.at
    result.pings_per_s = (end.pings - start.pings) / span if span > 0 else None
    if result.pings_per_s:
        result.monitor_cpu_us_per_ping = 1e6 * monitor_rate / result.pings_per_s
    result.failures = scrapes[-1].failed - start.failed
    if scrapes[-1].peers_connected != n:
        result.notes.append(f"{scrapes[-1].peers_connected} peers connected at the end")
    if scrapes[-1].unreachable:
        result.notes.append(f"{scrapes[-1].unreachable} peers unreachable at the end")
    rtts = [ms / 1e3 for s in scrapes for ms in s.rtt_ms.values()]
    result.rtt_samples = len(rtts)
    result.rtt_median_us, result.rtt_p99_us = us_summary(rtts)
    result.rtt_quiet_median_us, _ = us_summary([ms / 1e3 for ms in end.rtt_ms.values()])
    for q, attr in ((0.5, "hist_median_us"), (0.99, "hist_p99_us")):
        value = histogram_quantile(q, start, end)
        setattr(result, attr, None if value is None else value * 1e6)
    result.floor_samples = len(floor.get("floor", []))
    result.floor_median_us, result.floor_p99_us = us_summary(floor.get("floor", []))
    result.floor_in_peers_median_us, result.floor_in_peers_p99_us = us_summary(floor.get("in_peers", []))
    if result.rtt_median_us is not None and result.floor_median_us is not None:
        result.bias_median_us = result.rtt_median_us - result.floor_median_us
    if result.rtt_median_us is not None and result.floor_in_peers_median_us is not None:
        result.bias_vs_peer_loop_median_us = result.rtt_median_us - result.floor_in_peers_median_us
    progress(
        f"N={n}: monitor {result.monitor_cpu_pct:.1f}% CPU, {result.monitor_rss_mb:.0f} MB;"
        f" RTT {fmt(result.rtt_median_us, 0)} us vs floor {fmt(result.floor_median_us, 0)} us"
    )
    return result


# --------------------------------------------------------------------------------------- profiling


def find_py_spy(explicit: str | None) -> str | None:
    candidates: list[str | None] = [explicit] if explicit else []
    candidates += [
        shutil.which("py-spy"),
        str(Path(sys.executable).parent / "py-spy"),
        "/tmp/pyspy/bin/py-spy",
    ]
    for c in candidates:
        if c and Path(c).exists():
            return c
    return None


# Where a frame's file puts it, for the CPU breakdown (first match wins).
CATEGORIES: list[tuple[str, str]] = [
    ("physarum/psk/", "pnet (XSalsa20)"),
    ("Crypto/", "pnet (XSalsa20)"),
    ("physarum/overlay/noise", "noise (ChaChaPoly framing)"),
    ("nacl/", "pynacl calls"),
    ("physarum/overlay/yamux", "yamux"),
    ("physarum/overlay/streamio", "stream buffers"),
    ("physarum/overlay/ping", "ping"),
    ("physarum/overlay/host", "host"),
    ("physarum/monitor/metrics", "metrics (physarum)"),
    ("physarum/monitor/ping_monitor", "ping monitor loop"),
    ("prometheus_client/", "prometheus_client"),
    ("EpollIOManager.get_events (trio/", "epoll_wait (trio get_events)"),
    ("_nonblocking_helper (trio/", "socket syscalls (send/recv)"),
    ("physarum/nowait", "socket syscalls (send/recv)"),  # os.write / os.read on the socket
    ("trio/_core/_io_epoll", "trio I/O registration (epoll_ctl)"),
    ("trio/_socket", "trio sockets"),
    ("trio/_core/_run", "trio scheduler"),
    ("trio/_timeouts", "trio timeouts"),
    ("trio/_util", "trio (other)"),
    ("trio/_highlevel_socket", "trio sockets"),
    ("trio/_core/_ki", "trio scheduler"),
    ("outcome/", "trio scheduler"),
    ("contextlib", "trio timeouts"),  # trio.fail_after is a @contextmanager
    ("trio/", "trio (other)"),
    ("threading", "threads"),
]


def _category(frame: str) -> str:
    for needle, name in CATEGORIES:
        if needle in frame:
            return name
    return "other"


#: Areas whose samples sit in a system call: with the kernel's share of the monitor's CPU (stime)
#: small, such samples are mostly a thread that is runnable but waiting for a CPU (a loopback send
#: wakes the peer, which may preempt the sender), so they are left out of the user-CPU view.
SYSCALL_AREAS = ("socket syscalls (send/recv)", "epoll_wait (trio get_events)")


@dataclass
class SpyStats:
    total: int = 0
    leaf: dict[str, int] = field(default_factory=dict)  # self samples by function
    leaf_lines: dict[str, int] = field(default_factory=dict)  # self samples by function and line
    inclusive: dict[str, int] = field(default_factory=dict)
    by_area: dict[str, int] = field(default_factory=dict)  # self samples by area (CATEGORIES)


def _bump(d: dict[str, int], key: str, n: int) -> None:
    d[key] = d.get(key, 0) + n


def parse_py_spy_raw(text: str) -> SpyStats:
    """py-spy's ``--format raw`` (collapsed stacks: ``frame;frame;... count``) summed up."""
    st = SpyStats()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        st.total += count
        with_lines = stack.split(";")
        frames = [re.sub(r":\d+\)$", ")", f) for f in with_lines]
        _bump(st.leaf, frames[-1], count)
        _bump(st.leaf_lines, with_lines[-1], count)
        for f in set(frames):
            _bump(st.inclusive, f, count)
        _bump(st.by_area, _category(frames[-1]), count)
    return st


async def profile_monitor(py_spy: str, pid: int, seconds: float, tmp: Path) -> dict[str, Any]:
    out = tmp / "py-spy.raw"
    rate = 200
    c0, t0 = cpu_split(pid), time.perf_counter()
    done = await trio.run_process(
        [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
         "--nonblocking", "--format", "raw", "--output", str(out)],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    c1, wall = cpu_split(pid), time.perf_counter() - t0
    cpu, user_cpu, sys_cpu = (sum(c1) - sum(c0)) / wall, (c1[0] - c0[0]) / wall, (c1[1] - c0[1]) / wall
    if done.returncode != 0 or not out.exists():
        return {"error": done.stderr.decode(errors="replace").strip()[-300:] or f"status {done.returncode}"}
    st = parse_py_spy_raw(out.read_text(errors="replace"))
    if not st.total:
        return {"error": "no samples"}
    outside = {a: c for a, c in st.by_area.items() if a not in SYSCALL_AREAS}
    n_outside = sum(outside.values())

    def top(d: dict[str, int], k: int, total: int = st.total) -> list[dict[str, Any]]:
        ranked = sorted(d.items(), key=lambda x: -x[1])[:k]
        return [{"frame": f, "share": round(c / total, 4)} for f, c in ranked]

    return {
        "seconds": seconds,
        "rate_hz": rate,
        "samples": st.total,
        "active_share_of_core": round(st.total / (rate * seconds), 3),
        "outside_syscalls_share_of_core": round(n_outside / (rate * seconds), 3),
        "monitor_cpu_pct_meanwhile": round(100 * cpu, 1),
        "monitor_user_pct_meanwhile": round(100 * user_cpu, 1),
        "monitor_sys_pct_meanwhile": round(100 * sys_cpu, 1),
        "self_by_area": top(st.by_area, 20),
        # the same, without the samples in system calls, as shares of those left: ~ the user CPU
        "user_cpu_by_area": top(outside, 20, max(1, n_outside)),
        "self_top": top(st.leaf, 25),
        "self_top_lines": top(st.leaf_lines, 25),
        # frames on (nearly) every stack (the program's main, trio.run) say nothing: left out
        "inclusive_top": top({f: c for f, c in st.inclusive.items() if c < 0.95 * st.total}, 30),
    }


# ------------------------------------------------------------------------------------------ report


def evaluate_goals(rows: Sequence[SizeResult]) -> list[Goal]:
    at = next((r for r in rows if r.peers == GOAL_PEERS), None)
    why = f"no {GOAL_PEERS:,}-peer row in this run" if at is None else "missing"

    def goal(name: str, target: str, value: float | None, limit: float, unit: str, load: bool = True) -> Goal:
        if value is None:
            return Goal(name, target, why, None)
        text = f"{value:.1f} {unit}"
        if load and at is not None and at.saturated:
            text += f" (machine saturated, {fmt(at.others_cores, 2)} cores busy with other programs)"
        return Goal(name, target, text, value < limit)

    return [
        goal(f"monitor CPU, {GOAL_PEERS:,} peers at 1 Hz", f"< {GOAL_CPU_PCT:g}% of one core",
             None if at is None else at.monitor_cpu_pct, GOAL_CPU_PCT, "%"),
        goal(f"monitor RSS, {GOAL_PEERS:,} peers", f"< {GOAL_RSS_MB:g} MB",
             None if at is None else at.monitor_rss_mb, GOAL_RSS_MB, "MB", load=False),
        goal(f"RTT bias median, {GOAL_PEERS:,} peers", f"< {GOAL_BIAS_US:g} us",
             None if at is None else at.bias_median_us, GOAL_BIAS_US, "us"),
    ]  # fmt: skip


# The tables' columns: (header, SizeResult attribute, decimals; None: a count, as it is).
COST_COLUMNS: list[tuple[str, str, int | None]] = [
    ("mon CPU %", "monitor_cpu_pct", 1),
    ("of it sys", "monitor_sys_pct", 1),
    ("CPU us/ping", "monitor_cpu_us_per_ping", 0),
    ("RSS MB", "monitor_rss_mb", 0),
    ("peers CPU %", "peers_cpu_pct", 1),
    ("pings/s", "pings_per_s", 0),
    ("fails", "failures", 0),
    ("scrape ms", "scrape_wall_ms", 0),
    ("scrape CPU ms", "scrape_cpu_ms", 0),
    ("scrape KiB", "scrape_kib", 0),
    ("busy cores", "machine_busy_cores", 2),
    ("others' cores", "others_cores", 2),
]
RTT_COLUMNS: list[tuple[str, str, int | None]] = [
    ("mon RTT med", "rtt_median_us", 0),
    ("mon RTT p99", "rtt_p99_us", 0),
    ("n", "rtt_samples", None),
    ("quiet med", "rtt_quiet_median_us", 0),
    ("hist med", "hist_median_us", 0),
    ("hist p99", "hist_p99_us", 0),
    ("TCP med", "floor_median_us", 0),
    ("TCP p99", "floor_p99_us", 0),
    ("n", "floor_samples", None),
    ("bias med", "bias_median_us", 0),
    ("TCP@peers med", "floor_in_peers_median_us", 0),
    ("TCP@peers p99", "floor_in_peers_p99_us", 0),
]
PAPER_COST = ["paper Go", fmt(PAPER_CPU_PCT, 2), "-", "-", fmt(PAPER_RSS_MB, 0)] + ["-"] * 8


def size_table(
    columns: list[tuple[str, str, int | None]], rows: Sequence[SizeResult], *first: list[str]
) -> str:
    """One row per N of ``columns``, after the rows ``first``."""
    body = [
        [f"{r.peers:,}", *(str(getattr(r, a)) if d is None else fmt(getattr(r, a), d) for _, a, d in columns)]
        for r in rows
    ]
    return aligned(["peers", *(h for h, _, _ in columns)], [*first, *body], left=0)


MARKDOWN_HEADER = [
    "monitor",
    "peers at 1 Hz",
    "CPU (% of one core)",
    "RSS (MB)",
    "RTT median / p99 (us)",
    "raw TCP median / p99 (us)",
    "RTT bias median (us)",
    "peer processes CPU (% of one core)",
]


def markdown_rows(rows: Sequence[SizeResult]) -> list[list[str]]:
    paper = ["PhysarumSM, Go (paper)", "-", f"{PAPER_CPU_PCT:g}", f"{PAPER_RSS_MB:g}", "-", "-", "-", "-"]
    return [paper] + [
        [
            "physarum ping-monitor",
            f"{r.peers:,}",
            fmt(r.monitor_cpu_pct, 1),
            fmt(r.monitor_rss_mb, 0),
            f"{fmt(r.rtt_median_us, 0)} / {fmt(r.rtt_p99_us, 0)}",
            f"{fmt(r.floor_median_us, 0)} / {fmt(r.floor_p99_us, 0)}",
            fmt(r.bias_median_us, 0),
            fmt(r.peers_cpu_pct, 1),
        ]
        for r in rows
    ]


def machine_note(rows: Sequence[SizeResult]) -> str:
    """One line for under the README table: how busy the machine was with other work meanwhile."""
    parts = [f"{r.peers:,} peers: {fmt(r.others_cores, 2)}" for r in rows]
    saturated = [f"{r.peers:,}" for r in rows if r.saturated]
    line = (
        f"\nLoopback, {os.cpu_count()} CPUs shared with other work; cores busy with other programs during"
        f" each window: {', '.join(parts)}."
    )
    if saturated:
        line += f" The machine was saturated at {', '.join(saturated)} peers: those RTTs include waiting for a CPU."
    return line


def profile_text(profile: dict[str, Any]) -> str:
    if "error" in profile:
        return f"profile: {profile['error']}"
    lines = [
        f"py-spy, {profile['seconds']:g} s at {profile['rate_hz']} Hz: {profile['samples']} samples of a thread not"
        f" asleep = {profile['active_share_of_core']:.0%} of a core; outside system calls"
        f" {profile['outside_syscalls_share_of_core']:.0%}. /proc meanwhile: {profile['monitor_cpu_pct_meanwhile']}%"
        f" (user {profile['monitor_user_pct_meanwhile']}%, kernel {profile['monitor_sys_pct_meanwhile']}%).",
        "A runnable thread waiting for a CPU counts as not asleep; with little kernel time, samples in system calls"
        " are mostly that.",
        "user CPU by area (samples outside system calls):",
    ]
    lines += [f"  {e['share']:6.1%}  {e['frame']}" for e in profile["user_cpu_by_area"]]
    lines.append("all samples by area:")
    lines += [f"  {e['share']:6.1%}  {e['frame']}" for e in profile["self_by_area"]]
    lines.append("self time, top lines:")
    lines += [f"  {e['share']:6.1%}  {e['frame']}" for e in profile["self_top_lines"][:20]]
    lines.append("inclusive time, top functions:")
    lines += [f"  {e['share']:6.1%}  {e['frame']}" for e in profile["inclusive_top"][:25]]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main


async def run_all(cfg: Config, tmp: Path, py_spy: str | None) -> dict[str, Any]:
    passphrase = secrets.token_hex(16)
    rows: list[SizeResult] = []
    info: dict[str, Any] = {"rows": rows}
    async with AsyncExitStack() as stack:
        progress("starting the ping-monitor and the helper processes")
        monitor = await stack.enter_async_context(run_monitor(tmp, passphrase, max(cfg.sizes)))
        info["monitor_program"] = monitor.program
        info["monitor_printed_addrs"] = monitor.addrs
        await trio.sleep(1.0)
        info["monitor_rss_mb_idle"] = status_kib(monitor.pid) * 1024 / MB
        helpers = [
            *(
                bench_argv(HELPER, role="peers", passphrase=passphrase, echo=i == 0)
                for i in range(cfg.peer_procs)
            ),
            bench_argv(HELPER, role="echo-server"),
            bench_argv(HELPER, role="echo-client"),
        ]
        *peers, echo_server, echo_client = [await stack.enter_async_context(open_partner(a)) for a in helpers]
        procs = Procs(monitor, peers, echo_server, echo_client)
        await echo_client.call(
            "start",
            ports={
                "floor": echo_server.ready["servers"]["echo"],
                "in_peers": peers[0].ready["servers"]["echo"],
            },
            period=cfg.echo_period,
        )
        have = 0
        try:
            for n in cfg.sizes:
                rows.append(await measure_size(cfg, procs, n, have))
                have = n
            if cfg.profile > 0:
                if py_spy is None:
                    info["profile"] = {"error": "py-spy not found (pip install py-spy, or --py-spy PATH)"}
                else:
                    progress(f"N={have}: py-spy on the monitor for {cfg.profile:g} s")
                    info["profile"] = await profile_monitor(py_spy, monitor.pid, cfg.profile, tmp)
        finally:
            progress("stopping the monitor (SIGTERM, peers still connected) and the helpers")
            with trio.CancelScope(shield=True):
                await monitor.stop()
            info["monitor_shutdown_seconds"] = monitor.shutdown_seconds
            info["monitor_exit_status"] = monitor.process.returncode
    return info


async def run_path(path_ms: float, seconds: float, tmp: Path) -> dict[str, Any]:
    """One peer whose connection crosses a relay delaying ``path_ms / 2`` each way, beside a raw
    TCP echo crossing another listener of the same relay: the monitor's ``ping_rtt`` (one sample a
    second, scraped) against the echo's RTTs (timed as the floor is) over ``seconds``."""
    passphrase = secrets.token_hex(16)
    out: dict[str, Any] = {"path_ms": path_ms, "seconds": seconds}
    async with AsyncExitStack() as stack:
        progress(f"path: a ping-monitor, one peer and a raw TCP echo behind a {path_ms:g} ms relay")
        monitor = await stack.enter_async_context(run_monitor(tmp, passphrase, 1))
        peers = await stack.enter_async_context(open_partner(bench_argv(HELPER, role="peers", passphrase=passphrase)))
        echo_server = await stack.enter_async_context(open_partner(bench_argv(HELPER, role="echo-server")))
        echo_client = await stack.enter_async_context(open_partner(bench_argv(HELPER, role="echo-client")))
        monitor_port = int(monitor.addr.split("/tcp/")[1].split("/")[0])
        relay = await trio.lowlevel.open_process(
            [sys.executable, str(Path(__file__).with_name("_delay_relay.py")), str(path_ms / 2), str(monitor_port),
             str(echo_server.ready["servers"]["echo"])],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        )  # fmt: skip
        stack.push_async_callback(_kill, relay)
        assert relay.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await relay.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError("the delay relay exited")
                line += chunk
        to_monitor, to_echo = json.loads(line)["ports"]
        peer_id = monitor.addr.rsplit("/p2p/", 1)[1]
        reply = await peers.call("attach", addr=f"/ip4/{LOOPBACK}/tcp/{to_monitor}/p2p/{peer_id}", count=1,
                                 concurrency=1, timeout=60)  # fmt: skip
        if reply.get("attached") != 1:
            raise RuntimeError(f"the peer could not connect through the relay: {reply}")
        await echo_client.call("start", ports={"path": to_echo}, period=0.1)
        with trio.fail_after(30):  # the monitor's first RTT on the path
            while not (await scrape(monitor.prom_port)).rtt_ms:
                await trio.sleep(0.5)
        await echo_client.call("take")
        samples: list[float] = []
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            await trio.sleep(1.05)  # one sample a second: the gauge holds the latest
            samples += [ms / 1000 for ms in (await scrape(monitor.prom_port)).rtt_ms.values()]
        echo = (await echo_client.call("take"))["samples"].get("path", [])
        out["monitor_rtt_s"] = samples
        out["echo_rtt_s"] = echo
        await monitor.stop()
    return out


async def _kill(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        process.kill()
        await process.wait()


def path_main(path_ms: float, seconds: float) -> None:
    run = Run()
    with tempfile.TemporaryDirectory(prefix="physarum-bench-monitor-path-") as tmp:
        info = trio.run(run_path, path_ms, seconds, Path(tmp))
    run.finish()
    mon, echo = info["monitor_rtt_s"], info["echo_rtt_s"]
    mon_med = statistics.median(mon) * 1e6 if mon else None
    echo_med = statistics.median(echo) * 1e6 if echo else None
    diff = None if mon_med is None or echo_med is None else mon_med - echo_med
    print(run.title("physarum ping-monitor on a long path", "path", f"{path_ms:g} ms relay on loopback"))
    print(f"monitor ping_rtt median {fmt(mon_med, 0)} us (n={len(mon)}); raw TCP echo across the same relay"
          f" median {fmt(echo_med, 0)} us (n={len(echo)}); difference {fmt(diff, 0)} us")  # fmt: skip
    goals = [Goal(f"monitor median within 0.3 ms of a raw TCP echo on an identical {path_ms:g} ms path",
                  "<= 300 us", "missing" if diff is None else f"{diff:+.0f} us",
                  None if diff is None else abs(diff) <= 300)]  # fmt: skip
    print(goal_lines(goals, target_width=12))
    write_json(RESULTS / "monitor_path.json", run.record(
        False, path_ms=path_ms, seconds=seconds, monitor_median_us=mon_med, echo_median_us=echo_med,
        difference_us=diff, goals=[g.as_json() for g in goals], monitor_rtt_s=mon, echo_rtt_s=echo,
    ))  # fmt: skip


def pinger_floors(n: int, seconds: float) -> list[dict[str, Any]]:
    """CPU of a bare pinger (trio, then a plain selectors loop) on the monitor's schedule for ``n``
    connections: what any pinger pays on this machine before the stack's own work."""
    out = []
    for mode in ("trio", "selectors"):
        progress(f"N={n}: floor, a bare {mode} pinger for {seconds:g} s")
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("_pinger_floor.py")), str(n), str(seconds), mode],
            capture_output=True, text=True, timeout=seconds + 120, check=False,
        )  # fmt: skip
        try:
            out.append(json.loads(done.stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            out.append({"mode": mode, "error": (done.stderr.strip() or f"status {done.returncode}")[-300:]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 and 300 peers, 8 s CPU window")
    ap.add_argument("--profile", type=float, default=0.0, metavar="S",
                    help="py-spy the monitor for S seconds at the largest N (default: no profile)")  # fmt: skip
    ap.add_argument("--py-spy", default=None, metavar="PATH", help="the py-spy binary")
    ap.add_argument(
        "--sizes", type=int, nargs="+", metavar="N", help="peer counts instead of the default ones"
    )
    ap.add_argument("--window", type=float, metavar="S", help="CPU window seconds instead of the default")
    ap.add_argument("--json", type=Path, default=RESULTS_JSON, help=f"results file (default {RESULTS_JSON})")
    ap.add_argument("--path-ms", type=float, metavar="MS",
                    help="instead: one peer on a path of MS ms round trip (a delaying relay) beside a raw TCP echo"
                         " on an identical one, for --window seconds (default 30); results/monitor_path.json")  # fmt: skip
    args = ap.parse_args()
    if args.path_ms:
        path_main(args.path_ms, args.window or 30.0)
        return
    # Thousands of peers: a socket each in the monitor and in the peer processes (which inherit this).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cfg = Config.make(args.quick, args.profile)
    if args.sizes:
        cfg = dataclasses.replace(cfg, sizes=tuple(sorted(set(args.sizes))))
    if args.window:
        cfg = dataclasses.replace(cfg, window=args.window)
    run = Run()
    with tempfile.TemporaryDirectory(prefix="physarum-bench-monitor-") as tmp:
        info = trio.run(run_all, cfg, Path(tmp), find_py_spy(args.py_spy))
    rows: list[SizeResult] = info["rows"]
    floors = pinger_floors(GOAL_PEERS, min(cfg.window, 10.0)) if any(r.peers == GOAL_PEERS for r in rows) else []
    run.finish()
    goals = evaluate_goals(rows)
    print(
        run.title("physarum ping-monitor benchmark", "quick" if cfg.quick else "full", "loopback") + "\n"
        f"monitor: {info['monitor_program']} (own process), 1 s interval; {cfg.peer_procs} peer processes;"
        f" CPU window {cfg.window:g} s without scrapes; RTTs from {cfg.rtt_scrapes + 1} scrapes"
        f" >= {cfg.scrape_gap:g} s apart\n"
        "'mon RTT' = the monitor's ping_rtt gauges over all scrapes; 'quiet' = the end-of-window scrape alone;"
        " 'hist' = physarum_pings_rtt_seconds\nover the window (bucketed, no scrape meanwhile); 'TCP' = raw trio"
        " TCP 32 B echo between two otherwise idle processes; 'TCP@peers' = the same\necho served by a peer"
        " process's loop; bias = mon RTT med - TCP med; others' cores = machine busy minus this benchmark\n"
    )
    print("Cost (CPU in % of one core; scrape = one GET /metrics: wall ms, render CPU ms, size)")
    print(size_table(COST_COLUMNS, rows, PAPER_COST))
    print("\nRTT (us)")
    print(size_table(RTT_COLUMNS, rows))
    for r in rows:
        if r.notes:
            print(f"  N={r.peers}: " + "; ".join(r.notes))
    print(
        f"\nmonitor RSS idle (no peers) {fmt(info.get('monitor_rss_mb_idle'), 0)} MB;"
        f" printed {len(info['monitor_printed_addrs'])} multiaddr(s): {' '.join(info['monitor_printed_addrs'])}"
    )
    shutdown = info.get("monitor_shutdown_seconds")
    print(
        f"SIGTERM with {rows[-1].peers if rows else 0} peers connected: exited in {fmt(shutdown, 2)} s,"
        f" status {info.get('monitor_exit_status')}"
    )
    if floors:
        print(f"\nFloor at {GOAL_PEERS:,} peers: a bare pinger on the monitor's schedule (each peer once a second on its"
              " own phase; plain TCP, no pnet/Noise/yamux/metrics; bench/_pinger_floor.py), run after the monitor:")
        for f in floors:
            print(f"  {f.get('mode', '?'):<9} " + (f"{f['cpu_pct']:.1f}% of one core, {f['us_per_ping']:.0f} us/ping"
                                                     if "cpu_pct" in f else f"failed: {f.get('error')}"))
    print("\nGoals:")
    print(goal_lines(goals, target_width=20))
    if "profile" in info:
        print("\nWhere the monitor's CPU goes:")
        print(profile_text(info["profile"]))
    print("\nMarkdown:\n")
    print(markdown(MARKDOWN_HEADER, markdown_rows(rows)))
    print(machine_note(rows))
    print()
    print(goal_markdown(goals))
    data = run.record(
        cfg.quick,
        versions=versions("trio", "prometheus_client"),
        config=asdict(cfg),
        units={"cpu": "% of one core", "rss": "MB (10^6 bytes)", "rtt": "us"},
        paper={"monitor": "PhysarumSM Go ping-monitor", "rss_mb": PAPER_RSS_MB, "cpu_pct": PAPER_CPU_PCT},
        monitor={
            "program": info["monitor_program"],
            "printed_addrs": info["monitor_printed_addrs"],
            "rss_mb_idle": info.get("monitor_rss_mb_idle"),
            "shutdown_seconds": shutdown,
            "exit_status": info.get("monitor_exit_status"),
        },
        results=[
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(r).items()} for r in rows
        ],
        goals=[g.as_json() for g in goals],
    )
    data["pinger_floors"] = floors
    if "profile" in info:
        data["profile"] = info["profile"]
    write_json(args.json, data)


if __name__ == "__main__":
    main()
