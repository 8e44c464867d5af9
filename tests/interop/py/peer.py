# ruff: noqa: E402  (stdout is redirected before py-libp2p is imported)
"""py-libp2p 0.8.1 interop peer, driven over stdin/stdout JSON lines.

Run with the interpreter of tests/interop/py/.venv (see setup.sh), never with physarum's own.

    .venv/bin/python peer.py [--listen /ip4/127.0.0.1/tcp/0] [--seed HEX]
                             [--max-conns-per-peer N] [--autoconnect]

The node speaks TCP -> multistream -> /noise -> multistream -> /yamux/1.0.0 (no pnet, no plaintext,
no secio, no TLS, no mplex) and answers /ipfs/id/1.0.0, /ipfs/id/push/1.0.0 and /ipfs/ping/1.0.0.

stdout carries only JSON lines (one object per line, flushed); all logging goes to stderr.
On startup it prints
    {"event":"ready","peer_id":"12D3KooW...","addrs":["/ip4/127.0.0.1/tcp/PORT/p2p/12D3KooW..."]}
and later {"event":"connect"|"disconnect","peer_id":...} for every connection opened or closed.

Commands (one JSON object per line on stdin; "id" is echoed back; "timeout" in seconds is optional):
    {"id":1,"cmd":"dial","addr":MADDR}                 -> {"id":1,"ok":true,"peer_id":...}
    {"id":2,"cmd":"ping","peer":PEER_ID,"count":N}      -> {"ok":true,"rtts_ms":[...]}
    {"id":3,"cmd":"bench_ping","peer":PEER_ID,"count":N}-> {"ok":true,"rtts_us":[...]}
    {"id":4,"cmd":"bench_connect","addr":MADDR,"count":N} -> {"ok":true,"times_us":[...]}
    {"id":5,"cmd":"identify","peer":PEER_ID}            -> {"ok":true,"protocols":[...],...}
    {"id":6,"cmd":"peers"}                              -> {"ok":true,"peers":[...]}
    {"id":7,"cmd":"hangup","peer":PEER_ID}              -> {"ok":true}
    {"id":8,"cmd":"stop"}                               -> {"ok":true}, then exit 0
ping takes "impl":"libp2p" to use py-libp2p's own PingService client (whole-ms RTTs) instead.
ping/bench_ping/identify also accept "addr" (a /p2p/ multiaddr) instead of "peer": it is dialled first.
A failing command answers {"id":N,"ok":false,"error":"..."} and the process goes on.
The process exits 0 on "stop" or when stdin closes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import secrets
import sys
import time
from typing import Any

# --- stdout hygiene -------------------------------------------------------------------------------
# Keep a private handle on the real stdout for protocol lines, then point fd 1 (and sys.stdout) at
# stderr so nothing py-libp2p or its dependencies print can corrupt the JSON stream.
_OUT = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr


def emit(obj: dict[str, Any]) -> None:
    """Write one JSON line to the protocol stdout and flush it (synchronous: atomic under trio)."""
    _OUT.write(json.dumps(obj, separators=(",", ":")) + "\n")
    _OUT.flush()


import libp2p  # reconfigures the "libp2p" logger on import
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_ID
from libp2p.identity.identify.identify import ID as IDENTIFY_ID
from libp2p.identity.identify.pb.identify_pb2 import Identify
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import (
    PROTOCOL_ID as NOISE_PROTOCOL_ID,
)
from libp2p.security.noise.transport import (
    Transport as NoiseTransport,
)
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

log = logging.getLogger("interop-peer")

PING_LEN = 32
MAX_IDENTIFY_BYTES = 1 << 20


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # py-libp2p detaches its logger tree unless LIBP2P_DEBUG is set; keep its warnings on stderr.
    if not os.environ.get("LIBP2P_DEBUG"):
        lp = logging.getLogger("libp2p")
        lp.handlers[:] = [handler]
        lp.setLevel(logging.ERROR if level != "DEBUG" else logging.DEBUG)
        lp.propagate = False
        # some modules pin their own level (auto_connector forces INFO): let them inherit ours.
        for name, obj in list(logging.root.manager.loggerDict.items()):
            if name.startswith("libp2p.") and isinstance(obj, logging.Logger):
                obj.setLevel(logging.NOTSET)


class CommandError(Exception):
    pass


def _uvarint_decode(buf: bytes) -> tuple[int, int]:
    value = shift = 0
    for i, b in enumerate(buf[:10]):
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + 1
        shift += 7
    raise CommandError("bad uvarint length prefix")


async def _read_exactly(stream: INetStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except StreamEOF:
            chunk = b""
        if not chunk:
            raise CommandError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def _read_to_eof(stream: INetStream, limit: int) -> bytes:
    buf = bytearray()
    while True:
        try:
            chunk = await stream.read(65536)
        except StreamEOF:
            break
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise CommandError("identify message too large")
    return bytes(buf)


class EventNotifee(INotifee):
    """Reports connections opened/closed on stdout (one event per connection)."""

    async def opened_stream(self, network: Any, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: Any, stream: INetStream) -> None:
        return None

    async def connected(self, network: Any, conn: INetConn) -> None:
        self._emit("connect", conn)

    async def disconnected(self, network: Any, conn: INetConn) -> None:
        self._emit("disconnect", conn)

    async def listen(self, network: Any, maddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: Any, maddr: multiaddr.Multiaddr) -> None:
        return None

    @staticmethod
    def _emit(kind: str, conn: INetConn) -> None:
        try:
            peer = getattr(conn.muxed_conn, "peer_id", None)
            if peer is None:
                return
            ev: dict[str, Any] = {"event": kind, "peer_id": str(peer)}
            direction = getattr(conn, "direction", None)
            if direction is not None:
                ev["direction"] = str(getattr(direction, "name", direction)).lower()
            emit(ev)
        except Exception:  # best effort: never let reporting break the connection
            log.debug("notifee emit failed", exc_info=True)


class Peer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.seed:
            seed = bytes.fromhex(args.seed)
            if len(seed) != 32:
                seed = hashlib.sha256(seed).digest()
            key_pair = create_new_key_pair(seed)
        else:
            key_pair = create_new_key_pair()
        noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        conn_cfg = ConnectionConfig(max_connections_per_peer=args.max_conns_per_peer)
        self.listen_addr = multiaddr.Multiaddr(args.listen)
        self.host = new_host(
            key_pair=key_pair,
            sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},  # only /noise: no plaintext, secio, TLS
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},  # only /yamux/1.0.0: no mplex
            listen_addrs=[self.listen_addr],
            connection_config=conn_cfg,
        )
        self.swarm: Any = self.host.get_network()
        self.swarm.register_notifee(EventNotifee())

    # --- helpers -------------------------------------------------------------------------------
    def _forget_failures(self, peer: ID) -> None:
        # py-libp2p refuses to dial a peer for 60 s after all its addresses failed once (negative
        # cache). A test peer should retry when told to, so clear it before each explicit dial.
        cache = getattr(self.swarm, "_negative_peer_cache", None)
        if cache is not None:
            try:
                cache.evict(str(peer))
            except Exception:
                pass

    async def _connect_addr(self, addr: str) -> ID:
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:
            raise CommandError(f"bad multiaddr {addr!r} (need .../p2p/PEER_ID): {exc}") from exc
        self._forget_failures(info.peer_id)
        if not self.swarm.get_connections(info.peer_id):
            # py-libp2p dials at most ONE address per transport class, the first one it stored:
            # drop stale addresses (e.g. a restarted peer on a new port) so the given one is used.
            try:
                self.host.get_peerstore().clear_addrs(info.peer_id)
            except Exception:
                pass
        await self.host.connect(info)
        return info.peer_id

    async def _target(self, cmd: dict[str, Any]) -> ID:
        if cmd.get("addr"):
            return await self._connect_addr(str(cmd["addr"]))
        if not cmd.get("peer"):
            raise CommandError("missing 'peer' (or 'addr')")
        try:
            return ID.from_base58(str(cmd["peer"]))
        except Exception as exc:
            raise CommandError(f"bad peer id {cmd['peer']!r}: {exc}") from exc

    async def _ping_stream(self, peer: ID, count: int, clock_ns: bool) -> list[float] | list[int]:
        if count < 1:
            raise CommandError("count must be >= 1")
        stream = await self.host.new_stream(peer, [PING_ID])
        results: list[Any] = []
        ok = False
        try:
            for _ in range(count):
                payload = secrets.token_bytes(PING_LEN)
                if clock_ns:
                    t0 = time.perf_counter_ns()
                    await stream.write(payload)
                    echo = await _read_exactly(stream, PING_LEN)
                    results.append((time.perf_counter_ns() - t0) / 1000.0)
                else:
                    t0f = time.perf_counter()
                    await stream.write(payload)
                    echo = await _read_exactly(stream, PING_LEN)
                    results.append((time.perf_counter() - t0f) * 1000.0)
                if echo != payload:
                    raise CommandError("ping payload mismatch")
            ok = True
        finally:
            with trio.CancelScope(shield=True):
                try:
                    if ok:
                        await stream.close()  # yamux close = half-close (FIN) of our side
                    else:
                        await stream.reset()
                except Exception:
                    pass
        return results

    # --- commands ------------------------------------------------------------------------------
    async def cmd_dial(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if not cmd.get("addr"):
            raise CommandError("missing 'addr'")
        peer = await self._connect_addr(str(cmd["addr"]))
        return {"peer_id": str(peer)}

    async def cmd_ping(self, cmd: dict[str, Any]) -> dict[str, Any]:
        peer = await self._target(cmd)
        count = int(cmd.get("count", 1))
        if cmd.get("impl") == "libp2p":
            # py-libp2p's own client (PingService): whole-millisecond RTTs (time.monotonic),
            # one stream reused for the count, close_write after the last ping.
            from libp2p.host.ping import PingService

            rtts_int = await PingService(self.host).ping(peer, count)
            return {"peer_id": str(peer), "rtts_ms": [float(x) for x in rtts_int]}
        rtts = await self._ping_stream(peer, count, clock_ns=False)
        return {"peer_id": str(peer), "rtts_ms": rtts}

    async def cmd_bench_ping(self, cmd: dict[str, Any]) -> dict[str, Any]:
        peer = await self._target(cmd)
        rtts = await self._ping_stream(peer, int(cmd.get("count", 1000)), clock_ns=True)
        return {"peer_id": str(peer), "rtts_us": rtts}

    async def cmd_bench_connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if not cmd.get("addr"):
            raise CommandError("missing 'addr'")
        count = int(cmd.get("count", 20))
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(str(cmd["addr"])))
        except Exception as exc:
            raise CommandError(f"bad multiaddr: {exc}") from exc
        peer = info.peer_id
        times: list[float] = []
        for _ in range(count):
            await self._drop(peer)
            self._forget_failures(peer)
            t0 = time.perf_counter_ns()
            await self.host.connect(info)
            times.append((time.perf_counter_ns() - t0) / 1000.0)
        await self._drop(peer)
        return {"peer_id": str(peer), "times_us": times}

    async def cmd_identify(self, cmd: dict[str, Any]) -> dict[str, Any]:
        peer = await self._target(cmd)
        stream = await self.host.new_stream(peer, [IDENTIFY_ID])
        try:
            data = await _read_to_eof(stream, MAX_IDENTIFY_BYTES)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await stream.close()
                except Exception:
                    pass
        if not data:
            raise CommandError("empty identify response")
        length, n = _uvarint_decode(data)
        framing = "uvarint"
        if n + length == len(data):
            body = data[n:]
        else:  # some implementations send the bare protobuf
            body, framing = data, "raw"
        msg = Identify()
        msg.ParseFromString(body)

        def ma(b: bytes) -> str:
            try:
                return str(multiaddr.Multiaddr(b))
            except Exception:
                return "0x" + b.hex()

        out: dict[str, Any] = {
            "peer_id": str(peer),
            "protocols": list(msg.protocols),
            "listen_addrs": [ma(a) for a in msg.listen_addrs],
            "observed_addr": ma(msg.observed_addr) if msg.HasField("observed_addr") else None,
            "agent_version": msg.agent_version if msg.HasField("agent_version") else None,
            "protocol_version": msg.protocol_version if msg.HasField("protocol_version") else None,
            "framing": framing,
            "signed_peer_record": msg.HasField("signedPeerRecord") and len(msg.signedPeerRecord) > 0,
        }
        if msg.HasField("public_key"):
            try:
                from libp2p.crypto.serialization import deserialize_public_key

                pid = ID.from_pubkey(deserialize_public_key(msg.public_key))
                out["public_key_peer_id"] = str(pid)
            except Exception as exc:
                out["public_key_error"] = str(exc)
        return out

    async def cmd_peers(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"peers": [str(p) for p in self.host.get_connected_peers()]}

    async def cmd_hangup(self, cmd: dict[str, Any]) -> dict[str, Any]:
        peer = await self._target({"peer": cmd.get("peer")})
        await self._drop(peer)
        return {"peer_id": str(peer)}

    async def _drop(self, peer: ID) -> None:
        if self.swarm.get_connections(peer):
            await self.host.disconnect(peer)
        with trio.move_on_after(5):
            while self.swarm.get_connections(peer):
                await trio.sleep(0.001)

    # --- main loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        async with self.host.run(listen_addrs=[self.listen_addr]):
            if not self.args.autoconnect:
                # py-libp2p's AutoConnector redials every known peer (min 50 connections wanted,
                # checks every 10 s, 60 s back-off after a disconnect). Off unless asked for.
                ac = getattr(self.swarm, "auto_connector", None)
                if ac is not None:
                    await ac.stop()
            pid = self.host.get_id()
            addrs = [f"{a}/p2p/{pid}" for a in self.host.get_transport_addrs()]
            emit({"event": "ready", "peer_id": str(pid), "addrs": addrs})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_commands, nursery)
            with trio.move_on_after(3) as cs:
                cs.shield = True
                try:
                    await self.host.close()
                except Exception:
                    log.debug("close failed", exc_info=True)

    async def _read_commands(self, nursery: trio.Nursery) -> None:
        """Read JSON lines from stdin; on EOF cancel everything (the process then exits 0)."""
        buf = b""
        async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
            while True:
                data = await stdin.receive_some(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._dispatch(line, nursery)
        nursery.cancel_scope.cancel()

    def _dispatch(self, line: bytes, nursery: trio.Nursery) -> None:
        try:
            cmd = json.loads(line)
            if not isinstance(cmd, dict):
                raise ValueError("command must be a JSON object")
        except Exception as exc:
            emit({"id": None, "ok": False, "error": f"bad command line: {exc}"})
            return
        if cmd.get("cmd") == "stop":
            emit({"id": cmd.get("id"), "ok": True})
            nursery.cancel_scope.cancel()
            return
        nursery.start_soon(self._run_command, cmd)

    async def _run_command(self, cmd: dict[str, Any]) -> None:
        cid = cmd.get("id")
        name = cmd.get("cmd")
        handler = getattr(self, f"cmd_{name}", None) if isinstance(name, str) else None
        if handler is None:
            emit({"id": cid, "ok": False, "error": f"unknown command {name!r}"})
            return
        default_timeout = 300.0 if str(name).startswith("bench") else 30.0
        try:
            timeout = float(cmd.get("timeout", default_timeout))
            with trio.fail_after(timeout):
                result = await handler(cmd)
        except trio.TooSlowError:
            emit({"id": cid, "ok": False, "error": f"timed out after {timeout} s"})
        except Exception as exc:  # a failing command never kills the process
            log.debug("command %s failed", name, exc_info=True)
            text = f"{type(exc).__name__}: {exc}"
            cause = exc.__cause__ or exc.__context__
            if cause is not None and str(cause) and str(cause) not in text:
                text += f" ({type(cause).__name__}: {cause})"
            emit({"id": cid, "ok": False, "error": text})
        else:
            emit({"id": cid, "ok": True, **result})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    ap.add_argument("--seed", default=None, help="hex; 32 bytes = Ed25519 seed, else SHA-256 of it")
    ap.add_argument(
        "--max-conns-per-peer",
        type=int,
        default=ConnectionConfig().max_connections_per_peer,
        help="py-libp2p default 3: every dial then waits out the 250 ms happy-eyeballs delay; "
        "1 lets a dial return as soon as the connection is up",
    )
    ap.add_argument("--autoconnect", action="store_true", help="keep py-libp2p's AutoConnector running")
    ap.add_argument("--log-level", default=os.environ.get("INTEROP_PEER_LOG", "WARNING"))
    args = ap.parse_args()
    _configure_logging(args.log_level.upper())
    log.debug("py-libp2p %s", libp2p.__version__)
    code = 0
    try:
        trio.run(Peer(args).run)
    except KeyboardInterrupt:
        code = 130
    except BaseException as exc:
        log.exception("peer crashed: %s", exc)
        code = 1
    try:
        _OUT.flush()
    except Exception:
        pass
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
