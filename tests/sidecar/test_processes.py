"""``physarum sidecar`` as processes on 127.0.0.1: two sidecars joined through a bootstrap, a third
joining through the API, driven over HTTP (urllib and curl); the token rules."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio

from physarum.overlay.identity import KeyPair
from tests.integration.test_cli import LOCAL, PASS, Proc, binary, script

CURL_TIMEOUT = 20


async def api_url(proc: Proc) -> str:
    await proc.wait_for(
        lambda p: "\napi http://" in "\n" + p.stdout and p.stdout.endswith("\n"), what="api URL"
    )
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("api ")]
    return line.split()[1]


async def p2p_addr(proc: Proc) -> str:
    await api_url(proc)
    return next(line for line in proc.stdout.splitlines() if line.startswith("/"))


async def call(
    method: str, url: str, body: Any = None, *, token: str | None = None, timeout: float = 40
) -> tuple[int, Any]:
    """(status, JSON body) of one request."""

    def run() -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    return await trio.to_thread.run_sync(run)


async def until(method: str, url: str, body: Any = None, *, ok: Any, timeout: float = 30) -> Any:
    """Repeat a request until ``ok(status, json)`` holds (the DHT converges), under a deadline."""
    last: tuple[int, Any] | None = None
    with trio.move_on_after(timeout):
        while True:
            last = await call(method, url, body)
            if ok(*last):
                return last[1]
            await trio.sleep(0.2)
    raise AssertionError(f"{method} {url}: last answer {last}")


async def curl(*args: str) -> tuple[int, Any]:
    done = await trio.run_process(
        ["curl", "-sS", "--max-time", str(CURL_TIMEOUT), "-w", "\n%{http_code}", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body, _, code = done.stdout.decode().rpartition("\n")
    return int(code), json.loads(body)


async def test_two_sidecars_through_a_bootstrap(tmp_path: Path) -> None:
    boot_argv = [*script("bootstrap"), "-keyfile", str(tmp_path / "boot.key"), *LOCAL, "-psk", PASS]
    async with binary(boot_argv) as boot:
        boot_addr = (await boot.addrs())[0]
        sidecar = [*script("sidecar"), *LOCAL, "-psk", PASS, "-api", "127.0.0.1:0"]
        async with (
            binary([*sidecar, "-bootstrap", boot_addr]) as a,
            binary([*sidecar, "-bootstrap", boot_addr]) as b,
            binary(sidecar) as c,
        ):
            url_a, url_b, url_c = [await api_url(p) for p in (a, b, c)]
            addr_a, addr_b = await p2p_addr(a), await p2p_addr(b)
            id_a, id_b = addr_a.rsplit("/", 1)[1], addr_b.rsplit("/", 1)[1]

            # info, through curl (a non-Python client)
            status, info = await curl(f"{url_a}/v1/info")
            assert status == 200 and info["peer_id"] == id_a and info["addrs"] == [addr_a]
            await until("GET", f"{url_a}/v1/info", ok=lambda s, j: j["joined"])
            await until("GET", f"{url_b}/v1/info", ok=lambda s, j: j["joined"])

            # join: c starts alone and joins through the API, as lightchain's JoinNetwork
            status, info = await call("GET", f"{url_c}/v1/info")
            assert (status, info["joined"], info["connected_peers"]) == (200, False, 0)
            status, joined = await curl(
                "-X", "POST", f"{url_c}/v1/join", "-d", json.dumps({"address": boot_addr})
            )
            assert (status, joined) == (200, {"peer_id": boot_addr.rsplit("/", 1)[1]})
            await until("GET", f"{url_c}/v1/info", ok=lambda s, j: j["joined"] and j["connected_peers"] >= 1)
            # a dial that fails is a 503 with the reason
            # (a peer nobody is connected to: every sidecar's message store may have dialed a already)
            dead = f"/ip4/127.0.0.1/tcp/1/p2p/{KeyPair.generate().peer_id}"
            status, err = await call("POST", f"{url_c}/v1/join", {"address": dead})
            assert (status, err["error"]) == (503, "unreachable") and "refused" in err["message"].lower()

            # find a's addresses from b, then ping it (dialed if not connected yet)
            found = await until("GET", f"{url_b}/v1/peers/{id_a}/addrs", ok=lambda s, j: s == 200)
            assert found == {"peer_id": id_a, "addrs": [addr_a]}
            status, pong = await call("POST", f"{url_b}/v1/peers/{id_a}/ping", {"count": 3})
            assert status == 200 and pong["peer_id"] == id_a
            assert len(pong["rtts_ms"]) == 3 and all(0 < r < 5000 for r in pong["rtts_ms"])
            status, peers = await call("GET", f"{url_b}/v1/peers")
            listed = {p["peer_id"]: p["rtt_ms"] for p in peers["peers"]}
            assert status == 200 and id_a in listed and listed[id_a] is not None and listed[id_a] > 0

            # a record published on a is found on b (and on c, which joined through the API)
            record = {
                "name": "receptionist",
                "data": {"port": 8080},
                "endpoints": ["/ip4/127.0.0.1/tcp/8080"],
                "ttl": 600,
            }
            status, published = await call("POST", f"{url_a}/v1/records", record)
            assert status == 200 and published["publisher"] == id_a and published["stored"] >= 1
            for url in (url_b, url_c):
                got = await until(
                    "GET", f"{url}/v1/records/receptionist", ok=lambda s, j: s == 200 and j["records"]
                )
                (r,) = got["records"]
                assert (r["name"], r["publisher"], r["data"], r["endpoints"]) == (
                    "receptionist",
                    id_a,
                    {"port": 8080},
                    ["/ip4/127.0.0.1/tcp/8080"],
                )
            status, none = await call("GET", f"{url_b}/v1/records/nobody-published-this")
            assert (status, none) == (200, {"records": []})

            # providers: b provides "hello"; a finds b
            status, provided = await call("POST", f"{url_b}/v1/providers/hello")
            assert status == 200 and provided["stored"] >= 1
            got = await until(
                "GET", f"{url_a}/v1/providers/hello", ok=lambda s, j: s == 200 and j["providers"]
            )
            assert [p["peer_id"] for p in got["providers"]] == [id_b]
            assert got["providers"][0]["addrs"] == [addr_b]

            # the server survived everything above
            assert (await call("GET", f"{url_a}/v1/info"))[0] == 200


async def test_a_non_loopback_api_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    argv = [*script("sidecar"), *LOCAL, "-psk", PASS, "-api", "0.0.0.0:0"]
    async with binary(argv) as proc:
        assert await proc.exit_within(20) == 2
        await proc.wait_for(lambda p: p.stderr.endswith("\n"), what="the error line")
    assert proc.stderr.count("\n") == 1 and "not loopback" in proc.stderr and "token" in proc.stderr
    assert proc.stdout == ""  # nothing was started


async def test_with_a_token_every_v1_request_needs_it(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    argv = [
        *script("sidecar"),
        *LOCAL,
        "-psk",
        PASS,
        "-api",
        "127.0.0.1:0",
        "-api-token-file",
        str(token_file),
    ]
    async with binary(argv) as proc:
        url = await api_url(proc)
        status, body = await curl(f"{url}/v1/info")
        assert (status, body["error"]) == (401, "unauthorized")
        status, body = await curl("-H", "Authorization: Bearer nope", f"{url}/v1/peers")
        assert status == 401
        status, body = await curl("-H", "Authorization: Bearer tok-123", f"{url}/v1/info")
        assert status == 200 and body["joined"] is False
        status, body = await curl(f"{url}/openapi.json")
        assert status == 200 and body["openapi"] == "3.1.0"
    # with the token from the environment, a non-loopback address is allowed (served on 0.0.0.0 here,
    # but only ever reached on 127.0.0.1)
    argv = [*script("sidecar"), *LOCAL, "-psk", PASS, "-api", "0.0.0.0:0"]
    async with binary(argv, env={"PHYSARUM_API_TOKEN": "env-tok"}) as proc:
        url = (await api_url(proc)).replace("0.0.0.0", "127.0.0.1")
        assert (await curl("-H", "Authorization: Bearer env-tok", f"{url}/v1/info"))[0] == 200
        assert (await curl(f"{url}/v1/info"))[0] == 401


def test_help_exits_0() -> None:
    done = subprocess.run([*script("sidecar"), "-help"], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0 and b"-api" in done.stdout


async def test_sigterm_stops_the_node_and_the_api() -> None:
    argv = [*script("sidecar"), *LOCAL, "-psk", PASS, "-api", "127.0.0.1:0"]
    async with binary(argv) as proc:
        url = await api_url(proc)
        assert (await call("GET", f"{url}/v1/info"))[0] == 200
        proc.process.send_signal(signal.SIGTERM)
        assert await proc.exit_within(10) == 0
