"""``physarum hello``, the demo's HTTP service, as a real process on 127.0.0.1: GET, HEAD, other
methods, keep-alive, and its exit statuses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from physarum.cli import hello

STARTUP_DEADLINE = 15.0
IO_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SERVICE_PORT", "SERVICE_NAME")}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return {**env, **extra}


def connect_when_up(proc: subprocess.Popen[bytes], port: int) -> socket.socket:
    """A connection to the service, polled for under a deadline (the process must stay up)."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # polling a port that is not open yet: there is no event to wait on


class Client:
    """HTTP/1.1 over one connection, through h11."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)

    def request(self, method: str, target: str = "/", body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        headers = [(b"host", b"127.0.0.1")]
        if body or method == "POST":
            headers.append((b"content-length", str(len(body)).encode()))
        out = self.conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        self.sock.sendall(out + (self.conn.send(h11.EndOfMessage()) or b""))
        status, response_headers, data = 0, {}, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                status, response_headers = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, response_headers, data
            else:
                raise AssertionError(f"unexpected {event!r}")


@pytest.fixture(scope="module")
def service() -> Iterator[int]:
    """``python -m physarum.cli hello -port PORT`` running; its port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "physarum.cli", "hello", "-port", str(port)],
        env=child_env(SERVICE_NAME="greeter"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        connect_when_up(proc, port).close()
        yield port
        assert proc.poll() is None, "the service exited while tested"
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_get(service: int) -> None:
    with socket.create_connection(("127.0.0.1", service), timeout=IO_TIMEOUT) as sock:
        status, headers, body = Client(sock).request("GET", "/any/path?q=1")
    assert (status, body) == (200, b"Hello, world\n")
    assert headers[b"x-served-by"] == f"greeter@127.0.0.1:{service}".encode()
    assert headers[b"content-length"] == b"13"
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"


def test_keep_alive_head_and_other_methods_on_one_connection(service: int) -> None:
    with socket.create_connection(("127.0.0.1", service), timeout=IO_TIMEOUT) as sock:
        client = Client(sock)
        assert client.request("GET")[::2] == (200, b"Hello, world\n")
        # HEAD: the headers of a GET and no body (a body would be read as the next response)
        status, headers, body = client.request("HEAD")
        assert (status, headers[b"content-length"], body) == (200, b"13", b"")
        assert client.request("GET", "/again")[::2] == (200, b"Hello, world\n")
        # other methods: 405, and the connection stays usable, with or without a request body
        assert client.request("POST", "/", b"some=form&data=1")[::2] == (405, b"only GET and HEAD\n")
        assert client.request("DELETE")[::2] == (405, b"only GET and HEAD\n")
        assert client.request("POST")[::2] == (405, b"only GET and HEAD\n")
        assert client.request("GET")[::2] == (200, b"Hello, world\n")


def test_bad_requests_close_only_their_connection(service: int) -> None:
    with socket.create_connection(("127.0.0.1", service), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(65536) == b""  # closed, nothing sent
    with socket.create_connection(("127.0.0.1", service), timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and leaves mid-request
    with socket.create_connection(("127.0.0.1", service), timeout=IO_TIMEOUT) as sock:
        assert Client(sock).request("GET")[0] == 200


def test_takes_its_port_from_the_environment() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "physarum.cli", "hello"], env=child_env(SERVICE_PORT=str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with connect_when_up(proc, port) as sock:
            status, headers, _ = Client(sock).request("GET")
        assert (status, headers[b"x-served-by"]) == (200, f"hello@127.0.0.1:{port}".encode())
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_bad_usage_exits_2() -> None:
    done = subprocess.run([sys.executable, "-m", "physarum.cli", "hello", "-port", "nope"], env=child_env(),
                          capture_output=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr == b"physarum hello: give -port PORT or $SERVICE_PORT (got 'nope')\n"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "physarum hello: give -port PORT or $SERVICE_PORT (got '')\n"),
        ([], {"SERVICE_PORT": "x"}, "physarum hello: give -port PORT or $SERVICE_PORT (got 'x')\n"),
        (["-port", "70000"], {}, "physarum hello: give -port PORT or $SERVICE_PORT (got '70000')\n"),
        (["-port", "-1"], {}, "physarum hello: give -port PORT or $SERVICE_PORT (got '-1')\n"),
        (["-port"], {}, "usage: physarum hello [-port PORT]   (default $SERVICE_PORT)\n"),
        (["8080"], {}, "usage: physarum hello [-port PORT]   (default $SERVICE_PORT)\n"),
        (["-p", "8080"], {}, "usage: physarum hello [-port PORT]   (default $SERVICE_PORT)\n"),
    ],
)
def test_usage_errors(argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SERVICE_PORT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert hello.main(argv) == 2
    assert capsys.readouterr().err == message


def test_a_port_in_use_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "physarum.cli", "hello", "--port", str(port)],
                              env=child_env(), capture_output=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr == f"physarum hello: cannot listen on 127.0.0.1:{port}: Address already in use\n".encode()
