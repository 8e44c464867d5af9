"""The ``physarum`` command, logging set-up, the ping summary and one-line failure reasons."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from pathlib import Path

import pytest
import trio

import physarum
from physarum.cli import __main__ as physarum_main
from physarum.cli import key, peer
from physarum.cli.flags import UsageError
from physarum.cli.node import MAX_LOG_LINE, load_dht_state, save_dht_state, setup_logging, short_reason
from physarum.dht.table import Contact, RoutingTable
from physarum.errors import DialError, PeerIdMismatchError
from physarum.overlay.identity import KeyPair
from physarum.overlay.multiaddr import Multiaddr
from physarum.psk import PskMismatchError, load_key_file


def test_physarum_command_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    assert physarum_main.main([]) == 2
    assert "usage: physarum COMMAND" in capsys.readouterr().err
    assert physarum_main.main(["-help"]) == 0
    out = capsys.readouterr().out
    for command in ("ping-monitor", "bootstrap", "peer", "demo", "key generate"):
        assert command in out
    assert physarum_main.main(["version"]) == 0
    assert capsys.readouterr().out == f"physarum {physarum.__version__}\n"
    assert physarum_main.main(["frobnicate"]) == 2
    assert capsys.readouterr().err == "physarum: unknown command 'frobnicate' (see physarum -help)\n"


def test_help_texts_are_plain(capsys: pytest.CaptureFixture[str]) -> None:
    commands = [["ping-monitor"], ["bootstrap"], ["peer"], ["demo"], ["key"], ["key", "generate"]]
    commands += [["peer", sub] for sub in ("ping", "find", "publish")]
    for command in commands:
        with pytest.raises(SystemExit):
            physarum_main.main([*command, "-help"])
        # argparse wraps lines, so "(default" and "None)" may sit on two of them
        text = " ".join(capsys.readouterr().out.split())
        assert text.startswith("usage:"), command
        assert "``" not in text and ":func:" not in text and ":class:" not in text, command
        assert "default None" not in text and "(default )" not in text, command
        # -hostname labels metrics: only the node that serves them takes it
        assert ("-hostname" in text) == (command == ["ping-monitor"]), command


def test_key_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "k"
    assert key.main(["generate", "-o", str(path)]) == 0
    assert (path.stat().st_mode & 0o777) == 0o600
    first = load_key_file(path)
    assert key.main(["generate", "-o", str(path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert key.main(["generate", "-o", str(path), "-force"]) == 0
    assert load_key_file(path) != first
    assert key.main(["generate", "-o", str(path), "-encoding", "base64", "-force"]) == 0
    assert b"/base64/" in path.read_bytes()
    assert key.main([]) == 2


def test_debug_levels() -> None:
    root, own, lib = logging.getLogger(), logging.getLogger("physarum"), logging.getLogger("somelib")
    saved = root.level, own.level, list(root.handlers)
    try:
        setup_logging("")
        assert own.getEffectiveLevel() == logging.INFO and lib.getEffectiveLevel() == logging.WARNING
        setup_logging("physarum")
        assert own.getEffectiveLevel() == logging.DEBUG and lib.getEffectiveLevel() == logging.WARNING
        setup_logging("all")
        assert lib.getEffectiveLevel() == logging.DEBUG
        setup_logging("", quiet=True)
        assert own.getEffectiveLevel() == logging.WARNING
    finally:
        root.setLevel(saved[0])
        own.setLevel(saved[1])
        root.handlers[:] = saved[2]


def test_log_lines_are_cut(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        setup_logging("")
        logging.getLogger("physarum.test").warning("x" * 1000 + "\nsecond line")
        err = capsys.readouterr().err
        (line,) = err.splitlines()
        assert len(line) == MAX_LOG_LINE and line.endswith("...")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_short_reasons() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert short_reason(refused) == "connection refused"
    assert short_reason(DialError(None, {"/ip4/1.2.3.4/tcp/1": refused})) == "connection refused"
    assert short_reason(
        DialError(None, {"a": PskMismatchError(), "(deadline)": TimeoutError("x")})
    ).startswith("PSK mismatch")
    assert short_reason(PeerIdMismatchError("a", "b")) == "another peer answered (b)"
    assert short_reason(trio.TooSlowError()) == "timed out"
    assert len(short_reason(ValueError("y" * 500))) == 120


def test_ping_summary() -> None:
    text = peer.ping_summary("12D3KooWx", 4, [0.001, 0.002, 0.003], 3.0004)
    assert text.splitlines() == [
        "--- 12D3KooWx ping statistics ---",
        "4 transmitted, 3 received, 25% packet loss, time 3000ms",
        "rtt min/avg/max/mdev = 1.000/2.000/3.000/0.816 ms",
    ]
    assert (
        peer.ping_summary("p", 2, [], 1.0).splitlines()[1]
        == "2 transmitted, 0 received, 100% packet loss, time 1000ms"
    )


def test_main_api_is_importable_from_the_package() -> None:
    from physarum import KadDHT, PeerId, PingMonitor, open_host  # noqa: F401

    assert set(physarum.__all__) == {"__version__", *physarum._EXPORTS}
    for name in physarum.__all__:
        assert getattr(physarum, name) is not None
    with pytest.raises(AttributeError):
        _ = physarum.nothing_here  # type: ignore[attr-defined]


async def test_dht_state_is_private_and_in_unix_time(tmp_path: Path) -> None:
    me, other = KeyPair.generate().peer_id, KeyPair.generate().peer_id
    table = RoutingTable(me)
    table.add(Contact(other, (Multiaddr("/ip4/127.0.0.1/tcp/4001"),)), trio.current_time())
    path = tmp_path / "dht.json"
    old_umask = os.umask(0)  # the table lists who we talk to: private whatever the umask
    try:
        assert save_dht_state(str(path), table)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    # unix seconds, not trio's clock (which starts near 0 in a fresh process)
    assert abs(saved["saved_at"] - time.time()) < 60
    assert [abs(c["last_seen"] - time.time()) < 60 for c in saved["contacts"]] == [True]
    loaded = load_dht_state(str(path), me)
    assert loaded is not None and [c.peer_id for c in loaded] == [other]


def test_usage_error_exit_code() -> None:
    assert UsageError("x").exit_code == 2
