"""``sidecar``: a node that serves the local HTTP/JSON API of :mod:`physarum.sidecar`.

See :data:`DESCRIPTION` (its -help text). The API is bound to loopback by default; binding any other
address needs a bearer token (``-api-token-file PATH`` or ``$PHYSARUM_API_TOKEN``), else the sidecar
refuses to start (exit status 2).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import trio

from physarum.cli.flags import (
    FlagParser,
    NodeOptions,
    UsageError,
    add_node_flags,
    flag,
    node_options,
    normalize_bool_flags,
    seconds_flag,
    split_host_port,
)
from physarum.cli.node import run_main, setup_logging, start_node
from physarum.errors import ConfigError, PhysarumError
from physarum.monitor.http import check_token, read_token_file
from physarum.sidecar.api import ApiOptions, SidecarApi
from physarum.sidecar.messages import MessageOptions, MessageService, MessageStore
from physarum.sidecar.server import ApiServer

log = logging.getLogger("physarum.cli")

PROG = "sidecar"
LISTEN_DEFAULT = ":0"
KEYFILE_DEFAULT: str | None = None  # a fresh identity unless -keyfile is given
API_DEFAULT = "127.0.0.1:9081"
#: Environment variable holding the API's bearer token (-api-token-file wins over it).
ENV_TOKEN = "PHYSARUM_API_TOKEN"

DESCRIPTION = f"""\
Run a node and serve a local HTTP/JSON API to it (OpenAPI document at /openapi.json):
info, join, peers, ping, find a peer's addresses, contact records, providers, and messages:
persist to a topic and query it back. Every sidecar also stores messages for the network, in
-messages-db (SQLite; kept only in memory when not given, with a warning).
Prints the node's multiaddrs, then "api http://HOST:PORT". The API listens on -api (default
{API_DEFAULT}); a non-loopback -api needs a token (-api-token-file or ${ENV_TOKEN}), and with a
token every /v1 request must send Authorization: Bearer TOKEN."""


def build_parser() -> FlagParser:
    parser = FlagParser(prog=PROG, description=DESCRIPTION)
    add_node_flags(parser, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT)
    flag(
        parser,
        "api",
        default=API_DEFAULT,
        metavar="HOST:PORT",
        help=f"the API's address (default {API_DEFAULT})",
    )
    flag(
        parser,
        "api-token-file",
        metavar="PATH",
        help=f"file holding the API's bearer token (or ${ENV_TOKEN})",
    )
    flag(
        parser,
        "messages-db",
        metavar="PATH",
        help="SQLite file where this node keeps the messages it stores (default: memory only)",
    )
    flag(
        parser,
        "messages-replicas",
        type=int,
        default=MessageOptions.replicas,
        metavar="N",
        help=f"stores that hold each topic (default {MessageOptions.replicas})",
    )
    seconds_flag(
        parser,
        "messages-sync-interval",
        default=MessageOptions.sync_interval,
        help="how often this store offers its topics to the others closest to them",
    )
    seconds_flag(
        parser, "api-dht-timeout", default=ApiOptions.dht_timeout, help="deadline of a DHT operation"
    )
    seconds_flag(
        parser, "api-dial-timeout", default=ApiOptions.dial_timeout, help="deadline of a join or a dial"
    )
    return parser


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or "" (every interface)


def parse_args(
    argv: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[argparse.Namespace, NodeOptions]:
    """Parse the command line; ``args.api_host``, ``args.api_port`` and ``args.token`` (or None) are set.

    Raises:
        UsageError: bad flags or values, an unreadable token file, a bad token, or a non-loopback
            -api without a token.
    """
    env = os.environ if env is None else env
    parser = build_parser()
    args = parser.parse_args(normalize_bool_flags(argv))
    opts = node_options(args, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, env=env)
    args.api_host, args.api_port = split_host_port(args.api, "-api")
    if args.messages_replicas < 1:
        raise UsageError(f"-messages-replicas must be at least 1, not {args.messages_replicas}")
    try:
        if args.api_token_file:
            args.token = read_token_file(args.api_token_file)
        elif env.get(ENV_TOKEN):
            args.token = check_token(env[ENV_TOKEN].strip())
        else:
            args.token = None
    except OSError as e:
        raise UsageError(f"cannot read -api-token-file: {e.strerror or e}") from None
    except ConfigError as e:
        raise UsageError(f"bad API token: {e}") from None
    if args.token is None and not _loopback(args.api_host):
        where = args.api_host or "every interface"
        raise UsageError(
            f"-api {args.api}: {where} is not loopback: give a token (-api-token-file or ${ENV_TOKEN})"
        )
    return args, opts


async def serve(opts: NodeOptions, args: argparse.Namespace) -> None:
    """Run the node and the API until SIGINT/SIGTERM.

    Raises:
        UsageError: a listen address or the API address cannot be bound.
    """
    async with trio.open_nursery() as nursery:

        node = await start_node(nursery, opts)
        options = ApiOptions(dht_timeout=args.api_dht_timeout, dial_timeout=args.api_dial_timeout)
        if args.messages_db is None:
            log.warning("no -messages-db: the messages this node stores are lost when it stops")
        try:
            store = MessageStore(args.messages_db or ":memory:")
        except PhysarumError as e:
            raise UsageError(str(e)) from None
        messages = MessageService(
            store,
            node.dht,
            MessageOptions(replicas=args.messages_replicas, sync_interval=args.messages_sync_interval),
        )
        node.host.add_service(messages)
        server = ApiServer(
            SidecarApi(node.host, node.dht, options, messages, node.host.key_pair),
            host=args.api_host or None,
            port=args.api_port,
            token=args.token,
        )
        try:
            await nursery.start(server.run)
        except OSError as e:
            raise UsageError(f"cannot serve the API on {args.api}: {e.strerror or e}") from None
        for url in server.urls:
            print(f"api {url}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``sidecar [node flags] [-api HOST:PORT] [-api-token-file PATH]``."""
    argv = sys.argv[1:] if argv is None else argv

    async def start() -> int:
        args, opts = parse_args(argv, os.environ)
        setup_logging(opts.debug)
        await serve(opts, args)
        return 0

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
