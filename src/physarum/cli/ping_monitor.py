"""``ping-monitor``: the network's bootstrap and monitor node (a drop-in for PhysarumSM's).

It listens for peers, runs the Kademlia DHT in server mode (joining through its ``-bootstrap`` peers,
which it keeps connected), pings every connected peer every second and serves the RTTs, and the
routing table's size, for Prometheus at ``/metrics`` on ``-prom-listen-addr``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from physarum.cli import flags
from physarum.cli.node import MonitorOptions, run_main, run_node, setup_logging
from physarum.monitor.http import read_token_file
from physarum.monitor.ping_monitor import MAX_PEER_SERIES
from physarum.monitor.reclaim import restart_with_system_malloc

PROG = "ping-monitor"
LISTEN_DEFAULT = ":4001"
KEYFILE_DEFAULT = "~/.privKeyPing"
PROM_DEFAULT = ":9100"

DESCRIPTION = """\
The network's bootstrap and monitor node (a drop-in for PhysarumSM's ping-monitor): it listens for
peers, runs the Kademlia DHT in server mode (joining through its -bootstrap peers, which it keeps
connected), pings every connected peer every second and serves the RTTs for Prometheus at /metrics."""

EPILOG = """\
Flags take one dash (Go style, as PhysarumSM) or two; values follow a space or '='.
Environment: P2P_PSK (passphrase, as -psk, but out of the process list), P2P_BOOTSTRAPS
(space-separated multiaddrs, as -bootstrap). A key file: physarum key generate -o swarm.key.
On start the node prints its multiaddrs, one per line, ending in /p2p/<peer id>.
Exit status 2 on bad flags, key files or addresses; SIGINT/SIGTERM stop it cleanly."""


def build_parser() -> flags.FlagParser:
    parser = flags.FlagParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    flags.add_node_flags(parser, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT)
    group = parser.add_argument_group("monitor")
    flags.flag(
        group,
        "hostname",
        metavar="NAME",
        help="this node's name in the host label of ping_rtt and ping_ewma_rtt (default: the machine's name)",
    )
    flags.flag(
        group,
        "prom-listen-addr",
        default=PROM_DEFAULT,
        metavar="ADDR",
        help=f"serve /metrics on HOST:PORT, :PORT for every interface (default {PROM_DEFAULT})",
    )
    flags.flag(
        group,
        "prom-token-file",
        metavar="PATH",
        help="require 'Authorization: Bearer TOKEN' on /metrics, TOKEN read from PATH (Prometheus: "
        "authorization: {credentials_file: PATH}); default: no token",
    )
    flags.flag(
        group,
        "max-peer-series",
        type=flags.positive_int,
        default=MAX_PEER_SERIES,
        metavar="N",
        help="peers with series of their own at most; others are pinged and counted in totals only "
        f"(default {MAX_PEER_SERIES})",
    )
    flags.flag(
        group,
        "peer-histograms",
        action="store_true",
        help="an RTT histogram per peer (physarum_ping_rtt_seconds{peer}: 19 lines a peer in every scrape); "
        "default: only the histogram of all peers together (physarum_pings_rtt_seconds)",
    )
    flags.seconds_flag(group, "ping-interval", default=1.0, help="seconds between pings")
    flags.seconds_flag(group, "ping-timeout", default=5.0, help="deadline of one ping")
    flags.seconds_flag(group, "expiry", default=600.0, help="drop a peer's series after this long unseen")
    return parser


def parse_args(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[flags.NodeOptions, MonitorOptions]:
    """Parse ping-monitor's command line.

    Raises:
        UsageError: bad flags or values, unusable key files.
    """
    args = build_parser().parse_args(flags.normalize_bool_flags(argv, (*flags.BOOL_FLAGS, "peer-histograms")))
    host, port = flags.split_host_port(args.prom_listen_addr, "-prom-listen-addr")
    monitor = MonitorOptions(
        prom_host=host or None,
        prom_port=port,
        interval=args.ping_interval,
        timeout=args.ping_timeout,
        expiry=args.expiry,
        max_peer_series=args.max_peer_series,
        peer_histograms=args.peer_histograms,
        token=_read_token(args.prom_token_file),
    )
    opts = flags.node_options(args, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, env=env)
    return opts, monitor


def _read_token(path: str | None) -> str | None:
    """The token in ``-prom-token-file``, or None without the flag.

    Raises:
        UsageError: the file cannot be read or holds no valid token.
    """
    if path is None:
        return None
    try:
        return read_token_file(os.path.expanduser(path))
    except (OSError, ValueError) as e:
        raise flags.UsageError(f"bad -prom-token-file {path}: {getattr(e, 'strerror', None) or e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``ping-monitor [flags]``."""
    if argv is None:  # the program itself, not a caller in-process: memory must come back after crowds
        restart_with_system_malloc(["-m", "physarum.cli.ping_monitor", *sys.argv[1:]])
    argv = sys.argv[1:] if argv is None else argv

    async def start() -> None:
        opts, monitor = parse_args(argv, os.environ)
        setup_logging(opts.debug)
        await run_node(opts, monitor=monitor)

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
