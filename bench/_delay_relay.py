"""A TCP relay that delays every byte by a fixed time each way: a long path on loopback.

    python bench/_delay_relay.py ONE_WAY_MS TARGET_PORT [TARGET_PORT ...]

For each target (on 127.0.0.1) it listens on a port of its own (127.0.0.1, port 0) and prints the
ports, in order, as one JSON line: {"ports": [...]}. Each accepted connection gets a connection to
its target, and what either side sends is handed on ONE_WAY_MS after it arrived (order kept), so a
round trip through the relay takes about twice that plus the relay's own scheduling, the same for
every connection through it. bench/monitor.py (--path-ms) puts a ping-monitor's peer and a raw TCP
echo behind two listeners of one relay: identical paths. Netem would do it in the kernel, but this
machine's kernel has no sch_netem.
"""

from __future__ import annotations

import functools
import json
import math
import sys

import trio

LOOPBACK = "127.0.0.1"


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, delay: float) -> None:
    send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def later() -> None:
        async for due, data in receive:
            await trio.sleep_until(due)
            await dst.send_all(data)
        await dst.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        async with send:
            while data := await src.receive_some(65536):
                send.send_nowait((trio.current_time() + delay, data))


async def _relay(target: int, delay: float, client: trio.SocketStream) -> None:
    try:
        upstream = await trio.open_tcp_stream(LOOPBACK, target)
    except OSError:
        await client.aclose()
        return
    async with client, upstream:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump, client, upstream, delay)
                nursery.start_soon(_pump, upstream, client, delay)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def main(one_way_ms: float, targets: list[int]) -> None:
    delay = one_way_ms / 1000
    async with trio.open_nursery() as nursery:
        ports = []
        for target in targets:
            serve = functools.partial(trio.serve_tcp, functools.partial(_relay, target, delay), 0, host=LOOPBACK)
            listeners = await nursery.start(serve)
            ports.append(listeners[0].socket.getsockname()[1])
        print(json.dumps({"ports": ports}), flush=True)


if __name__ == "__main__":
    trio.run(main, float(sys.argv[1]), [int(p) for p in sys.argv[2:]])
