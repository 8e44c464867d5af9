"""``physarum demo services``, the README's second demo, run as a user runs it: the real command as a
process on 127.0.0.1, its printout, the requests it answers, and nothing left running after it."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request

import psutil
import pytest
import trio

from physarum.cli import __main__ as physarum_main
from tests.integration.test_cli import Proc, binary, script

PEER = r"12D3KooW[1-9A-HJ-NP-Za-km-z]+"


def _gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def check_printout(out: str) -> tuple[int, str, int]:
    """The demo's explanation holds together; (proxy port, instance peer id, instance pid)."""
    proxy = re.search(r"^client proxy  " + PEER + r"  http://127\.0\.0\.1:(\d+)/SERVICE/PATH$", out, re.M)
    assert proxy is not None, out
    port = int(proxy[1])
    assert re.search(r"^registered    hello-world: \S+ -m physarum\.cli hello$", out, re.M)
    assert f"$ curl 127.0.0.1:{port}/hello-world/\nHello, world\n" in out
    first = re.search(r"^first request   (\d+) ms, allocation included \((\d+) ms of it in the allocator", out, re.M)
    assert first is not None and 0 < int(first[2]) <= int(first[1]) < 30_000
    assert re.search(r"^next 5 requests [\d.]+ ms median, the same instance, no allocation", out, re.M)
    answered = re.search(
        r"^answered by     instance (" + PEER + r")\n +\(hello-world on 127\.0\.0\.1:\d+, pid (\d+)\), "
        r"started by (allocator [12])$", out, re.M)
    assert answered is not None, out
    instance, pid, starter = answered[1], int(answered[2]), answered[3]
    allocators = re.findall(r"^  (allocator [12]) +(\d+\.\d+) ms  (" + PEER + r")(.*)$", out, re.M)
    assert sorted(a[0] for a in allocators) == ["allocator 1", "allocator 2"], out
    rtts = [float(a[1]) for a in allocators]
    assert rtts == sorted(rtts) and all(0 < r < 1000 for r in rtts)  # nearest first
    nearest = allocators[0]
    assert nearest[3] == "  <- nearest: asked to start it" and nearest[0] == starter
    for name, _, peer, _ in allocators:  # the same ids as the nodes the demo listed
        assert re.search(rf"^{name}   {peer}  \(process runtime\)$", out, re.M)
    (line,) = re.findall(r"^  instance +(\d+\.\d+) ms  (" + PEER + r")  <- answered \(chosen at ([\d.]+) ms\)$", out, re.M)
    assert line[1] == instance and 0 < float(line[0]) < 1000 and 0 < float(line[2]) < 1000
    return port, instance, pid


async def test_demo_services_once() -> None:
    with trio.fail_after(60):
        result = await trio.run_process(
            [*script("demo"), "services", "-port", "0", "-once"], capture_stdout=True, capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode() + out
    _, _, pid = check_printout(out)
    assert _gone(pid), "the instance outlived the demo"
    assert "Ctrl-C" not in out  # -once does not stay up
    print("\n" + "\n".join(line for line in out.splitlines() if line.startswith(("first request", "next "))))


async def test_demo_services_port_busy_hint() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with trio.fail_after(30):
            result = await trio.run_process(
                [*script("demo"), "services", "-port", str(port)], capture_stdout=True, capture_stderr=True,
                check=False,
            )
    assert result.returncode == 2
    assert result.stdout == b""
    (line,) = result.stderr.decode().splitlines()
    assert f"127.0.0.1:{port}" in line and "address already in use" in line and "-port PORT" in line


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_demo_services_serves_curl_until_a_signal(signum: signal.Signals) -> None:
    async with binary([*script("demo"), "services", "-port", "0"]) as demo:
        proc: Proc = demo
        await proc.wait_for(lambda p: "Ctrl-C stops the demo" in p.stdout, timeout=60, what="the demo up")
        port, instance, pid = check_printout(proc.stdout)
        assert f"Try it:  curl 127.0.0.1:{port}/hello-world/" in proc.stdout

        for path in ("/hello-world/", "/hello-world/again?x=1"):
            status, headers, body = await trio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}{path}")
            assert (status, body) == (200, b"Hello, world\n")
            assert headers["physarum-instance"].startswith(f"{instance}; rtt-ms=")
        children = psutil.Process(proc.process.pid).children(recursive=True)
        assert [c.pid for c in children] == [pid]  # one instance, still the first one

        t0 = trio.current_time()
        proc.process.send_signal(signum)
        assert await proc.exit_within(5) == 0, proc.stderr
        stopped = trio.current_time() - t0
        await proc.wait_for(lambda p: "no instance left running" in p.stdout, timeout=5, what="the goodbye")
        assert f"stopped ({signum.name})" in proc.stdout
        assert all(_gone(c.pid) for c in children)
        print(f"\nstopped on {signum.name} in {stopped * 1000:.0f} ms")


def test_help_names_the_second_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert physarum_main.main(["-help"]) == 0
    assert re.search(r"^  demo services  .*:4200", capsys.readouterr().out, re.M)
    with pytest.raises(SystemExit):
        physarum_main.main(["demo", "-help"])
    assert "physarum demo services [flags]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        physarum_main.main(["demo", "services", "-help"])
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: physarum demo services") and "curl 127.0.0.1:4200/hello-world/" in text
    assert "``" not in text and ":data:" not in text and "default None" not in text
    assert physarum_main.main(["demo", "services", "-port", "65536"]) == 2
    assert capsys.readouterr().err == "physarum demo services: bad -port '65536': port 65536 is out of range\n"
