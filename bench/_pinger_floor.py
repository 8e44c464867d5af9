"""The floor under the monitor's CPU: a bare pinger on the monitor's schedule, nothing else.

    python bench/_pinger_floor.py N SECONDS trio|selectors

Opens N plain TCP connections to an echo server (a child process, one ``selectors`` loop) and pings
each once a second on its own phase, as the monitor does (pings spread over the second, not sent in
one burst), with a 48-byte payload and no pnet, Noise, yamux, RTT bookkeeping or metrics:

* ``trio``: one task sends each ping when it is due (``trio.sleep_until``), and a reader task per
  connection takes the echo: trio's own cost of two wake-ups per ping.
* ``selectors``: one plain ``selectors`` loop does both: what a process pays for the wake-ups alone.

After 3 s of warm-up, prints one JSON line: {"mode", "connections", "seconds", "cpu_pct",
"pings_per_s", "us_per_ping"} (the pinger's CPU, user and system, in % of one core). bench/monitor.py
runs both beside the monitor, in the same run, to show what part of its CPU any pinger would pay.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import signal
import socket
import sys
import time

WARMUP = 3.0
PAYLOAD = os.urandom(48)


def echo_server(ready_fd: int) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4096)
    os.write(ready_fd, b"%d\n" % server.getsockname()[1])
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is server:
                conn, _ = server.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                sock.send(data)
            else:
                sel.unregister(sock)
                sock.close()


def connect(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    return socks


def report(mode: str, n: int, cpu: float, wall: float, echoes: int) -> None:
    print(json.dumps({
        "mode": mode, "connections": n, "seconds": round(wall, 2), "cpu_pct": round(100 * cpu / wall, 2),
        "pings_per_s": round(echoes / wall, 1), "us_per_ping": round(1e6 * cpu / max(1, echoes), 1),
    }), flush=True)  # fmt: skip


def run_selectors(socks: list[socket.socket], seconds: float) -> None:
    n = len(socks)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    start = time.monotonic()
    echoes = sent = 0
    measuring_from: tuple[float, float, int] | None = None
    while (now := time.monotonic()) < start + WARMUP + seconds:
        if measuring_from is None and now >= start + WARMUP:
            measuring_from = (time.process_time(), now, echoes)
        due = start + sent / n
        for key, _ in sel.select(max(0.0, due - now)):
            key.fileobj.recv(4096)  # type: ignore[union-attr]
            echoes += 1
        if time.monotonic() >= due:
            socks[sent % n].send(PAYLOAD)
            sent += 1
    assert measuring_from is not None
    cpu0, wall0, echoes0 = measuring_from
    report("selectors", n, time.process_time() - cpu0, time.monotonic() - wall0, echoes - echoes0)


def run_trio(socks: list[socket.socket], seconds: float) -> None:
    import trio

    n = len(socks)
    echoes = 0

    async def reader(sock: trio.socket.SocketType) -> None:
        nonlocal echoes
        while await sock.recv(4096):
            echoes += 1

    async def main() -> None:
        tsocks = [trio.socket.from_stdlib_socket(s) for s in socks]
        async with trio.open_nursery() as nursery:
            for s in tsocks:
                nursery.start_soon(reader, s)
            start = trio.current_time()
            sent = 0
            measuring_from: tuple[float, float, int] | None = None
            while trio.current_time() < start + WARMUP + seconds:
                if measuring_from is None and trio.current_time() >= start + WARMUP:
                    measuring_from = (time.process_time(), time.monotonic(), echoes)
                await trio.sleep_until(start + sent / n)
                socks[sent % n].send(PAYLOAD)  # no checkpoint: the monitor writes without one too
                sent += 1
            assert measuring_from is not None
            cpu0, wall0, echoes0 = measuring_from
            report("trio", n, time.process_time() - cpu0, time.monotonic() - wall0, echoes - echoes0)
            nursery.cancel_scope.cancel()

    trio.run(main)


def main() -> None:
    n, seconds, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            echo_server(ready_w)
        finally:
            os._exit(0)
    try:
        port = int(os.read(ready_r, 64))
        socks = connect(port, n)
        (run_trio if mode == "trio" else run_selectors)(socks, seconds)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
