"""Overlay benchmark: physarum's host beside raw trio TCP, py-libp2p and js-libp2p, on loopback.

    .venv/bin/python bench/overlay.py [--quick] [--json PATH]

Measures, all in one run: import cost, connect time, ping RTT, single-stream throughput and memory per idle
connection; prints an aligned table, a goal summary and a markdown table, and writes the figures as JSON
to bench/results/overlay.json. A benchmark, not a test: it never asserts a timing, and a partner that is
not installed (js: ``npm ci`` in tests/interop/js; py: ``bash tests/interop/py/setup.sh``) gets a note in
its rows instead of a crash.

Every server runs in a process of its own (bench/_physarum_peer.py, tests/interop/js/peer.mjs,
tests/interop/py/peer.py), so the client that measures never shares an event loop with the peer it
measures. Only 127.0.0.1 is contacted. Other work on the machine shows up as noise: read medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
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

ROOT = Path(__file__).resolve().parent.parent
# tests/ is not installed: make tests.interop.partner (the JSON-lines process driver) importable.
sys.path.insert(0, str(ROOT))

from tests.interop.partner import (  # noqa: E402
    Partner,
    PartnerSetupError,
    js_peer_argv,
    open_partner,
)

from physarum.overlay.host import Host  # noqa: E402
from physarum.overlay.ping import PROTOCOL_ID as PING_PROTOCOL  # noqa: E402
from physarum.overlay.ping import ping_once  # noqa: E402
from physarum.psk import generate_psk, protect, write_key_file  # noqa: E402

PY_VENV_PYTHON = ROOT / "tests" / "interop" / "py" / ".venv" / "bin" / "python"
PY_PEER = ROOT / "tests" / "interop" / "py" / "peer.py"
PHYSARUM_PEER = Path(__file__).resolve().parent / "_physarum_peer.py"
RESULTS_JSON = Path(__file__).resolve().parent / "results" / "overlay.json"
LOOPBACK = "127.0.0.1"
PING_SIZE = 32
MIB = 1 << 20
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
    idle_conns: int = 200

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(quick=True, connects=50, connects_slow=20, pings=200, bulk_bytes=64 * MIB)
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
MEM_RAW = "raw trio TCP server, one task per socket"
MEM_PHY = "physarum listener (PSK)"
MEM_DIAL = "physarum dialer side (one Host + connection)"

ROWS: dict[str, list[str]] = {
    "import": [IMP_TRIO, IMP_HOST, IMP_DELTA, IMP_DELTA_ENV, IMP_LIBP2P],
    "connect": [CON_RAW, CON_PHY, CON_PHY_JS, CON_JS_PHY, CON_JS, CON_PY, CON_PY1],
    "ping": [PING_RAW, PING_XS, PING_PHY, PING_PHY_JS, PING_JS_PHY, PING_JS, PING_PY, PING_PHY_PY],
    "throughput": [TP_RAW, TP_XS, TP_PHY],
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
]
PY_ROWS = [("connect", CON_PY), ("connect", CON_PY1), ("ping", PING_PY), ("ping", PING_PHY_PY)]


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Result]] = {
            s: {name: Result(error="not run") for name in names} for s, names in ROWS.items()
        }

    def set(self, section: str, name: str, result: Result) -> None:
        self.rows[section][name] = result

    def get(self, section: str, name: str) -> Result:
        return self.rows[section][name]

    def fail(self, rows: Sequence[tuple[str, str]], why: str) -> None:
        """Mark every row of ``rows`` that has no figure yet with ``why``."""
        for section, name in rows:
            if self.rows[section][name].median is None:
                self.rows[section][name] = Result(error=why)


def nearest_rank(samples: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank: a value that was actually measured."""
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q) - 1))]


def summarize(samples: Sequence[float], scale: float, note: str = "") -> Result:
    scaled = [s * scale for s in samples]
    return Result(statistics.median(scaled), nearest_rank(scaled, 0.99), len(scaled), note)


def progress(text: str) -> None:
    # Progress goes to stderr so stdout holds only the report.
    print(f"[bench] {text}", file=sys.stderr, flush=True)


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
    if not PY_VENV_PYTHON.exists():
        results.set(
            "import",
            IMP_LIBP2P,
            Result(error="skipped: py-libp2p not installed: bash tests/interop/py/setup.sh"),
        )
        return
    try:
        (lib,) = _import_runs(PY_VENV_PYTHON, [["import libp2p"]], n, cached)
        results.set(
            "import",
            IMP_LIBP2P,
            Result(statistics.median(r[0] for r in lib) * 1e3, n=n, note="py-libp2p 0.8.1, bytecode cached"),
        )
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        results.set("import", IMP_LIBP2P, Result(error=_short_error(e)))


# ---------------------------------------------------------------------------------- stream helpers


async def receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise trio.BrokenResourceError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


async def echo_pings(stream: trio.abc.Stream, count: int) -> list[float]:
    """RTTs of ``count`` 32-byte echoes on ``stream``, timed exactly as physarum's ping_once times them."""
    rtts = []
    for _ in range(count):
        payload = os.urandom(PING_SIZE)
        t0 = time.perf_counter()
        await stream.send_all(payload)
        echo = await receive_exactly(stream, PING_SIZE)
        rtts.append(time.perf_counter() - t0)
        if echo != payload:
            raise RuntimeError("echo differs")
    return rtts


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
    async with open_partner([sys.executable, str(PHYSARUM_PEER), *args], cwd=ROOT) as peer:
        yield peer


def py_peer_argv(*extra: str) -> list[str]:
    """The py-libp2p interop peer's command line.

    Raises:
        PartnerSetupError: its virtualenv is missing.
    """
    if not PY_VENV_PYTHON.exists():
        raise PartnerSetupError("py-libp2p is not installed: run bash tests/interop/py/setup.sh")
    return [str(PY_VENV_PYTHON), str(PY_PEER), *extra]


async def start_host(nursery: trio.Nursery, psk: bytes | None) -> Host:
    # No listener: the bench process only dials, and a listener would only add idle tasks.
    host = Host(psk=psk, listen=())
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


async def partner_connects(partner: Partner, addr: str, count: int) -> list[float]:
    """bench_connect run by a js or py partner; seconds per connect (warm-up dials dropped)."""
    warm = _warmup(count)
    reply = await partner.call("bench_connect", addr=addr, count=count + warm, timeout=170)
    return [us / 1e6 for us in reply["times_us"][warm:]]


async def partner_pings(partner: Partner, addr: str, count: int, *, key: str = "peer") -> list[float]:
    """bench_ping run by a js or py partner; seconds per ping. A first short call dials and warms up.

    The js peer takes a multiaddr as ``peer``; the py peer wants it as ``addr``.
    """
    await partner.call("bench_ping", count=_warmup(count), timeout=60, **{key: addr})
    reply = await partner.call("bench_ping", count=count, timeout=170, **{key: addr})
    return [us / 1e6 for us in reply["rtts_us"]]


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
    ms, us = 1e3, 1e6

    async def pings(stream: trio.abc.Stream, note: str) -> Result:
        await echo_pings(stream, _warmup(cfg.pings))
        rtts, cpu, cpu_peer = await with_cpu(helper, partial(echo_pings, stream, cfg.pings))
        return summarize(rtts, us, f"{note}; {_cpu_per(cpu, cpu_peer, cfg.pings, us, 'us/ping')}")

    async def bulk(stream: trio.abc.HalfCloseableStream, note: str) -> Result:
        mbps, cpu, cpu_peer = await with_cpu(helper, partial(send_bulk, stream, cfg.bulk_bytes))
        wall = cfg.bulk_bytes / 1e6 / mbps
        # A side near 100% of one core is the bottleneck.
        busy = f"CPU busy: sender {cpu / wall:.0%}, receiver {cpu_peer / wall:.0%}"
        return Result(mbps, n=1, note=f"{cfg.bulk_bytes // MIB} MiB, {note}; {busy}")

    async def raw_connect() -> Result:
        return summarize(await raw_connects(servers["echo"], cfg.connects * 2), ms, "until connect() returns")

    async def phy_connect() -> Result:
        times, cpu, cpu_peer = await with_cpu(helper, partial(physarum_connects, host, addr, cfg.connects))
        # The CPU figures cover the whole cycle: connect, identify both ways, close (and the warm-ups).
        n = cfg.connects + _warmup(cfg.connects)
        cycle = _cpu_per(cpu, cpu_peer, n, ms, "ms/cycle incl. identify+close")
        return summarize(times, ms, f"until Host.connect returns; {cycle}")

    async def raw_ping() -> Result:
        async with await trio.open_tcp_stream(LOOPBACK, servers["echo"]) as tcp:
            return await pings(tcp, "32 B echo")

    async def xs_ping() -> Result:
        async with await trio.open_tcp_stream(LOOPBACK, servers["psk_echo"]) as tcp:
            return await pings(await protect(tcp, psk), "psk.protect both sides")

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
            rtts, us, f"ping_once, one stream; {_cpu_per(cpu, cpu_peer, cfg.pings, us, 'us/ping')}"
        )

    async def raw_tp() -> Result:
        async with await trio.open_tcp_stream(LOOPBACK, servers["sink"]) as tcp:
            return await bulk(tcp, "one socket")

    async def xs_tp() -> Result:
        async with await trio.open_tcp_stream(LOOPBACK, servers["psk_sink"]) as tcp:
            return await bulk(await protect(tcp, psk), "one socket")

    async def phy_tp() -> Result:
        stream = await host.new_stream(addr, [helper.ready["sink_protocol"]])
        try:
            return await bulk(stream, "one yamux stream")
        finally:
            await stream.aclose()

    await measure(results, "connect", CON_RAW, raw_connect)
    await measure(results, "connect", CON_PHY, phy_connect)
    await measure(results, "ping", PING_RAW, raw_ping)
    await measure(results, "ping", PING_XS, xs_ping)
    await measure(results, "ping", PING_PHY, phy_ping)
    await measure(results, "throughput", TP_RAW, raw_tp)
    await measure(results, "throughput", TP_XS, xs_tp)
    await measure(results, "throughput", TP_PHY, phy_tp)


def _cpu_per(local: float, remote: float, count: int, scale: float, unit: str) -> str:
    return f"CPU {_fmt(local / count * scale)}+{_fmt(remote / count * scale)} {unit} (client+server)"


async def bench_js(results: Results, cfg: Config, helper: Partner, host: Host, key_file: Path) -> None:
    try:
        # js refuses more than 5 inbound connections a second from one host by default; the limit
        # sits on the listening side, so only the js listener needs it lifted.
        # js's connection monitor is off: every 10 s it pings each connection on a new stream, and js
        # allows one outbound ping stream per connection, so a keep-alive that lands while bench_ping
        # has its stream open fails, and the monitor then aborts the whole connection mid-benchmark.
        quiet = ("--psk-file", str(key_file), "--no-connection-monitor")
        listener_argv = js_peer_argv(*quiet, "--inbound-threshold", "1000")
        dialer_argv = js_peer_argv(*quiet, "--no-listen")
    except PartnerSetupError as e:
        results.fail(JS_ROWS, f"skipped: {e}")
        return
    ms, us = 1e3, 1e6
    try:
        async with open_partner(listener_argv, cwd=ROOT) as js, open_partner(dialer_argv, cwd=ROOT) as jsd:
            js_addr, phy_addr = js.addrs[0], helper.addrs[0]

            async def phy_js_connect() -> Result:
                return summarize(await physarum_connects(host, js_addr, cfg.connects_slow), ms)

            async def js_phy_connect() -> Result:
                return summarize(await partner_connects(jsd, phy_addr, cfg.connects_slow), ms, "js dial()")

            async def js_connect() -> Result:
                return summarize(await partner_connects(jsd, js_addr, cfg.connects_slow), ms, "js dial()")

            async def phy_js_ping() -> Result:
                return summarize(await physarum_pings(host, js_addr, cfg.pings), us, "Host.ping, one stream")

            async def js_phy_ping() -> Result:
                return summarize(await partner_pings(jsd, phy_addr, cfg.pings), us, "js: new stream per ping")

            async def js_ping() -> Result:
                return summarize(await partner_pings(jsd, js_addr, cfg.pings), us, "js: new stream per ping")

            await measure(results, "connect", CON_PHY_JS, phy_js_connect)
            await measure(results, "connect", CON_JS_PHY, js_phy_connect)
            await measure(results, "connect", CON_JS, js_connect)
            await measure(results, "ping", PING_PHY_JS, phy_js_ping)
            await measure(results, "ping", PING_JS_PHY, js_phy_ping)
            await measure(results, "ping", PING_JS, js_ping)
    except Exception as e:  # the js peers could not start: say so in their rows
        results.fail(JS_ROWS, _short_error(e))


async def bench_py(results: Results, cfg: Config, host_plain: Host) -> None:
    try:
        listener_argv = py_peer_argv()
        default_argv = py_peer_argv()
        single_argv = py_peer_argv("--max-conns-per-peer", "1")
    except PartnerSetupError as e:
        results.fail(PY_ROWS, f"skipped: {e}")
        return
    ms, us = 1e3, 1e6
    try:
        async with AsyncExitStack() as stack:
            py = await stack.enter_async_context(open_partner(listener_argv, cwd=ROOT))
            py_default = await stack.enter_async_context(open_partner(default_argv, cwd=ROOT))
            py_single = await stack.enter_async_context(open_partner(single_argv, cwd=ROOT))
            addr = py.addrs[0]

            async def py_connect() -> Result:
                note = "250 ms happy-eyeballs wait per dial"
                return summarize(await partner_connects(py_default, addr, cfg.connects_slow), ms, note)

            async def py1_connect() -> Result:
                return summarize(await partner_connects(py_single, addr, cfg.connects), ms)

            async def py_ping() -> Result:
                return summarize(
                    await partner_pings(py_single, addr, cfg.pings, key="addr"), us, "one stream"
                )

            async def phy_py_ping() -> Result:
                return summarize(
                    await physarum_pings(host_plain, addr, cfg.pings), us, "Host.ping, one stream"
                )

            await measure(results, "connect", CON_PY, py_connect)
            await measure(results, "connect", CON_PY1, py1_connect)
            await measure(results, "ping", PING_PY, py_ping)
            await measure(results, "ping", PING_PHY_PY, phy_py_ping)
    except Exception as e:  # the py peers could not start: say so in their rows
        results.fail(PY_ROWS, _short_error(e))


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def settled_rss(peer: Partner, ready: Callable[[dict[str, Any]], bool]) -> int:
    """The peer's RSS once ``ready(stats)`` holds and it has stayed idle a moment."""
    with trio.fail_after(60):
        while not ready(await peer.call("stats")):
            await trio.sleep(0.05)
    # Idle: pending identify pushes, window updates and freed buffers have settled.
    await trio.sleep(1.0)
    await peer.call("stats")  # runs gc.collect() in the peer
    return vm_rss_kib(int(peer.ready["pid"]))


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


@dataclass
class Goal:
    name: str
    target: str
    value: str
    meets: bool | None  # None: not measurable in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.meets is None else ("meets" if self.meets else "misses")


def evaluate_goals(results: Results) -> list[Goal]:
    def med(section: str, name: str) -> float | None:
        return results.get(section, name).median

    goals: list[Goal] = []
    phy, xs, py = med("ping", PING_PHY), med("ping", PING_XS), med("ping", PING_PY)
    if phy is not None and xs is not None:
        goals.append(
            Goal(
                "ping RTT median vs raw TCP + XSalsa20",
                f"<= {GOAL_PING_VS_XSALSA:g}x",
                f"{phy:.0f} us vs {xs:.0f} us = {phy / xs:.2f}x",
                phy <= GOAL_PING_VS_XSALSA * xs,
            )
        )
    else:
        goals.append(
            Goal("ping RTT median vs raw TCP + XSalsa20", f"<= {GOAL_PING_VS_XSALSA:g}x", "missing", None)
        )
    if phy is not None and py is not None:
        goals.append(
            Goal(
                "ping RTT median vs py-libp2p",
                f">= {GOAL_PING_VS_PY:g}x lower",
                f"{py:.0f} us / {phy:.0f} us = {py / phy:.1f}x lower",
                py >= GOAL_PING_VS_PY * phy,
            )
        )
    else:
        goals.append(Goal("ping RTT median vs py-libp2p", f">= {GOAL_PING_VS_PY:g}x lower", "missing", None))
    con = med("connect", CON_PHY)
    goals.append(
        Goal(
            "connect median (TCP+pnet+Noise+yamux)",
            f"< {GOAL_CONNECT_MS:g} ms",
            "missing" if con is None else f"{con:.2f} ms",
            None if con is None else con < GOAL_CONNECT_MS,
        )
    )
    tp = med("throughput", TP_PHY)
    goals.append(
        Goal(
            "single-stream throughput with PSK",
            f">= {GOAL_THROUGHPUT_MBPS:g} MB/s",
            "missing" if tp is None else f"{tp:.0f} MB/s",
            None if tp is None else tp >= GOAL_THROUGHPUT_MBPS,
        )
    )
    mem = med("memory", MEM_PHY)
    goals.append(
        Goal(
            "memory per idle connection (listener)",
            f"<= {GOAL_KIB_PER_CONN:g} KiB",
            "missing" if mem is None else f"{mem:.1f} KiB",
            None if mem is None else mem <= GOAL_KIB_PER_CONN,
        )
    )
    imp, imp_env = med("import", IMP_DELTA), med("import", IMP_DELTA_ENV)
    value = "missing" if imp is None else f"+{imp:.0f} ms"
    if imp is not None and imp_env is not None:
        value += f" (+{imp_env:.0f} ms as installed here)"
    goals.append(
        Goal(
            "import physarum.overlay.host beyond trio",
            f"<= {GOAL_IMPORT_DELTA_MS:g} ms",
            value,
            None if imp is None else imp <= GOAL_IMPORT_DELTA_MS,
        )
    )
    return goals


# ------------------------------------------------------------------------------------------ report


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table_rows(results: Results) -> list[list[str]]:
    rows = []
    for section, unit in SECTIONS.items():
        for name, r in results.rows[section].items():
            note = r.note if r.error is None else r.error
            rows.append([section, name, unit, _fmt(r.median), _fmt(r.p99), str(r.n or "-"), note])
    return rows


HEADER = ["section", "case", "unit", "median", "p99", "n", "note"]


def aligned_table(rows: list[list[str]]) -> str:
    widths = [max(len(HEADER[i]), *(len(r[i]) for r in rows)) for i in range(len(HEADER) - 1)]
    numeric = {3, 4, 5}

    def line(cells: list[str]) -> str:
        parts = [c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(cells[:-1])]
        return "  ".join([*parts, cells[-1]]).rstrip()

    out = [line(HEADER), line(["-" * w for w in widths] + ["-" * 4])]
    previous = ""
    for r in rows:
        if r[0] != previous and previous:
            out.append("")
        previous = r[0]
        out.append(line(r))
    return "\n".join(out)


def markdown_table(rows: list[list[str]]) -> str:
    out = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join(["---", "---", "---", "--:", "--:", "--:", "---"]) + "|",
    ]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def goal_lines(goals: list[Goal]) -> str:
    width = max(len(g.name) for g in goals)
    return "\n".join(f"{g.verdict:<6}  {g.name:<{width}}  target {g.target:<14}  {g.value}" for g in goals)


def goal_markdown(goals: list[Goal]) -> str:
    out = ["| goal | target | measured | verdict |", "|---|---|---|---|"]
    out += [f"| {g.name} | {g.target} | {g.value} | {g.verdict} |" for g in goals]
    return "\n".join(out)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "trio": trio.__version__}
    node = shutil.which("node")
    if node:
        try:
            out["node"] = subprocess.run(
                [node, "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def write_json(
    path: Path, cfg: Config, results: Results, goals: list[Goal], seconds: float, load: tuple[float, float]
) -> None:
    data = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": cfg.quick,
        "cpus": os.cpu_count(),
        "load_avg_1min": {"start": load[0], "end": load[1]},
        "versions": _versions(),
        "seconds": round(seconds, 1),
        "units": SECTIONS,
        "results": {s: {n: r.as_json() for n, r in rows.items()} for s, rows in results.rows.items()},
        "goals": [
            {"goal": g.name, "target": g.target, "measured": g.value, "verdict": g.verdict} for g in goals
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


# -------------------------------------------------------------------------------------------- main


async def run_all(results: Results, cfg: Config, tmp: Path) -> None:
    psk = generate_psk()
    key_file = tmp / "swarm.key"
    write_key_file(key_file, psk)
    async with trio.open_nursery() as nursery:
        try:
            host_psk = await start_host(nursery, psk)
            host_plain = await start_host(nursery, None)
            try:
                async with physarum_peer("--role", "listener", "--psk-file", str(key_file)) as helper:
                    await bench_physarum_and_raw(results, cfg, helper, host_psk, psk)
                    await bench_js(results, cfg, helper, host_psk, key_file)
            except Exception as e:  # the physarum helper itself failed to start
                progress(f"physarum helper failed: {_short_error(e)}")
                results.fail(PHY_ROWS + JS_ROWS, f"physarum helper: {_short_error(e)}")
            await bench_py(results, cfg, host_plain)
            # Memory last, with every other peer gone, so nothing else competes while RSS settles.
            await host_psk.aclose()
            await host_plain.aclose()
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
    start = time.perf_counter()
    # Other work on the machine inflates every figure; the load average says how much there was.
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="physarum-bench-") as tmp:
        # Imports first, before any peer process exists to compete for the CPU.
        bench_imports(results, cfg, Path(tmp))
        trio.run(run_all, results, cfg, Path(tmp))
    seconds = time.perf_counter() - start
    load = (load_start, os.getloadavg()[0])
    goals = evaluate_goals(results)
    rows = table_rows(results)
    mode = "quick" if cfg.quick else "full"
    print(
        f"physarum overlay benchmark ({mode} run, {seconds:.0f} s, loopback, {os.cpu_count()} CPUs, "
        f"1-min load average {load[0]:.1f} at start, {load[1]:.1f} at end)\n"
    )
    print(aligned_table(rows))
    print("\nGoals:")
    print(goal_lines(goals))
    print("\nMarkdown:\n")
    print(markdown_table(rows))
    print()
    print(goal_markdown(goals))
    write_json(args.json, cfg, results, goals, seconds, load)
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
