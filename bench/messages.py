"""Messages benchmark: persist and query through ``physarum sidecar`` processes (issue 10's goals).

    .venv/bin/python bench/messages.py [--quick] [--json PATH]

A bootstrap and four sidecars, each its own process on 127.0.0.1 with a private network and its
own SQLite file (``-messages-db``), so a persist on sidecar 0 is acknowledged by the three stores
closest to the topic (often itself among them). This process is the HTTP client (http.client,
keep-alive), as an application beside its sidecar would be.

* **persist**: sequential ``POST /v1/topics/T/messages`` of a small JSON message: signing, three
  stores' acknowledgements (over the overlay, each an SQLite commit), the HTTP round trip.
* **query 1,000**: ``GET /v1/topics/T/messages?limit=1000`` of a topic holding 1,000 messages: the
  closest stores asked at once and merged, chains checked (one signature per publisher).
* Baselines in the same run: ``GET /v1/info`` (the sidecar's HTTP floor) and, in this process, one
  SQLite insert + commit in WAL mode on the same disk (what one store's acknowledgement must cost).

A benchmark, not a test: it never asserts a timing. Results go to bench/results/messages.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import RESULTS, Goal, Run, print_table_report, progress, write_json

RESULTS_JSON = RESULTS / "messages.json"
PSK = "physarum messages bench"
PHYSARUM = [sys.executable, "-m", "physarum.cli"]
LOCAL = ["-p2p-listen-addr", "127.0.0.1:0"]
STORES = 4


def first_line(proc: subprocess.Popen[bytes], prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode().strip()
        if line.startswith(prefix):
            return line
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"{proc.args!r} did not print {prefix!r}")


class Api:
    """One keep-alive connection to a sidecar's API."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())

    def timed(self, method: str, path: str, body: Any = None, expect: int = 200) -> float:
        start = time.perf_counter()
        status, answer = self.call(method, path, body)
        elapsed = time.perf_counter() - start
        if status != expect:
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return elapsed


def sqlite_commit_s(directory: Path, n: int) -> list[float]:
    db = sqlite3.connect(directory / "baseline.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE m (k INTEGER PRIMARY KEY, v BLOB)")
    out = []
    blob = b"x" * 300
    for i in range(n):
        start = time.perf_counter()
        with db:
            db.execute("BEGIN")
            db.execute("INSERT INTO m VALUES (?, ?)", (i, blob))
        out.append(time.perf_counter() - start)
    db.close()
    return out


def run_all(quick: bool, tmp: Path) -> dict[str, Any]:
    n_persist = 100 if quick else 500
    n_query = 10 if quick else 30
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([*PHYSARUM, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        progress("starting a bootstrap and 4 sidecars")
        boot = start("bootstrap", *LOCAL, "-psk", PSK)
        boot_addr = first_line(boot, "/")
        urls = []
        for i in range(STORES):
            p = start("sidecar", *LOCAL, "-psk", PSK, "-api", "127.0.0.1:0", "-bootstrap", boot_addr,
                      "-messages-db", str(tmp / f"s{i}.db"))
            urls.append(first_line(p, "api ").split()[1])
        api = Api(urls[0])
        deadline = time.monotonic() + 60
        while True:  # until the writer knows enough stores for three acknowledgements
            status, answer = api.call("POST", "/v1/topics/warmup/messages", {"data": 0})
            if status == 201 and answer["stored"] == 3:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"fewer than 3 stores acknowledged: {answer}")
            time.sleep(0.1)
        out: dict[str, Any] = {}
        progress(f"{n_persist} persists")
        for i in range(20):  # the topic's own first persist asks the stores for the chain's head
            api.timed("POST", "/v1/topics/warm/messages", {"data": {"i": i}}, expect=201)
        info, persist = [], []
        for i in range(n_persist):
            info.append(api.timed("GET", "/v1/info"))
            persist.append(api.timed("POST", "/v1/topics/warm/messages",
                                     {"data": {"n": i, "text": "Hello World", "at": time.time()}}, expect=201))
        out["info_s"], out["persist_s"] = info, persist
        progress("filling a topic with 1,000 messages")
        for i in range(1000):
            api.timed("POST", "/v1/topics/big/messages", {"data": {"n": i, "text": "Hello World"}}, expect=201)
        reader = Api(urls[-1])
        status, answer = reader.call("GET", "/v1/topics/big/messages?limit=1000")
        if status != 200 or len(answer["messages"]) != 1000:
            raise RuntimeError(f"query returned {status}, {len(answer.get('messages', []))} messages")
        progress(f"{n_query} queries of 1,000")
        out["query_s"] = [reader.timed("GET", "/v1/topics/big/messages?limit=1000") for _ in range(n_query)]
        out["sqlite_commit_s"] = sqlite_commit_s(tmp, n_persist)
        return out
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer persists and queries")
    ap.add_argument("--json", type=Path, default=RESULTS_JSON, help=f"results file (default {RESULTS_JSON})")
    args = ap.parse_args()
    run = Run()
    with tempfile.TemporaryDirectory(prefix="physarum-bench-messages-") as tmp:
        r = run_all(args.quick, Path(tmp))
    run.finish()
    med = statistics.median
    persist_ms, query_ms = med(r["persist_s"]) * 1000, med(r["query_s"]) * 1000
    info_ms, commit_ms = med(r["info_s"]) * 1000, med(r["sqlite_commit_s"]) * 1000
    rows = [
        ["persist, 3 stores acknowledge", f"{persist_ms:.2f} ms", f"n={len(r['persist_s'])}",
         f"p90 {statistics.quantiles(r['persist_s'], n=10)[-1] * 1000:.2f} ms"],
        ["query of 1,000 messages", f"{query_ms:.1f} ms", f"n={len(r['query_s'])}", "one store's messages, two stores' ids"],
        ["baseline: GET /v1/info", f"{info_ms:.2f} ms", f"n={len(r['info_s'])}", "the API's HTTP floor"],
        ["baseline: SQLite insert + commit (WAL)", f"{commit_ms:.3f} ms", f"n={len(r['sqlite_commit_s'])}",
         "one store's write, in-process"],
    ]
    goals = [
        Goal("persist acknowledged by 3 stores (median)", "<= 10 ms", f"{persist_ms:.2f} ms", persist_ms <= 10),
        Goal("query of 1,000 messages (median)", "<= 50 ms", f"{query_ms:.1f} ms", query_ms <= 50),
    ]
    header = ["measure", "value", "samples", "note"]
    title = run.title("physarum messages benchmark", "quick" if args.quick else "full", "loopback, one process each")
    print_table_report(title, header, rows, goals, target_width=10)
    write_json(args.json, run.record(args.quick, rows=[dict(zip(header, row, strict=True)) for row in rows],
                                     goals=[g.as_json() for g in goals]))


if __name__ == "__main__":
    main()
