"""Helpers shared by the integration tests: real hosts on 127.0.0.1, port 0, no readiness sleeps."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from physarum.overlay import addr as addrs_
from physarum.overlay import ping
from physarum.overlay.host import Connection, Host, open_host
from physarum.overlay.yamux import YamuxStream

ECHO = "/physarum-test/echo/1.0.0"
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
#: How often a poll re-checks its condition. Only ever used under a fail_after deadline.
POLL_INTERVAL = 0.005


async def wait_until(predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail (trio.TooSlowError) after ``timeout`` seconds."""
    try:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(POLL_INTERVAL)
    except trio.TooSlowError:
        raise AssertionError(f"{what} did not hold within {timeout} s") from None


class Recorder:
    """Records a host's connection callbacks; waiters wake on each callback (no polling)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.connected: list[Connection] = []
        self.disconnected: list[Connection] = []
        self._lot = trio.lowlevel.ParkingLot()
        host.on_connect.append(self._on_connect)
        host.on_disconnect.append(self._on_disconnect)

    def _on_connect(self, conn: Connection) -> None:
        self.connected.append(conn)
        self._lot.unpark_all()

    def _on_disconnect(self, conn: Connection) -> None:
        self.disconnected.append(conn)
        self._lot.unpark_all()

    async def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "condition"
    ) -> None:
        """Wait until ``predicate`` holds, re-checking after each callback; fail after ``timeout``."""
        try:
            with trio.fail_after(timeout):
                while not predicate():
                    await self._lot.park()
        except trio.TooSlowError:
            raise AssertionError(f"{what} did not hold within {timeout} s") from None

    async def wait_connected(self, n: int = 1, *, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: len(self.connected) >= n, timeout=timeout, what=f"{n} on_connect calls")

    async def wait_disconnected(self, n: int = 1, *, timeout: float = 5.0) -> None:
        await self.wait_for(
            lambda: len(self.disconnected) >= n, timeout=timeout, what=f"{n} on_disconnect calls"
        )


class HandlerLog:
    """A protocol handler that records every call (and echoes, so it is a real handler)."""

    def __init__(self) -> None:
        self.calls: list[YamuxStream] = []

    async def __call__(self, stream: YamuxStream) -> None:
        self.calls.append(stream)
        await echo_handler(stream)


async def echo_handler(stream: YamuxStream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(data)
    await stream.send_eof()


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise AssertionError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


async def echo_round_trip(stream: trio.abc.Stream, payload: bytes | None = None) -> None:
    payload = payload if payload is not None else os.urandom(1000)
    await stream.send_all(payload)
    assert await receive_exactly(stream, len(payload)) == payload


async def ping_on(conn: Connection) -> float:
    """One ping on a fresh stream of exactly this connection."""
    stream = await conn.open_stream([ping.PROTOCOL_ID])
    try:
        return await ping.ping_once(stream)
    finally:
        await stream.aclose()


def port_of(host: Host) -> int:
    return addrs_.tcp_endpoint(host.listen_addrs[0]).port


def connection_count(host: Host) -> int:
    return sum(len(conns) for conns in host.connections.values())


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the peer sends until it closes (EOF or reset)."""
    data = bytearray()
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return bytes(data)


async def wait_quiet(*conns: Connection, timeout: float = 5.0) -> None:
    """Wait until identify ran on every connection and no stream is left open on it."""
    with trio.fail_after(timeout):
        for conn in conns:
            await conn.identified.wait()
    await wait_until(
        lambda: all(not c.session.streams for c in conns), timeout=timeout, what="streams settle"
    )


@asynccontextmanager
async def host_pair(**kwargs: object) -> AsyncIterator[tuple[Host, Host]]:
    """Two running hosts on loopback, built with the same keyword arguments."""
    async with (
        open_host(None, listen=[LOOPBACK], **kwargs) as a,
        open_host(None, listen=[LOOPBACK], **kwargs) as b,
    ):
        yield a, b


async def connect_pair(a: Host, b: Host) -> tuple[Connection, Connection]:
    """``a`` dials ``b``; return (a's connection, b's connection) once both are identified and idle."""
    conn_a = await a.connect(b.addrs[0])
    await wait_until(lambda: b.connection(a.peer_id) is not None, what="inbound connection registered")
    conn_b = b.connection(a.peer_id)
    assert conn_b is not None
    await wait_quiet(conn_a, conn_b)
    return conn_a, conn_b


def count_tasks() -> int:
    """Every live task in this trio run."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
