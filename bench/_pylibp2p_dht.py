# ruff: noqa: E402  (stdout is redirected before py-libp2p is imported)
"""py-libp2p 0.8.1 kad-dht on N hosts in one process, for ``bench/dht.py``: lookups timed, JSON out.

Run with the interpreter of tests/interop/py/.venv (py-libp2p pins its own versions), never physarum's:

    tests/interop/py/.venv/bin/python bench/_pylibp2p_dht.py [--nodes 20] [--lookups 50] [--seed 1]

N py-libp2p hosts (TCP + Noise + yamux, as tests/interop/py/peer.py configures them, default
ConnectionConfig) listen on 127.0.0.1 in one trio process, each with ``KadDHT(host, DHTMode.SERVER)``.
Node 0 is the bootstrap node; every other node, one after another, connects to it, adds it to its
routing table and looks up its own id (``peer_routing.find_closest_peers_network(own id)``: the first
step of py-libp2p's ``refresh_routing_table``). The DHT service loop itself is not started, so its
periodic refresh (a self lookup plus one per bucket, at once and then every 10 min) stays out of the
timings; the stream handler that answers FIND_NODE is registered by the constructor. py-libp2p's
AutoConnector is stopped, as in the interop peer.

Then ``--lookups`` times: a random seeker looks up a random other node's id with
``find_closest_peers_network`` (the network lookup ``find_peer`` falls back to; success = the target
is among the result), and for the same pair calls ``KadDHT.find_peer`` (which answers from the routing
table or peer store first). Messages = FIND_NODE requests sent (counted by wrapping
``PeerRouting._query_peer_for_closest``). One JSON object on stdout; all logging goes to stderr.
"""

from __future__ import annotations

import os
import sys

_OUT = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr

import json
import logging
import random
import time
from contextlib import AsyncExitStack
from typing import Any

import multiaddr
import trio
from _harness import Found, failed, lookup_network_parser, summary, time_lookups
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
JOIN_TIMEOUT = 60.0
LOOKUP_TIMEOUT = 60.0


def _quiet_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR)
    lp = logging.getLogger("libp2p")
    lp.handlers[:] = [handler]
    lp.setLevel(logging.CRITICAL)
    lp.propagate = False
    for name, obj in list(logging.root.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(obj, logging.Logger):
            obj.setLevel(logging.NOTSET)


def _make_host(rng: random.Random) -> Any:
    key_pair = create_new_key_pair(rng.randbytes(32))
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=[multiaddr.Multiaddr(LOOPBACK)],
    )


class _Counter:
    """Counts FIND_NODE requests a node sends, by wrapping its PeerRouting query method."""

    def __init__(self, dht: Any) -> None:
        self.count = 0
        routing = dht.peer_routing
        inner = routing._query_peer_for_closest

        async def counted(peer: Any, target_key: bytes) -> Any:
            self.count += 1
            return await inner(peer, target_key)

        routing._query_peer_for_closest = counted


async def run(n: int, lookups: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    out: dict[str, Any] = {"implementation": "py-libp2p", "nodes": n}
    stage = "start hosts"
    try:
        async with AsyncExitStack() as stack:
            hosts = []
            for _ in range(n):
                host = _make_host(rng)
                await stack.enter_async_context(host.run(listen_addrs=[multiaddr.Multiaddr(LOOPBACK)]))
                ac = getattr(host.get_network(), "auto_connector", None)
                if ac is not None:
                    await ac.stop()
                hosts.append(host)
            try:
                import importlib.metadata as md

                out["version"] = md.version("libp2p")
            except Exception:
                out["version"] = "?"
            dhts = [KadDHT(h, DHTMode.SERVER) for h in hosts]
            counters = [_Counter(d) for d in dhts]
            boot = hosts[0]
            boot_addr = f"{boot.get_transport_addrs()[0]}/p2p/{boot.get_id()}"
            boot_info = info_from_p2p_addr(multiaddr.Multiaddr(boot_addr))
            stage = "join"
            t0 = time.perf_counter()
            for host, dht in zip(hosts[1:], dhts[1:], strict=True):
                with trio.fail_after(JOIN_TIMEOUT):
                    await host.connect(boot_info)
                    await dht.routing_table.add_peer(PeerInfo(boot_info.peer_id, boot_info.addrs))
                    await dht.peer_routing.find_closest_peers_network(host.get_id().to_bytes())
            out["join_s"] = time.perf_counter() - t0
            out["table_sizes"] = summary([float(d.get_routing_table_size()) for d in dhts])
            stage = "lookups"

            async def lookup(seeker: int, target: int) -> Found:
                peer_id, before = hosts[target].get_id(), counters[seeker].count
                with trio.fail_after(LOOKUP_TIMEOUT):
                    result = await dhts[seeker].peer_routing.find_closest_peers_network(peer_id.to_bytes())
                return Found(peer_id in result, float(counters[seeker].count - before))

            async def find_peer(seeker: int, target: int) -> bool:
                peer_id = hosts[target].get_id()
                with trio.fail_after(LOOKUP_TIMEOUT):
                    info = await dhts[seeker].find_peer(peer_id)
                return info is not None and info.peer_id == peer_id and bool(info.addrs)

            out.update(await time_lookups(n, lookups, rng, lookup, find_peer))
            out["connections"] = sum(len(h.get_connected_peers()) for h in hosts)
            stage = "close"
    except Exception as e:  # reported in the JSON, not raised
        if stage == "close" and "lookups" in out:
            out["close_error"] = f"{type(e).__name__}: {e}"
        else:
            return failed(stage, e, implementation="py-libp2p")
    out["ok"] = out.get("failure_count", 0) == 0
    return out


def main() -> None:
    args = lookup_network_parser(__doc__).parse_args()
    _quiet_logging()
    result = trio.run(run, args.nodes, args.lookups, args.seed)
    _OUT.write(json.dumps(result) + "\n")
    _OUT.flush()
    os._exit(0)  # py-libp2p may leave non-daemon threads behind


if __name__ == "__main__":
    main()
