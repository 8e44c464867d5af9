"""Overlay benchmark: physarum's host beside raw trio TCP, py-libp2p, js-libp2p, go-libp2p and rust-libp2p,
on loopback.

    .venv/bin/python bench/overlay.py [--quick] [--json PATH]

Measures, all in one run: import cost, connect time, ping RTT, single-stream throughput (a bulk sink, and
libp2p's perf protocol ``/perf/1.0.0`` both directions, as libp2p's cross-implementation dashboard
measures it) and memory per idle connection; prints an aligned table, a goal summary and a markdown
table, and writes the figures as JSON to bench/results/overlay.json. A benchmark, not a test: it never
asserts a timing, and a partner that is not installed (js: ``npm ci`` in tests/interop/js; py, go, rust:
``bash tests/interop/{py,go,rust}/setup.sh``) gets a note in its rows instead of a crash.

Every server runs in a process of its own (bench/_physarum_peer.py and the interop peers of
tests/interop, driven with bench/_harness.py), so the client that measures never shares an event loop
with the peer it measures. Only 127.0.0.1 is contacted. Other work on the machine shows up as noise:
read medians.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from _harness import (
    LOOPBACK,
    RESULTS,
    ROOT,
    Goal,
    Partner,
    PartnerSetupError,
    Run,
    aligned,
    bench_argv,
    echo_pings,
    fmt,
    go_peer_argv,
    goal_lines,
    goal_markdown,
    js_peer_argv,
    markdown,
    open_partner,
    percentile,
    progress,
    py_peer_argv,
    py_venv_python,
    receive_exactly,
    rust_peer_argv,
    status_kib,
    versions,
    write_json,
)

from physarum.overlay import perf, tls
from physarum.overlay.host import Host
from physarum.overlay.ping import PROTOCOL_ID as PING_PROTOCOL
from physarum.overlay.ping import ping_once
from physarum.psk import generate_psk, protect, write_key_file

RESULTS_JSON = RESULTS / "overlay.json"
MIB = 1 << 20
MS, US = 1e3, 1e6  # seconds to the units of the table's sections
HOST_PING = "Host.ping, one stream"
T = TypeVar("T")

# Goals (from the project brief). Kept here so the summary and the JSON say the same thing.
GOAL_PING_VS_XSALSA = 2.0  # physarum ping median <= 2x raw TCP + XSalsa20
GOAL_PING_VS_PY = 4.0  # ... and >= 4x lower than py-libp2p
GOAL_CONNECT_MS = 5.0
GOAL_THROUGHPUT_MBPS = 300.0
GOAL_KIB_PER_CONN = 64.0
GOAL_IMPORT_DELTA_MS = 60.0


@dataclass(frozen=True)
class Config:
    quick: bool
    import_runs: int = 5
    connects: int = 100
    connects_slow: int = 50  # py-libp2p's default dial waits 250 ms each
    pings: int = 1000
    bulk_bytes: int = 256 * MIB
    perf_bytes: int = 128 * MIB  # one way, per perf exchange
    perf_runs: int = 3
    idle_conns: int = 200

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(
                quick=True, connects=50, connects_slow=20, pings=200, bulk_bytes=64 * MIB,
                perf_bytes=32 * MIB, perf_runs=1,
            )  # fmt: skip
        return cls(quick=False)


# ----------------------------------------------------------------------------------------- results


@dataclass
class Result:
    """One row of the table. ``median``/``p99`` are in the unit of the row's section."""

    median: float | None = None
    p99: float | None = None
    n: int = 0
    note: str = ""
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.median is not None:
            out["median"] = round(self.median, 3)
        if self.p99 is not None:
            out["p99"] = round(self.p99, 3)
        if self.n:
            out["n"] = self.n
        if self.note:
            out["note"] = self.note
        if self.error is not None:
            out["error"] = self.error
        return out


SECTIONS: dict[str, str] = {
    "import": "ms",
    "connect": "ms",
    "ping": "us",
    "throughput": "MB/s",
    "memory": "KiB/conn",
}

# Row names, in table order. Declared up front so a row that could not run still shows, with why.
IMP_TRIO = "import trio"
IMP_HOST = "import trio + physarum.overlay.host"
IMP_DELTA = "physarum.overlay.host on top of trio"
IMP_DELTA_ENV = "physarum.overlay.host on top of trio, as installed here"
IMP_LIBP2P = "import libp2p (py-libp2p venv)"
CON_RAW = "raw trio TCP (floor)"
CON_PHY = "physarum -> physarum (PSK)"
CON_PHY_JS = "physarum -> js-libp2p (PSK)"
CON_JS_PHY = "js-libp2p -> physarum (PSK)"
CON_JS = "js-libp2p -> js-libp2p (PSK)"
CON_PY = "py-libp2p -> py-libp2p (default)"
CON_PY1 = "py-libp2p -> py-libp2p (max-conns-per-peer 1)"
PING_RAW = "raw trio TCP echo (floor)"
PING_XS = "raw trio TCP + XSalsa20"
PING_PHY = "physarum -> physarum (PSK)"
PING_PHY_JS = "physarum -> js-libp2p (PSK)"
PING_JS_PHY = "js-libp2p -> physarum (PSK)"
PING_JS = "js-libp2p -> js-libp2p (PSK)"
PING_PY = "py-libp2p <-> py-libp2p"
PING_PHY_PY = "physarum -> py-libp2p (no PSK)"
TP_RAW = "raw trio TCP"
TP_XS = "raw trio TCP + XSalsa20"
TP_PHY = "physarum -> physarum (PSK)"
# The go and rust rows name the pair, client first; the same names in every section.
PHY_PHY = TP_PHY
PHY_GO, PHY_GO_TLS, GO_PHY, GO_GO = GO_PAIRS = [
    "physarum -> go-libp2p (PSK)",
    "physarum -> go-libp2p (PSK, TLS)",
    "go-libp2p -> physarum (PSK)",
    "go-libp2p -> go-libp2p (PSK)",
]
PHY_RS, RS_PHY, RS_RS = RS_PAIRS = [
    "physarum -> rust-libp2p (PSK)",
    "rust-libp2p -> physarum (PSK)",
    "rust-libp2p -> rust-libp2p (PSK)",
]


def perf_up(pair: str) -> str:
    """The perf row where the client sends (``pair`` is client -> server)."""
    return f"perf upload, {pair}"


def perf_down(pair: str) -> str:
    """The perf row where the server sends."""
    return f"perf download, {pair}"


def perf_rows(*pairs: str) -> list[str]:
    return [name for pair in pairs for name in (perf_up(pair), perf_down(pair))]


MEM_RAW = "raw trio TCP server, one task per socket"
MEM_PHY = "physarum listener (PSK)"
MEM_DIAL = "physarum dialer side (one Host + connection)"

ROWS: dict[str, list[str]] = {
    "import": [IMP_TRIO, IMP_HOST, IMP_DELTA, IMP_DELTA_ENV, IMP_LIBP2P],
    "connect": [CON_RAW, CON_PHY, CON_PHY_JS, CON_JS_PHY, CON_JS, *GO_PAIRS, *RS_PAIRS, CON_PY, CON_PY1],
    "ping": [
        PING_RAW,
        PING_XS,
        PING_PHY,
        PING_PHY_JS,
        PING_JS_PHY,
        PING_JS,
        *GO_PAIRS,
        *RS_PAIRS,
        PING_PY,
        PING_PHY_PY,
    ],
    "throughput": [TP_RAW, TP_XS, TP_PHY, *perf_rows(PHY_PHY, *GO_PAIRS, *RS_PAIRS)],
    "memory": [MEM_RAW, MEM_PHY, MEM_DIAL],
}
JS_ROWS = [
    ("connect", CON_PHY_JS),
    ("connect", CON_JS_PHY),
    ("connect", CON_JS),
    ("ping", PING_PHY_JS),
    ("ping", PING_JS_PHY),
    ("ping", PING_JS),
]
PHY_ROWS = [
    ("connect", CON_RAW),
    ("connect", CON_PHY),
    ("ping", PING_RAW),
    ("ping", PING_XS),
    ("ping", PING_PHY),
    ("throughput", TP_RAW),
    ("throughput", TP_XS),
    ("throughput", TP_PHY),
    *[("throughput", name) for name in perf_rows(PHY_PHY)],
]
GO_ROWS = [
    *[("connect", name) for name in GO_PAIRS],
    *[("ping", name) for name in GO_PAIRS],
    *[("throughput", name) for name in perf_rows(*GO_PAIRS)],
]
RS_ROWS = [
    *[("connect", name) for name in RS_PAIRS],
    *[("ping", name) for name in RS_PAIRS],
    *[("throughput", name) for name in perf_rows(*RS_PAIRS)],
]
PY_ROWS = [("connect", CON_PY), ("connect", CON_PY1), ("ping", PING_PY), ("ping", PING_PHY_PY)]


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Result]] = {
            s: {name: Result(error="not run") for name in names} for s, names in ROWS.items()
        }
        self.partners: dict[str, dict[str, Any]] = {}  # the compiled partners' library versions

    def set(self, section: str, name: str, result: Result) -> None:
        self.rows[section][name] = result

    def get(self, section: str, name: str) -> Result:
        return self.rows[section][name]

    def fail(self, rows: Sequence[tuple[str, str]], why: str) -> None:
        """Mark every row of ``rows`` that has no figure yet with ``why``."""
        for section, name in rows:
            if self.rows[section][name].median is None:
                self.rows[section][name] = Result(error=why)


def summarize(samples: Sequence[float], scale: float, note: str = "") -> Result:
    scaled = [s * scale for s in samples]
    return Result(statistics.median(scaled), percentile(scaled, 0.99), len(scaled), note)


async def measure(results: Results, section: str, name: str, fn: Callable[[], Awaitable[Result]]) -> None:
    """Run one case; a failure becomes a note in its row, not the end of the benchmark."""
    progress(f"{section}: {name}")
    try:
        with trio.fail_after(180):
            results.set(section, name, await fn())
    except Exception as e:  # a benchmark reports what broke and goes on with the other rows
        results.set(section, name, Result(error=_short_error(e)))
        progress(f"  failed: {_short_error(e)}")


def _short_error(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"[:160]


# ------------------------------------------------------------------------------------- import cost


def _time_imports(python: Path | str, statements: Sequence[str], env: dict[str, str]) -> list[float]:
    """Seconds one fresh interpreter spends on each statement, run in order (timed inside it, so its
    own start-up is left out)."""
    lines = ["import time", "ts = []"]
    lines += [f"t = time.perf_counter(); {s}; ts.append(time.perf_counter() - t)" for s in statements]
    lines.append("print(*ts)")
    done = subprocess.run(
        [str(python), "-c", "\n".join(lines)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
        env=env,
    )
    return [float(x) for x in done.stdout.split()[-len(statements) :]]


def _import_runs(
    python: Path | str, variants: Sequence[Sequence[str]], runs: int, env: dict[str, str]
) -> list[list[list[float]]]:
    """For each variant (a list of statements), ``runs`` timings from fresh interpreters."""
    # One discarded run of each first: it writes the bytecode cache and faults in the page cache.
    for statements in variants:
        _time_imports(python, statements, env)
    out: list[list[list[float]]] = [[] for _ in variants]
    for _ in range(runs):
        # Interleaved, so a burst of load from elsewhere hits every variant alike.
        for i, statements in enumerate(variants):
            out[i].append(_time_imports(python, statements, env))
    return out


def bench_imports(results: Results, cfg: Config, tmp: Path) -> None:
    progress("import cost")
    n = cfg.import_runs
    trio_only = ["import trio"]
    both = ["import trio", "import physarum.overlay.host"]
    # Measured with compiled bytecode, as a wheel install has it. Where PYTHONDONTWRITEBYTECODE is set and
    # src/ has no __pycache__ (this dev environment), physarum would be compiled from source on every
    # import; a private cache prefix gives every module a .pyc without writing into the tree.
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    alone, paired = _import_runs(sys.executable, [trio_only, both], n, cached)
    t = statistics.median(r[0] for r in alone)
    h = statistics.median(sum(r) for r in paired)
    # The host's own cost is taken inside each interpreter (the import right after trio's), which is
    # steadier than subtracting two medians that each carry the noise of a whole trio import.
    delta = statistics.median(r[1] for r in paired)
    results.set("import", IMP_TRIO, Result(t * 1e3, n=n, note="fresh interpreter each run, bytecode cached"))
    results.set("import", IMP_HOST, Result(h * 1e3, n=n, note="bytecode cached"))
    results.set(
        "import",
        IMP_DELTA,
        Result(
            delta * 1e3,
            n=n,
            note=f"median increment in-process; difference of medians {(h - t) * 1e3:.0f} ms",
        ),
    )
    # And as this environment runs it (whatever bytecode exists on disk, none written).
    (paired_env,) = _import_runs(sys.executable, [both], n, dict(os.environ))
    compiled = any((ROOT / "src" / "physarum" / "overlay" / "__pycache__").glob("host.*.pyc"))
    note = "median increment; " + (
        "src/ has .pyc files" if compiled else "no .pyc in src/, so physarum compiles from source each time"
    )
    results.set(
        "import", IMP_DELTA_ENV, Result(statistics.median(r[1] for r in paired_env) * 1e3, n=n, note=note)
    )
    try:
        (lib,) = _import_runs(py_venv_python(), [["import libp2p"]], n, cached)
        results.set(
            "import",
            IMP_LIBP2P,
            Result(statistics.median(r[0] for r in lib) * 1e3, n=n, note="py-libp2p 0.8.1, bytecode cached"),
        )
    except PartnerSetupError as e:
        results.set("import", IMP_LIBP2P, Result(error=f"skipped: {e}"))
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        results.set("import", IMP_LIBP2P, Result(error=_short_error(e)))


# ---------------------------------------------------------------------------------- stream helpers


async def send_bulk(stream: trio.abc.HalfCloseableStream, total: int) -> float:
    """Send ``total`` bytes, half-close, and wait for the sink's byte count; MB/s (10**6 bytes)."""
    chunk = os.urandom(MIB)
    t0 = time.perf_counter()
    for _ in range(total // MIB):
        await stream.send_all(chunk)
    await stream.send_eof()
    # Until the sink says it has everything: bytes still in socket buffers are not yet delivered.
    got = int.from_bytes(await receive_exactly(stream, 8), "big")
    elapsed = time.perf_counter() - t0
    if got != total:
        raise RuntimeError(f"sink received {got} of {total} bytes")
    return total / elapsed / 1e6


# ------------------------------------------------------------------------------------------- peers


def _warmup(n: int) -> int:
    return max(5, n // 20)


@asynccontextmanager
async def physarum_peer(*args: str) -> AsyncIterator[Partner]:
    async with open_partner(bench_argv("_physarum_peer.py", *args)) as peer:
        yield peer


async def start_host(nursery: trio.Nursery, psk: bytes | None, **options: Any) -> Host:
    # No listener: the bench process only dials, and a listener would only add idle tasks.
    host = Host(psk=psk, listen=(), **options)
    await nursery.start(host.run)
    return host


async def physarum_connects(host: Host, addr: str, count: int) -> list[float]:
    """Fresh-connection times until Host.connect returns (TCP + pnet + Noise + yamux)."""
    times = []
    for i in range(count + _warmup(count)):
        t0 = time.perf_counter()
        conn = await host.connect(addr, timeout=10)
        elapsed = time.perf_counter() - t0
        # Let identify (both ways) finish before hanging up, so its work never lands inside the next
        # measurement; then close, so the next connect dials afresh instead of reusing this one.
        with trio.fail_after(10):
            await conn.identified.wait()
        await conn.aclose()
        if i >= _warmup(count):
            times.append(elapsed)
    return times


async def raw_connects(port: int, count: int) -> list[float]:
    times = []
    for i in range(count + _warmup(count)):
        t0 = time.perf_counter()
        tcp = await trio.open_tcp_stream(LOOPBACK, port)
        elapsed = time.perf_counter() - t0
        await tcp.aclose()
        if i >= _warmup(count):
            times.append(elapsed)
    return times


# How long a partner may take over one command; it is told too (the js, go and rust peers give up after
# their "timeout_ms", 10 s by default).
PARTNER_TIMEOUT = 170.0


async def partner_call(
    partner: Partner, cmd: str, *, timeout: float = PARTNER_TIMEOUT, **args: Any
) -> dict[str, Any]:
    return await partner.call(cmd, timeout=timeout, timeout_ms=int(timeout * 1000), **args)


async def partner_connects(partner: Partner, addr: str, count: int) -> list[float]:
    """bench_connect run by a partner; seconds per connect (warm-up dials dropped)."""
    warm = _warmup(count)
    reply = await partner_call(partner, "bench_connect", addr=addr, count=count + warm)
    return [us / 1e6 for us in reply["times_us"][warm:]]


async def partner_pings(partner: Partner, addr: str, count: int, *, key: str = "peer") -> list[float]:
    """bench_ping run by a partner; seconds per ping. A first short call dials and warms up.

    The js, go and rust peers take a multiaddr as ``peer``; the py peer wants it as ``addr``.
    """
    await partner_call(partner, "bench_ping", timeout=60, count=_warmup(count), **{key: addr})
    reply = await partner_call(partner, "bench_ping", timeout=PARTNER_TIMEOUT, count=count, **{key: addr})
    return [us / 1e6 for us in reply["rtts_us"]]


def _perf_sizes(size: int, upload: bool) -> dict[str, int]:
    return {"upload": size, "download": 0} if upload else {"upload": 0, "download": size}


async def physarum_perf(host: Host, addr: str, size: int, runs: int, *, upload: bool) -> list[float]:
    """Seconds of ``runs`` perf exchanges moving ``size`` bytes one way, a new stream each, timed from the
    stream's first byte to the server's end of stream (as libp2p's perf dashboard times them)."""
    times = []
    for _ in range(runs):
        stream = await host.new_stream(addr, [perf.PROTOCOL_ID])
        try:
            result = await perf.measure(stream, **_perf_sizes(size, upload))
        finally:
            await stream.aclose()
        times.append(result.seconds)
    return times


async def partner_perf(partner: Partner, addr: str, size: int, runs: int, *, upload: bool) -> list[float]:
    """The same, run by a go or rust partner's perf client (it times the exchange likewise)."""
    times = []
    for _ in range(runs):
        reply = await partner_call(partner, "perf", peer=addr, **_perf_sizes(size, upload))
        times.append((reply["upload_us"] + reply["download_us"]) / US)
    return times


async def physarum_pings(host: Host, addr: str, count: int) -> list[float]:
    await host.ping(addr, count=_warmup(count), timeout=30)
    return await host.ping(addr, count=count, timeout=170)


# -------------------------------------------------------------------------------------- benchmarks


async def with_cpu(peer: Partner, fn: Callable[[], Awaitable[T]]) -> tuple[T, float, float]:
    """``fn()``'s result and the CPU seconds it cost this process and ``peer`` (a _physarum_peer)."""
    remote0 = float((await peer.call("cpu"))["cpu_s"])
    local0 = time.process_time()
    out = await fn()
    local = time.process_time() - local0
    remote = float((await peer.call("cpu"))["cpu_s"]) - remote0
    return out, local, remote


async def bench_physarum_and_raw(
    results: Results, cfg: Config, helper: Partner, host: Host, psk: bytes
) -> None:
    servers = helper.ready["servers"]
    addr = helper.addrs[0]

    async def pings(stream: trio.abc.Stream, note: str) -> Result:
        await echo_pings(stream, _warmup(cfg.pings))
        rtts, cpu, cpu_peer = await with_cpu(helper, partial(echo_pings, stream, cfg.pings))
        return summarize(rtts, US, f"{note}; {_cpu_per(cpu, cpu_peer, cfg.pings, US, 'us/ping')}")

    async def bulk(stream: trio.abc.HalfCloseableStream, note: str) -> Result:
        mbps, cpu, cpu_peer = await with_cpu(helper, partial(send_bulk, stream, cfg.bulk_bytes))
        wall = cfg.bulk_bytes / 1e6 / mbps
        # A side near 100% of one core is the bottleneck.
        busy = f"CPU busy: sender {cpu / wall:.0%}, receiver {cpu_peer / wall:.0%}"
        return Result(mbps, n=1, note=f"{cfg.bulk_bytes // MIB} MiB, {note}; {busy}")

    async def raw_connect() -> Result:
        return summarize(await raw_connects(servers["echo"], cfg.connects * 2), MS, "until connect() returns")

    async def phy_connect() -> Result:
        times, cpu, cpu_peer = await with_cpu(helper, partial(physarum_connects, host, addr, cfg.connects))
        # The CPU figures cover the whole cycle: connect, identify both ways, close (and the warm-ups).
        n = cfg.connects + _warmup(cfg.connects)
        cycle = _cpu_per(cpu, cpu_peer, n, MS, "ms/cycle incl. identify+close")
        return summarize(times, MS, f"until Host.connect returns; {cycle}")

    async def raw(
        server: str,
        pnet: bool,
        fn: Callable[[trio.abc.HalfCloseableStream, str], Awaitable[Result]],
        note: str,
    ) -> Result:
        """``fn`` over a socket to one of the helper's raw servers, pnet-protected or not."""
        async with await trio.open_tcp_stream(LOOPBACK, servers[server]) as tcp:
            return await fn(await protect(tcp, psk) if pnet else tcp, note)

    async def phy_ping() -> Result:
        stream = await host.new_stream(addr, [PING_PROTOCOL])
        try:
            # Host.ping is ping_once in a loop on one stream; calling ping_once here keeps the stream
            # opening out of the CPU figures.
            async def run(count: int) -> list[float]:
                return [await ping_once(stream) for _ in range(count)]

            await run(_warmup(cfg.pings))
            rtts, cpu, cpu_peer = await with_cpu(helper, partial(run, cfg.pings))
        finally:
            await stream.aclose()
        return summarize(
            rtts, US, f"ping_once, one stream; {_cpu_per(cpu, cpu_peer, cfg.pings, US, 'us/ping')}"
        )

    async def phy_tp() -> Result:
        stream = await host.new_stream(addr, [helper.ready["sink_protocol"]])
        try:
            return await bulk(stream, "one yamux stream")
        finally:
            await stream.aclose()

    await measure(results, "connect", CON_RAW, raw_connect)
    await measure(results, "connect", CON_PHY, phy_connect)
    await measure(results, "ping", PING_RAW, partial(raw, "echo", False, pings, "32 B echo"))
    await measure(results, "ping", PING_XS, partial(raw, "psk_echo", True, pings, "psk.protect both sides"))
    await measure(results, "ping", PING_PHY, phy_ping)
    await measure(results, "throughput", TP_RAW, partial(raw, "sink", False, bulk, "one socket"))
    await measure(results, "throughput", TP_XS, partial(raw, "psk_sink", True, bulk, "one socket"))
    await measure(results, "throughput", TP_PHY, phy_tp)
    await measure_perf(results, cfg, [(PHY_PHY, partial(physarum_perf, host, addr), "physarum")])


def _cpu_per(local: float, remote: float, count: int, scale: float, unit: str) -> str:
    return f"CPU {fmt(local / count * scale)}+{fmt(remote / count * scale)} {unit} (client+server)"


Samples = Callable[[], Awaitable[list[float]]]
Case = tuple[str, str, Samples, float, str]


async def measure_samples(results: Results, cases: Sequence[Case]) -> None:
    """Each case (section, row, samples in seconds, scale to the section's unit, note) in its row."""

    async def summarized(samples: Samples, scale: float, note: str) -> Result:
        return summarize(await samples(), scale, note)

    for section, name, samples, scale, note in cases:
        await measure(results, section, name, partial(summarized, samples, scale, note))


PerfSamples = Callable[..., Awaitable[list[float]]]
"""``(size, runs, *, upload)``: seconds of each run (:func:`physarum_perf`, :func:`partner_perf`)."""


PerfCase = tuple[str, PerfSamples, str]


async def measure_perf(results: Results, cfg: Config, cases: Sequence[PerfCase]) -> None:
    """For each case (pair, its perf client, who times it), an upload row and a download row in MB/s."""

    async def rates(samples: PerfSamples, upload: bool, who: str) -> Result:
        size = cfg.perf_bytes
        mbps = [size / seconds / 1e6 for seconds in await samples(size, cfg.perf_runs, upload=upload)]
        spread = f", slowest {fmt(min(mbps))}" if len(mbps) > 1 else ""
        note = f"{size // MIB} MiB on a new stream per run{spread}; timed by {who}'s perf client"
        return Result(statistics.median(mbps), n=len(mbps), note=note)

    for pair, samples, who in cases:
        for upload, name in ((True, perf_up(pair)), (False, perf_down(pair))):
            await measure(results, "throughput", name, partial(rates, samples, upload, who))


def partner_cases(
    cfg: Config,
    pairs: Sequence[str],
    host: Host,
    peer_addr: str,
    phy_addr: str,
    dialer: Partner,
    *,
    connects: int,
    dial_note: str,
    ping_note: str,
    pinger: Partner | None = None,
) -> list[Case]:
    """The six rows every partner has: connect, then ping, each as physarum -> partner, partner ->
    physarum and partner -> partner (``pairs`` names them in that order, in both sections). ``dialer``
    connects from the partner's side and ``pinger`` (default: the dialer) pings from it."""
    to_peer, from_peer, between = pairs
    pinger = pinger or dialer
    return [
        ("connect", to_peer, partial(physarum_connects, host, peer_addr, connects), MS, ""),
        ("connect", from_peer, partial(partner_connects, dialer, phy_addr, connects), MS, dial_note),
        ("connect", between, partial(partner_connects, dialer, peer_addr, connects), MS, dial_note),
        ("ping", to_peer, partial(physarum_pings, host, peer_addr, cfg.pings), US, HOST_PING),
        ("ping", from_peer, partial(partner_pings, pinger, phy_addr, cfg.pings), US, ping_note),
        ("ping", between, partial(partner_pings, pinger, peer_addr, cfg.pings), US, ping_note),
    ]


def partner_perf_cases(
    pairs: Sequence[str], host: Host, peer_addr: str, phy_addr: str, client: Partner, who: str
) -> list[PerfCase]:
    """Perf in the three directions of :func:`partner_cases`; ``client`` runs the partner's side."""
    to_peer, from_peer, between = pairs
    return [
        (to_peer, partial(physarum_perf, host, peer_addr), "physarum"),
        (from_peer, partial(partner_perf, client, phy_addr), who),
        (between, partial(partner_perf, client, peer_addr), who),
    ]


async def with_partners(
    results: Results,
    rows: Sequence[tuple[str, str]],
    argvs: Callable[[], list[list[str]]],
    body: Callable[[list[Partner]], Awaitable[None]],
) -> None:
    """Run ``body`` with the partner processes whose command lines ``argvs()`` gives, started in that
    order and stopped when it returns. A partner that is not installed or cannot start leaves a note
    in ``rows`` saying why, and so does an error that escapes ``body``."""
    try:
        commands = argvs()
    except PartnerSetupError as e:
        results.fail(rows, f"skipped: {e}")
        return
    try:
        async with AsyncExitStack() as stack:
            await body([await stack.enter_async_context(open_partner(argv)) for argv in commands])
    except Exception as e:  # a partner could not start or broke: say so in its rows
        results.fail(rows, _short_error(e))


async def bench_js(results: Results, cfg: Config, helper: Partner, host: Host, key_file: Path) -> None:
    # js refuses more than 5 inbound connections a second from one host by default; the limit
    # sits on the listening side, so only the js listener needs it lifted.
    # js's connection monitor is off: every 10 s it pings each connection on a new stream, and js
    # allows one outbound ping stream per connection, so a keep-alive that lands while bench_ping
    # has its stream open fails, and the monitor then aborts the whole connection mid-benchmark.
    quiet = ("--psk-file", str(key_file), "--no-connection-monitor")

    def argvs() -> list[list[str]]:
        return [js_peer_argv(*quiet, "--inbound-threshold", "1000"), js_peer_argv(*quiet, "--no-listen")]

    async def run(peers: list[Partner]) -> None:
        js, jsd = peers
        pairs = (CON_PHY_JS, CON_JS_PHY, CON_JS)  # the ping rows have the same names
        cases = partner_cases(
            cfg, pairs, host, js.addrs[0], helper.addrs[0], jsd,
            connects=cfg.connects_slow, dial_note="js dial()", ping_note="js: new stream per ping",
        )  # fmt: skip
        await measure_samples(results, cases)

    await with_partners(results, JS_ROWS, argvs, run)


async def bench_go(
    results: Results, cfg: Config, helper: Partner, host: Host, host_tls: Host, key_file: Path
) -> None:
    psk_arg = ("--psk-file", str(key_file))

    def argvs() -> list[list[str]]:
        return [
            go_peer_argv(*psk_arg),
            go_peer_argv(*psk_arg, "--security", "tls"),
            go_peer_argv(*psk_arg, "--no-listen"),
        ]

    async def run(peers: list[Partner]) -> None:
        go, go_tls, god = peers
        results.partners["go"] = go.ready.get("versions", {})
        go_addr, tls_addr, phy_addr = go.addrs[0], go_tls.addrs[0], helper.addrs[0]
        tls = "TLS 1.3: both offer only /tls/1.0.0"
        cases = partner_cases(
            cfg, (PHY_GO, GO_PHY, GO_GO), host, go_addr, phy_addr, god, connects=cfg.connects,
            dial_note="go Network.DialPeer (upgraded, before identify)", ping_note="go ping.Ping, one stream",
        )  # fmt: skip
        await measure_samples(
            results,
            [
                *cases,
                ("connect", PHY_GO_TLS, partial(physarum_connects, host_tls, tls_addr, cfg.connects), MS, tls),
                ("ping", PHY_GO_TLS, partial(physarum_pings, host_tls, tls_addr, cfg.pings), US,
                 f"{HOST_PING}; {tls}"),
            ],
        )  # fmt: skip
        perf_cases = partner_perf_cases((PHY_GO, GO_PHY, GO_GO), host, go_addr, phy_addr, god, "go")
        await measure_perf(
            results, cfg, [*perf_cases, (PHY_GO_TLS, partial(physarum_perf, host_tls, tls_addr), "physarum")]
        )

    await with_partners(results, GO_ROWS, argvs, run)


# rust-libp2p pings every connection by itself, every --ping-interval-ms, on one stream it keeps open;
# its bench_ping collects the next pings, it cannot send one on demand. Its listener and dialer ping
# once an hour (so they hardly ever ping physarum during the other rows), a pinger of its own every ms.
RUST_QUIET_PING_MS = 3_600_000
RUST_BENCH_PING_MS = 1
RUST_PING = f"rust's ping behaviour, one stream, a ping every {RUST_BENCH_PING_MS} ms (not back to back)"


async def bench_rust(results: Results, cfg: Config, helper: Partner, host: Host, key_file: Path) -> None:
    psk_arg = ("--psk-file", str(key_file))
    quiet = (*psk_arg, "--ping-interval-ms", str(RUST_QUIET_PING_MS))

    def argvs() -> list[list[str]]:
        return [
            rust_peer_argv(*quiet),
            rust_peer_argv(*quiet, "--no-listen"),
            rust_peer_argv(*psk_arg, "--no-listen", "--ping-interval-ms", str(RUST_BENCH_PING_MS)),
        ]

    async def run(peers: list[Partner]) -> None:
        rs, rsd, pinger = peers
        results.partners["rust"] = {"libp2p": _rust_libp2p_version()}
        rs_addr, phy_addr = rs.addrs[0], helper.addrs[0]
        cases = partner_cases(
            cfg, RS_PAIRS, host, rs_addr, phy_addr, rsd, pinger=pinger, connects=cfg.connects,
            dial_note="rust Swarm::dial until ConnectionEstablished", ping_note=RUST_PING,
        )  # fmt: skip
        await measure_samples(results, cases[:4])
        await measure_perf(results, cfg, partner_perf_cases(RS_PAIRS, host, rs_addr, phy_addr, rsd, "rust"))
        # The pinger's rows last: once connected it pings every ms until it stops, when this returns.
        await measure_samples(results, cases[4:])

    await with_partners(results, RS_ROWS, argvs, run)


def _rust_libp2p_version() -> str | None:
    """The rust-libp2p release the partner is built with (its Cargo.lock pins it)."""
    lock = ROOT / "tests" / "interop" / "rust" / "Cargo.lock"
    found = re.search(r'name = "libp2p"\nversion = "([^"]+)"', lock.read_text())
    return found.group(1) if found else None


async def bench_py(results: Results, cfg: Config, host_plain: Host) -> None:
    def argvs() -> list[list[str]]:
        return [py_peer_argv(), py_peer_argv(), py_peer_argv("--max-conns-per-peer", "1")]

    async def run(peers: list[Partner]) -> None:
        py, py_default, py_single = peers
        addr = py.addrs[0]
        await measure_samples(
            results,
            [
                ("connect", CON_PY, partial(partner_connects, py_default, addr, cfg.connects_slow), MS,
                 "250 ms happy-eyeballs wait per dial"),
                ("connect", CON_PY1, partial(partner_connects, py_single, addr, cfg.connects), MS, ""),
                ("ping", PING_PY, partial(partner_pings, py_single, addr, cfg.pings, key="addr"), US,
                 "one stream"),
                ("ping", PING_PHY_PY, partial(physarum_pings, host_plain, addr, cfg.pings), US, HOST_PING),
            ],
        )  # fmt: skip

    await with_partners(results, PY_ROWS, argvs, run)


async def settled_rss(peer: Partner, ready: Callable[[dict[str, Any]], bool]) -> int:
    """The peer's RSS once ``ready(stats)`` holds and it has stayed idle a moment."""
    with trio.fail_after(60):
        while not ready(await peer.call("stats")):
            await trio.sleep(0.05)
    # Idle: pending identify pushes, window updates and freed buffers have settled.
    await trio.sleep(1.0)
    await peer.call("stats")  # runs gc.collect() in the peer
    return status_kib(int(peer.ready["pid"]))


async def bench_memory(results: Results, cfg: Config, key_file: Path) -> None:
    n = cfg.idle_conns
    psk_arg = ("--psk-file", str(key_file))

    async def raw_mem() -> Result:
        async with physarum_peer("--role", "hold") as holder, physarum_peer("--role", "dialers") as dialers:
            port = holder.ready["servers"]["hold"]
            # Warm-up connections first, so one-off allocations (first accept, task machinery) are not
            # counted as the cost of the 200 that follow.
            await dialers.call("open_raw", port=port, count=5)
            await dialers.call("close_all")
            before = await settled_rss(holder, lambda s: s["held"] == 0)
            await dialers.call("open_raw", port=port, count=n, timeout=60)
            after = await settled_rss(holder, lambda s: s["held"] == n)
            return Result((after - before) / n, n=n, note=f"listener VmRSS {before} -> {after} KiB")

    async def phy_mem() -> Result:
        async with (
            physarum_peer("--role", "listener", "--host-only", *psk_arg) as listener,
            physarum_peer("--role", "dialers", *psk_arg) as dialers,
        ):
            addr = listener.addrs[0]
            await dialers.call("open_hosts", addr=addr, count=5, timeout=60)
            await dialers.call("close_all")
            before = await settled_rss(listener, lambda s: s["connections"] == 0)
            dial_before = await settled_rss(dialers, lambda s: s["hosts"] == 0)
            await dialers.call("open_hosts", addr=addr, count=n, timeout=120)
            after = await settled_rss(listener, lambda s: s["connections"] == n and s["identified"] == n)
            dial_after = await settled_rss(dialers, lambda s: s["hosts"] == n)
            note = "one dialer process holds all the Hosts"
            results.set(
                "memory",
                MEM_DIAL,
                Result(
                    (dial_after - dial_before) / n,
                    n=n,
                    note=f"{note}; VmRSS {dial_before} -> {dial_after} KiB",
                ),
            )
            return Result((after - before) / n, n=n, note=f"identified, idle; VmRSS {before} -> {after} KiB")

    await measure(results, "memory", MEM_RAW, raw_mem)
    await measure(results, "memory", MEM_PHY, phy_mem)
    if results.get("memory", MEM_PHY).error is not None:
        results.set("memory", MEM_DIAL, Result(error="see the listener row"))


# ------------------------------------------------------------------------------------------- goals


def evaluate_goals(results: Results) -> list[Goal]:
    def med(section: str, name: str) -> float | None:
        return results.get(section, name).median

    def goal(
        name: str,
        target: str,
        value: float | None,
        text: Callable[[float], str],
        meets: Callable[[float], bool],
    ) -> Goal:
        return (
            Goal(name, target, "missing", None)
            if value is None
            else Goal(name, target, text(value), meets(value))
        )

    phy, xs, py = med("ping", PING_PHY), med("ping", PING_XS), med("ping", PING_PY)
    imp, imp_env = med("import", IMP_DELTA), med("import", IMP_DELTA_ENV)
    installed = "" if imp_env is None else f" (+{imp_env:.0f} ms as installed here)"
    return [
        goal("ping RTT median vs raw TCP + XSalsa20", f"<= {GOAL_PING_VS_XSALSA:g}x",
             None if phy is None or xs is None else phy / xs,
             lambda r: f"{phy:.0f} us vs {xs:.0f} us = {r:.2f}x", lambda r: r <= GOAL_PING_VS_XSALSA),
        goal("ping RTT median vs py-libp2p", f">= {GOAL_PING_VS_PY:g}x lower",
             None if phy is None or py is None else py / phy,
             lambda r: f"{py:.0f} us / {phy:.0f} us = {r:.1f}x lower", lambda r: r >= GOAL_PING_VS_PY),
        goal("connect median (TCP+pnet+Noise+yamux)", f"< {GOAL_CONNECT_MS:g} ms", med("connect", CON_PHY),
             lambda v: f"{v:.2f} ms", lambda v: v < GOAL_CONNECT_MS),
        goal("single-stream throughput with PSK", f">= {GOAL_THROUGHPUT_MBPS:g} MB/s", med("throughput", TP_PHY),
             lambda v: f"{v:.0f} MB/s", lambda v: v >= GOAL_THROUGHPUT_MBPS),
        goal("memory per idle connection (listener)", f"<= {GOAL_KIB_PER_CONN:g} KiB", med("memory", MEM_PHY),
             lambda v: f"{v:.1f} KiB", lambda v: v <= GOAL_KIB_PER_CONN),
        goal("import physarum.overlay.host beyond trio", f"<= {GOAL_IMPORT_DELTA_MS:g} ms", imp,
             lambda v: f"+{v:.0f} ms{installed}", lambda v: v <= GOAL_IMPORT_DELTA_MS),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------ report


def table_rows(results: Results) -> list[list[str]]:
    rows = []
    for section, unit in SECTIONS.items():
        for name, r in results.rows[section].items():
            note = r.note if r.error is None else r.error
            rows.append([section, name, unit, fmt(r.median), fmt(r.p99), str(r.n or "-"), note])
    return rows


HEADER = ["section", "case", "unit", "median", "p99", "n", "note"]


def write_results(path: Path, run: Run, cfg: Config, results: Results, goals: list[Goal]) -> None:
    write_json(
        path,
        run.record(
            cfg.quick,
            versions=versions("trio", node=True),
            units=SECTIONS,
            results={s: {n: r.as_json() for n, r in rows.items()} for s, rows in results.rows.items()},
            goals=[g.as_json() for g in goals],
            partners=results.partners,
        ),
    )


# -------------------------------------------------------------------------------------------- main


async def run_all(results: Results, cfg: Config, tmp: Path) -> None:
    psk = generate_psk()
    key_file = tmp / "swarm.key"
    write_key_file(key_file, psk)
    async with trio.open_nursery() as nursery:
        try:
            host_psk = await start_host(nursery, psk)
            host_tls = await start_host(nursery, psk, security=(tls.PROTOCOL_ID,))
            host_plain = await start_host(nursery, None)
            try:
                async with physarum_peer("--role", "listener", "--psk-file", str(key_file)) as helper:
                    await bench_physarum_and_raw(results, cfg, helper, host_psk, psk)
                    await bench_js(results, cfg, helper, host_psk, key_file)
                    await bench_go(results, cfg, helper, host_psk, host_tls, key_file)
                    await bench_rust(results, cfg, helper, host_psk, key_file)
            except Exception as e:  # the physarum helper itself failed to start
                progress(f"physarum helper failed: {_short_error(e)}")
                results.fail(PHY_ROWS + JS_ROWS + GO_ROWS + RS_ROWS, f"physarum helper: {_short_error(e)}")
            await bench_py(results, cfg, host_plain)
            # Memory last, with every other peer gone, so nothing else competes while RSS settles.
            for host in (host_psk, host_tls, host_plain):
                await host.aclose()
            await bench_memory(results, cfg, key_file)
        finally:
            nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer pings, 64 MiB bulk, fewer slow connects")
    ap.add_argument(
        "--json", type=Path, default=RESULTS_JSON, help=f"where to write results (default {RESULTS_JSON})"
    )
    args = ap.parse_args()
    cfg = Config.make(args.quick)
    results = Results()
    run = Run()
    with tempfile.TemporaryDirectory(prefix="physarum-bench-") as tmp:
        # Imports first, before any peer process exists to compete for the CPU.
        bench_imports(results, cfg, Path(tmp))
        trio.run(run_all, results, cfg, Path(tmp))
    run.finish()
    goals = evaluate_goals(results)
    rows = table_rows(results)
    print(run.title("physarum overlay benchmark", "quick" if cfg.quick else "full", "loopback") + "\n")
    print(aligned(HEADER, rows, left=3, free_last=True, group_by=0))
    print("\nGoals:")
    print(goal_lines(goals, target_width=14))
    if results.partners:
        print("\nPartners: " + "; ".join(
            f"{who} peer: " + ", ".join(f"{name} {version}" for name, version in libs.items())
            for who, libs in results.partners.items()
        ))  # fmt: skip
    print("\nMarkdown:\n")
    print(markdown(HEADER, rows, left=3, free_last=True))
    print()
    print(goal_markdown(goals))
    write_results(args.json, run, cfg, results, goals)


if __name__ == "__main__":
    main()
