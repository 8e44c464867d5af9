"""Helper processes for ``bench/monitor.py``, driven over JSON lines on stdin/stdout.

They speak the JSON-lines protocol of ``bench/_harness.py`` (as ``bench/_physarum_peer.py`` does), so the
benchmark starts and stops them with ``open_partner``. The ping-monitor under test never shares a
process with any of them.

    .venv/bin/python bench/_monitor_peers.py --role peers --passphrase PASS [--echo]
    .venv/bin/python bench/_monitor_peers.py --role echo-server
    .venv/bin/python bench/_monitor_peers.py --role echo-client

Roles:
    peers        holds many physarum Hosts, each with its own identity, that dial the monitor (pnet key =
                 SHA3-256(passphrase), as the monitor's ``-psk``) and stay connected, answering its pings.
                 Host.connect reuses a connection per peer id, so every peer is a Host of its own.
                 With ``--echo`` it also runs a raw trio TCP echo server on the same event loop, so a
                 floor can be measured through a process as busy as the peers' own.
    echo-server  a raw trio TCP 32-byte echo server, alone in its process (the raw-TCP floor's server).
    echo-client  pings echo servers with 32-byte echoes, one every ``period`` seconds per server, each
                 timed exactly as bench/overlay.py times its floor (``_harness.echo_pings``).

Out: {"event":"ready","peer_id":"","addrs":[],"pid":N,"servers":{"echo":PORT}?}
In:  attach {addr,count,concurrency} -> {"attached","failed","seconds","errors"};
     stats -> {"hosts","connected"};  detach_all -> {"closed"};
     start {ports:{name:port},period} -> {};  take -> {"samples":{name:[seconds,...]},"errors":{name:n}};
     stop.
Only 127.0.0.1 is ever listened on or dialled.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from functools import partial
from typing import Any

import trio
from _harness import LOOPBACK, echo_pings, emit, run_driven, serve_commands
from _physarum_peer import _echo, _tcp_handler

from physarum.overlay.host import Host
from physarum.psk import psk_from_passphrase


class Helper:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.psk = psk_from_passphrase(args.passphrase) if args.passphrase is not None else None
        self.hosts: list[Host] = []
        self.samples: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.started = False

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            servers: dict[str, int] = {}
            if self.args.role == "echo-server" or self.args.echo:
                listeners = await nursery.start(
                    partial(trio.serve_tcp, _tcp_handler(_echo, None), 0, host=LOOPBACK)
                )
                servers["echo"] = int(listeners[0].socket.getsockname()[1])
            emit({"event": "ready", "peer_id": "", "addrs": [], "pid": os.getpid(), "servers": servers})
            await serve_commands(self, nursery)
            nursery.cancel_scope.cancel()

    # -- peers --

    async def cmd_attach(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        addr, count = str(cmd["addr"]), int(cmd["count"])
        if not addr.startswith(f"/ip4/{LOOPBACK}/"):
            raise ValueError("only 127.0.0.1 may be dialled")
        limiter = trio.CapacityLimiter(int(cmd.get("concurrency", 4)))
        errors: dict[str, int] = {}
        attached = 0
        t0 = time.perf_counter()

        async def one() -> None:
            nonlocal attached
            async with limiter:
                host = Host(psk=self.psk, listen=())
                await nursery.start(host.run)
                try:
                    conn = await host.connect(addr, timeout=20)
                    with trio.fail_after(20):
                        await conn.identified.wait()
                except Exception as e:  # counted and reported; the benchmark decides what it means
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    await host.aclose()
                    return
                self.hosts.append(host)
                attached += 1

        async with trio.open_nursery() as dialers:
            for _ in range(count):
                dialers.start_soon(one)
        return {
            "attached": attached,
            "failed": count - attached,
            "seconds": time.perf_counter() - t0,
            "errors": errors,
        }

    async def cmd_stats(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        connected = sum(1 for h in self.hosts if h.connected_peers())
        return {"hosts": len(self.hosts), "connected": connected}

    async def cmd_detach_all(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        hosts, self.hosts = self.hosts, []
        for host in hosts:
            await host.aclose()
        return {"closed": len(hosts)}

    # -- echo client --

    async def cmd_start(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        if self.started:
            raise RuntimeError("already started")
        self.started = True
        ports = {str(k): int(v) for k, v in dict(cmd["ports"]).items()}
        period = float(cmd.get("period", 0.05))
        for name, port in ports.items():
            self.samples[name] = []
            self.errors[name] = 0
            nursery.start_soon(self._ping_loop, name, port, period)
        return {}

    async def _ping_loop(self, name: str, port: int, period: float) -> None:
        while True:
            try:
                async with await trio.open_tcp_stream(LOOPBACK, port) as tcp:
                    await echo_pings(tcp, 3)  # warm-up, not recorded
                    while True:
                        # Jittered, so the samples never lock onto the monitor's 1 s rhythm.
                        await trio.sleep(period * random.uniform(0.5, 1.5))
                        self.samples[name] += await echo_pings(tcp, 1)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, RuntimeError):
                self.errors[name] += 1
                await trio.sleep(period)

    async def cmd_take(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        samples = {name: list(s) for name, s in self.samples.items()}
        for s in self.samples.values():
            s.clear()
        return {"samples": samples, "errors": dict(self.errors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["peers", "echo-server", "echo-client"], required=True)
    ap.add_argument("--passphrase", default=None, help="peers: the monitor's -psk passphrase")
    ap.add_argument("--echo", action="store_true", help="peers: also run a raw TCP echo server")
    args = ap.parse_args()
    run_driven(Helper(args).run)


if __name__ == "__main__":
    main()
