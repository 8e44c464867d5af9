"""Network namespaces for tests, torn down whatever happens (needs root and ``ip netns``).

Two shapes: :func:`netns_pair`, two namespaces joined by one veth pair, and :func:`lan`, N hosts
each in a namespace of its own, joined through veth pairs to a bridge that lives in one more namespace
(so nothing is added to the machine's own interfaces, and hosts of concurrent runs never meet). Every
address lives on interfaces inside the namespaces made here, so no packet leaves them.

Only root can make namespaces, and only where ``ip netns`` works; elsewhere the tests that need them
are skipped, saying why (:func:`unavailable`, checked once per process).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from tests._process import pid_alive

PYTHON = sys.executable


@dataclass(frozen=True)
class NetnsPair:
    """Namespaces ``a`` and ``b``; ``dev_a`` in ``a`` and ``dev_b`` in ``b`` are the two veth ends."""

    a: str
    b: str
    dev_a: str
    dev_b: str
    ip4_a: str
    ip4_b: str
    ip6_a: str
    ip6_b: str

    def exec_argv(self, namespace: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; raise with its stderr when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result


@functools.cache
def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can (probed once per process)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are a Linux feature"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs these tests as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"phys-probe-{os.getpid()}"
    try:
        ip("netns", "add", probe)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return f"`ip netns` is unavailable here: {e}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


@contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    """Two namespaces with lo up and a veth pair between them, addressed in a private /24 and /64."""
    pid = os.getpid()
    x = 1 + pid % 250
    tag = f"{pid}-{secrets.token_hex(2)}"  # the pid, and a stale namespace of a dead run never collides
    pair = NetnsPair(
        a=f"phys-a-{tag}",
        b=f"phys-b-{tag}",
        dev_a=f"pva{pid}"[:15],
        dev_b=f"pvb{pid}"[:15],
        ip4_a=f"10.77.{x}.1",
        ip4_b=f"10.77.{x}.2",
        ip6_a=f"fd77:{x:x}::1",
        ip6_b=f"fd77:{x:x}::2",
    )
    created: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            ip("netns", "add", ns)
            created.append(ns)
        # Both ends are made inside their namespaces: nothing appears in ours.
        ip(
            "link",
            "add",
            pair.dev_a,
            "netns",
            pair.a,
            "type",
            "veth",
            "peer",
            "name",
            pair.dev_b,
            "netns",
            pair.b,
        )
        for ns, dev, ip4, ip6 in (
            (pair.a, pair.dev_a, pair.ip4_a, pair.ip6_a),
            (pair.b, pair.dev_b, pair.ip4_b, pair.ip6_b),
        ):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{ip4}/24", "dev", dev)
            ip("-n", ns, "addr", "add", f"{ip6}/64", "dev", dev, "nodad")  # usable at once
            ip("-n", ns, "link", "set", dev, "up")
        yield pair
    finally:
        for ns in created:  # deleting a namespace deletes its veth end, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


# -- a LAN: N hosts on a bridge --

#: Every namespace :func:`lan` makes starts with this; a test process adds ``PID-RANDOM-`` to it, so
#: runs never share a name and leftovers of a crashed run can be told from a live run's.
NAME_PREFIX = "physarum-t-"

#: The hosts' /24: host i (from 0) is ``SUBNET.{i + 1}``. Each run has bridges of its own, so runs
#: side by side on one machine may use the same addresses.
SUBNET = "10.213.0"

#: The interface of each host (the veth end in its namespace): the same name everywhere, as on machines.
HOST_DEV = "eth0"

_SESSION = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(2)}-"
_LAN_NUMBERS = itertools.count()


@dataclass(frozen=True)
class NetHost:
    """One machine of a :class:`Lan`: namespace ``ns``, address ``ip4`` on :data:`HOST_DEV`, cabled to
    the bridge's port ``port`` (the other veth end, in the bridge's namespace)."""

    index: int
    ns: str
    ip4: str
    port: str

    def exec_argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this host (as a prefix for :func:`tests.integration.test_cli.binary`)."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def listen(self, port: int) -> str:
        """``HOST:PORT`` on this host's address, for ``-p2p-listen-addr`` and ``-prom-listen-addr``."""
        return f"{self.ip4}:{port}"


@dataclass(frozen=True)
class Lan:
    """Hosts cabled to one bridge, which lives in namespace ``bridge_ns``."""

    bridge_ns: str
    hosts: list[NetHost]

    def link_down(self, host: NetHost) -> None:
        """Cut ``host``'s cable: its bridge port goes down, so its packets are dropped silently (as a
        pulled cable or a failed switch port; its sockets see nothing but silence). Its processes run on.

        Raises:
            RuntimeError: ``ip`` failed.
        """
        ip("-n", self.bridge_ns, "link", "set", host.port, "down")

    def link_up(self, host: NetHost) -> None:
        """Plug ``host``'s cable back in (the bridge forwards at once: no STP).

        Raises:
            RuntimeError: ``ip`` failed.
        """
        ip("-n", self.bridge_ns, "link", "set", host.port, "up")


def remove_leftovers() -> list[str]:
    """Delete the namespaces a test process that no longer runs left behind (it was killed before its
    teardown); return their names. Namespaces of live runs are left alone."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    removed = []
    for line in listed.splitlines():
        name = line.split(" ", 1)[0]
        if not name.startswith(NAME_PREFIX):
            continue
        pid = name[len(NAME_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        if not name.startswith(_SESSION):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            removed.append(name)
    return removed



@contextmanager
def lan(n: int) -> Iterator[Lan]:
    """``n`` hosts, each a namespace with loopback up and ``SUBNET.{i + 1}/24`` on :data:`HOST_DEV`,
    cabled through veth pairs to a bridge in a namespace of its own; all of it deleted on exit, whatever
    happened (deleting a namespace deletes the veth ends in it).

    Raises:
        ValueError: ``n`` hosts do not fit in the /24.
        RuntimeError: ``ip`` failed (the part already made is deleted first).
    """
    if not 1 <= n <= 250:
        raise ValueError(f"1 to 250 hosts fit in {SUBNET}.0/24, not {n}")
    name = f"{_SESSION}{next(_LAN_NUMBERS)}"
    bridge = Lan(
        bridge_ns=f"{name}-br",
        hosts=[NetHost(i, f"{name}-h{i}", f"{SUBNET}.{i + 1}", f"port{i}") for i in range(n)],
    )
    created: list[str] = []
    try:
        ip("netns", "add", bridge.bridge_ns)
        created.append(bridge.bridge_ns)
        # STP off (the default) and no forwarding delay: a port forwards as soon as it is up.
        ip("-n", bridge.bridge_ns, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        ip("-n", bridge.bridge_ns, "link", "set", "br0", "up")
        for host in bridge.hosts:
            ip("netns", "add", host.ns)
            created.append(host.ns)
            # Made in the bridge's namespace with its peer end put straight into the host's: neither
            # end ever exists in the machine's own namespace.
            ip("-n", bridge.bridge_ns, "link", "add", host.port, "type", "veth", "peer", "name", HOST_DEV,
               "netns", host.ns)  # fmt: skip
            ip("-n", bridge.bridge_ns, "link", "set", host.port, "master", "br0", "up")
            ip("-n", host.ns, "link", "set", "lo", "up")
            ip("-n", host.ns, "addr", "add", f"{host.ip4}/24", "dev", HOST_DEV)
            ip("-n", host.ns, "link", "set", HOST_DEV, "up")
        yield bridge
    finally:
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


# -- talking to a host from the test process --

_CLONE_NEWNET = 0x40000000


def socket_in(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket of namespace ``ns``, for the test process itself to talk inside it.

    A socket belongs to the namespace of the thread that made it, for its whole life, and setns(2)
    moves only the calling thread: so a thread made for the purpose enters ``ns``, makes the socket
    and ends, and the test's other threads (trio's worker cache among them) never leave ours.

    Raises:
        OSError: ``ns`` does not exist, or setns(2) refused.
    """
    made: list[socket.socket | OSError] = []

    def make() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc().setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            made.append(socket.socket(family, kind))
        except OSError as e:
            made.append(e)

    thread = threading.Thread(target=make, name=f"setns {ns}")
    thread.start()
    thread.join()
    (result,) = made
    if isinstance(result, OSError):
        raise result
    return result


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


async def http_get(ns: str, url: str, *, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url`` (``http://IPV4:PORT/PATH``) from inside namespace ``ns``: the status and the body.

    Raises:
        OSError: the connection failed.
        trio.TooSlowError: no whole answer within ``timeout`` seconds.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    with trio.fail_after(timeout):
        sock = trio.socket.from_stdlib_socket(socket_in(ns))
        with sock:
            await sock.connect((parts.hostname, parts.port))
            request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
            await sock.send(request.encode())  # a few dozen bytes: one send takes them
            data = bytearray()
            while chunk := await sock.recv(65536):
                data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()
