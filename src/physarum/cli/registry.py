"""``physarum registry``: the service registry's node and its command line (PhysarumSM's
``registry-service`` and ``registry-cli``; see :mod:`physarum.services.registry` for the design).

* ``registry serve [node flags] -db PATH [-admin PEER_ID ...]``: a registry node. It keeps entries in
  the SQLite file PATH, provides ``physarum-registry`` on the DHT and pulls the other registry
  nodes' entries; run two or more for a registry that outlives any one of them.
* ``registry add NAME -command "ARGV" | -image IMAGE [-soft-rtt-ms MS] [-hard-rtt-ms MS] [-cpu N]
  [-memory-mb N]``, ``registry add -file SERVICE.json``, ``registry get NAME``, ``registry list``,
  ``registry delete NAME``: one-shots that join through -bootstrap and print JSON on stdout.
  Entries are signed with -keyfile's identity (default ``~/.privKeyRegistry``, created if missing):
  only that key (or a registry admin's) may replace or delete them later. ``serve`` uses a fresh
  identity unless -keyfile is given.

Exit status: 0 done, 1 refused or failed (one line on stderr: the reason), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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
    positive_float,
    positive_int,
    seconds_flag,
)
from physarum.cli.node import run_main, setup_logging, start_node
from physarum.cli.peer import with_dht
from physarum.dht.service import KadDHT
from physarum.errors import ConfigError
from physarum.overlay.host import Host
from physarum.overlay.identity import PeerId
from physarum.services.network import OverlayNetwork
from physarum.services.registry import (
    RegistryClient,
    RegistryError,
    RegistryService,
    RegistryStore,
    ServiceInfo,
)

PROG = "physarum registry"
LISTEN_DEFAULT = ":0"
KEYFILE_DEFAULT = "~/.privKeyRegistry"
TIMEOUT_DEFAULT = 30.0

DESCRIPTION = """\
The service registry: name -> how to run the service and how close it must be, signed by its
publisher. 'serve' runs a registry node (SQLite); add/get/list/delete talk to the registry nodes found
through -bootstrap and print JSON."""

EPILOG = """\
Flags take one dash (Go style) or two. Environment: P2P_PSK, P2P_BOOTSTRAPS.
Examples:
  physarum registry serve -db registry.db -bootstrap /ip4/127.0.0.1/tcp/4001/p2p/ID
  physarum registry add hello-world -command "physarum hello" -soft-rtt-ms 5
  physarum registry list"""


def build_parser() -> FlagParser:
    parser = FlagParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    add_node_flags(parser, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=FlagParser, required=True)

    serve = commands.add_parser("serve", help="run a registry node", prog=f"{PROG} serve")
    flag(serve, "db", required=True, metavar="PATH", help="the SQLite file entries are kept in (created if missing)")
    flag(serve, "admin", action="append", default=[], metavar="PEER_ID",
         help="a key that may replace or delete any entry; repeatable")
    seconds_flag(serve, "sync-interval", default=30.0, help="how often to pull the other registry nodes' entries")
    add_node_flags(serve, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, suppress=True)

    add = commands.add_parser("add", help="add or replace a service (signed with -keyfile)", prog=f"{PROG} add")
    add.add_argument("name", nargs="?", metavar="NAME", help="the service's name (with -file: taken from the file)")
    flag(add, "file", metavar="PATH", help="the service as a JSON object (fields as 'registry get' prints)")
    flag(add, "command", dest="command_line", metavar="ARGV",
         help='the process runtime\'s command line, split as a shell would (no shell runs it): "physarum hello"')
    flag(add, "image", metavar="IMAGE", help="the container runtime's image (already in the engine)")
    flag(add, "soft-rtt-ms", type=positive_float, metavar="MS",
         help="an instance further than MS milliseconds makes the client allocate a nearer one")
    flag(add, "hard-rtt-ms", type=positive_float, metavar="MS", help="an instance further than MS is never used")
    flag(add, "cpu", type=positive_float, metavar="CORES", help="CPU an instance may use (container runtime)")
    flag(add, "memory-mb", type=positive_int, metavar="MIB", help="memory an instance may use (container runtime)")
    get = commands.add_parser("get", help="print a service's entry", prog=f"{PROG} get")
    get.add_argument("name", metavar="NAME")
    commands.add_parser("list", help="print every live entry", prog=f"{PROG} list")
    delete = commands.add_parser("delete", help="delete a service (signed with -keyfile)", prog=f"{PROG} delete")
    delete.add_argument("name", metavar="NAME")
    for name in ("add", "get", "list", "delete"):
        sub = commands.choices[name]
        seconds_flag(sub, "timeout", default=TIMEOUT_DEFAULT, help="deadline to join the network and get answers")
        add_node_flags(sub, listen_default=LISTEN_DEFAULT, keyfile_default=KEYFILE_DEFAULT, suppress=True)
    return parser


def service_from_args(args: argparse.Namespace) -> ServiceInfo:
    """The ServiceInfo ``registry add`` describes.

    Raises:
        UsageError: missing or contradictory fields, an unreadable file, or an invalid service.
    """
    try:
        if args.file is not None:
            if any(getattr(args, k) is not None for k in ("command_line", "image", "soft_rtt_ms", "hard_rtt_ms", "cpu", "memory_mb")):
                raise UsageError("-file describes the whole service: give no other service flags")
            try:
                with open(os.path.expanduser(args.file), encoding="utf-8") as f:
                    data = json.load(f)
            except OSError as e:
                raise UsageError(f"cannot read -file {args.file}: {e.strerror or e}") from None
            except ValueError as e:
                raise UsageError(f"-file {args.file} is not JSON: {e}") from None
            if isinstance(data, dict) and "service" in data and "name" in data and "seq" in data:
                data = data["service"]  # the output of `registry get`
            info = ServiceInfo.from_dict(data)
            if args.name is not None and args.name != info.name:
                raise UsageError(f"NAME {args.name!r} differs from the file's {info.name!r}")
            return info
        if args.name is None:
            raise UsageError("add: give NAME (or -file)")
        try:
            command = tuple(shlex.split(args.command_line)) if args.command_line is not None else ()
        except ValueError as e:
            raise UsageError(f"bad -command: {e}") from None
        return ServiceInfo(args.name, command, args.image, args.soft_rtt_ms, args.hard_rtt_ms, args.cpu, args.memory_mb)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[argparse.Namespace, NodeOptions]:
    """Raises:
        UsageError: bad flags or values, unusable key files, an invalid service for ``add``, a
            one-shot without -bootstrap.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(normalize_bool_flags(argv))
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    # A registry node needs no lasting identity (it is found through the DHT), and must not share
    # the one-shots' signing key: two hosts with one peer id on a machine cannot reach each other.
    keyfile_default = None if args.command == "serve" else KEYFILE_DEFAULT
    if args.command == "add":
        args.service = service_from_args(args)  # before the key file is created: bad input leaves nothing
    opts = node_options(args, listen_default=LISTEN_DEFAULT, keyfile_default=keyfile_default, env=env)
    if args.command == "serve":
        try:
            args.admins = [PeerId.from_string(a) for a in args.admin]
        except (ValueError, ConfigError) as e:
            raise UsageError(f"bad -admin: {e}") from None
    elif not opts.bootstrap and not (opts.dht_state and os.path.exists(opts.dht_state)):
        raise UsageError(f"{args.command}: give -bootstrap MADDR (or $P2P_BOOTSTRAPS) to reach the registry")
    return args, opts


async def serve(opts: NodeOptions, args: argparse.Namespace,
                *, task_status: trio.TaskStatus[RegistryService] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a registry node until SIGINT/SIGTERM.

    Raises:
        UsageError: the database cannot be opened, or an address cannot be bound.
    """
    from physarum.services.registry import RegistryOptions

    try:
        store = RegistryStore(os.path.expanduser(args.db), admins=args.admins)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    try:
        async with trio.open_nursery() as nursery:

            running = await start_node(nursery, opts)
            network = OverlayNetwork(running.host, running.dht)
            service = RegistryService(store, running.dht, RegistryClient(network),
                                      RegistryOptions(sync_interval=args.sync_interval))
            service.attach(running.host)
            await nursery.start(service.run)
            print(f"registry: {len(store.live())} entr{'y' if len(store.live()) == 1 else 'ies'} in {args.db}",
                  file=sys.stderr, flush=True)
            task_status.started(service)
    finally:
        store.close()


def _print(obj: object) -> None:
    print(json.dumps(obj, indent=2))
    sys.stdout.flush()


def _fail(command: str, message: str) -> int:
    print(f"{PROG} {command}: {message}", file=sys.stderr, flush=True)
    return 1


async def one_shot(opts: NodeOptions, args: argparse.Namespace) -> int:
    """add, get, list or delete; prints JSON. Returns the exit status."""

    async def work(host: Host, dht: KadDHT, timeout: float) -> int:
        client = RegistryClient(OverlayNetwork(host, dht), timeout=timeout)
        try:
            if args.command == "add":
                entry = await client.publish(opts.key_pair, args.service)
            elif args.command == "get":
                entry = await client.get(args.name)
            elif args.command == "delete":
                entry = await client.delete(opts.key_pair, args.name)
            else:
                _print([e.to_dict() for e in await client.list()])
                return 0
        except RegistryError as e:
            return _fail(args.command, e.message)
        _print(entry.to_dict())
        return 0

    return await with_dht(opts, args.command, args.timeout, work)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``physarum registry COMMAND [flags]`` (and ``bin/registry-cli``)."""
    argv = sys.argv[1:] if argv is None else argv

    async def start() -> int:
        args, opts = parse_args(argv, os.environ)
        setup_logging(opts.debug, quiet=args.command != "serve")
        if args.command == "serve":
            await serve(opts, args)
            return 0
        return await one_shot(opts, args)

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
