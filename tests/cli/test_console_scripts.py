"""The installed console scripts and the bin/ wrappers, run as processes (bad input only: no sockets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(sys.executable).parent


def run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("P2P_PSK", None)
    env.pop("P2P_BOOTSTRAPS", None)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)


def script(name: str) -> list[str]:
    """The argv that runs binary ``name``: the ``physarum`` console script with the command as its
    first argument (``ping-monitor`` also has a console script of its own, PhysarumSM's name)."""
    path = SCRIPTS / ("ping-monitor" if name == "ping-monitor" else "physarum")
    if not path.exists():
        pytest.fail(f"console script {path} is missing: run `.venv/bin/python -m pip install -e .`")
    return [str(path)] if name == "ping-monitor" else [str(path), name]


@pytest.mark.parametrize(
    ("name", "args", "start"),
    [
        ("ping-monitor", ["-bogus"], "ping-monitor: unrecognized arguments: -bogus"),
        (
            "ping-monitor",
            ["-ephemeral", "-bootstrap", "/ip4/127.0.0.1/tcp/1"],
            "ping-monitor: bad -bootstrap",
        ),
        ("bootstrap", ["-keyfile", "/nonexistent/dir/key"], "bootstrap: cannot create -keyfile"),
        (
            "peer",
            ["find", "12D3KooWQrEbutuv991JegVdQhzqv6v3MKjckZRtkdKnKqvHuNVM"],
            "peer: find: give -bootstrap MADDR",
        ),
        ("peer", ["publish"], "peer: the following arguments are required: NAME"),
        (
            "peer",
            [
                "publish",
                "receptionist",
                "-data",
                "not json",
                "-bootstrap",
                "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWQrEbutuv991JegVdQhzqv6v3MKjckZRtkdKnKqvHuNVM",
            ],
            "peer: publish: -data is not JSON",
        ),
    ],
)
def test_console_script_bad_input(name: str, args: list[str], start: str, tmp_path: Path) -> None:
    result = run([*script(name), *args], tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(start)


@pytest.mark.parametrize("name", ["ping-monitor", "bootstrap", "peer"])
def test_bin_wrappers(name: str, tmp_path: Path) -> None:
    wrapper = ROOT / "bin" / name
    assert os.access(wrapper, os.X_OK)
    result = run([str(wrapper), "-p2p-listen-addr", "/ip4/1.2.3.4/udp/1"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{name}: bad -p2p-listen-addr '/ip4/1.2.3.4/udp/1': want /ip4|ip6|dns/HOST/tcp/PORT, "
        "optionally /ws, then /p2p/PEER_ID"
    ]
    help_result = run([str(wrapper), "-help"], tmp_path)
    assert help_result.returncode == 0 and "-p2p-listen-addr" in help_result.stdout


def test_demo_bad_port(tmp_path: Path) -> None:
    result = run([*script("demo"), "--prom-port", "70000"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["physarum demo: --prom-port 70000 is out of range"]
