"""A real ``ping-monitor`` process under attack, and what the tests measure about it.

One scenario (:func:`run_scenario`):

1. start ``ping-monitor`` on 127.0.0.1 (port 0, a fresh PSK file, ``-ephemeral``, metrics on port 0);
2. attach two honest peers (physarum hosts running the DHT in this process, joined with the monitor as
   their bootstrap), and wait until the monitor has pinged each of them;
3. take a baseline: the monitor's RSS (``VmRSS``) and open fds, read from ``/proc/<pid>``;
4. run the attacker in a process of its own (``python -m tests.adversarial._attacks NAME``), so its
   CPU never slows this process, which only measures; while it runs, and until the node has recovered
   (at most :data:`RECOVERY_WINDOW` after it left), keep measuring:

   * the monitor's RSS every :data:`RSS_PERIOD` s (peak, and when it is back near the baseline);
   * every ping the monitor sends the honest peers, as they answer it (their ping handler records the
     time), so a gap between two pings is seen exactly, without loading the node with scrapes;
   * real scrapes of ``/metrics`` every :data:`SCRAPE_PERIOD` s (the whole exposition, as Prometheus
     reads it), each of which must answer 200 within :data:`SCRAPE_TIMEOUT` s;
   * a new honest peer (a fresh identity) dialing the monitor every :data:`PROBE_PERIOD` s: it must be
     connected within :data:`CONNECT_MAX` s (and answer a ping), and a refusal must never be reported
     as a PSK mismatch;
   * the monitor's stderr (one line per log record at the default level).

:meth:`Outcome.violations` lists, in words, every one of issue 11's bounds that did not hold.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from physarum.dht.service import KadDHT
from physarum.errors import DialError
from physarum.overlay import addr as addrs_
from physarum.overlay import ping
from physarum.overlay.host import Host, open_host
from physarum.overlay.identity import KeyPair, PeerId
from physarum.overlay.yamux import YamuxStream
from physarum.psk import PskMismatchError, load_key_file

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(sys.executable).parent
MiB = 1024 * 1024

# -- the bounds (issue 11, "Behaviour that must hold") ------------------------------------------------

#: RSS may grow by less than this under any attack.
RSS_GROWTH_MAX = 64 * MiB
#: ...and must be back near the baseline this many seconds after the attacker left.
RECOVERY_WINDOW = 10.0
#: "Near the baseline": what a Python process may keep after a burst of honest work (allocator
#: arenas, caches); what the issue calls retained memory is several times this.
RSS_RETAINED_MAX = 16 * MiB
#: Open fds the node may hold past its baseline once the attacker left (the honest probes' sockets
#: closing, the metrics server's last clients).
FDS_RETAINED_MAX = 16
#: The monitor's ping interval (its default, PhysarumSM's 1 Hz).
PING_INTERVAL = 1.0
#: Longest time between two pings answered by an honest peer: one missed ping (two intervals), plus
#: scheduling noise on a loaded machine.
PING_GAP_MAX = 2 * PING_INTERVAL + 0.5
#: A new honest peer is connected within this many seconds.
CONNECT_MAX = 1.0
#: A real scrape answers 200 within this many seconds.
SCRAPE_TIMEOUT = 2.0
#: Lines the monitor may log (default level) from the attack's start to the end of the recovery.
LOG_LINES_MAX = 100

# -- how often things are measured ----------------------------------------------------------------------

#: Once a second: more often than Prometheus (15 s by default), so a starved endpoint shows, and not
#: so often that rendering a large exposition becomes the load on the node.
SCRAPE_PERIOD = 1.0
RSS_PERIOD = 0.1
PROBE_PERIOD = 1.0
#: After the attacker left, measuring goes on at least this long (probes, pings), even when the RSS
#: is back at once.
MIN_AFTER = 2.0
#: Past this growth the verdict is long in: the attacker is stopped, so a leaking node does not take
#: the machine's memory, and the recovery (does the memory come back?) is still measured.
EARLY_STOP_GROWTH = 2 * RSS_GROWTH_MAX


# -- processes ---------------------------------------------------------------------------------------------


class Proc:
    """A child process whose stdout and stderr are collected as they come (bytes)."""

    def __init__(self, process: trio.Process, argv: list[str]) -> None:
        self.process = process
        self.argv = argv
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stdout_lines: list[tuple[float, bytes]] = []  # (arrival time, line)
        self._partial = b""
        self._changed = trio.Event()
        self._eof = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _pump(self, stream: trio.abc.ReceiveStream, name: str) -> None:
        async with stream:
            while True:
                try:
                    chunk = await stream.receive_some(1 << 16)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    break
                getattr(self, name).extend(chunk)
                if name == "stdout":
                    self._partial += chunk
                    *lines, self._partial = self._partial.split(b"\n")
                    self.stdout_lines += [(trio.current_time(), line) for line in lines]
                self._changed.set()
                self._changed = trio.Event()
        self._eof += 1
        self._changed.set()

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    async def wait_for(self, predicate: Callable[[Proc], bool], *, timeout: float, what: str) -> None:
        try:
            with trio.fail_after(timeout):
                while not predicate(self):
                    if self._eof == 2:
                        raise AssertionError(
                            f"{self.argv[0]} exited before {what}: {self.stderr.decode()[-2000:]}"
                        )
                    await self._changed.wait()
        except trio.TooSlowError:
            raise AssertionError(
                f"{what} not seen within {timeout} s\nstderr: {self.stderr.decode(errors='replace')[-2000:]}"
            ) from None

    def stderr_lines(self) -> int:
        return self.stderr.count(b"\n")


@asynccontextmanager
async def child(argv: list[str], *, cwd: Path | None = None) -> AsyncIterator[Proc]:
    """Run ``argv``; killed (if still running) when the block ends."""
    env = {k: v for k, v in os.environ.items() if k not in ("P2P_PSK", "P2P_BOOTSTRAPS")}
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    proc = Proc(process, argv)
    async with trio.open_nursery() as nursery:
        assert process.stdout is not None and process.stderr is not None
        nursery.start_soon(proc._pump, process.stdout, "stdout")
        nursery.start_soon(proc._pump, process.stderr, "stderr")
        try:
            yield proc
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()


def generate_key_file(path: Path) -> Path:
    """A swarm key file made by ``physarum key generate -o``."""
    physarum = SCRIPTS / "physarum"
    if not physarum.exists():
        pytest.fail(f"console script {physarum} is missing: run `.venv/bin/python -m pip install -e .`")
    result = subprocess.run(
        [str(physarum), "key", "generate", "-o", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return path


# -- the monitor -------------------------------------------------------------------------------------------


@dataclass
class Monitor:
    proc: Proc
    addr: str
    peer_id: PeerId
    port: int
    metrics_port: int
    psk: bytes
    key_file: Path

    def rss(self) -> int:
        """Resident set size in bytes (``VmRSS``)."""
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")  # pragma: no cover

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def cpu_seconds(self) -> float:
        """User and system CPU time the node used so far."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def monitor_process(key_file: Path) -> AsyncIterator[Monitor]:
    """``ping-monitor`` on 127.0.0.1, port 0, in the private network of ``key_file``."""
    script = SCRIPTS / "ping-monitor"
    argv = [
        str(script),
        "-ephemeral",
        "-p2p-listen-addr",
        "127.0.0.1:0",
        "-prom-listen-addr",
        "127.0.0.1:0",
        "-psk-file",
        str(key_file),
        "-hostname",
        "adversarial",
        "-ping-interval",
        str(PING_INTERVAL),
        "-peer-histograms",  # each honest peer's ping count (physarum_ping_rtt_seconds_count{peer})
    ]
    async with child(argv) as proc:
        await proc.wait_for(lambda p: b"\n" in p.stdout, timeout=20, what="the monitor's address")
        addr = proc.stdout.decode().splitlines()[0]
        await proc.wait_for(lambda p: b"metrics at http://" in p.stderr, timeout=20, what="the metrics URL")
        match = re.search(rb"metrics at http://127\.0\.0\.1:(\d+)/metrics", proc.stderr)
        assert match is not None, proc.stderr
        ep = addrs_.tcp_endpoint(addrs_.parse(addr))
        assert ep.peer_id is not None
        yield Monitor(
            proc, addr, ep.peer_id, ep.port, int(match.group(1)), load_key_file(str(key_file)), key_file
        )


@dataclass
class Honest:
    """An honest peer in this process: a host running the DHT, joined through the monitor. Its ping
    handler notes when each of the monitor's pings arrived (``pings``) before echoing it."""

    host: Host
    dht: KadDHT
    monitor: PeerId
    pings: list[float] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.host.peer_id)

    async def handle_ping(self, stream: YamuxStream) -> None:
        while True:
            data = b""
            while len(data) < ping.PING_SIZE:
                chunk = await stream.receive_some(ping.PING_SIZE - len(data))
                if not chunk:
                    return
                data += chunk
            if stream.peer_id == self.monitor:
                self.pings.append(trio.current_time())
            await stream.send_all(data)


@asynccontextmanager
async def honest_peers(monitor: Monitor, n: int = 2) -> AsyncIterator[list[Honest]]:
    async with trio.open_nursery() as nursery:
        peers = []
        for _ in range(n):
            host = Host(KeyPair.generate(), psk=monitor.psk, listen=["/ip4/127.0.0.1/tcp/0"])
            await nursery.start(host.run)
            dht = KadDHT.for_host(host, bootstrap=[monitor.addr])
            peer = Honest(host, dht, monitor.peer_id)
            host.set_handler(ping.PROTOCOL_ID, peer.handle_ping)
            await nursery.start(dht.run)
            peers.append(peer)
        try:
            yield peers
        finally:
            nursery.cancel_scope.cancel()


# -- scrapes -----------------------------------------------------------------------------------------------


@dataclass
class HttpAnswer:
    status: int | None  # None: no answer (refused, closed, timed out)
    body: bytes
    seconds: float
    headers_at: float  # when the answer's head arrived (the exposition was rendered just before)
    error: str = ""


async def http_request(port: int, *, timeout: float = SCRAPE_TIMEOUT, path: str = "/metrics") -> HttpAnswer:
    """A GET of ``path`` from 127.0.0.1:``port``, spoken with h11; never raises for what the server does."""
    started = trio.current_time()
    client = h11.Connection(h11.CLIENT)
    status: int | None = None
    headers_at = math.nan
    body = bytearray()
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                request = h11.Request(
                    method="GET",
                    target=path,
                    headers=[("Host", f"127.0.0.1:{port}"), ("Connection", "close")],
                )
                await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        client.receive_data(await stream.receive_some(1 << 16))
                    elif isinstance(event, h11.Response):
                        status, headers_at = event.status_code, trio.current_time()
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
    except trio.TooSlowError:
        return HttpAnswer(
            status, bytes(body), trio.current_time() - started, headers_at, f"no answer in {timeout} s"
        )
    except h11.RemoteProtocolError as e:
        why = "closed without an answer" if status is None else f"broken answer: {e}"
        return HttpAnswer(status, bytes(body), trio.current_time() - started, headers_at, why)
    except (OSError, trio.BrokenResourceError) as e:
        return HttpAnswer(
            None, bytes(body), trio.current_time() - started, headers_at, f"{type(e).__name__}: {e}"
        )
    return HttpAnswer(status, bytes(body), trio.current_time() - started, headers_at)


_LABEL = re.compile(rb'(\w+)="((?:[^"\\]|\\.)*)"')


def peer_samples(body: bytes, peers: set[str]) -> dict[str, dict[str, float]]:
    """For each of ``peers``: its successful ping count, failed pings, and current ``ping_rtt`` (ms)."""
    out: dict[str, dict[str, float]] = {p: {"count": 0.0, "failures": 0.0} for p in peers}
    wanted = (b"physarum_ping_rtt_seconds_count{", b"physarum_ping_failures_total{", b"ping_rtt{")
    for line in body.split(b"\n"):
        if not line.startswith(wanted):
            continue
        name, _, rest = line.partition(b"{")
        labels_text, _, value = rest.rpartition(b"} ")
        labels = {k.decode(): v.decode() for k, v in _LABEL.findall(labels_text)}
        peer = labels.get("peer") or labels.get("targetHost")
        if peer not in out:
            continue
        key = {b"physarum_ping_rtt_seconds_count": "count", b"physarum_ping_failures_total": "failures"}.get(
            name, "rtt_ms"
        )
        out[peer][key] = out[peer].get(key, 0.0) + float(value)
    return out


# -- honest newcomers -------------------------------------------------------------------------------------


@dataclass
class Probe:
    at: float
    connect_seconds: float | None  # None: not connected
    pinged: bool
    error: str = ""
    psk_mismatch: bool = False


async def probe(monitor: Monitor, *, timeout: float = 3.0) -> Probe:
    """A new honest peer (fresh identity, from 127.0.0.1) dials the monitor and pings it once."""
    at = trio.current_time()
    async with open_host(KeyPair.generate(), psk=monitor.psk, listen=[]) as host:
        try:
            conn = await host.connect(monitor.addr, timeout=timeout)
        except DialError as e:
            mismatch = any(isinstance(err, PskMismatchError) for err in e.errors.values())
            return Probe(at, None, False, _short(e), mismatch)
        except Exception as e:
            return Probe(at, None, False, _short(e))
        took = trio.current_time() - at
        try:
            with trio.fail_after(timeout):
                await host.ping(monitor.peer_id, timeout=timeout)
        except Exception as e:
            return Probe(at, took, False, f"ping failed: {_short(e)}")
        await conn.aclose()
        return Probe(at, took, True)


def _short(e: BaseException) -> str:
    if isinstance(e, DialError) and e.errors:
        return "; ".join(f"{type(v).__name__}: {str(v)[:100]}" for v in e.errors.values())
    return f"{type(e).__name__}: {str(e)[:160]}"


# -- the attacker ------------------------------------------------------------------------------------------


@dataclass
class AttackerRun:
    report: dict[str, Any]
    events: list[tuple[float, dict[str, Any]]]
    returncode: int | None
    stderr: str
    stopped_early: bool
    started: float
    left: float


# -- the outcome -------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Everything measured in one scenario (times are trio.current_time() of this process)."""

    attack: str
    honest: list[str]
    baseline_rss: int
    baseline_fds: int
    rss: list[tuple[float, int]] = field(default_factory=list)
    fds_after: int = 0
    recovered_after: float | None = None  # seconds after the attacker left, None: not within the window
    scrapes: list[tuple[float, HttpAnswer, dict[str, dict[str, float]]]] = field(default_factory=list)
    #: per honest peer, when the monitor's pings arrived, from the last one before the attack on
    pings: dict[str, list[float]] = field(default_factory=dict)
    ended: float = 0.0
    probes: list[Probe] = field(default_factory=list)
    log_lines: int = 0
    log_tail: str = ""
    tracebacks: int = 0
    node_exit: int | None = None
    node_cpu_seconds: float = 0.0  # from the attack's start to the end of the recovery
    attacker: AttackerRun | None = None
    notes: list[str] = field(default_factory=list)

    # -- derived figures --

    @property
    def peak_growth(self) -> int:
        return max((r for _, r in self.rss), default=self.baseline_rss) - self.baseline_rss

    @property
    def final_growth(self) -> int:
        return (self.rss[-1][1] if self.rss else self.baseline_rss) - self.baseline_rss

    def ping_gaps(self) -> dict[str, float]:
        """Per honest peer, the longest time without a ping from the monitor, from the last ping before
        the attack to the end of the measurements."""
        gaps = {}
        for peer, times in self.pings.items():
            marks = [*times, self.ended]
            gaps[peer] = max((b - a for a, b in itertools.pairwise(marks)), default=math.inf)
        return gaps

    def max_rtt_ms(self) -> float:
        return max(
            (s.get("rtt_ms", 0.0) for _, a, ss in self.scrapes if a.status == 200 for s in ss.values()),
            default=0.0,
        )

    def honest_ping_failures(self) -> float:
        """Failed pings of the honest peers the monitor counted (``physarum_ping_failures_total``)
        between the first and the last successful scrape."""
        seen = [ss for _, a, ss in self.scrapes if a.status == 200]
        if len(seen) < 2:
            return 0.0
        return sum(seen[-1][p].get("failures", 0.0) - seen[0][p].get("failures", 0.0) for p in self.honest)

    def failed_scrapes(self) -> list[HttpAnswer]:
        return [a for _, a, _ in self.scrapes if a.status != 200]

    def summary(self) -> str:
        a = self.attacker
        parts = [
            f"attack {self.attack}: RSS baseline {self.baseline_rss / MiB:.0f} MiB, peak +{self.peak_growth / MiB:.1f} MiB, "
            f"last +{self.final_growth / MiB:.1f} MiB, recovered after "
            f"{_seconds(self.recovered_after) if self.recovered_after is not None else f'never (window {RECOVERY_WINDOW:g} s)'}; "
            f"fds {self.baseline_fds} -> {self.fds_after}",
            f"scrapes {len(self.scrapes)} ({len(self.failed_scrapes())} failed, slowest "
            f"{max((x.seconds for _, x, _ in self.scrapes), default=0):.2f} s, largest "
            f"{max((len(x.body) for _, x, _ in self.scrapes), default=0) / 1024:.0f} KiB); "
            f"ping gaps {', '.join(map(_seconds, self.ping_gaps().values()))}, max ping_rtt {self.max_rtt_ms():.0f} ms, "
            f"failed pings counted {self.honest_ping_failures():.0f}",
            f"probes {len(self.probes)}: connect "
            + ", ".join(
                _seconds(p.connect_seconds, 2) if p.connect_seconds is not None else "FAIL"
                for p in self.probes
            ),
            f"log lines {self.log_lines}, tracebacks {self.tracebacks}, node exit {self.node_exit}, "
            f"node CPU {self.node_cpu_seconds:.1f} s",
        ]
        if a is not None:
            parts.append(
                f"attacker: ran {a.left - a.started:.1f} s{' (stopped early)' if a.stopped_early else ''}, "
                f"exit {a.returncode}, report {json.dumps(a.report)[:600]}"
            )
        parts += self.notes
        return "\n  ".join(parts)

    def violations(self) -> list[str]:
        """Each of issue 11's bounds that did not hold, in words (empty: the node held up)."""
        out: list[str] = []
        if self.node_exit is not None:
            out.append(f"the node exited (status {self.node_exit})")
        if self.tracebacks:
            out.append(f"the node logged {self.tracebacks} traceback(s)")
        if self.peak_growth >= RSS_GROWTH_MAX:
            out.append(f"RSS grew by {self.peak_growth / MiB:.0f} MiB (limit {RSS_GROWTH_MAX / MiB:.0f})")
        if self.recovered_after is None:
            out.append(
                f"RSS/fds not back near the baseline {RECOVERY_WINDOW:g} s after the attacker left: "
                f"+{self.final_growth / MiB:.1f} MiB (limit +{RSS_RETAINED_MAX / MiB:.0f}), "
                f"fds {self.baseline_fds} -> {self.fds_after} (limit +{FDS_RETAINED_MAX})"
            )
        for peer, gap in self.ping_gaps().items():
            if gap > PING_GAP_MAX:
                out.append(f"honest peer {peer[-6:]} was not pinged for {gap:.1f} s (limit {PING_GAP_MAX:g})")
        failed = self.failed_scrapes()
        if failed:
            out.append(
                f"{len(failed)} of {len(self.scrapes)} scrapes failed (e.g. {failed[0].error or failed[0].status})"
            )
        slow = [
            p
            for p in self.probes
            if p.connect_seconds is None or p.connect_seconds >= CONNECT_MAX or not p.pinged
        ]
        if slow:
            worst = slow[0]
            out.append(
                f"{len(slow)} of {len(self.probes)} new honest peers were not connected and pinged within "
                f"{CONNECT_MAX:g} s (e.g. {worst.connect_seconds}, {worst.error})"
            )
        mismatched = [p for p in self.probes if p.psk_mismatch]
        if mismatched:
            out.append(f"{len(mismatched)} refused honest dials were reported as a PSK mismatch")
        if self.log_lines >= LOG_LINES_MAX:
            out.append(
                f"the node logged {self.log_lines} lines (limit {LOG_LINES_MAX}); last: {self.log_tail}"
            )
        return out


def _seconds(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f} s"


# -- the scenario -----------------------------------------------------------------------------------------


@dataclass
class Context:
    """What an ``after`` hook gets: the monitor and the honest peers, still running."""

    monitor: Monitor
    honest: list[Honest]
    outcome: Outcome


Hook = Callable[[Context], Awaitable[None]]


async def run_scenario(
    key_file: Path,
    attack: str,
    params: dict[str, Any] | None = None,
    *,
    attack_timeout: float = 40.0,
    after: Hook | None = None,
) -> Outcome:
    """Attack a fresh monitor with two honest peers attached; measure everything (see the module doc).

    ``params`` go to the attacker; ``attack_timeout`` bounds its run (it is killed past it, and the
    test fails). ``after`` runs once the attacker left, while recovery is measured (e.g. honest
    publishers). The whole scenario runs under a deadline, so a hang fails fast.
    """
    with trio.fail_after(attack_timeout + RECOVERY_WINDOW + 60):
        async with monitor_process(key_file) as monitor, honest_peers(monitor) as honest:
            return await _measure(monitor, honest, attack, params or {}, attack_timeout, after)


async def _measure(
    monitor: Monitor,
    honest: list[Honest],
    attack: str,
    params: dict[str, Any],
    attack_timeout: float,
    after: Hook | None,
) -> Outcome:
    ids = {h.id for h in honest}
    # Steady state: both honest peers pinged twice, the scrape and dial paths warmed up.
    with trio.fail_after(20):
        while not all(len(h.pings) >= 2 for h in honest):
            await trio.sleep(0.05)
    assert (await http_request(monitor.metrics_port)).status == 200, (
        "the idle monitor does not serve /metrics"
    )
    for _ in range(2):
        warm = await probe(monitor)
        assert warm.pinged, f"a new peer cannot even join the idle monitor: {warm.error}"
    samples = []
    for _ in range(5):
        samples.append(monitor.rss())
        await trio.sleep(0.2)
    outcome = Outcome(attack, sorted(ids), max(samples), monitor.fds())
    first_ping = {h.id: len(h.pings) - 1 for h in honest}  # the last one before the attack
    lines_before = monitor.proc.stderr_lines()
    cpu_before = monitor.cpu_seconds()
    stop_attacker = trio.Event()
    left = trio.Event()

    async def watch_rss() -> None:
        while True:
            try:
                rss = monitor.rss()
            except OSError:  # the node exited (node_exit says so)
                return
            outcome.rss.append((trio.current_time(), rss))
            if rss - outcome.baseline_rss >= EARLY_STOP_GROWTH and not left.is_set():
                stop_attacker.set()
            await trio.sleep(RSS_PERIOD)

    async def scrape() -> None:
        while True:
            started = trio.current_time()
            answer = await http_request(monitor.metrics_port)
            samples = peer_samples(answer.body, ids) if answer.status == 200 else {}
            outcome.scrapes.append(
                (answer.headers_at if answer.status == 200 else trio.current_time(), answer, samples)
            )
            await trio.sleep_until(started + SCRAPE_PERIOD)

    async def probes() -> None:
        while True:
            started = trio.current_time()
            outcome.probes.append(await probe(monitor))
            await trio.sleep_until(started + PROBE_PERIOD)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_rss)
        nursery.start_soon(scrape)
        nursery.start_soon(probes)
        outcome.attacker = await _run_attacker(monitor, attack, params, attack_timeout, stop_attacker)
        left.set()
        left_at = trio.current_time()
        async with trio.open_nursery() as recovery:
            if after is not None:
                recovery.start_soon(after, Context(monitor, honest, outcome))
            await _recover(monitor, outcome, left_at)
        outcome.probes.append(await probe(monitor))
        with contextlib.suppress(OSError):
            outcome.node_cpu_seconds = monitor.cpu_seconds() - cpu_before
        outcome.ended = trio.current_time()
        outcome.pings = {h.id: h.pings[first_ping[h.id] :] for h in honest}
        nursery.cancel_scope.cancel()
    stderr = bytes(monitor.proc.stderr)
    tail = stderr.split(b"\n")[lines_before:]
    outcome.log_lines = monitor.proc.stderr_lines() - lines_before
    outcome.log_tail = b"\n".join(line for line in tail if line)[-300:].decode(errors="replace")
    outcome.tracebacks = stderr.count(b"Traceback")
    outcome.node_exit = monitor.proc.process.returncode
    return outcome


async def _recover(monitor: Monitor, outcome: Outcome, left_at: float) -> None:
    """Watch RSS and fds come back near the baseline, at most RECOVERY_WINDOW seconds after the
    attacker left; measuring goes on at least MIN_AFTER seconds."""
    while True:
        now = trio.current_time()
        try:
            rss, fds = monitor.rss(), monitor.fds()
        except OSError:  # the node exited (node_exit says so)
            return
        back = (
            rss - outcome.baseline_rss < RSS_RETAINED_MAX and fds - outcome.baseline_fds <= FDS_RETAINED_MAX
        )
        if outcome.recovered_after is None and back:
            outcome.recovered_after = now - left_at
        outcome.fds_after = fds
        if now - left_at >= RECOVERY_WINDOW or (
            outcome.recovered_after is not None and now - left_at >= MIN_AFTER
        ):
            return
        await trio.sleep(RSS_PERIOD)


async def _run_attacker(
    monitor: Monitor, attack: str, params: dict[str, Any], timeout: float, stop: trio.Event
) -> AttackerRun:
    config = {
        "port": monitor.port,
        "peer_id": str(monitor.peer_id),
        "psk": monitor.psk.hex(),
        "metrics_port": monitor.metrics_port,
        **params,
    }
    argv = [sys.executable, "-m", "tests.adversarial._attacks", attack, json.dumps(config)]
    started = trio.current_time()
    stopped_early = False
    async with child(argv, cwd=REPO) as proc:
        with trio.move_on_after(timeout) as scope:
            async with trio.open_nursery() as nursery:

                async def stop_early() -> None:
                    nonlocal stopped_early
                    await stop.wait()
                    stopped_early = True
                    proc.process.kill()

                nursery.start_soon(stop_early)
                await proc.process.wait()
                nursery.cancel_scope.cancel()
        if scope.cancelled_caught:
            proc.process.kill()
    left = trio.current_time()
    events = []
    report: dict[str, Any] = {}
    for t, line in proc.stdout_lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "report" in message:
            report = message["report"]
        else:
            events.append((t, message))
    run = AttackerRun(
        report,
        events,
        proc.process.returncode,
        proc.stderr.decode(errors="replace"),
        stopped_early,
        started,
        left,
    )
    if scope.cancelled_caught:
        raise AssertionError(f"the attacker did not finish within {timeout} s: {run.stderr[-2000:]}")
    if not stopped_early and run.returncode != 0:
        raise AssertionError(f"the attacker failed (a test bug, not the node's): {run.stderr[-3000:]}")
    return run


def attacker_report(outcome: Outcome) -> dict[str, Any]:
    """What the attacker reported; empty when it was stopped early (its findings were not measured,
    which the RSS bound already fails)."""
    assert outcome.attacker is not None
    if outcome.attacker.stopped_early:
        outcome.notes.append(
            "the attacker was stopped early (RSS limit passed): its own findings were not measured"
        )
    return outcome.attacker.report


def check(outcome: Outcome, *extra: str) -> None:
    """Fail with every violated bound (``extra``: the test's own findings first) and the figures."""
    print(outcome.summary())  # the figures, for -s / -rP, whether or not it held up
    problems = [e for e in extra if e] + outcome.violations()
    assert not problems, "\n- ".join(["the node did not hold up:", *problems]) + "\n  " + outcome.summary()
