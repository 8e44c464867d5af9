"""deploy/systemd: the units' command lines parsed by the binaries' own parsers, with the example
environment file, their state kept where the units keep it; and `systemd-analyze verify` accepts them
where systemd-analyze is installed (skipped, saying so, elsewhere).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy._nodes import ROOT, ParsedNode, parse_node

UNITS = ROOT / "deploy" / "systemd"
ENV_EXAMPLE = UNITS / "physarum.env.example"
MONITOR, PEER = "physarum-monitor.service", "physarum-peer.service"
VERIFY_TIMEOUT = 60.0


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd keys may repeat), continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"{path}: {line!r} before any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def start(unit_name: str, state: Path) -> ParsedNode:
    """Parse the unit's ExecStart as systemd would start it: %S is ``state``, the environment the
    example file's less what the unit unsets."""
    service = read_unit(UNITS / unit_name)["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start.replace("%S", str(state)))
    assert Path(argv[0]).name == "physarum", f"{unit_name} runs {argv[0]}, not physarum"
    (state_dir,) = service["StateDirectory"]
    (state / state_dir).mkdir(parents=True, exist_ok=True)
    for arg in argv:
        if arg.startswith(str(state)):
            assert arg.startswith(f"{state / state_dir}/"), f"{unit_name}: {arg} is outside its StateDirectory"
    env = read_env_file(ENV_EXAMPLE)
    for name in " ".join(service.get("UnsetEnvironment", [])).split():
        env.pop(name, None)
    return parse_node(argv[1:], env)


@pytest.mark.parametrize("unit_name", [MONITOR, PEER])
def test_unit_runs_real_flags_as_an_unprivileged_restarting_service(unit_name: str, tmp_path: Path) -> None:
    unit = read_unit(UNITS / unit_name)
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"]
    assert service.get("DynamicUser") == ["yes"] or "User" in service, "runs as root"
    assert service["EnvironmentFile"] == ["/etc/physarum/physarum.env"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert "network-online.target" in unit["Unit"]["After"][0].split()
    node = start(unit_name, tmp_path)
    assert node.opts.psk is not None, "the example environment gives no private-network key"
    assert node.opts.psk_source == "passphrase", "the key must come from P2P_PSK, not the command line"
    assert not node.opts.psk_in_argv
    assert node.p2p_ports == (4001,)
    assert node.metrics_port == 9100
    # The identity was created in the state directory: a restart keeps the peer id.
    again = start(unit_name, tmp_path)
    assert again.opts.key_pair.peer_id == node.opts.key_pair.peer_id


def test_peers_bootstrap_from_the_monitor_and_the_monitor_from_nobody(tmp_path: Path) -> None:
    monitor = start(MONITOR, tmp_path)
    peer = start(PEER, tmp_path)
    assert monitor.opts.bootstrap == [], "the monitor must not bootstrap from the peers' P2P_BOOTSTRAPS"
    assert peer.opts.bootstrap, "the example environment gives the peers no bootstrap address"
    assert {a.value_for_protocol("tcp") for a in peer.opts.bootstrap} == {str(monitor.p2p_ports[0])}


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        reason = "systemd-analyze is not installed here (Debian's systemd package has it)"
        print(reason)
        pytest.skip(reason)
    # verify checks that ExecStart's program exists: point it at this checkout's physarum.
    physarum = Path(sys.executable).parent / "physarum"
    for name in (MONITOR, PEER):
        text = (UNITS / name).read_text()
        assert text.count("/opt/physarum/bin/physarum") == 1
        (tmp_path / name).write_text(text.replace("/opt/physarum/bin/physarum", str(physarum)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / n) for n in (MONITOR, PEER))],
        capture_output=True, text=True, timeout=VERIFY_TIMEOUT,
    )
    # verify exits 0 on unknown keys and bad values (it ignores them, as systemd would): any output fails.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        f"systemd-analyze verify: status {result.returncode}\n{result.stdout}{result.stderr}"
    )
