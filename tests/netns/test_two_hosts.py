"""Two machines in miniature: network namespaces joined by a veth pair (needs root and ``ip netns``).

A node bound to the wildcard address must advertise the address its veth has, not loopback, and a
peer in the other namespace must reach it at the address it printed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from physarum.psk import generate_psk, write_key_file
from tests.netns._netns import PYTHON, NetnsPair, ip, netns_pair, unavailable

#: Environment of the processes: no inherited network settings; stdout stays block-buffered, so a
#: node's multiaddr lines arrive in the one write its flush makes.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "P2P_PSK", "P2P_BOOTSTRAPS")}


@pytest.fixture
def pair() -> Iterator[NetnsPair]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with netns_pair() as p:
        yield p


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "swarm.key"
    write_key_file(path, generate_psk())
    return path


LIST_ADDRESSES = """
import json
from physarum.overlay import netif
found = netif.interface_addresses()
print(json.dumps({
    "all": [[a.interface, str(a.ip)] for a in found],
    "advertised4": [str(ip) for ip in netif.select_advertised(a for a in found if a.ip.version == 4)],
    "advertised6": [str(ip) for ip in netif.select_advertised(a for a in found if a.ip.version == 6)],
}))
"""


async def test_netif_lists_exactly_the_namespaces_addresses(pair: NetnsPair) -> None:
    # A second veth pair inside namespace a only, left down: its address must not be listed.
    ip("-n", pair.a, "link", "add", "pdown0", "type", "veth", "peer", "name", "pdown1")
    down_ip = pair.ip4_a.rsplit(".", 1)[0] + ".9"
    ip("-n", pair.a, "addr", "add", f"{down_ip}/32", "dev", "pdown0")
    with trio.fail_after(30):
        result = await trio.run_process(
            pair.exec_argv(pair.a, PYTHON, "-c", LIST_ADDRESSES),
            capture_stdout=True,
            capture_stderr=True,
            env=ENV,
        )
    found = json.loads(result.stdout)
    listed = {(name, addr) for name, addr in found["all"] if not addr.startswith("fe80:")}
    assert listed == {("lo", "127.0.0.1"), ("lo", "::1"), (pair.dev_a, pair.ip4_a), (pair.dev_a, pair.ip6_a)}
    assert all(name == pair.dev_a for name, addr in found["all"] if addr.startswith("fe80:"))
    assert found["advertised4"] == [pair.ip4_a]
    assert found["advertised6"] == [pair.ip6_a]  # not ::1, not fe80::


async def _read_addrs(stdout: trio.abc.ReceiveStream, stderr_text: list[bytes]) -> list[str]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stdout.receive_some()
        if not chunk:
            raise AssertionError(
                f"the node printed no address: {b''.join(stderr_text).decode(errors='replace')}"
            )
        data += chunk
    return data.decode().split()


async def _drain(stream: trio.abc.ReceiveStream, into: list[bytes]) -> None:
    while chunk := await stream.receive_some():
        into.append(chunk)


async def _ping_from(pair: NetnsPair, key_file: Path, target: str) -> tuple[int, str, str]:
    argv = [PYTHON, "-m", "physarum.cli", "peer", "-psk-file", str(key_file), "ping", target, "-count", "2"]
    with trio.fail_after(60):
        result = await trio.run_process(
            pair.exec_argv(pair.b, *argv), capture_stdout=True, capture_stderr=True, check=False, env=ENV
        )
    return result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")


async def test_ping_monitor_on_the_wildcard_advertises_its_veth_address(
    pair: NetnsPair, key_file: Path
) -> None:
    argv = [
        PYTHON, "-m", "physarum.cli", "ping-monitor", "-ephemeral", "-psk-file", str(key_file),
        "-p2p-listen-addr", ":0", "-p2p-listen-addr", "/ip6/::/tcp/0",
        "-prom-listen-addr", "127.0.0.1:0",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(
        pair.exec_argv(pair.a, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
    )
    assert process.stdout is not None and process.stderr is not None
    stderr: list[bytes] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process.stderr, stderr)
            with trio.fail_after(30):
                addrs = await _read_addrs(process.stdout, stderr)
            ip4 = [a for a in addrs if a.startswith("/ip4/")]
            ip6 = [a for a in addrs if a.startswith("/ip6/")]
            assert len(ip4) == 1 and ip4[0].startswith(f"/ip4/{pair.ip4_a}/tcp/"), addrs
            assert len(ip6) == 1 and ip6[0].startswith(f"/ip6/{pair.ip6_a}/tcp/"), addrs
            assert all("/p2p/12D3KooW" in a for a in addrs), addrs
            assert not any(loop in a for a in addrs for loop in ("/127.", "/::1/", "/fe80:")), addrs

            # From the other namespace, at exactly the printed addresses.
            for target in (ip4[0], ip6[0]):
                code, out, err = await _ping_from(pair, key_file, target)
                assert code == 0, f"peer ping {target} exited {code}: {err}"
                assert re.findall(r"seq=(\d+) time=", out) == ["1", "2"], out
            # ...and joins the network through the printed address: a DHT lookup of the monitor.
            monitor_id = ip4[0].rsplit("/p2p/", 1)[1]
            find = [PYTHON, "-m", "physarum.cli", "peer", "-psk-file", str(key_file), "-bootstrap", ip4[0],
                    "find", monitor_id]  # fmt: skip
            with trio.fail_after(60):
                found = await trio.run_process(
                    pair.exec_argv(pair.b, *find), capture_stdout=True, capture_stderr=True, check=False, env=ENV
                )
            out = found.stdout.decode(errors="replace")
            assert found.returncode == 0, found.stderr.decode(errors="replace")
            assert f"/ip4/{pair.ip4_a}/tcp/" in out, out
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                with trio.CancelScope(shield=True):
                    await process.wait()
    assert process.returncode == 0, b"".join(stderr).decode(errors="replace")
