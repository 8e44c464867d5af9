"""Read a deployment's command lines with the binaries' own parsers (the deploy tests' shared part).

A manifest or unit file runs ``physarum COMMAND FLAGS...``; :func:`parse_node` parses FLAGS with the
same ``parse_args`` the binary runs, against files the caller has put where the command line names
them (key files are loaded, addresses checked), and reports the ports the node will use, whether
they came from flags or defaults.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from physarum.cli import peer, ping_monitor
from physarum.cli.__main__ import _PROGRAMS
from physarum.cli.flags import NodeOptions
from physarum.overlay.addr import tcp_endpoint

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "container" / "Dockerfile"

#: The commands a deployment may run as long-lived nodes, and the parsers checked against.
NODE_COMMANDS = ("ping-monitor", "peer")


@dataclass(frozen=True)
class ParsedNode:
    command: str
    opts: NodeOptions
    p2p_ports: tuple[int, ...]
    """TCP ports of the listen addresses (-p2p-listen-addr, or the command's default)."""
    metrics_port: int | None
    """Port of /metrics and /healthz (-prom-listen-addr, or the default; None: not served)."""


def parse_node(argv: Sequence[str], env: Mapping[str, str]) -> ParsedNode:
    """Parse ``physarum`` arguments (``argv[0]`` the command) as the binary does.

    Raises:
        AssertionError: not a long-lived node command, or a one-shot subcommand.
        UsageError: a flag the binary does not take, a bad value, an unreadable key file.
    """
    command, *flags = argv
    assert command in _PROGRAMS, f"physarum has no command {command!r}"
    assert command in NODE_COMMANDS, f"{command!r} is not a node that stays up: {NODE_COMMANDS}"
    if command == "ping-monitor":
        opts, monitor = ping_monitor.parse_args(flags, env)
        metrics_port: int | None = monitor.prom_port
    else:
        args, opts = peer.parse_args(flags, env)
        assert args.command is None, f"peer {args.command} is a one-shot command, not a node that stays up"
        metrics = peer.metrics_options(args)
        metrics_port = None if metrics is None else metrics.prom_port
    ports = tuple(tcp_endpoint(addr).port for addr in opts.listen)
    return ParsedNode(command, opts, ports, metrics_port)


def image_user() -> tuple[int, int]:
    """The ``USER uid:gid`` the image runs as (numeric, so Kubernetes can check runAsNonRoot)."""
    found = re.findall(r"^USER\s+(\d+):(\d+)\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert len(found) == 1, f"{DOCKERFILE}: want exactly one numeric USER uid:gid line, got {found}"
    uid, gid = found[0]
    return int(uid), int(gid)

