"""``physarum allocator``: starts instances of registered services on this machine when client
proxies ask (PhysarumSM's allocator; see :mod:`physarum.services.allocator` for what differs).

Runtimes: ``process`` (the default; the registry entry's command as a child process) and
``docker`` (its image, through the Docker Engine API at -docker-host or $DOCKER_HOST; podman's
``system service`` serves that API too; needs ``pip install 'physarum[docker]'``). Metrics
(instances, allocations by result, allocation seconds) on -metrics-listen-addr, PhysarumSM's :9101
(``:PORT``, an empty host, binds every interface, as ping-monitor's -prom-listen-addr does).

With the docker runtime, the allocator removes at start every container labelled with its
-docker-owner: what a previous run that was killed left behind. Allocators sharing one engine
must therefore have distinct owners, or each start removes the others' instances.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from physarum.cli import flags
from physarum.cli.flags import NodeOptions, UsageError
from physarum.cli.node import RunningNode, run_main, setup_logging, start_node
from physarum.errors import ConfigError
from physarum.services.allocator import Allocator, AllocatorOptions
from physarum.services.docker_runtime import DockerOptions, DockerRuntime
from physarum.services.network import OverlayNetwork
from physarum.services.registry import RegistryClient
from physarum.services.runtime import ProcessRuntime, Runtime, StartError

PROG = "physarum allocator"
LISTEN_DEFAULT = ":0"
METRICS_DEFAULT = "127.0.0.1:9101"
DOCKER_OWNER_DEFAULT = DockerOptions.owner
RUNTIMES = ("process", "docker")

DESCRIPTION = """\
Start instances of registered services on this machine when client proxies ask for one nearer
than they have. Each instance gets a sidecar with its own peer id, is answered for only once it
accepts connections on $SERVICE_PORT, and is stopped after -idle-timeout without requests."""

EPILOG = """\
Flags take one dash (Go style) or two. Environment: P2P_PSK, P2P_BOOTSTRAPS, DOCKER_HOST.
An instance's environment: SERVICE_PORT (listen there, on 127.0.0.1), SERVICE_NAME, P2P_BOOTSTRAPS."""


@dataclass
class AllocatorArgs:
    node: NodeOptions
    options: AllocatorOptions
    runtimes: tuple[str, ...]
    metrics_host: str | None
    """None: every interface (``-metrics-listen-addr :PORT``)."""
    metrics_port: int
    docker_host: str | None
    docker_owner: str = DOCKER_OWNER_DEFAULT


def _port_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi if sep else lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW-HIGH") from None
    if not 1 <= low <= high <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: ports are 1-65535, LOW <= HIGH")
    return low, high


def build_parser() -> flags.FlagParser:
    parser = flags.FlagParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    flags.add_node_flags(parser, listen_default=LISTEN_DEFAULT, keyfile_default=None)
    group = parser.add_argument_group("allocator")
    d = AllocatorOptions()
    flags.flag(group, "runtime", action="append", choices=RUNTIMES, default=None, metavar="NAME",
               help="process or docker; repeatable, in order of preference (default: process)")
    flags.flag(group, "capacity", type=flags.positive_int, default=d.capacity, metavar="N",
               help=f"instances running at once at most (default {d.capacity})")
    flags.seconds_flag(group, "idle-timeout", default=d.idle_timeout,
                       help="stop an instance without requests for this long")
    flags.seconds_flag(group, "ready-timeout", default=d.ready_timeout,
                       help="an instance must accept connections within this")
    flags.flag(group, "port-range", type=_port_range, default=None, metavar="LOW-HIGH",
               help="ports for instances (default: any free port)")
    flags.flag(group, "instance-listen", action="append", default=None, metavar="ADDR",
               help="where instances' sidecars listen, a multiaddr; repeatable (default /ip4/127.0.0.1/tcp/0;"
                    " use this machine's address for a network of several machines)")
    flags.flag(group, "metrics-listen-addr", default=METRICS_DEFAULT, metavar="HOST:PORT",
               help=f"serve /metrics here (default {METRICS_DEFAULT}; port 0: any)")
    flags.flag(group, "docker-host", default=None, metavar="URL",
               help="the Docker Engine API of the docker runtime (default $DOCKER_HOST, else the engine's default)")
    flags.flag(group, "docker-owner", default=DOCKER_OWNER_DEFAULT, metavar="NAME",
               help="label value marking this allocator's containers; at start it removes every container"
                    " with it (leftovers of a killed run), so allocators sharing an engine need distinct"
                    f" owners (default {DOCKER_OWNER_DEFAULT})")
    return parser


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> AllocatorArgs:
    """Raises:
        UsageError: bad flags or values, unusable key files.
    """
    args = build_parser().parse_args(flags.normalize_bool_flags(argv))
    node = flags.node_options(args, listen_default=LISTEN_DEFAULT, keyfile_default=None, env=env)
    listen = tuple(args.instance_listen or AllocatorOptions.instance_listen)
    for a in listen:
        flags.parse_listen_addr(a, "-instance-listen")
    runtimes = tuple(dict.fromkeys(args.runtime or ["process"]))
    options = AllocatorOptions(
        capacity=args.capacity, idle_timeout=args.idle_timeout, ready_timeout=args.ready_timeout,
        port_range=args.port_range, runtimes=runtimes,
        instance_listen=tuple(str(flags.parse_listen_addr(a, "-instance-listen")) for a in listen),
    )
    host, port = flags.split_host_port(args.metrics_listen_addr, "-metrics-listen-addr")
    if not args.docker_owner.strip():
        raise UsageError("-docker-owner must not be empty")
    return AllocatorArgs(node, options, runtimes, host or None, port, args.docker_host, args.docker_owner)


def make_runtimes(opts: AllocatorArgs) -> dict[str, Runtime]:
    """Raises:
        UsageError: the docker runtime is asked for but cannot be set up.
    """
    out: dict[str, Runtime] = {}
    for name in opts.runtimes:
        if name == "process":
            out[name] = ProcessRuntime()
        else:
            try:
                out[name] = DockerRuntime(opts.docker_host, DockerOptions(owner=opts.docker_owner))
            except (StartError, ConfigError, ImportError) as e:
                raise UsageError(f"-runtime docker: {e}") from None
    return out


async def run_allocator(
    opts: AllocatorArgs, *, task_status: trio.TaskStatus[tuple[RunningNode, Allocator, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the node, the allocator and its metrics until SIGINT/SIGTERM; ``nursery.start`` returns
    them and the metrics port.

    Raises:
        UsageError: an address cannot be bound, or a runtime cannot be set up.
    """
    from physarum.monitor.discovery import announce_metrics
    from physarum.monitor.http import MetricsServer
    from physarum.monitor.metrics import node_registry

    runtimes = make_runtimes(opts)
    async with trio.open_nursery() as nursery:

        running = await start_node(nursery, opts.node)
        registry = node_registry()
        network = OverlayNetwork(running.host, running.dht)
        allocator = Allocator(running.dht, RegistryClient(network), runtimes, opts.options, metrics=registry)
        allocator.attach(running.host)
        await nursery.start(allocator.run)
        server = MetricsServer(registry, host=opts.metrics_host, port=opts.metrics_port)
        try:
            await nursery.start(server.run)
        except OSError as e:
            where = f"[{opts.metrics_host}]" if opts.metrics_host and ":" in opts.metrics_host else opts.metrics_host or ""
            raise UsageError(f"cannot serve metrics on {where}:{opts.metrics_port}: {e.strerror or e}") from None
        announce_metrics(running.host, server, "allocator")  # so the ping-monitor lists it at /sd
        port = server.addresses[0][1]
        every = "" if opts.metrics_host else " (every interface)"
        print(f"allocator: runtimes {', '.join(runtimes)}, capacity {opts.options.capacity}, "
              f"metrics at {metrics_url(server.addresses)}{every}", file=sys.stderr, flush=True)
        task_status.started((running, allocator, port))


def metrics_url(addresses: Sequence[tuple[str, int]]) -> str:
    """A URL of the metrics one can fetch from this machine: the first bound address, a wildcard
    (every interface) replaced by the loopback address of its family, IPv6 in brackets."""
    host, port = addresses[0]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: ``physarum allocator [flags]`` (and ``bin/allocator``)."""
    argv = sys.argv[1:] if argv is None else argv

    async def start() -> None:
        opts = parse_args(argv, os.environ)
        setup_logging(opts.node.debug)
        await run_allocator(opts)

    return run_main(PROG, start)


if __name__ == "__main__":
    sys.exit(main())
