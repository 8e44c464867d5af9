"""``bootstrap``: a DHT server node other nodes join with ``-bootstrap``; redundant bootstraps join
each other (give every bootstrap the same list: a node skips its own address).

It runs the same node as ping-monitor (:func:`physarum.cli.node.run_node`: host and Kademlia DHT in
server mode) without the ping monitor and metrics.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from physarum.cli.flags import FlagParser, NodeOptions, add_node_flags, node_options, normalize_bool_flags
from physarum.cli.node import run_main, run_node, setup_logging

PROG = "bootstrap"
LISTEN_DEFAULT = ":4001"
KEYFILE_DEFAULT = "~/.privKeyBootstrap"

DESCRIPTION = """\
A DHT server node that other nodes join with -bootstrap. Redundant bootstraps join each other: give
every bootstrap the same -bootstrap list (a node skips its own address). The same node as
ping-monitor, without the pings and metrics."""

EPILOG = """\
Flags take one dash (Go style, as PhysarumSM) or two; values follow a space or '='.
Environment: P2P_PSK (passphrase, as -psk, but out of the process list), P2P_BOOTSTRAPS
(space-separated multiaddrs, as -bootstrap). A key file: physarum key generate -o swarm.key.
On start the node prints its multiaddrs, one per line, ending in /p2p/<peer id>."""


def build_parser() -> FlagParser:
    parser = FlagParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    add_node_flags(parser, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT)
    return parser


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> NodeOptions:
    """Parse bootstrap's command line.

    Raises:
        UsageError: bad flags or values, unusable key files.
    """
    args = build_parser().parse_args(normalize_bool_flags(argv))
    return node_options(args, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``bootstrap [flags]``."""
    argv = sys.argv[1:] if argv is None else argv

    async def start() -> None:
        opts = parse_args(argv, os.environ)
        setup_logging(opts.debug)
        await run_node(opts)

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
