"""Network namespaces for tests: two of them joined by a veth pair, torn down whatever happens.

Only root can make them, and only where ``ip netns`` works; elsewhere the tests that need them are
skipped, saying why. Every address lives on interfaces inside the namespaces made here
(10.77.X.0/24 and fd77:X::/64, X from the pid), so no packet leaves them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
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
