"""A physarum peer process for ``bench/overlay.py``, driven over JSON lines on stdin/stdout.

It speaks the JSON-lines protocol of ``bench/_harness.py`` (the js and py interop peers speak it too),
so the benchmark drives all three kinds of process the same way. It exists so that a server
never shares an event loop with the client that measures it: with both in one trio run, every round
trip would include the other side's Python work twice over on one core, and nothing would run in
parallel on the second core.

    .venv/bin/python bench/_physarum_peer.py [--role listener|hold|dialers] [--psk-file PATH] [--host-only]

Roles:
    listener (default)  a physarum Host on 127.0.0.1 (pnet when --psk-file is given) that also answers a
                        bulk "sink" protocol and libp2p's perf protocol (/perf/1.0.0); unless --host-only, raw trio TCP servers used as floors:
                        echo, XSalsa20 echo, sink, XSalsa20 sink (XSalsa20 ones need --psk-file).
    hold                a raw trio TCP server that keeps every accepted connection open and idle
                        (the memory floor).
    dialers             listens on nothing; ``open_hosts`` starts one Host per connection (Host.connect
                        reuses a connection to the same peer, so N connections need N Hosts) and
                        ``open_raw`` opens plain sockets.

Out: {"event":"ready","peer_id":...,"addrs":[...],"pid":N,"servers":{"echo":PORT,...},"sink_protocol":...}
In:  stats -> {"connections","identified","held","hosts","raw"} (after gc.collect(), so the caller can read
     /proc/PID/status right after);  cpu -> {"cpu_s"} (process CPU seconds so far);
     open_hosts {addr,count};  open_raw {port,count};  close_all;  stop.
Sinks read until end of stream and answer the byte count as 8 bytes big-endian.
Only 127.0.0.1 is ever listened on or dialled.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from _harness import LOOPBACK, emit, run_driven, serve_commands

from physarum.overlay.host import Host
from physarum.overlay.perf import PerfService
from physarum.overlay.yamux import YamuxStream
from physarum.psk import load_key_file, protect

SINK_PROTOCOL = "/physarum-bench/sink/1.0.0"
_READ = 256 * 1024
# A benign end for a benchmark connection: the client hung up, perhaps mid-write.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


async def _echo(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def _sink(stream: trio.abc.HalfCloseableStream) -> None:
    total = 0
    while data := await stream.receive_some(_READ):
        total += len(data)
    await stream.send_all(total.to_bytes(8, "big"))


async def _physarum_sink(stream: YamuxStream) -> None:
    # The host closes the stream once the handler returns.
    await _sink(stream)


def _tcp_handler(
    body: Callable[[trio.abc.HalfCloseableStream], Awaitable[None]], psk: bytes | None
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A trio.serve_tcp handler: a client error must end that connection, not the whole server."""

    async def handler(tcp: trio.SocketStream) -> None:
        try:
            await body(tcp if psk is None else await protect(tcp, psk))
        except _GONE:
            pass
        finally:
            await trio.aclose_forcefully(tcp)

    return handler


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.psk = load_key_file(args.psk_file) if args.psk_file else None
        self.host: Host | None = None
        self.held = 0  # connections the hold server keeps open
        self.hosts: list[Host] = []  # dialers role: one Host per connection
        self.raw: list[trio.SocketStream] = []

    async def _serve(
        self, nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
    ) -> int:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=LOOPBACK))
        return int(listeners[0].socket.getsockname()[1])

    async def _hold(self, tcp: trio.SocketStream) -> None:
        # One task parked in receive_some per connection, as an ordinary trio server would have.
        self.held += 1
        try:
            while await tcp.receive_some():
                pass
        except _GONE:
            pass
        finally:
            self.held -= 1
            await trio.aclose_forcefully(tcp)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            servers: dict[str, int] = {}
            ready: dict[str, Any] = {"event": "ready", "peer_id": "", "addrs": [], "pid": os.getpid()}
            role = self.args.role
            if role == "listener":
                host = Host(psk=self.psk, listen=[f"/ip4/{LOOPBACK}/tcp/0"], services=[PerfService()])
                await nursery.start(host.run)
                host.set_handler(SINK_PROTOCOL, _physarum_sink)
                self.host = host
                ready.update(peer_id=str(host.peer_id), addrs=[str(a) for a in host.addrs])
                ready["sink_protocol"] = SINK_PROTOCOL
                if not self.args.host_only:
                    servers["echo"] = await self._serve(nursery, _tcp_handler(_echo, None))
                    servers["sink"] = await self._serve(nursery, _tcp_handler(_sink, None))
                    if self.psk is not None:
                        servers["psk_echo"] = await self._serve(nursery, _tcp_handler(_echo, self.psk))
                        servers["psk_sink"] = await self._serve(nursery, _tcp_handler(_sink, self.psk))
            elif role == "hold":
                servers["hold"] = await self._serve(nursery, self._hold)
            ready["servers"] = servers
            emit(ready)
            await serve_commands(self, nursery)
            nursery.cancel_scope.cancel()

    async def cmd_stats(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        gc.collect()
        conns = [c for cs in self.host.connections.values() for c in cs] if self.host else []
        return {
            "connections": len(conns),
            "identified": sum(c.identified.is_set() for c in conns),
            "held": self.held,
            "hosts": len(self.hosts),
            "raw": len(self.raw),
        }

    async def cmd_cpu(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        # CPU seconds this process has used; the caller takes differences. No gc.collect() here, so
        # the figure covers only the work between two calls.
        return {"cpu_s": time.process_time()}

    async def cmd_open_hosts(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        addr, count = str(cmd["addr"]), int(cmd["count"])
        if not addr.startswith(f"/ip4/{LOOPBACK}/"):
            raise ValueError("only 127.0.0.1 may be dialled")
        t0 = time.perf_counter()
        # One at a time: the listener sees a steady trickle, as in a real overlay, and the timing
        # stays free of accept-queue bursts.
        for _ in range(count):
            host = Host(psk=self.psk, listen=())
            await nursery.start(host.run)
            self.hosts.append(host)
            conn = await host.connect(addr, timeout=10)
            await conn.identified.wait()
        return {"opened": count, "seconds": time.perf_counter() - t0}

    async def cmd_open_raw(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        port, count = int(cmd["port"]), int(cmd["count"])
        for _ in range(count):
            self.raw.append(await trio.open_tcp_stream(LOOPBACK, port))
        return {"opened": count}

    async def cmd_close_all(self, cmd: dict[str, Any], nursery: trio.Nursery) -> dict[str, Any]:
        hosts, self.hosts = self.hosts, []
        raw, self.raw = self.raw, []
        for host in hosts:
            await host.aclose()
        for stream in raw:
            await trio.aclose_forcefully(stream)
        return {"closed": len(hosts) + len(raw)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["listener", "hold", "dialers"], default="listener")
    ap.add_argument("--psk-file", default=None)
    ap.add_argument("--host-only", action="store_true", help="listener: no raw TCP servers")
    args = ap.parse_args()
    run_driven(Peer(args).run)


if __name__ == "__main__":
    main()
