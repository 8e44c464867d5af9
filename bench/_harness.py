"""What the benchmarks in bench/ share: statistics, report tables and goal verdicts, a run's bookkeeping,
and both ends of the JSON-lines protocol between a benchmark and the processes it drives.

The protocol is the one tests/interop's partners speak (js/peer.mjs, py/peer.py, the go and rust peers),
so a benchmark drives physarum helpers and those peers alike: the driven process prints one JSON object
per line on stdout (``{"event": "ready", ...}`` first, or ``{"event": "fatal", "error": ...}``), reads
commands ``{"id": N, "cmd": NAME, ...}`` on stdin, answers each with ``{"id": N, "ok": true, ...}`` or
``{"id": N, "ok": false, "error": ...}``, and exits after answering ``stop`` or when stdin closes.

Scripts import this module as ``_harness`` (a script's own directory comes first on sys.path); tests that
import ``bench._swarm_run`` get it as ``bench._harness``. It needs only the standard library and trio, as
``_pylibp2p_dht.py`` runs under py-libp2p's interpreter, where physarum is not installed.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import trio

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LOOPBACK = "127.0.0.1"
PY_VENV_PYTHON = ROOT / "tests" / "interop" / "py" / ".venv" / "bin" / "python"
"""py-libp2p's own interpreter (it pins its own versions): ``bash tests/interop/py/setup.sh`` makes it."""
INTEROP = ROOT / "tests" / "interop"
JS_DIR = INTEROP / "js"

# ------------------------------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 < q <= 1) of non-empty ``values`` by nearest rank: a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(len(ordered) * q) - 1))]


_STATS: dict[str, Callable[[Sequence[float]], float]] = {
    "median": statistics.median,
    "mean": statistics.fmean,
    "min": min,
    "max": max,
    "n": len,
    "p95": lambda values: percentile(values, 0.95),
    "p99": lambda values: percentile(values, 0.99),
}


def summary(values: Sequence[float], stats: Sequence[str] = ("median", "p99", "max")) -> dict[str, float]:
    """The named ``stats`` of ``values`` (median, mean, min, max, n, p95, p99); {} when there are none."""
    if not values:
        return {}
    return {name: _STATS[name](values) for name in stats}


# ---------------------------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int | None = None, *, pct: bool = False, grouping: bool = False) -> str:
    """A figure for a table: "-" for none; ``digits`` decimals, else three significant figures or so;
    ``pct`` shows a fraction as a percentage, ``grouping`` separates thousands."""
    if value is None or math.isnan(value):
        return "-"
    if pct:
        value *= 100
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    text = f"{value:,.{digits}f}" if grouping else f"{value:.{digits}f}"
    return text + "%" if pct else text


def aligned(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    left: int = 1,
    free_last: bool = False,
    group_by: int | None = None,
) -> str:
    """A text table: the first ``left`` columns flush left, the others flush right. With ``free_last`` the
    last column (a note) is left as it is; with ``group_by``, a blank line where that column changes."""
    fixed = len(header) - 1 if free_last else len(header)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(fixed)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells[:fixed], widths, strict=True))
        ]
        return "  ".join([*padded, *cells[fixed:]]).rstrip()

    out = [line(header), line(["-" * w for w in widths] + ["-" * 4] * (len(header) - fixed))]
    for i, r in enumerate(rows):
        if group_by is not None and i and r[group_by] != rows[i - 1][group_by]:
            out.append("")
        out.append(line(r))
    return "\n".join(out)


def markdown(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1, free_last: bool = False
) -> str:
    """The same table in markdown (``free_last``: the last column is flush left too)."""
    last = len(header) - 1
    aligns = ["---" if i < left or (free_last and i == last) else "--:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


@dataclass(frozen=True)
class Goal:
    """A goal (from the project brief or an issue) and what this run measured against it."""

    name: str
    target: str
    value: str
    meets: bool | None  # None: not measurable in this run

    @property
    def verdict(self) -> str:
        return "n/a" if self.meets is None else ("meets" if self.meets else "misses")

    def as_json(self) -> dict[str, str]:
        return {"goal": self.name, "target": self.target, "measured": self.value, "verdict": self.verdict}


def goal_lines(goals: Sequence[Goal], target_width: int) -> str:
    width = max(len(g.name) for g in goals)
    return "\n".join(
        f"{g.verdict:<6}  {g.name:<{width}}  target {g.target:<{target_width}}  {g.value}" for g in goals
    )


def goal_markdown(goals: Sequence[Goal]) -> str:
    out = ["| goal | target | measured | verdict |", "|---|---|---|---|"]
    out += [f"| {g.name} | {g.target} | {g.value} | {g.verdict} |" for g in goals]
    return "\n".join(out)


def print_table_report(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], goals: Sequence[Goal], *, target_width: int
) -> None:
    """The report of a benchmark with one table (its last column free text): ``title``, the table,
    the goals, then both again in markdown for the README."""
    print(title)
    print(aligned(header, rows, free_last=True))
    print("\nGoals:")
    print(goal_lines(goals, target_width=target_width))
    print("\nMarkdown:\n")
    print(markdown(header, rows, free_last=True))
    print()
    print(goal_markdown(goals))


# -------------------------------------------------------------------------------------------- the run


def progress(text: str, tag: str = "bench") -> None:
    # Progress goes to stderr so stdout holds only the report.
    print(f"[{tag}] {text}", file=sys.stderr, flush=True)


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def versions(*packages: str, node: bool = False) -> dict[str, str]:
    """Python's version, each of ``packages``' and, with ``node``, Node.js's when it is on PATH."""
    out = {"python": platform.python_version()}
    out.update({p: importlib.metadata.version(p) for p in packages})
    where = shutil.which("node") if node else None
    if where:
        try:
            done = subprocess.run([where, "--version"], capture_output=True, text=True, timeout=10)
            out["node"] = done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return out


class Run:
    """A benchmark run's wall clock and the machine's 1-min load average at its start and end: other
    work on the machine inflates every figure, and the load says how much there was."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.load = (os.getloadavg()[0], math.nan)
        self.seconds = math.nan

    def finish(self) -> None:
        self.seconds = time.perf_counter() - self.started
        self.load = (self.load[0], os.getloadavg()[0])

    def title(self, what: str, mode: str | None = None, where: str | None = None) -> str:
        """``what (MODE run, N s, WHERE, N CPUs, 1-min load average A at start, B at end)`` (after finish)."""
        parts = [f"{mode} run"] if mode else []
        parts.append(f"{self.seconds:.0f} s")
        parts += [where] if where else []
        parts.append(f"{os.cpu_count()} CPUs")
        parts.append(f"1-min load average {self.load[0]:.1f} at start, {self.load[1]:.1f} at end")
        return f"{what} ({', '.join(parts)})"

    def record(self, quick: bool, **fields: Any) -> dict[str, Any]:
        """The head of the results JSON (when, which run, where, how long), then ``fields``."""
        return {
            "date": utc_now(),
            "quick": quick,
            "cpus": os.cpu_count(),
            "load_avg_1min": {"start": self.load[0], "end": self.load[1]},
            "seconds": round(self.seconds, 1),
            **fields,
        }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"\nJSON: {path}")


# ----------------------------------------------------------------------------------- driving processes


def flags(**options: Any) -> list[str]:
    """Command-line flags: ``--name value`` for each option (``_`` becomes ``-``), a bare ``--name`` for
    True; False and None are left out."""
    out: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        out.append("--" + name.replace("_", "-"))
        if value is not True:
            out.append(str(value))
    return out


def bench_argv(script: str, *args: str, python: Path | str | None = None, **options: Any) -> list[str]:
    """The command line of bench/``script`` run by ``python`` (default: this interpreter)."""
    return [str(python or sys.executable), str(BENCH / script), *args, *flags(**options)]


class PartnerError(Exception):
    """A driven process failed a command, did not answer in time, or exited."""


class PartnerSetupError(PartnerError):
    """The program cannot run here (not installed)."""


def py_venv_python() -> Path:
    """py-libp2p's interpreter.

    Raises:
        PartnerSetupError: its virtualenv is missing.
    """
    if not PY_VENV_PYTHON.exists():
        raise PartnerSetupError("py-libp2p is not installed: run bash tests/interop/py/setup.sh")
    return PY_VENV_PYTHON


def py_peer_argv(*extra: str) -> list[str]:
    """The py-libp2p interop peer's command line.

    Raises:
        PartnerSetupError: py-libp2p is not installed.
    """
    return [str(py_venv_python()), str(ROOT / "tests" / "interop" / "py" / "peer.py"), *extra]


def js_peer_argv(*extra: str) -> list[str]:
    """The js-libp2p interop peer's command line.

    Raises:
        PartnerSetupError: node is not on PATH, or js-libp2p is not installed.
    """
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "libp2p").is_dir():
        raise PartnerSetupError("js-libp2p needs node on PATH and npm ci in tests/interop/js")
    return [node, str(JS_DIR / "peer.mjs"), *extra]


@functools.cache
def _interop_partner() -> ModuleType:
    # tests/ is not a package anyone installs: its partner driver is loaded from its file. It knows how
    # each compiled partner is built, and refuses a binary built from other sources than the tree's.
    spec = importlib.util.spec_from_file_location("_interop_partner", INTEROP / "partner.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compiled_peer_argv(function: str, extra: Sequence[str]) -> list[str]:
    module = _interop_partner()
    try:
        argv: list[str] = getattr(module, function)(*extra)
    except module.PartnerSetupError as e:
        raise PartnerSetupError(str(e).splitlines()[0]) from e
    return argv


def go_peer_argv(*extra: str) -> list[str]:
    """The go-libp2p interop peer's command line (tests/interop/go/bin/gopeer).

    Raises:
        PartnerSetupError: it is not built, or was built from other sources (``bash tests/interop/go/setup.sh``).
    """
    return _compiled_peer_argv("go_peer_argv", extra)


def rust_peer_argv(*extra: str) -> list[str]:
    """The rust-libp2p interop peer's command line (tests/interop/rust/target/release/...).

    Raises:
        PartnerSetupError: it is not built (``bash tests/interop/rust/setup.sh``).
    """
    return _compiled_peer_argv("rust_peer_argv", extra)


class Partner:
    """A process driven over JSON lines; made by :func:`open_partner`, used inside its block.

    Attributes:
        ready: its ``ready`` event (the js and py peers put ``peer_id`` and ``addrs`` in it, bench
            helpers their ``pid`` and ``servers``).
        addrs: ``ready["addrs"]``.
    """

    def __init__(self, process: trio.Process, stderr: Path) -> None:
        self.process = process
        self.stderr = stderr
        self.ready: dict[str, Any] = {}
        self.addrs: list[str] = []
        self._buffer = b""
        self._ids = 0
        self._lock = trio.Lock()

    def stderr_tail(self, lines: int = 3) -> str:
        try:
            text = self.stderr.read_text(errors="replace").strip()
        except OSError:
            return "no stderr"
        return " | ".join(text.splitlines()[-lines:])[-400:] or "nothing on stderr"

    async def _receive(self) -> dict[str, Any]:
        """The next JSON object it prints; other lines are skipped.

        Raises:
            PartnerError: it closed its stdout (exited).
        """
        assert self.process.stdout is not None
        while True:
            line, newline, rest = self._buffer.partition(b"\n")
            if newline:
                self._buffer = rest
                if line.strip().startswith(b"{"):
                    obj: dict[str, Any] = json.loads(line)
                    return obj
                continue
            data = await self.process.stdout.receive_some(1 << 16)
            if not data:
                raise PartnerError(f"the process exited ({self.stderr_tail()})")
            self._buffer += data

    async def call(self, cmd: str, *, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Send command ``cmd`` with ``args`` and return its ``ok`` answer; one call at a time.

        Raises:
            PartnerError: it answered ``ok: false``, did not answer within ``timeout`` seconds, or exited.
        """
        async with self._lock:
            self._ids += 1
            request = {**args, "id": self._ids, "cmd": cmd}
            assert self.process.stdin is not None
            with trio.move_on_after(timeout):
                try:
                    await self.process.stdin.send_all(json.dumps(request).encode() + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    raise PartnerError(f"{cmd!r}: the process exited ({self.stderr_tail()})") from e
                # Events, and answers to earlier calls that timed out, are not this call's answer.
                while (reply := await self._receive()).get("id") != request["id"]:
                    pass
                if reply.get("ok") is not True:
                    raise PartnerError(f"{cmd!r} failed: {reply.get('error')}")
                return reply
        raise PartnerError(f"no answer to {cmd!r} within {timeout:g} s ({self.stderr_tail()})")

    async def _stop(self, timeout: float) -> None:
        if self.process.returncode is None:
            with trio.move_on_after(timeout):
                try:
                    await self.call("stop", timeout=timeout)
                except PartnerError:
                    pass  # it is killed below
                await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                await pipe.aclose()


@asynccontextmanager
async def open_partner(
    argv: Sequence[str], *, stderr: Path | None = None, ready_timeout: float = 30.0, stop_timeout: float = 5.0
) -> AsyncIterator[Partner]:
    """Start ``argv`` in the repository root, wait for its ``ready`` event, and stop it when the block
    ends (``stop``, then killed after ``stop_timeout`` seconds).

    Args:
        stderr: where its stderr goes (default: a temporary file, removed afterwards).

    Raises:
        PartnerError: it exited, said ``fatal`` or was not ready within ``ready_timeout`` seconds.
        OSError: it cannot be started.
    """
    with tempfile.TemporaryDirectory(prefix="physarum-bench-") as tmp:
        log = stderr or Path(tmp) / "stderr"
        with open(log, "ab") as log_file:
            process = await trio.lowlevel.open_process(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, cwd=ROOT
            )
        partner = Partner(process, log)
        try:
            with trio.move_on_after(ready_timeout):
                while (event := await partner._receive()).get("event") not in ("ready", "fatal"):
                    pass
                if event["event"] == "fatal":
                    raise PartnerError(f"{Path(argv[1]).name} could not start: {event.get('error')}")
                partner.ready = event
                # A peer that listens on nothing may say so with null (the go peer does).
                partner.addrs = [str(a) for a in event.get("addrs") or []]
            if not partner.ready:
                raise PartnerError(f"{Path(argv[1]).name} not ready within {ready_timeout:g} s")
            yield partner
        finally:
            with trio.CancelScope(shield=True):
                await partner._stop(stop_timeout)


# -------------------------------------------------------------------------------------- being driven


def emit(obj: dict[str, Any]) -> None:
    """One protocol line on stdout; synchronous, so lines from concurrent tasks never interleave."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


Command = Callable[[dict[str, Any], trio.Nursery], Awaitable[dict[str, Any]]]


async def serve_commands(target: object, nursery: trio.Nursery, *, limit: float = 120.0) -> None:
    """Answer the commands on stdin until ``stop`` or its end: ``NAME`` runs ``target.cmd_NAME(cmd,
    nursery)`` in a task of its own under ``limit`` seconds (or the command's ``timeout``); what it
    returns is the answer, what it raises an ``ok: false`` answer, never the end of the process."""

    async def run(cmd: dict[str, Any], handler: Command | None) -> None:
        try:
            if handler is None:
                raise ValueError(f"unknown command {cmd.get('cmd')!r}")
            with trio.fail_after(float(cmd.get("timeout", limit))):
                result = await handler(cmd, nursery)
        except Exception as e:  # reported to the driver, which decides what it means
            emit({"id": cmd.get("id"), "ok": False, "error": f"{type(e).__name__}: {e}"})
        else:
            emit({"id": cmd.get("id"), "ok": True, **result})

    buffer = b""
    async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
        while data := await stdin.receive_some(1 << 16):
            *lines, buffer = (buffer + data).split(b"\n")
            for line in filter(bytes.strip, lines):
                cmd = json.loads(line)
                if cmd.get("cmd") == "stop":
                    emit({"id": cmd.get("id"), "ok": True})
                    return
                nursery.start_soon(run, cmd, getattr(target, f"cmd_{cmd.get('cmd')}", None))


def run_driven(main: Callable[[], Awaitable[object]]) -> None:
    """``trio.run(main)``; an error is also told to the driver (a ``fatal`` event) before it propagates."""
    try:
        trio.run(main)
    except Exception as e:
        emit({"event": "fatal", "error": f"{type(e).__name__}: {e}"})
        raise


# ------------------------------------------------------------------------------------------- measuring


def status_kib(pid: int | str, field: str = "VmRSS") -> int:
    """A memory figure (VmRSS, VmHWM, ...) of process ``pid`` ("self": this one) in KiB, from /proc.

    Raises:
        RuntimeError: /proc/PID/status has no such field.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


async def receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise trio.BrokenResourceError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


async def echo_pings(stream: trio.abc.Stream, count: int, size: int = 32) -> list[float]:
    """RTTs in seconds of ``count`` echoes of ``size`` random bytes, timed as physarum's ping_once times
    its pings: the raw-TCP floors of bench/overlay.py and bench/monitor.py.

    Raises:
        RuntimeError: an echo differs from what was sent.
    """
    rtts = []
    for _ in range(count):
        payload = os.urandom(size)
        t0 = time.perf_counter()
        await stream.send_all(payload)
        echo = await receive_exactly(stream, size)
        rtts.append(time.perf_counter() - t0)
        if echo != payload:
            raise RuntimeError("echo differs")
    return rtts


@dataclass(frozen=True)
class Found:
    """One network lookup of a peer's id: the target among the result with an address, what it cost."""

    target: bool
    messages: float
    hops: float | None = None


async def time_lookups(
    nodes: int,
    lookups: int,
    rng: random.Random,
    lookup: Callable[[int, int], Awaitable[Found]],
    find_peer: Callable[[int, int], Awaitable[bool]],
) -> dict[str, Any]:
    """``lookups`` times, for a random pair of the ``nodes`` (seeker, target): ``lookup`` and then
    ``find_peer`` (True: found with an address), timed; a failure is counted and reported, not raised."""
    lookup_ms: list[float] = []
    find_ms: list[float] = []
    msgs: list[float] = []
    hops: list[float] = []
    found = find_ok = 0
    failures: list[str] = []
    for _ in range(lookups):
        seeker, target = rng.sample(range(nodes), 2)
        t0 = time.perf_counter()
        try:
            result = await lookup(seeker, target)
        except Exception as e:  # a benchmark reports, it does not crash
            failures.append(f"lookup: {type(e).__name__}: {e}")
            continue
        lookup_ms.append((time.perf_counter() - t0) * 1000)
        msgs.append(result.messages)
        hops += [] if result.hops is None else [result.hops]
        found += result.target
        t0 = time.perf_counter()
        try:
            find_ok += await find_peer(seeker, target)
            find_ms.append((time.perf_counter() - t0) * 1000)
        except Exception as e:
            failures.append(f"find_peer: {type(e).__name__}: {e}")
    out = {
        "lookups": lookups,
        "lookup_ms": summary(lookup_ms),
        "lookup_success": found / lookups if lookups else 0.0,
        "find_peer_ms": summary(find_ms),
        "find_peer_success": find_ok / lookups if lookups else 0.0,
        "messages": summary(msgs),
        "failures": failures[:5],
        "failure_count": len(failures),
    }
    return out | ({"hops": summary(hops)} if hops else {})


def lookup_network_parser(doc: str | None) -> argparse.ArgumentParser:
    """The command line of a small-network helper of bench/dht.py: --nodes, --lookups, --seed."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--lookups", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    return ap


def failed(stage: str, e: BaseException, **fields: Any) -> dict[str, Any]:
    """A helper's JSON answer when ``stage`` raised ``e``."""
    return {"ok": False, **fields, "stage": stage, "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(limit=8)}  # fmt: skip
