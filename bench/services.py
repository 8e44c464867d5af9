"""Services benchmark: reaching a service by name through physarum's registry, allocator and proxy pair.

    .venv/bin/python bench/services.py [--quick] [--json PATH]

Everything runs as the binaries users run, each its own process on 127.0.0.1 with a private network:
a bootstrap, a registry node (``physarum registry serve``), an allocator (``physarum allocator``,
process runtime), a client proxy (``physarum proxy PORT``) and, for the streaming rows, a sidecar
(``physarum proxy PORT big HOST:PORT METRICS_PORT``) in front of a bulk HTTP service. This process is
the HTTP client (h11 on trio, keep-alive) and serves the bulk service.

* **first request with allocation**: N services registered with the hello-world command
  (``physarum hello``); the first GET of each goes client proxy -> registry lookup -> nearest
  allocator -> instance started -> port accepting -> its sidecar pinged -> the request forwarded.
  Median of N (PhysarumSM's paper: 2.17 s, of which allocation 1.58 s, with Docker).
* **added latency**: sequential keep-alive GETs of the hello instance, direct to its port against
  through the proxy pair (client proxy and the instance's sidecar, two processes, two overlay
  hops... one overlay stream per request). Medians of the same run, interleaved.
* **requests/s**: C concurrent keep-alive clients for T seconds, direct and through the pair.
* **streaming**: one body of S MB up (POST) and down (GET) through the pair, beside the same
  direct to the bulk service.

A benchmark, not a test: it never asserts a timing. Results go to bench/results/services.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import trio
from _harness import (
    RESULTS,
    Goal,
    Run,
    fmt,
    print_table_report,
    progress,
    write_json,
)

RESULTS_JSON = RESULTS / "services.json"
PSK = "physarum services bench"
PHYSARUM = [sys.executable, "-m", "physarum.cli"]
LOCAL = ["-p2p-listen-addr", "127.0.0.1:0"]
PAPER_FIRST_REQUEST_S = 2.17
PAPER_PROXY_US = 700.0


@dataclass(frozen=True)
class Config:
    quick: bool
    services: int
    latency_requests: int
    rps_clients: int
    rps_seconds: float
    stream_mb: int

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, 5, 300, 8, 2.0, 100)
        return cls(False, 15, 2000, 16, 5.0, 200)


# ------------------------------------------------------------------------------------------ processes


class Proc:
    def __init__(self, process: trio.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.stdout = ""
        self.stderr = ""
        self._changed = trio.Event()

    async def pump(self, stream: trio.abc.ReceiveStream, attr: str) -> None:
        async with stream:
            while chunk := await stream.receive_some(65536):
                setattr(self, attr, getattr(self, attr) + chunk.decode(errors="replace"))
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(self, pattern: str, attr: str = "stderr", timeout: float = 30.0) -> re.Match[str]:
        with trio.fail_after(timeout):
            while not (m := re.search(pattern, getattr(self, attr))):
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.stderr[-2000:]}")
                await self._changed.wait()
        return m


@asynccontextmanager
async def started(nursery: trio.Nursery, name: str, *args: str) -> AsyncIterator[Proc]:
    env = {**os.environ, "P2P_PSK": PSK}
    env.pop("P2P_BOOTSTRAPS", None)
    process = await trio.lowlevel.open_process(
        [*PHYSARUM, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc = Proc(process, name)
    assert process.stdout is not None and process.stderr is not None
    nursery.start_soon(proc.pump, process.stdout, "stdout")
    nursery.start_soon(proc.pump, process.stderr, "stderr")
    try:
        yield proc
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.terminate()  # SIGTERM: the allocator stops its instances
                with trio.move_on_after(10):
                    await process.wait()
            if process.poll() is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def relay_pair(nursery: trio.Nursery, upstream_port: int) -> AsyncIterator[int]:
    """Two bare trio + h11 relays (bench/_h11_relay.py) chained in front of ``upstream_port``: the
    proxy pair's stack without the overlay. Yields the first one's port."""
    port = upstream_port
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(2):
            process = await trio.lowlevel.open_process(
                [sys.executable, str(Path(__file__).with_name("_h11_relay.py")), str(port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            )  # fmt: skip
            stack.push_async_callback(_stop, process)
            proc = Proc(process, "relay")
            assert process.stdout is not None
            nursery.start_soon(proc.pump, process.stdout, "stdout")
            port = int((await proc.wait_for(r"(\d+)\n", "stdout")).group(1))
        yield port


async def _stop(process: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        process.kill()
        await process.wait()


# ---------------------------------------------------------------------------------------------- HTTP


class Client:
    """A keep-alive HTTP/1.1 client."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)
        self.headers: dict[bytes, bytes] = {}

    @classmethod
    async def open(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def _event(self) -> Any:
        while (event := self.conn.next_event()) is h11.NEED_DATA:
            self.conn.receive_data(bytes(await self.stream.receive_some(262144)))
        return event

    async def request(self, method: str, target: str, body: int = 0) -> tuple[int, int]:
        """(status, body bytes received); ``body``: bytes to upload."""
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = [(b"host", b"127.0.0.1"), (b"content-length", str(body).encode())]
        await self.stream.send_all(self.conn.send(h11.Request(method=method, target=target, headers=headers)))
        chunk = b"u" * 262144
        left = body
        while left > 0:
            await self.stream.send_all(self.conn.send(h11.Data(data=chunk[: min(left, len(chunk))])))
            left -= len(chunk)
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))
        status, n = 0, 0
        while True:
            event = await self._event()
            if isinstance(event, h11.Response):
                status, self.headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                n += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, n
            else:
                raise RuntimeError(f"unexpected {event!r}")


async def bulk_service(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """POST: answers the body's length; GET /?n=N: sends N bytes."""

    async def serve(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        chunk = b"z" * 262144
        try:
            while True:
                while (event := conn.next_event()) is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(262144)))
                if not isinstance(event, h11.Request):
                    return
                size = 0
                while True:
                    while (e := conn.next_event()) is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(262144)))
                    if isinstance(e, h11.EndOfMessage):
                        break
                    size += len(e.data)
                target = event.target.decode()
                length = int(target.partition("n=")[2] or 0) if "n=" in target else -1
                body = str(size).encode()
                n = length if length >= 0 else len(body)
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[(b"content-length", str(n).encode())])))
                if length >= 0:
                    while length > 0:
                        await stream.send_all(conn.send(h11.Data(data=chunk[: min(length, len(chunk))])))
                        length -= len(chunk)
                else:
                    await stream.send_all(conn.send(h11.Data(data=body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


# ------------------------------------------------------------------------------------------- phases


async def run_cmd(*args: str, timeout: float = 60) -> str:
    env = {**os.environ, "P2P_PSK": PSK}
    with trio.fail_after(timeout):
        done = await trio.run_process([*PHYSARUM, *args], capture_stdout=True, capture_stderr=True, env=env,
                                      check=False)
    if done.returncode:
        raise RuntimeError(f"physarum {' '.join(args[:2])} failed: {done.stderr.decode()}")
    return done.stdout.decode()


async def rps(port: int, target: str, clients: int, seconds: float) -> float:
    count = 0
    deadline = trio.current_time() + seconds

    async def one() -> None:
        nonlocal count
        c = await Client.open(port)
        while trio.current_time() < deadline:
            status, _ = await c.request("GET", target)
            assert status == 200, status
            count += 1

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(one)
    return count / seconds


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    t = time.perf_counter()
    await fn()
    return time.perf_counter() - t


async def run_all(cfg: Config, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        async with started(nursery, "bootstrap", "bootstrap", *LOCAL, "-ephemeral") as boot_proc:
            boot = (await boot_proc.wait_for(r"(/ip4/\S+)", "stdout")).group(1)
            joined = ["-bootstrap", boot]
            async with started(nursery, "registry", "registry", "serve", "-db", str(tmp / "r.db"), *joined, *LOCAL) as reg, \
                    started(nursery, "allocator", "allocator", *joined, *LOCAL, "-metrics-listen-addr", "127.0.0.1:0",
                            "-capacity", str(cfg.services + 2)) as alloc, \
                    started(nursery, "proxy", "proxy", *joined, "0") as proxy:
                await reg.wait_for(r"registry: \d+ entr")
                await alloc.wait_for(r"metrics at")
                port = int((await proxy.wait_for(r"proxy: http://127\.0\.0\.1:(\d+)/")).group(1))
                key = str(tmp / "pub.key")
                progress(f"registering {cfg.services} services")
                for i in range(cfg.services):
                    await run_cmd("registry", "add", f"hello-{i}", "-command", f"{sys.executable} -m physarum.cli hello",
                                  *joined, "-keyfile", key)

                progress("first requests, allocation included")
                firsts = []
                for i in range(cfg.services):
                    c = await Client.open(port)
                    t = time.perf_counter()
                    status, _ = await c.request("GET", f"/hello-{i}/")
                    firsts.append(time.perf_counter() - t)
                    assert status == 200, status
                out["first_request_s"] = firsts
                allocated = [float(m) for m in re.findall(r"started hello-\d+ \(process, pid \d+\) on port \d+ in (\d+) ms",
                                                          alloc.stderr)]
                out["allocation_s"] = [ms / 1000 for ms in allocated]

                progress("added latency")
                proxied = await Client.open(port)
                await proxied.request("GET", "/hello-0/")
                hello_port = int(proxied.headers[b"x-served-by"].rpartition(b":")[2])
                direct = await Client.open(hello_port)
                async with relay_pair(nursery, hello_port) as floor_port:
                    floor = await Client.open(floor_port)
                    d, p, f = [], [], []
                    for _ in range(cfg.latency_requests):
                        d.append(await timed(lambda: direct.request("GET", "/")))
                        p.append(await timed(lambda: proxied.request("GET", "/hello-0/")))
                        f.append(await timed(lambda: floor.request("GET", "/")))
                    out["direct_get_s"], out["proxied_get_s"], out["floor_get_s"] = d, p, f

                    progress("requests/s")
                    out["rps_direct"] = await rps(hello_port, "/", cfg.rps_clients, cfg.rps_seconds)
                    out["rps_proxied"] = await rps(port, "/hello-0/", cfg.rps_clients, cfg.rps_seconds)
                    out["rps_floor"] = await rps(floor_port, "/", cfg.rps_clients, cfg.rps_seconds)

                progress("streaming")
                bulk_port = await nursery.start(bulk_service)
                async with started(nursery, "sidecar", "proxy", *joined, *LOCAL, "0", "big",
                                   f"127.0.0.1:{bulk_port}", "0") as _sidecar:
                    with trio.fail_after(30):
                        while (await (await Client.open(port)).request("GET", "/big/x"))[0] != 200:
                            await trio.sleep(0.1)
                    size = cfg.stream_mb * 1_000_000
                    dc, pc = await Client.open(bulk_port), await Client.open(port)
                    out["stream_mb"] = cfg.stream_mb
                    out["direct_up_s"] = await timed(lambda: dc.request("POST", "/", size))
                    out["proxied_up_s"] = await timed(lambda: pc.request("POST", "/big/", size))
                    out["direct_down_s"] = await timed(lambda: dc.request("GET", f"/?n={size}"))
                    out["proxied_down_s"] = await timed(lambda: pc.request("GET", f"/big/?n={size}"))
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 services, fewer requests, 100 MB bodies")
    ap.add_argument("--json", type=Path, default=RESULTS_JSON, help=f"results file (default {RESULTS_JSON})")
    args = ap.parse_args()
    cfg = Config.make(args.quick)
    run = Run()
    with tempfile.TemporaryDirectory(prefix="physarum-bench-services-") as tmp:
        r = trio.run(run_all, cfg, Path(tmp))
    run.finish()
    med = statistics.median
    first = med(r["first_request_s"])
    alloc = med(r["allocation_s"]) if r["allocation_s"] else float("nan")
    d_us, p_us = med(r["direct_get_s"]) * 1e6, med(r["proxied_get_s"]) * 1e6
    added = p_us - d_us
    ratio = r["rps_proxied"] / r["rps_direct"]
    f_us = med(r["floor_get_s"]) * 1e6
    floor_ratio = r["rps_floor"] / r["rps_direct"]
    mb = r["stream_mb"]
    rates = {k: mb / r[f"{k}_s"] for k in ("direct_up", "proxied_up", "direct_down", "proxied_down")}
    stream = min(rates["proxied_up"], rates["proxied_down"])
    rows = [
        ["first request, allocation included", f"{first * 1000:.0f} ms", f"n={len(r['first_request_s'])}",
         f"allocator's part {alloc * 1000:.0f} ms; PhysarumSM {PAPER_FIRST_REQUEST_S:g} s"],
        ["GET direct", f"{d_us:.0f} us", f"n={len(r['direct_get_s'])}", "keep-alive, to the instance's port"],
        ["GET through the proxy pair", f"{p_us:.0f} us", f"n={len(r['proxied_get_s'])}",
         f"added {added:.0f} us; PhysarumSM {PAPER_PROXY_US:.0f} us per proxy"],
        ["GET through two bare h11 relays", f"{f_us:.0f} us", f"n={len(r['floor_get_s'])}",
         f"added {f_us - d_us:.0f} us: the stack's floor, no overlay"],
        ["requests/s direct", fmt(r["rps_direct"], 0), f"{cfg.rps_clients} clients", ""],
        ["requests/s through the pair", fmt(r["rps_proxied"], 0), f"{cfg.rps_clients} clients",
         f"{ratio * 100:.0f}% of direct"],
        ["requests/s through two bare h11 relays", fmt(r["rps_floor"], 0), f"{cfg.rps_clients} clients",
         f"{floor_ratio * 100:.0f}% of direct: the stack's floor"],
        [f"{mb} MB up, direct / pair", f"{rates['direct_up']:.0f} / {rates['proxied_up']:.0f} MB/s", "", ""],
        [f"{mb} MB down, direct / pair", f"{rates['direct_down']:.0f} / {rates['proxied_down']:.0f} MB/s", "", ""],
    ]
    goals = [
        Goal("first request with allocation (median)", "<= 0.5 s", f"{first:.3f} s", first <= 0.5),
        Goal("added latency of the proxy pair (median)", "<= 700 us", f"{added:.0f} us", added <= 700),
        Goal("requests/s through the pair / direct", ">= 50%", f"{ratio * 100:.0f}%", ratio >= 0.5),
        Goal("streaming through the pair (lower of up, down)", ">= 100 MB/s", f"{stream:.0f} MB/s", stream >= 100),
    ]
    header = ["measure", "value", "samples", "note"]
    title = run.title("physarum services benchmark", "quick" if cfg.quick else "full", "loopback, one process each")
    print_table_report(title, header, rows, goals, target_width=12)
    data = run.record(cfg.quick, rows=[dict(zip(header, row, strict=True)) for row in rows],
                      goals=[g.as_json() for g in goals],
                      raw={k: v for k, v in r.items() if not isinstance(v, list)} | {
                          "first_request_s": r["first_request_s"], "allocation_s": r["allocation_s"]})
    write_json(args.json, data)


if __name__ == "__main__":
    main()
