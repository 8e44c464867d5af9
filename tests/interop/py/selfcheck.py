"""Throwaway self-check of peer.py: two py-libp2p peers dial, ping, identify and benchmark each other.

    tests/interop/py/.venv/bin/python tests/interop/py/selfcheck.py [--bench-pings N] [--bench-connects N]

Exits non-zero on the first failure. Not a pytest test.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOGS = Path(tempfile.mkdtemp(prefix="py-interop-selfcheck-"))  # peers' stderr, kept on failure
PEER = HERE / "peer.py"


class PeerProc:
    def __init__(self, name: str, *extra: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(LOGS / f"{name}.stderr", "w"),
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.next_id = 0
        threading.Thread(target=self._pump, daemon=True).start()
        t0 = time.monotonic()
        ready = self._next(lambda m: m.get("event") == "ready", 30)
        self.startup_s = time.monotonic() - t0
        self.peer_id: str = ready["peer_id"]
        self.addr: str = ready["addrs"][0]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                self.lines.put({"event": "garbage", "line": line})

    def _next(self, pred: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no matching line within {timeout} s")
            msg = self.lines.get(timeout=left)
            if msg.get("event") == "garbage":
                raise AssertionError(f"{self.name}: non-JSON on stdout: {msg['line']!r}")
            if pred(msg):
                return msg
            if "event" in msg:
                self.events.append(msg)

    def call(self, cmd: str, timeout: float = 60, **kw: Any) -> dict[str, Any]:
        self.next_id += 1
        cid = self.next_id
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": cid, "cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._next(lambda m: m.get("id") == cid, timeout)

    def ok(self, cmd: str, **kw: Any) -> dict[str, Any]:
        r = self.call(cmd, **kw)
        if not r.get("ok"):
            raise AssertionError(f"{self.name} {cmd} {kw}: {r}")
        return r

    def stop(self) -> int:
        try:
            self.call("stop", timeout=10)
        except Exception:
            pass
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-pings", type=int, default=1000)
    ap.add_argument("--bench-connects", type=int, default=20)
    args = ap.parse_args()

    a = PeerProc("a")
    b = PeerProc("b", "--seed", "00" * 31 + "01")
    c = PeerProc("c", "--max-conns-per-peer", "1")
    procs = [a, b, c]
    try:
        print(f"a ready {a.peer_id} {a.addr} ({a.startup_s:.2f} s)")
        print(f"b ready {b.peer_id} {b.addr} ({b.startup_s:.2f} s)")
        assert a.peer_id.startswith("12D3KooW") and "/tcp/0/" not in a.addr

        # seeded identity is deterministic
        b2 = PeerProc("b2", "--seed", "00" * 31 + "01")
        assert b2.peer_id == b.peer_id, (b2.peer_id, b.peer_id)
        assert b2.stop() == 0
        print("seeded identity reproducible")

        r = a.ok("dial", addr=b.addr)
        assert r["peer_id"] == b.peer_id
        assert b.peer_id in a.ok("peers")["peers"]
        time.sleep(0.3)
        assert a.peer_id in b.ok("peers")["peers"]
        print("a dialed b; both see each other")

        r = a.ok("ping", peer=b.peer_id, count=5)
        print(f"a->b ping rtts_ms {[round(x, 3) for x in r['rtts_ms']]}")
        r = b.ok("ping", peer=a.peer_id, count=5)
        print(f"b->a ping rtts_ms {[round(x, 3) for x in r['rtts_ms']]}")
        r = b.ok("ping", peer=a.peer_id, count=3, impl="libp2p")
        print(f"b->a ping (py-libp2p PingService) rtts_ms {r['rtts_ms']}")

        ident = a.ok("identify", peer=b.peer_id)
        print("a identify b:", json.dumps({k: v for k, v in ident.items() if k not in ("id", "ok")}))
        assert "/ipfs/ping/1.0.0" in ident["protocols"] and "/ipfs/id/1.0.0" in ident["protocols"]
        assert ident["public_key_peer_id"] == b.peer_id
        assert ident["listen_addrs"], ident
        ident = b.ok("identify", peer=a.peer_id)
        print("b identify a:", json.dumps({k: v for k, v in ident.items() if k not in ("id", "ok")}))

        # failures are answered, the process survives
        bad = a.call("ping", peer="12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA", count=1)
        assert bad["ok"] is False, bad
        t0 = time.monotonic()
        bad = a.call("dial", addr="/ip4/127.0.0.1/tcp/1/p2p/" + c.peer_id, timeout=30)
        print(f"failed dial answered in {time.monotonic() - t0:.2f} s: {bad}")
        assert bad["ok"] is False, bad
        bad = a.call("frobnicate")
        assert bad["ok"] is False, bad
        assert a.ok("peers")
        print("errors answered, process alive:", bad["error"])

        r = a.ok("bench_ping", peer=b.peer_id, count=args.bench_pings)
        rtts = r["rtts_us"]
        print(
            f"bench_ping a->b x{len(rtts)}: median {med(rtts):.1f} us, min {min(rtts):.1f}, max {max(rtts):.1f}"
        )

        a.ok("hangup", peer=b.peer_id)
        time.sleep(0.3)
        assert b.peer_id not in a.ok("peers")["peers"]
        print("hangup ok")

        r = a.ok("bench_connect", addr=b.addr, count=args.bench_connects)
        times = [t / 1000 for t in r["times_us"]]
        print(
            f"bench_connect a->b x{len(times)} (default max_conns_per_peer=3): "
            f"median {med(times):.1f} ms, min {min(times):.1f}, max {max(times):.1f}"
        )
        r = c.ok("bench_connect", addr=b.addr, count=args.bench_connects)
        times = [t / 1000 for t in r["times_us"]]
        print(
            f"bench_connect c->b x{len(times)} (max_conns_per_peer=1): "
            f"median {med(times):.1f} ms, min {min(times):.1f}, max {max(times):.1f}"
        )

        time.sleep(0.5)
        # drain events that arrived so far
        for p in procs:
            try:
                while True:
                    m = p.lines.get_nowait()
                    if "event" in m:
                        p.events.append(m)
            except queue.Empty:
                pass
        kinds = {p.name: [e["event"] for e in p.events] for p in procs}
        print("events:", {k: {e: v.count(e) for e in set(v)} for k, v in kinds.items()})
        assert "connect" in kinds["a"] and "disconnect" in kinds["a"]
    finally:
        codes = [p.stop() for p in procs]
    print("exit codes:", codes)
    assert codes == [0, 0, 0], codes

    # stdin EOF also ends the process with 0
    d = PeerProc("d")
    assert d.proc.stdin is not None
    d.proc.stdin.close()
    assert d.proc.wait(10) == 0
    print("stdin EOF -> exit 0")
    shutil.rmtree(LOGS, ignore_errors=True)
    print("selfcheck: OK")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Exception, KeyboardInterrupt):
        print(f"selfcheck: FAILED (peer stderr kept in {LOGS})", file=sys.stderr)
        raise
