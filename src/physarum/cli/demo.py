"""``physarum-demo``: a two-node private network on loopback that pings once a second.

A listener and a dialer share a freshly generated pre-shared key; the dialer connects over
pnet + Noise + yamux, identifies the listener and prints each ping RTT until interrupted.
"""

from __future__ import annotations

import argparse
import sys

import trio

from physarum.overlay.host import open_host
from physarum.psk import generate_psk


async def _demo(count: int | None, interval: float) -> None:
    psk = generate_psk()
    async with open_host(psk=psk) as listener, open_host(psk=psk, listen=()) as dialer:
        print("listener:", *listener.addrs, flush=True)
        conn = await dialer.connect(listener.addrs[0])
        await conn.identified.wait()
        info = dialer.peerstore.get(listener.peer_id)
        protocols = ", ".join(info.protocols) if info else "?"
        print(f"dialer {dialer.peer_id} connected; listener speaks: {protocols}", flush=True)
        n = 0
        while count is None or n < count:
            (rtt,) = await dialer.ping(listener.peer_id)
            n += 1
            print(f"ping {n}: {rtt * 1e6:.0f} us", flush=True)
            await trio.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="physarum-demo", description=__doc__)
    parser.add_argument("--count", type=int, default=None, help="stop after this many pings")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between pings")
    args = parser.parse_args(argv)
    try:
        trio.run(_demo, args.count, args.interval)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
