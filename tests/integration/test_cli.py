"""The binaries as processes on 127.0.0.1: ping-monitor, bootstrap and peer together, signals, errors."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from physarum.overlay.host import open_host
from physarum.overlay.identity import KeyPair, load_key_pair, save_key_pair
from physarum.psk import load_key_file

SCRIPTS = Path(sys.executable).parent
PASS = "integration test passphrase"
LOCAL = ["-p2p-listen-addr", "127.0.0.1:0"]


def script(name: str) -> list[str]:
    """The argv that runs binary ``name``: the ``physarum`` console script with the command as its
    first argument (``ping-monitor`` also has a console script of its own, PhysarumSM's name)."""
    path = SCRIPTS / ("ping-monitor" if name == "ping-monitor" else "physarum")
    if not path.exists():
        pytest.fail(f"console script {path} is missing: run `.venv/bin/python -m pip install -e .`")
    return [str(path)] if name == "ping-monitor" else [str(path), name]


class Proc:
    """A running binary whose stdout and stderr are collected as they come."""

    def __init__(self, process: trio.Process, argv: list[str]) -> None:
        self.process = process
        self.argv = argv
        self.stdout = ""
        self.stderr = ""
        self._changed = trio.Event()
        self._eof = 0

    async def _pump(self, stream: trio.abc.ReceiveStream, name: str) -> None:
        async with stream:
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    break
                setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))
                self._changed.set()
                self._changed = trio.Event()
        self._eof += 1
        self._changed.set()

    async def wait_for(
        self, predicate: Callable[[Proc], bool], *, timeout: float = 15.0, what: str = ""
    ) -> None:
        try:
            with trio.fail_after(timeout):
                while not predicate(self):
                    if self._eof == 2:
                        raise AssertionError(f"{self.argv[0]} exited before {what}: {self.stderr}")
                    await self._changed.wait()
        except trio.TooSlowError:
            raise AssertionError(
                f"{what} not seen within {timeout} s\nstdout: {self.stdout}\nstderr: {self.stderr}"
            ) from None

    async def addrs(self, count: int = 1) -> list[str]:
        """The printed multiaddrs, once at least ``count`` lines are in (a pipe may split them)."""
        await self.wait_for(lambda p: p.stdout.count("\n") >= count, what="listen addresses")
        return [line for line in self.stdout.splitlines() if line]

    async def metrics_url(self) -> str:
        await self.wait_for(lambda p: "metrics at http://" in p.stderr, what="the metrics URL")
        match = re.search(r"metrics at (http://\S+)", self.stderr)
        assert match is not None
        return match.group(1)

    async def exit_within(self, seconds: float) -> int:
        with trio.fail_after(seconds):
            return await self.process.wait()


@asynccontextmanager
async def binary(argv: list[str], env: dict[str, str] | None = None) -> AsyncIterator[Proc]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("P2P_PSK", "P2P_BOOTSTRAPS")}
    full_env.update(env or {})
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env
    )
    proc = Proc(process, argv)
    async with trio.open_nursery() as nursery:
        assert process.stdout is not None and process.stderr is not None
        nursery.start_soon(proc._pump, process.stdout, "stdout")
        nursery.start_soon(proc._pump, process.stderr, "stderr")
        try:
            yield proc
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()


async def rtts(url: str) -> dict[str, float]:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    text = await trio.to_thread.run_sync(get)
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "ping_rtt":
                out[s.labels["targetHost"]] = s.value
    return out


async def wait_rtts(
    url: str, predicate: Callable[[dict[str, float]], bool], *, timeout: float, what: str
) -> float:
    """Poll /metrics until ``predicate(rtts)``; return how long it took."""
    start = trio.current_time()
    last: dict[str, float] = {}
    try:
        with trio.fail_after(timeout):
            while not predicate(last := await rtts(url)):
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"{what} not seen within {timeout} s; ping_rtt: {last}") from None
    return trio.current_time() - start


async def wait_gauge(url: str, name: str, expected: float, *, timeout: float) -> None:
    """Poll /metrics until the unlabelled gauge ``name`` reads ``expected``."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    seen: float | None = None
    try:
        with trio.fail_after(timeout):
            while True:
                text = await trio.to_thread.run_sync(get)
                for fam in text_string_to_metric_families(text):
                    for s in fam.samples:
                        if s.name == name:
                            seen = s.value
                if seen == expected:
                    return
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"{name} is {seen}, not {expected}, after {timeout} s") from None


def peer_id_of(addr: str) -> str:
    return addr.rsplit("/p2p/", 1)[1]


async def test_monitor_and_three_peers_as_processes(tmp_path: Path) -> None:
    monitor_argv = [
        *script("ping-monitor"),
        "-ephemeral",
        *LOCAL,
        "-prom-listen-addr",
        "127.0.0.1:0",
        "-psk",
        PASS,
    ]
    async with binary(monitor_argv) as monitor:
        (monitor_addr,) = await monitor.addrs()
        assert re.fullmatch(r"/ip4/127\.0\.0\.1/tcp/\d+/p2p/12D3KooW\w+", monitor_addr)
        url = await monitor.metrics_url()
        # one peer with flags in Go style, one with double dashes, one from the environment
        argvs = [
            ([*script("peer"), *LOCAL, "-psk", PASS, "-bootstrap", monitor_addr], None),
            (
                [
                    *script("peer"),
                    "--p2p-listen-addr=127.0.0.1:0",
                    f"--psk={PASS}",
                    f"--bootstrap={monitor_addr}",
                ],
                None,
            ),
            ([*script("peer"), *LOCAL], {"P2P_PSK": PASS, "P2P_BOOTSTRAPS": monitor_addr}),
        ]
        async with binary(*argvs[0]) as p1, binary(*argvs[1]) as p2, binary(*argvs[2]) as p3:
            ids = {peer_id_of((await p.addrs())[0]) for p in (p1, p2, p3)}
            await wait_rtts(url, lambda r: set(r) == ids, timeout=15, what="three ping_rtt series")
            assert all(0 < v < 1000 for v in (await rtts(url)).values())
            # The monitor runs the DHT: the peers that joined through it are in its routing table.
            await wait_gauge(url, "physarum_routing_table_peers", 3, timeout=10)

            # A peer stopped with SIGTERM exits 0 within 2 s and leaves the metrics within 2 intervals.
            p2.process.send_signal(signal.SIGTERM)
            assert await p2.exit_within(2) == 0
            gone = peer_id_of((await p2.addrs())[0])
            took = await wait_rtts(
                url, lambda r: gone not in r, timeout=2.0, what="the stopped peer's removal"
            )
            assert took <= 2.0
            # SIGINT works the same.
            p3.process.send_signal(signal.SIGINT)
            assert await p3.exit_within(2) == 0
        monitor.process.send_signal(signal.SIGTERM)
        assert await monitor.exit_within(2) == 0
        assert "Traceback" not in monitor.stderr


async def test_monitor_redials_a_restarted_bootstrap(tmp_path: Path) -> None:
    key = tmp_path / "bootstrap.key"
    async with binary([*script("bootstrap"), "-keyfile", str(key), *LOCAL, "-psk", PASS]) as boot:
        (boot_addr,) = await boot.addrs()
    assert boot.process.returncode is not None
    port = boot_addr.split("/tcp/")[1].split("/")[0]
    boot_id = peer_id_of(boot_addr)
    restart_argv = [
        *script("bootstrap"),
        "-keyfile",
        str(key),
        "-p2p-listen-addr",
        f"127.0.0.1:{port}",
        "-psk",
        PASS,
    ]
    monitor_argv = [
        *script("ping-monitor"),
        "-ephemeral",
        *LOCAL,
        "-prom-listen-addr",
        "127.0.0.1:0",
        "-psk",
        PASS,
    ]
    async with binary([*restart_argv]) as boot:
        assert await boot.addrs() == [boot_addr]  # same identity from the key file, same port
        async with binary([*monitor_argv, "-bootstrap", boot_addr]) as monitor:
            url = await monitor.metrics_url()
            await wait_rtts(url, lambda r: boot_id in r, timeout=15, what="the bootstrap's ping_rtt")
            boot.process.send_signal(signal.SIGTERM)
            assert await boot.exit_within(2) == 0
            await wait_rtts(url, lambda r: boot_id not in r, timeout=2.5, what="the bootstrap gone")
            async with binary(restart_argv) as boot_again:
                await boot_again.addrs()
                # dropped after less than 30 s: redialed after 1 s (then 2, 4 ...)
                await wait_rtts(url, lambda r: boot_id in r, timeout=10, what="the bootstrap back")


async def test_peer_ping_exit_status(tmp_path: Path) -> None:
    argv = [*script("bootstrap"), "-ephemeral", *LOCAL, "-psk", PASS]
    async with binary(argv) as boot:
        (addr,) = await boot.addrs()

        async def run(*args: str) -> subprocess.CompletedProcess[bytes]:
            return await trio.run_process(
                [*script("peer"), *args], capture_stdout=True, capture_stderr=True, check=False
            )

        ok = await run("ping", addr, "-count", "3", "-psk", PASS)
        assert ok.returncode == 0, ok.stderr
        lines = ok.stdout.decode().splitlines()
        assert len(lines) == 6
        for seq, line in enumerate(lines[:3], 1):
            match = re.fullmatch(rf"{peer_id_of(addr)}: seq={seq} time=(\d+\.\d+) ms", line)
            assert match and 0 < float(match.group(1)) < 1000
        # the summary, as ping(8) prints it
        assert lines[3] == f"--- {peer_id_of(addr)} ping statistics ---"
        assert re.fullmatch(r"3 transmitted, 3 received, 0% packet loss, time \d+ms", lines[4])
        assert re.fullmatch(r"rtt min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms", lines[5])
        wrong = await run("-psk", "another passphrase", "ping", addr, "-timeout", "3")
        assert wrong.returncode == 1
        assert wrong.stdout == b""
        assert len(wrong.stderr.decode().splitlines()) == 1
        assert "PSK mismatch" in wrong.stderr.decode()
    closed = await run("ping", addr, "-psk", PASS, "-timeout", "3")
    assert closed.returncode == 1
    assert closed.stderr.decode().startswith(f"peer ping: cannot reach {addr}: ")


@pytest.mark.parametrize("which", ["p2p", "prom"])
async def test_port_in_use_is_one_line_and_exit_2(which: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        if which == "p2p":
            argv = [
                *script("ping-monitor"),
                "-ephemeral",
                "-p2p-listen-addr",
                f"127.0.0.1:{port}",
                "-prom-listen-addr",
                "127.0.0.1:0",
            ]
            expected = f"ping-monitor: cannot listen on /ip4/127.0.0.1/tcp/{port}: address already in use"
        else:
            argv = [*script("ping-monitor"), "-ephemeral", *LOCAL, "-prom-listen-addr", f"127.0.0.1:{port}"]
            expected = f"ping-monitor: cannot serve metrics on 127.0.0.1:{port}: address already in use"
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [expected]


async def test_bootstrap_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = await trio.run_process(
            [*script("bootstrap"), "-ephemeral", "--p2p-listen-addr", f"/ip4/127.0.0.1/tcp/{port}"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"bootstrap: cannot listen on /ip4/127.0.0.1/tcp/{port}: address already in use"
    ]


async def test_demo_once() -> None:
    result = await trio.run_process(
        [*script("demo"), "--prom-port", "0", "--once"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert re.search(r"metrics +http://127\.0\.0\.1:\d+/metrics", out)
    rtt_lines = [line for line in out.splitlines() if line.startswith("ping_rtt{")]
    assert len(rtt_lines) == 3
    for line in rtt_lines:
        assert 0 < float(line.rsplit(" ", 1)[1]) < 1000


async def test_demo_port_busy_hint() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = await trio.run_process(
            [*script("demo"), "--prom-port", str(port)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    (line,) = result.stderr.decode().splitlines()
    assert "address already in use" in line and "--prom-port" in line


async def peer_cmd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("P2P_PSK", "P2P_BOOTSTRAPS")}
    with trio.fail_after(timeout):
        return await trio.run_process(
            [*script("peer"), *args], capture_stdout=True, capture_stderr=True, check=False, env=env
        )


async def find_until_found(peer_id: str, via: str, *, timeout: float = 20) -> list[str]:
    """``peer find PEER_ID`` until it succeeds (the network forms in the background); its addrs."""
    last: subprocess.CompletedProcess[bytes] | None = None
    try:
        with trio.fail_after(timeout):
            while True:
                last = await peer_cmd("find", peer_id, "-bootstrap", via, "-psk", PASS, "-timeout", "5")
                if last.returncode == 0:
                    return last.stdout.decode().splitlines()
                assert last.returncode == 1, last.stderr
    except trio.TooSlowError:
        raise AssertionError(f"peer {peer_id} not found within {timeout} s: {last}") from None


async def test_bootstrap_and_three_peers_publish_and_find(tmp_path: Path) -> None:
    state = tmp_path / "boot-dht.json"
    boot_argv = [*script("bootstrap"), "-keyfile", str(tmp_path / "boot.key"), *LOCAL, "-psk", PASS]
    async with binary([*boot_argv, "-dht-state", str(state)]) as boot:
        (boot_addr,) = await boot.addrs()
        peer_argv = [*script("peer"), *LOCAL, "-psk", PASS, "-bootstrap", boot_addr]
        async with binary(peer_argv) as p1, binary(peer_argv) as p2, binary(peer_argv) as p3:
            a1, a2, a3 = [(await p.addrs())[0] for p in (p1, p2, p3)]
            # find by peer id: the peer's multiaddrs, /p2p/ included, through another peer.
            assert await find_until_found(peer_id_of(a3), via=a1) == [a3]
            assert await find_until_found(peer_id_of(a2), via=a3) == [a2]

            data = {"actor": "receptionist", "port": 8080}
            published = await peer_cmd(
                "publish",
                "receptionist",
                "-data",
                json.dumps(data),
                "-endpoint",
                "/ip4/127.0.0.1/tcp/8080",
                "-bootstrap",
                a1,
                "-psk",
                PASS,
            )
            assert published.returncode == 0, published.stderr
            (line,) = published.stdout.decode().splitlines()
            report = json.loads(line)
            assert report["id"] == "receptionist" and report["stored"] == 4  # bootstrap + 3 peers

            found = await peer_cmd("find", "receptionist", "-bootstrap", a3, "-psk", PASS)
            assert found.returncode == 0, found.stderr
            (record_line,) = found.stdout.decode().splitlines()
            record = json.loads(record_line)
            assert record["id"] == "receptionist" and record["data"] == data
            assert record["publisher"] == report["publisher"]
            assert record["endpoints"] == ["/ip4/127.0.0.1/tcp/8080"]

            missing = await peer_cmd("find", "nobody", "-bootstrap", a2, "-psk", PASS)
            assert missing.returncode == 1 and missing.stdout == b""
            assert missing.stderr.decode().splitlines() == ["peer find: no contact record for 'nobody'"]

            # The bootstrap saves its routing table when it stops...
            boot.process.send_signal(signal.SIGTERM)
            assert await boot.exit_within(2) == 0
            saved = json.loads(state.read_text())
            assert saved["version"] == 2 and saved["self"] == peer_id_of(boot_addr)
            # last_seen in unix seconds (not the process's monotonic clock), all in the last minutes
            assert all(abs(c["last_seen"] - time.time()) < 600 for c in saved["contacts"])
            assert {c["peer_id"] for c in saved["contacts"]} == {peer_id_of(a) for a in (a1, a2, a3)}
            # ...and, restarted on another port without -bootstrap, rejoins through it: the peers
            # learn its new address.
            async with binary([*boot_argv, "-dht-state", str(state)]) as again:
                (new_addr,) = await again.addrs()
                assert new_addr != boot_addr and peer_id_of(new_addr) == peer_id_of(boot_addr)
                with trio.fail_after(20):
                    while (await find_until_found(peer_id_of(new_addr), via=a2)) != [new_addr]:
                        pass
                again.process.send_signal(signal.SIGTERM)
                assert await again.exit_within(2) == 0
                assert "Traceback" not in again.stderr
    assert "Traceback" not in boot.stderr


async def test_publish_exit_status_when_the_network_cannot_be_joined() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooWQrEbutuv991JegVdQhzqv6v3MKjckZRtkdKnKqvHuNVM"
    result = await peer_cmd(
        "publish", "svc", "-data", "{}", "-bootstrap", dead, "-psk", PASS, "-timeout", "2"
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        f"peer publish: cannot join the network: /ip4/127.0.0.1/tcp/{port}/p2p/12D3KooW..vHuNVM: "
        "connection refused"
    ]
    bad = await peer_cmd("publish", "svc", "-data", "{", "-bootstrap", dead)
    assert bad.returncode == 2 and len(bad.stderr.decode().splitlines()) == 1


def write_key(path: Path) -> str:
    """A fresh swarm key file, made by ``physarum key generate``; its path."""
    result = subprocess.run(
        [*script("key"), "generate", "-o", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return str(path)


async def test_one_shot_with_a_wrong_key_fails_fast_naming_the_psk_mismatch(tmp_path: Path) -> None:
    ours, theirs = write_key(tmp_path / "ours.key"), write_key(tmp_path / "theirs.key")
    async with binary([*script("bootstrap"), "-ephemeral", *LOCAL, "-psk-file", theirs]) as boot:
        (addr,) = await boot.addrs()
        for command in (["find", "receptionist"], ["publish", "svc", "-data", "{}"]):
            started = trio.current_time()
            result = await peer_cmd(*command, "-bootstrap", addr, "-psk-file", ours)
            took = trio.current_time() - started
            assert result.returncode == 1 and result.stdout == b""
            (line,) = result.stderr.decode().splitlines()
            assert line.startswith(f"peer {command[0]}: cannot join the network: ") and "PSK mismatch" in line
            assert len(line) < 200
            assert took < 3, f"took {took:.1f} s"


async def test_one_shot_through_a_bootstrap_without_kad_fails_at_once(tmp_path: Path) -> None:
    key = write_key(tmp_path / "swarm.key")
    async with open_host(psk=load_key_file(key), listen=["/ip4/127.0.0.1/tcp/0"]) as plain:  # no DHT
        started = trio.current_time()
        result = await peer_cmd("find", "receptionist", "-bootstrap", str(plain.addrs[0]), "-psk-file", key)
        took = trio.current_time() - started
    assert result.returncode == 1
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("peer find: cannot join the network: ") and "does not serve /ipfs/kad/1.0.0" in line
    assert took < 10, f"took {took:.1f} s (the command's deadline is 30 s)"


async def test_every_binary_listens_on_websocket_addresses(tmp_path: Path) -> None:
    """A /ws listen address works in the three binaries: each prints it, and a one-shot command
    joins through a /ws bootstrap address and finds a peer that listens on /ws only."""
    key = write_key(tmp_path / "swarm.key")
    ws = ["-p2p-listen-addr", "/ip4/127.0.0.1/tcp/0/ws"]
    monitor_argv = [*script("ping-monitor"), "-ephemeral", *ws, "-prom-listen-addr", "127.0.0.1:0", "-psk-file", key]
    async with binary(monitor_argv) as monitor:
        (monitor_addr,) = await monitor.addrs()
        assert re.fullmatch(r"/ip4/127\.0\.0\.1/tcp/\d+/ws/p2p/12D3KooW\w+", monitor_addr), monitor_addr
        boot_argv = [*script("bootstrap"), "-ephemeral", *ws, "-psk-file", key, "-bootstrap", monitor_addr]
        async with binary(boot_argv) as boot:
            (boot_addr,) = await boot.addrs()
            assert boot_addr.split("/p2p/")[0].endswith("/ws"), boot_addr
            async with binary([*script("peer"), *ws, "-psk-file", key, "-bootstrap", boot_addr]) as target:
                (target_addr,) = await target.addrs()
                assert target_addr.split("/p2p/")[0].endswith("/ws"), target_addr
                target_id = peer_id_of(target_addr)
                with trio.fail_after(20):
                    while True:
                        result = await peer_cmd("find", target_id, "-bootstrap", monitor_addr, "-psk-file", key)
                        if result.returncode == 0:
                            break
                        assert "not found" in result.stderr.decode(), result.stderr
                assert target_addr.split("/p2p/")[0] in result.stdout.decode()
                result = await peer_cmd("ping", target_addr, "-count", "2", "-psk-file", key)
                assert result.returncode == 0, result.stderr
                assert "2 transmitted, 2 received, 0% packet loss" in result.stdout.decode()


async def test_peer_ping_by_peer_id_through_the_dht(tmp_path: Path) -> None:
    key = write_key(tmp_path / "swarm.key")
    async with binary([*script("bootstrap"), "-ephemeral", *LOCAL, "-psk-file", key]) as boot:
        (boot_addr,) = await boot.addrs()
        async with binary([*script("peer"), *LOCAL, "-psk-file", key, "-bootstrap", boot_addr]) as target:
            (target_addr,) = await target.addrs()
            target_id = peer_id_of(target_addr)
            with trio.fail_after(20):
                while True:
                    result = await peer_cmd(
                        "ping", target_id, "-count", "2", "-bootstrap", boot_addr, "-psk-file", key
                    )
                    if result.returncode == 0:
                        break
                    # the target may not have joined the bootstrap's table yet
                    assert "not found" in result.stderr.decode(), result.stderr
            lines = result.stdout.decode().splitlines()
            assert lines[0].startswith(f"{target_id}: seq=1 time=")
            assert "2 transmitted, 2 received, 0% packet loss" in lines[-2]
        missing = KeyPair.generate().peer_id
        result = await peer_cmd(
            "ping", str(missing), "-bootstrap", boot_addr, "-psk-file", key, "-timeout", "5"
        )
        assert result.returncode == 1
        assert result.stderr.decode().splitlines() == [f"peer ping: peer {missing} not found in the DHT"]


async def metric_lines(url: str) -> list[str]:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    return (await trio.to_thread.run_sync(get)).splitlines()


async def test_one_shot_commands_leave_no_series_on_the_monitor(tmp_path: Path) -> None:
    key = write_key(tmp_path / "swarm.key")
    argv = [
        *script("ping-monitor"),
        "-ephemeral",
        *LOCAL,
        "-prom-listen-addr",
        "127.0.0.1:0",
        "-psk-file",
        key,
    ]
    async with binary(argv) as monitor:
        (addr,) = await monitor.addrs()
        url = await monitor.metrics_url()
        # A one-shot client with a known identity stays long enough to be pinged: its series appear...
        client_key = tmp_path / "client.key"
        save_key_pair(str(client_key), KeyPair.generate())
        client_id = str(load_key_pair(str(client_key)).peer_id)
        async with binary(
            [
                *script("peer"),
                "-keyfile",
                str(client_key),
                "-psk-file",
                key,
                "ping",
                addr,
                "-count",
                "20",
                "-interval",
                "0.2",
            ]
        ) as client:
            await wait_rtts(url, lambda r: client_id in r, timeout=10, what="the client's ping_rtt")
            assert await client.exit_within(15) == 0
        # ...and go as soon as it disconnects, with every other series of its identity.
        with trio.fail_after(3):
            while any(client_id in line for line in await metric_lines(url)):
                await trio.sleep(0.05)
        # Five more one-shots with fresh identities leave nothing behind either.
        for args in (
            ["find", "x"],
            ["find", "y"],
            ["find", "z"],
            ["publish", "a", "-data", "{}"],
            ["publish", "b", "-data", "{}"],
        ):
            result = await peer_cmd(*args, "-bootstrap", addr, "-psk-file", key, "-timeout", "10")
            assert result.returncode in (0, 1), result.stderr
        with trio.fail_after(3):
            while per_peer := [
                line for line in await metric_lines(url) if line.startswith("physarum_peer_reachable{")
            ]:
                await trio.sleep(0.05)
        assert per_peer == []


async def test_announce_replaces_the_printed_addresses(tmp_path: Path) -> None:
    argv = [
        *script("bootstrap"),
        "-ephemeral",
        *LOCAL,
        "-announce",
        "/ip4/198.51.100.7/tcp/4001",
        "-announce",
        "/dns/node.example/tcp/4001",
    ]
    async with binary(argv) as boot:
        addrs = await boot.addrs(2)
        ids = {peer_id_of(a) for a in addrs}
        assert len(ids) == 1
        (pid,) = ids
        assert addrs == [f"/ip4/198.51.100.7/tcp/4001/p2p/{pid}", f"/dns/node.example/tcp/4001/p2p/{pid}"]


def test_key_generate_writes_a_private_key_file(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    write_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_key_file(str(path))) == 32
    again = subprocess.run(
        [*script("key"), "generate", "-o", str(path)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2
    assert again.stderr.splitlines() == [f"physarum key: generate: {path} exists (give -force to replace it)"]
    printed = subprocess.run([*script("key"), "generate"], capture_output=True, check=False)
    assert printed.returncode == 0 and printed.stdout.startswith(b"/key/swarm/psk/1.0.0/\n/base16/\n")
