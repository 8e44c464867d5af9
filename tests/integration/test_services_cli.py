"""The service layer's binaries as processes on 127.0.0.1: ``physarum registry``, ``allocator`` and
``proxy`` (both modes) with a bootstrap, driven the way an operator would."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import psutil
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.integration._http import Client, http_service
from tests.integration.test_cli import LOCAL, PASS, Proc, binary, metric_lines, script

ENV = {"P2P_PSK": PASS}
HELLO = f"{sys.executable} -m physarum.cli hello"


async def registry_cmd(*args: str, boot: str, key: Path, timeout: float = 30) -> tuple[int, str, str]:
    with trio.fail_after(timeout):
        result = await trio.run_process(
            [*script("registry"), *args, "-bootstrap", boot, "-keyfile", str(key)],
            capture_stdout=True, capture_stderr=True, check=False, env={**_env(), **ENV},
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("P2P_PSK", "P2P_BOOTSTRAPS")}


async def proxy_port(proc: Proc) -> int:
    await proc.wait_for(lambda p: "proxy: http://127.0.0.1:" in p.stderr, what="the proxy's port")
    match = re.search(r"proxy: http://127\.0\.0\.1:(\d+)/", proc.stderr)
    assert match is not None
    return int(match.group(1))


async def allocator_metrics(proc: Proc) -> dict[str, float]:
    await proc.wait_for(lambda p: "metrics at http://" in p.stderr, what="the allocator's metrics URL")
    match = re.search(r"metrics at (http://\S+)", proc.stderr)
    assert match is not None
    text = "\n".join(await metric_lines(match.group(1))) + "\n"
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("physarum_allocator"):
                label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[sample.name + (f"{{{label}}}" if label else "")] = sample.value
    return out


async def test_registry_allocator_and_proxy_as_processes(tmp_path: Path) -> None:
    db = str(tmp_path / "registry.db")
    publisher, stranger = tmp_path / "publisher.key", tmp_path / "stranger.key"
    async with binary([*script("bootstrap"), *LOCAL, "-ephemeral"], ENV) as boot_proc:
        boot = (await boot_proc.addrs())[0]
        registry_argv = [*script("registry"), "serve", "-db", db, "-bootstrap", boot, *LOCAL]
        async with binary(registry_argv, ENV) as registry, \
                binary([*script("allocator"), "-bootstrap", boot, *LOCAL, "-metrics-listen-addr", "127.0.0.1:0"],
                       ENV) as allocator, \
                binary([*script("proxy"), "-bootstrap", boot, "0"], ENV) as proxy:
            await registry.addrs()
            port = await proxy_port(proxy)

            # the registry node may still be joining: the first add waits for it (-timeout)
            status, out, err = await registry_cmd("add", "hello-world", "-command", HELLO, "-soft-rtt-ms", "50",
                                                  boot=boot, key=publisher)
            assert status == 0, err
            added = json.loads(out)
            assert added["name"] == "hello-world" and added["service"]["soft_rtt_ms"] == 50
            # another key can neither replace nor delete it
            status, out, err = await registry_cmd("add", "hello-world", "-command", "evil", boot=boot, key=stranger)
            assert status == 1 and out == "" and "owned by" in err and err.count("\n") == 1
            status, out, err = await registry_cmd("delete", "hello-world", boot=boot, key=stranger)
            assert status == 1 and "owned by" in err
            # a malformed entry is refused before anything is sent
            status, out, err = await registry_cmd("add", "bad name", "-command", "x", boot=boot, key=publisher)
            assert status == 2 and "bad service name" in err

            client = await Client.open(port)
            assert await client.request("GET", "/hello-world/") == (200, b"Hello, world\n")
            assert await client.request("GET", "/hello-world/") == (200, b"Hello, world\n")
            assert await (await Client.open(port)).request("GET", "/nope/") == (
                404, b"no service named 'nope' in the registry\n")
            metrics = await allocator_metrics(allocator)
            assert metrics["physarum_allocator_allocations_total{result=started}"] == 1
            assert metrics["physarum_allocator_instances"] == 1
            assert metrics["physarum_allocator_allocation_seconds_count"] == 1
            children = psutil.Process(allocator.process.pid).children(recursive=True)
            assert len(children) == 1

            # the registry node restarts from its database
            registry.process.send_signal(signal.SIGTERM)
            assert await registry.exit_within(10) == 0
            async with binary(registry_argv, ENV) as registry2:
                await registry2.addrs()
                await registry2.wait_for(lambda p: "1 entry in" in p.stderr, what="the entry loaded")
                status, out, err = await registry_cmd("get", "hello-world", boot=boot, key=publisher)
                assert status == 0, err
                assert json.loads(out)["seq"] == added["seq"]
                status, out, err = await registry_cmd("list", boot=boot, key=publisher)
                assert status == 0 and [e["name"] for e in json.loads(out)] == ["hello-world"]
                status, out, err = await registry_cmd("delete", "hello-world", boot=boot, key=publisher)
                assert status == 0 and json.loads(out)["deleted"] is True
                status, out, err = await registry_cmd("get", "hello-world", boot=boot, key=publisher)
                assert status == 1 and "no service named 'hello-world'" in err

            # SIGTERM: the allocator stops its instances before it exits
            allocator.process.send_signal(signal.SIGTERM)
            assert await allocator.exit_within(15) == 0
            for child in children:
                assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
            assert "stopping hello-world" in allocator.stderr


BIG = 200 * 1000 * 1000


async def test_200_mb_each_way_through_the_proxy_processes(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery, \
            binary([*script("bootstrap"), *LOCAL, "-ephemeral"], ENV) as boot_proc:
        boot = (await boot_proc.addrs())[0]
        service_port = await nursery.start(http_service, "big")
        async with binary([*script("proxy"), "-bootstrap", boot, *LOCAL, "0", "big",
                           f"127.0.0.1:{service_port}", "0"], ENV) as sidecar, \
                binary([*script("proxy"), "-bootstrap", boot, "0"], ENV) as proxy:
            port = await proxy_port(proxy)
            await sidecar.addrs()
            with trio.fail_after(20):
                while True:  # until the sidecar's provider record is found
                    status, _ = await (await Client.open(port)).request("GET", "/big/x")
                    if status == 200:
                        break
                    await trio.sleep(0.1)
            procs = [psutil.Process(proxy.process.pid), psutil.Process(sidecar.process.pid)]
            before = [p.memory_info().rss for p in procs]
            peak = list(before)
            done = trio.Event()

            async def watch() -> None:
                while not done.is_set():
                    for i, p in enumerate(procs):
                        peak[i] = max(peak[i], p.memory_info().rss)
                    with trio.move_on_after(0.05):
                        await done.wait()

            nursery.start_soon(watch)
            client = await Client.open(port)
            t0 = trio.current_time()
            assert await client.request("POST", "/big/count", BIG) == (200, str(BIG).encode())
            t1 = trio.current_time()
            assert await client.request("GET", f"/big/big?n={BIG}", count_only=True) == (200, str(BIG).encode())
            t2 = trio.current_time()
            done.set()
            growth = [(p - b) / 2**20 for p, b in zip(peak, before, strict=True)]
            print(f"\n200 MB up {BIG / 1e6 / (t1 - t0):.0f} MB/s, down {BIG / 1e6 / (t2 - t1):.0f} MB/s through "
                  f"the proxy processes; RSS growth: client proxy {growth[0]:.1f} MiB, sidecar {growth[1]:.1f} MiB")
            assert max(growth) < 32
            nursery.cancel_scope.cancel()
