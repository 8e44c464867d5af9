"""``peer``: a node that joins the network and stays up, and one-shot subcommands for scripts.

    peer [flags]                          join via -bootstrap (with -psk), print our multiaddrs, stay up
    peer [flags] ping MADDR [-count N]    ping a peer; print one RTT per line; exit 0 if every ping came back
    peer find ... / peer publish ...      look up / publish contact records (need the DHT: not yet)

Without ``-keyfile`` a peer uses a fresh identity every run (several peers on one machine then never
share one by accident); give ``-keyfile PATH`` to keep it across restarts. The one-shot subcommands
do not listen and print only their results.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import trio
from multiaddr import Multiaddr

from physarum.cli.flags import (
    FlagParser,
    NodeOptions,
    UsageError,
    add_node_flags,
    flag,
    node_options,
    normalize_bool_flags,
    parse_peer_addr,
    positive_float,
    positive_int,
)
from physarum.cli.node import DIAL_ERRORS, describe_dial_error, run_main, run_node, setup_logging
from physarum.overlay import ping
from physarum.overlay.host import Host

PROG = "peer"
LISTEN_DEFAULT = ":0"
KEYFILE_DEFAULT: str | None = None  # a fresh identity unless -keyfile is given

EPILOG = """\
Flags take one dash (Go style, as PhysarumSM) or two; values follow a space or '='; node flags may
come before or after the subcommand. Environment: P2P_PSK (as -psk), P2P_BOOTSTRAPS (as -bootstrap).
Exit status: 0 success, 1 a ping failed or the peer was unreachable, 2 bad input."""

PING_ERRORS: tuple[type[BaseException], ...] = (*DIAL_ERRORS, trio.ClosedResourceError)

NEEDS_DHT = "not available yet: needs the DHT (physarum.dht), which this build does not include"


def build_parser() -> FlagParser:
    parser = FlagParser(prog=PROG, description=__doc__, epilog=EPILOG)
    add_node_flags(parser, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=FlagParser)
    ping_cmd = commands.add_parser("ping", help="ping a peer and print the RTTs", prog=f"{PROG} ping")
    ping_cmd.add_argument("target", metavar="MADDR", help="/ip4/HOST/tcp/PORT/p2p/PEER_ID")
    flag(ping_cmd, "count", type=positive_int, default=1, metavar="N", help="pings to send (default 1)")
    flag(
        ping_cmd,
        "interval",
        type=float,
        default=0.0,
        metavar="S",
        help="seconds between pings (default 0)",
    )
    flag(
        ping_cmd,
        "timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="deadline to connect, and for each ping (default 10)",
    )
    add_node_flags(ping_cmd, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, suppress=True)
    for name, what in (("find", "find a peer or contact record"), ("publish", "publish a contact record")):
        cmd = commands.add_parser(
            name, help=f"{what} (needs the DHT: not available yet)", prog=f"{PROG} {name}"
        )
        cmd.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def parse_args(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[argparse.Namespace, NodeOptions]:
    """Parse peer's command line; ``args.command`` is None, "ping", "find" or "publish".

    Raises:
        UsageError: bad flags or values, unusable key files, or a subcommand that needs the DHT.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(normalize_bool_flags(argv))
    if args.command in ("find", "publish"):
        raise UsageError(f"{args.command}: {NEEDS_DHT}")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "ping":
        args.target = parse_peer_addr(args.target, "ping")
        if args.interval < 0:
            raise UsageError("-interval must not be negative")
    opts = node_options(args, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, env=env)
    return args, opts


async def ping_peer(opts: NodeOptions, args: argparse.Namespace) -> int:
    """``peer ping``: 0 if every ping came back, 1 otherwise (messages on stderr)."""
    target = args.target
    host = Host(opts.key_pair, psk=opts.psk, listen=())
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        try:
            return await _ping(host, target, args.count, args.interval, args.timeout)
        finally:
            nursery.cancel_scope.cancel()


async def _ping(host: Host, target: Multiaddr, count: int, interval: float, timeout: float) -> int:
    try:
        conn = await host.connect(target, timeout=timeout)
        with trio.fail_after(timeout):
            stream = await conn.open_stream([ping.PROTOCOL_ID])
    except PING_ERRORS as e:
        print(f"{PROG} ping: cannot reach {target}: {describe_dial_error(e)}", file=sys.stderr, flush=True)
        return 1
    try:
        for seq in range(1, count + 1):
            if seq > 1 and interval > 0:
                await trio.sleep(interval)
            try:
                with trio.fail_after(timeout):
                    rtt = await ping.ping_once(stream)
            except trio.TooSlowError:
                print(f"{PROG} ping: seq={seq}: no echo within {timeout:g} s", file=sys.stderr, flush=True)
                return 1
            except PING_ERRORS as e:
                print(f"{PROG} ping: seq={seq}: {e}", file=sys.stderr, flush=True)
                return 1
            print(f"{conn.peer_id}: seq={seq} time={rtt * 1000:.3f} ms", flush=True)
    finally:
        await stream.aclose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``peer [flags] [ping MADDR | find ... | publish ...]``."""
    argv = sys.argv[1:] if argv is None else argv

    async def start() -> int:
        args, opts = parse_args(argv, os.environ)
        setup_logging(opts.debug, quiet=args.command is not None)
        if args.command == "ping":
            return await ping_peer(opts, args)
        await run_node(opts)
        return 0

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
